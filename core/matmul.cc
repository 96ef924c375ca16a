// Highway kernels for MatMul (core/matmul.h): compiled once per target by foreach_target.h,
// dispatched at run time with HWY_DYNAMIC_DISPATCH.
#include "core/matmul.h"

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "core/check.h"
#include "core/dtype.h"
#include "core/parallel.h"
#include "core/weight_matrix.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "core/matmul.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep

#include "hwy/aligned_allocator.h"
#include "hwy/cache_control.h"
#include "hwy/highway.h"

#ifndef DSV4_CORE_MATMUL_ONCE_
#define DSV4_CORE_MATMUL_ONCE_
namespace dsv4 {
namespace matmul_internal {

// Rows per pass of the direct regime and its micro-kernel's tile (rows × outputs); the
// panel regime's tile is kPanelTileRows × kPanelTileCols.
constexpr int kTileRows = 4;
constexpr int kTileCols = 4;
// fp32 scratch for one dequantised panel of W: 512 KiB, inside a 1 MiB L2 (256 KiB measured
// 5% slower at K = 4096, where a panel then holds only 15 rows to reuse each x block on).
constexpr int64_t kPanelFloats = 128 * 1024;
// The k loop runs in chunks of this many elements (a multiple of every vector width and a
// power of two): weight sources prefetch and scan for E4M3 NaN codes once per chunk.
constexpr int64_t kChunk = 256;

// E8M0 code → fp32 (2^(code-127), 255 NaN), decoded once.
inline const std::array<float, 256>& E8M0Table() {
  static const std::array<float, 256> table = [] {
    std::array<float, 256> t{};
    for (int c = 0; c < 256; ++c) t[c] = E8M0ToFloat(static_cast<uint8_t>(c));
    return t;
  }();
  return table;
}

// The fast FP8 decoder makes E4M3 × 2^-120 and multiplies by 2^120 × scale in one step:
// this table holds 2^120 × E8M0(code) = 2^(code - 7) for codes ≤ kMaxFastE8M0; larger
// codes (scales ≥ 2^8, which would overflow) take the two-step exact path.
constexpr int kMaxFastE8M0 = 134;
inline const std::array<float, 256>& E8M0Times2p120Table() {
  static const std::array<float, 256> table = [] {
    std::array<float, 256> t{};
    for (int c = 0; c <= kMaxFastE8M0; ++c) t[c] = E8M0ToFloat(static_cast<uint8_t>(c + 120));
    return t;
  }();
  return table;
}

// The 16 e2m1 values times each E8M0 scale: row c is {0, .5, 1, 1.5, 2, 3, 4, 6, -0, …, -6}
// × E8M0(c), the same fp32 products as decoding then scaling. 16 KiB, 64-byte aligned rows,
// so a scale group's lookup table is one vector load.
inline const float* Fp4ScaledTable() {
  struct alignas(64) Table {
    float v[256][16];
  };
  static const Table* const table = [] {
    static Table t;
    for (int c = 0; c < 256; ++c) {
      for (int e = 0; e < 16; ++e) {
        t.v[c][e] = Fp4ToFloat(static_cast<uint8_t>(e)) * E8M0Table()[c];
      }
    }
    return &t;
  }();
  return &table->v[0][0];
}

}  // namespace matmul_internal
}  // namespace dsv4
#endif  // DSV4_CORE_MATMUL_ONCE_

