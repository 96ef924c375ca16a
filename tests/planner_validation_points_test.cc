// The validation harness (planner/validation.h): the published points load with their
// layouts pinned, a pinned point predicts exactly what EvaluateLayout gives for that
// layout, the fit picks the minimax factors of a hand-made table, and every point's
// published layout fits its chips' memory. (The errors themselves are measured by
// bench_planner_validation and reported in planner/VALIDATION.md, not asserted.)
#include "planner/validation.h"

#include <set>
#include <string>
#include <vector>

#include "core/cluster_config.h"
#include "core/model_config.h"
#include "gtest/gtest.h"

namespace dsv4::planner {
namespace {

const std::string kRoot = DSV4_SOURCE_DIR;

std::vector<ValidationPoint> Points() {
  absl::StatusOr<std::vector<ValidationPoint>> points =
      LoadValidationPoints(kRoot + "/planner/validation/points.json");
  EXPECT_TRUE(points.ok()) << points.status();
  return points.ok() ? *points : std::vector<ValidationPoint>{};
}

TEST(ValidationPointsTest, LoadFromSeveralSystemsAndFamilies) {
  const std::vector<ValidationPoint> points = Points();
  ASSERT_GE(points.size(), 6u);
  std::set<std::string> systems, families;
  for (const ValidationPoint& p : points) {
    systems.insert(p.system);
    families.insert(p.family);
    EXPECT_GT(p.published_per_chip, 0) << p.id;
  }
  EXPECT_GE(systems.size(), 3u);
  EXPECT_GE(families.size(), 2u);
}

TEST(ValidationPointsTest, APinnedPointIsEvaluateLayout) {
  for (const ValidationPoint& p : Points()) {
    if (p.tpot_ms > 0) continue;
    SCOPED_TRACE(p.id);
    absl::StatusOr<ModelConfig> config =
        LoadModelConfig(kRoot + "/models/" + p.model + "/config.json");
    absl::StatusOr<ClusterConfig> cluster =
        LoadClusterConfig(kRoot + "/planner/validation/" + p.cluster);
    ASSERT_TRUE(config.ok() && cluster.ok());
    const PhaseEvaluation e = EvaluateLayout(*config, *cluster, p.workload, p.layout, {});
    EXPECT_LE(e.memory_ratio, 1) << "the published layout must fit the chips' memory";
    absl::StatusOr<double> predicted = PredictPoint(p, kRoot, Factors{});
    ASSERT_TRUE(predicted.ok()) << predicted.status();
    const double expected = p.counts_cached_input
                                ? e.tokens_per_s_per_chip / (1 - p.workload.prefix_cache_hit_rate)
                                : e.tokens_per_s_per_chip;
    EXPECT_EQ(*predicted, expected);
  }
}

// Three points, two grid entries: the first is off by ×2 on one point, the second by at
// most ×1.25 everywhere; leaving that point out makes the first exact on the rest.
TEST(ValidationPointsTest, FitIsMinimaxOverTheChosenPoints) {
  const std::vector<Factors> grid = {{1, 1, 1}, {0.5, 1, 1}};
  const std::vector<std::vector<double>> predictions = {{100, 200, 400}, {125, 160, 250}};
  const std::vector<double> published = {100, 200, 200};
  Factors f = FitFactors(grid, predictions, published, {true, true, true});
  EXPECT_EQ(f.compute, 0.5);
  f = FitFactors(grid, predictions, published, {true, true, false});
  EXPECT_EQ(f.compute, 1);
  f = FitFactors(grid, predictions, published, {false, false, false});
  EXPECT_EQ(f.compute, 1);  // nothing to fit: the shipped factors
}

}  // namespace
}  // namespace dsv4::planner
