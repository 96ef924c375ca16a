// The chip tree: positions, rank mapping, link classes and peer lookups, hand-checked.
#include "core/topology.h"

#include <string>
#include <vector>

#include "core/cluster_config.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace dsv4 {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

const std::string kConfigDir = std::string(DSV4_SOURCE_DIR) + "/cluster-configs";

Topology LoadTopology(const std::string& name) {
  absl::StatusOr<ClusterConfig> config = LoadClusterConfig(kConfigDir + "/" + name);
  EXPECT_TRUE(config.ok()) << config.status();
  absl::StatusOr<Topology> topology = Topology::Build(*config);
  EXPECT_TRUE(topology.ok()) << topology.status();
  return *std::move(topology);
}

// `chips[s][n]` chips in node n of supernode s.
TopologySpec Tree(const std::vector<std::vector<int>>& chips) {
  TopologySpec spec;
  for (const std::vector<int>& sn : chips) {
    SupernodeSpec& out = spec.supernodes.emplace_back();
    for (int c : sn) out.nodes.push_back({c, ""});
  }
  return spec;
}

RolesSpec Roles(int attention, int expert, std::vector<int> rank_chips = {}) {
  RolesSpec roles;
  roles.attention_ranks = attention;
  roles.expert_ranks = expert;
  roles.rank_chips = std::move(rank_chips);
  return roles;
}

TEST(Topology, TwoSupernodesTest) {
  const Topology t = LoadTopology("two-supernodes-test.yaml");
  EXPECT_EQ(t.num_supernodes(), 2);
  EXPECT_EQ(t.num_nodes(), 2);
  EXPECT_EQ(t.num_chips(), 6);
  EXPECT_EQ(t.num_ranks(), 6);
  EXPECT_EQ(t.num_attention_ranks(), 3);
  EXPECT_EQ(t.num_expert_ranks(), 3);

  const ChipPosition& p4 = t.rank_position(4);
  EXPECT_EQ(p4.supernode, 1);
  EXPECT_EQ(p4.node, 0);
  EXPECT_EQ(p4.chip, 1);
  EXPECT_EQ(p4.global_node, 1);
  EXPECT_EQ(p4.local_index, 1);
  EXPECT_EQ(t.chip_of_rank(4), 4);
  EXPECT_EQ(t.role(2), RankRole::kAttention);
  EXPECT_EQ(t.role(3), RankRole::kExpert);
  EXPECT_EQ(t.DescribeRank(4), "rank 4 (expert) on sn1/node0/chip1");
  EXPECT_EQ(t.DescribeRank(0), "rank 0 (attention) on sn0/node0/chip0");
  EXPECT_EQ(t.host_of_rank(5), "localhost");

  EXPECT_EQ(t.LinkBetween(0, 2), LinkClass::kIntraNode);
  EXPECT_EQ(t.LinkBetween(0, 3), LinkClass::kInterSupernode);
  EXPECT_EQ(t.LinkBetween(5, 1), LinkClass::kInterSupernode);
  EXPECT_EQ(t.LinkBetween(4, 4), LinkClass::kIntraNode);
  EXPECT_DOUBLE_EQ(t.link(LinkClass::kInterSupernode).bandwidth, 50e9);

  EXPECT_THAT(t.RanksInSupernode(0), ElementsAre(0, 1, 2));
  EXPECT_THAT(t.RanksInSupernode(1), ElementsAre(3, 4, 5));
  EXPECT_EQ(t.PeerInSupernode(0, 1), 3);
  EXPECT_EQ(t.PeerInSupernode(5, 0), 2);
  EXPECT_EQ(t.PeerInSupernode(1, 0), 1);  // its own supernode: itself
  EXPECT_EQ(t.Describe(),
            "2 supernodes × 1 node × 3 chips = 6 chips; 3 attention + 3 expert ranks");
}

TEST(Topology, CloudMatrix384) {
  const Topology t = LoadTopology("cloudmatrix384.yaml");
  EXPECT_EQ(t.num_chips(), 384);
  EXPECT_EQ(t.num_nodes(), 48);
  EXPECT_EQ(t.rank_position(9).ToString(), "sn0/node1/chip1");
  EXPECT_EQ(t.rank_position(383).ToString(), "sn0/node47/chip7");
  EXPECT_EQ(t.LinkBetween(0, 7), LinkClass::kIntraNode);
  EXPECT_EQ(t.LinkBetween(7, 8), LinkClass::kIntraSupernode);
  EXPECT_EQ(t.LinkBetween(0, 383), LinkClass::kIntraSupernode);
  EXPECT_EQ(t.DescribeRank(200), "rank 200 (expert) on sn0/node25/chip0");
  EXPECT_EQ(t.DescribeRank(159), "rank 159 (attention) on sn0/node19/chip7");
  EXPECT_EQ(t.PeerInSupernode(10, 0), 10);
  EXPECT_EQ(t.RanksInSupernode(0).size(), 384u);
  EXPECT_THAT(t.RanksInNode(47), ElementsAre(376, 377, 378, 379, 380, 381, 382, 383));
  EXPECT_EQ(t.host_of_rank(0), "");
  EXPECT_EQ(t.Describe(),
            "1 supernode × 48 nodes × 8 chips = 384 chips; 160 attention + 224 expert ranks");
}

