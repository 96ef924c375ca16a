// The serving engine's scheduler, run by the leader: it turns the coordinator's admissions
// and cancellations (proto/engine.proto) into one StepPlan per step, with continuous
// batching and chunked prefill, and turns the sampled tokens back into TokenEvents.
//
// Per step:
//   - Waiting requests are placed on the attention rank with the fewest KV tokens reserved
//     (prompt + max_tokens) that has a free sequence slot and room in its KV budget, ties to
//     the rank running fewest sequences; each goes to that rank's emptier micro-batch.
//   - Every decoding sequence feeds its last sampled token and samples the next one.
//   - Prefilling sequences (prompt, then a replay's resume tokens) share a per-rank budget
//     of `chunk` tokens per step, oldest first; the chunk that completes a prefill samples.
// A request ends on a stop token id (STOP, included), the model's EOS unless ignore_eos
// (EOS, included), max_tokens or max_seq_len (LENGTH), or a Cancel (CANCELLED); its
// sequence is released (its KV state freed) by the next plan. Sampling draw i of a request is its
// i-th generated token counting resume tokens, so a replay continues the stream it resumes.
//
// Not thread-safe: the leader's loop owns it.
#ifndef DSV4_ENGINE_SERVING_PLANNER_H_
#define DSV4_ENGINE_SERVING_PLANNER_H_

#include <cstdint>
#include <deque>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "core/cluster_config.h"
#include "core/sampling.h"
#include "engine/step_plan.h"
#include "proto/engine.pb.h"

namespace dsv4 {

struct ServingLimits {
  // The cluster YAML's engine section: sequence slots, max_seq_len, KV budget per attention
  // rank, prefill chunk (tokens per rank per step) and micro-batches.
  EngineSpec engine;
  int attention_ranks = 1;
  int eos_token_id = -1;  // < 0: none
};

class ServingPlanner {
 public:
  explicit ServingPlanner(const ServingLimits& limits);

  // Queues a request. A request that can never run here (duplicate id, empty prompt, longer
  // than max_seq_len, more KV than a rank's budget) finishes at once with an ERROR event.
  void Admit(const engine::v1::Admit& admit);
  // Ends a request (CANCELLED event); unknown ids are ignored.
  void Cancel(const std::string& request_id);

  // The next step. Empty (no entries, maybe releases) when nothing can run.
  StepPlan Next();
  // The tokens sampled by the plan Next returned last.
  void OnSampled(absl::Span<const SampledToken> sampled);
  // Events produced since the last call: tokens, finishes and errors, in order.
  std::vector<engine::v1::TokenEvent> TakeEvents();

  bool idle() const { return running_.empty() && waiting_.empty() && release_.empty(); }
  int running() const { return static_cast<int>(running_.size()); }
  int waiting() const { return static_cast<int>(waiting_.size()); }
  int64_t kv_used_tokens() const;          // tokens in the KV state of running sequences
  int64_t steps() const { return step_; }  // plans made so far
  int64_t kv_budget_tokens() const {
    return int64_t{limits_.engine.kv_budget_tokens} * limits_.attention_ranks;
  }

 private:
  struct Request {
    engine::v1::Admit admit;
    std::vector<int32_t> context;  // prompt, resume tokens, then tokens sampled here
    int64_t prefill = 0;           // prompt + resume tokens
    int64_t fed = 0;               // context tokens in the KV state
    uint64_t generated = 0;        // resume tokens + tokens sampled here
    int64_t reserved = 0;          // KV tokens reserved on its rank
    int32_t sequence = -1;
    int rank = -1;
    int micro_batch = 0;
  };

  bool Place(Request* request);
  void Finish(int32_t sequence, engine::v1::FinishReason reason, const std::string& error = "");
  void Event(const std::string& id, std::vector<int32_t> tokens,
             engine::v1::FinishReason reason = engine::v1::FINISH_REASON_UNSPECIFIED,
             const std::string& error = "");

  ServingLimits limits_;
  std::deque<Request> waiting_;
  std::map<int32_t, Request> running_;  // by sequence id, i.e. admission order
  std::vector<int32_t> release_;
  std::vector<int64_t> rank_reserved_;
  std::vector<int> rank_sequences_;
  std::vector<std::vector<int>> mb_sequences_;  // [rank][micro-batch]
  int32_t next_sequence_ = 0;
  int64_t step_ = 0;
  std::vector<engine::v1::TokenEvent> events_;
};

}  // namespace dsv4

#endif  // DSV4_ENGINE_SERVING_PLANNER_H_
