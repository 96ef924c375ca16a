#include "engine/placement.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace dsv4 {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

using Load = std::vector<std::vector<double>>;

ExpertPlacement ComputeOrDie(const Load& load, const PlacementOptions& options) {
  auto placement = ExpertPlacement::Compute(load, options);
  EXPECT_TRUE(placement.ok()) << placement.status();
  return *std::move(placement);
}

std::vector<int> SlotsOf(const ExpertPlacement& p, int layer) {
  std::vector<int> out;
  for (int s = 0; s < p.num_slots(); ++s) out.push_back(p.LogicalOf(layer, s));
  return out;
}

std::vector<int> Replicas(const ExpertPlacement& p, int layer, int expert) {
  auto span = p.ReplicasOf(layer, expert);
  return std::vector<int>(span.begin(), span.end());
}

// Per-rank load when each expert's load splits evenly over its replicas, computed from the
// physical → logical map alone.
std::vector<double> RankLoads(const ExpertPlacement& p, int layer, const std::vector<double>& w) {
  std::vector<int> count(p.num_experts(), 0);
  for (int s = 0; s < p.num_slots(); ++s) ++count[p.LogicalOf(layer, s)];
  std::vector<double> rank(p.num_ranks(), 0.0);
  for (int s = 0; s < p.num_slots(); ++s) {
    const int e = p.LogicalOf(layer, s);
    rank[s / p.slots_per_rank()] += w[e] / count[e];
  }
  return rank;
}

double MaxOverMean(const std::vector<double>& v) {
  double total = 0;
  for (double x : v) total += x;
  return *std::max_element(v.begin(), v.end()) * v.size() / total;
}

// Worked by hand (global policy, 4 experts, 6 slots, 3 ranks of 2):
// layer 0, load [6 2 1 1]: extra slots go to e0 (6/1 > 2), then e0 again (6/2 > 2), so e0
// has 3 replicas of load 2. Greedy packing, heaviest first, lightest rank, on equal ranks one
// without that expert: e0→r0, e1→r1, e0'→r2, e0''→r1 (r0 and r2 already hold e0), e2→r0,
// e3→r2. Ranks {e0 e2} {e0 e1} {e0 e3}, loads 3 4 3: max/mean 4 / (10/3) = 1.2. Plain
// placement {e0 e1} {e2} {e3} has loads 8 1 1: 2.4.
// layer 1, load [1 1 2 6]: e3 gets 3 replicas of 2; e2→r0, e3→r1, e3'→r2, e3''→r0, e0→r1,
// e1→r2: ranks {e2 e3} {e0 e3} {e1 e3}, loads 4 3 3: 1.2; plain loads 2 2 6: 1.8.
const Load kGlobalLoad = {{6, 2, 1, 1}, {1, 1, 2, 6}};
PlacementOptions GlobalOptions() {
  return {.policy = PlacementPolicy::kGlobal,
          .num_slots = 6,
          .num_groups = 1,
          .num_nodes = 1,
          .num_ranks = 3};
}

