// The engine's collectives over its MPI world, outside the all-to-all of the data plane
// (dispatch/): the leader broadcasts each step's plan and gathers what the ranks produced.
// Every function here is collective: all ranks of `comm` call it, in the same order.
#ifndef DSV4_ENGINE_COLLECTIVES_H_
#define DSV4_ENGINE_COLLECTIVES_H_

#include <mpi.h>

#include <type_traits>
#include <vector>

#include "absl/status/status.h"
#include "engine/step_plan.h"

namespace dsv4 {

// `root`'s plan replaces everyone else's. Ranks waiting for a plan (an idle serving engine)
// poll with growing sleeps instead of spinning.
absl::Status BroadcastPlan(StepPlan* plan, int root, MPI_Comm comm);

// `root` gets every rank's `local` tokens, in rank order; the other ranks get nothing.
std::vector<SampledToken> GatherSampled(const std::vector<SampledToken>& local, int root,
                                        MPI_Comm comm);

// `root` gets one `value` per rank, in rank order; the other ranks get an empty vector.
template <typename T>
std::vector<T> GatherToRoot(const T& value, int root, MPI_Comm comm) {
  static_assert(std::is_trivially_copyable_v<T>, "gathered as bytes");
  int rank = 0, size = 0;
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &size);
  std::vector<T> all(rank == root ? size : 0);
  MPI_Gather(&value, sizeof(T), MPI_BYTE, all.data(), sizeof(T), MPI_BYTE, root, comm);
  return all;
}

}  // namespace dsv4

#endif  // DSV4_ENGINE_COLLECTIVES_H_
