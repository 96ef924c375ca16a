// A dense fp32 tensor: a shape, row-major strides and shared storage.
//
// Copies of a Tensor share storage (like a view); Clone() makes a deep copy. Views made
// with Slice/Transpose/Reshape share storage with their source and may be
// non-contiguous (Transpose) or offset (Slice). Kernels that need contiguous memory
// take raw pointers or call Contiguous().
#ifndef DSV4_CORE_TENSOR_H_
#define DSV4_CORE_TENSOR_H_

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

namespace dsv4 {

using Shape = std::vector<int64_t>;

std::string ShapeToString(const Shape& shape);  // "[2, 3]"
int64_t NumElements(const Shape& shape);

class Tensor {
 public:
  Tensor() = default;               // empty: rank 0, no storage
  explicit Tensor(Shape shape);     // zero-filled, contiguous
  Tensor(Shape shape, float fill);  // filled with `fill`
  static Tensor FromVector(Shape shape, std::vector<float> values);

  const Shape& shape() const { return shape_; }
  const Shape& strides() const { return strides_; }
  int rank() const { return static_cast<int>(shape_.size()); }
  int64_t dim(int axis) const;  // negative axes count from the end
  int64_t numel() const { return NumElements(shape_); }
  bool empty() const { return storage_ == nullptr; }
  bool is_contiguous() const;

  float* data() { return storage_ ? storage_.get() + offset_ : nullptr; }
  const float* data() const { return storage_ ? storage_.get() + offset_ : nullptr; }

  // Element access by full index (any strides).
  float& at(std::initializer_list<int64_t> index);
  float at(std::initializer_list<int64_t> index) const;

  // Views (share storage).
  Tensor Reshape(Shape shape) const;  // requires contiguous; one dim may be -1
  Tensor Slice(int axis, int64_t begin, int64_t end) const;
  Tensor Select(int axis, int64_t index) const;  // drops `axis`
  Tensor Transpose(int a, int b) const;

  // Copies.
  Tensor Contiguous() const;  // this if already contiguous, else a packed copy
  Tensor Clone() const;       // always a packed deep copy
  std::vector<float> ToVector() const;

 private:
  int64_t ElementOffset(std::initializer_list<int64_t> index) const;  // checked, into storage_

  std::shared_ptr<float[]> storage_;
  int64_t offset_ = 0;
  Shape shape_;
  Shape strides_;
};

}  // namespace dsv4

#endif  // DSV4_CORE_TENSOR_H_
