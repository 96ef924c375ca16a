// Engram memory nodes on loopback, serving a generated v41-tiny checkpoint in the released
// V4.1 layout (FP8 E4M3 tables with one E8M0 scale per 32 values): shard arithmetic and
// sizing, table loading refusals (dtype, shape, checksums of values and of scales, each
// naming the tensor), value and scale tensors in different shard files, request
// validation, streaming, health, and the client: the fp32 rows it returns equal the
// checkpoint's rows dequantised here with straight code, also with a replica killed
// mid-run, and it refuses another model's store. Security: rows need the bearer token
// (UNAUTHENTICATED otherwise, never revealing it), TLS with the right CA works, plaintext,
// another CA and a certificate for another host do not.
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <future>
#include <limits>
#include <random>
#include <set>

#include "absl/strings/str_format.h"
#include "core/checkpoint_generator.h"
#include "core/checkpoint_layout.h"
#include "core/safetensors.h"
#include "engram_store/client.h"
#include "engram_store/server.h"
#include "engram_store/table_shards.h"
#include "gmock/gmock.h"
#include "grpcpp/generic/generic_stub.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/engram_test_util.h"
#include "tests/test_util.h"

namespace dsv4::engram {
namespace {

using ::dsv4::testing::ReadFile;
using ::dsv4::testing::WriteFile;
using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using testing::Options;

// Straight decoders, independent of core/dtype.h and core/engram_rows.h.
// e4m3fn: sign, 4 exponent bits (bias 7), 3 mantissa bits; S.1111.111 is NaN.
float DecodeE4M3(uint8_t b) {
  const int sign = b >> 7, exponent = (b >> 3) & 0xF, mantissa = b & 0x7;
  if (exponent == 0xF && mantissa == 0x7) return std::numeric_limits<float>::quiet_NaN();
  const float magnitude = exponent == 0 ? std::ldexp(mantissa / 8.0f, -6)
                                        : std::ldexp(1.0f + mantissa / 8.0f, exponent - 7);
  return sign ? -magnitude : magnitude;
}
// ue8m0: 2^(e − 127); 255 is NaN.
float DecodeE8M0(uint8_t e) {
  if (e == 0xFF) return std::numeric_limits<float>::quiet_NaN();
  return std::ldexp(1.0f, static_cast<int>(e) - 127);
}

TEST(DecodersTest, KnownCodes) {
  EXPECT_EQ(DecodeE4M3(0x00), 0.0f);
  EXPECT_EQ(DecodeE4M3(0x38), 1.0f);          // e = 7, m = 0
  EXPECT_EQ(DecodeE4M3(0x7E), 448.0f);        // e = 15, m = 6
  EXPECT_EQ(DecodeE4M3(0xC4), -3.0f);         // e = 8, m = 4 (1.5 · 2)
  EXPECT_EQ(DecodeE4M3(0x01), 0.001953125f);  // subnormal 2^-9
  EXPECT_EQ(DecodeE8M0(127), 1.0f);
  EXPECT_EQ(DecodeE8M0(120), 1.0f / 128);
}

TEST(ShardPlanTest, RangesReplicasAndOwners) {
  const ShardPlan plan{3, 2};
  ASSERT_TRUE(plan.Validate().ok());
  EXPECT_EQ(plan.ShardRows(10, 0), std::make_pair(int64_t{0}, int64_t{3}));
  EXPECT_EQ(plan.ShardRows(10, 1), std::make_pair(int64_t{3}, int64_t{6}));
  EXPECT_EQ(plan.ShardRows(10, 2), std::make_pair(int64_t{6}, int64_t{10}));
  for (int64_t row = 0; row < 10; ++row) {
    const int s = plan.ShardOf(10, row);
    EXPECT_GE(row, plan.ShardRows(10, s).first);
    EXPECT_LT(row, plan.ShardRows(10, s).second);
  }
  EXPECT_THAT(plan.Replicas(2), ElementsAre(2, 0));
  EXPECT_THAT(plan.ShardsOf(0), ElementsAre(0, 2));
  EXPECT_FALSE((ShardPlan{2, 3}).Validate().ok());
  EXPECT_FALSE((ShardPlan{0, 1}).Validate().ok());
}

ModelConfig Preset(const std::string& name) {
  absl::StatusOr<ModelConfig> c =
      LoadModelConfig(std::string(DSV4_SOURCE_DIR) + "/models/" + name + "/config.json");
  EXPECT_TRUE(c.ok()) << c.status();
  return *c;
}

// V4.1-Flash: 2 × 264 B × (384006168 + 384016682) rows = 202,758,032,400 B; with N nodes
// and replication R every row is held R times, and a node holds R/N of each table.
TEST(SizingTest, DeepSeekV41Flash) {
  const ModelConfig flash = Preset("deepseek-v4.1-flash");
  ASSERT_THAT(flash.engram.num_embeddings, ElementsAre(384006168, 384016682));
  for (const ShardPlan plan :
       {ShardPlan{1, 1}, ShardPlan{4, 2}, ShardPlan{3, 2}, ShardPlan{8, 1}}) {
    uint64_t all = 0, values = 0, scales = 0;
    for (int server = 0; server < plan.num_servers; ++server) {
      absl::StatusOr<std::vector<LayerSizing>> layers = SizeServer(flash, plan, server);
      ASSERT_TRUE(layers.ok()) << layers.status();
      ASSERT_EQ(layers->size(), 2u);
      EXPECT_EQ((*layers)[0].layer, 1);
      EXPECT_EQ((*layers)[1].layer, 14);
      for (const LayerSizing& l : *layers) {
        EXPECT_EQ(l.value_bytes, static_cast<uint64_t>(l.held_rows) * 256);
        EXPECT_EQ(l.scale_bytes, static_cast<uint64_t>(l.held_rows) * 8);
        all += l.bytes();
        values += l.value_bytes;
        scales += l.scale_bytes;
      }
    }
    EXPECT_EQ(all, 202758032400ull * plan.replication);
    EXPECT_EQ(values, 768022850ull * 256 * plan.replication);
    EXPECT_EQ(scales, 768022850ull * 8 * plan.replication);
  }
  absl::StatusOr<std::string> text = FormatSizing(flash, {4, 2});
  ASSERT_TRUE(text.ok());
  EXPECT_THAT(*text, AllOf(HasSubstr("264 B a row"), HasSubstr("layer 1: 384006168 rows"),
                           HasSubstr("layer 14: 384016682 rows"),
                           HasSubstr("all layers: 768022850 rows, 202.758 GB (202,758,032,400 B)"),
                           HasSubstr("server 3 (shards 2, 3): 101.379 GB"),
                           HasSubstr("largest node: 101.379 GB")));
  EXPECT_FALSE(SizeServer(flash, {4, 2}, 4).ok());
  EXPECT_FALSE(SizeServer(Preset("v4-tiny"), {1, 1}, 0).ok());  // no Engram layers
}

// Reads a safetensors header: (length, JSON).
std::pair<uint64_t, nlohmann::json> ReadHeader(const std::string& bytes) {
  uint64_t length = 0;
  std::memcpy(&length, bytes.data(), 8);
  return {length, nlohmann::json::parse(bytes.substr(8, length))};
}

// The shard file holding `tensor` in checkpoint `dir`.
std::string FileOf(const std::string& dir, const std::string& tensor) {
  const nlohmann::json index =
      nlohmann::json::parse(ReadFile(dir + "/model.safetensors.index.json"));
  return dir + "/" + index["weight_map"][tensor].get<std::string>();
}

// Offset of `tensor`'s first data byte in its shard file.
size_t DataOffset(const std::string& dir, const std::string& tensor) {
  const auto [length, header] = ReadHeader(ReadFile(FileOf(dir, tensor)));
  return 8 + length + header[tensor]["data_offsets"][0].get<size_t>();
}

// Rewrites the header of the file holding `tensor` with `edit(header[tensor])`.
void EditHeader(const std::string& dir, const std::string& tensor,
                const std::function<void(nlohmann::json&)>& edit) {
  const std::string file = FileOf(dir, tensor);
  const std::string bytes = ReadFile(file);
  auto [length, header] = ReadHeader(bytes);
  edit(header[tensor]);
  const std::string text = header.dump();
  const uint64_t new_length = text.size();
  std::string out(reinterpret_cast<const char*>(&new_length), 8);
  out += text;
  out += bytes.substr(8 + length);
  WriteFile(file, out);
}

// A generated v41-tiny checkpoint shared by the tests (read-only): layers 1 and 5, 4062
// and 4152 rows of 64 values (66-byte records).
class EngramStoreTest : public ::testing::Test {
 protected:
  static constexpr int64_t kDim = 64, kRecord = 66;

