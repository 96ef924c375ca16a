#include "attention_node/sink_attention.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/parallel.h"
#include "core/vector_math.h"

namespace dsv4 {

void AttendWithSink(const float* q, int queries, int heads, int64_t dim,
                    absl::Span<const KvSegment> shared, absl::Span<const RowRange> ranges,
                    absl::Span<const KvSegment> private_rows, const float* sink, float scale,
                    float* out, std::vector<float>* scratch) {
  const int64_t num_shared = static_cast<int64_t>(shared.size());
  int64_t ld = 0;  // the longest candidate list of any query
  for (int i = 0; i < queries; ++i) {
    int64_t seen = private_rows[i].count;
    for (int64_t s = 0; s < num_shared; ++s) {
      const RowRange& r = ranges[i * num_shared + s];
      seen += r.end - r.begin;
    }
    ld = std::max(ld, seen);
  }
  const int64_t items = static_cast<int64_t>(queries) * heads;
  scratch->resize(static_cast<size_t>(items * ld));

  // Query i's candidates in order: the shared runs' visible rows, then its private rows.
  auto candidates = [&](int i, std::vector<const float*>* rows) {
    rows->clear();
    for (int64_t s = 0; s < num_shared; ++s) {
      const RowRange& r = ranges[i * num_shared + s];
      for (int64_t c = r.begin; c < r.end; ++c) rows->push_back(shared[s].rows + c * dim);
    }
    const KvSegment& p = private_rows[i];
    for (int64_t c = 0; c < p.count; ++c) rows->push_back(p.rows + c * dim);
  };
  // At least ~32k multiply-adds per thread's share: smaller splits cost more than they save.
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 15) / std::max<int64_t>(1, ld * dim));
  ParallelFor(items, grain, [&](int64_t begin, int64_t end) {
    std::vector<const float*> rows;
    int listed = -1;  // the query whose candidates `rows` holds
    for (int64_t item = begin; item < end; ++item) {
      const int i = static_cast<int>(item / heads);
      const int h = static_cast<int>(item % heads);
      if (i != listed) candidates(i, &rows), listed = i;
      const int64_t count = static_cast<int64_t>(rows.size());
      float* z = scratch->data() + item * ld;
      Dots(q + item * dim, rows.data(), count, dim, z);
      float mu = -std::numeric_limits<float>::infinity();
      for (int64_t j = 0; j < count; ++j) {
        z[j] *= scale;
        mu = std::max(mu, z[j]);
      }
      float den = 0;
      for (int64_t j = 0; j < count; ++j) {
        z[j] = std::exp(z[j] - mu);
        den += z[j];
      }
      den += std::exp(sink[h] - mu);
      const float inv = 1.0f / den;
      for (int64_t j = 0; j < count; ++j) z[j] *= inv;
      WeightedSum(z, rows.data(), count, dim, out + item * dim);
    }
  });
}

}  // namespace dsv4
