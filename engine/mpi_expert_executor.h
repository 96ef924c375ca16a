// The attention side of the distributed engine's routed experts: an ExpertExecutor that
// sends a layer's routed tokens to the expert ranks (dispatch/), waits, and combines their
// weighted outputs, so Model::Forward-style code runs unchanged on an attention rank.
//
// Each token goes to one replica of each of its experts (ExpertPlacement::AssignReplicas,
// rotated by `replica_offset` so attention ranks spread over replicas). Start/Finish run one
// micro-batch's exchange so that the caller computes another micro-batch meanwhile; Run is
// Start and Finish on micro-batch 0, which pairs with expert ranks serving one micro-batch
// per layer (engine.micro_batches: 1). Expert ranks must post the same
// non-blocking exchanges in the same order per micro-batch (expert_rank.h): MPI does not
// match blocking collectives with non-blocking ones, so both sides always use the latter.
#ifndef DSV4_ENGINE_MPI_EXPERT_EXECUTOR_H_
#define DSV4_ENGINE_MPI_EXPERT_EXECUTOR_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "core/tensor.h"
#include "dispatch/dispatcher.h"
#include "engine/placement.h"
#include "expert_node/expert_executor.h"

namespace dsv4 {

class MpiExpertExecutor : public ExpertExecutor {
 public:
  // `dispatcher` and `placement` must outlive the executor.
  MpiExpertExecutor(Dispatcher* dispatcher, const ExpertPlacement* placement,
                    int64_t replica_offset)
      : dispatcher_(dispatcher), placement_(placement), replica_offset_(replica_offset) {}

  absl::Status Run(int layer, const Tensor& x, absl::Span<const int32_t> expert_ids,
                   absl::Span<const float> weights, int k, Tensor* out) override;

  // Dispatches layer `layer`'s routed tokens on micro-batch `micro_batch`'s communicator and
  // posts this rank's (empty) share of the combine. Blocks until the expert ranks have taken
  // the tokens: in the ping-pong they are then done with the other micro-batch, whose
  // outputs this rank needs next anyway.
  absl::StatusOr<DispatchHandle> Start(int micro_batch, int layer, const Tensor& x,
                                       absl::Span<const int32_t> expert_ids,
                                       absl::Span<const float> weights, int k);
  // Waits for the combined outputs: out [T, d] as in ExpertExecutor::Run.
  absl::Status Finish(DispatchHandle& handle, Tensor* out);

  // Seconds spent blocked in Start and Finish, and what this rank sent, since construction.
  double wait_seconds() const { return wait_seconds_; }
  const ExchangeTraffic& traffic() const { return traffic_; }

 private:
  Dispatcher* dispatcher_;
  const ExpertPlacement* placement_;
  int64_t replica_offset_;
  double wait_seconds_ = 0;
  ExchangeTraffic traffic_;
  ExpertBatch empty_batch_;  // an attention rank holds no slots
};

}  // namespace dsv4

#endif  // DSV4_ENGINE_MPI_EXPERT_EXECUTOR_H_