TEST(Topology, AtlasSuperPodLeavesChipsIdle) {
  const Topology t = LoadTopology("atlas950-superpod.yaml");
  EXPECT_EQ(t.num_chips(), 8192);
  EXPECT_EQ(t.num_ranks(), 512);
  EXPECT_EQ(t.rank_position(511).ToString(), "sn0/node63/chip7");
  EXPECT_EQ(t.rank_on_chip(511), 511);
  EXPECT_EQ(t.rank_on_chip(512), std::nullopt);
  EXPECT_EQ(t.chip_position(8191).ToString(), "sn0/node1023/chip7");
}

TEST(Topology, HandBuiltTreeMatchesTheBriefExample) {
  absl::StatusOr<Topology> t = Topology::Build(Tree({{2, 2}}), Roles(1, 3));
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->DescribeRank(3), "rank 3 (expert) on sn0/node1/chip1");
  EXPECT_EQ(t->LinkBetween(0, 1), LinkClass::kIntraNode);
  EXPECT_EQ(t->LinkBetween(1, 2), LinkClass::kIntraSupernode);
}

TEST(Topology, UnevenTreeAndCustomRankChips) {
  // sn0: node0 (2 chips), node1 (1 chip) = chips 0..2; sn1: node0 (1 chip) = chip 3.
  // Ranks interleave supernodes: 0 → chip 0, 1 → chip 3, 2 → chip 1, 3 → chip 2.
  absl::StatusOr<Topology> t = Topology::Build(Tree({{2, 1}, {1}}), Roles(2, 2, {0, 3, 1, 2}));
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->num_supernodes(), 2);
  EXPECT_EQ(t->num_nodes(), 3);
  EXPECT_EQ(t->supernode_size(0), 3);
  EXPECT_EQ(t->supernode_size(1), 1);
  EXPECT_EQ(t->rank_position(3).ToString(), "sn0/node1/chip0");
  EXPECT_EQ(t->rank_position(3).local_index, 2);
  EXPECT_EQ(t->rank_position(1).global_node, 2);
  EXPECT_EQ(t->rank_on_chip(3), 1);
  EXPECT_EQ(t->LinkBetween(0, 2), LinkClass::kIntraNode);
  EXPECT_EQ(t->LinkBetween(0, 3), LinkClass::kIntraSupernode);
  EXPECT_EQ(t->LinkBetween(0, 1), LinkClass::kInterSupernode);
  EXPECT_THAT(t->RanksInSupernode(0), ElementsAre(0, 2, 3));
  EXPECT_THAT(t->RanksInSupernode(1), ElementsAre(1));
  EXPECT_THAT(t->RanksInNode(0), ElementsAre(0, 2));
  EXPECT_THAT(t->RanksInNode(1), ElementsAre(3));
  EXPECT_THAT(t->RanksInNode(2), ElementsAre(1));
  EXPECT_EQ(t->PeerInSupernode(0, 1), 1);             // local index 0 on both
  EXPECT_EQ(t->PeerInSupernode(3, 1), std::nullopt);  // sn1 has no local index 2
  EXPECT_EQ(t->PeerInSupernode(1, 0), 0);
  EXPECT_EQ(t->Describe(), "2 supernodes, 3 nodes, 4 chips; 2 attention + 2 expert ranks");
}

TEST(Topology, RejectsBadRoles) {
  absl::Status too_many = Topology::Build(Tree({{2}, {2}}), Roles(3, 2)).status();
  EXPECT_EQ(too_many.message(),
            "3 attention + 2 expert ranks need 5 chips, but the topology has 4 "
            "(2 supernodes × 1 node × 2 chips = 4 chips)");
  EXPECT_THAT(Topology::Build(Tree({{4}}), Roles(1, 1, {1})).status().message(),
              HasSubstr("rank_chips has 1 entries, expected one per rank (2)"));
  EXPECT_THAT(Topology::Build(Tree({{4}}), Roles(1, 1, {1, 4})).status().message(),
              HasSubstr("rank_chips[1] = 4 is not a chip (0..3)"));
  EXPECT_THAT(Topology::Build(Tree({{4}}), Roles(1, 0)).status().message(),
              HasSubstr("need at least 1 attention and 1 expert rank"));
  EXPECT_FALSE(Topology::Build(Tree({}), Roles(1, 1)).ok());
  EXPECT_FALSE(Topology::Build(Tree({{}}), Roles(1, 1)).ok());
  EXPECT_FALSE(Topology::Build(Tree({{0}}), Roles(1, 1)).ok());
}

TEST(Topology, LinkClassNames) {
  EXPECT_STREQ(LinkClassName(LinkClass::kIntraNode), "intra_node");
  EXPECT_STREQ(LinkClassName(LinkClass::kIntraSupernode), "intra_supernode");
  EXPECT_STREQ(LinkClassName(LinkClass::kInterSupernode), "inter_supernode");
  EXPECT_STREQ(RankRoleName(RankRole::kExpert), "expert");
}

}  // namespace
}  // namespace dsv4
