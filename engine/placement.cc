#include "engine/placement.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/status_macros.h"

namespace dsv4 {
namespace {

// Assigns items to `num_packs` packs of exactly n / num_packs items each, heaviest item
// first onto the lightest pack with room (EPLB's balanced_packing). Among equally light
// packs it prefers one holding no item with the same key, then the lowest index. Returns
// the pack of every item.
std::vector<int> BalancedPacking(absl::Span<const double> weight, absl::Span<const int> key,
                                 int num_packs) {
  const int n = static_cast<int>(weight.size());
  const int per_pack = n / num_packs;
  std::vector<int> pack_of(n);
  if (per_pack == 1) {  // nothing to balance: every item is a pack
    std::iota(pack_of.begin(), pack_of.end(), 0);
    return pack_of;
  }
  std::vector<int> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return weight[a] > weight[b]; });
  std::vector<double> pack_weight(num_packs, 0.0);
  std::vector<std::vector<int>> pack_keys(num_packs);
  for (int item : order) {
    int best = -1;
    bool best_conflicts = false;
    for (int p = 0; p < num_packs; ++p) {
      if (static_cast<int>(pack_keys[p].size()) == per_pack) continue;
      const bool conflicts =
          std::find(pack_keys[p].begin(), pack_keys[p].end(), key[item]) != pack_keys[p].end();
      if (best < 0 || pack_weight[p] < pack_weight[best] ||
          (pack_weight[p] == pack_weight[best] && best_conflicts && !conflicts)) {
        best = p;
        best_conflicts = conflicts;
      }
    }
    pack_of[item] = best;
    pack_weight[best] += weight[item];
    pack_keys[best].push_back(key[item]);
  }
  return pack_of;
}

// Expands `weight.size()` items to `num_out` replicas (EPLB's replicate_experts): replica i
// < n is item i; each further replica goes to the item with the highest weight per replica,
// the lowest index on ties. Returns the item of every replica; `count` gets replicas per item.
std::vector<int> Replicate(absl::Span<const double> weight, int num_out, std::vector<int>* count) {
  const int n = static_cast<int>(weight.size());
  std::vector<int> item_of(num_out);
  std::iota(item_of.begin(), item_of.begin() + n, 0);
  count->assign(n, 1);
  for (int r = n; r < num_out; ++r) {
    int best = 0;
    for (int i = 1; i < n; ++i) {
      if (weight[i] / (*count)[i] > weight[best] / (*count)[best]) best = i;
    }
    item_of[r] = best;
    ++(*count)[best];
  }
  return item_of;
}

// Fills `slot_expert` (the layer's slots) by the hierarchical policy over `num_nodes` nodes;
// the global policy is the same with one group on one node.
void PlaceLayer(absl::Span<const double> load, int num_groups, int num_nodes, int num_ranks,
                absl::Span<int> slot_expert) {
  const int num_experts = static_cast<int>(load.size());
  const int num_slots = static_cast<int>(slot_expert.size());
  const bool uniform =
      std::all_of(load.begin(), load.end(), [&](double x) { return x == load[0]; });
  if (uniform && num_slots == num_experts) {
    std::iota(slot_expert.begin(), slot_expert.end(), 0);
    return;
  }
  const int group_size = num_experts / num_groups;
  const int slots_per_node = num_slots / num_nodes;
  const int ranks_per_node = num_ranks / num_nodes;
  const int slots_per_rank = num_slots / num_ranks;

  // 1. Groups onto nodes, balancing node load.
  std::vector<double> group_load(num_groups, 0.0);
  for (int e = 0; e < num_experts; ++e) group_load[e / group_size] += load[e];
  std::vector<int> group_ids(num_groups);
  std::iota(group_ids.begin(), group_ids.end(), 0);
  const std::vector<int> node_of_group = BalancedPacking(group_load, group_ids, num_nodes);
  std::vector<std::vector<int>> node_experts(num_nodes);
  for (int g = 0; g < num_groups; ++g) {
    for (int j = 0; j < group_size; ++j) {
      node_experts[node_of_group[g]].push_back(g * group_size + j);
    }
  }

  for (int node = 0; node < num_nodes; ++node) {
    // 2. Replicate the node's heaviest experts into its slots.
    const std::vector<int>& experts = node_experts[node];
    std::vector<double> local_load(experts.size());
    for (size_t j = 0; j < experts.size(); ++j) local_load[j] = load[experts[j]];
    std::vector<int> count;
    const std::vector<int> local_of = Replicate(local_load, slots_per_node, &count);
    std::vector<double> replica_load(slots_per_node);
    for (int i = 0; i < slots_per_node; ++i) {
      replica_load[i] = local_load[local_of[i]] / count[local_of[i]];
    }
    // 3. Replicas onto the node's ranks; replicas of one expert are kept apart on ties.
    const std::vector<int> rank_of = BalancedPacking(replica_load, local_of, ranks_per_node);
    std::vector<std::vector<int>> rank_experts(ranks_per_node);
    for (int i = 0; i < slots_per_node; ++i) {
      rank_experts[rank_of[i]].push_back(experts[local_of[i]]);
    }
    for (int r = 0; r < ranks_per_node; ++r) {
      std::sort(rank_experts[r].begin(), rank_experts[r].end());
      std::copy(rank_experts[r].begin(), rank_experts[r].end(),
                slot_expert.begin() + (node * ranks_per_node + r) * slots_per_rank);
    }
  }
}

