#include "core/swiglu_ffn.h"

#include <algorithm>
#include <utility>

#include "core/kernels.h"
#include "core/matmul.h"
#include "core/status_macros.h"

namespace dsv4 {

absl::StatusOr<SwigluWeights> LoadSwiglu(WeightLoader& loader, const std::string& prefix,
                                         int64_t dim, int64_t inter_dim) {
  SwigluWeights w;
  ASSIGN_OR_RETURN(w.w1, loader.LoadMatrix(prefix + ".w1.weight", inter_dim, dim));
  ASSIGN_OR_RETURN(w.w3, loader.LoadMatrix(prefix + ".w3.weight", inter_dim, dim));
  ASSIGN_OR_RETURN(w.w2, loader.LoadMatrix(prefix + ".w2.weight", dim, inter_dim));
  return w;
}

void SwigluForward(const SwigluWeights& w, const float* x, int64_t rows, const float* row_weight,
                   float limit, bool accumulate, float* y, std::vector<float>* scratch) {
  const int64_t d = w.dim();
  const int64_t f = w.inter_dim();
  std::vector<float>& h = *scratch;
  h.resize(static_cast<size_t>(rows * (2 * f + (accumulate ? d : 0))));
  MatMul(x, d, rows, w.w1, h.data(), 2 * f);
  MatMul(x, d, rows, w.w3, h.data() + f, 2 * f);
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
  if (!accumulate) {
    MatMul(h.data(), 2 * f, rows, w.w2, y, d);
    return;
  }
  float* down = h.data() + rows * 2 * f;
  MatMul(h.data(), 2 * f, rows, w.w2, down, d);
  for (int64_t i = 0; i < rows * d; ++i) y[i] += down[i];
}

}  // namespace dsv4
