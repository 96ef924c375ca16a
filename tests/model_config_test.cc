#include "core/model_config.h"

#include <fstream>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace dsv4 {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

std::string Preset(const std::string& name) {
  return std::string(DSV4_SOURCE_DIR) + "/models/" + name + "/config.json";
}

ModelConfig LoadOrDie(const std::string& name) {
  auto config = LoadModelConfig(Preset(name));
  EXPECT_TRUE(config.ok()) << config.status();
  return config.ok() ? *config : ModelConfig{};
}

// The v4-tiny preset with one top-level key replaced (or removed when `value` is null).
std::string TinyWith(const std::string& key, const nlohmann::json& value) {
  std::ifstream in(Preset("v4-tiny"));
  nlohmann::json root = nlohmann::json::parse(in);
  if (value.is_null()) {
    root.erase(key);
  } else {
    root[key] = value;
  }
  return root.dump();
}

std::string ErrorOf(const std::string& text, const std::string& source = "bad/config.json") {
  auto config = ParseModelConfig(text, source);
  EXPECT_FALSE(config.ok());
  return config.ok() ? "" : std::string(config.status().message());
}

TEST(ModelConfigTest, EveryPresetParses) {
  for (const char* name :
       {"v4-tiny", "v4-mini", "deepseek-v4-flash", "deepseek-v4-pro", "deepseek-v3"}) {
    auto config = LoadModelConfig(Preset(name));
    EXPECT_TRUE(config.ok()) << name << ": " << config.status();
  }
}

TEST(ModelConfigTest, FlashValues) {
  const ModelConfig c = LoadOrDie("deepseek-v4-flash");
  EXPECT_TRUE(c.is_v4());
  EXPECT_EQ(c.vocab_size, 129280);
  EXPECT_EQ(c.hidden_size, 4096);
  EXPECT_EQ(c.num_hidden_layers, 43);
  EXPECT_EQ(c.num_attention_heads, 64);
  EXPECT_EQ(c.head_dim, 512);
  EXPECT_EQ(c.qk_rope_head_dim, 64);
  EXPECT_EQ(c.q_lora_rank, 1024);
  EXPECT_EQ(c.o_groups, 8);
  EXPECT_EQ(c.o_lora_rank, 1024);
  EXPECT_EQ(c.sliding_window, 128);
  ASSERT_EQ(c.compress_ratios.size(), 44u);
  EXPECT_EQ(c.ratio(0), 0);
  EXPECT_TRUE(c.is_csa(2));
  EXPECT_TRUE(c.is_hca(3));
  EXPECT_EQ(c.ratio(43), 0);  // MTP: window only
  EXPECT_DOUBLE_EQ(c.compress_rope_theta, 160000);
  EXPECT_EQ(c.rope_scaling.type, "yarn");
  EXPECT_DOUBLE_EQ(c.rope_scaling.factor, 16);
  EXPECT_EQ(c.rope_scaling.original_max_position_embeddings, 65536);
  EXPECT_EQ(c.max_position_embeddings, 1048576);
  EXPECT_EQ(c.index_n_heads, 64);
  EXPECT_EQ(c.index_head_dim, 128);
  EXPECT_EQ(c.index_topk, 512);
  EXPECT_EQ(c.n_routed_experts, 256);
  EXPECT_EQ(c.num_experts_per_tok, 6);
  EXPECT_EQ(c.moe_intermediate_size, 2048);
  EXPECT_DOUBLE_EQ(c.routed_scaling_factor, 1.5);
  EXPECT_EQ(c.scoring_func, "sqrtsoftplus");
  EXPECT_EQ(c.num_hash_layers, 3);
  EXPECT_TRUE(c.is_hash_layer(2));
  EXPECT_FALSE(c.is_hash_layer(3));
  EXPECT_DOUBLE_EQ(c.swiglu_limit, 10.0);
  EXPECT_EQ(c.hc_mult, 4);
  EXPECT_EQ(c.mix_dim(), 24);
  EXPECT_EQ(c.hc_sinkhorn_iters, 20);
  EXPECT_EQ(c.num_nextn_predict_layers, 1);
  EXPECT_TRUE(c.fp8_weights);
  EXPECT_EQ(c.weight_block_size, 128);
  EXPECT_EQ(c.expert_dtype, "fp4");
  EXPECT_FALSE(c.engram.enabled());
  // Keys the struct does not model are kept.
  EXPECT_EQ(c.extra.at("transformers_version"), "4.57.1");
  EXPECT_FALSE(c.extra.contains("hidden_size"));
}

