// Highway probes of bench/limits.h: compiled once per target by foreach_target.h and
// dispatched at run time like core/matmul.cc, so they measure the vector unit MatMul uses.
#include "bench/limits.h"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <vector>

#include "core/parallel.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "bench/limits.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep

#include "hwy/aligned_allocator.h"
#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace dsv4::bench {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// Sums n floats (n a multiple of 8 vectors) with 8 independent accumulators: eight full
// vector loads in flight per iteration, as many as the widest MatMul tile issues.
float SumRange(const float* HWY_RESTRICT p, int64_t n) {
  const hn::ScalableTag<float> df;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(df));
  auto a0 = hn::Zero(df), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
  for (int64_t i = 0; i + 8 * lanes <= n; i += 8 * lanes) {
    a0 = hn::Add(a0, hn::Load(df, p + i));
    a1 = hn::Add(a1, hn::Load(df, p + i + lanes));
    a2 = hn::Add(a2, hn::Load(df, p + i + 2 * lanes));
    a3 = hn::Add(a3, hn::Load(df, p + i + 3 * lanes));
    a4 = hn::Add(a4, hn::Load(df, p + i + 4 * lanes));
    a5 = hn::Add(a5, hn::Load(df, p + i + 5 * lanes));
    a6 = hn::Add(a6, hn::Load(df, p + i + 6 * lanes));
    a7 = hn::Add(a7, hn::Load(df, p + i + 7 * lanes));
  }
  const auto sum =
      hn::Add(hn::Add(hn::Add(a0, a1), hn::Add(a2, a3)), hn::Add(hn::Add(a4, a5), hn::Add(a6, a7)));
  return hn::GetLane(hn::SumOfLanes(df, sum));
}

// 16 independent MulAdd chains (two FMA units × latency 4–5 need ≥ 10) for `iters`
// iterations; returns a value that depends on all of them.
float FmaChains(int64_t iters, float seed) {
  const hn::ScalableTag<float> df;
  const auto mul = hn::Set(df, 0.999999f), add = hn::Set(df, 1e-7f);
  auto c0 = hn::Set(df, seed), c1 = hn::Add(c0, add), c2 = hn::Add(c1, add), c3 = hn::Add(c2, add),
       c4 = hn::Add(c3, add), c5 = hn::Add(c4, add), c6 = hn::Add(c5, add), c7 = hn::Add(c6, add),
       c8 = hn::Add(c7, add), c9 = hn::Add(c8, add), c10 = hn::Add(c9, add),
       c11 = hn::Add(c10, add), c12 = hn::Add(c11, add), c13 = hn::Add(c12, add),
       c14 = hn::Add(c13, add), c15 = hn::Add(c14, add);
  for (int64_t it = 0; it < iters; ++it) {
    c0 = hn::MulAdd(c0, mul, add);
    c1 = hn::MulAdd(c1, mul, add);
    c2 = hn::MulAdd(c2, mul, add);
    c3 = hn::MulAdd(c3, mul, add);
    c4 = hn::MulAdd(c4, mul, add);
    c5 = hn::MulAdd(c5, mul, add);
    c6 = hn::MulAdd(c6, mul, add);
    c7 = hn::MulAdd(c7, mul, add);
    c8 = hn::MulAdd(c8, mul, add);
    c9 = hn::MulAdd(c9, mul, add);
    c10 = hn::MulAdd(c10, mul, add);
    c11 = hn::MulAdd(c11, mul, add);
    c12 = hn::MulAdd(c12, mul, add);
    c13 = hn::MulAdd(c13, mul, add);
    c14 = hn::MulAdd(c14, mul, add);
    c15 = hn::MulAdd(c15, mul, add);
  }
  const auto s0 =
      hn::Add(hn::Add(hn::Add(c0, c1), hn::Add(c2, c3)), hn::Add(hn::Add(c4, c5), hn::Add(c6, c7)));
  const auto s1 = hn::Add(hn::Add(hn::Add(c8, c9), hn::Add(c10, c11)),
                          hn::Add(hn::Add(c12, c13), hn::Add(c14, c15)));
  return hn::GetLane(hn::SumOfLanes(df, hn::Add(s0, s1)));
}

int64_t FloatsPerFma() { return static_cast<int64_t>(hn::Lanes(hn::ScalableTag<float>())) * 16; }
int64_t TargetImpl() { return HWY_TARGET; }

}  // namespace HWY_NAMESPACE
}  // namespace dsv4::bench
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace dsv4::bench {

HWY_EXPORT(SumRange);
HWY_EXPORT(FmaChains);
HWY_EXPORT(FloatsPerFma);
HWY_EXPORT(TargetImpl);

namespace {

double Seconds(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Runs fn(t) on each of `threads` threads (one ParallelFor chunk each) and returns the wall
// seconds of the whole region.
template <class Fn>
double TimeOnThreads(int threads, const Fn& fn) {
  const int saved = Threads();
  SetThreads(threads);
  const auto t0 = std::chrono::steady_clock::now();
  ParallelFor(threads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) fn(t);
  });
  const double s = Seconds(t0);
  SetThreads(saved);
  return s;
}

}  // namespace

Bandwidth StreamReadBandwidth(int threads, size_t bytes, int passes) {
  threads = std::max(1, threads);
  // Each thread's share is a whole number of 1 KiB pieces (8 vectors of up to 64 B each).
  const int64_t piece = 256;
  const int64_t per_thread = std::max<int64_t>(
      piece, static_cast<int64_t>(bytes / sizeof(float)) / threads / piece * piece);
  const int64_t n = per_thread * threads;
  auto buf = hwy::AllocateAligned<float>(static_cast<size_t>(n));
  // Written by the threads that read it, so every page is mapped (and first-touch places it
  // near its reader on NUMA machines).
  TimeOnThreads(threads, [&](int64_t t) {
    std::fill(buf.get() + t * per_thread, buf.get() + (t + 1) * per_thread, 1.0f);
  });
  std::vector<double> gbs;
  std::vector<float> sinks(static_cast<size_t>(threads));
  for (int p = 0; p < passes; ++p) {
    const double s = TimeOnThreads(threads, [&](int64_t t) {
      sinks[static_cast<size_t>(t)] +=
          HWY_DYNAMIC_DISPATCH(SumRange)(buf.get() + t * per_thread, per_thread);
    });
    gbs.push_back(static_cast<double>(n) * sizeof(float) / s / 1e9);
  }
  volatile float sink = sinks[0];
  (void)sink;
  std::sort(gbs.begin(), gbs.end());
  return {gbs.back(), gbs[gbs.size() / 2]};
}

double FmaPeakGflops(int threads) {
  threads = std::max(1, threads);
  constexpr int64_t kIters = int64_t{1} << 23;
  const double flops_per_iter = 2.0 * static_cast<double>(HWY_DYNAMIC_DISPATCH(FloatsPerFma)());
  std::vector<float> sinks(static_cast<size_t>(threads));
  double best = 0.0;
  for (int rep = 0; rep < 5; ++rep) {
    const double s = TimeOnThreads(threads, [&](int64_t t) {
      sinks[static_cast<size_t>(t)] +=
          HWY_DYNAMIC_DISPATCH(FmaChains)(kIters, 1.0f + static_cast<float>(rep + t));
    });
    best = std::max(best, flops_per_iter * kIters * threads / s / 1e9);
  }
  volatile float sink = sinks[0];
  (void)sink;
  return best;
}

const char* LimitsTargetName() { return hwy::TargetName(HWY_DYNAMIC_DISPATCH(TargetImpl)()); }

}  // namespace dsv4::bench
#endif  // HWY_ONCE
