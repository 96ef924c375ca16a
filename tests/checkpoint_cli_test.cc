// `dsv4 checkpoint generate` and `inspect`, driven as a user would, including the
// corrupt-checkpoint cases whose errors must name the file and tensor.
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "core/checkpoint_layout.h"
#include "core/model_config.h"
#include "core/safetensors.h"
#include "nlohmann/json.hpp"
#include "tests/test_util.h"

namespace dsv4 {
namespace {

using ::dsv4::testing::ReadFile;

using ::dsv4::testing::Dsv4;
using ::dsv4::testing::RunCommand;
using ::dsv4::testing::TempDir;
using ::testing::HasSubstr;

// The name of the first shard listed in a checkpoint's index.
std::string FirstShard(const std::string& dir) {
  const nlohmann::json index =
      nlohmann::json::parse(ReadFile(dir + "/model.safetensors.index.json"));
  std::set<std::string> files;
  for (const auto& [name, file] : index["weight_map"].items())
    files.insert(file.get<std::string>());
  return *files.begin();
}

// One generated v4-tiny checkpoint shared by the tests (small shards to exercise the index).
class CheckpointCliTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir("dsv4-ckpt");
    const auto r =
        RunCommand(Dsv4() + " checkpoint generate --preset v4-tiny --seed 7 --shard_mb 1 --out " +
                   dir_->path() + "/a");
    ASSERT_EQ(r.exit_code, 0) << r.output;
  }
  static void TearDownTestSuite() { delete dir_; }
  static std::string Ckpt() { return dir_->path() + "/a"; }
  static TempDir* dir_;
};
TempDir* CheckpointCliTest::dir_ = nullptr;

TEST_F(CheckpointCliTest, GeneratedCheckpointIsShardedAndPassesInspect) {
  EXPECT_TRUE(std::filesystem::exists(Ckpt() + "/config.json"));
  const nlohmann::json index =
      nlohmann::json::parse(ReadFile(Ckpt() + "/model.safetensors.index.json"));
  std::set<std::string> files;
  for (const auto& [name, file] : index["weight_map"].items())
    files.insert(file.get<std::string>());
  EXPECT_GT(files.size(), 1u) << "1 MiB shards should split v4-tiny";

  const auto r = RunCommand(Dsv4() + " checkpoint inspect --verify_values " + Ckpt());
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("verify       OK"));
  EXPECT_THAT(r.output, HasSubstr("F8_E4M3"));
  EXPECT_THAT(r.output, HasSubstr("F8_E8M0"));
  EXPECT_THAT(r.output, HasSubstr("I64"));
}

TEST_F(CheckpointCliTest, EveryExpectedTensorLoadsWithItsShape) {
  auto config = LoadModelConfigFromDir(Ckpt());
  ASSERT_TRUE(config.ok()) << config.status();
  auto ckpt = Checkpoint::Open(Ckpt());
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  for (const TensorSpec& spec : ExpectedTensors(*config)) {
    auto view = (*ckpt)->Get(spec.name);
    ASSERT_TRUE(view.ok()) << view.status();
    EXPECT_EQ((*view)->shape, spec.shape) << spec.name;
    EXPECT_EQ((*view)->dtype, spec.dtype) << spec.name;
  }
}

TEST_F(CheckpointCliTest, DequantisedWeightsHaveTheIntendedScale) {
  // Linear weights are drawn with standard deviation 1/sqrt(fan_in); FP8/FP4 encoding must
  // preserve that to within quantisation error, or activations drift through the layers.
  auto ckpt = Checkpoint::Open(Ckpt());
  ASSERT_TRUE(ckpt.ok());
  for (const std::string name : {"layers.2.attn.wq_b.weight", "layers.2.ffn.experts.3.w1.weight",
                                 "layers.2.ffn.shared_experts.w2.weight"}) {
    auto w = (*ckpt)->LoadF32(name);
    ASSERT_TRUE(w.ok()) << w.status();
    double sum2 = 0;
    for (float v : w->ToVector()) sum2 += double(v) * v;
    const double stddev = std::sqrt(sum2 / w->numel());
    const double expected = 1.0 / std::sqrt(double(w->dim(1)));
    EXPECT_NEAR(stddev / expected, 1.0, 0.15) << name;
  }
}

TEST_F(CheckpointCliTest, SameSeedSameBytesOtherSeedOtherBytes) {
  const std::string b = dir_->path() + "/b", c = dir_->path() + "/c";
  ASSERT_EQ(
      RunCommand(Dsv4() + " checkpoint generate --preset v4-tiny --seed 7 --shard_mb 1 --out " + b)
          .exit_code,
      0);
  ASSERT_EQ(
      RunCommand(Dsv4() + " checkpoint generate --preset v4-tiny --seed 8 --shard_mb 1 --out " + c)
          .exit_code,
      0);
  const std::string shard = "/" + FirstShard(Ckpt());
  EXPECT_EQ(ReadFile(Ckpt() + shard), ReadFile(b + shard));
  EXPECT_NE(ReadFile(Ckpt() + shard), ReadFile(c + shard));
}

// Copies the shared checkpoint so a test can damage its copy.
std::string CopyOf(const std::string& from, const std::string& to) {
  std::filesystem::copy(from, to, std::filesystem::copy_options::recursive);
  return to;
}

TEST_F(CheckpointCliTest, TruncatedShardNamesTheFile) {
  const std::string d = CopyOf(Ckpt(), dir_->path() + "/trunc");
  const std::string shard = d + "/" + FirstShard(d);
  std::filesystem::resize_file(shard, std::filesystem::file_size(shard) / 2);
  const auto r = RunCommand(Dsv4() + " checkpoint inspect " + d);
  EXPECT_NE(r.exit_code, 0);
  EXPECT_THAT(r.output, HasSubstr(FirstShard(d)));
}

