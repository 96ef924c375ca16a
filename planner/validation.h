// The planner against published serving figures (planner/validation/points.json): each
// point's layout is pinned as published and evaluated with the cost model; a chip family's
// sustained factors are fitted on its points, and every point is also predicted with the
// factors fitted without it (leave-one-out), which is the honest error to expect for a
// deployment that was not fitted. bench_planner_validation prints the table that
// planner/VALIDATION.md shows.
#ifndef DSV4_PLANNER_VALIDATION_H_
#define DSV4_PLANNER_VALIDATION_H_

#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "planner/layout_search.h"

namespace dsv4::planner {

struct ValidationPoint {
  std::string id;
  std::string system;  // who ran it
  std::string family;  // chip family whose factors it calibrates ("hopper", "ascend")
  std::string kind;    // "peak, balanced routing", "24-hour production average", ...
  std::string source;
  std::string model;    // preset under models/
  std::string cluster;  // cluster YAML under planner/validation/
  UnitLayout layout;    // as published; decode batch 0 with tpot_ms: the largest meeting it
  double tpot_ms = 0;
  Workload workload;                 // fixed lengths, cache hits, MTP
  double published_per_chip = 0;     // input (prefill) or output (decode) tokens/s per chip
  bool counts_cached_input = false;  // the published prefill rate counts cache hits
  bool fit = true;  // used to fit its family's factors (fleet averages are not: the planner
                    // predicts peak capacity)
};

// Parses points.json; errors name the file and the point.
absl::StatusOr<std::vector<ValidationPoint>> LoadValidationPoints(const std::string& path);

// Multipliers of a hardware file's efficiencies (each result capped at 1): `compute` for
// gemm and attention, `memory` for memory_bound, `link` for all_to_all.
struct Factors {
  double compute = 1;
  double memory = 1;
  double link = 1;
};

// The point's predicted figure, comparable with published_per_chip, with its hardware's
// efficiencies scaled by `factors`. `root` is the checkout (models/, planner/validation/).
absl::StatusOr<double> PredictPoint(const ValidationPoint& point, const std::string& root,
                                    const Factors& factors);

struct ValidationRow {
  const ValidationPoint* point = nullptr;
  double predicted = 0;      // with the hardware files' factors
  double leave_one_out = 0;  // with the family's factors fitted on its other points
  Factors loo_factors;
  double error() const { return predicted / point->published_per_chip - 1; }
  double loo_error() const { return leave_one_out / point->published_per_chip - 1; }
};

struct ValidationResult {
  std::vector<ValidationRow> rows;
  std::map<std::string, Factors> fitted;  // family → factors fitted on all its points
};

// Fits each family's factors on a grid of multipliers up to 1 (sustained rates do not beat
// the kernel benchmarks the files start from), minimising the largest relative error over
// its points with
// `fit`), on all of them and leaving each point out (a point outside the fit is predicted
// with the family's full fit).
absl::StatusOr<ValidationResult> RunValidation(const std::vector<ValidationPoint>& points,
                                               const std::string& root);

// The factors from `grid` minimising the largest |log(predicted / published)| over the
// points `use` selects; predictions[g][i] is point i under grid[g].
Factors FitFactors(const std::vector<Factors>& grid,
                   const std::vector<std::vector<double>>& predictions,
                   const std::vector<double>& published, const std::vector<bool>& use);

}  // namespace dsv4::planner

#endif  // DSV4_PLANNER_VALIDATION_H_
