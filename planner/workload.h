// A planner workload (workloads/*.yaml): the traffic a deployment must serve and the
// latency it must meet. Every key is validated; errors name the file, line and key:
//   workloads/chat.yaml:4: input_tokens.mean: expected a positive number, got "long"
//
// Schema (required keys marked *):
//   name*: chat
//   description: "..."
//   rate*:                        # exactly one of
//     requests_per_s: 50
//     output_tokens_per_s: 20000  # converted with the mean output length
//   input_tokens*:  LENGTH        # prompt length, cached prefix included
//   output_tokens*: LENGTH
//   prefix_cache_hit_rate: 0.5    # share of input tokens served from a KV cache, in [0, 1)
//   speculative: {draft_tokens: 1, acceptance: 0.8}   # MTP drafts per step, acceptance of each
//   expert_load_skew: 1.0         # busiest / mean expert-rank load from routing skew after
//                                 # placement without redundant experts (1 = uniform)
//   max_utilization: 0.9          # highest load a unit is planned for, in (0, 1]
//   slo: {ttft_ms: 2000, tpot_ms: 50}   # optional; --slo_* flags override
//
// LENGTH is a number (every request has that length) or a map:
//   {distribution: fixed,       tokens: N}
//   {distribution: uniform,     min: A, max: B}
//   {distribution: exponential, mean: M, min: A, max: B}         # min/max optional clamps
//   {distribution: lognormal,   mean: M, sigma: S, min: A, max: B}
//   {distribution: buckets,     buckets: [{tokens: N, weight: W}, ...]}
// Continuous distributions are discretised into 16 equal-probability buckets whose
// lengths average to the requested mean (before clamping).
#ifndef DSV4_PLANNER_WORKLOAD_H_
#define DSV4_PLANNER_WORKLOAD_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace dsv4::planner {

struct LengthBucket {
  int64_t tokens = 0;
  double weight = 0;  // probability; a distribution's weights sum to 1
};

struct LengthDistribution {
  std::string description;  // "lognormal mean 2000 sigma 1", for reports
  std::vector<LengthBucket> buckets;

  double Mean() const;
  // Smallest bucket length whose cumulative weight reaches q.
  int64_t Quantile(double q) const;
  int64_t Max() const;
};

struct SpeculativeDecoding {
  int draft_tokens = 0;   // MTP drafts per decode step (0 = off)
  double acceptance = 0;  // probability each successive draft is accepted
  // Expected tokens emitted per step: 1 + a + a² + ... + a^drafts.
  double TokensPerStep() const;
};

struct Workload {
  std::string path;
  std::string name;
  std::string description;
  double requests_per_s = 0;
  LengthDistribution input;
  LengthDistribution output;
  double prefix_cache_hit_rate = 0;
  SpeculativeDecoding speculative;
  double expert_load_skew = 1;
  double max_utilization = 0.9;
  std::optional<double> slo_ttft;  // seconds
  std::optional<double> slo_tpot;  // seconds
};

absl::StatusOr<Workload> ParseWorkload(const std::string& yaml_text, const std::string& source);
absl::StatusOr<Workload> LoadWorkload(const std::string& path);

}  // namespace dsv4::planner

#endif  // DSV4_PLANNER_WORKLOAD_H_
