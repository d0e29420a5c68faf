// EdgedaPreprocess (IPluginV3): frame (N, H, W, C) float16/float32 NHWC + mean (C) + std (C)
// float32 -> (N, C, out_height, out_width) float32 (fp16_output = 0) or float16 (= 1).
//
// Why the frame is float16/float32 and not uint8: TensorRT's headers (10.3 and 11.x) state for
// PluginTensorDesc::type, which describes plugin inputs and outputs alike, "DataType:kBOOL and
// DataType::kUINT8 are not supported". The ONNX rewrite therefore puts a Cast(uint8 -> float16)
// between the network's uint8 NHWC input and this plugin; TensorRT converts kUINT8 network
// inputs natively, and 0..255 is exact in float16. The PyTorch binding feeds uint8 directly.
#include "plugin_common.h"

#include <new>

using namespace nvinfer1;

namespace edgeda {
namespace plugin {
namespace {

constexpr char const* kNAME = "EdgedaPreprocess";

class PreprocessPlugin final : public PluginBase
{
public:
    PreprocessPlugin(std::string ns, int32_t outH, int32_t outW, float scale, int32_t fp16Output)
        : PluginBase(std::move(ns)), mOutH(outH), mOutW(outW), mScale(scale), mFp16(fp16Output)
    {
    }

    char const* getPluginName() const noexcept override { return kNAME; }
    IPluginV3* clone() noexcept override { return new (std::nothrow) PreprocessPlugin(*this); }

    int32_t getNbOutputs() const noexcept override { return 1; }

    int32_t getOutputDataTypes(DataType* outputTypes, int32_t nbOutputs, DataType const*, int32_t nbInputs) const noexcept override
    {
        if (nbOutputs != 1 || nbInputs != 3) return -1;
        outputTypes[0] = mFp16 ? DataType::kHALF : DataType::kFLOAT;
        return 0;
    }

    int32_t getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const*, int32_t, DimsExprs* outputs,
        int32_t nbOutputs, IExprBuilder& exprBuilder) noexcept override
    {
        if (nbInputs != 3 || nbOutputs != 1 || inputs[0].nbDims != 4) return -1;
        outputs[0].nbDims = 4;
        outputs[0].d[0] = inputs[0].d[0];
        outputs[0].d[1] = inputs[0].d[3];
        outputs[0].d[2] = exprBuilder.constant(mOutH);
        outputs[0].d[3] = exprBuilder.constant(mOutW);
        return 0;
    }

    bool supportsFormatCombination(int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept override
    {
        if (nbInputs != 3 || nbOutputs != 1 || pos < 0 || pos > 3) return false;
        PluginTensorDesc const& d = inOut[pos].desc;
        if (d.format != TensorFormat::kLINEAR) return false;
        switch (pos)
        {
        case 0: return isFloatType(d.type);
        case 1:
        case 2: return d.type == DataType::kFLOAT;
        default: return d.type == (mFp16 ? DataType::kHALF : DataType::kFLOAT);
        }
    }

    int32_t enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* outputDesc, void const* const* inputs,
        void* const* outputs, void*, cudaStream_t stream) noexcept override
    {
        Dims const& d = inputDesc[0].dims;
        if (d.nbDims != 4 || volume(inputDesc[1].dims, 0, inputDesc[1].dims.nbDims) != d.d[3]
            || volume(inputDesc[2].dims, 0, inputDesc[2].dims.nbDims) != d.d[3])
        {
            logError("EdgedaPreprocess: expected frame (N,H,W,C) and mean/std of C elements");
            return -1;
        }
        cudaError_t const err = edgeda_preprocess(inputs[0], toEdgeda(inputDesc[0].type), d.d[0], d.d[1], d.d[2], d.d[3],
            static_cast<float const*>(inputs[1]), static_cast<float const*>(inputs[2]), mScale, outputs[0],
            toEdgeda(outputDesc[0].type), mOutH, mOutW, stream);
        if (err != cudaSuccess)
        {
            logError("EdgedaPreprocess: kernel launch failed");
            return -1;
        }
        return 0;
    }

protected:
    void collectFields(std::vector<PluginField>& f) noexcept override
    {
        f.emplace_back("out_height", &mOutH, PluginFieldType::kINT32, 1);
        f.emplace_back("out_width", &mOutW, PluginFieldType::kINT32, 1);
        f.emplace_back("scale", &mScale, PluginFieldType::kFLOAT32, 1);
        f.emplace_back("fp16_output", &mFp16, PluginFieldType::kINT32, 1);
    }

private:
    int32_t mOutH;
    int32_t mOutW;
    float mScale;
    int32_t mFp16;
};

class PreprocessCreator final : public CreatorBase
{
public:
    PreprocessCreator()
        : CreatorBase(kNAME,
            {PluginField("out_height", nullptr, PluginFieldType::kINT32, 1),
                PluginField("out_width", nullptr, PluginFieldType::kINT32, 1),
                PluginField("scale", nullptr, PluginFieldType::kFLOAT32, 1),
                PluginField("fp16_output", nullptr, PluginFieldType::kINT32, 1)})
    {
    }

    // Rebuilds the plugin from the fields alone (the same path for kBUILD and kRUNTIME).
    IPluginV3* createPlugin(char const*, PluginFieldCollection const* fc, TensorRTPhase) noexcept override
    {
        int32_t outH = 0, outW = 0, fp16 = 0;
        float scale = 1.0F / 255.0F;
        for (int32_t i = 0; fc != nullptr && i < fc->nbFields; ++i)
        {
            PluginField const& f = fc->fields[i];
            bool ok = true;
            if (std::strcmp(f.name, "out_height") == 0) ok = readInt(f, outH);
            else if (std::strcmp(f.name, "out_width") == 0) ok = readInt(f, outW);
            else if (std::strcmp(f.name, "scale") == 0) ok = readFloat(f, scale);
            else if (std::strcmp(f.name, "fp16_output") == 0) ok = readInt(f, fp16);
            if (!ok)
            {
                logError("EdgedaPreprocess: a field has an unusable type");
                return nullptr;
            }
        }
        if (outH <= 0 || outW <= 0)
        {
            logError("EdgedaPreprocess: out_height and out_width must be positive");
            return nullptr;
        }
        return new (std::nothrow) PreprocessPlugin(mNamespace, outH, outW, scale, fp16 != 0 ? 1 : 0);
    }
};

}  // namespace

IPluginCreatorV3One* preprocessCreator() noexcept
{
    static PreprocessCreator creator;
    return &creator;
}

}  // namespace plugin
}  // namespace edgeda
