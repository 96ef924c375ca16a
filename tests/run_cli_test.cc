// `dsv4 run` end to end: logits files, decode-from, sampling, memory report, bad input.
#include <string>
#include <vector>

#include "core/npy.h"
#include "core/tokenizer.h"
#include "gtest/gtest.h"
#include "tests/model_test_util.h"
#include "tests/test_util.h"

namespace dsv4 {
namespace {

using testing::RunCommand;

class RunCliTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new testing::TempDir("run-cli");
    const testing::CommandResult r = RunCommand(testing::Dsv4() +
                                                " checkpoint generate --preset v4-tiny --seed 2 "
                                                "--out " +
                                                dir_->path());
    ASSERT_EQ(r.exit_code, 0) << r.output;
  }
  static void TearDownTestSuite() { delete dir_; }

  static testing::CommandResult Run(const std::string& flags) {
    return RunCommand(testing::Dsv4() + " run --checkpoint " + dir_->path() + " " + flags);
  }
  static std::string Tokens(int count) {
    std::string out;
    for (int32_t t : testing::TestTokens(count, 1024, 3)) {
      if (!out.empty()) out += ',';
      out += std::to_string(t);
    }
    return out;
  }

  static testing::TempDir* dir_;
};
testing::TempDir* RunCliTest::dir_ = nullptr;

TEST_F(RunCliTest, WritesPrefillLogitsAndDecodeFromGivesTheSame) {
  const std::string prefill_npy = dir_->path() + "/prefill.npy";
  const std::string decode_npy = dir_->path() + "/decode.npy";
  testing::CommandResult r = Run("--tokens " + Tokens(40) + " --logits-out " + prefill_npy);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("prefill: 40 tokens"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("memory: weights"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("memory: KV state"), std::string::npos) << r.output;
  r = Run("--tokens=" + Tokens(40) + " --logits_out=" + decode_npy + " --decode-from 9");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("decode: 31 tokens"), std::string::npos) << r.output;

  absl::StatusOr<NpyArray> a = ReadNpyF32(prefill_npy);
  absl::StatusOr<NpyArray> b = ReadNpyF32(decode_npy);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->shape, (Shape{40, 1024}));
  EXPECT_EQ(b->shape, a->shape);
  EXPECT_LT(testing::RelativeError(b->data.data(), a->data.data(), a->data.size()), 1e-4);

  // The same logits as the library's forward pass.
  absl::StatusOr<testing::LoadedModel> m = testing::LoadModelDir(dir_->path());
  ASSERT_TRUE(m.ok()) << m.status();
  SequenceState state = m->model->NewSequence();
  const std::vector<int32_t> tokens = testing::TestTokens(40, 1024, 3);
  StepInput in{&state, tokens};
  absl::StatusOr<Tensor> logits = m->model->Forward({&in, 1}, *m->experts);
  ASSERT_TRUE(logits.ok());
  EXPECT_EQ(testing::RelativeError(a->data.data(), logits->data(), logits->numel()), 0.0);
}

TEST_F(RunCliTest, GenerationIsDeterministicForASeed) {
  const std::string flags =
      "--tokens " + Tokens(12) + " --generate 6 --temperature 0.8 --top-p 0.95 --top-k 50 --seed ";
  const testing::CommandResult a = Run(flags + "5"), b = Run(flags + "5"), c = Run(flags + "6");
  ASSERT_EQ(a.exit_code, 0) << a.output;
  auto generated = [](const std::string& out) {
    const size_t at = out.find("generated: ");
    return at == std::string::npos ? std::string() : out.substr(at, out.find('\n', at) - at);
  };
  EXPECT_FALSE(generated(a.output).empty()) << a.output;
  EXPECT_EQ(generated(a.output), generated(b.output));
  EXPECT_NE(generated(a.output), generated(c.output));
  EXPECT_NE(a.output.find("decode: 5 tokens"), std::string::npos) << a.output;
  EXPECT_NE(a.output.find("tokens/s"), std::string::npos) << a.output;
}

TEST_F(RunCliTest, PromptTextGoesThroughTheCheckpointTokenizer) {
  // `checkpoint generate` ships the preset's tokenizer.json; --prompt must give exactly the
  // logits of --tokens with the ids that tokenizer assigns, and samples are printed as text.
  absl::StatusOr<Tokenizer> tokenizer = Tokenizer::LoadFromDir(dir_->path());
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  const std::string text = "Hello, world: 123 tokens";
  std::string ids;
  for (int id : tokenizer->Encode(text)) ids += (ids.empty() ? "" : ",") + std::to_string(id);
  const std::string by_text = dir_->path() + "/by_text.npy";
  const std::string by_ids = dir_->path() + "/by_ids.npy";
  testing::CommandResult r = Run("--prompt '" + text + "' --logits-out " + by_text);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  r = Run("--tokens " + ids + " --logits-out " + by_ids);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  absl::StatusOr<NpyArray> a = ReadNpyF32(by_text), b = ReadNpyF32(by_ids);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->shape, b->shape);
  EXPECT_EQ(a->data, b->data);

  r = Run("--prompt '" + text + "' --generate 4 --seed 1");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("\ntext: "), std::string::npos) << r.output;
  r = Run("--prompt x --tokens 1,2");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("not both"), std::string::npos) << r.output;
}

TEST_F(RunCliTest, BadInputIsAClearError) {
  testing::CommandResult r = Run("--tokens 1,2,5000");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("token id 5000 at index 2 is outside [0, 1024)"), std::string::npos)
      << r.output;
  r = Run("--tokens ''");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("--tokens is empty"), std::string::npos) << r.output;
  r = Run("--tokens 1,x");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  r = Run("--tokens 1,2 --decode-from 3");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  r = Run("--tokens 1,2,3,4,5 --max-seq-len 4");
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("exceed"), std::string::npos) << r.output;
  r = RunCommand(testing::Dsv4() + " run --checkpoint /nonexistent --tokens 1");
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("/nonexistent"), std::string::npos) << r.output;
}

TEST(RunCliKvReportTest, ReportsProAndFlashFromTheConfigAlone) {
  const testing::CommandResult r =
      RunCommand(testing::Dsv4() + " run --kv-report deepseek-v4-pro,deepseek-v4-flash");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("9848.0 B/token (reference bf16), 4969.5 B/token (production"),
            std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("6880.0 B/token (reference bf16), 3471.0 B/token (production"),
            std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("published: Pro 10%, Flash 7%"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace dsv4
