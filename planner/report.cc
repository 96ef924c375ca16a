#include "planner/report.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "core/status_macros.h"

namespace dsv4::planner {
namespace {

double Gb(double bytes) { return bytes / 1e9; }
double Ms(double seconds) { return seconds * 1e3; }

std::string MemoryCell(const PhaseEvaluation& e) {
  const double used = std::max(e.attention_memory.used(), e.expert_memory.used());
  return absl::StrFormat("%.0f/%.0f", Gb(used), Gb(e.attention_memory.capacity));
}

std::string Units(const UnitLayout& layout, int units) {
  return absl::StrCat(layout.Describe(), " x", units);
}

// "compute 41.2 ms, hbm 12.0 ms, ..." for the classes with any busy time.
std::string BusyLine(const StepTime& step) {
  std::vector<std::string> parts;
  for (int i = 0; i < static_cast<int>(step.busy.size()); ++i) {
    if (step.busy[i] <= 0) continue;
    parts.push_back(absl::StrFormat("%s %.2f ms", BottleneckName(static_cast<Bottleneck>(i)),
                                    Ms(step.busy[i])));
  }
  return absl::StrJoin(parts, ", ");
}

std::string MemoryLine(const char* who, const MemoryUse& m) {
  std::vector<std::string> formats;
  for (int f = 0; f < kNumStorageFormats; ++f) {
    if (m.weights.bytes[f] <= 0) continue;
    formats.push_back(absl::StrFormat("%s %.1f", StorageFormatName(static_cast<StorageFormat>(f)),
                                      Gb(m.weights.bytes[f])));
  }
  return absl::StrFormat(
      "    %-15s weights %.1f GB (%s), KV %.1f GB, activations %.1f GB = %.1f of %.1f GB usable, "
      "headroom %.1f GB\n",
      who, Gb(m.weights.total()), absl::StrJoin(formats, ", "), Gb(m.kv), Gb(m.activations),
      Gb(m.used()), Gb(m.usable), Gb(m.headroom()));
}

// "prefill: 3 unit(s) of ..." in a plan; "prefill unit ..." for a pinned layout (units 0).
std::string PhaseDetails(const PhaseEvaluation& e, int units) {
  std::string out;
  const bool decode = e.layout.phase == Phase::kDecode;
  const UnitLayout& l = e.layout;
  if (units > 0) {
    absl::StrAppendFormat(&out, "  %s: %d unit(s) of %s, %d chips each", PhaseName(l.phase), units,
                          l.Describe(), l.chips());
  } else {
    absl::StrAppendFormat(&out, "  %s unit %s, %d chips", PhaseName(l.phase), l.Describe(),
                          l.chips());
  }
  if (l.ranks_per_chip > 1 || l.shared_expert_ranks > 0) {
    absl::StrAppendFormat(&out, " (%d ranks per chip, %d shared-expert ranks)", l.ranks_per_chip,
                          l.shared_expert_ranks);
  }
  out += "\n";
  absl::StrAppendFormat(&out,
                        "    step %.2f ms; %s %.0f tokens/s per unit, %.0f per chip at full load, "
                        "%.0f at the planned load %.0f%%; %s %.1f ms\n",
                        Ms(e.step.total), decode ? "output" : "computed input", e.tokens_per_s,
                        e.tokens_per_s_per_chip, e.effective_per_chip(), 100 * e.max_load,
                        decode ? "TPOT" : "TTFT p90", Ms(e.latency));
  absl::StrAppendFormat(&out, "    busy per step: %s; binding: %s\n", BusyLine(e.step),
                        BottleneckName(e.step.binding));
  std::vector<std::string> components;
  for (int i = 0; i < kNumCostComponents; ++i) {
    if (e.step.stages.component[i] < 1e-6 * e.step.total) continue;
    components.push_back(absl::StrFormat("%s %.2f",
                                         CostComponentName(static_cast<CostComponent>(i)),
                                         Ms(e.step.stages.component[i])));
  }
  absl::StrAppendFormat(&out, "    time by component (ms, roofline): %s\n",
                        absl::StrJoin(components, ", "));
  absl::StrAppendFormat(&out,
                        "    compute: attention %.2f ms, experts %.2f ms; FLOP-bound %.2f ms, "
                        "HBM-bound %.2f ms\n",
                        Ms(e.step.stages.attention_compute), Ms(e.step.stages.expert_compute),
                        Ms(e.step.stages.compute_bound), Ms(e.step.stages.hbm_bound));
  std::vector<std::string> links;
  for (int c = 0; c < kNumLinkClasses; ++c) {
    links.push_back(absl::StrFormat("%s %.2f", LinkClassName(static_cast<LinkClass>(c)),
                                    Ms(e.step.stages.link[c])));
  }
  absl::StrAppendFormat(&out,
                        "    all-to-all: dispatch %.2f ms, combine %.2f ms; link time (ms): %s, "
                        "latency %.2f\n",
                        Ms(e.step.stages.dispatch), Ms(e.step.stages.combine),
                        absl::StrJoin(links, ", "), Ms(e.step.stages.latency));
  if (e.step.stages.engram > 0) {
    absl::StrAppendFormat(&out, "    engram fetch %.2f ms, %.2f ms of it exposed\n",
                          Ms(e.step.stages.engram), Ms(e.step.stages.engram_exposed));
  }
  if (l.colocated) {
    out += MemoryLine("per chip:", e.attention_memory);
  } else {
    out += MemoryLine("attention chip:", e.attention_memory);
    out += MemoryLine("expert chip:", e.expert_memory);
  }
  return out;
}

// The model's KV and Engram figures the plans rest on.
std::string ModelFacts(const PlanResult& r) {
  std::string out;
  if (r.kv_fixed_bytes_per_sequence > 0) {
    absl::StrAppendFormat(&out,
                          "model: KV %.1f B/token (compressed entries and indexer keys) + %.2f MB "
                          "per sequence (sliding windows, compressor buffers), production "
                          "layout\n",
                          r.kv_bytes_per_token, r.kv_fixed_bytes_per_sequence / 1e6);
  } else {
    absl::StrAppendFormat(&out, "model: KV %.1f B/token\n", r.kv_bytes_per_token);
  }
  if (r.engram_table_bytes > 0) {
    absl::StrAppendFormat(&out,
                          "model: Engram tables %.2f GB on memory nodes (FP8 rows + E8M0 scales, "
                          "as released); lookups %.0f B/token\n",
                          Gb(r.engram_table_bytes), r.engram_bytes_per_token);
  }
  for (const std::string& note : r.notes) absl::StrAppend(&out, "note: ", note, "\n");
  return out + "\n";
}

std::string TableRows(const std::vector<Plan>& plans) {
  std::string out = absl::StrFormat(
      "  %-3s %-34s %-34s %6s %10s %10s %10s %9s %8s %8s %8s  %-28s %s\n", "#",
      "prefill unit x count", "decode unit x count", "chips", "P in/chip", "D out/chip", "all/chip",
      "TTFT p90", "TPOT", "mem P GB", "mem D GB", "binding P | D", "dsv4-engine");
  for (size_t i = 0; i < plans.size(); ++i) {
    const Plan& p = plans[i];
    absl::StrAppendFormat(
        &out, "  %-3d %-34s %-34s %6d %10.0f %10.0f %10.0f %6.0f ms %5.1f ms %8s %8s  %-28s %s%s\n",
        i + 1, Units(p.prefill.layout, p.prefill_units), Units(p.decode.layout, p.decode_units),
        p.chips, p.prefill.effective_per_chip(), p.decode.effective_per_chip(),
        p.tokens_per_s_per_chip, Ms(p.ttft), Ms(p.tpot), MemoryCell(p.prefill),
        MemoryCell(p.decode),
        absl::StrCat(std::string(BottleneckName(p.prefill.step.binding)), " | ",
                     std::string(BottleneckName(p.decode.step.binding))),
        EngineSupportOf(p).cell,
        p.feasible() ? "" : absl::StrCat("  [", absl::StrJoin(p.violations, "; "), "]"));
  }
  return out;
}

// The legend under the table, with the deployability caveats of the plans it shows.
std::string TableLegend(const std::vector<Plan>& plans) {
  std::string out =
      "  P in/chip: computed input tokens/s per prefill chip, D out/chip: output tokens/s per "
      "decode chip,\n"
      "    both at the planned load; all/chip: input + output tokens/s per chip of the whole "
      "plan\n"
      "  chips: whole units for the workload's rate; mem: busiest chip of the unit, used/HBM GB\n";
  bool colocated = false, afd = false;
  for (const Plan& p : plans) (EngineSupportOf(p).runs ? afd : colocated) = true;
  if (colocated) {
    out +=
        "  dsv4-engine \"no\": it runs attention and expert ranks as separate processes on "
        "separate chips;\n"
        "    co-located plans cannot run on it (plan with --layouts afd for plans it runs)\n";
  }
  if (afd) {
    out +=
        "  dsv4-engine \"units*\": each unit runs as its own engine serving prefill (chunked) and "
        "decode;\n"
        "    the runtime has no KV hand-off from prefill to decode units, so the split is "
        "modelled, not run\n";
  }
  return out;
}

nlohmann::json MemoryJson(const MemoryUse& m) {
  nlohmann::json weights = nlohmann::json::object();
  for (int f = 0; f < kNumStorageFormats; ++f) {
    weights[std::string(StorageFormatName(static_cast<StorageFormat>(f)))] = Gb(m.weights.bytes[f]);
  }
  return {{"weights_GB", weights},
          {"weights_total_GB", Gb(m.weights.total())},
          {"kv_GB", Gb(m.kv)},
          {"activations_GB", Gb(m.activations)},
          {"used_GB", Gb(m.used())},
          {"usable_GB", Gb(m.usable)},
          {"capacity_GB", Gb(m.capacity)},
          {"headroom_GB", Gb(m.headroom())}};
}

nlohmann::json EngineJson(const EngineSupport& support) {
  return {{"runs", support.runs}, {"reason", support.reason}};
}

nlohmann::json PhaseJson(const PhaseEvaluation& e) {
  const UnitLayout& l = e.layout;
  nlohmann::json components = nlohmann::json::object();
  for (int i = 0; i < kNumCostComponents; ++i) {
    components[std::string(CostComponentName(static_cast<CostComponent>(i)))] =
        Ms(e.step.stages.component[i]);
  }
  nlohmann::json links = nlohmann::json::object();
  nlohmann::json busy = nlohmann::json::object();
  for (int c = 0; c < kNumLinkClasses; ++c) {
    links[std::string(LinkClassName(static_cast<LinkClass>(c)))] = Ms(e.step.stages.link[c]);
  }
  for (int i = 0; i < static_cast<int>(e.step.busy.size()); ++i) {
    busy[std::string(BottleneckName(static_cast<Bottleneck>(i)))] = Ms(e.step.busy[i]);
  }
  nlohmann::json memory = {{"attention_rank", MemoryJson(e.attention_memory)}};
  if (!l.colocated) memory["expert_rank"] = MemoryJson(e.expert_memory);
  return {
      {"layout",
       {{"phase", std::string(PhaseName(l.phase))},
        {"colocated", l.colocated},
        {"attention_ranks", l.attention_ranks},
        {"expert_ranks", l.expert_ranks},
        {"redundant_experts", l.redundant_experts},
        {l.phase == Phase::kDecode ? "sequences_per_rank" : "tokens_per_rank_per_step", l.batch},
        {"micro_batches", l.micro_batches},
        {"dispatch", l.hierarchical ? "hierarchical" : "flat"},
        {"ranks_per_chip", l.ranks_per_chip},
        {"shared_expert_ranks", l.shared_expert_ranks},
        {"chips", l.chips()},
        {"description", l.Describe()}}},
      {"step_ms", Ms(e.step.total)},
      {"tokens_per_s", e.tokens_per_s},
      {"tokens_per_s_per_chip", e.tokens_per_s_per_chip},
      {l.phase == Phase::kDecode ? "tpot_ms" : "ttft_p90_ms", Ms(e.latency)},
      {"max_load", e.max_load},
      {"tokens_per_s_per_chip_at_planned_load", e.effective_per_chip()},
      {"memory_ratio", e.memory_ratio},
      {"latency_ratio", e.latency_ratio},
      {"feasible", e.feasible()},
      {"memory", memory},
      {"time_ms",
       {{"components", components},
        {"attention_compute", Ms(e.step.stages.attention_compute)},
        {"expert_compute", Ms(e.step.stages.expert_compute)},
        {"dispatch", Ms(e.step.stages.dispatch)},
        {"combine", Ms(e.step.stages.combine)},
        {"links", links},
        {"link_latency", Ms(e.step.stages.latency)},
        {"engram", Ms(e.step.stages.engram)},
        {"engram_exposed", Ms(e.step.stages.engram_exposed)}}},
      {"busy_ms", busy},
      {"binding", std::string(BottleneckName(e.step.binding))},
      {"dsv4_engine", EngineJson(EngineSupportOf(l))},
  };
}

std::string XmlEscape(const std::string& text) {
  return absl::StrReplaceAll(text,
                             {{"&", "&amp;"}, {"<", "&lt;"}, {">", "&gt;"}, {"\"", "&quot;"}});
}

// Chip slots of a unit: rank r's chip when attention and expert ranks are interleaved in
// proportion over consecutive chips.
std::vector<int> InterleavedRankChips(int attention, int expert) {
  std::vector<int> attention_chips, expert_chips;
  const int total = attention + expert;
  for (int chip = 0; chip < total; ++chip) {
    const bool is_attention = (static_cast<int64_t>(chip + 1) * attention) / total >
                              (static_cast<int64_t>(chip) * attention) / total;
    (is_attention ? attention_chips : expert_chips).push_back(chip);
  }
  attention_chips.insert(attention_chips.end(), expert_chips.begin(), expert_chips.end());
  return attention_chips;
}

std::string LinkYaml(const char* key, const LinkSpec& link) {
  return absl::StrFormat(
      "    %s:\n      bandwidth_GBps: %g\n      latency_us: %g\n      source: \"%s\"\n", key,
      link.bandwidth / 1e9, link.latency * 1e6,
      absl::StrReplaceAll(link.source, {{"\\", "\\\\"}, {"\"", "\\\""}}));
}

}  // namespace

std::string FormatPlanTable(const PlanResult& r) {
  std::string out;
  absl::StrAppendFormat(
      &out, "dsv4 plan: %s on %s (%s, %d chips), workload %s at %.1f requests/s\n", r.model,
      r.cluster, r.hardware, r.cluster_chips, r.workload, r.requests_per_s);
  absl::StrAppendFormat(&out,
                        "objective %s; SLO TTFT p90 %s, TPOT %s; %d unit layouts in %.2f s\n\n",
                        ObjectiveName(r.options.objective),
                        r.slo_ttft > 0 ? absl::StrFormat("<= %.0f ms", Ms(r.slo_ttft)) : "none",
                        r.slo_tpot > 0 ? absl::StrFormat("<= %.1f ms", Ms(r.slo_tpot)) : "none",
                        r.candidates, r.sweep_seconds);
  out += ModelFacts(r);
  if (r.plans.empty()) return out + "no layout could be evaluated\n";
  if (!r.feasible) {
    absl::StrAppendFormat(&out, "NO LAYOUT MEETS THE CONSTRAINTS. Binding: %s\nClosest layouts:\n",
                          r.binding_constraint);
  }
  out += TableRows(r.plans);
  out += TableLegend(r.plans);
  const Plan& best = r.plans[0];
  absl::StrAppendFormat(&out, "\n%s plan: %d chips (%d prefill + %d decode)",
                        r.feasible ? "Chosen" : "Closest", best.chips,
                        best.prefill_units * best.prefill.layout.chips(),
                        best.decode_units * best.decode.layout.chips());
  if (best.memory_nodes > 0)
    absl::StrAppendFormat(&out, " and %d Engram memory nodes", best.memory_nodes);
  absl::StrAppendFormat(&out, ", %.2f cost units per million tokens\n",
                        best.cost_per_million_tokens);
  if (best.memory_nodes > 0) {
    absl::StrAppendFormat(&out,
                          "  engram: %d memory node(s) x %.2f GB RAM (tables %.2f GB x "
                          "replication %d); lookups %.2f GB/s on the engine-memory-node links "
                          "at the planned load\n",
                          best.memory_nodes, Gb(best.engram_ram_per_node), Gb(r.engram_table_bytes),
                          r.engram_replication, Gb(best.engram_lookup_bytes_per_s));
  }
  out += PhaseDetails(best.prefill, best.prefill_units);
  out += PhaseDetails(best.decode, best.decode_units);
  const EngineSupport support = EngineSupportOf(best);
  absl::StrAppendFormat(&out, "  dsv4-engine: %s%s\n",
                        support.runs ? "" : "cannot run it: ", support.reason);
  return out;
}

EngineSupport EngineSupportOf(const UnitLayout& l) {
  const std::string phase(PhaseName(l.phase));
  if (l.colocated) {
    return {false,
            absl::StrCat("the ", phase, " unit ", l.Describe(),
                         " is co-located (every chip attends and holds experts); dsv4-engine "
                         "runs attention and expert ranks as separate processes on separate "
                         "chips (plan with --layouts afd)"),
            "no: co-located"};
  }
  if (l.ranks_per_chip > 1) {
    return {false,
            absl::StrCat("the ", phase, " unit runs ", l.ranks_per_chip,
                         " ranks per chip; dsv4-engine places one rank on each chip"),
            "no: ranks per chip"};
  }
  if (l.shared_expert_ranks > 0) {
    return {false,
            absl::StrCat("the ", phase, " unit has ", l.shared_expert_ranks,
                         " shared-expert ranks; dsv4-engine keeps the shared expert on the "
                         "attention ranks"),
            "no: shared-expert ranks"};
  }
  return {true,
          absl::StrCat("the ", phase,
                       " unit runs as one dsv4-engine that serves prefill (chunked) and decode "
                       "itself"),
          "unit*"};
}

EngineSupport EngineSupportOf(const Plan& plan) {
  for (const PhaseEvaluation* e : {&plan.prefill, &plan.decode}) {
    EngineSupport unit = EngineSupportOf(e->layout);
    if (!unit.runs) return unit;
  }
  return {true,
          "each unit runs as its own dsv4-engine serving prefill (chunked) and decode; the runtime "
          "has no KV hand-off from a prefill unit to a decode unit, so the split's TTFT and TPOT "
          "are modelled, not what the engines deliver",
          "units*"};
}

nlohmann::json PhaseEvaluationToJson(const PhaseEvaluation& evaluation) {
  return PhaseJson(evaluation);
}

// What rules a pinned layout out, worded as the search words a plan's violations.
std::vector<std::string> PinnedViolations(const PinnedEvaluation& pinned) {
  const PhaseEvaluation& e = pinned.evaluation;
  const bool decode = e.layout.phase == Phase::kDecode;
  std::vector<std::string> out;
  if (e.memory_ratio > 1) {
    out.push_back(absl::StrFormat("%s memory %.0f%% of usable HBM", PhaseName(e.layout.phase),
                                  100 * e.memory_ratio));
  }
  if (e.latency_ratio > 1) {
    out.push_back(absl::StrFormat("%s %.1f ms > SLO %.1f ms", decode ? "TPOT" : "TTFT p90",
                                  Ms(e.latency), Ms(decode ? pinned.slo_tpot : pinned.slo_ttft)));
  }
  if (e.max_load <= 0) out.push_back("no load meets the SLO and the workload's max utilisation");
  if (e.layout.chips() > pinned.cluster_chips) {
    out.push_back(absl::StrFormat("needs %d chips, the cluster has %d", e.layout.chips(),
                                  pinned.cluster_chips));
  }
  return out;
}

std::string FormatPinnedEvaluation(const PinnedEvaluation& pinned) {
  const PhaseEvaluation& e = pinned.evaluation;
  const bool decode = e.layout.phase == Phase::kDecode;
  const double slo = decode ? pinned.slo_tpot : pinned.slo_ttft;
  std::string out;
  absl::StrAppendFormat(&out, "dsv4 plan evaluate: %s on %s (%s, %d chips), workload %s\n",
                        pinned.model, pinned.cluster, pinned.hardware, pinned.cluster_chips,
                        pinned.workload);
  absl::StrAppendFormat(&out, "%s SLO %s; the layout is priced as the search prices it\n",
                        decode ? "TPOT" : "TTFT p90",
                        slo > 0 ? absl::StrFormat("<= %.1f ms", Ms(slo)) : "none");
  for (const std::string& note : pinned.notes) absl::StrAppend(&out, "note: ", note, "\n");
  out += "\n";
  out += PhaseDetails(e, 0);
  const std::vector<std::string> violations = PinnedViolations(pinned);
  absl::StrAppendFormat(&out, "  %s\n",
                        violations.empty()
                            ? std::string("feasible: fits in memory and the cluster, meets the SLO")
                            : absl::StrCat("INFEASIBLE: ", absl::StrJoin(violations, "; ")));
  const EngineSupport support = EngineSupportOf(e.layout);
  absl::StrAppendFormat(&out, "  dsv4-engine: %s%s\n",
                        support.runs ? "" : "cannot run it: ", support.reason);
  return out;
}

nlohmann::json PinnedEvaluationToJson(const PinnedEvaluation& pinned) {
  const PhaseEvaluation& e = pinned.evaluation;
  return {
      {"model", pinned.model},
      {"cluster", pinned.cluster},
      {"hardware", pinned.hardware},
      {"workload", pinned.workload},
      {"cluster_chips", pinned.cluster_chips},
      {"slo",
       {{"ttft_p90_ms",
         pinned.slo_ttft > 0 ? nlohmann::json(Ms(pinned.slo_ttft)) : nlohmann::json()},
        {"tpot_ms", pinned.slo_tpot > 0 ? nlohmann::json(Ms(pinned.slo_tpot)) : nlohmann::json()}}},
      {"notes", pinned.notes},
      {"feasible", PinnedViolations(pinned).empty()},
      {"violations", PinnedViolations(pinned)},
      {"dsv4_engine", EngineJson(EngineSupportOf(e.layout))},
      {"evaluation", PhaseJson(e)}};
}

nlohmann::json PlanResultToJson(const PlanResult& r) {
  nlohmann::json plans = nlohmann::json::array();
  for (size_t i = 0; i < r.plans.size(); ++i) {
    const Plan& p = r.plans[i];
    plans.push_back({{"rank", i + 1},
                     {"feasible", p.feasible()},
                     {"violations", p.violations},
                     {"chips", p.chips},
                     {"prefill_units", p.prefill_units},
                     {"decode_units", p.decode_units},
                     {"engram_memory_nodes", p.memory_nodes},
                     {"engram_ram_per_node_GB", Gb(p.engram_ram_per_node)},
                     {"engram_lookup_GB_per_s", Gb(p.engram_lookup_bytes_per_s)},
                     {"tokens_per_s_per_chip", p.tokens_per_s_per_chip},
                     {"output_tokens_per_s_per_chip", p.output_tokens_per_s_per_chip},
                     {"ttft_p90_ms", Ms(p.ttft)},
                     {"tpot_ms", Ms(p.tpot)},
                     {"cost_per_hour", p.cost_per_hour},
                     {"cost_per_million_tokens", p.cost_per_million_tokens},
                     {"dsv4_engine", EngineJson(EngineSupportOf(p))},
                     {"prefill", PhaseJson(p.prefill)},
                     {"decode", PhaseJson(p.decode)}});
  }
  nlohmann::json frontier = nlohmann::json::array();
  for (const auto& [tpot, rate] : r.decode_frontier) frontier.push_back({Ms(tpot), rate});
  return {{"model", r.model},
          {"cluster", r.cluster},
          {"hardware", r.hardware},
          {"workload", r.workload},
          {"requests_per_s", r.requests_per_s},
          {"cluster_chips", r.cluster_chips},
          {"kv_bytes_per_token", r.kv_bytes_per_token},
          {"kv_fixed_bytes_per_sequence", r.kv_fixed_bytes_per_sequence},
          {"engram_table_GB", Gb(r.engram_table_bytes)},
          {"engram_bytes_per_token", r.engram_bytes_per_token},
          {"engram_replication", r.engram_replication},
          {"speculative_drafts", r.speculative_drafts},
          {"notes", r.notes},
          {"objective", std::string(ObjectiveName(r.options.objective))},
          {"slo",
           {{"ttft_p90_ms", r.slo_ttft > 0 ? nlohmann::json(Ms(r.slo_ttft)) : nlohmann::json()},
            {"tpot_ms", r.slo_tpot > 0 ? nlohmann::json(Ms(r.slo_tpot)) : nlohmann::json()}}},
          {"memory_reserve", r.options.memory_reserve},
          {"candidates", r.candidates},
          {"sweep_seconds", r.sweep_seconds},
          {"feasible", r.feasible},
          {"binding_constraint", r.binding_constraint},
          {"plans", plans},
          {"decode_frontier_tpot_ms_vs_tokens_per_s_per_chip", frontier}};
}

std::string RenderPlanSvg(const PlanResult& r) {
  constexpr double kW = 1100, kH = 480;
  constexpr double px = 70, py = 40, pw = 560, ph = 360;   // scatter panel
  constexpr double bx = 730, by = 40, bw = 330, bh = 360;  // memory panel
  std::ostringstream s;
  s << absl::StrFormat(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%g\" height=\"%g\" "
      "font-family=\"sans-serif\" "
      "font-size=\"11\">\n<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n",
      kW, kH);
  s << absl::StrFormat(
      "<text x=\"%g\" y=\"20\" font-size=\"13\">%s</text>\n", px,
      XmlEscape(absl::StrCat("dsv4 plan: ", r.model, " on ", r.cluster, ", ", r.workload)));
  // Scatter: TPOT (log) against output tokens/s per chip.
  double x_lo = 1e9, x_hi = 0, y_hi = 0;
  for (const auto& [t, v] : r.decode_points) {
    x_lo = std::min(x_lo, t);
    x_hi = std::max(x_hi, t);
    y_hi = std::max(y_hi, v);
  }
  if (r.decode_points.empty()) x_lo = 1e-3, x_hi = 1, y_hi = 1;
  x_lo = std::pow(10, std::floor(std::log10(x_lo)));
  x_hi = std::pow(10, std::ceil(std::log10(x_hi)));
  y_hi *= 1.05;
  auto X = [&](double t) { return px + pw * std::log(t / x_lo) / std::log(x_hi / x_lo); };
  auto Y = [&](double v) { return py + ph - ph * v / y_hi; };
  s << absl::StrFormat(
      "<rect x=\"%g\" y=\"%g\" width=\"%g\" height=\"%g\" fill=\"none\" stroke=\"#444\"/>\n", px,
      py, pw, ph);
  for (double t = x_lo; t <= x_hi * 1.0001; t *= 10) {
    s << absl::StrFormat(
        "<line x1=\"%g\" y1=\"%g\" x2=\"%g\" y2=\"%g\" stroke=\"#ddd\"/>"
        "<text x=\"%g\" y=\"%g\" text-anchor=\"middle\">%g ms</text>\n",
        X(t), py, X(t), py + ph, X(t), py + ph + 14, Ms(t));
  }
  for (int i = 0; i <= 4; ++i) {
    const double v = y_hi * i / 4;
    s << absl::StrFormat("<text x=\"%g\" y=\"%g\" text-anchor=\"end\">%.0f</text>\n", px - 4,
                         Y(v) + 4, v);
  }
  s << absl::StrFormat(
      "<text x=\"%g\" y=\"%g\" text-anchor=\"middle\">time per output token (log)</text>\n",
      px + pw / 2, py + ph + 30);
  s << absl::StrFormat(
      "<text transform=\"translate(%g,%g) rotate(-90)\" text-anchor=\"middle\">"
      "decode output tokens/s per chip</text>\n",
      px - 48, py + ph / 2);
  const size_t stride = std::max<size_t>(1, r.decode_points.size() / 3000);
  for (size_t i = 0; i < r.decode_points.size(); i += stride) {
    s << absl::StrFormat("<circle cx=\"%.1f\" cy=\"%.1f\" r=\"1.5\" fill=\"#9ab\"/>\n",
                         X(r.decode_points[i].first), Y(r.decode_points[i].second));
  }
  std::string polyline;
  for (const auto& [t, v] : r.decode_frontier)
    absl::StrAppendFormat(&polyline, "%.1f,%.1f ", X(t), Y(v));
  s << "<polyline points=\"" << polyline
    << "\" fill=\"none\" stroke=\"#c33\" stroke-width=\"2\"/>\n";
  if (r.slo_tpot > 0 && r.slo_tpot > x_lo && r.slo_tpot < x_hi) {
    s << absl::StrFormat(
        "<line x1=\"%g\" y1=\"%g\" x2=\"%g\" y2=\"%g\" stroke=\"#393\" stroke-dasharray=\"4 3\"/>"
        "<text x=\"%g\" y=\"%g\" fill=\"#393\">TPOT SLO</text>\n",
        X(r.slo_tpot), py, X(r.slo_tpot), py + ph, X(r.slo_tpot) + 3, py + ph - 6);
  }
  if (!r.plans.empty()) {
    const PhaseEvaluation& d = r.plans[0].decode;
    s << absl::StrFormat(
        "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"6\" fill=\"none\" stroke=\"#03c\" "
        "stroke-width=\"2.5\"/>"
        "<text x=\"%.1f\" y=\"%.1f\" fill=\"#03c\">chosen: %s</text>\n",
        X(d.latency), Y(d.tokens_per_s_per_chip), X(d.latency) + 9, Y(d.tokens_per_s_per_chip) - 6,
        XmlEscape(d.layout.Describe()));
  }
  s << absl::StrFormat("<text x=\"%g\" y=\"%g\" fill=\"#c33\">frontier</text>\n", px + pw - 60,
                       py + 14);

  // Memory of the chosen plan's ranks.
  s << absl::StrFormat(
      "<text x=\"%g\" y=\"%g\" font-size=\"12\">memory per chip, chosen plan (GB)</text>\n", bx,
      by - 8);
  if (!r.plans.empty()) {
    std::vector<std::pair<std::string, const MemoryUse*>> bars;
    for (const PhaseEvaluation* e : {&r.plans[0].prefill, &r.plans[0].decode}) {
      const std::string phase(PhaseName(e->layout.phase));
      if (e->layout.colocated) {
        bars.push_back({phase, &e->attention_memory});
      } else {
        bars.push_back({phase + " attn", &e->attention_memory});
        bars.push_back({phase + " expert", &e->expert_memory});
      }
    }
    const double capacity = bars[0].second->capacity;
    double top = capacity;
    for (const auto& [name, m] : bars) top = std::max(top, m->used());
    auto BY = [&](double bytes) { return by + bh - bh * bytes / top; };
    const double slot = bw / bars.size();
    const char* colors[] = {"#7b4", "#49c", "#e93", "#b6c", "#888", "#c44", "#fc6"};
    const char* labels[] = {"fp32", "bf16", "fp8", "fp4", "int", "KV", "activations"};
    for (size_t i = 0; i < bars.size(); ++i) {
      const MemoryUse& m = *bars[i].second;
      double base = 0;
      std::vector<double> parts(m.weights.bytes.begin(), m.weights.bytes.end());
      parts.push_back(m.kv);
      parts.push_back(m.activations);
      const double x = bx + i * slot + slot * 0.2;
      for (size_t k = 0; k < parts.size(); ++k) {
        if (parts[k] <= 0) continue;
        s << absl::StrFormat(
            "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"%s\"/>\n", x,
            BY(base + parts[k]), slot * 0.6, BY(base) - BY(base + parts[k]), colors[k]);
        base += parts[k];
      }
      s << absl::StrFormat("<text x=\"%.1f\" y=\"%g\" text-anchor=\"middle\">%s</text>\n",
                           x + slot * 0.3, by + bh + 14, XmlEscape(bars[i].first));
      s << absl::StrFormat("<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%.0f</text>\n",
                           x + slot * 0.3, BY(base) - 3, Gb(base));
    }
    s << absl::StrFormat(
        "<line x1=\"%g\" y1=\"%.1f\" x2=\"%g\" y2=\"%.1f\" stroke=\"#000\" stroke-dasharray=\"5 "
        "3\"/>"
        "<text x=\"%g\" y=\"%.1f\">HBM %.0f</text>\n",
        bx, BY(capacity), bx + bw, BY(capacity), bx + bw - 60, BY(capacity) - 3, Gb(capacity));
    s << absl::StrFormat(
        "<line x1=\"%g\" y1=\"%.1f\" x2=\"%g\" y2=\"%.1f\" stroke=\"#888\" stroke-dasharray=\"2 "
        "2\"/>\n",
        bx, BY(bars[0].second->usable), bx + bw, BY(bars[0].second->usable));
    for (int k = 0; k < 7; ++k) {
      s << absl::StrFormat(
          "<rect x=\"%g\" y=\"%g\" width=\"10\" height=\"10\" fill=\"%s\"/>"
          "<text x=\"%g\" y=\"%g\">%s</text>\n",
          bx + (k % 4) * 82, by + bh + 26 + (k / 4) * 14, colors[k], bx + (k % 4) * 82 + 13,
          by + bh + 35 + (k / 4) * 14, labels[k]);
    }
  }
  s << "</svg>\n";
  return s.str();
}

absl::StatusOr<std::string> UnitClusterYaml(const PlanResult& result, const Plan& plan, Phase phase,
                                            const ModelConfig& config, const ClusterConfig& cluster,
                                            const Workload& workload,
                                            const std::string& output_path) {
  namespace fs = std::filesystem;
  const PhaseEvaluation& e = phase == Phase::kPrefill ? plan.prefill : plan.decode;
  const UnitLayout& l = e.layout;
  if (const EngineSupport support = EngineSupportOf(l); !support.runs) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot emit a cluster YAML: ", support.reason));
  }
  const TopologySpec& t = cluster.topology;
  const int chips_per_node = t.supernodes[0].nodes[0].chips;
  const int nodes_per_supernode = static_cast<int>(t.supernodes[0].nodes.size());
  const int nodes = (l.chips() + chips_per_node - 1) / chips_per_node;
  const int supernodes = (nodes + nodes_per_supernode - 1) / nodes_per_supernode;
  const int nodes_per = std::min(nodes, nodes_per_supernode);

