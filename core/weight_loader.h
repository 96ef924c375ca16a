// Loads model parameters from a checkpoint as fp32 (exactly dequantised), checking each
// tensor against the shape the config implies, and counts the resident bytes handed out.
//
// Every error names the checkpoint directory and the tensor, so a checkpoint whose
// config.json and tensors disagree fails with a message a user can act on.
#ifndef DSV4_CORE_WEIGHT_LOADER_H_
#define DSV4_CORE_WEIGHT_LOADER_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/safetensors.h"
#include "core/tensor.h"

namespace dsv4 {

class WeightLoader {
 public:
  explicit WeightLoader(Checkpoint* checkpoint) : checkpoint_(checkpoint) {}

  bool Has(const std::string& name) const { return checkpoint_->Has(name); }

  // The fp32 tensor `name` ("X.weight" of any stored dtype, its scale applied), which
  // must have exactly `shape`.
  absl::StatusOr<Tensor> Load(const std::string& name, const Shape& shape);

  // An I64 index table [rows, cols] (e.g. tid2eid) as int32, every value in [0, limit).
  absl::StatusOr<std::vector<int32_t>> LoadIndexTable(const std::string& name, int64_t rows,
                                                      int64_t cols, int64_t limit);

  int64_t bytes() const { return bytes_; }  // fp32 / int32 bytes loaded so far

 private:
  absl::Status Missing(const std::string& name) const;

  Checkpoint* checkpoint_;
  int64_t bytes_ = 0;
};

}  // namespace dsv4

#endif  // DSV4_CORE_WEIGHT_LOADER_H_
