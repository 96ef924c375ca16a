// Generated checkpoints and loaded models for the forward-pass tests and benchmark.
#ifndef DSV4_TESTS_MODEL_TEST_UTIL_H_
#define DSV4_TESTS_MODEL_TEST_UTIL_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "attention_node/model.h"
#include "core/checkpoint_generator.h"
#include "core/model_config.h"
#include "core/safetensors.h"
#include "expert_node/in_process_executor.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace dsv4::testing {

inline std::string PresetDir(const std::string& preset) {
  return std::string(DSV4_SOURCE_DIR) + "/models/" + preset;
}

inline std::string PresetJson(const std::string& preset) {
  std::ifstream in(std::string(DSV4_SOURCE_DIR) + "/models/" + preset + "/config.json");
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// A loaded checkpoint: config, files, the attention-side model and in-process experts.
struct LoadedModel {
  ModelConfig config;
  std::unique_ptr<Checkpoint> checkpoint;
  std::unique_ptr<Model> model;
  std::unique_ptr<InProcessExecutor> experts;
};

inline absl::StatusOr<LoadedModel> LoadModelDir(const std::string& dir,
                                                const ModelOptions& options = {}) {
  LoadedModel m;
  absl::StatusOr<ModelConfig> config = LoadModelConfigFromDir(dir);
  if (!config.ok()) return config.status();
  m.config = *config;
  absl::StatusOr<std::unique_ptr<Checkpoint>> ck = Checkpoint::Open(dir);
  if (!ck.ok()) return ck.status();
  m.checkpoint = std::move(*ck);
  absl::StatusOr<std::unique_ptr<Model>> model = Model::Load(m.config, m.checkpoint.get(), options);
  if (!model.ok()) return model.status();
  m.model = std::move(*model);
  absl::StatusOr<std::unique_ptr<InProcessExecutor>> experts =
      InProcessExecutor::Load(m.config, m.checkpoint.get(), options.load_mtp);
  if (!experts.ok()) return experts.status();
  m.experts = std::move(*experts);
  return m;
}

// Writes a seeded checkpoint for `json_text` into `dir`, then loads it. Engram models need
// `tokenizer_path` (a tokenizer.json, copied into the checkpoint).
inline absl::StatusOr<LoadedModel> GenerateAndLoad(const std::string& json_text,
                                                   const std::string& dir, uint64_t seed,
                                                   const ModelOptions& options = {},
                                                   const std::string& tokenizer_path = "") {
  absl::StatusOr<ModelConfig> config = ParseModelConfig(json_text, "config.json");
  if (!config.ok()) return config.status();
  GenerateOptions gen;
  gen.seed = seed;
  gen.tokenizer_path = tokenizer_path;
  if (absl::Status s = GenerateCheckpoint(*config, json_text, dir, gen); !s.ok()) return s;
  return LoadModelDir(dir, options);
}

// Logits of order one: not exploded or vanished over the layers.
inline void ExpectWellConditioned(const std::vector<float>& logits) {
  double max_abs = 0;
  for (float v : logits) max_abs = std::max(max_abs, std::fabs(static_cast<double>(v)));
  EXPECT_GT(max_abs, 0.1);
  EXPECT_LT(max_abs, 1e3);
}

// Logits [T, V] of a one-shot prefill from position 0 in a fresh sequence.
inline Tensor Prefill(const LoadedModel& m, const std::vector<int32_t>& tokens) {
  SequenceState state = m.model->NewSequence();
  StepInput in{&state, tokens};
  absl::StatusOr<Tensor> logits = m.model->Forward({&in, 1}, *m.experts);
  EXPECT_TRUE(logits.ok()) << logits.status();
  return logits.ok() ? *logits : Tensor();
}

// Feeds `tokens` to `state` in chunks of the given sizes; returns all logits rows.
inline std::vector<float> RunChunks(const LoadedModel& m, SequenceState* state,
                                    const std::vector<int32_t>& tokens,
                                    const std::vector<int>& chunks) {
  std::vector<float> out;
  size_t at = 0;
  for (int size : chunks) {
    StepInput in{state, absl::MakeConstSpan(tokens.data() + at, size)};
    absl::StatusOr<Tensor> logits = m.model->Forward({&in, 1}, *m.experts);
    EXPECT_TRUE(logits.ok()) << logits.status();
    if (!logits.ok()) return out;
    out.insert(out.end(), logits->data(), logits->data() + logits->numel());
    at += size;
  }
  EXPECT_EQ(at, tokens.size());
  return out;
}

// n samples of N(0, stddev²).
inline std::vector<float> RandomNormal(size_t n, float stddev, std::mt19937& rng) {
  std::normal_distribution<float> dist(0.0f, stddev);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// Deterministic pseudo-random token ids in [0, vocab).
inline std::vector<int32_t> TestTokens(int64_t count, int64_t vocab, uint64_t seed) {
  std::vector<int32_t> tokens(count);
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  for (int32_t& t : tokens) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    t = static_cast<int32_t>(x % static_cast<uint64_t>(vocab));
  }
  return tokens;
}

// max |a − b| / max |b|.
inline double RelativeError(const float* a, const float* b, int64_t n) {
  double diff = 0, scale = 0;
  for (int64_t i = 0; i < n; ++i) {
    diff = std::max(diff, std::fabs(static_cast<double>(a[i]) - b[i]));
    scale = std::max(scale, std::fabs(static_cast<double>(b[i])));
  }
  return scale > 0 ? diff / scale : diff;
}

}  // namespace dsv4::testing

#endif  // DSV4_TESTS_MODEL_TEST_UTIL_H_
