#include "core/model_config.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <limits>
#include <set>
#include <sstream>
#include <type_traits>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/engram_hash.h"
#include "core/status_macros.h"

namespace dsv4 {
namespace {

using nlohmann::json;

enum Presence { kOptional, kRequired };

// A short rendering of a JSON value for error messages.
std::string Describe(const json& value) {
  std::string text = value.dump();
  if (text.size() > 40) text = text.substr(0, 37) + "...";
  return absl::StrCat(value.type_name(), " ", text);
}

// Reads typed keys from one JSON object, remembering which keys it consumed (the rest
// become ModelConfig::extra) and the first error, so that callers can read a whole block
// of keys and check once.
class Reader {
 public:
  Reader(const json& object, std::string source, std::string prefix)
      : object_(object), source_(std::move(source)), prefix_(std::move(prefix)) {}

  const absl::Status& status() const { return status_; }
  bool Has(const char* key) const {
    auto it = object_.find(key);
    return it != object_.end() && !it->is_null();
  }

  // The value of `key`, or nullptr when absent or null (HF writes `null` for unset
  // options, e.g. V2-Lite's q_lora_rank).
  const json* Find(const char* key, Presence presence) {
    used_.insert(key);
    auto it = object_.find(key);
    if (it == object_.end() || it->is_null()) {
      if (presence == kRequired) Fail(key, " is missing (required key)");
      return nullptr;
    }
    return &*it;
  }

  template <typename T>
  void Int(const char* key, T* out, Presence presence = kOptional) {
    const json* value = Find(key, presence);
    if (value != nullptr) ToInt(*value, key, out);
  }

  void Double(const char* key, double* out, Presence presence = kOptional) {
    const json* value = Find(key, presence);
    if (value == nullptr) return;
    if (!value->is_number()) return Fail(key, ": expected a number, got " + Describe(*value));
    *out = value->get<double>();
  }

  void String(const char* key, std::string* out, Presence presence = kOptional) {
    const json* value = Find(key, presence);
    if (value == nullptr) return;
    if (!value->is_string()) return Fail(key, ": expected a string, got " + Describe(*value));
    *out = value->get<std::string>();
  }

  void Bool(const char* key, bool* out, Presence presence = kOptional) {
    const json* value = Find(key, presence);
    if (value == nullptr) return;
    if (!value->is_boolean()) return Fail(key, ": expected true or false, got " + Describe(*value));
    *out = value->get<bool>();
  }

  template <typename T>
  void IntList(const char* key, std::vector<T>* out, Presence presence = kOptional) {
    const json* value = Find(key, presence);
    if (value == nullptr) return;
    if (!value->is_array()) {
      return Fail(key, ": expected a list of integers, got " + Describe(*value));
    }
    std::vector<T> list(value->size());
    for (size_t i = 0; i < value->size(); ++i) {
      if (!ToInt((*value)[i], absl::StrCat(key, "[", i, "]"), &list[i])) return;
    }
    *out = std::move(list);
  }

  // A nested object such as rope_scaling; nullptr when absent or null.
  const json* Object(const char* key, Presence presence = kOptional) {
    const json* value = Find(key, presence);
    if (value != nullptr && !value->is_object()) {
      Fail(key, ": expected an object, got " + Describe(*value));
      return nullptr;
    }
    return value;
  }

  // Records an error about `key` (the first one wins); `message` starts with its separator.
  void Fail(const std::string& key, const std::string& message) {
    if (status_.ok()) {
      status_ = absl::InvalidArgumentError(absl::StrCat(source_, ": ", prefix_, key, message));
    }
  }
  // Adopts the first error of a nested reader.
  void Merge(const absl::Status& status) {
    if (status_.ok()) status_ = status;
  }

  json Unused() const {
    json extra = json::object();
    for (const auto& [key, value] : object_.items()) {
      if (!used_.count(key)) extra[key] = value;
    }
    return extra;
  }

