// The attention side of the distributed engine's routed experts: an ExpertExecutor that
// sends a layer's routed tokens to the expert ranks (dispatch/), waits, and combines their
// weighted outputs, so Model::Forward-style code runs unchanged on an attention rank.
//
// Each token goes to one replica of each of its experts (ExpertPlacement::AssignReplicas,
// rotated by `replica_offset` so attention ranks spread over replicas). Start/Finish run one
// micro-batch's exchange so that the caller computes another micro-batch meanwhile; Run is
// Start and Finish on micro-batch 0 with the bulk protocol, which pairs with expert ranks
// serving one micro-batch per layer (engine.micro_batches: 1, low_latency_tokens: 0).
// Expert ranks post the same exchanges, with the same protocol, in the same order per
// micro-batch (expert_rank.h).
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

  // Posts layer `layer`'s routed tokens on micro-batch `micro_batch`'s communicator with
  // `protocol` (the same on every rank) and returns at once: the dispatcher's progress
  // thread (or the next Finish) moves them, and this rank's (empty) share of the combine
  // is posted as soon as they have landed.
  absl::StatusOr<DispatchHandle> Start(int micro_batch, ExchangeProtocol protocol, int layer,
                                       const Tensor& x, absl::Span<const int32_t> expert_ids,
                                       absl::Span<const float> weights, int k);
  // Waits for the combined outputs: out [T, d] as in ExpertExecutor::Run.
  absl::Status Finish(DispatchHandle& handle, Tensor* out);

  // Seconds spent blocked in Finish, and what this rank sent, since construction.
  double wait_seconds() const { return wait_seconds_; }
  const Dispatcher& dispatcher() const { return *dispatcher_; }
  const ExchangeTraffic& traffic() const { return traffic_; }

 private:
  Dispatcher* dispatcher_;
  const ExpertPlacement* placement_;
  int64_t replica_offset_;
  double wait_seconds_ = 0;
  ExchangeTraffic traffic_;
};

}  // namespace dsv4

#endif  // DSV4_ENGINE_MPI_EXPERT_EXECUTOR_H_