  // The hardware file relative to the output when both sit under one top-level folder
  // (a checkout), else absolute.
  std::error_code ec;
  const fs::path out_dir = fs::absolute(fs::path(output_path), ec).parent_path();
  fs::path hardware = fs::absolute(cluster.hardware.path, ec);
  auto top = [](const fs::path& p) {
    return std::distance(p.begin(), p.end()) > 1 ? *std::next(p.begin()) : fs::path();
  };
  if (!top(out_dir).empty() && top(out_dir) == top(hardware)) {
    const fs::path relative = fs::relative(hardware, out_dir, ec);
    if (!ec && !relative.empty()) hardware = relative;
  }

  // Engine limits: the longest request, and the KV tokens that fit next to the weights.
  const int64_t max_seq =
      std::min<int64_t>({workload.input.Max() + workload.output.Max(),
                         config.max_position_embeddings, std::numeric_limits<int>::max()});
  const double per_token = std::max(
      1.0, SequenceStateBytes(config, result.options.cost, max_seq) / static_cast<double>(max_seq));
  const MemoryUse& m = e.attention_memory;
  const double free_bytes = std::max(0.0, m.usable - m.weights.total() - m.activations);
  const int64_t kv_tokens = std::clamp<int64_t>(static_cast<int64_t>(free_bytes / per_token),
                                                max_seq, std::numeric_limits<int>::max());
  const int max_seqs =
      phase == Phase::kDecode
          ? l.batch
          : std::max(1, static_cast<int>(l.batch / std::max(1.0, workload.input.Mean())));

