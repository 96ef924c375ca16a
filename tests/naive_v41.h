// A plain, stateless reference of the DeepSeek-V4.1 text forward pass (exact fp32 on the
// exactly dequantised weights: no FP8/FP4/BF16 activation rounding), written from the
// official inference/model.py and inference/engram.py (spec deepseek-v41-model.md) with
// straight loops, for checking the runtime's model against. It recomputes everything from
// the whole prompt (no caches, no decode state, no batching), so it defines the prefill
// semantics that decode and chunked prefill must reproduce (spec §6.1).
//
// What it implements, in order:
//   - Engram hashing (engram.py NgramHashState): compressed ids, sticky look-back blocking
//     with the pad id, multiplied ids XOR-chained, per-(order, head) prime moduli (searched
//     here) plus offsets into one table per layer.
//   - embed → hc_mult copies; for each layer: Engram (at Engram layers) on all streams,
//     then the lagged mHC block (Block.forward): the attention collapses with the pre-mix
//     handed in (layer 0: one-hot copy 0), its own hc_mixes give post/comb for itself and
//     the FFN's pre-mix; the FFN's hc_mixes give the next layer's pre-mix.
//   - CSA2 attention: window of sliding_window raw KV, plus compressed entries of the
//     layer's kv source (no overlap, no APE), selected by the index source's indexer;
//     the candidate source picks blocks later index sources score inside.
//   - MoE without hash routing; final collapse with the last FFN pre-mix, norm, head.
//
// Semantics this file fixes where the official code leaves them open:
//   - top-k ties (indexer positions and candidate blocks) go to the lower position/block
//     (torch.topk leaves tie order unspecified; ReLU makes exact-zero scores common);
//   - an index source selects only among finite scores: min(index_topk, #finite) entries,
//     so a position outside the candidate pool is never selected (the official
//     `topk(min(index_topk, end_pos // ratio))` could pad with -inf positions that pass
//     its `idx < compress_len` check when the pool held fewer than index_topk positions;
//     the config validation makes the pool always large enough, so this never differs);
//   - token ids at or above the tokenizer's size hash as the pad token.
#ifndef DSV4_TESTS_NAIVE_V41_H_
#define DSV4_TESTS_NAIVE_V41_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <numeric>
#include <set>
#include <string>
#include <vector>

#include "core/engram_hash.h"
#include "core/model_config.h"
#include "core/safetensors.h"
#include "gtest/gtest.h"
#include "tests/naive_v4.h"

namespace dsv4::naive {

// RoPE frequencies as the official precompute_freqs_cis: YaRN when original > 0, with the
// ramp denominator max(high − low, 1e-3).
inline std::vector<float> RopeFreqsV41(int r, double base, double factor, int64_t original,
                                       double beta_fast, double beta_slow) {
  std::vector<float> f(r / 2);
  for (int i = 0; i < r / 2; ++i) {
    f[i] = static_cast<float>(1.0 / std::pow(base, static_cast<double>(2 * i) / r));
  }
  if (original <= 0) return f;
  auto corrected = [&](double rotations) {
    return r * std::log(original / (rotations * 2 * M_PI)) / (2 * std::log(base));
  };
  const double low = std::max(std::floor(corrected(beta_fast)), 0.0);
  const double high = std::min(std::ceil(corrected(beta_slow)), r - 1.0);
  for (int i = 0; i < r / 2; ++i) {
    const double ramp = std::clamp((i - low) / std::max(high - low, 1e-3), 0.0, 1.0);
    f[i] = static_cast<float>(f[i] / factor * ramp + f[i] * (1 - ramp));
  }
  return f;
}

// The smallest prime > start that is not in `seen` (trial division: the tiny presets'
// tables are small, and the test never builds the release-size layout).
inline int64_t NextUnusedPrime(int64_t start, const std::set<int64_t>& seen) {
  auto is_prime = [](int64_t v) {
    if (v < 2) return false;
    for (int64_t q = 2; q * q <= v; ++q) {
      if (v % q == 0) return false;
    }
    return true;
  };
  int64_t c = start + 1;
  while (!is_prime(c) || seen.count(c)) ++c;
  return c;
}

// Indices of `score` in descending score order, ties to the lower index, keeping only
// finite scores, at most k of them.
inline std::vector<int64_t> TopFinite(const std::vector<double>& score, int64_t k) {
  std::vector<int64_t> idx;
  for (int64_t i = 0; i < static_cast<int64_t>(score.size()); ++i) {
    if (std::isfinite(score[i])) idx.push_back(i);
  }
  std::stable_sort(idx.begin(), idx.end(),
                   [&](int64_t a, int64_t b) { return score[a] > score[b]; });
  if (static_cast<int64_t>(idx.size()) > k) idx.resize(k);
  return idx;
}

class NaiveV41 {
 public:
  // `token_map`: the compressed id of every tokenizer id (BuildEngramTokenMap); may be
  // empty for a model without Engram.
  NaiveV41(const ModelConfig& config, Checkpoint* checkpoint, std::vector<int64_t> token_map)
      : c_(config), ck_(checkpoint), comp_(std::move(token_map)) {}

