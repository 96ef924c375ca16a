#include "expert_node/routed_experts.h"

#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/status_macros.h"
#include "core/weight_loader.h"

namespace dsv4 {

absl::StatusOr<std::unique_ptr<RoutedExperts>> RoutedExperts::Load(const ModelConfig& config,
                                                                   Checkpoint* checkpoint,
                                                                   const Selector& select,
                                                                   bool include_mtp) {
  std::unique_ptr<RoutedExperts> experts(new RoutedExperts(config));
  WeightLoader loader(checkpoint, config.weight_block_size);
  const int main_layers = config.num_hidden_layers;
  const int layers = main_layers + (include_mtp ? config.num_nextn_predict_layers : 0);
  for (int layer = 0; layer < layers; ++layer) {
    const std::string block = layer < main_layers ? absl::StrCat("layers.", layer)
                                                  : absl::StrCat("mtp.", layer - main_layers);
    for (int e = 0; e < config.n_routed_experts; ++e) {
      if (!select(layer, e)) continue;
      ASSIGN_OR_RETURN(SwigluWeights w,
                       LoadSwiglu(loader, absl::StrCat(block, ".ffn.experts.", e),
                                  config.hidden_size, config.moe_intermediate_size));
      experts->experts_.emplace(std::make_pair(layer, e), std::move(w));
    }
  }
  experts->weight_bytes_ = loader.bytes();
  experts->mappings_ = loader.mappings();
  return experts;
}

absl::Status RoutedExperts::Accumulate(int layer, const float* x, int64_t tokens,
                                       absl::Span<const int32_t> expert_ids,
                                       absl::Span<const float> weights, int k, bool require_all,
                                       Scratch* scratch, float* out) const {
  const int num_experts = config_.n_routed_experts;
  if (k <= 0 || static_cast<int64_t>(expert_ids.size()) != tokens * k ||
      weights.size() != expert_ids.size()) {
    return absl::InvalidArgumentError(absl::StrCat("routed experts: ", tokens, " tokens with k=", k,
                                                   " need ", tokens * k, " ids and weights, got ",
                                                   expert_ids.size(), " and ", weights.size()));
  }
  // Group the (token, slot) pairs by expert.
  std::vector<std::vector<int64_t>>& groups = scratch->groups;
  groups.resize(num_experts);
  for (std::vector<int64_t>& group : groups) group.clear();
  for (int64_t i = 0; i < tokens * k; ++i) {
    const int32_t e = expert_ids[i];
    if (e < 0 || e >= num_experts) {
      return absl::InvalidArgumentError(
          absl::StrCat("routed experts: expert id ", e, " outside [0, ", num_experts, ")"));
    }
    groups[e].push_back(i);
  }
  const int64_t d = config_.hidden_size;
  std::vector<float>& xs = scratch->x;
  std::vector<float>& ws = scratch->weights;
  std::vector<float>& ys = scratch->y;
  for (int e = 0; e < num_experts; ++e) {
    const std::vector<int64_t>& group = groups[e];
    if (group.empty()) continue;
    auto it = experts_.find({layer, e});
    if (it == experts_.end()) {
      if (!require_all) continue;
      return absl::FailedPreconditionError(
          absl::StrCat("routed experts: layer ", layer, " expert ", e, " is not loaded here"));
    }
    const int64_t n = static_cast<int64_t>(group.size());
    xs.resize(n * d);
    ws.resize(n);
    ys.resize(n * d);
    for (int64_t i = 0; i < n; ++i) {
      std::memcpy(xs.data() + i * d, x + group[i] / k * d, d * sizeof(float));
      ws[i] = weights[group[i]];
    }
    SwigluForward(it->second, xs.data(), n, ws.data(), static_cast<float>(config_.swiglu_limit),
                  /*accumulate=*/false, ys.data(), &scratch->hidden);
    for (int64_t i = 0; i < n; ++i) {
      float* dst = out + group[i] / k * d;
      const float* src = ys.data() + i * d;
      for (int64_t j = 0; j < d; ++j) dst[j] += src[j];
    }
  }
  return absl::OkStatus();
}

}  // namespace dsv4
