// A plain, stateless reference of the DeepSeek-V4 forward pass (exact numerics), written
// from the spec with straight loops, for checking the runtime's model against. For every
// position it recomputes what that position sees from the definitions (no caches, no
// compressor state, no batching, no GEMM library). Weights come straight from the
// checkpoint through Checkpoint::LoadF32.
#ifndef DSV4_TESTS_NAIVE_V4_H_
#define DSV4_TESTS_NAIVE_V4_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <numeric>
#include <string>
#include <vector>

#include "core/model_config.h"
#include "core/safetensors.h"
#include "gtest/gtest.h"

namespace dsv4::naive {

using Vec = std::vector<float>;

// y[rows] = W[rows, cols] · x[cols]
inline Vec MatVec(const Vec& w, int64_t rows, int64_t cols, const float* x) {
  Vec y(rows);
  for (int64_t r = 0; r < rows; ++r) {
    double acc = 0;
    for (int64_t c = 0; c < cols; ++c) acc += static_cast<double>(w[r * cols + c]) * x[c];
    y[r] = static_cast<float>(acc);
  }
  return y;
}

inline void RmsNormInPlace(float* x, int64_t n, const float* w, double eps) {
  double ss = 0;
  for (int64_t i = 0; i < n; ++i) ss += static_cast<double>(x[i]) * x[i];
  const double inv = 1.0 / std::sqrt(ss / n + eps);
  for (int64_t i = 0; i < n; ++i) x[i] = static_cast<float>(x[i] * inv * (w ? w[i] : 1.0f));
}

inline double SigmoidD(double x) { return 1.0 / (1.0 + std::exp(-x)); }

// Frequencies of pair i per spec §3.4 (YaRN when original > 0).
inline std::vector<float> RopeFreqs(int r, double base, double factor, int64_t original,
                                    double beta_fast, double beta_slow) {
  std::vector<float> f(r / 2);
  for (int i = 0; i < r / 2; ++i) {
    f[i] = 1.0f / static_cast<float>(std::pow(base, static_cast<double>(2 * i) / r));
  }
  if (original <= 0) return f;
  auto corr = [&](double beta) {
    return r * std::log(original / (2 * M_PI * beta)) / (2 * std::log(base));
  };
  const double lo = std::max(std::floor(corr(beta_fast)), 0.0);
  double hi = std::min(std::ceil(corr(beta_slow)), r - 1.0);
  if (lo == hi) hi += 0.001;
  for (int i = 0; i < r / 2; ++i) {
    const double ramp = std::clamp((i - lo) / (hi - lo), 0.0, 1.0);
    f[i] = static_cast<float>(f[i] / factor * ramp + f[i] * (1 - ramp));
  }
  return f;
}

// Rotates the interleaved pairs of u[0..r) by position p (inverse: by −θ).
inline void RopeInPlace(float* u, const std::vector<float>& freqs, int64_t p, bool inverse) {
  for (size_t i = 0; i < freqs.size(); ++i) {
    const float theta = static_cast<float>(p) * freqs[i];
    const double c = std::cos(theta), s = inverse ? -std::sin(theta) : std::sin(theta);
    const double a = u[2 * i], b = u[2 * i + 1];
    u[2 * i] = static_cast<float>(a * c - b * s);
    u[2 * i + 1] = static_cast<float>(a * s + b * c);
  }
}

// Sinkhorn per spec §3.3 step 7, on an n×n row-major matrix of logits.
inline void SinkhornRef(std::vector<double>& c, int n, int iters, double eps) {
  for (int a = 0; a < n; ++a) {
    double mx = -1e300, sum = 0;
    for (int b = 0; b < n; ++b) mx = std::max(mx, c[a * n + b]);
    for (int b = 0; b < n; ++b) sum += std::exp(c[a * n + b] - mx);
    for (int b = 0; b < n; ++b) c[a * n + b] = std::exp(c[a * n + b] - mx) / sum + eps;
  }
  auto cols = [&] {
    for (int b = 0; b < n; ++b) {
      double s = 0;
      for (int a = 0; a < n; ++a) s += c[a * n + b];
      for (int a = 0; a < n; ++a) c[a * n + b] /= s + eps;
    }
  };
  auto rows = [&] {
    for (int a = 0; a < n; ++a) {
      double s = 0;
      for (int b = 0; b < n; ++b) s += c[a * n + b];
      for (int b = 0; b < n; ++b) c[a * n + b] /= s + eps;
    }
  };
  cols();
  for (int i = 1; i < iters; ++i) {
    rows();
    cols();
  }
}

// mHC mixes of one token's streams x [n·d] with fn [rows, n·d].
inline Vec HcMix(const Vec& fn, int64_t rows, const float* x, int64_t width, double eps) {
  double ss = 0;
  for (int64_t j = 0; j < width; ++j) ss += static_cast<double>(x[j]) * x[j];
  const double rho = 1.0 / std::sqrt(ss / width + eps);
  Vec mix = MatVec(fn, rows, width, x);
  for (float& m : mix) m = static_cast<float>(m * rho);
  return mix;
}

// The top `k` indices of `score` (largest first, ties to the lower index).
// One query's attention output, projected back to d: per head a softmax with the sink
// logit over the candidate KV rows (K = V, scale D^−½), the head's last r dims de-rotated at
// position t, then wo_a [G·R, H·D/G] block-diagonal (group g projects its heads only) and
// wo_b [d, G·R].
inline Vec AttendAndProject(const float* q, const std::vector<const float*>& cand,
                            const float* sink, int H, int64_t D, int64_t r,
                            const std::vector<float>& freqs, int64_t t, const Vec& wo_a,
                            const Vec& wo_b, int G, int64_t R, int64_t d) {
  Vec o(H * D);
  for (int h = 0; h < H; ++h) {
    std::vector<double> z(cand.size());
    double mx = sink[h];
    for (size_t j = 0; j < cand.size(); ++j) {
      double dot = 0;
      for (int64_t i = 0; i < D; ++i) dot += double(q[h * D + i]) * cand[j][i];
      z[j] = dot / std::sqrt(double(D));
      mx = std::max(mx, z[j]);
    }
    double den = std::exp(sink[h] - mx);
    for (double& v : z) den += (v = std::exp(v - mx));
    for (int64_t i = 0; i < D; ++i) {
      double acc = 0;
      for (size_t j = 0; j < cand.size(); ++j) acc += z[j] * cand[j][i];
      o[h * D + i] = static_cast<float>(acc / den);
    }
    RopeInPlace(&o[h * D + D - r], freqs, t, true);
  }
  const int64_t gin = H * D / G;
  Vec zcat(G * R);
  for (int g = 0; g < G; ++g) {
    for (int64_t k = 0; k < R; ++k) {
      double acc = 0;
      for (int64_t i = 0; i < gin; ++i) acc += double(wo_a[(g * R + k) * gin + i]) * o[g * gin + i];
      zcat[g * R + k] = static_cast<float>(acc);
    }
  }
  return MatVec(wo_b, d, G * R, zcat.data());
}

inline std::vector<int> TopIndices(const std::vector<double>& score, int k) {
  std::vector<int> idx(score.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [&](int a, int b) { return score[a] > score[b]; });
  idx.resize(k);
  return idx;
}

class NaiveV4 {
 public:
  NaiveV4(const ModelConfig& config, Checkpoint* checkpoint) : c_(config), ck_(checkpoint) {}

