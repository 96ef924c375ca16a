#include "core/cost_model.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace dsv4 {
namespace {

constexpr double kBf16Bytes = 2;
constexpr double kF32Bytes = 4;

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

int Idx(ComputeDtype dtype) { return static_cast<int>(dtype); }

// Σ_{x=0}^{n} ⌊x/m⌋ for n ≥ −1: q full blocks of m values, then r values equal to q.
double SumFloorDivUpTo(int64_t n, int64_t m) {
  if (n < 0) return 0;
  const double q = static_cast<double>((n + 1) / m);
  const double r = static_cast<double>(n + 1) - q * m;
  return m * q * (q - 1) / 2 + q * r;
}

// Σ_{x=a}^{b} ⌊x/m⌋ for 0 ≤ a, m ≥ 1 (0 when b < a).
double SumFloorDiv(int64_t a, int64_t b, int64_t m) {
  if (b < a) return 0;
  return SumFloorDivUpTo(b, m) - SumFloorDivUpTo(a - 1, m);
}

// Σ_{x=a}^{b} min(cap, ⌊x/m⌋).
double SumMinFloorDiv(int64_t a, int64_t b, int64_t m, int64_t cap) {
  if (b < a) return 0;
  const int64_t knee = cap * m;  // from here on ⌊x/m⌋ ≥ cap
  if (b < knee) return SumFloorDiv(a, b, m);
  if (a >= knee) return static_cast<double>(cap) * static_cast<double>(b - a + 1);
  return SumFloorDiv(a, knee - 1, m) + static_cast<double>(cap) * static_cast<double>(b - knee + 1);
}

// Bytes of an [rows, cols] dense matrix in the checkpoint's dense format (FP8 with 128×128
// E8M0 block scales, or BF16), and the format it is stored in.
void AddDense(const ModelConfig& c, int64_t rows, int64_t cols, WeightBytesByFormat* w) {
  if (c.fp8_weights) {
    const int64_t b = c.weight_block_size;
    w->bytes[static_cast<int>(StorageFormat::kFp8)] +=
        static_cast<double>(rows * cols + CeilDiv(rows, b) * CeilDiv(cols, b));
  } else {
    w->bytes[static_cast<int>(StorageFormat::kBf16)] += kBf16Bytes * rows * cols;
  }
}

void AddBytes(StorageFormat format, double bytes, WeightBytesByFormat* w) {
  w->bytes[static_cast<int>(format)] += bytes;
}

// The arithmetic of dense-format GEMMs: FP8 weights run with FP8 activations.
ComputeDtype DenseDtype(const ModelConfig& c) {
  return c.fp8_weights ? ComputeDtype::kFp8 : ComputeDtype::kBf16;
}

ComputeDtype ExpertDtype(const ModelConfig& c) {
  return c.expert_dtype == "bf16" ? ComputeDtype::kBf16 : ComputeDtype::kFp8;
}

struct ChunkTotals {
  double tokens = 0;   // Σ count · new_tokens
  double sampled = 0;  // Σ count · sampled_tokens
  double seqs = 0;     // Σ count
};

ChunkTotals Totals(absl::Span<const SequenceChunk> chunks) {
  ChunkTotals t;
  for (const SequenceChunk& ch : chunks) {
    t.tokens += ch.count * static_cast<double>(ch.new_tokens);
    t.sampled += ch.count * static_cast<double>(ch.sampled_tokens);
    t.seqs += ch.count;
  }
  return t;
}

// Σ over the chunk's new positions p of f(p + 1), the number of positions visible.
// Each helper takes the chunk's first and last visible-length x = p + 1.
struct VisibleRange {
  int64_t first;  // context + 1
  int64_t last;   // context + new_tokens
};
VisibleRange Visible(const SequenceChunk& ch) {
  return {ch.context + 1, ch.context + ch.new_tokens};
}

// mHC (V4) or plain residual adds (V3) of both sub-layers, plus the RMSNorms that follow.
void AddMhc(const ModelConfig& c, double tokens, StepCost* cost) {
  WorkCounters& w = cost->at(CostComponent::kMhc);
  const double d = static_cast<double>(c.hidden_size);
  if (c.is_v4()) {
    const double n = c.hc_mult, mix = c.mix_dim();
    // Per sub-layer: fn projection (F32), pre-mix, post-mix; X read twice and written once
    // (bf16), y written, f read, the norm reading and writing y.
    const double flops = 2 * mix * n * d + 2 * n * d + 2 * n * (n + 1) * d;
    w.flops[Idx(ComputeDtype::kFp32)] += 2 * tokens * flops;
    w.activation_bytes += 2 * tokens * kBf16Bytes * (3 * n * d + 4 * d);
    w.weight_bytes += 2 * kF32Bytes * (mix * n * d + mix + 3);
  } else {
    w.flops[Idx(ComputeDtype::kBf16)] += 2 * tokens * 2 * d;
    w.activation_bytes += 2 * tokens * kBf16Bytes * 5 * d;
  }
}

void AddV4Attention(const ModelConfig& c, int layer, absl::Span<const SequenceChunk> chunks,
                    const CostOptions& o, StepCost* cost) {
  const ChunkTotals t = Totals(chunks);
  const double d = c.hidden_size, H = c.num_attention_heads, D = c.head_dim;
  const double Q = c.q_lora_rank, G = c.o_groups, R = c.o_lora_rank;
  const ComputeDtype dense = DenseDtype(c);
  const int m = c.ratio(layer);

  WorkCounters& proj = cost->at(CostComponent::kAttentionProjections);
  proj.flops[Idx(dense)] += t.tokens * 2 * (d * Q + Q * H * D + d * D + G * R * d);
  proj.flops[Idx(ComputeDtype::kBf16)] += t.tokens * 2 * H * D * R;  // wo_a, BF16
  proj.activation_bytes +=
      t.tokens * kBf16Bytes * ((d + Q) + (Q + H * D) + (d + D) + (H * D + G * R) + (G * R + d));

  const double entry = static_cast<double>(CompressedEntryBytes(c, o.kv));
  const double key = static_cast<double>(IndexKeyBytes(c, o.kv));
  const int64_t W = c.sliding_window;
  WorkCounters& core = cost->at(CostComponent::kCoreAttention);
  double entries_attended = 0;  // Σ over queries of visible entries
  for (const SequenceChunk& ch : chunks) {
    const VisibleRange x = Visible(ch);
    const double T = static_cast<double>(ch.new_tokens);
    // Window: min(W, x) raw entries per query, read once per chunk (shared by its queries)
    // and T new entries written.
    double per_query = SumMinFloorDiv(x.first, x.last, 1, W);
    double read = static_cast<double>(std::min<int64_t>(W, ch.context)) + T;
    double written = T;
    if (m == 4) {
      // CSA: each query gathers its own top-k compressed entries (no reuse across queries).
      const double selected = SumMinFloorDiv(x.first, x.last, 4, c.index_topk);
      per_query += selected;
      read += selected;
    } else if (m > 0) {
      // HCA: all completed blocks, read once per chunk.
      per_query += SumFloorDiv(x.first, x.last, m);
      read += static_cast<double>(x.last / m);
    }
    if (m > 0) written += static_cast<double>(x.last / m - ch.context / m);
    entries_attended += ch.count * per_query;
    core.kv_bytes += ch.count * entry * (read + written);
  }
  core.flops[Idx(o.attention_dtype)] += entries_attended * 4 * H * D;  // QK and PV, all heads
  core.activation_bytes += t.tokens * kBf16Bytes * 2 * H * D;          // q in, o out

  if (m <= 0) return;
  const double cw = (m == 4 ? 2 : 1);  // overlapping compressor width factor
  WorkCounters& comp = cost->at(CostComponent::kCompressor);
  comp.flops[Idx(ComputeDtype::kBf16)] += t.tokens * 2 * 2 * d * cw * D;  // wkv, wgate
  // a_t and g_t (F32) written to the state and read back when the block is pooled.
  comp.activation_bytes += t.tokens * (kBf16Bytes * d + 2 * 2 * kF32Bytes * cw * D);

  if (m != 4) return;
  const double HI = c.index_n_heads, DI = c.index_head_dim;
  WorkCounters& idx = cost->at(CostComponent::kIndexer);
  idx.flops[Idx(dense)] += t.tokens * 2 * Q * HI * DI;  // wq_b
  idx.flops[Idx(ComputeDtype::kBf16)] +=
      t.tokens * 2 * (d * HI + 2 * d * 2 * DI);  // weights_proj, compressor
  idx.activation_bytes += t.tokens * (kBf16Bytes * (Q + HI * DI + HI) + 2 * 2 * kF32Bytes * 2 * DI);
  WorkCounters& scores = cost->at(CostComponent::kIndexerScores);
  double keys_scored = 0;
  for (const SequenceChunk& ch : chunks) {
    const VisibleRange x = Visible(ch);
    keys_scored += ch.count * SumFloorDiv(x.first, x.last, 4);
    // Keys read once per chunk (every query scores all of them), new keys written.
    const int64_t keys = x.last / 4;
    scores.kv_bytes += ch.count * key * static_cast<double>(keys + keys - ch.context / 4);
  }
  scores.flops[Idx(o.index_score_dtype)] += keys_scored * (2 * HI * DI + 2 * HI);
}

// V4.1's CSA2 attention (spec deepseek-v41-model.md §6): every layer attends its window plus,
// when m > 0, the top-k entries of its kv source's compressed cache (one shared cache per
// source, read by the layers after it). Only kv sources run the compressor (wkv, and wgate
// when m > 1; no overlap, no APE) and the indexer's wk/k_norm on each new compressed latent;
// only index sources run an indexer query (wq_b, weights_proj) and score keys: the candidate
// source scores every key and keeps candidate_topk_blocks blocks of candidate_block_size,
// later index sources score only inside that pool; the other layers reuse the nearest index
// source's selection. The query has no per-head RMS rescale.
void AddV41Attention(const ModelConfig& c, int layer, absl::Span<const SequenceChunk> chunks,
                     const CostOptions& o, StepCost* cost) {
  const ChunkTotals t = Totals(chunks);
  const double d = c.hidden_size, H = c.num_attention_heads, D = c.head_dim;
  const double Q = c.q_lora_rank, G = c.o_groups, R = c.o_lora_rank;
  const ComputeDtype dense = DenseDtype(c);

  WorkCounters& proj = cost->at(CostComponent::kAttentionProjections);
  proj.flops[Idx(dense)] += t.tokens * 2 * (d * Q + Q * H * D + d * D + G * R * d);
  proj.flops[Idx(ComputeDtype::kBf16)] += t.tokens * 2 * H * D * R;  // wo_a, BF16
  proj.activation_bytes +=
      t.tokens * kBf16Bytes * ((d + Q) + (Q + H * D) + (d + D) + (H * D + G * R) + (G * R + d));

  const int source = c.kv_source_of(layer);  // -1: window only
  const int m = source >= 0 ? c.ratio(source) : 0;
  const bool kv_source = source == layer;
  const double window_entry = static_cast<double>(WindowEntryBytes(c, o.kv));
  const double entry = static_cast<double>(CompressedEntryBytes(c, o.kv));
  const double key = static_cast<double>(IndexKeyBytes(c, o.kv));
  const int64_t W = c.sliding_window;
  WorkCounters& core = cost->at(CostComponent::kCoreAttention);
  double entries_attended = 0;
  double new_entries = 0;  // compressed latents this layer produces (kv sources)
  for (const SequenceChunk& ch : chunks) {
    const VisibleRange x = Visible(ch);
    const double T = static_cast<double>(ch.new_tokens);
    double per_query = SumMinFloorDiv(x.first, x.last, 1, W);
    double bytes = window_entry * (static_cast<double>(std::min<int64_t>(W, ch.context)) + 2 * T);
    if (m > 0) {
      // Each query gathers its own top-k entries of the source's cache.
      const double selected = SumMinFloorDiv(x.first, x.last, m, c.index_topk);
      per_query += selected;
      bytes += entry * selected;
      if (kv_source) {
        const double produced = static_cast<double>(x.last / m - ch.context / m);
        bytes += entry * produced;
        new_entries += ch.count * produced;
      }
    }
    entries_attended += ch.count * per_query;
    core.kv_bytes += ch.count * bytes;
  }
  core.flops[Idx(o.attention_dtype)] += entries_attended * 4 * H * D;
  core.activation_bytes += t.tokens * kBf16Bytes * 2 * H * D;

  const double HI = c.index_n_heads, DI = c.index_head_dim;
  if (kv_source && m > 0) {
    const double projections = m > 1 ? 2 : 1;  // wkv (+ wgate when pooling)
    WorkCounters& comp = cost->at(CostComponent::kCompressor);
    comp.flops[Idx(ComputeDtype::kBf16)] += t.tokens * 2 * projections * d * D;
    comp.activation_bytes += t.tokens * (kBf16Bytes * d + (m > 1 ? 2 * 2 * kF32Bytes * D : 0));
    // The indexer's keys: wk [DI, D] and k_norm on each new latent.
    WorkCounters& idx = cost->at(CostComponent::kIndexer);
    idx.flops[Idx(ComputeDtype::kBf16)] += new_entries * 2 * D * DI;
    idx.activation_bytes += new_entries * kBf16Bytes * (D + DI);
  }
  if (!c.is_index_source(layer) || m <= 0) return;
  WorkCounters& idx = cost->at(CostComponent::kIndexer);
  idx.flops[Idx(dense)] += t.tokens * 2 * Q * HI * DI;           // wq_b
  idx.flops[Idx(ComputeDtype::kBf16)] += t.tokens * 2 * d * HI;  // weights_proj
  idx.activation_bytes += t.tokens * kBf16Bytes * (Q + HI * DI + HI);
  const bool pooled = c.uses_candidates(layer);
  const bool candidate_source = c.candidate_source_layer == layer;
  const int64_t pool = c.candidate_topk_blocks * c.candidate_block_size;
  WorkCounters& scores = cost->at(CostComponent::kIndexerScores);
  double keys_scored = 0, block_keys = 0;
  for (const SequenceChunk& ch : chunks) {
    const VisibleRange x = Visible(ch);
    const int64_t keys = x.last / m;
    double read = static_cast<double>(keys);  // every key once per chunk
    if (pooled) {
      keys_scored += ch.count * SumMinFloorDiv(x.first, x.last, m, pool);
      read = std::min(read, static_cast<double>(pool) * static_cast<double>(ch.new_tokens));
    } else {
      keys_scored += ch.count * SumFloorDiv(x.first, x.last, m);
    }
    if (candidate_source) block_keys += ch.count * SumFloorDiv(x.first, x.last, m);
    // New keys are written by the kv source that owns them.
    if (kv_source) read += static_cast<double>(keys - ch.context / m);
    scores.kv_bytes += ch.count * key * read;
  }
  scores.flops[Idx(o.index_score_dtype)] += keys_scored * (2 * HI * DI + 2 * HI);
  // The candidate source's block maxima and block top-k: about one comparison per key.
  scores.flops[Idx(ComputeDtype::kFp32)] += block_keys;
}

void AddV3Attention(const ModelConfig& c, absl::Span<const SequenceChunk> chunks,
                    const CostOptions& o, StepCost* cost) {
  const ChunkTotals t = Totals(chunks);
  const double d = c.hidden_size, H = c.num_attention_heads, Q = c.q_lora_rank;
  const double nope = c.qk_nope_head_dim, rope = c.qk_rope_head_dim, v = c.v_head_dim;
  const double kvr = c.kv_lora_rank;
  const ComputeDtype dense = DenseDtype(c);
  const double entry = (kvr + rope) * o.v3_kv_element_bytes;

  WorkCounters& proj = cost->at(CostComponent::kAttentionProjections);
  WorkCounters& core = cost->at(CostComponent::kCoreAttention);
  proj.flops[Idx(dense)] +=
      t.tokens * 2 * (d * Q + Q * H * (nope + rope) + d * (kvr + rope) + H * v * d);
  proj.activation_bytes +=
      t.tokens * kBf16Bytes * ((d + Q) + (Q + H * (nope + rope)) + (d + kvr + rope) + (H * v + d));
  for (const SequenceChunk& ch : chunks) {
    const double T = static_cast<double>(ch.new_tokens);
    const double ctx = static_cast<double>(ch.context) + T;  // entries after the chunk
    const double attended = SumFloorDiv(ch.context + 1, ch.context + ch.new_tokens, 1);  // Σ (p+1)
    // Absorbed MLA attends over the latents directly (decode); the non-absorbed form
    // first up-projects every visible latent through kv_b (prefill). Take the cheaper.
    const double absorbed_proj = T * 2 * H * (nope * kvr + kvr * v);
    const double absorbed_core = attended * 2 * H * (2 * kvr + rope);
    const double expanded_proj = ctx * 2 * kvr * H * (nope + v);
    const double expanded_core = attended * 2 * H * (nope + rope + v);
    if (absorbed_proj + absorbed_core <= expanded_proj + expanded_core) {
      proj.flops[Idx(dense)] += ch.count * absorbed_proj;
      core.flops[Idx(o.attention_dtype)] += ch.count * absorbed_core;
      core.kv_bytes += ch.count * entry * (ctx + T);
    } else {
      proj.flops[Idx(dense)] += ch.count * expanded_proj;
      core.flops[Idx(o.attention_dtype)] += ch.count * expanded_core;
      // Latents read, expanded K and V written and read back once.
      core.kv_bytes +=
          ch.count * (entry * (ctx + T) + 2 * kBf16Bytes * ctx * H * (nope + rope + v));
    }
  }
  core.activation_bytes += t.tokens * kBf16Bytes * H * (nope + rope + v);
}

void AddFfn(const ModelConfig& c, int layer, double tokens, StepCost* cost) {
  const double d = c.hidden_size;
  const ComputeDtype dense = DenseDtype(c);
  if (!IsMoeLayer(c, layer)) {
    const double I = c.intermediate_size;
    WorkCounters& ffn = cost->at(CostComponent::kDenseFfn);
    ffn.flops[Idx(dense)] += tokens * 2 * 3 * d * I;
    ffn.activation_bytes += tokens * kBf16Bytes * (2 * d + 3 * I);
    return;
  }
  const double E = c.routed_experts(layer), F = c.moe_intermediate_size;
  WorkCounters& router = cost->at(CostComponent::kRouter);
  router.flops[Idx(ComputeDtype::kBf16)] += tokens * 2 * d * E;
  router.activation_bytes += tokens * (kBf16Bytes * d + kF32Bytes * E);
  WorkCounters& shared = cost->at(CostComponent::kSharedExpert);
  shared.flops[Idx(dense)] += tokens * c.n_shared_experts * 2 * 3 * d * F;
  shared.activation_bytes += tokens * c.n_shared_experts * kBf16Bytes * (2 * d + 3 * F);
}

// Attention-rank weights of a layer by component, in the order the builders charge them.
struct LayerWeightSplit {
  double mhc = 0, attention = 0, compressor = 0, indexer = 0, router = 0, ffn = 0, engram = 0,
         head = 0;
};

bool IsEngramLayer(const ModelConfig& c, int layer) {
  const std::vector<int>& ids = c.engram.layer_ids;
  return std::find(ids.begin(), ids.end(), layer) != ids.end();
}

// Width of the concatenated lookup e_t: (N−1)·K columns of d_e.
int64_t EngramWidth(const ModelConfig& c) {
  return static_cast<int64_t>(c.engram.columns()) * c.engram.head_dim;
}

// Weights of a layer, split by component and by format.
LayerWeightSplit SplitLayerWeights(const ModelConfig& c, int layer,
                                   WeightBytesByFormat* by_format) {
  LayerWeightSplit s;
  WeightBytesByFormat w;
  const int64_t d = c.hidden_size, H = c.num_attention_heads, Q = c.q_lora_rank;
  auto take = [&](double* slot) {  // moves what was added since the last call into `slot`
    const double total = w.total();
    *slot += total;
    *by_format += w;
    w = WeightBytesByFormat{};
  };
  if (c.is_v4()) {
    const int64_t n = c.hc_mult, mix = c.mix_dim();
    AddBytes(StorageFormat::kFp32, 2 * kF32Bytes * (mix * n * d + mix + 3), &w);
    AddBytes(StorageFormat::kBf16, 2 * kBf16Bytes * d, &w);  // attn_norm, ffn_norm
    take(&s.mhc);
    const int64_t D = c.head_dim, G = c.o_groups, R = c.o_lora_rank;
    AddBytes(StorageFormat::kFp32, kF32Bytes * H, &w);  // attn_sink
    AddDense(c, Q, d, &w);
    AddDense(c, H * D, Q, &w);
    AddDense(c, D, d, &w);
    AddBytes(StorageFormat::kBf16, kBf16Bytes * (Q + D), &w);  // q_norm, kv_norm
    // wo_a is released in the dense format (the official converter widens it to BF16; the
    // runtime keeps it as released and computes on the same exact values).
    AddDense(c, G * R, H * D / G, &w);
    AddDense(c, d, G * R, &w);
    take(&s.attention);
    const int m = c.ratio(layer);
    if (c.is_v41()) {
      // CSA2 by role: a kv source's compressor (wkv, wgate when m > 1, norm; BF16, no APE)
      // and the indexer's key half (wk [DI, D], k_norm); an index source's query half.
      const int64_t HI = c.index_n_heads, DI = c.index_head_dim;
      if (c.is_kv_source(layer)) {
        AddBytes(StorageFormat::kBf16, kBf16Bytes * ((m > 1 ? 2 : 1) * D * d + D), &w);
      }
      take(&s.compressor);
      if (c.is_kv_source(layer)) AddBytes(StorageFormat::kBf16, kBf16Bytes * (DI * D + DI), &w);
      if (c.is_index_source(layer)) {
        AddDense(c, HI * DI, Q, &w);
        AddBytes(StorageFormat::kBf16, kBf16Bytes * HI * d, &w);  // weights_proj
      }
      take(&s.indexer);
    }
    auto compressor = [&](int64_t dim) {
      const int64_t width = (m == 4 ? 2 : 1) * dim;
      AddBytes(StorageFormat::kFp32, kF32Bytes * m * width, &w);  // ape
      AddBytes(StorageFormat::kBf16, kBf16Bytes * (2 * width * d + dim), &w);
    };
    if (m > 0 && !c.is_v41()) compressor(D);
    take(&s.compressor);
    if (m == 4 && !c.is_v41()) {
      const int64_t HI = c.index_n_heads, DI = c.index_head_dim;
      AddDense(c, HI * DI, Q, &w);
      AddBytes(StorageFormat::kBf16, kBf16Bytes * HI * d, &w);
      compressor(DI);
    }
    take(&s.indexer);
  } else {
    const int64_t nope = c.qk_nope_head_dim, rope = c.qk_rope_head_dim, v = c.v_head_dim;
    const int64_t kvr = c.kv_lora_rank;
    AddBytes(StorageFormat::kBf16, 2 * kBf16Bytes * d, &w);  // the two layer norms
    take(&s.mhc);
    AddDense(c, Q, d, &w);
    AddDense(c, H * (nope + rope), Q, &w);
    AddDense(c, kvr + rope, d, &w);
    AddDense(c, H * (nope + v), kvr, &w);
    AddDense(c, d, H * v, &w);
    AddBytes(StorageFormat::kBf16, kBf16Bytes * (Q + kvr), &w);  // q_a and kv_a norms
    take(&s.attention);
  }
  if (IsMoeLayer(c, layer)) {
    const int64_t E = c.routed_experts(layer);
    AddBytes(StorageFormat::kBf16, kBf16Bytes * E * d, &w);  // gate
    if (c.is_hash_layer(layer)) {
      AddBytes(StorageFormat::kInt, 8.0 * c.vocab_size * c.num_experts_per_tok, &w);  // tid2eid
    } else {
      AddBytes(StorageFormat::kFp32, kF32Bytes * E, &w);  // bias
    }
    take(&s.router);
    w += SharedExpertWeights(c);
  } else {
    const int64_t I = c.intermediate_size;
    AddDense(c, I, d, &w);
    AddDense(c, d, I, &w);
    AddDense(c, I, d, &w);
  }
  take(&s.ffn);
  if (IsEngramLayer(c, layer)) {
    const int64_t width = EngramWidth(c), n = c.hc_mult;
    // The fused key/value projection wkv [(n+1)·d, width] in the dense format and the gate
    // weights q_weight, k_weight [n, d] BF16. The table lives on the memory nodes.
    AddDense(c, (1 + n) * d, width, &w);
    AddBytes(StorageFormat::kBf16, kBf16Bytes * 2 * n * d, &w);
    take(&s.engram);
  }
  if (c.is_mtp(layer) && c.is_v41()) {
    // DSpark: main_proj [d, d·targets] and main_norm on stage 0; the last stage's norm,
    // Markov head (embed and head [V, r]) and confidence head [1, d + r], all BF16 but
    // main_proj.
    const int stage = layer - c.num_hidden_layers;
    const int64_t V = c.vocab_size, r = c.dspark_markov_rank;
    if (stage == 0) {
      AddDense(c, d, d * static_cast<int64_t>(c.dspark_target_layer_ids.size()), &w);
      AddBytes(StorageFormat::kBf16, kBf16Bytes * d, &w);
    }
    if (stage == c.num_nextn_predict_layers - 1) {
      AddBytes(StorageFormat::kBf16, kBf16Bytes * (d + 2 * V * r + d + r), &w);
    }
    take(&s.head);
  } else if (c.is_mtp(layer) && c.is_v4()) {
    AddDense(c, d, d, &w);  // e_proj
    AddDense(c, d, d, &w);  // h_proj
    const int64_t n = c.hc_mult;
    AddBytes(StorageFormat::kBf16, 3 * kBf16Bytes * d, &w);  // enorm, hnorm, norm
    AddBytes(StorageFormat::kFp32, kF32Bytes * (n * n * d + n + 1), &w);
    take(&s.head);
  }
  return s;
}

}  // namespace

