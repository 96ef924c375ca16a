// Safetensors reading, writing and dequantisation: the file layout, round trips through
// single-file and sharded checkpoints, FP8/FP4 dequantisation against naive expectations
// computed here, and a clear error (naming file and tensor) for every kind of bad input.
#include "core/safetensors.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "nlohmann/json.hpp"
#include "tests/test_util.h"

namespace dsv4 {
namespace {

using ::dsv4::testing::ReadFile;
using ::dsv4::testing::WriteFile;

using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

namespace fs = std::filesystem;

template <typename T>
std::vector<uint8_t> Bytes(const std::vector<T>& values) {
  std::vector<uint8_t> bytes(values.size() * sizeof(T));
  if (!bytes.empty()) std::memcpy(bytes.data(), values.data(), bytes.size());
  return bytes;
}

// A safetensors file by hand: the 8-byte little-endian length, `header`, `data_bytes` zeros.
std::string RawFile(const std::string& header, size_t data_bytes, uint64_t length) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>(length >> (8 * i));
  return out + header + std::string(data_bytes, '\0');
}
std::string RawFile(const std::string& header, size_t data_bytes) {
  return RawFile(header, data_bytes, header.size());
}

absl::StatusOr<std::vector<HeaderEntry>> Parse(const std::string& file_bytes) {
  return ParseSafetensorsHeader(reinterpret_cast<const uint8_t*>(file_bytes.data()),
                                file_bytes.size(), "bad.safetensors");
}

// e4m3fn and e2m1 from their definitions (spec §2.2), independent of core/dtype.cc.
double ReferenceE4M3(int code) {
  const int s = code >> 7, e = (code >> 3) & 15, m = code & 7;
  const double magnitude = e == 0 ? std::ldexp(m / 8.0, -6) : std::ldexp(1.0 + m / 8.0, e - 7);
  return s ? -magnitude : magnitude;
}
double ReferenceFp4(int code) {
  const double kMagnitudes[8] = {0, 0.5, 1, 1.5, 2, 3, 4, 6};
  return (code & 8) ? -kMagnitudes[code & 7] : kMagnitudes[code & 7];
}
double ReferenceE8M0(int code) { return std::ldexp(1.0, code - 127); }

// Compares every element and reports the first mismatch (not thousands of lines).
void ExpectTensorEquals(const Tensor& actual, const Shape& shape,
                        const std::vector<double>& expected) {
  ASSERT_EQ(actual.shape(), shape);
  const std::vector<float> values = actual.ToVector();
  ASSERT_EQ(values.size(), expected.size());
  for (size_t i = 0; i < values.size(); ++i) {
    ASSERT_EQ(values[i], static_cast<float>(expected[i])) << "element " << i;
  }
}

class SafetensorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string test = ::testing::UnitTest::GetInstance()->current_test_info()->name();
    dir_ = fs::path(::testing::TempDir()) /
           ("dsv4_safetensors_" + test + "_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string Path(const std::string& name) const { return (dir_ / name).string(); }
  std::string Dir() const { return dir_.string(); }

  // Writes `writer` as the checkpoint's single model.safetensors and opens it.
  std::unique_ptr<Checkpoint> OpenSingle(const SafetensorsWriter& writer) {
    EXPECT_TRUE(writer.Write(Path("model.safetensors")).ok());
    absl::StatusOr<std::unique_ptr<Checkpoint>> checkpoint = Checkpoint::Open(Dir());
    EXPECT_TRUE(checkpoint.ok()) << checkpoint.status();
    return checkpoint.ok() ? *std::move(checkpoint) : nullptr;
  }

  fs::path dir_;
};

// ---- Writer layout ----

TEST_F(SafetensorsTest, WriterFollowsTheOfficialLayout) {
  SafetensorsWriter writer;
  writer.Add("b.bias", DType::kF32, {3}, Bytes<float>({1.0f, 2.0f, 3.0f}));
  writer.Add("a.norm", DType::kBF16, {3}, std::vector<uint8_t>(6, 0x11));
  writer.Add("c.tid2eid", DType::kI64, {2}, Bytes<int64_t>({5, 7}));
  writer.Add("d.codes", DType::kI8, {5}, {1, 2, 3, 4, 5});
  EXPECT_EQ(writer.size(), 4u);
  EXPECT_EQ(writer.data_bytes(), 39u);
  EXPECT_THAT(writer.names(), ElementsAre("a.norm", "b.bias", "c.tid2eid", "d.codes"));
  ASSERT_TRUE(writer.Write(Path("x.safetensors")).ok());

  const std::string file = ReadFile(Path("x.safetensors"));
  uint64_t header_bytes = 0;
  std::memcpy(&header_bytes, file.data(), 8);
  EXPECT_EQ(header_bytes % 8, 0u) << "data must start 8-byte aligned";
  ASSERT_EQ(file.size(), 8 + header_bytes + 39) << "no gaps, nothing after the data";
  const std::string header = file.substr(8, header_bytes);
  EXPECT_EQ(header.find_last_not_of(' '), header.rfind('}')) << "padded with spaces only";

  // Keys sorted; data ordered by element size then name, so each tensor is aligned to
  // its element size and the data is contiguous as the official reader requires.
  const size_t a = header.find("\"a.norm\""), b = header.find("\"b.bias\"");
  const size_t c = header.find("\"c.tid2eid\""), d = header.find("\"d.codes\"");
  EXPECT_LT(header.find("\"__metadata__\""), a);
  EXPECT_LT(a, b);
  EXPECT_LT(b, c);
  EXPECT_LT(c, d);
  const nlohmann::json json = nlohmann::json::parse(header);
  EXPECT_EQ(json["__metadata__"]["format"], "pt");
  EXPECT_EQ(json["c.tid2eid"]["data_offsets"], nlohmann::json::array({0, 16}));
  EXPECT_EQ(json["b.bias"]["data_offsets"], nlohmann::json::array({16, 28}));
  EXPECT_EQ(json["a.norm"]["data_offsets"], nlohmann::json::array({28, 34}));
  EXPECT_EQ(json["d.codes"]["data_offsets"], nlohmann::json::array({34, 39}));
  EXPECT_EQ(json["a.norm"]["dtype"], "BF16");
  EXPECT_EQ(json["a.norm"]["shape"], nlohmann::json::array({3}));

  float bias[3];
  std::memcpy(bias, file.data() + 8 + header_bytes + 16, sizeof(bias));
  EXPECT_THAT(bias, ElementsAre(1.0f, 2.0f, 3.0f));
}

TEST_F(SafetensorsTest, FileReadsBackZeroCopy) {
  SafetensorsWriter writer;
  writer.Add("x", DType::kF32, {2, 2}, Bytes<float>({1, 2, 3, 4}));
  writer.Add("empty", DType::kF32, {0, 4}, {});
  ASSERT_TRUE(writer.Write(Path("x.safetensors")).ok());
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file =
      SafetensorsFile::Open(Path("x.safetensors"));
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->tensors().size(), 2u) << "__metadata__ is not a tensor";
  EXPECT_EQ((*file)->Find("missing"), nullptr);
  const TensorView* x = (*file)->Find("x");
  ASSERT_NE(x, nullptr);
  EXPECT_EQ(x->name, "x");
  EXPECT_EQ(x->file, Path("x.safetensors"));
  EXPECT_EQ(x->dtype, DType::kF32);
  EXPECT_EQ(x->shape, Shape({2, 2}));
  EXPECT_EQ(x->nbytes, 16u);
  EXPECT_EQ((*file)->mapped_bytes(), fs::file_size(Path("x.safetensors")));
  float values[4];
  std::memcpy(values, x->data, sizeof(values));
  EXPECT_THAT(values, ElementsAre(1, 2, 3, 4));
  EXPECT_EQ((*file)->Find("empty")->nbytes, 0u);
}