HWY_BEFORE_NAMESPACE();
namespace dsv4 {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

using DF = hn::ScalableTag<float>;
using VF = hn::Vec<DF>;
using matmul_internal::E8M0Table;
using matmul_internal::kChunk;
using matmul_internal::kTileCols;
using matmul_internal::kTileRows;

constexpr size_t kMaxLanes = HWY_MAX_BYTES / sizeof(float);

// ---- In-register decoders: L consecutive elements starting at p. ----

HWY_INLINE VF DecodeBf16(DF df, const uint8_t* p) {
  const hn::Rebind<uint16_t, DF> d16;
  const hn::RebindToUnsigned<DF> du;
  const auto bits = hn::PromoteTo(du, hn::LoadU(d16, reinterpret_cast<const uint16_t*>(p)));
  return hn::BitCast(df, hn::ShiftLeft<16>(bits));
}

// E4M3 bits s eeee mmm: placing eeee mmm at float bits 20..26 gives 2^(e-127)·1.m (or the
// subnormal 2^-126·0.m when e = 0); × 2^120 rescales to e4m3's bias 7 exactly. 0x7F/0xFF
// are NaN.
HWY_INLINE VF DecodeE4M3(DF df, const uint8_t* p) {
  const hn::Rebind<uint8_t, DF> d8;
  const hn::RebindToUnsigned<DF> du;
  const auto b = hn::PromoteTo(du, hn::LoadU(d8, p));
  const auto mag = hn::And(b, hn::Set(du, 0x7Fu));
  const auto sign = hn::ShiftLeft<24>(hn::And(b, hn::Set(du, 0x80u)));
  const VF v =
      hn::Mul(hn::BitCast(df, hn::Or(hn::ShiftLeft<20>(mag), sign)), hn::Set(df, 0x1p120f));
  const auto is_nan = hn::RebindMask(df, hn::Eq(mag, hn::Set(du, 0x7Fu)));
  return hn::IfThenElse(is_nan, hn::Set(df, std::numeric_limits<float>::quiet_NaN()), v);
}

#if HWY_TARGET != HWY_SCALAR
// e2m1 bits s ee m: placing ee m at float bits 22..24 and scaling by 2^126 gives
// {0, .5, 1, 1.5, 2, 3, 4, 6} exactly. p holds L/2 packed bytes (low nibble first).
HWY_INLINE VF DecodeFp4(DF df, const uint8_t* p) {
  const hn::Half<DF> dh;
  const hn::Rebind<uint8_t, decltype(dh)> d8h;
  const hn::Rebind<uint16_t, decltype(dh)> d16h;
  const hn::Rebind<uint8_t, DF> d8;
  const hn::RebindToUnsigned<DF> du;
  const auto b16 = hn::PromoteTo(d16h, hn::LoadU(d8h, p));
  // Each 16-bit lane becomes lo | hi << 8: as bytes, the nibbles in element order.
  const auto spread = hn::Or(hn::And(b16, hn::Set(d16h, uint16_t{0x0F})),
                             hn::ShiftLeft<4>(hn::And(b16, hn::Set(d16h, uint16_t{0xF0}))));
  const auto n = hn::PromoteTo(du, hn::BitCast(d8, spread));
  if constexpr (hn::MaxLanes(DF()) == 16) {
    // The 16 values fill one vector: a single lane permutation decodes.
    HWY_ALIGN static constexpr float kValues[16] = {0.0f,  0.5f,  1.0f,  1.5f,  2.0f,  3.0f,
                                                    4.0f,  6.0f,  -0.0f, -0.5f, -1.0f, -1.5f,
                                                    -2.0f, -3.0f, -4.0f, -6.0f};
    const hn::RebindToSigned<DF> di;
    return hn::TableLookupLanes(hn::Load(df, kValues), hn::IndicesFromVec(df, hn::BitCast(di, n)));
  }
  const auto sign = hn::ShiftLeft<28>(hn::And(n, hn::Set(du, 0x8u)));
  const auto mag = hn::ShiftLeft<22>(hn::And(n, hn::Set(du, 0x7u)));
  return hn::Mul(hn::BitCast(df, hn::Or(mag, sign)), hn::Set(df, 0x1p126f));
}
#endif

// E4M3 without NaN codes, as fp32 bits s 0000 eeee mmm 0…: the value × 2^-120 (exact,
// subnormal for e = 0). Sign-extending the byte puts copies of s in bits 27..31 after the
// shift; the mask keeps bit 31.
HWY_INLINE VF E4M3Times2pm120(DF df, const uint8_t* p) {
  const hn::Rebind<int8_t, DF> d8;
  const hn::RebindToSigned<DF> di;
  const auto b = hn::PromoteTo(di, hn::LoadU(d8, reinterpret_cast<const int8_t*>(p)));
  return hn::BitCast(df,
                     hn::And(hn::ShiftLeft<20>(b), hn::Set(di, static_cast<int32_t>(0x87FFFFFFu))));
}

// ---- Lane orders. ----
// A source with kPermuted returns each full step's L elements in this lane order (at 16
// lanes): lane 2t holds element t, lane 2t + 1 element 8 + t. Permuting x the same way
// makes lane 2t of an accumulator take exactly the products canonical lane t takes, in the
// same order; Unpermute restores the canonical lanes before the last step.
HWY_ALIGN constexpr int32_t kPermuteLanes[16] = {0, 8,  1, 9,  2, 10, 3, 11,
                                                 4, 12, 5, 13, 6, 14, 7, 15};
HWY_ALIGN constexpr int32_t kUnpermuteLanes[16] = {0, 2, 4, 6, 8, 10, 12, 14,
                                                   1, 3, 5, 7, 9, 11, 13, 15};

HWY_INLINE VF Unpermute(VF v) {
  return hn::TableLookupLanes(v, hn::SetTableIndices(DF(), kUnpermuteLanes));
}

// x[i][0, K) for i < m with its full steps in kPermuted order (the partial last step as is)
// in this thread's scratch, rows ld apart.
inline const float* PermutedX(const float* x, int64_t ldx, int64_t m, int64_t k, int64_t* ld) {
  const DF df;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(df));
  const int64_t k_full = k / lanes * lanes;
  *ld = std::max<int64_t>(lanes, (k + lanes - 1) / lanes * lanes);
  const size_t floats = static_cast<size_t>(m * *ld);
  thread_local hwy::AlignedFreeUniquePtr<float[]> scratch;
  thread_local size_t capacity = 0;
  if (capacity < floats) {
    scratch = hwy::AllocateAligned<float>(floats);
    capacity = floats;
  }
  const auto perm = hn::SetTableIndices(df, kPermuteLanes);
  for (int64_t i = 0; i < m; ++i) {
    const float* src = x + i * ldx;
    float* dst = scratch.get() + i * *ld;
    for (int64_t k0 = 0; k0 < k_full; k0 += lanes) {
      hn::Store(hn::TableLookupLanes(hn::LoadU(df, src + k0), perm), df, dst + k0);
    }
    std::memcpy(dst + k_full, src + k_full, static_cast<size_t>(k - k_full) * sizeof(float));
  }
  return scratch.get();
}

// ---- Weight sources for the micro-kernel. ----
// A source serves the tile's rows j < COLS of W:
//   group(): elements per scale group (a power of two, multiple of L, dividing kChunk);
//   Chunk(j, k0, nan): at each chunk [k0, k0 + kChunk) ≤ K: prefetch, NaN scan;
//   Group(j, k0, bad) → g: at each group start; Load(j, k0, g): W[j][k0 .. k0+L);
//   Rest(j, k0, bad): W[j][k0 .. k0+L) outside whole chunks (k0 + L ≤ K);
//   Tail(j, k0): W[j][k0 .. K) padded with +0 to L lanes, K - k0 < L;
//   Flagged(nan, bad): the fast decoders could not be exact for this tile (an E4M3 NaN code
//   or a scale ≥ 2^8): the caller recomputes it with ExactSource, which gives the same bits
//   whenever neither happens.

using D8 = hn::ScalableTag<uint8_t>;
using V8 = hn::Vec<D8>;

// Whether one scale covers each whole vector step and its index is a shift of k: the scale
// block width is a power of two and a multiple of L (32 and 128 are, up to 512-bit
// vectors). Other widths decode per element (correct, slow).
inline bool VectorScales(const WeightMatrix& w) {
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(DF()));
  return w.block_cols > 0 && (w.block_cols & (w.block_cols - 1)) == 0 && w.block_cols % lanes == 0;
}

// Row pointers of a tile and the prefetch of the next tile's rows.
class RowSet {
 public:
  RowSet(const WeightMatrix& w, int64_t n0, int rows) {
    const int64_t row_bytes = w.row_bytes();
    for (int j = 0; j < rows; ++j) {
      row_[j] = w.data + (n0 + j) * row_bytes;
      // The same row of the next group: prefetched a group ahead, since rows of a few KiB
      // each start a new page that the hardware prefetcher would ramp up on again.
      next_row_[j] = n0 + rows + j < w.rows ? row_[j] + rows * row_bytes : row_[j];
    }
  }
  // Prefetches bytes [begin, begin + kBytes) of row j of the next group, one 64-byte line
  // at a time.
  template <int64_t kBytes>
  HWY_INLINE void PrefetchNext(int j, int64_t begin) const {
    for (int64_t b = 0; b < kBytes; b += 64) hwy::Prefetch(next_row_[j] + begin + b);
  }
  const uint8_t* row(int j) const { return row_[j]; }

 private:
  const uint8_t* row_[kTileCols] = {};
  const uint8_t* next_row_[kTileCols] = {};
};

// Bytes of W data per element, ×2 (FP4 packs two elements per byte).
constexpr int64_t TwiceBytesPerElement(WeightFormat f) {
  return f == WeightFormat::kF32    ? 8
         : f == WeightFormat::kBF16 ? 4
         : f == WeightFormat::kFp8  ? 2
                                    : 1;
}

