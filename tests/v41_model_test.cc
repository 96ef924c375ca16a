// The DeepSeek-V4.1 forward pass (CSA2 attention with shared compressed KV, the two-level
// indexer, lagged mHC, Engram) against a plain stateless reference (naive_v41.h), and its
// state-handling invariants, bitwise: decode = prefill, chunked = one-shot (spec
// deepseek-v41-model.md §6.1).
#include <algorithm>
#include <cmath>
#include <memory>
#include <numeric>
#include <set>
#include <string>
#include <vector>

#include "attention_node/model.h"
#include "core/engram_hash.h"
#include "core/engram_token_map.h"
#include "core/tokenizer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/model_test_util.h"
#include "tests/naive_v41.h"
#include "tests/test_util.h"

namespace dsv4 {
namespace {

using testing::ExpectWellConditioned;
using testing::GenerateAndLoad;
using testing::LoadedModel;
using testing::Prefill;
using testing::PresetDir;
using testing::PresetJson;
using testing::RelativeError;
using testing::RunChunks;
using testing::TempDir;
using testing::TestTokens;

constexpr int kPromptLength = 40;

std::string TinyTokenizer() { return PresetDir("v41-tiny") + "/tokenizer.json"; }

// The compressed token map of the v41-tiny tokenizer.
std::vector<int64_t> TinyTokenMap(int64_t* size = nullptr) {
  absl::StatusOr<Tokenizer> tokenizer = Tokenizer::Load(TinyTokenizer());
  EXPECT_TRUE(tokenizer.ok()) << tokenizer.status();
  if (!tokenizer.ok()) return {};
  EngramTokenMap map = BuildEngramTokenMap(*tokenizer);
  if (size) *size = map.size;
  return map.compressed;
}

// Prompt tokens: ids below the image token (refused in text-only serving) and below the
// tokenizer's size; a repeated stretch makes n-grams recur.
std::vector<int32_t> Prompt(const ModelConfig& config, int64_t count, uint64_t seed) {
  int64_t bound = config.vocab_size;
  if (config.image_token_id >= 0) bound = std::min(bound, config.image_token_id);
  bound = std::min<int64_t>(bound, TinyTokenMap().size());
  std::vector<int32_t> tokens = TestTokens(count, bound, seed);
  for (int64_t i = 20; i < std::min<int64_t>(count, 26); ++i) tokens[i] = tokens[i - 12];
  return tokens;
}

// The runtime's logits for `tokens` against the reference's, relative to the logit scale.
void ExpectMatchesReference(const LoadedModel& m, const std::vector<int32_t>& tokens) {
  const Tensor logits = Prefill(m, tokens);
  naive::NaiveV41 reference(m.config, m.checkpoint.get(), TinyTokenMap());
  const std::vector<float> expected = reference.Forward(tokens);
  ASSERT_EQ(logits.numel(), static_cast<int64_t>(expected.size()));
  ExpectWellConditioned(expected);
  const int64_t v = m.config.vocab_size;
  for (size_t t = 0; t < tokens.size(); ++t) {
    EXPECT_LT(RelativeError(logits.data() + t * v, expected.data() + t * v, v), 1e-4)
        << "position " << t;
  }
  EXPECT_LT(RelativeError(logits.data(), expected.data(), logits.numel()), 1e-4);
}

class V41TinyModelTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir("v41tiny");
    absl::StatusOr<LoadedModel> m =
        GenerateAndLoad(PresetJson("v41-tiny"), dir_->path(), 7, {}, TinyTokenizer());
    ASSERT_TRUE(m.ok()) << m.status();
    tiny_ = new LoadedModel(std::move(*m));
  }
  static void TearDownTestSuite() {
    delete tiny_;
    delete dir_;
  }
  // v41-tiny with text_config keys changed, generated with the same seed (the same
  // weights, as no tensor shape changes).
  static absl::StatusOr<LoadedModel> Variant(const nlohmann::json& changes, const TempDir& dir) {
    nlohmann::json j = nlohmann::json::parse(PresetJson("v41-tiny"));
    j["text_config"].update(changes);
    return GenerateAndLoad(j.dump(), dir.path(), 7, {}, TinyTokenizer());
  }
  static TempDir* dir_;
  static LoadedModel* tiny_;
};
TempDir* V41TinyModelTest::dir_ = nullptr;
LoadedModel* V41TinyModelTest::tiny_ = nullptr;

