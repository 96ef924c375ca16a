#include "planner/workload.h"

#include <algorithm>
#include <cmath>
#include <functional>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/status_macros.h"
#include "core/yaml_reader.h"

namespace dsv4::planner {
namespace {

constexpr int kBuckets = 16;
constexpr int kSamplesPerBucket = 8;

// Φ⁻¹(q) by bisection on the normal CDF: 60 halvings reach double precision.
double NormalQuantile(double q) {
  double lo = -10, hi = 10;
  for (int i = 0; i < 60; ++i) {
    const double mid = (lo + hi) / 2;
    (0.5 * std::erfc(-mid / std::sqrt(2.0)) < q ? lo : hi) = mid;
  }
  return (lo + hi) / 2;
}

// Equal-probability buckets of a continuous distribution given by its quantile function,
// each at the average of stratified samples, rescaled to `mean` and clamped.
std::vector<LengthBucket> Discretise(const std::function<double(double)>& quantile, double mean,
                                     double min, double max) {
  std::vector<double> values(kBuckets);
  double sum = 0;
  for (int i = 0; i < kBuckets; ++i) {
    double v = 0;
    for (int j = 0; j < kSamplesPerBucket; ++j) {
      v += quantile((i + (j + 0.5) / kSamplesPerBucket) / kBuckets);
    }
    values[i] = v / kSamplesPerBucket;
    sum += values[i];
  }
  std::vector<LengthBucket> out;
  for (double v : values) {
    const int64_t tokens = std::llround(std::clamp(v * mean * kBuckets / sum, min, max));
    if (!out.empty() && out.back().tokens == tokens) {
      out.back().weight += 1.0 / kBuckets;
    } else {
      out.push_back({std::max<int64_t>(1, tokens), 1.0 / kBuckets});
    }
  }
  return out;
}

LengthDistribution ReadLength(const YamlMap& parent, absl::string_view key) {
  LengthDistribution dist;
  YamlReader& reader = parent.reader();
  const YAML::Node node = parent.Get(key);
  if (!parent.Has(key)) {
    parent.Fail(key, "missing required key");
    return dist;
  }
  if (node.IsScalar()) {
    const std::optional<double> tokens =
        ReadYamlNumber(reader, node, parent.Path(key), NumberRule::kPositive);
    if (tokens) {
      dist.buckets = {{std::max<int64_t>(1, std::llround(*tokens)), 1.0}};
      dist.description = absl::StrFormat("%d", dist.buckets[0].tokens);
    }
    return dist;
  }
  const YamlMap map =
      parent.Map(key, {"distribution", "tokens", "mean", "sigma", "min", "max", "buckets"}, true);
  // Errors below this map's own are consequences of them (an unreadable kind, min or max).
  const int errors = reader.error_count();
  const std::string kind = map.String("distribution");
  if (reader.error_count() > errors) return dist;
  auto allow_only = [&](std::vector<absl::string_view> keys) {
    for (absl::string_view k : {"tokens", "mean", "sigma", "min", "max", "buckets"}) {
      if (map.Has(k) && std::find(keys.begin(), keys.end(), k) == keys.end()) {
        map.Fail(k, absl::StrCat("not used by distribution ", kind));
      }
    }
  };
  const double big = 1e9;
  if (kind == "fixed") {
    allow_only({"tokens"});
    const double tokens = map.Number("tokens", NumberRule::kPositive);
    dist.buckets = {{std::max<int64_t>(1, std::llround(tokens)), 1.0}};
    dist.description = absl::StrFormat("%d", dist.buckets[0].tokens);
  } else if (kind == "uniform") {
    allow_only({"min", "max"});
    const double lo = map.Number("min", NumberRule::kPositive);
    const double hi = map.Number("max", NumberRule::kPositive);
    if (reader.error_count() == errors && hi < lo) map.Fail("max", "must be at least min");
    dist.buckets = Discretise([&](double q) { return lo + q * (hi - lo); }, (lo + hi) / 2, lo, hi);
    dist.description = absl::StrFormat("uniform %g-%g", lo, hi);
  } else if (kind == "exponential" || kind == "lognormal") {
    const bool lognormal = kind == "lognormal";
    if (lognormal) {
      allow_only({"mean", "sigma", "min", "max"});
    } else {
      allow_only({"mean", "min", "max"});
    }
    const double mean = map.Number("mean", NumberRule::kPositive);
    const double sigma = lognormal ? map.Number("sigma", NumberRule::kPositive) : 0;
    const double lo = map.Number("min", NumberRule::kPositive, 1);
    const double hi = map.Number("max", NumberRule::kPositive, big);
    if (reader.error_count() == errors && hi < lo) map.Fail("max", "must be at least min");
    if (reader.error_count() > errors) return dist;
    if (lognormal) {
      dist.buckets =
          Discretise([&](double q) { return std::exp(sigma * NormalQuantile(q)); }, mean, lo, hi);
      dist.description = absl::StrFormat("lognormal mean %g sigma %g", mean, sigma);
    } else {
      dist.buckets = Discretise([](double q) { return -std::log1p(-q); }, mean, lo, hi);
      dist.description = absl::StrFormat("exponential mean %g", mean);
    }
  } else if (kind == "buckets") {
    allow_only({"buckets"});
    const YAML::Node list = map.Get("buckets");
    if (!list.IsSequence() || list.size() == 0) {
      map.Fail("buckets", "expected a non-empty list of {tokens: N, weight: W}");
      return dist;
    }
    double total = 0;
    for (size_t i = 0; i < list.size(); ++i) {
      const YamlMap bucket(&reader, list[i], absl::StrCat(map.Path("buckets"), "[", i, "]"),
                           {"tokens", "weight"});
      const double tokens = bucket.Number("tokens", NumberRule::kPositive);
      const double weight = bucket.Number("weight", NumberRule::kPositive);
      dist.buckets.push_back({std::max<int64_t>(1, std::llround(tokens)), weight});
      total += weight;
    }
    if (reader.error_count() > errors) return dist;
    for (LengthBucket& b : dist.buckets) b.weight /= total;
    std::sort(dist.buckets.begin(), dist.buckets.end(),
              [](const LengthBucket& a, const LengthBucket& b) { return a.tokens < b.tokens; });
    dist.description = absl::StrFormat("%d buckets", dist.buckets.size());
  } else {
    map.Fail("distribution",
             absl::StrCat("unknown distribution \"", kind,
                          "\" (expected fixed, uniform, exponential, lognormal or buckets)"));
  }
  return dist;
}

absl::StatusOr<Workload> Parse(YamlReader& reader) {
  Workload w;
  w.path = reader.file();
  const YamlMap root = reader.Root({"name", "description", "rate", "input_tokens", "output_tokens",
                                    "prefix_cache_hit_rate", "speculative", "expert_load_skew",
                                    "max_utilization", "slo"});
  w.name = root.String("name");
  if (reader.ok() && w.name.empty()) root.Fail("name", "must not be empty");
  w.description = root.String("description", "");
  const YamlMap rate = root.Map("rate", {"requests_per_s", "output_tokens_per_s"}, true);
  w.input = ReadLength(root, "input_tokens");
  w.output = ReadLength(root, "output_tokens");
  // Each read checks its own value; a rate given in output tokens/s over an unreadable
  // output length is meaningless but never returned, the output length's error being.
  if (!root.Has("rate")) {
    // Reported as missing by Map above.
  } else if (rate.Has("requests_per_s") == rate.Has("output_tokens_per_s")) {
    root.Fail("rate", "give exactly one of requests_per_s or output_tokens_per_s");
  } else if (rate.Has("requests_per_s")) {
    w.requests_per_s = rate.Number("requests_per_s", NumberRule::kPositive);
  } else {
    w.requests_per_s =
        rate.Number("output_tokens_per_s", NumberRule::kPositive) / std::max(w.output.Mean(), 1.0);
  }
  w.prefix_cache_hit_rate = root.Number("prefix_cache_hit_rate", NumberRule::kNonNegative, 0);
  if (w.prefix_cache_hit_rate >= 1) {  // 0 when unreadable
    root.Fail("prefix_cache_hit_rate", "must be below 1 (some input must be computed)");
  }
  const YamlMap spec = root.Map("speculative", {"draft_tokens", "acceptance"});
  w.speculative.draft_tokens = spec.Int("draft_tokens", NumberRule::kNonNegative, 0);
  w.speculative.acceptance = spec.Number("acceptance", NumberRule::kFraction, 0.8);
  w.expert_load_skew = root.Number("expert_load_skew", NumberRule::kPositive, 1);
  if (w.expert_load_skew < 1) {  // 1 when unreadable
    root.Fail("expert_load_skew", "must be at least 1 (busiest / mean load)");
  }
  w.max_utilization = root.Number("max_utilization", NumberRule::kFraction, 0.9);
  const YamlMap slo = root.Map("slo", {"ttft_ms", "tpot_ms"});
  if (slo.Has("ttft_ms")) w.slo_ttft = slo.Number("ttft_ms", NumberRule::kPositive) / 1e3;
  if (slo.Has("tpot_ms")) w.slo_tpot = slo.Number("tpot_ms", NumberRule::kPositive) / 1e3;
  RETURN_IF_ERROR(reader.status());
  return w;
}

}  // namespace

double LengthDistribution::Mean() const {
  double sum = 0;
  for (const LengthBucket& b : buckets) sum += b.weight * static_cast<double>(b.tokens);
  return sum;
}

int64_t LengthDistribution::Quantile(double q) const {
  double cumulative = 0;
  for (const LengthBucket& b : buckets) {
    cumulative += b.weight;
    if (cumulative >= q - 1e-12) return b.tokens;
  }
  return buckets.empty() ? 0 : buckets.back().tokens;
}

int64_t LengthDistribution::Max() const {
  int64_t max = 0;
  for (const LengthBucket& b : buckets) max = std::max(max, b.tokens);
  return max;
}

double SpeculativeDecoding::TokensPerStep() const {
  double tokens = 1, p = 1;
  for (int i = 0; i < draft_tokens; ++i) {
    p *= acceptance;
    tokens += p;
  }
  return tokens;
}

absl::StatusOr<Workload> ParseWorkload(const std::string& yaml_text, const std::string& source) {
  YamlReader reader(yaml_text, source);
  try {
    return Parse(reader);
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": ", e.what()));
  }
}

absl::StatusOr<Workload> LoadWorkload(const std::string& path) {
  YamlReader reader = YamlReader::FromFile(path);
  RETURN_IF_ERROR(reader.status());
  try {
    return Parse(reader);
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", e.what()));
  }
}

}  // namespace dsv4::planner
