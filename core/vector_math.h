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

// y[k] = MulAdd(alpha, x[k], y[k]) for k < n, each element on its own (fused where the
// target has FMA). Summing terms into y by repeated calls is ordered by the calls.
void MulAddTo(float alpha, const float* x, float* y, int64_t n);

}  // namespace dsv4

#endif  // DSV4_CORE_VECTOR_MATH_H_
