#include "engine/mpi_expert_executor.h"

#include <chrono>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/status_macros.h"

namespace dsv4 {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point since) {
  return std::chrono::duration<double>(Clock::now() - since).count();
}

}  // namespace

absl::Status MpiExpertExecutor::Run(int layer, const Tensor& x,
                                    absl::Span<const int32_t> expert_ids,
                                    absl::Span<const float> weights, int k, Tensor* out) {
  ASSIGN_OR_RETURN(DispatchHandle handle,
                   Start(0, ExchangeProtocol::kBulk, layer, x, expert_ids, weights, k));
  return Finish(handle, out);
}

absl::StatusOr<DispatchHandle> MpiExpertExecutor::Start(int micro_batch, ExchangeProtocol protocol,
                                                        int layer, const Tensor& x,
                                                        absl::Span<const int32_t> expert_ids,
                                                        absl::Span<const float> weights, int k) {
  if (k != dispatcher_->options().top_k) {
    return absl::InvalidArgumentError(
        absl::StrCat("MPI expert executor: k=", k,
                     ", the dispatcher was built for k=", dispatcher_->options().top_k));
  }
  const std::vector<int32_t> slots = placement_->AssignReplicas(layer, expert_ids, replica_offset_);
  return dispatcher_->StartDispatch(micro_batch, protocol, x, slots, weights);
}

absl::Status MpiExpertExecutor::Finish(DispatchHandle& handle, Tensor* out) {
  const Clock::time_point start = Clock::now();
  absl::Status status = dispatcher_->FinishCombine(handle, out);
  wait_seconds_ += Seconds(start);
  traffic_.dispatch += handle.traffic().dispatch;
  traffic_.combine += handle.traffic().combine;
  return status;
}

}  // namespace dsv4