TEST_F(V41TinyModelTest, TokenMapMatchesConfig) {
  int64_t size = 0;
  const std::vector<int64_t> map = TinyTokenMap(&size);
  EXPECT_EQ(size, tiny_->config.engram.compressed_vocab_size);
  ASSERT_GT(map.size(), static_cast<size_t>(tiny_->config.engram.pad_token_id));
}

TEST_F(V41TinyModelTest, LoadsFp8With32x32BlocksAndEngramTables) {
  Checkpoint& ck = *tiny_->checkpoint;
  const int64_t b = tiny_->config.weight_block_size;
  ASSERT_EQ(b, 32);
  EXPECT_TRUE(ck.LoadF32("layers.0.attn.wq_a.weight", {b, b}).ok());
  EXPECT_FALSE(ck.LoadF32("layers.0.attn.wq_a.weight").ok());  // 128×128 does not fit
  const std::string table =
      "layers." + std::to_string(tiny_->config.engram.layer_ids[0]) + ".engram.embed.weight";
  absl::StatusOr<Tensor> rows = ck.LoadF32(table, {1, 32});
  ASSERT_TRUE(rows.ok()) << rows.status();
  EXPECT_EQ(rows->dim(0), tiny_->config.engram.num_embeddings[0]);
  EXPECT_EQ(rows->dim(1), tiny_->config.engram.head_dim);
}

TEST_F(V41TinyModelTest, EngramHashAsOfficial) {
  // The primes: first unused primes above engram_vocab_size − 1, in (layer, order, head)
  // order, summing to engram_num_embeddings.
  const ModelConfig& c = tiny_->config;
  naive::NaiveV41 reference(c, tiny_->checkpoint.get(), TinyTokenMap());
  std::set<int64_t> all;
  for (size_t e = 0; e < c.engram.layer_ids.size(); ++e) {
    const std::vector<int64_t>& primes = reference.Primes(static_cast<int>(e));
    ASSERT_EQ(static_cast<int>(primes.size()), c.engram.columns());
    int64_t sum = 0;
    for (int64_t p : primes) {
      EXPECT_GT(p, c.engram.vocab_size[0] - 1);
      EXPECT_TRUE(all.insert(p).second) << p << " used twice";
      sum += p;
    }
    EXPECT_EQ(sum, c.engram.num_embeddings[e]);
  }
  // v41-tiny: engram_vocab_size 1009, N = 3, K = 2. Every order's search restarts at 1008,
  // so layer 1's bigram heads take 1009, 1013 and its trigram heads the next unused 1019,
  // 1021; layer 5 then 1031, 1033 | 1039, 1049.
  EXPECT_EQ(reference.Primes(0), (std::vector<int64_t>{1009, 1013, 1019, 1021}));
  EXPECT_EQ(reference.Primes(1), (std::vector<int64_t>{1031, 1033, 1039, 1049}));

  // The release (spec §3.3): the first 48 primes above 15,999,999.
  absl::StatusOr<ModelConfig> flash =
      ParseModelConfig(PresetJson("deepseek-v4.1-flash"), "deepseek-v4.1-flash");
  ASSERT_TRUE(flash.ok()) << flash.status();
  naive::NaiveV41 release(*flash, nullptr, {});
  const std::vector<int64_t>& first = release.Primes(0);
  ASSERT_EQ(first.size(), 24u);
  EXPECT_EQ(std::vector<int64_t>(first.begin(), first.begin() + 8),
            (std::vector<int64_t>{16000057, 16000079, 16000081, 16000097, 16000121, 16000129,
                                  16000133, 16000183}));
  EXPECT_EQ(first[23], 16000463);
  EXPECT_EQ(release.Primes(1)[0], 16000477);
  EXPECT_EQ(release.Primes(1)[23], 16000889);
  for (int e = 0; e < 2; ++e) {
    const std::vector<int64_t>& primes = release.Primes(e);
    EXPECT_EQ(std::accumulate(primes.begin(), primes.end(), int64_t{0}),
              flash->engram.num_embeddings[e]);
  }

  // Row ids by hand at positions 0 and 2 of a prompt: position 0's look-backs are the pad.
  const std::vector<int64_t> map = TinyTokenMap();
  const std::vector<int32_t> tokens = {17, 300, 5};
  const std::vector<std::vector<int64_t>> rows = reference.EngramRows(tokens, 0);
  const std::vector<int64_t> m =
      EngramMultipliers(c.engram.layer_ids[0], c.engram.compressed_vocab_size, 3);
  const int64_t pad = map[c.engram.pad_token_id];
  const int64_t p0 = (map[17] * m[0]) ^ (pad * m[1]);
  const int64_t p2 = (map[5] * m[0]) ^ (map[300] * m[1]);
  const int64_t p0_tri = p0 ^ (pad * m[2]);
  const int64_t p2_tri = p2 ^ (map[17] * m[2]);
  EXPECT_EQ(rows[0], (std::vector<int64_t>{p0 % 1009, p0 % 1013 + 1009, p0_tri % 1019 + 2022,
                                           p0_tri % 1021 + 3041}));
  EXPECT_EQ(rows[2], (std::vector<int64_t>{p2 % 1009, p2 % 1013 + 1009, p2_tri % 1019 + 2022,
                                           p2_tri % 1021 + 3041}));
}

