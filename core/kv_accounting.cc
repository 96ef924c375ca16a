#include "core/kv_accounting.h"

namespace dsv4 {
namespace {

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Whether `layer` holds compressed entries and indexer keys of its own, and their ratio.
bool HoldsCompressed(const ModelConfig& config, int layer) {
  if (config.is_v41()) return config.is_kv_source(layer) && config.ratio(layer) > 0;
  return config.ratio(layer) > 0;
}
bool HoldsIndexKeys(const ModelConfig& config, int layer) {
  return config.is_v41() ? HoldsCompressed(config, layer) : config.is_csa(layer);
}

}  // namespace

int64_t WindowEntryBytes(const ModelConfig& config, const KvLayoutOptions& options) {
  const int64_t d = config.head_dim;
  const int64_t r = config.qk_rope_head_dim;
  switch (options.layout) {
    case KvLayout::kRuntimeF32:
      return 4 * d;
    case KvLayout::kReferenceBf16:
      return 2 * d;
    case KvLayout::kProduction:
      if (config.is_v41()) return d + CeilDiv(d, 32);  // FP8 + one E8M0 per 32, rope included
      return (d - r) + 2 * r + (options.entry_scales ? CeilDiv(d - r, 64) : 0);
  }
  return 0;
}

int64_t CompressedEntryBytes(const ModelConfig& config, const KvLayoutOptions& options) {
  if (config.is_v41() && options.layout == KvLayout::kProduction) {
    const int64_t d = config.head_dim;
    return CeilDiv(d, 2) + CeilDiv(d, 16);  // FP4 E2M1 + one E4M3 scale per 16
  }
  return WindowEntryBytes(config, options);
}

int64_t IndexKeyBytes(const ModelConfig& config, const KvLayoutOptions& options) {
  const int64_t di = config.index_head_dim;
  switch (options.layout) {
    case KvLayout::kRuntimeF32:
      return 4 * di;
    case KvLayout::kReferenceBf16:
      return 2 * di;
    case KvLayout::kProduction:
      return CeilDiv(di, 2) + CeilDiv(di, 32);  // FP4 codes + one E8M0 scale per 32
  }
  return 0;
}

KvCost LayerKvCost(const ModelConfig& config, int layer, const KvLayoutOptions& options) {
  KvCost cost;
  cost.window_bytes = config.sliding_window * WindowEntryBytes(config, options);
  if (!HoldsCompressed(config, layer)) return cost;
  const int m = config.ratio(layer);
  const int64_t D = config.head_dim, DI = config.index_head_dim;
  cost.bytes_per_token = static_cast<double>(CompressedEntryBytes(config, options)) / m;
  if (HoldsIndexKeys(config, layer)) {
    cost.bytes_per_token += static_cast<double>(IndexKeyBytes(config, options)) / m;
  }
  if (config.is_v41()) {
    if (m > 1) cost.compressor_state_bytes = 2 * m * D * 4;  // kv and score buffers [m, D]
    return cost;
  }
  const int64_t c = config.is_csa(layer) ? 2 : 1;
  cost.compressor_state_bytes = 2 * (c * m) * (c * D) * 4;
  if (config.is_csa(layer)) cost.compressor_state_bytes += 2 * (2 * m) * (2 * DI) * 4;
  return cost;
}

KvCost ModelKvCost(const ModelConfig& config, const KvLayoutOptions& options) {
  KvCost total;
  for (int layer = 0; layer < config.num_hidden_layers; ++layer) {
    const KvCost cost = LayerKvCost(config, layer, options);
    total.bytes_per_token += cost.bytes_per_token;
    total.window_bytes += cost.window_bytes;
    total.compressor_state_bytes += cost.compressor_state_bytes;
  }
  return total;
}

int64_t SequenceKvBytes(const ModelConfig& config, const KvLayoutOptions& options,
                        int64_t positions) {
  // The planner calls this per candidate layout: per-config sizes are computed once.
  const int64_t entry = CompressedEntryBytes(config, options);
  const int64_t key = IndexKeyBytes(config, options);
  int64_t bytes = ModelKvCost(config, options).fixed_bytes();
  for (int layer = 0; layer < config.num_hidden_layers; ++layer) {
    if (!HoldsCompressed(config, layer)) continue;
    const int64_t entries = positions / config.ratio(layer);
    bytes += entries * (entry + (HoldsIndexKeys(config, layer) ? key : 0));
  }
  return bytes;
}

double V32KvBytesPerToken(const ModelConfig& v3, int64_t index_head_dim) {
  const int64_t latent = v3.kv_lora_rank + 4 * CeilDiv(v3.kv_lora_rank, 128);
  const int64_t rope = 2 * v3.qk_rope_head_dim;
  const int64_t index_key = index_head_dim + 4 * CeilDiv(index_head_dim, 128);
  return static_cast<double>(v3.num_hidden_layers * (latent + rope + index_key));
}

}  // namespace dsv4
