#include "core/matmul.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "core/dtype.h"
#include "core/parallel.h"
#include "core/weight_matrix.h"

namespace dsv4 {
namespace {

// A weight matrix in one released format together with the storage it views.
struct TestWeights {
  WeightFormat format = WeightFormat::kF32;
  int64_t n = 0, k = 0, block_rows = 0, block_cols = 0;
  std::vector<float> f32;
  std::vector<uint16_t> bf16;
  std::vector<uint8_t> bytes, scales;

  WeightMatrix view() const {
    absl::StatusOr<WeightMatrix> w;
    switch (format) {
      case WeightFormat::kF32:
        w = WeightMatrix::F32(f32.data(), n, k);
        break;
      case WeightFormat::kBF16:
        w = WeightMatrix::Bf16(bf16.data(), n, k);
        break;
      case WeightFormat::kFp8:
        w = WeightMatrix::Fp8(bytes.data(), scales.data(), n, k, block_rows, block_cols);
        break;
      case WeightFormat::kFp4:
        w = WeightMatrix::Fp4(bytes.data(), scales.data(), n, k);
        break;
    }
    EXPECT_TRUE(w.ok()) << w.status();
    return *w;
  }

  // W[r][c] decoded independently of the kernel, with core/dtype.h.
  double At(int64_t r, int64_t c) const {
    switch (format) {
      case WeightFormat::kF32:
        return f32[r * k + c];
      case WeightFormat::kBF16:
        return Bf16ToFloat(bf16[r * k + c]);
      case WeightFormat::kFp8: {
        const int64_t scale_cols = (k + block_cols - 1) / block_cols;
        return static_cast<double>(E4M3ToFloat(bytes[r * k + c])) *
               E8M0ToFloat(scales[(r / block_rows) * scale_cols + c / block_cols]);
      }
      case WeightFormat::kFp4: {
        const int64_t row_bytes = (k + 1) / 2, scale_cols = (k + 31) / 32;
        return static_cast<double>(Fp4PackedElement(bytes.data() + r * row_bytes, c)) *
               E8M0ToFloat(scales[r * scale_cols + c / 32]);
      }
    }
    return 0.0;
  }
};

// Random weights; codes avoid E4M3 NaN, scales stay in 2^-8 .. 2^6 so nothing overflows.
TestWeights RandomWeights(WeightFormat format, int64_t n, int64_t k, int64_t block, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> uni(-2.0f, 2.0f);
  std::uniform_int_distribution<int> byte(0, 255), scale(119, 133);
  TestWeights w;
  w.format = format;
  w.n = n;
  w.k = k;
  switch (format) {
    case WeightFormat::kF32:
      w.f32.resize(n * k);
      for (float& v : w.f32) v = uni(rng);
      break;
    case WeightFormat::kBF16:
      w.bf16.resize(n * k);
      for (uint16_t& v : w.bf16) v = FloatToBf16(uni(rng));
      break;
    case WeightFormat::kFp8:
      w.block_rows = w.block_cols = block;
      w.bytes.resize(n * k);
      for (uint8_t& b : w.bytes) {
        b = static_cast<uint8_t>(byte(rng));
        if ((b & 0x7F) == 0x7F) b ^= 1;  // NaN → the largest finite code
      }
      w.scales.resize(((n + block - 1) / block) * ((k + block - 1) / block));
      for (uint8_t& s : w.scales) s = static_cast<uint8_t>(scale(rng));
      break;
    case WeightFormat::kFp4:
      w.block_rows = 1;
      w.block_cols = 32;
      w.bytes.resize(n * ((k + 1) / 2));
      for (uint8_t& b : w.bytes) b = static_cast<uint8_t>(byte(rng));
      w.scales.resize(n * ((k + 31) / 32));
      for (uint8_t& s : w.scales) s = static_cast<uint8_t>(scale(rng));
      break;
  }
  return w;
}

std::vector<float> RandomRows(int64_t m, int64_t k, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> uni(-1.0f, 1.0f);
  std::vector<float> x(m * k);
  for (float& v : x) v = uni(rng);
  return x;
}

struct FormatCase {
  WeightFormat format;
  int64_t block;  // FP8 scale block (square); ignored otherwise
  std::string name;
};

const std::vector<FormatCase>& Formats() {
  static const std::vector<FormatCase> formats = {
      {WeightFormat::kF32, 0, "F32"},
      {WeightFormat::kBF16, 0, "BF16"},
      {WeightFormat::kFp8, 128, "FP8_128x128"},
      {WeightFormat::kFp8, 32, "FP8_32x32"},
      // A fast-path block width with a run-time scale group (32 and 128 have compile-time
      // ones), and one wider than a chunk.
      {WeightFormat::kFp8, 64, "FP8_64x64"},
      {WeightFormat::kFp8, 512, "FP8_512x512"},
      {WeightFormat::kFp4, 32, "FP4_1x32"},
      // Not a power of two: the per-element decoding path.
      {WeightFormat::kFp8, 24, "FP8_24x24"},
  };
  return formats;
}

constexpr MatMulPath kPaths[] = {MatMulPath::kAuto, MatMulPath::kDirect, MatMulPath::kPanel};

TEST(MatMulTest, DispatchPicksATarget) {
  const std::string target = MatMulTargetName();
  std::printf("MatMul dispatches to Highway target %s\n", target.c_str());
  EXPECT_FALSE(target.empty());
  EXPECT_NE(target, "Unknown");
}

// Against a double-precision loop over the decoded weights. The weights are exact, so the
// only error is fp32 accumulation: with the canonical order (lanes of ⌈K/L⌉ sequential
// FMAs, then a log2(L)-level lane tree) each product passes through at most K + 5 roundings
// of relative size u = 2^-24, so |y - ref| ≤ (K + 5)·u·Σ|x_k·W_nk| (Higham's γ_n bound).
TEST(MatMulTest, MatchesDoubleReference) {
  const int64_t m = 5;
  for (const FormatCase& f : Formats()) {
    for (int64_t k : {1, 33, 200, 4096 + 7}) {
      for (int64_t n : {1, 7, 130}) {
        const TestWeights w = RandomWeights(f.format, n, k, f.block, 1000 + k * 7 + n);
        const WeightMatrix view = w.view();
        const std::vector<float> x = RandomRows(m, k, 17 + k + n);
        for (MatMulPath path : kPaths) {
          std::vector<float> y(m * n, -1.0f);
          MatMul(x.data(), m, view, y.data(), path);
          int bad = 0;
          for (int64_t i = 0; i < m; ++i) {
            for (int64_t j = 0; j < n; ++j) {
              double ref = 0.0, abs_sum = 0.0;
              for (int64_t c = 0; c < k; ++c) {
                const double p = static_cast<double>(x[i * k + c]) * w.At(j, c);
                ref += p;
                abs_sum += std::fabs(p);
              }
              const double tol = (k + 5) * 0x1p-24 * abs_sum;
              const double err = std::fabs(y[i * n + j] - ref);
              if (!(err <= tol) && bad++ < 5) {
                ADD_FAILURE() << f.name << " k=" << k << " n=" << n << " path "
                              << static_cast<int>(path) << " y[" << i << "][" << j
                              << "]=" << y[i * n + j] << " ref=" << ref << " tol=" << tol;
              }
            }
          }
        }
      }
    }
  }
}

// Every code of every format decodes exactly: x = I_K makes y[i][n] = W[n][i] with one
// non-zero product per output. Scales span E8M0's range from 2^-127 up to the largest that
// keeps every element finite (an infinite weight would make 0 × inf = NaN elsewhere).
TEST(MatMulTest, DecodesEveryCodeExactly) {
  for (const FormatCase& f : Formats()) {
    const int64_t k = 256 + 5, n = 9;
    TestWeights w = RandomWeights(f.format, n, k, f.block, 7);
    if (f.format == WeightFormat::kFp8) {
      for (int64_t i = 0; i < n * k; ++i) w.bytes[i] = static_cast<uint8_t>((i * 7) & 0xFF);
      for (uint8_t& b : w.bytes)
        if ((b & 0x7F) == 0x7F) b = 0x7E;
      // 448 · 2^(245-127) < 2^128.
      for (size_t i = 0; i < w.scales.size(); ++i) w.scales[i] = static_cast<uint8_t>(i * 53 % 246);
      w.scales[0] = 0;
      w.scales.back() = 245;
    } else if (f.format == WeightFormat::kFp4) {
      for (size_t i = 0; i < w.bytes.size(); ++i) w.bytes[i] = static_cast<uint8_t>(i * 29);
      // 6 · 2^(252-127) < 2^128.
      for (size_t i = 0; i < w.scales.size(); ++i) w.scales[i] = static_cast<uint8_t>(i * 31 % 253);
      w.scales[0] = 0;
      w.scales.back() = 252;
    }
    std::vector<float> x(k * k, 0.0f);
    for (int64_t i = 0; i < k; ++i) x[i * k + i] = 1.0f;
    for (MatMulPath path : kPaths) {
      std::vector<float> y(k * n);
      MatMul(x.data(), k, w.view(), y.data(), path);
      int bad = 0;
      for (int64_t i = 0; i < k; ++i) {
        for (int64_t j = 0; j < n; ++j) {
          const float expect = static_cast<float>(w.At(j, i));
          if (y[i * n + j] != expect && bad++ < 5) {
            ADD_FAILURE() << f.name << " W[" << j << "][" << i << "]: got " << y[i * n + j]
                          << ", expected " << expect;
          }
        }
      }
    }
  }
}

// A row's output is bitwise the same whatever the batch size, the row's position in the
// batch and the regime (direct or panel).
TEST(MatMulTest, RowsAreBatchInvariant) {
  const int64_t pool = 64;
  for (const FormatCase& f : Formats()) {
    // 785 and 1536: the panel's K blocks (768 at 16 lanes) with a one-step last block and a
    // padded step, and with whole blocks only.
    for (int64_t k : {33, 200, 785, 1536, 4096 + 7}) {
      const int64_t n = 130;
      const TestWeights w = RandomWeights(f.format, n, k, f.block, 99 + k);
      const WeightMatrix view = w.view();
      const std::vector<float> rows = RandomRows(pool, k, 5 + k);
      // Each row alone (m = 1) is the reference.
      std::vector<float> single(pool * n);
      for (int64_t r = 0; r < pool; ++r) {
        MatMul(rows.data() + r * k, 1, view, single.data() + r * n);
      }
      for (int64_t m : {1, 3, 8, 17, 64}) {
        for (int64_t shift : {int64_t{0}, m / 2 + 1, int64_t{29}}) {
          std::vector<float> x(m * k);
          std::vector<int64_t> source(m);
          for (int64_t i = 0; i < m; ++i) {
            source[i] = (i * 7 + shift) % pool;
            std::memcpy(x.data() + i * k, rows.data() + source[i] * k, k * sizeof(float));
          }
          for (MatMulPath path : kPaths) {
            std::vector<float> y(m * n);
            MatMul(x.data(), m, view, y.data(), path);
            for (int64_t i = 0; i < m; ++i) {
              EXPECT_EQ(
                  std::memcmp(y.data() + i * n, single.data() + source[i] * n, n * sizeof(float)),
                  0)
                  << f.name << " k=" << k << " m=" << m << " row " << i << " (pool row "
                  << source[i] << ") path " << static_cast<int>(path);
            }
          }
        }
      }
    }
  }
}

// W decoded to doubles, row-major [n][k].
std::vector<double> Decoded(const TestWeights& w) {
  std::vector<double> out(w.n * w.k);
  for (int64_t r = 0; r < w.n; ++r) {
    for (int64_t c = 0; c < w.k; ++c) out[r * w.k + c] = w.At(r, c);
  }
  return out;
}

// |y - ref| within the accumulation bound of MatchesDoubleReference, against the double
// loop over the decoded weights (Decoded(w)); x[i] at x + i·ldx, y[i] at y + i·ldy, W rows
// from row0 on.
void ExpectNearReference(const std::string& what, const std::vector<double>& decoded, int64_t k,
                         int64_t row0, int64_t n, const float* x, int64_t ldx, int64_t m,
                         const float* y, int64_t ldy) {
  int bad = 0;
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double ref = 0.0, abs_sum = 0.0;
      const double* row = &decoded[(row0 + j) * k];
      for (int64_t c = 0; c < k; ++c) {
        const double p = static_cast<double>(x[i * ldx + c]) * row[c];
        ref += p;
        abs_sum += std::fabs(p);
      }
      const double tol = (k + 5) * 0x1p-24 * abs_sum;
      const double err = std::fabs(y[i * ldy + j] - ref);
      if (!(err <= tol) && bad++ < 5) {
        ADD_FAILURE() << what << " y[" << i << "][" << j << "]=" << y[i * ldy + j] << " ref=" << ref
                      << " tol=" << tol;
      }
    }
  }
}

