// Engram conditional memory as DeepSeek-V4.1 releases it (spec deepseek-v41-model.md §3–§5;
// the official inference/engram.py and Engram in model.py): hashed n-gram tables whose row
// addresses depend only on token ids, fused into the residual streams before each Engram
// layer:
//
//   c_t    = comp[id_t]                  compressed ids (core/engram_token_map.h)
//   P_s    = c_{t−s} · m_{ℓ,s}           s = 0..N−1; pad = comp[engram_pad_token_id] for
//                                        look-backs before the sequence start
//   r_n    = P_0 ⊕ … ⊕ P_{n−1}           n = 2..N (int64)
//   row_h  = offset_h + (r_n mod p_{ℓ,n,j})          h = (n−2)·K + j
//   e      = concat of the (N−1)·K rows (FP8 × E8M0 per 32, dequantised)
//   kv     = wkv · e;  key_i = kv[i·d, (i+1)·d), v = kv[n·d, (n+1)·d)
//   dot_i  = Σ_c h_i,c·w_i,c·key_i,c · rsqrt(mean h_i² + ε) · rsqrt(mean key_i² + ε) · d^−½
//            with w_i = q_weight_i ⊙ k_weight_i, ε = rms_norm_eps
//   g_i    = σ(copysign(√max(|dot_i|, 10⁻⁶), dot_i))
//   h_i   ← h_i + g_i · v                on every mHC stream i
//
// Because the rows depend only on tokens, a step hashes all its n-grams for every Engram
// layer as soon as its tokens are known and fetches the rows (EngramRowSource in
// core/engram_rows.h: local tables, or memory nodes through engram_store/client.h) while
// the earlier layers run; the forward waits only at the Engram layer. Text only: no
// image-span mask (image tokens are refused before they reach the model).
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

// Per-sequence Engram decode state: the compressed ids of the last N−1 tokens, oldest
// first, pad before the sequence start (the official sticky blocking, for text). A
// default-constructed (empty) state is a fresh sequence: EngramModule::Begin initialises it.
struct EngramState {
  std::vector<int64_t> history;
};

// Hashing: the compressed token map, the multipliers and the prime table geometry.
class EngramHasher {
 public:
  // compressed[id] for the tokenizer's ids (≤ vocab_size entries; ids beyond hash as the
  // pad token), `compressed_size` distinct ids (must equal engram_compressed_vocab_size).
  static absl::StatusOr<EngramHasher> Create(const ModelConfig& config,
                                             std::vector<int64_t> compressed,
                                             int64_t compressed_size);
  // The token map from the checkpoint's tokenizer.json.
  static absl::StatusOr<EngramHasher> Load(const ModelConfig& config, Checkpoint* checkpoint);

  int num_layers() const { return static_cast<int>(layer_ids_.size()); }
  int layer_id(int index) const { return layer_ids_[index]; }
  int index_of(int layer) const;  // -1 when `layer` has no Engram
  int heads() const { return static_cast<int>(head_sizes_[0].size()); }  // (N−1)·K
  int head_dim() const { return head_dim_; }
  int64_t table_rows(int index) const { return table_rows_[index]; }
  int64_t pad_id() const { return pad_id_; }  // compressed id of engram_pad_token_id
  int64_t compressed(int32_t token) const;

  EngramState NewState() const;
  void Reset(EngramState* state) const;
  // Table rows of Engram layer `index` for `tokens` following `state`'s history:
  // rows[t·heads() + h]. Does not change the state.
  void RowIds(int index, const EngramState& state, absl::Span<const int32_t> tokens,
              int64_t* rows) const;
  // Appends the tokens' compressed ids to the history.
  void Advance(EngramState* state, absl::Span<const int32_t> tokens) const;

 private:
  std::vector<int> layer_ids_;
  int max_ngram_ = 0, n_heads_ = 0, head_dim_ = 0;
  int64_t pad_id_ = 0;
  std::vector<int64_t> compressed_;
  std::vector<std::vector<int64_t>> multipliers_, head_sizes_, offsets_;
  std::vector<int64_t> table_rows_;
};

// The tables of this process's checkpoint, read in place from the mapped shards.
class LocalEngramTables : public EngramRowSource {
 public:
  static absl::StatusOr<std::unique_ptr<LocalEngramTables>> Load(const ModelConfig& config,
                                                                 Checkpoint* checkpoint);
  std::unique_ptr<EngramRowFetch> Prefetch(std::vector<std::vector<int64_t>> rows) override;

  struct Table {
    const TensorView* values;  // F8_E4M3 [rows, d_e]
    const TensorView* scales;  // F8_E8M0 [rows, d_e/32]
  };

 private:
  std::vector<Table> tables_;  // per Engram layer index, owned by the Checkpoint
};

// The fusion of one Engram layer: wkv as released (a view, kept alive by its loader's
// mappings) and the gate weights q ⊙ k in fp32.
class EngramLayer {
 public:
  EngramLayer(WeightMatrix wkv, Tensor gate, float eps);
  static absl::StatusOr<EngramLayer> Load(WeightLoader& loader, const ModelConfig& config,
                                          int layer);

  int64_t width() const { return wkv_.cols; }  // (N−1)·K·d_e

  // x [T, n, d]: streams of T tokens; e [T, width] their rows. Writes x + g·v to out (which
  // may be x). Each token's result depends on that token alone.
  void Apply(const float* x, const float* e, int64_t T, float* out) const;

 private:
  WeightMatrix wkv_;  // [(n+1)·d, width]
  Tensor gate_;       // [n, d]
  float eps_;
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
  EngramModule(EngramHasher hasher, int64_t stride) : hasher_(std::move(hasher)), stride_(stride) {}
  EngramHasher hasher_;
  int64_t stride_;                   // n·d floats per step row
  std::vector<EngramLayer> layers_;  // per Engram layer index
  WeightBytes weight_bytes_;
  WeightMappings mappings_;  // keeps the views in layers_ valid
  std::unique_ptr<LocalEngramTables> local_;
  EngramRowSource* source_ = nullptr;
};

}  // namespace dsv4

#endif  // DSV4_ATTENTION_NODE_ENGRAM_H_
