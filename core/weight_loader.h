// Loads model parameters from a checkpoint, checking each tensor against the shape the
// config implies, and counts the bytes handed out.
//
// Matrices stay in their released format: LoadMatrix returns a WeightMatrix viewing the
// memory-mapped shard (FP8 with E8M0 block scales, FP4 packed with 1×32 scales, BF16,
// F32), and the loader keeps each shard it viewed in `mappings()` so the owner of the
// views can keep them alive. Small tensors (norms, biases, sinks, positional biases) are
// copied as fp32 by Load.
//
// Every error names the checkpoint directory and the tensor, so a checkpoint whose
// config.json and tensors disagree fails with a message a user can act on.
#ifndef DSV4_CORE_WEIGHT_LOADER_H_
#define DSV4_CORE_WEIGHT_LOADER_H_

#include <cstdint>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/safetensors.h"
#include "core/tensor.h"
#include "core/weight_matrix.h"

namespace dsv4 {

// Weight bytes of a set of tensors: as released in the checkpoint (data and scales), and
// as held in memory (mapped views count their released bytes; fp32 copies 4 per value).
struct WeightBytes {
  int64_t released = 0;
  int64_t resident = 0;
  WeightBytes& operator+=(const WeightBytes& other) {
    released += other.released;
    resident += other.resident;
    return *this;
  }
};

// The mapped shards that views point into.
using WeightMappings = std::vector<std::shared_ptr<const SafetensorsFile>>;

class WeightLoader {
 public:
  // fp8_block: the FP8 scale block edge the config states (quantization_config
  // weight_block_size: 128 in V4, 32 in V4.1).
  explicit WeightLoader(Checkpoint* checkpoint, int64_t fp8_block = 128)
      : checkpoint_(checkpoint), fp8_block_(fp8_block) {}

  bool Has(const std::string& name) const { return checkpoint_->Has(name); }

  // The matrix "X.weight" [rows, cols] as released: F32, BF16, F8_E4M3 with "X.scale"
  // (E8M0, [⌈rows/b⌉, ⌈cols/b⌉] for the fp8 block b) or I8-packed FP4 [rows, cols/2] with
  // "X.scale" (E8M0, [rows, ⌈cols/32⌉]). Asks the kernel to read the bytes in ahead of use.
  absl::StatusOr<WeightMatrix> LoadMatrix(const std::string& name, int64_t rows, int64_t cols);

  // The fp32 tensor `name` ("X.weight" of any stored dtype, its scale applied), which
  // must have exactly `shape`.
  absl::StatusOr<Tensor> Load(const std::string& name, const Shape& shape);

  // An I64 index table [rows, cols] (e.g. tid2eid) as int32, every value in [0, limit).
  absl::StatusOr<std::vector<int32_t>> LoadIndexTable(const std::string& name, int64_t rows,
                                                      int64_t cols, int64_t limit);

  const WeightBytes& bytes() const { return bytes_; }  // of everything loaded so far
  const WeightMappings& mappings() const { return mappings_; }

 private:
  absl::Status Missing(const std::string& name) const;
  absl::Status Error(const std::string& name, const std::string& what) const;
  absl::StatusOr<const TensorView*> View(const std::string& name);

  Checkpoint* checkpoint_;
  int64_t fp8_block_;
  WeightBytes bytes_;
  WeightMappings mappings_;
  std::set<const SafetensorsFile*> mapped_;
};

}  // namespace dsv4

#endif  // DSV4_CORE_WEIGHT_LOADER_H_
