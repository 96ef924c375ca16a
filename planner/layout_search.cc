#include "planner/layout_search.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <map>
#include <set>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

namespace dsv4::planner {
namespace {

constexpr int kMaxChunksPerBucket = 64;
constexpr int kDecodeContextBuckets = 16;
constexpr int kPhaseShortlist = 16;  // best layouts of each phase combined into plans

// ---------------------------------------------------------------------------------------
// Model facts computed once per run.

// Main layers that cost the same for any batch: same attention type (V4.1: also the CSA2
// role and the source's ratio), dense or MoE, hash routing (tid2eid vs bias weights) and
// Engram.
struct LayerGroup {
  int layer = 0;  // representative
  int count = 0;
};

// V4.1's CSA2 role of a layer as a small code (0 for V4 and V3): kv source, index source,
// candidate source, scores inside the candidate pool; plus the ratio of the cache it reads.
int Csa2Role(const ModelConfig& config, int layer) {
  if (!config.is_v41()) return 0;
  const int source = config.kv_source_of(layer);
  return (config.is_kv_source(layer) ? 1 : 0) | (config.is_index_source(layer) ? 2 : 0) |
         (config.candidate_source_layer == layer ? 4 : 0) |
         (config.uses_candidates(layer) ? 8 : 0) | ((source >= 0 ? config.ratio(source) : 0) << 4);
}

std::vector<LayerGroup> GroupLayers(const ModelConfig& config) {
  std::map<std::tuple<int, int, bool, bool, bool>, LayerGroup> groups;
  for (int layer = 0; layer < config.num_hidden_layers; ++layer) {
    const int ratio = config.is_v4() ? config.ratio(layer) : 0;
    const bool engram =
        std::count(config.engram.layer_ids.begin(), config.engram.layer_ids.end(), layer) > 0;
    LayerGroup& g = groups[{ratio, Csa2Role(config, layer), IsMoeLayer(config, layer),
                            config.is_hash_layer(layer), engram}];
    if (g.count == 0) g.layer = layer;
    ++g.count;
  }
  std::vector<LayerGroup> out;
  for (const auto& [key, group] : groups) out.push_back(group);
  return out;
}

int MoeLayers(const ModelConfig& config) {
  int n = 0;
  for (int layer = 0; layer < config.num_hidden_layers; ++layer) n += IsMoeLayer(config, layer);
  return n;
}

// Speculative drafts the model can run: one per MTP module (each drafts one token further
// ahead), at most the workload's. V4.1's DSpark stages are loaded and checked but not
// evaluated by the runtime, so V4.1 is planned without drafts.
int DraftTokens(const ModelConfig& config, const Workload& workload) {
  if (config.is_v41()) return 0;
  return std::min(workload.speculative.draft_tokens, config.num_nextn_predict_layers);
}

// The workload as the model can serve it (drafts capped by DraftTokens).
Workload Servable(const ModelConfig& config, const Workload& workload) {
  Workload w = workload;
  w.speculative.draft_tokens = DraftTokens(config, workload);
  return w;
}

double TokensPerStep(const ModelConfig& config, const Workload& workload) {
  SpeculativeDecoding s = workload.speculative;
  s.draft_tokens = DraftTokens(config, workload);
  return s.TokensPerStep();
}

struct ClusterShape {
  int chips_per_node = 1;
  int chips_per_supernode = 1;
  int chips = 1;
};

ClusterShape ShapeOf(const ClusterConfig& cluster) {
  ClusterShape s;
  const TopologySpec& t = cluster.topology;
  s.chips = t.num_chips();
  if (!t.supernodes.empty() && !t.supernodes[0].nodes.empty()) {
    s.chips_per_node = t.supernodes[0].nodes[0].chips;
    s.chips_per_supernode = 0;
    for (const NodeSpec& node : t.supernodes[0].nodes) s.chips_per_supernode += node.chips;
  }
  return s;
}

// The link that carries a finished prefill's KV state to its decode unit: the widest
// tier of the tree.
const LinkSpec& HandOffLink(const ClusterConfig& cluster) {
  const TopologySpec& t = cluster.topology;
  if (t.supernodes.size() > 1) return t.link(LinkClass::kInterSupernode);
  if (t.num_nodes() > 1) return t.link(LinkClass::kIntraSupernode);
  return t.link(LinkClass::kIntraNode);
}

// ---------------------------------------------------------------------------------------
// Unit step assembly.

// Calls fn(context, weight) for the decode contexts of the sequences in a batch: each
// (input, output) pair weighs w_in·w_out·output, at positions spread over its output.
template <typename Fn>
void ForEachDecodeContext(const Workload& workload, Fn fn) {
  for (const LengthBucket& in : workload.input.buckets) {
    for (const LengthBucket& out : workload.output.buckets) {
      const double w = in.weight * out.weight * static_cast<double>(out.tokens);
      for (double q : {0.125, 0.375, 0.625, 0.875}) {
        fn(static_cast<double>(in.tokens) + q * static_cast<double>(out.tokens), w / 4);
      }
    }
  }
}

// Mean and deviation of the decode contexts, summed directly: the search asks for them for
// every batch it tries.
struct Moments {
  double mean = 0;
  double sd = 0;
};
Moments DecodeContextMoments(const Workload& workload) {
  double total = 0, sum = 0, square = 0;
  ForEachDecodeContext(workload, [&](double context, double w) {
    total += w;
    sum += w * context;
    square += w * context * context;
  });
  if (total <= 0) return {};
  const double mean = sum / total;
  return {mean, std::sqrt(std::max(0.0, square / total - mean * mean))};
}

// AttentionRankImbalance for contexts of these moments.
double ContextImbalance(const Moments& m, double ranks, double sequences) {
  if (ranks < 2 || sequences <= 0 || m.mean <= 0) return 1;
  return 1 + m.sd * std::sqrt(2 * std::log(ranks)) / (m.mean * std::sqrt(sequences));
}

// The attention side of one micro-batch: every layer but the routed experts, the edges,
// and the MTP drafts.
struct AttentionSide {
  StepCost cost;
  double tokens = 0;       // new tokens through the main model
  double mtp_tokens = 0;   // tokens through the MTP block (drafts)
  double state_bytes = 0;  // KV state of the micro-batch's sequences
  double sampled = 0;
  Moments decode_contexts;  // of the workload, for AttentionRankImbalance
};

AttentionSide BuildAttentionSide(const ModelConfig& config, const Workload& workload,
                                 absl::Span<const SequenceChunk> chunks, const CostOptions& options,
                                 const std::vector<LayerGroup>& groups) {
  AttentionSide side;
  side.decode_contexts = DecodeContextMoments(workload);
  for (const LayerGroup& g : groups) {
    StepCost layer = AttentionLayerCost(config, g.layer, chunks, options);
    layer *= g.count;
    side.cost += layer;
  }
  side.cost += EdgeCost(config, chunks);
  for (const SequenceChunk& ch : chunks) {
    side.tokens += ch.count * static_cast<double>(ch.new_tokens);
    side.sampled += ch.count * static_cast<double>(ch.sampled_tokens);
    side.state_bytes += ch.count * SequenceStateBytes(config, options, ch.context + ch.new_tokens);
  }
  const int drafts = DraftTokens(config, workload);
  if (drafts > 0) {
    // Each draft runs the MTP block on one token per sequence.
    std::vector<SequenceChunk> mtp(chunks.begin(), chunks.end());
    for (SequenceChunk& ch : mtp) ch.new_tokens = ch.sampled_tokens = 1;
    StepCost draft = AttentionLayerCost(config, config.num_hidden_layers, mtp, options);
    draft *= drafts;
    side.cost += draft;
    for (const SequenceChunk& ch : mtp) side.mtp_tokens += drafts * ch.count;
  }
  return side;
}

// Busiest expert rank's (token, expert) pairs when the mean is `mean` over `ranks` ranks:
// the finite-sample maximum of independent routing (mean + sqrt(2·mean·ln R) + ln R / 3,
// a Bernstein-type bound) times the routing skew left after redundant experts absorb part
// of it (each spare slot per rank halves the skew's excess).
double HotPairs(double mean, double ranks, double skew, double redundant) {
  if (mean <= 0) return 0;
  const double log_r = ranks > 1 ? std::log(ranks) : 0;
  const double statistical = mean + std::sqrt(2 * mean * log_r) + log_r / 3;
  const double residual_skew = 1 + (skew - 1) * ranks / (ranks + redundant);
  return statistical * residual_skew;
}

ExpertGeometry GeometryOf(const ClusterShape& shape, const UnitLayout& layout) {
  ExpertGeometry g;
  const double ranks = layout.ranks(), per_chip = layout.ranks_per_chip;
  const double expert_share = layout.colocated ? 1.0 : layout.expert_ranks / ranks;
  g.expert_ranks = layout.expert_ranks;
  g.ranks_per_node = expert_share * std::min<double>(ranks, shape.chips_per_node * per_chip);
  g.ranks_per_supernode =
      expert_share * std::min<double>(ranks, shape.chips_per_supernode * per_chip);
  g.same_node = g.ranks_per_node;
  g.same_supernode = g.ranks_per_supernode;
  g.sender_is_expert = layout.colocated;
  g.hierarchical = layout.hierarchical;
  return g;
}

// The decode contexts as (context, weight), sorted (ForEachDecodeContext).
std::vector<std::pair<double, double>> DecodeContextPoints(const Workload& workload) {
  std::vector<std::pair<double, double>> points;
  ForEachDecodeContext(workload, [&](double context, double w) { points.push_back({context, w}); });
  std::sort(points.begin(), points.end());
  return points;
}

UnitStep AssembleUnitStep(const ModelConfig& config, const ClusterShape& shape,
                          const Workload& workload, const UnitLayout& layout,
                          const AttentionSide& side) {
  const double m = layout.micro_batches;
  const int moe_layers = MoeLayers(config);
  const int drafts = DraftTokens(config, workload);
  const double k = config.num_experts_per_tok;
  const double slots = layout.slots_per_expert_rank(config);
  const double ranks_ratio = static_cast<double>(layout.attention_ranks) / layout.expert_ranks;

  // One micro-batch, then scaled by the micro-batch count.
  StepCost attention = side.cost;
  // Decode replays captured graphs and exchanges with low-latency kernels that hold no SMs.
  attention.eager = attention.exchange_takes_compute = layout.phase == Phase::kPrefill;
  const double imbalance_kv =
      layout.phase == Phase::kDecode
          ? ContextImbalance(side.decode_contexts, layout.attention_ranks, layout.batch)
          : 1;
  attention.at(CostComponent::kCoreAttention) *= imbalance_kv;
  attention.at(CostComponent::kIndexerScores) *= imbalance_kv;
  StepCost a2a;
  const ExpertGeometry geometry = GeometryOf(shape, layout);
  AddAllToAllCost(config, side.tokens, geometry, &a2a);
  a2a *= moe_layers;
  if (drafts > 0) {
    StepCost draft;
    AddAllToAllCost(config, side.mtp_tokens / drafts, geometry, &draft);
    draft *= drafts;
    a2a += draft;
  }

  auto expert_work = [&](double tokens, int layers) {
    const double mean = tokens * k * ranks_ratio;
    const double hot =
        HotPairs(mean, layout.expert_ranks, workload.expert_load_skew, layout.redundant_experts);
    StepCost cost = RoutedExpertCost(config, hot, slots);
    cost *= layers;
    return std::make_pair(cost, mean > 0 ? hot / mean : 1.0);
  };
  auto [experts, imbalance] = expert_work(side.tokens, moe_layers);
  if (drafts > 0) experts += expert_work(side.mtp_tokens / drafts, drafts).first;

  UnitStep step;
  step.tokens_per_rank = side.tokens * m;
  if (layout.colocated) {
    StepCost rank = attention;
    rank += experts;
    rank += a2a;
    rank *= m;
    rank.micro_batches = layout.micro_batches;
    rank.colocated = true;
    step.ranks.push_back(rank);
    return step;
  }
  const StepCost routed_a2a = a2a;  // what the routed expert ranks receive and send back
  StepCost shared;                  // a shared-expert replica's rank, when the layout has them
  if (layout.shared_expert_ranks > 0) {
    // Each token also goes to one shared-expert rank (one more copy, spread over the link
    // classes like the routed copies) and comes back from it; the replica runs the shared
    // expert for its share of every attention rank's tokens, reading its weights once and
    // launching its kernels once.
    double routed_bytes = 0;
    for (double b : a2a.dispatch.bytes) routed_bytes += b;
    const double per_token = moe_layers * DispatchBytesPerCopy(config) * side.tokens;
    const double ratio = routed_bytes > 0 ? per_token / routed_bytes : 0;
    StepCost extra;
    for (int c = 0; c < kNumLinkClasses; ++c) {
      extra.dispatch.bytes[c] = a2a.dispatch.bytes[c] * ratio;
      extra.combine.bytes[c] = a2a.combine.bytes[c] * ratio;
    }
    WorkCounters& work = attention.at(CostComponent::kSharedExpert);
    const double per_replica =
        static_cast<double>(layout.attention_ranks) / layout.shared_expert_ranks;
    WorkCounters& replica = shared.at(CostComponent::kSharedExpert);
    replica = work;
    replica *= per_replica;
    replica.weight_bytes = work.weight_bytes;
    replica.kernels = work.kernels;
    work = WorkCounters{};
    shared.dispatch = extra.dispatch;
    shared.combine = extra.combine;
    shared.dispatch *= per_replica;
    shared.combine *= per_replica;
    shared.dispatch.exchanges = a2a.dispatch.exchanges;
    shared.combine.exchanges = a2a.combine.exchanges;
    shared.dispatch.hops = a2a.dispatch.hops;
    shared.combine.hops = a2a.combine.hops;
    shared.expert_rank = true;
    shared.eager = shared.exchange_takes_compute = attention.eager;
    shared *= m;
    shared.micro_batches = layout.micro_batches;
    a2a.dispatch += extra.dispatch;
    a2a.combine += extra.combine;
  }
  attention += a2a;
  attention *= m;
  attention.micro_batches = layout.micro_batches;
  // The busiest expert rank receives its share of every attention rank's dispatch and
  // sends back as much combine traffic.
  StepCost expert = experts;
  expert.expert_rank = true;
  expert.eager = expert.exchange_takes_compute = attention.eager;
  expert.dispatch = routed_a2a.dispatch;
  expert.combine = routed_a2a.combine;
  expert.dispatch *= ranks_ratio * imbalance;
  expert.combine *= ranks_ratio * imbalance;
  expert.dispatch.exchanges = routed_a2a.dispatch.exchanges;
  expert.combine.exchanges = routed_a2a.combine.exchanges;
  expert *= m;
  expert.micro_batches = layout.micro_batches;
  step.ranks = {attention, expert};
  if (layout.shared_expert_ranks > 0) step.ranks.push_back(shared);
  return step;
}

// ---------------------------------------------------------------------------------------
// Memory.

struct WeightFacts {
  WeightBytesByFormat attention;  // every main layer's attention-side weights and the edges
  WeightBytesByFormat mtp;        // the MTP block's
  WeightBytesByFormat expert;     // one routed expert
  int moe_layers = 0;
};

WeightFacts ComputeWeightFacts(const ModelConfig& config) {
  WeightFacts f;
  for (int layer = 0; layer < config.num_hidden_layers; ++layer) {
    f.attention += AttentionLayerWeights(config, layer);
  }
  f.attention += EdgeWeights(config);
  if (config.num_nextn_predict_layers > 0) {
    f.mtp = AttentionLayerWeights(config, config.num_hidden_layers);
  }
  f.expert = RoutedExpertWeights(config);
  f.moe_layers = MoeLayers(config);
  return f;
}

// Live activations per token on an attention rank: the residual streams before and after
// a sub-layer, the largest sub-layer intermediates (queries and attention outputs) and
// the dispatch buffer; per sampled token the fp32 logits.
double AttentionActivationBytes(const ModelConfig& config, double tokens, double sampled) {
  const double d = config.hidden_size, n = config.is_v4() ? config.hc_mult : 1;
  const double heads = config.num_attention_heads;
  const double head_dim =
      config.is_v4() ? config.head_dim
                     : config.qk_nope_head_dim + config.qk_rope_head_dim + config.v_head_dim;
  const double per_token =
      2 * 2 * n * d + 2 * 2 * heads * head_dim + (config.num_experts_per_tok + 2) * d;
  return tokens * per_token + sampled * 4.0 * config.vocab_size;
}

double ExpertActivationBytes(const ModelConfig& config, double pairs) {
  return pairs * (3.0 * config.hidden_size + 4.0 * config.moe_intermediate_size);
}

struct PhaseContext {
  const ModelConfig& config;
  const ClusterConfig& cluster;
  const Workload& workload;
  const PlannerOptions& options;
  ClusterShape shape = {};
  WeightFacts weights = {};
  std::vector<LayerGroup> groups = {};
  double slo_ttft = 0;
  double slo_tpot = 0;
};

void FillMemory(const PhaseContext& ctx, const HardwareSpec& hw, const UnitLayout& layout,
                const AttentionSide& side, PhaseEvaluation* eval) {
  const double capacity = hw.hbm_capacity.value;
  const double usable = capacity * (1 - ctx.options.memory_reserve);
  const double m = layout.micro_batches;
  const int drafts = DraftTokens(ctx.config, ctx.workload);
  const double moe_layers = ctx.weights.moe_layers + (drafts > 0 ? 1 : 0);
  WeightBytesByFormat expert_weights = ctx.weights.expert;
  expert_weights *= layout.slots_per_expert_rank(ctx.config) * moe_layers;
  const double pairs = side.tokens * m * ctx.config.num_experts_per_tok * layout.attention_ranks /
                       layout.expert_ranks;

  MemoryUse& a = eval->attention_memory;
  a.capacity = capacity;
  a.usable = usable;
  a.weights = ctx.weights.attention;
  if (drafts > 0) a.weights += ctx.weights.mtp;
  a.kv = side.state_bytes * m;
  a.activations = AttentionActivationBytes(ctx.config, side.tokens * m, side.sampled * m);
  if (layout.colocated) {
    a.weights += expert_weights;
    a.activations += ExpertActivationBytes(ctx.config, pairs);
    eval->memory_ratio = a.used() / usable;
    return;
  }
  MemoryUse& e = eval->expert_memory;
  e.capacity = capacity;
  e.usable = usable;
  e.weights = expert_weights;
  e.activations = ExpertActivationBytes(ctx.config, pairs);
  double worst = std::max(a.used(), e.used());
  if (layout.shared_expert_ranks > 0) {
    // The shared experts move from the attention ranks to their replicas.
    WeightBytesByFormat shared = SharedExpertWeights(ctx.config);
    shared *= moe_layers;
    WeightBytesByFormat removed = shared;
    removed *= -1;
    a.weights += removed;
    const double tokens = side.tokens * m * layout.attention_ranks / layout.shared_expert_ranks;
    worst =
        std::max({a.used(), e.used(), shared.total() + ExpertActivationBytes(ctx.config, tokens)});
  }
  eval->memory_ratio = worst / usable;
}

// Per request of input bucket i: uncached tokens and the steps its prefill takes.
struct PrefillRequest {
  double weight = 0;
  double uncached = 0;
  double steps = 0;
  double hand_off = 0;  // KV transfer to decode, seconds
};

void FillPrefillLatency(const PhaseContext& ctx, const UnitLayout& layout, double step_time,
                        PhaseEvaluation* eval) {
  const Workload& w = ctx.workload;
  const LinkSpec& link = HandOffLink(ctx.cluster);
  const double link_rate =
      link.bandwidth * ctx.cluster.hardware.Efficiency(OpClass::kAllToAll).value;
  const double rate = layout.batch / step_time;  // tokens/s of one attention rank
  std::vector<PrefillRequest> requests;
  double mean_s = 0, mean_s2 = 0;
  for (const LengthBucket& b : w.input.buckets) {
    PrefillRequest r;
    r.weight = b.weight;
    r.uncached = std::max(1.0, std::round(b.tokens * (1 - w.prefix_cache_hit_rate)));
    r.steps = std::ceil(r.uncached / layout.batch);
    r.hand_off =
        SequenceStateBytes(ctx.config, ctx.options.cost, b.tokens) / link_rate + link.latency;
    const double service = r.uncached / rate;
    mean_s += r.weight * service;
    mean_s2 += r.weight * service * service;
    requests.push_back(r);
  }
  // p90 of the queue-free latency (requests sorted by length already).
  double base_p90 = 0, cumulative = 0;
  for (const PrefillRequest& r : requests) {
    cumulative += r.weight;
    base_p90 = r.steps * step_time + r.hand_off;
    if (cumulative >= 0.9 - 1e-12) break;
  }
  // M/G/1 wait at load ρ: ρ·E[S²] / (2(1−ρ)·E[S]).
  auto wait = [&](double rho) { return rho * mean_s2 / (2 * (1 - rho) * mean_s); };
  double load = w.max_utilization;
  if (ctx.slo_ttft > 0) {
    const double slack = ctx.slo_ttft - base_p90;
    load = slack <= 0 ? 0 : std::min(load, 2 * mean_s * slack / (mean_s2 + 2 * mean_s * slack));
  }
  eval->max_load = load;
  eval->latency = base_p90 + (load > 0 ? wait(load) : 0);
  eval->latency_ratio = ctx.slo_ttft > 0 ? eval->latency / ctx.slo_ttft : 0;
  if (load <= 0) eval->latency_ratio = std::max(eval->latency_ratio, 1.0 + 1e-9);
}

PhaseEvaluation Evaluate(const PhaseContext& ctx, const UnitLayout& layout,
                         const AttentionSide& side) {
  PhaseEvaluation eval;
  eval.layout = layout;
  const UnitStep step = AssembleUnitStep(ctx.config, ctx.shape, ctx.workload, layout, side);
  // Each rank has its share of the chip (one die of a multi-die package).
  const HardwareSpec hw = ctx.cluster.hardware.Share(layout.ranks_per_chip);
  std::array<LinkSpec, kNumLinkClasses> links = ctx.cluster.topology.links;
  for (LinkSpec& link : links) link.bandwidth /= layout.ranks_per_chip;
  EngramPath engram;
  if (ctx.config.engram.enabled()) {
    engram.bandwidth = links[static_cast<int>(LinkClass::kIntraSupernode)].bandwidth;
    engram.latency = ctx.options.engram_latency;
  }
  eval.step = ModelledTime(step.ranks, hw, links, engram);
  const double t = eval.step.total;
  FillMemory(ctx, hw, layout, side, &eval);
  if (layout.phase == Phase::kDecode) {
    const double tau = TokensPerStep(ctx.config, ctx.workload);
    eval.tokens_per_s = layout.attention_ranks * layout.batch * tau / t;
    eval.latency = t / tau;
    eval.latency_ratio = ctx.slo_tpot > 0 ? eval.latency / ctx.slo_tpot : 0;
    eval.max_load = ctx.workload.max_utilization;
  } else {
    eval.tokens_per_s = layout.attention_ranks * step.tokens_per_rank / t;
    FillPrefillLatency(ctx, layout, t, &eval);
  }
  eval.tokens_per_s_per_chip = eval.tokens_per_s / layout.chips();
  return eval;
}

// ---------------------------------------------------------------------------------------
// Candidate enumeration.

struct ExpertOption {
  int ranks;
  int redundant;
};

std::vector<ExpertOption> ExpertOptions(const ModelConfig& config, const std::vector<int>& ranks) {
  const int E = config.n_routed_experts;
  std::vector<ExpertOption> out;
  for (int x : ranks) {
    if (x > E + E / 2) continue;
    int taken = 0;
    for (int slots = (E + x - 1) / x; taken < 3; ++slots) {
      const int redundant = slots * x - E;
      if (redundant > std::max(E / 2, 0)) break;
      out.push_back({x, redundant});
      ++taken;
      if (x == 1) break;
    }
  }
  return out;
}

const std::vector<int> kAttentionRanks = {1,  2,   4,   8,   16,  24,  32,  48, 64,
                                          96, 128, 160, 192, 256, 320, 384, 512};
const std::vector<int> kExpertRanks = {1,   2,   4,   8,   16,  24,  32,  48,  64,
                                       72,  96,  128, 144, 160, 192, 224, 256, 288,
                                       320, 384, 416, 448, 512, 576, 640, 768};
const std::vector<int> kColocatedRanks = {1,  2,   4,   8,   16,  32,  48,  64, 72,
                                          96, 128, 144, 256, 288, 320, 384, 512};
const std::vector<int> kDecodeBatches = {1,   2,   4,   8,   16,  32,  48,  64,  96,
                                         128, 160, 192, 256, 384, 512, 768, 1024};
const std::vector<int> kPrefillTokens = {1024, 2048, 4096, 8192, 16384, 32768, 65536};

std::vector<UnitLayout> UnitShapes(const ModelConfig& config, const ClusterShape& shape,
                                   LayoutFamily family, Phase phase, int dies_per_chip) {
  std::vector<UnitLayout> out;
  auto add_one = [&](UnitLayout layout) {
    if (layout.chips() > shape.chips) return;
    layout.phase = phase;
    layout.hierarchical = false;
    out.push_back(layout);
    if (layout.chips() > shape.chips_per_node) {
      layout.hierarchical = true;
      out.push_back(layout);
    }
  };
  // On multi-die packages a rank may also own one die (CloudMatrix-Infer's EP320 on 160
  // chips).
  auto add = [&](UnitLayout layout) {
    add_one(layout);
    if (dies_per_chip > 1) {
      layout.ranks_per_chip = dies_per_chip;
      add_one(layout);
    }
  };
  if (family != LayoutFamily::kColocated) {
    for (const ExpertOption& x : ExpertOptions(config, kExpertRanks)) {
      for (int a : kAttentionRanks) {
        UnitLayout l;
        l.attention_ranks = a;
        l.expert_ranks = x.ranks;
        l.redundant_experts = x.redundant;
        add(l);
      }
    }
  }
  if (family != LayoutFamily::kAfd) {
    for (const ExpertOption& x : ExpertOptions(config, kColocatedRanks)) {
      UnitLayout l;
      l.colocated = true;
      l.attention_ranks = l.expert_ranks = x.ranks;
      l.redundant_experts = x.redundant;
      add(l);
    }
  }
  return out;
}

// Ranking of phase candidates: feasible first, then by the objective's score, then the
// closest infeasible ones.
bool BetterPhase(const PhaseEvaluation& a, const PhaseEvaluation& b) {
  if (a.feasible() != b.feasible()) return a.feasible();
  if (a.feasible()) return a.effective_per_chip() > b.effective_per_chip();
  const double va = std::max({a.memory_ratio, a.latency_ratio});
  const double vb = std::max({b.memory_ratio, b.latency_ratio});
  if (va != vb) return va < vb;
  return a.effective_per_chip() > b.effective_per_chip();
}

std::string Ms(double seconds) { return absl::StrFormat("%.1f ms", seconds * 1e3); }

// Keeps the best `keep` evaluations with distinct rank counts, so the shortlist offers
// different unit shapes rather than variants of one.
std::vector<PhaseEvaluation> Shortlist(std::vector<PhaseEvaluation> all, size_t keep) {
  std::sort(all.begin(), all.end(), BetterPhase);
  std::vector<PhaseEvaluation> out;
  std::set<std::tuple<bool, int, int>> seen;
  for (PhaseEvaluation& e : all) {
    if (out.size() == keep) break;
    if (!seen.insert({e.layout.colocated, e.layout.attention_ranks, e.layout.expert_ranks})
             .second) {
      continue;
    }
    out.push_back(std::move(e));
  }
  return out;
}

}  // namespace

std::string_view ObjectiveName(Objective objective) {
  switch (objective) {
    case Objective::kThroughputPerChip:
      return "throughput-per-chip";
    case Objective::kChipsForRate:
      return "chips-for-rate";
    case Objective::kCost:
      return "cost";
  }
  return "?";
}

absl::StatusOr<Objective> ParseObjective(std::string_view name) {
  for (Objective o : {Objective::kThroughputPerChip, Objective::kChipsForRate, Objective::kCost}) {
    if (ObjectiveName(o) == name) return o;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown objective '", std::string(name),
                   "' (expected throughput-per-chip, chips-for-rate or cost)"));
}