  static void SetUpTestSuite() {
    dir_ = new dsv4::testing::TempDir("engram-store");
    const std::string preset = std::string(DSV4_SOURCE_DIR) + "/models/v41-tiny";
    config_ = new ModelConfig(*LoadModelConfig(preset + "/config.json"));
    GenerateOptions options;
    options.tokenizer_path = preset + "/tokenizer.json";
    const absl::Status s =
        GenerateCheckpoint(*config_, ReadFile(preset + "/config.json"), dir_->path(), options);
    ASSERT_TRUE(s.ok()) << s;
    VaryScales(dir_->path());
    absl::StatusOr<std::unique_ptr<Checkpoint>> ckpt = Checkpoint::Open(dir_->path());
    ASSERT_TRUE(ckpt.ok()) << ckpt.status();
    records_ = new std::vector<std::string>();
    for (int layer : config_->engram.layer_ids) {
      const TensorView* values = *(*ckpt)->Get(EngramTableName(layer));
      const TensorView* scales = *(*ckpt)->Get(EngramScaleName(layer));
      ASSERT_EQ(values->dtype, DType::kF8E4M3);
      ASSERT_EQ(scales->dtype, DType::kF8E8M0);
      std::string records;
      for (int64_t r = 0; r < values->shape[0]; ++r) {
        records.append(reinterpret_cast<const char*>(values->data) + r * kDim, kDim);
        records.append(reinterpret_cast<const char*>(scales->data) + r * kDim / 32, kDim / 32);
      }
      records_->push_back(std::move(records));
    }
  }
  static void TearDownTestSuite() {
    delete dir_;
    delete config_;
    delete records_;
  }

  // The generator gives every block of these unit-variance tables the same scale; spread
  // them over 2^-9 … 2^9 (and re-sum the sidecar) so that a scale applied to the wrong
  // block or row shows.
  static void VaryScales(const std::string& dir) {
    const std::string sums_path = dir + "/" + kEngramChecksumsFile;
    nlohmann::json sums = nlohmann::json::parse(ReadFile(sums_path));
    const int64_t chunk_rows = sums["chunk_rows"].get<int64_t>();
    for (size_t i = 0; i < config_->engram.layer_ids.size(); ++i) {
      const std::string name = EngramScaleName(config_->engram.layer_ids[i]);
      const std::string file = FileOf(dir, name);
      const size_t at = DataOffset(dir, name);
      const int64_t rows = config_->engram.num_embeddings[i];
      const int64_t per_row = kDim / 32, size = rows * per_row;
      std::string bytes = ReadFile(file);
      for (int64_t k = 0; k < size; ++k) bytes[at + k] = static_cast<char>(118 + (k * 7) % 19);
      WriteFile(file, bytes);
      nlohmann::json list = nlohmann::json::array();
      for (int64_t first = 0; first < rows; first += chunk_rows) {
        const int64_t count = std::min(chunk_rows, rows - first);
        list.push_back(absl::StrFormat(
            "%016x", EngramChunkChecksum(
                         reinterpret_cast<const uint8_t*>(bytes.data()) + at + first * per_row,
                         count * per_row)));
      }
      sums["tensors"][name] = list;
    }
    WriteFile(sums_path, sums.dump(2));
  }

