#include "core/weight_loader.h"

#include <sys/mman.h>
#include <unistd.h>

#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "core/status_macros.h"

namespace dsv4 {
namespace {

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Starts reading the pages of [data, data + bytes) in, so the first step does not fault
// them in one by one. Advisory: failures are harmless.
void WillNeed(const uint8_t* data, size_t bytes) {
  static const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  const uintptr_t begin = reinterpret_cast<uintptr_t>(data) & ~(page - 1);
  const uintptr_t end = reinterpret_cast<uintptr_t>(data) + bytes;
  if (bytes > 0) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_WILLNEED);
}

}  // namespace

absl::Status WeightLoader::Missing(const std::string& name) const {
  return absl::NotFoundError(absl::StrCat("checkpoint ", checkpoint_->dir(), ": tensor ", name,
                                          " is missing (config.json requires it)"));
}

absl::Status WeightLoader::Error(const std::string& name, const std::string& what) const {
  return absl::InvalidArgumentError(
      absl::StrCat("checkpoint ", checkpoint_->dir(), ": tensor ", name, " ", what));
}

absl::StatusOr<const TensorView*> WeightLoader::View(const std::string& name) {
  if (!checkpoint_->Has(name)) return Missing(name);
  ASSIGN_OR_RETURN(const TensorView* view, checkpoint_->Get(name));
  std::shared_ptr<const SafetensorsFile> file = checkpoint_->FileHolding(name);
  if (file != nullptr && mapped_.insert(file.get()).second) mappings_.push_back(std::move(file));
  return view;
}

absl::StatusOr<WeightMatrix> WeightLoader::LoadMatrix(const std::string& name, int64_t rows,
                                                      int64_t cols) {
  ASSIGN_OR_RETURN(const TensorView* view, View(name));
  const Shape shape = {rows, cols};
  const Shape stored = view->dtype == DType::kI8 ? Shape{rows, CeilDiv(cols, 2)} : shape;
  if (view->shape != stored) {
    return Error(name, absl::StrCat("has shape ", ShapeToString(view->shape), " as ",
                                    std::string(DTypeName(view->dtype)), ", config.json implies ",
                                    ShapeToString(stored)));
  }
  const TensorView* scale = nullptr;
  Shape scale_shape;
  if (view->dtype == DType::kF8E4M3 || view->dtype == DType::kI8) {
    constexpr std::string_view kSuffix = ".weight";
    if (!name.ends_with(kSuffix)) {
      return Error(name, "is quantised but has no '.weight' suffix to find its scale");
    }
    const std::string scale_name =
        absl::StrCat(name.substr(0, name.size() - kSuffix.size()), ".scale");
    ASSIGN_OR_RETURN(scale, View(scale_name));
    scale_shape = view->dtype == DType::kI8
                      ? Shape{rows, CeilDiv(cols, 32)}
                      : Shape{CeilDiv(rows, fp8_block_), CeilDiv(cols, fp8_block_)};
    if (scale->dtype != DType::kF8E8M0 || scale->shape != scale_shape) {
      return Error(scale_name, absl::StrCat("(the scale of ", name, ") is ",
                                            std::string(DTypeName(scale->dtype)), " ",
                                            ShapeToString(scale->shape), ", expected F8_E8M0 ",
                                            ShapeToString(scale_shape)));
    }
  }
  absl::StatusOr<WeightMatrix> matrix;
  switch (view->dtype) {
    case DType::kF32:
      matrix = WeightMatrix::F32(reinterpret_cast<const float*>(view->data), rows, cols);
      break;
    case DType::kBF16:
      matrix = WeightMatrix::Bf16(reinterpret_cast<const uint16_t*>(view->data), rows, cols);
      break;
    case DType::kF8E4M3:
      matrix = WeightMatrix::Fp8(view->data, scale->data, rows, cols, fp8_block_, fp8_block_);
      break;
    case DType::kI8:
      matrix = WeightMatrix::Fp4(view->data, scale->data, rows, cols);
      break;
    default:
      return Error(name, absl::StrCat("is ", std::string(DTypeName(view->dtype)),
                                      "; a weight matrix must be F32, BF16, F8_E4M3 or FP4 (I8)"));
  }
  if (!matrix.ok()) return Error(name, std::string(matrix.status().message()));
  WillNeed(view->data, view->nbytes);
  if (scale != nullptr) WillNeed(scale->data, scale->nbytes);
  const int64_t bytes = matrix->released_bytes();
  bytes_ += WeightBytes{bytes, bytes};
  return matrix;
}

absl::StatusOr<Tensor> WeightLoader::Load(const std::string& name, const Shape& shape) {
  if (!checkpoint_->Has(name)) return Missing(name);
  absl::StatusOr<Tensor> tensor = checkpoint_->LoadF32(name, {fp8_block_, fp8_block_});
  if (!tensor.ok()) {
    return absl::Status(tensor.status().code(),
                        absl::StrCat("checkpoint ", checkpoint_->dir(), ": loading ", name, ": ",
                                     tensor.status().message()));
  }
  if (tensor->shape() != shape) {
    return Error(name, absl::StrCat("has shape ", ShapeToString(tensor->shape()),
                                    ", config.json implies ", ShapeToString(shape)));
  }
  ASSIGN_OR_RETURN(const TensorView* view, checkpoint_->Get(name));
  bytes_ += WeightBytes{static_cast<int64_t>(view->nbytes),
                        tensor->numel() * static_cast<int64_t>(sizeof(float))};
  return std::move(*tensor);
}

absl::StatusOr<std::vector<int32_t>> WeightLoader::LoadIndexTable(const std::string& name,
                                                                  int64_t rows, int64_t cols,
                                                                  int64_t limit) {
  if (!checkpoint_->Has(name)) return Missing(name);
  ASSIGN_OR_RETURN(const TensorView* view, checkpoint_->Get(name));
  const Shape expected = {rows, cols};
  if (view->shape != expected) {
    return Error(name, absl::StrCat("has shape ", ShapeToString(view->shape),
                                    ", config.json implies ", ShapeToString(expected)));
  }
  ASSIGN_OR_RETURN(std::vector<int64_t> values, checkpoint_->LoadI64(name));
  std::vector<int32_t> table(values.size());
  for (size_t i = 0; i < values.size(); ++i) {
    const int64_t v = values[i];
    if (v < 0 || v >= limit) {
      return Error(name,
                   absl::StrCat("holds ", v, " at row ", i / cols, ", outside [0, ", limit, ")"));
    }
    table[i] = static_cast<int32_t>(v);
  }
  bytes_ += WeightBytes{static_cast<int64_t>(view->nbytes),
                        static_cast<int64_t>(table.size() * sizeof(int32_t))};
  return table;
}

}  // namespace dsv4