// Max over mean of per-rank load; 1 when there is no load.
double MaxOverMean(const std::vector<double>& rank_load) {
  const double total = std::accumulate(rank_load.begin(), rank_load.end(), 0.0);
  if (total <= 0) return 1.0;
  return *std::max_element(rank_load.begin(), rank_load.end()) * rank_load.size() / total;
}

absl::Status ValidateInputs(const std::vector<std::vector<double>>& load, const PlacementOptions& o,
                            bool* hierarchical) {
  if (load.empty()) return absl::InvalidArgumentError("load: expected at least one layer, got 0");
  const int num_experts = static_cast<int>(load[0].size());
  if (num_experts < 1) {
    return absl::InvalidArgumentError("load[0]: expected at least one expert, got 0");
  }
  for (size_t l = 0; l < load.size(); ++l) {
    if (static_cast<int>(load[l].size()) != num_experts) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "load[%d]: expected %d experts (as in layer 0), got %d", l, num_experts, load[l].size()));
    }
    for (int e = 0; e < num_experts; ++e) {
      if (!std::isfinite(load[l][e]) || load[l][e] < 0) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "load[%d][%d]: expected a finite value >= 0, got %g", l, e, load[l][e]));
      }
    }
  }
  if (o.num_ranks < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("num_ranks: expected at least 1, got ", o.num_ranks));
  }
  if (o.num_slots < num_experts || o.num_slots % o.num_ranks != 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "num_slots: expected a multiple of num_ranks (%d) that is >= the number of experts "
        "(%d), got %d",
        o.num_ranks, num_experts, o.num_slots));
  }
  if (o.num_groups < 1 || num_experts % o.num_groups != 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("num_groups: expected a divisor of the number of experts (%d), got %d",
                        num_experts, o.num_groups));
  }
  if (o.num_nodes < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("num_nodes: expected at least 1, got ", o.num_nodes));
  }
  *hierarchical = o.policy == PlacementPolicy::kHierarchical && o.num_groups % o.num_nodes == 0;
  if (*hierarchical && o.num_ranks % o.num_nodes != 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "num_nodes: the hierarchical policy needs a divisor of num_ranks (%d), got %d", o.num_ranks,
        o.num_nodes));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ExpertPlacement> ExpertPlacement::Compute(
    const std::vector<std::vector<double>>& load, const PlacementOptions& options) {
  bool hierarchical = false;
  RETURN_IF_ERROR(ValidateInputs(load, options, &hierarchical));

  ExpertPlacement p;
  p.policy_ = hierarchical ? PlacementPolicy::kHierarchical : PlacementPolicy::kGlobal;
  p.num_layers_ = static_cast<int>(load.size());
  p.num_experts_ = static_cast<int>(load[0].size());
  p.num_slots_ = options.num_slots;
  p.num_ranks_ = options.num_ranks;
  p.num_nodes_ = hierarchical ? options.num_nodes : 1;
  const int groups = hierarchical ? options.num_groups : 1;
  const int E = p.num_experts_;
  const int S = p.num_slots_;
  const int R = p.num_ranks_;

  p.slot_expert_.resize(static_cast<size_t>(p.num_layers_) * S);
  p.replica_slots_.resize(p.slot_expert_.size());
  p.replica_begin_.resize(static_cast<size_t>(p.num_layers_) * (E + 1));
  for (int l = 0; l < p.num_layers_; ++l) {
    absl::Span<int> slots(p.slot_expert_.data() + p.Index(l, 0), S);
    PlaceLayer(load[l], groups, p.num_nodes_, R, slots);

    // Logical → physical by counting sort: slots grouped by expert, ascending within.
    int* begin = p.replica_begin_.data() + static_cast<size_t>(l) * (E + 1);
    std::fill(begin, begin + E + 1, 0);
    for (int s = 0; s < S; ++s) ++begin[slots[s] + 1];
    std::partial_sum(begin, begin + E + 1, begin);
    std::vector<int> next(begin, begin + E);
    for (int s = 0; s < S; ++s) p.replica_slots_[p.Index(l, next[slots[s]]++)] = s;

    std::vector<double> before(R, 0.0), after(R, 0.0);
    for (int e = 0; e < E; ++e) before[static_cast<int64_t>(e) * R / E] += load[l][e];
    for (int s = 0; s < S; ++s) {
      const int e = slots[s];
      after[p.RankOfSlot(s)] += load[l][e] / (begin[e + 1] - begin[e]);
    }
    p.baseline_imbalance_.push_back(MaxOverMean(before));
    p.imbalance_.push_back(MaxOverMean(after));
  }
  return p;
}