  std::string y;
  absl::StrAppendFormat(&y, "# Generated by dsv4 plan: the %s unit of the plan.\n",
                        PhaseName(phase));
  absl::StrAppendFormat(&y,
                        "# One dsv4-engine serving this unit's requests end to end: it prefills "
                        "(in chunks) and decodes\n"
                        "# them itself. The plan splits prefill and decode over separate units, "
                        "but the runtime has no\n"
                        "# KV hand-off between units, so each unit's engine serves both phases "
                        "(figures below are the\n"
                        "# plan's modelled %s figures).\n",
                        PhaseName(phase));
  absl::StrAppendFormat(&y, "# Model %s, workload %s, objective %s.\n", result.model,
                        result.workload, ObjectiveName(result.options.objective));
  absl::StrAppendFormat(&y,
                        "# Plan: %d prefill unit(s) of %s and %d decode unit(s) of %s = %d chips;\n"
                        "# %d Engram memory node(s). Modelled step %.2f ms, %s %.1f ms.\n",
                        plan.prefill_units, plan.prefill.layout.Describe(), plan.decode_units,
                        plan.decode.layout.Describe(), plan.chips, plan.memory_nodes,
                        Ms(e.step.total), phase == Phase::kDecode ? "TPOT" : "TTFT p90",
                        Ms(e.latency));
  absl::StrAppendFormat(&y, "name: %s-%s\n", cluster.name, PhaseName(phase));
  absl::StrAppendFormat(&y, "description: \"%s unit %s on %s\"\n", PhaseName(phase), l.Describe(),
                        cluster.name);
  absl::StrAppendFormat(&y, "hardware: %s\n", hardware.string());
  absl::StrAppendFormat(
      &y, "topology:\n  supernodes: %d\n  nodes_per_supernode: %d\n  chips_per_node: %d\n",
      supernodes, nodes_per, chips_per_node);
  y += "  links:\n";
  y += LinkYaml("intra_node", t.link(LinkClass::kIntraNode));
  y += LinkYaml("intra_supernode", t.link(LinkClass::kIntraSupernode));
  y += LinkYaml("inter_supernode", t.link(LinkClass::kInterSupernode));
  absl::StrAppendFormat(&y, "roles:\n  attention_ranks: %d\n  expert_ranks: %d\n",
                        l.attention_ranks, l.expert_ranks);
  y += "  # attention and expert ranks interleaved in proportion over the unit's chips\n";
  absl::StrAppendFormat(
      &y, "  rank_chips: [%s]\n",
      absl::StrJoin(InterleavedRankChips(l.attention_ranks, l.expert_ranks), ", "));
  absl::StrAppendFormat(
      &y,
      "engine:\n  max_seqs_per_rank: %d\n  max_seq_len: %d\n  kv_budget_tokens: %d\n"
      "  chunked_prefill_tokens: %d\n  micro_batches: %d\n  dispatch: %s\n"
      "  placement: {policy: %s, redundant_experts: %d}\n",
      max_seqs, max_seq, kv_tokens, plan.prefill.layout.batch, l.micro_batches,
      l.hierarchical ? "hierarchical" : "flat",
      phase == Phase::kPrefill ? "hierarchical" : "global", l.redundant_experts);
  if (plan.memory_nodes > 0) {
    std::vector<std::string> servers;
    for (int i = 0; i < plan.memory_nodes; ++i)
      servers.push_back(absl::StrCat("\"engram-", i, ":50061\""));
    absl::StrAppendFormat(&y,
                          "engram:\n  # placeholders: replace with the memory nodes' addresses\n"
                          "  servers: [%s]\n  replication: %d\n  memory_node_ram_GB: %g\n",
                          absl::StrJoin(servers, ", "),
                          std::min<int>(cluster.engram.replication, plan.memory_nodes),
                          cluster.engram.memory_node_ram / 1e9);
  }
  return y;
}

