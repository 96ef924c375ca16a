// A non-owning view of one weight matrix W [rows = N outputs, cols = K inputs] in the format
// the checkpoint releases it in, so kernels can dequantise in registers (core/matmul.h).
//
// Storage, row-major, as in the official checkpoints (core/checkpoint_layout.cc,
// core/checkpoint_generator.cc):
// - kF32:  data is float[N][K]; no scales.
// - kBF16: data is uint16_t bf16 bits [N][K]; no scales.
// - kFp8:  data is F8_E4M3 codes [N][K]; scales are F8_E8M0 codes
//          [ceil(N / block_rows)][ceil(K / block_cols)] (128×128 in V4, 32×32 in V4.1; edge
//          blocks are partial). W[n][k] = E4M3(data) × E8M0(scales[n / br][k / bc]).
// - kFp4:  data is FP4 e2m1 packed two per byte, row stride ceil(K / 2) bytes, the low
//          nibble of byte j holding element 2j; scales are F8_E8M0 [N][ceil(K / 32)]
//          (block_rows = 1, block_cols = 32). W[n][k] = e2m1 × E8M0(scales[n][k / 32]).
// The pointed-to bytes must outlive every use of the view; nothing is copied.
#ifndef DSV4_CORE_WEIGHT_MATRIX_H_
#define DSV4_CORE_WEIGHT_MATRIX_H_

#include <cstdint>

#include "absl/status/statusor.h"

namespace dsv4 {

enum class WeightFormat { kF32, kBF16, kFp8, kFp4 };

const char* WeightFormatName(WeightFormat format);  // "F32", "BF16", "FP8", "FP4"

struct WeightMatrix {
  WeightFormat format = WeightFormat::kF32;
  int64_t rows = 0;  // N, outputs
  int64_t cols = 0;  // K, inputs
  const uint8_t* data = nullptr;
  const uint8_t* scales = nullptr;  // E8M0 codes; null for F32 and BF16
  int64_t block_rows = 0;           // scale block shape; 0 for F32 and BF16
  int64_t block_cols = 0;
  // Row slices of FP8: the rows of the first scale block that precede row 0, so W[n] uses
  // scale row (row_phase + n) / block_rows. 0 for whole matrices.
  int64_t row_phase = 0;

  // Views with checked shapes. FP8 blocks must be positive; FP4's are fixed at 1×32.
  static absl::StatusOr<WeightMatrix> F32(const float* data, int64_t rows, int64_t cols);
  static absl::StatusOr<WeightMatrix> Bf16(const uint16_t* data, int64_t rows, int64_t cols);
  static absl::StatusOr<WeightMatrix> Fp8(const uint8_t* data, const uint8_t* scales, int64_t rows,
                                          int64_t cols, int64_t block_rows, int64_t block_cols);
  static absl::StatusOr<WeightMatrix> Fp4(const uint8_t* data, const uint8_t* scales, int64_t rows,
                                          int64_t cols);

  // Rows [begin, begin + count) as a matrix of their own (e.g. one group of a grouped
  // projection). Dies on a range outside the matrix.
  WeightMatrix Rows(int64_t begin, int64_t count) const;

  // The scale of W[n][k] is scales[scale_index(n, k)] (FP8 and FP4).
  int64_t scale_index(int64_t n, int64_t k) const {
    return (row_phase + n) / block_rows * scale_cols() + k / block_cols;
  }

  // Row n dequantised exactly into out[0, cols) (e.g. an embedding lookup).
  void DecodeRow(int64_t n, float* out) const;
  // W[n][k] dequantised exactly (one element: for edges and lookups, not for kernels).
  float Element(int64_t n, int64_t k) const;

  // OK when the fields describe a matrix the kernels accept (as the factories build).
  absl::Status Validate() const;

  // Inline: the kernels ask for these for every tile.
  int64_t row_bytes() const {  // bytes of one row of data
    switch (format) {
      case WeightFormat::kF32:
        return cols * 4;
      case WeightFormat::kBF16:
        return cols * 2;
      case WeightFormat::kFp8:
        return cols;
      case WeightFormat::kFp4:
        return (cols + 1) / 2;
    }
    return 0;
  }
  int64_t scale_rows() const {  // rows of the scale grid (0 without scales)
    return block_rows > 0 ? (row_phase + rows + block_rows - 1) / block_rows : 0;
  }
  int64_t scale_cols() const {  // columns of the scale grid (0 without scales)
    return block_cols > 0 ? (cols + block_cols - 1) / block_cols : 0;
  }
  int64_t released_bytes() const;  // data + scale bytes: what stays resident
};

}  // namespace dsv4

#endif  // DSV4_CORE_WEIGHT_MATRIX_H_
