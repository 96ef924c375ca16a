// The cost model shared by the capacity planner and the engine's modelled-time accounting.
//
// Work is counted, then priced. Counting: a step on one rank is a StepCost, a set of
// counters (FLOPs by arithmetic format and HBM bytes per component of the model, bytes
// sent per link class for the MoE all-to-all, Engram rows fetched). The analytic builders
// below count one layer's work for a batch of sequence chunks; the planner sums them over
// layers for a whole layout, and a distributed engine can call the same builders per layer
// with its actual batch (or fill the link counters from what its dispatch really sent).
// Pricing: ModelledTime() turns the StepCosts of the ranks of one serving unit into
// seconds on a HardwareSpec, with the SAME function for planner and engine:
//
//   component time  = max(Σ_dtype FLOPs / (peak(dtype) · eff(op class)),
//                         HBM bytes / (HBM bandwidth · eff(memory_bound)),
//                         kernels · kernel floor (graph or eager))            (a roofline
//                     per component, summed: kernels of one component share a shape),
//                     ÷ (1 − compute lost to communication) when micro-batches overlap
//                     an all-to-all
//   link time       = per direction: max(scale-up bytes, scale-out bytes) / (bw · eff(all_to_all))
//                     + exchanges · (latency + the call's fixed cost), where intra-node and
//                     intra-supernode classes
//                     share the chip's scale-up port (a supernode is the scale-up domain)
//                     and inter-supernode traffic uses the scale-out NIC
//   step time       = max(busiest compute resource, busiest link port,
//                         Σ stages / micro_batches) + exposed Engram time
//
// The last line is the steady state of a cyclic micro-batch pipeline: with m micro-batches
// each resource (a chip's compute, its send port) must do all its work, and one
// micro-batch must go around the loop attention → dispatch → experts → combine once per
// layer. With m = 1 it is the plain sum; with m = 2 and balanced stages communication hides
// behind compute, as in DeepSeek's two-micro-batch overlap. Micro-batching is not free:
// weights are read once per micro-batch and every exchange pays its latency per
// micro-batch, both of which the builders count.
//
// Units are SI: FLOPs, bytes, seconds.
#ifndef DSV4_CORE_COST_MODEL_H_
#define DSV4_CORE_COST_MODEL_H_

#include <array>
#include <cstdint>
#include <string_view>

#include "absl/types/span.h"
#include "core/cluster_config.h"
#include "core/hardware.h"
#include "core/kv_accounting.h"
#include "core/model_config.h"
#include "core/topology.h"

namespace dsv4 {

// The parts of the forward pass the model prices separately (each is one roofline).
enum class CostComponent {
  kEmbedding,             // embedding gather
  kMhc,                   // hc_pre / hc_post of both sub-layers (mHC), or the residual adds
  kAttentionProjections,  // wq_a, wq_b, wkv, wo_a, wo_b (V3: MLA projections incl. kv_b)
  kCompressor,            // KV compressor projections and pooling (V4: m > 0; V4.1: kv sources)
  kIndexer,               // lightning-indexer projections (V4: m == 4, with its compressor;
                          // V4.1: wk on kv sources, wq_b/weights_proj on index sources)
  kIndexerScores,         // indexer scores against the compressed keys (V4.1: the candidate
                          // source over all keys, later index sources inside its pool), top-k
  kCoreAttention,         // softmax attention over the visible KV entries
  kRouter,                // gate logits and top-k
  kSharedExpert,          // the shared expert
  kDenseFfn,              // dense FFN layers (V3's first layers)
  kRoutedExperts,         // grouped routed-expert GEMMs (the expert side)
  kEngram,                // Engram fusion (fused FP8 wkv, gate) on the attention rank
  kHead,                  // hc_head (V4), final norm, LM head (and MTP's projections)
};
inline constexpr int kNumCostComponents = 13;
std::string_view CostComponentName(CostComponent component);  // "core_attention"
// kCoreAttention and kIndexerScores run at the attention efficiency, the rest at gemm.
OpClass ComponentOpClass(CostComponent component);
// Routed experts run on expert ranks; everything else on attention ranks.
bool IsExpertSide(CostComponent component);

inline constexpr int kNumComputeDtypes = 4;  // indexed by ComputeDtype

// Work of one component on one rank.
struct WorkCounters {
  std::array<double, kNumComputeDtypes> flops{};  // by ComputeDtype
  double weight_bytes = 0;                        // weights streamed from HBM
  double kv_bytes = 0;                            // KV-state reads and writes
  double activation_bytes = 0;                    // activations read and written
  double kernels = 0;  // kernel launches: the component takes at least kernels × floor

