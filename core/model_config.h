// The model configuration: the official Hugging Face config.json (keys as released),
// parsed into a typed, validated struct. Unknown keys are kept (in `extra`) and ignored.
//
// Supports model_type "deepseek_v4" (runnable) and "deepseek_v3" (planner only).
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

// Optional Engram memory (V4.1 naming; see spec §6).
struct EngramConfig {
  std::vector<int> layer_ids;       // engram_layer_ids; empty = no Engram
  int max_ngram_size = 0;           // engram_max_ngram_size (N)
  int n_heads = 0;                  // engram_n_heads (K, per n-gram order)
  int head_dim = 0;                 // engram_head_dim (d_e)
  std::vector<int64_t> vocab_size;  // engram_vocab_size, per order n = 2..N
  int64_t pad_token_id = 2;         // engram_pad_token_id
  int kernel_size = 4;              // engram_kernel_size
  int64_t seed = 0;                 // engram_seed
  bool enabled() const { return !layer_ids.empty(); }
};

struct ModelConfig {
  std::string source;      // file the config came from, for error messages
  std::string model_type;  // "deepseek_v4" or "deepseek_v3"

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

  // DeepSeek-V3 (MLA) fields, for the planner.
  int64_t kv_lora_rank = 0;
  int64_t qk_nope_head_dim = 0;
  int64_t v_head_dim = 0;
  int64_t intermediate_size = 0;  // dense FFN width
  int first_k_dense_replace = 0;
  int n_group = 1;
  int topk_group = 1;

  nlohmann::json extra;  // keys this struct does not model, kept verbatim

  bool is_v4() const { return model_type == "deepseek_v4"; }
  // Compress ratio of main layer `layer` (0 ≤ layer < L) or of MTP block i at L + i.
  int ratio(int layer) const { return compress_ratios[layer]; }
  bool is_csa(int layer) const { return ratio(layer) == 4; }
  bool is_hca(int layer) const { return ratio(layer) > 0 && ratio(layer) != 4; }
  bool is_mtp(int layer) const { return layer >= num_hidden_layers; }
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