std::string_view CostComponentName(CostComponent component) {
  switch (component) {
    case CostComponent::kEmbedding:
      return "embedding";
    case CostComponent::kMhc:
      return "mhc";
    case CostComponent::kAttentionProjections:
      return "attention_projections";
    case CostComponent::kCompressor:
      return "compressor";
    case CostComponent::kIndexer:
      return "indexer";
    case CostComponent::kIndexerScores:
      return "indexer_scores";
    case CostComponent::kCoreAttention:
      return "core_attention";
    case CostComponent::kRouter:
      return "router";
    case CostComponent::kSharedExpert:
      return "shared_expert";
    case CostComponent::kDenseFfn:
      return "dense_ffn";
    case CostComponent::kRoutedExperts:
      return "routed_experts";
    case CostComponent::kEngram:
      return "engram";
    case CostComponent::kHead:
      return "head";
  }
  return "?";
}

OpClass ComponentOpClass(CostComponent component) {
  return component == CostComponent::kCoreAttention || component == CostComponent::kIndexerScores
             ? OpClass::kAttention
             : OpClass::kGemm;
}

bool IsExpertSide(CostComponent component) { return component == CostComponent::kRoutedExperts; }

std::string_view BottleneckName(Bottleneck b) {
  switch (b) {
    case Bottleneck::kCompute:
      return "compute";
    case Bottleneck::kHbm:
      return "hbm";
    case Bottleneck::kIntraNodeLinks:
      return "intra_node_links";
    case Bottleneck::kIntraSupernodeLinks:
      return "intra_supernode_links";
    case Bottleneck::kCrossSupernodeLinks:
      return "cross_supernode_links";
    case Bottleneck::kLinkLatency:
      return "link_latency";
    case Bottleneck::kEngram:
      return "engram";
    case Bottleneck::kKernelFloor:
      return "kernel_floor";
  }
  return "?";
}

