// The V4 forward pass against a plain stateless reference (naive_v4.h), and its
// state-handling invariants, bitwise: decode = prefill, chunked = one-shot, batched = alone.
#include "attention_node/model.h"

#include <memory>
#include <string>
#include <vector>

#include "core/cost_model.h"
#include "core/kv_accounting.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/model_test_util.h"
#include "tests/naive_v4.h"
#include "tests/test_util.h"

namespace dsv4 {
namespace {

using testing::ExpectWellConditioned;
using testing::GenerateAndLoad;
using testing::LoadedModel;
using testing::Prefill;
using testing::PresetJson;
using testing::RelativeError;
using testing::RunChunks;
using testing::TempDir;
using testing::TestTokens;

class TinyModelTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir("v4tiny");
    absl::StatusOr<LoadedModel> m = GenerateAndLoad(PresetJson("v4-tiny"), dir_->path(), 7);
    ASSERT_TRUE(m.ok()) << m.status();
    tiny_ = new LoadedModel(std::move(*m));
  }
  static void TearDownTestSuite() {
    delete tiny_;
    delete dir_;
  }
  static TempDir* dir_;
  static LoadedModel* tiny_;
};
TempDir* TinyModelTest::dir_ = nullptr;
LoadedModel* TinyModelTest::tiny_ = nullptr;

TEST_F(TinyModelTest, MatchesNaiveReference) {
  const LoadedModel& m = *tiny_;
  const std::vector<int32_t> tokens = TestTokens(160, m.config.vocab_size, 1);
  const Tensor logits = Prefill(m, tokens);
  naive::NaiveV4 reference(m.config, m.checkpoint.get());
  const std::vector<float> expected = reference.Forward(tokens);
  ASSERT_EQ(logits.numel(), static_cast<int64_t>(expected.size()));
  ExpectWellConditioned(expected);
  EXPECT_LT(RelativeError(logits.data(), expected.data(), logits.numel()), 1e-4);
}

TEST_F(TinyModelTest, DecodeMatchesPrefillAtEveryPosition) {
  // 260 tokens: the window (8) drops old tokens, HCA (m = 8) has 32 entries and the CSA
  // indexer keeps 4 of up to 65 entries.
  const LoadedModel& m = *tiny_;
  const std::vector<int32_t> tokens = TestTokens(260, m.config.vocab_size, 2);
  const Tensor full = Prefill(m, tokens);
  const int64_t v = m.config.vocab_size;
  for (int prefix : {1, 100}) {
    std::vector<int> chunks = {prefix};
    chunks.resize(tokens.size() - prefix + 1, 1);
    SequenceState state = m.model->NewSequence();
    const std::vector<float> stepped = RunChunks(m, &state, tokens, chunks);
    ASSERT_EQ(stepped.size(), tokens.size() * v);
    double worst = 0;
    for (size_t t = prefix; t < tokens.size(); ++t) {
      worst = std::max(worst, RelativeError(stepped.data() + t * v, full.data() + t * v, v));
    }
    EXPECT_EQ(worst, 0.0) << "decode after a prefix of " << prefix;
  }
}

TEST_F(TinyModelTest, ChunkedPrefillMatchesOneShot) {
  const LoadedModel& m = *tiny_;
  const std::vector<int32_t> tokens = TestTokens(250, m.config.vocab_size, 3);
  const Tensor full = Prefill(m, tokens);
  SequenceState state = m.model->NewSequence();
  const std::vector<float> chunked = RunChunks(m, &state, tokens, {1, 6, 9, 40, 3, 90, 101});
  ASSERT_EQ(static_cast<int64_t>(chunked.size()), full.numel());
  EXPECT_EQ(RelativeError(chunked.data(), full.data(), full.numel()), 0.0);
  EXPECT_EQ(state.position(), 250);
  EXPECT_EQ(state.bytes(), SequenceKvBytes(m.config, {}, 250));
}