// Element-at-a-time exact decoding of the released bytes: the reference every faster path
// matches bitwise (kVectorScales as VectorScales(w)). Nothing in Load calls out of line: a
// call in the k loop would spill the accumulators.
template <WeightFormat kFormat, bool kVectorScales>
class ExactSource {
 public:
  ExactSource(const WeightMatrix& w, int64_t n0, int rows) : w_(w), n0_(n0), rows_(w, n0, rows) {
    if constexpr (kFormat == WeightFormat::kFp8 || kFormat == WeightFormat::kFp4) {
      for (int j = 0; j < rows; ++j) scale_row_[j] = w.scales + w.scale_index(n0 + j, 0);
      DSV4_CHECK(kVectorScales == VectorScales(w));
      while ((int64_t{1} << block_shift_) < w.block_cols) ++block_shift_;
      scale_table_ = E8M0Table().data();
    }
  }

  int64_t group() const { return kChunk; }
  HWY_INLINE void Chunk(int j, int64_t k0, V8& /*nan*/) const {
    constexpr int64_t kTwice = TwiceBytesPerElement(kFormat);
    rows_.PrefetchNext<kChunk * kTwice / 2>(j, k0 * kTwice / 2);
  }
  HWY_INLINE VF Group(int /*j*/, int64_t /*k0*/, int& /*bad*/) const { return hn::Zero(DF()); }
  HWY_INLINE VF Load(int j, int64_t k0, VF /*g*/) const { return Exact(j, k0); }
  HWY_INLINE VF Rest(int j, int64_t k0, int& /*bad*/) const { return Exact(j, k0); }
  HWY_INLINE VF Tail(int j, int64_t k0) const { return Scalar(j, k0, w_.cols); }
  static constexpr bool kPermuted = false;
  static constexpr int64_t kStaticGroup = 0;
  static bool Flagged(V8 /*nan*/, int /*bad*/) { return false; }

 private:
  HWY_INLINE VF Exact(int j, int64_t k0) const {
    const DF df;
    const uint8_t* row = rows_.row(j);
    if constexpr (kFormat == WeightFormat::kF32) {
      return hn::LoadU(df, reinterpret_cast<const float*>(row) + k0);
    } else if constexpr (kFormat == WeightFormat::kBF16) {
      return DecodeBf16(df, row + 2 * k0);
    } else {
      if constexpr (!kVectorScales) {
        return Scalar(j, k0, k0 + static_cast<int64_t>(hn::Lanes(df)));
      }
      const VF scale = hn::Set(df, scale_table_[scale_row_[j][k0 >> block_shift_]]);
      if constexpr (kFormat == WeightFormat::kFp8) {
        return hn::Mul(DecodeE4M3(df, row + k0), scale);
      } else {
#if HWY_TARGET == HWY_SCALAR
        return Scalar(j, k0, k0 + 1);
#else
        return hn::Mul(DecodeFp4(df, row + k0 / 2), scale);
#endif
      }
    }
  }

  // Elements k0 .. k1 (k1 - k0 ≤ L) decoded one by one, padded with +0.
  HWY_NOINLINE VF Scalar(int j, int64_t k0, int64_t k1) const {
    const DF df;
    HWY_ALIGN float buf[kMaxLanes] = {};
    for (int64_t k = k0; k < k1; ++k)
      buf[k - k0] = w_.Element(n0_ + j, k);  // exact, as the vector decoders
    return hn::Load(df, buf);
  }

  const WeightMatrix& w_;
  const int64_t n0_;
  const RowSet rows_;
  const uint8_t* scale_row_[kTileCols] = {};
  const float* scale_table_ = nullptr;
  int block_shift_ = 0;
};

// The fast decoders (requires VectorScales(w) for FP8 and FP4), bitwise equal to
// ExactSource unless Flagged:
// - FP8: E4M3 × 2^-120 (three integer ops) times 2^120 × scale (one multiply per vector).
//   Both round the same real product e4m3 × scale once, so the bits agree whenever
//   2^120 × scale is finite (scale code ≤ kMaxFastE8M0, else `bad`). NaN codes 0x7F/0xFF
//   are not decoded: each chunk's bytes are scanned (max of byte | 0x80 is 0xFF iff some
//   byte is a NaN code) and a flagged tile is recomputed exactly.
// - FP4 at 16 lanes: each 32-element block loads its row of Fp4ScaledTable (the same
//   products as scaling each decoded value) and a lane permutation picks from it, the
//   nibble indices shifted down from one 8-byte broadcast per step (kPermuted lane order).
// - F32, BF16: as ExactSource.
// kGroup: the scale group width when known at compile time (FP8 blocks of 32 or 128), else
// 0; FP4's is always 32.
template <WeightFormat kFormat, int64_t kGroup = 0>
class FastSource {
 public:
  FastSource(const WeightMatrix& w, int64_t n0, int rows)
      : exact_(w, n0, rows), rows_(w, n0, rows) {
    if constexpr (kFormat == WeightFormat::kFp8 || kFormat == WeightFormat::kFp4) {
      for (int j = 0; j < rows; ++j) scale_row_[j] = w.scales + w.scale_index(n0 + j, 0);
      while ((int64_t{1} << block_shift_) < w.block_cols) ++block_shift_;
      group_ = std::min<int64_t>(w.block_cols, kChunk);
      DSV4_CHECK(kGroup == 0 || group_ == kGroup);
      scale_table_ = kFormat == WeightFormat::kFp8 ? matmul_internal::E8M0Times2p120Table().data()
                     : kFp4Table                   ? matmul_internal::Fp4ScaledTable()
                                                   : E8M0Table().data();
    }
  }

  int64_t group() const { return group_; }

  HWY_INLINE void Chunk(int j, int64_t k0, V8& nan) const {
    exact_.Chunk(j, k0, nan);
    if constexpr (kFormat == WeightFormat::kFp8) {
      const D8 d8;
      const V8 high = hn::Set(d8, uint8_t{0x80});
      const uint8_t* p = rows_.row(j) + k0;
      for (int64_t b = 0; b < kChunk; b += static_cast<int64_t>(hn::Lanes(d8))) {
        nan = hn::Max(nan, hn::Or(hn::LoadU(d8, p + b), high));
      }
    }
  }

