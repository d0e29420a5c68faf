// EdgedaInstanceNormAct (IPluginV3): x (N, C, ...) + scale (C) + bias (C), all float16 or all
// float32 (the inputs of ONNX InstanceNormalization) -> act(InstanceNorm(x)) of x's shape/type.
// Fields: epsilon (float), activation (int: 0 none, 1 ReLU, 2 LeakyReLU), alpha (float).
#include "plugin_common.h"

#include <new>

using namespace nvinfer1;

namespace edgeda {
namespace plugin {
namespace {

constexpr char const* kNAME = "EdgedaInstanceNormAct";

class InstanceNormActPlugin final : public PluginBase
{
public:
    InstanceNormActPlugin(std::string ns, float eps, int32_t act, float alpha)
        : PluginBase(std::move(ns)), mEps(eps), mAct(act), mAlpha(alpha)
    {
    }

    char const* getPluginName() const noexcept override { return kNAME; }
    IPluginV3* clone() noexcept override { return new (std::nothrow) InstanceNormActPlugin(*this); }

    int32_t getNbOutputs() const noexcept override { return 1; }

    int32_t getOutputDataTypes(DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept override
    {
        if (nbOutputs != 1 || nbInputs != 3) return -1;
        outputTypes[0] = inputTypes[0];
        return 0;
    }

    int32_t getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const*, int32_t, DimsExprs* outputs,
        int32_t nbOutputs, IExprBuilder&) noexcept override
    {
        if (nbInputs != 3 || nbOutputs != 1 || inputs[0].nbDims < 3) return -1;
        outputs[0] = inputs[0];
        return 0;
    }

    bool supportsFormatCombination(int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept override
    {
        if (nbInputs != 3 || nbOutputs != 1 || pos < 0 || pos > 3) return false;
        PluginTensorDesc const& d = inOut[pos].desc;
        if (d.format != TensorFormat::kLINEAR) return false;
        return pos == 0 ? isFloatType(d.type) : d.type == inOut[0].desc.type;
    }

    int32_t enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const*, void const* const* inputs,
        void* const* outputs, void*, cudaStream_t stream) noexcept override
    {
        Dims const& d = inputDesc[0].dims;
        if (d.nbDims < 3 || volume(inputDesc[1].dims, 0, inputDesc[1].dims.nbDims) != d.d[1]
            || volume(inputDesc[2].dims, 0, inputDesc[2].dims.nbDims) != d.d[1])
        {
            logError("EdgedaInstanceNormAct: expected x (N,C,...) and scale/bias of C elements");
            return -1;
        }
        cudaError_t const err = edgeda_instnorm_act(inputs[0], inputs[1], inputs[2], toEdgeda(inputDesc[0].type),
            d.d[0], d.d[1], volume(d, 2, d.nbDims), mEps, static_cast<edgeda_activation>(mAct), mAlpha, outputs[0],
            stream);
        if (err != cudaSuccess)
        {
            logError("EdgedaInstanceNormAct: kernel launch failed");
            return -1;
        }
        return 0;
    }

protected:
    void collectFields(std::vector<PluginField>& f) noexcept override
    {
        f.emplace_back("epsilon", &mEps, PluginFieldType::kFLOAT32, 1);
        f.emplace_back("activation", &mAct, PluginFieldType::kINT32, 1);
        f.emplace_back("alpha", &mAlpha, PluginFieldType::kFLOAT32, 1);
    }

private:
    float mEps;
    int32_t mAct;
    float mAlpha;
};

class InstanceNormActCreator final : public CreatorBase
{
public:
    InstanceNormActCreator()
        : CreatorBase(kNAME,
            {PluginField("epsilon", nullptr, PluginFieldType::kFLOAT32, 1),
                PluginField("activation", nullptr, PluginFieldType::kINT32, 1),
                PluginField("alpha", nullptr, PluginFieldType::kFLOAT32, 1)})
    {
    }

    // Rebuilds the plugin from the fields alone (the same path for kBUILD and kRUNTIME).
    IPluginV3* createPlugin(char const*, PluginFieldCollection const* fc, TensorRTPhase) noexcept override
    {
        float eps = 1e-5F, alpha = 0.01F;
        int32_t act = EDGEDA_ACT_RELU;
        for (int32_t i = 0; fc != nullptr && i < fc->nbFields; ++i)
        {
            PluginField const& f = fc->fields[i];
            bool ok = true;
            if (std::strcmp(f.name, "epsilon") == 0) ok = readFloat(f, eps);
            else if (std::strcmp(f.name, "activation") == 0) ok = readInt(f, act);
            else if (std::strcmp(f.name, "alpha") == 0) ok = readFloat(f, alpha);
            if (!ok)
            {
                logError("EdgedaInstanceNormAct: a field has an unusable type");
                return nullptr;
            }
        }
        if (act < EDGEDA_ACT_NONE || act > EDGEDA_ACT_LEAKY_RELU || !(eps > 0.0F))
        {
            logError("EdgedaInstanceNormAct: activation must be 0, 1 or 2 and epsilon positive");
            return nullptr;
        }
        return new (std::nothrow) InstanceNormActPlugin(mNamespace, eps, act, alpha);
    }
};

}  // namespace

IPluginCreatorV3One* instanceNormActCreator() noexcept
{
    static InstanceNormActCreator creator;
    return &creator;
}

}  // namespace plugin
}  // namespace edgeda