std::string_view StorageFormatName(StorageFormat format) {
  switch (format) {
    case StorageFormat::kFp32:
      return "fp32";
    case StorageFormat::kBf16:
      return "bf16";
    case StorageFormat::kFp8:
      return "fp8";
    case StorageFormat::kFp4:
      return "fp4";
    case StorageFormat::kInt:
      return "int";
  }
  return "?";
}

double WorkCounters::total_flops() const {
  double sum = 0;
  for (double f : flops) sum += f;
  return sum;
}

WorkCounters& WorkCounters::operator+=(const WorkCounters& other) {
  for (int i = 0; i < kNumComputeDtypes; ++i) flops[i] += other.flops[i];
  weight_bytes += other.weight_bytes;
  kv_bytes += other.kv_bytes;
  activation_bytes += other.activation_bytes;
  kernels += other.kernels;
  return *this;
}

WorkCounters& WorkCounters::operator*=(double factor) {
  for (double& f : flops) f *= factor;
  weight_bytes *= factor;
  kv_bytes *= factor;
  activation_bytes *= factor;
  kernels *= factor;
  return *this;
}

ExchangeCounters& ExchangeCounters::operator+=(const ExchangeCounters& other) {
  for (int i = 0; i < kNumLinkClasses; ++i) bytes[i] += other.bytes[i];
  exchanges += other.exchanges;
  hops = std::max(hops, other.hops);
  return *this;
}

