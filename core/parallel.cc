#include "core/parallel.h"

#include <omp.h>
#include <sched.h>

#include <algorithm>
#include <atomic>

#include "core/check.h"

namespace dsv4 {
namespace {

std::atomic<int> g_threads{0};  // 0: not set yet, AvailableCores()

}  // namespace

int AvailableCores() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) != 0) return 1;
  return std::max(1, CPU_COUNT(&set));
}

void SetThreads(int threads) {
  DSV4_CHECK(threads >= 1, "threads = ", threads, " must be ≥ 1");
  g_threads.store(threads);
}

int Threads() {
  const int threads = g_threads.load();
  return threads > 0 ? threads : AvailableCores();
}

void ParallelFor(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  grain = std::max<int64_t>(grain, 1);
  const int64_t chunks =
      omp_in_parallel() ? 1 : std::min<int64_t>(Threads(), (n + grain - 1) / grain);
  if (chunks <= 1) {
    fn(0, n);
    return;
  }
  // Chunk c covers [c·n/chunks, (c+1)·n/chunks): contiguous, balanced, fixed by n and chunks.
  const int team = static_cast<int>(chunks);
#pragma omp parallel for schedule(static, 1) num_threads(team)
  for (int64_t c = 0; c < chunks; ++c) fn(c * n / chunks, (c + 1) * n / chunks);
}

}  // namespace dsv4