TEST(PlacementTest, GlobalPolicyMatchesHandWorkedCase) {
  const ExpertPlacement p = ComputeOrDie(kGlobalLoad, GlobalOptions());
  EXPECT_EQ(p.policy(), PlacementPolicy::kGlobal);
  EXPECT_EQ(p.slots_per_rank(), 2);
  EXPECT_THAT(SlotsOf(p, 0), ElementsAre(0, 2, 0, 1, 0, 3));
  EXPECT_THAT(Replicas(p, 0, 0), ElementsAre(0, 2, 4));
  EXPECT_THAT(Replicas(p, 0, 1), ElementsAre(3));
  EXPECT_THAT(Replicas(p, 0, 2), ElementsAre(1));
  EXPECT_THAT(Replicas(p, 0, 3), ElementsAre(5));
  EXPECT_DOUBLE_EQ(p.Imbalance(0), 1.2);
  EXPECT_DOUBLE_EQ(p.BaselineImbalance(0), 2.4);

  EXPECT_THAT(SlotsOf(p, 1), ElementsAre(2, 3, 0, 3, 1, 3));
  EXPECT_THAT(Replicas(p, 1, 3), ElementsAre(1, 3, 5));
  EXPECT_EQ(p.ReplicaCount(1, 3), 3);
  EXPECT_EQ(p.ReplicaCount(1, 0), 1);
  EXPECT_DOUBLE_EQ(p.Imbalance(1), 1.2);
  EXPECT_DOUBLE_EQ(p.BaselineImbalance(1), 1.8);

  EXPECT_EQ(p.RankOfSlot(4), 2);
  EXPECT_TRUE(p.RankHolds(0, 2, 0));
  EXPECT_TRUE(p.RankHolds(0, 2, 3));
  EXPECT_FALSE(p.RankHolds(0, 2, 1));
}

// Worked by hand (hierarchical, 8 experts in 4 groups of 2, 2 nodes, 4 ranks, 12 slots):
// load [6 6 | 4 4 | 3 3 | 1 1], group loads 12 8 6 2. Groups onto nodes (2 each):
// g0→n0, g1→n1, g2→n1 (8 < 12), g3→n0: both nodes carry 14.
// Node 0 holds e0 e1 e6 e7 (loads 6 6 1 1) in 6 slots: e0 and e1 get a second replica
// (3 each). Ranks 0-1: e0→r0, e1→r1, e0'→r1 (r0 holds e0), e1'→r0, e6→r0, e7→r1:
// {e0 e1 e6} {e0 e1 e7}, 7 each.
// Node 1 holds e2 e3 e4 e5 (4 4 3 3): e2 and e3 get a second replica (2 each). Ranks 2-3:
// e4→r2, e5→r3, e2→r2, e3→r3, e2'→r3 (r2 holds e2), e3'→r2: {e2 e3 e4} {e2 e3 e5}, 7 each.
// Plain placement: {e0 e1} {e2 e3} {e4 e5} {e6 e7} = 12 8 6 2, max/mean 12/7.
const Load kHierLoad = {{6, 6, 4, 4, 3, 3, 1, 1}};
PlacementOptions HierOptions() {
  return {.policy = PlacementPolicy::kHierarchical,
          .num_slots = 12,
          .num_groups = 4,
          .num_nodes = 2,
          .num_ranks = 4};
}

TEST(PlacementTest, HierarchicalPolicyMatchesHandWorkedCase) {
  const ExpertPlacement p = ComputeOrDie(kHierLoad, HierOptions());
  EXPECT_EQ(p.policy(), PlacementPolicy::kHierarchical);
  EXPECT_EQ(p.num_nodes(), 2);
  EXPECT_THAT(SlotsOf(p, 0), ElementsAre(0, 1, 6, 0, 1, 7, 2, 3, 4, 2, 3, 5));
  EXPECT_THAT(Replicas(p, 0, 0), ElementsAre(0, 3));
  EXPECT_THAT(Replicas(p, 0, 3), ElementsAre(7, 10));
  EXPECT_THAT(Replicas(p, 0, 7), ElementsAre(5));
  EXPECT_DOUBLE_EQ(p.Imbalance(0), 1.0);
  EXPECT_DOUBLE_EQ(p.BaselineImbalance(0), 12.0 / 7.0);
}

TEST(PlacementTest, HierarchicalFallsBackToGlobalWhenGroupsDoNotSplitOverNodes) {
  // One group (as in V4, n_group = 1) cannot be split over 2 nodes: EPLB uses global.
  PlacementOptions options = GlobalOptions();
  options.policy = PlacementPolicy::kHierarchical;
  options.num_nodes = 2;
  const ExpertPlacement p = ComputeOrDie(kGlobalLoad, options);
  EXPECT_EQ(p.policy(), PlacementPolicy::kGlobal);
  EXPECT_EQ(p.num_nodes(), 1);
  EXPECT_THAT(SlotsOf(p, 0), ElementsAre(0, 2, 0, 1, 0, 3));
}

