// dsv4 plan evaluate: prices one given layout with the planner's own evaluation
// (planner::EvaluateLayout, what the search ranks with) and prints the breakdown the search
// prints for its chosen plan. Model, cluster, workload, SLO and memory flags are plan's.
#include <iostream>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "absl/flags/declare.h"
#include "absl/flags/flag.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "cli/cli_util.h"
#include "cli/commands.h"
#include "cli/plan_inputs.h"
#include "core/status_macros.h"
#include "planner/layout_search.h"
#include "planner/report.h"

ABSL_DECLARE_FLAG(std::string, json);  // plan's (cmd_plan.cc)

ABSL_FLAG(std::string, unit, "",
          "the layout as the plan table writes it, e.g. \"A96+E416 r32 b64 m2 flat\" (decode: "
          "b = sequences per rank) or \"DP=EP64 r0 t8192 m1 flat\" (prefill: t = tokens per rank "
          "per step); the flags below override its parts");
ABSL_FLAG(std::string, phase, "", "prefill or decode (implied by --unit's t or b)");
ABSL_FLAG(std::string, layout, "",
          "colocated (every chip attends and holds experts) or afd (attention and expert ranks "
          "on separate chips); implied by --unit");
ABSL_FLAG(std::optional<int>, attention_ranks, std::nullopt,
          "attention data-parallel size (co-located: the DP=EP size)");
ABSL_FLAG(std::optional<int>, expert_ranks, std::nullopt,
          "expert-parallel size (co-located: equals --attention_ranks)");
ABSL_FLAG(std::optional<int>, redundant_experts, std::nullopt,
          "physical expert slots beyond the logical experts (default 0)");
ABSL_FLAG(std::optional<int>, batch, std::nullopt,
          "decode: sequences per attention rank; prefill: tokens per attention rank per step");
ABSL_FLAG(std::optional<int>, micro_batches, std::nullopt, "micro-batches per step (default 1)");
ABSL_FLAG(bool, hierarchical, false,
          "relayed (hierarchical) dispatch instead of flat (--unit's \"hier\" sets it too)");
ABSL_FLAG(std::optional<int>, ranks_per_chip, std::nullopt,
          "ranks sharing one chip package, e.g. 2 = one rank per die of a 2-die chip (default "
          "1; not priced yet)");
ABSL_FLAG(std::optional<int>, shared_expert_ranks, std::nullopt,
          "afd: expert-side ranks holding a shared-expert replica (default 0; not priced yet)");

