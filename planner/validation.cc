#include "planner/validation.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <limits>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "core/cluster_config.h"
#include "core/model_config.h"
#include "core/status_macros.h"
#include "nlohmann/json.hpp"

namespace dsv4::planner {
namespace {

using nlohmann::json;

ValidationPoint ParsePoint(const json& j) {
  ValidationPoint p;
  p.id = j.at("id").get<std::string>();
  p.system = j.at("system").get<std::string>();
  p.family = j.at("family").get<std::string>();
  p.kind = j.at("kind").get<std::string>();
  p.source = j.at("source").get<std::string>();
  p.model = j.at("model").get<std::string>();
  p.cluster = j.at("cluster").get<std::string>();
  const std::string phase = j.at("phase").get<std::string>();
  if (phase != "prefill" && phase != "decode") {
    throw std::invalid_argument("phase must be prefill or decode, got " + phase);
  }
  p.layout.phase = phase == "prefill" ? Phase::kPrefill : Phase::kDecode;
  const json& l = j.at("layout");
  p.layout.colocated = l.value("colocated", false);
  if (p.layout.colocated) {
    p.layout.attention_ranks = p.layout.expert_ranks = l.at("ranks").get<int>();
  } else {
    p.layout.attention_ranks = l.at("attention_ranks").get<int>();
    p.layout.expert_ranks = l.at("expert_ranks").get<int>();
  }
  p.layout.redundant_experts = l.value("redundant_experts", 0);
  p.layout.batch = l.value("batch", 0);
  p.tpot_ms = l.value("tpot_ms", 0.0);
  if ((p.layout.batch > 0) == (p.tpot_ms > 0)) {
    throw std::invalid_argument("layout needs exactly one of batch and tpot_ms");
  }
  if (p.tpot_ms > 0 && p.layout.phase != Phase::kDecode) {
    throw std::invalid_argument("tpot_ms is for decode points");
  }
  p.layout.micro_batches = l.value("micro_batches", 1);
  p.layout.hierarchical = l.value("hierarchical", false);
  p.layout.ranks_per_chip = l.value("ranks_per_chip", 1);
  const json& t = j.at("traffic");
  p.workload.name = p.id;
  p.workload.input.buckets = {{t.at("input_tokens").get<int64_t>(), 1.0}};
  p.workload.output.buckets = {{t.at("output_tokens").get<int64_t>(), 1.0}};
  p.workload.prefix_cache_hit_rate = t.value("cache_hit_rate", 0.0);
  p.workload.speculative.draft_tokens = t.value("draft_tokens", 0);
  p.workload.speculative.acceptance = t.value("acceptance", 0.0);
  p.published_per_chip = j.at("published_per_chip").get<double>();
  p.counts_cached_input = j.value("counts_cached_input", false);
  p.fit = j.value("fit", true);
  if (!(p.published_per_chip > 0)) throw std::invalid_argument("published_per_chip must be > 0");
  return p;
}

ClusterConfig Scaled(ClusterConfig cluster, const Factors& f) {
  HardwareSpec& hw = cluster.hardware;
  for (Figure* e : {&hw.efficiency_gemm, &hw.efficiency_attention}) {
    e->value = std::min(1.0, e->value * f.compute);
  }
  hw.efficiency_memory_bound.value = std::min(1.0, hw.efficiency_memory_bound.value * f.memory);
  hw.efficiency_all_to_all.value = std::min(1.0, hw.efficiency_all_to_all.value * f.link);
  return cluster;
}

double LogError(double predicted, double published) {
  return std::abs(std::log(std::max(predicted, 1e-30) / published));
}

}  // namespace

absl::StatusOr<std::vector<ValidationPoint>> LoadValidationPoints(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  json root;
  try {
    root = json::parse(in);
  } catch (const json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", e.what()));
  }
  std::vector<ValidationPoint> points;
  if (!root.contains("points") || !root["points"].is_array()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": expected a \"points\" array"));
  }
  for (size_t i = 0; i < root["points"].size(); ++i) {
    const json& j = root["points"][i];
    try {
      points.push_back(ParsePoint(j));
    } catch (const std::exception& e) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": points[", i, "] (", j.value("id", std::string("no id")), "): ", e.what()));
    }
  }
  return points;
}

