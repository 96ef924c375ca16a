#include "attention_node/indexer.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <utility>

#include "core/matmul.h"
#include "core/parallel.h"
#include "core/status_macros.h"
#include "core/vector_math.h"

namespace dsv4 {

Indexer::Indexer(WeightMatrix wq_b, WeightMatrix weights_proj, Compressor compressor, int64_t topk,
                 const Rope& rope)
    : wq_b_(wq_b),
      weights_proj_(weights_proj),
      compressor_(std::move(compressor)),
      head_dim_(compressor_->head_dim()),
      topk_(topk),
      rope_(rope) {}

absl::StatusOr<Indexer> Indexer::Load(WeightLoader& loader, const std::string& prefix,
                                      const ModelConfig& config, const Rope& rope, int layer) {
  const int64_t heads = config.index_n_heads;
  const int64_t dim = config.index_head_dim;
  Indexer ix;
  ix.head_dim_ = dim;
  ix.topk_ = config.index_topk;
  ix.rope_ = rope;
  ix.norm_eps_ = static_cast<float>(config.rms_norm_eps);
  ASSIGN_OR_RETURN(ix.wq_b_,
                   loader.LoadMatrix(prefix + ".wq_b.weight", heads * dim, config.q_lora_rank));
  ASSIGN_OR_RETURN(ix.weights_proj_,
                   loader.LoadMatrix(prefix + ".weights_proj.weight", heads, config.hidden_size));
  if (!config.is_v41()) {
    ASSIGN_OR_RETURN(ix.compressor_,
                     Compressor::Load(loader, prefix + ".compressor", config, 4, dim, rope));
  } else if (config.is_kv_source(layer)) {
    ASSIGN_OR_RETURN(ix.wk_, loader.LoadMatrix(prefix + ".wk.weight", dim, config.head_dim));
    ASSIGN_OR_RETURN(ix.k_norm_, loader.Load(prefix + ".k_norm.weight", {dim}));
  }
  return ix;
}

void Indexer::AppendKey(const float* latent, int64_t pos, std::vector<float>* keys) const {
  const size_t at = keys->size();
  keys->resize(at + head_dim_);
  float* key = keys->data() + at;
  MatMul(latent, 1, wk_, key);
  RmsNorm(key, k_norm_.data(), 1, head_dim_, norm_eps_, key);
  rope_.Apply(key + head_dim_ - rope_.params().dim, pos);
}

void Indexer::Project(const float* x, const float* qr, const int64_t* positions, int64_t rows,
                      float* q, float* w) const {
  const int h = heads();
  const int64_t di = head_dim();
  const int64_t r = rope_.params().dim;
  MatMul(qr, rows, wq_b_, q);
  for (int64_t t = 0; t < rows; ++t) rope_.ApplyHeads(q + t * h * di + di - r, h, di, positions[t]);
  MatMul(x, rows, weights_proj_, w);
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(di) * h));
  for (int64_t i = 0; i < rows * h; ++i) w[i] *= scale;
}

void Indexer::Scores(const float* q, const float* w, const float* keys, int64_t n,
                     float* scores) const {
  const int h = heads();
  const int64_t di = head_dim();
  const int64_t grain = std::max<int64_t>(64, (int64_t{1} << 15) / (h * di));  // ≥ ~32k MACs
  ParallelFor(n, grain, [&](int64_t begin, int64_t end) {
    for (int64_t s = begin; s < end; ++s) {
      float sum = 0;
      for (int i = 0; i < h; ++i) sum += w[i] * std::max(Dot(q + i * di, keys + s * di, di), 0.0f);
      scores[s] = sum;
    }
  });
}

void Indexer::SelectTop(const float* scores, int64_t n, std::vector<int32_t>* selected) const {
  int64_t finite = 0;
  for (int64_t s = 0; s < n; ++s) finite += scores[s] > -std::numeric_limits<float>::infinity();
  const std::vector<int> top = TopK(scores, n, static_cast<int>(std::min(topk_, finite)));
  selected->assign(top.begin(), top.end());
  std::sort(selected->begin(), selected->end());
}

void Indexer::Select(const float* q, const float* w, const float* keys, int64_t n,
                     std::vector<int32_t>* selected, std::vector<float>* scratch) const {
  if (n <= topk_) {  // every visible entry is selected: no need to score
    selected->resize(static_cast<size_t>(n));
    std::iota(selected->begin(), selected->end(), 0);
    return;
  }
  scratch->resize(static_cast<size_t>(n));
  Scores(q, w, keys, n, scratch->data());
  SelectTop(scratch->data(), n, selected);
}

void CandidateBlocks(const float* scores, int64_t n, int64_t block, int64_t topk_blocks,
                     std::vector<int32_t>* blocks) {
  const int64_t count = (n + block - 1) / block;
  std::vector<float> best(count, -std::numeric_limits<float>::infinity());
  for (int64_t s = 0; s < n; ++s) best[s / block] = std::max(best[s / block], scores[s]);
  best[count - 1] = std::numeric_limits<float>::infinity();  // the newest, partly filled block
  const std::vector<int> top =
      TopK(best.data(), count, static_cast<int>(std::min(topk_blocks, count)));
  blocks->assign(top.begin(), top.end());
  std::sort(blocks->begin(), blocks->end());
}

}  // namespace dsv4
