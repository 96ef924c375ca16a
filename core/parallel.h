// The threads of one process (one rank): every heavy kernel splits its work over them.
//
// The thread count is process-wide: SetThreads sets it (engine.threads_per_rank,
// `dsv4 run --threads`); by default it is the number of cores the process may run on
// (its CPU affinity mask, which mpirun's binding narrows). Work is split into contiguous,
// static chunks, so which thread computes an item never changes an item's arithmetic:
// results are bitwise the same for every thread count as long as each item is computed by
// one thread in a fixed order (the contract of every caller).
//
// Implemented with OpenMP. A ParallelFor inside another runs on the calling thread.
#ifndef DSV4_CORE_PARALLEL_H_
#define DSV4_CORE_PARALLEL_H_

#include <cstdint>
#include <functional>

namespace dsv4 {

// Cores in this process's CPU affinity mask (at least 1).
int AvailableCores();

// threads ≥ 1; dies otherwise (a caller bug: flags and configs validate first).
void SetThreads(int threads);
int Threads();

// Calls fn(begin, end) on disjoint ranges covering [0, n), each at least `grain` items
// (except the last), on up to Threads() threads; returns when all are done. Runs inline
// when there is one range.
void ParallelFor(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

}  // namespace dsv4

#endif  // DSV4_CORE_PARALLEL_H_
