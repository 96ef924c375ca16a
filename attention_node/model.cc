#include "attention_node/model.h"

#include <algorithm>
#include <cstring>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/kernels.h"
#include "core/matmul.h"
#include "core/status_macros.h"
#include "core/weight_loader.h"

namespace dsv4 {
namespace {

// The config properties the forward pass relies on, beyond what parsing checks.
absl::Status CheckConfig(const ModelConfig& c) {
  auto bad = [&](const std::string& what) {
    return absl::InvalidArgumentError(absl::StrCat(c.source, ": ", what));
  };
  if (!c.is_v4()) {
    return bad(
        absl::StrCat("model_type \"", c.model_type, "\" is not deepseek_v4 or deepseek_v41"));
  }
  if (c.vocab_size <= 0 || c.hidden_size <= 0 || c.num_hidden_layers <= 0 ||
      c.num_attention_heads <= 0 || c.head_dim <= 0 || c.q_lora_rank <= 0 || c.o_lora_rank <= 0 ||
      c.sliding_window <= 0 || c.n_routed_experts <= 0 || c.moe_intermediate_size <= 0 ||
      c.hc_mult <= 0 || c.hc_sinkhorn_iters <= 0) {
    return bad("vocab, hidden, layer, head, rank, window, expert and hc sizes must be positive");
  }
  if (c.qk_rope_head_dim <= 0 || c.qk_rope_head_dim % 2 != 0 || c.qk_rope_head_dim > c.head_dim) {
    return bad(absl::StrCat("qk_rope_head_dim ", c.qk_rope_head_dim,
                            " must be even and in (0, head_dim]"));
  }
  if (c.o_groups <= 0 || c.num_attention_heads % c.o_groups != 0) {
    return bad(absl::StrCat("num_attention_heads ", c.num_attention_heads,
                            " must be a multiple of o_groups ", c.o_groups));
  }
  if (c.num_experts_per_tok <= 0 || c.num_experts_per_tok > c.n_routed_experts) {
    return bad(absl::StrCat("num_experts_per_tok ", c.num_experts_per_tok, " must be in [1, ",
                            c.n_routed_experts, "]"));
  }
  if (c.n_shared_experts != 1) return bad("n_shared_experts must be 1");
  const size_t layers = static_cast<size_t>(c.num_hidden_layers + c.num_nextn_predict_layers);
  if (c.compress_ratios.size() < layers) {
    return bad(absl::StrCat("compress_ratios has ", c.compress_ratios.size(), " entries, expected ",
                            layers));
  }
  for (size_t i = 0; i < layers; ++i) {
    if (c.compress_ratios[i] < 0) return bad("compress_ratios entries must be ≥ 0");
    if ((c.is_csa(static_cast<int>(i)) || c.is_index_source(static_cast<int>(i))) &&
        (c.index_n_heads <= 0 || c.index_head_dim < c.qk_rope_head_dim || c.index_topk <= 0)) {
      return bad(
          "layers with an indexer need index_n_heads > 0, index_topk > 0 and index_head_dim ≥ "
          "qk_rope_head_dim");
    }
  }
  // The RoPE kernels need a base above 1 and positive YaRN betas.
  if (!(c.rope_theta > 1) || !(c.compress_rope_theta > 1)) {
    return bad("rope_theta and compress_rope_theta must be > 1");
  }
  if (c.rope_scaling.original_max_position_embeddings > 0 &&
      !(c.rope_scaling.beta_fast > 0 && c.rope_scaling.beta_slow > 0)) {
    return bad("rope_scaling.beta_fast and beta_slow must be > 0");
  }
  return ParseScoreFunc(c.scoring_func).status();
}

absl::Status OutOfOrder(const char* stage, int layer) {
  return absl::FailedPreconditionError(
      absl::StrCat(stage, "(layer ", layer, ") called out of order for this step"));
}

}  // namespace

absl::StatusOr<Model::Block> Model::LoadBlock(WeightLoader& loader, const std::string& prefix,
                                              const ModelConfig& config, int layer) {
  const int64_t d = config.hidden_size;
  ASSIGN_OR_RETURN(HyperConnection hc_attn,
                   HyperConnection::Load(loader, prefix + ".hc_attn", config));
  ASSIGN_OR_RETURN(HyperConnection hc_ffn,
                   HyperConnection::Load(loader, prefix + ".hc_ffn", config));
  ASSIGN_OR_RETURN(Tensor attn_norm, loader.Load(prefix + ".attn_norm.weight", {d}));
  ASSIGN_OR_RETURN(Tensor ffn_norm, loader.Load(prefix + ".ffn_norm.weight", {d}));
  ASSIGN_OR_RETURN(Attention attn, Attention::Load(loader, prefix + ".attn", config, layer));
  ASSIGN_OR_RETURN(Router gate,
                   Router::Load(loader, prefix + ".ffn.gate", config, config.is_hash_layer(layer)));
  ASSIGN_OR_RETURN(SwigluWeights shared, LoadSwiglu(loader, prefix + ".ffn.shared_experts", d,
                                                    config.moe_intermediate_size));
  return Block{std::move(hc_attn), std::move(hc_ffn), std::move(attn_norm), std::move(ffn_norm),
               std::move(attn),    std::move(gate),   std::move(shared)};
}

absl::StatusOr<Model::MtpBlock> Model::LoadMtp(WeightLoader& loader, const ModelConfig& config,
                                               int index) {
  const std::string prefix = absl::StrCat("mtp.", index);
  const int64_t d = config.hidden_size;
  ASSIGN_OR_RETURN(Block block,
                   LoadBlock(loader, prefix, config, config.num_hidden_layers + index));
  ASSIGN_OR_RETURN(WeightMatrix e_proj, loader.LoadMatrix(prefix + ".e_proj.weight", d, d));
  ASSIGN_OR_RETURN(WeightMatrix h_proj, loader.LoadMatrix(prefix + ".h_proj.weight", d, d));
  std::vector<Tensor> w;
  for (const char* name : {"enorm.weight", "hnorm.weight", "norm.weight"}) {
    ASSIGN_OR_RETURN(Tensor t, loader.Load(absl::StrCat(prefix, ".", name), {d}));
    w.push_back(std::move(t));
  }
  ASSIGN_OR_RETURN(HcHead hc_head, HcHead::Load(loader, prefix + ".hc_head", config));
  return MtpBlock{std::move(block),  e_proj,          h_proj,
                  std::move(w[0]),   std::move(w[1]), std::move(w[2]),
                  std::move(hc_head)};
}

absl::StatusOr<std::unique_ptr<Model>> Model::Load(const ModelConfig& config,
                                                   Checkpoint* checkpoint,
                                                   const ModelOptions& options) {
  RETURN_IF_ERROR(CheckConfig(config));
  const int64_t limit = config.max_position_embeddings;
  if (options.max_seq_len < 0 || (limit > 0 && options.max_seq_len > limit)) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_seq_len ", options.max_seq_len,
                     " must be in [0, max_position_embeddings = ", limit, "]"));
  }
  WeightLoader loader(checkpoint, config.weight_block_size);
  const int64_t v = config.vocab_size;
  const int64_t d = config.hidden_size;
  std::unique_ptr<Model> model(new Model(config));
  if (!config.is_v41()) {
    ASSIGN_OR_RETURN(model->hc_head_, HcHead::Load(loader, "hc_head", config));
  }
  model->max_seq_len_ = options.max_seq_len > 0 ? options.max_seq_len : limit;
  ASSIGN_OR_RETURN(model->embed_, loader.LoadMatrix("embed.weight", v, d));
  ASSIGN_OR_RETURN(model->head_, loader.LoadMatrix("head.weight", v, d));
  ASSIGN_OR_RETURN(model->norm_, loader.Load("norm.weight", {d}));
  for (int layer = 0; layer < config.num_hidden_layers; ++layer) {
    ASSIGN_OR_RETURN(Block block, LoadBlock(loader, absl::StrCat("layers.", layer), config, layer));
    model->layers_.push_back(std::move(block));
  }
  const WeightBytes main_bytes = loader.bytes();
  if (options.load_mtp && !config.is_v41()) {
    for (int i = 0; i < config.num_nextn_predict_layers; ++i) {
      ASSIGN_OR_RETURN(MtpBlock mtp, LoadMtp(loader, config, i));
      model->mtp_.push_back(std::move(mtp));
    }
  }
  model->weight_bytes_ = loader.bytes();
  model->mtp_weight_bytes_ = {loader.bytes().released - main_bytes.released,
                              loader.bytes().resident - main_bytes.resident};
  model->mappings_ = loader.mappings();
  if (config.engram.enabled()) {
    ASSIGN_OR_RETURN(model->engram_, EngramModule::Load(config, checkpoint, options.engram_rows));
    model->weight_bytes_ += model->engram_->weight_bytes();
  }
  return model;
}