absl::StatusOr<ExpertPlacement> ExpertPlacement::Uniform(int num_layers, int num_experts,
                                                         const PlacementOptions& options) {
  if (num_layers < 1 || num_experts < 1) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "num_layers and num_experts: expected at least 1, got %d and %d", num_layers, num_experts));
  }
  return Compute(std::vector<std::vector<double>>(num_layers, std::vector<double>(num_experts, 1)),
                 options);
}

absl::Span<const int> ExpertPlacement::ReplicasOf(int layer, int expert) const {
  const int* begin = replica_begin_.data() + static_cast<size_t>(layer) * (num_experts_ + 1);
  return absl::Span<const int>(replica_slots_.data() + Index(layer, begin[expert]),
                               begin[expert + 1] - begin[expert]);
}

int ExpertPlacement::ReplicaCount(int layer, int expert) const {
  return static_cast<int>(ReplicasOf(layer, expert).size());
}

bool ExpertPlacement::RankHolds(int layer, int rank, int expert) const {
  const int first = rank * slots_per_rank();
  for (int s = first; s < first + slots_per_rank(); ++s) {
    if (LogicalOf(layer, s) == expert) return true;
  }
  return false;
}

int ExpertPlacement::PhysicalFor(int layer, int expert, int64_t index) const {
  const absl::Span<const int> replicas = ReplicasOf(layer, expert);
  const int64_t n = static_cast<int64_t>(replicas.size());
  return replicas[((index % n) + n) % n];
}

std::vector<int32_t> ExpertPlacement::AssignReplicas(int layer,
                                                     absl::Span<const int32_t> expert_ids,
                                                     int64_t first_index) const {
  std::vector<int64_t> seen(num_experts_, 0);
  std::vector<int32_t> physical(expert_ids.size());
  for (size_t i = 0; i < expert_ids.size(); ++i) {
    const int e = expert_ids[i];
    physical[i] = PhysicalFor(layer, e, first_index + seen[e]++);
  }
  return physical;
}

std::string ExpertPlacement::Summary() const {
  std::string out = absl::StrFormat(
      "expert placement: %s policy, %d layers, %d experts in %d slots on %d expert ranks "
      "(%d per rank, %d node%s)\n",
      policy_ == PlacementPolicy::kHierarchical ? "hierarchical" : "global", num_layers_,
      num_experts_, num_slots_, num_ranks_, slots_per_rank(), num_nodes_,
      num_nodes_ == 1 ? "" : "s");
  double before_sum = 0, after_sum = 0;
  int worst = 0;
  std::string lines;
  for (int l = 0; l < num_layers_; ++l) {
    int replicated = 0, most = 1;
    for (int e = 0; e < num_experts_; ++e) {
      const int n = ReplicaCount(l, e);
      replicated += n > 1;
      most = std::max(most, n);
    }
    before_sum += baseline_imbalance_[l];
    after_sum += imbalance_[l];
    if (imbalance_[l] > imbalance_[worst]) worst = l;
    absl::StrAppendFormat(&lines,
                          "  layer %d: %d experts replicated (max %d replicas), max/mean rank "
                          "load %.3f -> %.3f\n",
                          l, replicated, most, baseline_imbalance_[l], imbalance_[l]);
  }
  absl::StrAppendFormat(&out,
                        "  max/mean rank load: mean over layers %.3f -> %.3f, worst layer %d "
                        "%.3f -> %.3f\n",
                        before_sum / num_layers_, after_sum / num_layers_, worst,
                        baseline_imbalance_[worst], imbalance_[worst]);
  return out + lines;
}

}  // namespace dsv4
