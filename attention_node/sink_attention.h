// Core attention with a per-head sink (spec §3.9). For a query q_h and its candidate KV
// rows k_j (each used as both key and value; MQA: one KV vector per position):
//   z_j = (q_h · k_j) · scale,  μ = max_j z_j
//   o_h = Σ_j exp(z_j − μ) · k_j / (Σ_j exp(z_j − μ) + exp(sink_h − μ))
// The sink adds to the denominator only.
//
// Queries are processed in blocks so the work runs as GEMMs over the whole block: the
// block shares runs of candidate rows (window positions, compressed entries), of which
// each query sees a contiguous sub-range, and each query may add private rows (the
// entries its indexer selected).
#ifndef DSV4_ATTENTION_NODE_SINK_ATTENTION_H_
#define DSV4_ATTENTION_NODE_SINK_ATTENTION_H_

#include <cstdint>
#include <vector>

#include "absl/types/span.h"

namespace dsv4 {

// A run of consecutive candidate rows [count, dim] in memory.
struct KvSegment {
  const float* rows = nullptr;
  int64_t count = 0;
};

// The rows [begin, end) of a shared segment that one query attends to.
struct RowRange {
  int64_t begin = 0;
  int64_t end = 0;
};

// q, out: [queries, heads, dim]; sink: [heads].
// ranges[i·shared.size() + s]: what query i sees of shared[s]; private_rows[i]: its own
// extra rows (may be empty). Every query must see at least one row.
void AttendWithSink(const float* q, int queries, int heads, int64_t dim,
                    absl::Span<const KvSegment> shared, absl::Span<const RowRange> ranges,
                    absl::Span<const KvSegment> private_rows, const float* sink, float scale,
                    float* out, std::vector<float>* scratch);

}  // namespace dsv4

#endif  // DSV4_ATTENTION_NODE_SINK_ATTENTION_H_
