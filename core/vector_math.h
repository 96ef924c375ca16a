// Dot products and scaled adds over fp32 vectors in one fixed order (Highway, runtime
// dispatch), for the parts of the model that reduce activations against activations
// (attention scores and values, indexer scores). A result depends only on the inputs and
// the dispatched target, never on where the vectors sit in a batch or how work is split
// over threads: the order is MatMul's (core/matmul.h): L-lane accumulators over
// k ≡ l (mod L) in increasing k, the last partial step padded with +0, then SumOfLanes.
#ifndef DSV4_CORE_VECTOR_MATH_H_
#define DSV4_CORE_VECTOR_MATH_H_

#include <cstdint>

namespace dsv4 {

// Σ a[k]·b[k] over k < n, in the canonical order.
float Dot(const float* a, const float* b, int64_t n);

// out[j] = Dot(q, rows[j], n) for j < count, bitwise; several rows share each load of q.
void Dots(const float* q, const float* const* rows, int64_t count, int64_t n, float* out);

// y[k] = MulAdd(alpha, x[k], y[k]) for k < n, each element on its own (fused where the
// target has FMA). Summing terms into y by repeated calls is ordered by the calls.
void MulAddTo(float alpha, const float* x, float* y, int64_t n);

// out[k] = Σ_j weights[j]·rows[j][k] over j < count in increasing j, starting from +0:
// bitwise what zeroing out and calling MulAddTo(weights[j], rows[j], out, n) for j = 0, 1,
// … gives, with out held in registers.
void WeightedSum(const float* weights, const float* const* rows, int64_t count, int64_t n,
                 float* out);

}  // namespace dsv4

#endif  // DSV4_CORE_VECTOR_MATH_H_