TEST(PlacementTest, UniformLoadKeepsContiguousPlacement) {
  for (PlacementPolicy policy : {PlacementPolicy::kHierarchical, PlacementPolicy::kGlobal}) {
    const PlacementOptions options = {
        .policy = policy, .num_slots = 8, .num_groups = 4, .num_nodes = 2, .num_ranks = 4};
    auto uniform = ExpertPlacement::Uniform(3, 8, options);
    ASSERT_TRUE(uniform.ok()) << uniform.status();
    const ExpertPlacement zero = ComputeOrDie(Load(1, std::vector<double>(8, 0.0)), options);
    for (int l = 0; l < 3; ++l) {
      EXPECT_THAT(SlotsOf(*uniform, l), ElementsAre(0, 1, 2, 3, 4, 5, 6, 7));
      EXPECT_DOUBLE_EQ(uniform->Imbalance(l), 1.0);
    }
    EXPECT_THAT(SlotsOf(zero, 0), ElementsAre(0, 1, 2, 3, 4, 5, 6, 7));
    EXPECT_DOUBLE_EQ(zero.Imbalance(0), 1.0);
  }
}

// Uniform load with redundant slots, by hand (global, 6 experts, 8 slots, 4 ranks of 2):
// e0 and e1 get a second replica (load 1/2 each); e2..e5 (load 1) go one per rank, then the
// halves e0 e1 e0' e1' one per rank: {e0 e2} {e1 e3} {e0 e4} {e1 e5}, 1.5 each, max/mean 1.
TEST(PlacementTest, UniformLoadWithRedundancyIsBalanced) {
  const PlacementOptions options = {.policy = PlacementPolicy::kGlobal,
                                    .num_slots = 8,
                                    .num_groups = 1,
                                    .num_nodes = 1,
                                    .num_ranks = 4};
  auto p = ExpertPlacement::Uniform(1, 6, options);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_THAT(SlotsOf(*p, 0), ElementsAre(0, 2, 1, 3, 0, 4, 1, 5));
  EXPECT_DOUBLE_EQ(p->Imbalance(0), 1.0);
}

TEST(PlacementTest, ReplicaChooserSpreadsTokensRoundRobin) {
  const ExpertPlacement p = ComputeOrDie(kGlobalLoad, GlobalOptions());
  // Layer 0: e0 lives in slots 0, 2, 4; e1 only in slot 3.
  std::vector<int> chosen;
  for (int t = 0; t < 9; ++t) chosen.push_back(p.PhysicalFor(0, 0, t));
  EXPECT_THAT(chosen, ElementsAre(0, 2, 4, 0, 2, 4, 0, 2, 4));
  EXPECT_EQ(p.PhysicalFor(0, 0, -1), 4);
  EXPECT_EQ(p.PhysicalFor(0, 1, 12345), 3);

  // Occurrences of e0 at positions 0 2 3 5 7 take its replicas in turn.
  const std::vector<int32_t> ids = {0, 1, 0, 0, 2, 0, 3, 0};
  EXPECT_THAT(p.AssignReplicas(0, ids, 0), ElementsAre(0, 3, 2, 4, 1, 0, 5, 2));
  EXPECT_THAT(p.AssignReplicas(0, ids, 1), ElementsAre(2, 3, 4, 0, 1, 2, 5, 4));

  // 300 tokens of e0: 100 per replica.
  std::map<int, int> per_slot;
  for (int32_t s : p.AssignReplicas(0, std::vector<int32_t>(300, 0), 7)) ++per_slot[s];
  EXPECT_THAT(per_slot, ElementsAre(std::pair(0, 100), std::pair(2, 100), std::pair(4, 100)));
}

