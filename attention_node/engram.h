// Engram conditional memory (spec §6; deepseek-ai/Engram engram_demo_v1.py): hashed n-gram
// embedding tables whose row addresses depend only on token ids, fused into the residual
// streams before the attention hc_pre of each Engram layer:
//
//   tok_k  = comp[id_{t−k}] (pad before the sequence start)         canonical ids
//   mix_n  = XOR_{k<n} tok_k · m_{ℓ,k}  (int64, wrapping as NumPy)   n = 2..N
//   row_h  = offset_h + (mix_n mod p_{ℓ,n,j})                         h = (n−2)·K + j
//   e      = concat of the (N−1)·K rows (d_e each)
//   v      = W_V e + b_V;  α_i = σ(ssqrt(⟨RMSNorm(W_K,i e + b_K,i), RMSNorm(X_i)⟩ / √d))
//   u_i    = α_i v;  y = SiLU(causal depthwise conv(RMSNorm_i(u_i)), kernel k, dilation N)
//   X_i   ← X_i + u_i + y_i                                          on every mHC stream
//
// Because the rows depend only on tokens, a step hashes all its n-grams for every Engram
// layer as soon as its tokens are known and fetches the rows (EngramRowSource in
// core/engram_rows.h: local tables, or memory nodes through engram_store/client.h) while
// the earlier layers run; the forward waits only at the Engram layer.
#ifndef DSV4_ATTENTION_NODE_ENGRAM_H_
#define DSV4_ATTENTION_NODE_ENGRAM_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "core/dtype.h"
#include "core/engram_rows.h"
#include "core/model_config.h"
#include "core/safetensors.h"
#include "core/tensor.h"
#include "core/weight_loader.h"
#include "core/weight_matrix.h"

namespace dsv4 {

// Per-sequence Engram decode state: the last N−1 canonical ids (oldest first; pad ids
// before the sequence start) and, per Engram layer, the last (kernel−1)·N conv inputs
// [(kernel−1)·N, n·d] (oldest first; zeros before the start). A default-constructed
// (empty) state is a fresh sequence: EngramModule::Begin initialises it.
struct EngramState {
  std::vector<int64_t> history;
  std::vector<std::vector<float>> conv;
};

// Hashing: the canonical map, the multipliers and the prime table geometry.
class EngramHasher {
 public:
  // canonical_ids [V] (each ≥ 0); multipliers[i] has N entries for Engram layer index i.
  static absl::StatusOr<EngramHasher> Create(const ModelConfig& config,
                                             std::vector<int64_t> canonical_ids,
                                             std::vector<std::vector<int64_t>> multipliers);
  // From the checkpoint's engram.canonical_ids and layers.N.engram.multipliers.
  static absl::StatusOr<EngramHasher> Load(const ModelConfig& config, Checkpoint* checkpoint);

  int num_layers() const { return static_cast<int>(layer_ids_.size()); }
  int layer_id(int index) const { return layer_ids_[index]; }
  int index_of(int layer) const;  // -1 when `layer` has no Engram
  int heads() const { return static_cast<int>(head_sizes_[0].size()); }  // (N−1)·K
  int head_dim() const { return head_dim_; }
  int64_t table_rows(int index) const { return table_rows_[index]; }
  int64_t pad_id() const { return pad_id_; }  // canonical id of engram_pad_token_id

  EngramState NewState() const;
  void Reset(EngramState* state) const;
  // Table rows of Engram layer `index` for `tokens` following `state`'s history:
  // rows[t·heads() + h]. Does not change the state.
  void RowIds(int index, const EngramState& state, absl::Span<const int32_t> tokens,
              int64_t* rows) const;
  // Appends the tokens' canonical ids to the history.
  void Advance(EngramState* state, absl::Span<const int32_t> tokens) const;

