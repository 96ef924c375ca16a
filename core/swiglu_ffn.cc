#include "core/swiglu_ffn.h"

#include <algorithm>
#include <cstring>
#include <utility>

#include "core/kernels.h"
#include "core/status_macros.h"

namespace dsv4 {

absl::StatusOr<SwigluWeights> LoadSwiglu(WeightLoader& loader, const std::string& prefix,
                                         int64_t dim, int64_t inter_dim) {
  ASSIGN_OR_RETURN(Tensor w1, loader.Load(prefix + ".w1.weight", {inter_dim, dim}));
  ASSIGN_OR_RETURN(Tensor w3, loader.Load(prefix + ".w3.weight", {inter_dim, dim}));
  ASSIGN_OR_RETURN(Tensor w2, loader.Load(prefix + ".w2.weight", {dim, inter_dim}));
  // w1 and w3 are stacked so that one GEMM computes both.
  SwigluWeights w;
  w.w13 = Tensor({2 * inter_dim, dim});
  const size_t half = static_cast<size_t>(inter_dim * dim);
  std::memcpy(w.w13.data(), w1.data(), half * sizeof(float));
  std::memcpy(w.w13.data() + half, w3.data(), half * sizeof(float));
  w.w2 = std::move(w2);
  return w;
}

void SwigluForward(const SwigluWeights& w, const float* x, int64_t rows, const float* row_weight,
                   float limit, bool accumulate, float* y, std::vector<float>* scratch) {
  const int64_t d = w.dim();
  const int64_t f = w.inter_dim();
  std::vector<float>& h = *scratch;
  h.resize(static_cast<size_t>(rows * 2 * f));
  Linear(x, rows, d, w.w13.data(), 2 * f, h.data());
  for (int64_t r = 0; r < rows; ++r) {
    float* gate = h.data() + r * 2 * f;  // overwritten in place by the activation
    const float* up = gate + f;
    const float scale = row_weight ? row_weight[r] : 1.0f;
    for (int64_t j = 0; j < f; ++j) {
      float g = gate[j];
      float u = up[j];
      if (limit > 0) {
        g = std::min(g, limit);
        u = std::clamp(u, -limit, limit);
      }
      gate[j] = Silu(g) * u * scale;
    }
  }
  Gemm(false, true, rows, d, f, 1.0f, h.data(), 2 * f, w.w2.data(), f, accumulate ? 1.0f : 0.0f, y,
       d);
}

}  // namespace dsv4
