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

namespace {

// Decodes n 16-bit floats (BF16 or F16, as `decode` says) read unaligned from src.
template <typename Decode>
void Decode16(const uint8_t* src, int64_t n, Decode decode, float* out) {
  for (int64_t i = 0; i < n; ++i) {
    uint16_t bits;
    std::memcpy(&bits, src + 2 * i, 2);
    out[i] = decode(bits);
  }
}

}  // namespace

absl::Status RowsToF32(DType dtype, const uint8_t* src, int64_t count, int64_t dim, float* out) {
  RETURN_IF_ERROR(CheckRowDType(dtype));
  const int64_t n = count * dim;
  switch (dtype) {
    case DType::kBF16:
      Decode16(src, n, Bf16ToFloat, out);
      break;
    case DType::kF16:
      Decode16(src, n, F16ToFloat, out);
      break;
    default:  // F32
      std::memcpy(out, src, n * sizeof(float));
  }
  return absl::OkStatus();
}

}  // namespace dsv4
