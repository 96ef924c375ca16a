#include "engine/step_plan.h"

#include <algorithm>
#include <chrono>
#include <thread>
#include <utility>

#include "absl/base/casts.h"
#include "absl/strings/str_cat.h"

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

OneShotPlanner::OneShotPlanner(std::vector<std::vector<int32_t>> prompts, int64_t decode_from,
                               int64_t chunk, int attention_ranks, int micro_batches)
    : prompts_(std::move(prompts)),
      done_(prompts_.size(), 0),
      decode_from_(decode_from),
      chunk_(std::max<int64_t>(chunk, 1)),
      attention_ranks_(attention_ranks),
      micro_batches_(micro_batches) {}

StepPlan OneShotPlanner::Next() {
  StepPlan plan;
  plan.step = step_++;
  for (size_t i = 0; i < prompts_.size(); ++i) {
    const int64_t length = static_cast<int64_t>(prompts_[i].size());
    if (done_[i] >= length) continue;
    const int64_t prefill = decode_from_ > 0 ? std::min(decode_from_, length) : length;
    const int64_t n = done_[i] < prefill ? std::min(chunk_, prefill - done_[i]) : 1;
    PlanEntry e;
    e.sequence = static_cast<int32_t>(i);
    e.rank = static_cast<int32_t>(i % attention_ranks_);
    e.micro_batch = static_cast<int32_t>((i / attention_ranks_) % micro_batches_);
    e.tokens.assign(prompts_[i].begin() + done_[i], prompts_[i].begin() + done_[i] + n);
    done_[i] += n;
    plan.entries.push_back(std::move(e));
  }
  plan.stop = plan.entries.empty();
  return plan;
}

}  // namespace dsv4
