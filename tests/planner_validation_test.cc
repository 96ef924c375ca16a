// The planner against DeepSeek's published V3/R1 serving figures on H800 (open-infra-index,
// Open Source Week day 6; spec/hardware-and-figures.md): about 73.7k input tokens/s per
// node in prefill (cache hits included) with the EP32 layout, and about 14.8k output
// tokens/s per node in decode with the EP144 layout at an average KV length of 4,989 and
// 20-22 tokens/s per user. Each must be within 15%. The efficiencies come from
// planner/validation/h800-sustained.yaml; planner/VALIDATION.md explains them.
#include <cmath>
#include <iostream>
#include <string>

#include "absl/strings/str_format.h"
#include "core/cluster_config.h"
#include "core/hardware.h"
#include "core/model_config.h"
#include "gtest/gtest.h"
#include "planner/layout_search.h"
#include "planner/workload.h"

namespace dsv4::planner {
namespace {

const std::string kRoot = DSV4_SOURCE_DIR;
constexpr double kPublishedPrefillPerNode = 73.7e3;  // input tokens/s, cache hits included
constexpr double kPublishedDecodePerNode = 14.8e3;   // output tokens/s
constexpr double kCacheHitRate = 0.563;
constexpr double kUserTokensPerS = 21;  // the middle of the published 20-22
constexpr int kGpusPerNode = 8;

class ValidationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<ModelConfig> config = LoadModelConfig(kRoot + "/models/deepseek-v3/config.json");
    ASSERT_TRUE(config.ok()) << config.status();
    config_ = *config;
    absl::StatusOr<ClusterConfig> cluster =
        LoadClusterConfig(kRoot + "/planner/validation/h800-deepseek.yaml");
    ASSERT_TRUE(cluster.ok()) << cluster.status();
    cluster_ = *cluster;
    absl::StatusOr<Workload> workload =
        LoadWorkload(kRoot + "/planner/validation/deepseek-v3-day6.yaml");
    ASSERT_TRUE(workload.ok()) << workload.status();
    workload_ = *workload;
  }

  // Prefill: routed experts EP32, attention and shared expert DP32 on the same GPUs, 32
  // redundant experts (9 routed per GPU), two micro-batches, NVLink-forwarded dispatch
  // (DeepEP normal kernels), 16K tokens per GPU per step as in DeepSeek's profile data.
  double PrefillPerNode(const ClusterConfig& cluster) const {
    UnitLayout layout;
    layout.phase = Phase::kPrefill;
    layout.colocated = true;
    layout.attention_ranks = layout.expert_ranks = 32;
    layout.redundant_experts = 32;
    layout.batch = 16384;
    layout.micro_batches = 2;
    layout.hierarchical = true;
    const PhaseEvaluation e = EvaluateLayout(config_, cluster, workload_, layout, {});
    // Computed tokens/s; the published figure counts cache hits as input too.
    return e.tokens_per_s_per_chip * kGpusPerNode / (1 - kCacheHitRate);
  }

  // Decode: EP144/DP144 co-located, 32 redundant experts (2 routed per GPU), two
  // micro-batches, direct RDMA dispatch (DeepEP low-latency kernels). The batch is the
  // largest whose time per output token gives each user 21 tokens/s.
  PhaseEvaluation Decode(const ClusterConfig& cluster) const {
    PhaseEvaluation best;
    for (int batch = 2; batch <= 256; ++batch) {
      UnitLayout layout;
      layout.phase = Phase::kDecode;
      layout.colocated = true;
      layout.attention_ranks = layout.expert_ranks = 144;
      layout.redundant_experts = 32;
      layout.batch = batch;
      layout.micro_batches = 2;
      const PhaseEvaluation e = EvaluateLayout(config_, cluster, workload_, layout, {});
      if (e.latency > 1 / kUserTokensPerS || e.memory_ratio > 1) break;
      best = e;
    }
    return best;
  }

  ModelConfig config_;
  ClusterConfig cluster_;
  Workload workload_;
};

TEST_F(ValidationTest, TheWorkloadReproducesThePublishedKvLength) {
  double weight = 0, context = 0;
  for (const SequenceChunk& ch : DecodeChunks(workload_, 1)) {
    weight += ch.count;
    context += ch.count * static_cast<double>(ch.context);
  }
  EXPECT_NEAR(context / weight, 4989, 1);
}

TEST_F(ValidationTest, PrefillWithin15PercentOfPublished) {
  const double model = PrefillPerNode(cluster_);
  std::cout << absl::StrFormat(
      "prefill: model %.1fk vs published %.1fk input tokens/s per node (%+.1f%%)\n", model / 1e3,
      kPublishedPrefillPerNode / 1e3, 100 * (model / kPublishedPrefillPerNode - 1));
  EXPECT_NEAR(model / kPublishedPrefillPerNode, 1, 0.15);
}

TEST_F(ValidationTest, DecodeWithin15PercentOfPublished) {
  const PhaseEvaluation e = Decode(cluster_);
  const double model = e.tokens_per_s_per_chip * kGpusPerNode;
  std::cout << absl::StrFormat(
      "decode: model %.1fk vs published %.1fk output tokens/s per node (%+.1f%%) at %d "
      "sequences per GPU, %.1f tokens/s per user, memory %.0f of %.0f GB usable\n",
      model / 1e3, kPublishedDecodePerNode / 1e3, 100 * (model / kPublishedDecodePerNode - 1),
      e.layout.batch, 1 / e.latency, e.attention_memory.used() / 1e9,
      e.attention_memory.usable / 1e9);
  EXPECT_NEAR(model / kPublishedDecodePerNode, 1, 0.15);
  EXPECT_GE(1 / e.latency, 20);
  EXPECT_LE(1 / e.latency, 22);
}

// With the kernel-benchmark efficiencies of cluster-configs/hardware/h800.yaml the model
// is an upper bound on what production sustained: never below the published figures.
TEST_F(ValidationTest, KernelEfficienciesBoundThePublishedFiguresFromAbove) {
  absl::StatusOr<HardwareSpec> kernel =
      LoadHardwareSpec(kRoot + "/cluster-configs/hardware/h800.yaml");
  ASSERT_TRUE(kernel.ok()) << kernel.status();
  ClusterConfig cluster = cluster_;
  cluster.hardware = *kernel;
  const double prefill = PrefillPerNode(cluster);
  const double decode = Decode(cluster).tokens_per_s_per_chip * kGpusPerNode;
  std::cout << absl::StrFormat(
      "kernel efficiencies: prefill %.1fk (x%.2f published), decode %.1fk (x%.2f published)\n",
      prefill / 1e3, prefill / kPublishedPrefillPerNode, decode / 1e3,
      decode / kPublishedDecodePerNode);
  EXPECT_GT(prefill, kPublishedPrefillPerNode);
  EXPECT_GT(decode, kPublishedDecodePerNode);
}

}  // namespace
}  // namespace dsv4::planner
