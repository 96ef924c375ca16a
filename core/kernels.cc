#include "core/kernels.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <numbers>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "core/check.h"

namespace dsv4 {
namespace {

// Several independent partial sums: lets the compiler vectorise the reduction without
// -ffast-math, and is more accurate than one running sum.
constexpr int kLanes = 16;

float SumSquares(const float* x, int64_t n) {
  float acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int j = 0; j < kLanes; ++j) acc[j] += x[i + j] * x[i + j];
  }
  for (int64_t j = 0; i < n; ++i, ++j) acc[j] += x[i] * x[i];
  return std::accumulate(acc, acc + kLanes, 0.0f);
}

float MaxOf(const float* x, int64_t n) {
  // GCC does not vectorise a float max without -ffinite-math-only, so the lanes are a
  // vector-extension type.
  using Lanes = float __attribute__((vector_size(kLanes * sizeof(float))));
  Lanes acc;
  for (int j = 0; j < kLanes; ++j) acc[j] = -std::numeric_limits<float>::infinity();
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    Lanes v;
    std::memcpy(&v, x + i, sizeof(v));
    acc = v > acc ? v : acc;
  }
  float max = -std::numeric_limits<float>::infinity();
  for (int j = 0; j < kLanes; ++j) max = std::max(max, acc[j]);
  for (; i < n; ++i) max = std::max(max, x[i]);
  return max;
}

// exp(x) for fp32 with ~1 ulp error (Cephes expf: range reduction by ln 2, degree-6
// polynomial), written with plain arithmetic and bit casts so loops over it vectorise;
// std::exp does not without -ffast-math. Results below ~3e-38 are flushed to 0 (so
// exp(-inf) = 0, as masked softmax needs), overflow gives +inf, NaN stays NaN.
inline float ExpFast(float x) {
  constexpr float kLo = -86.5f;       // keeps 2^(n-1) a normal number
  constexpr float kHi = 88.7228394f;  // ln(FLT_MAX)
  constexpr float kLog2e = std::numbers::log2e_v<float>;
  // ln 2 split in two so that n·kLn2Hi is exact for |n| ≤ 128.
  constexpr float kLn2Hi = 0.693359375f;
  constexpr float kLn2Lo = -2.12194440e-4f;
  // Adding 1.5·2^23 rounds to the nearest integer and leaves it in the low mantissa bits.
  constexpr float kRound = 12582912.0f;
  const float xc = std::min(std::max(x, kLo), kHi);
  const float t = xc * kLog2e + kRound;
  const float n = t - kRound;
  const float r = (xc - n * kLn2Hi) - n * kLn2Lo;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  // 2^n as 2·2^(n-1), so that n = 128 (results just below FLT_MAX) stays finite.
  const int32_t e = std::bit_cast<int32_t>(t) - std::bit_cast<int32_t>(kRound);
  const float y = (2.0f * p) * std::bit_cast<float>((e + 126) << 23);
  if (x < kLo) return 0.0f;
  return x > kHi ? std::numeric_limits<float>::infinity() : y;
}

}  // namespace

void RmsNorm(const float* x, const float* w, int64_t rows, int64_t dim, float eps, float* y) {
  DSV4_CHECK(dim > 0 && rows >= 0, "rows=", rows, " dim=", dim);
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * dim;
    float* yr = y + r * dim;
    const float scale = 1.0f / std::sqrt(SumSquares(xr, dim) / static_cast<float>(dim) + eps);
    if (w == nullptr) {
      for (int64_t i = 0; i < dim; ++i) yr[i] = xr[i] * scale;
    } else {
      for (int64_t i = 0; i < dim; ++i) yr[i] = xr[i] * scale * w[i];
    }
  }
}

void SoftmaxRows(float* x, int64_t rows, int64_t n) {
  DSV4_CHECK(n >= 0 && rows >= 0, "rows=", rows, " n=", n);
  if (n == 0) return;
  for (int64_t r = 0; r < rows; ++r) {
    float* xr = x + r * n;
    const float max = MaxOf(xr, n);
    float acc[kLanes] = {};
    int64_t i = 0;
    for (; i + kLanes <= n; i += kLanes) {
      for (int j = 0; j < kLanes; ++j) {
        xr[i + j] = ExpFast(xr[i + j] - max);
        acc[j] += xr[i + j];
      }
    }
    for (int64_t j = 0; i < n; ++i, ++j) {
      xr[i] = ExpFast(xr[i] - max);
      acc[j] += xr[i];
    }
    const float inv = 1.0f / std::accumulate(acc, acc + kLanes, 0.0f);
    for (i = 0; i < n; ++i) xr[i] *= inv;
  }
}

float Sigmoid(float x) { return 1.0f / (1.0f + ExpFast(-x)); }

float Silu(float x) { return x / (1.0f + ExpFast(-x)); }

float Softplus(float x) { return x > 20.0f ? x : std::log1p(std::exp(x)); }

void SiluInPlace(float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = x[i] / (1.0f + ExpFast(-x[i]));
}

