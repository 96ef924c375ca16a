// The model configuration: the official Hugging Face config.json (keys as released),
// parsed into a typed, validated struct. Unknown keys are kept (in `extra`) and ignored.
//
// Supports model_type "deepseek_v4" (flat), "deepseek_v41" (the language model's keys
// nested under `text_config`, `quantization_config` and `image_token_id` at the top level,
// `vision_config` ignored) and "deepseek_v3" (planner only).
#ifndef DSV4_CORE_MODEL_CONFIG_H_
#define DSV4_CORE_MODEL_CONFIG_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace dsv4 {

struct RopeScaling {
  std::string type;  // "yarn" or empty (off)
  double factor = 1.0;
  int64_t original_max_position_embeddings = 0;  // > 0 switches YaRN on
  double beta_fast = 32.0;
  double beta_slow = 1.0;
};

// Optional Engram memory, as DeepSeek-V4.1 releases it (spec deepseek-v41-model.md §1).
struct EngramConfig {
  std::vector<int> layer_ids;           // engram_layer_ids; empty = no Engram
  std::vector<int64_t> num_embeddings;  // engram_num_embeddings: table rows per Engram layer
  int max_ngram_size = 0;               // engram_max_ngram_size (N)
  int n_heads = 0;                      // engram_n_heads (K, per n-gram order)
  int head_dim = 0;                     // engram_head_dim (d_e)
  std::vector<int64_t> vocab_size;      // engram_vocab_size, per order n = 2..N
  int64_t pad_token_id = 2;             // engram_pad_token_id
  int64_t compressed_vocab_size = 0;    // engram_compressed_vocab_size (V_comp)
  bool enabled() const { return !layer_ids.empty(); }
  int columns() const { return (max_ngram_size - 1) * n_heads; }  // hashed rows per token
};

// The model families, from model_type (a field so that the per-layer predicates below,
// which the planner evaluates millions of times, compare no strings).
enum class ModelFamily { kUnknown, kV3, kV4, kV41 };

struct ModelConfig {
  std::string source;                          // file the config came from, for error messages
  std::string model_type;                      // "deepseek_v4", "deepseek_v41" or "deepseek_v3"
  ModelFamily family = ModelFamily::kUnknown;  // set with model_type by the parser

  int64_t vocab_size = 0;
  int64_t hidden_size = 0;           // d
  int num_hidden_layers = 0;         // L
  int num_attention_heads = 0;       // H
  int num_key_value_heads = 1;       // V4: 1 (one shared K=V vector); V3: H
  int64_t head_dim = 0;              // D (V3: qk_nope_head_dim + qk_rope_head_dim)
  int64_t qk_rope_head_dim = 0;      // r
  int64_t q_lora_rank = 0;           // Q
  int o_groups = 0;                  // G
  int64_t o_lora_rank = 0;           // R
  int64_t sliding_window = 0;        // W
  std::vector<int> compress_ratios;  // L + num_nextn_predict_layers entries
  double compress_rope_theta = 160000.0;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  int64_t max_position_embeddings = 0;
  int index_n_heads = 0;       // HI
  int64_t index_head_dim = 0;  // DI
  int64_t index_topk = 0;      // KI
  int n_routed_experts = 0;    // E
  int n_shared_experts = 1;
  int num_experts_per_tok = 0;        // k
  int64_t moe_intermediate_size = 0;  // F
  double routed_scaling_factor = 1.0;
  std::string scoring_func;  // "sqrtsoftplus" (V4), "sigmoid" (V3), "softmax"
  std::string topk_method;   // "noaux_tc" (bias used for selection only)
  bool norm_topk_prob = true;
  int num_hash_layers = 0;
  double swiglu_limit = 0.0;  // 0 = no clamp
  int hc_mult = 1;            // n
  int hc_sinkhorn_iters = 0;
  double hc_eps = 1e-6;
  int num_nextn_predict_layers = 0;
  double rms_norm_eps = 1e-6;
  bool tie_word_embeddings = false;  // V4: false (a separate head.weight)
  int64_t bos_token_id = 0;
  int64_t eos_token_id = 1;

  // quantization_config: FP8 e4m3 weights with [128, 128] E8M0 block scales, or none.
  bool fp8_weights = false;
  int weight_block_size = 128;
  // Routed experts: "fp4" (I8-packed e2m1 with 1×32 E8M0 scales), "fp8" (like the other
  // linears) or "bf16". Defaults to "fp8" with FP8 weights, else "bf16".
  std::string expert_dtype;