ExchangeCounters& ExchangeCounters::operator*=(double factor) {
  for (double& b : bytes) b *= factor;
  exchanges *= factor;
  return *this;
}

double StepCost::total_flops() const {
  double sum = 0;
  for (const WorkCounters& w : work) sum += w.total_flops();
  return sum;
}

double StepCost::hbm_bytes() const {
  double sum = 0;
  for (const WorkCounters& w : work) sum += w.hbm_bytes();
  return sum;
}

StepCost& StepCost::operator+=(const StepCost& other) {
  for (int i = 0; i < kNumCostComponents; ++i) work[i] += other.work[i];
  dispatch += other.dispatch;
  combine += other.combine;
  engram_bytes += other.engram_bytes;
  engram_fetches += other.engram_fetches;
  engram_hide_fraction = std::max(engram_hide_fraction, other.engram_hide_fraction);
  micro_batches = std::max(micro_batches, other.micro_batches);
  colocated = colocated || other.colocated;
  expert_rank = expert_rank || other.expert_rank;
  eager = eager || other.eager;
  exchange_takes_compute = exchange_takes_compute && other.exchange_takes_compute;
  return *this;
}

StepCost& StepCost::operator*=(double factor) {
  for (WorkCounters& w : work) w *= factor;
  dispatch *= factor;
  combine *= factor;
  engram_bytes *= factor;
  engram_fetches *= factor;
  return *this;
}

