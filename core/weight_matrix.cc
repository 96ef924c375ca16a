#include "core/weight_matrix.h"

#include <cstring>
#include "absl/strings/str_format.h"

#include "core/check.h"
#include "core/dtype.h"
#include "core/status_macros.h"

namespace dsv4 {
const char* WeightFormatName(WeightFormat format) {
  switch (format) {
    case WeightFormat::kF32:
      return "F32";
    case WeightFormat::kBF16:
      return "BF16";
    case WeightFormat::kFp8:
      return "FP8";
    case WeightFormat::kFp4:
      return "FP4";
  }
  return "?";
}

absl::StatusOr<WeightMatrix> WeightMatrix::F32(const float* data, int64_t rows, int64_t cols) {
  WeightMatrix w{
      WeightFormat::kF32, rows, cols, reinterpret_cast<const uint8_t*>(data), nullptr, 0, 0};
  RETURN_IF_ERROR(w.Validate());
  return w;
}

absl::StatusOr<WeightMatrix> WeightMatrix::Bf16(const uint16_t* data, int64_t rows, int64_t cols) {
  WeightMatrix w{
      WeightFormat::kBF16, rows, cols, reinterpret_cast<const uint8_t*>(data), nullptr, 0, 0};
  RETURN_IF_ERROR(w.Validate());
  return w;
}

absl::StatusOr<WeightMatrix> WeightMatrix::Fp8(const uint8_t* data, const uint8_t* scales,
                                               int64_t rows, int64_t cols, int64_t block_rows,
                                               int64_t block_cols) {
  WeightMatrix w{WeightFormat::kFp8, rows, cols, data, scales, block_rows, block_cols};
  RETURN_IF_ERROR(w.Validate());
  return w;
}

absl::StatusOr<WeightMatrix> WeightMatrix::Fp4(const uint8_t* data, const uint8_t* scales,
                                               int64_t rows, int64_t cols) {
  WeightMatrix w{WeightFormat::kFp4, rows, cols, data, scales, 1, 32};
  RETURN_IF_ERROR(w.Validate());
  return w;
}

absl::Status WeightMatrix::Validate() const {
  const char* name = WeightFormatName(format);
  if (rows < 0 || cols < 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s weight matrix has negative shape [%d, %d]", name, rows, cols));
  }
  if (rows > 0 && cols > 0 && data == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s weight matrix [%d, %d] has no data", name, rows, cols));
  }
  switch (format) {
    case WeightFormat::kF32:
    case WeightFormat::kBF16:
      if (scales != nullptr || block_rows != 0 || block_cols != 0 || row_phase != 0) {
        return absl::InvalidArgumentError(
            absl::StrFormat("%s weight matrix takes no scales or scale blocks", name));
      }
      return absl::OkStatus();
    case WeightFormat::kFp8:
      if (block_rows <= 0 || block_cols <= 0) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "FP8 weight matrix needs positive scale blocks, got %dx%d", block_rows, block_cols));
      }
      if (row_phase < 0 || row_phase >= block_rows) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "FP8 weight matrix row phase %d is outside [0, %d)", row_phase, block_rows));
      }
      break;
    case WeightFormat::kFp4:
      if (block_rows != 1 || block_cols != 32 || row_phase != 0) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "FP4 weight matrix has 1x32 scale blocks, got %dx%d", block_rows, block_cols));
      }
      break;
    default:
      return absl::InvalidArgumentError("unknown weight format");
  }
  if (rows > 0 && cols > 0 && scales == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s weight matrix [%d, %d] has no scales", name, rows, cols));
  }
  return absl::OkStatus();
}

WeightMatrix WeightMatrix::Rows(int64_t begin, int64_t count) const {
  DSV4_CHECK(begin >= 0 && count >= 0 && begin + count <= rows, "rows [", begin, ", ",
             begin + count, ") of a matrix with ", rows);
  WeightMatrix slice = *this;
  slice.rows = count;
  slice.data = data + begin * row_bytes();
  if (scales != nullptr) {
    const int64_t first = row_phase + begin;
    slice.scales = scales + first / block_rows * scale_cols();
    slice.row_phase = first % block_rows;
  }
  return slice;
}

void WeightMatrix::DecodeRow(int64_t n, float* out) const {
  DSV4_CHECK(n >= 0 && n < rows, "row ", n, " of a matrix with ", rows);
  for (int64_t k = 0; k < cols; ++k) out[k] = Element(n, k);
}

float WeightMatrix::Element(int64_t n, int64_t k) const {
  const uint8_t* row = data + n * row_bytes();
  switch (format) {
    case WeightFormat::kF32: {
      float v;
      std::memcpy(&v, row + 4 * k, 4);
      return v;
    }
    case WeightFormat::kBF16: {
      uint16_t bits;
      std::memcpy(&bits, row + 2 * k, 2);
      return Bf16ToFloat(bits);
    }
    case WeightFormat::kFp8:
      return E4M3ToFloat(row[k]) * E8M0ToFloat(scales[scale_index(n, k)]);
    case WeightFormat::kFp4:
      return Fp4PackedElement(row, k) * E8M0ToFloat(scales[scale_index(n, k)]);
  }
  return 0.0f;
}

int64_t WeightMatrix::released_bytes() const {
  return rows * row_bytes() + scale_rows() * scale_cols();
}

}  // namespace dsv4
