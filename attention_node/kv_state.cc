#include "attention_node/kv_state.h"

namespace dsv4 {
int64_t LayerKvState::bytes() const {
  return static_cast<int64_t>((window.size() + entries.size() + index_keys.size()) *
                              sizeof(float)) +
         compressor.bytes() + index_compressor.bytes();
}

SequenceState::SequenceState(const ModelConfig& config) : config_(config) { Reset(); }

void SequenceState::Reset() {
  position_ = 0;
  engram_ = EngramState();
  layers_.assign(config_.num_hidden_layers, LayerKvState());
  for (int i = 0; i < config_.num_hidden_layers; ++i) {
    LayerKvState& layer = layers_[i];
    layer.window.assign(static_cast<size_t>(config_.sliding_window * config_.head_dim), 0.0f);
    const int m = config_.ratio(i);
    // V4: every compressed layer compresses; V4.1: only the kv sources, and at m = 1 there
    // is no partial block to keep.
    if (m > 0 && config_.kv_source_of(i) == i && !(config_.is_v41() && m == 1)) {
      layer.compressor = Compressor::FreshState(m, config_.is_csa(i), config_.head_dim);
    }
    if (config_.is_csa(i)) {
      layer.index_compressor = Compressor::FreshState(4, true, config_.index_head_dim);
    }
  }
}

int64_t SequenceState::bytes() const {
  int64_t total = 0;
  for (const LayerKvState& layer : layers_) total += layer.bytes();
  return total;
}

}  // namespace dsv4