  // Table rows [position][column] of Engram layer index `e` (column (n−2)·K + j).
  std::vector<std::vector<int64_t>> EngramRows(const std::vector<int32_t>& tokens, int e) {
    const EngramConfig& g = c_.engram;
    const int N = g.max_ngram_size, K = g.n_heads;
    BuildPrimes();
    const std::vector<int64_t> mult = EngramMultipliers(g.layer_ids[e], g.compressed_vocab_size, N);
    const int64_t pad = Compressed(static_cast<int32_t>(g.pad_token_id));
    std::vector<std::vector<int64_t>> rows(tokens.size());
    for (int64_t p = 0; p < static_cast<int64_t>(tokens.size()); ++p) {
      std::vector<uint64_t> prod(N);
      bool blocked = false;
      for (int s = 0; s < N; ++s) {
        blocked = blocked || p < s;  // sticky: a blocked look-back blocks every older one
        const int64_t tok = blocked ? pad : Compressed(tokens[p - s]);
        prod[s] = static_cast<uint64_t>(tok) * static_cast<uint64_t>(mult[s]);
      }
      uint64_t rolling = prod[0];
      for (int n = 2; n <= N; ++n) {
        rolling ^= prod[n - 1];
        for (int j = 0; j < K; ++j) {
          const int col = (n - 2) * K + j;
          const uint64_t prime = static_cast<uint64_t>(primes_[e][col]);
          rows[p].push_back(static_cast<int64_t>(rolling % prime) + offsets_[e][col]);
        }
      }
    }
    return rows;
  }

  // The primes of Engram layer index e, column order.
  const std::vector<int64_t>& Primes(int e) {
    BuildPrimes();
    return primes_[e];
  }