absl::StatusOr<double> PredictPoint(const ValidationPoint& point, const std::string& root,
                                    const Factors& factors) {
  ASSIGN_OR_RETURN(const ModelConfig config,
                   LoadModelConfig(absl::StrCat(root, "/models/", point.model, "/config.json")));
  ASSIGN_OR_RETURN(const ClusterConfig cluster,
                   LoadClusterConfig(absl::StrCat(root, "/planner/validation/", point.cluster)));
  const ClusterConfig scaled = Scaled(cluster, factors);
  auto evaluate = [&](UnitLayout layout) {
    return EvaluateLayout(config, scaled, point.workload, layout, {});
  };
  PhaseEvaluation e;
  if (point.tpot_ms > 0) {
    // The largest batch (at most 1024) whose time per output token meets the target.
    UnitLayout layout = point.layout;
    int lo = 0, hi = 1024;
    while (lo < hi) {
      layout.batch = (lo + hi + 1) / 2;
      if (evaluate(layout).latency * 1e3 <= point.tpot_ms) {
        lo = layout.batch;
      } else {
        hi = layout.batch - 1;
      }
    }
    if (lo == 0) return 0.0;
    layout.batch = lo;
    e = evaluate(layout);
  } else {
    e = evaluate(point.layout);
  }
  double per_chip = e.tokens_per_s_per_chip;
  if (point.counts_cached_input) per_chip /= 1 - point.workload.prefix_cache_hit_rate;
  return per_chip;
}

Factors FitFactors(const std::vector<Factors>& grid,
                   const std::vector<std::vector<double>>& predictions,
                   const std::vector<double>& published, const std::vector<bool>& use) {
  Factors best;
  if (std::none_of(use.begin(), use.end(), [](bool u) { return u; })) return best;
  double best_worst = std::numeric_limits<double>::infinity(), best_sum = best_worst;
  for (size_t g = 0; g < grid.size(); ++g) {
    double worst = 0, sum = 0;
    for (size_t i = 0; i < published.size(); ++i) {
      if (!use[i]) continue;
      const double e = LogError(predictions[g][i], published[i]);
      worst = std::max(worst, e);
      sum += e * e;
    }
    if (worst < best_worst - 1e-12 || (worst < best_worst + 1e-12 && sum < best_sum)) {
      best_worst = worst;
      best_sum = sum;
      best = grid[g];
    }
  }
  return best;
}

absl::StatusOr<ValidationResult> RunValidation(const std::vector<ValidationPoint>& points,
                                               const std::string& root) {
  std::vector<Factors> grid;
  // Sustained factors are at most the kernel benchmarks' (multipliers up to 1).
  for (int c = 1; c <= 20; ++c) {
    for (int m = 4; m <= 20; ++m) {
      for (int l = 4; l <= 20; l += 2) grid.push_back({0.05 * c, 0.05 * m, 0.05 * l});
    }
  }
  ValidationResult result;
  std::vector<std::vector<double>> predictions(grid.size(), std::vector<double>(points.size()));
  std::vector<double> published;
  for (size_t i = 0; i < points.size(); ++i) {
    published.push_back(points[i].published_per_chip);
    ValidationRow row;
    row.point = &points[i];
    ASSIGN_OR_RETURN(row.predicted, PredictPoint(points[i], root, Factors{}));
    result.rows.push_back(row);
    for (size_t g = 0; g < grid.size(); ++g) {
      ASSIGN_OR_RETURN(predictions[g][i], PredictPoint(points[i], root, grid[g]));
    }
  }
  std::map<std::string, std::vector<bool>> families;
  for (size_t i = 0; i < points.size(); ++i) {
    std::vector<bool>& use = families[points[i].family];
    use.resize(points.size(), false);
    use[i] = points[i].fit;
  }
  for (const auto& [family, use] : families) {
    result.fitted[family] = FitFactors(grid, predictions, published, use);
  }
  for (size_t i = 0; i < points.size(); ++i) {
    std::vector<bool> use = families[points[i].family];
    use[i] = false;
    const Factors f = FitFactors(grid, predictions, published, use);
    const size_t g =
        std::find_if(grid.begin(), grid.end(),
                     [&](const Factors& x) {
                       return x.compute == f.compute && x.memory == f.memory && x.link == f.link;
                     }) -
        grid.begin();
    result.rows[i].loo_factors = f;
    result.rows[i].leave_one_out = predictions[g][i];
  }
  return result;
}

}  // namespace dsv4::planner
