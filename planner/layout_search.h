// The capacity planner: searches serving layouts of a model on a cluster for a workload
// and ranks them, pricing every layout with the cost model of core/cost_model.h.
//
// A plan is a prefill/decode-disaggregated deployment: some units serve prefill and some
// decode, each unit being one MPI world of attention ranks (data parallel over sequences)
// and expert ranks (expert parallel, with redundant experts). Units are either
// disaggregated — attention and expert ranks on separate chips, as dsv4-engine runs them —
// or co-located — every chip attends and holds experts, as in DeepSeek's V3/R1 serving.
//
// Per unit step the planner builds each kind of rank's StepCost from the analytic builders
// (summing identical layers once), prices it with ModelledTime(), and derives:
// - prefill: computed tokens/s, TTFT (M/G/1 queueing on each attention rank, the
//   request's chunks, the KV hand-off to decode) and the highest load meeting the TTFT SLO;
// - decode: output tokens/s, TPOT = step time / tokens per step (MTP drafts accepted);
// - memory per chip: weights by format, KV state in the production format, activations,
//   against HBM less a reserve.
// Phases are searched separately (their costs are independent), then the best of each are
// combined into plans with unit counts for the workload's rate, Engram memory nodes (RAM
// for the released tables × replication, network for the lookups) and a cost. V4.1 is
// planned with CSA2's shared KV, its released KV precision and without DSpark drafts. When nothing
// meets the SLOs, memory or cluster size, the closest plans are returned with the constraint that
// binds.
#ifndef DSV4_PLANNER_LAYOUT_SEARCH_H_
#define DSV4_PLANNER_LAYOUT_SEARCH_H_

#include <array>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/cluster_config.h"
#include "core/cost_model.h"
#include "core/model_config.h"
#include "planner/workload.h"

namespace dsv4::planner {

enum class Objective { kThroughputPerChip, kChipsForRate, kCost };
std::string_view ObjectiveName(Objective objective);  // "throughput-per-chip"
absl::StatusOr<Objective> ParseObjective(std::string_view name);

// Unit layouts: co-located (every chip attends and holds experts, DeepSeek's V3/R1
// serving), attention-FFN disaggregated (attention and expert ranks on separate chips, as
// dsv4-engine runs them), or both. Unrelated to the prefill/decode split of every plan.
enum class LayoutFamily { kColocated, kAfd, kBoth };
std::string_view LayoutFamilyName(LayoutFamily family);  // "colocated", "afd", "both"
absl::StatusOr<LayoutFamily> ParseLayoutFamily(std::string_view name);

enum class Phase { kPrefill, kDecode };
std::string_view PhaseName(Phase phase);

struct PlannerOptions {
  Objective objective = Objective::kThroughputPerChip;
  std::optional<double> slo_ttft;  // seconds; overrides the workload's
  std::optional<double> slo_tpot;
  // The TTFT SLO (p90) when neither slo_ttft nor the workload sets one: without any,
  // prefill would pick the largest steps (65k tokens) whatever the first token waits.
  double default_slo_ttft = 2.0;
  LayoutFamily layouts = LayoutFamily::kColocated;
  // HBM kept free for the runtime, allocator fragmentation and communication buffers.
  double memory_reserve = 0.10;
  // Cost objective: relative cost of a chip-hour and of an Engram memory node-hour.
  double chip_cost_per_hour = 1.0;
  double memory_node_cost_per_hour = 0.25;
  // Engram memory nodes: network bandwidth each serves (bytes/s) and fetch latency.
  double engram_node_bandwidth = 50e9;
  double engram_latency = 20e-6;
  int top = 10;  // plans reported
  CostOptions cost;
  // Called with (done, total) candidate counts during the sweep.
  std::function<void(int64_t, int64_t)> progress;
};

// One serving unit's layout for one phase.
struct UnitLayout {
  Phase phase = Phase::kDecode;
  bool colocated = false;
  int attention_ranks = 1;    // attention data-parallel size
  int expert_ranks = 1;       // expert-parallel size (= attention_ranks when co-located)
  int redundant_experts = 0;  // physical expert slots beyond the logical experts
  int batch = 1;              // decode: sequences per attention rank; prefill: tokens per
                              // attention rank per step (chunked-prefill budget)
  int micro_batches = 1;
  bool hierarchical = false;  // relayed dispatch (one copy per destination supernode/node)
  // Ranks sharing one chip package: 2 on a two-die package (Ascend 910C) run one rank per
  // die, each with half the package's compute, HBM and links. At most the chip's dies.
  int ranks_per_chip = 1;
  // Disaggregated only: expert-side ranks holding a replica of the shared expert, which then
  // leaves the attention ranks (CloudMatrix-Infer's decode: 32 of 320 dies).
  int shared_expert_ranks = 0;

