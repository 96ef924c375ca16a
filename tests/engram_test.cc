// Engram as DeepSeek-V4.1 releases it, in one process: NumPy-exact multipliers, the release's
// prime table sizes, hashing against a plain re-computation, the fusion (fused wkv, q⊙k
// gate, signed square root) against a plain double computation, the module over the
// checkpoint's FP8 tables, and the layout's Engram tensors.
#include "attention_node/engram.h"

#include <cmath>
#include <fstream>
#include <limits>
#include <random>
#include <sstream>

#include "absl/strings/str_format.h"
#include "core/checkpoint_generator.h"
#include "core/checkpoint_layout.h"
#include "core/dtype.h"
#include "core/engram_hash.h"
#include "core/matmul.h"
#include "core/weight_loader.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/test_util.h"

namespace dsv4 {
namespace {

using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;

std::string PresetPath(const std::string& name) {
  return std::string(DSV4_SOURCE_DIR) + "/models/" + name + "/config.json";
}

ModelConfig Preset(const std::string& name) {
  absl::StatusOr<ModelConfig> c = LoadModelConfig(PresetPath(name));
  EXPECT_TRUE(c.ok()) << c.status();
  return *c;
}

// Spec deepseek-v41-model.md §3.4 (verified there with NumPy): default_rng(10007·ℓ).
TEST(EngramHashTest, MultipliersMatchNumpy) {
  EXPECT_THAT(EngramMultipliers(1, 99092, 4),
              ElementsAre(76632096046245, 4839876093313, 35959672319349, 73987337458391));
  EXPECT_THAT(EngramMultipliers(14, 99092, 4),
              ElementsAre(67716810739261, 51510806800915, 30921347202721, 82619226485591));
  EXPECT_THAT(EngramMultipliers(1, 99092, 3),
              ElementsAre(76632096046245, 4839876093313, 35959672319349));
  // All odd, and below 2·B so c · m cannot overflow for c < V_comp.
  for (int64_t m : EngramMultipliers(3, 512, 8)) {
    EXPECT_EQ(m % 2, 1);
    EXPECT_LT(m, INT64_MAX / 512);
  }
}

// The release's tables (spec §3.3): 24 primes per layer from one global set.
TEST(EngramHashTest, ReleasePrimesAndRows) {
  const ModelConfig c = Preset("deepseek-v4.1-flash");
  const std::vector<std::vector<int64_t>> sizes = EngramHeadSizes(c.engram);
  ASSERT_EQ(sizes.size(), 2u);
  ASSERT_EQ(sizes[0].size(), 24u);
  EXPECT_THAT(std::vector<int64_t>(sizes[0].begin(), sizes[0].begin() + 3),
              ElementsAre(16000057, 16000079, 16000081));
  EXPECT_EQ(sizes[0][23], 16000463);
  EXPECT_EQ(sizes[1][0], 16000477);
  EXPECT_EQ(sizes[1][23], 16000889);
  for (int i = 0; i < 2; ++i) {
    int64_t rows = 0;
    for (int64_t p : sizes[i]) rows += p;
    EXPECT_EQ(rows, c.engram.num_embeddings[i]);
  }
  EXPECT_EQ(c.engram.num_embeddings, (std::vector<int64_t>{384006168, 384016682}));
}

// A compressed map for v41-tiny's 1024 ids: id mod 895 for ids < 1000 (so 895 keys), the
// last 24 ids left to the tokenizer-less fallback (they hash as the pad token).
std::vector<int64_t> TinyMap() {
  std::vector<int64_t> map(1000);
  for (int64_t id = 0; id < 1000; ++id) map[id] = id % 895;
  return map;
}

// The rows by the definition, written plainly: for each position the look-backs (pad before
// the start), the XOR chain of products, the floor modulus and the head offsets.
std::vector<int64_t> PlainRows(const ModelConfig& c, int index, const std::vector<int64_t>& map,
                               const std::vector<int32_t>& tokens) {
  const EngramConfig& e = c.engram;
  const std::vector<int64_t> m =
      EngramMultipliers(e.layer_ids[index], e.compressed_vocab_size, e.max_ngram_size);
  const std::vector<int64_t> sizes = EngramHeadSizes(e)[index];
  auto comp = [&](int32_t id) { return id < static_cast<int32_t>(map.size()) ? map[id] : map[2]; };
  std::vector<int64_t> rows;
  for (size_t t = 0; t < tokens.size(); ++t) {
    int64_t offset = 0, r = 0;
    std::vector<int64_t> out;
    for (int n = 1; n <= e.max_ngram_size; ++n) {
      const int s = n - 1;
      const int64_t c_s = static_cast<int64_t>(t) >= s ? comp(tokens[t - s]) : map[2];
      r ^= c_s * m[s];
      if (n < 2) continue;
      for (int j = 0; j < e.n_heads; ++j) {
        const int64_t p = sizes[(n - 2) * e.n_heads + j];
        out.push_back(offset + r % p);
        offset += p;
      }
    }
    rows.insert(rows.end(), out.begin(), out.end());
  }
  return rows;
}

TEST(EngramHashTest, RowIdsFollowTheDefinition) {
  const ModelConfig config = Preset("v41-tiny");
  absl::StatusOr<EngramHasher> h = EngramHasher::Create(config, TinyMap(), 895);
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(h->heads(), 4);
  EXPECT_EQ(h->pad_id(), 2);
  EXPECT_EQ(h->table_rows(1), config.engram.num_embeddings[1]);
  const std::vector<int32_t> tokens = {5, 700, 1023, 899, 4, 5, 700};
  for (int index = 0; index < 2; ++index) {
    const std::vector<int64_t> want = PlainRows(config, index, TinyMap(), tokens);
    std::vector<int64_t> rows(tokens.size() * 4);
    EngramState state = h->NewState();
    h->RowIds(index, state, tokens, rows.data());
    EXPECT_EQ(rows, want) << index;
    // Decode: the same rows one token at a time, the history carrying the look-backs.
    for (size_t t = 0; t < tokens.size(); ++t) {
      std::vector<int64_t> one(4);
      h->RowIds(index, state, absl::MakeConstSpan(&tokens[t], 1), one.data());
      EXPECT_THAT(one, ElementsAreArray(rows.begin() + 4 * t, rows.begin() + 4 * t + 4));
      h->Advance(&state, absl::MakeConstSpan(&tokens[t], 1));
    }
  }
  // 899 and 4 share compressed id 4: same bigram with the same predecessor, same rows.
  const std::vector<int32_t> a = {7, 899}, b = {7, 4};
  std::vector<int64_t> ra(8), rb(8);
  h->RowIds(0, h->NewState(), a, ra.data());
  h->RowIds(0, h->NewState(), b, rb.data());
  EXPECT_EQ(ra, rb);
}

TEST(EngramHashTest, CreateRejectsBadMaps) {
  const ModelConfig config = Preset("v41-tiny");
  EXPECT_THAT(EngramHasher::Create(config, TinyMap(), 894).status().message(),
              HasSubstr("engram_compressed_vocab_size is 895"));
  std::vector<int64_t> out_of_range = TinyMap();
  out_of_range[9] = 895;
  EXPECT_FALSE(EngramHasher::Create(config, out_of_range, 895).ok());
  EXPECT_FALSE(EngramHasher::Create(config, std::vector<int64_t>(1025, 0), 895).ok());
  EXPECT_FALSE(EngramHasher::Create(config, {0, 1}, 895).ok());  // no pad token
}

// The official Engram.forward for one token, in double, written plainly.
std::vector<double> PlainEngram(const std::vector<float>& x, const std::vector<float>& kv,
                                const std::vector<float>& gate, int n, int d, double eps) {
  std::vector<double> out(n * d);
  const float* v = kv.data() + n * d;
  for (int i = 0; i < n; ++i) {
    const float* h = x.data() + i * d;
    const float* key = kv.data() + i * d;
    double dot = 0, hh = 0, kk = 0;
    for (int c = 0; c < d; ++c) {
      dot += double{h[c]} * gate[i * d + c] * key[c];
      hh += double{h[c]} * h[c];
      kk += double{key[c]} * key[c];
    }
    dot *=
        1.0 / std::sqrt(hh / d + eps) / std::sqrt(kk / d + eps) / std::sqrt(static_cast<double>(d));
    const double g =
        1.0 / (1.0 + std::exp(-std::copysign(std::sqrt(std::max(std::fabs(dot), 1e-6)), dot)));
    for (int c = 0; c < d; ++c) out[i * d + c] = h[c] + g * v[c];
  }
  return out;
}

TEST(EngramLayerTest, MatchesPlainComputation) {
  const int n = 3, d = 16, width = 32, T = 5;
  std::mt19937 rng(7);
  std::normal_distribution<float> g(0.0f, 0.5f);
  std::vector<float> wkv((n + 1) * d * width), gate(n * d), x(T * n * d), e(T * width);
  for (float& v : wkv) v = g(rng);
  for (float& v : gate) v = 1.0f + g(rng);
  for (float& v : x) v = g(rng);
  for (float& v : e) v = g(rng);
  Tensor gate_t({n, d});
  std::copy(gate.begin(), gate.end(), gate_t.data());
  const EngramLayer layer(*WeightMatrix::F32(wkv.data(), (n + 1) * d, width), std::move(gate_t),
                          1e-20f);
  ASSERT_EQ(layer.width(), width);
  std::vector<float> out(x.size());
  layer.Apply(x.data(), e.data(), T, out.data());
  for (int t = 0; t < T; ++t) {
    std::vector<float> kv((n + 1) * d), xt(x.begin() + t * n * d, x.begin() + (t + 1) * n * d);
    for (int r = 0; r < (n + 1) * d; ++r) {
      double acc = 0;
      for (int k = 0; k < width; ++k) acc += double{wkv[r * width + k]} * e[t * width + k];
      kv[r] = static_cast<float>(acc);
    }
    const std::vector<double> want = PlainEngram(xt, kv, gate, n, d, 1e-20);
    for (int i = 0; i < n * d; ++i) EXPECT_NEAR(out[t * n * d + i], want[i], 2e-5) << t << " " << i;
  }
  // One token alone gives the same bits as inside the batch.
  std::vector<float> alone(n * d);
  layer.Apply(x.data() + 2 * n * d, e.data() + 2 * width, 1, alone.data());
  EXPECT_THAT(alone, ElementsAreArray(out.begin() + 2 * n * d, out.begin() + 3 * n * d));
  // At dot = 0 the gate is σ(+√1e−6) for +0 (copysign), not σ(0) = 0.5.
  std::vector<float> zero_x(n * d, 0.0f), zero_out(n * d);
  layer.Apply(zero_x.data(), e.data(), 1, zero_out.data());
  const double g0 = 1.0 / (1.0 + std::exp(-1e-3));
  std::vector<float> kv0((n + 1) * d);
  MatMul(e.data(), 1, *WeightMatrix::F32(wkv.data(), (n + 1) * d, width), kv0.data());
  EXPECT_NEAR(zero_out[0], g0 * kv0[n * d], 1e-6);
}

// The generated v41-tiny checkpoint: tables, the module over local tables, checksums.
class EngramCheckpointTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new testing::TempDir("engram-v41-tiny");
    config_ = new ModelConfig(Preset("v41-tiny"));
    std::ifstream in(PresetPath("v41-tiny"));
    std::stringstream text;
    text << in.rdbuf();
    GenerateOptions options;
    options.tokenizer_path = std::string(DSV4_SOURCE_DIR) + "/models/v41-tiny/tokenizer.json";
    ASSERT_TRUE(GenerateCheckpoint(*config_, text.str(), dir_->path(), options).ok());
  }
  static void TearDownTestSuite() {
    delete dir_;
    delete config_;
  }
  static testing::TempDir* dir_;
  static ModelConfig* config_;
};
testing::TempDir* EngramCheckpointTest::dir_ = nullptr;
ModelConfig* EngramCheckpointTest::config_ = nullptr;