  // The record of `row` of Engram layer index `index`, as the checkpoint holds it.
  static std::string Record(int index, int64_t row) {
    return (*records_)[index].substr(row * kRecord, kRecord);
  }
  // The fp32 row, decoded here: value · 2^(scale − 127) per block of 32.
  static std::vector<float> Row(int index, int64_t row) {
    const std::string r = Record(index, row);
    std::vector<float> out(kDim);
    for (int64_t i = 0; i < kDim; ++i) {
      out[i] = DecodeE4M3(static_cast<uint8_t>(r[i])) *
               DecodeE8M0(static_cast<uint8_t>(r[kDim + i / 32]));
    }
    return out;
  }
  // Waits for every layer of a Prefetch of `rows` and checks each row against Row().
  static void ExpectRows(EngramClient& client, const std::vector<std::vector<int64_t>>& rows) {
    std::unique_ptr<EngramRowFetch> fetch = client.Prefetch(rows);
    for (size_t index = 0; index < rows.size(); ++index) {
      std::vector<float> out(rows[index].size() * kDim, -1.0f);
      const absl::Status s = fetch->Wait(static_cast<int>(index), out.data());
      ASSERT_TRUE(s.ok()) << s;
      for (size_t i = 0; i < rows[index].size(); ++i) {
        const std::vector<float> want = Row(static_cast<int>(index), rows[index][i]);
        ASSERT_TRUE(std::equal(want.begin(), want.end(), out.begin() + i * kDim))
            << "layer index " << index << " row " << rows[index][i];
      }
    }
  }

  std::vector<std::unique_ptr<EngramStoreServer>> StartServers(int n, int r,
                                                               ServerOptions options = {}) {
    return testing::StartServers(dir_->path(), n, r, options);
  }

