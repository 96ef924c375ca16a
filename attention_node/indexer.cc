#include "attention_node/indexer.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <utility>

#include "core/status_macros.h"

namespace dsv4 {

Indexer::Indexer(Tensor wq_b, Tensor weights_proj, Compressor compressor, int64_t topk,
                 const Rope& rope)
    : wq_b_(std::move(wq_b)),
      weights_proj_(std::move(weights_proj)),
      compressor_(std::move(compressor)),
      topk_(topk),
      rope_(rope) {}

absl::StatusOr<Indexer> Indexer::Load(WeightLoader& loader, const std::string& prefix,
                                      const ModelConfig& config, const Rope& rope) {
  const int64_t heads = config.index_n_heads;
  const int64_t dim = config.index_head_dim;
  ASSIGN_OR_RETURN(Tensor wq_b,
                   loader.Load(prefix + ".wq_b.weight", {heads * dim, config.q_lora_rank}));
  ASSIGN_OR_RETURN(Tensor proj,
                   loader.Load(prefix + ".weights_proj.weight", {heads, config.hidden_size}));
  ASSIGN_OR_RETURN(Compressor compressor,
                   Compressor::Load(loader, prefix + ".compressor", config, 4, dim, rope));
  return Indexer(std::move(wq_b), std::move(proj), std::move(compressor), config.index_topk, rope);
}

void Indexer::Project(const float* x, const float* qr, const int64_t* positions, int64_t rows,
                      float* q, float* w) const {
  const int h = heads();
  const int64_t di = head_dim();
  const int64_t r = rope_.params().dim;
  Linear(qr, rows, wq_b_.dim(1), wq_b_.data(), h * di, q);
  for (int64_t t = 0; t < rows; ++t) rope_.ApplyHeads(q + t * h * di + di - r, h, di, positions[t]);
  Linear(x, rows, weights_proj_.dim(1), weights_proj_.data(), h, w);
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(di) * h));
  for (int64_t i = 0; i < rows * h; ++i) w[i] *= scale;
}

void Indexer::Select(const float* q, const float* w, const float* keys, int64_t n,
                     std::vector<int32_t>* selected, std::vector<float>* scratch) const {
  selected->resize(static_cast<size_t>(std::min(n, topk_)));
  if (n <= topk_) {  // every visible entry is selected: no need to score
    std::iota(selected->begin(), selected->end(), 0);
    return;
  }
  const int h = heads();
  const int64_t di = head_dim();
  scratch->resize(static_cast<size_t>((h + 1) * n));
  float* dots = scratch->data();  // [HI, n]
  float* score = dots + h * n;    // [n]
  Gemm(false, true, h, n, di, 1.0f, q, di, keys, di, 0.0f, dots, n);
  std::fill(score, score + n, 0.0f);
  for (int i = 0; i < h; ++i) {
    for (int64_t s = 0; s < n; ++s) score[s] += w[i] * std::max(dots[i * n + s], 0.0f);
  }
  const std::vector<int> top = TopK(score, n, static_cast<int>(topk_));
  std::copy(top.begin(), top.end(), selected->begin());
  std::sort(selected->begin(), selected->end());
}

}  // namespace dsv4
