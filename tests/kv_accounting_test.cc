// KV accounting against the figures of spec §5 for the official Pro and Flash configs.
#include "core/kv_accounting.h"

#include <string>

#include "gtest/gtest.h"

namespace dsv4 {
namespace {

ModelConfig Preset(const std::string& name) {
  absl::StatusOr<ModelConfig> config =
      LoadModelConfig(std::string(DSV4_SOURCE_DIR) + "/models/" + name + "/config.json");
  EXPECT_TRUE(config.ok()) << config.status();
  return *config;
}

TEST(KvAccountingTest, ReferenceBf16LayoutMatchesSpec) {
  const KvLayoutOptions bf16{KvLayout::kReferenceBf16};
  const ModelConfig flash = Preset("deepseek-v4-flash");
  const ModelConfig pro = Preset("deepseek-v4-pro");
  EXPECT_DOUBLE_EQ(LayerKvCost(flash, 2, bf16).bytes_per_token, 320);  // CSA
  EXPECT_DOUBLE_EQ(LayerKvCost(flash, 3, bf16).bytes_per_token, 8);    // HCA
  EXPECT_DOUBLE_EQ(LayerKvCost(flash, 0, bf16).bytes_per_token, 0);    // window only
  const KvCost f = ModelKvCost(flash, bf16);
  EXPECT_DOUBLE_EQ(f.bytes_per_token, 6880);
  EXPECT_EQ(f.window_bytes, 43 * 128 * 1024);
  EXPECT_EQ(f.compressor_state_bytes, (21 * (64 + 16) + 20 * 512) * 1024);
  const KvCost p = ModelKvCost(pro, bf16);
  EXPECT_DOUBLE_EQ(p.bytes_per_token, 9848);
  EXPECT_EQ(p.window_bytes, 61 * 128 * 1024);
}

TEST(KvAccountingTest, ProductionLayoutMatchesSpec) {
  const ModelConfig flash = Preset("deepseek-v4-flash");
  const ModelConfig pro = Preset("deepseek-v4-pro");
  KvLayoutOptions prod{KvLayout::kProduction};
  EXPECT_EQ(KvEntryBytes(flash, prod), 576);
  EXPECT_EQ(IndexKeyBytes(flash, prod), 68);
  EXPECT_DOUBLE_EQ(ModelKvCost(flash, prod).bytes_per_token, 3471);
  EXPECT_DOUBLE_EQ(ModelKvCost(pro, prod).bytes_per_token, 4969.5);
  EXPECT_EQ(ModelKvCost(flash, prod).window_bytes, 43 * 128 * 576);
  prod.entry_scales = true;
  EXPECT_EQ(KvEntryBytes(flash, prod), 583);
  EXPECT_NEAR(ModelKvCost(flash, prod).bytes_per_token, 3509, 1);
  EXPECT_NEAR(ModelKvCost(pro, prod).bytes_per_token, 5024, 1);
}

TEST(KvAccountingTest, RatiosToV32AreCloseToThePublishedTenAndSevenPercent) {
  const double v32 = V32KvBytesPerToken(Preset("deepseek-v3"));
  EXPECT_DOUBLE_EQ(v32, 61 * (656 + 132));
  const KvLayoutOptions prod{KvLayout::kProduction};
  const double pro = ModelKvCost(Preset("deepseek-v4-pro"), prod).PerTokenAt(1 << 20) / v32;
  const double flash = ModelKvCost(Preset("deepseek-v4-flash"), prod).PerTokenAt(1 << 20) / v32;
  EXPECT_NEAR(pro, 0.10, 0.01);
  EXPECT_NEAR(flash, 0.07, 0.01);
}

TEST(KvAccountingTest, RuntimeLayoutCountsWholeBlocksOnly) {
  const ModelConfig flash = Preset("deepseek-v4-flash");
  const KvLayoutOptions f32{KvLayout::kRuntimeF32};
  const int64_t fixed = ModelKvCost(flash, f32).fixed_bytes();
  EXPECT_EQ(SequenceKvBytes(flash, f32, 0), fixed);
  EXPECT_EQ(SequenceKvBytes(flash, f32, 3), fixed);
  // 4 tokens complete one CSA block in 21 layers: an entry and an indexer key each.
  EXPECT_EQ(SequenceKvBytes(flash, f32, 4), fixed + 21 * (512 + 128) * 4);
  EXPECT_EQ(SequenceKvBytes(flash, f32, 128), fixed + 21 * 32 * (512 + 128) * 4 + 20 * 512 * 4);
}

}  // namespace
}  // namespace dsv4