  // Logits [T, V] for tokens at positions 0..T−1.
  Vec Forward(const std::vector<int32_t>& tokens) {
    const int64_t T = tokens.size(), d = c_.hidden_size, V = c_.vocab_size;
    const int n = c_.hc_mult;
    std::vector<Vec> X(T, Vec(n * d));  // streams per token
    const Vec& embed = W("embed.weight");
    for (int64_t t = 0; t < T; ++t) {
      for (int i = 0; i < n; ++i) {
        std::copy_n(&embed[tokens[t] * d], d, &X[t][i * d]);
      }
    }
    for (int layer = 0; layer < c_.num_hidden_layers; ++layer) {
      const std::string p = "layers." + std::to_string(layer);
      // Attention sub-layer.
      std::vector<Vec> y(T), post(T), comb(T);
      for (int64_t t = 0; t < T; ++t) HcPre(p + ".hc_attn", X[t], &y[t], &post[t], &comb[t]);
      for (int64_t t = 0; t < T; ++t)
        RmsNormInPlace(y[t].data(), d, W(p + ".attn_norm.weight").data(), c_.rms_norm_eps);
      std::vector<Vec> a = Attention(layer, y);
      for (int64_t t = 0; t < T; ++t) HcPost(a[t], post[t], comb[t], &X[t]);
      // MoE sub-layer.
      for (int64_t t = 0; t < T; ++t) {
        Vec z, po, co;
        HcPre(p + ".hc_ffn", X[t], &z, &po, &co);
        RmsNormInPlace(z.data(), d, W(p + ".ffn_norm.weight").data(), c_.rms_norm_eps);
        HcPost(Moe(layer, z, tokens[t]), po, co, &X[t]);
      }
    }
    Vec logits(T * V);
    const Vec& fn = W("hc_head_fn");
    for (int64_t t = 0; t < T; ++t) {
      Vec mix = HcMix(fn, n, X[t].data(), n * d, c_.rms_norm_eps);
      Vec h(d, 0.0f);
      for (int i = 0; i < n; ++i) {
        const double pre =
            SigmoidD(mix[i] * W("hc_head_scale")[0] + W("hc_head_base")[i]) + c_.hc_eps;
        for (int64_t j = 0; j < d; ++j) h[j] += static_cast<float>(pre * X[t][i * d + j]);
      }
      RmsNormInPlace(h.data(), d, W("norm.weight").data(), c_.rms_norm_eps);
      Vec l = MatVec(W("head.weight"), V, d, h.data());
      std::copy(l.begin(), l.end(), logits.begin() + t * V);
    }
    return logits;
  }

