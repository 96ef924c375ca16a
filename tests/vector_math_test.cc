// core/vector_math.h against plain double loops, and its promised bitwise identities.
#include "core/vector_math.h"

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace dsv4 {
namespace {

std::vector<float> Random(size_t n, std::mt19937& rng) {
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

bool SameBits(float a, float b) { return std::memcmp(&a, &b, sizeof(float)) == 0; }

TEST(VectorMathTest, DotMatchesDoubleAndDotsMatchDotBitwise) {
  std::mt19937 rng(3);
  for (int64_t n : {1, 7, 16, 33, 100, 512, 515}) {
    SCOPED_TRACE(n);
    const std::vector<float> q = Random(n, rng);
    std::vector<std::vector<float>> rows;
    std::vector<const float*> pointers;
    for (int j = 0; j < 11; ++j) rows.push_back(Random(n, rng));
    for (const auto& r : rows) pointers.push_back(r.data());
    std::vector<float> dots(rows.size());
    Dots(q.data(), pointers.data(), static_cast<int64_t>(rows.size()), n, dots.data());
    for (size_t j = 0; j < rows.size(); ++j) {
      double expected = 0, magnitude = 0;
      for (int64_t k = 0; k < n; ++k) {
        expected += static_cast<double>(q[k]) * rows[j][k];
        magnitude += std::fabs(static_cast<double>(q[k]) * rows[j][k]);
      }
      const float dot = Dot(q.data(), rows[j].data(), n);
      EXPECT_NEAR(dot, expected, 1e-6 * magnitude + 1e-30);
      EXPECT_TRUE(SameBits(dots[j], dot)) << "row " << j;
    }
  }
}

TEST(VectorMathTest, WeightedSumIsTheMulAddToSequenceBitwise) {
  std::mt19937 rng(5);
  for (int64_t n : {1, 15, 64, 65, 200, 512}) {
    for (int64_t count : {0, 1, 5, 40}) {
      SCOPED_TRACE(testing::Message() << "n " << n << ", count " << count);
      std::vector<std::vector<float>> rows;
      std::vector<const float*> pointers;
      for (int64_t j = 0; j < count; ++j) rows.push_back(Random(n, rng));
      for (const auto& r : rows) pointers.push_back(r.data());
      const std::vector<float> weights = Random(count, rng);
      std::vector<float> sequence(n, 0.0f), sum(n, -1.0f);
      for (int64_t j = 0; j < count; ++j) MulAddTo(weights[j], rows[j].data(), sequence.data(), n);
      WeightedSum(weights.data(), pointers.data(), count, n, sum.data());
      for (int64_t k = 0; k < n; ++k) {
        double expected = 0;
        for (int64_t j = 0; j < count; ++j)
          expected += static_cast<double>(weights[j]) * rows[j][k];
        EXPECT_NEAR(sum[k], expected, 1e-5 * (1 + std::fabs(expected)));
        EXPECT_TRUE(SameBits(sum[k], sequence[k])) << "element " << k;
      }
    }
  }
}

}  // namespace
}  // namespace dsv4
