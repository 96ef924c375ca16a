// NumPy .npy files of float32 (format version 1.0, '<f4', C order): the logits output of
// `dsv4 run` and test fixtures.
#ifndef DSV4_CORE_NPY_H_
#define DSV4_CORE_NPY_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/tensor.h"

namespace dsv4 {

// Writes data[NumElements(shape)] as a little-endian float32 array of `shape`.
absl::Status WriteNpyF32(const std::string& path, const Shape& shape, const float* data);

struct NpyArray {
  Shape shape;
  std::vector<float> data;
};
// Reads a version 1.x or 2.x '<f4', C-order file.
absl::StatusOr<NpyArray> ReadNpyF32(const std::string& path);

}  // namespace dsv4

#endif  // DSV4_CORE_NPY_H_
