#include "cli/plan_inputs.h"

#include <filesystem>
#include <fstream>

#include "absl/flags/declare.h"
#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "cli/cli_util.h"
#include "core/status_macros.h"

ABSL_DECLARE_FLAG(std::string, model);
ABSL_DECLARE_FLAG(std::string, cluster);
ABSL_DECLARE_FLAG(std::string, workload);
ABSL_DECLARE_FLAG(double, slo_ttft_ms);
ABSL_DECLARE_FLAG(double, slo_tpot_ms);
ABSL_DECLARE_FLAG(double, memory_reserve);

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

}  // namespace

absl::StatusOr<PlanInputs> LoadPlanInputs() {
  ASSIGN_OR_RETURN(std::string model_path,
                   Resolve(absl::GetFlag(FLAGS_model), "model", "models", "/config.json"));
  ASSIGN_OR_RETURN(std::string cluster_path,
                   Resolve(absl::GetFlag(FLAGS_cluster), "cluster", "cluster-configs", ".yaml"));
  ASSIGN_OR_RETURN(std::string workload_path,
                   Resolve(absl::GetFlag(FLAGS_workload), "workload", "workloads", ".yaml"));
  PlanInputs inputs;
  ASSIGN_OR_RETURN(inputs.config, LoadModelConfig(model_path));
  ASSIGN_OR_RETURN(inputs.cluster, LoadClusterConfig(cluster_path));
  ASSIGN_OR_RETURN(inputs.workload, planner::LoadWorkload(workload_path));
  inputs.model_name = planner::ModelName(inputs.config);
  return inputs;
}

absl::StatusOr<planner::PlannerOptions> PlannerOptionsFromFlags(const planner::Workload& workload,
                                                                std::vector<std::string>* notes) {
  planner::PlannerOptions options;
  const double ttft_ms = absl::GetFlag(FLAGS_slo_ttft_ms);
  const double tpot_ms = absl::GetFlag(FLAGS_slo_tpot_ms);
  if (ttft_ms < 0 || tpot_ms < 0) {
    return absl::InvalidArgumentError("SLOs must be positive (0 = take the workload's)");
  }
  if (ttft_ms > 0) {
    options.slo_ttft = ttft_ms / 1e3;
  } else if (!workload.slo_ttft) {
    notes->push_back(absl::StrFormat(
        "TTFT SLO p90 %.0f ms by default: the workload sets none (--slo_ttft_ms overrides)",
        options.default_slo_ttft * 1e3));
  }
  if (tpot_ms > 0) options.slo_tpot = tpot_ms / 1e3;
  options.memory_reserve = absl::GetFlag(FLAGS_memory_reserve);
  if (options.memory_reserve < 0 || options.memory_reserve >= 1) {
    return absl::InvalidArgumentError("--memory_reserve must be in [0, 1)");
  }
  return options;
}

absl::Status WriteText(const std::string& path, const std::string& text) {
  std::ofstream out(path);
  out << text;
  out.close();
  if (!out) return absl::InternalError("cannot write " + path);
  return absl::OkStatus();
}

}  // namespace dsv4::cli
