// The in-process executor's grouped GEMMs against one token at a time, one expert at a
// time, with plain loops over the dequantised checkpoint weights.
#include "expert_node/in_process_executor.h"

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "core/swiglu_ffn.h"
#include "gtest/gtest.h"
#include "tests/model_test_util.h"
#include "tests/naive_v4.h"
#include "tests/test_util.h"

namespace dsv4 {
namespace {

TEST(InProcessExecutorTest, GroupedGemmsMatchPerTokenExperts) {
  testing::TempDir dir("v4tiny-experts");
  absl::StatusOr<testing::LoadedModel> m =
      testing::GenerateAndLoad(testing::PresetJson("v4-tiny"), dir.path(), 5);
  ASSERT_TRUE(m.ok()) << m.status();
  const ModelConfig& c = m->config;
  const int64_t d = c.hidden_size, f = c.moe_intermediate_size, tokens = 9;
  const int k = 3, layer = 4;
  std::mt19937 rng(1);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  Tensor x({tokens, d});
  for (int64_t i = 0; i < x.numel(); ++i) x.data()[i] = 3 * normal(rng);  // exercise the clamp
  std::vector<int32_t> ids(tokens * k);
  std::vector<float> weights(tokens * k);
  for (int64_t i = 0; i < tokens * k; ++i) {
    ids[i] = static_cast<int32_t>((i * 5 + i / k) % c.n_routed_experts);
    weights[i] = 0.1f + 0.1f * (i % 4);
  }
  Tensor out;
  ASSERT_TRUE(m->experts->Run(layer, x, ids, weights, k, &out).ok());
  ASSERT_EQ(out.shape(), (Shape{tokens, d}));

  const std::string p = "layers." + std::to_string(layer) + ".ffn.experts.";
  for (int64_t t = 0; t < tokens; ++t) {
    std::vector<double> expected(d, 0.0);
    for (int j = 0; j < k; ++j) {
      const std::string e = p + std::to_string(ids[t * k + j]);
      const std::vector<float> w1 = m->checkpoint->LoadF32(e + ".w1.weight")->ToVector();
      const std::vector<float> w3 = m->checkpoint->LoadF32(e + ".w3.weight")->ToVector();
      const std::vector<float> w2 = m->checkpoint->LoadF32(e + ".w2.weight")->ToVector();
      const float* xt = x.data() + t * d;
      const naive::Vec g = naive::MatVec(w1, f, d, xt), u = naive::MatVec(w3, f, d, xt);
      naive::Vec h(f);
      const double limit = c.swiglu_limit;
      for (int64_t i = 0; i < f; ++i) {
        const double gi = std::min<double>(g[i], limit);
        const double ui = std::clamp<double>(u[i], -limit, limit);
        h[i] = static_cast<float>(gi * naive::SigmoidD(gi) * ui * weights[t * k + j]);
      }
      const naive::Vec y = naive::MatVec(w2, d, f, h.data());
      for (int64_t i = 0; i < d; ++i) expected[i] += y[i];
    }
    for (int64_t i = 0; i < d; ++i) {
      EXPECT_NEAR(out.data()[t * d + i], expected[i], 1e-4 * (1 + std::fabs(expected[i])));
    }
  }

  // Bad routing input is an error, not a crash.
  std::vector<int32_t> bad = ids;
  bad[4] = c.n_routed_experts;
  EXPECT_EQ(m->experts->Run(layer, x, bad, weights, k, &out).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(m->experts->Run(layer, x, absl::MakeConstSpan(ids).subspan(1), weights, k, &out).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(m->experts->Run(c.num_hidden_layers + 5, x, ids, weights, k, &out).code(),
            absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace dsv4
