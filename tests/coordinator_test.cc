// The coordinator's phase-1 public server on a real loopback socket, called through the
// generated stubs: request validation (every field), Tokenize, ListModels,
// GetClusterStatus, Generate without an engine, health checking, reflection, and a fake
// engine leader speaking proto/engine.proto. Also the bounded queue, and the dsv4
// status / generate commands and the dsv4-coordinator binary end to end.
#include <atomic>
#include <chrono>
#include <cmath>
#include <fstream>
#include <functional>
#include <future>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "coordinator/coordinator_server.h"
#include "coordinator/request_validation.h"
#include "core/checkpoint_layout.h"
#include "core/model_config.h"
#include "core/tokenizer.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"
#include "proto/admin.grpc.pb.h"
#include "proto/engine.grpc.pb.h"
#include "proto/inference.grpc.pb.h"
#include "tests/coordinator_test_util.h"
#include "tests/test_util.h"

namespace dsv4::coordinator {
namespace {

using ::testing::HasSubstr;

const std::string kModelDir = std::string(DSV4_SOURCE_DIR) + "/models/v4-mini";

// A request every check accepts; each bad case below changes one field.
v1::GenerateRequest ValidRequest() {
  v1::GenerateRequest r;
  r.set_text("Hello, world");
  r.set_max_tokens(16);
  r.mutable_sampling()->set_temperature(0.7f);
  r.mutable_sampling()->set_top_p(0.9f);
  r.mutable_sampling()->set_top_k(40);
  r.add_stop("\n\n");
  r.add_stop_token_ids(1);
  r.set_request_id("req-1");
  return r;
}

struct BadCase {
  const char* name;
  std::function<void(v1::GenerateRequest*)> mutate;
  std::string message;  // expected substring: names the field and the allowed range
};

std::vector<BadCase> BadCases(int vocab, int max_tokens, int max_prompt) {
  const int v = vocab;
  return {
      {"model", [](auto* r) { r->set_model("gpt-9"); },
       "model must be \"v4-mini\" (or empty), got \"gpt-9\""},
      {"no_prompt", [](auto* r) { r->clear_prompt(); }, "prompt is required"},
      {"empty_text", [](auto* r) { r->set_text(""); }, "text must be a non-empty prompt"},
      {"huge_text", [](auto* r) { r->set_text(std::string((1 << 20) + 1, 'a')); },
       "text length in bytes must be in [1, 1048576], got 1048577"},
      {"empty_token_ids", [](auto* r) { r->mutable_token_ids(); },
       "token_ids.ids count must be in [1, "},
      {"too_many_token_ids",
       [max_prompt](auto* r) {
         for (int i = 0; i <= max_prompt; ++i) r->mutable_token_ids()->add_ids(5);
       },
       "token_ids.ids count must be in [1, "},
      {"negative_token_id",
       [](auto* r) {
         r->mutable_token_ids()->add_ids(3);
         r->mutable_token_ids()->add_ids(-1);
       },
       "token_ids.ids[1] must be in [0, "},
      {"token_id_past_vocab", [vocab](auto* r) { r->mutable_token_ids()->add_ids(vocab); },
       absl::StrCat("token_ids.ids[0] must be in [0, ", v, "), got ", v)},
      {"max_tokens_zero", [](auto* r) { r->set_max_tokens(0); }, "max_tokens must be in [1, "},
      {"max_tokens_too_big", [max_tokens](auto* r) { r->set_max_tokens(max_tokens + 1); },
       "max_tokens must be in [1, "},
      {"prompt_plus_max_tokens",
       [max_tokens](auto* r) {
         r->mutable_token_ids()->add_ids(5);
         r->mutable_token_ids()->add_ids(6);
         r->set_max_tokens(max_tokens);
       },
       "for a prompt of 2 tokens"},
      {"temperature_negative", [](auto* r) { r->mutable_sampling()->set_temperature(-0.1f); },
       "sampling.temperature must be in [0, 2], got -0.1"},
      {"temperature_too_high", [](auto* r) { r->mutable_sampling()->set_temperature(2.5f); },
       "sampling.temperature must be in [0, 2], got 2.5"},
      {"temperature_nan", [](auto* r) { r->mutable_sampling()->set_temperature(NAN); },
       "sampling.temperature must be in [0, 2], got nan"},
      {"top_p_negative", [](auto* r) { r->mutable_sampling()->set_top_p(-0.5f); },
       "sampling.top_p must be in (0, 1]"},
      {"top_p_too_high", [](auto* r) { r->mutable_sampling()->set_top_p(1.5f); },
       "sampling.top_p must be in (0, 1]"},
      {"top_k_negative", [](auto* r) { r->mutable_sampling()->set_top_k(-1); },
       absl::StrCat("sampling.top_k must be in [0, ", v, "], got -1")},
      {"top_k_past_vocab", [vocab](auto* r) { r->mutable_sampling()->set_top_k(vocab + 1); },
       absl::StrCat("sampling.top_k must be in [0, ", v, "]")},
      {"too_many_stops",
       [](auto* r) {
         for (int i = 0; i < 16; ++i) r->add_stop(std::string(1, 'x'));
       },
       "stop count must be in [0, 16], got 17"},
      {"empty_stop", [](auto* r) { r->add_stop(""); },
       "stop[1] length in bytes must be in [1, 256], got 0"},
      {"long_stop", [](auto* r) { r->add_stop(std::string(257, 's')); },
       "stop[1] length in bytes must be in [1, 256], got 257"},
      {"too_many_stop_token_ids",
       [](auto* r) {
         for (int i = 0; i < 64; ++i) r->add_stop_token_ids(2);
       },
       "stop_token_ids count must be in [0, 64], got 65"},
      {"stop_token_id_negative", [](auto* r) { r->add_stop_token_ids(-3); },
       "stop_token_ids[1] must be in [0, "},
      {"stop_token_id_past_vocab", [vocab](auto* r) { r->add_stop_token_ids(vocab); },
       absl::StrCat("stop_token_ids[1] must be in [0, ", v, ")")},
      {"long_request_id", [](auto* r) { r->set_request_id(std::string(129, 'r')); },
       "request_id length in bytes must be in [0, 128], got 129"},
  };
}

// ---- validation and the queue, without a server ----

class ValidationTest : public ::testing::Test {
 protected:
  const RequestLimits limits_ = MakeRequestLimits("v4-mini", 1000, 64);
};

TEST_F(ValidationTest, AcceptsAValidRequest) {
  EXPECT_TRUE(ValidateGenerateRequest(ValidRequest(), limits_).ok());
  v1::GenerateRequest r = ValidRequest();
  r.clear_model();
  r.mutable_token_ids()->add_ids(999);
  r.set_max_tokens(63);
  r.clear_sampling();  // all zeros: greedy, filters off
  EXPECT_TRUE(ValidateGenerateRequest(r, limits_).ok());
}

TEST_F(ValidationTest, RefusesEveryBadFieldNamingItAndItsRange) {
  for (const BadCase& c : BadCases(1000, limits_.max_tokens, limits_.max_prompt_tokens)) {
    SCOPED_TRACE(c.name);
    v1::GenerateRequest r = ValidRequest();
    c.mutate(&r);
    const absl::Status s = ValidateGenerateRequest(r, limits_);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(s.message()), HasSubstr(c.message));
  }
}

// V4.1 is served text only: image tokens are refused, by position, in ids and in text.
TEST_F(ValidationTest, RefusesImageTokens) {
  RequestLimits limits = limits_;
  limits.image_token_id = 999;
  v1::GenerateRequest r = ValidRequest();
  r.mutable_token_ids()->Clear();
  for (int id : {5, 999, 7, 999}) r.mutable_token_ids()->add_ids(id);
  const absl::Status s = ValidateGenerateRequest(r, limits);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()),
              HasSubstr("token_ids.ids holds the image token 999 at position(s) 1, 3"));
  EXPECT_TRUE(ValidateGenerateRequest(r, limits_).ok());  // no image token configured
  const std::vector<int> text_ids = {3, 4};
  EXPECT_TRUE(ValidateTextOnly("text", text_ids, limits).ok());
  EXPECT_THAT(std::string(ValidateTextOnly("text", {999}, limits).message()),
              HasSubstr("text holds the image token 999"));
}

