#include "core/sampling.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "absl/strings/str_cat.h"

namespace dsv4 {

absl::Status ValidateSamplingParams(const SamplingParams& params) {
  if (!std::isfinite(params.temperature)) {
    return absl::InvalidArgumentError("temperature must be finite");
  }
  if (!(params.top_p > 0.0f && params.top_p <= 1.0f)) {
    return absl::InvalidArgumentError(absl::StrCat("top_p must be in (0, 1], got ", params.top_p));
  }
  if (params.top_k < 0) {
    return absl::InvalidArgumentError(absl::StrCat("top_k must be ≥ 0, got ", params.top_k));
  }
  return absl::OkStatus();
}

namespace {

// SplitMix64's finaliser: a bijective mix whose outputs pass BigCrush as a counter hash.
uint64_t Mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// The uniform in [0, 1) (53 random bits) of draw `draw` under `seed`: counter-based, so no
// draw depends on the ones before it.
double Uniform(uint64_t seed, uint64_t draw) {
  const uint64_t bits = Mix(Mix(seed) ^ (draw * 0x9e3779b97f4a7c15ull + 0x632be59bd9b4e019ull));
  return static_cast<double>(bits >> 11) * 0x1.0p-53;
}

}  // namespace

int32_t Sampler::SampleDraw(absl::Span<const float> logits, const SamplingParams& params,
                            uint64_t draw) {
  const int64_t n = static_cast<int64_t>(logits.size());
  if (params.temperature <= 0.0f) {
    return static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
  }
  // Candidates by decreasing logit (ties: lower id first), cut to top_k.
  std::vector<int32_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  const int64_t keep = params.top_k > 0 ? std::min<int64_t>(params.top_k, n) : n;
  auto by_logit = [&](int32_t a, int32_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  };
  std::partial_sort(order.begin(), order.begin() + keep, order.end(), by_logit);
  order.resize(keep);

  // Softmax at the temperature, in double for a platform-independent cut.
  std::vector<double> probs(keep);
  const double top = logits[order[0]];
  double total = 0;
  for (int64_t i = 0; i < keep; ++i) {
    probs[i] = std::exp((logits[order[i]] - top) / params.temperature);
    total += probs[i];
  }
  // Nucleus: the shortest prefix whose mass reaches top_p.
  int64_t cut = keep;
  if (params.top_p < 1.0f) {
    double mass = 0;
    for (int64_t i = 0; i < keep; ++i) {
      mass += probs[i] / total;
      if (mass >= params.top_p) {
        cut = i + 1;
        break;
      }
    }
  }
  const double kept = std::accumulate(probs.begin(), probs.begin() + cut, 0.0);
  double u = Uniform(params.seed, draw) * kept;
  for (int64_t i = 0; i < cut; ++i) {
    u -= probs[i];
    if (u < 0) return order[i];
  }
  return order[cut - 1];
}

}  // namespace dsv4
