// The DeepSeek-V4 forward pass (spec §3), written once for every deployment. The Model
// holds everything but the routed experts (embedding, mHC, attention, gates, shared
// experts, head); routed experts run behind an ExpertExecutor, in-process or on expert
// ranks.
//
// A step is a batch of sequences, each with its own SequenceState, start position
// (state->position()) and new tokens: a prefill chunk (T ≥ 1 at any start) or one decode
// token. Dense projections, router, shared expert and experts run over all the step's
// tokens at once; attention runs per sequence. Each layer is two explicit stages so a
// distributed engine can interleave micro-batches and put an all-to-all between router
// and experts:
//
//   Step step = BeginStep(inputs)                       embedding → n streams
//   for layer in 0..L−1:
//     AttentionStage(layer, step, &routed)   hc_pre, attn_norm, attention, hc_post,
//                                            hc_pre (ffn), ffn_norm, router
//     executor.Run(layer, routed.x, routed.expert_ids, routed.weights, routed.k, &out)
//     MoeFinish(layer, step, out)            + shared expert, hc_post
//   Logits(step, rows)                       hc_head, norm, head
//   Finish(step)                             advances each sequence's position
//
// DeepSeek-V4.1 (spec deepseek-v41-model.md) runs on the same path: its mHC is lagged
// (each hc_pre collapses with the pre-mix the previous sub-layer computed; the head with
// the last FFN's, no hc_head), its attention is CSA2 (attention.h), its Engram is the
// released one (engram.h), and it has no hash-routed layers. Its DSpark stages (mtp.*) are
// checked by `dsv4 checkpoint inspect` but not loaded: they do not run in the forward.
//
// The Model is immutable after Load: several steps may be in flight at once (each Step
// owns its activations). If a step fails after BeginStep, its sequences' states are
// partially updated and must be Reset().
#ifndef DSV4_ATTENTION_NODE_MODEL_H_
#define DSV4_ATTENTION_NODE_MODEL_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "attention_node/attention.h"
#include "attention_node/engram.h"
#include "attention_node/kv_state.h"
#include "attention_node/mhc.h"
#include "attention_node/router.h"
#include "core/model_config.h"
#include "core/safetensors.h"
#include "core/swiglu_ffn.h"
#include "core/tensor.h"
#include "core/weight_loader.h"
#include "core/weight_matrix.h"
#include "expert_node/expert_executor.h"

namespace dsv4 {

// How activations are rounded. kExact: fp32 everywhere, weights dequantised exactly.
// (An official mode simulating the reference's FP8/FP4/BF16 activation rounding, spec §4,
// would be a second value here, checked at each rounding point.)
enum class Numerics { kExact };

struct ModelOptions {
  Numerics numerics = Numerics::kExact;
  // Longest sequence accepted; 0 means the config's max_position_embeddings.
  int64_t max_seq_len = 0;
  // Load (and validate) the MTP blocks. They never run in the main forward.
  bool load_mtp = true;
  // Engram models: where table rows come from (e.g. engram_store/client.h); null reads the
  // checkpoint's own tables. Must outlive the Model.
  EngramRowSource* engram_rows = nullptr;
};

// One sequence's part of a step.
struct StepInput {
  SequenceState* state = nullptr;
  absl::Span<const int32_t> tokens;  // new tokens, at positions state->position() onwards
};

// A step's activations between stages.
class Step {
 public:
  int64_t rows() const { return static_cast<int64_t>(tokens_.size()); }
  int num_sequences() const { return static_cast<int>(states_.size()); }
  int64_t row_begin(int i) const { return row_begin_[i]; }
  int64_t sequence_rows(int i) const { return row_begin_[i + 1] - row_begin_[i]; }
  int64_t start_pos(int i) const { return start_pos_[i]; }
  absl::Span<const int32_t> tokens() const { return tokens_; }

