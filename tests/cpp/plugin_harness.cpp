// Host-only check of the edgeda plugin glue against the TensorRT headers, without TensorRT or
// a GPU: the kernel launchers are replaced by stubs, and the program exercises getCreators,
// createPlugin from fields (build phase), getFieldsToSerialize -> createPlugin (runtime phase),
// clone, output data types and supportsFormatCombination. Prints "OK" and exits 0 on success.
#include "plugin_common.h"

#include <cstdio>
#include <cstring>

using namespace nvinfer1;

extern "C" IPluginCreatorInterface* const* getCreators(int32_t& nbCreators);

extern "C" cudaError_t edgeda_preprocess(const void*, edgeda_dtype, int64_t, int64_t, int64_t, int64_t,
    const float*, const float*, float, void*, edgeda_dtype, int64_t, int64_t, cudaStream_t) { return cudaErrorNotSupported; }
extern "C" cudaError_t edgeda_confidence(const void*, edgeda_dtype, int64_t, int64_t, int64_t, int32_t*, void*,
    void*, edgeda_dtype, cudaStream_t) { return cudaErrorNotSupported; }
extern "C" cudaError_t edgeda_instnorm_act(const void*, const void*, const void*, edgeda_dtype, int64_t, int64_t,
    int64_t, float, edgeda_activation, float, void*, cudaStream_t) { return cudaErrorNotSupported; }

