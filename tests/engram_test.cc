// Engram in one process: NumPy-exact multipliers, prime table sizes, hashing against hand
// computations, the fusion (gate, conv) against a plain computation, decode = prefill,
// and the checkpoint layout and presets.
#include "attention_node/engram.h"

#include <cfloat>
#include <cmath>
#include <fstream>
#include <limits>
#include <random>
#include <sstream>

#include "absl/strings/str_format.h"
#include "core/checkpoint_generator.h"
#include "core/checkpoint_layout.h"
#include "core/engram_hash.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/test_util.h"

namespace dsv4 {
namespace {

using ::testing::ElementsAre;
using ::testing::ElementsAreArray;

std::string PresetPath(const std::string& name) {
  return std::string(DSV4_SOURCE_DIR) + "/models/" + name + "/config.json";
}

ModelConfig Preset(const std::string& name) {
  absl::StatusOr<ModelConfig> c = LoadModelConfig(PresetPath(name));
  EXPECT_TRUE(c.ok()) << c.status();
  return *c;
}

// Spec §6.3 quotes the demo scheme's values for V_comp 99092, seed 0 (N = 4).
TEST(EngramHashTest, MultipliersMatchNumpy) {
  EXPECT_THAT(EngramMultipliers(0, 1, 99092, 4),
              ElementsAre(76632096046245, 4839876093313, 35959672319349, 73987337458391));
  EXPECT_THAT(EngramMultipliers(0, 14, 99092, 4),
              ElementsAre(67716810739261, 51510806800915, 30921347202721, 82619226485591));
  EXPECT_THAT(EngramMultipliers(0, 1, 99092, 3),
              ElementsAre(76632096046245, 4839876093313, 35959672319349));
  // All odd, and below 2·B so tok · m cannot overflow for tok < V_comp.
  for (int64_t m : EngramMultipliers(7, 3, 512, 8)) {
    EXPECT_EQ(m % 2, 1);
    EXPECT_LT(m, INT64_MAX / 512);
  }
}

TEST(EngramHashTest, HeadSizesArePrimesAboveTheBase) {
  EngramConfig e;
  e.layer_ids = {1, 3};
  e.max_ngram_size = 3;
  e.n_heads = 2;
  e.vocab_size = {1009, 1009};
  EXPECT_THAT(EngramHeadSizes(e)[0], ElementsAre(1009, 1013, 1019, 1021));
  EXPECT_THAT(EngramHeadSizes(e)[1], ElementsAre(1031, 1033, 1039, 1049));
}

// Hand-computed rows for tokens [5, 700, 1023] with multipliers (3, 5, 7), the canonical
// map id mod 512 (so 188, 511), pad 2, and heads 1009, 1013 (n = 2), 1019, 1021 (n = 3)
// at offsets 0, 1009, 2022, 3041:
//   t=0: mix2 = 15^10 = 5,        mix3 = 5^14 = 11
//   t=1: mix2 = 564^25 = 557,     mix3 = 557^14 = 547
//   t=2: mix2 = 1533^940 = 1617,  mix3 = 1617^35 = 1650
TEST(EngramHashTest, RowIdsByHand) {
  const ModelConfig config = Preset("v4-tiny-engram");
  absl::StatusOr<EngramHasher> h =
      EngramHasher::Create(config, SyntheticCanonicalMap(config), {{3, 5, 7}});
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(h->heads(), 4);
  EXPECT_EQ(h->pad_id(), 2);
  EXPECT_EQ(h->table_rows(0), 1009 + 1013 + 1019 + 1021);
  EngramState state = h->NewState();
  const std::vector<int32_t> tokens = {5, 700, 1023};
  std::vector<int64_t> rows(12);
  h->RowIds(0, state, tokens, rows.data());
  EXPECT_THAT(rows,
              ElementsAre(5, 1009 + 5, 2022 + 11, 3041 + 11,        //
                          557, 1009 + 557, 2022 + 547, 3041 + 547,  //
                          1617 % 1009, 1009 + 1617 % 1013, 2022 + 1650 % 1019, 3041 + 1650 % 1021));
  // Decode: the same rows one token at a time, the history carrying the context.
  for (size_t t = 0; t < tokens.size(); ++t) {
    std::vector<int64_t> one(4);
    h->RowIds(0, state, absl::MakeConstSpan(&tokens[t], 1), one.data());
    EXPECT_THAT(one, ElementsAreArray(rows.begin() + 4 * t, rows.begin() + 4 * t + 4));
    h->Advance(&state, absl::MakeConstSpan(&tokens[t], 1));
  }
}

// Products that wrap int64 follow NumPy: wrapped bits, then a non-negative modulus.
TEST(EngramHashTest, WrappingProductsFollowNumpy) {
  const ModelConfig config = Preset("v4-tiny-engram");
  const int64_t big = (int64_t{1} << 62) + 1;
  absl::StatusOr<EngramHasher> h =
      EngramHasher::Create(config, SyntheticCanonicalMap(config), {{big, 1, 1}});
  ASSERT_TRUE(h.ok());
  std::vector<int64_t> rows(4);
  const std::vector<int32_t> tokens = {3};
  h->RowIds(0, h->NewState(), tokens, rows.data());
  // 3·(2^62 + 1) wraps to −2^62 + 3; XOR 2 (the pad) gives −2^62 + 1.
  const int64_t mix2 = std::numeric_limits<int64_t>::min() / 2 + 1;
  const int64_t expected = ((mix2 % 1009) + 1009) % 1009;
  EXPECT_EQ(rows[0], expected);
}

TEST(EngramHashTest, CreateRejectsBadConstants) {
  const ModelConfig config = Preset("v4-tiny-engram");
  EXPECT_FALSE(EngramHasher::Create(config, {1, 2, 3}, {{3, 5, 7}}).ok());
  EXPECT_FALSE(EngramHasher::Create(config, SyntheticCanonicalMap(config), {{3, 5}}).ok());
  std::vector<int64_t> negative = SyntheticCanonicalMap(config);
  negative[9] = -1;
  EXPECT_FALSE(EngramHasher::Create(config, negative, {{3, 5, 7}}).ok());
}

// A small Engram layer with random weights (d = 8, n = 2, N = 3, K = 2, d_e = 4).
struct SmallLayer {
  ModelConfig config;
  Tensor value_w, key_w;  // [d, W], [n, d, W]: what w's projections view
  EngramLayer::Weights w;
  SmallLayer() {
    config.hidden_size = 8;
    config.hc_mult = 2;
    config.engram.max_ngram_size = 3;
    config.engram.n_heads = 2;
    config.engram.head_dim = 4;
    config.engram.kernel_size = 4;
    std::mt19937 rng(7);
    std::normal_distribution<float> g(0.0f, 0.5f);
    auto random = [&](Shape s, float mean = 0.0f) {
      Tensor t(s);
      for (int64_t i = 0; i < t.numel(); ++i) t.data()[i] = mean + g(rng);
      return t;
    };
    value_w = random({8, 16});
    w.value_w = *WeightMatrix::F32(value_w.data(), 8, 16);
    w.value_b = random({8});
    key_w = random({2, 8, 16});
    for (int i = 0; i < 2; ++i)
      w.key_w.push_back(*WeightMatrix::F32(key_w.data() + i * 8 * 16, 8, 16));
    w.key_b = random({2, 8});
    w.norm1 = random({2, 8}, 1.0f);
    w.norm2 = random({2, 8}, 1.0f);
    w.conv_norm = random({2, 8}, 1.0f);
    w.conv_w = random({16, 4});
  }
};

double RmsScale(const std::vector<double>& x, double eps) {
  double ss = 0;
  for (double v : x) ss += v * v;
  return 1.0 / std::sqrt(ss / x.size() + eps);
}

// The demo's Engram.forward for one sequence from position 0, in double, written plainly.
std::vector<double> PlainEngram(const SmallLayer& s, const std::vector<float>& x,
                                const std::vector<float>& e, int T) {
  const int d = 8, n = 2, W = 16, K = 4, dil = 3;
  const EngramLayer::Weights& w = s.w;
  std::vector<double> u(T * n * d), un(T * n * d), out(T * n * d);
  for (int t = 0; t < T; ++t) {
    std::vector<double> v(d);
    for (int c = 0; c < d; ++c) {
      v[c] = w.value_b.data()[c];
      for (int k = 0; k < W; ++k) v[c] += s.value_w.data()[c * W + k] * e[t * W + k];
    }
    for (int i = 0; i < n; ++i) {
      std::vector<double> key(d), q(d);
      for (int c = 0; c < d; ++c) {
        key[c] = w.key_b.data()[i * d + c];
        for (int k = 0; k < W; ++k) key[c] += s.key_w.data()[(i * d + c) * W + k] * e[t * W + k];
        q[c] = x[(t * n + i) * d + c];
      }
      const double rk = RmsScale(key, FLT_EPSILON), rq = RmsScale(q, FLT_EPSILON);
      double z = 0;
      for (int c = 0; c < d; ++c) {
        z += key[c] * rk * w.norm1.data()[i * d + c] * q[c] * rq * w.norm2.data()[i * d + c];
      }
      z /= std::sqrt(static_cast<double>(d));
      z = (z > 0 ? 1 : (z < 0 ? -1 : 0)) * std::sqrt(std::max(std::fabs(z), 1e-6));
      const double alpha = 1.0 / (1.0 + std::exp(-z));
      std::vector<double> ui(d);
      for (int c = 0; c < d; ++c) ui[c] = u[(t * n + i) * d + c] = alpha * v[c];
      const double r = RmsScale(ui, 1e-5);
      for (int c = 0; c < d; ++c)
        un[(t * n + i) * d + c] = ui[c] * r * w.conv_norm.data()[i * d + c];
    }
  }
  for (int t = 0; t < T; ++t) {
    for (int ch = 0; ch < n * d; ++ch) {
      double y = 0;
      for (int j = 0; j < K; ++j) {
        const int at = t - (K - 1 - j) * dil;
        if (at >= 0) y += w.conv_w.data()[ch * K + j] * un[at * n * d + ch];
      }
      const int o = t * n * d + ch;
      out[o] = x[o] + u[o] + y / (1.0 + std::exp(-y));
    }
  }
  return out;
}

TEST(EngramLayerTest, MatchesPlainComputationAndDecode) {
  SmallLayer s;
  EngramLayer layer(s.config, s.w);
  ASSERT_EQ(layer.width(), 16);
  const int T = 11;  // beyond the conv's reach of (4 − 1)·3 = 9 positions
  std::mt19937 rng(3);
  std::normal_distribution<float> g;
  std::vector<float> x(T * 2 * 8), e(T * 16);
  for (float& v : x) v = g(rng);
  for (float& v : e) v = g(rng);
  const std::vector<double> expected = PlainEngram(s, x, e, T);

  std::vector<float> history(9 * 16, 0.0f), out(x.size());
  layer.Apply(x.data(), e.data(), T, &history, out.data());
  for (size_t i = 0; i < out.size(); ++i) EXPECT_NEAR(out[i], expected[i], 2e-5) << i;

  // Prefill 4, then decode one token at a time: same outputs.
  std::vector<float> hist2(9 * 16, 0.0f), out2(x.size());
  layer.Apply(x.data(), e.data(), 4, &hist2, out2.data());
  for (int t = 4; t < T; ++t) {
    layer.Apply(x.data() + t * 16, e.data() + t * 16, 1, &hist2, out2.data() + t * 16);
  }
  for (size_t i = 0; i < out.size(); ++i) EXPECT_NEAR(out2[i], out[i], 1e-6) << i;
}

// The generated tiny checkpoint: layout, constants and the module over local tables.
class EngramCheckpointTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new testing::TempDir("engram-tiny");
    config_ = new ModelConfig(Preset("v4-tiny-engram"));
    std::ifstream in(PresetPath("v4-tiny-engram"));
    std::stringstream text;
    text << in.rdbuf();
    ASSERT_TRUE(GenerateCheckpoint(*config_, text.str(), dir_->path(), {}).ok());
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

TEST_F(EngramCheckpointTest, ConstantsAndTables) {
  absl::StatusOr<std::unique_ptr<Checkpoint>> ckpt = Checkpoint::Open(dir_->path());
  ASSERT_TRUE(ckpt.ok());
  absl::StatusOr<std::vector<int64_t>> m = (*ckpt)->LoadI64("layers.1.engram.multipliers");
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(*m, EngramMultipliers(0, 1, 512, 3));
  absl::StatusOr<std::vector<int64_t>> canon = (*ckpt)->LoadI64(kEngramCanonicalIdsName);
  ASSERT_TRUE(canon.ok());
  EXPECT_EQ((*canon)[700], 188);
  absl::StatusOr<const TensorView*> table = (*ckpt)->Get(EngramTableName(1));
  ASSERT_TRUE(table.ok());
  EXPECT_EQ((*table)->shape, (Shape{4062, 16}));
  EXPECT_EQ((*table)->dtype, DType::kBF16);
}

TEST_F(EngramCheckpointTest, ModuleMatchesManualLookupAndLayer) {
  absl::StatusOr<std::unique_ptr<Checkpoint>> ckpt = Checkpoint::Open(dir_->path());
  ASSERT_TRUE(ckpt.ok());
  absl::StatusOr<std::unique_ptr<EngramModule>> module = EngramModule::Load(*config_, ckpt->get());
  ASSERT_TRUE(module.ok()) << module.status();
  const EngramHasher& h = (*module)->hasher();
  EXPECT_TRUE((*module)->is_engram_layer(1));
  EXPECT_FALSE((*module)->is_engram_layer(0));

  // Two sequences of 3 and 2 tokens in one step.
  const int64_t nd = 4 * 128;
  std::vector<int32_t> a = {5, 700, 1023}, b = {17, 17};
  EngramState sa = h.NewState(), sb = h.NewState();
  std::vector<EngramModule::Segment> segs = {{&sa, a, 0}, {&sb, b, 3}};
  std::vector<float> x(5 * nd);
  std::mt19937 rng(1);
  std::normal_distribution<float> g;
  for (float& v : x) v = g(rng);
  std::vector<float> got = x;
  std::unique_ptr<EngramRowFetch> fetch = (*module)->Begin(segs);
  ASSERT_TRUE((*module)->Apply(1, fetch.get(), segs, got.data()).ok());

  // By hand: hash, read the BF16 rows, apply the layer per sequence.
  const TensorView* table = *(*ckpt)->Get(EngramTableName(1));
  WeightLoader loader(ckpt->get());
  absl::StatusOr<EngramLayer> layer = EngramLayer::Load(loader, *config_, 1);
  ASSERT_TRUE(layer.ok());
  int64_t row0 = 0;
  for (auto* seq : {&a, &b}) {
    const int64_t T = static_cast<int64_t>(seq->size());
    std::vector<int64_t> rows(T * 4);
    h.RowIds(0, h.NewState(), *seq, rows.data());
    std::vector<float> e(T * 64);
    for (int64_t r = 0; r < T * 4; ++r) {
      ASSERT_TRUE(RowsToF32(DType::kBF16, table->data + rows[r] * 32, 1, 16, &e[r * 16]).ok());
    }
    std::vector<float> history(9 * nd, 0.0f), want(T * nd);
    layer->Apply(x.data() + row0 * nd, e.data(), T, &history, want.data());
    for (int64_t i = 0; i < T * nd; ++i) ASSERT_FLOAT_EQ(got[row0 * nd + i], want[i]);
    row0 += T;
  }
  (*module)->Advance(segs);
  EXPECT_THAT(sa.history, ElementsAre(188, 511));
  EXPECT_THAT(sb.history, ElementsAre(17, 17));
}

TEST_F(EngramCheckpointTest, ChecksumSidecarCoversTheTable) {
  absl::StatusOr<std::unique_ptr<Checkpoint>> ckpt = Checkpoint::Open(dir_->path());
  ASSERT_TRUE(ckpt.ok());
  const TensorView* table = *(*ckpt)->Get(EngramTableName(1));
  std::ifstream in(dir_->path() + "/" + kEngramChecksumsFile);
  const nlohmann::json j = nlohmann::json::parse(in);
  EXPECT_EQ(j["algorithm"], kEngramChecksumAlgorithm);
  EXPECT_EQ(j["tensors"][EngramTableName(1)][0].get<std::string>(),
            absl::StrFormat("%016x", EngramChunkChecksum(table->data, table->nbytes)));
}

TEST(EngramLayoutTest, PresetsCountEngramSeparately) {
  for (const char* name : {"v4-tiny-engram", "v4-mini-engram", "deepseek-v4-pro-engram"}) {
    const ModelConfig c = Preset(name);
    ASSERT_TRUE(c.engram.enabled()) << name;
    int64_t table_bytes = 0, table_params = 0;
    for (const TensorSpec& t : ExpectedTensors(c)) {
      if (t.role != TensorRole::kEngramTable) continue;
      table_bytes += t.nbytes();
      table_params += NumElements(t.shape);
    }
    const ParameterCount p = CountParameters(c);
    EXPECT_EQ(p.engram, table_params) << name;
    EXPECT_EQ(table_bytes, 2 * table_params) << name;  // BF16 rows
  }
  // Pro with Engram: tables at 20–25% of the sparse budget (routed experts + Engram), as
  // the paper's allocation law suggests; ~0.86 TB of BF16 rows.
  const ParameterCount pro = CountParameters(Preset("deepseek-v4-pro-engram"));
  const double share = static_cast<double>(pro.engram) / (pro.engram + pro.routed_expert);
  EXPECT_GT(share, 0.20);
  EXPECT_LT(share, 0.25);
  const ParameterCount plain = CountParameters(Preset("deepseek-v4-pro"));
  EXPECT_EQ(plain.routed_expert, pro.routed_expert);
  EXPECT_GT(pro.total, plain.total);  // the Engram projections are dense weights
  EXPECT_LT(pro.total - plain.total, 1'000'000'000);
}

}  // namespace
}  // namespace dsv4
