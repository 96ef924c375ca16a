// The cost terms the planner validation needed (issue "The planner, validated"), each
// against a hand computation: kernel floors (graph and eager), the fixed cost of a
// dispatch/combine call, compute lost to communication kernels, INT8 standing in for FP8,
// a rank per die, the imbalance of attention ranks from context spread, shared-expert
// replicas on expert-side ranks and speculative depth capped by the model's MTP modules.
#include <cmath>
#include <string>
#include <vector>

#include "core/cluster_config.h"
#include "core/cost_model.h"
#include "core/hardware.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "planner/layout_search.h"
#include "planner/workload.h"
#include "tests/test_util.h"

namespace dsv4 {
namespace {

using ::dsv4::testing::PresetModelConfig;
using ::dsv4::testing::ShippedClusterConfig;
using planner::Phase;
using planner::UnitLayout;
using ::testing::HasSubstr;

// A round-number chip: 100 TFLOP/s BF16, 1 TB/s HBM, 100 GB/s links, efficiencies 1.
constexpr char kChip[] = R"(name: round
peak_tflops:
  bf16: {value: 100, source: "s"}
  int8: {value: 400, source: "s"}
hbm:
  capacity_GB: {value: 80, source: "s"}
  bandwidth_TBps: {value: 1, source: "s"}
interconnect:
  scale_up_GBps: {value: 100, source: "s"}
dies_per_chip: {value: 2, source: "s"}
efficiency:
  gemm: {value: 1, source: "s"}
  attention: {value: 1, source: "s"}
  memory_bound: {value: 1, source: "s"}
  all_to_all: {value: 1, source: "s"}
overheads:
  kernel_floor_graph_us: {value: 5, source: "s"}
  kernel_floor_eager_us: {value: 40, source: "s"}
  dispatch_us: {value: 100, source: "s"}
  combine_us: {value: 150, source: "s"}
  compute_lost_to_communication: {value: 0.2, source: "s"}
)";

HardwareSpec Chip() {
  absl::StatusOr<HardwareSpec> hw = ParseHardwareSpec(kChip, "round.yaml");
  EXPECT_TRUE(hw.ok()) << hw.status();
  return hw.ok() ? *hw : HardwareSpec{};
}

std::array<LinkSpec, kNumLinkClasses> Links(double bandwidth, double latency) {
  std::array<LinkSpec, kNumLinkClasses> links{};
  for (LinkSpec& link : links) {
    link.bandwidth = bandwidth;
    link.latency = latency;
  }
  return links;
}

TEST(HardwareOverheadsTest, ParsedInSiUnits) {
  const HardwareSpec hw = Chip();
  EXPECT_DOUBLE_EQ(hw.kernel_floor_graph.value, 5e-6);
  EXPECT_DOUBLE_EQ(hw.kernel_floor_eager.value, 40e-6);
  EXPECT_DOUBLE_EQ(hw.dispatch_overhead.value, 100e-6);
  EXPECT_DOUBLE_EQ(hw.combine_overhead.value, 150e-6);
  EXPECT_DOUBLE_EQ(hw.compute_lost_to_communication.value, 0.2);
  EXPECT_EQ(hw.dies_per_chip.value, 2);
  // No FP8 units: FP8 (and FP4) GEMMs run as INT8.
  EXPECT_DOUBLE_EQ(hw.PeakFlops(ComputeDtype::kFp8), 400e12);
  EXPECT_DOUBLE_EQ(hw.PeakFlops(ComputeDtype::kFp4), 400e12);
  EXPECT_DOUBLE_EQ(hw.PeakFlops(ComputeDtype::kBf16), 100e12);

  auto error = [](const std::string& from, const std::string& to) {
    std::string yaml = kChip;
    yaml.replace(yaml.find(from), from.size(), to);
    absl::StatusOr<HardwareSpec> hw = ParseHardwareSpec(yaml, "round.yaml");
    return hw.ok() ? std::string() : std::string(hw.status().message());
  };
  EXPECT_THAT(error("dies_per_chip: {value: 2", "dies_per_chip: {value: 1.5"),
              HasSubstr("round.yaml:10: dies_per_chip: must be a whole number from 1 to 16"));
  EXPECT_THAT(error("compute_lost_to_communication: {value: 0.2",
                    "compute_lost_to_communication: {value: 1"),
              HasSubstr("overheads.compute_lost_to_communication: must be below 1"));
  EXPECT_THAT(error("dispatch_us", "dispatch_ms"), HasSubstr("overheads.dispatch_ms"));
}

TEST(HardwareOverheadsTest, ShareDividesTheChipByItsRanks) {
  const HardwareSpec hw = Chip();
  const HardwareSpec die = hw.Share(2);
  EXPECT_DOUBLE_EQ(die.PeakFlops(ComputeDtype::kBf16), 50e12);
  EXPECT_DOUBLE_EQ(die.PeakFlops(ComputeDtype::kFp8), 200e12);
  EXPECT_DOUBLE_EQ(die.hbm_capacity.value, 40e9);
  EXPECT_DOUBLE_EQ(die.hbm_bandwidth.value, 0.5e12);
  EXPECT_DOUBLE_EQ(die.scale_up_bandwidth.value, 50e9);
  EXPECT_DOUBLE_EQ(die.dispatch_overhead.value, hw.dispatch_overhead.value);
}

// A component of 3 kernels with 1 MFLOP (10 ns at 100 TFLOP/s): held at 3 × 5 µs in a
// graph, 3 × 40 µs eager; a big one keeps its roofline.
TEST(CostTermsTest, KernelFloorHoldsSmallComponents) {
  const HardwareSpec hw = Chip();
  StepCost small;
  WorkCounters& w = small.at(CostComponent::kAttentionProjections);
  w.flops[static_cast<int>(ComputeDtype::kBf16)] = 1e6;
  w.kernels = 3;
  const auto links = Links(100e9, 1e-6);
  EXPECT_DOUBLE_EQ(RankModelledTime(small, hw, links)
                       .component[static_cast<int>(CostComponent::kAttentionProjections)],
                   15e-6);
  small.eager = true;
  EXPECT_DOUBLE_EQ(RankModelledTime(small, hw, links).attention_compute, 120e-6);
  const StepTime step = ModelledTime({small}, hw, links);
  EXPECT_EQ(step.binding, Bottleneck::kKernelFloor);
  EXPECT_DOUBLE_EQ(step.busy[static_cast<int>(Bottleneck::kKernelFloor)], 120e-6);

  StepCost big = small;
  big.at(CostComponent::kAttentionProjections).flops[static_cast<int>(ComputeDtype::kBf16)] = 1e12;
  EXPECT_DOUBLE_EQ(RankModelledTime(big, hw, links).attention_compute, 1e12 / 100e12);
}

// Two dispatch rounds of 1 MB on 100 GB/s with 2 µs wire latency and a 100 µs call cost:
// 10 µs + 2 × 102 µs. The combine pays its own call cost.
TEST(CostTermsTest, EachCollectiveCallPaysItsFixedCost) {
  const HardwareSpec hw = Chip();
  StepCost cost;
  cost.dispatch.bytes[0] = 1e6;
  cost.dispatch.exchanges = 2;
  cost.combine.bytes[0] = 2e6;
  cost.combine.exchanges = 2;
  const RankTime t = RankModelledTime(cost, hw, Links(100e9, 2e-6));
  EXPECT_NEAR(t.dispatch, 10e-6 + 2 * 102e-6, 1e-12);
  EXPECT_NEAR(t.combine, 20e-6 + 2 * 152e-6, 1e-12);
  EXPECT_NEAR(t.latency, 2 * 102e-6 + 2 * 152e-6, 1e-12);
}

// With two micro-batches overlapping an all-to-all, the communication kernels take 20% of
// the compute units: 1 ms of GEMM takes 1.25 ms. One micro-batch overlaps nothing.
TEST(CostTermsTest, OverlappedCommunicationTakesItsShareOfCompute) {
  const HardwareSpec hw = Chip();
  StepCost cost;
  cost.at(CostComponent::kSharedExpert).flops[static_cast<int>(ComputeDtype::kBf16)] = 1e11;
  cost.dispatch.bytes[0] = 1e3;
  cost.dispatch.exchanges = 1;
  const auto links = Links(100e9, 0);
  EXPECT_DOUBLE_EQ(RankModelledTime(cost, hw, links).attention_compute, 1e-3);
  cost.micro_batches = 2;
  EXPECT_DOUBLE_EQ(RankModelledTime(cost, hw, links).attention_compute, 1e-3 / 0.8);
}

// Contexts of one (input 1000, output 1000) pair sit at 1000 + q·1000 for q in {1/8, 3/8,
// 5/8, 7/8}: mean 1500, variance 1000² · 0.078125. The busiest of 32 ranks of 64 sequences
// is 1 + σ·√(2 ln 32) / (1500 · 8) over the mean.
TEST(CostTermsTest, AttentionRankImbalanceFromContextSpread) {
  planner::Workload workload;
  workload.input.buckets = {{1000, 1.0}};
  workload.output.buckets = {{1000, 1.0}};
  UnitLayout layout;
  layout.phase = Phase::kDecode;
  layout.attention_ranks = 32;
  layout.batch = 64;
  const double sigma = 1000 * std::sqrt(0.078125);
  EXPECT_NEAR(planner::AttentionRankImbalance(workload, layout),
              1 + sigma * std::sqrt(2 * std::log(32.0)) / (1500.0 * 8), 1e-12);
  layout.attention_ranks = 1;
  EXPECT_EQ(planner::AttentionRankImbalance(workload, layout), 1);
  layout.attention_ranks = 32;
  layout.phase = Phase::kPrefill;
  EXPECT_EQ(planner::AttentionRankImbalance(workload, layout), 1);
}

struct Fixture {
  ModelConfig config = PresetModelConfig("deepseek-v4-flash");
  ClusterConfig cluster = ShippedClusterConfig("cluster-configs/atlas950-superpod.yaml");
  planner::Workload workload = [] {
    absl::StatusOr<planner::Workload> w =
        planner::LoadWorkload(std::string(DSV4_SOURCE_DIR) + "/workloads/chat.yaml");
    EXPECT_TRUE(w.ok()) << w.status();
    return *w;
  }();
};

UnitLayout Afd(int attention, int experts) {
  UnitLayout layout;
  layout.phase = Phase::kDecode;
  layout.attention_ranks = attention;
  layout.expert_ranks = experts;
  layout.batch = 32;
  return layout;
}

// The shared expert leaves the attention ranks for S replicas, each running it for A/S
// attention ranks' tokens and reading its weights once; the replica gets one more copy of
// every token (the routed copies' bytes per copy).
TEST(CostTermsTest, SharedExpertReplicasTakeTheSharedExpert) {
  Fixture f;
  const std::vector<SequenceChunk> chunks = planner::DecodeChunks(f.workload, 32);
  UnitLayout layout = Afd(16, 32);
  const planner::UnitStep plain =
      planner::BuildUnitStep(f.config, f.cluster, f.workload, layout, chunks, {});
  layout.shared_expert_ranks = 4;
  const planner::UnitStep step =
      planner::BuildUnitStep(f.config, f.cluster, f.workload, layout, chunks, {});
  ASSERT_EQ(plain.ranks.size(), 2u);
  ASSERT_EQ(step.ranks.size(), 3u);
  const WorkCounters& before = plain.ranks[0].at(CostComponent::kSharedExpert);
  EXPECT_EQ(step.ranks[0].at(CostComponent::kSharedExpert).total_flops(), 0);
  const StepCost& replica = step.ranks[2];
  EXPECT_TRUE(replica.expert_rank);
  EXPECT_DOUBLE_EQ(replica.at(CostComponent::kSharedExpert).total_flops(),
                   before.total_flops() * 16 / 4);
  EXPECT_DOUBLE_EQ(replica.at(CostComponent::kSharedExpert).weight_bytes, before.weight_bytes);
  EXPECT_DOUBLE_EQ(replica.at(CostComponent::kSharedExpert).kernels, before.kernels);
  EXPECT_GT(before.kernels, 0);
  // Bytes: the attention rank sends one more copy of each token per MoE layer; the routed
  // expert ranks see the same traffic as before.
  double tokens = 0;
  for (const SequenceChunk& ch : chunks) tokens += ch.count * static_cast<double>(ch.new_tokens);
  int moe_layers = 0;
  for (int l = 0; l < f.config.num_hidden_layers; ++l) moe_layers += IsMoeLayer(f.config, l);
  double plain_sent = 0, sent = 0, expert_plain = 0, expert = 0;
  for (int c = 0; c < kNumLinkClasses; ++c) {
    plain_sent += plain.ranks[0].dispatch.bytes[c];
    sent += step.ranks[0].dispatch.bytes[c];
    expert_plain += plain.ranks[1].dispatch.bytes[c];
    expert += step.ranks[1].dispatch.bytes[c];
  }
  EXPECT_NEAR(sent - plain_sent, moe_layers * DispatchBytesPerCopy(f.config) * tokens, 1e-9 * sent);
  EXPECT_DOUBLE_EQ(expert, expert_plain);
  EXPECT_EQ(layout.chips(), 16 + 32 + 4);
}

// One rank per die of a two-die package is the same rank as a whole chip of half the size
// (a unit small enough to stay in one node either way, so the link classes match).
TEST(CostTermsTest, ARankPerDieIsHalfAChip) {
  Fixture f;
  f.cluster.hardware.dies_per_chip.value = 2;
  UnitLayout layout = Afd(2, 2);
  layout.ranks_per_chip = 2;
  const planner::PhaseEvaluation per_die =
      planner::EvaluateLayout(f.config, f.cluster, f.workload, layout, {});
  ClusterConfig halved = f.cluster;
  halved.hardware = f.cluster.hardware.Share(2);
  for (LinkSpec& link : halved.topology.links) link.bandwidth /= 2;
  layout.ranks_per_chip = 1;
  const planner::PhaseEvaluation whole =
      planner::EvaluateLayout(f.config, halved, f.workload, layout, {});
  EXPECT_NEAR(per_die.step.total, whole.step.total, 1e-9 * whole.step.total);
  EXPECT_DOUBLE_EQ(per_die.tokens_per_s, whole.tokens_per_s);
  EXPECT_DOUBLE_EQ(per_die.tokens_per_s_per_chip, 2 * whole.tokens_per_s_per_chip);
  EXPECT_DOUBLE_EQ(per_die.attention_memory.capacity, f.cluster.hardware.hbm_capacity.value / 2);
}

// V4 has one MTP module: five drafts requested plan as one.
TEST(CostTermsTest, SpeculativeDepthIsCappedByTheMtpModules) {
  Fixture f;
  ASSERT_EQ(f.config.num_nextn_predict_layers, 1);
  const UnitLayout layout = Afd(8, 16);
  planner::Workload five = f.workload, one = f.workload, none = f.workload;
  five.speculative = {5, 0.8};
  one.speculative = {1, 0.8};
  none.speculative = {0, 0.8};
  auto rate = [&](const planner::Workload& w) {
    return planner::EvaluateLayout(f.config, f.cluster, w, layout, {}).tokens_per_s;
  };
  EXPECT_DOUBLE_EQ(rate(five), rate(one));
  EXPECT_NE(rate(one), rate(none));
}

}  // namespace
}  // namespace dsv4
