#include "core/kernels.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <complex>
#include <limits>
#include <numbers>
#include <numeric>
#include <random>
#include <vector>

namespace dsv4 {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

std::vector<float> RandomVector(int64_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-scale, scale);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// ---------------------------------------------------------------------------------------
// RMSNorm

void NaiveRmsNorm(const std::vector<float>& x, const float* w, int64_t rows, int64_t dim,
                  double eps, std::vector<double>* y) {
  y->resize(rows * dim);
  for (int64_t r = 0; r < rows; ++r) {
    double ss = 0.0;
    for (int64_t i = 0; i < dim; ++i) ss += double{x[r * dim + i]} * x[r * dim + i];
    const double scale = 1.0 / std::sqrt(ss / dim + eps);
    for (int64_t i = 0; i < dim; ++i) {
      (*y)[r * dim + i] = x[r * dim + i] * scale * (w ? w[i] : 1.0);
    }
  }
}

TEST(RmsNormTest, WeightedWeightlessAndInPlace) {
  for (int64_t dim : {1, 7, 16, 33, 768}) {
    const int64_t rows = 3;
    const std::vector<float> x = RandomVector(rows * dim, 10, 3.0f);
    const std::vector<float> w = RandomVector(dim, 11);
    const float eps = 1e-6f;
    for (const float* wp : {w.data(), static_cast<const float*>(nullptr)}) {
      std::vector<double> expected;
      NaiveRmsNorm(x, wp, rows, dim, eps, &expected);
      std::vector<float> y(rows * dim);
      RmsNorm(x.data(), wp, rows, dim, eps, y.data());
      std::vector<float> in_place = x;
      RmsNorm(in_place.data(), wp, rows, dim, eps, in_place.data());
      for (int64_t i = 0; i < rows * dim; ++i) {
        EXPECT_NEAR(y[i], expected[i], 2e-6 * (std::abs(expected[i]) + 1e-3)) << dim;
        EXPECT_EQ(in_place[i], y[i]);
      }
    }
  }
}

TEST(RmsNormTest, EpsIsAddedToMeanOfSquares) {
  // mean(x²) = 0.25 and eps = 0.75: the scale is exactly 1; eps added to the root (or to the
  // sum) would give something else.
  const std::vector<float> x = {0.5f, -0.5f, 0.5f, -0.5f};
  std::vector<float> y(4);
  RmsNorm(x.data(), nullptr, 1, 4, 0.75f, y.data());
  EXPECT_THAT(y, ::testing::ElementsAre(0.5f, -0.5f, 0.5f, -0.5f));
  const std::vector<float> zeros(4, 0.0f);
  RmsNorm(zeros.data(), nullptr, 1, 4, 1e-6f, y.data());
  EXPECT_THAT(y, ::testing::Each(0.0f));
}

// ---------------------------------------------------------------------------------------
// Softmax and activations

void ExpectSoftmaxOfRow(const std::vector<float>& row) {
  std::vector<float> x = row;
  SoftmaxRows(x.data(), 1, static_cast<int64_t>(x.size()));
  float max = -kInf;
  for (float v : row) max = std::max(max, v);
  // The shifted logits are rounded to fp32 first, as in any fp32 softmax (torch too); the
  // check is on everything after that.
  std::vector<double> e(row.size());
  double sum = 0.0;
  for (size_t i = 0; i < row.size(); ++i) sum += e[i] = std::exp(double{row[i] - max});
  for (size_t i = 0; i < row.size(); ++i) {
    const double expected = e[i] / sum;
    EXPECT_NEAR(x[i], expected, 1e-6 * expected + 1e-30) << "entry " << i << " of " << row.size();
  }
}

TEST(SoftmaxTest, MatchesDoubleForOddSizes) {
  for (int64_t n : {1, 2, 15, 16, 17, 100, 1000}) ExpectSoftmaxOfRow(RandomVector(n, 12, 10.0f));
}

TEST(SoftmaxTest, LargeValuesDoNotOverflow) {
  ExpectSoftmaxOfRow({1000.0f, 1001.0f, 999.0f, -1000.0f});
  ExpectSoftmaxOfRow({3e38f, 3e38f, -3e38f});
  std::vector<float> x = {88.0f, 89.0f, 100.0f};
  SoftmaxRows(x.data(), 1, 3);
  for (float v : x) EXPECT_TRUE(std::isfinite(v));
}

TEST(SoftmaxTest, MinusInfinityGetsZeroAndRowsAreIndependent) {
  std::vector<float> x = {0.0f, -kInf, 0.0f, -kInf, 5.0f, -kInf, -kInf, -kInf};
  SoftmaxRows(x.data(), 2, 4);
  EXPECT_THAT(x, ::testing::ElementsAre(0.5f, 0.0f, 0.5f, 0.0f, 1.0f, 0.0f, 0.0f, 0.0f));
}

TEST(SoftmaxTest, ManyRows) {
  const int64_t rows = 5;
  const int64_t n = 37;
  std::vector<float> x = RandomVector(rows * n, 13, 30.0f);
  const std::vector<float> orig = x;
  SoftmaxRows(x.data(), rows, n);
  for (int64_t r = 0; r < rows; ++r) {
    std::vector<float> row(orig.begin() + r * n, orig.begin() + (r + 1) * n);
    SoftmaxRows(row.data(), 1, n);
    for (int64_t i = 0; i < n; ++i) EXPECT_EQ(x[r * n + i], row[i]);
  }
}

TEST(ActivationTest, SigmoidSiluAccurateOverWideRange) {
  std::vector<float> xs;
  for (float x = -120.0f; x <= 120.0f; x += 0.0137f) xs.push_back(x);
  for (float x : {0.0f, -0.0f, 1e-30f, -1e-30f, 87.0f, -87.0f, 88.0f, -88.0f, 89.0f, -89.0f}) {
    xs.push_back(x);
  }
  std::vector<float> silu = xs;
  SiluInPlace(silu.data(), static_cast<int64_t>(silu.size()));
  for (size_t i = 0; i < xs.size(); ++i) {
    const double x = xs[i];
    const double sig = 1.0 / (1.0 + std::exp(-x));
    // Sigmoid underflows to ~0 below -87; relative accuracy is what matters elsewhere.
    EXPECT_NEAR(Sigmoid(xs[i]), sig, 3e-7 * sig + 1e-37) << x;
    EXPECT_NEAR(Silu(xs[i]), x * sig, 3e-7 * std::abs(x * sig) + 1e-35) << x;
    EXPECT_EQ(silu[i], Silu(xs[i])) << x;
  }
  EXPECT_EQ(Sigmoid(kInf), 1.0f);
  EXPECT_EQ(Sigmoid(-kInf), 0.0f);
  EXPECT_TRUE(std::isnan(Sigmoid(kNaN)));
}

TEST(ActivationTest, SmallSoftmaxProbabilitiesAreAccurate) {
  // Softmax of {x, 0} is {e^x / (e^x + 1), …}; compare e^x itself through a 2-entry row
  // with the large entry far below: p0 = e^(x) / (1 + e^x) ≈ e^x for x ≪ 0.
  for (float x = -80.0f; x <= 0.0f; x += 0.731f) {
    std::vector<float> row = {x, 0.0f};
    SoftmaxRows(row.data(), 1, 2);
    const double expected = std::exp(double{x}) / (1.0 + std::exp(double{x}));
    EXPECT_NEAR(row[0], expected, 4e-7 * expected) << x;
  }
}

TEST(ActivationTest, SoftplusMatchesTorchThreshold) {
  for (float x : {-30.0f, -5.0f, -0.5f, 0.0f, 0.5f, 5.0f, 19.5f, 20.0f}) {
    EXPECT_NEAR(Softplus(x), std::log1p(std::exp(double{x})),
                2e-7 * std::log1p(std::exp(double{x})))
        << x;
  }
  // Above 20 torch returns the input unchanged.
  EXPECT_EQ(Softplus(20.0001f), 20.0001f);
  EXPECT_EQ(Softplus(1000.0f), 1000.0f);
}

// ---------------------------------------------------------------------------------------
// TopK

TEST(TopKTest, LargestFirstTiesToLowerIndex) {
  const std::vector<float> x = {1.0f, 3.0f, 2.0f, 3.0f, -1.0f, 2.0f, 3.0f};
  EXPECT_THAT(TopK(x.data(), 7, 4), ::testing::ElementsAre(1, 3, 6, 2));
  EXPECT_THAT(TopK(x.data(), 7, 7), ::testing::ElementsAre(1, 3, 6, 2, 5, 0, 4));
  EXPECT_THAT(TopK(x.data(), 7, 1), ::testing::ElementsAre(1));
  EXPECT_TRUE(TopK(x.data(), 7, 0).empty());
  const std::vector<float> same(9, 0.5f);
  EXPECT_THAT(TopK(same.data(), 9, 3), ::testing::ElementsAre(0, 1, 2));
  const std::vector<float> zeros = {0.0f, -0.0f, 0.0f};
  EXPECT_THAT(TopK(zeros.data(), 3, 2), ::testing::ElementsAre(0, 1));
}

TEST(TopKTest, InfinityAndNaN) {
  const std::vector<float> x = {-kInf, 1.0f, kNaN, kInf, 0.0f};
  EXPECT_THAT(TopK(x.data(), 5, 5), ::testing::ElementsAre(2, 3, 1, 4, 0));
}

TEST(TopKTest, MatchesStableSortOnRandomData) {
  // Values from a small set so that ties are frequent.
  std::mt19937 rng(14);
  std::uniform_int_distribution<int> dist(0, 20);
  std::vector<float> x(1000);
  for (float& v : x) v = static_cast<float>(dist(rng));
  std::vector<int> order(x.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return x[a] > x[b]; });
  for (int k : {1, 6, 100, 512, 1000}) {
    EXPECT_EQ(TopK(x.data(), 1000, k), std::vector<int>(order.begin(), order.begin() + k)) << k;
  }
}