// ---- Round trips through a checkpoint ----

TEST_F(SafetensorsTest, SingleFileRoundTrip) {
  const std::vector<float> values = {1.5f, -2.0f, 0.15625f, 1024.0f, -0.0f, 3.0f};
  std::vector<uint16_t> bf16, f16;
  for (const float v : values) {
    bf16.push_back(FloatToBf16(v));
    f16.push_back(FloatToF16(v));
  }
  SafetensorsWriter writer;
  writer.Add("hc_head_fn", DType::kF32, {2, 3}, Bytes(values));
  writer.Add("norm.weight", DType::kBF16, {6}, Bytes(bf16));
  writer.Add("f16.weight", DType::kF16, {3, 2}, Bytes(f16));
  writer.Add("layers.0.ffn.gate.tid2eid", DType::kI64, {3, 2},
             Bytes<int64_t>({0, 5, 9, 1, 255, 7}));
  writer.Add("layers.0.attn.wq_a.scale", DType::kF8E8M0, {1, 2}, {127, 130});
  const std::unique_ptr<Checkpoint> checkpoint = OpenSingle(writer);
  ASSERT_NE(checkpoint, nullptr);

  EXPECT_THAT(checkpoint->TensorNames(),
              ElementsAre("f16.weight", "hc_head_fn", "layers.0.attn.wq_a.scale",
                          "layers.0.ffn.gate.tid2eid", "norm.weight"));
  EXPECT_TRUE(checkpoint->Has("norm.weight"));
  EXPECT_FALSE(checkpoint->Has("head.weight"));
  const std::vector<double> expected(values.begin(), values.end());
  for (const char* name : {"hc_head_fn", "norm.weight", "f16.weight"}) {
    SCOPED_TRACE(name);
    absl::StatusOr<Tensor> tensor = checkpoint->LoadF32(name);
    ASSERT_TRUE(tensor.ok()) << tensor.status();
    const Shape shape = std::string(name) == "norm.weight"  ? Shape{6}
                        : std::string(name) == "f16.weight" ? Shape{3, 2}
                                                            : Shape{2, 3};
    ExpectTensorEquals(*tensor, shape, expected);
    EXPECT_TRUE(std::signbit(tensor->ToVector()[4]));
  }
  absl::StatusOr<Tensor> scale = checkpoint->LoadF32("layers.0.attn.wq_a.scale");
  ASSERT_TRUE(scale.ok()) << scale.status();
  ExpectTensorEquals(*scale, {1, 2}, {1.0, 8.0});
  absl::StatusOr<std::vector<int64_t>> tid2eid = checkpoint->LoadI64("layers.0.ffn.gate.tid2eid");
  ASSERT_TRUE(tid2eid.ok()) << tid2eid.status();
  EXPECT_THAT(*tid2eid, ElementsAre(0, 5, 9, 1, 255, 7));

  absl::StatusOr<const TensorView*> view = checkpoint->Get("norm.weight");
  ASSERT_TRUE(view.ok());
  EXPECT_EQ((*view)->file, Path("model.safetensors"));
}