TEST_F(V41TinyModelTest, MatchesNaiveReference) {
  ExpectMatchesReference(*tiny_, Prompt(tiny_->config, kPromptLength, 1));
}

TEST_F(V41TinyModelTest, MatchesNaiveReferenceOnALongerOddPrompt) {
  // An odd length leaves a ratio-2 group incomplete; 97 positions give ratio-1 layers 49
  // candidate blocks of which 3 are kept.
  ExpectMatchesReference(*tiny_, Prompt(tiny_->config, 97, 6));
}

TEST_F(V41TinyModelTest, SelectionAndCandidatePoolAreExercised) {
  // In the reference on the test prompt: every index source keeps fewer entries than it
  // sees late in the prompt, the candidate pool excludes visible positions, and the pool
  // source's consumers select only inside it.
  const ModelConfig& c = tiny_->config;
  const std::vector<int32_t> tokens = Prompt(c, kPromptLength, 1);
  naive::NaiveV41 reference(c, tiny_->checkpoint.get(), TinyTokenMap());
  reference.Forward(tokens);
  ASSERT_GE(c.candidate_source_layer, 0);
  bool pool_excludes = false;
  for (int layer : c.index_source_layers) {
    bool fewer = false;
    for (int64_t t = 0; t < kPromptLength; ++t) {
      const std::vector<int64_t>& sel = reference.Selection(layer, t);
      const int64_t visible = reference.Visible(layer, t);
      EXPECT_EQ(static_cast<int64_t>(sel.size()), std::min<int64_t>(c.index_topk, visible))
          << "layer " << layer << " position " << t;
      EXPECT_TRUE(std::is_sorted(sel.begin(), sel.end()));
      fewer = fewer || static_cast<int64_t>(sel.size()) < visible;
      if (layer == c.candidate_source_layer) {
        pool_excludes = pool_excludes || static_cast<int64_t>(reference.Pool(t).size()) < visible;
      }
      if (c.uses_candidates(layer)) {
        const std::vector<int64_t>& pool = reference.Pool(t);
        for (int64_t j : sel) {
          EXPECT_TRUE(std::binary_search(pool.begin(), pool.end(), j))
              << "layer " << layer << " position " << t << " selects " << j;
        }
      }
    }
    EXPECT_TRUE(fewer) << "index source " << layer << " always keeps every entry";
  }
  EXPECT_TRUE(pool_excludes);
  EXPECT_GT(std::count(c.index_source_layers.begin(), c.index_source_layers.end(),
                       c.candidate_source_layer),
            0);
  EXPECT_TRUE(std::any_of(c.index_source_layers.begin(), c.index_source_layers.end(),
                          [&](int l) { return c.uses_candidates(l); }));
}

TEST_F(V41TinyModelTest, IndexerSelectionIsLive) {
  // The same weights keeping every visible entry (index_topk and the pool large enough):
  // the runtime still matches the reference, agrees with v41-tiny early (≤ 4 entries
  // visible everywhere) and differs late.
  TempDir dir("v41tiny-topk");
  absl::StatusOr<LoadedModel> all =
      Variant({{"index_topk", 1000}, {"candidate_topk_blocks", 1000}}, dir);
  ASSERT_TRUE(all.ok()) << all.status();
  const std::vector<int32_t> tokens = Prompt(tiny_->config, kPromptLength, 2);
  ExpectMatchesReference(*all, tokens);
  const Tensor a = Prefill(*tiny_, tokens);
  const Tensor b = Prefill(*all, tokens);
  const int64_t v = tiny_->config.vocab_size;
  // Ratio 1 layers see t + 1 entries: positions 0..3 keep everything.
  EXPECT_EQ(RelativeError(a.data(), b.data(), 4 * v), 0.0);
  EXPECT_GT(
      RelativeError(a.data() + (kPromptLength - 1) * v, b.data() + (kPromptLength - 1) * v, v),
      1e-3);
}

