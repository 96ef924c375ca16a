// Engine identity (issue 14, part A) against an in-process coordinator on loopback sockets,
// with fake engines speaking proto/engine.proto: the control plane has its own listener that
// takes the engine token only (no token, a client's token, or the public port: refused);
// Hellos must match the coordinator's model, config digest included, and their errors never
// reveal the expected value; claimed capacity is capped; an id reserved for a launch needs
// the launch's nonce; heartbeats are bounded; engine-supplied strings reach the log escaped.
// Squatting on a launched engine's id after a drain and after a kill: tests/serving_test.cc.
#include <sys/stat.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <future>
#include <limits>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "coordinator/coordinator_server.h"
#include "coordinator/engine_supervisor.h"
#include "engine/control_client.h"
#include "grpcpp/grpcpp.h"
#include "proto/engine.grpc.pb.h"
#include "proto/inference.grpc.pb.h"
#include "spdlog/sinks/ostream_sink.h"
#include "tests/coordinator_test_util.h"
#include "tests/test_util.h"

namespace dsv4::coordinator {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

const std::string kModelDir = std::string(DSV4_SOURCE_DIR) + "/models/v4-mini";

class EngineIdentityTest : public ::testing::Test {
 protected:
  void SetUp() override { StartServer(0); }
  void StartServer(int max_running) {
    testing::WriteFile(dir_.path() + "/client.token", "client-token\n");
    CoordinatorOptions options;
    options.listen = "127.0.0.1:0";
    options.engine_listen = "127.0.0.1:0";
    options.checkpoint_dir = kModelDir;
    options.max_context = 256;
    options.auth_token_file = dir_.path() + "/client.token";
    options.engine_token_file = dir_.path() + "/engine.token";  // created by the coordinator
    options.max_running_per_engine = max_running;
    if (server_) server_->Shutdown();
    server_.reset();
    auto server = CoordinatorServer::Start(options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
  }
  void TearDown() override {
    if (server_) server_->Shutdown();
  }
  std::shared_ptr<grpc::Channel> Engines(const std::string& token) {
    return EngineChannel(server_->engine_address(), token);
  }
  std::shared_ptr<grpc::Channel> Public(const std::string& token) {
    return EngineChannel(server_->address(), token);
  }
  // Connects a fake engine with `hello` and returns how its stream ended (OK after a
  // Welcome and a clean close).
  static grpc::Status Try(const std::shared_ptr<grpc::Channel>& channel,
                          const engine::v1::Hello& hello) {
    FakeEngine engine(channel, hello);
    engine::v1::CoordinatorMessage welcome;
    if (engine.Receive(&welcome)) {
      EXPECT_TRUE(welcome.has_welcome());
    }
    return engine.Close();
  }

  testing::TempDir dir_{"engine-identity-test"};
  std::unique_ptr<CoordinatorServer> server_;
};

TEST_F(EngineIdentityTest, TheEngineTokenFileIsCreatedPrivate) {
  struct stat info;
  ASSERT_EQ(stat((dir_.path() + "/engine.token").c_str(), &info), 0);
  EXPECT_EQ(info.st_mode & 0777, 0600);
  EXPECT_EQ(testing::ReadFile(dir_.path() + "/engine.token"), server_->engine_token() + "\n");
  EXPECT_NE(server_->engine_token(), "client-token");
  EXPECT_GE(server_->engine_token().size(), 32u);
}

TEST_F(EngineIdentityTest, EngineListenerRefusesNoTokenAndClientTokens) {
  const engine::v1::Hello hello = FakeEngine::FakeHello("engine-0");
  const grpc::Status none = Try(Engines(""), hello);
  EXPECT_EQ(none.error_code(), grpc::StatusCode::UNAUTHENTICATED) << none.error_message();
  const grpc::Status client = Try(Engines("client-token"), hello);
  EXPECT_EQ(client.error_code(), grpc::StatusCode::UNAUTHENTICATED) << client.error_message();
  EXPECT_EQ(server_->registry().size(), 0);
  const grpc::Status engine = Try(Engines(server_->engine_token()), hello);
  EXPECT_TRUE(engine.ok()) << engine.error_message();
}

TEST_F(EngineIdentityTest, PublicPortServesNoEngineControl) {
  const engine::v1::Hello hello = FakeEngine::FakeHello("engine-0");
  for (const std::string& token :
       {std::string(), std::string("client-token"), server_->engine_token()}) {
    const grpc::Status s = Try(Public(token), hello);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::UNIMPLEMENTED)
        << token << ": " << s.error_message();
  }
  EXPECT_EQ(server_->registry().size(), 0);
  // The public API itself still answers there (with the client token).
  auto stub = v1::Inference::NewStub(Public("client-token"));
  grpc::ClientContext context;
  context.set_deadline(Deadline());
  v1::ListModelsResponse models;
  EXPECT_TRUE(stub->ListModels(&context, {}, &models).ok());
}

TEST_F(EngineIdentityTest, HelloErrorsNameTheFieldButNeverTheExpectedValue) {
  const ModelConfig config = *LoadModelConfigFromDir(kModelDir);
  const std::string sha = *CheckpointConfigSha256(kModelDir);
  struct Case {
    std::string field;
    std::function<void(engine::v1::Hello*)> mutate;
  };
  const std::vector<Case> cases = {
      {"model.name", [](auto* h) { h->mutable_model()->set_name("other"); }},
      {"model.vocab_size", [](auto* h) { h->mutable_model()->set_vocab_size(0); }},
      {"model.num_layers", [](auto* h) { h->mutable_model()->set_num_layers(1000); }},
      {"model.num_routed_experts", [](auto* h) { h->mutable_model()->set_num_routed_experts(1); }},
      {"model.config_sha256", [](auto* h) { h->mutable_model()->set_config_sha256("fake"); }},
      {"model.config_sha256", [](auto* h) { h->mutable_model()->clear_config_sha256(); }},
  };
  for (const Case& c : cases) {
    engine::v1::Hello hello = FakeEngine::FakeHello("engine-0");
    c.mutate(&hello);
    const grpc::Status s = Try(Engines(server_->engine_token()), hello);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << c.field;
    EXPECT_THAT(s.error_message(), HasSubstr(absl::StrCat("hello.", c.field, " does not match")));
    // No expected value: the message is the field and "does not match" (plus, for the
    // digest, which files must match), with no number and no model name in it.
    EXPECT_THAT(s.error_message(), Not(HasSubstr("v4-mini")));
    EXPECT_THAT(s.error_message(), Not(HasSubstr(sha)));
    EXPECT_THAT(s.error_message(), Not(::testing::ContainsRegex("(must be|expected|got) ")));
    EXPECT_THAT(s.error_message(), Not(HasSubstr(absl::StrCat(" ", config.vocab_size))));
  }
  EXPECT_EQ(server_->registry().size(), 0);
}

TEST_F(EngineIdentityTest, ClaimedCapacityIsCappedByTheYaml) {
  StartServer(/*max_running=*/2);
  FakeEngine engine(Engines(server_->engine_token()), "engine-0", "v4-mini", -1, 1000);
  engine::v1::CoordinatorMessage message;
  ASSERT_TRUE(engine.Receive(&message));
  ASSERT_TRUE(message.has_welcome());
  auto stub = v1::Inference::NewStub(Public("client-token"));
  std::vector<std::shared_ptr<grpc::ClientContext>> contexts;
  std::vector<std::future<Streamed>> streams;
  for (int i = 0; i < 5; ++i) {
    v1::GenerateRequest request;
    request.mutable_token_ids()->add_ids(5);
    request.set_max_tokens(4);
    request.mutable_sampling()->set_top_p(1);
    auto context = std::make_shared<grpc::ClientContext>();
    context->AddMetadata("authorization", "Bearer client-token");
    context->set_deadline(Deadline(20));
    contexts.push_back(context);
    streams.push_back(GenerateAsync(stub.get(), request, context));
  }
  // The engine is sent no more requests than the cap, however many it claims to hold.
  std::atomic<int> admits{0};
  auto reader = std::async(std::launch::async, [&] {
    engine::v1::CoordinatorMessage m;
    while (engine.Receive(&m)) admits += m.has_admit() ? 1 : 0;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  for (const auto& context : contexts) context->TryCancel();
  for (auto& stream : streams) stream.get();
  server_->Shutdown();  // ends the engine's stream
  reader.get();
  EXPECT_EQ(admits, 2);
}

TEST_F(EngineIdentityTest, HeartbeatsAndOccupancyAreBounded) {
  struct Case {
    std::string message;
    std::function<void(engine::v1::EngineMessage*)> mutate;
  };
  const std::vector<Case> cases = {
      {"expert_load[0].layer 1073741824 is not a layer of the coordinator's model",
       [](auto* m) { m->mutable_heartbeat()->add_expert_load()->set_layer(1 << 30); }},
      {"expert_load[0].layer -1 is not a layer",
       [](auto* m) { m->mutable_heartbeat()->add_expert_load()->set_layer(-1); }},
      {"experts, more than the coordinator's model",
       [](auto* m) {
         auto* load = m->mutable_heartbeat()->add_expert_load();
         for (int e = 0; e < 100000; ++e) load->add_tokens_per_expert(1);
       }},
      {"expert_load has",
       [](auto* m) {
         for (int l = 0; l < 5000; ++l) m->mutable_heartbeat()->add_expert_load()->set_layer(0);
       }},
      {"heartbeat.occupancy: running_sequences",
       [](auto* m) {
         m->mutable_heartbeat()->mutable_occupancy()->set_running_sequences(1 << 30);
       }},
      {"heartbeat.occupancy: kv_used_tokens",
       [](auto* m) {
         m->mutable_heartbeat()->mutable_occupancy()->set_kv_used_tokens(10);
         m->mutable_heartbeat()->mutable_occupancy()->set_kv_budget_tokens(5);
       }},
      // The fake engine's Hello lists 2 ranks: blocked fractions are per rank, in [0, 1].
      {"heartbeat.blocked_fraction[1] must be in [0, 1], got 1.5",
       [](auto* m) {
         m->mutable_heartbeat()->add_blocked_fraction(0.5);
         m->mutable_heartbeat()->add_blocked_fraction(1.5);
       }},
      {"heartbeat.blocked_fraction[0] must be in [0, 1], got -0.25",
       [](auto* m) { m->mutable_heartbeat()->add_blocked_fraction(-0.25); }},
      {"heartbeat.blocked_fraction[0] must be in [0, 1], got nan",
       [](auto* m) {
         m->mutable_heartbeat()->add_blocked_fraction(std::numeric_limits<double>::quiet_NaN());
       }},
      {"heartbeat.blocked_fraction has 3 entries, more than the engine's 2 ranks",
       [](auto* m) {
         for (int r = 0; r < 3; ++r) m->mutable_heartbeat()->add_blocked_fraction(0.1);
       }},
      {"heartbeat.link bytes per step are negative",
       [](auto* m) { m->mutable_heartbeat()->set_measured_link_bytes_per_step(-1); }},
      {"heartbeat.link bytes per step are negative",
       [](auto* m) {
         m->mutable_heartbeat()->set_modelled_link_bytes_per_step(
             std::numeric_limits<double>::infinity());
       }},
      {"occupancy: running_sequences or queued_sequences",
       [](auto* m) { m->mutable_occupancy()->set_queued_sequences(-1); }},
      {"occupancy: kv_used_tokens",
       [](auto* m) { m->mutable_occupancy()->set_kv_budget_tokens(int64_t{1} << 50); }},
  };
  for (const Case& c : cases) {
    FakeEngine engine(Engines(server_->engine_token()), "engine-0");
    engine::v1::CoordinatorMessage welcome;
    ASSERT_TRUE(engine.Receive(&welcome));
    engine::v1::EngineMessage message;
    c.mutate(&message);
    engine.Send(message);
    const grpc::Status s = engine.Close();
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << c.message;
    EXPECT_THAT(s.error_message(), HasSubstr(c.message));
    for (int i = 0; i < 200 && server_->registry().size() > 0; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    EXPECT_EQ(server_->registry().size(), 0);
  }
}

TEST_F(EngineIdentityTest, EngineSuppliedStringsAreEscapedInTheLog) {
  std::ostringstream log;
  auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(log);
  sink->set_pattern("%v");
  Logger()->sinks().push_back(sink);
  const grpc::Status s =
      Try(Engines(server_->engine_token()), FakeEngine::FakeHello("evil\nINJECTED fake line\r"));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  // A claimed id is logged with the refusal, escaped: one line, no raw control characters.
  const grpc::Status squat = Try(Engines("client-token"), FakeEngine::FakeHello("x"));
  EXPECT_EQ(squat.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  Logger()->flush();
  Logger()->sinks().pop_back();
  const std::string text = log.str();
  EXPECT_THAT(text, HasSubstr("evil\\nINJECTED fake line\\r"));
  EXPECT_THAT(text, Not(HasSubstr("\nINJECTED")));
  EXPECT_THAT(text, Not(HasSubstr("\r")));
  EXPECT_THAT(text, Not(HasSubstr("\\'")));  // printable characters stay as they are
}

// ---- the registry: an id reserved for a launch needs the launch's nonce ----

TEST(EngineRegistryTest, ALaunchedIdNeedsItsNonce) {
  EngineRegistry registry;
  engine::v1::Hello hello = FakeEngine::FakeHello("engine-0");
  registry.Reserve("engine-0", "nonce-1");
  // No nonce, a wrong one, a prefix: refused, whatever the token was.
  for (const std::string nonce : {"", "nonce-2", "nonce-", "nonce-11"}) {
    hello.set_launch_nonce(nonce);
    const absl::Status s =
        registry.Add(hello, std::make_shared<EngineConnection>(nullptr, nullptr));
    EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied) << nonce;
    EXPECT_THAT(std::string(s.message()), Not(HasSubstr("nonce-1")));
  }
  EXPECT_FALSE(registry.Has("engine-0"));
  hello.set_launch_nonce("nonce-1");
  auto first = std::make_shared<EngineConnection>(nullptr, nullptr);
  EXPECT_TRUE(registry.Add(hello, first).ok());
  EXPECT_TRUE(registry.Has("engine-0"));

  // The next launch: the id is bound to its nonce; the old stream must go before the new
  // engine registers (here the old handler removes it).
  registry.Reserve("engine-0", "nonce-2");
  hello.set_launch_nonce("nonce-1");
  EXPECT_EQ(registry.Add(hello, std::make_shared<EngineConnection>(nullptr, nullptr)).code(),
            absl::StatusCode::kPermissionDenied);
  hello.set_launch_nonce("nonce-2");
  std::thread old_handler([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    registry.Remove("engine-0", first.get());
  });
  auto second = std::make_shared<EngineConnection>(nullptr, nullptr);
  EXPECT_TRUE(registry.Add(hello, second).ok());
  old_handler.join();
  EXPECT_TRUE(registry.Has("engine-0"));
  registry.Remove("engine-0", first.get());  // a stale handler removes nothing
  EXPECT_TRUE(registry.Has("engine-0"));

  // Ids not reserved (attach mode) need no nonce.
  EXPECT_TRUE(registry
                  .Add(FakeEngine::FakeHello("attached"),
                       std::make_shared<EngineConnection>(nullptr, nullptr))
                  .ok());
}

TEST(EngineCredentialTest, ReadOrCreateEngineToken) {
  testing::TempDir dir("engine-token");
  const std::string path = dir.path() + "/engine.token";
  absl::StatusOr<std::string> created = ReadOrCreateEngineToken(path);
  ASSERT_TRUE(created.ok()) << created.status();
  absl::StatusOr<std::string> again = ReadOrCreateEngineToken(path);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*created, *again);
  chmod(path.c_str(), 0644);
  EXPECT_EQ(ReadOrCreateEngineToken(path).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(NewSecret(), NewSecret());
}

}  // namespace
}  // namespace dsv4::coordinator