TEST(ModelConfigTest, ProSchedule) {
  const ModelConfig c = LoadOrDie("deepseek-v4-pro");
  EXPECT_EQ(c.hidden_size, 7168);
  EXPECT_EQ(c.num_hidden_layers, 61);
  ASSERT_EQ(c.compress_ratios.size(), 62u);
  int csa = 0, hca = 0;
  for (int i = 0; i < c.num_hidden_layers; ++i) {
    csa += c.is_csa(i);
    hca += c.is_hca(i);
  }
  EXPECT_EQ(csa, 30);
  EXPECT_EQ(hca, 31);
  EXPECT_TRUE(c.is_mtp(61));
  EXPECT_DOUBLE_EQ(c.routed_scaling_factor, 2.5);
}

TEST(ModelConfigTest, V3Values) {
  const ModelConfig c = LoadOrDie("deepseek-v3");
  EXPECT_FALSE(c.is_v4());
  EXPECT_EQ(c.kv_lora_rank, 512);
  EXPECT_EQ(c.qk_nope_head_dim, 128);
  EXPECT_EQ(c.v_head_dim, 128);
  EXPECT_EQ(c.head_dim, 192);
  EXPECT_EQ(c.intermediate_size, 18432);
  EXPECT_EQ(c.first_k_dense_replace, 3);
  EXPECT_EQ(c.n_group, 8);
  EXPECT_EQ(c.topk_group, 4);
  EXPECT_EQ(c.num_experts_per_tok, 8);
  EXPECT_EQ(c.scoring_func, "sigmoid");
  EXPECT_EQ(c.num_key_value_heads, 128);
  EXPECT_TRUE(c.fp8_weights);
  EXPECT_EQ(c.expert_dtype, "fp8");
  EXPECT_TRUE(c.compress_ratios.empty());
}

TEST(ModelConfigTest, TinyAndMiniShapes) {
  const ModelConfig tiny = LoadOrDie("v4-tiny");
  EXPECT_EQ(tiny.head_dim, 96);
  EXPECT_EQ(tiny.compress_ratios, (std::vector<int>{0, 4, 8, 4, 8, 0, 0}));
  EXPECT_TRUE(tiny.is_hca(2));  // ratio 8 plays HCA
  EXPECT_EQ(tiny.rope_scaling.original_max_position_embeddings, 64);
  const ModelConfig mini = LoadOrDie("v4-mini");
  EXPECT_EQ(mini.head_dim, 512);
  EXPECT_EQ(mini.qk_rope_head_dim, 64);
  EXPECT_EQ(mini.compress_ratios.size(), 9u);
}

TEST(ModelConfigTest, DimsNeedNotBeMultiplesOf128) {
  // 96-row wkv and 192-column wo_a are fine; only FP4 experts need multiples of 32.
  EXPECT_TRUE(ParseModelConfig(TinyWith("hidden_size", 160), "x.json").ok());
  EXPECT_THAT(ErrorOf(TinyWith("hidden_size", 100)),
              AllOf(HasSubstr("hidden_size"), HasSubstr("multiple of 32")));
  nlohmann::json root = nlohmann::json::parse(TinyWith("expert_dtype", "fp8"));
  root["hidden_size"] = 100;
  EXPECT_TRUE(ParseModelConfig(root.dump(), "x.json").ok());
}

TEST(ModelConfigTest, MissingKeyNamesFileAndKey) {
  EXPECT_THAT(
      ErrorOf(TinyWith("o_groups", nullptr), "models/x/config.json"),
      AllOf(HasSubstr("models/x/config.json"), HasSubstr("o_groups"), HasSubstr("missing")));
  EXPECT_THAT(ErrorOf(TinyWith("compress_ratios", nullptr)), HasSubstr("compress_ratios"));
}

TEST(ModelConfigTest, WrongTypeNamesKeyAndExpectedType) {
  EXPECT_THAT(ErrorOf(TinyWith("hidden_size", "abc")),
              AllOf(HasSubstr("bad/config.json"), HasSubstr("hidden_size"),
                    HasSubstr("expected an integer"), HasSubstr("abc")));
  EXPECT_THAT(ErrorOf(TinyWith("rope_theta", "big")),
              AllOf(HasSubstr("rope_theta"), HasSubstr("expected a number")));
  EXPECT_THAT(ErrorOf(TinyWith("compress_ratios", {0, "4"})),
              AllOf(HasSubstr("compress_ratios[1]"), HasSubstr("expected an integer")));
  EXPECT_THAT(ErrorOf(TinyWith("hidden_size", 128.5)), HasSubstr("hidden_size"));
  // An integral float is an integer.
  EXPECT_TRUE(ParseModelConfig(TinyWith("hidden_size", 128.0), "x.json").ok());
  nlohmann::json root = nlohmann::json::parse(TinyWith("hidden_size", 128));
  root["quantization_config"]["weight_block_size"] = "128";
  EXPECT_THAT(ErrorOf(root.dump()), HasSubstr("quantization_config.weight_block_size"));
}

