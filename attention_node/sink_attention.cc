#include "attention_node/sink_attention.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/kernels.h"

namespace dsv4 {

void AttendWithSink(const float* q, int queries, int heads, int64_t dim,
                    absl::Span<const KvSegment> shared, absl::Span<const RowRange> ranges,
                    absl::Span<const KvSegment> private_rows, const float* sink, float scale,
                    float* out, std::vector<float>* scratch) {
  const int64_t num_shared = static_cast<int64_t>(shared.size());
  std::vector<int64_t> offset(num_shared + 1, 0);
  for (int64_t s = 0; s < num_shared; ++s) offset[s + 1] = offset[s] + shared[s].count;
  int64_t private_max = 0;
  for (const KvSegment& p : private_rows) private_max = std::max(private_max, p.count);
  const int64_t ld = offset[num_shared] + private_max;  // a score row: shared, then private
  const int64_t rows = static_cast<int64_t>(queries) * heads;
  scratch->resize(static_cast<size_t>(rows * ld));
  float* z = scratch->data();

  for (int64_t s = 0; s < num_shared; ++s) {
    if (shared[s].count == 0) continue;
    Gemm(false, true, rows, shared[s].count, dim, scale, q, dim, shared[s].rows, dim, 0.0f,
         z + offset[s], ld);
  }
  for (int i = 0; i < queries; ++i) {
    const KvSegment& p = private_rows[i];
    if (p.count == 0) continue;
    Gemm(false, true, heads, p.count, dim, scale, q + i * heads * dim, dim, p.rows, dim, 0.0f,
         z + i * heads * ld + offset[num_shared], ld);
  }

  // Softmax with sink over each (query, head) row's visible scores; the rest become 0 so
  // the value GEMMs can run over whole segments.
  for (int i = 0; i < queries; ++i) {
    const RowRange* range = ranges.data() + i * num_shared;
    const int64_t private_count = private_rows[i].count;
    for (int h = 0; h < heads; ++h) {
      float* zr = z + (static_cast<int64_t>(i) * heads + h) * ld;
      float mu = -std::numeric_limits<float>::infinity();
      for (int64_t s = 0; s < num_shared; ++s) {
        for (int64_t j = range[s].begin; j < range[s].end; ++j)
          mu = std::max(mu, zr[offset[s] + j]);
      }
      float* zp = zr + offset[num_shared];
      for (int64_t j = 0; j < private_count; ++j) mu = std::max(mu, zp[j]);
      float den = 0;
      for (int64_t s = 0; s < num_shared; ++s) {
        float* zs = zr + offset[s];
        std::fill(zs, zs + range[s].begin, 0.0f);
        for (int64_t j = range[s].begin; j < range[s].end; ++j) {
          zs[j] = std::exp(zs[j] - mu);
          den += zs[j];
        }
        std::fill(zs + range[s].end, zs + shared[s].count, 0.0f);
      }
      for (int64_t j = 0; j < private_count; ++j) {
        zp[j] = std::exp(zp[j] - mu);
        den += zp[j];
      }
      den += std::exp(sink[h] - mu);
      const float inv = 1.0f / den;
      for (int64_t j = 0; j < offset[num_shared] + private_count; ++j) zr[j] *= inv;
    }
  }

  bool first = true;
  for (int64_t s = 0; s < num_shared; ++s) {
    if (shared[s].count == 0) continue;
    Gemm(false, false, rows, dim, shared[s].count, 1.0f, z + offset[s], ld, shared[s].rows, dim,
         first ? 0.0f : 1.0f, out, dim);
    first = false;
  }
  if (first) std::fill(out, out + rows * dim, 0.0f);
  for (int i = 0; i < queries; ++i) {
    const KvSegment& p = private_rows[i];
    if (p.count == 0) continue;
    Gemm(false, false, heads, dim, p.count, 1.0f, z + i * heads * ld + offset[num_shared], ld,
         p.rows, dim, 1.0f, out + i * heads * dim, dim);
  }
}

}  // namespace dsv4