std::string_view LayoutFamilyName(LayoutFamily family) {
  switch (family) {
    case LayoutFamily::kColocated:
      return "colocated";
    case LayoutFamily::kAfd:
      return "afd";
    case LayoutFamily::kBoth:
      return "both";
  }
  return "?";
}

absl::StatusOr<LayoutFamily> ParseLayoutFamily(std::string_view name) {
  for (LayoutFamily f : {LayoutFamily::kColocated, LayoutFamily::kAfd, LayoutFamily::kBoth}) {
    if (LayoutFamilyName(f) == name) return f;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown --layouts '", std::string(name),
      "' (expected colocated: DeepSeek-style, every chip attends and holds experts; afd: "
      "attention-FFN disaggregation, as dsv4-engine runs; or both)"));
}

std::string ModelName(const ModelConfig& config) {
  const std::filesystem::path path(config.source);
  if (path.filename() == "config.json" && path.has_parent_path()) {
    return path.parent_path().filename().string();
  }
  return path.stem().string();
}

Slos EffectiveSlos(const Workload& workload, const PlannerOptions& options) {
  return {options.slo_ttft.value_or(workload.slo_ttft.value_or(options.default_slo_ttft)),
          options.slo_tpot.value_or(workload.slo_tpot.value_or(0))};
}

