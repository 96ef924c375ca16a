#include "expert_node/in_process_executor.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/status_macros.h"

namespace dsv4 {

absl::StatusOr<std::unique_ptr<InProcessExecutor>> InProcessExecutor::Load(
    const ModelConfig& config, Checkpoint* checkpoint, bool include_mtp) {
  ASSIGN_OR_RETURN(std::unique_ptr<RoutedExperts> experts,
                   RoutedExperts::Load(
                       config, checkpoint, [](int, int) { return true; }, include_mtp));
  return std::unique_ptr<InProcessExecutor>(new InProcessExecutor(std::move(experts)));
}

absl::Status InProcessExecutor::Run(int layer, const Tensor& x,
                                    absl::Span<const int32_t> expert_ids,
                                    absl::Span<const float> weights, int k, Tensor* out) {
  if (x.rank() != 2 || !x.is_contiguous() || x.dim(1) != experts_->dim()) {
    return absl::InvalidArgumentError(absl::StrCat("expert executor: x must be a contiguous [T, ",
                                                   experts_->dim(), "] tensor, got ",
                                                   ShapeToString(x.shape())));
  }
  if (out->shape() != x.shape()) {
    *out = Tensor(x.shape());
  } else {
    std::fill(out->data(), out->data() + out->numel(), 0.0f);
  }
  return experts_->Accumulate(layer, x.data(), x.dim(0), expert_ids, weights, k,
                              /*require_all=*/true, &scratch_, out->data());
}

}  // namespace dsv4