  // Logits [T, V] for tokens at positions 0..T−1.
  Vec Forward(const std::vector<int32_t>& tokens) {
    const int64_t T = tokens.size(), d = c_.hidden_size, V = c_.vocab_size;
    const int n = c_.hc_mult;
    selection_.clear();
    pool_.clear();
    entries_.clear();
    index_keys_.clear();
    std::vector<Vec> X(T, Vec(n * d));
    const Vec& embed = W("embed.weight");
    for (int64_t t = 0; t < T; ++t) {
      for (int i = 0; i < n; ++i) std::copy_n(&embed[tokens[t] * d], d, &X[t][i * d]);
    }
    std::vector<Vec> pre(T, Vec(n, 0.0f));
    for (auto& p : pre) p[0] = 1.0f;  // the identity pre-mix: layer 0 reads copy 0
    const std::vector<int>& engram_layers = c_.engram.layer_ids;
    for (int layer = 0; layer < c_.num_hidden_layers; ++layer) {
      const std::string p = "layers." + std::to_string(layer);
      const auto e = std::find(engram_layers.begin(), engram_layers.end(), layer);
      if (e != engram_layers.end()) {
        Engram(layer, static_cast<int>(e - engram_layers.begin()), tokens, &X);
      }
      // Attention: collapse with the lagged pre-mix; this stream's mixes give post/comb
      // here and the FFN's pre-mix.
      std::vector<Vec> y(T), attn_pre(T), attn_post(T), attn_comb(T);
      for (int64_t t = 0; t < T; ++t) {
        Mixes(p + ".hc_attn", X[t], &attn_pre[t], &attn_post[t], &attn_comb[t]);
        y[t] = Collapse(X[t], pre[t]);
        RmsNormInPlace(y[t].data(), d, W(p + ".attn_norm.weight").data(), c_.rms_norm_eps);
      }
      const std::vector<Vec> a = Attention(layer, y);
      for (int64_t t = 0; t < T; ++t) Post(a[t], attn_post[t], attn_comb[t], &X[t]);
      // FFN: collapse with the attention's pre-mix; its mixes give the next pre-mix.
      for (int64_t t = 0; t < T; ++t) {
        Vec ffn_post, ffn_comb;
        Vec ffn_pre;
        Mixes(p + ".hc_ffn", X[t], &ffn_pre, &ffn_post, &ffn_comb);
        Vec z = Collapse(X[t], attn_pre[t]);
        RmsNormInPlace(z.data(), d, W(p + ".ffn_norm.weight").data(), c_.rms_norm_eps);
        Post(Moe(layer, z), ffn_post, ffn_comb, &X[t]);
        pre[t] = ffn_pre;
      }
    }
    Vec logits(T * V);
    for (int64_t t = 0; t < T; ++t) {
      Vec h = Collapse(X[t], pre[t]);
      RmsNormInPlace(h.data(), d, W("norm.weight").data(), c_.rms_norm_eps);
      const Vec l = MatVec(W("head.weight"), V, d, h.data());
      std::copy(l.begin(), l.end(), logits.begin() + t * V);
    }
    return logits;
  }

  // After Forward: the compressed positions index source `layer` selected for query t
  // (ascending), and the number visible to it.
  const std::vector<int64_t>& Selection(int layer, int64_t t) const {
    return selection_.at(layer)[t];
  }
  int64_t Visible(int layer, int64_t t) const { return (t + 1) / c_.ratio(layer); }
  // After Forward: the candidate pool (positions) of the candidate source for query t.
  const std::vector<int64_t>& Pool(int64_t t) const { return pool_.at(t); }

 private:
  const Vec& W(const std::string& name, Fp8Block block) {
    auto it = cache_.find(name);
    if (it != cache_.end()) return it->second;
    absl::StatusOr<Tensor> t = ck_->LoadF32(name, block);
    EXPECT_TRUE(t.ok()) << t.status();
    return cache_[name] = t.ok() ? t->ToVector() : Vec();
  }
  const Vec& W(const std::string& name) {
    const int64_t b = c_.weight_block_size;
    return W(name, {b, b});
  }

  int64_t Compressed(int32_t token) const {
    const int64_t pad_token = c_.engram.pad_token_id;
    if (token >= 0 && token < static_cast<int64_t>(comp_.size())) return comp_[token];
    return comp_.at(pad_token);
  }

  void BuildPrimes() {
    if (!primes_.empty()) return;
    const EngramConfig& g = c_.engram;
    std::set<int64_t> seen;
    for (size_t e = 0; e < g.layer_ids.size(); ++e) {
      std::vector<int64_t> primes, offsets;
      int64_t total = 0;
      for (int o = 0; o + 1 < g.max_ngram_size; ++o) {
        int64_t current = g.vocab_size[o] - 1;
        for (int j = 0; j < g.n_heads; ++j) {
          current = NextUnusedPrime(current, seen);
          seen.insert(current);
          primes.push_back(current);
          offsets.push_back(total);
          total += current;
        }
      }
      primes_.push_back(primes);
      offsets_.push_back(offsets);
    }
  }

