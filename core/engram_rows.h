// Engram table rows as the model consumes them, and where they come from: the stored row
// formats, their conversion to fp32, and the row-source interface that local tables
// (attention_node/engram.h) and the memory nodes' client (engram_store/client.h) implement.
// A step hashes its n-grams as soon as its tokens are known, starts fetching the rows of
// every Engram layer (EngramRowSource::Prefetch) and waits only at the Engram layer
// (EngramRowFetch::Wait).
#ifndef DSV4_CORE_ENGRAM_ROWS_H_
#define DSV4_CORE_ENGRAM_ROWS_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "core/dtype.h"

namespace dsv4 {

// Table rows are stored as BF16, F16 or F32; anything else is InvalidArgument.
absl::Status CheckRowDType(DType dtype);
// Converts `count` stored table rows of `dim` elements (BF16, F16 or F32) to fp32.
absl::Status RowsToF32(DType dtype, const uint8_t* src, int64_t count, int64_t dim, float* out);

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