double WeightBytesByFormat::total() const {
  double sum = 0;
  for (double b : bytes) sum += b;
  return sum;
}

WeightBytesByFormat& WeightBytesByFormat::operator+=(const WeightBytesByFormat& other) {
  for (int i = 0; i < kNumStorageFormats; ++i) bytes[i] += other.bytes[i];
  return *this;
}

WeightBytesByFormat& WeightBytesByFormat::operator*=(double factor) {
  for (double& b : bytes) b *= factor;
  return *this;
}

bool IsMoeLayer(const ModelConfig& config, int layer) {
  return config.is_v4() || config.is_mtp(layer) || layer >= config.first_k_dense_replace;
}

WeightBytesByFormat AttentionLayerWeights(const ModelConfig& config, int layer) {
  WeightBytesByFormat w;
  SplitLayerWeights(config, layer, &w);
  return w;
}

WeightBytesByFormat RoutedExpertWeights(const ModelConfig& config) {
  const int64_t d = config.hidden_size, F = config.moe_intermediate_size;
  WeightBytesByFormat w;
  if (config.expert_dtype == "fp4") {
    // Two FP4 codes per byte plus one E8M0 scale per 32 inputs, for w1, w3 ([F, d]) and w2.
    AddBytes(StorageFormat::kFp4,
             static_cast<double>(2 * (F * d / 2 + F * d / 32) + (d * F / 2 + d * F / 32)), &w);
  } else if (config.expert_dtype == "fp8") {
    const int64_t b = config.weight_block_size;
    AddBytes(StorageFormat::kFp8,
             static_cast<double>(3 * F * d + 2 * CeilDiv(F, b) * CeilDiv(d, b) +
                                 CeilDiv(d, b) * CeilDiv(F, b)),
             &w);
  } else {
    AddBytes(StorageFormat::kBf16, kBf16Bytes * 3 * F * d, &w);
  }
  return w;
}

WeightBytesByFormat SharedExpertWeights(const ModelConfig& config) {
  WeightBytesByFormat w;
  const int64_t d = config.hidden_size, F = config.moe_intermediate_size;
  for (int i = 0; i < config.n_shared_experts; ++i) {
    AddDense(config, F, d, &w);
    AddDense(config, d, F, &w);
    AddDense(config, F, d, &w);
  }
  return w;
}

WeightBytesByFormat EdgeWeights(const ModelConfig& config) {
  const double d = config.hidden_size, V = config.vocab_size;
  WeightBytesByFormat w;
  AddBytes(StorageFormat::kBf16, kBf16Bytes * (2 * V * d + d), &w);  // embed, head, norm
  if (config.is_v4() && !config.is_v41()) {                          // hc_head (V4.1 has none)
    const double n = config.hc_mult;
    AddBytes(StorageFormat::kFp32, kF32Bytes * (n * n * d + n + 1), &w);
  }
  return w;
}

