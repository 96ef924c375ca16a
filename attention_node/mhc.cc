#include "attention_node/mhc.h"

#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

#include "core/check.h"
#include "core/kernels.h"
#include "core/matmul.h"
#include "core/parallel.h"
#include "core/status_macros.h"

namespace dsv4 {
namespace {

// mix[T, rows] = (x_t · fnᵀ) · rsqrt(mean(x_t²) + eps), x_t the n·d streams of token t.
std::vector<float> RawMixes(const Tensor& fn, const float* x, int64_t tokens, float eps) {
  const int64_t rows = fn.dim(0);
  const int64_t width = fn.dim(1);
  std::vector<float> mix(static_cast<size_t>(tokens * rows));
  const absl::StatusOr<WeightMatrix> w = WeightMatrix::F32(fn.data(), rows, width);
  DSV4_CHECK(w.ok(), w.status().ToString());
  MatMul(x, tokens, *w, mix.data());
  for (int64_t t = 0; t < tokens; ++t) {
    const float* xt = x + t * width;
    double sum = 0;
    for (int64_t j = 0; j < width; ++j) sum += static_cast<double>(xt[j]) * xt[j];
    const float rho = 1.0f / std::sqrt(static_cast<float>(sum / width) + eps);
    for (int64_t r = 0; r < rows; ++r) mix[t * rows + r] *= rho;
  }
  return mix;
}

// y[d] = Σ_i pre[i]·X[i] for one token's streams X [n, d].
void WeightedStreamSum(const float* x, const float* pre, int n, int64_t d, float* y) {
  std::fill(y, y + d, 0.0f);
  for (int i = 0; i < n; ++i) {
    const float* xi = x + i * d;
    for (int64_t j = 0; j < d; ++j) y[j] += pre[i] * xi[j];
  }
}

absl::StatusOr<std::vector<Tensor>> LoadTriple(WeightLoader& loader, const std::string& prefix,
                                               int64_t rows, int64_t width, int64_t scales) {
  std::vector<Tensor> out;
  for (auto [suffix, shape] : {std::pair<const char*, Shape>{"_fn", {rows, width}},
                               {"_base", {rows}},
                               {"_scale", {scales}}}) {
    ASSIGN_OR_RETURN(Tensor t, loader.Load(prefix + suffix, shape));
    out.push_back(std::move(t));
  }
  return out;
}

}  // namespace

void Sinkhorn(float* c, int n, int iters, float eps) {
  auto normalize_rows = [&] {
    for (int a = 0; a < n; ++a) {
      float sum = 0;
      for (int b = 0; b < n; ++b) sum += c[a * n + b];
      for (int b = 0; b < n; ++b) c[a * n + b] /= sum + eps;
    }
  };
  auto normalize_columns = [&] {
    for (int b = 0; b < n; ++b) {
      float sum = 0;
      for (int a = 0; a < n; ++a) sum += c[a * n + b];
      for (int a = 0; a < n; ++a) c[a * n + b] /= sum + eps;
    }
  };
  for (int a = 0; a < n; ++a) {
    float* row = c + a * n;
    const float top = *std::max_element(row, row + n);
    float sum = 0;
    for (int b = 0; b < n; ++b) {
      row[b] = std::exp(row[b] - top);
      sum += row[b];
    }
    for (int b = 0; b < n; ++b) row[b] = row[b] / sum + eps;
  }
  normalize_columns();
  for (int it = 1; it < iters; ++it) {
    normalize_rows();
    normalize_columns();
  }
}

HyperConnection::HyperConnection(Tensor fn, Tensor base, Tensor scale, int n, int sinkhorn_iters,
                                 float hc_eps, float norm_eps)
    : fn_(std::move(fn)),
      base_(std::move(base)),
      scale_(std::move(scale)),
      n_(n),
      iters_(sinkhorn_iters),
      hc_eps_(hc_eps),
      norm_eps_(norm_eps) {}

absl::StatusOr<HyperConnection> HyperConnection::Load(WeightLoader& loader,
                                                      const std::string& prefix,
                                                      const ModelConfig& config) {
  const int n = config.hc_mult;
  ASSIGN_OR_RETURN(std::vector<Tensor> w,
                   LoadTriple(loader, prefix, config.mix_dim(), n * config.hidden_size, 3));
  return HyperConnection(std::move(w[0]), std::move(w[1]), std::move(w[2]), n,
                         config.hc_sinkhorn_iters, static_cast<float>(config.hc_eps),
                         static_cast<float>(config.rms_norm_eps));
}

void HyperConnection::Mixes(const float* x, int64_t tokens, float* pre, float* post,
                            float* comb) const {
  const int n = n_;
  const int64_t m = fn_.dim(0);
  const std::vector<float> mix = RawMixes(fn_, x, tokens, norm_eps_);
  const float* base = base_.data();
  const float* scale = scale_.data();
  ParallelFor(tokens, 4, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const float* mt = mix.data() + t * m;
      for (int i = 0; i < n; ++i) {
        pre[t * n + i] = Sigmoid(mt[i] * scale[0] + base[i]) + hc_eps_;
        post[t * n + i] = 2.0f * Sigmoid(mt[n + i] * scale[1] + base[n + i]);
      }
      float* ct = comb + t * n * n;
      for (int ab = 0; ab < n * n; ++ab) ct[ab] = mt[2 * n + ab] * scale[2] + base[2 * n + ab];
      Sinkhorn(ct, n, iters_, hc_eps_);
    }
  });
}

