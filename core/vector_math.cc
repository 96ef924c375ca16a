// Highway kernels for core/vector_math.h, compiled per target and dispatched at run time.
#include "core/vector_math.h"

#include <algorithm>
#include <cstring>

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "core/vector_math.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep

#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace dsv4 {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

float DotImpl(const float* a, const float* b, int64_t n) {
  const hn::ScalableTag<float> df;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(df));
  auto acc = hn::Zero(df);
  int64_t k = 0;
  for (; k + lanes <= n; k += lanes)
    acc = hn::MulAdd(hn::LoadU(df, a + k), hn::LoadU(df, b + k), acc);
  if (k < n) {
    HWY_ALIGN float ta[HWY_MAX_BYTES / sizeof(float)] = {};
    HWY_ALIGN float tb[HWY_MAX_BYTES / sizeof(float)] = {};
    std::memcpy(ta, a + k, static_cast<size_t>(n - k) * sizeof(float));
    std::memcpy(tb, b + k, static_cast<size_t>(n - k) * sizeof(float));
    acc = hn::MulAdd(hn::Load(df, ta), hn::Load(df, tb), acc);
  }
  return hn::GetLane(hn::SumOfLanes(df, acc));
}

void MulAddToImpl(float alpha, const float* x, float* y, int64_t n);

// One row's step: acc = MulAdd(q, row, acc) over full vectors, then the padded tail, as
// DotImpl does (so every row's bits equal Dot's).
void DotsImpl(const float* q, const float* const* rows, int64_t count, int64_t n, float* out) {
  const hn::ScalableTag<float> df;
  using V = hn::Vec<decltype(df)>;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(df));
  const int64_t full = n / lanes * lanes;
  HWY_ALIGN float tq[HWY_MAX_BYTES / sizeof(float)] = {};
  std::memcpy(tq, q + full, static_cast<size_t>(n - full) * sizeof(float));
  auto tail = [&](const float* row, V acc) HWY_ATTR {
    if (full == n) return acc;
    HWY_ALIGN float tr[HWY_MAX_BYTES / sizeof(float)] = {};
    std::memcpy(tr, row + full, static_cast<size_t>(n - full) * sizeof(float));
    return hn::MulAdd(hn::Load(df, tq), hn::Load(df, tr), acc);
  };
  int64_t j = 0;
  for (; j + 4 <= count; j += 4) {  // four independent chains hide the FMA latency
    const float *r0 = rows[j], *r1 = rows[j + 1], *r2 = rows[j + 2], *r3 = rows[j + 3];
    V a0 = hn::Zero(df), a1 = a0, a2 = a0, a3 = a0;
    for (int64_t k = 0; k < full; k += lanes) {
      const V qv = hn::LoadU(df, q + k);
      a0 = hn::MulAdd(qv, hn::LoadU(df, r0 + k), a0);
      a1 = hn::MulAdd(qv, hn::LoadU(df, r1 + k), a1);
      a2 = hn::MulAdd(qv, hn::LoadU(df, r2 + k), a2);
      a3 = hn::MulAdd(qv, hn::LoadU(df, r3 + k), a3);
    }
    out[j] = hn::GetLane(hn::SumOfLanes(df, tail(r0, a0)));
    out[j + 1] = hn::GetLane(hn::SumOfLanes(df, tail(r1, a1)));
    out[j + 2] = hn::GetLane(hn::SumOfLanes(df, tail(r2, a2)));
    out[j + 3] = hn::GetLane(hn::SumOfLanes(df, tail(r3, a3)));
  }
  for (; j < count; ++j) out[j] = DotImpl(q, rows[j], n);
}

// Blocks of four vectors of out stay in registers while every row adds into them.
void WeightedSumImpl(const float* weights, const float* const* rows, int64_t count, int64_t n,
                     float* out) {
  const hn::ScalableTag<float> df;
  using V = hn::Vec<decltype(df)>;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(df));
  int64_t k = 0;
  for (; k + 4 * lanes <= n; k += 4 * lanes) {
    V o0 = hn::Zero(df), o1 = o0, o2 = o0, o3 = o0;
    for (int64_t j = 0; j < count; ++j) {
      const V w = hn::Set(df, weights[j]);
      const float* r = rows[j] + k;
      o0 = hn::MulAdd(w, hn::LoadU(df, r), o0);
      o1 = hn::MulAdd(w, hn::LoadU(df, r + lanes), o1);
      o2 = hn::MulAdd(w, hn::LoadU(df, r + 2 * lanes), o2);
      o3 = hn::MulAdd(w, hn::LoadU(df, r + 3 * lanes), o3);
    }
    hn::StoreU(o0, df, out + k);
    hn::StoreU(o1, df, out + k + lanes);
    hn::StoreU(o2, df, out + k + 2 * lanes);
    hn::StoreU(o3, df, out + k + 3 * lanes);
  }
  if (k < n) {  // the rest element-wise in the same order
    std::fill(out + k, out + n, 0.0f);
    for (int64_t j = 0; j < count; ++j) MulAddToImpl(weights[j], rows[j] + k, out + k, n - k);
  }
}

void MulAddToImpl(float alpha, const float* x, float* y, int64_t n) {
  const hn::ScalableTag<float> df;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(df));
  const auto a = hn::Set(df, alpha);
  int64_t k = 0;
  for (; k + lanes <= n; k += lanes) {
    hn::StoreU(hn::MulAdd(a, hn::LoadU(df, x + k), hn::LoadU(df, y + k)), df, y + k);
  }
  if (k < n) {
    HWY_ALIGN float tx[HWY_MAX_BYTES / sizeof(float)] = {};
    HWY_ALIGN float ty[HWY_MAX_BYTES / sizeof(float)] = {};
    const size_t bytes = static_cast<size_t>(n - k) * sizeof(float);
    std::memcpy(tx, x + k, bytes);
    std::memcpy(ty, y + k, bytes);
    hn::Store(hn::MulAdd(a, hn::Load(df, tx), hn::Load(df, ty)), df, ty);
    std::memcpy(y + k, ty, bytes);
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace dsv4
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace dsv4 {

HWY_EXPORT(DotImpl);
HWY_EXPORT(MulAddToImpl);
HWY_EXPORT(DotsImpl);
HWY_EXPORT(WeightedSumImpl);

float Dot(const float* a, const float* b, int64_t n) {
  return HWY_DYNAMIC_DISPATCH(DotImpl)(a, b, n);
}

void MulAddTo(float alpha, const float* x, float* y, int64_t n) {
  HWY_DYNAMIC_DISPATCH(MulAddToImpl)(alpha, x, y, n);
}

void Dots(const float* q, const float* const* rows, int64_t count, int64_t n, float* out) {
  HWY_DYNAMIC_DISPATCH(DotsImpl)(q, rows, count, n, out);
}

void WeightedSum(const float* weights, const float* const* rows, int64_t count, int64_t n,
                 float* out) {
  HWY_DYNAMIC_DISPATCH(WeightedSumImpl)(weights, rows, count, n, out);
}

}  // namespace dsv4
#endif  // HWY_ONCE
