// This machine's limits, measured in the same run as a benchmark so results can be read as
// fractions of them (bench/limits.cc):
// - streaming-read bandwidth: Highway vector loads summed into independent accumulators
//   (the way the MatMul kernels read weights) over a buffer far larger than the LLC;
// - fp32 FMA peak of the dispatched Highway target (the widest vector unit, not the static
//   baseline): independent MulAdd chains in registers.
// Both run on 1 thread or on `threads` threads (dsv4::ParallelFor, core/parallel.h).
#ifndef DSV4_BENCH_LIMITS_H_
#define DSV4_BENCH_LIMITS_H_

#include <cstddef>
#include <cstdint>

namespace dsv4::bench {

// GB/s (10^9 B/s): the best and the median of the passes.
struct Bandwidth {
  double best_gbs = 0.0;
  double median_gbs = 0.0;
};

// Default probe buffer: 1 GiB, twice the largest LLC seen here (512 MiB).
constexpr size_t kProbeBytes = size_t{1} << 30;

// Streaming read of `bytes` on `threads` threads (each a contiguous share), `passes` times.
Bandwidth StreamReadBandwidth(int threads, size_t bytes = kProbeBytes, int passes = 5);

// fp32 GFLOP/s (2 per lane per MulAdd) of the dispatched target on `threads` threads: the
// best of a few repetitions.
double FmaPeakGflops(int threads);

// The Highway target the probes dispatch to (the same rule as MatMul's), e.g. "AVX3_DL".
const char* LimitsTargetName();

}  // namespace dsv4::bench

#endif  // DSV4_BENCH_LIMITS_H_