// Skewed hand-made loads (32 experts, 8 groups of 4): a heavy head, and heavy experts
// clustered in a few groups so that the plain placement is badly unbalanced.
Load SkewedLoad() {
  Load load;
  load.push_back({900, 10, 10, 10, 500, 20, 20, 20, 300, 30, 30, 30, 200, 5,  5,  5,
                  50,  50, 50, 50, 40,  40, 40, 40, 1,   2,  3,  4,  60,  70, 80, 90});
  load.push_back({1,  2,  3,  4,  5,  6,  7,  8,  9,  10, 11, 12, 13, 14, 15, 16,
                  17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 320});
  load.push_back({0, 0, 0, 0, 100, 100, 100, 100, 0, 0, 0, 0, 7, 0, 0, 0,
                  0, 0, 0, 0, 0,   0,   0,   0,   0, 0, 0, 0, 0, 0, 0, 0});
  return load;
}

TEST(PlacementTest, InvariantsAndImprovementOnSkewedLoad) {
  const Load load = SkewedLoad();
  for (PlacementPolicy policy : {PlacementPolicy::kHierarchical, PlacementPolicy::kGlobal}) {
    const PlacementOptions options = {
        .policy = policy, .num_slots = 48, .num_groups = 8, .num_nodes = 2, .num_ranks = 8};
    const ExpertPlacement p = ComputeOrDie(load, options);
    EXPECT_EQ(p.policy(), policy);
    for (int l = 0; l < p.num_layers(); ++l) {
      SCOPED_TRACE(testing::Message() << "policy " << static_cast<int>(policy) << " layer " << l);
      int total = 0;
      for (int e = 0; e < p.num_experts(); ++e) {
        const std::vector<int> replicas = Replicas(p, l, e);
        ASSERT_GE(replicas.size(), 1u);
        EXPECT_TRUE(std::is_sorted(replicas.begin(), replicas.end()));
        for (int s : replicas) EXPECT_EQ(p.LogicalOf(l, s), e);  // logical → physical → logical
        total += p.ReplicaCount(l, e);
      }
      EXPECT_EQ(total, 48);
      for (int s = 0; s < p.num_slots(); ++s) {  // physical → logical → physical
        EXPECT_THAT(Replicas(p, l, p.LogicalOf(l, s)), testing::Contains(s));
      }
      const std::vector<double> ranks = RankLoads(p, l, load[l]);
      EXPECT_NEAR(p.Imbalance(l), MaxOverMean(ranks), 1e-12);
      EXPECT_LT(p.Imbalance(l), p.BaselineImbalance(l));

      // Global: a heavier expert never has fewer replicas. Hierarchical: each group, and so
      // every replica of its experts, stays on one node (4 ranks of 6 slots per node).
      for (int a = 0; a < p.num_experts(); ++a) {
        for (int b = 0; b < p.num_experts(); ++b) {
          if (policy == PlacementPolicy::kGlobal && load[l][a] > load[l][b]) {
            EXPECT_GE(p.ReplicaCount(l, a), p.ReplicaCount(l, b)) << a << " vs " << b;
          }
        }
      }
      if (policy == PlacementPolicy::kHierarchical) {
        for (int g = 0; g < 8; ++g) {
          std::set<int> nodes;
          for (int e = 4 * g; e < 4 * g + 4; ++e) {
            for (int s : Replicas(p, l, e)) nodes.insert(p.RankOfSlot(s) / 4);
          }
          EXPECT_EQ(nodes.size(), 1u) << "group " << g;
        }
      }
    }
  }
}