TEST_F(SafetensorsTest, Fp8BlockScaledDequantisationWithPartialEdgeBlocks) {
  // [130, 200] has 2×2 blocks of 128×128; the last block row and column are partial.
  constexpr int kRows = 130, kCols = 200;
  std::vector<uint8_t> codes(kRows * kCols);
  for (int n = 0; n < kRows; ++n) {
    for (int k = 0; k < kCols; ++k) {
      const int code = (7 * n + 13 * k) % 256;
      codes[n * kCols + k] = (code & 0x7F) == 0x7F ? 0 : code;  // no NaNs
    }
  }
  const std::vector<uint8_t> scales = {120, 127, 131, 140};
  SafetensorsWriter writer;
  writer.Add("layers.0.attn.wq_a.weight", DType::kF8E4M3, {kRows, kCols}, codes);
  writer.Add("layers.0.attn.wq_a.scale", DType::kF8E8M0, {2, 2}, scales);
  const std::unique_ptr<Checkpoint> checkpoint = OpenSingle(writer);
  ASSERT_NE(checkpoint, nullptr);

  std::vector<double> expected(kRows * kCols);
  for (int n = 0; n < kRows; ++n) {
    for (int k = 0; k < kCols; ++k) {
      expected[n * kCols + k] =
          ReferenceE4M3(codes[n * kCols + k]) * ReferenceE8M0(scales[(n / 128) * 2 + k / 128]);
    }
  }
  absl::StatusOr<Tensor> weight = checkpoint->LoadF32("layers.0.attn.wq_a.weight");
  ASSERT_TRUE(weight.ok()) << weight.status();
  ExpectTensorEquals(*weight, {kRows, kCols}, expected);
}

TEST_F(SafetensorsTest, Fp4PackedDequantisation) {
  // K = 80: 1×32 scale blocks, the last one covering 16 elements.
  constexpr int kRows = 3, kCols = 80, kBlocks = 3;
  std::vector<uint8_t> packed(kRows * kCols / 2);
  for (size_t i = 0; i < packed.size(); ++i) packed[i] = static_cast<uint8_t>(i * 37 + 11);
  std::vector<uint8_t> scales(kRows * kBlocks);
  for (size_t i = 0; i < scales.size(); ++i) scales[i] = static_cast<uint8_t>(118 + 2 * i);
  SafetensorsWriter writer;
  writer.Add("layers.3.ffn.experts.5.w1.weight", DType::kI8, {kRows, kCols / 2}, packed);
  writer.Add("layers.3.ffn.experts.5.w1.scale", DType::kF8E8M0, {kRows, kBlocks}, scales);
  const std::unique_ptr<Checkpoint> checkpoint = OpenSingle(writer);
  ASSERT_NE(checkpoint, nullptr);

  std::vector<double> expected(kRows * kCols);
  for (int n = 0; n < kRows; ++n) {
    for (int k = 0; k < kCols; ++k) {
      const uint8_t byte = packed[n * kCols / 2 + k / 2];
      const int code = k % 2 == 0 ? (byte & 0xF) : (byte >> 4);  // low nibble = even element
      expected[n * kCols + k] = ReferenceFp4(code) * ReferenceE8M0(scales[n * kBlocks + k / 32]);
    }
  }
  absl::StatusOr<Tensor> weight = checkpoint->LoadF32("layers.3.ffn.experts.5.w1.weight");
  ASSERT_TRUE(weight.ok()) << weight.status();
  ExpectTensorEquals(*weight, {kRows, kCols}, expected);
}

