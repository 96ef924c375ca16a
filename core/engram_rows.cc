#include "core/engram_rows.h"

#include "core/dtype.h"

namespace dsv4 {

void DequantizeEngramRow(const uint8_t* values, const uint8_t* scales, int64_t head_dim,
                         float* out) {
  for (int64_t b = 0; b < head_dim / kEngramScaleBlock; ++b) {
    const float scale = E8M0ToFloat(scales[b]);
    for (int64_t i = b * kEngramScaleBlock; i < (b + 1) * kEngramScaleBlock; ++i) {
      out[i] = E4M3ToFloat(values[i]) * scale;  // exact: a power-of-two scale
    }
  }
}

void DequantizeEngramRecords(const uint8_t* records, int64_t count, int64_t head_dim, float* out) {
  const int64_t bytes = EngramRecordBytes(head_dim);
  for (int64_t r = 0; r < count; ++r) {
    const uint8_t* record = records + r * bytes;
    DequantizeEngramRow(record, record + head_dim, head_dim, out + r * head_dim);
  }
}

}  // namespace dsv4
