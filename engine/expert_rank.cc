#include "engine/expert_rank.h"

#include <algorithm>
#include <chrono>
#include <optional>
#include <vector>

#include "core/status_macros.h"

namespace dsv4 {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point since) {
  return std::chrono::duration<double>(Clock::now() - since).count();
}

}  // namespace

absl::Status ExpertRank::RunStep(StepCost* cost) {
  const int micro_batches = dispatcher_->options().micro_batches;
  const int64_t d = config_.hidden_size;
  const double local_slots = static_cast<double>(dispatcher_->local_slots().size());
  std::vector<std::optional<DispatchHandle>> pending(micro_batches);
  for (int layer = 0; layer < config_.num_hidden_layers; ++layer) {
    for (int mb = 0; mb < micro_batches; ++mb) {
      if (pending[mb]) {
        const Clock::time_point start = Clock::now();
        RETURN_IF_ERROR(dispatcher_->FinishCombine(*pending[mb], &out_));
        wait_seconds_ += Seconds(start);
        traffic_.dispatch += pending[mb]->traffic().dispatch;
        traffic_.combine += pending[mb]->traffic().combine;
        pending[mb].reset();
      }
      ASSIGN_OR_RETURN(DispatchHandle handle, dispatcher_->StartDispatch(mb, Tensor(), {}, {}));
      const Clock::time_point start = Clock::now();
      RETURN_IF_ERROR(dispatcher_->FinishDispatch(handle, &batch_));
      wait_seconds_ += Seconds(start);
      // Every row is one (token, slot) pair: run it as a token with k = 1 through the same
      // grouped forward as the in-process executor (weight applied before w2).
      const int64_t rows = batch_.rows();
      row_experts_.resize(rows);
      for (size_t i = 0; i < batch_.slots.size(); ++i) {
        std::fill(row_experts_.begin() + batch_.offsets[i],
                  row_experts_.begin() + batch_.offsets[i + 1],
                  placement_->LogicalOf(layer, batch_.slots[i]));
      }
      if (y_.shape() != Shape{rows, d}) {
        y_ = Tensor({rows, d});
      } else {
        std::fill(y_.data(), y_.data() + y_.numel(), 0.0f);
      }
      if (rows > 0) {
        RETURN_IF_ERROR(experts_->Accumulate(layer, batch_.x.data(), rows, row_experts_,
                                             batch_.weights, 1, /*require_all=*/true, &scratch_,
                                             y_.data()));
      }
      *cost += RoutedExpertCost(config_, static_cast<double>(rows), local_slots);
      RETURN_IF_ERROR(dispatcher_->StartCombine(handle, y_));
      pending[mb] = std::move(handle);
    }
  }
  for (std::optional<DispatchHandle>& handle : pending) {
    if (!handle) continue;
    const Clock::time_point start = Clock::now();
    RETURN_IF_ERROR(dispatcher_->FinishCombine(*handle, &out_));
    wait_seconds_ += Seconds(start);
    traffic_.dispatch += handle->traffic().dispatch;
    traffic_.combine += handle->traffic().combine;
  }
  return absl::OkStatus();
}

}  // namespace dsv4