static int gFailures = 0;
#define EXPECT(cond)                                                        \
    do {                                                                    \
        if (!(cond)) {                                                      \
            std::printf("FAILED line %d: %s\n", __LINE__, #cond);           \
            ++gFailures;                                                    \
        }                                                                   \
    } while (0)

static IPluginCreatorV3One* find(char const* name) {
    int32_t n = 0;
    IPluginCreatorInterface* const* creators = getCreators(n);
    for (int32_t i = 0; i < n; ++i) {
        auto* c = static_cast<IPluginCreatorV3One*>(creators[i]);
        if (std::strcmp(c->getPluginName(), name) == 0) return c;
    }
    return nullptr;
}

static DynamicPluginTensorDesc desc(DataType t, TensorFormat f = TensorFormat::kLINEAR) {
    DynamicPluginTensorDesc d{};
    d.desc.type = t;
    d.desc.format = f;
    return d;
}

// Serialise the plugin's fields and rebuild it at kRUNTIME from those fields alone.
static IPluginV3* roundTrip(IPluginCreatorV3One* creator, IPluginV3* plugin) {
    auto* runtime = static_cast<IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    PluginFieldCollection const* fc = runtime->getFieldsToSerialize();
    return creator->createPlugin("restored", fc, TensorRTPhase::kRUNTIME);
}

static IPluginV3OneBuild* build(IPluginV3* p) {
    return static_cast<IPluginV3OneBuild*>(p->getCapabilityInterface(PluginCapabilityType::kBUILD));
}

int main() {
    int32_t n = 0;
    IPluginCreatorInterface* const* creators = getCreators(n);
    EXPECT(n == 3 && creators != nullptr);
    for (int32_t i = 0; i < n; ++i) {
        EXPECT(std::strcmp(creators[i]->getInterfaceInfo().kind, "PLUGIN CREATOR_V3ONE") == 0);
        auto* c = static_cast<IPluginCreatorV3One*>(creators[i]);
        EXPECT(std::strcmp(c->getPluginVersion(), "1") == 0 && std::strcmp(c->getPluginNamespace(), "") == 0);
    }

    {  // EdgedaPreprocess
        IPluginCreatorV3One* c = find("EdgedaPreprocess");
        EXPECT(c != nullptr && c->getFieldNames()->nbFields == 4);
        int32_t h = 224, w = 160, fp16 = 1;
        float scale = 0.5F;
        PluginField f[] = {PluginField("out_height", &h, PluginFieldType::kINT32, 1),
            PluginField("out_width", &w, PluginFieldType::kINT32, 1), PluginField("scale", &scale, PluginFieldType::kFLOAT32, 1),
            PluginField("fp16_output", &fp16, PluginFieldType::kINT32, 1)};
        PluginFieldCollection fc{4, f};
        IPluginV3* p = c->createPlugin("pre", &fc, TensorRTPhase::kBUILD);
        EXPECT(p != nullptr);
        IPluginV3* r = roundTrip(c, p);
        EXPECT(r != nullptr);
        auto* rt = static_cast<IPluginV3OneRuntime*>(r->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
        PluginFieldCollection const* rf = rt->getFieldsToSerialize();
        EXPECT(rf->nbFields == 4);
        EXPECT(*static_cast<int32_t const*>(rf->fields[0].data) == 224 && *static_cast<int32_t const*>(rf->fields[1].data) == 160);
        EXPECT(*static_cast<float const*>(rf->fields[2].data) == 0.5F && *static_cast<int32_t const*>(rf->fields[3].data) == 1);
        DataType in[3] = {DataType::kHALF, DataType::kFLOAT, DataType::kFLOAT}, out[1];
        EXPECT(build(r)->getOutputDataTypes(out, 1, in, 3) == 0 && out[0] == DataType::kHALF);
        DynamicPluginTensorDesc io[4] = {desc(DataType::kUINT8), desc(DataType::kFLOAT), desc(DataType::kFLOAT), desc(DataType::kHALF)};
        EXPECT(!build(r)->supportsFormatCombination(0, io, 3, 1));  // no uint8 plugin inputs
        io[0] = desc(DataType::kHALF);
        for (int pos = 0; pos < 4; ++pos) EXPECT(build(r)->supportsFormatCombination(pos, io, 3, 1));
        io[3] = desc(DataType::kFLOAT);
        EXPECT(!build(r)->supportsFormatCombination(3, io, 3, 1));
        int32_t bad = 0;
        PluginField badField[] = {PluginField("out_height", &bad, PluginFieldType::kINT32, 1)};
        PluginFieldCollection badFc{1, badField};
        EXPECT(c->createPlugin("bad", &badFc, TensorRTPhase::kBUILD) == nullptr);
        IPluginV3* cl = p->clone();
        EXPECT(cl != nullptr && std::strcmp(static_cast<IPluginV3OneCore*>(cl->getCapabilityInterface(PluginCapabilityType::kCORE))->getPluginName(), "EdgedaPreprocess") == 0);
        delete cl;
        delete r;
        delete p;
    }
    {  // EdgedaConfidence
        IPluginCreatorV3One* c = find("EdgedaConfidence");
        EXPECT(c != nullptr && c->getFieldNames()->nbFields == 0);
        PluginFieldCollection fc{0, nullptr};
        IPluginV3* p = c->createPlugin("conf", &fc, TensorRTPhase::kBUILD);
        IPluginV3* r = roundTrip(c, p);
        EXPECT(p != nullptr && r != nullptr && build(r)->getNbOutputs() == 3);
        DataType in[1] = {DataType::kHALF}, out[3];
        EXPECT(build(r)->getOutputDataTypes(out, 3, in, 1) == 0);
        EXPECT(out[0] == DataType::kINT32 && out[1] == DataType::kHALF && out[2] == DataType::kHALF);
        DynamicPluginTensorDesc io[4] = {desc(DataType::kFLOAT), desc(DataType::kINT32), desc(DataType::kFLOAT), desc(DataType::kFLOAT)};
        for (int pos = 0; pos < 4; ++pos) EXPECT(build(r)->supportsFormatCombination(pos, io, 1, 3));
        io[2] = desc(DataType::kHALF);
        EXPECT(!build(r)->supportsFormatCombination(2, io, 1, 3));
        io[0] = desc(DataType::kFLOAT, TensorFormat::kHWC);
        EXPECT(!build(r)->supportsFormatCombination(0, io, 1, 3));
        delete r;
        delete p;
    }
    {  // EdgedaInstanceNormAct
        IPluginCreatorV3One* c = find("EdgedaInstanceNormAct");
        EXPECT(c != nullptr && c->getFieldNames()->nbFields == 3);
        float eps = 1e-3F, alpha = 0.2F;
        int32_t act = 2;
        PluginField f[] = {PluginField("epsilon", &eps, PluginFieldType::kFLOAT32, 1),
            PluginField("activation", &act, PluginFieldType::kINT32, 1), PluginField("alpha", &alpha, PluginFieldType::kFLOAT32, 1)};
        PluginFieldCollection fc{3, f};
        IPluginV3* p = c->createPlugin("inorm", &fc, TensorRTPhase::kBUILD);
        IPluginV3* r = roundTrip(c, p);
        EXPECT(p != nullptr && r != nullptr);
        auto* rt = static_cast<IPluginV3OneRuntime*>(r->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
        PluginFieldCollection const* rf = rt->getFieldsToSerialize();
        EXPECT(rf->nbFields == 3 && *static_cast<float const*>(rf->fields[0].data) == 1e-3F);
        EXPECT(*static_cast<int32_t const*>(rf->fields[1].data) == 2 && *static_cast<float const*>(rf->fields[2].data) == 0.2F);
        DynamicPluginTensorDesc io[4] = {desc(DataType::kHALF), desc(DataType::kHALF), desc(DataType::kHALF), desc(DataType::kHALF)};
        for (int pos = 0; pos < 4; ++pos) EXPECT(build(r)->supportsFormatCombination(pos, io, 3, 1));
        io[1] = desc(DataType::kFLOAT);
        EXPECT(!build(r)->supportsFormatCombination(1, io, 3, 1));
        int32_t badAct = 7;
        PluginField bf[] = {PluginField("activation", &badAct, PluginFieldType::kINT32, 1)};
        PluginFieldCollection badFc{1, bf};
        EXPECT(c->createPlugin("bad", &badFc, TensorRTPhase::kBUILD) == nullptr);
        // The stubbed launcher reports failure, so enqueue must return non-zero, not crash.
        PluginTensorDesc d[3]{};
        d[0].dims.nbDims = 4;
        d[0].dims.d[0] = 1; d[0].dims.d[1] = 2; d[0].dims.d[2] = 3; d[0].dims.d[3] = 3;
        d[1].dims.nbDims = 1; d[1].dims.d[0] = 2;
        d[2].dims = d[1].dims;
        void const* ins[3] = {nullptr, nullptr, nullptr};
        void* outs[1] = {nullptr};
        EXPECT(rt->enqueue(d, d, ins, outs, nullptr, nullptr) != 0);
        delete r;
        delete p;
    }
    if (gFailures == 0) std::printf("OK\n");
    return gFailures == 0 ? 0 : 1;
}
