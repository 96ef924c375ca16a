#include "engine/expert_rank.h"

#include <chrono>
#include <optional>
#include <utility>
#include <vector>

#include "core/status_macros.h"

namespace dsv4 {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point since) {
  return std::chrono::duration<double>(Clock::now() - since).count();
}

}  // namespace

absl::Status ExpertRank::RunStep(const StepPlan& plan, StepCost* cost) {
  const int micro_batches = dispatcher_->options().micro_batches;
  const int layers = config_.num_hidden_layers;
  const int k = dispatcher_->options().top_k;
  const double local_slots = static_cast<double>(dispatcher_->local_slots().size());
  std::vector<ExchangeProtocol> protocol(micro_batches);
  for (int mb = 0; mb < micro_batches; ++mb) {
    protocol[mb] = dispatcher_->ProtocolFor(MaxTokensPerRank(plan, mb));
  }
  // A micro-batch's combine must drain before its communicator takes the next dispatch.
  std::vector<std::optional<DispatchHandle>> pending(micro_batches);
  auto drain = [&](int mb) -> absl::Status {
    if (!pending[mb]) return absl::OkStatus();
    const Clock::time_point start = Clock::now();
    absl::Status status = dispatcher_->FinishCombine(*pending[mb], &out_);
    wait_seconds_ += Seconds(start);
    traffic_.dispatch += pending[mb]->traffic().dispatch;
    traffic_.combine += pending[mb]->traffic().combine;
    pending[mb].reset();
    return status;
  };
  auto post = [&](int mb) -> absl::StatusOr<DispatchHandle> {
    RETURN_IF_ERROR(drain(mb));
    return dispatcher_->StartDispatch(mb, protocol[mb], Tensor(), {}, {});
  };

  // Exchanges in the attention ranks' order: every layer, every micro-batch. The next
  // micro-batch's dispatch is posted before this one computes, so its tokens arrive
  // meanwhile (the progress thread moves them).
  const int exchanges = layers * micro_batches;
  ASSIGN_OR_RETURN(DispatchHandle current, post(0));
  for (int i = 0; i < exchanges; ++i) {
    const int layer = i / micro_batches, mb = i % micro_batches;
    const Clock::time_point start = Clock::now();
    RETURN_IF_ERROR(dispatcher_->FinishDispatch(current, &batch_));
    wait_seconds_ += Seconds(start);
    const bool next_early = i + 1 < exchanges && micro_batches > 1;
    std::optional<DispatchHandle> next;
    if (next_early) {
      ASSIGN_OR_RETURN(next, post((i + 1) % micro_batches));
    }

    // Each record's slots as logical experts; its combine row is written in place.
    record_experts_.resize(batch_.slots.size());
    int64_t pairs = 0;
    for (size_t j = 0; j < batch_.slots.size(); ++j) {
      const int32_t slot = batch_.slots[j];
      record_experts_[j] = slot < 0 ? -1 : placement_->LogicalOf(layer, slot);
      pairs += slot >= 0;
    }
    if (batch_.records() > 0) {
      RETURN_IF_ERROR(experts_->Run(layer, {batch_.x, batch_.y, record_experts_, batch_.weights, k},
                                    /*require_all=*/true, &scratch_));
    }
    *cost += RoutedExpertCost(config_, static_cast<double>(pairs), local_slots);
    RETURN_IF_ERROR(dispatcher_->StartCombine(current));
    pending[mb] = std::move(current);
    if (i + 1 < exchanges) {
      if (next_early) {
        current = std::move(*next);
      } else {
        ASSIGN_OR_RETURN(current, post(mb));
      }
    }
  }
  for (int mb = 0; mb < micro_batches; ++mb) RETURN_IF_ERROR(drain(mb));
  return absl::OkStatus();
}

}  // namespace dsv4
