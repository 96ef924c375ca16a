// API keys, request ownership and the admin credential: key files and their errors, a
// request_id that belongs to its caller (another key gets its own request, the same key
// with another body ALREADY_EXISTS, the same key and body re-attaches), per-key counters,
// and an admin port that needs its own token.
#include <sys/stat.h>

#include <chrono>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "coordinator/coordinator_server.h"
#include "coordinator/metrics.h"
#include "core/cluster_config.h"
#include "core/tokenizer.h"
#include "grpcpp/grpcpp.h"
#include "proto/admin.grpc.pb.h"
#include "proto/inference.grpc.pb.h"
#include "rpc/security.h"
#include "tests/coordinator_test_util.h"
#include "tests/test_util.h"

namespace dsv4::coordinator {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

const std::string kModelDir = std::string(DSV4_SOURCE_DIR) + "/models/v4-mini";
constexpr char kAlice[] = "alice-0123456789abcdef";
constexpr char kBob[] = "bob-0123456789abcdef0";

// Writes `text` to `path` with `mode`.
void WritePrivate(const std::string& path, const std::string& text, mode_t mode = 0600) {
  std::ofstream(path) << text;
  ::chmod(path.c_str(), mode);
}

// ---- key files ----

TEST(ApiKeyFileTest, ReadsNamedKeysWithCommentsAndBlankLines) {
  testing::TempDir dir("keys");
  const std::string path = dir.path() + "/keys";
  WritePrivate(path, absl::StrCat("# team keys\n\nalice ", kAlice, "\n  bob\t", kBob, "  \n"));
  absl::StatusOr<rpc::ApiKeys> keys = rpc::ApiKeys::LoadFile(path);
  ASSERT_TRUE(keys.ok()) << keys.status();
  EXPECT_THAT(keys->names(), ::testing::ElementsAre("alice", "bob"));
  EXPECT_TRUE(keys->Matches(kBob));
  EXPECT_FALSE(keys->Matches("bob"));
  EXPECT_FALSE(keys->Matches(std::string(kBob) + "x"));
}

TEST(ApiKeyFileTest, ErrorsNameTheFileAndLineButNeverTheToken) {
  testing::TempDir dir("keys");
  const std::string path = dir.path() + "/keys";
  struct Case {
    std::string text;
    std::string error;
  };
  const std::vector<Case> cases = {
      {absl::StrCat("alice ", kAlice, "\n# c\nbob\n"), ":3: expected \"<name> <token>\""},
      {absl::StrCat("alice ", kAlice, " extra\n"), ":1: expected \"<name> <token>\""},
      {absl::StrCat("al/ice ", kAlice, "\n"), ":1: key name must be 1-64 of [A-Za-z0-9._-]"},
      {absl::StrCat("anonymous ", kAlice, "\n"), ":1: key name must be"},
      {"alice short\n", ":1: the token of key \"alice\" must be at least 16"},
      {absl::StrCat("alice ", kAlice, "\nalice ", kBob, "\n"),
       ":2: key name \"alice\" is used twice"},
      {absl::StrCat("alice ", kAlice, "\nbob ", kAlice, "\n"),
       ":2: key \"bob\" has the same token as another key"},
      {"# nothing\n", "holds no key"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.text);
    WritePrivate(path, c.text);
    const absl::Status s = rpc::ApiKeys::LoadFile(path).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(s.message()), HasSubstr(path));
    EXPECT_THAT(std::string(s.message()), HasSubstr(c.error));
    EXPECT_THAT(std::string(s.message()), Not(HasSubstr(kAlice)));
    EXPECT_THAT(std::string(s.message()), Not(HasSubstr(kBob)));
  }
}

TEST(ApiKeyFileTest, MustBePrivateToItsOwner) {
  testing::TempDir dir("keys");
  const std::string path = dir.path() + "/keys";
  WritePrivate(path, absl::StrCat("alice ", kAlice, "\n"), 0644);
  const absl::Status s = rpc::ApiKeys::LoadFile(path).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(s.message()), HasSubstr("mode 0644"));
  EXPECT_THAT(std::string(s.message()), HasSubstr("chmod 600 " + path));
  EXPECT_EQ(rpc::ApiKeys::LoadFile(dir.path() + "/missing").status().code(),
            absl::StatusCode::kNotFound);
}