// Restores the process's thread count when a test ends.
class ThreadsGuard {
 public:
  ThreadsGuard() : saved_(Threads()) {}
  ~ThreadsGuard() { SetThreads(saved_); }

 private:
  int saved_;
};

// Threads split the outputs over N; y is bitwise the same for 1, 2 and 3 threads, with and
// without row strides and for FP8 row slices that start inside a scale block, for odd N and
// K; and it matches the double reference.
TEST(MatMulTest, ThreadCountInvariant) {
  const ThreadsGuard guard;
  const int64_t n = 1001, k = 1031, ldx = k + 5, ldy = n + 3;
  for (const FormatCase& f : Formats()) {
    const TestWeights w = RandomWeights(f.format, n, k, f.block, 4242 + f.block);
    const WeightMatrix view = w.view();
    const std::vector<double> decoded = Decoded(w);
    for (int64_t m : {1, 3, 17, 64}) {
      const std::vector<float> x = RandomRows(m, k, static_cast<uint32_t>(31 * m + f.block));
      std::vector<float> xs(m * ldx, 1e30f);  // strided copy; the gaps must not be read
      for (int64_t i = 0; i < m; ++i) std::memcpy(&xs[i * ldx], &x[i * k], k * sizeof(float));
      for (MatMulPath path : kPaths) {
        const std::string what =
            absl::StrFormat("%s m=%d path %d", f.name, m, static_cast<int>(path));
        SetThreads(1);
        std::vector<float> base(m * n);
        MatMul(x.data(), m, view, base.data(), path);
        if (path == MatMulPath::kAuto) {
          ExpectNearReference(what, decoded, k, 0, n, x.data(), k, m, base.data(), n);
        }
        for (int threads : {1, 2, 3}) {
          SetThreads(threads);
          std::vector<float> y(m * n, -7.0f);
          MatMul(x.data(), m, view, y.data(), path);
          EXPECT_EQ(std::memcmp(y.data(), base.data(), y.size() * sizeof(float)), 0)
              << what << " threads " << threads;
          std::vector<float> ys(m * ldy, -7.0f);
          MatMul(xs.data(), ldx, m, view, ys.data(), ldy, path);
          for (int64_t i = 0; i < m; ++i) {
            EXPECT_EQ(std::memcmp(&ys[i * ldy], &base[i * n], n * sizeof(float)), 0)
                << what << " strided, threads " << threads << " row " << i;
            for (int64_t j = n; j < ldy; ++j) EXPECT_EQ(ys[i * ldy + j], -7.0f) << what;
          }
          // Row slices: for FP8 blocks the first starts inside a scale block (row_phase ≠ 0).
          for (const auto& [begin, count] : {std::pair<int64_t, int64_t>{37, 501}, {130, 871}}) {
            const WeightMatrix slice = view.Rows(begin, count);
            if (f.format == WeightFormat::kFp8 && begin % f.block != 0) {
              EXPECT_NE(slice.row_phase, 0) << what;
            }
            std::vector<float> yr(m * ldy, -7.0f);
            MatMul(xs.data(), ldx, m, slice, yr.data(), ldy, path);
            for (int64_t i = 0; i < m; ++i) {
              EXPECT_EQ(std::memcmp(&yr[i * ldy], &base[i * n + begin], count * sizeof(float)), 0)
                  << what << " rows [" << begin << ", +" << count << "), threads " << threads
                  << " row " << i;
            }
            if (threads == 2 && path == MatMulPath::kAuto && m <= 3) {
              ExpectNearReference(what + " slice", decoded, k, begin, count, xs.data(), ldx, m,
                                  yr.data(), ldy);
            }
          }
        }
      }
    }
  }
}

