// Engram memory nodes on loopback: shard arithmetic, table loading refusals (shape,
// checksum), request validation, streaming, health, and the client: remote rows give the
// same Engram output as local tables, also with a replica killed mid-run.
#include <filesystem>
#include <fstream>
#include <functional>
#include <future>
#include <random>
#include <sstream>

#include "attention_node/engram.h"
#include "core/checkpoint_generator.h"
#include "core/checkpoint_layout.h"
#include "engram_store/client.h"
#include "engram_store/server.h"
#include "gmock/gmock.h"
#include "grpcpp/generic/generic_stub.h"
#include "gtest/gtest.h"
#include "tests/engram_test_util.h"
#include "tests/test_util.h"

namespace dsv4::engram {
namespace {

using ::dsv4::testing::ReadFile;
using ::dsv4::testing::WriteFile;

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using testing::Options;

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

// A generated v4-tiny-engram checkpoint shared by the tests (read-only).
class EngramStoreTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new dsv4::testing::TempDir("engram-store");
    const std::string preset = std::string(DSV4_SOURCE_DIR) + "/models/v4-tiny-engram/config.json";
    config_ = new ModelConfig(*LoadModelConfig(preset));
    ASSERT_TRUE(GenerateCheckpoint(*config_, ReadFile(preset), dir_->path(), {}).ok());
  }
  static void TearDownTestSuite() {
    delete dir_;
    delete config_;
  }

  std::vector<std::unique_ptr<EngramStoreServer>> StartServers(int n, int r,
                                                               ServerOptions options = {}) {
    return testing::StartServers(dir_->path(), n, r, options);
  }

  static dsv4::testing::TempDir* dir_;
  static ModelConfig* config_;
};
dsv4::testing::TempDir* EngramStoreTest::dir_ = nullptr;
ModelConfig* EngramStoreTest::config_ = nullptr;

// A copy of the checkpoint that a test may damage.
std::string CopyCheckpoint(const std::string& from, const std::string& to) {
  std::filesystem::copy(from, to, std::filesystem::copy_options::recursive);
  return to;
}

TEST_F(EngramStoreTest, RefusesMismatchedOrCorruptTables) {
  dsv4::testing::TempDir tmp("engram-bad");
  TableShardOptions o;
  {  // config.json implies other table sizes
    const std::string dir = CopyCheckpoint(dir_->path(), tmp.path() + "/shape");
    std::string config = ReadFile(dir + "/config.json");
    config.replace(config.find("[1009, 1009]"), 12, "[1009, 2003]");
    WriteFile(dir + "/config.json", config);
    absl::StatusOr<std::unique_ptr<TableShards>> t = TableShards::Load(dir, o);
    EXPECT_EQ(t.status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_THAT(t.status().message(), HasSubstr("has shape [4062, 16], but config.json implies"));
  }
  {  // one flipped byte inside the table
    const std::string dir = CopyCheckpoint(dir_->path(), tmp.path() + "/flip");
    absl::StatusOr<std::unique_ptr<Checkpoint>> ckpt = Checkpoint::Open(dir);
    const TensorView* table = *(*ckpt)->Get(EngramTableName(1));
    const std::string head(reinterpret_cast<const char*>(table->data), 64);
    const std::string file = table->file;
    ckpt->reset();
    std::string bytes = ReadFile(file);
    const size_t at = bytes.find(head);
    ASSERT_NE(at, std::string::npos);
    bytes[at + 1000] ^= 0x40;
    WriteFile(file, bytes);
    absl::StatusOr<std::unique_ptr<TableShards>> t = TableShards::Load(dir, o);
    EXPECT_EQ(t.status().code(), absl::StatusCode::kDataLoss);
    EXPECT_THAT(t.status().message(), HasSubstr("fail their checksum"));
  }
  {  // no sidecar: refused unless verification is switched off
    const std::string dir = CopyCheckpoint(dir_->path(), tmp.path() + "/nosidecar");
    std::filesystem::remove(dir + "/" + kEngramChecksumsFile);
    EXPECT_THAT(TableShards::Load(dir, o).status().message(), HasSubstr("is missing"));
    o.verify_checksums = false;
    EXPECT_TRUE(TableShards::Load(dir, o).ok());
  }
}

TEST_F(EngramStoreTest, ValidatesRequests) {
  ServerOptions limits;
  limits.max_batch_rows = 100;
  limits.max_chunk_bytes = 64;                // 2 rows of 32 bytes per streamed response
  auto servers = StartServers(2, 1, limits);  // server 0 holds rows [0, 2031)
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
  EXPECT_EQ(response.dtype(), "BF16");
  EXPECT_EQ(response.row_bytes(), 32);
  EXPECT_EQ(response.data().size(), 96u);
  EXPECT_EQ(response.data().substr(0, 32), response.data().substr(64, 32));

  s = lookup(3, {1}, &response);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("Engram layers: 1"));
  s = lookup(1, {4, 2031}, &response);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("holds rows [0, 2031) of 4062"));
  s = lookup(1, {-1}, &response);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  s = lookup(1, std::vector<int64_t>(101, 0), &response);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(s.error_message(), HasSubstr("limit of 100 rows"));
  EXPECT_TRUE(lookup(1, {}, &response).ok());

  // Streaming: the same rows in 2-row chunks.
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
  ASSERT_EQ(stats.shards_size(), 1);
  EXPECT_EQ(stats.shards(0).row_end(), 2031);
  EXPECT_EQ(stats.rejected(), 4u);
  EXPECT_EQ(stats.resident_bytes(), 2031u * 32);
}

