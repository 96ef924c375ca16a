// CPU kernels used by the model. All fp32, row-major, raw pointers with explicit sizes so
// callers can run them on views of larger buffers. Projections are not here: they run as
// core/matmul.h's MatMul on weights in their released formats.
#ifndef DSV4_CORE_KERNELS_H_
#define DSV4_CORE_KERNELS_H_

#include <cstdint>
#include <vector>

namespace dsv4 {

// y = x * rsqrt(mean(x²) + eps) * w per row of length dim; w may be null (weightless).
// In-place when y == x.
void RmsNorm(const float* x, const float* w, int64_t rows, int64_t dim, float eps, float* y);

// Numerically stable softmax (max subtracted) over each row of length n, in place. -inf
// entries get probability 0; a row that is all -inf becomes NaN, as in torch.
void SoftmaxRows(float* x, int64_t rows, int64_t n);

// Softmax, Sigmoid and SiLU use a vectorisable exp with ~1 ulp error (std::exp does not
// vectorise without -ffast-math).
float Silu(float x);  // x * sigmoid(x)
float Sigmoid(float x);
float Softplus(float x);  // log(1 + e^x); x itself when x > 20 (as torch)
void SiluInPlace(float* x, int64_t n);

// Indices of the k largest values of x[0..n) (k ≤ n), largest first; ties go to the lower
// index; NaN ranks above every number (as torch.topk).
std::vector<int> TopK(const float* x, int64_t n, int k);

// Rotary embedding on interleaved pairs (x[2i], x[2i+1]) of a `dim`-long vector, with
// optional YaRN frequency scaling as in DeepSeek's reference code. The angle is
// fp32(fp32(pos) * freq_i), matching the reference's rounding (spec §3.4). The rotated
// vector is x[0..dim): callers pass a pointer to the rope part (the last dim elements).
struct RopeParams {
  int dim = 64;  // rotated dims (qk_rope_head_dim)
  double base = 10000.0;
  double factor = 1.0;           // YaRN factor
  int64_t original_seq_len = 0;  // > 0 switches YaRN on
  double beta_fast = 32.0;
  double beta_slow = 1.0;
};

class Rope {
 public:
  explicit Rope(const RopeParams& params);
  const RopeParams& params() const { return params_; }
  const std::vector<float>& freqs() const { return freqs_; }  // dim/2 entries
  // Rotates x[0..dim) in place for position pos; inverse rotates by -θ.
  void Apply(float* x, int64_t pos, bool inverse = false) const;
  // Rotates `count` vectors x, x + stride, … (e.g. every head of one token) at the same
  // position, computing the angles once.
  void ApplyHeads(float* x, int64_t count, int64_t stride, int64_t pos, bool inverse = false) const;

 private:
  RopeParams params_;
  std::vector<float> freqs_;
};

// In-place orthonormal Walsh–Hadamard transform (Sylvester order) of x[0..n), n a power
// of two: x ← H_n x / sqrt(n).
void HadamardInPlace(float* x, int64_t n);

}  // namespace dsv4

#endif  // DSV4_CORE_KERNELS_H_