absl::StatusOr<Step> Model::BeginStep(absl::Span<const StepInput> inputs) const {
  if (inputs.empty()) return absl::InvalidArgumentError("a step needs at least one sequence");
  Step step;
  step.row_begin_.push_back(0);
  std::set<const SequenceState*> seen;
  for (size_t i = 0; i < inputs.size(); ++i) {
    const StepInput& in = inputs[i];
    if (in.state == nullptr || in.state->num_layers() != config_.num_hidden_layers) {
      return absl::InvalidArgumentError(
          absl::StrCat("sequence ", i, ": missing state, or a state of another model"));
    }
    if (!seen.insert(in.state).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("sequence ", i, ": the same state appears twice in one step"));
    }
    if (in.tokens.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("sequence ", i, ": no tokens"));
    }
    const int64_t end = in.state->position() + static_cast<int64_t>(in.tokens.size());
    if (max_seq_len_ > 0 && end > max_seq_len_) {
      return absl::OutOfRangeError(absl::StrCat(
          "sequence ", i, ": length ", end, " exceeds the maximum of ", max_seq_len_, " tokens"));
    }
    for (size_t j = 0; j < in.tokens.size(); ++j) {
      if (in.tokens[j] < 0 || in.tokens[j] >= config_.vocab_size) {
        return absl::InvalidArgumentError(absl::StrCat("sequence ", i, ": token id ", in.tokens[j],
                                                       " at index ", j, " is outside [0, ",
                                                       config_.vocab_size, ")"));
      }
      if (in.tokens[j] == config_.image_token_id) {
        return absl::InvalidArgumentError(
            absl::StrCat("sequence ", i, ": token ", j, " is the image token ",
                         config_.image_token_id, "; this runtime serves text only"));
      }
    }
    step.states_.push_back(in.state);
    step.start_pos_.push_back(in.state->position());
    step.tokens_.insert(step.tokens_.end(), in.tokens.begin(), in.tokens.end());
    step.row_begin_.push_back(static_cast<int64_t>(step.tokens_.size()));
  }
  const int n = config_.hc_mult;
  const int64_t d = config_.hidden_size;
  if (config_.is_v41()) {  // the first attention collapses onto stream 0
    step.pre_.assign(step.rows() * n, 0.0f);
    for (int64_t t = 0; t < step.rows(); ++t) step.pre_[t * n] = 1.0f;
  }
  step.x_ = Tensor({step.rows(), n, d});
  for (int64_t t = 0; t < step.rows(); ++t) {
    float* x = step.x_.data() + t * n * d;
    embed_.DecodeRow(step.tokens_[t], x);
    for (int i = 1; i < n; ++i) std::memcpy(x + i * d, x, d * sizeof(float));
  }
  // Engram rows depend only on tokens: fetch them now, overlapping the layers before.
  if (engram_) step.engram_fetch_ = engram_->Begin(EngramSegments(step));
  return step;
}

