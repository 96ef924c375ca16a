#include "attention_node/attention.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "attention_node/sink_attention.h"
#include "core/matmul.h"
#include "core/status_macros.h"

namespace dsv4 {

RopeParams LayerRopeParams(const ModelConfig& config, int layer) {
  RopeParams params;
  params.dim = static_cast<int>(config.qk_rope_head_dim);
  if (config.ratio(layer) == 0) {
    params.base = config.rope_theta;
    return params;
  }
  params.base = config.compress_rope_theta;
  params.factor = config.rope_scaling.factor;
  params.original_seq_len = config.rope_scaling.original_max_position_embeddings;
  params.beta_fast = config.rope_scaling.beta_fast;
  params.beta_slow = config.rope_scaling.beta_slow;
  return params;
}

absl::StatusOr<Attention> Attention::Load(WeightLoader& loader, const std::string& prefix,
                                          const ModelConfig& config, int layer) {
  Attention a;
  a.heads_ = config.num_attention_heads;
  a.head_dim_ = config.head_dim;
  a.window_ = config.sliding_window;
  a.groups_ = config.o_groups;
  a.o_rank_ = config.o_lora_rank;
  a.ratio_ = config.ratio(layer);
  a.topk_ = config.index_topk;
  a.norm_eps_ = static_cast<float>(config.rms_norm_eps);
  a.v41_ = config.is_v41();
  a.q_head_norm_ = !a.v41_;
  a.index_source_ = config.is_index_source(layer);
  a.candidate_source_ = a.v41_ && layer == config.candidate_source_layer;
  a.uses_candidates_ = config.uses_candidates(layer);
  a.candidate_block_ = config.candidate_block_size;
  a.candidate_topk_blocks_ = config.candidate_topk_blocks;
  a.rope_ = Rope(LayerRopeParams(config, layer));
  const int64_t d = config.hidden_size;
  const int64_t hd = a.heads_ * a.head_dim_;
  const int64_t q = config.q_lora_rank;
  const struct {
    WeightMatrix* dst;
    const char* name;
    int64_t rows, cols;
  } matrices[] = {
      {&a.wq_a_, "wq_a.weight", q, d},
      {&a.wq_b_, "wq_b.weight", hd, q},
      {&a.wkv_, "wkv.weight", a.head_dim_, d},
      {&a.wo_a_, "wo_a.weight", a.groups_ * a.o_rank_, hd / a.groups_},
      {&a.wo_b_, "wo_b.weight", d, a.groups_ * a.o_rank_},
  };
  for (const auto& m : matrices) {
    ASSIGN_OR_RETURN(*m.dst, loader.LoadMatrix(absl::StrCat(prefix, ".", m.name), m.rows, m.cols));
  }
  const struct {
    Tensor* dst;
    const char* name;
    Shape shape;
  } vectors[] = {
      {&a.attn_sink_, "attn_sink", {a.heads_}},
      {&a.q_norm_, "q_norm.weight", {q}},
      {&a.kv_norm_, "kv_norm.weight", {a.head_dim_}},
  };
  for (const auto& t : vectors) {
    ASSIGN_OR_RETURN(*t.dst, loader.Load(absl::StrCat(prefix, ".", t.name), t.shape));
  }
  if (a.ratio_ > 0 && config.kv_source_of(layer) == layer) {
    ASSIGN_OR_RETURN(a.compressor_, Compressor::Load(loader, prefix + ".compressor", config,
                                                     a.ratio_, a.head_dim_, a.rope_));
  }
  if (config.is_csa(layer) || a.index_source_) {
    ASSIGN_OR_RETURN(a.indexer_,
                     Indexer::Load(loader, prefix + ".indexer", config, a.rope_, layer));
  }
  return a;
}

void Attention::Forward(const float* x, int64_t rows, absl::Span<const AttentionSequence> sequences,
                        AttentionWorkspace* ws, float* out) const {
  ws->positions.resize(rows);
  for (const AttentionSequence& s : sequences) {
    for (int64_t i = 0; i < s.rows; ++i) ws->positions[s.row_begin + i] = s.start_pos + i;
  }
  Project(x, rows, ws);
  ws->o.resize(rows * heads_ * head_dim_);
  for (const AttentionSequence& s : sequences) {
    // Compressed entries first: a block completed by a token of this step is visible to it.
    Compress(s, ws);
    if (v41_ && index_source_) SelectV41(s, ws);
    // Queries attend in blocks of consecutive positions (GEMMs over the block); a block much
    // wider than the window would mostly compute masked scores.
    const int64_t block = std::clamp<int64_t>(window_ / 4, 1, 32);
    for (int64_t b = 0; b < s.rows; b += block) {
      AttendBlock(s, b, std::min(block, s.rows - b), ws);
    }
    // The ring keeps the last W positions.
    const int64_t end = s.start_pos + s.rows;
    for (int64_t p = std::max(s.start_pos, end - window_); p < end; ++p) {
      std::memcpy(s.state->window.data() + (p % window_) * head_dim_,
                  ws->kv.data() + (s.row_begin + p - s.start_pos) * head_dim_,
                  head_dim_ * sizeof(float));
    }
  }
  ProjectOutput(rows, ws, out);
}

void Attention::Compress(const AttentionSequence& s, AttentionWorkspace* ws) const {
  for (int64_t i = 0; i < s.rows; ++i) {
    const int64_t row = s.row_begin + i;
    const int64_t pos = s.start_pos + i;
    if (indexer_ && !v41_) {
      const int64_t width = indexer_->compressor().width();
      indexer_->compressor().Push(&s.state->index_compressor, ws->ikv.data() + row * width,
                                  ws->iscore.data() + row * width, pos, &s.state->index_keys);
    }
    if (!compressor_) continue;
    const int64_t width = compressor_->width();
    ws->latent.resize(compressor_->head_dim());
    const bool owns_keys = indexer_ && indexer_->owns_keys();
    const bool done = compressor_->Push(&s.state->compressor, ws->ckv.data() + row * width,
                                        ws->cscore.data() + row * width, pos, &s.state->entries,
                                        owns_keys ? ws->latent.data() : nullptr);
    if (done && owns_keys)
      indexer_->AppendKey(ws->latent.data(), pos + 1 - ratio_, &s.state->index_keys);
  }
}

void Attention::SelectV41(const AttentionSequence& s, AttentionWorkspace* ws) const {
  const int heads = indexer_->heads();
  const int64_t di = indexer_->head_dim();
  ws->selection.resize(ws->positions.size());
  ws->candidates.resize(ws->positions.size());
  for (int64_t i = 0; i < s.rows; ++i) {
    const int64_t row = s.row_begin + i;
    const int64_t visible = (s.start_pos + i + 1) / ratio_;
    if (visible <= topk_) continue;  // every visible entry, and the pool holds them all
    ws->index_scratch.resize(visible);
    float* scores = ws->index_scratch.data();
    indexer_->Scores(ws->iq.data() + row * heads * di, ws->iw.data() + row * heads,
                     s.source->index_keys.data(), visible, scores);
    if (candidate_source_) {
      CandidateBlocks(scores, visible, candidate_block_, candidate_topk_blocks_,
                      &ws->candidates[row]);
    }
    if (uses_candidates_) {  // level two: only inside the candidate source's blocks
      const std::vector<int32_t>& blocks = ws->candidates[row];
      size_t next = 0;
      for (int64_t e = 0; e < visible; ++e) {
        const int64_t block = e / candidate_block_;
        while (next < blocks.size() && blocks[next] < block) ++next;
        if (next == blocks.size() || blocks[next] != block) {
          scores[e] = -std::numeric_limits<float>::infinity();
        }
      }
    }
    indexer_->SelectTop(scores, visible, &ws->selection[row]);
  }
}

void Attention::Project(const float* x, int64_t rows, AttentionWorkspace* ws) const {
  const int h = heads_;
  const int64_t dh = head_dim_;
  const int64_t q_rank = wq_a_.rows;
  const int64_t r = rope_.params().dim;
  ws->qr.resize(rows * q_rank);
  ws->q.resize(rows * h * dh);
  ws->kv.resize(rows * dh);
  float* qr = ws->qr.data();
  float* q = ws->q.data();
  float* kv = ws->kv.data();
  MatMul(x, rows, wq_a_, qr);
  RmsNorm(qr, q_norm_.data(), rows, q_rank, norm_eps_, qr);
  MatMul(qr, rows, wq_b_, q);
  if (q_head_norm_) RmsNorm(q, nullptr, rows * h, dh, norm_eps_, q);
  MatMul(x, rows, wkv_, kv);
  RmsNorm(kv, kv_norm_.data(), rows, dh, norm_eps_, kv);
  for (int64_t t = 0; t < rows; ++t) {
    rope_.ApplyHeads(q + t * h * dh + dh - r, h, dh, ws->positions[t]);
    rope_.Apply(kv + t * dh + dh - r, ws->positions[t]);
  }
  if (compressor_) {
    ws->ckv.resize(rows * compressor_->width());
    ws->cscore.resize(ws->ckv.size());
    compressor_->Project(x, rows, ws->ckv.data(), ws->cscore.data());
  }
  if (indexer_) {
    ws->iq.resize(rows * indexer_->heads() * indexer_->head_dim());
    ws->iw.resize(rows * indexer_->heads());
    indexer_->Project(x, qr, ws->positions.data(), rows, ws->iq.data(), ws->iw.data());
  }
  if (indexer_ && !v41_) {
    ws->ikv.resize(rows * indexer_->compressor().width());
    ws->iscore.resize(ws->ikv.size());
    indexer_->compressor().Project(x, rows, ws->ikv.data(), ws->iscore.data());
  }
}

void Attention::AttendBlock(const AttentionSequence& s, int64_t first_row, int64_t count,
                            AttentionWorkspace* ws) const {
  const int64_t dh = head_dim_;
  const int64_t w = window_;
  const LayerKvState& state = *s.state;
  const int64_t start = s.start_pos;
  const int64_t t0 = start + first_row, t1 = t0 + count - 1;
  // Runs of rows the block shares, with the coordinate of each run's first row (a position
  // for window runs, an entry index for the compressed entries).
  std::vector<KvSegment>& shared = ws->shared;
  std::vector<int64_t>& first = ws->first;
  shared.clear();
  first.clear();
  const int64_t lo = std::max<int64_t>(0, t0 - w + 1);
  for (int64_t p = lo; p < start;) {  // older window positions, from the ring
    const int64_t run = std::min(start - p, w - p % w);
    shared.push_back({state.window.data() + (p % w) * dh, run});
    first.push_back(p);
    p += run;
  }
  const int64_t first_new = std::max(lo, start);  // this step's window positions
  shared.push_back({ws->kv.data() + (s.row_begin + first_new - start) * dh, t1 - first_new + 1});
  first.push_back(first_new);
  const int64_t window_runs = static_cast<int64_t>(shared.size());
  // Compressed entries s < ⌊(t+1)/m⌋: shared, unless the indexer must choose among them.
  const bool select = (indexer_ || v41_) && ratio_ > 0 && (t1 + 1) / ratio_ > topk_;
  if (ratio_ > 0 && !select) {
    shared.push_back({s.source->entries.data(), (t1 + 1) / ratio_});
    first.push_back(0);
  }
  const int64_t runs = static_cast<int64_t>(shared.size());
  ws->ranges.resize(count * runs);
  ws->private_rows.assign(count, KvSegment{});
  if (select) ws->gathered.resize(count * topk_ * dh);
  for (int64_t i = 0; i < count; ++i) {
    const int64_t t = t0 + i;
    for (int64_t r = 0; r < runs; ++r) {
      const int64_t begin = r < window_runs ? std::max<int64_t>(0, t - w + 1) : 0;
      const int64_t end = r < window_runs ? t + 1 : (t + 1) / ratio_;
      ws->ranges[i * runs + r] = {std::clamp(begin - first[r], int64_t{0}, shared[r].count),
                                  std::clamp(end - first[r], int64_t{0}, shared[r].count)};
    }
    if (select) ws->private_rows[i] = SelectEntries(s, first_row + i, i, ws);
  }
  const int64_t row0 = s.row_begin + first_row;
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(dh)));
  AttendWithSink(ws->q.data() + row0 * heads_ * dh, static_cast<int>(count), heads_, dh, shared,
                 ws->ranges, ws->private_rows, attn_sink_.data(), scale,
                 ws->o.data() + row0 * heads_ * dh, &ws->scores);
}