namespace dsv4::cli {
namespace {

absl::Status UnitError(const std::string& unit, const std::string& why) {
  return absl::InvalidArgumentError(absl::StrCat("--unit \"", unit, "\": ", why));
}

// Parses UnitLayout::Describe()'s form: "A96+E416 r32 b64 m2 flat", "DP=EP64 r0 t8192 m1 hier",
// "DP=EP128 r0 b48 m1 flat d2", "A96+E288 r32 b64 m2 flat s32".
// `has_batch`: it gave b<n> or t<n> (and so the phase).
absl::StatusOr<planner::UnitLayout> ParseUnit(const std::string& unit, bool* has_batch) {
  planner::UnitLayout l;
  const std::vector<std::string> parts = absl::StrSplit(unit, ' ', absl::SkipEmpty());
  if (parts.empty()) return UnitError(unit, "empty");
  const std::string& ranks = parts[0];
  if (ranks.rfind("DP=EP", 0) == 0) {
    l.colocated = true;
    if (!absl::SimpleAtoi(ranks.substr(5), &l.attention_ranks)) {
      return UnitError(unit, "expected DP=EP<n>");
    }
    l.expert_ranks = l.attention_ranks;
  } else {
    const std::vector<std::string> ae = absl::StrSplit(ranks, '+');
    if (ae.size() != 2 || ae[0].empty() || ae[1].empty() || ae[0][0] != 'A' || ae[1][0] != 'E' ||
        !absl::SimpleAtoi(ae[0].substr(1), &l.attention_ranks) ||
        !absl::SimpleAtoi(ae[1].substr(1), &l.expert_ranks)) {
      return UnitError(unit, "expected the ranks first: A<attention>+E<expert> or DP=EP<n>");
    }
  }
  for (size_t i = 1; i < parts.size(); ++i) {
    const std::string& p = parts[i];
    if (p == "flat" || p == "hier") {
      l.hierarchical = p == "hier";
      continue;
    }
    int value = 0;
    if (p.size() < 2 || !absl::SimpleAtoi(p.substr(1), &value)) {
      return UnitError(unit, absl::StrCat("cannot read \"", p,
                                          "\" (r<n>, b<n>, t<n>, m<n>, flat, hier, d<n>, s<n>)"));
    }
    switch (p[0]) {
      case 'r':
        l.redundant_experts = value;
        break;
      case 'b':
        *has_batch = true;
        l.phase = planner::Phase::kDecode;
        l.batch = value;
        break;
      case 't':
        *has_batch = true;
        l.phase = planner::Phase::kPrefill;
        l.batch = value;
        break;
      case 'm':
        l.micro_batches = value;
        break;
      case 'd':
        l.ranks_per_chip = value;
        break;
      case 's':
        l.shared_expert_ranks = value;
        break;
      default:
        return UnitError(unit, absl::StrCat("cannot read \"", p,
                                            "\" (r<n>, b<n>, t<n>, m<n>, flat, hier, d<n>, s<n>)"));
    }
  }
  return l;
}

// The layout from --unit and the layout flags; INVALID_ARGUMENT naming the flag at fault.
absl::StatusOr<planner::UnitLayout> LayoutFromFlags(const ModelConfig& config) {
  planner::UnitLayout l;
  bool phase_given = false, layout_given = false, ranks_given = false, batch_given = false;
  if (const std::string unit = absl::GetFlag(FLAGS_unit); !unit.empty()) {
    ASSIGN_OR_RETURN(l, ParseUnit(unit, &batch_given));
    layout_given = ranks_given = true;
    phase_given = batch_given;
  }
  if (const std::string phase = absl::GetFlag(FLAGS_phase); !phase.empty()) {
    if (phase != "prefill" && phase != "decode") {
      return absl::InvalidArgumentError(
          absl::StrCat("--phase: expected prefill or decode, got '", phase, "'"));
    }
    l.phase = phase == "prefill" ? planner::Phase::kPrefill : planner::Phase::kDecode;
    phase_given = true;
  }
  if (const std::string layout = absl::GetFlag(FLAGS_layout); !layout.empty()) {
    if (layout != "colocated" && layout != "afd") {
      return absl::InvalidArgumentError(
          absl::StrCat("--layout: expected colocated or afd, got '", layout, "'"));
    }
    l.colocated = layout == "colocated";
    layout_given = true;
  }
  if (auto v = absl::GetFlag(FLAGS_attention_ranks)) l.attention_ranks = *v, ranks_given = true;
  if (auto v = absl::GetFlag(FLAGS_expert_ranks)) l.expert_ranks = *v;
  if (auto v = absl::GetFlag(FLAGS_redundant_experts)) l.redundant_experts = *v;
  if (auto v = absl::GetFlag(FLAGS_batch)) l.batch = *v, batch_given = true;
  if (auto v = absl::GetFlag(FLAGS_micro_batches)) l.micro_batches = *v;
  if (absl::GetFlag(FLAGS_hierarchical)) l.hierarchical = true;
  if (auto v = absl::GetFlag(FLAGS_ranks_per_chip)) l.ranks_per_chip = *v;
  if (auto v = absl::GetFlag(FLAGS_shared_expert_ranks)) l.shared_expert_ranks = *v;

  if (!phase_given) return absl::InvalidArgumentError("give --phase prefill|decode (or --unit)");
  if (!layout_given) return absl::InvalidArgumentError("give --layout colocated|afd (or --unit)");
  if (!ranks_given) return absl::InvalidArgumentError("give --attention_ranks N (or --unit)");
  if (!batch_given) return absl::InvalidArgumentError("give --batch N (or --unit)");
  if (l.colocated) {
    if (absl::GetFlag(FLAGS_expert_ranks) && l.expert_ranks != l.attention_ranks) {
      return absl::InvalidArgumentError(
          "--expert_ranks: a co-located unit's expert ranks are its attention ranks");
    }
    l.expert_ranks = l.attention_ranks;
    if (l.shared_expert_ranks != 0) {
      return absl::InvalidArgumentError("--shared_expert_ranks: afd units only");
    }
  } else if (!absl::GetFlag(FLAGS_expert_ranks) && absl::GetFlag(FLAGS_unit).empty()) {
    return absl::InvalidArgumentError("give --expert_ranks N for an afd unit");
  }
  for (const auto& [flag, value, min] :
       {std::tuple{"attention_ranks", l.attention_ranks, 1},
        std::tuple{"expert_ranks", l.expert_ranks, 1}, std::tuple{"batch", l.batch, 1},
        std::tuple{"micro_batches", l.micro_batches, 1},
        std::tuple{"ranks_per_chip", l.ranks_per_chip, 1},
        std::tuple{"redundant_experts", l.redundant_experts, 0},
        std::tuple{"shared_expert_ranks", l.shared_expert_ranks, 0}}) {
    if (value < min) {
      return absl::InvalidArgumentError(
          absl::StrCat("--", flag, ": expected at least ", min, ", got ", value));
    }
  }
  const int slots = config.n_routed_experts + l.redundant_experts;
  if (slots % l.expert_ranks != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--redundant_experts: ", config.n_routed_experts, " experts + ",
                     l.redundant_experts, " redundant = ", slots,
                     " slots do not divide evenly over ", l.expert_ranks, " expert ranks"));
  }
  if (l.phase == planner::Phase::kDecode && l.micro_batches > l.batch) {
    return absl::InvalidArgumentError(absl::StrCat("--micro_batches: ", l.micro_batches,
                                                   " is more than the batch (", l.batch,
                                                   " sequences per rank)"));
  }
  return l;
}