absl::StatusOr<EmittedConfigs> WriteClusterConfigs(const PlanResult& result,
                                                   const ModelConfig& config,
                                                   const ClusterConfig& cluster,
                                                   const Workload& workload,
                                                   const std::string& path) {
  namespace fs = std::filesystem;
  if (result.plans.empty()) return absl::FailedPreconditionError("there is no plan to emit");
  EmittedConfigs emitted;
  emitted.plan_index = -1;
  for (size_t i = 0; i < result.plans.size(); ++i) {
    if (EngineSupportOf(result.plans[i]).runs) {
      emitted.plan_index = static_cast<int>(i);
      break;
    }
  }
  if (emitted.plan_index < 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("no plan of this result runs on dsv4-engine, so no cluster YAML was written: ",
                     EngineSupportOf(result.plans[0]).reason,
                     ". Rerun with --layouts afd (or both) to plan layouts dsv4-engine runs"));
  }
  if (emitted.plan_index > 0) {
    emitted.note = absl::StrCat("the chosen plan cannot run on dsv4-engine (",
                                EngineSupportOf(result.plans[0]).cell, "); emitting plan #",
                                emitted.plan_index + 1, ", the best plan it runs");
  }
  const Plan& plan = result.plans[emitted.plan_index];
  fs::path prefill_path(path);
  prefill_path.replace_filename(prefill_path.stem().string() + ".prefill" +
                                prefill_path.extension().string());
  for (const auto& [phase, out] :
       {std::pair{Phase::kDecode, fs::path(path)}, std::pair{Phase::kPrefill, prefill_path}}) {
    ASSIGN_OR_RETURN(std::string yaml,
                     UnitClusterYaml(result, plan, phase, config, cluster, workload, out.string()));
    std::ofstream file(out);
    file << yaml;
    file.close();
    if (!file) return absl::InternalError(absl::StrCat("cannot write ", out.string()));
    absl::StatusOr<ClusterConfig> loaded = LoadClusterConfig(out.string());
    if (!loaded.ok()) {
      return absl::InternalError(
          absl::StrCat("the emitted cluster YAML does not load: ", loaded.status().message()));
    }
    emitted.paths.push_back(out.string());
  }
  return emitted;
}

}  // namespace dsv4::planner