  // Official Engram.forward on every stream of every position.
  void Engram(int layer, int e, const std::vector<int32_t>& tokens, std::vector<Vec>* X) {
    const EngramConfig& g = c_.engram;
    const std::string p = "layers." + std::to_string(layer) + ".engram.";
    const int n = c_.hc_mult;
    const int64_t d = c_.hidden_size, de = g.head_dim, C = g.columns();
    const Vec& table = W(p + "embed.weight", {1, 32});
    const Vec& wkv = W(p + "wkv.weight");
    const Vec& qw = W(p + "q_weight");
    const Vec& kw = W(p + "k_weight");
    const std::vector<std::vector<int64_t>> rows = EngramRows(tokens, e);
    for (size_t t = 0; t < tokens.size(); ++t) {
      Vec emb(C * de);
      for (int64_t col = 0; col < C; ++col) {
        std::copy_n(&table[rows[t][col] * de], de, &emb[col * de]);
      }
      const Vec kv = MatVec(wkv, (n + 1) * d, C * de, emb.data());
      const float* value = &kv[n * d];
      Vec& h = (*X)[t];
      for (int i = 0; i < n; ++i) {
        const float* key = &kv[i * d];
        const float* hi = &h[i * d];
        double hh = 0, kk = 0, dot = 0;
        for (int64_t c = 0; c < d; ++c) {
          hh += double(hi[c]) * hi[c];
          kk += double(key[c]) * key[c];
          dot += double(hi[c]) * (double(qw[i * d + c]) * kw[i * d + c]) * key[c];
        }
        const double rstd =
            1.0 / std::sqrt(hh / d + c_.rms_norm_eps) / std::sqrt(kk / d + c_.rms_norm_eps);
        dot = dot * rstd / std::sqrt(double(d));
        const double gate = SigmoidD(std::copysign(std::sqrt(std::max(std::fabs(dot), 1e-6)), dot));
        for (int64_t c = 0; c < d; ++c)
          h[i * d + c] = static_cast<float>(h[i * d + c] + gate * value[c]);
      }
    }
  }

  // hc_mixes + hc_split_sinkhorn of one token's streams.
  void Mixes(const std::string& p, const Vec& x, Vec* pre, Vec* post, Vec* comb) {
    const int n = c_.hc_mult;
    const int64_t d = c_.hidden_size;
    const Vec& base = W(p + "_base");
    const Vec& scale = W(p + "_scale");
    const Vec mix = HcMix(W(p + "_fn"), (2 + n) * n, x.data(), n * d, c_.rms_norm_eps);
    pre->resize(n);
    post->resize(n);
    for (int i = 0; i < n; ++i) {
      (*pre)[i] = static_cast<float>(SigmoidD(mix[i] * scale[0] + base[i]) + c_.hc_eps);
      (*post)[i] = static_cast<float>(2 * SigmoidD(mix[n + i] * scale[1] + base[n + i]));
    }
    std::vector<double> cm(n * n);
    for (int k = 0; k < n * n; ++k) cm[k] = mix[2 * n + k] * scale[2] + base[2 * n + k];
    SinkhornRef(cm, n, c_.hc_sinkhorn_iters, c_.hc_eps);
    comb->assign(cm.begin(), cm.end());
  }

  Vec Collapse(const Vec& x, const Vec& pre) const {
    const int64_t d = c_.hidden_size;
    Vec y(d);
    for (int64_t j = 0; j < d; ++j) {
      double acc = 0;
      for (int i = 0; i < c_.hc_mult; ++i) acc += double(pre[i]) * x[i * d + j];
      y[j] = static_cast<float>(acc);
    }
    return y;
  }

  // out_b = post_b·f + Σ_a comb[a][b]·x_a
  void Post(const Vec& f, const Vec& post, const Vec& comb, Vec* x) const {
    const int n = c_.hc_mult;
    const int64_t d = c_.hidden_size;
    Vec out(n * d);
    for (int b = 0; b < n; ++b) {
      for (int64_t j = 0; j < d; ++j) {
        double v = double(post[b]) * f[j];
        for (int a = 0; a < n; ++a) v += double(comb[a * n + b]) * (*x)[a * d + j];
        out[b * d + j] = static_cast<float>(v);
      }
    }
    *x = out;
  }

