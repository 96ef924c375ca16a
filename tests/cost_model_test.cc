// The cost model (core/cost_model.h): weight inventory against the checkpoint layout,
// closed-form attention sums against token-by-token sums, routing probabilities, link
// accounting and the step-time formula; and the engine-style per-layer accumulation
// against the planner's per-step number for a small layout.
#include "core/cost_model.h"

#include <array>
#include <cmath>
#include <string>
#include <vector>

#include "core/checkpoint_layout.h"
#include "core/cluster_config.h"
#include "core/model_config.h"
#include "gtest/gtest.h"
#include "planner/layout_search.h"
#include "planner/workload.h"
#include "tests/test_util.h"

namespace dsv4 {
namespace {

const std::string kRoot = DSV4_SOURCE_DIR;
using ::dsv4::testing::PresetModelConfig;
using ::dsv4::testing::ShippedClusterConfig;

double Rel(double a, double b) { return std::abs(a - b) / std::max(std::abs(b), 1e-30); }

// Weights stay in memory as released (wo_a included, which the official converter would
// widen to BF16): the cost model must price exactly the checkpoint's bytes.
double CheckpointBytes(const ModelConfig& config) {
  double bytes = 0;
  for (const TensorSpec& t : ExpectedTensors(config)) bytes += static_cast<double>(t.nbytes());
  return bytes;
}

TEST(CostModelTest, WeightInventoryMatchesTheCheckpointLayout) {
  for (const char* name : {"v4-tiny", "v4-mini", "deepseek-v4-flash", "deepseek-v4-pro"}) {
    SCOPED_TRACE(name);
    const ModelConfig config = PresetModelConfig(name);
    const int layers = config.num_hidden_layers + config.num_nextn_predict_layers;
    WeightBytesByFormat total = EdgeWeights(config);
    for (int layer = 0; layer < layers; ++layer) {
      total += AttentionLayerWeights(config, layer);
      WeightBytesByFormat experts = RoutedExpertWeights(config);
      experts *= config.n_routed_experts;
      total += experts;
    }
    EXPECT_LT(Rel(total.total(), CheckpointBytes(config)), 1e-12);
  }
}

// Per layer and per storage format: the checkpoint's tensors of each layer (scales counted
// with the tensor they scale; routed experts and Engram tables apart) against the cost
// model's attention-rank weights, routed experts × the layer's expert count and Engram
// table. V4.1: no hc_head or tid2eid, CSA2 tensors by role, the released Engram (FP8 table
// + E8M0 per 32 on the memory nodes; fused FP8 wkv and BF16 q/k weights on the attention
// rank), DSpark stages with their own expert bank.
TEST(CostModelTest, WeightsByLayerAndFormatMatchTheCheckpointLayout) {
  for (const char* name :
       {"v41-tiny", "v41-mini", "deepseek-v4.1-flash", "v4-mini", "deepseek-v4-flash"}) {
    SCOPED_TRACE(name);
    const ModelConfig config = PresetModelConfig(name);
    const int layers = config.num_hidden_layers + config.num_nextn_predict_layers;
    // [layer + 1][kind][format]: kind 0 = attention rank, 1 = routed experts, 2 = Engram table.
    std::vector<std::array<std::array<double, kNumStorageFormats>, 3>> bytes(layers + 1);
    StorageFormat last = StorageFormat::kBf16;
    for (const TensorSpec& t : ExpectedTensors(config)) {
      StorageFormat format = last;
      switch (t.dtype) {
        case DType::kF32:
          format = StorageFormat::kFp32;
          break;
        case DType::kBF16:
          format = StorageFormat::kBf16;
          break;
        case DType::kF8E4M3:
          format = StorageFormat::kFp8;
          break;
        case DType::kI8:
          format = StorageFormat::kFp4;
          break;
        case DType::kI64:
          format = StorageFormat::kInt;
          break;
        default:  // E8M0 scales go with the tensor they follow
          break;
      }
      last = format;
      const bool table =
          t.role == TensorRole::kEngramTable ||
          (t.role == TensorRole::kScale && t.name.find(".engram.embed.") != std::string::npos);
      const int kind = table ? 2 : t.expert >= 0 ? 1 : 0;
      bytes[t.layer + 1][kind][static_cast<int>(format)] += static_cast<double>(t.nbytes());
    }
    for (int layer = -1; layer < layers; ++layer) {
      SCOPED_TRACE(layer);
      WeightBytesByFormat attention, experts, table;
      if (layer < 0) {
        attention = EdgeWeights(config);
      } else {
        attention = AttentionLayerWeights(config, layer);
        experts = RoutedExpertWeights(config);
        experts *= config.routed_experts(layer);
        table = EngramTableWeights(config, layer);
      }
      for (int f = 0; f < kNumStorageFormats; ++f) {
        SCOPED_TRACE(StorageFormatName(static_cast<StorageFormat>(f)));
        EXPECT_DOUBLE_EQ(attention.bytes[f], bytes[layer + 1][0][f]);
        EXPECT_DOUBLE_EQ(experts.bytes[f], bytes[layer + 1][1][f]);
        EXPECT_DOUBLE_EQ(table.bytes[f], bytes[layer + 1][2][f]);
      }
    }
  }
}

// V4.1-Flash by hand from its config (d = 5120, D = 512, Q = 1280, HI = 32, DI = 128, FP8
// blocks 32, hc_mult 4, Engram 24 columns of 256, 384006168 + 384016682 rows).
TEST(CostModelTest, V41FlashReleasedWeights) {
  const ModelConfig c = PresetModelConfig("deepseek-v4.1-flash");
  auto diff = [&](int a, int b) {
    return AttentionLayerWeights(c, a).total() - AttentionLayerWeights(c, b).total();
  };
  const double wq_b_index = 4096.0 * 1280 + (4096 / 32) * (1280 / 32);  // FP8 + E8M0 32×32
  const double weights_proj = 2.0 * 32 * 5120;
  const double wk = 2.0 * (128 * 512 + 128);  // indexer.wk + k_norm, BF16
  const double compressor_wkv = 2.0 * 512 * 5120;
  const double compressor_norm = 2.0 * 512;
  // A ratio-2 kv source (layer 2) over a reuse layer (3): wkv, wgate, norm, wk, k_norm, and
  // the index-source query half.
  EXPECT_DOUBLE_EQ(diff(2, 3),
                   2 * compressor_wkv + compressor_norm + wk + wq_b_index + weights_proj);
  // The ratio-1 kv source (20) has no gate; a reindex layer (24) only the query half.
  EXPECT_DOUBLE_EQ(diff(20, 21), compressor_wkv + compressor_norm + wk + wq_b_index + weights_proj);
  EXPECT_DOUBLE_EQ(diff(24, 25), wq_b_index + weights_proj);
  // Engram layer 1 over layer 0: wkv FP8 [25600, 6144] + scales [800, 192], q/k [4, 5120].
  EXPECT_DOUBLE_EQ(diff(1, 0), 25600.0 * 6144 + 800 * 192 + 2 * 2 * 4 * 5120);
  // No hc_head: the edges are the BF16 embedding, head and norm only.
  const WeightBytesByFormat edges = EdgeWeights(c);
  EXPECT_DOUBLE_EQ(edges.total(), 2.0 * (2 * 129280.0 * 5120 + 5120));
  EXPECT_DOUBLE_EQ(edges.bytes[static_cast<int>(StorageFormat::kFp32)], 0);
  // No tid2eid anywhere.
  for (int layer = 0; layer < c.num_hidden_layers; ++layer) {
    EXPECT_EQ(AttentionLayerWeights(c, layer).bytes[static_cast<int>(StorageFormat::kInt)], 0);
  }
  // The tables as released: 264 B a row (256 FP8 + 8 E8M0), 202.76 GB in all.
  EXPECT_DOUBLE_EQ(EngramRecordBytes(c), 264);
  EXPECT_DOUBLE_EQ(EngramTableWeights(c, 1).total(), 384006168.0 * 264);
  EXPECT_DOUBLE_EQ(EngramTableWeights(c, 14).total(), 384016682.0 * 264);
  EXPECT_DOUBLE_EQ(EngramTableWeights(c, 2).total(), 0);
  EXPECT_DOUBLE_EQ(EngramTableBytes(c), 202758032400.0);
}

TEST(CostModelTest, V41FlashEngramLookupsAndMemoryNodes) {
  const ModelConfig c = PresetModelConfig("deepseek-v4.1-flash");
  // 3 orders × 8 heads rows of 264 B per token per Engram layer.
  EXPECT_DOUBLE_EQ(EngramBytesPerToken(c), 24 * 264);
  EXPECT_DOUBLE_EQ(EngramLookupBytesPerSecond(c, 1000), 2 * 24 * 264 * 1000.0);
  EXPECT_DOUBLE_EQ(EngramRamPerMemoryNode(c, 1, 1), 202758032400.0);
  EXPECT_DOUBLE_EQ(EngramRamPerMemoryNode(c, 2, 1), 101379016200.0);
  EXPECT_DOUBLE_EQ(EngramRamPerMemoryNode(c, 3, 2), 202758032400.0 * 2 / 3);
  // One decode token through Engram layer 1: its rows fetched, the FP8 wkv GEMM.
  const StepCost layer1 = AttentionLayerCost(c, 1, {SequenceChunk{1, 999, 1, 1}}, CostOptions{});
  EXPECT_DOUBLE_EQ(layer1.engram_bytes, 24 * 264);
  EXPECT_EQ(layer1.engram_fetches, 1);
  EXPECT_DOUBLE_EQ(layer1.at(CostComponent::kEngram).flops[static_cast<int>(ComputeDtype::kFp8)],
                   2.0 * 25600 * 6144);
  EXPECT_DOUBLE_EQ(layer1.engram_hide_fraction, 1.0 / 40);
  EXPECT_EQ(AttentionLayerCost(c, 2, {SequenceChunk{1, 999, 1, 1}}, CostOptions{}).engram_bytes, 0);
}

// Decode at position p: every layer attends its window; compressed layers add the top-512
// of their kv source's ⌊(p+1)/m⌋ entries. Index sources score keys: ratio-2 sources all
// ⌊(p+1)/2⌋, the candidate source (20) all p+1, later ones only its pool of 2048 × 8.
TEST(CostModelTest, V41DecodeAttentionByCsa2Role) {
  const ModelConfig c = PresetModelConfig("deepseek-v4.1-flash");
  const CostOptions options;
  const int64_t p = 100000;
  const SequenceChunk decode{1, p, 1, 1};
  const double per_entry = 4.0 * 64 * 512;
  auto core = [&](int layer) {
    return AttentionLayerCost(c, layer, {decode}, options)
        .at(CostComponent::kCoreAttention)
        .total_flops();
  };
  EXPECT_DOUBLE_EQ(core(0), per_entry * 128);
  EXPECT_DOUBLE_EQ(core(3), per_entry * (128 + 512));
  EXPECT_DOUBLE_EQ(core(30), per_entry * (128 + 512));
  auto scores = [&](int layer) {
    return AttentionLayerCost(c, layer, {decode}, options).at(CostComponent::kIndexerScores);
  };
  const double per_key = 2.0 * 32 * 128 + 2 * 32;
  const int fp4 = static_cast<int>(ComputeDtype::kFp4);
  EXPECT_DOUBLE_EQ(scores(2).flops[fp4], (p + 1) / 2 * per_key);
  EXPECT_DOUBLE_EQ(scores(20).flops[fp4], (p + 1) * per_key);
  EXPECT_DOUBLE_EQ(scores(24).flops[fp4], 2048 * 8 * per_key);
  EXPECT_DOUBLE_EQ(scores(3).total_flops(), 0);
  // Compressors run on kv sources only: wkv + wgate at ratio 2, wkv alone at ratio 1.
  auto compressor = [&](int layer) {
    return AttentionLayerCost(c, layer, {decode}, options)
        .at(CostComponent::kCompressor)
        .total_flops();
  };
  EXPECT_DOUBLE_EQ(compressor(2), 2 * 2.0 * 5120 * 512);
  EXPECT_DOUBLE_EQ(compressor(20), 2.0 * 5120 * 512);
  EXPECT_DOUBLE_EQ(compressor(3), 0);
  // KV traffic of layer 20 for a decode token in the released precision: the window read
  // (128 slots) and one slot written at 528 B, 512 selected entries read and one written at
  // 288 B.
  EXPECT_DOUBLE_EQ(
      AttentionLayerCost(c, 20, {decode}, options).at(CostComponent::kCoreAttention).kv_bytes,
      (128 + 2) * 528.0 + (512 + 1) * 288.0);
}

TEST(CostModelTest, V4ProWeightsByFormat) {
  const ModelConfig config = PresetModelConfig("deepseek-v4-pro");
  // One routed expert: 3 · 3072 · 7168 FP4 parameters at half a byte plus a scale per 32.
  EXPECT_DOUBLE_EQ(RoutedExpertWeights(config).bytes[static_cast<int>(StorageFormat::kFp4)],
                   3.0 * 3072 * 7168 * (0.5 + 1.0 / 32));
}

// Chunked costs use closed-form sums over positions; they must equal token-by-token sums.
TEST(CostModelTest, ChunkSumsEqualTokenByTokenSums) {
  // v4-tiny: window 8, CSA top-k 4, HCA ratio 8; v41-tiny: CSA2 with a candidate pool of 6.
  for (const char* name : {"v4-tiny", "v41-tiny"}) {
    SCOPED_TRACE(name);
    const ModelConfig config = PresetModelConfig(name);
    const CostOptions options;
    for (int layer = 0; layer < config.num_hidden_layers; ++layer) {
      SCOPED_TRACE(layer);
      for (int64_t context : {0, 3, 37, 500}) {
        const SequenceChunk chunk{1, context, 61, 1};
        const StepCost whole = AttentionLayerCost(config, layer, {chunk}, options);
        StepCost steps;
        for (int64_t p = context; p < context + chunk.new_tokens; ++p) {
          steps += AttentionLayerCost(config, layer, {SequenceChunk{1, p, 1, 0}}, options);
        }
        for (CostComponent c :
             {CostComponent::kCoreAttention, CostComponent::kIndexerScores,
              CostComponent::kAttentionProjections, CostComponent::kMhc, CostComponent::kCompressor,
              CostComponent::kIndexer, CostComponent::kEngram}) {
          EXPECT_LT(Rel(whole.at(c).total_flops(), steps.at(c).total_flops()), 1e-12)
              << CostComponentName(c);
        }
      }
    }
  }
}

TEST(CostModelTest, V4DecodeAttentionFlopsByLayerType) {
  const ModelConfig config = PresetModelConfig("deepseek-v4-pro");
  const CostOptions options;
  const int64_t p = 100000;  // the new token sits at position p and sees p + 1 positions
  const double per_entry = 4.0 * 128 * 512;  // QK and PV over D = 512 for 128 heads
  const SequenceChunk decode{1, p, 1, 1};
  // Layer 2 is CSA: the window plus the top-1024 compressed entries.
  EXPECT_DOUBLE_EQ(AttentionLayerCost(config, 2, {decode}, options)
                       .at(CostComponent::kCoreAttention)
                       .total_flops(),
                   per_entry * (128 + 1024));
  // Layer 3 is HCA: the window plus every completed 128-token block.
  EXPECT_DOUBLE_EQ(AttentionLayerCost(config, 3, {decode}, options)
                       .at(CostComponent::kCoreAttention)
                       .total_flops(),
                   per_entry * (128 + (p + 1) / 128));
  // The CSA indexer scores all (p + 1) / 4 compressed keys with 64 heads of 128 dims.
  EXPECT_DOUBLE_EQ(AttentionLayerCost(config, 2, {decode}, options)
                       .at(CostComponent::kIndexerScores)
                       .total_flops(),
                   (p + 1) / 4 * (2.0 * 64 * 128 + 2 * 64));
}

TEST(CostModelTest, ProbabilityHit) {
  const ModelConfig v4 = PresetModelConfig("deepseek-v4-pro");
  EXPECT_NEAR(ProbabilityHit(v4, 1), 6.0 / 384, 1e-12);  // k / E
  EXPECT_DOUBLE_EQ(ProbabilityHit(v4, 384), 1);
  EXPECT_DOUBLE_EQ(ProbabilityHit(v4, 0), 0);
  const ModelConfig v3 = PresetModelConfig("deepseek-v3");  // 8 groups of 32, 4 groups per token
  EXPECT_NEAR(ProbabilityHit(v3, 32), 0.5, 1e-12);
  EXPECT_NEAR(ProbabilityHit(v3, 64), 1 - 15.0 / 70, 1e-12);  // C(6,4) / C(8,4) miss
  // Expected experts hit per token sum to k over single-expert units.
  EXPECT_NEAR(256 * ProbabilityHit(v3, 1), 8, 1e-9);
}

TEST(CostModelTest, AllToAllBytesFollowTheTopology) {
  const ModelConfig config = PresetModelConfig("deepseek-v4-pro");
  ExpertGeometry one_node;
  one_node.expert_ranks = 8;
  one_node.same_node = one_node.same_supernode = one_node.ranks_per_node =
      one_node.ranks_per_supernode = 8;
  one_node.sender_is_expert = true;
  StepCost cost;
  AddAllToAllCost(config, 100, one_node, &cost);
  const double copies = 7 * ProbabilityHit(config, 48);
  EXPECT_NEAR(cost.dispatch.bytes[0], 100 * copies * DispatchBytesPerCopy(config), 1e-6);
  EXPECT_NEAR(cost.combine.bytes[0], 100 * copies * CombineBytesPerCopy(config), 1e-6);
  EXPECT_EQ(cost.dispatch.bytes[1] + cost.dispatch.bytes[2], 0);

  // Across four supernodes of 32 ranks, relaying sends one copy per destination supernode.
  ExpertGeometry wide;
  wide.expert_ranks = 128;
  wide.same_node = wide.ranks_per_node = 8;
  wide.same_supernode = wide.ranks_per_supernode = 32;
  StepCost flat, relayed;
  AddAllToAllCost(config, 100, wide, &flat);
  wide.hierarchical = true;
  AddAllToAllCost(config, 100, wide, &relayed);
  EXPECT_NEAR(relayed.dispatch.bytes[2],
              100 * 3 * ProbabilityHit(config, 96) * DispatchBytesPerCopy(config), 1e-6);
  EXPECT_LT(relayed.dispatch.bytes[2], flat.dispatch.bytes[2]);
  EXPECT_EQ(relayed.dispatch.hops, 2);
}

TEST(CostModelTest, StepTimeCombinesStagesAndMicroBatches) {
  const ClusterConfig cluster = ShippedClusterConfig("cluster-configs/local.yaml");
  const HardwareSpec& hw = cluster.hardware;
  const auto& links = cluster.topology.links;
  StepCost attention, expert;
  attention.at(CostComponent::kAttentionProjections).flops[static_cast<int>(ComputeDtype::kFp8)] =
      hw.AchievableFlops(ComputeDtype::kFp8, OpClass::kGemm) * 0.010;  // 10 ms of compute
  attention.dispatch.bytes[0] =
      links[0].bandwidth * hw.Efficiency(OpClass::kAllToAll).value * 0.004;
  attention.combine.bytes[0] = links[0].bandwidth * hw.Efficiency(OpClass::kAllToAll).value * 0.006;
  expert.at(CostComponent::kRoutedExperts).weight_bytes = hw.AchievableHbmBandwidth() * 0.008;
  expert.dispatch = attention.dispatch;
  expert.combine = attention.combine;

  const StepTime serial = ModelledTime({attention, expert}, hw, links);
  EXPECT_NEAR(serial.total, 0.010 + 0.004 + 0.008 + 0.006, 1e-12);
  EXPECT_EQ(serial.binding, Bottleneck::kCompute);
  EXPECT_NEAR(serial.busy[static_cast<int>(Bottleneck::kHbm)], 0.008, 1e-12);

  // Two micro-batches: the loop takes half as long per micro-batch, so the busiest
  // resource (attention compute, 10 ms) binds.
  attention.micro_batches = expert.micro_batches = 2;
  EXPECT_NEAR(ModelledTime({attention, expert}, hw, links).total, 0.014, 1e-12);
  attention.micro_batches = expert.micro_batches = 3;
  EXPECT_NEAR(ModelledTime({attention, expert}, hw, links).total, 0.010, 1e-12);

  // A co-located rank does both sides' compute and sends both exchanges.
  StepCost both = attention;
  both += expert;
  both.dispatch = attention.dispatch;  // its own tokens' exchanges, sent once
  both.combine = attention.combine;
  both.colocated = true;
  both.micro_batches = 4;
  EXPECT_NEAR(ModelledTime({both}, hw, links).total, 0.018, 1e-12);

  StepCost rounds;
  rounds.dispatch.bytes[0] = 1;
  rounds.dispatch.exchanges = 10;
  // Latency: one exchange round per MoE layer per micro-batch, each paying the wire latency
  // and the dispatch call's fixed cost.
  EXPECT_NEAR(ModelledTime({rounds}, hw, links).stages.latency,
              10 * (links[0].latency + hw.dispatch_overhead.value), 1e-15);
}

// Measured bytes replace the modelled ones per link class; the rounds, hops and work stay,
// so the link time is the measured bytes over the link plus the same latency terms.
TEST(CostModelTest, MeasuredExchangeBytesReplaceTheModelledOnes) {
  const ClusterConfig cluster = ShippedClusterConfig("cluster-configs/local.yaml");
  const HardwareSpec& hw = cluster.hardware;
  const auto& links = cluster.topology.links;
  const double eff = hw.Efficiency(OpClass::kAllToAll).value;
  StepCost modelled;
  modelled.at(CostComponent::kRoutedExperts).weight_bytes = hw.AchievableHbmBandwidth() * 0.001;
  modelled.dispatch.bytes[0] = links[0].bandwidth * eff * 0.004;  // 4 ms intra-node
  modelled.combine.bytes[1] = links[1].bandwidth * eff * 0.005;   // 5 ms intra-supernode
  modelled.dispatch.exchanges = modelled.combine.exchanges = 2;

  // Measured: 10 ms intra-node and 3 ms cross-supernode of dispatch, 2 ms intra-node of
  // combine and nothing intra-supernode.
  const std::array<double, kNumLinkClasses> dispatch = {links[0].bandwidth * eff * 0.010, 0,
                                                        links[2].bandwidth * eff * 0.003};
  const std::array<double, kNumLinkClasses> combine = {links[0].bandwidth * eff * 0.002, 0, 0};
  const StepCost measured = WithExchangeBytes(modelled, dispatch, combine);
  EXPECT_EQ(measured.dispatch.bytes, dispatch);
  EXPECT_EQ(measured.combine.bytes, combine);
  EXPECT_EQ(measured.dispatch.exchanges, 2);
  EXPECT_EQ(measured.combine.exchanges, 2);
  EXPECT_EQ(measured.hbm_bytes(), modelled.hbm_bytes());
  EXPECT_EQ(modelled.dispatch.bytes[0], links[0].bandwidth * eff * 0.004);  // a copy

  const RankTime t = RankModelledTime(measured, hw, links);
  // Dispatch: scale-up 10 ms and scale-out 3 ms run in parallel; each of the 2 rounds pays
  // the larger latency of the classes used (one hop) and the dispatch call's fixed cost.
  EXPECT_NEAR(
      t.dispatch,
      0.010 + 2 * (std::max(links[0].latency, links[2].latency) + hw.dispatch_overhead.value),
      1e-12);
  EXPECT_NEAR(t.combine, 0.002 + 2 * (links[0].latency + hw.combine_overhead.value), 1e-12);
  EXPECT_NEAR(t.link[0], 0.012, 1e-12);
  EXPECT_EQ(t.link[1], 0);
  EXPECT_NEAR(t.link[2], 0.003, 1e-12);
  // Priced as a step (one rank with one role, one micro-batch): the loop sums the stages.
  EXPECT_NEAR(ModelledTime({measured}, hw, links).total, 0.001 + t.dispatch + t.combine, 1e-12);
}

// The engine accumulates counters layer by layer from its batch; the planner sums
// identical layers once. On a small layout (one attention and one expert rank, so the
// busiest expert rank receives exactly the mean) both must give the same step time.
// v41-mini checks the grouping of CSA2 roles (kv, index and candidate sources, Engram) and
// that V4.1 is planned without drafts (DSpark is not modelled).
class EngineAccumulation : public ::testing::TestWithParam<const char*> {};

TEST_P(EngineAccumulation, MatchesThePlannersStep) {
  const ModelConfig config = PresetModelConfig(GetParam());
  const bool drafts = !config.is_v41();
  const ClusterConfig cluster = ShippedClusterConfig("cluster-configs/local.yaml");
  absl::StatusOr<planner::Workload> workload = planner::ParseWorkload(
      "name: t\nrate: {requests_per_s: 1}\ninput_tokens: 300\noutput_tokens: 40\n"
      "speculative: {draft_tokens: 1, acceptance: 0.7}\n",
      "t.yaml");
  ASSERT_TRUE(workload.ok()) << workload.status();
  const CostOptions options;
  for (int micro_batches : {1, 2}) {
    planner::UnitLayout layout;
    layout.phase = planner::Phase::kDecode;
    layout.attention_ranks = layout.expert_ranks = 1;
    layout.batch = 6;
    layout.micro_batches = micro_batches;
    const std::vector<SequenceChunk> chunks =
        planner::DecodeChunks(*workload, static_cast<double>(layout.batch) / micro_batches);
    const planner::UnitStep planned =
        planner::BuildUnitStep(config, cluster, *workload, layout, chunks, options);

    // Engine-style: every layer of every micro-batch, one call each.
    ExpertGeometry geometry;
    geometry.same_node = geometry.same_supernode = geometry.ranks_per_node =
        geometry.ranks_per_supernode = 1;
    StepCost attention, expert;
    for (int mb = 0; mb < micro_batches; ++mb) {
      double tokens = 0;
      for (const SequenceChunk& ch : chunks) tokens += ch.count * ch.new_tokens;
      for (int layer = 0; layer < config.num_hidden_layers; ++layer) {
        attention += AttentionLayerCost(config, layer, chunks, options);
        expert +=
            RoutedExpertCost(config, tokens * config.num_experts_per_tok, config.n_routed_experts);
        AddAllToAllCost(config, tokens, geometry, &attention);
      }
      attention += EdgeCost(config, chunks);
      if (!drafts) continue;
      // The MTP draft: one token per sequence through the MTP block.
      std::vector<SequenceChunk> draft = chunks;
      double draft_tokens = 0;
      for (SequenceChunk& ch : draft) {
        ch.new_tokens = ch.sampled_tokens = 1;
        draft_tokens += ch.count;
      }
      attention += AttentionLayerCost(config, config.num_hidden_layers, draft, options);
      expert += RoutedExpertCost(config, draft_tokens * config.num_experts_per_tok,
                                 config.n_routed_experts);
      AddAllToAllCost(config, draft_tokens, geometry, &attention);
    }
    expert.dispatch = attention.dispatch;
    expert.combine = attention.combine;
    attention.micro_batches = expert.micro_batches = micro_batches;

    const HardwareSpec& hw = cluster.hardware;
    const StepTime engine = ModelledTime({attention, expert}, hw, cluster.topology.links);
    const StepTime planner_time = ModelledTime(planned.ranks, hw, cluster.topology.links);
    EXPECT_LT(Rel(planner_time.total, engine.total), 1e-9) << micro_batches;
    EXPECT_LT(Rel(planned.ranks[0].total_flops(), attention.total_flops()), 1e-9);
    EXPECT_LT(Rel(planned.ranks[1].hbm_bytes(), expert.hbm_bytes()), 1e-9);
    EXPECT_LT(Rel(planned.ranks[0].engram_bytes, attention.engram_bytes), 1e-9);
  }
}

INSTANTIATE_TEST_SUITE_P(Presets, EngineAccumulation, ::testing::Values("v4-mini", "v41-mini"));

}  // namespace
}  // namespace dsv4