TEST(PlacementTest, HeavyExpertsGetMoreReplicas) {
  // Global, 4 experts in 8 slots on 2 ranks, load [12 4 2 2]: the 4 extra slots go, by
  // highest load per replica, to e0 (12), e0 (6), e0 (12/3 ties e1's 4, lower index wins),
  // e1 (4 > 12/4): e0 has 4 replicas, e1 2, e2 and e3 one each.
  const PlacementOptions options = {.policy = PlacementPolicy::kGlobal,
                                    .num_slots = 8,
                                    .num_groups = 1,
                                    .num_nodes = 1,
                                    .num_ranks = 2};
  const ExpertPlacement p = ComputeOrDie({{12, 4, 2, 2}}, options);
  EXPECT_EQ(p.ReplicaCount(0, 0), 4);
  EXPECT_EQ(p.ReplicaCount(0, 1), 2);
  EXPECT_EQ(p.ReplicaCount(0, 2), 1);
  EXPECT_EQ(p.ReplicaCount(0, 3), 1);
}

TEST(PlacementTest, SummaryReportsPolicyAndLoadRatios) {
  const std::string summary = ComputeOrDie(kHierLoad, HierOptions()).Summary();
  EXPECT_THAT(summary, HasSubstr("hierarchical policy"));
  EXPECT_THAT(summary, HasSubstr("8 experts in 12 slots on 4 expert ranks (3 per rank, 2 nodes)"));
  EXPECT_THAT(summary, HasSubstr("layer 0: 4 experts replicated (max 2 replicas)"));
  EXPECT_THAT(summary, HasSubstr("1.714 -> 1.000"));
}

std::string ErrorOf(const Load& load, const PlacementOptions& options) {
  auto p = ExpertPlacement::Compute(load, options);
  EXPECT_FALSE(p.ok());
  return p.ok() ? "" : std::string(p.status().message());
}

TEST(PlacementTest, RejectsBadInputsNamingTheValue) {
  const Load four = {{1, 2, 3, 4}};
  PlacementOptions o = GlobalOptions();  // 6 slots, 3 ranks
  EXPECT_THAT(ErrorOf({}, o), HasSubstr("load: expected at least one layer"));
  EXPECT_THAT(ErrorOf({{}}, o), HasSubstr("load[0]: expected at least one expert"));
  EXPECT_THAT(ErrorOf({{1, 2, 3, 4}, {1, 2}}, o),
              HasSubstr("load[1]: expected 4 experts (as in layer 0), got 2"));
  EXPECT_THAT(ErrorOf({{1, -2, 3, 4}}, o), HasSubstr("load[0][1]: expected a finite value >= 0"));
  EXPECT_THAT(ErrorOf({{1, 2, NAN, 4}}, o), HasSubstr("load[0][2]"));

  o.num_ranks = 0;
  EXPECT_THAT(ErrorOf(four, o), HasSubstr("num_ranks: expected at least 1, got 0"));
  o = GlobalOptions();
  o.num_slots = 3;
  EXPECT_THAT(ErrorOf(four, o), HasSubstr("num_slots: expected a multiple of num_ranks (3) that "
                                          "is >= the number of experts (4), got 3"));
  o.num_slots = 7;
  EXPECT_THAT(ErrorOf(four, o), HasSubstr("got 7"));
  o = GlobalOptions();
  o.num_groups = 3;
  EXPECT_THAT(ErrorOf(four, o),
              HasSubstr("num_groups: expected a divisor of the number of experts (4), got 3"));
  o = GlobalOptions();
  o.num_nodes = 0;
  EXPECT_THAT(ErrorOf(four, o), HasSubstr("num_nodes: expected at least 1, got 0"));
  o = {.policy = PlacementPolicy::kHierarchical,
       .num_slots = 6,
       .num_groups = 2,
       .num_nodes = 2,
       .num_ranks = 3};
  EXPECT_THAT(ErrorOf(four, o), HasSubstr("num_nodes: the hierarchical policy needs a divisor "
                                          "of num_ranks (3), got 2"));
  EXPECT_FALSE(ExpertPlacement::Uniform(0, 4, GlobalOptions()).ok());
}

}  // namespace
}  // namespace dsv4