TEST(AdminTokenFileTest, CreatedPrivateOnceThenReused) {
  testing::TempDir dir("admin");
  const std::string path = dir.path() + "/admin.token";
  bool created = false;
  absl::StatusOr<std::string> first = rpc::ReadOrCreateTokenFile(path, &created);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_TRUE(created);
  EXPECT_EQ(first->size(), 64u);  // 256 bits in hex
  struct stat st;
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  absl::StatusOr<std::string> second = rpc::ReadOrCreateTokenFile(path, &created);
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_FALSE(created);
  EXPECT_EQ(*second, *first);
  ::chmod(path.c_str(), 0640);
  EXPECT_EQ(rpc::ReadOrCreateTokenFile(path, &created).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

// The cluster YAML's coordinator.api_keys_file and admin_token_file: relative to the YAML;
// the admin token file defaults to <yaml stem>.admin-token beside it.
TEST(KeysYamlTest, KeyFilesAreRelativeToTheYaml) {
  const std::string dir = std::string(DSV4_SOURCE_DIR) + "/cluster-configs";
  const std::string base = R"(name: t
hardware: hardware/ascend-950dt.yaml
topology:
  supernodes: 1
  nodes_per_supernode: 1
  chips_per_node: 4
  links:
    intra_node: {bandwidth_GBps: 392, latency_us: 1.0}
    intra_supernode: {bandwidth_GBps: 392, latency_us: 2.0}
    inter_supernode: {bandwidth_GBps: 50, latency_us: 5.0}
roles:
  attention_ranks: 1
  expert_ranks: 1
)";
  absl::StatusOr<ClusterConfig> plain = ParseClusterConfig(base, dir + "/site.yaml");
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_EQ(plain->coordinator.admin_token_file, dir + "/site.admin-token");
  EXPECT_EQ(plain->coordinator.api_keys_file, "");
  absl::StatusOr<ClusterConfig> keyed = ParseClusterConfig(
      base + "coordinator:\n  api_keys_file: secrets/keys\n  admin_token_file: /etc/admin\n",
      dir + "/site.yaml");
  ASSERT_TRUE(keyed.ok()) << keyed.status();
  EXPECT_EQ(keyed->coordinator.api_keys_file, dir + "/secrets/keys");
  EXPECT_EQ(keyed->coordinator.admin_token_file, "/etc/admin");
}

// ---- per-key counters ----

TEST(KeyMetricsTest, CountersAreBoundedByTheKeys) {
  auto metrics = Metrics::Start("");
  ASSERT_TRUE(metrics.ok());
  (*metrics)->SetCallers({"alice", "bob"});
  (*metrics)->CallerRequest("alice");
  (*metrics)->CallerRequest("alice");
  (*metrics)->CallerRequest("mallory");  // not a key: anonymous
  (*metrics)->CallerRequest("");
  (*metrics)->AddCallerTokens("bob", 7, 3);
  const std::string scrape = (*metrics)->Scrape();
  EXPECT_THAT(scrape, HasSubstr("dsv4_key_requests_total{key=\"alice\"} 2"));
  EXPECT_THAT(scrape, HasSubstr("dsv4_key_requests_total{key=\"bob\"} 0"));
  EXPECT_THAT(scrape, HasSubstr("dsv4_key_requests_total{key=\"anonymous\"} 2"));
  EXPECT_THAT(scrape, HasSubstr("dsv4_key_tokens_total{key=\"bob\",kind=\"prompt\"} 7"));
  EXPECT_THAT(scrape, HasSubstr("dsv4_key_tokens_total{key=\"bob\",kind=\"generated\"} 3"));
  EXPECT_THAT(scrape, Not(HasSubstr("mallory")));
}

// ---- a coordinator with two API keys and an admin token ----

class KeysServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    WritePrivate(Path("keys"), absl::StrCat("alice ", kAlice, "\nbob ", kBob, "\n"));
    CoordinatorOptions options;
    options.listen = "127.0.0.1:0";
    options.admin_listen = "127.0.0.1:0";
    options.api_keys_file = Path("keys");
    options.admin_token_file = Path("admin.token");
    options.checkpoint_dir = kModelDir;
    options.max_context = 256;
    auto server = CoordinatorServer::Start(options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    channel_ = grpc::CreateChannel(server_->address(), grpc::InsecureChannelCredentials());
    stub_ = v1::Inference::NewStub(channel_);
  }
  void TearDown() override {
    if (server_) server_->Shutdown();
  }
  std::string Path(const std::string& name) const { return dir_.path() + "/" + name; }

  std::future<Streamed> Generate(const v1::GenerateRequest& request, const std::string& token) {
    auto context = std::make_shared<grpc::ClientContext>();
    context->set_deadline(Deadline(30));
    if (!token.empty()) context->AddMetadata("authorization", "Bearer " + token);
    return GenerateAsync(stub_.get(), request, context);
  }
  static v1::GenerateRequest Request(const std::string& text, const std::string& id) {
    v1::GenerateRequest r;
    r.set_text(text);
    r.set_max_tokens(4);
    r.set_request_id(id);
    return r;
  }
  std::unique_ptr<FakeEngine> Connect() {
    auto engine = std::make_unique<FakeEngine>(
        EngineChannel(server_->engine_address(), server_->engine_token()), "engine-0");
    engine::v1::CoordinatorMessage welcome;
    EXPECT_TRUE(engine->Receive(&welcome) && welcome.has_welcome());
    return engine;
  }
  static engine::v1::Admit NextAdmit(FakeEngine& engine) {
    engine::v1::CoordinatorMessage m;
    if (!engine.Receive(&m)) ADD_FAILURE() << "the coordinator closed the engine stream";
    EXPECT_TRUE(m.has_admit()) << m.DebugString();
    return m.admit();
  }
  static void Finish(FakeEngine& engine, const std::string& id, std::vector<int32_t> tokens) {
    engine::v1::EngineMessage m;
    m.mutable_tokens()->set_request_id(id);
    m.mutable_tokens()->mutable_token_ids()->Add(tokens.begin(), tokens.end());
    m.mutable_tokens()->set_finish_reason(engine::v1::FINISH_REASON_LENGTH);
    ASSERT_TRUE(engine.Send(m));
  }
  grpc::Status CallDrain(const std::string& token) {
    auto admin = admin::v1::Admin::NewStub(
        grpc::CreateChannel(server_->admin_address(), grpc::InsecureChannelCredentials()));
    grpc::ClientContext context;
    context.set_deadline(Deadline());
    if (!token.empty()) context.AddMetadata("authorization", "Bearer " + token);
    admin::v1::DrainEngineRequest request;
    request.set_engine_id("nope");
    admin::v1::DrainEngineResponse response;
    return admin->DrainEngine(&context, request, &response);
  }

  testing::TempDir dir_{"coordinator-keys"};
  std::unique_ptr<CoordinatorServer> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Inference::Stub> stub_;
};

