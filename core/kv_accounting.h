// KV-state accounting for DeepSeek-V4 attention (spec §5), from the config alone: bytes
// per token per layer type and the fixed per-sequence costs, in three storage layouts.
// The runtime reports its state with these formulas and the capacity planner reuses them.
//
// Per main layer with compress ratio m (c = 2 when m == 4, else 1):
//   growth per token   m == 0: 0
//                      m  > 0: entry / m            (+ index_key / 4 when m == 4)
//   window             W · entry                    (every layer)
//   compressor state   2 · (c·m) · (c·D) · 4 B      (fp32 kv_state + score_state, m > 0)
//                      + 2 · 8 · (2·DI) · 4 B       (the indexer's compressor, m == 4)
// MTP blocks are excluded (they hold no state outside speculative decoding).
#ifndef DSV4_CORE_KV_ACCOUNTING_H_
#define DSV4_CORE_KV_ACCOUNTING_H_

#include <cstdint>

#include "core/model_config.h"

namespace dsv4 {

enum class KvLayout {
  kRuntimeF32,     // this runtime: fp32 entries, window and indexer keys
  kReferenceBf16,  // the official inference code: bf16 caches
  kProduction,     // spec §5: (D−r) FP8 + r BF16 per entry; FP4 indexer keys + E8M0 scales
};

struct KvLayoutOptions {
  KvLayout layout = KvLayout::kRuntimeF32;
  // kProduction only: one E8M0 scale per 64 FP8 dims of each KV entry (7 B for D = 512).
  bool entry_scales = false;
};

// Bytes of one KV entry (window slot or compressed entry, D dims).
int64_t KvEntryBytes(const ModelConfig& config, const KvLayoutOptions& options);
// Bytes of one lightning-indexer key (DI dims).
int64_t IndexKeyBytes(const ModelConfig& config, const KvLayoutOptions& options);

struct KvCost {
  double bytes_per_token = 0;          // amortised growth with context length
  int64_t window_bytes = 0;            // sliding windows (fixed once W tokens are in)
  int64_t compressor_state_bytes = 0;  // fp32 partial-block states
  int64_t fixed_bytes() const { return window_bytes + compressor_state_bytes; }
  // Amortised bytes per token of a sequence of `context` tokens, fixed costs included.
  double PerTokenAt(int64_t context) const {
    return bytes_per_token + static_cast<double>(fixed_bytes()) / static_cast<double>(context);
  }
};

// One main layer, and the whole model (sum over main layers).
KvCost LayerKvCost(const ModelConfig& config, int layer, const KvLayoutOptions& options);
KvCost ModelKvCost(const ModelConfig& config, const KvLayoutOptions& options);

// Exact state bytes of one sequence after `positions` tokens: fixed costs plus only the
// completed compressed entries and indexer keys (⌊positions/m⌋ each).
int64_t SequenceKvBytes(const ModelConfig& config, const KvLayoutOptions& options,
                        int64_t positions);

// DeepSeek-V3.2's KV bytes per token, the baseline of the published V4 ratios (10% for
// Pro, 7% for Flash at 1M tokens). Per layer: the FP8 MLA latent (kv_lora_rank bytes plus
// one fp32 scale per 128) and BF16 rope dims, as in V3.2's FlashMLA FP8 cache (656 B),
// plus the lightning indexer's FP8 key of `index_head_dim` with one fp32 scale per 128
// (132 B). `v3` is a deepseek_v3 config (kv_lora_rank, qk_rope_head_dim, layer count).
double V32KvBytesPerToken(const ModelConfig& v3, int64_t index_head_dim = 128);

}  // namespace dsv4

#endif  // DSV4_CORE_KV_ACCOUNTING_H_
