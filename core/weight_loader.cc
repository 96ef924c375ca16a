#include "core/weight_loader.h"

#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "core/status_macros.h"

namespace dsv4 {

absl::Status WeightLoader::Missing(const std::string& name) const {
  return absl::NotFoundError(absl::StrCat("checkpoint ", checkpoint_->dir(), ": tensor ", name,
                                          " is missing (config.json requires it)"));
}

absl::StatusOr<Tensor> WeightLoader::Load(const std::string& name, const Shape& shape) {
  if (!checkpoint_->Has(name)) return Missing(name);
  absl::StatusOr<Tensor> tensor = checkpoint_->LoadF32(name);
  if (!tensor.ok()) {
    return absl::Status(tensor.status().code(),
                        absl::StrCat("checkpoint ", checkpoint_->dir(), ": loading ", name, ": ",
                                     tensor.status().message()));
  }
  if (tensor->shape() != shape) {
    return absl::InvalidArgumentError(absl::StrCat(
        "checkpoint ", checkpoint_->dir(), ": tensor ", name, " has shape ",
        ShapeToString(tensor->shape()), ", config.json implies ", ShapeToString(shape)));
  }
  bytes_ += tensor->numel() * static_cast<int64_t>(sizeof(float));
  return std::move(*tensor);
}

absl::StatusOr<std::vector<int32_t>> WeightLoader::LoadIndexTable(const std::string& name,
                                                                  int64_t rows, int64_t cols,
                                                                  int64_t limit) {
  if (!checkpoint_->Has(name)) return Missing(name);
  ASSIGN_OR_RETURN(const TensorView* view, checkpoint_->Get(name));
  const Shape expected = {rows, cols};
  if (view->shape != expected) {
    return absl::InvalidArgumentError(absl::StrCat(
        "checkpoint ", checkpoint_->dir(), ": tensor ", name, " has shape ",
        ShapeToString(view->shape), ", config.json implies ", ShapeToString(expected)));
  }
  ASSIGN_OR_RETURN(std::vector<int64_t> values, checkpoint_->LoadI64(name));
  std::vector<int32_t> table(values.size());
  for (size_t i = 0; i < values.size(); ++i) {
    const int64_t v = values[i];
    if (v < 0 || v >= limit) {
      return absl::InvalidArgumentError(absl::StrCat("checkpoint ", checkpoint_->dir(), ": tensor ",
                                                     name, " holds ", v, " at row ", i / cols,
                                                     ", outside [0, ", limit, ")"));
    }
    table[i] = static_cast<int32_t>(v);
  }
  bytes_ += static_cast<int64_t>(table.size() * sizeof(int32_t));
  return table;
}

}  // namespace dsv4