  double hbm_bytes() const { return weight_bytes + kv_bytes + activation_bytes; }
  double total_flops() const;
  WorkCounters& operator+=(const WorkCounters& other);
  WorkCounters& operator*=(double factor);
};

// What one rank sends for one kind of all-to-all exchange (dispatch or combine).
struct ExchangeCounters {
  std::array<double, kNumLinkClasses> bytes{};  // by LinkClass, sent by this rank
  double exchanges = 0;  // collective rounds: one per MoE layer per micro-batch
  int hops = 1;          // 2 when traffic is relayed (hierarchical dispatch)

  ExchangeCounters& operator+=(const ExchangeCounters& other);
  ExchangeCounters& operator*=(double factor);
};

// The counters of one rank for one step (or any part of one: they add).
struct StepCost {
  std::array<WorkCounters, kNumCostComponents> work{};
  ExchangeCounters dispatch;  // tokens to experts (FP8)
  ExchangeCounters combine;   // expert outputs back (BF16)
  double engram_bytes = 0;    // Engram rows fetched from memory nodes
  double engram_fetches = 0;  // batched fetch rounds (one per Engram layer per micro-batch)
  // Share of this rank's compute that runs before the first Engram layer and so can hide
  // the prefetched lookups (EngramHideFraction).
  double engram_hide_fraction = 0;
  int micro_batches = 1;
  // The rank both attends and runs experts (DeepSeek's layout), so its dispatch and
  // combine traffic each flow both ways on its port. A rank with one role sends one
  // exchange and receives the other.
  bool colocated = false;
  // An expert-side rank: all its compute is the expert stage of the micro-batch loop (a
  // rank holding a shared-expert replica runs kSharedExpert there, not on attention ranks).
  bool expert_rank = false;
  // Kernels launched one by one rather than replayed from a captured graph (prefill; decode
  // steps are captured), which sets their floor.
  bool eager = false;
  // The exchange's kernels occupy compute units while they overlap compute (DeepEP's normal
  // kernels); low-latency kernels issue RDMA and free them (decode).
  bool exchange_takes_compute = true;

  WorkCounters& at(CostComponent c) { return work[static_cast<int>(c)]; }
  const WorkCounters& at(CostComponent c) const { return work[static_cast<int>(c)]; }
  double total_flops() const;
  double hbm_bytes() const;
  // Adds the counters; micro_batches, hops and engram_hide_fraction take the larger value,
  // colocated, expert_rank and eager the logical or, exchange_takes_compute the logical and.
  StepCost& operator+=(const StepCost& other);
  // Scales every counter (not micro_batches, hops or the hide fraction).
  StepCost& operator*=(double factor);
};

// Where Engram rows come from, for pricing engram_bytes.
struct EngramPath {
  double bandwidth = 0;  // bytes/s available to one rank; 0 = no Engram traffic
  double latency = 0;    // seconds per fetch round
};

// Busy seconds of one rank, or per-stage maxima over ranks.
struct RankTime {
  std::array<double, kNumCostComponents> component{};  // roofline seconds
  double attention_compute = 0;                        // Σ attention-side components
  double expert_compute = 0;                           // Σ expert-side components
  double compute_bound = 0;                            // Σ components whose FLOP term binds
  double hbm_bound = 0;                                // Σ components whose HBM term binds
  double kernel_bound = 0;                             // Σ components at their kernel floor
  double dispatch = 0;  // link seconds of the dispatch sends, latency included
  double combine = 0;
  std::array<double, kNumLinkClasses> link{};  // bandwidth seconds per class, both exchanges
  double latency = 0;                          // latency seconds of both exchanges
  double engram = 0;                           // Engram fetch seconds (before overlap)
  double engram_exposed = 0;                   // the part no compute hides

