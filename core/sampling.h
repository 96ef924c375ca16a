// Token sampling from logits: temperature, top-k, top-p (nucleus), seeded and
// deterministic (the same seed and logits give the same tokens on every platform).
#ifndef DSV4_CORE_SAMPLING_H_
#define DSV4_CORE_SAMPLING_H_

#include <cstdint>
#include <random>

#include "absl/status/status.h"
#include "absl/types/span.h"

namespace dsv4 {

struct SamplingParams {
  float temperature = 1.0f;  // ≤ 0: greedy (argmax, lowest id on ties)
  float top_p = 1.0f;        // keep the smallest set of top tokens whose mass ≥ top_p
  int top_k = 0;             // keep the k most likely tokens; 0 = all
  uint64_t seed = 0;
};

// INVALID_ARGUMENT naming the field when a parameter is out of range.
absl::Status ValidateSamplingParams(const SamplingParams& params);

class Sampler {
 public:
  explicit Sampler(const SamplingParams& params);

  // Draws one token id from `logits` (one row, vocab-sized, non-empty).
  int32_t Sample(absl::Span<const float> logits);

 private:
  double Uniform();  // in [0, 1), 53 random bits

  SamplingParams params_;
  std::mt19937_64 rng_;
};

}  // namespace dsv4

#endif  // DSV4_CORE_SAMPLING_H_