// E4M3 NaN codes (0x7F, 0xFF) make their outputs NaN and leave every other output bitwise
// as without them (the fast decoder's tiles that hold one are recomputed exactly).
TEST(MatMulTest, Fp8NanCodes) {
  const int64_t n = 67, k = 1000 + 3;
  for (int64_t block : {128, 32}) {
    const TestWeights clean = RandomWeights(WeightFormat::kFp8, n, k, block, 555);
    TestWeights with_nan = clean;
    const std::vector<std::pair<int64_t, int64_t>> nans = {{5, 700}, {6, 3}, {40, 1001}};
    for (const auto& [r, c] : nans) with_nan.bytes[r * k + c] = (r % 2) ? 0xFF : 0x7F;
    for (int64_t m : {1, 9}) {
      const std::vector<float> x = RandomRows(m, k, 77);
      for (MatMulPath path : kPaths) {
        std::vector<float> y0(m * n), y1(m * n);
        MatMul(x.data(), m, clean.view(), y0.data(), path);
        MatMul(x.data(), m, with_nan.view(), y1.data(), path);
        for (int64_t i = 0; i < m; ++i) {
          for (int64_t j = 0; j < n; ++j) {
            const bool nan_row = j == 5 || j == 6 || j == 40;
            if (nan_row) {
              EXPECT_TRUE(std::isnan(y1[i * n + j]))
                  << "block " << block << " y[" << i << "][" << j << "]";
            } else {
              EXPECT_EQ(std::memcmp(&y1[i * n + j], &y0[i * n + j], sizeof(float)), 0)
                  << "block " << block << " y[" << i << "][" << j << "]";
            }
          }
        }
      }
    }
  }
}