 private:
  const Vec& W(const std::string& name) {
    auto it = cache_.find(name);
    if (it != cache_.end()) return it->second;
    auto t = ck_->LoadF32(name);
    EXPECT_TRUE(t.ok()) << t.status();
    return cache_[name] = t->ToVector();
  }

  const std::vector<int64_t>& Table(const std::string& name) {
    auto it = tables_.find(name);
    if (it != tables_.end()) return it->second;
    auto t = ck_->LoadI64(name);
    EXPECT_TRUE(t.ok()) << t.status();
    return tables_[name] = *t;
  }

  void HcPre(const std::string& p, const Vec& x, Vec* y, Vec* post, Vec* comb) {
    const int n = c_.hc_mult;
    const int64_t d = c_.hidden_size;
    const Vec& base = W(p + "_base");
    const Vec& scale = W(p + "_scale");
    Vec mix = HcMix(W(p + "_fn"), (2 + n) * n, x.data(), n * d, c_.rms_norm_eps);
    y->assign(d, 0.0f);
    post->resize(n);
    for (int i = 0; i < n; ++i) {
      const double pre = SigmoidD(mix[i] * scale[0] + base[i]) + c_.hc_eps;
      (*post)[i] = static_cast<float>(2 * SigmoidD(mix[n + i] * scale[1] + base[n + i]));
      for (int64_t j = 0; j < d; ++j) (*y)[j] += static_cast<float>(pre * x[i * d + j]);
    }
    std::vector<double> cm(n * n);
    for (int k = 0; k < n * n; ++k) cm[k] = mix[2 * n + k] * scale[2] + base[2 * n + k];
    SinkhornRef(cm, n, c_.hc_sinkhorn_iters, c_.hc_eps);
    comb->assign(cm.begin(), cm.end());
  }

  void HcPost(const Vec& f, const Vec& post, const Vec& comb, Vec* x) {
    const int n = c_.hc_mult;
    const int64_t d = c_.hidden_size;
    Vec out(n * d);
    for (int b = 0; b < n; ++b) {
      for (int64_t j = 0; j < d; ++j) {
        double v = post[b] * f[j];
        for (int a = 0; a < n; ++a) v += comb[a * n + b] * (*x)[a * d + j];
        out[b * d + j] = static_cast<float>(v);
      }
    }
    *x = out;
  }

