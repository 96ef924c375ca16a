#include "expert_node/routed_experts.h"

#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/parallel.h"
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
  // V4.1's DSpark stages are not evaluated, so their experts stay on disk.
  const bool mtp = include_mtp && !config.is_v41();
  const int layers = main_layers + (mtp ? config.num_nextn_predict_layers : 0);
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
  // The held experts with tokens, ascending; each computes into its own buffers.
  std::vector<ExpertWork>& work = scratch->work;
  size_t active = 0;
  for (int e = 0; e < num_experts; ++e) {
    if (groups[e].empty()) continue;
    auto it = experts_.find({layer, e});
    if (it == experts_.end()) {
      if (!require_all) continue;
      return absl::FailedPreconditionError(
          absl::StrCat("routed experts: layer ", layer, " expert ", e, " is not loaded here"));
    }
    if (work.size() <= active) work.resize(active + 1);
    work[active].weights = &it->second;
    work[active].group = &groups[e];
    ++active;
  }
  const int64_t d = config_.hidden_size;
  const float limit = static_cast<float>(config_.swiglu_limit);
  ParallelFor(static_cast<int64_t>(active), 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      ExpertWork& w = work[i];
      const std::vector<int64_t>& group = *w.group;
      const int64_t n = static_cast<int64_t>(group.size());
      w.x.resize(n * d);
      w.routing.resize(n);
      w.y.resize(n * d);
      for (int64_t r = 0; r < n; ++r) {
        std::memcpy(w.x.data() + r * d, x + group[r] / k * d, d * sizeof(float));
        w.routing[r] = weights[group[r]];
      }
      SwigluForward(*w.weights, w.x.data(), n, w.routing.data(), limit, /*accumulate=*/false,
                    w.y.data(), &w.hidden);
    }
  });
  for (size_t i = 0; i < active; ++i) {
    const std::vector<int64_t>& group = *work[i].group;
    for (size_t r = 0; r < group.size(); ++r) {
      float* dst = out + group[r] / k * d;
      const float* src = work[i].y.data() + r * d;
      for (int64_t j = 0; j < d; ++j) dst[j] += src[j];
    }
  }
  return absl::OkStatus();
}

}  // namespace dsv4