std::string_view PhaseName(Phase phase) { return phase == Phase::kPrefill ? "prefill" : "decode"; }

int UnitLayout::slots_per_expert_rank(const ModelConfig& config) const {
  return (config.n_routed_experts + redundant_experts) / expert_ranks;
}

std::string UnitLayout::Describe() const {
  const std::string ranks = colocated ? absl::StrCat("DP=EP", attention_ranks)
                                      : absl::StrCat("A", attention_ranks, "+E", expert_ranks);
  const std::string batch_text =
      phase == Phase::kDecode ? absl::StrCat("b", batch) : absl::StrCat("t", batch);
  return absl::StrCat(ranks, " r", redundant_experts, " ", batch_text, " m", micro_batches,
                      hierarchical ? " hier" : " flat",
                      ranks_per_chip > 1 ? absl::StrCat(" d", ranks_per_chip) : "",
                      shared_expert_ranks > 0 ? absl::StrCat(" s", shared_expert_ranks) : "");
}

std::vector<SequenceChunk> PrefillChunks(const Workload& workload, int tokens_per_step) {
  std::vector<SequenceChunk> chunks;
  double mean_uncached = 0;
  std::vector<std::pair<double, int64_t>> uncached;  // (weight, tokens) per bucket
  for (const LengthBucket& b : workload.input.buckets) {
    const int64_t u = std::max<int64_t>(
        1, std::llround(static_cast<double>(b.tokens) * (1 - workload.prefix_cache_hit_rate)));
    uncached.push_back({b.weight, u});
    mean_uncached += b.weight * static_cast<double>(u);
  }
  // Requests started per step, so that the step holds `tokens_per_step` tokens on average.
  const double requests = tokens_per_step / mean_uncached;
  for (size_t i = 0; i < uncached.size(); ++i) {
    const int64_t length = workload.input.buckets[i].tokens;
    const int64_t u = uncached[i].second;
    const int64_t prefix = length - u;
    const int64_t steps = (u + tokens_per_step - 1) / tokens_per_step;
    // Long prompts are represented by at most kMaxChunksPerBucket evenly spaced chunks.
    const int64_t shown = std::min<int64_t>(steps, kMaxChunksPerBucket);
    const double chunk = static_cast<double>(u) / steps;
    for (int64_t j = 0; j < shown; ++j) {
      const int64_t step = shown == steps ? j : j * steps / shown;
      SequenceChunk ch;
      ch.count = requests * uncached[i].first * static_cast<double>(steps) / shown;
      ch.context = prefix + std::llround(step * chunk);
      ch.new_tokens =
          std::max<int64_t>(1, std::llround((step + 1) * chunk) - std::llround(step * chunk));
      ch.sampled_tokens = step == steps - 1 ? 1 : 0;
      chunks.push_back(ch);
    }
  }
  return chunks;
}

