#include "core/kv_accounting.h"

namespace dsv4 {
namespace {

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace

int64_t KvEntryBytes(const ModelConfig& config, const KvLayoutOptions& options) {
  const int64_t d = config.head_dim;
  const int64_t r = config.qk_rope_head_dim;
  switch (options.layout) {
    case KvLayout::kRuntimeF32:
      return 4 * d;
    case KvLayout::kReferenceBf16:
      return 2 * d;
    case KvLayout::kProduction:
      return (d - r) + 2 * r + (options.entry_scales ? CeilDiv(d - r, 64) : 0);
  }
  return 0;
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
  const int64_t entry = KvEntryBytes(config, options);
  cost.window_bytes = config.sliding_window * entry;
  const int m = config.ratio(layer);
  if (m <= 0) return cost;
  const int64_t c = config.is_csa(layer) ? 2 : 1;
  cost.bytes_per_token = static_cast<double>(entry) / m;
  cost.compressor_state_bytes = 2 * (c * m) * (c * config.head_dim) * 4;
  if (config.is_csa(layer)) {
    cost.bytes_per_token += static_cast<double>(IndexKeyBytes(config, options)) / m;
    cost.compressor_state_bytes += 2 * (2 * m) * (2 * config.index_head_dim) * 4;
  }
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
  int64_t bytes = ModelKvCost(config, options).fixed_bytes();
  for (int layer = 0; layer < config.num_hidden_layers; ++layer) {
    const int m = config.ratio(layer);
    if (m <= 0) continue;
    bytes += positions / m * KvEntryBytes(config, options);
    if (config.is_csa(layer)) bytes += positions / m * IndexKeyBytes(config, options);
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
