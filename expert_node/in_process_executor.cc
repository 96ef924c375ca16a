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
  if (out->shape() != x.shape()) *out = Tensor(x.shape());
  const int64_t tokens = x.dim(0), d = x.dim(1);
  x_rows_.resize(tokens);
  out_rows_.resize(tokens);
  for (int64_t t = 0; t < tokens; ++t) {
    x_rows_[t] = x.data() + t * d;
    out_rows_[t] = out->data() + t * d;
  }
  return experts_->Run(layer, {x_rows_, out_rows_, expert_ids, weights, k},
                       /*require_all=*/true, &scratch_);
}

}  // namespace dsv4