  HWY_INLINE VF Group(int j, int64_t k0, int& bad) const {
    const DF df;
    if constexpr (kFormat == WeightFormat::kFp8) {
      const uint8_t code = scale_row_[j][k0 >> block_shift_];
      bad |= code > matmul_internal::kMaxFastE8M0;
      return hn::Set(df, scale_table_[code]);
    } else if constexpr (kFormat == WeightFormat::kFp4) {
      const uint8_t code = scale_row_[j][k0 >> block_shift_];
      if constexpr (kFp4Table) return hn::Load(df, scale_table_ + 16 * size_t{code});
      return hn::Set(df, scale_table_[code]);
    } else {
      return hn::Zero(df);
    }
  }

  HWY_INLINE VF Load(int j, int64_t k0, VF g) const {
    const DF df;
    if constexpr (kFormat == WeightFormat::kFp8) {
      return hn::Mul(E4M3Times2pm120(df, rows_.row(j) + k0), g);
    } else if constexpr (kFormat == WeightFormat::kFp4) {
#if HWY_TARGET == HWY_SCALAR
      return exact_.Rest(j, k0, dummy_bad_);
#else
      if constexpr (kFp4Table) {
        const hn::RebindToUnsigned<DF> du;
        const hn::Repartition<uint64_t, DF> d64;
        // The step's 8 bytes in every u64 lane: even u32 lanes hold bytes 0..3 (elements
        // 0..7), odd lanes bytes 4..7 (elements 8..15); lanes 2t and 2t+1 shift nibble t
        // down, so lanes are in kPermuted order.
        uint64_t bytes;
        std::memcpy(&bytes, rows_.row(j) + (k0 >> 1), sizeof(bytes));
        const auto shifted = hn::BitCast(du, hn::Set(d64, bytes)) >> hn::Load(du, kFp4Shift);
#if HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX3
        // vpermps reads only the low 4 bits of each index.
        return VF{_mm512_permutexvar_ps(shifted.raw, g.raw)};
#else
        const auto idx = hn::And(shifted, hn::Set(du, 0xFu));
        return hn::TableLookupLanes(g, hn::IndicesFromVec(df, idx));
#endif
      }
      return hn::Mul(DecodeFp4(df, rows_.row(j) + k0 / 2), g);
#endif
    } else {
      return exact_.Rest(j, k0, dummy_bad_);
    }
  }

  HWY_INLINE VF Rest(int j, int64_t k0, int& bad) const {
    if constexpr (kFormat == WeightFormat::kFp4) return Load(j, k0, Group(j, k0, bad));
    return exact_.Rest(j, k0, bad);
  }
  HWY_INLINE VF Tail(int j, int64_t k0) const { return exact_.Tail(j, k0); }

  // Load (and Rest) of FP4 at 16 lanes returns element k0 + t in lane 2t and k0 + 8 + t in
  // lane 2t + 1 (t < 8): the caller permutes x the same way and the accumulators back.
  static constexpr bool kPermuted =
      kFormat == WeightFormat::kFp4 && hn::MaxLanes(DF()) == 16 && HWY_TARGET != HWY_SCALAR;
  // group() when known at compile time (FP4's 1×32 blocks), else 0.
  static constexpr int64_t kStaticGroup = kFormat == WeightFormat::kFp4 ? 32 : kGroup;

  static bool Flagged(V8 nan, int bad) {
    if constexpr (kFormat == WeightFormat::kFp8) {
      const D8 d8;
      return bad != 0 || !hn::AllFalse(d8, hn::Eq(nan, hn::Set(d8, uint8_t{0xFF})));
    }
    (void)nan;
    return bad != 0;
  }

 private:
  static constexpr bool kFp4Table = hn::MaxLanes(DF()) == 16 && HWY_TARGET != HWY_SCALAR;
  HWY_ALIGN static constexpr uint32_t kFp4Shift[16] = {0,  0,  4,  4,  8,  8,  12, 12,
                                                       16, 16, 20, 20, 24, 24, 28, 28};

  const ExactSource<kFormat, true> exact_;
  const RowSet rows_;
  const uint8_t* scale_row_[kTileCols] = {};
  const float* scale_table_ = nullptr;
  int block_shift_ = 0;
  int64_t group_ = kChunk;
  mutable int dummy_bad_ = 0;
};

// ---- The micro-kernel: y[i][j] for ROWS rows of x and COLS rows of the source, in the
// canonical order of core/matmul.h. ----
// One k step of one row: c_j += xv · w_j for the tile's COLS columns.
template <int COLS>
HWY_INLINE void RowStep(VF xv, VF w0, VF w1, VF w2, VF w3, VF& c0, VF& c1, VF& c2, VF& c3) {
#if HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX3 && (defined(__GNUC__) || defined(__clang__))
  // Keeps x in a register: compilers otherwise fold its load into each of the COLS
  // multiply-adds, which costs a load per product.
  if constexpr (COLS > 1) asm("" : "+v"(xv.raw));
#endif
  c0 = hn::MulAdd(xv, w0, c0);
  if constexpr (COLS > 1) c1 = hn::MulAdd(xv, w1, c1);
  if constexpr (COLS > 2) c2 = hn::MulAdd(xv, w2, c2);
  if constexpr (COLS > 3) c3 = hn::MulAdd(xv, w3, c3);
}

template <int COLS>
HWY_INLINE void StoreRow(float* y, VF c0, VF c1, VF c2, VF c3) {
  const DF df;
  y[0] = hn::GetLane(hn::SumOfLanes(df, c0));
  if constexpr (COLS > 1) y[1] = hn::GetLane(hn::SumOfLanes(df, c1));
  if constexpr (COLS > 2) y[2] = hn::GetLane(hn::SumOfLanes(df, c2));
  if constexpr (COLS > 3) y[3] = hn::GetLane(hn::SumOfLanes(df, c3));
}

