// dsv4 plan: the capacity planner (planner/layout_search.h). `dsv4 plan evaluate` prices
// one given layout (cmd_plan_evaluate.cc) and reads this file's input flags.
#include <cstring>
#include <fstream>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "cli/cli_util.h"
#include "cli/commands.h"
#include "cli/plan_inputs.h"
#include "core/cluster_config.h"
#include "core/model_config.h"
#include "core/progress.h"
#include "core/status_macros.h"
#include "planner/layout_search.h"
#include "planner/report.h"
#include "planner/workload.h"

ABSL_FLAG(
    std::string, model, "",
    "model config.json, or a preset under models/ (deepseek-v4-pro, deepseek-v4.1-flash, ...)");
ABSL_FLAG(std::string, cluster, "",
          "cluster YAML, or a name under cluster-configs/ (atlas950-superpod, ...)");
ABSL_FLAG(std::string, workload, "", "workload YAML, or a name under workloads/ (chat, ...)");
ABSL_FLAG(double, slo_ttft_ms, 0,
          "time-to-first-token SLO (p90), ms; 0: the workload's, else 2000 ms");
ABSL_FLAG(double, slo_tpot_ms, 0, "time-per-output-token SLO, ms; overrides the workload's");
ABSL_FLAG(std::string, objective, "throughput-per-chip",
          "ranking: throughput-per-chip, chips-for-rate or cost");
ABSL_FLAG(std::string, layouts, "colocated",
          "unit layouts to search: colocated (DeepSeek-style: every chip attends and holds "
          "experts), afd (attention-FFN disaggregation: attention and expert ranks on separate "
          "chips, as dsv4-engine runs) or both");
ABSL_FLAG(int32_t, top, 10, "plans to list");
ABSL_FLAG(double, memory_reserve, 0.10, "share of HBM kept free for the runtime, in [0, 1)");
ABSL_FLAG(double, chip_cost_per_hour, 1.0, "cost objective: cost of a chip-hour");
ABSL_FLAG(double, memory_node_cost_per_hour, 0.25,
          "cost objective: cost of an Engram memory node-hour");
ABSL_FLAG(std::string, json, "",
          "write the whole result as JSON to this file (plan evaluate: the evaluation)");
ABSL_FLAG(std::string, svg, "", "write the frontier and memory chart as SVG to this file");
ABSL_FLAG(std::string, emit_cluster_config, "",
          "write the decode unit of the best plan dsv4-engine runs (afd) as cluster YAML to this "
          "file, the prefill unit next to it as <stem>.prefill.yaml: one engine per unit, each "
          "serving both phases (no KV hand-off between units); refused with --layouts colocated");

namespace dsv4::cli {
namespace {

absl::Status Plan() {
  ASSIGN_OR_RETURN(const planner::LayoutFamily layouts,
                   planner::ParseLayoutFamily(absl::GetFlag(FLAGS_layouts)));
  // Fail before a long search whose plans could not be emitted.
  if (!absl::GetFlag(FLAGS_emit_cluster_config).empty() &&
      layouts == planner::LayoutFamily::kColocated) {
    return absl::InvalidArgumentError(
        "--emit_cluster_config needs plans dsv4-engine can run, and co-located units cannot "
        "(it runs attention and expert ranks on separate chips): add --layouts afd (or both)");
  }
  ASSIGN_OR_RETURN(PlanInputs inputs, LoadPlanInputs());
  const ModelConfig& config = inputs.config;
  const ClusterConfig& cluster = inputs.cluster;
  const planner::Workload& workload = inputs.workload;
  std::vector<std::string> notes;
  ASSIGN_OR_RETURN(planner::PlannerOptions options, PlannerOptionsFromFlags(workload, &notes));
  options.layouts = layouts;
  ASSIGN_OR_RETURN(options.objective, planner::ParseObjective(absl::GetFlag(FLAGS_objective)));
  options.top = absl::GetFlag(FLAGS_top);
  if (options.top < 1) return absl::InvalidArgumentError("--top must be at least 1");
  options.chip_cost_per_hour = absl::GetFlag(FLAGS_chip_cost_per_hour);
  options.memory_node_cost_per_hour = absl::GetFlag(FLAGS_memory_node_cost_per_hour);
  std::unique_ptr<ProgressBar> progress;
  options.progress = [&](int64_t done, int64_t total) {
    if (!progress) progress = std::make_unique<ProgressBar>("planning", total, "layouts");
    progress->Update(done);
  };

  absl::StatusOr<planner::PlanResult> result =
      planner::RunPlanner(config, cluster, workload, options);
  if (progress) progress->Finish();
  if (!result.ok()) return result.status();
  result->notes.insert(result->notes.begin(), notes.begin(), notes.end());
  std::cout << planner::FormatPlanTable(*result);

  if (const std::string path = absl::GetFlag(FLAGS_json); !path.empty()) {
    RETURN_IF_ERROR(WriteText(path, planner::PlanResultToJson(*result).dump(2) + "\n"));
    std::cout << "wrote " << path << "\n";
  }
  if (const std::string path = absl::GetFlag(FLAGS_svg); !path.empty()) {
    RETURN_IF_ERROR(WriteText(path, planner::RenderPlanSvg(*result)));
    std::cout << "wrote " << path << "\n";
  }
  if (const std::string path = absl::GetFlag(FLAGS_emit_cluster_config); !path.empty()) {
    ASSIGN_OR_RETURN(const planner::EmittedConfigs emitted,
                     planner::WriteClusterConfigs(*result, config, cluster, workload, path));
    if (!emitted.note.empty()) std::cout << "note: " << emitted.note << "\n";
    for (const std::string& p : emitted.paths) {
      std::cout << "wrote " << p << " (loads as a cluster config)\n";
    }
    std::cout << "  each file is one dsv4-engine serving its unit's prefill and decode: the "
                 "runtime has no KV\n  hand-off from a prefill unit to a decode unit\n";
  }
  return absl::OkStatus();
}

}  // namespace

int PlanMain(int argc, char** argv) {
  const std::vector<std::string> positional = ParseFlags(
      argc, argv,
      "dsv4 plan --model MODEL --cluster CLUSTER --workload WORKLOAD\n"
      "          [--layouts colocated|afd|both] [--slo_ttft_ms N] [--slo_tpot_ms N]\n"
      "          [--objective throughput-per-chip|chips-for-rate|cost] [--top N]\n"
      "          [--memory_reserve F] [--chip_cost_per_hour C] [--memory_node_cost_per_hour C]\n"
      "          [--json OUT] [--svg OUT] [--emit_cluster_config OUT]\n"
      "dsv4 plan evaluate ... (one given layout; see dsv4 plan evaluate --help)\n\n"
      "Searches serving layouts (prefill/decode split, attention data-parallel and expert-\n"
      "parallel sizes, redundant experts, batch per rank, micro-batches, Engram memory nodes)\n"
      "for a model on a cluster under a workload, and ranks them with the cost model the\n"
      "runtime uses for its modelled step time. The table marks the plans dsv4-engine can run:\n"
      "co-located plans (the default search, DeepSeek-style) cannot; afd plans run as one\n"
      "engine per unit, each serving both phases.",
      "cmd_plan.cc");
  if (!positional.empty())
    return ExitCode(absl::InvalidArgumentError("unexpected argument '" + positional[0] + "'"),
                    "plan");
  return ExitCode(Plan(), "plan");
}

}  // namespace dsv4::cli