 private:
  // Integers may be written as integral floats (4096.0); anything else is a type error.
  template <typename T>
  bool ToInt(const json& value, const std::string& key, T* out) {
    static_assert(std::is_integral_v<T>);
    using Limits = std::numeric_limits<T>;
    if (value.is_number_unsigned()) {
      const uint64_t v = value.get<uint64_t>();
      if (v > static_cast<uint64_t>(Limits::max())) {
        Fail(key, absl::StrCat(": out of range: ", v));
        return false;
      }
      *out = static_cast<T>(v);
      return true;
    }
    if (value.is_number_integer()) {
      const int64_t v = value.get<int64_t>();
      if (v < static_cast<int64_t>(Limits::min()) || v > static_cast<int64_t>(Limits::max())) {
        Fail(key, absl::StrCat(": out of range: ", v));
        return false;
      }
      *out = static_cast<T>(v);
      return true;
    }
    if (value.is_number_float()) {
      const double v = value.get<double>();
      if (std::floor(v) == v && v >= static_cast<double>(Limits::min()) &&
          v <= static_cast<double>(Limits::max())) {
        *out = static_cast<T>(v);
        return true;
      }
    }
    Fail(key, ": expected an integer, got " + Describe(value));
    return false;
  }

  const json& object_;
  std::string source_;
  std::string prefix_;
  std::set<std::string> used_;
  absl::Status status_;
};

// Records the first failed constraint, naming the source file.
class Checker {
 public:
  explicit Checker(const std::string& source) : source_(source) {}
  template <typename... Args>
  void Require(bool condition, const Args&... message) {
    if (!condition && status_.ok()) {
      status_ = absl::InvalidArgumentError(absl::StrCat(source_, ": ", message...));
    }
  }
  void Positive(const char* key, double value) {
    Require(value > 0, key, " must be > 0, got ", value);
  }
  const absl::Status& status() const { return status_; }

