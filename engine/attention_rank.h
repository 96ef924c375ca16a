// The attention-rank step loop. Each step this rank runs the plan's entries that name it:
// its sequences (data parallel over attention ranks) split into micro-batches, and the
// micro-batches go through the layers ping-pong: while one micro-batch's routed tokens are
// at the expert ranks (MpiExpertExecutor::Start … Finish), this rank computes the other's
// attention. Per layer and micro-batch, in order:
//
//   Finish(mb, layer) → MoeFinish(layer) → AttentionStage(layer + 1) → Start(mb, layer + 1)
//
// so every micro-batch takes one exchange per layer, in the same order on every rank, even
// with no tokens (zero counts). Sequence states live here from admission (the first entry
// naming a sequence) until a plan releases them. One-shot runs keep the logits of every
// row per sequence; serving runs sample the entries that ask for it and keep nothing.
#ifndef DSV4_ENGINE_ATTENTION_RANK_H_
#define DSV4_ENGINE_ATTENTION_RANK_H_

#include <cstdint>
#include <map>
#include <vector>

#include "absl/status/status.h"
#include "attention_node/model.h"
#include "core/cost_model.h"
#include "engine/mpi_expert_executor.h"
#include "engine/step_plan.h"

namespace dsv4 {

class AttentionRank {
 public:
  // `model` and `executor` must outlive the AttentionRank. `rank` is this rank's index among
  // the attention ranks; `geometry` says where the expert ranks sit (for modelled links).
  // `keep_logits`: keep every logit row (one-shot runs); serving runs only sample.
  AttentionRank(const Model* model, MpiExpertExecutor* executor, int rank, int micro_batches,
                const ExpertGeometry& geometry, bool keep_logits);

  // Frees the plan's released sequences, then runs this rank's part of `plan`: adds its
  // modelled work to `cost` (attention-side layer and edge costs per micro-batch, and the
  // all-to-all each micro-batch's tokens cause) and appends the tokens sampled for entries
  // with `sample` set to `sampled`.
  absl::Status RunStep(const StepPlan& plan, StepCost* cost, std::vector<SampledToken>* sampled);

  // Every logit row computed so far, [rows, vocab] row-major, by sequence id (keep_logits).
  const std::map<int32_t, std::vector<float>>& logits() const { return logits_; }
  // Tokens routed to each expert, [layers · routed experts], since the last call.
  std::vector<int64_t> TakeExpertLoad();
  int sequences() const { return static_cast<int>(states_.size()); }

 private:
  const Model* model_;
  MpiExpertExecutor* executor_;
  int rank_;
  int micro_batches_;
  ExpertGeometry geometry_;
  bool keep_logits_;
  std::map<int32_t, SequenceState> states_;  // node-based: StepInput pointers stay valid
  std::map<int32_t, std::vector<float>> logits_;
  std::vector<int64_t> expert_load_;
};

}  // namespace dsv4

#endif  // DSV4_ENGINE_ATTENTION_RANK_H_
