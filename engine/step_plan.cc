#include "engine/step_plan.h"

#include <algorithm>
#include <map>
#include <utility>

namespace dsv4 {

OneShotPlanner::OneShotPlanner(std::vector<std::vector<int32_t>> prompts, int64_t decode_from,
                               int64_t chunk, int attention_ranks, int micro_batches)
    : prompts_(std::move(prompts)),
      done_(prompts_.size(), 0),
      decode_from_(decode_from),
      chunk_(std::max<int64_t>(chunk, 1)),
      attention_ranks_(attention_ranks),
      micro_batches_(micro_batches) {}

int64_t MaxTokensPerRank(const StepPlan& plan, int micro_batch) {
  std::map<int32_t, int64_t> tokens;  // by rank
  int64_t most = 0;
  for (const PlanEntry& e : plan.entries) {
    if (e.micro_batch != micro_batch) continue;
    most = std::max(most, tokens[e.rank] += static_cast<int64_t>(e.tokens.size()));
  }
  return most;
}

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
