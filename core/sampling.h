// Token sampling from logits: temperature, top-k, top-p (nucleus), seeded and
// deterministic (the same seed and logits give the same tokens on every platform).
//
// The i-th draw of a request depends only on (seed, i), not on the draws before it, so an
// engine that replays a request (prefilling the tokens it already sampled) continues its
// stream exactly by starting at draw i = tokens already sampled.
#ifndef DSV4_CORE_SAMPLING_H_
#define DSV4_CORE_SAMPLING_H_

#include <cstdint>

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
  // `draws_done`: draws this request made before (a replay's already-sampled tokens).
  explicit Sampler(const SamplingParams& params, uint64_t draws_done = 0)
      : params_(params), draw_(draws_done) {}

  // Draws one token id from `logits` (one row, vocab-sized, non-empty).
  int32_t Sample(absl::Span<const float> logits) { return SampleDraw(logits, params_, draw_++); }

  // Draw number `draw` of a request sampled with `params`.
  static int32_t SampleDraw(absl::Span<const float> logits, const SamplingParams& params,
                            uint64_t draw);

 private:
  SamplingParams params_;
  uint64_t draw_;
};

}  // namespace dsv4

#endif  // DSV4_CORE_SAMPLING_H_