  double compute() const { return attention_compute + expert_compute; }
};

// What binds a step, for reports.
enum class Bottleneck {
  kCompute,
  kHbm,
  kIntraNodeLinks,
  kIntraSupernodeLinks,
  kCrossSupernodeLinks,
  kLinkLatency,  // wire latency and the fixed cost of each dispatch/combine call
  kEngram,
  kKernelFloor,  // components held at their kernels' least time (launch-bound)
};
std::string_view BottleneckName(Bottleneck b);  // "cross_supernode_links"

struct StepTime {
  RankTime stages;   // per-stage maxima over the unit's ranks
  double total = 0;  // modelled step seconds
  // Busy seconds of each bottleneck class on the busiest rank (not additive with total).
  std::array<double, 8> busy{};  // indexed by Bottleneck
  Bottleneck binding = Bottleneck::kCompute;
};

// Seconds of one rank's counters on `hardware` with `links` (per chip, one direction).
RankTime RankModelledTime(const StepCost& cost, const HardwareSpec& hardware,
                          const std::array<LinkSpec, kNumLinkClasses>& links,
                          const EngramPath& engram = {});
// The step time of a serving unit whose ranks did `ranks` (one StepCost per rank, or one
// per kind of rank when ranks of a kind are identical). A rank that both attends and runs
// experts (co-located) is one StepCost with both sides filled.
StepTime ModelledTime(absl::Span<const StepCost> ranks, const HardwareSpec& hardware,
                      const std::array<LinkSpec, kNumLinkClasses>& links,
                      const EngramPath& engram = {});

// `cost` with its exchange bytes replaced by `dispatch` and `combine` bytes per LinkClass
// (e.g. what a rank's dispatcher measured), everything else (the exchange rounds, hops,
// the work) kept: ModelledTime of the result prices the measured traffic instead of the
// modelled one. The caller converts measured bytes to the target's wire format first if
// the two differ.
StepCost WithExchangeBytes(StepCost cost, const std::array<double, kNumLinkClasses>& dispatch,
                           const std::array<double, kNumLinkClasses>& combine);

// ---------------------------------------------------------------------------------------
// Analytic builders.

// `count` identical sequences that each append `new_tokens` tokens at positions
// context .. context + new_tokens − 1 (a prefill chunk, one decode token, or 1 + drafts
// for speculative verification), computing logits for `sampled_tokens` of them. The
// planner uses fractional counts for averages over a length distribution.
struct SequenceChunk {
  double count = 1;
  int64_t context = 0;
  int64_t new_tokens = 1;
  int64_t sampled_tokens = 1;
};

struct CostOptions {
  // KV storage: the production layout by default (V4: spec §5; V4.1: the released FP8
  // window / FP4 compressed entries and index keys, core/kv_accounting.h).
  KvLayoutOptions kv{KvLayout::kProduction, /*entry_scales=*/true};
  // V3 MLA latent cache element size: BF16, as in DeepSeek's V3/R1 serving ("core MLA
  // computations in BF16").
  int v3_kv_element_bytes = 2;
  // Arithmetic of core attention and of the indexer scores. The official kernels attend
  // in BF16; the production indexer keys are FP4 (priced on FP8 or BF16 units when the
  // chip has no FP4). FP8/FP4-weight GEMMs take FP8 activations (spec §4 item 1), so they
  // run at the FP8 rate; FP4 weights only halve the bytes. BF16 matrices run at BF16.
  ComputeDtype attention_dtype = ComputeDtype::kBf16;
  ComputeDtype index_score_dtype = ComputeDtype::kFp4;
};

// Storage of the weights in memory, by format (block scales counted with their weights).
enum class StorageFormat { kFp32, kBf16, kFp8, kFp4, kInt };
inline constexpr int kNumStorageFormats = 5;
std::string_view StorageFormatName(StorageFormat format);  // "fp8"

struct WeightBytesByFormat {
  std::array<double, kNumStorageFormats> bytes{};
  double total() const;
  WeightBytesByFormat& operator+=(const WeightBytesByFormat& other);
  WeightBytesByFormat& operator*=(double factor);
};

// Weights of main layer `layer` (0 ≤ layer < L) or MTP block L + i held by an attention
// rank, as released: everything but the routed experts and the Engram tables (mHC,
// attention, compressor, indexer, router, shared expert or dense FFN, Engram's fused wkv and
// q/k gate weights; V4 MTP's e_proj/h_proj/norms/hc_head; V4.1 DSpark's main_proj and
// main_norm on stage 0, norm and Markov/confidence heads on the last stage). V4.1: no
// tid2eid, CSA2 tensors by role (compressor and indexer wk/k_norm on kv sources, indexer
// wq_b/weights_proj on index sources).
WeightBytesByFormat AttentionLayerWeights(const ModelConfig& config, int layer);
// One routed expert of an MoE layer (all MoE layers, DSpark stages included, have experts of
// the same shape; config.routed_experts(layer) says how many).
WeightBytesByFormat RoutedExpertWeights(const ModelConfig& config);
// The shared experts of one MoE layer (part of AttentionLayerWeights), for layouts that
// hold them on expert-side ranks instead.
WeightBytesByFormat SharedExpertWeights(const ModelConfig& config);
// Embedding, final norm, head and (V4 only) hc_head.
WeightBytesByFormat EdgeWeights(const ModelConfig& config);
// The Engram table of main layer `layer` as released (FP8 rows + one E8M0 scale per 32),
// held by the memory nodes, not the attention ranks; 0 for a layer without Engram.
WeightBytesByFormat EngramTableWeights(const ModelConfig& config, int layer);
// Whether `layer` has routed experts (V3's first layers are dense).
bool IsMoeLayer(const ModelConfig& config, int layer);

// One layer (main or MTP) on an attention rank for `chunks`: everything but the routed
// experts, weights read once. Router output (k experts per token) goes to RoutedExpertCost.
StepCost AttentionLayerCost(const ModelConfig& config, int layer,
                            absl::Span<const SequenceChunk> chunks, const CostOptions& options);
// Routed experts of one MoE layer on a rank holding `local_experts` experts that receives
// `token_expert_pairs` (token, expert) assignments; only experts that get a token are read
// (expected number under uniform routing).
StepCost RoutedExpertCost(const ModelConfig& config, double token_expert_pairs,
                          double local_experts);
// Embedding, hc_head, final norm and the head for `chunks`.
StepCost EdgeCost(const ModelConfig& config, absl::Span<const SequenceChunk> chunks);
// A whole layer on a rank that holds every routed expert (the single-process engine):
// AttentionLayerCost + RoutedExpertCost(k per token, all experts) for MoE layers.
StepCost LayerCost(const ModelConfig& config, int layer, absl::Span<const SequenceChunk> chunks,
                   const CostOptions& options);

// KV-state bytes one sequence holds after `positions` tokens (all main layers): V4 via
// core/kv_accounting.h with options.kv, V3 as an MLA latent cache.
double SequenceStateBytes(const ModelConfig& config, const CostOptions& options, int64_t positions);

// Bytes of one token copy in the dispatch (FP8 hidden state, one fp32 scale per 128
// channels as DeepEP sends them, and the k routing indices and weights) and in the combine
// (BF16 hidden state).
double DispatchBytesPerCopy(const ModelConfig& config);
double CombineBytesPerCopy(const ModelConfig& config);

// Where a sending rank's expert ranks sit, for spreading all-to-all bytes over link
// classes. Counts may be fractional: a planner interleaving attention and expert ranks in
// proportion puts a share of a node's chips in each role.
struct ExpertGeometry {
  double expert_ranks = 1;         // ranks holding routed experts
  double same_node = 0;            // expert ranks in the sender's node (itself included)
  double same_supernode = 0;       // expert ranks in its supernode (its node included)
  double ranks_per_node = 1;       // expert ranks per node, for relays
  double ranks_per_supernode = 1;  // expert ranks per supernode, for relays
  bool sender_is_expert = false;   // co-located: the sender's own experts cost no link
  bool hierarchical = false;       // relay: one copy per destination supernode, then node
};

// The geometry of a placed engine's expert ranks as world rank `sender` sees them, counted
// from the rank positions in `topology` (the planner derives the same quantities
// analytically for the layouts it searches).
ExpertGeometry ExpertGeometryOf(const Topology& topology, int sender, bool hierarchical);

// Probability that a token's k experts include at least one of `experts` specific logical
// experts, under uniform routing (group-limited for V3: topk_group of n_group groups,
// assuming groups are packed onto consecutive ranks as EPLB's hierarchical policy does).
double ProbabilityHit(const ModelConfig& config, double experts);

// Dispatch and combine bytes one rank sends for `tokens` of its own tokens in one MoE
// layer. For a disaggregated unit this is the attention rank's dispatch and the mirror
// of what expert ranks send back, scaled by the rank counts (see the planner).
void AddAllToAllCost(const ModelConfig& config, double tokens, const ExpertGeometry& geometry,
                     StepCost* cost);

// Share of a step's compute ahead of the first Engram layer (0 without Engram).
double EngramHideFraction(const ModelConfig& config);

// Engram as released (spec deepseek-v41-model.md §2, §4): each Engram layer looks up
// (N−1)·K rows per token (EngramConfig::columns()), each a record of d_e FP8 bytes plus one
// E8M0 scale per 32 (V4.1-Flash: 24 rows × 264 B = 6336 B per token per layer).
double EngramRecordBytes(const ModelConfig& config);  // d_e + ⌈d_e/32⌉
// Bytes fetched from the memory nodes per token per Engram layer: columns × record.
double EngramBytesPerToken(const ModelConfig& config);
// All Engram layers' tables: Σ rows × record (V4.1-Flash: (384006168 + 384016682) × 264 B
// = 202,758,032,400 B).
double EngramTableBytes(const ModelConfig& config);
// RAM each of `memory_nodes` nodes holds for `replication` copies of the tables, sharded
// evenly by row range: EngramTableBytes × replication / memory_nodes.
double EngramRamPerMemoryNode(const ModelConfig& config, int memory_nodes, int replication);
// Lookup traffic on the engine↔memory-node links at `tokens_per_s` tokens through the
// model: EngramBytesPerToken × Engram layers × tokens_per_s (bytes/s).
double EngramLookupBytesPerSecond(const ModelConfig& config, double tokens_per_s);

}  // namespace dsv4

#endif  // DSV4_CORE_COST_MODEL_H_
