#include "core/tensor.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/check.h"

namespace dsv4 {
namespace {

Shape PackedStrides(const Shape& shape) {
  Shape strides(shape.size());
  int64_t stride = 1;
  for (size_t i = shape.size(); i-- > 0;) {
    strides[i] = stride;
    stride *= shape[i];
  }
  return strides;
}

int NormalizeAxis(int axis, int rank) {
  const int normalized = axis < 0 ? axis + rank : axis;
  DSV4_CHECK(normalized >= 0 && normalized < rank, "axis ", axis, " out of range for rank ", rank);
  return normalized;
}

std::shared_ptr<float[]> Allocate(int64_t n) {
  // Callers overwrite every element, so skip the zero fill.
  return std::make_shared_for_overwrite<float[]>(static_cast<size_t>(std::max<int64_t>(n, 1)));
}

void CheckShape(const Shape& shape) {
  for (int64_t d : shape) DSV4_CHECK(d >= 0, "negative dimension in ", ShapeToString(shape));
}

}  // namespace

std::string ShapeToString(const Shape& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

int64_t NumElements(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

Tensor::Tensor(Shape shape) : Tensor(std::move(shape), 0.0f) {}

Tensor::Tensor(Shape shape, float fill) : shape_(std::move(shape)) {
  CheckShape(shape_);
  strides_ = PackedStrides(shape_);
  const int64_t n = NumElements(shape_);
  storage_ = Allocate(n);
  std::fill_n(storage_.get(), n, fill);
}

Tensor Tensor::FromVector(Shape shape, std::vector<float> values) {
  CheckShape(shape);
  DSV4_CHECK(NumElements(shape) == static_cast<int64_t>(values.size()), "shape ",
             ShapeToString(shape), " needs ", NumElements(shape), " values, got ", values.size());
  Tensor t;
  t.shape_ = std::move(shape);
  t.strides_ = PackedStrides(t.shape_);
  // Keep the vector itself as the storage (aliasing shared_ptr) instead of copying it.
  auto owner = std::make_shared<std::vector<float>>(std::move(values));
  float* data = owner->data();
  t.storage_ = std::shared_ptr<float[]>(std::move(owner), data);
  if (t.storage_.get() == nullptr) t.storage_ = Allocate(0);  // empty vector: no buffer
  return t;
}

int64_t Tensor::dim(int axis) const { return shape_[NormalizeAxis(axis, rank())]; }

bool Tensor::is_contiguous() const {
  int64_t expected = 1;
  for (int i = rank() - 1; i >= 0; --i) {
    if (shape_[i] == 0) return true;
    // Size-1 dims never move the address, so their stride is irrelevant.
    if (shape_[i] != 1 && strides_[i] != expected) return false;
    expected *= shape_[i];
  }
  return true;
}

float& Tensor::at(std::initializer_list<int64_t> index) { return storage_[ElementOffset(index)]; }

float Tensor::at(std::initializer_list<int64_t> index) const {
  return storage_[ElementOffset(index)];
}

int64_t Tensor::ElementOffset(std::initializer_list<int64_t> index) const {
  DSV4_CHECK(!empty(), "at() on an empty tensor");
  DSV4_CHECK(static_cast<int>(index.size()) == rank(), "index has ", index.size(),
             " entries for a tensor of shape ", ShapeToString(shape_));
  int64_t pos = offset_;
  int axis = 0;
  for (int64_t i : index) {
    DSV4_CHECK(i >= 0 && i < shape_[axis], "index ", i, " out of range on axis ", axis,
               " of shape ", ShapeToString(shape_));
    pos += i * strides_[axis];
    ++axis;
  }
  return pos;
}

Tensor Tensor::Reshape(Shape shape) const {
  DSV4_CHECK(is_contiguous(), "Reshape of a non-contiguous tensor of shape ", ShapeToString(shape_),
             "; call Contiguous() first");
  int inferred = -1;
  int64_t known = 1;
  for (int i = 0; i < static_cast<int>(shape.size()); ++i) {
    if (shape[i] == -1) {
      DSV4_CHECK(inferred < 0, "more than one -1 in ", ShapeToString(shape));
      inferred = i;
    } else {
      DSV4_CHECK(shape[i] >= 0, "negative dimension in ", ShapeToString(shape));
      known *= shape[i];
    }
  }
  if (inferred >= 0) {
    DSV4_CHECK(known > 0 && numel() % known == 0, "cannot reshape ", ShapeToString(shape_), " to ",
               ShapeToString(shape));
    shape[inferred] = numel() / known;
  }
  DSV4_CHECK(NumElements(shape) == numel(), "cannot reshape ", ShapeToString(shape_), " to ",
             ShapeToString(shape));
  Tensor t = *this;
  t.shape_ = std::move(shape);
  t.strides_ = PackedStrides(t.shape_);
  return t;
}

Tensor Tensor::Slice(int axis, int64_t begin, int64_t end) const {
  const int a = NormalizeAxis(axis, rank());
  DSV4_CHECK(0 <= begin && begin <= end && end <= shape_[a], "slice [", begin, ", ", end,
             ") out of range on axis ", axis, " of shape ", ShapeToString(shape_));
  Tensor t = *this;
  t.offset_ += begin * strides_[a];
  t.shape_[a] = end - begin;
  return t;
}

Tensor Tensor::Select(int axis, int64_t index) const {
  const int a = NormalizeAxis(axis, rank());
  DSV4_CHECK(0 <= index && index < shape_[a], "index ", index, " out of range on axis ", axis,
             " of shape ", ShapeToString(shape_));
  Tensor t = *this;
  t.offset_ += index * strides_[a];
  t.shape_.erase(t.shape_.begin() + a);
  t.strides_.erase(t.strides_.begin() + a);
  return t;
}

Tensor Tensor::Transpose(int a, int b) const {
  const int i = NormalizeAxis(a, rank());
  const int j = NormalizeAxis(b, rank());
  Tensor t = *this;
  std::swap(t.shape_[i], t.shape_[j]);
  std::swap(t.strides_[i], t.strides_[j]);
  return t;
}

Tensor Tensor::Contiguous() const { return is_contiguous() ? *this : Clone(); }

Tensor Tensor::Clone() const {
  if (empty()) return Tensor();
  Tensor t;
  t.shape_ = shape_;
  t.strides_ = PackedStrides(shape_);
  const int64_t n = numel();
  t.storage_ = Allocate(n);
  if (n == 0) return t;
  float* dst = t.storage_.get();
  if (is_contiguous()) {
    std::copy_n(data(), n, dst);
    return t;
  }
  // Walk the source in row-major order: an odometer over the outer axes, a strided loop over
  // the last axis.
  const int r = rank();
  const int64_t inner = shape_[r - 1];
  const int64_t inner_stride = strides_[r - 1];
  std::vector<int64_t> index(r, 0);
  const float* base = storage_.get();
  int64_t src = offset_;
  for (int64_t done = 0; done < n; done += inner) {
    for (int64_t k = 0; k < inner; ++k) *dst++ = base[src + k * inner_stride];
    for (int axis = r - 2; axis >= 0; --axis) {
      src += strides_[axis];
      if (++index[axis] < shape_[axis]) break;
      src -= index[axis] * strides_[axis];
      index[axis] = 0;
    }
  }
  return t;
}

std::vector<float> Tensor::ToVector() const {
  if (empty()) return {};
  const Tensor packed = Contiguous();
  return std::vector<float>(packed.data(), packed.data() + packed.numel());
}

}  // namespace dsv4
