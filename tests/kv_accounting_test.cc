// KV accounting against the figures of spec §5 for the official V4 Pro and Flash configs,
// and against V4.1-Flash's CSA2 figures computed by hand from its released config
// (spec deepseek-v41-model.md §6): D = 512, DI = 128, W = 128, 40 layers, kv sources
// 2, 8, 14 (ratio 2) and 20 (ratio 1).
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
  EXPECT_EQ(WindowEntryBytes(flash, prod), 576);
  EXPECT_EQ(CompressedEntryBytes(flash, prod), 576);
  EXPECT_EQ(IndexKeyBytes(flash, prod), 68);
  EXPECT_DOUBLE_EQ(ModelKvCost(flash, prod).bytes_per_token, 3471);
  EXPECT_DOUBLE_EQ(ModelKvCost(pro, prod).bytes_per_token, 4969.5);
  EXPECT_EQ(ModelKvCost(flash, prod).window_bytes, 43 * 128 * 576);
  prod.entry_scales = true;
  EXPECT_EQ(CompressedEntryBytes(flash, prod), 583);
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

// The released precision (FP8 window with E8M0 per 32 over all 512 dims; FP4 compressed
// entries with an E4M3 scale per 16; FP4 index keys with E8M0 per 32), only kv sources
// holding compressed entries and index keys: 3 × (288 + 68) / 2 + (288 + 68) = 890 B/token,
// the published V4.1-Flash global KV.
TEST(KvAccountingTest, V41FlashProductionIs890BytesPerToken) {
  const ModelConfig v41 = Preset("deepseek-v4.1-flash");
  const KvLayoutOptions prod{KvLayout::kProduction};
  EXPECT_EQ(WindowEntryBytes(v41, prod), 512 + 16);
  EXPECT_EQ(CompressedEntryBytes(v41, prod), 256 + 32);
  EXPECT_EQ(IndexKeyBytes(v41, prod), 64 + 4);
  EXPECT_DOUBLE_EQ(LayerKvCost(v41, 2, prod).bytes_per_token, (288 + 68) / 2.0);  // source
  EXPECT_DOUBLE_EQ(LayerKvCost(v41, 3, prod).bytes_per_token, 0);     // reuses layer 2's
  EXPECT_DOUBLE_EQ(LayerKvCost(v41, 20, prod).bytes_per_token, 356);  // ratio-1 source
  EXPECT_DOUBLE_EQ(LayerKvCost(v41, 24, prod).bytes_per_token, 0);    // reindex: layer 20's
  EXPECT_DOUBLE_EQ(LayerKvCost(v41, 0, prod).bytes_per_token, 0);     // window only
  const KvCost total = ModelKvCost(v41, prod);
  EXPECT_DOUBLE_EQ(total.bytes_per_token, 890);
  EXPECT_EQ(total.window_bytes, 40 * 128 * 528);                 // every layer's window
  EXPECT_EQ(total.compressor_state_bytes, 3 * 2 * 2 * 512 * 4);  // ratio-2 sources only
  // entry_scales is a V4 option: V4.1's formats always carry their scales.
  EXPECT_DOUBLE_EQ(ModelKvCost(v41, {KvLayout::kProduction, true}).bytes_per_token, 890);
  // Exact bytes after 1001 tokens: 500 entries in each ratio-2 source, 1001 in layer 20.
  EXPECT_EQ(SequenceKvBytes(v41, prod, 1001),
            40 * 128 * 528 + 3 * 8192 + (3 * 500 + 1001) * (288 + 68));
}

TEST(KvAccountingTest, V41ReferenceBf16SharesTheCompressedKv) {
  const ModelConfig v41 = Preset("deepseek-v4.1-flash");
  const KvCost bf16 = ModelKvCost(v41, {KvLayout::kReferenceBf16});
  EXPECT_DOUBLE_EQ(bf16.bytes_per_token, 3 * (1024 + 256) / 2.0 + (1024 + 256));
  EXPECT_EQ(bf16.window_bytes, 40 * 128 * 1024);
}

// The runtime's fp32 state (SequenceState::bytes()): every layer's [W, D] window; on kv
// sources ⌊P/m⌋ entries of D and indexer keys of DI, and the kv + score buffers [m, D]
// when m > 1; nothing else (no indexer compressor, Engram's 3-id history not counted).
TEST(KvAccountingTest, V41RuntimeLayoutCountsOnlyKvSources) {
  const ModelConfig v41 = Preset("deepseek-v4.1-flash");
  const KvLayoutOptions f32{KvLayout::kRuntimeF32};
  const int64_t fixed = 40 * 128 * 512 * 4 + 3 * (2 * 2 * 512 * 4);
  EXPECT_EQ(ModelKvCost(v41, f32).fixed_bytes(), fixed);
  EXPECT_EQ(SequenceKvBytes(v41, f32, 0), fixed);
  const int64_t per_entry = (512 + 128) * 4;
  EXPECT_EQ(SequenceKvBytes(v41, f32, 1), fixed + 1 * per_entry);  // layer 20 only
  EXPECT_EQ(SequenceKvBytes(v41, f32, 2), fixed + (3 + 2) * per_entry);
  EXPECT_EQ(SequenceKvBytes(v41, f32, 7), fixed + (3 * 3 + 7) * per_entry);
  // v41-tiny: W = 8, D = 96, DI = 64; sources 2 (ratio 2) and 4 (ratio 1) of 8 layers.
  const ModelConfig tiny = Preset("v41-tiny");
  ASSERT_EQ(tiny.head_dim, 96);
  ASSERT_EQ(tiny.index_head_dim, 64);
  EXPECT_EQ(SequenceKvBytes(tiny, f32, 5),
            8 * 8 * 96 * 4 + 2 * 2 * 96 * 4 + (5 / 2 + 5) * (96 + 64) * 4);
}

}  // namespace
}  // namespace dsv4