TEST_F(EngramCheckpointTest, TablesAsReleased) {
  absl::StatusOr<std::unique_ptr<Checkpoint>> ckpt = Checkpoint::Open(dir_->path());
  ASSERT_TRUE(ckpt.ok());
  absl::StatusOr<const TensorView*> table = (*ckpt)->Get("layers.1.engram.embed.weight");
  ASSERT_TRUE(table.ok());
  EXPECT_EQ((*table)->shape, (Shape{4062, 64}));
  EXPECT_EQ((*table)->dtype, DType::kF8E4M3);
  absl::StatusOr<const TensorView*> scale = (*ckpt)->Get("layers.5.engram.embed.scale");
  ASSERT_TRUE(scale.ok());
  EXPECT_EQ((*scale)->shape, (Shape{4152, 2}));
  EXPECT_EQ((*scale)->dtype, DType::kF8E8M0);
  EXPECT_FALSE((*ckpt)->Has("layers.1.engram.multipliers"));  // derived, not stored
  std::ifstream in(dir_->path() + "/" + kEngramChecksumsFile);
  const nlohmann::json j = nlohmann::json::parse(in);
  EXPECT_EQ(j["tensors"]["layers.1.engram.embed.weight"][0].get<std::string>(),
            absl::StrFormat("%016x", EngramChunkChecksum((*table)->data, (*table)->nbytes)));
  EXPECT_TRUE(j["tensors"].contains("layers.5.engram.embed.scale"));
}

