// Batch-, chunk-, decode- and thread-invariance of the forward pass (issue 12): a sequence's
// logits are bitwise the same whatever shares its step, at whatever row, however its
// prompt is chunked, decoded token by token or prefilled, on any thread count. Checked on
// v4-tiny, on a config whose dims are not multiples of any SIMD width, and on v41-tiny
// (CSA2 selections and the candidate pool carried across layers, Engram).
#include <algorithm>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "attention_node/model.h"
#include "core/parallel.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/model_test_util.h"
#include "tests/test_util.h"

namespace dsv4 {
namespace {

using testing::GenerateAndLoad;
using testing::LoadedModel;
using testing::PresetJson;
using testing::TempDir;
using testing::TestTokens;

// "" when a and b hold the same bits, else where they first differ.
std::string FirstDifference(const float* a, const float* b, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    if (std::memcmp(a + i, b + i, sizeof(float)) != 0) {
      return "element " + std::to_string(i) + ": " + std::to_string(a[i]) + " vs " +
             std::to_string(b[i]);
    }
  }
  return "";
}

// Restores the process's thread count when a test ends.
class ThreadsScope {
 public:
  explicit ThreadsScope(int threads) : saved_(Threads()) { SetThreads(threads); }
  ~ThreadsScope() { SetThreads(saved_); }

 private:
  int saved_;
};

class BatchInvarianceTest : public ::testing::TestWithParam<std::string> {
 protected:
  static void SetUpTestSuite() {
    for (const std::string name : kConfigs) {
      nlohmann::json j = nlohmann::json::parse(PresetJson(name == "v41-tiny" ? name : "v4-tiny"));
      if (name == "odd-dims") {  // widths ≢ 0 mod 16 (index_head_dim stays a power of two for its
                                 // Hadamard transform), partial FP8 blocks
        j.update({{"vocab_size", 1000},
                  {"hidden_size", 100},
                  {"num_hidden_layers", 3},
                  {"num_hash_layers", 1},
                  {"compress_ratios", {4, 8, 0, 4}},
                  {"head_dim", 84},
                  {"q_lora_rank", 70},
                  {"o_lora_rank", 36},
                  {"moe_intermediate_size", 80},
                  {"sliding_window", 7},
                  {"expert_dtype", "fp8"}});  // FP4 needs widths ≡ 0 mod 32
      }
      dirs_.push_back(std::make_unique<TempDir>("v4inv"));
      absl::StatusOr<LoadedModel> m =
          GenerateAndLoad(j.dump(), dirs_.back()->path(), 11, {},
                          testing::PresetDir("v41-tiny") + "/tokenizer.json");
      ASSERT_TRUE(m.ok()) << m.status();
      models_.push_back(std::make_unique<LoadedModel>(std::move(*m)));
    }
  }
  static void TearDownTestSuite() {
    models_.clear();
    dirs_.clear();
  }

  static constexpr const char* kConfigs[] = {"v4-tiny", "odd-dims", "v41-tiny"};
  const LoadedModel& model() const {
    return *models_[std::find(std::begin(kConfigs), std::end(kConfigs), GetParam()) -
                    std::begin(kConfigs)];
  }

  // Runs each step (one token list per sequence, empty = not in this step) and returns
  // every logits row of sequence `watch`, in order.
  std::vector<float> Run(const std::vector<std::vector<std::vector<int32_t>>>& steps, int sequences,
                         int watch) const {
    const LoadedModel& m = model();
    const int64_t v = m.config.vocab_size;
    std::vector<SequenceState> states(sequences, m.model->NewSequence());
    std::vector<float> rows;
    for (const auto& step : steps) {
      std::vector<StepInput> inputs;
      int64_t row = -1, count = 0;
      int64_t at = 0;
      for (int i = 0; i < sequences; ++i) {
        if (step[i].empty()) continue;
        if (i == watch) row = at, count = static_cast<int64_t>(step[i].size());
        inputs.push_back({&states[i], step[i]});
        at += static_cast<int64_t>(step[i].size());
      }
      absl::StatusOr<Tensor> logits = m.model->Forward(inputs, *m.experts);
      EXPECT_TRUE(logits.ok()) << logits.status();
      if (!logits.ok() || row < 0) continue;
      rows.insert(rows.end(), logits->data() + row * v, logits->data() + (row + count) * v);
    }
    return rows;
  }