TEST_F(ValidationTest, ChecksTokenizedPromptLength) {
  EXPECT_TRUE(ValidatePromptLength(10, 54, limits_).ok());
  EXPECT_THAT(std::string(ValidatePromptLength(64, 1, limits_).message()),
              HasSubstr("prompt length in tokens must be in [1, 63], got 64"));
  EXPECT_THAT(std::string(ValidatePromptLength(10, 55, limits_).message()),
              HasSubstr("max_tokens must be in [1, 54] for a prompt of 10 tokens"));
}

TEST_F(ValidationTest, LimitsFollowTheContext) {
  EXPECT_EQ(MakeRequestLimits("m", 10, 1 << 20).max_tokens, 32768);
  EXPECT_EQ(MakeRequestLimits("m", 10, 100).max_tokens, 99);
  EXPECT_EQ(MakeRequestLimits("m", 10, 100).max_prompt_tokens, 99);
}

// ---- the server ----

class CoordinatorServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    CoordinatorOptions options;
    options.listen = "127.0.0.1:0";
    options.admin_listen = "127.0.0.1:0";
    options.admin_token_file = dir_.path() + "/admin.token";  // created by Start
    options.checkpoint_dir = kModelDir;
    options.max_context = 256;
    auto server = CoordinatorServer::Start(options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    ASSERT_GT(server_->port(), 0);
    channel_ = grpc::CreateChannel(server_->address(), grpc::InsecureChannelCredentials());
    stub_ = v1::Inference::NewStub(channel_);
    engine_channel_ = EngineChannel(server_->engine_address(), server_->engine_token());
  }
  void TearDown() override {
    if (server_) server_->Shutdown();
  }

  v1::ClusterStatus Status() {
    grpc::ClientContext context;
    context.set_deadline(Deadline());
    v1::ClusterStatus status;
    EXPECT_TRUE(stub_->GetClusterStatus(&context, {}, &status).ok());
    return status;
  }
  // Polls GetClusterStatus (bounded) until it reports `engines` engines.
  v1::ClusterStatus WaitForEngines(int engines) {
    v1::ClusterStatus status;
    for (int i = 0; i < 500; ++i) {
      status = Status();
      if (status.engines_size() == engines) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return status;
  }
  grpc::Status Generate(const v1::GenerateRequest& request) {
    grpc::ClientContext context;
    context.set_deadline(Deadline());
    auto reader = stub_->Generate(&context, request);
    v1::GenerateResponse response;
    while (reader->Read(&response)) {
    }
    return reader->Finish();
  }

  // The admin token Start created.
  std::string AdminToken() const {
    return std::string(absl::StripAsciiWhitespace(testing::ReadFile(dir_.path() + "/admin.token")));
  }

  testing::TempDir dir_{"coordinator-server"};
  std::unique_ptr<CoordinatorServer> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::shared_ptr<grpc::Channel> engine_channel_;  // the engine listener, with the engine token
  std::unique_ptr<v1::Inference::Stub> stub_;
};