 private:
  const std::string& source_;
  absl::Status status_;
};

bool IsPowerOfTwo(int64_t v) { return v > 0 && (v & (v - 1)) == 0; }

void ReadRopeScaling(Reader& r, const std::string& source, RopeScaling* out) {
  const json* object = r.Object("rope_scaling");
  if (object == nullptr) return;
  Reader s(*object, source, "rope_scaling.");
  // Newer transformers write rope_type; the released configs write type.
  s.String(s.Has("rope_type") ? "rope_type" : "type", &out->type, kRequired);
  s.Double("factor", &out->factor);
  s.Int("original_max_position_embeddings", &out->original_max_position_embeddings);
  s.Double("beta_fast", &out->beta_fast);
  s.Double("beta_slow", &out->beta_slow);
  // Other keys (V3's mscale, mscale_all_dim) only affect the V3 attention temperature,
  // which this runtime does not compute.
  if (s.status().ok() && out->type != "yarn") {
    s.Fail(s.Has("rope_type") ? "rope_type" : "type",
           absl::StrCat(": \"", out->type, "\" is not supported (expected \"yarn\")"));
  }
  if (s.status().ok() && !(out->factor > 0)) s.Fail("factor", " must be > 0");
  if (s.status().ok() && out->original_max_position_embeddings < 0) {
    s.Fail("original_max_position_embeddings", " must be ≥ 0");
  }
  r.Merge(s.status());
}

void ReadQuantization(Reader& r, const std::string& source, ModelConfig* c) {
  const json* object = r.Object("quantization_config");
  if (object == nullptr) return;
  Reader q(*object, source, "quantization_config.");
  std::string method, fmt = "e4m3", scale_fmt;
  q.String("quant_method", &method, kRequired);
  q.String("fmt", &fmt);
  q.String("scale_fmt", &scale_fmt);
  q.String("expert_dtype", &c->expert_dtype);  // V4.1 puts it here; V4 at the top level
  std::vector<int> block;
  q.IntList("weight_block_size", &block, kRequired);
  if (!q.status().ok()) return r.Merge(q.status());
  if (method != "fp8") {
    q.Fail("quant_method", absl::StrCat(": \"", method, "\" is not supported (expected \"fp8\")"));
  } else if (fmt != "e4m3") {
    q.Fail("fmt", absl::StrCat(": \"", fmt, "\" is not supported (expected \"e4m3\")"));
  } else if (block.size() != 2 || block[0] != block[1] || block[0] <= 0) {
    q.Fail("weight_block_size", " must be two equal positive sizes, e.g. [128, 128]");
  }
  // V3 stores F32 inverse scales and writes no scale_fmt; V4 writes ue8m0.
  if (q.status().ok() && !scale_fmt.empty() && scale_fmt != "ue8m0") {
    q.Fail("scale_fmt",
           absl::StrCat(": \"", scale_fmt, "\" is not supported (expected \"ue8m0\")"));
  }
  c->fp8_weights = q.status().ok();
  if (c->fp8_weights) c->weight_block_size = block[0];
  r.Merge(q.status());
}

void ReadEngram(Reader& r, ModelConfig* c) {
  if (!r.Has("engram_layer_ids")) return;
  EngramConfig& e = c->engram;
  r.IntList("engram_layer_ids", &e.layer_ids, kRequired);
  r.Int("engram_max_ngram_size", &e.max_ngram_size, kRequired);
  r.Int("engram_n_heads", &e.n_heads, kRequired);
  r.Int("engram_head_dim", &e.head_dim, kRequired);
  r.IntList("engram_num_embeddings", &e.num_embeddings, kRequired);
  r.Int("engram_pad_token_id", &e.pad_token_id);
  r.Int("engram_compressed_vocab_size", &e.compressed_vocab_size, kRequired);
  // engram_vocab_size: one size per order n = 2..N, or one number for every order.
  if (r.Has("engram_vocab_size") && r.Find("engram_vocab_size", kRequired)->is_array()) {
    r.IntList("engram_vocab_size", &e.vocab_size, kRequired);
  } else {
    int64_t size = 0;
    r.Int("engram_vocab_size", &size, kRequired);
    if (r.status().ok() && e.max_ngram_size >= 2) e.vocab_size.assign(e.max_ngram_size - 1, size);
  }
}

void ValidateEngram(const ModelConfig& c, Checker& check) {
  const EngramConfig& e = c.engram;
  if (!e.enabled()) return;
  std::set<int> seen;
  for (int id : e.layer_ids) {
    check.Require(id >= 0 && id < c.num_hidden_layers, "engram_layer_ids entry ", id,
                  " is outside [0, num_hidden_layers = ", c.num_hidden_layers, ")");
    check.Require(seen.insert(id).second, "engram_layer_ids lists layer ", id, " twice");
  }
  check.Require(e.max_ngram_size >= 2, "engram_max_ngram_size must be ≥ 2, got ", e.max_ngram_size);
  check.Positive("engram_n_heads", e.n_heads);
  check.Positive("engram_head_dim", e.head_dim);
  check.Require(e.num_embeddings.size() == e.layer_ids.size(), "engram_num_embeddings has ",
                e.num_embeddings.size(), " entries for ", e.layer_ids.size(), " Engram layers");
  check.Positive("engram_compressed_vocab_size", static_cast<double>(e.compressed_vocab_size));
  check.Require(e.compressed_vocab_size <= c.vocab_size, "engram_compressed_vocab_size (",
                e.compressed_vocab_size, ") must be ≤ vocab_size (", c.vocab_size, ")");
  check.Require(e.pad_token_id >= 0 && e.pad_token_id < c.vocab_size,
                "engram_pad_token_id must be in [0, vocab_size), got ", e.pad_token_id);
  if (e.max_ngram_size >= 2) {
    check.Require(static_cast<int>(e.vocab_size.size()) == e.max_ngram_size - 1,
                  "engram_vocab_size has ", e.vocab_size.size(),
                  " entries, expected engram_max_ngram_size - 1 = ", e.max_ngram_size - 1);
  }
  for (int64_t v : e.vocab_size) check.Positive("engram_vocab_size entries", v);
  if (!check.status().ok() || e.num_embeddings.size() != e.layer_ids.size()) return;
  // The table sizes follow from the primes; a mismatch would rehash every row.
  const std::vector<std::vector<int64_t>> heads = EngramHeadSizes(e);
  for (size_t i = 0; i < heads.size(); ++i) {
    int64_t rows = 0;
    for (int64_t p : heads[i]) rows += p;
    check.Require(rows == e.num_embeddings[i], "engram_num_embeddings[", i, "] is ",
                  e.num_embeddings[i], ", but the primes above engram_vocab_size give ", rows,
                  " rows for layer ", e.layer_ids[i]);
  }
}

// A list of distinct main-layer ids, ascending.
void CheckLayerList(const ModelConfig& c, Checker& check, const char* key,
                    const std::vector<int>& layers) {
  for (size_t i = 0; i < layers.size(); ++i) {
    check.Require(layers[i] >= 0 && layers[i] < c.num_hidden_layers, key, "[", i, "] = ", layers[i],
                  " is outside [0, num_hidden_layers = ", c.num_hidden_layers, ")");
    check.Require(i == 0 || layers[i] > layers[i - 1], key, " must be ascending and distinct");
  }
}

// CSA2: every compressed layer has a kv source of its ratio and an index source reading
// it; the candidate pool is large enough that a Reindex layer's top-k never reaches
// outside it (the official code would then pick unscored positions).
void ValidateCsa2(const ModelConfig& c, Checker& check) {
  CheckLayerList(c, check, "kv_source_layer_ids", c.kv_source_layers);
  CheckLayerList(c, check, "index_source_layer_ids", c.index_source_layers);
  if (!check.status().ok()) return;
  for (int layer : c.kv_source_layers) {
    check.Require(c.is_index_source(layer), "kv source layer ", layer,
                  " must also be in index_source_layer_ids (it owns the indexer keys)");
    check.Require(c.ratio(layer) > 0, "kv source layer ", layer, " has compress_ratio 0");
  }
  for (int layer = 0; layer < c.num_hidden_layers; ++layer) {
    if (c.ratio(layer) == 0) {
      check.Require(!c.is_index_source(layer), "index source layer ", layer,
                    " has compress_ratio 0");
      continue;
    }
    const int source = c.kv_source_of(layer);
    check.Require(source >= 0, "layer ", layer, " has compress_ratio ", c.ratio(layer),
                  " but no kv_source_layer_ids entry at or before it");
    if (source < 0) continue;
    check.Require(c.ratio(source) == c.ratio(layer), "layer ", layer, " (compress_ratio ",
                  c.ratio(layer), ") reads kv source layer ", source, " (compress_ratio ",
                  c.ratio(source), ")");
  }
  for (int i = c.num_hidden_layers; i < static_cast<int>(c.compress_ratios.size()); ++i) {
    check.Require(c.compress_ratios[i] == 0, "compress_ratios[", i, "] (a DSpark stage) must be 0");
  }
  check.Positive("index_topk", static_cast<double>(c.index_topk));
  if (c.candidate_source_layer < 0) return;
  check.Require(c.is_index_source(c.candidate_source_layer), "candidate_source_layer_id ",
                c.candidate_source_layer, " must be an index source layer");
  check.Positive("candidate_topk_blocks", static_cast<double>(c.candidate_topk_blocks));
  check.Positive("candidate_block_size", static_cast<double>(c.candidate_block_size));
  check.Require((c.candidate_topk_blocks - 1) * c.candidate_block_size + 1 >= c.index_topk,
                "candidate_topk_blocks (", c.candidate_topk_blocks, ") × candidate_block_size (",
                c.candidate_block_size, ") must cover index_topk (", c.index_topk,
                ") even with a partial newest block");
  if (!check.status().ok()) return;
  for (int layer : c.index_source_layers) {
    if (!c.uses_candidates(layer)) continue;
    check.Require(c.kv_source_of(layer) == c.kv_source_of(c.candidate_source_layer),
                  "index source layer ", layer, " scores inside the candidate pool of layer ",
                  c.candidate_source_layer, " but reads another kv source");
  }
}

void ValidateMoe(const ModelConfig& c, Checker& check) {
  check.Positive("n_routed_experts", c.n_routed_experts);
  check.Positive("num_experts_per_tok", c.num_experts_per_tok);
  check.Positive("moe_intermediate_size", c.moe_intermediate_size);
  check.Require(c.num_experts_per_tok <= c.n_routed_experts, "num_experts_per_tok (",
                c.num_experts_per_tok, ") must be ≤ n_routed_experts (", c.n_routed_experts, ")");
  check.Require(c.scoring_func == "sqrtsoftplus" || c.scoring_func == "sigmoid" ||
                    c.scoring_func == "softmax",
                "scoring_func \"", c.scoring_func,
                "\" is not supported (expected sqrtsoftplus, sigmoid or softmax)");
  check.Positive("routed_scaling_factor", c.routed_scaling_factor);
  check.Require(c.expert_dtype == "fp4" || c.expert_dtype == "fp8" || c.expert_dtype == "bf16",
                "expert_dtype \"", c.expert_dtype,
                "\" is not supported (expected fp4, fp8 or bf16)");
  if (c.expert_dtype == "fp4") {
    // FP4 experts are packed two per byte with one scale per 32 inputs along both w1/w3
    // (input d) and w2 (input F).
    check.Require(c.hidden_size % 32 == 0, "hidden_size (", c.hidden_size,
                  ") must be a multiple of 32 for expert_dtype fp4");
    check.Require(c.moe_intermediate_size % 32 == 0, "moe_intermediate_size (",
                  c.moe_intermediate_size, ") must be a multiple of 32 for expert_dtype fp4");
  }
}

void ValidateV4(const ModelConfig& c, Checker& check) {
  check.Positive("head_dim", c.head_dim);
  check.Positive("q_lora_rank", c.q_lora_rank);
  check.Positive("o_groups", c.o_groups);
  check.Positive("o_lora_rank", c.o_lora_rank);
  check.Positive("sliding_window", c.sliding_window);
  check.Positive("index_n_heads", c.index_n_heads);
  check.Positive("index_head_dim", c.index_head_dim);
  check.Positive("index_topk", c.index_topk);
  check.Positive("hc_mult", c.hc_mult);
  check.Positive("hc_sinkhorn_iters", c.hc_sinkhorn_iters);
  check.Require(c.hc_eps >= 0, "hc_eps must be ≥ 0, got ", c.hc_eps);
  check.Require(c.swiglu_limit >= 0, "swiglu_limit must be ≥ 0 (0 = no clamp), got ",
                c.swiglu_limit);
  check.Positive("compress_rope_theta", c.compress_rope_theta);
  check.Require(c.num_key_value_heads == 1, "num_key_value_heads must be 1 for ", c.model_type,
                ", got ", c.num_key_value_heads);
  if (c.o_groups > 0) {
    check.Require(c.num_attention_heads % c.o_groups == 0, "num_attention_heads (",
                  c.num_attention_heads, ") must be a multiple of o_groups (", c.o_groups, ")");
  }
  check.Require(c.qk_rope_head_dim % 2 == 0, "qk_rope_head_dim (", c.qk_rope_head_dim,
                ") must be even (RoPE rotates pairs)");
  check.Require(c.qk_rope_head_dim <= c.head_dim, "qk_rope_head_dim (", c.qk_rope_head_dim,
                ") must be ≤ head_dim (", c.head_dim, ")");
  check.Require(c.qk_rope_head_dim <= c.index_head_dim, "qk_rope_head_dim (", c.qk_rope_head_dim,
                ") must be ≤ index_head_dim (", c.index_head_dim, ")");
  check.Require(IsPowerOfTwo(c.index_head_dim), "index_head_dim (", c.index_head_dim,
                ") must be a power of two (Hadamard transform)");
  check.Require(c.n_shared_experts == 1, "n_shared_experts must be 1 for ", c.model_type, ", got ",
                c.n_shared_experts);
  check.Require(c.num_hash_layers >= 0 && c.num_hash_layers <= c.num_hidden_layers,
                "num_hash_layers (", c.num_hash_layers,
                ") must be in [0, num_hidden_layers = ", c.num_hidden_layers, "]");
  const size_t expected = static_cast<size_t>(c.num_hidden_layers) + c.num_nextn_predict_layers;
  check.Require(c.compress_ratios.size() == expected, "compress_ratios has ",
                c.compress_ratios.size(),
                " entries, expected num_hidden_layers + num_nextn_predict_layers = ", expected);
  for (size_t i = 0; i < c.compress_ratios.size(); ++i) {
    check.Require(c.compress_ratios[i] >= 0, "compress_ratios[", i, "] must be ≥ 0, got ",
                  c.compress_ratios[i]);
  }
  check.Require(!c.tie_word_embeddings, "tie_word_embeddings must be false for ", c.model_type,
                " (head.weight is separate)");
  ValidateEngram(c, check);
  if (c.is_v41()) {
    check.Require(c.num_hash_layers == 0, "num_hash_layers must be 0 for deepseek_v41");
    if (check.status().ok()) ValidateCsa2(c, check);
  }
}

void ValidateV3(const ModelConfig& c, Checker& check) {
  check.Require(c.q_lora_rank >= 0, "q_lora_rank must be ≥ 0, got ", c.q_lora_rank);
  check.Positive("kv_lora_rank", c.kv_lora_rank);
  check.Positive("qk_nope_head_dim", c.qk_nope_head_dim);
  check.Positive("v_head_dim", c.v_head_dim);
  check.Positive("intermediate_size", c.intermediate_size);
  check.Require(c.n_shared_experts >= 0, "n_shared_experts must be ≥ 0, got ", c.n_shared_experts);
  check.Require(c.first_k_dense_replace >= 0 && c.first_k_dense_replace <= c.num_hidden_layers,
                "first_k_dense_replace (", c.first_k_dense_replace,
                ") must be in [0, num_hidden_layers = ", c.num_hidden_layers, "]");
  check.Positive("n_group", c.n_group);
  check.Require(c.topk_group >= 1 && c.topk_group <= c.n_group, "topk_group (", c.topk_group,
                ") must be in [1, n_group = ", c.n_group, "]");
  if (c.n_group > 0) {
    check.Require(c.n_routed_experts % c.n_group == 0, "n_routed_experts (", c.n_routed_experts,
                  ") must be a multiple of n_group (", c.n_group, ")");
  }
}

absl::StatusOr<ModelConfig> Parse(const std::string& json_text, const std::string& source) {
  json root;
  try {
    root = json::parse(json_text);
  } catch (const json::parse_error& e) {
    // e.what() names the line and column; the byte offset helps with one-line files.
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": malformed JSON at byte ", e.byte, ": ", e.what()));
  }
  if (!root.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": expected a JSON object at the top level, got ", root.type_name()));
  }

  ModelConfig c;
  c.source = source;
  Reader top(root, source, "");
  top.String("model_type", &c.model_type, kRequired);
  RETURN_IF_ERROR(top.status());
  const bool v41 = c.model_type == "deepseek_v41";
  const bool v4 = c.model_type == "deepseek_v4" || v41;
  c.family = v41 ? ModelFamily::kV41 : v4 ? ModelFamily::kV4 : ModelFamily::kV3;
  if (!v4 && c.model_type != "deepseek_v3") {
    return absl::InvalidArgumentError(absl::StrCat(
        source, ": model_type \"", c.model_type,
        "\" is not supported (expected \"deepseek_v4\", \"deepseek_v41\", or \"deepseek_v3\" for "
        "planning)"));
  }
  // V4.1 nests the language model under text_config; the rest of the keys live there.
  const json* text = v41 ? top.Object("text_config", kRequired) : &root;
  RETURN_IF_ERROR(top.status());
  Reader r(*text, source, v41 ? "text_config." : "");
  if (v41) {
    top.Int("image_token_id", &c.image_token_id);
    ReadQuantization(top, source, &c);
    RETURN_IF_ERROR(top.status());  // vision_config stays in `extra`: text only
    std::string text_type;
    r.String("model_type", &text_type);
  }

  // Keys both model types share.
  r.Int("vocab_size", &c.vocab_size, kRequired);
  r.Int("hidden_size", &c.hidden_size, kRequired);
  r.Int("num_hidden_layers", &c.num_hidden_layers, kRequired);
  r.Int("num_attention_heads", &c.num_attention_heads, kRequired);
  r.Int("num_key_value_heads", &c.num_key_value_heads);
  r.Int("qk_rope_head_dim", &c.qk_rope_head_dim, kRequired);
  r.Double("rope_theta", &c.rope_theta);
  ReadRopeScaling(r, source, &c.rope_scaling);
  r.Int("max_position_embeddings", &c.max_position_embeddings);
  r.Int("n_routed_experts", &c.n_routed_experts, kRequired);
  r.Int("n_shared_experts", &c.n_shared_experts);
  r.Int("num_experts_per_tok", &c.num_experts_per_tok, kRequired);
  r.Int("moe_intermediate_size", &c.moe_intermediate_size, kRequired);
  r.Double("routed_scaling_factor", &c.routed_scaling_factor);
  // The transformers defaults: V3's class defaults to softmax scoring.
  c.scoring_func = v4 ? "sqrtsoftplus" : "softmax";
  r.String("scoring_func", &c.scoring_func);
  r.String("topk_method", &c.topk_method);
  r.Bool("norm_topk_prob", &c.norm_topk_prob);
  r.Int("num_nextn_predict_layers", &c.num_nextn_predict_layers);
  r.Double("rms_norm_eps", &c.rms_norm_eps);
  // Some configs list several end tokens; the first is the primary one.
  if (r.Has("eos_token_id") && r.Find("eos_token_id", kOptional)->is_array()) {
    std::vector<int64_t> eos;
    r.IntList("eos_token_id", &eos);
    if (!eos.empty()) c.eos_token_id = eos.front();
  } else {
    r.Int("eos_token_id", &c.eos_token_id);
  }
  r.Int("bos_token_id", &c.bos_token_id);
  r.Bool("tie_word_embeddings", &c.tie_word_embeddings);
  std::string hidden_act = "silu";
  r.String("hidden_act", &hidden_act);
  if (!v41) ReadQuantization(r, source, &c);
  r.String("expert_dtype", &c.expert_dtype);
  if (c.expert_dtype.empty()) c.expert_dtype = c.fp8_weights ? "fp8" : "bf16";

  if (v4) {
    r.Int("head_dim", &c.head_dim, kRequired);
    r.Int("q_lora_rank", &c.q_lora_rank, kRequired);
    r.Int("o_groups", &c.o_groups, kRequired);
    r.Int("o_lora_rank", &c.o_lora_rank, kRequired);
    r.Int("sliding_window", &c.sliding_window, kRequired);
    r.IntList("compress_ratios", &c.compress_ratios, kRequired);
    r.Double("compress_rope_theta", &c.compress_rope_theta);
    r.Int("index_n_heads", &c.index_n_heads, kRequired);
    r.Int("index_head_dim", &c.index_head_dim, kRequired);
    r.Int("index_topk", &c.index_topk, kRequired);
    r.Int("num_hash_layers", &c.num_hash_layers);
    r.Double("swiglu_limit", &c.swiglu_limit);
    // The inference code's defaults (ModelArgs) for the mHC keys.
    c.hc_mult = 4;
    c.hc_sinkhorn_iters = 20;
    r.Int("hc_mult", &c.hc_mult);
    r.Int("hc_sinkhorn_iters", &c.hc_sinkhorn_iters);
    r.Double("hc_eps", &c.hc_eps);
    ReadEngram(r, &c);
    if (v41) {
      r.IntList("kv_source_layer_ids", &c.kv_source_layers, kRequired);
      r.IntList("index_source_layer_ids", &c.index_source_layers, kRequired);
      r.Int("candidate_source_layer_id", &c.candidate_source_layer);
      r.Int("candidate_topk_blocks", &c.candidate_topk_blocks);
      r.Int("candidate_block_size", &c.candidate_block_size);
      r.Int("dspark_block_size", &c.dspark_block_size);
      r.Int("dspark_noise_token_id", &c.dspark_noise_token_id);
      r.IntList("dspark_target_layer_ids", &c.dspark_target_layer_ids);
      r.Int("dspark_markov_rank", &c.dspark_markov_rank);
      r.Int("dspark_n_routed_experts", &c.dspark_n_routed_experts);
      r.Int("dspark_num_experts_per_tok", &c.dspark_num_experts_per_tok);
    }
  } else {
    r.Int("q_lora_rank", &c.q_lora_rank);  // null in V2-Lite-style configs: no query LoRA
    r.Int("kv_lora_rank", &c.kv_lora_rank, kRequired);
    r.Int("qk_nope_head_dim", &c.qk_nope_head_dim, kRequired);
    r.Int("v_head_dim", &c.v_head_dim, kRequired);
    r.Int("intermediate_size", &c.intermediate_size, kRequired);
    r.Int("first_k_dense_replace", &c.first_k_dense_replace);
    r.Int("n_group", &c.n_group);
    r.Int("topk_group", &c.topk_group);
    c.num_key_value_heads = c.num_attention_heads;
    r.Int("num_key_value_heads", &c.num_key_value_heads);
    c.head_dim = c.qk_nope_head_dim + c.qk_rope_head_dim;
  }
  RETURN_IF_ERROR(r.status());
  c.extra = r.Unused();
  if (v41) {
    const json unused = top.Unused();
    for (const auto& [key, value] : unused.items()) c.extra[key] = value;
  }

  Checker check(source);
  check.Positive("vocab_size", c.vocab_size);
  check.Positive("hidden_size", c.hidden_size);
  check.Positive("num_hidden_layers", c.num_hidden_layers);
  check.Positive("num_attention_heads", c.num_attention_heads);
  check.Positive("qk_rope_head_dim", c.qk_rope_head_dim);
  check.Require(c.num_nextn_predict_layers >= 0, "num_nextn_predict_layers must be ≥ 0, got ",
                c.num_nextn_predict_layers);
  check.Positive("rms_norm_eps", c.rms_norm_eps);
  check.Positive("rope_theta", c.rope_theta);
  check.Require(c.max_position_embeddings >= 0, "max_position_embeddings must be ≥ 0, got ",
                c.max_position_embeddings);
  check.Require(hidden_act == "silu", "hidden_act \"", hidden_act,
                "\" is not supported (expected \"silu\")");
  ValidateMoe(c, check);
  if (v4) {
    ValidateV4(c, check);
  } else {
    ValidateV3(c, check);
  }
  RETURN_IF_ERROR(check.status());
  return c;
}

}  // namespace

