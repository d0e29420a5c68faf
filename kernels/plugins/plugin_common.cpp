// Shared plugin glue: logger, field parsing, capability views, registration entry points.
#include "plugin_common.h"

#include <mutex>

using namespace nvinfer1;

namespace edgeda {
namespace plugin {
namespace {
std::mutex gLoggerMutex;
ILoggerFinder* gLoggerFinder = nullptr;
}  // namespace

void setLoggerFinderImpl(ILoggerFinder* finder) noexcept
{
    std::lock_guard<std::mutex> lock(gLoggerMutex);
    if (gLoggerFinder == nullptr && finder != nullptr) gLoggerFinder = finder;
}

ILogger* getLogger() noexcept
{
    std::lock_guard<std::mutex> lock(gLoggerMutex);
    return gLoggerFinder != nullptr ? gLoggerFinder->findLogger() : nullptr;
}

void logError(char const* msg) noexcept
{
    if (ILogger* logger = getLogger()) logger->log(ILogger::Severity::kERROR, msg);
}

bool readInt(PluginField const& f, int32_t& out) noexcept
{
    if (f.data == nullptr || f.length < 1) return false;
    switch (f.type)
    {
    case PluginFieldType::kINT32: out = *static_cast<int32_t const*>(f.data); return true;
    case PluginFieldType::kINT64: out = static_cast<int32_t>(*static_cast<int64_t const*>(f.data)); return true;
    case PluginFieldType::kINT16: out = *static_cast<int16_t const*>(f.data); return true;
    case PluginFieldType::kINT8: out = *static_cast<int8_t const*>(f.data); return true;
    default: return false;
    }
}

bool readFloat(PluginField const& f, float& out) noexcept
{
    if (f.data == nullptr || f.length < 1) return false;
    switch (f.type)
    {
    case PluginFieldType::kFLOAT32: out = *static_cast<float const*>(f.data); return true;
    case PluginFieldType::kFLOAT64: out = static_cast<float>(*static_cast<double const*>(f.data)); return true;
    case PluginFieldType::kINT32: out = static_cast<float>(*static_cast<int32_t const*>(f.data)); return true;
    default: return false;
    }
}

IPluginCapability* PluginBase::getCapabilityInterface(PluginCapabilityType type) noexcept
{
    switch (type)
    {
    case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
    case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
    case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
    }
    return nullptr;
}

PluginFieldCollection const* PluginBase::getFieldsToSerialize() noexcept
{
    mFields.clear();
    collectFields(mFields);
    mCollection.nbFields = static_cast<int32_t>(mFields.size());
    mCollection.fields = mFields.data();
    return &mCollection;
}

CreatorBase::CreatorBase(char const* name, std::vector<PluginField> fields)
    : mName(name)
    , mFields(std::move(fields))
{
    mCollection.nbFields = static_cast<int32_t>(mFields.size());
    mCollection.fields = mFields.data();
}

}  // namespace plugin
}  // namespace edgeda

// Entry points TensorRT looks up when the library is loaded with
// IPluginRegistry::loadLibrary / trt.get_plugin_registry().load_library / trtexec --dynamicPlugins.
extern "C" {

__attribute__((visibility("default"))) IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    static IPluginCreatorInterface* const creators[] = {
        edgeda::plugin::preprocessCreator(),
        edgeda::plugin::confidenceCreator(),
        edgeda::plugin::instanceNormActCreator(),
    };
    nbCreators = static_cast<int32_t>(sizeof(creators) / sizeof(creators[0]));
    return creators;
}

__attribute__((visibility("default"))) void setLoggerFinder(ILoggerFinder* finder)
{
    edgeda::plugin::setLoggerFinderImpl(finder);
}

}  // extern "C"
