// Outputs of `dsv4 plan`: the ranked text table, the JSON of the whole result, the SVG
// chart and deployable cluster YAML for a plan's units.
#ifndef DSV4_PLANNER_REPORT_H_
#define DSV4_PLANNER_REPORT_H_

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/cluster_config.h"
#include "core/model_config.h"
#include "nlohmann/json.hpp"
#include "planner/layout_search.h"
#include "planner/workload.h"

namespace dsv4::planner {

// The ranked table, the best plan's breakdown (step time by bottleneck, memory per chip)
// and, when nothing is feasible, the binding constraint above the closest plans.
std::string FormatPlanTable(const PlanResult& result);

nlohmann::json PlanResultToJson(const PlanResult& result);

// Throughput per chip against time per output token for every decode layout that fits in
// memory, the frontier and the chosen plan marked; next to it the memory per chip of the
// chosen plan's ranks.
std::string RenderPlanSvg(const PlanResult& result);

// Cluster YAML for one unit of `plan` (disaggregated units only: dsv4-engine gives
// attention and expert ranks their own chips), loadable by LoadClusterConfig. The tree is
// the cluster's, cut to the chips the unit needs; attention and expert ranks are
// interleaved over the chips; the engine settings come from the layout and the workload.
// `output_path` locates the hardware file relative to where the YAML will be written.
absl::StatusOr<std::string> UnitClusterYaml(const PlanResult& result, const Plan& plan, Phase phase,
                                            const ModelConfig& config, const ClusterConfig& cluster,
                                            const Workload& workload,
                                            const std::string& output_path);

// Writes the best plan's decode unit to `path` and its prefill unit next to it
// (<stem>.prefill.yaml), then loads both back with LoadClusterConfig. Returns the paths.
absl::StatusOr<std::vector<std::string>> WriteClusterConfigs(const PlanResult& result,
                                                             const ModelConfig& config,
                                                             const ClusterConfig& cluster,
                                                             const Workload& workload,
                                                             const std::string& path);

}  // namespace dsv4::planner

#endif  // DSV4_PLANNER_REPORT_H_