  static dsv4::testing::TempDir* dir_;
  static ModelConfig* config_;
  static std::vector<std::string>* records_;  // per Engram layer: every record
};
dsv4::testing::TempDir* EngramStoreTest::dir_ = nullptr;
ModelConfig* EngramStoreTest::config_ = nullptr;
std::vector<std::string>* EngramStoreTest::records_ = nullptr;

// A copy of the checkpoint that a test may damage.
std::string CopyCheckpoint(const std::string& from, const std::string& to) {
  std::filesystem::copy(from, to, std::filesystem::copy_options::recursive);
  return to;
}

// The comparisons below mean something only if rows differ and scales vary.
TEST_F(EngramStoreTest, GeneratedTablesAreNotTrivial) {
  std::set<char> scales;
  int64_t nonzero = 0;
  for (int64_t row = 0; row < 4062; ++row) {
    const std::string r = Record(0, row);
    scales.insert(r[kDim]);
    scales.insert(r[kDim + 1]);
    for (float v : Row(0, row)) nonzero += v != 0.0f;
  }
  EXPECT_EQ(scales.size(), 19u);  // VaryScales
  EXPECT_GT(nonzero, 4062 * kDim * 9 / 10);
  EXPECT_NE(Row(0, 0), Row(0, 1));
}

TEST_F(EngramStoreTest, RefusesCorruptValuesOrScalesNamingTheTensor) {
  dsv4::testing::TempDir tmp("engram-bad");
  const TableShardOptions o;
  for (const std::string& tensor : {EngramTableName(1), EngramScaleName(1)}) {
    SCOPED_TRACE(tensor);
    const std::string dir = CopyCheckpoint(dir_->path(), tmp.path() + "/" + tensor);
    const std::string file = FileOf(dir, tensor);
    std::string bytes = ReadFile(file);
    bytes[DataOffset(dir, tensor) + 101] ^= 0x40;  // one bit of row 1 (values) or 50 (scales)
    WriteFile(file, bytes);
    absl::StatusOr<std::unique_ptr<TableShards>> t = TableShards::Load(dir, o);
    EXPECT_EQ(t.status().code(), absl::StatusCode::kDataLoss);
    EXPECT_THAT(t.status().message(),
                AllOf(HasSubstr("Engram tensor " + tensor + " rows [0, 4062) fail their checksum"),
                      HasSubstr("corrupt or replaced shard file")));
    // Unverified, it loads: the check is what refused it.
    TableShardOptions unverified;
    unverified.verify_checksums = false;
    EXPECT_TRUE(TableShards::Load(dir, unverified).ok());
  }
  {  // no sidecar: refused unless verification is switched off
    const std::string dir = CopyCheckpoint(dir_->path(), tmp.path() + "/nosidecar");
    std::filesystem::remove(dir + "/" + kEngramChecksumsFile);
    EXPECT_THAT(TableShards::Load(dir, o).status().message(), HasSubstr("is missing"));
    TableShardOptions unverified;
    unverified.verify_checksums = false;
    EXPECT_TRUE(TableShards::Load(dir, unverified).ok());
  }
  {  // a sidecar without the scale's checksums
    const std::string dir = CopyCheckpoint(dir_->path(), tmp.path() + "/noscalesums");
    nlohmann::json sums = nlohmann::json::parse(ReadFile(dir + "/" + kEngramChecksumsFile));
    sums["tensors"].erase(EngramScaleName(5));
    WriteFile(dir + "/" + kEngramChecksumsFile, sums.dump());
    EXPECT_THAT(TableShards::Load(dir, o).status().message(),
                HasSubstr("no list of 1 chunk checksums for layers.5.engram.embed.scale"));
  }
}

TEST_F(EngramStoreTest, RefusesWrongDTypesAndShapesNamingTheTensor) {
  dsv4::testing::TempDir tmp("engram-shape");
  const TableShardOptions o;
  {  // values must be F8_E4M3
    const std::string dir = CopyCheckpoint(dir_->path(), tmp.path() + "/u8values");
    EditHeader(dir, EngramTableName(5), [](nlohmann::json& t) { t["dtype"] = "U8"; });
    const absl::Status s = TableShards::Load(dir, o).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_THAT(s.message(),
                HasSubstr("Engram table layers.5.engram.embed.weight is U8, expected F8_E4M3"));
  }
  {  // values [64, 4062] instead of [4062, 64]
    const std::string dir = CopyCheckpoint(dir_->path(), tmp.path() + "/valueshape");
    EditHeader(dir, EngramTableName(1), [](nlohmann::json& t) {
      t["shape"] = nlohmann::json::array({64, 4062});
    });
    EXPECT_THAT(TableShards::Load(dir, o).status().message(),
                HasSubstr("Engram table layers.1.engram.embed.weight has shape [64, 4062], but "
                          "config.json implies [4062, 64]"));
  }
  {  // scales [2, 4062] instead of [4062, 2]
    const std::string dir = CopyCheckpoint(dir_->path(), tmp.path() + "/scaleshape");
    EditHeader(dir, EngramScaleName(1), [](nlohmann::json& t) {
      t["shape"] = nlohmann::json::array({2, 4062});
    });
    EXPECT_THAT(TableShards::Load(dir, o).status().message(),
                HasSubstr("Engram scale layers.1.engram.embed.scale has shape [2, 4062], but "
                          "config.json implies [4062, 2]"));
  }
  {  // scales must be F8_E8M0 or U8
    const std::string dir = CopyCheckpoint(dir_->path(), tmp.path() + "/i8scales");
    EditHeader(dir, EngramScaleName(5), [](nlohmann::json& t) { t["dtype"] = "I8"; });
    EXPECT_THAT(TableShards::Load(dir, o).status().message(),
                HasSubstr("Engram scale layers.5.engram.embed.scale is I8, expected F8_E8M0 (or "
                          "U8)"));
  }
  {  // U8 scales are accepted (as vLLM does) and serve the same records
    const std::string dir = CopyCheckpoint(dir_->path(), tmp.path() + "/u8scales");
    EditHeader(dir, EngramScaleName(1), [](nlohmann::json& t) { t["dtype"] = "U8"; });
    absl::StatusOr<std::unique_ptr<TableShards>> t = TableShards::Load(dir, o);
    ASSERT_TRUE(t.ok()) << t.status();
    const TableShards::Table* table = (*t)->Find(1);
    ASSERT_NE(table, nullptr);
    EXPECT_EQ(table->scale_dtype, DType::kU8);
    std::string record;
    table->AppendRecord(4061, &record);
    EXPECT_EQ(record, Record(0, 4061));
  }
}

// The scales of layer 1 moved into a shard file of their own: found through the index.
TEST_F(EngramStoreTest, ValuesAndScalesInDifferentFiles) {
  dsv4::testing::TempDir tmp("engram-split");
  const std::string dir = CopyCheckpoint(dir_->path(), tmp.path() + "/split");
  const std::string scale = EngramScaleName(1);
  {
    absl::StatusOr<std::unique_ptr<Checkpoint>> ckpt = Checkpoint::Open(dir);
    const TensorView* view = *(*ckpt)->Get(scale);
    SafetensorsWriter writer;
    writer.Add(scale, view->dtype, view->shape,
               std::vector<uint8_t>(view->data, view->data + view->nbytes));
    ASSERT_TRUE(writer.Write(dir + "/engram-scales.safetensors").ok());
  }
  nlohmann::json index = nlohmann::json::parse(ReadFile(dir + "/model.safetensors.index.json"));
  ASSERT_NE(index["weight_map"][scale], "engram-scales.safetensors");
  index["weight_map"][scale] = "engram-scales.safetensors";
  WriteFile(dir + "/model.safetensors.index.json", index.dump());
  {  // and the old copy damaged, so that only the new file can give the right rows
    const std::string file = FileOf(dir_->path(), scale);
    const std::string copy = dir + "/" + std::filesystem::path(file).filename().string();
    std::string bytes = ReadFile(copy);
    bytes[DataOffset(dir_->path(), scale)] ^= 0x01;
    WriteFile(copy, bytes);
  }
  auto servers = testing::StartServers(dir, 1, 1);
  ASSERT_EQ(servers.size(), 1u);
  absl::StatusOr<std::unique_ptr<EngramClient>> client =
      EngramClient::Create(*config_, Options(servers, 1));
  ASSERT_TRUE(client.ok()) << client.status();
  ExpectRows(**client, {{0, 1, 4061}, {0, 4151}});
}

TEST_F(EngramStoreTest, ServesRecordsAndValidatesRequests) {
  ServerOptions limits;
  limits.max_batch_rows = 100;
  limits.max_chunk_bytes = 2 * kRecord;       // 2 records per streamed response
  auto servers = StartServers(2, 1, limits);  // server 0 holds rows [0, 2031) of layer 1
  ASSERT_EQ(servers.size(), 2u);
  auto channel = grpc::CreateChannel(servers[0]->address(), grpc::InsecureChannelCredentials());
  auto stub = v1::EngramStore::NewStub(channel);
  auto lookup = [&](int layer, std::vector<int64_t> rows, v1::LookupResponse* response) {
    v1::LookupRequest request;
    request.set_layer(layer);
    for (int64_t r : rows) request.add_rows(r);
    grpc::ClientContext context;
    return stub->Lookup(&context, request, response);
  };
  v1::LookupResponse response;
  grpc::Status s = lookup(1, {5, 2030, 5}, &response);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(response.format(), "F8_E4M3+E8M0/32");
  EXPECT_EQ(response.record_bytes(), kRecord);
  EXPECT_EQ(response.data(), Record(0, 5) + Record(0, 2030) + Record(0, 5));
  s = lookup(5, {2075}, &response);  // layer 5: 4152 rows, server 0 holds [0, 2076)
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(response.data(), Record(1, 2075));

  s = lookup(3, {1}, &response);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("Engram layers: 1, 5"));
  s = lookup(1, {4, 2031}, &response);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("holds rows [0, 2031) of 4062"));
  s = lookup(1, {-1}, &response);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  s = lookup(1, std::vector<int64_t>(101, 0), &response);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(s.error_message(), HasSubstr("limit of 100 rows"));
  EXPECT_TRUE(lookup(1, {}, &response).ok());
  EXPECT_EQ(response.data(), "");