 private:
  std::vector<int> layer_ids_;
  int max_ngram_ = 0, n_heads_ = 0, head_dim_ = 0, hc_mult_ = 0, conv_history_ = 0;
  int64_t hidden_ = 0, pad_id_ = 0;
  std::vector<int64_t> canonical_;
  std::vector<std::vector<int64_t>> multipliers_, head_sizes_, offsets_;
  std::vector<int64_t> table_rows_;
};

// The tables of this process's checkpoint, read in place from the mapped shards.
class LocalEngramTables : public EngramRowSource {
 public:
  static absl::StatusOr<std::unique_ptr<LocalEngramTables>> Load(const ModelConfig& config,
                                                                 Checkpoint* checkpoint);
  std::unique_ptr<EngramRowFetch> Prefetch(std::vector<std::vector<int64_t>> rows) override;

 private:
  std::vector<const TensorView*> tables_;  // per Engram layer index, owned by the Checkpoint
};

// The fusion of one Engram layer (value, gates, short conv); the projections as released
// (views, kept alive by their loader's mappings), the small vectors in fp32.
class EngramLayer {
 public:
  struct Weights {
    WeightMatrix value_w;             // [d, width]
    Tensor value_b;                   // [d]
    std::vector<WeightMatrix> key_w;  // n × [d, width]
    Tensor key_b;                     // [n, d]
    Tensor norm1, norm2;              // [n, d]: gate norms of the key and of the stream
    Tensor conv_norm;                 // [n, d]
    Tensor conv_w;                    // [n·d, kernel]
  };
  EngramLayer(const ModelConfig& config, Weights weights);
  static absl::StatusOr<EngramLayer> Load(WeightLoader& loader, const ModelConfig& config,
                                          int layer);

  int64_t width() const { return width_; }  // (N−1)·K·d_e
  const Weights& weights() const { return w_; }

  // x [T, n, d]: one sequence's streams at T consecutive positions; e [T, width] their
  // rows; conv_history: that sequence's state for this layer (updated). Writes x + Y to
  // out (which may be x).
  void Apply(const float* x, const float* e, int64_t T, std::vector<float>* conv_history,
             float* out) const;

 private:
  Weights w_;
  int64_t d_ = 0, n_ = 0, width_ = 0;
  int kernel_ = 0, dilation_ = 0;
};

// Everything Engram needs in a forward pass: the hasher, the layers and a row source.
// A step calls Begin as soon as its tokens are known, Apply at each Engram layer (before
// hc_pre of the attention), and Advance when the step is done.
class EngramModule {
 public:
  // `source` null: the checkpoint's own tables (LocalEngramTables). Otherwise the source
  // must outlive the module.
  static absl::StatusOr<std::unique_ptr<EngramModule>> Load(const ModelConfig& config,
                                                            Checkpoint* checkpoint,
                                                            EngramRowSource* source = nullptr);

  const EngramHasher& hasher() const { return hasher_; }
  // The fusion weights (tables excluded).
  const WeightBytes& weight_bytes() const { return weight_bytes_; }
  bool is_engram_layer(int layer) const { return hasher_.index_of(layer) >= 0; }

  // One sequence of a step: its state and new tokens; rows [row_begin, row_begin + T) of
  // the step's [rows, n, d] streams.
  struct Segment {
    EngramState* state;
    absl::Span<const int32_t> tokens;
    int64_t row_begin;
  };
  // Hashes every sequence's n-grams for every Engram layer and starts fetching the rows
  // (initialising empty states first).
  std::unique_ptr<EngramRowFetch> Begin(absl::Span<const Segment> segments) const;
  // Waits for `layer`'s rows and adds Engram's output to x [rows, n, d] in place.
  absl::Status Apply(int layer, EngramRowFetch* fetch, absl::Span<const Segment> segments,
                     float* x) const;
  void Advance(absl::Span<const Segment> segments) const;

 private:
  EngramModule(EngramHasher hasher) : hasher_(std::move(hasher)) {}
  EngramHasher hasher_;
  std::vector<EngramLayer> layers_;  // per Engram layer index
  WeightBytes weight_bytes_;
  WeightMappings mappings_;  // keeps the views in layers_ valid
  std::unique_ptr<LocalEngramTables> local_;
  EngramRowSource* source_ = nullptr;
};

}  // namespace dsv4

#endif  // DSV4_ATTENTION_NODE_ENGRAM_H_