// The accumulators are named variables (not arrays) and nothing is called while they are
// live, so they stay in registers: the partial last step's operands are staged before the
// loop. The k loop is split into chunks and scale groups (only where sources refresh their
// state); each accumulator still takes the steps k0 = 0, L, 2L, … in order. Returns
// Source::Flagged (y is then to be recomputed with an exact source).
template <int ROWS, int COLS, class Source>
HWY_INLINE bool Tile(const float* HWY_RESTRICT x, int64_t ldx, int64_t k, const Source& w,
                     float* HWY_RESTRICT y, int64_t ldy) {
  static_assert(ROWS >= 1 && ROWS <= 4 && COLS >= 1 && COLS <= 4);
  const DF df;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(df));
  const int64_t k_full = k / lanes * lanes;
  const int64_t k_chunks = k_full / kChunk * kChunk;
  const int64_t group = Source::kStaticGroup ? Source::kStaticGroup : w.group();
  HWY_ALIGN float x_tail[ROWS][kMaxLanes];
  HWY_ALIGN float w_tail[COLS][kMaxLanes];
  if (k_full < k) {
    for (int i = 0; i < ROWS; ++i) {
      std::memset(x_tail[i], 0, sizeof(x_tail[i]));
      std::memcpy(x_tail[i], x + i * ldx + k_full, static_cast<size_t>(k - k_full) * sizeof(float));
    }
    for (int j = 0; j < COLS; ++j) hn::Store(w.Tail(j, k_full), df, w_tail[j]);
  }
  VF c00 = hn::Zero(df), c01 = c00, c02 = c00, c03 = c00;
  VF c10 = c00, c11 = c00, c12 = c00, c13 = c00;
  VF c20 = c00, c21 = c00, c22 = c00, c23 = c00;
  VF c30 = c00, c31 = c00, c32 = c00, c33 = c00;
  V8 nan = hn::Zero(D8());
  int bad = 0;
  const auto step = [&](VF w0, VF w1, VF w2, VF w3, const float* x0, const float* x1,
                        const float* x2, const float* x3) HWY_ATTR {
    RowStep<COLS>(hn::LoadU(df, x0), w0, w1, w2, w3, c00, c01, c02, c03);
    if constexpr (ROWS > 1) RowStep<COLS>(hn::LoadU(df, x1), w0, w1, w2, w3, c10, c11, c12, c13);
    if constexpr (ROWS > 2) RowStep<COLS>(hn::LoadU(df, x2), w0, w1, w2, w3, c20, c21, c22, c23);
    if constexpr (ROWS > 3) RowStep<COLS>(hn::LoadU(df, x3), w0, w1, w2, w3, c30, c31, c32, c33);
  };
  const int64_t r1 = ROWS > 1 ? ldx : 0, r2 = ROWS > 2 ? 2 * ldx : 0, r3 = ROWS > 3 ? 3 * ldx : 0;
  int64_t k0 = 0;
  while (k0 < k_chunks) {
    for (int j = 0; j < COLS; ++j) w.Chunk(j, k0, nan);
    const int64_t chunk_end = k0 + kChunk;
    while (k0 < chunk_end) {
      const VF g0 = w.Group(0, k0, bad);
      const VF g1 = COLS > 1 ? w.Group(1, k0, bad) : g0;
      const VF g2 = COLS > 2 ? w.Group(2, k0, bad) : g0;
      const VF g3 = COLS > 3 ? w.Group(3, k0, bad) : g0;
      const int64_t group_end = k0 + group;
      for (; k0 < group_end; k0 += lanes) {
        const VF w0 = w.Load(0, k0, g0);
        const VF w1 = COLS > 1 ? w.Load(1, k0, g1) : w0;
        const VF w2 = COLS > 2 ? w.Load(2, k0, g2) : w0;
        const VF w3 = COLS > 3 ? w.Load(3, k0, g3) : w0;
        step(w0, w1, w2, w3, x + k0, x + r1 + k0, x + r2 + k0, x + r3 + k0);
      }
    }
  }
  for (; k0 < k_full; k0 += lanes) {
    const VF w0 = w.Rest(0, k0, bad);
    const VF w1 = COLS > 1 ? w.Rest(1, k0, bad) : w0;
    const VF w2 = COLS > 2 ? w.Rest(2, k0, bad) : w0;
    const VF w3 = COLS > 3 ? w.Rest(3, k0, bad) : w0;
    step(w0, w1, w2, w3, x + k0, x + r1 + k0, x + r2 + k0, x + r3 + k0);
  }
  if constexpr (Source::kPermuted) {
    c00 = Unpermute(c00), c01 = Unpermute(c01), c02 = Unpermute(c02), c03 = Unpermute(c03);
    c10 = Unpermute(c10), c11 = Unpermute(c11), c12 = Unpermute(c12), c13 = Unpermute(c13);
    c20 = Unpermute(c20), c21 = Unpermute(c21), c22 = Unpermute(c22), c23 = Unpermute(c23);
    c30 = Unpermute(c30), c31 = Unpermute(c31), c32 = Unpermute(c32), c33 = Unpermute(c33);
  }
  if (k_full < k) {
    const VF w0 = hn::Load(df, w_tail[0]);
    const VF w1 = hn::Load(df, w_tail[COLS > 1 ? 1 : 0]);
    const VF w2 = hn::Load(df, w_tail[COLS > 2 ? 2 : 0]);
    const VF w3 = hn::Load(df, w_tail[COLS > 3 ? 3 : 0]);
    step(w0, w1, w2, w3, x_tail[0], x_tail[ROWS > 1 ? 1 : 0], x_tail[ROWS > 2 ? 2 : 0],
         x_tail[ROWS > 3 ? 3 : 0]);
  }
  StoreRow<COLS>(y, c00, c01, c02, c03);
  if constexpr (ROWS > 1) StoreRow<COLS>(y + ldy, c10, c11, c12, c13);
  if constexpr (ROWS > 2) StoreRow<COLS>(y + 2 * ldy, c20, c21, c22, c23);
  if constexpr (ROWS > 3) StoreRow<COLS>(y + 3 * ldy, c30, c31, c32, c33);
  return Source::Flagged(nan, bad);
}

// Runs Tile with run-time tile sizes (1..kTileRows × 1..kTileCols).
template <int ROWS, class Source>
HWY_INLINE bool TileCols(int cols, const float* x, int64_t ldx, int64_t k, const Source& w,
                         float* y, int64_t ldy) {
  static_assert(kTileCols == 4);
  switch (cols) {
    case 1:
      return Tile<ROWS, 1>(x, ldx, k, w, y, ldy);
    case 2:
      return Tile<ROWS, 2>(x, ldx, k, w, y, ldy);
    case 3:
      return Tile<ROWS, 3>(x, ldx, k, w, y, ldy);
    default:
      return Tile<ROWS, 4>(x, ldx, k, w, y, ldy);
  }
}

template <class Source>
HWY_NOINLINE bool AnyTile(int rows, int cols, const float* x, int64_t ldx, int64_t k,
                          const Source& w, float* y, int64_t ldy) {
  static_assert(kTileRows == 4);
  switch (rows) {
    case 1:
      return TileCols<1>(cols, x, ldx, k, w, y, ldy);
    case 2:
      return TileCols<2>(cols, x, ldx, k, w, y, ldy);
    case 3:
      return TileCols<3>(cols, x, ldx, k, w, y, ldy);
    default:
      return TileCols<4>(cols, x, ldx, k, w, y, ldy);
  }
}

// The source of the direct regime and the panels: the fast decoders where the scale blocks
// allow them.
template <WeightFormat kFormat, bool kVectorScales, int64_t kGroup>
using DirectSourceT =
    std::conditional_t<kVectorScales, FastSource<kFormat, kGroup>, ExactSource<kFormat, false>>;