// Scales of 2^8 and more take the exact decoder, smaller ones the fast one: with every
// scale code raised by 10 and x divided by 2^10 the products, sums and so y are the same
// exactly, whichever decoder ran (codes 120..140 straddle the switch at 134/135).
TEST(MatMulTest, Fp8LargeScalesAgreeWithFastPath) {
  const int64_t n = 45, k = 777;
  for (int64_t block : {128, 32}) {
    TestWeights low = RandomWeights(WeightFormat::kFp8, n, k, block, 9);
    std::mt19937 rng(3);
    for (uint8_t& c : low.scales) c = static_cast<uint8_t>(120 + rng() % 11);
    TestWeights high = low;
    for (uint8_t& c : high.scales) c = static_cast<uint8_t>(c + 10);
    for (int64_t m : {1, 4, 11}) {
      const std::vector<float> x = RandomRows(m, k, 8);
      std::vector<float> x_low(x.size());
      for (size_t i = 0; i < x.size(); ++i) x_low[i] = x[i] * 0x1p10f;
      for (MatMulPath path : kPaths) {
        std::vector<float> y_low(m * n), y_high(m * n);
        MatMul(x_low.data(), m, low.view(), y_low.data(), path);
        MatMul(x.data(), m, high.view(), y_high.data(), path);
        EXPECT_EQ(std::memcmp(y_low.data(), y_high.data(), y_low.size() * sizeof(float)), 0)
            << "block " << block << " m=" << m << " path " << static_cast<int>(path);
      }
    }
  }
}

