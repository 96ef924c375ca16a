// Attention building blocks against plain loops: sink attention, the compressor (both
// the overlapping CSA and the plain HCA form), the indexer's selection, per-layer RoPE.
#include "attention_node/attention.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "attention_node/compressor.h"
#include "attention_node/indexer.h"
#include "attention_node/sink_attention.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/model_test_util.h"
#include "tests/naive_v4.h"

namespace dsv4 {
namespace {

TEST(SinkAttentionTest, BlockOfQueriesMatchesPlainSoftmaxWithSink) {
  const int queries = 3, heads = 2;
  const int64_t dim = 8;
  std::mt19937 rng(1);
  const std::vector<float> q = testing::RandomNormal(queries * heads * dim, 1.0f, rng),
                           kv = testing::RandomNormal(16 * dim, 1.0f, rng);
  const std::vector<float> sink = {-1.0f, 3.0f};
  const float scale = 0.35f;
  // Shared runs: rows 0–5 and 6–9 (an empty one between); private: rows 10–15 for query 1.
  const KvSegment shared[] = {{kv.data(), 6}, {kv.data(), 0}, {kv.data() + 6 * dim, 4}};
  const RowRange ranges[] = {{0, 6}, {0, 0}, {0, 4},   // query 0 sees rows 0–9
                             {2, 5}, {0, 0}, {1, 1},   // query 1: rows 2–4 + private
                             {5, 6}, {0, 0}, {0, 2}};  // query 2: rows 5–7
  const KvSegment private_rows[] = {{}, {kv.data() + 10 * dim, 6}, {}};
  const std::vector<std::vector<int>> visible = {
      {0, 1, 2, 3, 4, 5, 6, 7, 8, 9}, {2, 3, 4, 10, 11, 12, 13, 14, 15}, {5, 6, 7}};
  std::vector<float> out(queries * heads * dim), scratch;
  AttendWithSink(q.data(), queries, heads, dim, shared, ranges, private_rows, sink.data(), scale,
                 out.data(), &scratch);
  for (int i = 0; i < queries; ++i) {
    for (int h = 0; h < heads; ++h) {
      const float* qh = q.data() + (i * heads + h) * dim;
      std::vector<double> z;
      double mx = -1e300;
      for (int j : visible[i]) {
        double dot = 0;
        for (int64_t k = 0; k < dim; ++k) dot += double(qh[k]) * kv[j * dim + k];
        z.push_back(dot * scale);
        mx = std::max(mx, z.back());
      }
      double den = std::exp(sink[h] - mx);
      for (double& v : z) den += (v = std::exp(v - mx));
      for (int64_t k = 0; k < dim; ++k) {
        double o = 0;
        for (size_t j = 0; j < z.size(); ++j) o += z[j] * kv[visible[i][j] * dim + k] / den;
        EXPECT_NEAR(out[(i * heads + h) * dim + k], o, 1e-5) << "query " << i << " head " << h;
      }
    }
  }
}

// Plain block pooling per spec §3.6 for tokens 0..T−1 (all complete blocks).
std::vector<std::vector<float>> NaiveCompress(const std::vector<float>& kv,
                                              const std::vector<float>& score,
                                              const std::vector<float>& ape,
                                              const std::vector<float>& norm, int m, int64_t dc,
                                              int64_t tokens, const std::vector<float>& freqs) {
  const bool overlap = m == 4;
  const int64_t w = (overlap ? 2 : 1) * dc;
  std::vector<std::vector<float>> entries;
  for (int64_t s = 0; s < tokens / m; ++s) {
    std::vector<float> e(dc);
    for (int64_t j = 0; j < dc; ++j) {
      std::vector<std::pair<double, double>> cand;
      for (int64_t t = s * m; t < (s + 1) * m; ++t) {
        const int64_t col = overlap ? dc + j : j;
        cand.push_back({score[t * w + col] + ape[(t % m) * w + col], kv[t * w + col]});
        if (overlap && s > 0) {
          const int64_t p = t - m;
          cand.push_back({score[p * w + j] + ape[(p % m) * w + j], kv[p * w + j]});
        }
      }
      double mx = -1e300, den = 0, num = 0;
      for (auto& c : cand) mx = std::max(mx, c.first);
      for (auto& c : cand) {
        den += std::exp(c.first - mx);
        num += std::exp(c.first - mx) * c.second;
      }
      e[j] = static_cast<float>(num / den);
    }
    naive::RmsNormInPlace(e.data(), dc, norm.data(), 1e-6);
    naive::RopeInPlace(e.data() + dc - 2 * static_cast<int64_t>(freqs.size()), freqs, s * m, false);
    entries.push_back(e);
  }
  return entries;
}

TEST(CompressorTest, MatchesBlockPoolingForOverlappingAndPlainRatios) {
  const int64_t d = 6, dc = 8, tokens = 23;
  RopeParams rope;
  rope.dim = 4;
  rope.base = 160000;
  for (int m : {4, 3, 8}) {
    SCOPED_TRACE(m);
    const int64_t w = (m == 4 ? 2 : 1) * dc;
    std::mt19937 rng(m);
    const std::vector<float> wkv = testing::RandomNormal(w * d, 0.5f, rng),
                             wgate = testing::RandomNormal(w * d, 0.5f, rng),
                             ape = testing::RandomNormal(m * w, 0.3f, rng),
                             norm = testing::RandomNormal(dc, 0.1f, rng),
                             x = testing::RandomNormal(tokens * d, 1.0f, rng);
    Compressor compressor(*WeightMatrix::F32(wkv.data(), w, d),
                          *WeightMatrix::F32(wgate.data(), w, d), Tensor::FromVector({m, w}, ape),
                          Tensor::FromVector({dc}, norm), m, Rope(rope), 1e-6f);
    std::vector<float> kv(tokens * w), score(tokens * w);
    compressor.Project(x.data(), tokens, kv.data(), score.data());
    CompressorState state = Compressor::FreshState(m, m == 4, dc);
    std::vector<float> entries;
    for (int64_t t = 0; t < tokens; ++t) {
      compressor.Push(&state, kv.data() + t * w, score.data() + t * w, t, &entries);
      EXPECT_EQ(static_cast<int64_t>(entries.size()), (t + 1) / m * dc);
    }
    const auto expected =
        NaiveCompress(kv, score, ape, norm, m, dc, tokens, naive::RopeFreqs(4, 160000, 1, 0, 1, 1));
    ASSERT_EQ(static_cast<int64_t>(entries.size()), tokens / m * dc);
    for (size_t s = 0; s < expected.size(); ++s) {
      for (int64_t j = 0; j < dc; ++j) EXPECT_NEAR(entries[s * dc + j], expected[s][j], 1e-5);
    }
  }
}

TEST(IndexerTest, SelectsTheTopScoringEntriesInAscendingOrder) {
  const int heads = 3;
  const int64_t di = 8, q_rank = 5, d = 4, n = 20, topk = 5;
  std::mt19937 rng(7);
  RopeParams rope;
  rope.dim = 4;
  const std::vector<float> zeros(2 * di * std::max(d, q_rank) * heads, 0.0f);
  Compressor compressor(*WeightMatrix::F32(zeros.data(), 2 * di, d),
                        *WeightMatrix::F32(zeros.data(), 2 * di, d), Tensor({4, 2 * di}),
                        Tensor({di}, 1.0f), 4, Rope(rope), 1e-6f);
  Indexer indexer(*WeightMatrix::F32(zeros.data(), heads * di, q_rank),
                  *WeightMatrix::F32(zeros.data(), heads, d), compressor, topk, Rope(rope));
  const std::vector<float> q = testing::RandomNormal(heads * di, 1.0f, rng),
                           keys = testing::RandomNormal(n * di, 1.0f, rng);
  const std::vector<float> w = {0.7f, -0.2f, 1.1f};
  std::vector<int32_t> selected;
  std::vector<float> scratch;
  indexer.Select(q.data(), w.data(), keys.data(), n, &selected, &scratch);
  std::vector<double> score(n, 0.0);
  for (int64_t s = 0; s < n; ++s) {
    for (int h = 0; h < heads; ++h) {
      double dot = 0;
      for (int64_t j = 0; j < di; ++j) dot += double(q[h * di + j]) * keys[s * di + j];
      score[s] += w[h] * std::max(dot, 0.0);
    }
  }
  std::vector<int> expected = naive::TopIndices(score, topk);
  std::sort(expected.begin(), expected.end());
  EXPECT_EQ(std::vector<int>(selected.begin(), selected.end()), expected);

  indexer.Select(q.data(), w.data(), keys.data(), topk, &selected, &scratch);
  EXPECT_EQ(selected, (std::vector<int32_t>{0, 1, 2, 3, 4}));  // at most topk visible: all
}

// V4.1's selection never reaches outside the pool (−∞ scores), and level one keeps the
// best blocks by their best entry, the newest block pinned.
TEST(IndexerTest, V41PoolAndBlocks) {
  RopeParams rope;
  rope.dim = 4;
  const std::vector<float> zeros(2 * 8 * 4, 0.0f);
  Compressor compressor(*WeightMatrix::F32(zeros.data(), 2 * 8, 4),
                        *WeightMatrix::F32(zeros.data(), 2 * 8, 4), Tensor({4, 2 * 8}),
                        Tensor({8}, 1.0f), 4, Rope(rope), 1e-6f);
  const Indexer indexer(*WeightMatrix::F32(zeros.data(), 8, 4),
                        *WeightMatrix::F32(zeros.data(), 1, 4), compressor, /*topk=*/3, Rope(rope));
  const float inf = std::numeric_limits<float>::infinity();
  // entries:            0    1     2     3    4    5     6    7    8    9
  std::vector<float> s = {0.5f, 2.0f, -1.0f, 3.0f, 0.1f, 0.2f, 2.5f, 0.0f, 0.0f, 1.0f};
  std::vector<int32_t> blocks;
  // Blocks of 3: {0.5,2,−1} → 2, {3,.1,.2} → 3, {2.5,0,0} → 2.5, {1} pinned (newest).
  CandidateBlocks(s.data(), 10, 3, 2, &blocks);
  EXPECT_EQ(blocks, (std::vector<int32_t>{1, 3}));
  CandidateBlocks(s.data(), 10, 3, 3, &blocks);
  EXPECT_EQ(blocks, (std::vector<int32_t>{1, 2, 3}));
  CandidateBlocks(s.data(), 9, 3, 1, &blocks);  // newest block is 2 now
  EXPECT_EQ(blocks, (std::vector<int32_t>{2}));
  std::vector<int32_t> selected;
  indexer.SelectTop(s.data(), 10, &selected);
  EXPECT_EQ(selected, (std::vector<int32_t>{1, 3, 6}));
  for (int e : {1, 3}) s[e] = -inf;  // outside the pool
  indexer.SelectTop(s.data(), 10, &selected);
  EXPECT_EQ(selected, (std::vector<int32_t>{0, 6, 9}));
  std::vector<float> few = {-inf, 1.0f, -inf, -inf};
  indexer.SelectTop(few.data(), 4, &selected);
  EXPECT_EQ(selected, (std::vector<int32_t>{1}));  // never an entry outside the pool
  std::vector<float> ties = {1.0f, 1.0f, 1.0f, 1.0f, 1.0f};
  indexer.SelectTop(ties.data(), 5, &selected);
  EXPECT_EQ(selected, (std::vector<int32_t>{0, 1, 2}));  // ties: the lower entry
}

TEST(LayerRopeTest, WindowLayersUseRopeThetaAndCompressedLayersYarn) {
  absl::StatusOr<ModelConfig> config = ParseModelConfig(testing::PresetJson("v4-mini"), "v4-mini");
  ASSERT_TRUE(config.ok());
  const RopeParams window = LayerRopeParams(*config, 0);  // m = 0
  EXPECT_EQ(window.base, 10000);
  EXPECT_EQ(window.original_seq_len, 0);
  const RopeParams csa = LayerRopeParams(*config, 2);  // m = 4
  EXPECT_EQ(csa.base, 160000);
  EXPECT_EQ(csa.factor, 16);
  EXPECT_EQ(csa.original_seq_len, 4096);
  EXPECT_EQ(csa.dim, 64);
}

}  // namespace
}  // namespace dsv4