  // Streaming: the same records in 2-record chunks.
  v1::LookupRequest request;
  request.set_layer(1);
  for (int64_t r : {7, 8, 9, 10, 11}) request.add_rows(r);
  grpc::ClientContext context;
  auto reader = stub->StreamLookup(&context, request);
  std::string streamed;
  std::vector<int64_t> firsts;
  v1::LookupResponse chunk;
  while (reader->Read(&chunk)) {
    firsts.push_back(chunk.first_index());
    EXPECT_EQ(chunk.record_bytes(), kRecord);
    streamed += chunk.data();
  }
  ASSERT_TRUE(reader->Finish().ok());
  EXPECT_THAT(firsts, ElementsAre(0, 2, 4));
  ASSERT_TRUE(lookup(1, {7, 8, 9, 10, 11}, &response).ok());
  EXPECT_EQ(streamed, response.data());

  grpc::ClientContext stats_context;
  v1::StatsResponse stats;
  ASSERT_TRUE(stub->Stats(&stats_context, v1::StatsRequest(), &stats).ok());
  EXPECT_EQ(stats.num_servers(), 2);
  ASSERT_EQ(stats.shards_size(), 2);
  EXPECT_EQ(stats.shards(0).layer(), 1);
  EXPECT_EQ(stats.shards(0).row_end(), 2031);
  EXPECT_EQ(stats.shards(0).table_rows(), 4062);
  EXPECT_EQ(stats.shards(0).head_dim(), kDim);
  EXPECT_EQ(stats.shards(0).format(), "F8_E4M3+E8M0/32");
  EXPECT_EQ(stats.shards(0).record_bytes(), kRecord);
  EXPECT_EQ(stats.shards(1).layer(), 5);
  EXPECT_EQ(stats.shards(1).row_end(), 2076);
  EXPECT_EQ(stats.rejected(), 4u);
  EXPECT_EQ(stats.resident_value_bytes(), (2031u + 2076u) * 64);
  EXPECT_EQ(stats.resident_scale_bytes(), (2031u + 2076u) * 2);
  EXPECT_EQ(stats.resident_bytes(), (2031u + 2076u) * kRecord);
}

// grpc.health.v1.Health/Check with an empty request answers SERVING (field 1 = 1).
TEST_F(EngramStoreTest, AnswersHealthChecks) {
  auto servers = StartServers(1, 1);
  ASSERT_EQ(servers.size(), 1u);
  grpc::GenericStub stub(
      grpc::CreateChannel(servers[0]->address(), grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  grpc::ByteBuffer request, response;
  grpc::Slice empty("");
  request = grpc::ByteBuffer(&empty, 1);
  std::promise<grpc::Status> done;
  stub.UnaryCall(&context, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request, &response,
                 [&](grpc::Status s) { done.set_value(s); });
  ASSERT_TRUE(done.get_future().get().ok());
  std::vector<grpc::Slice> slices;
  ASSERT_TRUE(response.Dump(&slices).ok());
  std::string bytes;
  for (const grpc::Slice& s : slices)
    bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  EXPECT_EQ(bytes, std::string("\x08\x01", 2));
}

// Rows of both layers, spread over the whole tables, with repeats.
std::vector<std::vector<int64_t>> SomeRows(uint32_t seed, int count) {
  std::mt19937 rng(seed);
  std::vector<std::vector<int64_t>> rows(2);
  for (int i = 0; i < count; ++i) {
    rows[0].push_back(rng() % 4062);
    rows[1].push_back(rng() % 4152);
  }
  rows[0].push_back(rows[0][0]);
  rows[1].push_back(4151);
  return rows;
}

TEST_F(EngramStoreTest, ClientRowsAreTheCheckpointRowsDequantised) {
  auto servers = StartServers(2, 1);
  ASSERT_EQ(servers.size(), 2u);
  ClientOptions options = Options(servers, 1);
  options.max_batch_rows = 8;  // several calls per shard
  absl::StatusOr<std::unique_ptr<EngramClient>> client = EngramClient::Create(*config_, options);
  ASSERT_TRUE(client.ok()) << client.status();
  for (uint32_t step = 0; step < 4; ++step) ExpectRows(**client, SomeRows(step, 40));
  ClientStats stats = (*client)->stats();
  EXPECT_EQ(stats.fetches, 4u);
  EXPECT_EQ(stats.waits, 8u);
  EXPECT_EQ(stats.rows_requested, 4u * 2 * 41);
  EXPECT_EQ(stats.failures, 0u);
  EXPECT_GT(stats.rows_fetched, 0u);

  // Hot rows come from the cache: asking again sends no RPC.
  ExpectRows(**client, {{9, 3000, 9}, {}});
  const uint64_t rpcs = (*client)->stats().rpcs, hits = (*client)->stats().cache_hits;
  ExpectRows(**client, {{3000, 9}, {}});
  EXPECT_EQ((*client)->stats().rpcs, rpcs);
  EXPECT_EQ((*client)->stats().cache_hits, hits + 2);

  // A row outside the table is an error of that layer only.
  std::unique_ptr<EngramRowFetch> fetch = (*client)->Prefetch({{4062}, {1}});
  std::vector<float> out(kDim);
  EXPECT_EQ(fetch->Wait(0, out.data()).code(), absl::StatusCode::kOutOfRange);
  EXPECT_TRUE(fetch->Wait(1, out.data()).ok());
}

TEST_F(EngramStoreTest, KilledReplicaChangesNothing) {
  auto servers = StartServers(2, 2);
  ASSERT_EQ(servers.size(), 2u);
  ClientOptions options = Options(servers, 2);
  options.cache_rows = 0;  // every step goes to the servers
  absl::StatusOr<std::unique_ptr<EngramClient>> client = EngramClient::Create(*config_, options);
  ASSERT_TRUE(client.ok()) << client.status();
  for (uint32_t step = 0; step < 6; ++step) {
    if (step == 3) servers[0]->Shutdown();  // shard 0's primary dies mid-run
    ExpectRows(**client, SomeRows(100 + step, 30));
  }
  const ClientStats stats = (*client)->stats();
  EXPECT_GE(stats.retries, 1u);
  EXPECT_EQ(stats.failures, 0u);
}

TEST_F(EngramStoreTest, AllReplicasDownIsAnErrorNamingTheShard) {
  auto servers = StartServers(2, 1);
  ASSERT_EQ(servers.size(), 2u);
  ClientOptions options = Options(servers, 1);
  options.cache_rows = 0;
  absl::StatusOr<std::unique_ptr<EngramClient>> client = EngramClient::Create(*config_, options);
  ASSERT_TRUE(client.ok()) << client.status();
  servers[1]->Shutdown();
  std::unique_ptr<EngramRowFetch> fetch = (*client)->Prefetch({{1, 4000}, {}});
  std::vector<float> out(2 * kDim);
  const absl::Status s = fetch->Wait(0, out.data());
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(s.message(), HasSubstr("Engram layer 1 shard 1: every replica failed"));
  EXPECT_EQ((*client)->stats().failures, 1u);
}

TEST_F(EngramStoreTest, ClientRefusesAnotherModelsStore) {
  auto servers = StartServers(1, 1);
  ASSERT_EQ(servers.size(), 1u);
  ModelConfig rows = *config_;
  rows.engram.num_embeddings = {4062, 4153};
  absl::Status s = EngramClient::Create(rows, Options(servers, 1)).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("serves layer 5 with 4152 rows"));
  ModelConfig dim = *config_;
  dim.engram.head_dim = 32;
  s = EngramClient::Create(dim, Options(servers, 1)).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("of 64 values as \"F8_E4M3+E8M0/32\" records of 66 B"));
  ModelConfig layers = *config_;
  layers.engram.layer_ids = {1, 6};
  EXPECT_EQ(EngramClient::Create(layers, Options(servers, 1)).status().code(),
            absl::StatusCode::kFailedPrecondition);
  ModelConfig odd = *config_;
  odd.engram.head_dim = 48;  // not a multiple of 32: not the released format
  EXPECT_EQ(EngramClient::Create(odd, Options(servers, 1)).status().code(),
            absl::StatusCode::kInvalidArgument);
  ClientOptions two = Options(servers, 1);
  two.servers.push_back(two.servers[0]);  // the same server listed as server 1 of 2
  EXPECT_THAT(EngramClient::Create(*config_, two).status().message(),
              HasSubstr("serves as server 0 of 1"));
}

