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
#ifndef DSV4_ATTENTION_NODE_INDEXER_H_
#define DSV4_ATTENTION_NODE_INDEXER_H_

#include <cstdint>
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
  // wq_b [HI·DI, Q], weights_proj [HI, d].
  Indexer(WeightMatrix wq_b, WeightMatrix weights_proj, Compressor compressor, int64_t topk,
          const Rope& rope);
  // Loads "<prefix>.wq_b.weight", ".weights_proj.weight" and "<prefix>.compressor.*".
  static absl::StatusOr<Indexer> Load(WeightLoader& loader, const std::string& prefix,
                                      const ModelConfig& config, const Rope& rope);

  const Compressor& compressor() const { return compressor_; }
  int heads() const { return static_cast<int>(weights_proj_.rows); }
  int64_t head_dim() const { return compressor_.head_dim(); }
  int64_t topk() const { return topk_; }

  // For rows x [rows, d] and their query latents qr [rows, Q] at `positions`:
  // q [rows, HI·DI] (rotated) and w [rows, HI] (scaled).
  void Project(const float* x, const float* qr, const int64_t* positions, int64_t rows, float* q,
               float* w) const;

  // The selected entries among keys [n, DI] (all n visible to the query), ascending.
  // Each score is Σ_h w_h·ReLU(q_h·key) over h in order (Dot per pair): independent of
  // the batch and the thread count.
  // `q` [HI, DI] and `w` [HI] are one row of Project's output.
  void Select(const float* q, const float* w, const float* keys, int64_t n,
              std::vector<int32_t>* selected, std::vector<float>* scratch) const;

 private:
  WeightMatrix wq_b_, weights_proj_;
  Compressor compressor_;
  int64_t topk_;
  Rope rope_;
};

}  // namespace dsv4

#endif  // DSV4_ATTENTION_NODE_INDEXER_H_
