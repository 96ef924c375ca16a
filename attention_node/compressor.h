// The KV compressor (spec §3.6): gated pooling of every m consecutive tokens into one
// compressed entry. Used by CSA/HCA layers (D_c = head_dim) and by the lightning indexer
// (D_c = index_head_dim); one implementation serves both.
//
// Per token t: a_t = wkv·x_t, g_t = wgate·x_t + ape[t mod m]   (both of width c·D_c).
// Block s (tokens s·m … s·m+m−1) is emitted when its last token arrives:
//   m ≠ 4 (c = 1): C_s[j] = Σ_{t∈s} softmax_t(g_t[j]) · a_t[j]
//   m = 4 (c = 2, overlapping): the softmax for channel j runs over the previous block's
//     (g_t[j], a_t[j]) and the current block's (g_t[D_c+j], a_t[D_c+j]); for s = 0 the
//     previous block contributes nothing.
// Then entry_s = RoPE(RMSNorm(C_s; norm), position s·m) on its last r dims.
//
// V4.1 (CSA2) compressors never overlap and have no APE; at m = 1 there is no gate (the
// one-token softmax weighs 1) and no partial block: the entry is RoPE(RMSNorm(wkv·x_t)).
//
// The per-sequence state (CompressorState) holds the partial block as the reference
// does: rows [0, m) the previous block (overlap only), rows [off, off+m) the current one.
#ifndef DSV4_ATTENTION_NODE_COMPRESSOR_H_
#define DSV4_ATTENTION_NODE_COMPRESSOR_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/kernels.h"
#include "core/model_config.h"
#include "core/tensor.h"
#include "core/weight_loader.h"
#include "core/weight_matrix.h"

namespace dsv4 {

// kv and score buffers [c·m, c·D_c]; a fresh sequence has kv = 0 and score = −∞.
struct CompressorState {
  std::vector<float> kv;
  std::vector<float> score;
  int64_t bytes() const { return static_cast<int64_t>((kv.size() + score.size()) * sizeof(float)); }
};

class Compressor {
 public:
  // wkv, wgate [c·D_c, d] (wgate empty: no gate); ape [m, c·D_c] or empty; norm [D_c].
  Compressor(WeightMatrix wkv, WeightMatrix wgate, Tensor ape, Tensor norm, int ratio,
             const Rope& rope, float norm_eps);
  // Loads "<prefix>.wkv.weight", ".wgate.weight", ".ape", ".norm.weight" (V4.1: no ape,
  // no wgate at m = 1).
  static absl::StatusOr<Compressor> Load(WeightLoader& loader, const std::string& prefix,
                                         const ModelConfig& config, int ratio, int64_t head_dim,
                                         const Rope& rope);

  int ratio() const { return ratio_; }
  bool overlap() const { return overlap_; }
  int64_t head_dim() const { return norm_.dim(0); }  // D_c
  int64_t width() const { return wkv_.rows; }        // c·D_c

  // The state of a fresh sequence for a compressor of this ratio, overlap and D_c.
  static CompressorState FreshState(int ratio, bool overlap, int64_t head_dim);

  // kv, score [rows, c·D_c] for rows x [rows, d]; score excludes the positional bias.
  void Project(const float* x, int64_t rows, float* kv, float* score) const;

  // Feeds one token at absolute position `pos` (positions must arrive in order, from 0).
  // When it completes block s = (pos+1)/m − 1, appends entry_s (D_c floats) to *entries,
  // writes the entry before RoPE to `latent` (D_c floats) unless null, and returns true.
  bool Push(CompressorState* state, const float* kv, const float* score, int64_t pos,
            std::vector<float>* entries, float* latent = nullptr) const;

 private:
  // Norm, latent copy and RoPE of a pooled block ending at `pos`; returns true.
  bool Finish(float* entry, int64_t pos, float* latent) const;

  WeightMatrix wkv_, wgate_;
  Tensor ape_, norm_;
  int ratio_;
  bool overlap_;
  Rope rope_;
  float norm_eps_;
};

}  // namespace dsv4

#endif  // DSV4_ATTENTION_NODE_COMPRESSOR_H_
