#include "attention_node/indexer.h"

#include <algorithm>
#include <cmath>
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
      topk_(topk),
      rope_(rope) {}

absl::StatusOr<Indexer> Indexer::Load(WeightLoader& loader, const std::string& prefix,
                                      const ModelConfig& config, const Rope& rope) {
  const int64_t heads = config.index_n_heads;
  const int64_t dim = config.index_head_dim;
  ASSIGN_OR_RETURN(WeightMatrix wq_b,
                   loader.LoadMatrix(prefix + ".wq_b.weight", heads * dim, config.q_lora_rank));
  ASSIGN_OR_RETURN(WeightMatrix proj,
                   loader.LoadMatrix(prefix + ".weights_proj.weight", heads, config.hidden_size));
  ASSIGN_OR_RETURN(Compressor compressor,
                   Compressor::Load(loader, prefix + ".compressor", config, 4, dim, rope));
  return Indexer(wq_b, proj, std::move(compressor), config.index_topk, rope);
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

void Indexer::Select(const float* q, const float* w, const float* keys, int64_t n,
                     std::vector<int32_t>* selected, std::vector<float>* scratch) const {
  selected->resize(static_cast<size_t>(std::min(n, topk_)));
  if (n <= topk_) {  // every visible entry is selected: no need to score
    std::iota(selected->begin(), selected->end(), 0);
    return;
  }
  const int h = heads();
  const int64_t di = head_dim();
  scratch->resize(static_cast<size_t>(n));
  float* score = scratch->data();
  const int64_t grain = std::max<int64_t>(64, (int64_t{1} << 15) / (h * di));  // ≥ ~32k MACs
  ParallelFor(n, grain, [&](int64_t begin, int64_t end) {
    for (int64_t s = begin; s < end; ++s) {
      float sum = 0;
      for (int i = 0; i < h; ++i) sum += w[i] * std::max(Dot(q + i * di, keys + s * di, di), 0.0f);
      score[s] = sum;
    }
  });
  const std::vector<int> top = TopK(score, n, static_cast<int>(topk_));
  std::copy(top.begin(), top.end(), selected->begin());
  std::sort(selected->begin(), selected->end());
}

}  // namespace dsv4