TEST_F(SafetensorsTest, ShardedCheckpointOpensShardsLazily) {
  SafetensorsWriter first, second;
  first.Add("embed.weight", DType::kBF16, {2}, Bytes<uint16_t>({0x3F80, 0xC000}));
  first.Add("layers.0.ffn.experts.0.w2.weight", DType::kI8, {1, 16},
            std::vector<uint8_t>(16, 0x21));
  first.Add("layers.0.ffn.experts.0.w2.scale", DType::kF8E8M0, {1, 1}, {128});
  second.Add("head.weight", DType::kF32, {1}, Bytes<float>({4.0f}));
  std::map<std::string, std::string> weight_map;
  for (const std::string& name : first.names())
    weight_map[name] = "model-00001-of-00002.safetensors";
  for (const std::string& name : second.names())
    weight_map[name] = "model-00002-of-00002.safetensors";
  ASSERT_TRUE(first.Write(Path("model-00001-of-00002.safetensors")).ok());
  ASSERT_TRUE(second.Write(Path("model-00002-of-00002.safetensors")).ok());
  const uint64_t total = first.data_bytes() + second.data_bytes();
  ASSERT_TRUE(WriteSafetensorsIndex(Dir(), weight_map, total).ok());

  const nlohmann::json index =
      nlohmann::json::parse(ReadFile(Path("model.safetensors.index.json")));
  EXPECT_EQ(index["metadata"]["total_size"], total);
  EXPECT_EQ(index["weight_map"], nlohmann::json(weight_map));

  absl::StatusOr<std::unique_ptr<Checkpoint>> checkpoint = Checkpoint::Open(Dir());
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  EXPECT_THAT((*checkpoint)->TensorNames(),
              ElementsAre("embed.weight", "head.weight", "layers.0.ffn.experts.0.w2.scale",
                          "layers.0.ffn.experts.0.w2.weight"));

  // Shard 2 disappears after Open: only a lazy reader still serves shard 1 and then fails
  // on shard 2 (an eager one would have mapped it already).
  fs::remove(Path("model-00002-of-00002.safetensors"));
  absl::StatusOr<Tensor> embed = (*checkpoint)->LoadF32("embed.weight");
  ASSERT_TRUE(embed.ok()) << embed.status();
  ExpectTensorEquals(*embed, {2}, {1.0, -2.0});
  absl::StatusOr<Tensor> expert = (*checkpoint)->LoadF32("layers.0.ffn.experts.0.w2.weight");
  ASSERT_TRUE(expert.ok()) << expert.status();
  std::vector<double> expected_expert;
  for (int j = 0; j < 16; ++j) expected_expert.insert(expected_expert.end(), {1.0, 2.0});
  ExpectTensorEquals(*expert, {1, 32}, expected_expert);  // 0x21: 0.5 then 1, times 2

  absl::StatusOr<const TensorView*> head = (*checkpoint)->Get("head.weight");
  EXPECT_EQ(head.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(head.status().message(),
              AllOf(HasSubstr("model-00002-of-00002.safetensors"), HasSubstr("head.weight")));
}

// ---- Bad files: every error names the file and, where there is one, the tensor ----

TEST(SafetensorsHeaderTest, AcceptsMetadataAndEmptyTensors) {
  absl::StatusOr<std::vector<HeaderEntry>> entries = Parse(RawFile(
      R"({"__metadata__":{"format":"pt"},"z":{"dtype":"U8","shape":[0],"data_offsets":[2,2]},)"
      R"("y":{"dtype":"I32","shape":[],"data_offsets":[0,4]}})",
      4));
  ASSERT_TRUE(entries.ok()) << entries.status();
  ASSERT_EQ(entries->size(), 2u);
  EXPECT_EQ((*entries)[0].name, "y");
  EXPECT_EQ((*entries)[0].shape, Shape{});
  EXPECT_EQ((*entries)[1].name, "z");
  EXPECT_EQ((*entries)[1].begin, 2u);
}

TEST(SafetensorsHeaderTest, RejectsTruncatedFiles) {
  for (size_t size : {0, 1, 7}) {
    absl::StatusOr<std::vector<HeaderEntry>> entries = Parse(std::string(size, '\0'));
    EXPECT_EQ(entries.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(entries.status().message(),
                AllOf(HasSubstr("bad.safetensors"), HasSubstr("truncated")));
  }
}

TEST(SafetensorsHeaderTest, RejectsHeaderLengthPastTheEnd) {
  const std::string header = R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}})";
  absl::StatusOr<std::vector<HeaderEntry>> entries = Parse(RawFile(header, 1, 1000));
  EXPECT_THAT(entries.status().message(),
              AllOf(HasSubstr("bad.safetensors"), HasSubstr("header length 1000"),
                    HasSubstr("past the end")));
  entries = Parse(RawFile(header, 1, ~uint64_t{0}));  // no overflow in the bounds check
  EXPECT_THAT(entries.status().message(),
              AllOf(HasSubstr("bad.safetensors"), HasSubstr("exceeds the limit")));
}