  // Compressed entries of all complete blocks of rows y, per spec §3.6 (from scratch).
  std::vector<Vec> Compress(const std::string& p, const std::vector<Vec>& y, int m, int64_t dc,
                            const std::vector<float>& freqs) {
    const int64_t T = y.size(), d = c_.hidden_size;
    const bool overlap = m == 4;
    const int64_t width = (overlap ? 2 : 1) * dc;
    const Vec& ape = W(p + ".ape");
    std::vector<Vec> a(T), g(T);
    for (int64_t t = 0; t < T; ++t) {
      a[t] = MatVec(W(p + ".wkv.weight"), width, d, y[t].data());
      g[t] = MatVec(W(p + ".wgate.weight"), width, d, y[t].data());
      for (int64_t j = 0; j < width; ++j) g[t][j] += ape[(t % m) * width + j];
    }
    std::vector<Vec> entries;
    for (int64_t s = 0; s < T / m; ++s) {
      Vec e(dc);
      for (int64_t j = 0; j < dc; ++j) {
        std::vector<std::pair<double, double>> cand;  // (score, value)
        for (int64_t t = s * m; t < s * m + m; ++t) {
          cand.push_back(overlap ? std::make_pair(double(g[t][dc + j]), double(a[t][dc + j]))
                                 : std::make_pair(double(g[t][j]), double(a[t][j])));
        }
        if (overlap && s > 0) {
          for (int64_t t = (s - 1) * m; t < s * m; ++t) cand.push_back({g[t][j], a[t][j]});
        }
        double mx = -1e300, den = 0, num = 0;
        for (auto& [sc, v] : cand) mx = std::max(mx, sc);
        for (auto& [sc, v] : cand) {
          den += std::exp(sc - mx);
          num += std::exp(sc - mx) * v;
        }
        e[j] = static_cast<float>(num / den);
      }
      RmsNormInPlace(e.data(), dc, W(p + ".norm.weight").data(), c_.rms_norm_eps);
      RopeInPlace(e.data() + dc - c_.qk_rope_head_dim, freqs, s * m, false);
      entries.push_back(e);
    }
    return entries;
  }

  std::vector<Vec> Attention(int layer, const std::vector<Vec>& y) {
    const std::string p = "layers." + std::to_string(layer) + ".attn";
    const int64_t T = y.size(), d = c_.hidden_size, D = c_.head_dim, Q = c_.q_lora_rank;
    const int H = c_.num_attention_heads, G = c_.o_groups;
    const int r = c_.qk_rope_head_dim;
    const int m = c_.ratio(layer);
    const auto& rs = c_.rope_scaling;
    const std::vector<float> freqs =
        m == 0 ? RopeFreqs(r, c_.rope_theta, 1, 0, 1, 1)
               : RopeFreqs(r, c_.compress_rope_theta, rs.factor,
                           rs.original_max_position_embeddings, rs.beta_fast, rs.beta_slow);
    std::vector<Vec> q(T), kv(T), qr(T);
    for (int64_t t = 0; t < T; ++t) {
      qr[t] = MatVec(W(p + ".wq_a.weight"), Q, d, y[t].data());
      RmsNormInPlace(qr[t].data(), Q, W(p + ".q_norm.weight").data(), c_.rms_norm_eps);
      q[t] = MatVec(W(p + ".wq_b.weight"), H * D, Q, qr[t].data());
      for (int h = 0; h < H; ++h) {
        RmsNormInPlace(&q[t][h * D], D, nullptr, c_.rms_norm_eps);
        RopeInPlace(&q[t][h * D + D - r], freqs, t, false);
      }
      kv[t] = MatVec(W(p + ".wkv.weight"), D, d, y[t].data());
      RmsNormInPlace(kv[t].data(), D, W(p + ".kv_norm.weight").data(), c_.rms_norm_eps);
      RopeInPlace(&kv[t][D - r], freqs, t, false);
    }
    std::vector<Vec> comp, keys;
    if (m > 0) comp = Compress(p + ".compressor", y, m, D, freqs);
    const int HI = c_.index_n_heads;
    const int64_t DI = c_.index_head_dim;
    if (m == 4) keys = Compress(p + ".indexer.compressor", y, 4, DI, freqs);
    const Vec& sink = W(p + ".attn_sink");
    std::vector<Vec> out(T);
    for (int64_t t = 0; t < T; ++t) {
      std::vector<const float*> cand;
      for (int64_t s = std::max<int64_t>(0, t - c_.sliding_window + 1); s <= t; ++s) {
        cand.push_back(kv[s].data());
      }
      if (m > 0) {
        const int64_t visible = (t + 1) / m;
        std::vector<int> chosen(visible);
        std::iota(chosen.begin(), chosen.end(), 0);
        if (m == 4 && visible > c_.index_topk) {
          Vec iq = MatVec(W(p + ".indexer.wq_b.weight"), HI * DI, Q, qr[t].data());
          for (int h = 0; h < HI; ++h) RopeInPlace(&iq[h * DI + DI - r], freqs, t, false);
          Vec iw = MatVec(W(p + ".indexer.weights_proj.weight"), HI, d, y[t].data());
          std::vector<double> score(visible, 0.0);
          for (int64_t s = 0; s < visible; ++s) {
            for (int h = 0; h < HI; ++h) {
              double dot = 0;
              for (int64_t j = 0; j < DI; ++j) dot += double(iq[h * DI + j]) * keys[s][j];
              score[s] += iw[h] / std::sqrt(double(DI) * HI) * std::max(dot, 0.0);
            }
          }
          chosen = TopIndices(score, static_cast<int>(c_.index_topk));
        }
        for (int s : chosen) cand.push_back(comp[s].data());
      }
      out[t] = AttendAndProject(q[t].data(), cand, sink.data(), H, D, r, freqs, t,
                                W(p + ".wo_a.weight"), W(p + ".wo_b.weight"), G, c_.o_lora_rank, d);
    }
    return out;
  }