TEST_F(TinyModelTest, BatchOfSequencesMatchesEachAlone) {
  const LoadedModel& m = *tiny_;
  const int64_t v = m.config.vocab_size;
  const std::vector<std::vector<int32_t>> seqs = {TestTokens(37, v, 4), TestTokens(150, v, 5),
                                                  TestTokens(5, v, 6)};
  // Prefill all three in one step, then a mixed step: decode, a 20-token chunk, decode.
  std::vector<SequenceState> states(3, m.model->NewSequence());
  std::vector<StepInput> step;
  for (int i = 0; i < 3; ++i) step.push_back({&states[i], seqs[i]});
  absl::StatusOr<Tensor> batched = m.model->Forward(step, *m.experts);
  ASSERT_TRUE(batched.ok()) << batched.status();
  const std::vector<std::vector<int32_t>> more = {TestTokens(1, v, 7), TestTokens(20, v, 8),
                                                  TestTokens(1, v, 9)};
  step.clear();
  for (int i = 0; i < 3; ++i) step.push_back({&states[i], more[i]});
  absl::StatusOr<Tensor> mixed = m.model->Forward(step, *m.experts, LogitRows::kLastPerSequence);
  ASSERT_TRUE(mixed.ok()) << mixed.status();
  ASSERT_EQ(mixed->dim(0), 3);

  int64_t row = 0;
  for (int i = 0; i < 3; ++i) {
    std::vector<int32_t> all = seqs[i];
    all.insert(all.end(), more[i].begin(), more[i].end());
    const Tensor alone = Prefill(m, all);
    EXPECT_EQ(RelativeError(batched->data() + row * v, alone.data(), seqs[i].size() * v), 0.0)
        << "sequence " << i;
    EXPECT_EQ(RelativeError(mixed->data() + i * v, alone.data() + (all.size() - 1) * v, v), 0.0)
        << "sequence " << i;
    row += seqs[i].size();
  }
}

TEST_F(TinyModelTest, IndexerSelectionIsLive) {
  // The same weights with index_topk large enough to keep every entry: early positions
  // (≤ 4 entries visible) agree, late ones differ.
  nlohmann::json j = nlohmann::json::parse(PresetJson("v4-tiny"));
  j["index_topk"] = 1000;
  TempDir dir("v4tiny-topk");
  absl::StatusOr<LoadedModel> all = GenerateAndLoad(j.dump(), dir.path(), 7);
  ASSERT_TRUE(all.ok()) << all.status();
  const std::vector<int32_t> tokens = TestTokens(200, tiny_->config.vocab_size, 10);
  const Tensor a = Prefill(*tiny_, tokens);
  const Tensor b = Prefill(*all, tokens);
  const int64_t v = tiny_->config.vocab_size;
  EXPECT_EQ(RelativeError(a.data(), b.data(), 19 * v), 0.0);  // positions 0..18
  EXPECT_GT(RelativeError(a.data() + 199 * v, b.data() + 199 * v, v), 1e-3);
}

TEST_F(TinyModelTest, FreshStateForEverySequence) {
  // A reused state, after Reset(), gives the logits of a fresh one. The second prompt is
  // shorter than the compress ratios and is then decoded past them: the reference code
  // would pool its first CSA block with the previous sequence's compressor state.
  const LoadedModel& m = *tiny_;
  const std::vector<int32_t> first = TestTokens(30, m.config.vocab_size, 11);
  const std::vector<int32_t> second = TestTokens(12, m.config.vocab_size, 12);
  std::vector<int> chunks = {3};
  chunks.resize(10, 1);
  SequenceState fresh = m.model->NewSequence();
  const std::vector<float> expected = RunChunks(m, &fresh, second, chunks);
  SequenceState reused = m.model->NewSequence();
  RunChunks(m, &reused, first, {30});
  reused.Reset();
  const std::vector<float> again = RunChunks(m, &reused, second, chunks);
  ASSERT_EQ(again.size(), expected.size());
  EXPECT_EQ(RelativeError(again.data(), expected.data(), expected.size()), 0.0);
}

TEST_F(TinyModelTest, MtpIsLoadedButNotRun) {
  const WeightBytes all = tiny_->model->weight_bytes(), mtp = tiny_->model->mtp_weight_bytes();
  EXPECT_GT(mtp.released, 0);
  EXPECT_GT(all.released, mtp.released);
  ModelOptions options;
  options.load_mtp = false;
  absl::StatusOr<std::unique_ptr<Model>> no_mtp =
      Model::Load(tiny_->config, tiny_->checkpoint.get(), options);
  ASSERT_TRUE(no_mtp.ok()) << no_mtp.status();
  EXPECT_EQ((*no_mtp)->mtp_weight_bytes().released, 0);
  EXPECT_EQ((*no_mtp)->weight_bytes().released, all.released - mtp.released);
  EXPECT_EQ((*no_mtp)->weight_bytes().resident, all.resident - mtp.resident);
}