std::vector<EngramModule::Segment> Model::EngramSegments(const Step& step) const {
  std::vector<EngramModule::Segment> segments;
  for (int i = 0; i < step.num_sequences(); ++i) {
    segments.push_back({&step.states_[i]->engram(),
                        step.tokens().subspan(step.row_begin(i), step.sequence_rows(i)),
                        step.row_begin(i)});
  }
  return segments;
}

absl::Status Model::AttentionStage(int layer, Step* step, RoutedTokens* routed) const {
  if (step->finished_ || step->moe_pending_ || layer != step->next_layer_) {
    return OutOfOrder("AttentionStage", layer);
  }
  const Block& b = layers_[layer];
  const int64_t rows = step->rows();
  const int n = config_.hc_mult;
  const int64_t d = config_.hidden_size;
  const float eps = static_cast<float>(config_.rms_norm_eps);
  float* x = step->x_.data();
  // Engram: X ← X + Y on every stream, before the attention's hc_pre.
  if (engram_ && engram_->is_engram_layer(layer)) {
    RETURN_IF_ERROR(engram_->Apply(layer, step->engram_fetch_.get(), EngramSegments(*step), x));
  }

  std::vector<float>& y = step->attn_in_;
  std::vector<float>& post = step->attn_post_;
  std::vector<float>& comb = step->attn_comb_;
  std::vector<float>& attn_out = step->attn_out_;
  y.resize(rows * d);
  post.resize(rows * n);
  comb.resize(rows * n * n);
  attn_out.resize(rows * d);
  const bool lagged = config_.is_v41();
  if (lagged) {
    step->attn_pre_.resize(rows * n);
    b.hc_attn.Mixes(x, rows, step->attn_pre_.data(), post.data(), comb.data());
    HyperConnection::Collapse(x, step->pre_.data(), rows, n, d, y.data());
  } else {
    b.hc_attn.Pre(x, rows, y.data(), post.data(), comb.data());
  }
  RmsNorm(y.data(), b.attn_norm.data(), rows, d, eps, y.data());
  std::vector<AttentionSequence> sequences(step->num_sequences());
  const int source = config_.kv_source_of(layer);
  for (int i = 0; i < step->num_sequences(); ++i) {
    sequences[i] = {step->row_begin(i), step->sequence_rows(i), step->start_pos(i),
                    &step->states_[i]->layer(layer),
                    source >= 0 ? &step->states_[i]->layer(source) : nullptr};
  }
  b.attn.Forward(y.data(), rows, sequences, &step->attention_workspace_, attn_out.data());
  HyperConnection::Post(attn_out.data(), post.data(), comb.data(), rows, n, d, x);

  if (step->ffn_in_.shape() != Shape{rows, d}) step->ffn_in_ = Tensor({rows, d});
  step->post_.resize(rows * n);
  step->comb_.resize(rows * n * n);
  if (lagged) {
    b.hc_ffn.Mixes(x, rows, step->pre_.data(), step->post_.data(), step->comb_.data());
    HyperConnection::Collapse(x, step->attn_pre_.data(), rows, n, d, step->ffn_in_.data());
  } else {
    b.hc_ffn.Pre(x, rows, step->ffn_in_.data(), step->post_.data(), step->comb_.data());
  }
  RmsNorm(step->ffn_in_.data(), b.ffn_norm.data(), rows, d, eps, step->ffn_in_.data());

  routed->x = step->ffn_in_;
  routed->k = b.gate.k();
  routed->expert_ids.resize(rows * routed->k);
  routed->weights.resize(rows * routed->k);
  b.gate.Route(step->ffn_in_.data(), step->tokens(), routed->expert_ids.data(),
               routed->weights.data());
  step->moe_pending_ = true;
  return absl::OkStatus();
}