TEST_F(CoordinatorServerTest, TokenizeRoundTripsWithTheTokenizer) {
  auto tokenizer = Tokenizer::LoadFromDir(kModelDir);
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  for (const std::string text : {"Hello, world!", "héllo 日本語 123", ""}) {
    grpc::ClientContext context;
    context.set_deadline(Deadline());
    v1::TokenizeRequest request;
    request.set_text(text);
    v1::TokenizeResponse response;
    ASSERT_TRUE(stub_->Tokenize(&context, request, &response).ok());
    const std::vector<int> ids(response.token_ids().begin(), response.token_ids().end());
    EXPECT_EQ(ids, tokenizer->Encode(text));
    EXPECT_EQ(tokenizer->Decode(ids, /*skip_special_tokens=*/true), text);
  }
  grpc::ClientContext context;
  v1::TokenizeRequest request;
  request.set_model("other");
  v1::TokenizeResponse response;
  const grpc::Status s = stub_->Tokenize(&context, request, &response);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("model must be \"v4-mini\""));
}

TEST_F(CoordinatorServerTest, ListsTheCheckpointsModel) {
  auto config = LoadModelConfigFromDir(kModelDir);
  ASSERT_TRUE(config.ok());
  grpc::ClientContext context;
  context.set_deadline(Deadline());
  v1::ListModelsResponse response;
  ASSERT_TRUE(stub_->ListModels(&context, {}, &response).ok());
  ASSERT_EQ(response.models_size(), 1);
  const v1::ModelInfo& model = response.models(0);
  EXPECT_EQ(model.name(), "v4-mini");
  EXPECT_EQ(model.parameters(), CountParameters(*config).total);
  EXPECT_EQ(model.active_parameters(), CountParameters(*config).active_per_token);
  EXPECT_GT(model.parameters(), model.active_parameters());
  EXPECT_EQ(model.max_context(), std::min<int64_t>(256, config->max_position_embeddings));
}

TEST_F(CoordinatorServerTest, ClusterStatusIsEmptyWithoutEngines) {
  const v1::ClusterStatus status = Status();
  EXPECT_EQ(status.engines_size(), 0);
  EXPECT_EQ(status.queue_depth(), 0);
}