TEST(SafetensorsHeaderTest, RejectsInvalidJson) {
  for (const std::string header : {R"({"a": )", "\xff\xfe", "", R"({"a":1} trailing)"}) {
    absl::StatusOr<std::vector<HeaderEntry>> entries = Parse(RawFile(header, 0));
    EXPECT_EQ(entries.status().code(), absl::StatusCode::kInvalidArgument) << header;
    EXPECT_THAT(entries.status().message(),
                AllOf(HasSubstr("bad.safetensors"), HasSubstr("invalid JSON")));
  }
  absl::StatusOr<std::vector<HeaderEntry>> entries = Parse(RawFile("[1, 2]", 0));
  EXPECT_THAT(entries.status().message(), HasSubstr("not a JSON object"));
}

TEST(SafetensorsHeaderTest, RejectsUnknownDtype) {
  absl::StatusOr<std::vector<HeaderEntry>> entries = Parse(RawFile(
      R"({"layers.0.attn.wq_a.weight":{"dtype":"F8_E5M2","shape":[2],"data_offsets":[0,2]}})", 2));
  EXPECT_EQ(entries.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(entries.status().message(),
              AllOf(HasSubstr("bad.safetensors"), HasSubstr("layers.0.attn.wq_a.weight"),
                    HasSubstr("unknown dtype 'F8_E5M2'")));
}

TEST(SafetensorsHeaderTest, RejectsByteCountNotMatchingShape) {
  absl::StatusOr<std::vector<HeaderEntry>> entries = Parse(RawFile(
      R"({"layers.0.attn.wq_a.weight":{"dtype":"F32","shape":[2,2],"data_offsets":[0,12]}})", 16));
  EXPECT_THAT(entries.status().message(),
              AllOf(HasSubstr("bad.safetensors"), HasSubstr("layers.0.attn.wq_a.weight"),
                    HasSubstr("hold 12 bytes"), HasSubstr("[2, 2]"), HasSubstr("needs 16")));
  // A shape whose byte count overflows 64 bits.
  entries = Parse(RawFile(
      R"({"big":{"dtype":"F32","shape":[4611686018427387904,8],"data_offsets":[0,0]}})", 0));
  EXPECT_THAT(entries.status().message(), AllOf(HasSubstr("'big'"), HasSubstr("more than 2^64")));
}

TEST(SafetensorsHeaderTest, RejectsOffsetsOutOfRange) {
  absl::StatusOr<std::vector<HeaderEntry>> entries = Parse(RawFile(
      R"({"layers.0.attn.wkv.weight":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}})", 16));
  EXPECT_THAT(entries.status().message(),
              AllOf(HasSubstr("bad.safetensors"), HasSubstr("layers.0.attn.wkv.weight"),
                    HasSubstr("[8, 24)"), HasSubstr("outside the data section of 16 bytes")));
  entries = Parse(RawFile(
      R"({"layers.0.attn.wkv.weight":{"dtype":"U8","shape":[0],"data_offsets":[8,0]}})", 16));
  EXPECT_THAT(entries.status().message(),
              AllOf(HasSubstr("layers.0.attn.wkv.weight"), HasSubstr("end before they begin")));
}

TEST(SafetensorsHeaderTest, RejectsOverlappingOffsets) {
  absl::StatusOr<std::vector<HeaderEntry>> entries = Parse(
      RawFile(R"({"layers.0.attn.wq_a.weight":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
              R"("layers.0.attn.wq_b.weight":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}})",
              24));
  EXPECT_THAT(entries.status().message(),
              AllOf(HasSubstr("bad.safetensors"), HasSubstr("layers.0.attn.wq_a.weight"),
                    HasSubstr("layers.0.attn.wq_b.weight"), HasSubstr("overlap")));
  // A small tensor inside a large one.
  entries = Parse(RawFile(R"({"a":{"dtype":"U8","shape":[100],"data_offsets":[0,100]},)"
                          R"("b":{"dtype":"U8","shape":[10],"data_offsets":[10,20]},)"
                          R"("c":{"dtype":"U8","shape":[10],"data_offsets":[30,40]}})",
                          100));
  EXPECT_THAT(entries.status().message(), AllOf(HasSubstr("'b'"), HasSubstr("'a'")));
}

TEST(SafetensorsHeaderTest, RejectsMalformedEntries) {
  const struct {
    const char* entry;
    const char* message;
  } kCases[] = {
      {R"("not an object")", "not a JSON object"},
      {R"({"shape":[1],"data_offsets":[0,1]})", "'dtype'"},
      {R"({"dtype":7,"shape":[1],"data_offsets":[0,1]})", "'dtype'"},
      {R"({"dtype":"U8","data_offsets":[0,1]})", "'shape'"},
      {R"({"dtype":"U8","shape":[-1],"data_offsets":[0,1]})", "'shape'"},
      {R"({"dtype":"U8","shape":[1.5],"data_offsets":[0,1]})", "'shape'"},
      {R"({"dtype":"U8","shape":"1","data_offsets":[0,1]})", "'shape'"},
      {R"({"dtype":"U8","shape":[1]})", "'data_offsets'"},
      {R"({"dtype":"U8","shape":[1],"data_offsets":[0]})", "'data_offsets'"},
      {R"({"dtype":"U8","shape":[1],"data_offsets":[0,1,2]})", "'data_offsets'"},
      {R"({"dtype":"U8","shape":[1],"data_offsets":[0,18446744073709551615]})", "'data_offsets'"},
  };
  for (const auto& c : kCases) {
    const std::string header = std::string(R"({"layers.1.ffn.gate.bias":)") + c.entry + "}";
    absl::StatusOr<std::vector<HeaderEntry>> entries = Parse(RawFile(header, 1));
    EXPECT_EQ(entries.status().code(), absl::StatusCode::kInvalidArgument) << c.entry;
    EXPECT_THAT(entries.status().message(),
                AllOf(HasSubstr("bad.safetensors"), HasSubstr("layers.1.ffn.gate.bias"),
                      HasSubstr(c.message)))
        << c.entry;
  }
}

TEST_F(SafetensorsTest, OpenNamesTheFileOfABadHeader) {
  WriteFile(Path("short.safetensors"), "abc");
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file =
      SafetensorsFile::Open(Path("short.safetensors"));
  EXPECT_THAT(file.status().message(),
              AllOf(HasSubstr(Path("short.safetensors")), HasSubstr("truncated")));
  WriteFile(Path("empty.safetensors"), "");
  file = SafetensorsFile::Open(Path("empty.safetensors"));
  EXPECT_THAT(file.status().message(),
              AllOf(HasSubstr(Path("empty.safetensors")), HasSubstr("truncated")));
  file = SafetensorsFile::Open(Path("absent.safetensors"));
  EXPECT_EQ(file.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(file.status().message(), HasSubstr(Path("absent.safetensors")));
  file = SafetensorsFile::Open(Dir());
  EXPECT_THAT(file.status().message(), HasSubstr("not a regular file"));
}

TEST_F(SafetensorsTest, TruncatedShardNamesFileAndTensor) {
  SafetensorsWriter writer;
  writer.Add("layers.0.attn.wkv.weight", DType::kF32, {64}, std::vector<uint8_t>(256, 0));
  ASSERT_TRUE(writer.Write(Path("model-00001-of-00001.safetensors")).ok());
  fs::resize_file(Path("model-00001-of-00001.safetensors"), 100);
  ASSERT_TRUE(WriteSafetensorsIndex(
                  Dir(), {{"layers.0.attn.wkv.weight", "model-00001-of-00001.safetensors"}}, 256)
                  .ok());
  absl::StatusOr<std::unique_ptr<Checkpoint>> checkpoint = Checkpoint::Open(Dir());
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  absl::StatusOr<const TensorView*> view = (*checkpoint)->Get("layers.0.attn.wkv.weight");
  EXPECT_THAT(view.status().message(), AllOf(HasSubstr("model-00001-of-00001.safetensors"),
                                             HasSubstr("layers.0.attn.wkv.weight")));
}

TEST_F(SafetensorsTest, MissingCheckpointAndMissingTensor) {
  absl::StatusOr<std::unique_ptr<Checkpoint>> none = Checkpoint::Open(Dir());
  EXPECT_EQ(none.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(none.status().message(),
              AllOf(HasSubstr(Dir()), HasSubstr("model.safetensors.index.json")));

  SafetensorsWriter writer;
  writer.Add("norm.weight", DType::kBF16, {1}, {0, 0});
  const std::unique_ptr<Checkpoint> checkpoint = OpenSingle(writer);
  ASSERT_NE(checkpoint, nullptr);
  absl::StatusOr<const TensorView*> view = checkpoint->Get("layers.0.attn.wq_a.weight");
  EXPECT_EQ(view.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(view.status().message(),
              AllOf(HasSubstr(Dir()), HasSubstr("layers.0.attn.wq_a.weight")));
  EXPECT_THAT(checkpoint->LoadF32("layers.0.attn.wq_a.weight").status().message(),
              HasSubstr("layers.0.attn.wq_a.weight"));
  EXPECT_THAT(checkpoint->LoadI64("layers.0.ffn.gate.tid2eid").status().message(),
              HasSubstr("layers.0.ffn.gate.tid2eid"));
}

TEST_F(SafetensorsTest, MissingScaleNamesBothTensors) {
  SafetensorsWriter writer;
  writer.Add("layers.0.attn.wq_a.weight", DType::kF8E4M3, {2, 2}, {0x38, 0x38, 0x38, 0x38});
  writer.Add("layers.0.ffn.experts.1.w3.weight", DType::kI8, {1, 16}, std::vector<uint8_t>(16));
  writer.Add("odd_fp8", DType::kF8E4M3, {1}, {0x38});
  const std::unique_ptr<Checkpoint> checkpoint = OpenSingle(writer);
  ASSERT_NE(checkpoint, nullptr);
  absl::StatusOr<Tensor> weight = checkpoint->LoadF32("layers.0.attn.wq_a.weight");
  EXPECT_EQ(weight.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(weight.status().message(),
              AllOf(HasSubstr("'layers.0.attn.wq_a.scale'"),
                    HasSubstr("the scale of 'layers.0.attn.wq_a.weight'")));
  weight = checkpoint->LoadF32("layers.0.ffn.experts.1.w3.weight");
  EXPECT_THAT(weight.status().message(), HasSubstr("'layers.0.ffn.experts.1.w3.scale'"));
  weight = checkpoint->LoadF32("odd_fp8");
  EXPECT_THAT(weight.status().message(), AllOf(HasSubstr("'odd_fp8'"), HasSubstr(".weight")));
}

TEST_F(SafetensorsTest, WrongScaleShapesNameBothTensors) {
  SafetensorsWriter writer;
  writer.Add("layers.0.attn.wq_a.weight", DType::kF8E4M3, {130, 200},
             std::vector<uint8_t>(130 * 200));
  writer.Add("layers.0.attn.wq_a.scale", DType::kF8E8M0, {1, 2}, {127, 127});
  writer.Add("layers.0.ffn.experts.0.w1.weight", DType::kI8, {2, 32}, std::vector<uint8_t>(64));
  writer.Add("layers.0.ffn.experts.0.w1.scale", DType::kF8E8M0, {2, 1}, {127, 127});
  writer.Add("layers.0.ffn.shared_experts.w1.weight", DType::kF8E4M3, {1, 1}, {0x38});
  writer.Add("layers.0.ffn.shared_experts.w1.scale", DType::kU8, {1, 1}, {127});
  const std::unique_ptr<Checkpoint> checkpoint = OpenSingle(writer);
  ASSERT_NE(checkpoint, nullptr);

  absl::Status status = checkpoint->LoadF32("layers.0.attn.wq_a.weight").status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(),
              AllOf(HasSubstr("model.safetensors"), HasSubstr("layers.0.attn.wq_a.weight"),
                    HasSubstr("layers.0.attn.wq_a.scale"), HasSubstr("[1, 2]"),
                    HasSubstr("expected [2, 2]")));
  status = checkpoint->LoadF32("layers.0.ffn.experts.0.w1.weight").status();
  EXPECT_THAT(status.message(),
              AllOf(HasSubstr("layers.0.ffn.experts.0.w1.weight"),
                    HasSubstr("layers.0.ffn.experts.0.w1.scale"), HasSubstr("expected [2, 2]")));
  status = checkpoint->LoadF32("layers.0.ffn.shared_experts.w1.weight").status();
  EXPECT_THAT(status.message(), AllOf(HasSubstr("layers.0.ffn.shared_experts.w1.scale"),
                                      HasSubstr("dtype U8, expected F8_E8M0")));
}

TEST_F(SafetensorsTest, WrongDtypesForTheLoader) {
  SafetensorsWriter writer;
  writer.Add("layers.0.ffn.gate.tid2eid", DType::kI64, {1}, Bytes<int64_t>({3}));
  writer.Add("layers.3.ffn.gate.bias", DType::kF32, {1}, Bytes<float>({3}));
  const std::unique_ptr<Checkpoint> checkpoint = OpenSingle(writer);
  ASSERT_NE(checkpoint, nullptr);
  EXPECT_THAT(checkpoint->LoadF32("layers.0.ffn.gate.tid2eid").status().message(),
              AllOf(HasSubstr("layers.0.ffn.gate.tid2eid"), HasSubstr("I64")));
  EXPECT_THAT(checkpoint->LoadI64("layers.3.ffn.gate.bias").status().message(),
              AllOf(HasSubstr("layers.3.ffn.gate.bias"), HasSubstr("dtype F32, expected I64")));
}

TEST(DequantTest, RejectsInconsistentHandBuiltViews) {
  const uint8_t bytes[4] = {0x38, 0x38, 0x38, 0x38};
  const uint8_t scale_byte = 127;
  TensorView weight{"w.weight", "f", DType::kF8E4M3, {2, 2}, bytes, 3};  // 3 ≠ 4 bytes
  TensorView scale{"w.scale", "f", DType::kF8E8M0, {1, 1}, &scale_byte, 1};
  EXPECT_THAT(DequantFp8(weight, scale).status().message(),
              AllOf(HasSubstr("w.weight"), HasSubstr("3 bytes")));
  weight.nbytes = 4;
  weight.shape = {4};
  EXPECT_THAT(DequantFp8(weight, scale).status().message(), HasSubstr("expected rank 2"));
  weight.shape = {2, 2};
  absl::StatusOr<Tensor> ok = DequantFp8(weight, scale);
  ASSERT_TRUE(ok.ok()) << ok.status();
  ExpectTensorEquals(*ok, {2, 2}, {1, 1, 1, 1});
  EXPECT_THAT(DequantFp4(weight, scale).status().message(), HasSubstr("expected I8"));
  EXPECT_THAT(ToF32(weight).status().message(), HasSubstr("F8_E4M3"));
}

TEST_F(SafetensorsTest, BadIndexFiles) {
  WriteFile(Path("model.safetensors.index.json"), "{\"weight_map\": ");
  absl::StatusOr<std::unique_ptr<Checkpoint>> checkpoint = Checkpoint::Open(Dir());
  EXPECT_THAT(checkpoint.status().message(),
              AllOf(HasSubstr("model.safetensors.index.json"), HasSubstr("invalid JSON")));
  WriteFile(Path("model.safetensors.index.json"), R"({"metadata": {}})");
  checkpoint = Checkpoint::Open(Dir());
  EXPECT_THAT(checkpoint.status().message(), HasSubstr("'weight_map'"));
  WriteFile(Path("model.safetensors.index.json"), R"({"weight_map": {"embed.weight": 3}})");
  checkpoint = Checkpoint::Open(Dir());
  EXPECT_THAT(checkpoint.status().message(),
              AllOf(HasSubstr("model.safetensors.index.json"), HasSubstr("embed.weight")));

  // The index lists a tensor its shard does not hold.
  SafetensorsWriter writer;
  writer.Add("embed.weight", DType::kBF16, {1}, {0, 0});
  ASSERT_TRUE(writer.Write(Path("shard.safetensors")).ok());
  ASSERT_TRUE(
      WriteSafetensorsIndex(
          Dir(), {{"embed.weight", "shard.safetensors"}, {"head.weight", "shard.safetensors"}}, 2)
          .ok());
  checkpoint = Checkpoint::Open(Dir());
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  EXPECT_TRUE((*checkpoint)->Get("embed.weight").ok());
  absl::StatusOr<const TensorView*> head = (*checkpoint)->Get("head.weight");
  EXPECT_EQ(head.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(head.status().message(),
              AllOf(HasSubstr("shard.safetensors"), HasSubstr("'head.weight'"),
                    HasSubstr("missing from the file")));
}

TEST_F(SafetensorsTest, WriterRejectsBadTensorsAndPaths) {
  SafetensorsWriter writer;
  writer.Add("layers.0.attn.wq_a.weight", DType::kF32, {2, 2}, std::vector<uint8_t>(15));
  const absl::Status status = writer.Write(Path("x.safetensors"));
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(),
              AllOf(HasSubstr("x.safetensors"), HasSubstr("layers.0.attn.wq_a.weight"),
                    HasSubstr("15 bytes")));
  EXPECT_FALSE(fs::exists(Path("x.safetensors")));

  SafetensorsWriter good;
  good.Add("a", DType::kU8, {1}, {1});
  EXPECT_THAT(good.Write(Path("no/such/dir/x.safetensors")).message(),
              HasSubstr("no/such/dir/x.safetensors"));
  EXPECT_FALSE(WriteSafetensorsIndex(Path("no/such/dir"), {}, 0).ok());
}

}  // namespace
}  // namespace dsv4
