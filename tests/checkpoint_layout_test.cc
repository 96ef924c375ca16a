#include "core/checkpoint_layout.h"

#include <cmath>
#include <map>
#include <set>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace dsv4 {
namespace {

ModelConfig LoadOrDie(const std::string& name) {
  auto config = LoadModelConfig(std::string(DSV4_SOURCE_DIR) + "/models/" + name + "/config.json");
  EXPECT_TRUE(config.ok()) << config.status();
  return config.ok() ? *config : ModelConfig{};
}

using Layout = std::map<std::string, TensorSpec>;

Layout ByName(const ModelConfig& config) {
  Layout layout;
  for (const TensorSpec& t : ExpectedTensors(config)) {
    EXPECT_TRUE(layout.emplace(t.name, t).second) << "duplicate " << t.name;
  }
  return layout;
}

// Checks one tensor's shape and dtype.
void Expect(const Layout& layout, const std::string& name, const Shape& shape, DType dtype) {
  auto it = layout.find(name);
  ASSERT_NE(it, layout.end()) << name << " is missing";
  EXPECT_EQ(it->second.shape, shape) << name;
  EXPECT_EQ(it->second.dtype, dtype) << name << " is " << DTypeName(it->second.dtype);
}

// An FP8 matrix with its E8M0 block scales.
void ExpectFp8(const Layout& layout, const std::string& name, const Shape& shape,
               const Shape& scale) {
  Expect(layout, name + ".weight", shape, DType::kF8E4M3);
  Expect(layout, name + ".scale", scale, DType::kF8E8M0);
}

TEST(CheckpointLayoutTest, FlashHeaderShapes) {
  const Layout l = ByName(LoadOrDie("deepseek-v4-flash"));
  // Spec §2.1 [hdr]: Flash layer 0.
  ExpectFp8(l, "layers.0.attn.wq_a", {1024, 4096}, {8, 32});
  ExpectFp8(l, "layers.0.attn.wq_b", {32768, 1024}, {256, 8});
  ExpectFp8(l, "layers.0.attn.wkv", {512, 4096}, {4, 32});
  ExpectFp8(l, "layers.0.attn.wo_a", {8192, 4096}, {64, 32});
  ExpectFp8(l, "layers.0.attn.wo_b", {4096, 8192}, {32, 64});
  Expect(l, "layers.0.attn.attn_sink", {64}, DType::kF32);
  // Flash experts and gate.
  Expect(l, "layers.5.ffn.experts.17.w1.weight", {2048, 2048}, DType::kI8);
  Expect(l, "layers.5.ffn.experts.17.w1.scale", {2048, 128}, DType::kF8E8M0);
  Expect(l, "layers.5.ffn.experts.17.w3.weight", {2048, 2048}, DType::kI8);
  Expect(l, "layers.5.ffn.experts.255.w2.weight", {4096, 1024}, DType::kI8);
  Expect(l, "layers.5.ffn.experts.255.w2.scale", {4096, 64}, DType::kF8E8M0);
  EXPECT_EQ(l.count("layers.5.ffn.experts.256.w2.weight"), 0u);
  Expect(l, "layers.3.ffn.gate.bias", {256}, DType::kF32);
  Expect(l, "layers.2.ffn.gate.tid2eid", {129280, 6}, DType::kI64);
  EXPECT_EQ(l.count("layers.2.ffn.gate.bias"), 0u);
  EXPECT_EQ(l.count("layers.3.ffn.gate.tid2eid"), 0u);
  ExpectFp8(l, "layers.7.ffn.shared_experts.w1", {2048, 4096}, {16, 32});
  ExpectFp8(l, "layers.7.ffn.shared_experts.w2", {4096, 2048}, {32, 16});
  Expect(l, "layers.7.ffn.gate.weight", {256, 4096}, DType::kBF16);
  // Layers 0-1 are window-only; 2 is CSA, 3 HCA.
  EXPECT_EQ(l.count("layers.1.attn.compressor.ape"), 0u);
  Expect(l, "layers.2.attn.compressor.ape", {4, 1024}, DType::kF32);
  ExpectFp8(l, "layers.2.attn.indexer.wq_b", {8192, 1024}, {64, 8});
  Expect(l, "layers.2.attn.indexer.weights_proj.weight", {64, 4096}, DType::kBF16);
  Expect(l, "layers.3.attn.compressor.ape", {128, 512}, DType::kF32);
  EXPECT_EQ(l.count("layers.3.attn.indexer.wq_b.weight"), 0u);
  // Globals.
  Expect(l, "embed.weight", {129280, 4096}, DType::kBF16);
  Expect(l, "head.weight", {129280, 4096}, DType::kBF16);
  Expect(l, "hc_head_fn", {4, 16384}, DType::kF32);
  Expect(l, "hc_head_scale", {1}, DType::kF32);
  EXPECT_EQ(l.count("layers.43.attn_norm.weight"), 0u);
}

TEST(CheckpointLayoutTest, ProHeaderShapes) {
  const Layout l = ByName(LoadOrDie("deepseek-v4-pro"));
  Expect(l, "layers.0.hc_attn_fn", {24, 28672}, DType::kF32);
  Expect(l, "layers.0.hc_ffn_base", {24}, DType::kF32);
  Expect(l, "layers.0.hc_ffn_scale", {3}, DType::kF32);
  Expect(l, "layers.0.attn.compressor.ape", {128, 512}, DType::kF32);
  Expect(l, "layers.0.attn.compressor.wkv.weight", {512, 7168}, DType::kBF16);
  Expect(l, "layers.2.attn.compressor.ape", {4, 1024}, DType::kF32);
  Expect(l, "layers.2.attn.compressor.wkv.weight", {1024, 7168}, DType::kBF16);
  Expect(l, "layers.2.attn.compressor.wgate.weight", {1024, 7168}, DType::kBF16);
  Expect(l, "layers.2.attn.compressor.norm.weight", {512}, DType::kBF16);
  Expect(l, "layers.2.attn.indexer.compressor.wkv.weight", {256, 7168}, DType::kBF16);
  Expect(l, "layers.2.attn.indexer.compressor.ape", {4, 256}, DType::kF32);
  Expect(l, "layers.2.attn.indexer.compressor.norm.weight", {128}, DType::kBF16);
  Expect(l, "layers.0.ffn.gate.tid2eid", {129280, 6}, DType::kI64);
  ExpectFp8(l, "layers.60.attn.wo_a", {16384, 4096}, {128, 32});
}

TEST(CheckpointLayoutTest, MtpBlock) {
  const ModelConfig c = LoadOrDie("deepseek-v4-flash");
  const Layout l = ByName(c);
  ExpectFp8(l, "mtp.0.e_proj", {4096, 4096}, {32, 32});
  ExpectFp8(l, "mtp.0.h_proj", {4096, 4096}, {32, 32});
  for (const char* norm : {"enorm", "hnorm", "norm", "attn_norm", "ffn_norm"}) {
    Expect(l, std::string("mtp.0.") + norm + ".weight", {4096}, DType::kBF16);
  }
  Expect(l, "mtp.0.hc_head_fn", {4, 16384}, DType::kF32);
  Expect(l, "mtp.0.hc_head_base", {4}, DType::kF32);
  Expect(l, "mtp.0.hc_head_scale", {1}, DType::kF32);
  Expect(l, "mtp.0.hc_attn_fn", {24, 16384}, DType::kF32);
  Expect(l, "mtp.0.ffn.gate.bias", {256}, DType::kF32);
  Expect(l, "mtp.0.ffn.experts.0.w1.weight", {2048, 2048}, DType::kI8);
  EXPECT_EQ(l.count("mtp.0.ffn.gate.tid2eid"), 0u);
  EXPECT_EQ(l.count("mtp.0.attn.compressor.ape"), 0u);
  EXPECT_EQ(l.count("mtp.0.embed.weight"), 0u);
  EXPECT_EQ(l.at("mtp.0.e_proj.weight").layer, 43);
  EXPECT_EQ(l.at("mtp.0.ffn.experts.9.w2.scale").expert, 9);
  EXPECT_EQ(l.at("embed.weight").layer, -1);
  EXPECT_EQ(l.at("layers.4.attn.wq_a.weight").layer, 4);
  EXPECT_EQ(l.at("layers.4.attn.wq_a.weight").expert, -1);
}

TEST(CheckpointLayoutTest, TinyPartialScaleBlocks) {
  const ModelConfig c = LoadOrDie("v4-tiny");
  const Layout l = ByName(c);
  ExpectFp8(l, "layers.0.attn.wkv", {96, 128}, {1, 1});
  ExpectFp8(l, "layers.0.attn.wo_a", {128, 192}, {1, 2});
  ExpectFp8(l, "layers.0.attn.wq_b", {384, 128}, {3, 1});
  ExpectFp8(l, "layers.0.attn.wo_b", {128, 128}, {1, 1});
  Expect(l, "layers.0.ffn.experts.7.w1.weight", {128, 64}, DType::kI8);
  Expect(l, "layers.0.ffn.experts.7.w1.scale", {128, 4}, DType::kF8E8M0);
  Expect(l, "layers.0.ffn.experts.7.w2.weight", {128, 64}, DType::kI8);
  Expect(l, "layers.0.ffn.gate.tid2eid", {1024, 2}, DType::kI64);
  Expect(l, "layers.2.ffn.gate.bias", {8}, DType::kF32);
  // Layer 1: CSA with the indexer; layer 2: ratio 8 plays HCA.
  Expect(l, "layers.1.attn.compressor.ape", {4, 192}, DType::kF32);
  Expect(l, "layers.1.attn.compressor.wkv.weight", {192, 128}, DType::kBF16);
  ExpectFp8(l, "layers.1.attn.indexer.wq_b", {256, 128}, {2, 1});
  Expect(l, "layers.1.attn.indexer.compressor.ape", {4, 128}, DType::kF32);
  Expect(l, "layers.2.attn.compressor.ape", {8, 96}, DType::kF32);
  Expect(l, "layers.2.attn.compressor.wgate.weight", {96, 128}, DType::kBF16);
  EXPECT_EQ(l.count("layers.2.attn.indexer.weights_proj.weight"), 0u);
  EXPECT_EQ(l.count("layers.5.attn.compressor.ape"), 0u);
  EXPECT_EQ(l.count("mtp.0.attn.compressor.ape"), 0u);
  // Globals first, then the layers in order, then MTP.
  const std::vector<TensorSpec> list = ExpectedTensors(c);
  EXPECT_EQ(list.front().name, "embed.weight");
  EXPECT_EQ(list.back().layer, 6);
  int last_layer = -1;
  for (const TensorSpec& t : list) {
    EXPECT_GE(t.layer, last_layer) << t.name;
    last_layer = t.layer;
  }
  EXPECT_EQ(l.at("layers.0.attn.wo_a.weight").nbytes(), 128 * 192);
  EXPECT_EQ(l.at("layers.0.ffn.gate.tid2eid").nbytes(), 1024 * 2 * 8);
  EXPECT_EQ(l.at("hc_head_fn").nbytes(), 4 * 512 * 4);
}

TEST(CheckpointLayoutTest, CompressorInMtpFollowsItsRatio) {
  ModelConfig c = LoadOrDie("v4-tiny");
  c.compress_ratios.back() = 4;
  const Layout l = ByName(c);
  Expect(l, "mtp.0.attn.compressor.ape", {4, 192}, DType::kF32);
  Expect(l, "mtp.0.attn.indexer.compressor.ape", {4, 128}, DType::kF32);
  Expect(l, "mtp.0.ffn.gate.bias", {8}, DType::kF32);
}

TEST(CheckpointLayoutTest, UnquantizedAndFp8Experts) {
  ModelConfig c = LoadOrDie("v4-tiny");
  c.fp8_weights = false;
  c.expert_dtype = "bf16";
  Layout l = ByName(c);
  Expect(l, "layers.0.attn.wq_a.weight", {128, 128}, DType::kBF16);
  Expect(l, "layers.0.ffn.experts.0.w1.weight", {128, 128}, DType::kBF16);
  for (const auto& [name, t] : l) EXPECT_NE(t.role, TensorRole::kScale) << name;

  c.fp8_weights = true;
  c.expert_dtype = "fp8";
  l = ByName(c);
  ExpectFp8(l, "layers.0.ffn.experts.0.w1", {128, 128}, {1, 1});
  ExpectFp8(l, "layers.0.ffn.experts.0.w2", {128, 128}, {1, 1});
  // The routed-expert count does not depend on the storage format.
  EXPECT_EQ(CountParameters(c).routed_expert, 6 * 8 * 3 * 128 * 128);
}

TEST(CheckpointLayoutTest, V3HasNoTensorList) {
  EXPECT_TRUE(ExpectedTensors(LoadOrDie("deepseek-v3")).empty());
}

// Published: V4-Pro 1.6T / 49B, V4-Flash 284B / 13B, V3 671B / 37B. With the header's
// convention (main model without MTP; active reads one embedding row but the whole head)
// we get Pro 1573B / 48.9B, Flash 284.3B / 13.3B, V3 671.0B / 36.6B. Counting MTP in
// the total would give Pro 1599B but Flash 291B, so the published totals exclude it
// (as V3's "671B + 14B MTP" says); counting the embedding matrix as active would put
// Flash at 13.8B (+6%).
TEST(CheckpointLayoutTest, PublishedParameterCounts) {
  struct Case {
    const char* name;
    double total, active, tolerance;
  };
  for (const Case& k :
       {Case{"deepseek-v4-pro", 1.6e12, 49e9, 0.03}, Case{"deepseek-v4-flash", 284e9, 13e9, 0.03},
        Case{"deepseek-v3", 671e9, 37e9, 0.03}}) {
    const ParameterCount p = CountParameters(LoadOrDie(k.name));
    std::printf("%-18s total %.2fB active %.2fB routed %.2fB mtp %.2fB\n", k.name, p.total / 1e9,
                p.active_per_token / 1e9, p.routed_expert / 1e9, p.mtp / 1e9);
    EXPECT_NEAR(p.total / k.total, 1.0, k.tolerance) << k.name;
    EXPECT_NEAR(p.active_per_token / k.active, 1.0, k.tolerance) << k.name;
    EXPECT_GT(p.mtp, 0) << k.name;
  }
  // V3's MTP module: "685B = 671B main model + 14B MTP".
  EXPECT_NEAR(CountParameters(LoadOrDie("deepseek-v3")).mtp / 14e9, 1.0, 0.05);
}

TEST(CheckpointLayoutTest, MiniFitsTheBudget) {
  const ParameterCount p = CountParameters(LoadOrDie("v4-mini"));
  std::printf("v4-mini total %.1fM active %.1fM mtp %.1fM\n", p.total / 1e6,
              p.active_per_token / 1e6, p.mtp / 1e6);
  EXPECT_LE(p.total + p.mtp, 400'000'000);
  EXPECT_GT(p.total, 200'000'000);
}

TEST(CheckpointLayoutTest, CountMatchesTensorList) {
  const ModelConfig c = LoadOrDie("v4-tiny");
  int64_t params = 0;
  for (const TensorSpec& t : ExpectedTensors(c)) {
    if (t.role == TensorRole::kScale || t.role == TensorRole::kTid2Eid) continue;
    params += NumElements(t.shape) * (t.dtype == DType::kI8 ? 2 : 1);
  }
  const ParameterCount p = CountParameters(c);
  EXPECT_EQ(p.total + p.mtp, params);
  EXPECT_EQ(p.routed_expert, 6 * 8 * 3 * 128 * 128);
  EXPECT_EQ(p.active_per_token,
            p.total - p.routed_expert - 1024 * 128 + 128 + 6 * 2 * 3 * 128 * 128);
  EXPECT_EQ(p.engram, 0);
}

// The V4.1-Flash Engram values quoted in spec §6.1: table rows per layer 384006168 and
// 384016682 under the demo's prime scheme.
TEST(CheckpointLayoutTest, EngramTableSizes) {
  ModelConfig c = LoadOrDie("deepseek-v4-flash");
  c.engram.layer_ids = {1, 14};
  c.engram.max_ngram_size = 4;
  c.engram.n_heads = 8;
  c.engram.head_dim = 256;
  c.engram.vocab_size = {16000000, 16000000, 16000000};
  c.engram.num_embeddings = {384006168, 384016682};
  EXPECT_EQ(CountParameters(c).engram, (384006168LL + 384016682LL) * 256);
}

}  // namespace
}  // namespace dsv4