std::vector<SequenceChunk> DecodeChunks(const Workload& workload, double sequences) {
  const std::vector<std::pair<double, double>> points = DecodeContextPoints(workload);
  double total = 0;
  for (const auto& point : points) total += point.second;
  const int drafts = workload.speculative.draft_tokens;
  std::vector<SequenceChunk> chunks;
  double acc_w = 0, acc_ctx = 0, cumulative = 0;
  int bucket = 1;
  for (size_t i = 0; i < points.size(); ++i) {
    acc_w += points[i].second;
    acc_ctx += points[i].first * points[i].second;
    cumulative += points[i].second;
    if (i + 1 < points.size() && cumulative < total * bucket / kDecodeContextBuckets) continue;
    SequenceChunk ch;
    ch.count = sequences * acc_w / total;
    ch.context = std::llround(acc_ctx / acc_w);
    ch.new_tokens = ch.sampled_tokens = 1 + drafts;
    chunks.push_back(ch);
    acc_w = acc_ctx = 0;
    while (bucket < kDecodeContextBuckets && cumulative >= total * bucket / kDecodeContextBuckets) {
      ++bucket;
    }
  }
  return chunks;
}

double AttentionRankImbalance(const Workload& workload, const UnitLayout& layout) {
  if (layout.phase != Phase::kDecode) return 1;
  return ContextImbalance(DecodeContextMoments(workload), layout.attention_ranks, layout.batch);
}

