#include "core/topology.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace dsv4 {
namespace {

std::string Plural(int n, absl::string_view word) {
  return absl::StrCat(n, " ", word, n == 1 ? "" : "s");
}

}  // namespace

const char* RankRoleName(RankRole role) {
  return role == RankRole::kAttention ? "attention" : "expert";
}

std::string ChipPosition::ToString() const {
  return absl::StrCat("sn", supernode, "/node", node, "/chip", chip);
}

absl::StatusOr<Topology> Topology::Build(const TopologySpec& spec, const RolesSpec& roles) {
  if (spec.supernodes.empty()) return absl::InvalidArgumentError("the topology has no supernodes");
  Topology t;
  t.links_ = spec.links;
  t.supernode_chip_begin_.push_back(0);
  for (int s = 0; s < static_cast<int>(spec.supernodes.size()); ++s) {
    const SupernodeSpec& sn = spec.supernodes[s];
    if (sn.nodes.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("supernode ", s, " has no nodes"));
    }
    int local_index = 0;
    for (int n = 0; n < static_cast<int>(sn.nodes.size()); ++n) {
      const NodeSpec& node = sn.nodes[n];
      if (node.chips <= 0) {
        return absl::InvalidArgumentError(absl::StrCat("sn", s, "/node", n, " has no chips"));
      }
      t.uniform_ = t.uniform_ && node.chips == spec.supernodes[0].nodes[0].chips &&
                   sn.nodes.size() == spec.supernodes[0].nodes.size();
      const int global_node = static_cast<int>(t.node_hosts_.size());
      t.node_hosts_.push_back(node.host);
      t.node_chip_begin_.push_back(t.num_chips());
      for (int c = 0; c < node.chips; ++c) {
        t.chips_.push_back({s, n, c, global_node, local_index++});
      }
    }
    t.supernode_chip_begin_.push_back(t.num_chips());
  }
  t.node_chip_begin_.push_back(t.num_chips());

  if (roles.attention_ranks < 1 || roles.expert_ranks < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("need at least 1 attention and 1 expert rank, got ", roles.attention_ranks,
                     " and ", roles.expert_ranks));
  }
  const int ranks = roles.num_ranks();
  if (ranks > t.num_chips()) {
    return absl::InvalidArgumentError(absl::StrCat(
        roles.attention_ranks, " attention + ", roles.expert_ranks, " expert ranks need ", ranks,
        " chips, but the topology has ", t.num_chips(), " (", t.Describe(), ")"));
  }
  t.attention_ranks_ = roles.attention_ranks;
  t.chip_rank_.assign(t.num_chips(), -1);
  if (roles.rank_chips.empty()) {
    for (int r = 0; r < ranks; ++r) t.rank_chip_.push_back(r);
  } else {
    if (static_cast<int>(roles.rank_chips.size()) != ranks) {
      return absl::InvalidArgumentError(absl::StrCat("rank_chips has ", roles.rank_chips.size(),
                                                     " entries, expected one per rank (", ranks,
                                                     ")"));
    }
    t.rank_chip_ = roles.rank_chips;
  }
  for (int r = 0; r < ranks; ++r) {
    const int chip = t.rank_chip_[r];
    if (chip < 0 || chip >= t.num_chips()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "rank_chips[", r, "] = ", chip, " is not a chip (0..", t.num_chips() - 1, ")"));
    }
    if (t.chip_rank_[chip] >= 0) {
      return absl::InvalidArgumentError(absl::StrCat("rank_chips: ranks ", t.chip_rank_[chip],
                                                     " and ", r, " are both on chip ", chip));
    }
    t.chip_rank_[chip] = r;
  }
  return t;
}

std::optional<int> Topology::rank_on_chip(int chip) const {
  if (chip_rank_[chip] < 0) return std::nullopt;
  return chip_rank_[chip];
}

LinkClass Topology::LinkBetweenChips(int chip_a, int chip_b) const {
  const ChipPosition& a = chips_[chip_a];
  const ChipPosition& b = chips_[chip_b];
  if (a.global_node == b.global_node) return LinkClass::kIntraNode;
  if (a.supernode == b.supernode) return LinkClass::kIntraSupernode;
  return LinkClass::kInterSupernode;
}

std::vector<int> Topology::RanksOnChips(int begin, int end) const {
  std::vector<int> ranks;
  for (int chip = begin; chip < end; ++chip) {
    if (chip_rank_[chip] >= 0) ranks.push_back(chip_rank_[chip]);
  }
  // Chip order is rank order only for the default mapping.
  std::sort(ranks.begin(), ranks.end());
  return ranks;
}

namespace {

// Distinct values of `of(position)` over the expert ranks.
template <typename Of>
int DistinctOverExperts(const Topology& t, Of of) {
  std::vector<int> values;
  for (int r = t.num_attention_ranks(); r < t.num_ranks(); ++r) {
    values.push_back(of(t.rank_position(r)));
  }
  std::sort(values.begin(), values.end());
  return static_cast<int>(std::unique(values.begin(), values.end()) - values.begin());
}

}  // namespace

int Topology::num_expert_nodes() const {
  return DistinctOverExperts(*this, [](const ChipPosition& p) { return p.global_node; });
}

int Topology::num_expert_supernodes() const {
  return DistinctOverExperts(*this, [](const ChipPosition& p) { return p.supernode; });
}

std::vector<int> Topology::RanksInSupernode(int supernode) const {
  return RanksOnChips(supernode_chip_begin_[supernode], supernode_chip_begin_[supernode + 1]);
}

std::vector<int> Topology::RanksInNode(int global_node) const {
  return RanksOnChips(node_chip_begin_[global_node], node_chip_begin_[global_node + 1]);
}

std::optional<int> Topology::PeerInSupernode(int rank, int supernode) const {
  const int local = rank_position(rank).local_index;
  if (local >= supernode_size(supernode)) return std::nullopt;
  return rank_on_chip(supernode_chip_begin_[supernode] + local);
}

std::string Topology::DescribeRank(int rank) const {
  return absl::StrCat("rank ", rank, " (", RankRoleName(role(rank)), ") on ",
                      rank_position(rank).ToString());
}

std::string Topology::Describe() const {
  std::string tree;
  if (uniform_) {
    const int nodes_per = num_nodes() / num_supernodes();
    tree =
        absl::StrCat(Plural(num_supernodes(), "supernode"), " × ", Plural(nodes_per, "node"), " × ",
                     Plural(num_chips() / num_nodes(), "chip"), " = ", Plural(num_chips(), "chip"));
  } else {
    tree = absl::StrCat(Plural(num_supernodes(), "supernode"), ", ", Plural(num_nodes(), "node"),
                        ", ", Plural(num_chips(), "chip"));
  }
  if (num_ranks() == 0) return tree;  // Build() reporting before ranks are mapped
  return absl::StrCat(tree, "; ", num_attention_ranks(), " attention + ", num_expert_ranks(),
                      " expert ranks");
}

}  // namespace dsv4