TEST_F(V41TinyModelTest, CandidatePoolIsLive) {
  // A pool of every block: the runtime still matches the reference; the logits differ
  // from v41-tiny's late in the prompt, where its 3 × 2 pool excludes positions.
  TempDir dir("v41tiny-pool");
  absl::StatusOr<LoadedModel> wide = Variant({{"candidate_topk_blocks", 1000}}, dir);
  ASSERT_TRUE(wide.ok()) << wide.status();
  const std::vector<int32_t> tokens = Prompt(tiny_->config, kPromptLength, 3);
  ExpectMatchesReference(*wide, tokens);
  const Tensor a = Prefill(*tiny_, tokens);
  const Tensor b = Prefill(*wide, tokens);
  const int64_t v = tiny_->config.vocab_size;
  EXPECT_EQ(RelativeError(a.data(), b.data(), 6 * v), 0.0);  // pool = everything visible
  EXPECT_GT(
      RelativeError(a.data() + (kPromptLength - 1) * v, b.data() + (kPromptLength - 1) * v, v),
      1e-3);
}

TEST_F(V41TinyModelTest, DecodeMatchesPrefillAtEveryPosition) {
  const LoadedModel& m = *tiny_;
  const std::vector<int32_t> tokens = Prompt(m.config, kPromptLength, 4);
  const Tensor full = Prefill(m, tokens);
  const int64_t v = m.config.vocab_size;
  // Prefixes that end inside and at the end of a ratio-2 group, before and after the
  // window fills.
  for (int prefix : {1, 2, 11, 16}) {
    std::vector<int> chunks = {prefix};
    chunks.resize(tokens.size() - prefix + 1, 1);
    SequenceState state = m.model->NewSequence();
    const std::vector<float> stepped = RunChunks(m, &state, tokens, chunks);
    ASSERT_EQ(stepped.size(), tokens.size() * v);
    for (size_t i = 0; i < stepped.size(); ++i) {
      ASSERT_EQ(stepped[i], full.data()[i])
          << "decode after a prefix of " << prefix << ": position " << i / v;
    }
  }
}

TEST_F(V41TinyModelTest, ChunkedPrefillMatchesOneShot) {
  const LoadedModel& m = *tiny_;
  const std::vector<int32_t> tokens = Prompt(m.config, kPromptLength, 5);
  const Tensor full = Prefill(m, tokens);
  for (const std::vector<int>& chunks :
       std::vector<std::vector<int>>{{1, 6, 9, 3, 21}, {3, 3, 3, 31}, {8, 8, 8, 8, 8}, {39, 1}}) {
    SequenceState state = m.model->NewSequence();
    const std::vector<float> chunked = RunChunks(m, &state, tokens, chunks);
    ASSERT_EQ(static_cast<int64_t>(chunked.size()), full.numel());
    for (size_t i = 0; i < chunked.size(); ++i) {
      ASSERT_EQ(chunked[i], full.data()[i])
          << "chunks starting " << chunks[0] << ": position " << i / m.config.vocab_size;
    }
    EXPECT_EQ(state.position(), kPromptLength);
  }
}

// Text only: with an image token configured, a step holding it is refused by position.
TEST_F(V41TinyModelTest, RefusesTheImageToken) {
  ModelConfig config = tiny_->config;
  config.image_token_id = 1023;
  absl::StatusOr<std::unique_ptr<Model>> model = Model::Load(config, tiny_->checkpoint.get());
  ASSERT_TRUE(model.ok()) << model.status();
  SequenceState state = (*model)->NewSequence();
  const std::vector<int32_t> tokens = {5, 6, 1023};
  StepInput in{&state, tokens};
  absl::StatusOr<Tensor> logits = (*model)->Forward({&in, 1}, *tiny_->experts);
  EXPECT_EQ(logits.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(logits.status().message()),
              ::testing::HasSubstr("token 2 is the image token 1023"));
}

}  // namespace
}  // namespace dsv4
