// The MoE gate on hand-made cases: score function, bias-only selection, hash routing,
// weights from unbiased scores.
#include "attention_node/router.h"

#include <cmath>
#include <vector>

#include "gtest/gtest.h"

namespace dsv4 {
namespace {

double SqrtSoftplus(double z) { return std::sqrt(z > 20 ? z : std::log1p(std::exp(z))); }

// Four experts over d = 2: logits for x = (2, 1) are (2, 1, −2, 1.5).
const float kGate[8] = {1, 0, 0, 1, -1, 0, 0.5f, 0.5f};
WeightMatrix Gate() { return *WeightMatrix::F32(kGate, 4, 2); }
const std::vector<float> kX = {2, 1};
const double kScores[4] = {SqrtSoftplus(2), SqrtSoftplus(1), SqrtSoftplus(-2), SqrtSoftplus(1.5)};

TEST(RouterTest, TopKOnScoresPlusBiasWeightsFromUnbiasedScores) {
  {
    Router router(Gate(), Tensor::FromVector({4}, {0, 0, 0, 0}), {}, 2, ScoreFunc::kSqrtSoftplus,
                  1.5f);
    int32_t ids[2];
    float w[2];
    const int32_t token = 0;
    router.Route(kX.data(), {&token, 1}, ids, w);
    EXPECT_EQ(ids[0], 0);
    EXPECT_EQ(ids[1], 3);
    const double sum = kScores[0] + kScores[3];
    EXPECT_NEAR(w[0], kScores[0] / sum * 1.5, 1e-6);
    EXPECT_NEAR(w[1], kScores[3] / sum * 1.5, 1e-6);
  }
  {
    // A bias on expert 2 selects it first, but its weight uses its small unbiased score.
    Router router(Gate(), Tensor::FromVector({4}, {0, 0, 5, 0}), {}, 2, ScoreFunc::kSqrtSoftplus,
                  1.5f);
    int32_t ids[2];
    float w[2];
    const int32_t token = 0;
    router.Route(kX.data(), {&token, 1}, ids, w);
    EXPECT_EQ(ids[0], 2);
    EXPECT_EQ(ids[1], 0);
    const double sum = kScores[2] + kScores[0];
    EXPECT_NEAR(w[0], kScores[2] / sum * 1.5, 1e-6);
    EXPECT_NEAR(w[1], kScores[0] / sum * 1.5, 1e-6);
    EXPECT_NEAR(w[0] + w[1], 1.5, 1e-6);
  }
}

TEST(RouterTest, HashLayersRouteByTokenId) {
  // tid2eid for a vocabulary of 3 and k = 2.
  Router router(Gate(), Tensor(), {3, 1, 0, 2, 1, 2}, 2, ScoreFunc::kSqrtSoftplus, 2.0f);
  EXPECT_TRUE(router.hash());
  const std::vector<float> x = {2, 1, 2, 1};  // the same x for both tokens
  const std::vector<int32_t> tokens = {2, 0};
  int32_t ids[4];
  float w[4];
  router.Route(x.data(), tokens, ids, w);
  EXPECT_EQ(std::vector<int32_t>(ids, ids + 4), (std::vector<int32_t>{1, 2, 3, 1}));
  double sum = kScores[1] + kScores[2];
  EXPECT_NEAR(w[0], kScores[1] / sum * 2, 1e-6);
  EXPECT_NEAR(w[1], kScores[2] / sum * 2, 1e-6);
  sum = kScores[3] + kScores[1];
  EXPECT_NEAR(w[2], kScores[3] / sum * 2, 1e-6);
  EXPECT_NEAR(w[3], kScores[1] / sum * 2, 1e-6);
}

TEST(RouterTest, SoftplusIsLinearAboveTwenty) {
  const float gate[2] = {30, 1};
  Router router(*WeightMatrix::F32(gate, 2, 1), Tensor::FromVector({2}, {0, 0}), {}, 2,
                ScoreFunc::kSqrtSoftplus, 1.0f);
  const float x = 1;
  const int32_t token = 0;
  int32_t ids[2];
  float w[2];
  router.Route(&x, {&token, 1}, ids, w);
  const double s0 = std::sqrt(30.0), s1 = SqrtSoftplus(1);
  EXPECT_EQ(ids[0], 0);
  EXPECT_NEAR(w[0], s0 / (s0 + s1), 1e-6);
}

TEST(RouterTest, SoftmaxScoresAreNotRenormalised) {
  Router router(Gate(), Tensor::FromVector({4}, {0, 0, 0, 0}), {}, 2, ScoreFunc::kSoftmax, 1.0f);
  const int32_t token = 0;
  int32_t ids[2];
  float w[2];
  router.Route(kX.data(), {&token, 1}, ids, w);
  const double z = std::exp(2.0) + std::exp(1.0) + std::exp(-2.0) + std::exp(1.5);
  EXPECT_EQ(ids[0], 0);
  EXPECT_EQ(ids[1], 3);
  EXPECT_NEAR(w[0], std::exp(2.0) / z, 1e-6);
  EXPECT_NEAR(w[1], std::exp(1.5) / z, 1e-6);
}

TEST(RouterTest, ParsesScoreFunctions) {
  EXPECT_TRUE(ParseScoreFunc("sqrtsoftplus").ok());
  EXPECT_TRUE(ParseScoreFunc("sigmoid").ok());
  EXPECT_EQ(ParseScoreFunc("relu").status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace dsv4