UnitStep BuildUnitStep(const ModelConfig& config, const ClusterConfig& cluster,
                       const Workload& requested, const UnitLayout& layout,
                       absl::Span<const SequenceChunk> chunks, const CostOptions& options) {
  const Workload workload = Servable(config, requested);
  const AttentionSide side =
      BuildAttentionSide(config, workload, chunks, options, GroupLayers(config));
  return AssembleUnitStep(config, ShapeOf(cluster), workload, layout, side);
}

namespace {

std::vector<SequenceChunk> ChunksFor(const Workload& workload, const UnitLayout& layout) {
  if (layout.phase == Phase::kPrefill) {
    std::vector<SequenceChunk> chunks = PrefillChunks(workload, layout.batch);
    for (SequenceChunk& ch : chunks) ch.count /= layout.micro_batches;
    return chunks;
  }
  return DecodeChunks(workload, static_cast<double>(layout.batch) / layout.micro_batches);
}

PhaseContext MakeContext(const ModelConfig& config, const ClusterConfig& cluster,
                         const Workload& workload, const PlannerOptions& options) {
  PhaseContext ctx{config, cluster, workload, options};
  ctx.shape = ShapeOf(cluster);
  ctx.weights = ComputeWeightFacts(config);
  ctx.groups = GroupLayers(config);
  const Slos slos = EffectiveSlos(workload, options);
  ctx.slo_ttft = slos.ttft;
  ctx.slo_tpot = slos.tpot;
  return ctx;
}

}  // namespace