// --- Security: the rows are the model's weights. -------------------------------------

constexpr char kToken[] = "0123456789abcdef-engram-token";

// Self-signed certificates made once by the openssl CLI: "server" and "other" name
// localhost / 127.0.0.1, "wronghost" names only wrong.example.
class EngramSecurityTest : public EngramStoreTest {
 protected:
  static void SetUpTestSuite() {
    EngramStoreTest::SetUpTestSuite();
    certs_ = new dsv4::testing::TempDir("engram-certs");
    for (const auto& [name, san] :
         std::vector<std::pair<std::string, std::string>>{{"server", "DNS:localhost,IP:127.0.0.1"},
                                                          {"other", "DNS:localhost,IP:127.0.0.1"},
                                                          {"wronghost", "DNS:wrong.example"}}) {
      const dsv4::testing::CommandResult result = dsv4::testing::RunCommand(absl::StrCat(
          "/usr/bin/openssl req -x509 -newkey rsa:2048 -nodes -subj /CN=dsv4-test "
          "-addext subjectAltName=",
          san, " -days 1 -keyout ", Cert(name + ".key"), " -out ", Cert(name + ".crt")));
      ASSERT_EQ(result.exit_code, 0) << result.output;
    }
    WriteFile(Cert("token"), std::string(kToken) + "\n");
  }
  static void TearDownTestSuite() {
    delete certs_;
    certs_ = nullptr;
    EngramStoreTest::TearDownTestSuite();
  }
  static std::string Cert(const std::string& name) { return certs_->path() + "/" + name; }

  // One server with `tls` ("" = plaintext; else a certificate name) and kToken required.
  std::vector<std::unique_ptr<EngramStoreServer>> StartSecured(const std::string& tls) {
    ServerOptions options;
    options.token = kToken;
    if (!tls.empty()) {
      options.tls_cert = Cert(tls + ".crt");
      options.tls_key = Cert(tls + ".key");
    }
    return StartServers(1, 1, options);
  }
  // Client options trusting `ca` ("" = plaintext) and sending `token`.
  static ClientOptions Secured(const std::vector<std::unique_ptr<EngramStoreServer>>& servers,
                               const std::string& ca, const std::string& token) {
    ClientOptions options = Options(servers, 1);
    EngramSpec spec;
    if (!ca.empty()) spec.tls_ca = Cert(ca + ".crt");
    EXPECT_TRUE(LoadClientSecurity(spec, &options).ok());
    options.token = token;
    return options;
  }

  static dsv4::testing::TempDir* certs_;
};
dsv4::testing::TempDir* EngramSecurityTest::certs_ = nullptr;

// A raw call of each method with `authorization` metadata ("" = none).
std::vector<grpc::Status> CallEveryMethod(const std::string& address,
                                          const std::string& authorization) {
  auto stub =
      v1::EngramStore::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  std::vector<grpc::Status> out;
  v1::LookupRequest request;
  request.set_layer(1);
  request.add_rows(3);
  for (int method = 0; method < 3; ++method) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    if (!authorization.empty()) context.AddMetadata("authorization", authorization);
    if (method == 0) {
      v1::LookupResponse response;
      out.push_back(stub->Lookup(&context, request, &response));
      if (out.back().ok()) {
        EXPECT_EQ(response.data().size(), 66u);
      }
    } else if (method == 1) {
      auto reader = stub->StreamLookup(&context, request);
      v1::LookupResponse response;
      while (reader->Read(&response)) {
      }
      out.push_back(reader->Finish());
    } else {
      v1::StatsResponse response;
      out.push_back(stub->Stats(&context, v1::StatsRequest(), &response));
    }
  }
  return out;
}