TEST_F(CheckpointCliTest, MissingTensorIsNamed) {
  const std::string d = CopyOf(Ckpt(), dir_->path() + "/missing");
  nlohmann::json index = nlohmann::json::parse(ReadFile(d + "/model.safetensors.index.json"));
  index["weight_map"].erase("layers.1.attn.indexer.wq_b.weight");
  std::ofstream(d + "/model.safetensors.index.json") << index.dump();
  const auto r = RunCommand(Dsv4() + " checkpoint inspect " + d);
  EXPECT_NE(r.exit_code, 0);
  EXPECT_THAT(r.output, HasSubstr("layers.1.attn.indexer.wq_b.weight: missing"));
}

TEST_F(CheckpointCliTest, ConfigThatDisagreesWithTensorsIsReported) {
  // A wider expert FFN in the config than the checkpoint holds.
  const std::string d = CopyOf(Ckpt(), dir_->path() + "/disagree");
  nlohmann::json config = nlohmann::json::parse(ReadFile(d + "/config.json"));
  config["moe_intermediate_size"] = 256;
  std::ofstream(d + "/config.json") << config.dump(2);
  const auto r = RunCommand(Dsv4() + " checkpoint inspect " + d);
  EXPECT_NE(r.exit_code, 0);
  EXPECT_THAT(r.output,
              HasSubstr("layers.0.ffn.experts.0.w1.weight: shape [128, 64], expected [256, 64]"));
}

TEST_F(CheckpointCliTest, CorruptScaleIsFoundByValueVerification) {
  // E8M0 code 255 is NaN: --verify_values must name the tensor whose values it poisons.
  const std::string d = CopyOf(Ckpt(), dir_->path() + "/nan");
  const std::string name = "layers.0.attn.wq_a.scale";
  const nlohmann::json index = nlohmann::json::parse(ReadFile(d + "/model.safetensors.index.json"));
  const std::string file = d + "/" + index["weight_map"][name].get<std::string>();
  std::string bytes = ReadFile(file);
  uint64_t header_len;
  std::memcpy(&header_len, bytes.data(), 8);
  const nlohmann::json header = nlohmann::json::parse(bytes.substr(8, header_len));
  const uint64_t begin = header[name]["data_offsets"][0];
  bytes[8 + header_len + begin] = static_cast<char>(0xFF);
  std::ofstream(file, std::ios::binary | std::ios::trunc) << bytes;

  const auto r = RunCommand(Dsv4() + " checkpoint inspect --verify_values " + d);
  EXPECT_NE(r.exit_code, 0);
  EXPECT_THAT(r.output, HasSubstr("layers.0.attn.wq_a.weight"));
}

// V4.1 as released: generated, inspected with value verification (FP8 32×32 blocks, Engram
// tables with per-32 scales), and a vision tower the text-only runtime ignores.
TEST(CheckpointCli, V41CheckpointInspectsAndIgnoresTheVisionTower) {
  TempDir dir("dsv4-ckpt-v41");
  const std::string ckpt = dir.path() + "/v41";
  auto r = RunCommand(Dsv4() + " checkpoint generate --preset v41-tiny --seed 3 --out " + ckpt);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_TRUE(std::filesystem::exists(ckpt + "/tokenizer.json"));
  r = RunCommand(Dsv4() + " checkpoint inspect --verify_values " + ckpt);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("CSA2: 2 Full, 1 Reindex, 3 Reuse"));
  EXPECT_THAT(r.output, HasSubstr("verify       OK"));

  // A shard with two vision-tower tensors, listed in the index.
  SafetensorsWriter vision;
  vision.Add("vision.norm.weight", DType::kF32, {4}, std::vector<uint8_t>(16, 0));
  vision.Add("layers.3.ffn.gate.bias_vl", DType::kF32, {8}, std::vector<uint8_t>(32, 0));
  ASSERT_TRUE(vision.Write(ckpt + "/model-vision.safetensors").ok());
  nlohmann::json index = nlohmann::json::parse(ReadFile(ckpt + "/model.safetensors.index.json"));
  for (const std::string& name : vision.names())
    index["weight_map"][name] = "model-vision.safetensors";
  std::ofstream(ckpt + "/model.safetensors.index.json") << index.dump();
  r = RunCommand(Dsv4() + " checkpoint inspect " + ckpt);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("ignored      2 vision-tower tensors"));
  r = RunCommand(Dsv4() + " run --checkpoint " + ckpt + " --tokens 5,6,7,8");
  EXPECT_EQ(r.exit_code, 0) << r.output;
}

TEST(CheckpointCli, BadArgumentsGiveClearErrors) {
  auto r = RunCommand(Dsv4() + " checkpoint generate --preset no-such-model --out /tmp/x");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.output, HasSubstr("unknown preset 'no-such-model'"));
  r = RunCommand(Dsv4() + " checkpoint generate --preset v4-tiny");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.output, HasSubstr("--out DIR is required"));
  r = RunCommand(Dsv4() + " checkpoint inspect /nonexistent-dir");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_THAT(r.output, HasSubstr("/nonexistent-dir"));
  r = RunCommand(Dsv4() + " frobnicate");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.output, HasSubstr("unknown command 'frobnicate'"));
}

TEST(CheckpointCli, HelpListsCommandsAndFlags) {
  auto r = RunCommand(Dsv4() + " --help");
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_THAT(r.output, HasSubstr("checkpoint generate"));
  r = RunCommand(Dsv4() + " checkpoint generate --help");
  EXPECT_THAT(r.output, HasSubstr("--seed"));
  EXPECT_THAT(r.output, ::testing::Not(HasSubstr("--verify_values")));
}

}  // namespace
}  // namespace dsv4