PhaseEvaluation EvaluateLayout(const ModelConfig& config, const ClusterConfig& cluster,
                               const Workload& requested, const UnitLayout& layout,
                               const PlannerOptions& options) {
  const Workload workload = Servable(config, requested);
  const PhaseContext ctx = MakeContext(config, cluster, workload, options);
  const std::vector<SequenceChunk> chunks = ChunksFor(workload, layout);
  const AttentionSide side = BuildAttentionSide(config, workload, chunks, options.cost, ctx.groups);
  return Evaluate(ctx, layout, side);
}

absl::StatusOr<PlanResult> RunPlanner(const ModelConfig& config, const ClusterConfig& cluster,
                                      const Workload& requested, const PlannerOptions& options) {
  const auto start = std::chrono::steady_clock::now();
  const Workload workload = Servable(config, requested);
  const PhaseContext ctx = MakeContext(config, cluster, workload, options);
  PlanResult result;
  result.model = ModelName(config);
  result.cluster = cluster.name;
  result.hardware = cluster.hardware.name;
  result.workload = workload.name;
  result.options = options;
  result.options.progress = nullptr;  // the caller's callback must not outlive the run
  result.slo_ttft = ctx.slo_ttft;
  result.slo_tpot = ctx.slo_tpot;
  result.cluster_chips = ctx.shape.chips;
  result.requests_per_s = workload.requests_per_s;
  if (config.is_v4()) {
    const KvCost kv = ModelKvCost(config, options.cost.kv);
    result.kv_bytes_per_token = kv.bytes_per_token;
    result.kv_fixed_bytes_per_sequence = static_cast<double>(kv.fixed_bytes());
  } else {
    result.kv_bytes_per_token = SequenceStateBytes(config, options.cost, 1);
  }
  result.engram_table_bytes = EngramTableBytes(config);
  result.engram_bytes_per_token =
      EngramBytesPerToken(config) * static_cast<double>(config.engram.layer_ids.size());
  result.engram_replication = config.engram.enabled() ? std::max(1, cluster.engram.replication) : 0;
  result.speculative_drafts = DraftTokens(config, workload);
  if (config.is_v41() && workload.speculative.draft_tokens > 0) {
    result.notes.push_back(
        "the workload's speculative drafts are not planned: V4.1's DSpark stages are not "
        "modelled (the runtime does not evaluate them either)");
  }

  struct PhaseSweep {
    Phase phase;
    std::vector<UnitLayout> shapes;
    std::vector<int> batches;
    std::vector<int> micro_batches;
    std::vector<PhaseEvaluation> best;  // shortlist
  };
  const int dies = static_cast<int>(cluster.hardware.dies_per_chip.value);
  std::array<PhaseSweep, 2> sweeps = {
      PhaseSweep{Phase::kPrefill,
                 UnitShapes(config, ctx.shape, options.layouts, Phase::kPrefill, dies),
                 kPrefillTokens,
                 {1, 2},
                 {}},
      PhaseSweep{Phase::kDecode,
                 UnitShapes(config, ctx.shape, options.layouts, Phase::kDecode, dies),
                 kDecodeBatches,
                 {1, 2, 3},
                 {}},
  };
  int64_t total = 0;
  for (const PhaseSweep& s : sweeps) {
    total += static_cast<int64_t>(s.shapes.size() * s.batches.size() * s.micro_batches.size());
  }
  int64_t done = 0;
  for (PhaseSweep& sweep : sweeps) {
    std::vector<PhaseEvaluation> all;
    for (int batch : sweep.batches) {
      for (int m : sweep.micro_batches) {
        done += static_cast<int64_t>(sweep.shapes.size());
        if (sweep.phase == Phase::kDecode && m > batch) continue;
        UnitLayout probe;
        probe.phase = sweep.phase;
        probe.batch = batch;
        probe.micro_batches = m;
        const AttentionSide side = BuildAttentionSide(config, workload, ChunksFor(workload, probe),
                                                      options.cost, ctx.groups);
        for (UnitLayout layout : sweep.shapes) {
          layout.batch = batch;
          layout.micro_batches = m;
          PhaseEvaluation eval = Evaluate(ctx, layout, side);
          ++result.candidates;
          if (sweep.phase == Phase::kDecode && eval.memory_ratio <= 1) {
            result.decode_points.push_back({eval.latency, eval.tokens_per_s_per_chip});
          }
          all.push_back(std::move(eval));
        }
        if (options.progress) options.progress(done, total);
      }
    }
    sweep.best = Shortlist(std::move(all), kPhaseShortlist);
  }

  // Pareto frontier of decode: lowest TPOT for each throughput level.
  std::vector<std::pair<double, double>> points = result.decode_points;
  std::sort(points.begin(), points.end());
  double best = -1;
  for (const auto& p : points) {
    if (p.second > best) {
      result.decode_frontier.push_back(p);
      best = p.second;
    }
  }

  // Combine the shortlists into plans.
  const double mean_in = workload.input.Mean(), mean_out = workload.output.Mean();
  double mean_uncached = 0;
  for (const LengthBucket& b : workload.input.buckets) {
    mean_uncached +=
        b.weight * std::max(1.0, std::round(b.tokens * (1 - workload.prefix_cache_hit_rate)));
  }
  const double rate = workload.requests_per_s;
  const double engram_table_bytes = EngramTableBytes(config);
  const int replication = std::max(1, cluster.engram.replication);
  for (const PhaseEvaluation& p : sweeps[0].best) {
    for (const PhaseEvaluation& d : sweeps[1].best) {
      Plan plan;
      plan.prefill = p;
      plan.decode = d;
      const double p_capacity = p.tokens_per_s * std::max(p.max_load, 1e-9);
      const double d_capacity = d.tokens_per_s * std::max(d.max_load, 1e-9);
      plan.prefill_units = static_cast<int>(std::ceil(rate * mean_uncached / p_capacity));
      plan.decode_units = static_cast<int>(std::ceil(rate * mean_out / d_capacity));
      plan.chips = plan.prefill_units * p.layout.chips() + plan.decode_units * d.layout.chips();
      // Chips per request/s at the planned loads, without rounding units up.
      const double chips_per_rps = mean_uncached / (p.effective_per_chip() + 1e-30) +
                                   mean_out / (d.effective_per_chip() + 1e-30);
      plan.tokens_per_s_per_chip = (mean_in + mean_out) / chips_per_rps;
      plan.output_tokens_per_s_per_chip = mean_out / chips_per_rps;
      plan.ttft = p.latency;  // prefill samples the first token
      plan.tpot = d.latency;
      if (engram_table_bytes > 0) {
        // Memory nodes: enough RAM for `replication` copies of the released tables, enough
        // network for the lookups of the whole deployment at the planned loads, and one
        // node per replica at least.
        const int for_capacity = static_cast<int>(
            std::ceil(engram_table_bytes * replication / cluster.engram.memory_node_ram));
        const double tokens_per_s = plan.prefill_units * p.tokens_per_s * p.max_load +
                                    plan.decode_units * d.tokens_per_s * d.max_load;
        plan.engram_lookup_bytes_per_s = EngramLookupBytesPerSecond(config, tokens_per_s);
        const int for_bandwidth = static_cast<int>(
            std::ceil(plan.engram_lookup_bytes_per_s / options.engram_node_bandwidth));
        plan.memory_nodes = std::max({for_capacity, for_bandwidth, replication});
        plan.engram_ram_per_node = EngramRamPerMemoryNode(config, plan.memory_nodes, replication);
      }
      plan.cost_per_hour = plan.chips * options.chip_cost_per_hour +
                           plan.memory_nodes * options.memory_node_cost_per_hour;
      plan.cost_per_million_tokens =
          plan.cost_per_hour / (rate * (mean_in + mean_out) * 3600 / 1e6);
      auto check = [&](double ratio, const std::string& what) {
        plan.violation = std::max(plan.violation, ratio);
        if (ratio > 1) plan.violations.push_back(what);
      };
      check(p.memory_ratio,
            absl::StrFormat("prefill memory %.0f%% of usable HBM", 100 * p.memory_ratio));
      check(d.memory_ratio,
            absl::StrFormat("decode memory %.0f%% of usable HBM", 100 * d.memory_ratio));
      if (ctx.slo_ttft > 0) {
        check(p.latency_ratio,
              absl::StrCat("TTFT p90 ", Ms(p.latency), " > SLO ", Ms(ctx.slo_ttft)));
      }
      if (ctx.slo_tpot > 0) {
        check(d.latency_ratio, absl::StrCat("TPOT ", Ms(d.latency), " > SLO ", Ms(ctx.slo_tpot)));
      }
      check(static_cast<double>(plan.chips) / ctx.shape.chips,
            absl::StrFormat("needs %d chips, the cluster has %d", plan.chips, ctx.shape.chips));
      result.plans.push_back(std::move(plan));
    }
  }
  auto better = [&](const Plan& a, const Plan& b) {
    if (a.feasible() != b.feasible()) return a.feasible();
    if (!a.feasible() && a.violation != b.violation) return a.violation < b.violation;
    switch (options.objective) {
      case Objective::kThroughputPerChip:
        return a.tokens_per_s_per_chip > b.tokens_per_s_per_chip;
      case Objective::kChipsForRate:
        if (a.chips != b.chips) return a.chips < b.chips;
        return a.tokens_per_s_per_chip > b.tokens_per_s_per_chip;
      case Objective::kCost:
        return a.cost_per_hour < b.cost_per_hour;
    }
    return false;
  };
  std::sort(result.plans.begin(), result.plans.end(), better);
  if (static_cast<int>(result.plans.size()) > options.top) result.plans.resize(options.top);
  result.feasible = !result.plans.empty() && result.plans[0].feasible();
  if (!result.feasible) {
    // Name what rules out the closest plans: a phase with no feasible layout, else size.
    std::vector<std::string> reasons;
    for (const PhaseSweep& s : sweeps) {
      if (s.best.empty() || s.best[0].feasible()) continue;
      const PhaseEvaluation& e = s.best[0];
      const std::string phase(PhaseName(s.phase));
      if (e.memory_ratio > 1) {
        reasons.push_back(
            absl::StrFormat("memory: no %s layout fits in usable HBM (closest needs %.0f%%)", phase,
                            100 * e.memory_ratio));
      } else if (s.phase == Phase::kDecode) {
        reasons.push_back(absl::StrCat("TPOT: the fastest decode layout that fits reaches ",
                                       Ms(e.latency), ", the SLO is ", Ms(ctx.slo_tpot)));
      } else {
        reasons.push_back(absl::StrCat("TTFT: the fastest prefill layout that fits reaches p90 ",
                                       Ms(e.latency), ", the SLO is ", Ms(ctx.slo_ttft)));
      }
    }
    if (reasons.empty() && !result.plans.empty()) {
      reasons.push_back(absl::StrCat("cluster size: ", result.plans[0].violations.empty()
                                                           ? std::string("?")
                                                           : result.plans[0].violations.back()));
    }
    result.binding_constraint = absl::StrJoin(reasons, "; ");
  }
  result.sweep_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return result;
}

}  // namespace dsv4::planner
