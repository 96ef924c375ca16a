#include "engine/collectives.h"

#include <algorithm>
#include <chrono>
#include <thread>

#include "absl/base/casts.h"

namespace dsv4 {
namespace {

// MPI_Wait that stops burning a core when the wait is long: a serving engine with no work
// waits here between steps (Open MPI's blocking calls busy-poll). Spins for about 200 µs,
// then polls with sleeps growing to 500 µs, which bounds the latency it adds to a step.
bool WaitPatiently(MPI_Request* request) {
  const auto start = std::chrono::steady_clock::now();
  auto sleep = std::chrono::microseconds(20);
  for (;;) {
    int done = 0;
    if (MPI_Test(request, &done, MPI_STATUS_IGNORE) != MPI_SUCCESS) return false;
    if (done) return true;
    if (std::chrono::steady_clock::now() - start > std::chrono::microseconds(200)) {
      std::this_thread::sleep_for(sleep);
      sleep = std::min(2 * sleep, std::chrono::microseconds(500));
    }
  }
}

}  // namespace

absl::Status BroadcastPlan(StepPlan* plan, int root, MPI_Comm comm) {
  // Flattened as int64: step, stop, report_load, rebalance, releases, entries, the released
  // ids, then per entry sequence, rank, micro-batch, sampling (sample, temperature and top_p
  // as float bits, top_k, seed, draw), token count, tokens.
  std::vector<int64_t> wire = {plan->step,
                               plan->stop ? 1 : 0,
                               plan->report_load ? 1 : 0,
                               plan->rebalance ? 1 : 0,
                               static_cast<int64_t>(plan->release.size()),
                               static_cast<int64_t>(plan->entries.size())};
  wire.insert(wire.end(), plan->release.begin(), plan->release.end());
  for (const PlanEntry& e : plan->entries) {
    const SamplingParams& p = e.sampling;
    wire.insert(wire.end(),
                {e.sequence, e.rank, e.micro_batch, e.sample ? 1 : 0,
                 absl::bit_cast<int32_t>(p.temperature), absl::bit_cast<int32_t>(p.top_p), p.top_k,
                 absl::bit_cast<int64_t>(p.seed), absl::bit_cast<int64_t>(e.draw),
                 static_cast<int64_t>(e.tokens.size())});
    wire.insert(wire.end(), e.tokens.begin(), e.tokens.end());
  }
  int64_t size = static_cast<int64_t>(wire.size());
  MPI_Request request;
  if (MPI_Ibcast(&size, 1, MPI_INT64_T, root, comm, &request) != MPI_SUCCESS ||
      !WaitPatiently(&request)) {
    return absl::InternalError("step plan: MPI_Ibcast of the size failed");
  }
  wire.resize(size);
  if (MPI_Bcast(wire.data(), static_cast<int>(size), MPI_INT64_T, root, comm) != MPI_SUCCESS) {
    return absl::InternalError("step plan: MPI_Bcast of the plan failed");
  }
  size_t i = 0;
  plan->step = wire[i++];
  plan->stop = wire[i++] != 0;
  plan->report_load = wire[i++] != 0;
  plan->rebalance = wire[i++] != 0;
  plan->release.resize(wire[i++]);
  plan->entries.resize(wire[i++]);
  for (int32_t& sequence : plan->release) sequence = static_cast<int32_t>(wire[i++]);
  for (PlanEntry& e : plan->entries) {
    e.sequence = static_cast<int32_t>(wire[i++]);
    e.rank = static_cast<int32_t>(wire[i++]);
    e.micro_batch = static_cast<int32_t>(wire[i++]);
    e.sample = wire[i++] != 0;
    e.sampling.temperature = absl::bit_cast<float>(static_cast<int32_t>(wire[i++]));
    e.sampling.top_p = absl::bit_cast<float>(static_cast<int32_t>(wire[i++]));
    e.sampling.top_k = static_cast<int>(wire[i++]);
    e.sampling.seed = absl::bit_cast<uint64_t>(wire[i++]);
    e.draw = absl::bit_cast<uint64_t>(wire[i++]);
    const int64_t n = wire[i++];
    e.tokens.assign(wire.begin() + i, wire.begin() + i + n);
    i += n;
  }
  return absl::OkStatus();
}

std::vector<SampledToken> GatherSampled(const std::vector<SampledToken>& local, int root,
                                        MPI_Comm comm) {
  static_assert(sizeof(SampledToken) == 2 * sizeof(int32_t));
  const int count = static_cast<int>(local.size()) * 2;
  const std::vector<int> counts = GatherToRoot(count, root, comm);
  std::vector<int> displs(counts.size(), 0);
  for (size_t r = 1; r < counts.size(); ++r) displs[r] = displs[r - 1] + counts[r - 1];
  std::vector<SampledToken> all(counts.empty() ? 0 : (displs.back() + counts.back()) / 2);
  MPI_Gatherv(local.data(), count, MPI_INT32_T, all.data(), counts.data(), displs.data(),
              MPI_INT32_T, root, comm);
  return all;
}

}  // namespace dsv4