TEST_F(CoordinatorServerTest, GenerateRefusesEveryBadFieldOverTheWire) {
  auto config = LoadModelConfigFromDir(kModelDir);
  ASSERT_TRUE(config.ok());
  const RequestLimits limits =
      MakeRequestLimits("v4-mini", static_cast<int>(config->vocab_size), 256);
  for (const BadCase& c :
       BadCases(limits.vocab_size, limits.max_tokens, limits.max_prompt_tokens)) {
    SCOPED_TRACE(c.name);
    v1::GenerateRequest r = ValidRequest();
    c.mutate(&r);
    const grpc::Status s = Generate(r);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(s.error_message(), HasSubstr(c.message));
  }
  // A text prompt too long once tokenized.
  v1::GenerateRequest r = ValidRequest();
  std::string text;
  for (int i = 0; i < 300; ++i) text += " word";
  r.set_text(text);
  const grpc::Status s = Generate(r);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("prompt length in tokens must be in [1, 255]"));
}

TEST_F(CoordinatorServerTest, GenerateWithoutEngineIsUnavailable) {
  const grpc::Status s = Generate(ValidRequest());
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_THAT(s.error_message(), HasSubstr("no engine connected"));
}

// grpc.health.v1.Health/Check with an empty request answers SERVING (field 1 = 1).
TEST_F(CoordinatorServerTest, AnswersHealthChecks) {
  grpc::GenericStub stub(channel_);
  grpc::ClientContext context;
  context.set_deadline(Deadline());
  grpc::Slice empty("");
  grpc::ByteBuffer request(&empty, 1), response;
  std::promise<grpc::Status> done;
  stub.UnaryCall(&context, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request, &response,
                 [&](grpc::Status s) { done.set_value(s); });
  ASSERT_TRUE(done.get_future().get().ok());
  grpc::Slice bytes;
  ASSERT_TRUE(response.DumpToSingleSlice(&bytes).ok());
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(bytes.begin()), bytes.size()),
            std::string("\x08\x01", 2));
}

