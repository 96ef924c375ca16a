// One layer's attention (spec §3.4–3.10): low-rank queries, a shared KV vector per
// position, a sliding window for every layer, plus compressed entries for CSA (m = 4,
// lightning-indexer top-k) and HCA (other m > 0, all completed blocks) layers; core
// attention with a sink; de-rotation and the grouped low-rank output projection.
//
//   qr  = RMSNorm(wq_a·x; q_norm)                          [Q]
//   q_h = RoPE(RMSNorm(wq_b·qr)_h, t)        (weightless per-head norm, last r dims)
//   kv  = RoPE(RMSNorm(wkv·x; kv_norm), t)                  [D]
//   o_h = AttendWithSink(q_h, visible(t), sink_h, D^−½)
//   o_h = RoPE⁻¹(o_h, t);  z_g = wo_a[g]·concat(o_h, h ∈ group g);  out = wo_b·concat(z_g)
//
// Visibility for a query at position t (spec §3.8): window positions
// max(0, t−W+1) … t; compressed entries s < ⌊(t+1)/m⌋ (HCA: all; CSA: the indexer's
// selection). Entries completed by the step's own tokens are visible to them, so a
// chunked prefill sees exactly what one prefill (or token-by-token decode) sees.
//
// V4.1 (CSA2, spec deepseek-v41-model.md §6): no per-head query norm; a compressed layer
// reads the entries of its kv source (which compresses them, m = 2 or 1, and owns the
// indexer keys); an index source selects the top index_topk entries (all of them while
// ⌊(t+1)/m⌋ ≤ index_topk), the candidate source also keeps its best candidate blocks, and
// later index sources select only inside those; the other compressed layers reuse the
// selection of their index source for the same query (AttentionWorkspace carries both
// down the layers of a step).
#ifndef DSV4_ATTENTION_NODE_ATTENTION_H_
#define DSV4_ATTENTION_NODE_ATTENTION_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "attention_node/compressor.h"
#include "attention_node/indexer.h"
#include "attention_node/kv_state.h"
#include "attention_node/sink_attention.h"
#include "core/kernels.h"
#include "core/model_config.h"
#include "core/tensor.h"
#include "core/weight_loader.h"
#include "core/weight_matrix.h"

namespace dsv4 {

// The RoPE of a layer: m = 0 uses rope_theta without YaRN; m > 0 uses
// compress_rope_theta with the config's YaRN scaling (q, window kv, compressed entries,
// indexer and output de-rotation alike).
RopeParams LayerRopeParams(const ModelConfig& config, int layer);

// One sequence's new tokens within a step's rows.
struct AttentionSequence {
  int64_t row_begin = 0;  // first row in the step's input
  int64_t rows = 0;       // new tokens (a prefill chunk, or 1 when decoding)
  int64_t start_pos = 0;  // absolute position of the first new token
  LayerKvState* state = nullptr;
  // Where the compressed entries and indexer keys live: the state of the layer's kv source
  // (V4: the layer itself). Null for window-only layers.
  LayerKvState* source = nullptr;
};

// Scratch buffers of Attention::Forward. A step keeps one and passes it to every layer,
// so the layers reuse one allocation (fresh multi-megabyte buffers per layer would cost
// page faults and zeroing).
struct AttentionWorkspace {
  std::vector<int64_t> positions;
  std::vector<float> qr, q, kv, ckv, cscore, iq, iw, ikv, iscore, o, z;
  std::vector<float> scores, gathered, index_scratch;
  std::vector<int32_t> selected;
  std::vector<KvSegment> shared, private_rows;
  std::vector<int64_t> first;
  std::vector<RowRange> ranges;
  // V4.1, per row of the step: the entries the latest index source selected (rows whose
  // query sees more than index_topk entries) and the candidate source's blocks.
  std::vector<std::vector<int32_t>> selection, candidates;
  std::vector<float> latent;
};

class Attention {
 public:
  // Loads "<prefix>.*" (prefix "layers.3.attn") for main layer or MTP block `layer`.
  static absl::StatusOr<Attention> Load(WeightLoader& loader, const std::string& prefix,
                                        const ModelConfig& config, int layer);

  // out [T, d] for x [T, d] (the attn_norm output of the step's rows); appends each
  // sequence's tokens to its state (window, compressed entries, indexer keys).
  void Forward(const float* x, int64_t rows, absl::Span<const AttentionSequence> sequences,
               AttentionWorkspace* workspace, float* out) const;

 private:
  Attention() = default;
  // q (normed, rotated), kv (normed, rotated), qr and the compressor / indexer inputs of
  // all rows.
  void Project(const float* x, int64_t rows, AttentionWorkspace* ws) const;
  // Attention of `count` queries of sequence `s` from its row `first_row` on.
  void AttendBlock(const AttentionSequence& s, int64_t first_row, int64_t count,
                   AttentionWorkspace* ws) const;
  // Appends the sequence's tokens to the compressor (entries; V4.1 kv sources: indexer keys).
  void Compress(const AttentionSequence& s, AttentionWorkspace* ws) const;
  // V4.1 index sources: the selection (and candidate blocks) of every row of `s` whose
  // query sees more than index_topk entries.
  void SelectV41(const AttentionSequence& s, AttentionWorkspace* ws) const;
  // The compressed entries selected for row i of sequence `s`, gathered into slot `slot`
  // of the workspace when they are a strict subset.
  KvSegment SelectEntries(const AttentionSequence& s, int64_t i, int64_t slot,
                          AttentionWorkspace* ws) const;
  // De-rotation and the grouped low-rank output projection of o into out [rows, d].
  void ProjectOutput(int64_t rows, AttentionWorkspace* ws, float* out) const;

  int heads_ = 0;
  int64_t head_dim_ = 0, window_ = 0, groups_ = 0, o_rank_ = 0;
  int ratio_ = 0;
  int64_t topk_ = 0;  // index_topk
  float norm_eps_ = 1e-6f;
  bool v41_ = false, q_head_norm_ = true;
  // V4.1 roles (ModelConfig::is_index_source etc.) and the candidate-block geometry.
  bool index_source_ = false, candidate_source_ = false, uses_candidates_ = false;
  int64_t candidate_block_ = 0, candidate_topk_blocks_ = 0;
  Rope rope_{RopeParams{}};
  Tensor attn_sink_;                      // [H]
  WeightMatrix wq_a_;                     // [Q, d]
  Tensor q_norm_;                         // [Q]
  WeightMatrix wq_b_;                     // [H·D, Q]
  WeightMatrix wkv_;                      // [D, d]
  Tensor kv_norm_;                        // [D]
  WeightMatrix wo_a_;                     // [G·R, H·D/G]
  WeightMatrix wo_b_;                     // [d, G·R]
  std::optional<Compressor> compressor_;  // V4: m > 0; V4.1: kv sources
  std::optional<Indexer> indexer_;        // V4: m = 4; V4.1: index sources
};

}  // namespace dsv4

#endif  // DSV4_ATTENTION_NODE_ATTENTION_H_
