// The lightning indexer of CSA layers (m = 4, spec §3.7): picks, for each query, the
// compressed entries it attends to.
//
//   q_I = RoPE(wq_b_I · qr) per head (last r dims)       [HI, DI]
//   w   = (weights_proj · x) · DI^−½ · HI^−½             [HI]
//   K_s = entry s of the indexer's own compressor (D_c = DI)
//   I(t, s) = Σ_h w[h] · ReLU(q_I,h(t) · K_s)             for s < ⌊(t+1)/4⌋
//   sel(t)  = the top min(index_topk, ⌊(t+1)/4⌋) entries by I
//
// Exact numerics skip the Hadamard rotation of q_I and K_s: it is orthonormal and applied
// to both sides, so it changes no score; it matters only to the FP4 simulation of the
// official numerics.
//
// V4.1 (CSA2, spec deepseek-v41-model.md §6): no compressor of its own; the keys derive
// from the kv source's compressed latent L_s (before RoPE):
//   K_s = RoPE(RMSNorm(wk · L_s; k_norm), position s·m)    (kv sources own wk, k_norm)
// and a two-level selection: the candidate source keeps the best blocks of entries
// (CandidateBlocks), later index sources score only inside them. Scores of −∞ mark
// entries outside the pool; the selection never includes them.
#ifndef DSV4_ATTENTION_NODE_INDEXER_H_
#define DSV4_ATTENTION_NODE_INDEXER_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "attention_node/compressor.h"
#include "core/kernels.h"
#include "core/model_config.h"
#include "core/tensor.h"
#include "core/weight_loader.h"

namespace dsv4 {

class Indexer {
 public:
  // V4: wq_b [HI·DI, Q], weights_proj [HI, d] and the indexer's compressor (D_c = DI).
  Indexer(WeightMatrix wq_b, WeightMatrix weights_proj, Compressor compressor, int64_t topk,
          const Rope& rope);
  // Loads "<prefix>.wq_b.weight", ".weights_proj.weight" and, for V4, "<prefix>.compressor.*";
  // for a V4.1 kv source, ".wk.weight" and ".k_norm.weight".
  static absl::StatusOr<Indexer> Load(WeightLoader& loader, const std::string& prefix,
                                      const ModelConfig& config, const Rope& rope, int layer);

  const Compressor& compressor() const { return *compressor_; }  // V4 only
  bool owns_keys() const { return wk_.rows > 0; }                // V4.1 kv sources
  int heads() const { return static_cast<int>(weights_proj_.rows); }
  int64_t head_dim() const { return head_dim_; }
  int64_t topk() const { return topk_; }

  // V4.1: appends the key of the entry whose latent (before RoPE, D floats) stands for the
  // group starting at `pos` to *keys.
  void AppendKey(const float* latent, int64_t pos, std::vector<float>* keys) const;

  // For rows x [rows, d] and their query latents qr [rows, Q] at `positions`:
  // q [rows, HI·DI] (rotated) and w [rows, HI] (scaled).
  void Project(const float* x, const float* qr, const int64_t* positions, int64_t rows, float* q,
               float* w) const;

  // scores[s] = Σ_h w_h·ReLU(q_h·key_s) for the keys [n, DI] (all visible to the query),
  // summed over h in order (Dot per pair): independent of the batch and the thread count.
  // `q` [HI, DI] and `w` [HI] are one row of Project's output.
  void Scores(const float* q, const float* w, const float* keys, int64_t n, float* scores) const;
  // The top min(topk, #finite) entries by score (ties: lower index), ascending.
  void SelectTop(const float* scores, int64_t n, std::vector<int32_t>* selected) const;
  // Scores, then SelectTop (every entry when n ≤ topk, unscored).
  void Select(const float* q, const float* w, const float* keys, int64_t n,
              std::vector<int32_t>* selected, std::vector<float>* scratch) const;

 private:
  Indexer() = default;
  WeightMatrix wq_b_, weights_proj_;
  std::optional<Compressor> compressor_;  // V4
  WeightMatrix wk_;                       // V4.1 kv sources: [DI, D]
  Tensor k_norm_;                         // [DI]
  int64_t head_dim_ = 0, topk_ = 0;
  float norm_eps_ = 0;
  Rope rope_{RopeParams{}};
};

// V4.1 level one of the two-level top-k, for one query with scores of its n visible
// entries: blocks of `block` entries scored by their best entry, the block holding entry
// n − 1 pinned first, the best `topk_blocks` kept (ties: lower block); block ids ascending.
void CandidateBlocks(const float* scores, int64_t n, int64_t block, int64_t topk_blocks,
                     std::vector<int32_t>* blocks);

}  // namespace dsv4

#endif  // DSV4_ATTENTION_NODE_INDEXER_H_
