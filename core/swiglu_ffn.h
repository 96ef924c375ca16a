// The SwiGLU feed-forward of DeepSeek-V4's routed and shared experts (one implementation
// for both, since both carry the swiglu_limit clamp in the current official code):
//
//   g = w1·x,  u = w3·x
//   g ← min(g, L),  u ← clamp(u, −L, L)          (only when L = swiglu_limit > 0)
//   h = SiLU(g) · u · r                            (r: the routing weight, 1 if none)
//   y = w2·h
//
// The routing weight multiplies h before w2, as the reference does.
#ifndef DSV4_CORE_SWIGLU_FFN_H_
#define DSV4_CORE_SWIGLU_FFN_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/tensor.h"
#include "core/weight_loader.h"
#include "core/weight_matrix.h"

namespace dsv4 {

// Views of the released matrices (the loader's mappings keep them alive).
struct SwigluWeights {
  WeightMatrix w1, w3;  // [F, d]: gate and up
  WeightMatrix w2;      // [d, F]

  int64_t dim() const { return w2.rows; }
  int64_t inter_dim() const { return w2.cols; }
};

// Loads "<prefix>.w1.weight", ".w3.weight" ([F, d]) and ".w2.weight" ([d, F]).
absl::StatusOr<SwigluWeights> LoadSwiglu(WeightLoader& loader, const std::string& prefix,
                                         int64_t dim, int64_t inter_dim);

// y[rows, d] (= or +=, per `accumulate`) SwiGLU(x[rows, d]). `row_weight` (may be null)
// holds one routing weight per row; `limit` ≤ 0 disables the clamp. `scratch` holds the
// [rows, 2F] intermediate (and y's [rows, d] when accumulating); callers keep it to reuse
// its allocation. Each output row depends only on its input row (core/matmul.h).
void SwigluForward(const SwigluWeights& w, const float* x, int64_t rows, const float* row_weight,
                   float limit, bool accumulate, float* y, std::vector<float>* scratch);

}  // namespace dsv4

#endif  // DSV4_CORE_SWIGLU_FFN_H_