KvSegment Attention::SelectEntries(const AttentionSequence& s, int64_t i, int64_t slot,
                                   AttentionWorkspace* ws) const {
  const std::vector<float>& entries = s.source->entries;
  const int64_t visible = (s.start_pos + i + 1) / ratio_;
  if (visible <= topk_) return {entries.data(), visible};
  const int64_t row = s.row_begin + i;
  if (!v41_) {
    const int heads = indexer_->heads();
    indexer_->Select(ws->iq.data() + row * heads * indexer_->head_dim(),
                     ws->iw.data() + row * heads, s.source->index_keys.data(), visible,
                     &ws->selected, &ws->index_scratch);
  }
  const std::vector<int32_t>& selected = v41_ ? ws->selection[row] : ws->selected;
  float* dst = ws->gathered.data() + slot * topk_ * head_dim_;
  for (size_t j = 0; j < selected.size(); ++j) {
    std::memcpy(dst + j * head_dim_, entries.data() + selected[j] * head_dim_,
                head_dim_ * sizeof(float));
  }
  return {dst, static_cast<int64_t>(selected.size())};
}

void Attention::ProjectOutput(int64_t rows, AttentionWorkspace* ws, float* out) const {
  const int h = heads_;
  const int64_t dh = head_dim_;
  const int64_t r = rope_.params().dim;
  float* o = ws->o.data();
  for (int64_t t = 0; t < rows; ++t) {
    rope_.ApplyHeads(o + t * h * dh + dh - r, h, dh, ws->positions[t], /*inverse=*/true);
  }
  const int64_t group_in = h * dh / groups_;
  const int64_t z_width = groups_ * o_rank_;
  ws->z.resize(rows * z_width);
  for (int64_t g = 0; g < groups_; ++g) {  // z_g = wo_a[g]·o_g: group g's heads only
    MatMul(o + g * group_in, h * dh, rows, wo_a_.Rows(g * o_rank_, o_rank_),
           ws->z.data() + g * o_rank_, z_width);
  }
  MatMul(ws->z.data(), rows, wo_b_, out);
}

}  // namespace dsv4
