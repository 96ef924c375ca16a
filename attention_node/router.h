// The MoE gate (spec §3.11): expert choice and routing weights per token.
//   ℓ = gate·x;  s_e = score(ℓ_e)  (sqrtsoftplus: sqrt(softplus(ℓ_e)); also sigmoid, softmax)
//   experts: hash layers idx = tid2eid[token]; others idx = top-k of (s_e + bias_e)
//   weights: w_j = s_{idx_j} / Σ_j' s_{idx_j'} · routed_scaling_factor
// The bias only selects; weights always come from the unbiased scores (renormalised
// except for softmax scoring, as in the reference).
#ifndef DSV4_ATTENTION_NODE_ROUTER_H_
#define DSV4_ATTENTION_NODE_ROUTER_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "core/model_config.h"
#include "core/tensor.h"
#include "core/weight_loader.h"
#include "core/weight_matrix.h"

namespace dsv4 {

enum class ScoreFunc { kSqrtSoftplus, kSigmoid, kSoftmax };
absl::StatusOr<ScoreFunc> ParseScoreFunc(const std::string& name);

class Router {
 public:
  // gate [E, d]. Bias-routed: bias [E], tid2eid empty. Hash-routed: bias empty,
  // tid2eid [V·k] with entries in [0, E).
  Router(WeightMatrix gate, Tensor bias, std::vector<int32_t> tid2eid, int k, ScoreFunc score,
         float route_scale);
  // Loads "<prefix>.weight" and ".bias" or ".tid2eid" (prefix "layers.3.ffn.gate");
  // `hash` selects hash routing.
  static absl::StatusOr<Router> Load(WeightLoader& loader, const std::string& prefix,
                                     const ModelConfig& config, bool hash);

  int k() const { return k_; }
  bool hash() const { return !tid2eid_.empty(); }

  // For x [T, d] and the tokens' ids [T]: expert_ids [T·k] and weights [T·k].
  void Route(const float* x, absl::Span<const int32_t> tokens, int32_t* expert_ids,
             float* weights) const;

 private:
  WeightMatrix gate_;
  Tensor bias_;
  std::vector<int32_t> tid2eid_;
  int k_;
  ScoreFunc score_;
  float route_scale_;
};

}  // namespace dsv4

#endif  // DSV4_ATTENTION_NODE_ROUTER_H_
