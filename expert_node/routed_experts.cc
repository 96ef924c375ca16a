#include "expert_node/routed_experts.h"

#include <algorithm>
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

absl::Status RoutedExperts::Run(int layer, const Rows& rows, bool require_all,
                                Scratch* scratch) const {
  const int num_experts = config_.n_routed_experts;
  const int k = rows.k;
  const int64_t n_rows = rows.size();
  if (k <= 0 || static_cast<int64_t>(rows.out.size()) != n_rows ||
      static_cast<int64_t>(rows.expert_ids.size()) != n_rows * k ||
      rows.weights.size() != rows.expert_ids.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("routed experts: ", n_rows, " rows with k=", k, " need ", n_rows,
                     " outputs and ", n_rows * k, " ids and weights, got ", rows.out.size(), ", ",
                     rows.expert_ids.size(), " and ", rows.weights.size()));
  }
  // Group the pairs by expert.
  std::vector<std::vector<int64_t>>& groups = scratch->groups;
  groups.resize(num_experts);
  for (std::vector<int64_t>& group : groups) group.clear();
  for (int64_t i = 0; i < n_rows * k; ++i) {
    const int32_t e = rows.expert_ids[i];
    if (e == -1) continue;
    if (e < 0 || e >= num_experts) {
      return absl::InvalidArgumentError(
          absl::StrCat("routed experts: expert id ", e, " outside [0, ", num_experts, ")"));
    }
    groups[e].push_back(i);
  }
  // The held experts with pairs, ascending; each computes into its own buffers.
  std::vector<ExpertWork>& work = scratch->work;
  std::vector<const float*>& pair_out = scratch->pair_out;
  pair_out.assign(n_rows * k, nullptr);
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
        std::memcpy(w.x.data() + r * d, rows.x[group[r] / k], d * sizeof(float));
        w.routing[r] = rows.weights[group[r]];
      }
      SwigluForward(*w.weights, w.x.data(), n, w.routing.data(), limit, /*accumulate=*/false,
                    w.y.data(), &w.hidden);
      for (int64_t r = 0; r < n; ++r) pair_out[group[r]] = w.y.data() + r * d;
    }
  });
  // Each row sums its pairs in ascending expert id, written once into out[r].
  ParallelFor(n_rows, 16, [&](int64_t begin, int64_t end) {
    std::vector<int> order(k);
    for (int64_t r = begin; r < end; ++r) {
      int n = 0;
      for (int j = 0; j < k; ++j) {
        if (pair_out[r * k + j] == nullptr) continue;
        int at = n++;
        for (; at > 0 && rows.expert_ids[r * k + order[at - 1]] > rows.expert_ids[r * k + j];
             --at) {
          order[at] = order[at - 1];
        }
        order[at] = j;
      }
      float* dst = rows.out[r];
      std::fill(dst, dst + d, 0.0f);
      for (int i = 0; i < n; ++i) {
        const float* src = pair_out[r * k + order[i]];
        for (int64_t c = 0; c < d; ++c) dst[c] += src[c];
      }
    }
  });
  return absl::OkStatus();
}

}  // namespace dsv4