TEST_F(EngramSecurityTest, RowsNeedTheToken) {
  auto servers = StartSecured("");
  ASSERT_EQ(servers.size(), 1u);
  const std::string address = servers[0]->address();
  for (const std::string& authorization :
       {std::string(), std::string("Bearer wrong-token"), std::string("Basic ") + kToken,
        std::string("Bearer ") + std::string(kToken).substr(0, 10)}) {
    for (const grpc::Status& s : CallEveryMethod(address, authorization)) {
      EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAUTHENTICATED) << authorization;
      EXPECT_THAT(s.error_message(), ::testing::Not(HasSubstr(kToken)));
      EXPECT_THAT(s.error_message(), ::testing::Not(HasSubstr("0123456789")));
    }
  }
  for (const std::string& authorization :
       {std::string("Bearer ") + kToken, std::string("bearer ") + kToken}) {
    for (const grpc::Status& s : CallEveryMethod(address, authorization)) {
      EXPECT_TRUE(s.ok()) << s.error_message();
    }
  }

  // The client fails clearly without the token or with a wrong one, and reads rows with it.
  absl::Status s = EngramClient::Create(*config_, Secured(servers, "", "")).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(s.message(), AllOf(HasSubstr("refused this client"), HasSubstr("no token"),
                                 HasSubstr("engram.token_file")));
  s = EngramClient::Create(*config_, Secured(servers, "", "not-the-token")).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(s.message(),
              AllOf(HasSubstr("invalid bearer token"), ::testing::Not(HasSubstr(kToken))));
  absl::StatusOr<std::unique_ptr<EngramClient>> client =
      EngramClient::Create(*config_, Secured(servers, "", kToken));
  ASSERT_TRUE(client.ok()) << client.status();
  ExpectRows(**client, SomeRows(7, 20));
}

TEST_F(EngramSecurityTest, HealthStaysOpen) {
  auto servers = StartSecured("");
  ASSERT_EQ(servers.size(), 1u);
  grpc::GenericStub stub(
      grpc::CreateChannel(servers[0]->address(), grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  grpc::Slice empty("");
  grpc::ByteBuffer request(&empty, 1), response;
  std::promise<grpc::Status> done;
  stub.UnaryCall(&context, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request, &response,
                 [&](grpc::Status s) { done.set_value(s); });
  EXPECT_TRUE(done.get_future().get().ok());
}

TEST_F(EngramSecurityTest, TlsWithTheRightCaServesRows) {
  auto servers = StartSecured("server");
  ASSERT_EQ(servers.size(), 1u);
  absl::StatusOr<std::unique_ptr<EngramClient>> client =
      EngramClient::Create(*config_, Secured(servers, "server", kToken));
  ASSERT_TRUE(client.ok()) << client.status();
  ExpectRows(**client, SomeRows(8, 20));
  // TLS alone is not enough: the token is still required.
  EXPECT_EQ(EngramClient::Create(*config_, Secured(servers, "server", "")).status().code(),
            absl::StatusCode::kUnauthenticated);
}

TEST_F(EngramSecurityTest, TlsRefusesPlaintextWrongCaAndWrongHost) {
  auto servers = StartSecured("server");
  ASSERT_EQ(servers.size(), 1u);
  ClientOptions options = Secured(servers, "", kToken);  // plaintext to a TLS port
  options.deadline = absl::Seconds(2);
  absl::Status s = EngramClient::Create(*config_, options).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(s.message(), HasSubstr("if the memory nodes serve TLS, set engram.tls.ca"));
  options = Secured(servers, "other", kToken);  // another certificate trusted
  options.deadline = absl::Seconds(2);
  s = EngramClient::Create(*config_, options).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(s.message(), HasSubstr("signed by engram.tls.ca"));

  // The certificate is trusted but names another host than the one dialled.
  auto wrong_host = StartSecured("wronghost");
  ASSERT_EQ(wrong_host.size(), 1u);
  options = Secured(wrong_host, "wronghost", kToken);
  options.deadline = absl::Seconds(2);
  s = EngramClient::Create(*config_, options).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(s.message(), HasSubstr("name the host dialled"));
}

TEST_F(EngramSecurityTest, ClusterYamlGivesBothSidesTheirCredentials) {
  // Relative paths resolve against the YAML's directory; ca defaults to cert.
  const std::string yaml = absl::StrCat(
      "name: t\nhardware: ", DSV4_SOURCE_DIR, "/cluster-configs/hardware/ascend-950dt.yaml\n",
      "topology: {supernodes: 1, nodes_per_supernode: 1, chips_per_node: 2, links: {",
      "intra_node: {bandwidth_GBps: 1, latency_us: 1}, intra_supernode: {bandwidth_GBps: 1, ",
      "latency_us: 1}, inter_supernode: {bandwidth_GBps: 1, latency_us: 1}}}\n",
      "roles: {attention_ranks: 1, expert_ranks: 1}\n",
      "engram:\n  servers: [\"127.0.0.1:1\"]\n  tls: {cert: server.crt, key: server.key}\n",
      "  token_file: token\n");
  absl::StatusOr<ClusterConfig> cluster = ParseClusterConfig(yaml, Cert("cluster.yaml"));
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  EXPECT_EQ(cluster->engram.tls_cert, Cert("server.crt"));
  EXPECT_EQ(cluster->engram.tls_key, Cert("server.key"));
  EXPECT_EQ(cluster->engram.tls_ca, Cert("server.crt"));
  EXPECT_EQ(cluster->engram.token_file, Cert("token"));

  // The node's options and the client's, from the same section: rows flow.
  ServerOptions server_options;
  ASSERT_TRUE(LoadServerSecurity(cluster->engram, &server_options).ok());
  EXPECT_EQ(server_options.token, kToken);
  auto servers = StartServers(1, 1, server_options);
  ASSERT_EQ(servers.size(), 1u);
  EngramSpec spec = cluster->engram;
  spec.servers = {servers[0]->address()};
  absl::StatusOr<std::unique_ptr<EngramClient>> client = ConnectEngram(*config_, spec);
  ASSERT_TRUE(client.ok()) << client.status();
  ExpectRows(**client, SomeRows(9, 10));

  // A missing token file is named; cert without key is refused with its line.
  spec.token_file = Cert("absent");
  EXPECT_THAT(ConnectEngram(*config_, spec).status().message(), HasSubstr(Cert("absent")));
  const std::string half =
      absl::StrCat(yaml.substr(0, yaml.find("  tls:")), "  tls: {cert: server.crt}\n");
  EXPECT_THAT(ParseClusterConfig(half, Cert("cluster.yaml")).status().message(),
              HasSubstr("engram.tls: cert and key must be given together"));
}

TEST_F(EngramSecurityTest, StoreBinaryServesTlsAndTokenFromItsFlags) {
  const std::string bin = std::string(DSV4_BIN_DIR) + "/dsv4-engram-store --checkpoint " +
                          dir_->path() + " --listen 127.0.0.1:0";
  dsv4::testing::CommandResult r =
      dsv4::testing::RunCommand(bin + " --token_file " + Cert("absent"));
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.output, AllOf(HasSubstr("cannot read token file " + Cert("absent")),
                              HasSubstr("openssl rand -hex 32 > " + Cert("absent"))));
  r = dsv4::testing::RunCommand(bin + " --tls_cert " + Cert("server.crt"));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_THAT(r.output, HasSubstr("TLS needs both a certificate and a private key"));

  dsv4::testing::Process store(absl::StrCat(bin, " --tls_cert ", Cert("server.crt"), " --tls_key ",
                                            Cert("server.key"), " --token_file ", Cert("token")));
  const std::string ready = "listening on ";
  ASSERT_TRUE(store.WaitFor(ready, std::chrono::seconds(30))) << store.output();
  EXPECT_THAT(store.output(), HasSubstr("TLS, bearer token required"));
  const size_t at = store.output().find(ready) + ready.size();
  EngramSpec spec;
  spec.servers = {store.output().substr(at, store.output().find('\n', at) - at)};
  spec.tls_ca = Cert("server.crt");
  spec.token_file = Cert("token");
  absl::StatusOr<std::unique_ptr<EngramClient>> client = ConnectEngram(*config_, spec);
  ASSERT_TRUE(client.ok()) << client.status();
  ExpectRows(**client, SomeRows(10, 10));
  spec.token_file.clear();
  EXPECT_EQ(ConnectEngram(*config_, spec).status().code(), absl::StatusCode::kUnauthenticated);
}

TEST(EngramStoreBinaryTest, RefusesBadSetupsWithAClearMessage) {
  const std::string bin = std::string(DSV4_BIN_DIR) + "/dsv4-engram-store";
  dsv4::testing::CommandResult r = dsv4::testing::RunCommand(bin + " --listen 127.0.0.1:0");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.output, HasSubstr("--checkpoint is required"));
  dsv4::testing::TempDir dir("engram-plain");
  std::filesystem::copy_file(std::string(DSV4_SOURCE_DIR) + "/models/v4-tiny/config.json",
                             dir.path() + "/config.json");
  r = dsv4::testing::RunCommand(bin + " --checkpoint " + dir.path() + " --listen 127.0.0.1:0");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.output, HasSubstr("has no Engram layers"));
  r = dsv4::testing::RunCommand(bin + " --checkpoint " + dir.path() +
                                " --listen 127.0.0.1:0 --num_servers 2 --replication 3");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.output, HasSubstr("replication must be in [1, 2], got 3"));
}

