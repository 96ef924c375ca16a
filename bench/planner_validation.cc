// bench_planner_validation: the planner against published serving figures
// (planner/validation/points.json, planner/validation.h). Prints the table of
// planner/VALIDATION.md (prediction with the shipped hardware factors, error, and the
// leave-one-out error with each family's factors fitted without the point) and writes
// bench/results/planner-validation.json.
#include <cmath>
#include <cstdio>
#include <iostream>
#include <string>

#include "absl/strings/str_format.h"
#include "bench/bench_util.h"
#include "planner/validation.h"

int main() {
  const std::string root = dsv4::bench::SourceRoot().string();
  auto points = dsv4::planner::LoadValidationPoints(root + "/planner/validation/points.json");
  if (!points.ok()) {
    std::cerr << "bench_planner_validation: " << points.status().message() << "\n";
    return 1;
  }
  auto result = dsv4::planner::RunValidation(*points, root);
  if (!result.ok()) {
    std::cerr << "bench_planner_validation: " << result.status().message() << "\n";
    return 1;
  }
  std::printf(
      "| point | system | kind | published /chip | predicted | error | leave-one-out | "
      "LOO factors (compute, memory, link) |\n|---|---|---|---|---|---|---|---|\n");
  nlohmann::ordered_json rows = nlohmann::ordered_json::array();
  int within = 0;
  for (const dsv4::planner::ValidationRow& row : result->rows) {
    const auto& p = *row.point;
    std::printf("| %s | %s | %s | %.0f | %.0f | %+.1f%% | %+.1f%% | %.1f, %.1f, %.1f |\n",
                p.id.c_str(), p.system.c_str(), p.kind.c_str(), p.published_per_chip, row.predicted,
                100 * row.error(), 100 * row.loo_error(), row.loo_factors.compute,
                row.loo_factors.memory, row.loo_factors.link);
    within += std::abs(row.loo_error()) <= 0.15;
    rows.push_back(
        {{"id", p.id},
         {"system", p.system},
         {"family", p.family},
         {"kind", p.kind},
         {"published_per_chip", p.published_per_chip},
         {"predicted_per_chip", row.predicted},
         {"error", row.error()},
         {"leave_one_out_per_chip", row.leave_one_out},
         {"leave_one_out_error", row.loo_error()},
         {"loo_factors", {row.loo_factors.compute, row.loo_factors.memory, row.loo_factors.link}}});
  }
  nlohmann::ordered_json fitted = nlohmann::ordered_json::object();
  for (const auto& [family, f] : result->fitted) {
    std::printf("%s: factors fitted on all its points: compute x%.1f, memory x%.1f, link x%.1f\n",
                family.c_str(), f.compute, f.memory, f.link);
    fitted[family] = {{"compute", f.compute}, {"memory", f.memory}, {"link", f.link}};
  }
  std::printf("%d of %zu points within 15%% leave-one-out\n", within, result->rows.size());
  dsv4::bench::WriteJson(root + "/bench/results/planner-validation.json",
                         {{"benchmark", "planner_validation"},
                          {"points", rows},
                          {"fitted_multipliers_of_shipped_factors", fitted},
                          {"within_15_percent_leave_one_out", within},
                          {"machine", dsv4::bench::MachineJson()}});
  return 0;
}
