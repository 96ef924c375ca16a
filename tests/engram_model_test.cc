// Engram inside the V4.1 forward pass (v41-tiny): it changes the logits, decode equals
// prefill bit for bit, and logits with tables on memory nodes equal logits with local
// tables, also when a replica dies mid-run.
#include <memory>
#include <vector>

#include "attention_node/model.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/engram_test_util.h"
#include "tests/model_test_util.h"
#include "tests/test_util.h"

namespace dsv4 {
namespace {

using testing::LoadedModel;

// Tokens repeat a motif so n-grams recur (as in text) and the LRU cache gets hits.
std::vector<int32_t> Tokens(int count) {
  const int32_t motif[] = {5, 700, 17, 300, 17, 42, 1000};
  std::vector<int32_t> t;
  for (int i = 0; i < count; ++i) t.push_back(motif[i % 7] + (i / 14) % 2);
  return t;
}

// All logits rows of a prefill of `prefix` tokens, then one-token decode steps.
std::vector<float> RunSteps(const LoadedModel& m, const std::vector<int32_t>& tokens, int prefix,
                            const std::function<void(int)>& before_step = nullptr) {
  SequenceState state = m.model->NewSequence();
  std::vector<float> out;
  for (size_t at = 0, step = 0; at < tokens.size(); ++step) {
    if (before_step) before_step(static_cast<int>(step));
    const size_t size = at == 0 ? prefix : 1;
    StepInput in{&state, absl::MakeConstSpan(tokens.data() + at, size)};
    absl::StatusOr<Tensor> logits = m.model->Forward({&in, 1}, *m.experts);
    EXPECT_TRUE(logits.ok()) << logits.status();
    if (!logits.ok()) return out;
    out.insert(out.end(), logits->data(), logits->data() + logits->numel());
    at += size;
  }
  return out;
}

class EngramModelTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new testing::TempDir("v41tiny-engram");
    absl::StatusOr<LoadedModel> m =
        testing::GenerateAndLoad(testing::PresetJson("v41-tiny"), dir_->path(), 7, {},
                                 testing::PresetDir("v41-tiny") + "/tokenizer.json");
    ASSERT_TRUE(m.ok()) << m.status();
    local_ = new LoadedModel(std::move(*m));
  }
  static void TearDownTestSuite() {
    delete local_;
    delete dir_;
  }
  static testing::TempDir* dir_;
  static LoadedModel* local_;
};
testing::TempDir* EngramModelTest::dir_ = nullptr;
LoadedModel* EngramModelTest::local_ = nullptr;

TEST_F(EngramModelTest, EngramChangesTheLogits) {
  // The same seed gives the same weights under the same names: only Engram differs.
  nlohmann::json config = nlohmann::json::parse(testing::PresetJson("v41-tiny"));
  for (const char* key : {"engram_layer_ids", "engram_num_embeddings", "engram_max_ngram_size",
                          "engram_vocab_size", "engram_n_heads", "engram_head_dim",
                          "engram_pad_token_id", "engram_compressed_vocab_size"}) {
    config["text_config"].erase(key);
  }
  testing::TempDir plain_dir("v41tiny-plain");
  absl::StatusOr<LoadedModel> plain = testing::GenerateAndLoad(config.dump(), plain_dir.path(), 7);
  ASSERT_TRUE(plain.ok()) << plain.status();
  const std::vector<int32_t> tokens = Tokens(24);
  const std::vector<float> with = RunSteps(*local_, tokens, 24),
                           without = RunSteps(*plain, tokens, 24);
  ASSERT_EQ(with.size(), without.size());
  EXPECT_GT(testing::RelativeError(with.data(), without.data(), with.size()), 1e-2);
}

TEST_F(EngramModelTest, DecodeMatchesPrefill) {
  const std::vector<int32_t> tokens = Tokens(30);
  const std::vector<float> full = RunSteps(*local_, tokens, 30),
                           stepped = RunSteps(*local_, tokens, 4);
  ASSERT_EQ(full.size(), stepped.size());
  EXPECT_EQ(stepped, full);
}

TEST_F(EngramModelTest, RemoteTablesGiveTheLocalLogits) {
  const std::vector<int32_t> tokens = Tokens(30);
  const std::vector<float> local = RunSteps(*local_, tokens, 10);
  auto servers = engram::testing::StartServers(dir_->path(), 2, 1);
  absl::StatusOr<std::unique_ptr<engram::EngramClient>> client =
      engram::EngramClient::Create(local_->config, engram::testing::Options(servers, 1));
  ASSERT_TRUE(client.ok()) << client.status();
  ModelOptions options;
  options.engram_rows = client->get();
  absl::StatusOr<LoadedModel> remote = testing::LoadModelDir(dir_->path(), options);
  ASSERT_TRUE(remote.ok()) << remote.status();
  EXPECT_EQ(RunSteps(*remote, tokens, 10), local);
  const engram::ClientStats stats = (*client)->stats();
  EXPECT_EQ(stats.fetches, 21u);  // one per step
  EXPECT_GT(stats.cache_hits, 0u);
}

TEST_F(EngramModelTest, KilledReplicaChangesNothing) {
  const std::vector<int32_t> tokens = Tokens(30);
  const std::vector<float> local = RunSteps(*local_, tokens, 10);
  auto servers = engram::testing::StartServers(dir_->path(), 2, 2);
  engram::ClientOptions client_options = engram::testing::Options(servers, 2);
  client_options.cache_rows = 0;  // every step asks the servers
  absl::StatusOr<std::unique_ptr<engram::EngramClient>> client =
      engram::EngramClient::Create(local_->config, client_options);
  ASSERT_TRUE(client.ok()) << client.status();
  ModelOptions options;
  options.engram_rows = client->get();
  absl::StatusOr<LoadedModel> remote = testing::LoadModelDir(dir_->path(), options);
  ASSERT_TRUE(remote.ok()) << remote.status();
  const std::vector<float> logits = RunSteps(*remote, tokens, 10, [&](int step) {
    if (step == 5) servers[0]->Shutdown();
  });
  EXPECT_EQ(logits, local);
  EXPECT_GE((*client)->stats().retries, 1u);
  EXPECT_EQ((*client)->stats().failures, 0u);
}

}  // namespace
}  // namespace dsv4