// Direct regime: for each group of kTileCols outputs, passes of up to kTileRows rows. xs
// (rows ldxs apart) is x in the direct source's lane order (x itself unless kPermuted).
template <WeightFormat kFormat, bool kVectorScales, int64_t kGroup>
void RunDirect(const float* x, int64_t ldx, const float* xs, int64_t ldxs, int64_t m,
               const WeightMatrix& w, float* y, int64_t ldy, int64_t n_begin, int64_t n_end) {
  const int64_t k = w.cols;
  for (int64_t n0 = n_begin; n0 < n_end; n0 += kTileCols) {
    const int cols = static_cast<int>(std::min<int64_t>(kTileCols, n_end - n0));
    const DirectSourceT<kFormat, kVectorScales, kGroup> source(w, n0, cols);
    for (int64_t i0 = 0; i0 < m; i0 += kTileRows) {
      const int rows = static_cast<int>(std::min<int64_t>(kTileRows, m - i0));
      if (AnyTile(rows, cols, xs + i0 * ldxs, ldxs, k, source, y + i0 * ldy + n0, ldy)) {
        const ExactSource<kFormat, kVectorScales> exact(w, n0, cols);
        AnyTile(rows, cols, x + i0 * ldx, ldx, k, exact, y + i0 * ldy + n0, ldy);
      }
    }
  }
}

// One row of W dequantised into dst[0, ⌈K/L⌉·L) (padded with +0) by the same loop as
// Tile's; returns Source::Flagged.
template <class Source>
HWY_INLINE bool DequantRow(const Source& source, int64_t k, float* HWY_RESTRICT dst) {
  const DF df;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(df));
  const int64_t k_full = k / lanes * lanes;
  const int64_t k_chunks = k_full / kChunk * kChunk;
  const int64_t group = source.group();
  V8 nan = hn::Zero(D8());
  int bad = 0;
  int64_t k0 = 0;
  while (k0 < k_chunks) {
    source.Chunk(0, k0, nan);
    const int64_t chunk_end = k0 + kChunk;
    while (k0 < chunk_end) {
      const VF g = source.Group(0, k0, bad);
      const int64_t group_end = k0 + group;
      for (; k0 < group_end; k0 += lanes) {
        const VF v = source.Load(0, k0, g);
        hn::Store(Source::kPermuted ? Unpermute(v) : v, df, dst + k0);
      }
    }
  }
  for (; k0 < k_full; k0 += lanes) {
    const VF v = source.Rest(0, k0, bad);
    hn::Store(Source::kPermuted ? Unpermute(v) : v, df, dst + k0);
  }
  if (k0 < k) hn::Store(source.Tail(0, k0), df, dst + k0);
  return Source::Flagged(nan, bad);
}

// The panel micro-kernel: kPanelTileRows rows of x × kPanelTileCols panel rows (24 of the
// 32 vector registers at 8 × 3), so each x load feeds 3 multiply-adds and each W load 8.
// It runs the steps [kb, ke) of a K block: the accumulators start at +0 (first) or are
// reloaded from acc, where the previous block stored them (a store and a load keep the
// bits); the last block adds the padded last step (x_tail, the panel's +0 padding) and
// stores y. Each accumulator still takes k0 = 0, L, 2L, … in order: the canonical order.
constexpr int kPanelTileRows = 8;
constexpr int kPanelTileCols = 3;

#if HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX3
// SumOfLanes of 16 accumulators at once, bitwise: Highway's 512-bit SumOfLanes is
// _mm512_reduce_add_ps, the tree ((s0 + s2) + (s1 + s3)) of s_l = t_l + t_{l+4},
// t_l = a_l + a_{l+8}. Each level below adds the same pairs for several accumulators in one
// vector (fp32 addition is commutative, so operand order does not matter). Lane 4b + c of
// the result is the sum of a[b + 4c].
HWY_INLINE __m512 SumOfLanes16(const __m512* a) {
  __m512 s1[8], s2[4], s3[2];
  for (int p = 0; p < 8; ++p) {  // lanes 0-7: a[2p]'s t, 8-15: a[2p+1]'s
    s1[p] = _mm512_add_ps(_mm512_shuffle_f32x4(a[2 * p], a[2 * p + 1], 0x44),
                          _mm512_shuffle_f32x4(a[2 * p], a[2 * p + 1], 0xEE));
  }
  for (int q = 0; q < 4; ++q) {  // block b: a[4q + b]'s s_0..3
    s2[q] = _mm512_add_ps(_mm512_shuffle_f32x4(s1[2 * q], s1[2 * q + 1], 0x88),
                          _mm512_shuffle_f32x4(s1[2 * q], s1[2 * q + 1], 0xDD));
  }
  for (int r = 0; r < 2; ++r) {  // block b: a[8r + b]'s s0 + s2, s1 + s3, a[8r + 4 + b]'s
    s3[r] = _mm512_add_ps(_mm512_shuffle_ps(s2[2 * r], s2[2 * r + 1], 0x44),
                          _mm512_shuffle_ps(s2[2 * r], s2[2 * r + 1], 0xEE));
  }
  return _mm512_add_ps(_mm512_shuffle_ps(s3[0], s3[1], 0x88),
                       _mm512_shuffle_ps(s3[0], s3[1], 0xDD));
}
#endif

// y[i * ldy + j] = SumOfLanes(c[i][j]).
template <int R, int C>
HWY_INLINE void StoreSums(const VF (&c)[R][C], float* HWY_RESTRICT y, int64_t ldy) {
  const DF df;
#if HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX3
  if constexpr (hn::MaxLanes(DF()) == 16) {
    constexpr int kN = R * C;
#pragma GCC unroll 4
    for (int g = 0; g < kN; g += 16) {
      __m512 a[16];
#pragma GCC unroll 16
      for (int t = 0; t < 16; ++t) {
        a[t] = g + t < kN ? c[(g + t) / C][(g + t) % C].raw : _mm512_setzero_ps();
      }
      HWY_ALIGN float sums[16];
      _mm512_store_ps(sums, SumOfLanes16(a));
#pragma GCC unroll 16
      for (int t = 0; t < 16; ++t) {
        if (g + t < kN) y[(g + t) / C * ldy + (g + t) % C] = sums[t % 4 * 4 + t / 4];
      }
    }
    return;
  }
#endif
#pragma GCC unroll 32
  for (int i = 0; i < R; ++i) {
#pragma GCC unroll 32
    for (int j = 0; j < C; ++j) y[i * ldy + j] = hn::GetLane(hn::SumOfLanes(df, c[i][j]));
  }
}