// ServerReflectionInfo with list_services (field 7) lists the public service (only).
TEST_F(CoordinatorServerTest, ReflectionListsTheServices) {
  grpc::GenericStub stub(channel_);
  grpc::CompletionQueue cq;
  grpc::ClientContext context;
  context.set_deadline(Deadline());
  auto call = stub.PrepareCall(
      &context, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", &cq);
  auto await = [&cq](intptr_t tag) {
    void* got = nullptr;
    bool ok = false;
    return cq.Next(&got, &ok) && ok && reinterpret_cast<intptr_t>(got) == tag;
  };
  call->StartCall(reinterpret_cast<void*>(1));
  ASSERT_TRUE(await(1));
  grpc::Slice list_services(std::string("\x3a\x01*", 3));
  call->Write(grpc::ByteBuffer(&list_services, 1), reinterpret_cast<void*>(2));
  ASSERT_TRUE(await(2));
  call->WritesDone(reinterpret_cast<void*>(3));
  ASSERT_TRUE(await(3));
  grpc::ByteBuffer response;
  call->Read(&response, reinterpret_cast<void*>(4));
  ASSERT_TRUE(await(4));
  grpc::Status status;
  call->Finish(&status, reinterpret_cast<void*>(5));
  ASSERT_TRUE(await(5));
  ASSERT_TRUE(status.ok()) << status.error_message();
  grpc::Slice bytes;
  ASSERT_TRUE(response.DumpToSingleSlice(&bytes).ok());
  const std::string text(reinterpret_cast<const char*>(bytes.begin()), bytes.size());
  EXPECT_THAT(text, HasSubstr("dsv4.v1.Inference"));
  // The engines' control plane has its own listener (engine_listen).
  EXPECT_THAT(text, ::testing::Not(HasSubstr("dsv4.engine.v1.EngineControl")));
  EXPECT_THAT(text, HasSubstr("grpc.health.v1.Health"));
}

TEST_F(CoordinatorServerTest, ConnectedEngineAppearsInClusterStatus) {
  FakeEngine engine(engine_channel_, "engine-0");
  engine::v1::CoordinatorMessage welcome;
  ASSERT_TRUE(engine.Receive(&welcome));
  ASSERT_TRUE(welcome.has_welcome());
  EXPECT_GT(welcome.welcome().heartbeat_interval_ms(), 0);

  engine::v1::EngineMessage heartbeat;
  engine::v1::Heartbeat* hb = heartbeat.mutable_heartbeat();
  hb->mutable_occupancy()->set_running_sequences(3);
  hb->mutable_occupancy()->set_kv_used_tokens(256);
  hb->mutable_occupancy()->set_kv_budget_tokens(1024);
  hb->set_measured_step_ms(12.5);
  hb->set_modelled_step_ms(0.75);
  hb->add_blocked_fraction(0.25);  // by rank: the fake engine has two
  hb->add_blocked_fraction(0.625);
  hb->set_measured_link_bytes_per_step(72400);
  hb->set_modelled_link_bytes_per_step(73000);
  engine::v1::LayerExpertLoad* load = hb->add_expert_load();
  load->set_layer(1);
  load->add_tokens_per_expert(5);
  load->add_tokens_per_expert(7);
  ASSERT_TRUE(engine.Send(heartbeat));

  v1::ClusterStatus status;
  for (int i = 0; i < 500; ++i) {  // the heartbeat is processed asynchronously
    status = Status();
    if (status.engines_size() == 1 && status.engines(0).kv_usage() > 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_EQ(status.engines_size(), 1);
  const v1::EngineStatus& e = status.engines(0);
  EXPECT_EQ(e.id(), "engine-0");
  EXPECT_EQ(e.state(), "serving");
  EXPECT_EQ(e.running_requests(), 0);  // the coordinator's count: it admitted nothing
  EXPECT_DOUBLE_EQ(e.kv_usage(), 0.25);
  EXPECT_DOUBLE_EQ(e.measured_step_ms(), 12.5);
  EXPECT_DOUBLE_EQ(e.modelled_step_ms(), 0.75);
  ASSERT_EQ(e.ranks_size(), 2);
  EXPECT_EQ(e.ranks(0).role(), "attention");
  EXPECT_EQ(e.ranks(1).role(), "expert");
  EXPECT_EQ(e.ranks(1).position(), "sn0/node0/chip1");
  EXPECT_EQ(e.ranks(1).resident_bytes(), 2000);
  EXPECT_DOUBLE_EQ(e.ranks(0).blocked_fraction(), 0.25);
  EXPECT_DOUBLE_EQ(e.ranks(1).blocked_fraction(), 0.625);
  EXPECT_DOUBLE_EQ(e.measured_link_bytes_per_step(), 72400);
  EXPECT_DOUBLE_EQ(e.modelled_link_bytes_per_step(), 73000);
  ASSERT_EQ(status.expert_load_size(), 1);
  EXPECT_THAT(status.expert_load(0).tokens_per_expert(), ::testing::ElementsAre(5, 7));

  // An Occupancy between heartbeats replaces the heartbeat's; the rest of it stays.
  engine::v1::EngineMessage occupancy;
  occupancy.mutable_occupancy()->set_kv_used_tokens(768);
  occupancy.mutable_occupancy()->set_kv_budget_tokens(1024);
  ASSERT_TRUE(engine.Send(occupancy));
  for (int i = 0; i < 500; ++i) {
    status = Status();
    if (status.engines(0).kv_usage() != 0.25) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_DOUBLE_EQ(status.engines(0).kv_usage(), 0.75);
  EXPECT_DOUBLE_EQ(status.engines(0).measured_step_ms(), 12.5);

  // A second engine with the same id is refused; the first stays registered.
  FakeEngine twin(engine_channel_, "engine-0");
  const grpc::Status refused = twin.Close();
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::ALREADY_EXISTS);
  EXPECT_EQ(Status().engines_size(), 1);

  EXPECT_TRUE(engine.Close().ok());
  EXPECT_EQ(WaitForEngines(0).engines_size(), 0);
}

TEST_F(CoordinatorServerTest, RefusesBadEngineHellos) {
  {
    FakeEngine engine(engine_channel_, "engine-x", "another-model");
    const grpc::Status s = engine.Close();
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_EQ(s.error_message(), "hello.model.name does not match the coordinator's model");
  }
  {
    FakeEngine engine(engine_channel_, "engine-x", "v4-mini", 7);
    const grpc::Status s = engine.Close();
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_EQ(s.error_message(), "hello.model.vocab_size does not match the coordinator's model");
  }
  {
    FakeEngine engine(engine_channel_, "");
    EXPECT_THAT(engine.Close().error_message(), HasSubstr("hello.engine_id must be 1 to 128"));
  }
  {
    // Tokens for a request the coordinator does not know are ignored (the last tokens of a
    // cancelled request can cross the Cancel): the connection stays up.
    FakeEngine engine(engine_channel_, "engine-y");
    engine::v1::CoordinatorMessage welcome;
    ASSERT_TRUE(engine.Receive(&welcome));
    engine::v1::EngineMessage tokens;
    tokens.mutable_tokens()->set_request_id("nobody");
    tokens.mutable_tokens()->add_token_ids(3);
    ASSERT_TRUE(engine.Send(tokens));
    EXPECT_TRUE(engine.Close().ok());
  }
  EXPECT_EQ(WaitForEngines(0).engines_size(), 0);
}

TEST_F(CoordinatorServerTest, ShutdownEndsEngineStreams) {
  FakeEngine engine(engine_channel_, "engine-0");
  engine::v1::CoordinatorMessage welcome;
  ASSERT_TRUE(engine.Receive(&welcome));
  server_->Shutdown();
  EXPECT_FALSE(engine.Close().ok());
}

TEST_F(CoordinatorServerTest, AdminDrainsAndStopsEnginesOnItsOwnPort) {
  ASSERT_NE(server_->admin_address(), server_->address());
  auto admin = admin::v1::Admin::NewStub(
      grpc::CreateChannel(server_->admin_address(), grpc::InsecureChannelCredentials()));
  auto call_drain = [&](const std::string& id) {
    grpc::ClientContext context;
    context.set_deadline(Deadline());
    context.AddMetadata("authorization", "Bearer " + AdminToken());
    admin::v1::DrainEngineRequest request;
    request.set_engine_id(id);
    admin::v1::DrainEngineResponse response;
    return admin->DrainEngine(&context, request, &response);
  };
  const grpc::Status unknown = call_drain("nope");
  EXPECT_EQ(unknown.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_THAT(unknown.error_message(), HasSubstr("no engine \"nope\" is connected"));

  // The public port does not serve Admin.
  auto public_admin = admin::v1::Admin::NewStub(channel_);
  grpc::ClientContext public_context;
  admin::v1::DrainEngineResponse ignored;
  EXPECT_EQ(public_admin->DrainEngine(&public_context, {}, &ignored).error_code(),
            grpc::StatusCode::UNIMPLEMENTED);

  FakeEngine engine(engine_channel_, "engine-0");
  engine::v1::CoordinatorMessage message;
  ASSERT_TRUE(engine.Receive(&message));
  ASSERT_TRUE(message.has_welcome());
  ASSERT_TRUE(call_drain("engine-0").ok());
  ASSERT_TRUE(engine.Receive(&message));
  EXPECT_TRUE(message.has_drain());
  ASSERT_EQ(Status().engines_size(), 1);
  EXPECT_EQ(Status().engines(0).state(), "draining");
  engine::v1::EngineMessage drained;
  drained.mutable_drained();
  ASSERT_TRUE(engine.Send(drained));
  EXPECT_TRUE(engine.Close().ok());  // the coordinator ends a drained engine's stream
  EXPECT_EQ(WaitForEngines(0).engines_size(), 0);

  FakeEngine other(engine_channel_, "engine-1");
  ASSERT_TRUE(other.Receive(&message));
  grpc::ClientContext context;
  admin::v1::ShutdownEngineRequest request;
  context.AddMetadata("authorization", "Bearer " + AdminToken());
  request.set_engine_id("engine-1");
  request.set_reason("maintenance");
  admin::v1::ShutdownEngineResponse response;
  ASSERT_TRUE(admin->ShutdownEngine(&context, request, &response).ok());
  ASSERT_TRUE(other.Receive(&message));
  ASSERT_TRUE(message.has_shutdown());
  EXPECT_EQ(message.shutdown().reason(), "maintenance");
  EXPECT_TRUE(other.Close().ok());
}

// An engine that stops heartbeating is disconnected after 3 intervals; one that keeps
// heartbeating stays.
TEST(CoordinatorSupervisionTest, DisconnectsSilentEngines) {
  CoordinatorOptions options;
  options.listen = "127.0.0.1:0";
  options.checkpoint_dir = kModelDir;
  options.heartbeat_interval_ms = 100;
  auto server = CoordinatorServer::Start(options);
  ASSERT_TRUE(server.ok()) << server.status();
  auto channel = EngineChannel((*server)->engine_address(), (*server)->engine_token());
  FakeEngine silent(channel, "silent");
  FakeEngine alive(channel, "alive");
  engine::v1::CoordinatorMessage welcome;
  ASSERT_TRUE(silent.Receive(&welcome));
  ASSERT_TRUE(alive.Receive(&welcome));
  EXPECT_EQ(welcome.welcome().heartbeat_interval_ms(), 100);
  engine::v1::EngineMessage heartbeat;
  heartbeat.mutable_heartbeat();
  const auto start = std::chrono::steady_clock::now();
  while ((*server)->registry().size() != 1 &&
         std::chrono::steady_clock::now() - start < std::chrono::seconds(5)) {
    ASSERT_TRUE(alive.Send(heartbeat));
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  const auto waited = std::chrono::steady_clock::now() - start;
  EXPECT_GE(waited, std::chrono::milliseconds(300));
  EXPECT_EQ((*server)->registry().size(), 1);
  EXPECT_EQ(silent.Close().error_code(), grpc::StatusCode::CANCELLED);
  for (int i = 0; i < 25; ++i) {  // another 5 intervals: still connected
    ASSERT_TRUE(alive.Send(heartbeat));
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ((*server)->registry().size(), 1);
  EXPECT_TRUE(alive.Close().ok());
}

// ---- the CLI against the in-process server ----

TEST_F(CoordinatorServerTest, StatusCommandPrintsTheTable) {
  testing::CommandResult r =
      testing::RunCommand(testing::Dsv4() + " status --server " + server_->address());
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("no engine connected"));

  FakeEngine engine(engine_channel_, "engine-7");
  engine::v1::CoordinatorMessage welcome;
  ASSERT_TRUE(engine.Receive(&welcome));
  r = testing::RunCommand(testing::Dsv4() + " status --server " + server_->address());
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("engine-7"));
  EXPECT_THAT(r.output, HasSubstr("sn0/node0/chip1"));

  // A heartbeat's blocked fractions show per rank, its link bytes per engine.
  engine::v1::EngineMessage heartbeat;
  heartbeat.mutable_heartbeat()->set_measured_step_ms(3);
  heartbeat.mutable_heartbeat()->add_blocked_fraction(0.125);
  heartbeat.mutable_heartbeat()->add_blocked_fraction(0.75);
  heartbeat.mutable_heartbeat()->set_measured_link_bytes_per_step(72400);
  heartbeat.mutable_heartbeat()->set_modelled_link_bytes_per_step(1.5e6);
  ASSERT_TRUE(engine.Send(heartbeat));
  for (int i = 0; i < 500 && Status().engines(0).measured_step_ms() == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  r = testing::RunCommand(testing::Dsv4() + " status --server " + server_->address());
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("72.4 kB/1.5 MB"));
  EXPECT_THAT(r.output, ::testing::ContainsRegex("chip0 .* 12\\.5%"));
  EXPECT_THAT(r.output, ::testing::ContainsRegex("chip1 .* 75\\.0%"));
  EXPECT_TRUE(engine.Close().ok());
}

TEST_F(CoordinatorServerTest, GenerateCommandReportsTheServersError) {
  testing::CommandResult r = testing::RunCommand(testing::Dsv4() + " generate --server " +
                                                 server_->address() + " 'Hello there'");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("UNAVAILABLE: no engine connected"));
  r = testing::RunCommand(testing::Dsv4() + " generate --max-tokens 0 --server " +
                          server_->address() + " hi");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_THAT(r.output, HasSubstr("max_tokens must be in [1, "));
}

// TLS and bearer-token authentication on the public port: the C++ client and `dsv4
// status` get through with the certificate and token, nothing else does.
TEST(CoordinatorSecurityTest, TlsAndBearerTokenGuardThePublicApi) {
  testing::TempDir dir("coordinator-tls");
  const testing::CommandResult cert = testing::RunCommand(
      absl::StrCat("/usr/bin/openssl req -x509 -newkey rsa:2048 -nodes -subj /CN=localhost "
                   "-addext subjectAltName=DNS:localhost,IP:127.0.0.1 -days 1 -keyout ",
                   dir.path(), "/key.pem -out ", dir.path(), "/cert.pem"));
  ASSERT_EQ(cert.exit_code, 0) << cert.output;
  std::ofstream(dir.path() + "/token") << "s3cret-token\n";
  CoordinatorOptions options;
  options.listen = "127.0.0.1:0";
  options.checkpoint_dir = kModelDir;
  options.tls_cert = dir.path() + "/cert.pem";
  options.tls_key = dir.path() + "/key.pem";
  options.auth_token_file = dir.path() + "/token";
  auto server = CoordinatorServer::Start(options);
  ASSERT_TRUE(server.ok()) << server.status();
  const std::string address = absl::StrCat("localhost:", (*server)->port());

  grpc::SslCredentialsOptions ssl;
  std::ifstream pem(options.tls_cert);
  ssl.pem_root_certs.assign(std::istreambuf_iterator<char>(pem), {});
  auto stub = v1::Inference::NewStub(grpc::CreateChannel(address, grpc::SslCredentials(ssl)));
  auto tokenize = [](v1::Inference::Stub& s, const std::string& token) {
    grpc::ClientContext context;
    context.set_deadline(Deadline());
    if (!token.empty()) context.AddMetadata("authorization", "Bearer " + token);
    v1::TokenizeRequest request;
    request.set_text("hi");
    v1::TokenizeResponse response;
    return s.Tokenize(&context, request, &response);
  };
  EXPECT_TRUE(tokenize(*stub, "s3cret-token").ok());
  const grpc::Status missing = tokenize(*stub, "");
  EXPECT_EQ(missing.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_THAT(missing.error_message(), HasSubstr("authorization"));
  EXPECT_EQ(tokenize(*stub, "wrong").error_code(), grpc::StatusCode::UNAUTHENTICATED);
  auto plaintext =
      v1::Inference::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  EXPECT_EQ(tokenize(*plaintext, "s3cret-token").error_code(), grpc::StatusCode::UNAVAILABLE);

  const std::string status = absl::StrCat(testing::Dsv4(), " status --server ", address);
  const testing::CommandResult ok = testing::RunCommand(
      absl::StrCat(status, " --tls-ca ", options.tls_cert, " --token-file ", dir.path(), "/token"));
  EXPECT_EQ(ok.exit_code, 0) << ok.output;
  EXPECT_THAT(ok.output, HasSubstr("engines: 0"));
  const testing::CommandResult refused =
      testing::RunCommand(absl::StrCat(status, " --tls-ca ", options.tls_cert));
  EXPECT_NE(refused.exit_code, 0);
  EXPECT_THAT(refused.output, HasSubstr("authorization"));
  (*server)->Shutdown();
}

TEST(MpirunCommandTest, OneSlotPerRankOnItsHost) {
  auto local = MpirunCommand("eng", "c.yaml", "ckpt", "127.0.0.1:1", "e0", 2,
                             {"localhost", "localhost"}, {"--oversubscribe"});
  ASSERT_TRUE(local.ok());
  // The engine token and launch nonce travel in the environment, never on the command line.
  EXPECT_THAT(*local, ::testing::ElementsAre("mpirun", "--oversubscribe", "-np", "2", "-x",
                                             "DSV4_ENGINE_TOKEN", "-x", "DSV4_ENGINE_LAUNCH_NONCE",
                                             "eng", "--cluster", "c.yaml", "--checkpoint", "ckpt",
                                             "--coordinator", "127.0.0.1:1", "--engine_id", "e0"));
  auto remote =
      MpirunCommand("eng", "c.yaml", "ckpt", "c:1", "e0", 5, {"a", "a", "a", "b", "b"}, {});
  ASSERT_TRUE(remote.ok());
  EXPECT_THAT(*remote, ::testing::Contains("a:3,b:2"));
  auto interleaved = MpirunCommand("eng", "c.yaml", "ckpt", "c:1", "e0", 3, {"a", "b", "a"}, {});
  EXPECT_EQ(interleaved.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(interleaved.status().message()), HasSubstr("rank 2 is on host a"));
}

// A flag's separate value is never rewritten as a flag name, even when it starts with
// "--" (dashed flag names are; the value reaches the command intact).
TEST(CliFlagsTest, ValuesStartingWithDashesAreKept) {
  const testing::CommandResult r =
      testing::RunCommand(testing::Dsv4() + " status --server --not-a-host:1");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_THAT(r.output, HasSubstr("--not-a-host:1"));
}

TEST(CoordinatorBinaryTest, ServesOnTheClusterYamlAndStopsOnSigterm) {
  testing::TempDir dir("coordinator-binary");
  testing::Process coordinator("exec " + std::string(DSV4_BIN_DIR) +
                               "/dsv4-coordinator --cluster cluster-configs/local.yaml "
                               "--checkpoint models/v4-mini --listen 127.0.0.1:0 "
                               "--admin-listen 127.0.0.1:0 --metrics-listen off --engines attach "
                               "--engine-listen 127.0.0.1:0 --engine-token-file " +
                               dir.path() + "/engine.token --admin-token-file " + dir.path() +
                               "/admin.token");
  const std::string marker = "listening on 127.0.0.1:";
  ASSERT_TRUE(coordinator.WaitFor(marker, std::chrono::seconds(30))) << coordinator.output();
  const size_t at = coordinator.output().find(marker);
  size_t end = std::string::npos;
  for (int i = 0; i < 100 && end == std::string::npos; ++i) {  // the rest of the line
    coordinator.WaitFor("\x01", std::chrono::milliseconds(10));
    end = coordinator.output().find('\n', at);
  }
  ASSERT_NE(end, std::string::npos) << coordinator.output();
  const std::string address = coordinator.output().substr(at + 13, end - at - 13);
  const testing::CommandResult r =
      testing::RunCommand(testing::Dsv4() + " status --server " + address);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("engines: 0"));
  coordinator.Signal(SIGTERM);
  EXPECT_EQ(coordinator.Finish(std::chrono::seconds(10)).exit_code, 0) << coordinator.output();
}

TEST(CoordinatorBinaryTest, RefusesAMissingCheckpoint) {
  const testing::CommandResult r = testing::RunCommand(
      std::string(DSV4_BIN_DIR) +
      "/dsv4-coordinator --cluster cluster-configs/local.yaml --checkpoint /nonexistent");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_THAT(r.output, HasSubstr("/nonexistent"));
}

}  // namespace
}  // namespace dsv4::coordinator