absl::Status Evaluate() {
  ASSIGN_OR_RETURN(PlanInputs inputs, LoadPlanInputs());
  ASSIGN_OR_RETURN(const planner::UnitLayout layout, LayoutFromFlags(inputs.config));
  planner::PinnedEvaluation pinned;
  ASSIGN_OR_RETURN(const planner::PlannerOptions options,
                   PlannerOptionsFromFlags(inputs.workload, &pinned.notes));
  pinned.model = inputs.model_name;
  pinned.cluster = inputs.cluster.name;
  pinned.hardware = inputs.cluster.hardware.name;
  pinned.workload = inputs.workload.name;
  pinned.cluster_chips = inputs.cluster.topology.num_chips();
  const planner::Slos slos = planner::EffectiveSlos(inputs.workload, options);
  pinned.slo_ttft = slos.ttft;
  pinned.slo_tpot = slos.tpot;
  pinned.evaluation =
      planner::EvaluateLayout(inputs.config, inputs.cluster, inputs.workload, layout, options);
  std::cout << planner::FormatPinnedEvaluation(pinned);
  if (const std::string path = absl::GetFlag(FLAGS_json); !path.empty()) {
    RETURN_IF_ERROR(WriteText(path, planner::PinnedEvaluationToJson(pinned).dump(2) + "\n"));
    std::cout << "wrote " << path << "\n";
  }
  return absl::OkStatus();
}

}  // namespace

int PlanEvaluateMain(int argc, char** argv) {
  const std::vector<std::string> positional = ParseFlags(
      argc, argv,
      "dsv4 plan evaluate --model MODEL --cluster CLUSTER --workload WORKLOAD\n"
      "          --unit \"A96+E416 r32 b64 m2 flat\"\n"
      "          | --phase prefill|decode --layout colocated|afd --attention_ranks N\n"
      "            [--expert_ranks N] --batch N [--redundant_experts N] [--micro_batches N]\n"
      "            [--hierarchical] [--ranks_per_chip N] [--shared_expert_ranks N]\n"
      "          [--slo_ttft_ms N] [--slo_tpot_ms N] [--memory_reserve F] [--json OUT]\n\n"
      "Prices one serving unit's layout for one phase exactly as the search does and prints\n"
      "the same breakdown as its chosen plan: step time by component, compute, HBM and link\n"
      "time, TTFT p90 (prefill) or TPOT (decode), tokens/s per chip, memory per chip, the\n"
      "binding resource, whether it meets the SLO and fits, and whether dsv4-engine runs it.\n"
      "Copy a unit from the plan table into --unit to check or vary it.",
      "cmd_plan_evaluate.cc", kPlanInputFlags);
  if (!positional.empty()) {
    return ExitCode(absl::InvalidArgumentError("unexpected argument '" + positional[0] + "'"),
                    "plan evaluate");
  }
  return ExitCode(Evaluate(), "plan evaluate");
}

}  // namespace dsv4::cli
