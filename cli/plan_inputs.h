// What `dsv4 plan` and `dsv4 plan evaluate` share: the model, cluster and workload named by
// --model, --cluster and --workload, the planner options of the SLO and memory flags, and
// writing outputs. The flags are defined in cmd_plan.cc; `plan evaluate` reads them too.
#ifndef DSV4_CLI_PLAN_INPUTS_H_
#define DSV4_CLI_PLAN_INPUTS_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/cluster_config.h"
#include "core/model_config.h"
#include "planner/layout_search.h"
#include "planner/workload.h"

namespace dsv4::cli {

// The flags `plan evaluate` reads from plan's (cmd_plan.cc).
inline const std::vector<std::string> kPlanInputFlags = {
    "model", "cluster", "workload", "slo_ttft_ms", "slo_tpot_ms", "memory_reserve", "json"};

struct PlanInputs {
  std::string model_name;  // "deepseek-v4-pro" for models/deepseek-v4-pro/config.json
  ModelConfig config;
  ClusterConfig cluster;
  planner::Workload workload;
};
absl::StatusOr<PlanInputs> LoadPlanInputs();

// PlannerOptions from --slo_ttft_ms, --slo_tpot_ms and --memory_reserve. With no TTFT SLO
// from the flag or the workload, adds a note that the planner's default applies.
absl::StatusOr<planner::PlannerOptions> PlannerOptionsFromFlags(const planner::Workload& workload,
                                                                std::vector<std::string>* notes);

absl::Status WriteText(const std::string& path, const std::string& text);

}  // namespace dsv4::cli

#endif  // DSV4_CLI_PLAN_INPUTS_H_
