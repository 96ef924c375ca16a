// Engram table rows as the model consumes them, and where they come from. A released
// table is two tensors per Engram layer (spec deepseek-v41-model.md §2):
//   layers.L.engram.embed.weight  F8_E4M3 [rows, d_e]
//   layers.L.engram.embed.scale   F8_E8M0 [rows, d_e/32]   one exponent per 32 values
// A row travels and is cached as one record: its d_e value bytes, then its d_e/32 scale
// bytes (264 B for d_e = 256). The model receives fp32 rows, value·2^(scale − 127).
//
// A step hashes its n-grams as soon as its tokens are known, starts fetching the rows of
// every Engram layer (EngramRowSource::Prefetch) and waits only at the Engram layer
// (EngramRowFetch::Wait).
#ifndef DSV4_CORE_ENGRAM_ROWS_H_
#define DSV4_CORE_ENGRAM_ROWS_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"

namespace dsv4 {

constexpr int64_t kEngramScaleBlock = 32;  // values per E8M0 scale

// Bytes of one record for rows of `head_dim` values (head_dim a multiple of 32).
inline int64_t EngramRecordBytes(int64_t head_dim) {
  return head_dim + head_dim / kEngramScaleBlock;
}

// Dequantises one row: `values` d_e FP8 e4m3 bytes, `scales` d_e/32 E8M0 bytes → out [d_e].
void DequantizeEngramRow(const uint8_t* values, const uint8_t* scales, int64_t head_dim,
                         float* out);
// Dequantises `count` records (values then scales, EngramRecordBytes each) → out [count, d_e].
void DequantizeEngramRecords(const uint8_t* records, int64_t count, int64_t head_dim, float* out);

// The rows of one step for every Engram layer, arriving asynchronously.
class EngramRowFetch {
 public:
  virtual ~EngramRowFetch() = default;
  // Blocks until Engram layer `index`'s rows are here and writes them, in request order,
  // to out [rows[index].size(), d_e] fp32. Each index is waited for at most once.
  virtual absl::Status Wait(int index, float* out) = 0;
};

// Where table rows come from: local memory-mapped tables or memory nodes.
class EngramRowSource {
 public:
  virtual ~EngramRowSource() = default;
  // Starts fetching rows[index] (table row ids) of every Engram layer index.
  virtual std::unique_ptr<EngramRowFetch> Prefetch(std::vector<std::vector<int64_t>> rows) = 0;
};

}  // namespace dsv4

#endif  // DSV4_CORE_ENGRAM_ROWS_H_