WeightBytesByFormat EngramTableWeights(const ModelConfig& config, int layer) {
  WeightBytesByFormat w;
  const std::vector<int>& ids = config.engram.layer_ids;
  const auto it = std::find(ids.begin(), ids.end(), layer);
  if (it == ids.end()) return w;
  const double rows = static_cast<double>(config.engram.num_embeddings[it - ids.begin()]);
  AddBytes(StorageFormat::kFp8, rows * EngramRecordBytes(config), &w);
  return w;
}

namespace {

// Kernel launches per layer of each component (CostComponent order), counted from the
// official inference code's calls, fused where it fuses: the embedding gather; mHC pre and
// post of both sub-layers; wq_a, q norm, wq_b, wkv, kv norm with RoPE, wo_a, wo_b and the
// output reshuffle; compressor GEMM and pooling; indexer wq_b, weights_proj and keys;
// index scores and top-k; sparse attention; gate GEMM and top-k; w13, SwiGLU, w2 (shared,
// dense and grouped routed experts alike); Engram wkv, gate and add; final norm, head and
// sampling.
constexpr std::array<double, kNumCostComponents> kKernelsPerLayer = {1, 4, 8, 2, 3, 2, 1,
                                                                     2, 3, 3, 3, 3, 3};

// Sets the kernel count of every component that has work (one layer's, or one step's edges).
void CountKernels(StepCost* cost) {
  for (int i = 0; i < kNumCostComponents; ++i) {
    WorkCounters& w = cost->work[i];
    if (w.total_flops() > 0 || w.hbm_bytes() > 0) w.kernels = kKernelsPerLayer[i];
  }
}

}  // namespace

StepCost AttentionLayerCost(const ModelConfig& config, int layer,
                            absl::Span<const SequenceChunk> chunks, const CostOptions& options) {
  StepCost cost;
  const ChunkTotals t = Totals(chunks);
  if (t.tokens <= 0) return cost;
  WeightBytesByFormat unused;
  const LayerWeightSplit weights = SplitLayerWeights(config, layer, &unused);
  AddMhc(config, t.tokens, &cost);
  if (config.is_v41()) {
    AddV41Attention(config, layer, chunks, options, &cost);
  } else if (config.is_v4()) {
    AddV4Attention(config, layer, chunks, options, &cost);
  } else {
    AddV3Attention(config, chunks, options, &cost);
  }
  AddFfn(config, layer, t.tokens, &cost);
  cost.at(CostComponent::kMhc).weight_bytes = weights.mhc;
  cost.at(CostComponent::kAttentionProjections).weight_bytes = weights.attention;
  cost.at(CostComponent::kCompressor).weight_bytes = weights.compressor;
  cost.at(CostComponent::kIndexer).weight_bytes = weights.indexer;
  cost.at(CostComponent::kRouter).weight_bytes = weights.router;
  cost.at(IsMoeLayer(config, layer) ? CostComponent::kSharedExpert : CostComponent::kDenseFfn)
      .weight_bytes = weights.ffn;

  if (IsEngramLayer(config, layer)) {
    // The released module: the (N−1)·K looked-up rows dequantised into e_t, the fused FP8
    // wkv [(n+1)·d, width] (FP8 activations), then per stream the normalised q⊙k-weighted
    // dot product, signed-sqrt sigmoid gate and h_i += g_i·v (fp32, about 8 flops per value).
    const double width = static_cast<double>(EngramWidth(config)), d = config.hidden_size,
                 n = config.hc_mult;
    WorkCounters& engram = cost.at(CostComponent::kEngram);
    engram.flops[Idx(DenseDtype(config))] += t.tokens * 2 * (1 + n) * d * width;
    engram.flops[Idx(ComputeDtype::kFp32)] += t.tokens * 8 * n * d;
    // e_t and kv (bf16), the streams read and written (bf16).
    engram.activation_bytes += t.tokens * kBf16Bytes * (width + (1 + n) * d + 2 * n * d);
    engram.weight_bytes = weights.engram;
    cost.engram_bytes += t.tokens * EngramBytesPerToken(config);
    cost.engram_fetches += 1;
    cost.engram_hide_fraction = EngramHideFraction(config);
  }
  CountKernels(&cost);
  if (config.is_mtp(layer) && config.is_v4() && !config.is_v41()) {
    // MTP: e_proj and h_proj on each token, then the shared head on its predictions.
    const double d = config.hidden_size;
    WorkCounters& head = cost.at(CostComponent::kHead);
    head.flops[Idx(DenseDtype(config))] += t.tokens * 2 * 2 * d * d;
    head.activation_bytes += t.tokens * kBf16Bytes * 4 * d;
    head.weight_bytes = weights.head;
    StepCost edge = EdgeCost(config, chunks);
    edge.at(CostComponent::kEmbedding) = WorkCounters{};  // MTP reuses the main embedding rows
    cost += edge;
  }
  return cost;
}

StepCost RoutedExpertCost(const ModelConfig& config, double token_expert_pairs,
                          double local_experts) {
  StepCost cost;
  if (token_expert_pairs <= 0 || local_experts <= 0) return cost;
  const double d = config.hidden_size, F = config.moe_intermediate_size;
  WorkCounters& w = cost.at(CostComponent::kRoutedExperts);
  w.flops[Idx(ExpertDtype(config))] += token_expert_pairs * 2 * 3 * d * F;
  // FP8 tokens in, w1/w3 outputs and h (bf16), bf16 outputs.
  w.activation_bytes += token_expert_pairs * (d + kBf16Bytes * (3 * F + d));
  const double hit =
      local_experts <= 1
          ? local_experts
          : local_experts * (1 - std::pow(1 - 1 / local_experts, token_expert_pairs));
  w.weight_bytes += std::min(hit, token_expert_pairs) * RoutedExpertWeights(config).total();
  CountKernels(&cost);
  return cost;
}

StepCost EdgeCost(const ModelConfig& config, absl::Span<const SequenceChunk> chunks) {
  StepCost cost;
  const ChunkTotals t = Totals(chunks);
  const double d = config.hidden_size, V = config.vocab_size;
  const double n = config.is_v4() ? config.hc_mult : 1;
  WorkCounters& embed = cost.at(CostComponent::kEmbedding);
  embed.weight_bytes += t.tokens * kBf16Bytes * d;  // one row per token
  embed.activation_bytes += t.tokens * kBf16Bytes * n * d;
  CountKernels(&cost);
  if (t.sampled <= 0) return cost;
  WorkCounters& head = cost.at(CostComponent::kHead);
  // V4's hc_head mixes the streams with its own projection; V4.1 collapses them with the
  // last FFN's lagged pre-mix (n·d flops, no weights).
  const bool hc_head = config.is_v4() && !config.is_v41();
  head.flops[Idx(ComputeDtype::kBf16)] += t.sampled * 2 * d * V;
  head.flops[Idx(ComputeDtype::kFp32)] += t.sampled * (hc_head ? 2 * n * n * d : 2 * n * d);
  head.activation_bytes += t.sampled * (kBf16Bytes * (n + 2) * d + kF32Bytes * V);
  head.weight_bytes += kBf16Bytes * (V * d + d) + (hc_head ? kF32Bytes * n * n * d : 0);
  CountKernels(&cost);
  return cost;
}