TEST_F(EngramCheckpointTest, ModuleMatchesManualLookupAndLayer) {
  absl::StatusOr<std::unique_ptr<Checkpoint>> ckpt = Checkpoint::Open(dir_->path());
  ASSERT_TRUE(ckpt.ok());
  absl::StatusOr<std::unique_ptr<EngramModule>> module = EngramModule::Load(*config_, ckpt->get());
  ASSERT_TRUE(module.ok()) << module.status();
  const EngramHasher& h = (*module)->hasher();
  EXPECT_TRUE((*module)->is_engram_layer(5));
  EXPECT_FALSE((*module)->is_engram_layer(0));

  // Two sequences of 3 and 2 tokens in one step, at Engram layer 5 (index 1).
  const int64_t nd = 4 * 128, de = 64;
  std::vector<int32_t> a = {5, 700, 1023}, b = {17, 17};
  EngramState sa = h.NewState(), sb = h.NewState();
  std::vector<EngramModule::Segment> segs = {{&sa, a, 0}, {&sb, b, 3}};
  std::vector<float> x(5 * nd);
  std::mt19937 rng(1);
  std::normal_distribution<float> g;
  for (float& v : x) v = g(rng);
  std::vector<float> got = x;
  std::unique_ptr<EngramRowFetch> fetch = (*module)->Begin(segs);
  ASSERT_TRUE((*module)->Apply(5, fetch.get(), segs, got.data()).ok());

  // By hand: hash, decode the FP8 rows and their E8M0 scales, apply the layer.
  const TensorView* table = *(*ckpt)->Get("layers.5.engram.embed.weight");
  const TensorView* scale = *(*ckpt)->Get("layers.5.engram.embed.scale");
  WeightLoader loader(ckpt->get(), config_->weight_block_size);
  absl::StatusOr<EngramLayer> layer = EngramLayer::Load(loader, *config_, 5);
  ASSERT_TRUE(layer.ok());
  int64_t row0 = 0;
  for (auto* seq : {&a, &b}) {
    const int64_t T = static_cast<int64_t>(seq->size());
    std::vector<int64_t> rows(T * 4);
    h.RowIds(1, h.NewState(), *seq, rows.data());
    std::vector<float> e(T * 4 * de);
    for (int64_t r = 0; r < T * 4; ++r) {
      for (int64_t i = 0; i < de; ++i) {
        e[r * de + i] = E4M3ToFloat(table->data[rows[r] * de + i]) *
                        std::ldexp(1.0f, int{scale->data[rows[r] * 2 + i / 32]} - 127);
      }
    }
    std::vector<float> want(T * nd);
    layer->Apply(x.data() + row0 * nd, e.data(), T, want.data());
    for (int64_t i = 0; i < T * nd; ++i) ASSERT_EQ(got[row0 * nd + i], want[i]) << i;
    row0 += T;
  }
  (*module)->Advance(segs);
  EXPECT_THAT(sa.history, ElementsAre(h.compressed(700), h.compressed(1023)));
  EXPECT_THAT(sb.history, ElementsAre(h.compressed(17), h.compressed(17)));
}

TEST(EngramLayoutTest, ReleasedTablesAreCountedSeparately) {
  const ModelConfig c = Preset("deepseek-v4.1-flash");
  int64_t table_bytes = 0, scale_bytes = 0;
  for (const TensorSpec& t : ExpectedTensors(c)) {
    if (t.role == TensorRole::kEngramTable) table_bytes += t.nbytes();
    if (t.name.find("engram.embed.scale") != std::string::npos) scale_bytes += t.nbytes();
  }
  // Spec §2: 2 × 264 B per row, 202,758,032,400 B; 196.6 B table parameters.
  EXPECT_EQ(table_bytes + scale_bytes, int64_t{202758032400});
  EXPECT_EQ(CountParameters(c).engram, (384006168 + int64_t{384016682}) * 256);
}

}  // namespace
}  // namespace dsv4