// ---------------------------------------------------------------------------------------
// RoPE and YaRN

// Frequencies in double straight from the spec's formulas (§3.4).
std::vector<double> SpecFreqs(const RopeParams& p) {
  std::vector<double> f(p.dim / 2);
  for (int i = 0; i < p.dim / 2; ++i) f[i] = 1.0 / std::pow(p.base, 2.0 * i / p.dim);
  if (p.original_seq_len <= 0) return f;
  auto corr = [&](double beta) {
    return p.dim * std::log(p.original_seq_len / (2.0 * std::numbers::pi * beta)) /
           (2.0 * std::log(p.base));
  };
  const double lo = std::max(std::floor(corr(p.beta_fast)), 0.0);
  double hi = std::min(std::ceil(corr(p.beta_slow)), p.dim - 1.0);
  if (lo == hi) hi += 0.001;
  for (int i = 0; i < p.dim / 2; ++i) {
    const double ramp = std::clamp((i - lo) / (hi - lo), 0.0, 1.0);
    f[i] = f[i] / p.factor * ramp + f[i] * (1.0 - ramp);
  }
  return f;
}

RopeParams V4CompressedRope() {
  RopeParams p;
  p.dim = 64;
  p.base = 160000.0;
  p.factor = 16.0;
  p.original_seq_len = 65536;
  p.beta_fast = 32.0;
  p.beta_slow = 1.0;
  return p;
}

