// The chip tree of a cluster config (supernodes → nodes → chips) and the MPI ranks mapped
// onto it. Placement, hierarchical dispatch, the cost model and the planner all read it.
//
// Chips are numbered globally in tree order: supernode 0's nodes first, each node's chips
// in order. Rank r runs on chip r unless roles.rank_chips says otherwise. Ranks
// 0..A-1 are attention ranks and A..A+E-1 expert ranks.
//
// Methods taking a rank or chip index require it to be in range.
#ifndef DSV4_CORE_TOPOLOGY_H_
#define DSV4_CORE_TOPOLOGY_H_

#include <array>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/cluster_config.h"

namespace dsv4 {

enum class RankRole { kAttention, kExpert };
const char* RankRoleName(RankRole role);  // "attention" / "expert"

struct ChipPosition {
  int supernode = 0;
  int node = 0;         // within the supernode
  int chip = 0;         // within the node
  int global_node = 0;  // node index over the whole tree
  int local_index = 0;  // chip index within the supernode (its nodes' chips in order)

  std::string ToString() const;  // "sn0/node1/chip1"
};

class Topology {
 public:
  // Checks the roles against the tree: every rank needs its own chip.
  static absl::StatusOr<Topology> Build(const TopologySpec& spec, const RolesSpec& roles);
  static absl::StatusOr<Topology> Build(const ClusterConfig& config) {
    return Build(config.topology, config.roles);
  }

  int num_supernodes() const { return static_cast<int>(supernode_chip_begin_.size()) - 1; }
  int num_nodes() const { return static_cast<int>(node_hosts_.size()); }
  int num_chips() const { return static_cast<int>(chips_.size()); }
  int num_ranks() const { return static_cast<int>(rank_chip_.size()); }
  int num_attention_ranks() const { return attention_ranks_; }
  int num_expert_ranks() const { return num_ranks() - attention_ranks_; }
  // Distinct nodes, and supernodes, that hold expert ranks.
  int num_expert_nodes() const;
  int num_expert_supernodes() const;
  // Chips in supernode `supernode`.
  int supernode_size(int supernode) const {
    return supernode_chip_begin_[supernode + 1] - supernode_chip_begin_[supernode];
  }

  const ChipPosition& chip_position(int chip) const { return chips_[chip]; }
  int chip_of_rank(int rank) const { return rank_chip_[rank]; }
  const ChipPosition& rank_position(int rank) const { return chips_[rank_chip_[rank]]; }
  // The rank on `chip`, if any.
  std::optional<int> rank_on_chip(int chip) const;
  RankRole role(int rank) const {
    return rank < attention_ranks_ ? RankRole::kAttention : RankRole::kExpert;
  }
  // The node's host from the config ("" when not given), for hostfiles.
  const std::string& host_of_rank(int rank) const {
    return node_hosts_[rank_position(rank).global_node];
  }

  // Same node → intra_node; same supernode → intra_supernode; else inter_supernode. A chip
  // with itself is intra_node; callers that account link bytes skip self traffic.
  LinkClass LinkBetweenChips(int chip_a, int chip_b) const;
  LinkClass LinkBetween(int rank_a, int rank_b) const {
    return LinkBetweenChips(rank_chip_[rank_a], rank_chip_[rank_b]);
  }
  const LinkSpec& link(LinkClass c) const { return links_[static_cast<int>(c)]; }

  // Ranks on chips of `supernode`, ascending.
  std::vector<int> RanksInSupernode(int supernode) const;
  // Ranks on chips of the node with global index `global_node`, ascending.
  std::vector<int> RanksInNode(int global_node) const;
  // The rank on the chip with the same local index as `rank`'s chip, in `supernode`;
  // nullopt when that supernode is smaller or the chip has no rank.
  std::optional<int> PeerInSupernode(int rank, int supernode) const;

  // "rank 3 (expert) on sn0/node1/chip1"
  std::string DescribeRank(int rank) const;
  // "2 supernodes × 1 node × 3 chips = 6 chips; 3 attention + 3 expert ranks"
  std::string Describe() const;

 private:
  Topology() = default;
  std::vector<int> RanksOnChips(int begin, int end) const;  // ranks on chips [begin, end)

  std::vector<ChipPosition> chips_;        // by global chip index
  std::vector<int> supernode_chip_begin_;  // first global chip of each supernode, + end
  std::vector<int> node_chip_begin_;       // first global chip of each node, + end
  std::vector<std::string> node_hosts_;    // by global node index
  std::vector<int> rank_chip_;             // by rank
  std::vector<int> chip_rank_;             // by chip; -1 = no rank
  int attention_ranks_ = 0;
  std::array<LinkSpec, kNumLinkClasses> links_;
  bool uniform_ = true;  // every supernode has the same nodes and chips, for Describe()
};

}  // namespace dsv4

#endif  // DSV4_CORE_TOPOLOGY_H_
