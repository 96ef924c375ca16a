// Outputs of `dsv4 plan`: the ranked text table, the JSON of the whole result, the SVG
// chart, deployable cluster YAML for a plan's units, and the report of one pinned layout
// (`dsv4 plan evaluate`).
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

// Whether dsv4-engine can run a layout or plan today, and why not, or with what caveat.
// dsv4-engine runs attention and expert ranks as separate processes on separate chips (the
// afd family); co-located units cannot run on it. Every plan is a prefill/decode split, and
// the runtime has no KV hand-off between a prefill unit and a decode unit: an afd plan runs
// as one engine per unit, each serving prefill (chunked) and decode itself.
struct EngineSupport {
  bool runs = false;
  std::string reason;  // why not (runs = false), or the caveat (runs = true)
  std::string cell;    // the table's short form: "units*" or "no: co-located"
};
EngineSupport EngineSupportOf(const UnitLayout& layout);
EngineSupport EngineSupportOf(const Plan& plan);

// The ranked table (prefill and decode rates per chip side by side, whether dsv4-engine runs
// the plan), the best plan's breakdown (step time by bottleneck and component, link time,
// memory per chip) and, when nothing is feasible, the binding constraint above the closest
// plans.
std::string FormatPlanTable(const PlanResult& result);

nlohmann::json PlanResultToJson(const PlanResult& result);

// One phase's figures as the plan JSON gives them (a plan's "prefill" and "decode"), so a
// pinned evaluation and a search result compare field for field.
nlohmann::json PhaseEvaluationToJson(const PhaseEvaluation& evaluation);

// `dsv4 plan evaluate`: one layout priced by EvaluateLayout, the computation the search
// ranks with, reported with the same breakdown as a search's chosen plan.
struct PinnedEvaluation {
  std::string model;
  std::string cluster;
  std::string hardware;
  std::string workload;
  int cluster_chips = 0;
  double slo_ttft = 0;  // effective SLOs, s (0 = none)
  double slo_tpot = 0;
  std::vector<std::string> notes;
  PhaseEvaluation evaluation;
};
std::string FormatPinnedEvaluation(const PinnedEvaluation& pinned);
// {"model", ..., "slo", "feasible", "violations", "dsv4_engine", "evaluation": the phase JSON}.
nlohmann::json PinnedEvaluationToJson(const PinnedEvaluation& pinned);

// Throughput per chip against time per output token for every decode layout that fits in
// memory, the frontier and the chosen plan marked; next to it the memory per chip of the
// chosen plan's ranks.
std::string RenderPlanSvg(const PlanResult& result);

// Cluster YAML for one unit of `plan` (units EngineSupportOf says dsv4-engine runs: afd,
// one rank per chip; FAILED_PRECONDITION otherwise), loadable by LoadClusterConfig. The tree is
// the cluster's, cut to the chips the unit needs; attention and expert ranks are
// interleaved over the chips; the engine settings come from the layout and the workload.
// `output_path` locates the hardware file relative to where the YAML will be written.
absl::StatusOr<std::string> UnitClusterYaml(const PlanResult& result, const Plan& plan, Phase phase,
                                            const ModelConfig& config, const ClusterConfig& cluster,
                                            const Workload& workload,
                                            const std::string& output_path);

// What WriteClusterConfigs wrote.
struct EmittedConfigs {
  int plan_index = 0;              // into result.plans: the best plan dsv4-engine runs
  std::vector<std::string> paths;  // decode unit, prefill unit
  std::string note;                // why another plan than the chosen one, if so
};

// Writes the decode unit of the best plan dsv4-engine can run to `path` and its prefill
// unit next to it (<stem>.prefill.yaml), then loads both back with LoadClusterConfig (which
// also builds the topology and places the ranks on chips). That plan is the chosen one when
// it is afd; when the chosen plan is co-located, the best afd plan of the result (so with
// --layouts both), with a note saying so; FAILED_PRECONDITION when the result has no afd
// plan, telling the user to plan with --layouts afd. Each YAML is one engine that serves
// both phases of its unit (there is no KV hand-off between units); its header says so.
absl::StatusOr<EmittedConfigs> WriteClusterConfigs(const PlanResult& result,
                                                   const ModelConfig& config,
                                                   const ClusterConfig& cluster,
                                                   const Workload& workload,
                                                   const std::string& path);

}  // namespace dsv4::planner

#endif  // DSV4_PLANNER_REPORT_H_