  // One token's expert: SiLU(min(w1 x, L)) · clamp(w3 x, ±L) · weight, then w2.
  Vec Expert(const std::string& p, const Vec& x, double weight) {
    const int64_t d = c_.hidden_size, F = c_.moe_intermediate_size;
    const double L = c_.swiglu_limit;
    Vec g = MatVec(W(p + ".w1.weight"), F, d, x.data());
    Vec u = MatVec(W(p + ".w3.weight"), F, d, x.data());
    Vec h(F);
    for (int64_t j = 0; j < F; ++j) {
      double gj = g[j], uj = u[j];
      if (L > 0) {
        gj = std::min(gj, L);
        uj = std::clamp(uj, -L, L);
      }
      h[j] = static_cast<float>(gj * SigmoidD(gj) * uj * weight);
    }
    return MatVec(W(p + ".w2.weight"), d, F, h.data());
  }

  Vec Moe(int layer, const Vec& x, int32_t token) {
    const std::string p = "layers." + std::to_string(layer) + ".ffn";
    const int64_t d = c_.hidden_size;
    const int E = c_.n_routed_experts, k = c_.num_experts_per_tok;
    Vec logit = MatVec(W(p + ".gate.weight"), E, d, x.data());
    std::vector<double> s(E), biased(E);
    for (int e = 0; e < E; ++e) {
      const double z = logit[e];
      s[e] = std::sqrt(z > 20 ? z : std::log1p(std::exp(z)));
    }
    std::vector<int> idx(k);
    if (c_.is_hash_layer(layer)) {
      const std::vector<int64_t>& table = Table(p + ".gate.tid2eid");
      for (int j = 0; j < k; ++j) idx[j] = static_cast<int>(table[token * k + j]);
    } else {
      const Vec& bias = W(p + ".gate.bias");
      for (int e = 0; e < E; ++e) biased[e] = s[e] + bias[e];
      idx = TopIndices(biased, k);
    }
    double sum = 0;
    for (int j = 0; j < k; ++j) sum += s[idx[j]];
    Vec y(d, 0.0f);
    for (int j = 0; j < k; ++j) {
      const double w = s[idx[j]] / sum * c_.routed_scaling_factor;
      Vec ye = Expert(p + ".experts." + std::to_string(idx[j]), x, w);
      for (int64_t i = 0; i < d; ++i) y[i] += ye[i];
    }
    Vec ys = Expert(p + ".shared_experts", x, 1.0);
    for (int64_t i = 0; i < d; ++i) y[i] += ys[i];
    return y;
  }

  const ModelConfig& c_;
  Checkpoint* ck_;
  std::map<std::string, Vec> cache_;
  std::map<std::string, std::vector<int64_t>> tables_;
};

}  // namespace dsv4::naive

#endif  // DSV4_TESTS_NAIVE_V4_H_