template <int R, int C>
HWY_NOINLINE void PanelBlock(const float* HWY_RESTRICT x, int64_t ldx,
                             const float* HWY_RESTRICT x_tail, const float* HWY_RESTRICT w,
                             int64_t stride, int64_t kb, int64_t ke, bool first, bool last,
                             float* HWY_RESTRICT acc, float* HWY_RESTRICT y, int64_t ldy) {
  const DF df;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(df));
  VF c[R][C];
#pragma GCC unroll 32
  for (int i = 0; i < R; ++i) {
#pragma GCC unroll 32
    for (int j = 0; j < C; ++j) {
      c[i][j] = first ? hn::Zero(df) : hn::Load(df, acc + (i * C + j) * lanes);
    }
  }
  const auto step = [&](const float* const* xr, int64_t xk, int64_t k0) HWY_ATTR {
    VF wv[C];
#pragma GCC unroll 32
    for (int j = 0; j < C; ++j) wv[j] = hn::Load(df, w + j * stride + k0);
#pragma GCC unroll 32
    for (int i = 0; i < R; ++i) {
      VF xv = hn::LoadU(df, xr[i] + xk);
#if HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX3 && (defined(__GNUC__) || defined(__clang__))
      // Keeps x in a register (see RowStep).
      if constexpr (C > 1) asm("" : "+v"(xv.raw));
#endif
#pragma GCC unroll 32
      for (int j = 0; j < C; ++j) c[i][j] = hn::MulAdd(xv, wv[j], c[i][j]);
    }
  };
  const float* xr[R];
#pragma GCC unroll 32
  for (int i = 0; i < R; ++i) xr[i] = x + i * ldx;
  for (int64_t k0 = kb; k0 < ke; k0 += lanes) step(xr, k0, k0);
  if (!last) {
#pragma GCC unroll 32
    for (int i = 0; i < R; ++i) {
#pragma GCC unroll 32
      for (int j = 0; j < C; ++j) hn::Store(c[i][j], df, acc + (i * C + j) * lanes);
    }
    return;
  }
  if (x_tail != nullptr) {
    const float* tr[R];
#pragma GCC unroll 32
    for (int i = 0; i < R; ++i) tr[i] = x_tail + i * lanes;
    step(tr, 0, ke);
  }
  StoreSums<R, C>(c, y, ldy);
}

using PanelBlockFn = void (*)(const float*, int64_t, const float*, const float*, int64_t, int64_t,
                              int64_t, bool, bool, float*, float*, int64_t);

template <int R, int... Cs>
constexpr std::array<PanelBlockFn, sizeof...(Cs)> PanelBlockRow(std::integer_sequence<int, Cs...>) {
  return {&PanelBlock<R, Cs + 1>...};
}
template <int... Rs>
constexpr std::array<std::array<PanelBlockFn, kPanelTileCols>, sizeof...(Rs)> PanelBlockTable(
    std::integer_sequence<int, Rs...>) {
  return {PanelBlockRow<Rs + 1>(std::make_integer_sequence<int, kPanelTileCols>())...};
}
// kPanelBlocks[rows - 1][cols - 1].
constexpr auto kPanelBlocks = PanelBlockTable(std::make_integer_sequence<int, kPanelTileRows>());

// Panel regime: dequantise up to `panel_rows` rows of W into fp32 scratch, then for each
// block of kPanelTileRows rows of x run the panel's tiles over K blocks short enough that
// the rows of x stay in L1 while the panel streams from L2.
// This thread's scratch, at least `floats` long: kept between calls (one per thread, target
// and use), so the panel regime allocates only when a call needs more.
template <int kUse>
inline float* PanelScratch(size_t floats) {
  thread_local hwy::AlignedFreeUniquePtr<float[]> scratch;
  thread_local size_t capacity = 0;
  if (capacity < floats) {
    scratch = hwy::AllocateAligned<float>(floats);
    capacity = floats;
  }
  return scratch.get();
}

// Floats of x (kPanelTileRows rows of one K block) kept in L1.
constexpr int64_t kPanelXBlockFloats = 6 * 1024;

template <WeightFormat kFormat, bool kVectorScales, int64_t kGroup>
void RunPanel(const float* x, int64_t ldx, int64_t m, const WeightMatrix& w, float* y, int64_t ldy,
              int64_t n_begin, int64_t n_end) {
  const DF df;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(df));
  const int64_t n_total = n_end - n_begin, k = w.cols;
  const int64_t k_full = k / lanes * lanes;
  int64_t stride = std::max<int64_t>(lanes, (k + lanes - 1) / lanes * lanes);
  // Rows a multiple of 1 KiB apart would share few L1 sets: the tile's 3 panel rows and 8
  // rows of x then evict each other. One more step per row spreads them.
  if (stride % 256 == 0) stride += lanes;
  if (ldx % 256 == 0 && k > lanes) {
    float* xp = PanelScratch<2>(static_cast<size_t>(m * stride));
    for (int64_t i = 0; i < m; ++i) {
      std::memcpy(xp + i * stride, x + i * ldx, static_cast<size_t>(k) * sizeof(float));
    }
    x = xp;
    ldx = stride;
  }
  constexpr int64_t kCols = kPanelTileCols;
  int64_t panel_rows = matmul_internal::kPanelFloats / stride / kCols * kCols;
  panel_rows = std::clamp<int64_t>(panel_rows, kCols, 256 / kCols * kCols);
  panel_rows = std::min<int64_t>(panel_rows, (n_total + kCols - 1) / kCols * kCols);
  float* panel = PanelScratch<0>(static_cast<size_t>(panel_rows * stride));
  // K block: a whole number of steps, at least one.
  const int64_t kc = std::max<int64_t>(lanes, kPanelXBlockFloats / kPanelTileRows / lanes * lanes);
  const bool blocked = k_full > kc;
  float* acc =
      blocked ? PanelScratch<1>(static_cast<size_t>(kPanelTileRows * panel_rows * lanes)) : nullptr;
  HWY_ALIGN float x_tail[kPanelTileRows * kMaxLanes];
  for (int64_t n0 = n_begin; n0 < n_end; n0 += panel_rows) {
    const int64_t rows_here = std::min(panel_rows, n_end - n0);
    for (int64_t j = 0; j < rows_here; ++j) {
      float* dst = panel + j * stride;
      if (DequantRow(DirectSourceT<kFormat, kVectorScales, kGroup>(w, n0 + j, 1), k, dst)) {
        DequantRow(ExactSource<kFormat, kVectorScales>(w, n0 + j, 1), k, dst);
      }
    }
    for (int64_t i0 = 0; i0 < m; i0 += kPanelTileRows) {
      const int rows = static_cast<int>(std::min<int64_t>(kPanelTileRows, m - i0));
      const float* xi = x + i0 * ldx;
      const bool tail = k_full < k;
      if (tail) {
        for (int i = 0; i < rows; ++i) {
          std::memset(x_tail + i * lanes, 0, static_cast<size_t>(lanes) * sizeof(float));
          std::memcpy(x_tail + i * lanes, xi + i * ldx + k_full,
                      static_cast<size_t>(k - k_full) * sizeof(float));
        }
      }
      int64_t kb = 0;
      do {
        const int64_t ke = blocked ? std::min(kb + kc, k_full) : k_full;
        const bool first = kb == 0, last = ke == k_full;
        for (int64_t j0 = 0; j0 < rows_here; j0 += kCols) {
          const int cols = static_cast<int>(std::min<int64_t>(kCols, rows_here - j0));
          kPanelBlocks[rows - 1][cols - 1](
              xi, ldx, tail ? x_tail : nullptr, panel + j0 * stride, stride, kb, ke, first, last,
              blocked ? acc + j0 * kPanelTileRows * lanes : nullptr, y + i0 * ldy + n0 + j0, ldy);
        }
        kb = ke;
      } while (kb < k_full);
    }
  }
}

