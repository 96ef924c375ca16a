// The engine's step plan: what every rank does in one lock-step step. The leader (attention
// rank 0) decides it and broadcasts it to the whole world; attention ranks run their
// entries, expert ranks serve every layer's exchanges whatever the plan holds (a rank with
// no tokens still takes part, with zero counts). The plan carries the new tokens, so a
// leader fed by the coordinator's control stream (serving mode) only replaces the planner.
// Plain data: engine/collectives.h moves it between ranks.
#ifndef DSV4_ENGINE_STEP_PLAN_H_
#define DSV4_ENGINE_STEP_PLAN_H_

#include <cstdint>
#include <vector>

#include "core/sampling.h"

namespace dsv4 {

// One sequence's part of a step. A sequence is admitted (its state created) by the first
// entry naming it; `tokens` continue it at its current position.
struct PlanEntry {
  int32_t sequence = 0;     // engine-wide sequence id
  int32_t rank = 0;         // attention rank holding its state
  int32_t micro_batch = 0;  // in [0, micro_batches)
  std::vector<int32_t> tokens;
  // Serving mode: after the step the holding rank samples the next token from the last
  // row's logits, as draw `draw` of the request (core/sampling.h).
  bool sample = false;
  SamplingParams sampling;
  uint64_t draw = 0;
};

struct StepPlan {
  int64_t step = 0;
  bool stop = false;  // no more steps: every rank leaves its loop
  std::vector<PlanEntry> entries;
  std::vector<int32_t> release;  // sequences whose state is freed before the step runs
  bool report_load = false;      // after the step, reduce expert load to the leader
  // Before the step, every rank takes a new expert placement: the leader broadcasts the
  // load it is computed from (see the engine's ApplyRebalance).
  bool rebalance = false;
};

// The most tokens any attention rank runs in micro-batch `micro_batch` of `plan`: a bound
// every rank knows (the plan is broadcast), which picks the exchange protocol.
int64_t MaxTokensPerRank(const StepPlan& plan, int micro_batch);

// A token sampled for `sequence` by the attention rank holding it (serving mode).
struct SampledToken {
  int32_t sequence = 0;
  int32_t token = 0;
};

// The one-shot planner: fixed prompts, each prefilled (the first `decode_from` tokens, or
// all when 0, in chunks of at most `chunk` tokens), then decoded one token per step.
// Sequence i lives on attention rank i mod A, in micro-batch (i / A) mod M, so a rank's
// sequences alternate between micro-batches.
class OneShotPlanner {
 public:
  OneShotPlanner(std::vector<std::vector<int32_t>> prompts, int64_t decode_from, int64_t chunk,
                 int attention_ranks, int micro_batches);
  StepPlan Next();

 private:
  std::vector<std::vector<int32_t>> prompts_;
  std::vector<int64_t> done_;  // tokens of each prompt already planned
  int64_t decode_from_, chunk_;
  int attention_ranks_, micro_batches_;
  int64_t step_ = 0;
};

}  // namespace dsv4

#endif  // DSV4_ENGINE_STEP_PLAN_H_
