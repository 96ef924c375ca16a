// Expert placement with redundant experts (EPLB, deepseek-ai/EPLB): for every MoE layer,
// which logical routed expert each physical expert slot holds and which expert rank holds
// each slot. The engine counts per-layer expert load and, when the coordinator asks for a
// rebalance, every rank computes the same placement from it (uniform until load has been
// observed); expert ranks load the experts of their slots; attention ranks send each routed
// token to one replica of its expert.
//
// Policies (as in EPLB):
//  - hierarchical: pack expert groups onto nodes balancing node load, replicate the heaviest
//    experts within each node, pack each node's replicas onto that node's ranks. A group's
//    experts and all replicas of an expert stay inside one node, so a token's experts cost
//    fewer cross-node transfers. Used when the groups divide evenly over the nodes;
//    otherwise it falls back to global, as EPLB does (policy() says which ran).
//  - global: replicate the heaviest experts over all slots, pack replicas onto all ranks.
// Replication gives each extra slot to the expert with the highest load per replica.
// Packing is greedy, heaviest item first onto the lightest pack with a free place, with
// exactly the same number of items in every pack. Ties go to the lower index; among equally
// loaded ranks, to one not yet holding that expert, so that replicas land on different ranks.
// A layer with uniform load and no redundant slots keeps the contiguous placement (slot s
// holds expert s): every equal-count placement is then balanced, and this one matches the
// checkpoint order.
//
// Load model: an expert's load (e.g. tokens routed to it) splits evenly over its replicas,
// which the replica chooser below guarantees up to one token per replica.
//
// Layout contract: with P = slots / ranks, expert rank r holds slots [r·P, (r+1)·P), and
// (hierarchical) expert ranks [n·R/N, (n+1)·R/N) must sit on node n. Within a rank, slots
// are in ascending logical expert order. Layer indices are the caller's (main layers, then
// MTP blocks); placement treats them alike.
#ifndef DSV4_ENGINE_PLACEMENT_H_
#define DSV4_ENGINE_PLACEMENT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "core/cluster_config.h"

namespace dsv4 {

struct PlacementOptions {
  PlacementPolicy policy = PlacementPolicy::kHierarchical;
  int num_slots = 0;   // physical experts per layer: routed experts + redundant ones
  int num_groups = 1;  // expert groups (model n_group); must divide the expert count
  int num_nodes = 1;   // nodes (or supernodes) the expert ranks span; hierarchical only
  int num_ranks = 1;   // expert ranks; must divide num_slots
};

class ExpertPlacement {
 public:
  // `load[l][e]` is the load of logical expert e in layer l: finite, ≥ 0, the same number
  // of experts in every layer. INVALID_ARGUMENT naming the value and its allowed range
  // when the load or the options are inconsistent.
  static absl::StatusOr<ExpertPlacement> Compute(const std::vector<std::vector<double>>& load,
                                                 const PlacementOptions& options);
  // The placement for uniform load, used until load has been observed.
  static absl::StatusOr<ExpertPlacement> Uniform(int num_layers, int num_experts,
                                                 const PlacementOptions& options);

  PlacementPolicy policy() const { return policy_; }  // the one that ran
  int num_layers() const { return num_layers_; }
  int num_experts() const { return num_experts_; }
  int num_slots() const { return num_slots_; }
  int num_ranks() const { return num_ranks_; }
  int num_nodes() const { return num_nodes_; }  // 1 under the global policy
  int slots_per_rank() const { return num_slots_ / num_ranks_; }

  // Physical → logical: the expert that `slot` holds in `layer`.
  int LogicalOf(int layer, int slot) const { return slot_expert_[Index(layer, slot)]; }
  // Logical → physical: the slots holding `expert` in `layer`, ascending; never empty.
  absl::Span<const int> ReplicasOf(int layer, int expert) const;
  int ReplicaCount(int layer, int expert) const;
  int RankOfSlot(int slot) const { return slot / slots_per_rank(); }
  // Whether expert rank `rank` holds a replica of `expert` in `layer` (what it must load).
  bool RankHolds(int layer, int rank, int expert) const;

  // The replica that serves the `index`-th token routed to `expert`: the replicas taken
  // round-robin, so consecutive indices spread evenly. Any choice gives the same logits
  // (replicas hold identical weights); a deterministic one makes runs reproducible.
  int PhysicalFor(int layer, int expert, int64_t index) const;
  // PhysicalFor over one step's routing: entry i of `expert_ids` (each in [0, experts))
  // being the n-th occurrence of its expert gets PhysicalFor(layer, expert, first_index + n).
  // Within the step each expert's tokens split over its replicas to within one token;
  // distinct `first_index` per attention rank (e.g. the rank) rotates the starting replica.
  std::vector<int32_t> AssignReplicas(int layer, absl::Span<const int32_t> expert_ids,
                                      int64_t first_index) const;

  // Max over mean per-rank load of `layer` with this placement, and with the plain one
  // (no redundancy, experts split contiguously over the ranks); 1 when the layer has no load.
  double Imbalance(int layer) const { return imbalance_[layer]; }
  double BaselineImbalance(int layer) const { return baseline_imbalance_[layer]; }

  // Multi-line status text: policy and sizes, then per layer the replicated experts and the
  // max/mean rank load before → after.
  std::string Summary() const;

 private:
  ExpertPlacement() = default;
  size_t Index(int layer, int slot) const { return static_cast<size_t>(layer) * num_slots_ + slot; }

  PlacementPolicy policy_ = PlacementPolicy::kGlobal;
  int num_layers_ = 0;
  int num_experts_ = 0;
  int num_slots_ = 0;
  int num_ranks_ = 0;
  int num_nodes_ = 1;
  std::vector<int> slot_expert_;    // [layer][slot] → logical expert
  std::vector<int> replica_slots_;  // [layer][slots], grouped by expert, ascending
  std::vector<int> replica_begin_;  // [layer][expert + 1] → offset into the layer's group
  std::vector<double> imbalance_;
  std::vector<double> baseline_imbalance_;
};

}  // namespace dsv4

#endif  // DSV4_ENGINE_PLACEMENT_H_