absl::Status Model::MoeFinish(int layer, Step* step, const Tensor& routed_out) const {
  if (step->finished_ || !step->moe_pending_ || layer != step->next_layer_) {
    return OutOfOrder("MoeFinish", layer);
  }
  const int64_t rows = step->rows();
  const int64_t d = config_.hidden_size;
  if (routed_out.shape() != Shape{rows, d}) {
    return absl::InvalidArgumentError(
        absl::StrCat("MoeFinish(layer ", layer, "): routed output has shape ",
                     ShapeToString(routed_out.shape()), ", expected [", rows, ", ", d, "]"));
  }
  // y = Σ routed + shared, then the ffn hc_post.
  const Tensor routed = routed_out.Contiguous();
  std::vector<float>& y = step->moe_out_;
  y.assign(routed.data(), routed.data() + rows * d);
  SwigluForward(layers_[layer].shared, step->ffn_in_.data(), rows, nullptr,
                static_cast<float>(config_.swiglu_limit), /*accumulate=*/true, y.data(),
                &step->swiglu_scratch_);
  HyperConnection::Post(y.data(), step->post_.data(), step->comb_.data(), rows, config_.hc_mult, d,
                        step->x_.data());
  step->moe_pending_ = false;
  ++step->next_layer_;
  return absl::OkStatus();
}