  // The watched sequence's prompt fed in chunks of `chunk` tokens, alone.
  std::vector<float> Chunked(const std::vector<int32_t>& prompt, int64_t chunk) const {
    std::vector<std::vector<std::vector<int32_t>>> steps;
    for (size_t at = 0; at < prompt.size(); at += chunk) {
      const size_t end = std::min(prompt.size(), at + static_cast<size_t>(chunk));
      steps.push_back({std::vector<int32_t>(prompt.begin() + at, prompt.begin() + end)});
    }
    return Run(steps, 1, 0);
  }

  static std::vector<std::unique_ptr<TempDir>> dirs_;
  static std::vector<std::unique_ptr<LoadedModel>> models_;
};

std::vector<std::unique_ptr<TempDir>> BatchInvarianceTest::dirs_;
std::vector<std::unique_ptr<LoadedModel>> BatchInvarianceTest::models_;

TEST_P(BatchInvarianceTest, RowsDoNotDependOnBatchSizeOrRowPosition) {
  const int64_t v = model().config.vocab_size;
  const std::vector<int32_t> prompt = TestTokens(40, v, 1), next = TestTokens(1, v, 2);
  // Alone: prefill, then one decode token.
  const std::vector<float> alone = Run({{prompt}, {next}}, 1, 0);
  ASSERT_EQ(alone.size(), static_cast<size_t>(41 * v));
  for (int batch : {1, 3, 8, 17, 64}) {
    SCOPED_TRACE(batch);
    const int watch = batch / 2;  // a row in the middle of the step
    std::vector<std::vector<int32_t>> prefill(batch), decode(batch);
    for (int i = 0; i < batch; ++i) {
      prefill[i] = i == watch ? prompt : TestTokens(1 + (i * 7) % 33, v, 100 + i);
      decode[i] = i == watch ? next : TestTokens(1, v, 200 + i);
    }
    const std::vector<float> batched = Run({prefill, decode}, batch, watch);
    ASSERT_EQ(batched.size(), alone.size());
    EXPECT_EQ(FirstDifference(batched.data(), alone.data(), alone.size()), "");
  }
}

TEST_P(BatchInvarianceTest, RowsDoNotDependOnChunkingOrDecodeVsPrefill) {
  const std::vector<int32_t> prompt = TestTokens(600, model().config.vocab_size, 3);
  const std::vector<float> one_prefill = Chunked(prompt, 600);
  for (int64_t chunk : {1, 7, 512}) {  // 1: decoded token by token
    SCOPED_TRACE(chunk);
    const std::vector<float> chunked = Chunked(prompt, chunk);
    ASSERT_EQ(chunked.size(), one_prefill.size());
    EXPECT_EQ(FirstDifference(chunked.data(), one_prefill.data(), one_prefill.size()), "");
  }
}

TEST_P(BatchInvarianceTest, RowsDoNotDependOnTheThreadCount) {
  const int64_t v = model().config.vocab_size;
  // Three sequences: two prefills and, in the second step, a chunk and two decodes.
  const std::vector<std::vector<std::vector<int32_t>>> steps = {
      {TestTokens(90, v, 4), TestTokens(3, v, 5), TestTokens(57, v, 6)},
      {TestTokens(1, v, 7), TestTokens(20, v, 8), TestTokens(1, v, 9)}};
  std::vector<std::vector<float>> by_threads;
  for (int threads : {1, 2, 3}) {
    const ThreadsScope scope(threads);
    std::vector<float> rows;
    for (int watch = 0; watch < 3; ++watch) {
      const std::vector<float> r = Run(steps, 3, watch);
      rows.insert(rows.end(), r.begin(), r.end());
    }
    by_threads.push_back(std::move(rows));
  }
  for (size_t i = 1; i < by_threads.size(); ++i) {
    SCOPED_TRACE(i + 1);
    ASSERT_EQ(by_threads[i].size(), by_threads[0].size());
    EXPECT_EQ(FirstDifference(by_threads[i].data(), by_threads[0].data(), by_threads[0].size()),
              "");
  }
}

INSTANTIATE_TEST_SUITE_P(Configs, BatchInvarianceTest,
                         ::testing::Values("v4-tiny", "odd-dims", "v41-tiny"),
                         [](const auto& info) {
                           std::string name = info.param;
                           for (char& c : name) c = c == '-' ? '_' : c;
                           return name;
                         });

}  // namespace
}  // namespace dsv4