StepCost LayerCost(const ModelConfig& config, int layer, absl::Span<const SequenceChunk> chunks,
                   const CostOptions& options) {
  StepCost cost = AttentionLayerCost(config, layer, chunks, options);
  if (IsMoeLayer(config, layer)) {
    // DSpark stages route over their own bank (dspark_n_routed_experts, top dspark_k).
    const bool dspark = config.is_mtp(layer) && config.dspark_num_experts_per_tok > 0;
    const int k = dspark ? config.dspark_num_experts_per_tok : config.num_experts_per_tok;
    cost += RoutedExpertCost(config, Totals(chunks).tokens * k, config.routed_experts(layer));
  }
  return cost;
}

double SequenceStateBytes(const ModelConfig& config, const CostOptions& options,
                          int64_t positions) {
  if (config.is_v4()) return static_cast<double>(SequenceKvBytes(config, options.kv, positions));
  return static_cast<double>(positions) * config.num_hidden_layers *
         (config.kv_lora_rank + config.qk_rope_head_dim) * options.v3_kv_element_bytes;
}

double DispatchBytesPerCopy(const ModelConfig& config) {
  const int64_t d = config.hidden_size;
  return static_cast<double>(d + 4 * CeilDiv(d, 128) + 8 * config.num_experts_per_tok);
}

double CombineBytesPerCopy(const ModelConfig& config) { return kBf16Bytes * config.hidden_size; }

double ProbabilityHit(const ModelConfig& config, double experts) {
  const double E = config.n_routed_experts;
  const int k = config.num_experts_per_tok;
  if (experts >= E) return 1;
  if (experts <= 0) return 0;
  // P(none of k draws without replacement from n lands among x specific experts).
  auto miss = [k](double n, double x) {
    double p = 1;
    for (int i = 0; i < k; ++i) p *= std::max(0.0, (n - x - i) / (n - i));
    return p;
  };
  const int groups = config.n_group, picked = config.topk_group;
  if (groups <= 1 || picked >= groups) return 1 - miss(E, experts);
  const double per_group = E / groups;
  if (experts >= per_group) {
    // Whole groups: hit when one of them is among the `picked` selected groups.
    const double whole = experts / per_group;
    double p = 1;
    for (int i = 0; i < picked; ++i) p *= std::max(0.0, (groups - whole - i) / (groups - i));
    return 1 - p;
  }
  // Part of one group: the group must be selected, then one of the k experts drawn from
  // the selected groups' experts must land on these.
  return static_cast<double>(picked) / groups * (1 - miss(picked * per_group, experts));
}

void AddAllToAllCost(const ModelConfig& config, double tokens, const ExpertGeometry& g,
                     StepCost* cost) {
  const double e = config.n_routed_experts / g.expert_ranks;  // logical experts per rank
  const double p_rank = ProbabilityHit(config, e);
  const double self = g.sender_is_expert ? 1 : 0;
  const double in_node = std::max(0.0, g.same_node - self);
  const double in_supernode = std::max(0.0, g.same_supernode - g.same_node);
  const double outside = std::max(0.0, g.expert_ranks - g.same_supernode);
  std::array<double, kNumLinkClasses> copies{};
  int hops = 1;
  if (!g.hierarchical) {
    copies[0] = p_rank * in_node;
    copies[1] = p_rank * in_supernode;
    copies[2] = p_rank * outside;
  } else {
    // One copy per destination supernode, relayed there to each destination node, then
    // to each destination rank; relay sends are charged to the sender (by symmetry every
    // rank relays as much as it has relayed for it).
    const double rpn = std::max(1.0, g.ranks_per_node);
    const double rps = std::max(1.0, g.ranks_per_supernode);
    const double p_node = ProbabilityHit(config, e * rpn);
    const double p_sn = ProbabilityHit(config, e * rps);
    copies[2] = p_sn * outside / rps;
    const double relayed_nodes = p_sn > 0 ? copies[2] * (rps / rpn - 1) * p_node / p_sn : 0;
    copies[1] = p_node * in_supernode / rpn + relayed_nodes;
    const double node_arrivals = copies[1] + (p_sn > 0 ? copies[2] * p_node / p_sn : 0);
    copies[0] = p_rank * in_node + (p_node > 0 ? node_arrivals * (rpn - 1) * p_rank / p_node : 0);
    hops = outside > 0 || in_supernode > 0 ? 2 : 1;
  }
  const double dispatch = DispatchBytesPerCopy(config), combine = CombineBytesPerCopy(config);
  for (int c = 0; c < kNumLinkClasses; ++c) {
    cost->dispatch.bytes[c] += tokens * copies[c] * dispatch;
    cost->combine.bytes[c] += tokens * copies[c] * combine;
  }
  cost->dispatch.exchanges += 1;
  cost->combine.exchanges += 1;
  cost->dispatch.hops = std::max(cost->dispatch.hops, hops);
  cost->combine.hops = std::max(cost->combine.hops, hops);
}

ExpertGeometry ExpertGeometryOf(const Topology& topology, int sender, bool hierarchical) {
  ExpertGeometry g;
  const int experts = topology.num_expert_ranks();
  const ChipPosition& self = topology.rank_position(sender);
  for (int r = topology.num_attention_ranks(); r < topology.num_ranks(); ++r) {
    const ChipPosition& p = topology.rank_position(r);
    if (p.global_node == self.global_node) g.same_node += 1;
    if (p.supernode == self.supernode) g.same_supernode += 1;
  }
  g.expert_ranks = experts;
  g.ranks_per_node = static_cast<double>(experts) / topology.num_expert_nodes();
  g.ranks_per_supernode = static_cast<double>(experts) / topology.num_expert_supernodes();
  g.sender_is_expert = topology.role(sender) == RankRole::kExpert;
  g.hierarchical = hierarchical;
  return g;
}

double EngramHideFraction(const ModelConfig& config) {
  if (!config.engram.enabled()) return 0;
  const int first =
      *std::min_element(config.engram.layer_ids.begin(), config.engram.layer_ids.end());
  return static_cast<double>(first) / config.num_hidden_layers;
}

double EngramRecordBytes(const ModelConfig& config) {
  const int64_t de = config.engram.head_dim;
  return static_cast<double>(de + CeilDiv(de, 32));
}