  int ranks() const {
    return colocated ? attention_ranks : attention_ranks + expert_ranks + shared_expert_ranks;
  }
  int chips() const { return (ranks() + ranks_per_chip - 1) / ranks_per_chip; }
  int slots_per_expert_rank(const ModelConfig& config) const;
  // "A96+E416 r32 b64 m2 flat", with " d2" (ranks per chip) and " s32" (shared-expert
  // ranks) when they are not the defaults.
  std::string Describe() const;
};

struct MemoryUse {
  WeightBytesByFormat weights;
  double kv = 0;
  double activations = 0;
  double capacity = 0;  // HBM
  double usable = 0;    // HBM less the reserve
  double used() const { return weights.total() + kv + activations; }
  double headroom() const { return usable - used(); }
};

// The unit's StepCosts for one step: {attention rank, expert rank} or {co-located rank},
// each the busiest of its kind. Exposed for tests and for the engine's cross-check.
struct UnitStep {
  std::vector<StepCost> ranks;  // {attention, expert[, shared-expert replica]} or {co-located}
  double tokens_per_rank = 0;   // new tokens per attention rank per step
};

struct PhaseEvaluation {
  UnitLayout layout;
  StepTime step;
  double tokens_per_s = 0;           // unit: computed input tokens/s (prefill) or output tokens/s
  double tokens_per_s_per_chip = 0;  // at full load
  double latency = 0;                // TTFT p90 at max_load (prefill) or TPOT (decode), s
  double max_load = 0;               // highest utilisation meeting the SLO and max_utilization
  MemoryUse attention_memory;        // the co-located rank's when co-located
  MemoryUse expert_memory;           // empty when co-located
  double memory_ratio = 0;           // worst used / usable
  double latency_ratio = 0;          // latency / SLO (0 without an SLO)
  bool feasible() const { return memory_ratio <= 1 && latency_ratio <= 1 && max_load > 0; }
  // Effective per-chip rate at the planned load, the phase's ranking score.
  double effective_per_chip() const { return tokens_per_s_per_chip * max_load; }
};

struct Plan {
  PhaseEvaluation prefill;
  PhaseEvaluation decode;
  int prefill_units = 0;
  int decode_units = 0;
  int memory_nodes = 0;  // Engram memory nodes (0 without Engram)
  // Engram: RAM each memory node holds (tables × replication / memory_nodes) and the lookup
  // traffic of the whole deployment on the engine↔memory-node links at the planned loads.
  double engram_ram_per_node = 0;
  double engram_lookup_bytes_per_s = 0;
  int chips = 0;
  double tokens_per_s_per_chip = 0;  // (input + output) tokens/s the chips sustain, per chip
  double output_tokens_per_s_per_chip = 0;
  double ttft = 0;  // p90, s
  double tpot = 0;  // s
  double cost_per_hour = 0;
  double cost_per_million_tokens = 0;
  std::vector<std::string> violations;  // empty when feasible
  double violation = 0;                 // worst constraint ratio (≤ 1 when feasible)
  bool feasible() const { return violations.empty(); }
};

struct PlanResult {
  std::string model;
  std::string cluster;
  std::string hardware;
  std::string workload;
  PlannerOptions options;
  double slo_ttft = 0;  // effective SLOs (0 = none)
  double slo_tpot = 0;
  int cluster_chips = 0;
  double requests_per_s = 0;
  // Model facts in the planner's KV layout (options.cost.kv): growth of the KV state per
  // token (V4.1: compressed entries and index keys of the kv sources only) and the fixed
  // per-sequence state (sliding windows of every layer, compressor buffers).
  double kv_bytes_per_token = 0;
  double kv_fixed_bytes_per_sequence = 0;
  // Engram (0 without): the released tables (FP8 rows + E8M0 per 32), bytes looked up per
  // token over all Engram layers, and the replication planned.
  double engram_table_bytes = 0;
  double engram_bytes_per_token = 0;
  int engram_replication = 0;
  int speculative_drafts = 0;      // drafts per decode step actually planned
  std::vector<std::string> notes;  // modelling caveats for the report
  std::vector<Plan> plans;         // ranked, best first (closest first when none is feasible)
  bool feasible = false;
  std::string binding_constraint;  // when infeasible: what rules every layout out
  // Decode candidates for the frontier chart: (TPOT, output tokens/s per chip) of every
  // memory-feasible decode layout's best batch, and the Pareto frontier among them.
  std::vector<std::pair<double, double>> decode_points;
  std::vector<std::pair<double, double>> decode_frontier;
  int64_t candidates = 0;  // unit layouts evaluated
  double sweep_seconds = 0;
};

// The chunks one attention rank processes per micro-batch in a steady step.
std::vector<SequenceChunk> PrefillChunks(const Workload& workload, int tokens_per_step);
std::vector<SequenceChunk> DecodeChunks(const Workload& workload, double sequences);

// The SLOs a run plans for, in seconds (0: none): the options', else the workload's, else
// (TTFT only) options.default_slo_ttft.
struct Slos {
  double ttft = 0;
  double tpot = 0;
};
Slos EffectiveSlos(const Workload& workload, const PlannerOptions& options);

// "deepseek-v4-pro" for models/deepseek-v4-pro/config.json (PlanResult::model).
std::string ModelName(const ModelConfig& config);

// Decode: the busiest attention rank's context-proportional work (core attention, index
// scores) over the mean. A rank's B = layout.batch sequences have contexts drawn from the
// workload's decode distribution (mean μ, deviation σ), so its total is about normal with
// mean Bμ and deviation √B·σ, and the largest of R = attention_ranks totals is about
// Bμ + √B·σ·√(2 ln R): the factor is 1 + σ·√(2 ln R) / (μ·√B). 1 for prefill and R = 1.
double AttentionRankImbalance(const Workload& workload, const UnitLayout& layout);

// The StepCosts of one step of `layout` (see UnitStep), with `chunks` per micro-batch.
// Identical layers are priced once and scaled; the result equals the per-layer sum.
UnitStep BuildUnitStep(const ModelConfig& config, const ClusterConfig& cluster,
                       const Workload& workload, const UnitLayout& layout,
                       absl::Span<const SequenceChunk> chunks, const CostOptions& options);

// Prices a single layout (the validation tests and the CLI's reports use it).
PhaseEvaluation EvaluateLayout(const ModelConfig& config, const ClusterConfig& cluster,
                               const Workload& workload, const UnitLayout& layout,
                               const PlannerOptions& options);

absl::StatusOr<PlanResult> RunPlanner(const ModelConfig& config, const ClusterConfig& cluster,
                                      const Workload& workload, const PlannerOptions& options);

}  // namespace dsv4::planner

#endif  // DSV4_PLANNER_LAYOUT_SEARCH_H_