TEST(ModelConfigTest, CompressRatiosLength) {
  EXPECT_THAT(ErrorOf(TinyWith("compress_ratios", {0, 4, 8, 4, 8}), "models/x/config.json"),
              HasSubstr("models/x/config.json: compress_ratios has 5 entries, expected "
                        "num_hidden_layers + num_nextn_predict_layers = 7"));
  EXPECT_THAT(ErrorOf(TinyWith("compress_ratios", {0, 4, 8, 4, 8, 0, -1})),
              HasSubstr("compress_ratios[6] must be ≥ 0"));
}

TEST(ModelConfigTest, MalformedJsonNamesFileAndPosition) {
  const std::string message = ErrorOf("{\n  \"hidden_size\": 12,\n  oops\n}", "m/config.json");
  EXPECT_THAT(message,
              AllOf(HasSubstr("m/config.json"), HasSubstr("malformed JSON"), HasSubstr("line 3")));
  EXPECT_THAT(ErrorOf("[1, 2]"), HasSubstr("JSON object"));
  EXPECT_THAT(ErrorOf(""), HasSubstr("malformed JSON"));
}

TEST(ModelConfigTest, Constraints) {
  EXPECT_THAT(ErrorOf(TinyWith("o_groups", 3)), HasSubstr("multiple of o_groups"));
  EXPECT_THAT(ErrorOf(TinyWith("num_experts_per_tok", 9)), HasSubstr("num_experts_per_tok"));
  EXPECT_THAT(ErrorOf(TinyWith("n_shared_experts", 2)), HasSubstr("n_shared_experts"));
  EXPECT_THAT(ErrorOf(TinyWith("qk_rope_head_dim", 33)), HasSubstr("even"));
  EXPECT_THAT(ErrorOf(TinyWith("qk_rope_head_dim", 128)), HasSubstr("≤ head_dim"));
  EXPECT_THAT(ErrorOf(TinyWith("index_head_dim", 48)), HasSubstr("power of two"));
  EXPECT_THAT(ErrorOf(TinyWith("index_head_dim", 16)), HasSubstr("≤ index_head_dim"));
  EXPECT_THAT(ErrorOf(TinyWith("num_hash_layers", 7)), HasSubstr("num_hash_layers"));
  EXPECT_THAT(ErrorOf(TinyWith("scoring_func", "relu")), HasSubstr("scoring_func"));
  EXPECT_THAT(ErrorOf(TinyWith("head_dim", 0)), HasSubstr("head_dim must be > 0"));
  EXPECT_THAT(ErrorOf(TinyWith("model_type", "llama")), HasSubstr("model_type"));
  EXPECT_THAT(ErrorOf(TinyWith("expert_dtype", "int4")), HasSubstr("expert_dtype"));
  EXPECT_THAT(ErrorOf(TinyWith("num_key_value_heads", 4)), HasSubstr("num_key_value_heads"));
}

TEST(ModelConfigTest, QuantizationOptional) {
  const auto config = ParseModelConfig(TinyWith("quantization_config", nullptr), "x.json");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_FALSE(config->fp8_weights);
  EXPECT_EQ(config->expert_dtype, "fp4");  // stated explicitly in the preset
  EXPECT_THAT(ErrorOf(TinyWith("quantization_config",
                               {{"quant_method", "awq"}, {"weight_block_size", {128, 128}}})),
              HasSubstr("quantization_config.quant_method"));
}

// models/v41-tiny with text_config.<key> = value (null removes it).
std::string V41With(const std::string& key, const nlohmann::json& value) {
  std::ifstream in(std::string(DSV4_SOURCE_DIR) + "/models/v41-tiny/config.json");
  nlohmann::json root = nlohmann::json::parse(in);
  if (value.is_null()) {
    root["text_config"].erase(key);
  } else {
    root["text_config"][key] = value;
  }
  return root.dump();
}