absl::StatusOr<Tensor> Model::Logits(const Step& step, LogitRows which) const {
  if (step.next_layer_ != config_.num_hidden_layers || step.moe_pending_) {
    return absl::FailedPreconditionError("Logits called before the last layer finished");
  }
  const int n = config_.hc_mult;
  const int64_t d = config_.hidden_size;
  const int64_t v = config_.vocab_size;
  std::vector<int64_t> rows;
  if (which == LogitRows::kAll) {
    for (int64_t t = 0; t < step.rows(); ++t) rows.push_back(t);
  } else {
    for (int i = 0; i < step.num_sequences(); ++i) rows.push_back(step.row_begin_[i + 1] - 1);
  }
  const int64_t count = static_cast<int64_t>(rows.size());
  std::vector<float> x(count * n * d), y(count * d);
  for (int64_t i = 0; i < count; ++i) {
    std::memcpy(x.data() + i * n * d, step.x_.data() + rows[i] * n * d, n * d * sizeof(float));
  }
  if (hc_head_) {
    hc_head_->Apply(x.data(), count, y.data());
  } else {  // V4.1: the last FFN's pre-mix
    std::vector<float> pre(count * n);
    for (int64_t i = 0; i < count; ++i) {
      std::memcpy(pre.data() + i * n, step.pre_.data() + rows[i] * n, n * sizeof(float));
    }
    HyperConnection::Collapse(x.data(), pre.data(), count, n, d, y.data());
  }
  RmsNorm(y.data(), norm_.data(), count, d, static_cast<float>(config_.rms_norm_eps), y.data());
  Tensor logits({count, v});
  MatMul(y.data(), count, head_, logits.data());
  return logits;
}

absl::Status Model::Finish(Step* step) const {
  if (step->finished_ || step->next_layer_ != config_.num_hidden_layers) {
    return absl::FailedPreconditionError("Finish called before the last layer finished");
  }
  for (int i = 0; i < step->num_sequences(); ++i) step->states_[i]->Advance(step->sequence_rows(i));
  if (engram_) engram_->Advance(EngramSegments(*step));
  step->finished_ = true;
  return absl::OkStatus();
}

absl::StatusOr<Tensor> Model::Forward(absl::Span<const StepInput> inputs, ExpertExecutor& experts,
                                      LogitRows rows) const {
  ASSIGN_OR_RETURN(Step step, BeginStep(inputs));
  RoutedTokens routed;
  Tensor routed_out;
  for (int layer = 0; layer < config_.num_hidden_layers; ++layer) {
    RETURN_IF_ERROR(AttentionStage(layer, &step, &routed));
    RETURN_IF_ERROR(
        experts.Run(layer, routed.x, routed.expert_ids, routed.weights, routed.k, &routed_out));
    RETURN_IF_ERROR(MoeFinish(layer, &step, routed_out));
  }
  ASSIGN_OR_RETURN(Tensor logits, Logits(step, rows));
  RETURN_IF_ERROR(Finish(&step));
  return logits;
}

}  // namespace dsv4
