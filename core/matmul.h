// MatMul on weights in their released formats (core/weight_matrix.h): the weight bytes are
// dequantised in registers (or into an L2-sized fp32 panel) and every product is fp32 on
// the exact weight values (E4M3/e2m1 code × E8M0 scale is exact in fp32).
//
// SIMD comes from Google Highway with runtime dispatch: one kernel source
// (core/matmul.cc), the best target the CPU supports among those compiled.
//
// Batch invariance. Every output y[i][n] is reduced over K in one canonical order that
// depends only on K and the dispatched target's vector width L, never on m, on the row's
// position i, or on which regime runs:
//   1. an fp32 vector accumulator of L lanes starts at +0;
//   2. for k0 = 0, L, 2L, … while k0 + L ≤ K: acc = MulAdd(x[i][k0..k0+L), W[n][k0..k0+L), acc)
//      (lane l accumulates the products k ≡ l mod L in increasing k);
//   3. if K mod L ≠ 0: one more MulAdd on the last K mod L elements, both operands padded
//      with +0 to L lanes;
//   4. y = Highway SumOfLanes(acc) (a fixed lane tree of the target).
// Both regimes do the same arithmetic per output on the same operand values, in that order,
// so they agree bitwise:
// - direct (few rows: decode; kAuto uses it up to 16 rows for BF16, FP8 and FP4, 4 for
//   F32): the weight bytes are dequantised in registers and dotted with the rows, 4 rows
//   per pass;
// - panel (many rows): a panel of W rows is dequantised into fp32 scratch that fits in L2,
//   then an 8×3 register tile runs over the rows in K blocks of 768 (the accumulators are
//   saved and reloaded between blocks, which keeps their bits).
// Work is partitioned by output columns n: a later thread split over N does not change any
// output. Results do depend on the dispatched target (vector width, FMA or not).
//
// Speed: the vector decoders need a scale block width that is a power of two and a
// multiple of L (32 and 128 are); other FP8 block widths are exact but decode per element.
#ifndef DSV4_CORE_MATMUL_H_
#define DSV4_CORE_MATMUL_H_

#include <cstdint>

#include "core/weight_matrix.h"

namespace dsv4 {

// Which regime runs; kAuto picks by m. The others exist for tests and benchmarks: every
// choice gives bitwise the same y.
enum class MatMulPath { kAuto, kDirect, kPanel };

// y[m, N] = x[m, K] · Wᵀ with W = w dequantised exactly; x and y are row-major and dense
// (row strides K and N). w must satisfy w.Validate(). y must not overlap x.
void MatMul(const float* x, int64_t m, const WeightMatrix& w, float* y,
            MatMulPath path = MatMulPath::kAuto);
// The same with row strides: x[i] at x + i·ldx (ldx ≥ K), y[i] at y + i·ldy (ldy ≥ N), e.g.
// to multiply a column slice of x into a column slice of y.
void MatMul(const float* x, int64_t ldx, int64_t m, const WeightMatrix& w, float* y, int64_t ldy,
            MatMulPath path = MatMulPath::kAuto);

// The Highway target MatMul dispatches to on this CPU, e.g. "AVX3".
const char* MatMulTargetName();

}  // namespace dsv4

#endif  // DSV4_CORE_MATMUL_H_
