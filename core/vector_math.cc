// Highway kernels for core/vector_math.h, compiled per target and dispatched at run time.
#include "core/vector_math.h"

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

float Dot(const float* a, const float* b, int64_t n) {
  return HWY_DYNAMIC_DISPATCH(DotImpl)(a, b, n);
}

void MulAddTo(float alpha, const float* x, float* y, int64_t n) {
  HWY_DYNAMIC_DISPATCH(MulAddToImpl)(alpha, x, y, n);
}

}  // namespace dsv4
#endif  // HWY_ONCE
