// Manifold-constrained hyper-connections (mHC, spec §3.3): the n residual streams of
// every token, mixed into one sub-layer input (Pre), updated with the sub-layer output
// (Post), and finally reduced for the head (HcHead).
//
// V4 collapses a sub-layer's input with the pre-mix computed from that same input (Pre).
// V4.1 is lagged (single-pass): each sub-layer's Mixes yield the pre-mix of the *next*
// sub-layer (the first attention collapses with the one-hot mix on stream 0, the head with
// the last FFN's), so it calls Mixes and Collapse separately, and has no HcHead.
//
// Per token, with x the n·d concatenation of the streams (stream 0 first):
//   mix     = (fn · x) · rsqrt(mean(x²) + norm_eps)              (length M = (2+n)·n)
//   pre[i]  = sigmoid(mix[i]·scale[0] + base[i]) + hc_eps
//   post[i] = 2·sigmoid(mix[n+i]·scale[1] + base[n+i])
//   C[a][b] = Sinkhorn(mix[2n + n·a + b]·scale[2] + base[2n + n·a + b])
//   Pre:  y = Σ_i pre[i]·X[i]
//   Post: X'[b] = post[b]·f + Σ_a C[a][b]·X[a]   (row a = source, column b = destination)
#ifndef DSV4_ATTENTION_NODE_MHC_H_
#define DSV4_ATTENTION_NODE_MHC_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "core/model_config.h"
#include "core/tensor.h"
#include "core/weight_loader.h"

namespace dsv4 {

// Sinkhorn–Knopp on a row-major n×n matrix of logits, in place, in the reference order:
// row softmax then + eps, a column normalisation, then (iters − 1) × (row, column)
// normalisations, each dividing by (sum + eps). The result is doubly stochastic up to
// the eps terms.
void Sinkhorn(float* c, int n, int iters, float eps);

class HyperConnection {
 public:
  // fn [M, n·d], base [M], scale [3].
  HyperConnection(Tensor fn, Tensor base, Tensor scale, int n, int sinkhorn_iters, float hc_eps,
                  float norm_eps);
  // Loads "<prefix>_fn", "<prefix>_base", "<prefix>_scale" (prefix "layers.3.hc_attn").
  static absl::StatusOr<HyperConnection> Load(WeightLoader& loader, const std::string& prefix,
                                              const ModelConfig& config);

  // pre [T, n], post [T, n], comb [T, n, n] from x [T, n, d].
  void Mixes(const float* x, int64_t tokens, float* pre, float* post, float* comb) const;
  // y [T, d] = Σ_i pre[t, i]·X[t, i].
  static void Collapse(const float* x, const float* pre, int64_t tokens, int n, int64_t d,
                       float* y);
  // V4: Mixes, then Collapse with the sub-layer's own pre: x → y [T, d], post, comb.
  void Pre(const float* x, int64_t tokens, float* y, float* post, float* comb) const;

  // In place on x [T, n, d], with f [T, d] the sub-layer output.
  static void Post(const float* f, const float* post, const float* comb, int64_t tokens, int n,
                   int64_t d, float* x);

 private:
  Tensor fn_, base_, scale_;
  int n_, iters_;
  float hc_eps_, norm_eps_;
};

// The final reduction of the streams before the output norm (no Sinkhorn, no post):
// y = Σ_i (sigmoid(mix[i]·scale[0] + base[i]) + hc_eps)·X[i], with fn [n, n·d].
class HcHead {
 public:
  HcHead(Tensor fn, Tensor base, Tensor scale, int n, float hc_eps, float norm_eps);
  // Loads "<prefix>_fn", "_base", "_scale" (prefix "hc_head" or "mtp.0.hc_head").
  static absl::StatusOr<HcHead> Load(WeightLoader& loader, const std::string& prefix,
                                     const ModelConfig& config);

  // x [T, n, d] → y [T, d].
  void Apply(const float* x, int64_t tokens, float* y) const;

 private:
  Tensor fn_, base_, scale_;
  int n_;
  float hc_eps_, norm_eps_;
};

}  // namespace dsv4

#endif  // DSV4_ATTENTION_NODE_MHC_H_