// The cost model and planner price weights as released; the runtime holds exactly those
// bytes (tensor by tensor: a mismatch would show as a difference here).
TEST_F(TinyModelTest, ReleasedBytesAreWhatTheCostModelCounts) {
  const ModelConfig& c = tiny_->config;
  WeightBytesByFormat attention_side = EdgeWeights(c);
  const int blocks = c.num_hidden_layers + c.num_nextn_predict_layers;
  for (int layer = 0; layer < blocks; ++layer) attention_side += AttentionLayerWeights(c, layer);
  EXPECT_EQ(tiny_->model->weight_bytes().released, static_cast<int64_t>(attention_side.total()));
  EXPECT_EQ(tiny_->experts->weight_bytes().released,
            static_cast<int64_t>(RoutedExpertWeights(c).total()) * c.n_routed_experts * blocks);
  // Resident: the mapped matrices as released, small vectors as fp32 copies.
  EXPECT_LE(tiny_->model->weight_bytes().resident, tiny_->model->weight_bytes().released * 11 / 10);
  EXPECT_EQ(tiny_->experts->weight_bytes().resident, tiny_->experts->weight_bytes().released);
}

TEST_F(TinyModelTest, RejectsBadInput) {
  const LoadedModel& m = *tiny_;
  SequenceState state = m.model->NewSequence();
  auto run = [&](std::vector<int32_t> tokens) {
    StepInput in{&state, tokens};
    return m.model->Forward({&in, 1}, *m.experts).status();
  };
  absl::Status s = run({1, 2, 1024});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("token id 1024 at index 2"), std::string::npos) << s;
  EXPECT_EQ(run({-1}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(run({}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(m.model->Forward({}, *m.experts).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(state.position(), 0);

  StepInput twice[2] = {{&state, std::vector<int32_t>{1}}, {&state, std::vector<int32_t>{2}}};
  EXPECT_EQ(m.model->Forward(twice, *m.experts).status().code(),
            absl::StatusCode::kInvalidArgument);

  ModelOptions options;
  options.max_seq_len = 16;
  absl::StatusOr<std::unique_ptr<Model>> short_model =
      Model::Load(m.config, m.checkpoint.get(), options);
  ASSERT_TRUE(short_model.ok());
  SequenceState s16 = (*short_model)->NewSequence();
  const std::vector<int32_t> tokens17 = TestTokens(17, m.config.vocab_size, 1);
  StepInput in{&s16, tokens17};
  s = (*short_model)->Forward({&in, 1}, *m.experts).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kOutOfRange);
  EXPECT_NE(s.message().find("exceeds the maximum of 16"), std::string::npos) << s;
  options.max_seq_len = m.config.max_position_embeddings + 1;
  EXPECT_EQ(Model::Load(m.config, m.checkpoint.get(), options).status().code(),
            absl::StatusCode::kInvalidArgument);

  // Stages out of order.
  SequenceState fresh = m.model->NewSequence();
  const std::vector<int32_t> one = {5};
  StepInput in1{&fresh, one};
  absl::StatusOr<Step> step = m.model->BeginStep({&in1, 1});
  ASSERT_TRUE(step.ok());
  EXPECT_EQ(m.model->MoeFinish(0, &*step, Tensor({1, m.config.hidden_size})).code(),
            absl::StatusCode::kFailedPrecondition);
  RoutedTokens routed;
  EXPECT_EQ(m.model->AttentionStage(1, &*step, &routed).code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(m.model->Logits(*step, LogitRows::kAll).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST_F(TinyModelTest, RejectsCheckpointThatDisagreesWithConfig) {
  const LoadedModel& m = *tiny_;
  auto load_with = [&](auto edit) {
    nlohmann::json j = nlohmann::json::parse(PresetJson("v4-tiny"));
    edit(j);
    absl::StatusOr<ModelConfig> config = ParseModelConfig(j.dump(), "edited config.json");
    EXPECT_TRUE(config.ok()) << config.status();
    return Model::Load(*config, m.checkpoint.get()).status();
  };
  absl::Status s = load_with([](nlohmann::json& j) { j["q_lora_rank"] = 64; });
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("layers.0.attn.wq_a.weight has shape [128, 128]"), std::string::npos)
      << s;
  s = load_with([](nlohmann::json& j) { j["compress_ratios"][0] = 16; });
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_NE(s.message().find("layers.0.attn.compressor.wkv.weight is missing"), std::string::npos)
      << s;
  s = load_with([](nlohmann::json& j) { j["num_hash_layers"] = 3; });
  EXPECT_NE(s.message().find("layers.2.ffn.gate.tid2eid"), std::string::npos) << s;

  nlohmann::json j = nlohmann::json::parse(PresetJson("v4-tiny"));
  j["n_routed_experts"] = 9;
  absl::StatusOr<ModelConfig> config = ParseModelConfig(j.dump(), "edited config.json");
  ASSERT_TRUE(config.ok());
  s = InProcessExecutor::Load(*config, m.checkpoint.get(), false).status();
  EXPECT_NE(s.message().find("layers.0.ffn.experts.8.w1.weight is missing"), std::string::npos)
      << s;
}

// v4-mini's attention (window 128, HCA m = 128, index_topk 64, head_dim 512) at 300 tokens:
// the window drops tokens, HCA has two entries and the indexer drops entries from
// position 259 on. Fewer experts and a smaller vocabulary keep generation fast; they do
// not change the mechanisms checked here.
TEST(MiniModelTest, ChunkedPrefillAndDecodeMatchOneShotPrefill) {
  nlohmann::json j = nlohmann::json::parse(PresetJson("v4-mini"));
  j["n_routed_experts"] = 8;
  j["vocab_size"] = 4096;
  TempDir dir("v4mini");
  absl::StatusOr<LoadedModel> m = GenerateAndLoad(j.dump(), dir.path(), 11);
  ASSERT_TRUE(m.ok()) << m.status();
  const std::vector<int32_t> tokens = TestTokens(300, m->config.vocab_size, 13);
  const Tensor full = Prefill(*m, tokens);
  std::vector<int> chunks = {1, 120, 119};  // then 60 decode steps
  chunks.resize(chunks.size() + 60, 1);
  SequenceState state = m->model->NewSequence();
  const std::vector<float> stepped = RunChunks(*m, &state, tokens, chunks);
  ASSERT_EQ(static_cast<int64_t>(stepped.size()), full.numel());
  const int64_t v = m->config.vocab_size;
  for (int64_t t : {0, 1, 120, 239, 240, 258, 259, 299}) {
    EXPECT_EQ(RelativeError(stepped.data() + t * v, full.data() + t * v, v), 0.0) << t;
  }
  EXPECT_EQ(RelativeError(stepped.data(), full.data(), full.numel()), 0.0);
}

// Official-layout configs beyond the presets: dims that are not multiples of 128 (partial
// FP8 scale blocks), no hash layers, no MTP, no CSA, non-FP4 experts.
TEST(ModelVariantsTest, MatchNaiveReference) {
  struct Variant {
    const char* name;
    nlohmann::json edits;
  };
  const Variant variants[] = {
      {"hidden 96, no hash layers, no MTP",
       {{"hidden_size", 96},
        {"num_hidden_layers", 3},
        {"num_hash_layers", 0},
        {"num_nextn_predict_layers", 0},
        {"compress_ratios", {4, 8, 0}},
        {"q_lora_rank", 100},
        {"o_lora_rank", 40},
        {"head_dim", 80},
        {"moe_intermediate_size", 96},
        {"sliding_window", 5},
        {"index_topk", 3}}},
      {"hidden 200, no CSA, FP8 experts, one hash layer",
       {{"hidden_size", 200},
        {"num_hidden_layers", 3},
        {"num_hash_layers", 1},
        {"compress_ratios", {16, 0, 3, 0}},
        {"expert_dtype", "fp8"},
        {"num_attention_heads", 6},
        {"o_groups", 3},
        {"moe_intermediate_size", 72},
        {"sliding_window", 24},
        {"num_experts_per_tok", 3}}},
  };
  for (const Variant& variant : variants) {
    SCOPED_TRACE(variant.name);
    nlohmann::json j = nlohmann::json::parse(PresetJson("v4-tiny"));
    j.update(variant.edits);
    TempDir dir("v4variant");
    absl::StatusOr<LoadedModel> m = GenerateAndLoad(j.dump(), dir.path(), 3);
    ASSERT_TRUE(m.ok()) << m.status();
    const std::vector<int32_t> tokens = TestTokens(100, m->config.vocab_size, 5);
    const Tensor logits = Prefill(*m, tokens);
    naive::NaiveV4 reference(m->config, m->checkpoint.get());
    const std::vector<float> expected = reference.Forward(tokens);
    ASSERT_EQ(logits.numel(), static_cast<int64_t>(expected.size()));
    EXPECT_LT(RelativeError(logits.data(), expected.data(), logits.numel()), 1e-4);
    // And decode of the tail equals the prefill.
    SequenceState state = m->model->NewSequence();
    std::vector<int> chunks = {70};
    chunks.resize(31, 1);
    const std::vector<float> stepped = RunChunks(*m, &state, tokens, chunks);
    EXPECT_EQ(RelativeError(stepped.data(), logits.data(), logits.numel()), 0.0);
  }
}

}  // namespace
}  // namespace dsv4