std::vector<int> TopK(const float* x, int64_t n, int k) {
  DSV4_CHECK(k >= 0 && k <= n && n <= std::numeric_limits<int>::max(), "k=", k, " n=", n);
  std::vector<int> idx(n);
  std::iota(idx.begin(), idx.end(), 0);
  // A strict total order: larger value first, NaN above everything (as torch.topk), then the
  // lower index.
  const auto before = [x](int a, int b) {
    const float va = x[a];
    const float vb = x[b];
    const bool na = std::isnan(va);
    const bool nb = std::isnan(vb);
    if (na != nb) return na;
    if (!na && va != vb) return va > vb;
    return a < b;
  };
  if (k < n) std::nth_element(idx.begin(), idx.begin() + k, idx.end(), before);
  idx.resize(k);
  std::sort(idx.begin(), idx.end(), before);
  return idx;
}

Rope::Rope(const RopeParams& params) : params_(params) {
  const int r = params.dim;
  DSV4_CHECK(r > 0 && r % 2 == 0, "rope dim ", r, " must be positive and even");
  DSV4_CHECK(params.base > 1.0, "rope base ", params.base);
  const bool yarn = params.original_seq_len > 0;
  if (yarn) {
    DSV4_CHECK(params.factor > 0.0 && params.beta_fast > 0.0 && params.beta_slow > 0.0,
               "YaRN factor ", params.factor, ", betas ", params.beta_fast, "/", params.beta_slow);
  }
  // Every step is rounded as the reference's fp32 tensor ops round it: exponent 2i/r in fp32,
  // base^e in fp32, then the reciprocal.
  const double base = static_cast<float>(params.base);
  freqs_.resize(r / 2);
  for (int i = 0; i < r / 2; ++i) {
    const float e = static_cast<float>(2 * i) / static_cast<float>(r);
    freqs_[i] = 1.0f / static_cast<float>(std::pow(base, static_cast<double>(e)));
  }
  if (!yarn) return;
  // YaRN correction range, in double as the reference computes it in Python floats: the pair
  // index at which a frequency completes `beta` rotations over the original context.
  const auto correction_dim = [&](double beta) {
    return r *
           std::log(static_cast<double>(params.original_seq_len) /
                    (beta * 2.0 * std::numbers::pi)) /
           (2.0 * std::log(params.base));
  };
  const double lo = std::max(std::floor(correction_dim(params.beta_fast)), 0.0);
  double hi = std::min(std::ceil(correction_dim(params.beta_slow)), r - 1.0);
  if (lo == hi) hi += 0.001;
  const float span = static_cast<float>(hi - lo);
  const float factor = static_cast<float>(params.factor);
  for (int i = 0; i < r / 2; ++i) {
    const float ramp =
        std::clamp((static_cast<float>(i) - static_cast<float>(lo)) / span, 0.0f, 1.0f);
    const float smooth = 1.0f - ramp;
    // volatile keeps each product rounded to fp32, as the reference's separate tensor ops
    // are; a fused multiply-add would change the last bit.
    const volatile float scaled = freqs_[i] / factor * (1.0f - smooth);
    const volatile float kept = freqs_[i] * smooth;
    freqs_[i] = scaled + kept;
  }
}

void Rope::Apply(float* x, int64_t pos, bool inverse) const { ApplyHeads(x, 1, 0, pos, inverse); }

void Rope::ApplyHeads(float* x, int64_t count, int64_t stride, int64_t pos, bool inverse) const {
  const float p = static_cast<float>(pos);
  const int half = params_.dim / 2;
  // Angles in blocks, each block's cos/sin computed once and applied to every vector.
  constexpr int kBlock = 32;
  float cos_t[kBlock];
  float sin_t[kBlock];
  for (int i0 = 0; i0 < half; i0 += kBlock) {
    const int len = std::min(kBlock, half - i0);
    for (int i = 0; i < len; ++i) {
      // cos/sin of the fp32 angle, evaluated in double so they are correctly rounded.
      const float theta = p * freqs_[i0 + i];
      cos_t[i] = static_cast<float>(std::cos(static_cast<double>(theta)));
      const float s = static_cast<float>(std::sin(static_cast<double>(theta)));
      sin_t[i] = inverse ? -s : s;
    }
    for (int64_t v = 0; v < count; ++v) {
      float* u = x + v * stride + 2 * i0;
      for (int i = 0; i < len; ++i) {
        const float a = u[2 * i];
        const float b = u[2 * i + 1];
        u[2 * i] = a * cos_t[i] - b * sin_t[i];
        u[2 * i + 1] = a * sin_t[i] + b * cos_t[i];
      }
    }
  }
}

void HadamardInPlace(float* x, int64_t n) {
  DSV4_CHECK(n > 0 && (n & (n - 1)) == 0, "Hadamard size ", n, " is not a power of two");
  // Butterflies of growing span h; this order gives the Sylvester matrix
  // H[i][j] = (-1)^popcount(i & j).
  for (int64_t h = 1; h < n; h *= 2) {
    for (int64_t i = 0; i < n; i += 2 * h) {
      for (int64_t j = i; j < i + h; ++j) {
        const float a = x[j];
        const float b = x[j + h];
        x[j] = a + b;
        x[j + h] = a - b;
      }
    }
  }
  const float scale = 1.0f / std::sqrt(static_cast<float>(n));
  for (int64_t i = 0; i < n; ++i) x[i] *= scale;
}

}  // namespace dsv4
