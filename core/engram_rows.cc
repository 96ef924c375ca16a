#include "core/engram_rows.h"

#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"
#include "core/status_macros.h"

namespace dsv4 {

absl::Status CheckRowDType(DType dtype) {
  if (dtype == DType::kBF16 || dtype == DType::kF16 || dtype == DType::kF32) {
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(absl::StrCat("Engram rows in ", std::string(DTypeName(dtype)),
                                                 " are not supported (BF16, F16, F32)"));
}

absl::Status RowsToF32(DType dtype, const uint8_t* src, int64_t count, int64_t dim, float* out) {
  RETURN_IF_ERROR(CheckRowDType(dtype));
  const int64_t n = count * dim;
  switch (dtype) {
    case DType::kBF16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t bits;
        std::memcpy(&bits, src + 2 * i, 2);
        out[i] = Bf16ToFloat(bits);
      }
      return absl::OkStatus();
    case DType::kF16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t bits;
        std::memcpy(&bits, src + 2 * i, 2);
        out[i] = F16ToFloat(bits);
      }
      return absl::OkStatus();
    default:  // F32
      std::memcpy(out, src, n * sizeof(float));
      return absl::OkStatus();
  }
}

}  // namespace dsv4