void HyperConnection::Collapse(const float* x, const float* pre, int64_t tokens, int n, int64_t d,
                               float* y) {
  ParallelFor(tokens, 4, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      WeightedStreamSum(x + t * n * d, pre + t * n, n, d, y + t * d);
    }
  });
}

void HyperConnection::Pre(const float* x, int64_t tokens, float* y, float* post,
                          float* comb) const {
  std::vector<float> pre(tokens * n_);
  Mixes(x, tokens, pre.data(), post, comb);
  Collapse(x, pre.data(), tokens, n_, fn_.dim(1) / n_, y);
}

void HyperConnection::Post(const float* f, const float* post, const float* comb, int64_t tokens,
                           int n, int64_t d, float* x) {
  ParallelFor(tokens, 4, [&](int64_t begin, int64_t end) {
    std::vector<float> old(static_cast<size_t>(n * d));
    for (int64_t t = begin; t < end; ++t) {
      float* xt = x + t * n * d;
      std::copy(xt, xt + n * d, old.begin());
      const float* ft = f + t * d;
      const float* ct = comb + t * n * n;
      for (int b = 0; b < n; ++b) {
        float* dst = xt + b * d;
        const float pb = post[t * n + b];
        for (int64_t j = 0; j < d; ++j) dst[j] = pb * ft[j];
        for (int a = 0; a < n; ++a) {
          const float cab = ct[a * n + b];
          const float* src = old.data() + a * d;
          for (int64_t j = 0; j < d; ++j) dst[j] += cab * src[j];
        }
      }
    }
  });
}

HcHead::HcHead(Tensor fn, Tensor base, Tensor scale, int n, float hc_eps, float norm_eps)
    : fn_(std::move(fn)),
      base_(std::move(base)),
      scale_(std::move(scale)),
      n_(n),
      hc_eps_(hc_eps),
      norm_eps_(norm_eps) {}

absl::StatusOr<HcHead> HcHead::Load(WeightLoader& loader, const std::string& prefix,
                                    const ModelConfig& config) {
  const int n = config.hc_mult;
  ASSIGN_OR_RETURN(std::vector<Tensor> w, LoadTriple(loader, prefix, n, n * config.hidden_size, 1));
  return HcHead(std::move(w[0]), std::move(w[1]), std::move(w[2]), n,
                static_cast<float>(config.hc_eps), static_cast<float>(config.rms_norm_eps));
}

void HcHead::Apply(const float* x, int64_t tokens, float* y) const {
  const int n = n_;
  const int64_t d = fn_.dim(1) / n;
  const std::vector<float> mix = RawMixes(fn_, x, tokens, norm_eps_);
  std::vector<float> pre(n);
  for (int64_t t = 0; t < tokens; ++t) {
    for (int i = 0; i < n; ++i) {
      pre[i] = Sigmoid(mix[t * n + i] * scale_.data()[0] + base_.data()[i]) + hc_eps_;
    }
    WeightedStreamSum(x + t * n * d, pre.data(), n, d, y + t * d);
  }
}

}  // namespace dsv4
