// Shared TensorRT glue for the edgeda IPluginV3 plugins (TensorRT types only; no kernels here).
//
// Written against the intersection of the TensorRT 10.3 and 11.x public headers:
// IPluginV3 + IPluginV3OneCore/Build/Runtime and IPluginCreatorV3One.
#ifndef EDGEDA_PLUGIN_COMMON_H
#define EDGEDA_PLUGIN_COMMON_H

#include <NvInferRuntime.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "edgeda_kernels.h"

namespace edgeda {
namespace plugin {

constexpr char const* kPLUGIN_VERSION = "1";

// Logger handed to us by TensorRT through setLoggerFinder (may be null: then we stay silent).
nvinfer1::ILogger* getLogger() noexcept;
void setLoggerFinderImpl(nvinfer1::ILoggerFinder* finder) noexcept;
void logError(char const* msg) noexcept;

// Read one scalar field. INT/FLOAT attributes arrive from the ONNX parser as int32/float32;
// the other widths are accepted so hand-built field collections also work. False if unusable.
bool readInt(nvinfer1::PluginField const& f, int32_t& out) noexcept;
bool readFloat(nvinfer1::PluginField const& f, float& out) noexcept;

inline bool isFloatType(nvinfer1::DataType t) noexcept
{
    return t == nvinfer1::DataType::kFLOAT || t == nvinfer1::DataType::kHALF;
}

inline edgeda_dtype toEdgeda(nvinfer1::DataType t) noexcept
{
    return t == nvinfer1::DataType::kHALF ? EDGEDA_FLOAT16 : EDGEDA_FLOAT32;
}

inline int64_t volume(nvinfer1::Dims const& d, int32_t from, int32_t to) noexcept
{
    int64_t v = 1;
    for (int32_t i = from; i < to; ++i) v *= d.d[i];
    return v;
}

// Everything the three plugins share: capability views, name/version/namespace, the field
// list used by getFieldsToSerialize, and trivial configure/shape-change hooks.
class PluginBase : public nvinfer1::IPluginV3,
                   public nvinfer1::IPluginV3OneCore,
                   public nvinfer1::IPluginV3OneBuild,
                   public nvinfer1::IPluginV3OneRuntime
{
public:
    explicit PluginBase(std::string ns)
        : mNamespace(std::move(ns))
    {
    }
    ~PluginBase() override = default;

    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;

    char const* getPluginVersion() const noexcept override { return kPLUGIN_VERSION; }
    char const* getPluginNamespace() const noexcept override { return mNamespace.c_str(); }

    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const*, int32_t,
        nvinfer1::DynamicPluginTensorDesc const*, int32_t) noexcept override
    {
        return 0;
    }
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const*, int32_t, nvinfer1::PluginTensorDesc const*,
        int32_t) noexcept override
    {
        return 0;
    }
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext*) noexcept override { return clone(); }

    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

protected:
    // Fill mFields with PluginFields pointing at the plugin's own members.
    virtual void collectFields(std::vector<nvinfer1::PluginField>& fields) noexcept = 0;

    std::string mNamespace;

private:
    std::vector<nvinfer1::PluginField> mFields;
    nvinfer1::PluginFieldCollection mCollection{};
};

// Creator base: name/version/namespace and the declared field list.
class CreatorBase : public nvinfer1::IPluginCreatorV3One
{
public:
    CreatorBase(char const* name, std::vector<nvinfer1::PluginField> fields);
    char const* getPluginName() const noexcept override { return mName; }
    char const* getPluginVersion() const noexcept override { return kPLUGIN_VERSION; }
    char const* getPluginNamespace() const noexcept override { return mNamespace.c_str(); }
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override { return &mCollection; }

protected:
    char const* mName;
    std::string mNamespace;

private:
    std::vector<nvinfer1::PluginField> mFields;
    nvinfer1::PluginFieldCollection mCollection{};
};

nvinfer1::IPluginCreatorV3One* preprocessCreator() noexcept;
nvinfer1::IPluginCreatorV3One* confidenceCreator() noexcept;
nvinfer1::IPluginCreatorV3One* instanceNormActCreator() noexcept;

}  // namespace plugin
}  // namespace edgeda

#endif  // EDGEDA_PLUGIN_COMMON_H
