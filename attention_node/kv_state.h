// Per-sequence decode state of the attention layers (spec §5), fp32:
//   every layer      window ring [W, D]: kv of position p in slot p mod W
//   V4, m > 0        compressed entries [⌊P/m⌋, D] and the compressor's partial block
//   V4, m = 4        indexer keys [⌊P/4⌋, DI] and the indexer compressor's partial block
//   V4.1 kv source   compressed entries [⌊P/m⌋, D], the partial block (m > 1) and the
//                    indexer keys [⌊P/m⌋, DI]; the layers that reuse them hold only the window
// where P = position() tokens have been processed. mHC is stateless.
//
// A new or Reset() state is a fresh sequence: the compressor buffers are re-initialised
// (kv 0, score −∞), never carried over from a previous sequence.
#ifndef DSV4_ATTENTION_NODE_KV_STATE_H_
#define DSV4_ATTENTION_NODE_KV_STATE_H_

#include <cstdint>
#include <vector>

#include "attention_node/compressor.h"
#include "attention_node/engram.h"
#include "core/model_config.h"

namespace dsv4 {

struct LayerKvState {
  std::vector<float> window;         // [W, D]
  std::vector<float> entries;        // [n, D] compressed entries (compressing layers)
  CompressorState compressor;        // the partial block (compressing layers)
  std::vector<float> index_keys;     // [n, DI] (V4: m = 4; V4.1: kv sources)
  CompressorState index_compressor;  // (V4: m = 4)
  int64_t bytes() const;
};

class SequenceState {
 public:
  // State for the main layers of `config`.
  explicit SequenceState(const ModelConfig& config);

  int64_t position() const { return position_; }  // tokens processed so far
  void Advance(int64_t tokens) { position_ += tokens; }
  void Reset();

  LayerKvState& layer(int i) { return layers_[i]; }
  EngramState& engram() { return engram_; }  // n-gram history and conv inputs (Engram models)
  const LayerKvState& layer(int i) const { return layers_[i]; }
  int num_layers() const { return static_cast<int>(layers_.size()); }

  // Resident bytes of the state (window, entries, keys, compressor buffers); equals
  // SequenceKvBytes(config, {KvLayout::kRuntimeF32}, position()).
  int64_t bytes() const;

 private:
  ModelConfig config_;
  int64_t position_ = 0;
  std::vector<LayerKvState> layers_;
  EngramState engram_;
};

}  // namespace dsv4

#endif  // DSV4_ATTENTION_NODE_KV_STATE_H_
