// dsv4 plan: the capacity planner (planner/layout_search.h).
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
ABSL_FLAG(double, slo_ttft_ms, 0, "time-to-first-token SLO (p90), ms; overrides the workload's");
ABSL_FLAG(double, slo_tpot_ms, 0, "time-per-output-token SLO, ms; overrides the workload's");
ABSL_FLAG(std::string, objective, "throughput-per-chip",
          "ranking: throughput-per-chip, chips-for-rate or cost");
ABSL_FLAG(std::string, layouts, "colocated",
          "unit layouts to search: colocated (DeepSeek-style: every chip attends and holds "
          "experts), afd (attention-FFN disaggregation: attention and expert ranks on separate "
          "chips, as dsv4-engine runs) or both");
ABSL_FLAG(int32_t, top, 10, "plans to list");
ABSL_FLAG(double, memory_reserve, 0.10, "share of HBM kept free for the runtime");
ABSL_FLAG(double, chip_cost_per_hour, 1.0, "cost objective: cost of a chip-hour");
ABSL_FLAG(double, memory_node_cost_per_hour, 0.25,
          "cost objective: cost of an Engram memory node-hour");
ABSL_FLAG(std::string, json, "", "write the whole result as JSON to this file");
ABSL_FLAG(std::string, svg, "", "write the frontier and memory chart as SVG to this file");
ABSL_FLAG(std::string, emit_cluster_config, "",
          "write the chosen plan's decode unit as cluster YAML to this file (the prefill unit "
          "goes next to it as <stem>.prefill.yaml)");

namespace dsv4::cli {
namespace {

// A path as given, or the project file `dir/name<suffix>` for a bare name.
absl::StatusOr<std::string> Resolve(const std::string& value, const std::string& flag,
                                    const std::string& dir, const std::string& suffix) {
  if (value.empty()) return absl::InvalidArgumentError(absl::StrCat("--", flag, " is required"));
  if (std::ifstream(value).good()) return value;
  absl::StatusOr<std::string> found = FindProjectFile(dir + "/" + value + suffix);
  if (found.ok()) return found;
  return absl::NotFoundError(absl::StrCat("--", flag, ": cannot open '", value,
                                          "' (neither a file nor a name under ", dir, "/)"));
}

absl::Status WriteText(const std::string& path, const std::string& text) {
  std::ofstream out(path);
  out << text;
  out.close();
  if (!out) return absl::InternalError("cannot write " + path);
  return absl::OkStatus();
}

absl::Status Plan() {
  ASSIGN_OR_RETURN(std::string model_path,
                   Resolve(absl::GetFlag(FLAGS_model), "model", "models", "/config.json"));
  ASSIGN_OR_RETURN(std::string cluster_path,
                   Resolve(absl::GetFlag(FLAGS_cluster), "cluster", "cluster-configs", ".yaml"));
  ASSIGN_OR_RETURN(std::string workload_path,
                   Resolve(absl::GetFlag(FLAGS_workload), "workload", "workloads", ".yaml"));

  ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(model_path));
  ASSIGN_OR_RETURN(ClusterConfig cluster, LoadClusterConfig(cluster_path));
  ASSIGN_OR_RETURN(planner::Workload workload, planner::LoadWorkload(workload_path));

  planner::PlannerOptions options;
  ASSIGN_OR_RETURN(options.objective, planner::ParseObjective(absl::GetFlag(FLAGS_objective)));
  ASSIGN_OR_RETURN(options.layouts, planner::ParseLayoutFamily(absl::GetFlag(FLAGS_layouts)));
  if (absl::GetFlag(FLAGS_slo_ttft_ms) < 0 || absl::GetFlag(FLAGS_slo_tpot_ms) < 0)
    return absl::InvalidArgumentError("SLOs must be positive (0 = take the workload's)");
  if (absl::GetFlag(FLAGS_slo_ttft_ms) > 0)
    options.slo_ttft = absl::GetFlag(FLAGS_slo_ttft_ms) / 1e3;
  if (absl::GetFlag(FLAGS_slo_tpot_ms) > 0)
    options.slo_tpot = absl::GetFlag(FLAGS_slo_tpot_ms) / 1e3;
  options.top = absl::GetFlag(FLAGS_top);
  options.memory_reserve = absl::GetFlag(FLAGS_memory_reserve);
  if (options.top < 1) return absl::InvalidArgumentError("--top must be at least 1");
  if (options.memory_reserve < 0 || options.memory_reserve >= 1)
    return absl::InvalidArgumentError("--memory_reserve must be in [0, 1)");
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
    ASSIGN_OR_RETURN(const std::vector<std::string> written,
                     planner::WriteClusterConfigs(*result, config, cluster, workload, path));
    for (const std::string& p : written)
      std::cout << "wrote " << p << " (loads as a cluster config)\n";
  }
  return absl::OkStatus();
}

}  // namespace

int PlanMain(int argc, char** argv) {
  const std::vector<std::string> positional = ParseFlags(
      argc, argv,
      "dsv4 plan --model MODEL --cluster CLUSTER --workload WORKLOAD [--slo_ttft_ms N]\n"
      "          [--slo_tpot_ms N] [--objective throughput-per-chip|chips-for-rate|cost]\n"
      "          [--json OUT] [--svg OUT] [--emit_cluster_config OUT]\n\n"
      "Searches serving layouts (prefill/decode split, attention data-parallel and expert-\n"
      "parallel sizes, redundant experts, batch per rank, micro-batches, Engram memory nodes)\n"
      "for a model on a cluster under a workload, and ranks them with the cost model the\n"
      "runtime uses for its modelled step time.",
      "cmd_plan.cc");
  if (!positional.empty())
    return ExitCode(absl::InvalidArgumentError("unexpected argument '" + positional[0] + "'"),
                    "plan");
  return ExitCode(Plan(), "plan");
}

}  // namespace dsv4::cli