  // A kv source's compressed entries (RoPE'd, for attention) and indexer keys, for every
  // complete group of its inputs y.
  void Compress(int layer, const std::vector<Vec>& y, const std::vector<float>& freqs) {
    const std::string p = "layers." + std::to_string(layer) + ".attn.";
    const int64_t T = y.size(), d = c_.hidden_size, D = c_.head_dim, DI = c_.index_head_dim;
    const int m = c_.ratio(layer);
    const int r = c_.qk_rope_head_dim;
    std::vector<Vec> entries, keys;
    for (int64_t j = 0; j < T / m; ++j) {
      Vec latent(D);
      if (m == 1) {
        latent = MatVec(W(p + "compressor.wkv.weight"), D, d, y[j].data());
      } else {
        std::vector<Vec> kv(m), score(m);
        for (int s = 0; s < m; ++s) {
          kv[s] = MatVec(W(p + "compressor.wkv.weight"), D, d, y[j * m + s].data());
          score[s] = MatVec(W(p + "compressor.wgate.weight"), D, d, y[j * m + s].data());
        }
        for (int64_t c = 0; c < D; ++c) {
          double mx = -std::numeric_limits<double>::infinity(), den = 0, num = 0;
          for (int s = 0; s < m; ++s) mx = std::max(mx, double(score[s][c]));
          for (int s = 0; s < m; ++s) {
            const double w = std::exp(score[s][c] - mx);
            den += w;
            num += w * kv[s][c];
          }
          latent[c] = static_cast<float>(num / den);
        }
      }
      RmsNormInPlace(latent.data(), D, W(p + "compressor.norm.weight").data(), c_.rms_norm_eps);
      Vec key = MatVec(W(p + "indexer.wk.weight"), DI, D, latent.data());
      RmsNormInPlace(key.data(), DI, W(p + "indexer.k_norm.weight").data(), c_.rms_norm_eps);
      RopeInPlace(&key[DI - r], freqs, j * m, false);
      RopeInPlace(&latent[D - r], freqs, j * m, false);
      entries.push_back(latent);
      keys.push_back(key);
    }
    entries_[layer] = entries;
    index_keys_[layer] = keys;
  }

  // An index source's selection for every query.
  void Index(int layer, const std::vector<Vec>& y, const std::vector<Vec>& qr,
             const std::vector<float>& freqs) {
    const std::string p = "layers." + std::to_string(layer) + ".attn.indexer.";
    const int64_t T = y.size(), d = c_.hidden_size, DI = c_.index_head_dim;
    const int HI = c_.index_n_heads, m = c_.ratio(layer), r = c_.qk_rope_head_dim;
    const std::vector<Vec>& keys = index_keys_.at(c_.kv_source_of(layer));
    const bool candidate_source = layer == c_.candidate_source_layer;
    const bool uses_candidates = c_.uses_candidates(layer);
    const double weight_scale = 1.0 / std::sqrt(double(DI)) / std::sqrt(double(HI));
    std::vector<std::vector<int64_t>>& sel = selection_[layer];
    sel.assign(T, {});
    if (candidate_source) pool_.assign(T, {});
    for (int64_t t = 0; t < T; ++t) {
      const int64_t visible = (t + 1) / m;
      if (visible == 0) continue;
      Vec q = MatVec(W(p + "wq_b.weight"), HI * DI, c_.q_lora_rank, qr[t].data());
      for (int h = 0; h < HI; ++h) RopeInPlace(&q[h * DI + DI - r], freqs, t, false);
      const Vec w = MatVec(W(p + "weights_proj.weight"), HI, d, y[t].data());
      std::vector<double> score(visible, 0.0);
      for (int64_t j = 0; j < visible; ++j) {
        for (int h = 0; h < HI; ++h) {
          double dot = 0;
          for (int64_t i = 0; i < DI; ++i) dot += double(q[h * DI + i]) * keys[j][i];
          score[j] += double(w[h]) * weight_scale * std::max(dot, 0.0);
        }
      }
      if (candidate_source) {
        const int64_t bs = c_.candidate_block_size;
        const int64_t blocks = (visible + bs - 1) / bs, last = (visible - 1) / bs;
        std::vector<double> block_score(blocks, -std::numeric_limits<double>::infinity());
        for (int64_t j = 0; j < visible; ++j) {
          block_score[j / bs] = std::max(block_score[j / bs], score[j]);
        }
        // The pinned block always takes one of the candidate_topk_blocks places; the
        // others go to the best reachable (finite) blocks.
        block_score[last] = -std::numeric_limits<double>::infinity();
        std::vector<int64_t> kept = TopFinite(block_score, c_.candidate_topk_blocks - 1);
        kept.push_back(last);
        std::sort(kept.begin(), kept.end());
        for (int64_t b : kept) {
          for (int64_t j = b * bs; j < std::min(visible, (b + 1) * bs); ++j) pool_[t].push_back(j);
        }
      } else if (uses_candidates) {
        const std::vector<int64_t>& pool = pool_.at(t);
        std::vector<double> masked(visible, -std::numeric_limits<double>::infinity());
        for (int64_t j : pool) masked[j] = score[j];
        score = masked;
      }
      sel[t] = TopFinite(score, c_.index_topk);
      std::sort(sel[t].begin(), sel[t].end());
    }
  }

