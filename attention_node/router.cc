#include "attention_node/router.h"

#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/kernels.h"
#include "core/matmul.h"
#include "core/status_macros.h"

namespace dsv4 {

absl::StatusOr<ScoreFunc> ParseScoreFunc(const std::string& name) {
  if (name == "sqrtsoftplus") return ScoreFunc::kSqrtSoftplus;
  if (name == "sigmoid") return ScoreFunc::kSigmoid;
  if (name == "softmax") return ScoreFunc::kSoftmax;
  return absl::InvalidArgumentError(
      absl::StrCat("scoring_func \"", name, "\" is not one of sqrtsoftplus, sigmoid, softmax"));
}

Router::Router(WeightMatrix gate, Tensor bias, std::vector<int32_t> tid2eid, int k, ScoreFunc score,
               float route_scale)
    : gate_(gate),
      bias_(std::move(bias)),
      tid2eid_(std::move(tid2eid)),
      k_(k),
      score_(score),
      route_scale_(route_scale) {}

absl::StatusOr<Router> Router::Load(WeightLoader& loader, const std::string& prefix,
                                    const ModelConfig& config, bool hash) {
  ASSIGN_OR_RETURN(ScoreFunc score, ParseScoreFunc(config.scoring_func));
  const int64_t experts = config.n_routed_experts;
  const int k = config.num_experts_per_tok;
  ASSIGN_OR_RETURN(WeightMatrix gate,
                   loader.LoadMatrix(prefix + ".weight", experts, config.hidden_size));
  Tensor bias;
  std::vector<int32_t> tid2eid;
  if (hash) {
    ASSIGN_OR_RETURN(tid2eid,
                     loader.LoadIndexTable(prefix + ".tid2eid", config.vocab_size, k, experts));
  } else {
    ASSIGN_OR_RETURN(bias, loader.Load(prefix + ".bias", {experts}));
  }
  return Router(std::move(gate), std::move(bias), std::move(tid2eid), k, score,
                static_cast<float>(config.routed_scaling_factor));
}

void Router::Route(const float* x, absl::Span<const int32_t> tokens, int32_t* expert_ids,
                   float* weights) const {
  const int64_t rows = static_cast<int64_t>(tokens.size());
  const int64_t experts = gate_.rows;
  std::vector<float> scores(rows * experts);
  MatMul(x, rows, gate_, scores.data());
  if (score_ == ScoreFunc::kSoftmax) SoftmaxRows(scores.data(), rows, experts);
  std::vector<float> biased(experts);
  for (int64_t t = 0; t < rows; ++t) {
    float* s = scores.data() + t * experts;
    for (int64_t e = 0; e < experts; ++e) {
      if (score_ == ScoreFunc::kSqrtSoftplus) s[e] = std::sqrt(Softplus(s[e]));
      if (score_ == ScoreFunc::kSigmoid) s[e] = Sigmoid(s[e]);
    }
    int32_t* ids = expert_ids + t * k_;
    if (hash()) {
      for (int j = 0; j < k_; ++j) ids[j] = tid2eid_[tokens[t] * k_ + j];
    } else {
      for (int64_t e = 0; e < experts; ++e) {
        biased[e] = s[e] + (bias_.empty() ? 0.0f : bias_.data()[e]);
      }
      const std::vector<int> top = TopK(biased.data(), experts, k_);
      for (int j = 0; j < k_; ++j) ids[j] = top[j];
    }
    float* w = weights + t * k_;
    float sum = 0;
    for (int j = 0; j < k_; ++j) {
      w[j] = s[ids[j]];
      sum += w[j];
    }
    for (int j = 0; j < k_; ++j) {
      if (score_ != ScoreFunc::kSoftmax) w[j] /= sum;
      w[j] *= route_scale_;
    }
  }
}

}  // namespace dsv4