// grpc.health.v1.Health/Check with an empty request answers SERVING (field 1 = 1).
TEST_F(EngramStoreTest, AnswersHealthChecks) {
  auto servers = StartServers(1, 1);
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

// Runs the Engram module over `steps` (each a list of token chunks, one per sequence)
// and returns every step's streams after Apply.
std::vector<std::vector<float>> RunSteps(
    const ModelConfig& config, Checkpoint* ckpt, EngramRowSource* source,
    const std::vector<std::vector<std::vector<int32_t>>>& steps,
    const std::function<void(int)>& before_step = nullptr) {
  absl::StatusOr<std::unique_ptr<EngramModule>> module = EngramModule::Load(config, ckpt, source);
  EXPECT_TRUE(module.ok()) << module.status();
  const int64_t nd = config.hc_mult * config.hidden_size;
  std::vector<EngramState> states(steps[0].size(), (*module)->hasher().NewState());
  std::vector<std::vector<float>> outputs;
  std::mt19937 rng(11);
  std::normal_distribution<float> g;
  for (size_t step = 0; step < steps.size(); ++step) {
    if (before_step) before_step(static_cast<int>(step));
    std::vector<EngramModule::Segment> segs;
    int64_t rows = 0;
    for (size_t i = 0; i < steps[step].size(); ++i) {
      segs.push_back({&states[i], steps[step][i], rows});
      rows += static_cast<int64_t>(steps[step][i].size());
    }
    std::vector<float> x(rows * nd);
    for (float& v : x) v = g(rng);
    std::unique_ptr<EngramRowFetch> fetch = (*module)->Begin(segs);
    const absl::Status s = (*module)->Apply(1, fetch.get(), segs, x.data());
    EXPECT_TRUE(s.ok()) << s;
    (*module)->Advance(segs);
    outputs.push_back(std::move(x));
  }
  return outputs;
}

// Prefill chunks for two sequences, then decode steps.
std::vector<std::vector<std::vector<int32_t>>> Steps() {
  std::vector<std::vector<std::vector<int32_t>>> steps = {
      {{1, 5, 700, 1023, 17, 17, 300}, {900, 2, 2}}};
  for (int t = 0; t < 6; ++t) steps.push_back({{(t * 97) % 1024}, {(t * 31 + 5) % 1024}});
  return steps;
}

TEST_F(EngramStoreTest, RemoteRowsGiveTheLocalOutput) {
  absl::StatusOr<std::unique_ptr<Checkpoint>> ckpt = Checkpoint::Open(dir_->path());
  ASSERT_TRUE(ckpt.ok());
  const auto local = RunSteps(*config_, ckpt->get(), nullptr, Steps());

  auto servers = StartServers(2, 1);
  ClientOptions options = Options(servers, 1);
  options.max_batch_rows = 8;  // several calls per shard
  absl::StatusOr<std::unique_ptr<EngramClient>> client = EngramClient::Create(*config_, options);
  ASSERT_TRUE(client.ok()) << client.status();
  const auto remote = RunSteps(*config_, ckpt->get(), client->get(), Steps());
  EXPECT_EQ(remote, local);
  const ClientStats stats = (*client)->stats();
  EXPECT_EQ(stats.fetches, 7u);
  EXPECT_EQ(stats.waits, 7u);
  EXPECT_EQ(stats.rows_requested, (10u + 12u) * 4);
  EXPECT_EQ(stats.failures, 0u);
  EXPECT_GE(stats.stall_ns, 0);

  // Hot rows come from the cache: asking again sends no RPC.
  std::vector<float> first(3 * 16), second(3 * 16);
  ASSERT_TRUE((*client)->Prefetch({{9, 3000, 9}})->Wait(0, first.data()).ok());
  const uint64_t rpcs = (*client)->stats().rpcs, hits = (*client)->stats().cache_hits;
  ASSERT_TRUE((*client)->Prefetch({{3000, 9}})->Wait(0, second.data()).ok());
  EXPECT_EQ((*client)->stats().rpcs, rpcs);
  EXPECT_EQ((*client)->stats().cache_hits, hits + 2);
  EXPECT_TRUE(std::equal(second.begin(), second.begin() + 16, first.begin() + 16));
}

TEST_F(EngramStoreTest, KilledReplicaChangesNothing) {
  absl::StatusOr<std::unique_ptr<Checkpoint>> ckpt = Checkpoint::Open(dir_->path());
  ASSERT_TRUE(ckpt.ok());
  const auto local = RunSteps(*config_, ckpt->get(), nullptr, Steps());

  auto servers = StartServers(2, 2);
  ClientOptions options = Options(servers, 2);
  options.cache_rows = 0;  // every step goes to the servers
  absl::StatusOr<std::unique_ptr<EngramClient>> client = EngramClient::Create(*config_, options);
  ASSERT_TRUE(client.ok()) << client.status();
  const auto remote = RunSteps(*config_, ckpt->get(), client->get(), Steps(), [&](int step) {
    if (step == 3) servers[0]->Shutdown();  // shard 0's primary dies mid-run
  });
  EXPECT_EQ(remote, local);
  const ClientStats stats = (*client)->stats();
  EXPECT_GE(stats.retries, 1u);
  EXPECT_EQ(stats.failures, 0u);
}

TEST_F(EngramStoreTest, AllReplicasDownIsAnErrorNamingTheShard) {
  auto servers = StartServers(2, 1);
  ClientOptions options = Options(servers, 1);
  options.cache_rows = 0;
  absl::StatusOr<std::unique_ptr<EngramClient>> client = EngramClient::Create(*config_, options);
  ASSERT_TRUE(client.ok()) << client.status();
  servers[1]->Shutdown();
  std::unique_ptr<EngramRowFetch> fetch = (*client)->Prefetch({{1, 4000}});
  std::vector<float> out(2 * 16);
  const absl::Status s = fetch->Wait(0, out.data());
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(s.message(), HasSubstr("shard 1: every replica failed"));
  EXPECT_EQ((*client)->stats().failures, 1u);
}

TEST_F(EngramStoreTest, ClientRefusesAnotherModelsStore) {
  auto servers = StartServers(1, 1);
  ModelConfig other = *config_;
  other.engram.vocab_size = {2003, 2003};
  absl::StatusOr<std::unique_ptr<EngramClient>> client =
      EngramClient::Create(other, Options(servers, 1));
  EXPECT_EQ(client.status().code(), absl::StatusCode::kFailedPrecondition);
  ClientOptions two = Options(servers, 1);
  two.servers.push_back(two.servers[0]);  // the same server listed as server 1 of 2
  EXPECT_THAT(EngramClient::Create(*config_, two).status().message(),
              HasSubstr("serves as server 0 of 1"));
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
}

}  // namespace
}  // namespace dsv4::engram