TEST(RopeTest, PlainFrequencies) {
  RopeParams p;
  p.dim = 64;
  p.base = 10000.0;
  const Rope rope(p);
  ASSERT_EQ(rope.freqs().size(), 32u);
  const std::vector<double> f = SpecFreqs(p);
  for (int i = 0; i < 32; ++i) EXPECT_NEAR(rope.freqs()[i], f[i], 2e-7 * f[i]) << i;
  EXPECT_EQ(rope.freqs()[0], 1.0f);
}

TEST(RopeTest, YarnSpecWorkedValues) {
  // Spec §3.4: base 160000, r = 64, original 65536, factor 16, beta 32/1 → lo = 15, hi = 25.
  const RopeParams p = V4CompressedRope();
  RopeParams plain_params = p;
  plain_params.original_seq_len = 0;
  const Rope yarn(p);
  const Rope plain(plain_params);
  EXPECT_NEAR(plain.freqs()[20], 5.590e-4, 1e-7);
  EXPECT_NEAR(yarn.freqs()[20], 2.9698e-4, 1e-8);
  // Pairs up to lo are untouched and pairs from hi on are divided by the factor, exactly
  // (the ramp is exactly 0 or 1 there); the ones in between are strictly blended.
  for (int i = 0; i <= 15; ++i) EXPECT_EQ(yarn.freqs()[i], plain.freqs()[i]) << i;
  for (int i = 25; i < 32; ++i) EXPECT_EQ(yarn.freqs()[i], plain.freqs()[i] / 16.0f) << i;
  for (int i = 16; i < 25; ++i) {
    EXPECT_LT(yarn.freqs()[i], plain.freqs()[i]) << i;
    EXPECT_GT(yarn.freqs()[i], plain.freqs()[i] / 16.0f) << i;
    const double ramp = (i - 15) / 10.0;
    EXPECT_NEAR(yarn.freqs()[i], plain.freqs()[i] * (ramp / 16.0 + 1.0 - ramp),
                1e-6 * plain.freqs()[i])
        << i;
  }
  const std::vector<double> f = SpecFreqs(p);
  for (int i = 0; i < 32; ++i) EXPECT_NEAR(yarn.freqs()[i], f[i], 3e-7 * f[i]) << i;
}

