// The single-process ExpertExecutor: holds every routed expert and runs them locally as
// grouped GEMMs. Run reuses scratch buffers, so one executor serves one thread at a time.
#ifndef DSV4_EXPERT_NODE_IN_PROCESS_EXECUTOR_H_
#define DSV4_EXPERT_NODE_IN_PROCESS_EXECUTOR_H_

#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "core/model_config.h"
#include "core/safetensors.h"
#include "expert_node/expert_executor.h"
#include "expert_node/routed_experts.h"

namespace dsv4 {

class InProcessExecutor : public ExpertExecutor {
 public:
  // Loads all routed experts of the main layers (and of the MTP blocks if `include_mtp`).
  static absl::StatusOr<std::unique_ptr<InProcessExecutor>> Load(const ModelConfig& config,
                                                                 Checkpoint* checkpoint,
                                                                 bool include_mtp);

  absl::Status Run(int layer, const Tensor& x, absl::Span<const int32_t> expert_ids,
                   absl::Span<const float> weights, int k, Tensor* out) override;

  const WeightBytes& weight_bytes() const { return experts_->weight_bytes(); }

 private:
  explicit InProcessExecutor(std::unique_ptr<RoutedExperts> experts)
      : experts_(std::move(experts)) {}

  std::unique_ptr<RoutedExperts> experts_;
  RoutedExperts::Scratch scratch_;
  std::vector<const float*> x_rows_;
  std::vector<float*> out_rows_;
};

}  // namespace dsv4

#endif  // DSV4_EXPERT_NODE_IN_PROCESS_EXECUTOR_H_
