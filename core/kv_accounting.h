// KV-state accounting for DeepSeek-V4 (spec §5) and V4.1 (CSA2, spec deepseek-v41-model.md
// §6), from the config alone: bytes per token per layer and the fixed per-sequence costs, in
// three storage layouts. The runtime reports its state with these formulas and the capacity
// planner reuses them. MTP blocks and DSpark stages are excluded (they hold no state outside
// speculative decoding).
//
// V4, per main layer with compress ratio m (c = 2 when m == 4, else 1):
//   growth per token   m == 0: 0
//                      m  > 0: entry / m            (+ index_key / 4 when m == 4)
//   window             W · entry                    (every layer)
//   compressor state   2 · (c·m) · (c·D) · 4 B      (fp32 kv_state + score_state, m > 0)
//                      + 2 · 8 · (2·DI) · 4 B       (the indexer's compressor, m == 4)
//
// V4.1 (CSA2): only kv-source layers hold compressed entries and indexer keys (the other
// compressed layers read their source's); every main layer holds its own window. Per main
// layer, m = ratio(layer):
//   growth per token   kv source: (entry + index_key) / m;   other layers: 0
//   window             W · window_entry                     (every layer)
//   compressor state   kv source with m > 1: 2 · m · D · 4 B (fp32 kv and score buffers
//                      [m, D] each);  m == 1 and other layers: 0  (no APE, no overlap, and
//                      the indexer keys come from the compressed latent, so the indexer has
//                      no compressor of its own)
//
// Entry sizes by layout (D = head_dim, r = qk_rope_head_dim, DI = index_head_dim):
//   layout          window_entry        entry (compressed)       index_key
//   kRuntimeF32     4·D                 4·D                      4·DI
//   kReferenceBf16  2·D                 2·D                      2·DI
//   kProduction V4  (D−r) + 2r [+ ⌈(D−r)/64⌉ with entry_scales] for both   ⌈DI/2⌉ + ⌈DI/32⌉
//   kProduction V4.1 (released precision, as the reference simulates it; scales always in):
//                   D + ⌈D/32⌉          ⌈D/2⌉ + ⌈D/16⌉           ⌈DI/2⌉ + ⌈DI/32⌉
//                   (FP8, E8M0 per 32)  (FP4 E2M1, E4M3 per 16)  (FP4, E8M0 per 32)
// V4.1-Flash at kProduction: 528 B window slot, 288 B entry, 68 B index key; growth
// 3 × (288 + 68) / 2 + (288 + 68) / 1 = 890 B/token (the published "global KV" figure).
//
// The runtime's fp32 state (kRuntimeF32, SequenceState::bytes() in attention_node/kv_state)
// after P tokens, exactly SequenceKvBytes(config, {KvLayout::kRuntimeF32}, P):
//   V4:   Σ layers  W·D·4 + [m > 0] (⌊P/m⌋·D·4 + compressor state)
//                         + [m == 4] (⌊P/4⌋·DI·4 + indexer compressor state)
//   V4.1: Σ layers  W·D·4                                   (window ring [W, D], always)
//         + Σ kv sources  ⌊P/m⌋·D·4                         (compressed entries [⌊P/m⌋, D])
//                       + ⌊P/m⌋·DI·4                        (indexer keys [⌊P/m⌋, DI])
//                       + [m > 1] 2·m·D·4                   (compressor kv + score [m, D])
//   The Engram decode state (the last 3 compressed token ids per sequence) is NOT counted
//   (0 bytes), nor are MTP/DSpark blocks.
#ifndef DSV4_CORE_KV_ACCOUNTING_H_
#define DSV4_CORE_KV_ACCOUNTING_H_

#include <cstdint>

#include "core/model_config.h"

namespace dsv4 {

enum class KvLayout {
  kRuntimeF32,     // this runtime: fp32 entries, window and indexer keys
  kReferenceBf16,  // the official inference code's V4 caches: bf16
  kProduction,     // V4: spec §5; V4.1: the released precision (see above)
};

struct KvLayoutOptions {
  KvLayout layout = KvLayout::kRuntimeF32;
  // V4 kProduction only: one E8M0 scale per 64 FP8 dims of each KV entry (7 B for D = 512).
  // V4.1's released formats always carry their scales.
  bool entry_scales = false;
};

// Bytes of one sliding-window slot (D dims).
int64_t WindowEntryBytes(const ModelConfig& config, const KvLayoutOptions& options);
// Bytes of one compressed KV entry (D dims). Equal to WindowEntryBytes for V4.
int64_t CompressedEntryBytes(const ModelConfig& config, const KvLayoutOptions& options);
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
// completed compressed entries and indexer keys (⌊positions/m⌋ each, on the layers that
// hold them).
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