  std::vector<Vec> Attention(int layer, const std::vector<Vec>& y) {
    const std::string p = "layers." + std::to_string(layer) + ".attn.";
    const int64_t T = y.size(), d = c_.hidden_size, D = c_.head_dim, Q = c_.q_lora_rank;
    const int H = c_.num_attention_heads, G = c_.o_groups, r = c_.qk_rope_head_dim;
    const int m = c_.ratio(layer);
    const RopeScaling& rs = c_.rope_scaling;
    const std::vector<float> freqs =
        m == 0 ? RopeFreqsV41(r, c_.rope_theta, 1, 0, 1, 1)
               : RopeFreqsV41(r, c_.compress_rope_theta, rs.factor,
                              rs.original_max_position_embeddings, rs.beta_fast, rs.beta_slow);
    std::vector<Vec> q(T), kv(T), qr(T);
    for (int64_t t = 0; t < T; ++t) {
      qr[t] = MatVec(W(p + "wq_a.weight"), Q, d, y[t].data());
      RmsNormInPlace(qr[t].data(), Q, W(p + "q_norm.weight").data(), c_.rms_norm_eps);
      q[t] = MatVec(W(p + "wq_b.weight"), H * D, Q, qr[t].data());  // no per-head norm
      for (int h = 0; h < H; ++h) RopeInPlace(&q[t][h * D + D - r], freqs, t, false);
      kv[t] = MatVec(W(p + "wkv.weight"), D, d, y[t].data());
      RmsNormInPlace(kv[t].data(), D, W(p + "kv_norm.weight").data(), c_.rms_norm_eps);
      RopeInPlace(&kv[t][D - r], freqs, t, false);
    }
    const std::vector<Vec>* entries = nullptr;
    const std::vector<std::vector<int64_t>>* selection = nullptr;
    if (m > 0) {
      if (c_.is_kv_source(layer)) Compress(layer, y, freqs);
      if (c_.is_index_source(layer)) Index(layer, y, qr, freqs);
      entries = &entries_.at(c_.kv_source_of(layer));
      selection = &selection_.at(c_.index_source_of(layer));
    }
    const Vec& sink = W(p + "attn_sink");
    std::vector<Vec> out(T);
    for (int64_t t = 0; t < T; ++t) {
      std::vector<const float*> cand;
      for (int64_t s = std::max<int64_t>(0, t - c_.sliding_window + 1); s <= t; ++s) {
        cand.push_back(kv[s].data());
      }
      if (m > 0) {
        for (int64_t j : (*selection)[t]) {
          EXPECT_LT(j, (t + 1) / m);
          cand.push_back((*entries)[j].data());
        }
      }
      out[t] = AttendAndProject(q[t].data(), cand, sink.data(), H, D, r, freqs, t,
                                W(p + "wo_a.weight"), W(p + "wo_b.weight"), G, c_.o_lora_rank, d);
    }
    return out;
  }

