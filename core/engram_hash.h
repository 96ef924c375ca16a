// Engram hash constants (spec deepseek-v41-model.md §3): the per-head prime table sizes
// and the per-layer hash multipliers, both derived from the config alone (the release
// stores neither). Lives in core because config validation, the checkpoint layout and the
// planner need the table sizes; the hashing itself is in attention_node/engram.h.
//
// Config keys (ModelConfig::engram, V4.1 `text_config` naming):
//   engram_layer_ids               main layers with an Engram module, e.g. [1, 14]
//   engram_num_embeddings          table rows per Engram layer (checked against the primes)
//   engram_max_ngram_size          N: n-grams of order 2..N are hashed
//   engram_n_heads                 K: hash heads (tables) per order
//   engram_head_dim                d_e: width of one table row; e = (N−1)·K·d_e
//   engram_vocab_size              where each order's prime search starts (one number, or
//                                  N−1 numbers)
//   engram_pad_token_id            token id whose compressed id pads look-backs before 0
//   engram_compressed_vocab_size   V_comp, the number of compressed token ids (checked
//                                  against the map built from tokenizer.json)
#ifndef DSV4_CORE_ENGRAM_HASH_H_
#define DSV4_CORE_ENGRAM_HASH_H_

#include <cstdint>
#include <vector>

#include "core/model_config.h"

namespace dsv4 {

// Table rows of each head of each Engram layer, [layer index][h] with h = (n−2)·K + j: the
// demo's scheme (one global set of used primes; per order, K successive unused primes
// above vocab_size[n−2] − 1).
std::vector<std::vector<int64_t>> EngramHeadSizes(const EngramConfig& engram);

// The multipliers m_k = 2·r_k + 1 (k = 0..N−1) of Engram layer `layer_id`, with r drawn
// exactly as NumPy's default_rng(10007·layer_id).integers(0, B, size=N, dtype=int64),
// B = max(1, (2^63−1) // V_comp // 2) (the official compute_hash_multipliers).
std::vector<int64_t> EngramMultipliers(int layer_id, int64_t compressed_vocab, int n);

// NumPy's default bit generator: PCG64 (XSL-RR 128/64) seeded through SeedSequence with
// a non-negative integer entropy, as np.random.default_rng(seed).
class NumpyPcg64 {
 public:
  explicit NumpyPcg64(uint64_t seed);
  uint64_t NextUint64();
  uint32_t NextUint32();  // NumPy's buffered 32-bit draw: low half first, then high half

 private:
  unsigned __int128 state_ = 0, inc_ = 0;
  bool has_uint32_ = false;
  uint32_t uinteger_ = 0;
};

// Generator.integers(low, high, size=count, dtype=int64) with endpoint=False: NumPy's
// Lemire bounded integers (64-bit, or 32-bit buffered when the range fits in 32 bits).
std::vector<int64_t> NumpyIntegers(NumpyPcg64& rng, int64_t low, int64_t high, int count);

}  // namespace dsv4

#endif  // DSV4_CORE_ENGRAM_HASH_H_