// kAuto's largest m for the direct regime. Passes of kTileRows rows decode W again from
// cache, which still beats writing and reading an fp32 panel up to m = 16 for the
// quantised formats and BF16 (1 thread, 4096×4096: FP4 m = 8 and 16 1.2-1.5x, FP8 m = 8
// 1.1-1.4x, m = 16 1.1x, BF16 m = 8 1.7x); F32 has nothing to decode and stays at 4.
constexpr int64_t DirectMaxRows(WeightFormat format) {
  return format == WeightFormat::kF32 ? kTileRows : 16;
}

template <WeightFormat kFormat, bool kVectorScales, int64_t kGroup>
void Run(const float* x, int64_t ldx, int64_t m, const WeightMatrix& w, float* y, int64_t ldy,
         MatMulPath path) {
  const bool direct =
      path == MatMulPath::kDirect || (path == MatMulPath::kAuto && m <= DirectMaxRows(kFormat));
  // Threads split the outputs into contiguous ranges of whole column tiles, each worth at
  // least ~2^18 multiply-adds (so a chunk amortises the fork/join); every output is still
  // computed by one thread in the canonical order, so y does not depend on the split.
  const int64_t tiles = (w.rows + kTileCols - 1) / kTileCols;
  const int64_t macs_per_tile = std::max<int64_t>(1, kTileCols * m * w.cols);
  const int64_t grain = std::max<int64_t>(4, (int64_t{1} << 18) / macs_per_tile);
  const float* xs = x;
  int64_t ldxs = ldx;
  if (direct && DirectSourceT<kFormat, kVectorScales, kGroup>::kPermuted) {
    xs = PermutedX(x, ldx, m, w.cols, &ldxs);
  }
  ParallelFor(tiles, grain, [&](int64_t t0, int64_t t1) HWY_ATTR {
    const int64_t n_begin = t0 * kTileCols, n_end = std::min(w.rows, t1 * kTileCols);
    if (direct) {
      RunDirect<kFormat, kVectorScales, kGroup>(x, ldx, xs, ldxs, m, w, y, ldy, n_begin, n_end);
    } else {
      RunPanel<kFormat, kVectorScales, kGroup>(x, ldx, m, w, y, ldy, n_begin, n_end);
    }
  });
}

template <WeightFormat kFormat>
void Run(const float* x, int64_t ldx, int64_t m, const WeightMatrix& w, float* y, int64_t ldy,
         MatMulPath path) {
  if constexpr (kFormat == WeightFormat::kFp8) {
    // 32-wide blocks get a compile-time scale group (the group's two steps unroll: +25% at
    // m = 1); a compile-time 128 measured no faster than the run-time loop.
    if (VectorScales(w)) {
      switch (std::min<int64_t>(w.block_cols, kChunk)) {
        case 32:
          return Run<kFormat, true, 32>(x, ldx, m, w, y, ldy, path);
        case kChunk:
          return Run<kFormat, true, kChunk>(x, ldx, m, w, y, ldy, path);
        default:
          break;
      }
    }
  }
  if (kFormat == WeightFormat::kF32 || kFormat == WeightFormat::kBF16 || VectorScales(w)) {
    Run<kFormat, true, 0>(x, ldx, m, w, y, ldy, path);
  } else {
    Run<kFormat, false, 0>(x, ldx, m, w, y, ldy, path);
  }
}

void MatMulImpl(const float* x, int64_t ldx, int64_t m, const WeightMatrix& w, float* y,
                int64_t ldy, MatMulPath path) {
  switch (w.format) {
    case WeightFormat::kF32:
      return Run<WeightFormat::kF32>(x, ldx, m, w, y, ldy, path);
    case WeightFormat::kBF16:
      return Run<WeightFormat::kBF16>(x, ldx, m, w, y, ldy, path);
    case WeightFormat::kFp8:
      return Run<WeightFormat::kFp8>(x, ldx, m, w, y, ldy, path);
    case WeightFormat::kFp4:
      return Run<WeightFormat::kFp4>(x, ldx, m, w, y, ldy, path);
  }
}

int64_t TargetImpl() { return HWY_TARGET; }

}  // namespace HWY_NAMESPACE
}  // namespace dsv4
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace dsv4 {

HWY_EXPORT(MatMulImpl);
HWY_EXPORT(TargetImpl);

void MatMul(const float* x, int64_t ldx, int64_t m, const WeightMatrix& w, float* y, int64_t ldy,
            MatMulPath path) {
  const absl::Status status = w.Validate();
  DSV4_CHECK(status.ok(), status.ToString());
  DSV4_CHECK(ldx >= w.cols && ldy >= w.rows, "ldx ", ldx, " < K ", w.cols, " or ldy ", ldy, " < N ",
             w.rows);
  if (m <= 0 || w.rows <= 0) return;
  HWY_DYNAMIC_DISPATCH(MatMulImpl)(x, ldx, m, w, y, ldy, path);
}

void MatMul(const float* x, int64_t m, const WeightMatrix& w, float* y, MatMulPath path) {
  MatMul(x, w.cols, m, w, y, w.rows, path);
}

const char* MatMulTargetName() { return hwy::TargetName(HWY_DYNAMIC_DISPATCH(TargetImpl)()); }

}  // namespace dsv4
#endif  // HWY_ONCE
