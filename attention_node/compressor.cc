#include "attention_node/compressor.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/matmul.h"
#include "core/status_macros.h"

namespace dsv4 {

Compressor::Compressor(WeightMatrix wkv, WeightMatrix wgate, Tensor ape, Tensor norm, int ratio,
                       const Rope& rope, float norm_eps)
    : wkv_(wkv),
      wgate_(wgate),
      ape_(std::move(ape)),
      norm_(std::move(norm)),
      ratio_(ratio),
      overlap_(ratio == 4 && wkv_.rows == 2 * norm_.dim(0)),
      rope_(rope),
      norm_eps_(norm_eps) {}

absl::StatusOr<Compressor> Compressor::Load(WeightLoader& loader, const std::string& prefix,
                                            const ModelConfig& config, int ratio, int64_t head_dim,
                                            const Rope& rope) {
  const bool overlap = ratio == 4 && !config.is_v41();
  const int64_t width = (overlap ? 2 : 1) * head_dim;
  ASSIGN_OR_RETURN(WeightMatrix wkv,
                   loader.LoadMatrix(prefix + ".wkv.weight", width, config.hidden_size));
  WeightMatrix wgate;  // V4.1's ratio 1 pools nothing, so it has no gate
  if (!config.is_v41() || ratio > 1) {
    ASSIGN_OR_RETURN(wgate, loader.LoadMatrix(prefix + ".wgate.weight", width, config.hidden_size));
  }
  Tensor ape;  // V4.1 has no positional bias
  if (!config.is_v41()) {
    ASSIGN_OR_RETURN(ape, loader.Load(prefix + ".ape", {ratio, width}));
  }
  ASSIGN_OR_RETURN(Tensor norm, loader.Load(prefix + ".norm.weight", {head_dim}));
  return Compressor(wkv, wgate, std::move(ape), std::move(norm), ratio, rope,
                    static_cast<float>(config.rms_norm_eps));
}

CompressorState Compressor::FreshState(int ratio, bool overlap, int64_t head_dim) {
  const int64_t c = overlap ? 2 : 1;
  const size_t size = static_cast<size_t>(c * ratio * c * head_dim);
  CompressorState state;
  state.kv.assign(size, 0.0f);
  state.score.assign(size, -std::numeric_limits<float>::infinity());
  return state;
}

void Compressor::Project(const float* x, int64_t rows, float* kv, float* score) const {
  MatMul(x, rows, wkv_, kv);
  if (wgate_.rows > 0) {
    MatMul(x, rows, wgate_, score);
  } else {  // a one-token softmax weighs its token exactly 1
    std::fill(score, score + rows * width(), 0.0f);
  }
}

bool Compressor::Push(CompressorState* state, const float* kv, const float* score, int64_t pos,
                      std::vector<float>* entries, float* latent) const {
  const int m = ratio_;
  const int64_t w = width();
  const int64_t dc = head_dim();
  if (m == 1 && !overlap()) {  // a one-token block: softmax weight 1, no partial block to keep
    const size_t first = entries->size();
    entries->insert(entries->end(), kv, kv + dc);
    return Finish(entries->data() + first, pos, latent);
  }
  const int64_t slot = (overlap() ? m : 0) + pos % m;
  std::memcpy(state->kv.data() + slot * w, kv, w * sizeof(float));
  float* score_row = state->score.data() + slot * w;
  const float* ape = ape_.rank() > 0 ? ape_.data() + (pos % m) * w : nullptr;
  for (int64_t j = 0; j < w; ++j) score_row[j] = score[j] + (ape ? ape[j] : 0.0f);
  if ((pos + 1) % m != 0) return false;

  // Candidates of channel j: (row, column) pairs — the previous block's first half and
  // the current block's second half when overlapping, else the current block.
  const int candidates = overlap() ? 2 * m : m;
  auto column = [&](int i, int64_t j) {
    return overlap() ? (i < m ? j : dc + j) : j;  // rows [0, m) previous, [m, 2m) current
  };
  const size_t first = entries->size();
  entries->resize(first + dc);
  float* entry = entries->data() + first;
  std::vector<float> p(candidates);
  for (int64_t j = 0; j < dc; ++j) {
    float top = -std::numeric_limits<float>::infinity();
    for (int i = 0; i < candidates; ++i) top = std::max(top, state->score[i * w + column(i, j)]);
    float sum = 0;
    for (int i = 0; i < candidates; ++i) {
      p[i] = std::exp(state->score[i * w + column(i, j)] - top);
      sum += p[i];
    }
    float acc = 0;
    for (int i = 0; i < candidates; ++i) acc += p[i] / sum * state->kv[i * w + column(i, j)];
    entry[j] = acc;
  }
  if (overlap()) {  // the current block becomes the next block's lookahead half
    std::memcpy(state->kv.data(), state->kv.data() + m * w, m * w * sizeof(float));
    std::memcpy(state->score.data(), state->score.data() + m * w, m * w * sizeof(float));
  }
  return Finish(entry, pos, latent);
}

bool Compressor::Finish(float* entry, int64_t pos, float* latent) const {
  const int64_t dc = head_dim();
  RmsNorm(entry, norm_.data(), 1, dc, norm_eps_, entry);
  if (latent != nullptr) std::memcpy(latent, entry, dc * sizeof(float));
  const int64_t r = rope_.params().dim;
  rope_.Apply(entry + dc - r, pos + 1 - ratio_);
  return true;
}

}  // namespace dsv4
