// The expert-rank step loop: for every layer of a step, and every micro-batch in order, take
// the routed tokens the attention ranks dispatched to this rank's slots, run each held expert
// as grouped GEMMs over all of its rows (RoutedExperts, the in-process math), and return the
// weighted outputs through the combine. A micro-batch's combine is finished only before that
// micro-batch's next dispatch, so this rank computes one micro-batch while the other's
// outputs travel back. The exchanges mirror MpiExpertExecutor's, in the order of
// AttentionRank::RunStep (every layer, every micro-batch, even without tokens).
#ifndef DSV4_ENGINE_EXPERT_RANK_H_
#define DSV4_ENGINE_EXPERT_RANK_H_

#include <vector>

#include "absl/status/status.h"
#include "core/cost_model.h"
#include "core/model_config.h"
#include "dispatch/dispatcher.h"
#include "engine/placement.h"
#include "expert_node/routed_experts.h"

namespace dsv4 {

class ExpertRank {
 public:
  // All pointers must outlive the ExpertRank; `experts` holds the slots of this rank.
  ExpertRank(const ModelConfig& config, const RoutedExperts* experts,
             const ExpertPlacement* placement, Dispatcher* dispatcher)
      : config_(config), experts_(experts), placement_(placement), dispatcher_(dispatcher) {}

  // Serves one step; adds the routed-expert work to `cost` (RoutedExpertCost per layer and
  // micro-batch with the rows actually received).
  absl::Status RunStep(StepCost* cost);

  // Seconds spent blocked in FinishDispatch and FinishCombine, and what this rank sent,
  // since construction.
  double wait_seconds() const { return wait_seconds_; }
  const ExchangeTraffic& traffic() const { return traffic_; }

 private:
  const ModelConfig& config_;
  const RoutedExperts* experts_;
  const ExpertPlacement* placement_;
  Dispatcher* dispatcher_;
  ExpertBatch batch_;
  Tensor y_, out_;
  std::vector<int32_t> row_experts_;
  RoutedExperts::Scratch scratch_;
  double wait_seconds_ = 0;
  ExchangeTraffic traffic_;
};

}  // namespace dsv4

#endif  // DSV4_ENGINE_EXPERT_RANK_H_
