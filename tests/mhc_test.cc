// mHC: Sinkhorn in the reference order, hc_pre / hc_post / hc_head against plain loops.
#include "attention_node/mhc.h"

#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "tests/model_test_util.h"
#include "tests/naive_v4.h"

namespace dsv4 {
namespace {

TEST(SinkhornTest, OutputIsDoublyStochastic) {
  std::mt19937 rng(1);
  for (int n : {1, 2, 4, 8}) {
    for (int trial = 0; trial < 20; ++trial) {
      // Logits of the spread the mixes have in practice; much larger spreads need more than
      // 20 iterations to balance the rows (the columns are exact after the last step).
      std::vector<float> c = testing::RandomNormal(n * n, 1.0f, rng);
      Sinkhorn(c.data(), n, 20, 1e-6f);
      for (int i = 0; i < n; ++i) {
        float row = 0, col = 0;
        for (int j = 0; j < n; ++j) {
          row += c[i * n + j];
          col += c[j * n + i];
          EXPECT_GE(c[i * n + j], 0.0f);
        }
        EXPECT_NEAR(col, 1.0f, 1e-5f) << "n=" << n;  // the last step normalises columns
        EXPECT_NEAR(row, 1.0f, 1e-3f) << "n=" << n;
      }
    }
  }
}

TEST(SinkhornTest, FollowsTheReferenceOrder) {
  std::mt19937 rng(2);
  for (int iters : {1, 2, 20}) {
    std::vector<float> c = testing::RandomNormal(16, 2.0f, rng);
    std::vector<double> ref(c.begin(), c.end());
    Sinkhorn(c.data(), 4, iters, 1e-6f);
    naive::SinkhornRef(ref, 4, iters, 1e-6);
    for (int i = 0; i < 16; ++i) EXPECT_NEAR(c[i], ref[i], 1e-6) << "iters=" << iters;
  }
}

TEST(HyperConnectionTest, PreAndPostMatchPlainLoops) {
  const int n = 4, iters = 20;
  const int64_t d = 16, tokens = 5, m = (2 + n) * n;
  std::mt19937 rng(3);
  const std::vector<float> fn = testing::RandomNormal(m * n * d, 0.1f, rng),
                           base = testing::RandomNormal(m, 0.5f, rng),
                           scale = testing::RandomNormal(3, 0.5f, rng),
                           x = testing::RandomNormal(tokens * n * d, 1.0f, rng),
                           f = testing::RandomNormal(tokens * d, 1.0f, rng);
  HyperConnection hc(Tensor::FromVector({m, n * d}, fn), Tensor::FromVector({m}, base),
                     Tensor::FromVector({3}, scale), n, iters, 1e-6f, 1e-6f);
  std::vector<float> y(tokens * d), post(tokens * n), comb(tokens * n * n);
  hc.Pre(x.data(), tokens, y.data(), post.data(), comb.data());
  std::vector<float> x_after = x;
  HyperConnection::Post(f.data(), post.data(), comb.data(), tokens, n, d, x_after.data());

  for (int64_t t = 0; t < tokens; ++t) {
    const float* xt = x.data() + t * n * d;
    const naive::Vec mix = naive::HcMix(fn, m, xt, n * d, 1e-6);
    std::vector<double> c(n * n);
    for (int k = 0; k < n * n; ++k) c[k] = mix[2 * n + k] * scale[2] + base[2 * n + k];
    naive::SinkhornRef(c, n, iters, 1e-6);
    for (int k = 0; k < n * n; ++k) EXPECT_NEAR(comb[t * n * n + k], c[k], 1e-5);
    for (int i = 0; i < n; ++i) {
      EXPECT_NEAR(post[t * n + i], 2 * naive::SigmoidD(mix[n + i] * scale[1] + base[n + i]), 1e-5);
    }
    for (int64_t j = 0; j < d; ++j) {
      double yj = 0;
      for (int i = 0; i < n; ++i) {
        yj += (naive::SigmoidD(mix[i] * scale[0] + base[i]) + 1e-6) * xt[i * d + j];
      }
      EXPECT_NEAR(y[t * d + j], yj, 1e-4);
      for (int b = 0; b < n; ++b) {
        double v = post[t * n + b] * f[t * d + j];
        for (int a = 0; a < n; ++a) v += comb[t * n * n + a * n + b] * xt[a * d + j];
        EXPECT_NEAR(x_after[t * n * d + b * d + j], v, 1e-4);
      }
    }
  }
}

TEST(HcHeadTest, MatchesPlainLoops) {
  const int n = 4;
  const int64_t d = 8, tokens = 3;
  std::mt19937 rng(4);
  const std::vector<float> fn = testing::RandomNormal(n * n * d, 0.2f, rng),
                           base = testing::RandomNormal(n, 0.5f, rng),
                           scale = testing::RandomNormal(1, 0.5f, rng),
                           x = testing::RandomNormal(tokens * n * d, 1.0f, rng);
  HcHead head(Tensor::FromVector({n, n * d}, fn), Tensor::FromVector({n}, base),
              Tensor::FromVector({1}, scale), n, 1e-6f, 1e-6f);
  std::vector<float> y(tokens * d);
  head.Apply(x.data(), tokens, y.data());
  for (int64_t t = 0; t < tokens; ++t) {
    const naive::Vec mix = naive::HcMix(fn, n, x.data() + t * n * d, n * d, 1e-6);
    for (int64_t j = 0; j < d; ++j) {
      double v = 0;
      for (int i = 0; i < n; ++i) {
        v += (naive::SigmoidD(mix[i] * scale[0] + base[i]) + 1e-6) * x[t * n * d + i * d + j];
      }
      EXPECT_NEAR(y[t * d + j], v, 1e-5);
    }
  }
}

}  // namespace
}  // namespace dsv4