  // Official Expert.forward: w2(weight · SiLU(min(w1 x, L)) · clamp(w3 x, ±L)).
  Vec Expert(const std::string& p, const Vec& x, double weight) {
    const int64_t d = c_.hidden_size, F = c_.moe_intermediate_size;
    const double L = c_.swiglu_limit;
    const Vec g = MatVec(W(p + ".w1.weight"), F, d, x.data());
    const Vec u = MatVec(W(p + ".w3.weight"), F, d, x.data());
    Vec h(F);
    for (int64_t j = 0; j < F; ++j) {
      double gj = g[j], uj = u[j];
      if (L > 0) {
        uj = std::clamp(uj, -L, L);
        gj = std::min(gj, L);
      }
      h[j] = static_cast<float>(weight * (gj * SigmoidD(gj) * uj));
    }
    return MatVec(W(p + ".w2.weight"), d, F, h.data());
  }

  Vec Moe(int layer, const Vec& x) {
    const std::string p = "layers." + std::to_string(layer) + ".ffn";
    const int64_t d = c_.hidden_size;
    const int E = c_.n_routed_experts, k = c_.num_experts_per_tok;
    const Vec logit = MatVec(W(p + ".gate.weight"), E, d, x.data());
    std::vector<double> s(E), biased(E);
    if (c_.scoring_func == "softmax") {
      double mx = -std::numeric_limits<double>::infinity(), sum = 0;
      for (int e = 0; e < E; ++e) mx = std::max(mx, double(logit[e]));
      for (int e = 0; e < E; ++e) sum += (s[e] = std::exp(logit[e] - mx));
      for (double& v : s) v /= sum;
    } else {
      for (int e = 0; e < E; ++e) {
        const double z = logit[e];
        s[e] = c_.scoring_func == "sigmoid" ? SigmoidD(z)
                                            : std::sqrt(z > 20 ? z : std::log1p(std::exp(z)));
      }
    }
    const Vec& bias = W(p + ".gate.bias");
    for (int e = 0; e < E; ++e) biased[e] = s[e] + bias[e];
    const std::vector<int> idx = TopIndices(biased, k);
    double sum = 0;
    for (int j = 0; j < k; ++j) sum += s[idx[j]];
    const double norm = c_.norm_topk_prob && k > 1 ? sum + 1e-20 : 1.0;
    Vec y(d, 0.0f);
    std::vector<double> acc(d, 0.0);
    for (int j = 0; j < k; ++j) {
      const double w = s[idx[j]] / norm * c_.routed_scaling_factor;
      const Vec ye = Expert(p + ".experts." + std::to_string(idx[j]), x, w);
      for (int64_t i = 0; i < d; ++i) acc[i] += ye[i];
    }
    const Vec ys = Expert(p + ".shared_experts", x, 1.0);
    for (int64_t i = 0; i < d; ++i) y[i] = static_cast<float>(acc[i] + ys[i]);
    return y;
  }

  const ModelConfig& c_;
  Checkpoint* ck_;
  std::vector<int64_t> comp_;
  std::map<std::string, Vec> cache_;
  std::vector<std::vector<int64_t>> primes_, offsets_;          // [engram index][column]
  std::map<int, std::vector<Vec>> entries_, index_keys_;        // kv source → [j]
  std::map<int, std::vector<std::vector<int64_t>>> selection_;  // index source → [t]
  std::vector<std::vector<int64_t>> pool_;                      // candidate pool [t]
};

}  // namespace dsv4::naive

#endif  // DSV4_TESTS_NAIVE_V41_H_