TEST_F(KeysServerTest, ARequestIdBelongsToItsCaller) {
  auto tokenizer = Tokenizer::LoadFromDir(kModelDir);
  ASSERT_TRUE(tokenizer.ok());
  auto engine = Connect();
  const v1::GenerateRequest alice_request = Request("alpha alpha", "job-1");
  auto alice = Generate(alice_request, kAlice);
  const engine::v1::Admit first = NextAdmit(*engine);
  // Bob's job-1 is not Alice's: he gets a request of his own, never her stream.
  auto bob = Generate(Request("beta", "job-1"), kBob);
  Finish(*engine, first.request_id(), {5, 6});
  const Streamed alice_got = alice.get();
  ASSERT_TRUE(alice_got.status.ok()) << alice_got.status.error_message();
  EXPECT_EQ(alice_got.tokens, (std::vector<int32_t>{5, 6}));

  const engine::v1::Admit second = NextAdmit(*engine);
  EXPECT_NE(second.request_id(), first.request_id());
  const std::vector<int> beta = tokenizer->Encode("beta");
  EXPECT_EQ(std::vector<int>(second.prompt_token_ids().begin(), second.prompt_token_ids().end()),
            beta);
  Finish(*engine, second.request_id(), {9});
  const Streamed bob_got = bob.get();
  ASSERT_TRUE(bob_got.status.ok()) << bob_got.status.error_message();
  EXPECT_EQ(bob_got.tokens, (std::vector<int32_t>{9}));
  EXPECT_EQ(bob_got.last.usage().prompt_tokens(), static_cast<int>(beta.size()));

  // Alice retrying the same request re-attaches to it (no new admission).
  const Streamed retry = Generate(alice_request, kAlice).get();
  ASSERT_TRUE(retry.status.ok()) << retry.status.error_message();
  EXPECT_EQ(retry.tokens, (std::vector<int32_t>{5, 6}));

  // The same id with another body is refused, and says nothing about the first request.
  v1::GenerateRequest changed = alice_request;
  changed.set_max_tokens(3);
  const Streamed refused = Generate(changed, kAlice).get();
  EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::ALREADY_EXISTS);
  EXPECT_THAT(refused.status.error_message(), HasSubstr("request_id \"job-1\""));
  EXPECT_THAT(refused.status.error_message(), Not(HasSubstr("alpha")));
  EXPECT_TRUE(refused.tokens.empty());

  // Without a key, or with a wrong one: UNAUTHENTICATED, counted as anonymous.
  EXPECT_EQ(Generate(alice_request, "").get().status.error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  const Streamed wrong = Generate(alice_request, std::string(kAlice) + "0").get();
  EXPECT_EQ(wrong.status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(wrong.status.error_message(), "invalid bearer token");

  const std::string scrape = server_->metrics().Scrape();
  EXPECT_THAT(scrape, HasSubstr("dsv4_key_requests_total{key=\"alice\"} 3"));
  EXPECT_THAT(scrape, HasSubstr("dsv4_key_requests_total{key=\"bob\"} 1"));
  EXPECT_THAT(scrape, HasSubstr("dsv4_key_requests_total{key=\"anonymous\"} 2"));
  EXPECT_THAT(scrape, HasSubstr("dsv4_key_tokens_total{key=\"alice\",kind=\"generated\"} 2"));
  EXPECT_THAT(scrape, HasSubstr("dsv4_key_tokens_total{key=\"bob\",kind=\"generated\"} 1"));
  EXPECT_THAT(scrape, HasSubstr(absl::StrCat("dsv4_key_tokens_total{key=\"bob\",kind=\"prompt\"} ",
                                             beta.size())));
  EXPECT_THAT(scrape, Not(HasSubstr(kAlice)));
  EXPECT_THAT(scrape, Not(HasSubstr(kBob)));
  EXPECT_TRUE(engine->Close().ok());
}

TEST_F(KeysServerTest, TheAdminPortNeedsTheAdminToken) {
  struct stat st;
  ASSERT_EQ(::stat(Path("admin.token").c_str(), &st), 0);  // created by Start
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  const absl::StatusOr<std::string> token = rpc::ReadTokenFile(Path("admin.token"));
  ASSERT_TRUE(token.ok()) << token.status();

  const grpc::Status missing = CallDrain("");
  EXPECT_EQ(missing.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_THAT(missing.error_message(), HasSubstr("authorization"));
  const grpc::Status wrong = CallDrain(*token + "x");
  EXPECT_EQ(wrong.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(wrong.error_message(), "invalid bearer token");
  const grpc::Status api_key = CallDrain(kAlice);
  EXPECT_EQ(api_key.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_THAT(api_key.error_message(), HasSubstr("not an admin credential"));
  // The admin token passes: the engine is unknown.
  EXPECT_EQ(CallDrain(*token).error_code(), grpc::StatusCode::NOT_FOUND);
  // and is no API key.
  grpc::ClientContext context;
  context.set_deadline(Deadline());
  context.AddMetadata("authorization", "Bearer " + *token);
  v1::TokenizeResponse ignored;
  EXPECT_EQ(stub_->Tokenize(&context, {}, &ignored).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);

  // The dsv4 admin CLI sends the token of --token-file.
  const std::string admin =
      absl::StrCat(testing::Dsv4(), " admin drain nope --admin ", server_->admin_address());
  const testing::CommandResult with =
      testing::RunCommand(absl::StrCat(admin, " --token-file ", Path("admin.token")));
  EXPECT_NE(with.exit_code, 0);
  EXPECT_THAT(with.output, HasSubstr("no engine \"nope\" is connected"));
  const testing::CommandResult without = testing::RunCommand(admin);
  EXPECT_NE(without.exit_code, 0);
  EXPECT_THAT(without.output, HasSubstr("--token-file"));
}

TEST(KeysStartTest, RefusesAnAdminTokenThatIsAnApiKeyAndAdminWithoutToken) {
  testing::TempDir dir("coordinator-keys");
  WritePrivate(dir.path() + "/keys", absl::StrCat("alice ", kAlice, "\n"));
  WritePrivate(dir.path() + "/admin.token", absl::StrCat(kAlice, "\n"));
  CoordinatorOptions options;
  options.listen = "127.0.0.1:0";
  options.admin_listen = "127.0.0.1:0";
  options.api_keys_file = dir.path() + "/keys";
  options.admin_token_file = dir.path() + "/admin.token";
  options.checkpoint_dir = kModelDir;
  absl::Status s = CoordinatorServer::Start(options).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("is also an API key"));
  EXPECT_THAT(std::string(s.message()), Not(HasSubstr(kAlice)));
  options.admin_token_file.clear();
  s = CoordinatorServer::Start(options).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("admin_token_file"));
}

}  // namespace
}  // namespace dsv4::coordinator