TEST(RopeTest, YarnV4TinyRange) {
  // v4-tiny: r = 32, base 160000, original 64 → lo = 0, hi = 4.
  RopeParams p;
  p.dim = 32;
  p.base = 160000.0;
  p.factor = 4.0;
  p.original_seq_len = 64;
  RopeParams plain_params = p;
  plain_params.original_seq_len = 0;
  const Rope yarn(p);
  const Rope plain(plain_params);
  EXPECT_EQ(yarn.freqs()[0], plain.freqs()[0]);
  for (int i = 1; i < 4; ++i) {
    const double ramp = i / 4.0;
    EXPECT_NEAR(yarn.freqs()[i], plain.freqs()[i] * (ramp / 4.0 + 1.0 - ramp),
                1e-6 * plain.freqs()[i])
        << i;
  }
  for (int i = 4; i < 16; ++i) EXPECT_EQ(yarn.freqs()[i], plain.freqs()[i] / 4.0f) << i;
}

TEST(RopeTest, YarnEqualBoundsGetTheSmallWidening) {
  // original 4, base 10000, r 32: both correction dims are ≤ 0, so lo = hi = 0 and the
  // reference widens hi by 0.001 instead of dividing by zero: pair 0 keeps its frequency,
  // every other pair is divided by the factor.
  RopeParams p;
  p.dim = 32;
  p.base = 10000.0;
  p.factor = 8.0;
  p.original_seq_len = 4;
  RopeParams plain_params = p;
  plain_params.original_seq_len = 0;
  const Rope yarn(p);
  const Rope plain(plain_params);
  EXPECT_EQ(yarn.freqs()[0], plain.freqs()[0]);
  for (int i = 1; i < 16; ++i) EXPECT_EQ(yarn.freqs()[i], plain.freqs()[i] / 8.0f) << i;
}

// Rotation of interleaved pairs as complex numbers, all in double.
std::vector<double> NaiveRope(const std::vector<float>& x, const std::vector<double>& freqs,
                              double pos, bool inverse) {
  std::vector<double> y(x.size());
  for (size_t i = 0; i < freqs.size(); ++i) {
    const std::complex<double> v(x[2 * i], x[2 * i + 1]);
    const std::complex<double> r = std::polar(1.0, (inverse ? -1.0 : 1.0) * pos * freqs[i]);
    y[2 * i] = (v * r).real();
    y[2 * i + 1] = (v * r).imag();
  }
  return y;
}

TEST(RopeTest, MatchesComplexRotationInDouble) {
  for (const RopeParams& p : {V4CompressedRope(), RopeParams{}}) {
    const Rope rope(p);
    const std::vector<double> f = SpecFreqs(p);
    for (int64_t pos : {0, 1, 2, 17, 127, 1000, 4095}) {
      for (bool inverse : {false, true}) {
        const std::vector<float> x = RandomVector(p.dim, 15 + pos);
        std::vector<float> y = x;
        rope.Apply(y.data(), pos, inverse);
        const std::vector<double> expected = NaiveRope(x, f, static_cast<double>(pos), inverse);
        // fp32 frequency and angle rounding: ~pos · 2^-24 radians.
        const double tol = 1e-6 + 2e-7 * pos;
        for (int i = 0; i < p.dim; ++i) EXPECT_NEAR(y[i], expected[i], tol) << pos << " " << i;
      }
    }
  }
}

TEST(RopeTest, AngleIsRoundedToFp32LikeTheReference) {
  // At large positions the fp32 angle differs from the exact one by up to ~ulp(θ)/2; the
  // kernel must rotate by exactly fp32(fp32(pos) · ω'_i).
  const RopeParams p = V4CompressedRope();
  const Rope rope(p);
  std::vector<double> freqs(rope.freqs().begin(), rope.freqs().end());
  for (int64_t pos : {100003, 1048575}) {
    const std::vector<float> x = RandomVector(p.dim, 16);
    std::vector<float> y = x;
    rope.Apply(y.data(), pos, false);
    std::vector<double> expected(p.dim);
    for (int i = 0; i < p.dim / 2; ++i) {
      const double theta = static_cast<float>(pos) * rope.freqs()[i];  // fp32 product
      expected[2 * i] = x[2 * i] * std::cos(theta) - x[2 * i + 1] * std::sin(theta);
      expected[2 * i + 1] = x[2 * i] * std::sin(theta) + x[2 * i + 1] * std::cos(theta);
    }
    for (int i = 0; i < p.dim; ++i) EXPECT_NEAR(y[i], expected[i], 1e-6) << pos << " " << i;
  }
}