// The released config (models/deepseek-v4.1-flash, spec deepseek-v41-model.md §1).
TEST(ModelConfigTest, V41ReleaseValues) {
  const auto c =
      LoadModelConfig(std::string(DSV4_SOURCE_DIR) + "/models/deepseek-v4.1-flash/config.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(c->is_v41());
  EXPECT_TRUE(c->is_v4());  // the runnable family
  EXPECT_EQ(c->hidden_size, 5120);
  EXPECT_EQ(c->num_hidden_layers, 40);
  EXPECT_EQ(c->q_lora_rank, 1280);
  EXPECT_EQ(c->n_routed_experts, 384);
  EXPECT_EQ(c->moe_intermediate_size, 2304);
  EXPECT_EQ(c->rms_norm_eps, 1e-20);
  EXPECT_TRUE(c->fp8_weights);
  EXPECT_EQ(c->weight_block_size, 32);
  EXPECT_EQ(c->expert_dtype, "fp4");  // from quantization_config
  EXPECT_EQ(c->image_token_id, 129264);
  EXPECT_EQ(c->num_hash_layers, 0);
  EXPECT_EQ(c->compress_ratios.size(), 43u);
  EXPECT_EQ(c->kv_source_layers, (std::vector<int>{2, 8, 14, 20}));
  EXPECT_EQ(c->candidate_source_layer, 20);
  EXPECT_EQ(c->kv_source_of(7), 2);
  EXPECT_EQ(c->kv_source_of(19), 14);
  EXPECT_EQ(c->kv_source_of(39), 20);
  EXPECT_EQ(c->kv_source_of(1), -1);
  EXPECT_EQ(c->index_source_of(27), 24);
  EXPECT_TRUE(c->uses_candidates(24));
  EXPECT_FALSE(c->uses_candidates(20));
  EXPECT_FALSE(c->is_csa(2));
  EXPECT_FALSE(c->is_hca(20));
  EXPECT_EQ(c->routed_experts(40), 128);  // DSpark stage 0
  EXPECT_EQ(c->routed_experts(39), 384);
  EXPECT_EQ(c->engram.layer_ids, (std::vector<int>{1, 14}));
  EXPECT_EQ(c->engram.vocab_size, (std::vector<int64_t>{16000000, 16000000, 16000000}));
  EXPECT_EQ(c->engram.compressed_vocab_size, 99092);
  EXPECT_EQ(c->engram.columns(), 24);
  EXPECT_TRUE(c->extra.contains("vision_config"));  // kept, not served
}

TEST(ModelConfigTest, V41ErrorsNameTheKey) {
  EXPECT_THAT(ErrorOf(V41With("kv_source_layer_ids", nullptr), "models/x/config.json"),
              AllOf(HasSubstr("models/x/config.json"),
                    HasSubstr("text_config.kv_source_layer_ids is missing")));
  EXPECT_THAT(ErrorOf(V41With("hidden_size", "wide")), HasSubstr("text_config.hidden_size"));
  // A compressed layer without a kv source at or before it; a source of another ratio.
  EXPECT_THAT(ErrorOf(V41With("kv_source_layer_ids", {4})),
              HasSubstr("layer 2 has compress_ratio"));
  EXPECT_THAT(ErrorOf(V41With("compress_ratios", {0, 0, 2, 1, 1, 1, 1, 1, 0})),
              HasSubstr("reads kv source layer 2"));
  EXPECT_THAT(ErrorOf(V41With("index_source_layer_ids", {4, 6})),
              HasSubstr("must also be in index_source_layer_ids"));
  EXPECT_THAT(ErrorOf(V41With("candidate_topk_blocks", 2)), HasSubstr("must cover index_topk"));
  EXPECT_THAT(ErrorOf(V41With("engram_num_embeddings", {4062, 4153})),
              HasSubstr("engram_num_embeddings[1] is 4153, but the primes"));
  EXPECT_THAT(ErrorOf(V41With("engram_compressed_vocab_size", nullptr)),
              HasSubstr("engram_compressed_vocab_size is missing"));
  nlohmann::json root = nlohmann::json::parse(V41With("hidden_size", 128));
  root.erase("text_config");
  EXPECT_THAT(ErrorOf(root.dump()), HasSubstr("text_config is missing"));
  root = nlohmann::json::parse(V41With("hidden_size", 128));
  root["quantization_config"]["weight_block_size"] = {32, 64};
  EXPECT_THAT(ErrorOf(root.dump()), HasSubstr("quantization_config.weight_block_size"));
}

TEST(ModelConfigTest, EngramVocabSizeForms) {
  auto config = ParseModelConfig(V41With("engram_vocab_size", {1009, 1009}), "x.json");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->engram.vocab_size, (std::vector<int64_t>{1009, 1009}));
  EXPECT_EQ(config->engram.pad_token_id, 2);
  EXPECT_THAT(ErrorOf(V41With("engram_vocab_size", {1009})),
              HasSubstr("engram_vocab_size has 1 entries"));
  EXPECT_THAT(ErrorOf(V41With("engram_layer_ids", {1, 8})), HasSubstr("engram_layer_ids"));
  EXPECT_THAT(ErrorOf(V41With("engram_head_dim", nullptr)),
              AllOf(HasSubstr("engram_head_dim"), HasSubstr("missing")));
}

TEST(ModelConfigTest, LoadErrors) {
  auto config = LoadModelConfig("/nonexistent/config.json");
  EXPECT_EQ(config.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(config.status().message(), HasSubstr("/nonexistent/config.json"));
  auto from_dir = LoadModelConfigFromDir(std::string(DSV4_SOURCE_DIR) + "/models/v4-tiny");
  EXPECT_TRUE(from_dir.ok()) << from_dir.status();
}

}  // namespace
}  // namespace dsv4
