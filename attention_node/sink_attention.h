// Core attention with a per-head sink (spec §3.9). For a query q_h and its candidate KV
// rows k_j (each used as both key and value; MQA: one KV vector per position):
//   z_j = (q_h · k_j) · scale,  μ = max_j z_j
//   o_h = Σ_j exp(z_j − μ) · k_j / (Σ_j exp(z_j − μ) + exp(sink_h − μ))
// The sink adds to the denominator only.
//
// A block of queries shares runs of candidate rows (window positions, compressed
// entries), of which each query sees a contiguous sub-range, and each query may add
// private rows (the entries its indexer selected).
//
// Order. Each (query, head) is computed on its own, over its candidates in the order
// given (the shared runs in order, then its private rows): scores by core/vector_math.h's
// Dots, then max, exponentials and their sum, then o = Σ_j p_j·k_j by WeightedSum, all in
// candidate order. Callers list candidates in a canonical order (window positions
// ascending, then compressed entries ascending), so the output depends only on what the
// query sees, not on how the runs are split, the block size, or the thread count.
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