  EngramConfig engram;

  // DeepSeek-V4.1 CSA2 (spec deepseek-v41-model.md §6): only kv-source layers compress
  // KV (and, being index sources too, own the indexer keys); a compressed layer reads the
  // nearest source at or before it; index sources run an indexer query, the others reuse
  // the nearest one's selection; the candidate source picks blocks the later index
  // sources score within.
  std::vector<int> kv_source_layers;     // kv_source_layer_ids
  std::vector<int> index_source_layers;  // index_source_layer_ids
  int candidate_source_layer = -1;       // candidate_source_layer_id; -1 = none
  int64_t candidate_topk_blocks = 0;
  int64_t candidate_block_size = 0;
  int64_t image_token_id = -1;  // V4.1: <｜deepseek_image｜>, refused in text-only serving
  // DSpark draft stages (V4.1's mtp.*): loaded and checked, not evaluated.
  int dspark_block_size = 0;
  int64_t dspark_noise_token_id = 0;
  std::vector<int> dspark_target_layer_ids;
  int64_t dspark_markov_rank = 0;
  int dspark_n_routed_experts = 0;
  int dspark_num_experts_per_tok = 0;

  // DeepSeek-V3 (MLA) fields, for the planner.
  int64_t kv_lora_rank = 0;
  int64_t qk_nope_head_dim = 0;
  int64_t v_head_dim = 0;
  int64_t intermediate_size = 0;  // dense FFN width
  int first_k_dense_replace = 0;
  int n_group = 1;
  int topk_group = 1;

  nlohmann::json extra;  // keys this struct does not model, kept verbatim

  // The runnable family: V4 and V4.1.
  bool is_v4() const { return family == ModelFamily::kV4 || is_v41(); }
  bool is_v41() const { return family == ModelFamily::kV41; }
  // Compress ratio of main layer `layer` (0 ≤ layer < L) or of MTP block i at L + i.
  int ratio(int layer) const { return compress_ratios[layer]; }
  // V4's layer kinds.
  bool is_csa(int layer) const { return !is_v41() && ratio(layer) == 4; }
  bool is_hca(int layer) const { return !is_v41() && ratio(layer) > 0 && ratio(layer) != 4; }
  // V4.1's CSA2 roles of main layer `layer` (all false for V4 and for MTP blocks).
  bool is_kv_source(int layer) const;
  bool is_index_source(int layer) const;
  bool uses_candidates(int layer) const {  // an index source scoring inside the pool
    return is_index_source(layer) && candidate_source_layer >= 0 && candidate_source_layer < layer;
  }
  // The layer whose compressed entries (and indexer keys) `layer` reads: itself for V4's
  // compressed layers; for V4.1 the nearest kv source at or before it; -1 when none.
  int kv_source_of(int layer) const;
  // V4.1: the layer whose selection `layer` uses (nearest index source ≤ layer), or -1.
  int index_source_of(int layer) const;
  bool is_mtp(int layer) const { return layer >= num_hidden_layers; }
  // Routed experts of main layer or MTP block `layer` (V4.1's DSpark stages have their own).
  int routed_experts(int layer) const {
    return is_mtp(layer) && dspark_n_routed_experts > 0 ? dspark_n_routed_experts
                                                        : n_routed_experts;
  }
  // MTP blocks are never hash-routed (their layer id is ≥ L ≥ num_hash_layers).
  bool is_hash_layer(int layer) const { return layer < num_hash_layers; }
  int mix_dim() const { return (2 + hc_mult) * hc_mult; }  // M
};

// Parses config.json text. `source` names the file in errors, which name the key:
// "models/x/config.json: compress_ratios has 5 entries, expected num_hidden_layers +
// num_nextn_predict_layers = 44".
absl::StatusOr<ModelConfig> ParseModelConfig(const std::string& json_text,
                                             const std::string& source);
absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& path);
// A checkpoint directory's config.json.
absl::StatusOr<ModelConfig> LoadModelConfigFromDir(const std::string& dir);
// The served model's name: the checkpoint directory's last path component ("v4-mini").
std::string ModelNameFromDir(const std::string& checkpoint_dir);

}  // namespace dsv4

#endif  // DSV4_CORE_MODEL_CONFIG_H_