bool ModelConfig::is_kv_source(int layer) const {
  return is_v41() && std::find(kv_source_layers.begin(), kv_source_layers.end(), layer) !=
                         kv_source_layers.end();
}

bool ModelConfig::is_index_source(int layer) const {
  return is_v41() && std::find(index_source_layers.begin(), index_source_layers.end(), layer) !=
                         index_source_layers.end();
}

namespace {
// The largest entry of an ascending list that is ≤ layer, or -1.
int NearestAtOrBefore(const std::vector<int>& layers, int layer) {
  int found = -1;
  for (int l : layers) {
    if (l <= layer) found = l;
  }
  return found;
}
}  // namespace

int ModelConfig::kv_source_of(int layer) const {
  if (ratio(layer) == 0 || is_mtp(layer)) return -1;
  return is_v41() ? NearestAtOrBefore(kv_source_layers, layer) : layer;
}

int ModelConfig::index_source_of(int layer) const {
  if (!is_v41() || ratio(layer) == 0 || is_mtp(layer)) return -1;
  return NearestAtOrBefore(index_source_layers, layer);
}

absl::StatusOr<ModelConfig> ParseModelConfig(const std::string& json_text,
                                             const std::string& source) {
  // The parser reports every problem as a Status; nothing may escape as an exception.
  try {
    return Parse(json_text, source);
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat(source, ": unexpected error: ", e.what()));
  }
}

absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::NotFoundError(
        absl::StrCat("cannot open model config ", path, ": ", std::strerror(errno)));
  }
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat("cannot read model config ", path));
  return ParseModelConfig(text.str(), path);
}

absl::StatusOr<ModelConfig> LoadModelConfigFromDir(const std::string& dir) {
  return LoadModelConfig((std::filesystem::path(dir) / "config.json").string());
}

std::string ModelNameFromDir(const std::string& checkpoint_dir) {
  std::filesystem::path path(checkpoint_dir);
  if (!path.has_filename()) path = path.parent_path();  // "dir/" → "dir"
  return path.filename().string();
}

}  // namespace dsv4