TEST(RopeTest, InverseUndoesForward) {
  const Rope rope(V4CompressedRope());
  for (int64_t pos : {0, 5, 65535, 1000000}) {
    const std::vector<float> x = RandomVector(64, 17);
    std::vector<float> y = x;
    rope.Apply(y.data(), pos, false);
    rope.Apply(y.data(), pos, true);
    for (int i = 0; i < 64; ++i) EXPECT_NEAR(y[i], x[i], 1e-6) << pos;
  }
}

TEST(RopeTest, ApplyHeadsEqualsApplyPerVector) {
  RopeParams p;
  p.dim = 96;  // more pairs than one angle block
  const Rope rope(p);
  const int64_t heads = 3;
  const int64_t stride = 128;
  const std::vector<float> x = RandomVector(heads * stride, 18);
  std::vector<float> batched = x;
  rope.ApplyHeads(batched.data() + stride - p.dim, heads, stride, 77, true);
  std::vector<float> single = x;
  for (int64_t h = 0; h < heads; ++h)
    rope.Apply(single.data() + h * stride + stride - p.dim, 77, true);
  EXPECT_EQ(batched, single);
  // Only the rope part moved.
  for (int64_t i = 0; i < stride - p.dim; ++i) EXPECT_EQ(batched[i], x[i]);
}

// ---------------------------------------------------------------------------------------
// Hadamard

TEST(HadamardTest, MatchesExplicitSylvesterMatrix) {
  for (int64_t n : {1, 2, 4, 8, 32, 128, 256}) {
    const std::vector<float> x = RandomVector(n, 19);
    std::vector<float> y = x;
    HadamardInPlace(y.data(), n);
    for (int64_t i = 0; i < n; ++i) {
      double sum = 0.0;
      for (int64_t j = 0; j < n; ++j) {
        sum += (std::popcount(static_cast<uint64_t>(i & j)) % 2 ? -1.0 : 1.0) * x[j];
      }
      EXPECT_NEAR(y[i], sum / std::sqrt(static_cast<double>(n)), 1e-5) << n << " " << i;
    }
  }
}

TEST(HadamardTest, IsAnOrthonormalInvolution) {
  const int64_t n = 128;
  // Columns H e_j are orthonormal.
  std::vector<std::vector<float>> cols(n, std::vector<float>(n, 0.0f));
  for (int64_t j = 0; j < n; ++j) {
    cols[j][j] = 1.0f;
    HadamardInPlace(cols[j].data(), n);
  }
  for (int64_t a = 0; a < n; ++a) {
    for (int64_t b = 0; b < n; ++b) {
      double dot = 0.0;
      for (int64_t i = 0; i < n; ++i) dot += double{cols[a][i]} * cols[b][i];
      EXPECT_NEAR(dot, a == b ? 1.0 : 0.0, 1e-6);
    }
  }
  // H/√n is symmetric and orthogonal, so applying it twice is the identity.
  const std::vector<float> x = RandomVector(n, 20);
  std::vector<float> y = x;
  HadamardInPlace(y.data(), n);
  HadamardInPlace(y.data(), n);
  for (int64_t i = 0; i < n; ++i) EXPECT_NEAR(y[i], x[i], 1e-6);
}

// ---------------------------------------------------------------------------------------
// Misuse aborts

class KernelsDeathTest : public ::testing::Test {
 protected:
  // Fork-and-exec: safe whatever threads earlier tests left running.
  KernelsDeathTest() { GTEST_FLAG_SET(death_test_style, "threadsafe"); }
};

TEST_F(KernelsDeathTest, BadArgumentsAbort) {
  std::vector<float> buf(64, 0.0f);
  EXPECT_DEATH(HadamardInPlace(buf.data(), 12), "not a power of two");
  EXPECT_DEATH(TopK(buf.data(), 4, 5), "k=5 n=4");
  RopeParams odd;
  odd.dim = 63;
  EXPECT_DEATH(Rope{odd}, "must be positive and even");
}

}  // namespace
}  // namespace dsv4