TEST(MatMulTest, EmptyShapes) {
  const TestWeights w = RandomWeights(WeightFormat::kFp8, 3, 0, 128, 1);
  std::vector<float> y(2 * 3, -1.0f);
  const std::vector<float> x(2, 0.0f);
  MatMul(x.data(), 2, w.view(), y.data());
  for (float v : y) EXPECT_EQ(v, 0.0f);  // K = 0: empty sums
  MatMul(x.data(), 0, w.view(), y.data());
}

TEST(WeightMatrixTest, ValidatesShapes) {
  const std::vector<uint8_t> bytes(130 * 200), scales(4);
  absl::StatusOr<WeightMatrix> fp8 =
      WeightMatrix::Fp8(bytes.data(), scales.data(), 130, 200, 128, 128);
  ASSERT_TRUE(fp8.ok()) << fp8.status();
  EXPECT_EQ(fp8->scale_rows(), 2);
  EXPECT_EQ(fp8->scale_cols(), 2);
  EXPECT_EQ(fp8->released_bytes(), 130 * 200 + 4);

  absl::StatusOr<WeightMatrix> fp4 = WeightMatrix::Fp4(bytes.data(), scales.data(), 7, 65);
  ASSERT_TRUE(fp4.ok()) << fp4.status();
  EXPECT_EQ(fp4->row_bytes(), 33);
  EXPECT_EQ(fp4->released_bytes(), 7 * 33 + 7 * 3);

  const std::vector<uint16_t> bf16(6);
  absl::StatusOr<WeightMatrix> b = WeightMatrix::Bf16(bf16.data(), 2, 3);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->released_bytes(), 12);

  EXPECT_FALSE(WeightMatrix::Fp8(bytes.data(), scales.data(), 4, 4, 0, 128).ok());
  EXPECT_FALSE(WeightMatrix::Fp8(bytes.data(), nullptr, 4, 4, 128, 128).ok());
  EXPECT_FALSE(WeightMatrix::Fp4(bytes.data(), nullptr, 4, 64).ok());
  EXPECT_FALSE(WeightMatrix::F32(nullptr, 4, 4).ok());
  EXPECT_FALSE(WeightMatrix::F32(nullptr, -1, 4).ok());
  WeightMatrix bad = *fp4;
  bad.block_cols = 16;
  EXPECT_FALSE(bad.Validate().ok());
  WeightMatrix f32 = *WeightMatrix::F32(reinterpret_cast<const float*>(bytes.data()), 2, 2);
  f32.scales = scales.data();
  EXPECT_FALSE(f32.Validate().ok());
}

}  // namespace
}  // namespace dsv4