// The RAM a node needs is printed before anything is mapped: here the shards are absent,
// so loading fails after the sizing.
TEST(EngramStoreBinaryTest, PrintsItsRamBeforeMapping) {
  const std::string bin = std::string(DSV4_BIN_DIR) + "/dsv4-engram-store";
  dsv4::testing::TempDir dir("engram-sizing");
  std::filesystem::copy_file(std::string(DSV4_SOURCE_DIR) + "/models/v41-tiny/config.json",
                             dir.path() + "/config.json");
  const dsv4::testing::CommandResult r =
      dsv4::testing::RunCommand(bin + " --checkpoint " + dir.path() +
                                " --listen 127.0.0.1:0 --num_servers 2 --replication 1 --index 1");
  EXPECT_EQ(r.exit_code, 1);
  // Server 1 of 2: rows [2031, 4062) of layer 1 and [2076, 4152) of layer 5, 66 B each.
  const size_t sizing = r.output.find("[server 1/2] RAM needed for this node's Engram rows");
  ASSERT_NE(sizing, std::string::npos) << r.output;
  EXPECT_THAT(r.output, AllOf(HasSubstr("layer 1: 2031 rows [2031, 4062)"),
                              HasSubstr("layer 5: 2076 rows [2076, 4152)"),
                              HasSubstr("server 1 (shards 1): 0.000 GB = 0.00 GiB (271,062 B)")));
  EXPECT_EQ(r.output.find("server 0 ("), std::string::npos);  // only this node
}

TEST(EngramStoreBinaryTest, PlansDeepSeekV41FlashWithoutTables) {
  const std::string bin = std::string(DSV4_BIN_DIR) + "/dsv4-engram-store";
  const dsv4::testing::CommandResult r = dsv4::testing::RunCommand(
      bin + " --config " + DSV4_SOURCE_DIR +
      "/models/deepseek-v4.1-flash/config.json --servers 4 --replication 2 --plan");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output,
              AllOf(HasSubstr("rows of 256 F8_E4M3 values + 8 E8M0 scales = 264 B a row"),
                    HasSubstr("layer 1: 384006168 rows"), HasSubstr("layer 14: 384016682 rows"),
                    HasSubstr("all layers: 768022850 rows, 202.758 GB (202,758,032,400 B)"),
                    HasSubstr("4 memory nodes, replication 2"),
                    HasSubstr("405.516 GB of table RAM over all nodes"),
                    HasSubstr("server 0 (shards 0, 3): 101.379 GB"),
                    HasSubstr("largest node: 101.379 GB")));
  const dsv4::testing::CommandResult one =
      dsv4::testing::RunCommand(bin + " --config deepseek-v4.1-flash --plan");
  EXPECT_EQ(one.exit_code, 0) << one.output;
  EXPECT_THAT(one.output, HasSubstr("server 0 (shards 0): 202.758 GB = 188.83 GiB"));
  const dsv4::testing::CommandResult help = dsv4::testing::RunCommand(bin + " --help");
  EXPECT_THAT(help.output,
              AllOf(HasSubstr("--plan"), HasSubstr("F8_E4M3"), HasSubstr("replication")));
}

}  // namespace
}  // namespace dsv4::engram