 private:
  friend class Model;
  std::vector<SequenceState*> states_;
  std::vector<int64_t> row_begin_;  // num_sequences + 1 entries
  std::vector<int64_t> start_pos_;
  std::vector<int32_t> tokens_;
  // Engram models: the rows of every Engram layer, fetched from BeginStep on.
  std::shared_ptr<EngramRowFetch> engram_fetch_;
  Tensor x_;                        // [T, n, d] residual streams
  Tensor ffn_in_;                   // [T, d] ffn_norm output of the current layer
  std::vector<float> post_, comb_;  // [T, n], [T, n, n]: the ffn hc_pre mixes
  // V4.1: the pre-mix [T, n] the next sub-layer collapses with (lagged mHC), and the one
  // the current layer's attention computed for its FFN.
  std::vector<float> pre_, attn_pre_;
  // Buffers reused by every layer of the step.
  std::vector<float> attn_in_, attn_out_, attn_post_, attn_comb_, moe_out_, swiglu_scratch_;
  AttentionWorkspace attention_workspace_;
  int next_layer_ = 0;
  bool moe_pending_ = false;
  bool finished_ = false;
};

// What the experts of one layer receive.
struct RoutedTokens {
  Tensor x;  // [T, d] expert input; shares the Step's storage until its next AttentionStage
  std::vector<int32_t> expert_ids;  // [T·k]
  std::vector<float> weights;       // [T·k]
  int k = 0;
};

enum class LogitRows { kAll, kLastPerSequence };

class Model {
 public:
  // Loads the non-expert weights of a checkpoint whose config.json is `config`.
  static absl::StatusOr<std::unique_ptr<Model>> Load(const ModelConfig& config,
                                                     Checkpoint* checkpoint,
                                                     const ModelOptions& options = {});

  const ModelConfig& config() const { return config_; }
  int64_t max_seq_len() const { return max_seq_len_; }
  // The weights held here (Engram fusion included, its tables not), released and resident.
  const WeightBytes& weight_bytes() const { return weight_bytes_; }
  const WeightBytes& mtp_weight_bytes() const { return mtp_weight_bytes_; }  // of which MTP

  SequenceState NewSequence() const { return SequenceState(config_); }

  // Validates the inputs (token ids, lengths, distinct states of this model) and embeds.
  absl::StatusOr<Step> BeginStep(absl::Span<const StepInput> inputs) const;
  absl::Status AttentionStage(int layer, Step* step, RoutedTokens* routed) const;
  // routed_out [T, d]: the executor's output for this layer's RoutedTokens.
  absl::Status MoeFinish(int layer, Step* step, const Tensor& routed_out) const;
  // After the last layer: logits [rows, V] for all rows, or the last row of each sequence.
  absl::StatusOr<Tensor> Logits(const Step& step, LogitRows rows) const;
  absl::Status Finish(Step* step) const;

  // All of the above with one executor.
  absl::StatusOr<Tensor> Forward(absl::Span<const StepInput> inputs, ExpertExecutor& experts,
                                 LogitRows rows = LogitRows::kAll) const;

 private:
  struct Block {
    HyperConnection hc_attn, hc_ffn;
    Tensor attn_norm, ffn_norm;  // [d]
    Attention attn;
    Router gate;
    SwigluWeights shared;
  };
  // Multi-token prediction block (spec §3.13), kept loaded but outside the forward.
  struct MtpBlock {
    Block block;
    WeightMatrix e_proj, h_proj;  // [d, d]
    Tensor enorm, hnorm, norm;    // [d]
    HcHead hc_head;
  };
  static absl::StatusOr<Block> LoadBlock(WeightLoader& loader, const std::string& prefix,
                                         const ModelConfig& config, int layer);
  static absl::StatusOr<MtpBlock> LoadMtp(WeightLoader& loader, const ModelConfig& config,
                                          int index);

  explicit Model(const ModelConfig& config) : config_(config) {}
  std::vector<EngramModule::Segment> EngramSegments(const Step& step) const;

  ModelConfig config_;
  int64_t max_seq_len_ = 0;
  WeightMatrix embed_, head_;      // [V, d]
  Tensor norm_;                    // [d]
  std::optional<HcHead> hc_head_;  // V4 (V4.1 collapses with the last FFN's pre-mix)
  std::vector<Block> layers_;
  std::vector<MtpBlock> mtp_;
  std::unique_ptr<EngramModule> engram_;  // null without Engram layers
  WeightBytes weight_bytes_;
  WeightBytes mtp_weight_bytes_;
  WeightMappings mappings_;  // keeps every WeightMatrix view above valid
};

}  // namespace dsv4

#endif  // DSV4_ATTENTION_NODE_MODEL_H_
