// EdgedaConfidence (IPluginV3): logits (N, C, ...) float16/float32 -> class (N, ...) int32,
// confidence = max softmax probability (N, ...) and entropy (N, ...), both in the logits' type.
// No fields: the class axis is always 1.
#include "plugin_common.h"

#include <new>

using namespace nvinfer1;

namespace edgeda {
namespace plugin {
namespace {

constexpr char const* kNAME = "EdgedaConfidence";

class ConfidencePlugin final : public PluginBase
{
public:
    explicit ConfidencePlugin(std::string ns)
        : PluginBase(std::move(ns))
    {
    }

    char const* getPluginName() const noexcept override { return kNAME; }
    IPluginV3* clone() noexcept override { return new (std::nothrow) ConfidencePlugin(*this); }

    int32_t getNbOutputs() const noexcept override { return 3; }

    int32_t getOutputDataTypes(DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept override
    {
        if (nbOutputs != 3 || nbInputs != 1) return -1;
        outputTypes[0] = DataType::kINT32;
        outputTypes[1] = inputTypes[0];
        outputTypes[2] = inputTypes[0];
        return 0;
    }

    int32_t getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const*, int32_t, DimsExprs* outputs,
        int32_t nbOutputs, IExprBuilder&) noexcept override
    {
        if (nbInputs != 1 || nbOutputs != 3 || inputs[0].nbDims < 2) return -1;
        for (int32_t o = 0; o < 3; ++o)
        {
            outputs[o].nbDims = inputs[0].nbDims - 1;
            outputs[o].d[0] = inputs[0].d[0];
            for (int32_t i = 2; i < inputs[0].nbDims; ++i) outputs[o].d[i - 1] = inputs[0].d[i];
        }
        return 0;
    }

    bool supportsFormatCombination(int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept override
    {
        if (nbInputs != 1 || nbOutputs != 3 || pos < 0 || pos > 3) return false;
        PluginTensorDesc const& d = inOut[pos].desc;
        if (d.format != TensorFormat::kLINEAR) return false;
        if (pos == 0) return isFloatType(d.type);
        if (pos == 1) return d.type == DataType::kINT32;
        return d.type == inOut[0].desc.type;
    }

    int32_t enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* outputDesc, void const* const* inputs,
        void* const* outputs, void*, cudaStream_t stream) noexcept override
    {
        Dims const& d = inputDesc[0].dims;
        if (d.nbDims < 2)
        {
            logError("EdgedaConfidence: logits need at least 2 dimensions (N, C, ...)");
            return -1;
        }
        cudaError_t const err = edgeda_confidence(inputs[0], toEdgeda(inputDesc[0].type), d.d[0], d.d[1],
            volume(d, 2, d.nbDims), static_cast<int32_t*>(outputs[0]), outputs[1], outputs[2],
            toEdgeda(outputDesc[1].type), stream);
        if (err != cudaSuccess)
        {
            logError("EdgedaConfidence: kernel launch failed");
            return -1;
        }
        return 0;
    }

protected:
    void collectFields(std::vector<PluginField>&) noexcept override {}
};

class ConfidenceCreator final : public CreatorBase
{
public:
    ConfidenceCreator()
        : CreatorBase(kNAME, {})
    {
    }

    IPluginV3* createPlugin(char const*, PluginFieldCollection const*, TensorRTPhase) noexcept override
    {
        return new (std::nothrow) ConfidencePlugin(mNamespace);
    }
};

}  // namespace

IPluginCreatorV3One* confidenceCreator() noexcept
{
    static ConfidenceCreator creator;
    return &creator;
}

}  // namespace plugin
}  // namespace edgeda