double EngramBytesPerToken(const ModelConfig& config) {
  if (!config.engram.enabled()) return 0;
  return config.engram.columns() * EngramRecordBytes(config);
}

double EngramTableBytes(const ModelConfig& config) {
  double rows = 0;
  if (!config.engram.enabled()) return 0;
  for (int64_t r : config.engram.num_embeddings) rows += static_cast<double>(r);
  return rows * EngramRecordBytes(config);
}

double EngramRamPerMemoryNode(const ModelConfig& config, int memory_nodes, int replication) {
  if (memory_nodes <= 0) return 0;
  return EngramTableBytes(config) * std::max(1, replication) / memory_nodes;
}

double EngramLookupBytesPerSecond(const ModelConfig& config, double tokens_per_s) {
  return EngramBytesPerToken(config) * static_cast<double>(config.engram.layer_ids.size()) *
         tokens_per_s;
}

RankTime RankModelledTime(const StepCost& cost, const HardwareSpec& hw,
                          const std::array<LinkSpec, kNumLinkClasses>& links,
                          const EngramPath& engram) {
  RankTime t;
  const double hbm = hw.AchievableHbmBandwidth();
  const double floor = (cost.eager ? hw.kernel_floor_eager : hw.kernel_floor_graph).value;
  // While micro-batches overlap an all-to-all, its kernels hold part of the compute units.
  const bool overlapped = cost.micro_batches > 1 && cost.exchange_takes_compute &&
                          (cost.dispatch.exchanges > 0 || cost.combine.exchanges > 0);
  const double compute_share = overlapped ? 1 - hw.compute_lost_to_communication.value : 1;
  for (int i = 0; i < kNumCostComponents; ++i) {
    const WorkCounters& w = cost.work[i];
    const CostComponent component = static_cast<CostComponent>(i);
    double flop_time = 0;
    for (int dt = 0; dt < kNumComputeDtypes; ++dt) {
      if (w.flops[dt] > 0) {
        flop_time += w.flops[dt] /
                     hw.AchievableFlops(static_cast<ComputeDtype>(dt), ComponentOpClass(component));
      }
    }
    const double mem_time = w.hbm_bytes() / hbm;
    const double kernel_time = w.kernels * floor;
    const double time = std::max({flop_time, mem_time, kernel_time}) / compute_share;
    t.component[i] = time;
    (cost.expert_rank || IsExpertSide(component) ? t.expert_compute : t.attention_compute) += time;
    if (kernel_time > std::max(flop_time, mem_time)) {
      t.kernel_bound += time;
    } else {
      (flop_time >= mem_time ? t.compute_bound : t.hbm_bound) += time;
    }
  }
  const double eff = hw.Efficiency(OpClass::kAllToAll).value;
  auto exchange_time = [&](const ExchangeCounters& x, double call_overhead) {
    std::array<double, kNumLinkClasses> seconds{};
    std::array<double, kNumLinkClasses> used_latency{};
    for (int c = 0; c < kNumLinkClasses; ++c) {
      if (x.bytes[c] <= 0) continue;
      seconds[c] = x.bytes[c] / (links[c].bandwidth * eff);
      t.link[c] += seconds[c];
      used_latency[c] = links[c].latency;
    }
    // Intra-node and intra-supernode traffic share the scale-up port; cross-supernode
    // traffic uses the scale-out NIC in parallel.
    const double bandwidth_time = std::max(seconds[0] + seconds[1], seconds[2]);
    std::sort(used_latency.begin(), used_latency.end(), std::greater<>());
    double hop_latency = used_latency[0];
    if (x.hops > 1) hop_latency += used_latency[1];
    const double latency = x.exchanges * (hop_latency + call_overhead);
    t.latency += latency;
    return bandwidth_time + latency;
  };
  t.dispatch = exchange_time(cost.dispatch, hw.dispatch_overhead.value);
  t.combine = exchange_time(cost.combine, hw.combine_overhead.value);
  if (cost.engram_bytes > 0 && engram.bandwidth > 0) {
    t.engram = cost.engram_bytes / engram.bandwidth + cost.engram_fetches * engram.latency;
    t.engram_exposed = std::max(0.0, t.engram - cost.engram_hide_fraction * t.compute());
  }
  return t;
}

StepCost WithExchangeBytes(StepCost cost, const std::array<double, kNumLinkClasses>& dispatch,
                           const std::array<double, kNumLinkClasses>& combine) {
  cost.dispatch.bytes = dispatch;
  cost.combine.bytes = combine;
  return cost;
}

StepTime ModelledTime(absl::Span<const StepCost> ranks, const HardwareSpec& hw,
                      const std::array<LinkSpec, kNumLinkClasses>& links,
                      const EngramPath& engram) {
  StepTime out;
  RankTime& s = out.stages;
  double busiest_compute = 0, busiest_port = 0;
  int micro_batches = 1;
  for (const StepCost& cost : ranks) {
    const RankTime t = RankModelledTime(cost, hw, links, engram);
    for (int i = 0; i < kNumCostComponents; ++i)
      s.component[i] = std::max(s.component[i], t.component[i]);
    for (int c = 0; c < kNumLinkClasses; ++c) s.link[c] = std::max(s.link[c], t.link[c]);
    s.attention_compute = std::max(s.attention_compute, t.attention_compute);
    s.expert_compute = std::max(s.expert_compute, t.expert_compute);
    s.compute_bound = std::max(s.compute_bound, t.compute_bound);
    s.hbm_bound = std::max(s.hbm_bound, t.hbm_bound);
    s.kernel_bound = std::max(s.kernel_bound, t.kernel_bound);
    s.dispatch = std::max(s.dispatch, t.dispatch);
    s.combine = std::max(s.combine, t.combine);
    s.latency = std::max(s.latency, t.latency);
    s.engram = std::max(s.engram, t.engram);
    s.engram_exposed = std::max(s.engram_exposed, t.engram_exposed);
    busiest_compute = std::max(busiest_compute, t.compute());
    // A co-located rank sends (and receives) both exchanges; a rank with one role sends
    // one exchange and receives the other, in opposite directions of a duplex port.
    busiest_port = std::max(
        busiest_port, cost.colocated ? t.dispatch + t.combine : std::max(t.dispatch, t.combine));
    micro_batches = std::max(micro_batches, cost.micro_batches);
  }
  const double loop = s.attention_compute + s.dispatch + s.expert_compute + s.combine;
  out.total = std::max({busiest_compute, busiest_port, loop / micro_batches}) + s.engram_exposed;
  out.busy = {s.compute_bound, s.hbm_bound, s.link[0],        s.link[1],
              s.link[2],       s.latency,   s.engram_exposed, s.kernel_bound};
  out.binding = static_cast<Bottleneck>(std::max_element(out.busy.begin(), out.busy.end()) -
                                        out.busy.begin());
  return out;
}

}  // namespace dsv4
