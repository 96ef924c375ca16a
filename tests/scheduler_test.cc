// The coordinator's Generate path against fake engines (tests/coordinator_test_util.h) on loopback:
// what engines are sent (Admit, Cancel), what clients receive (tokens, text, finish,
// usage), replay after an engine loss, idempotent request ids, queue limits and
// cancellation. The real engine under the coordinator is tested in serving_test.cc.
#include <chrono>
#include <future>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "coordinator/coordinator_server.h"
#include "core/tokenizer.h"
#include "grpcpp/grpcpp.h"
#include "proto/inference.grpc.pb.h"
#include "tests/coordinator_test_util.h"

namespace dsv4::coordinator {
namespace {

using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;

const std::string kModelDir = std::string(DSV4_SOURCE_DIR) + "/models/v4-mini";

class SchedulerTest : public ::testing::Test {
 protected:
  void Start(int max_queue = 256) {
    CoordinatorOptions options;
    options.listen = "127.0.0.1:0";
    options.checkpoint_dir = kModelDir;
    options.max_context = 256;
    options.max_queue = max_queue;
    auto server = CoordinatorServer::Start(options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    channel_ = grpc::CreateChannel(server_->address(), grpc::InsecureChannelCredentials());
    stub_ = v1::Inference::NewStub(channel_);
    engine_channel_ = EngineChannel(server_->engine_address(), server_->engine_token());
  }
  void SetUp() override { Start(); }
  void TearDown() override {
    if (server_) server_->Shutdown();
  }

  // Runs Generate in the background; `context` lets the test cancel it.
  std::future<Streamed> Generate(v1::GenerateRequest request,
                                 std::shared_ptr<grpc::ClientContext> context = nullptr) {
    if (!context) context = std::make_shared<grpc::ClientContext>();
    context->set_deadline(Deadline(30));
    return GenerateAsync(stub_.get(), std::move(request), context);
  }

  // A fake engine the coordinator has registered (its Welcome received).
  std::unique_ptr<FakeEngine> Connect(int max_running = 8) {
    auto engine =
        std::make_unique<FakeEngine>(engine_channel_, "engine-0", "v4-mini", -1, max_running);
    engine::v1::CoordinatorMessage welcome;
    EXPECT_TRUE(engine->Receive(&welcome) && welcome.has_welcome());
    return engine;
  }
  // The next Admit, Cancel, … the fake engine gets.
  static engine::v1::CoordinatorMessage Next(FakeEngine& engine) {
    engine::v1::CoordinatorMessage m;
    if (!engine.Receive(&m)) ADD_FAILURE() << "the coordinator closed the engine stream";
    return m;
  }
  static void SendTokens(FakeEngine& engine, const std::string& id, std::vector<int32_t> tokens,
                         engine::v1::FinishReason finish = engine::v1::FINISH_REASON_UNSPECIFIED) {
    engine::v1::EngineMessage m;
    m.mutable_tokens()->set_request_id(id);
    m.mutable_tokens()->mutable_token_ids()->Add(tokens.begin(), tokens.end());
    m.mutable_tokens()->set_finish_reason(finish);
    ASSERT_TRUE(engine.Send(m));
  }

  v1::GenerateRequest Request(const std::string& text, int max_tokens) {
    v1::GenerateRequest r;
    r.set_text(text);
    r.set_max_tokens(max_tokens);
    r.mutable_sampling()->set_temperature(0.7f);
    r.mutable_sampling()->set_seed(11);
    return r;
  }

  std::unique_ptr<CoordinatorServer> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::shared_ptr<grpc::Channel> engine_channel_;  // the engine listener, with the engine token
  std::unique_ptr<v1::Inference::Stub> stub_;
};

TEST_F(SchedulerTest, StreamsTheEnginesTokensAsTextWithUsageAndTimings) {
  auto tokenizer = Tokenizer::LoadFromDir(kModelDir);
  ASSERT_TRUE(tokenizer.ok());
  std::unique_ptr<FakeEngine> connected = Connect();
  FakeEngine& engine = *connected;
  auto done = Generate(Request("Hello, world", 5));
  const engine::v1::CoordinatorMessage admit = Next(engine);
  ASSERT_TRUE(admit.has_admit());
  const std::vector<int> prompt = tokenizer->Encode("Hello, world");
  EXPECT_THAT(admit.admit().prompt_token_ids(), ElementsAreArray(prompt));
  EXPECT_EQ(admit.admit().max_tokens(), 5);
  EXPECT_FLOAT_EQ(admit.admit().sampling().temperature(), 0.7f);
  EXPECT_EQ(admit.admit().sampling().seed(), 11u);
  EXPECT_TRUE(admit.admit().resume_tokens().empty());

  // Token ids of a known text, sent in two events; the second ends the request.
  const std::vector<int> ids = tokenizer->Encode(" the model speaks");
  std::vector<int32_t> body(ids.begin() + 1, ids.end());  // without BOS
  ASSERT_GE(body.size(), 3u);
  const std::string& id = admit.admit().request_id();
  SendTokens(engine, id, {body.begin(), body.begin() + 2});
  SendTokens(engine, id, {body.begin() + 2, body.end()}, engine::v1::FINISH_REASON_LENGTH);
  const Streamed out = done.get();
  ASSERT_TRUE(out.status.ok()) << out.status.error_message();
  EXPECT_EQ(out.tokens, body);
  EXPECT_EQ(out.text, tokenizer->Decode(std::vector<int>(body.begin(), body.end()), true));
  EXPECT_EQ(out.last.finish_reason(), v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(out.last.usage().prompt_tokens(), static_cast<int>(prompt.size()));
  EXPECT_EQ(out.last.usage().completion_tokens(), static_cast<int>(body.size()));
  EXPECT_GT(out.last.timings().time_to_first_token_ms(), 0);
  EXPECT_GE(out.last.timings().total_ms(), out.last.timings().time_to_first_token_ms());
  EXPECT_GE(out.last.timings().mean_time_per_output_token_ms(), 0);
  EXPECT_THAT(server_->metrics().Scrape(), HasSubstr("dsv4_requests_total{status=\"ok\"} 1"));
}

TEST_F(SchedulerTest, AdmitCarriesEveryFieldTheEngineNeeds) {
  std::unique_ptr<FakeEngine> engine = Connect();
  v1::GenerateRequest request;
  request.mutable_token_ids()->add_ids(1);
  request.mutable_token_ids()->add_ids(17);
  request.mutable_token_ids()->add_ids(42);
  request.set_max_tokens(9);
  request.mutable_sampling()->set_temperature(1.5f);
  request.mutable_sampling()->set_top_p(0.25f);
  request.mutable_sampling()->set_top_k(40);
  request.mutable_sampling()->set_seed(123456789012345ull);
  request.add_stop_token_ids(7);
  request.add_stop_token_ids(8);
  request.set_ignore_eos(true);
  request.add_stop("never");  // matched by the coordinator, not sent to engines
  request.set_request_id("client-id");
  auto done = Generate(request);
  const engine::v1::CoordinatorMessage admit = Next(*engine);
  ASSERT_TRUE(admit.has_admit());
  const engine::v1::Admit& a = admit.admit();
  EXPECT_FALSE(a.request_id().empty());
  EXPECT_NE(a.request_id(), "client-id");  // engines see coordinator-assigned ids
  EXPECT_THAT(a.prompt_token_ids(), ElementsAre(1, 17, 42));
  EXPECT_EQ(a.max_tokens(), 9);
  EXPECT_FLOAT_EQ(a.sampling().temperature(), 1.5f);
  EXPECT_FLOAT_EQ(a.sampling().top_p(), 0.25f);
  EXPECT_EQ(a.sampling().top_k(), 40);
  EXPECT_EQ(a.sampling().seed(), 123456789012345ull);
  EXPECT_THAT(a.stop_token_ids(), ElementsAre(7, 8));
  EXPECT_TRUE(a.ignore_eos());
  EXPECT_TRUE(a.resume_tokens().empty());
  SendTokens(*engine, a.request_id(), {5}, engine::v1::FINISH_REASON_LENGTH);
  const Streamed out = done.get();
  ASSERT_TRUE(out.status.ok()) << out.status.error_message();
  EXPECT_EQ(out.last.usage().prompt_tokens(), 3);
}

TEST_F(SchedulerTest, StopStringEndsTheTextBeforeItAndCancelsTheEngineSide) {
  auto tokenizer = Tokenizer::LoadFromDir(kModelDir);
  ASSERT_TRUE(tokenizer.ok());
  std::unique_ptr<FakeEngine> connected = Connect();
  FakeEngine& engine = *connected;
  v1::GenerateRequest request = Request("Hi", 50);
  request.add_stop("speaks");
  auto done = Generate(request);
  const engine::v1::CoordinatorMessage admit = Next(engine);
  ASSERT_TRUE(admit.has_admit());
  const std::vector<int> ids = tokenizer->Encode(" the model speaks loudly");
  SendTokens(engine, admit.admit().request_id(), {ids.begin() + 1, ids.end()});
  const engine::v1::CoordinatorMessage cancel = Next(engine);
  ASSERT_TRUE(cancel.has_cancel());
  EXPECT_EQ(cancel.cancel().request_id(), admit.admit().request_id());
  const Streamed out = done.get();
  ASSERT_TRUE(out.status.ok());
  EXPECT_EQ(out.text, " the model ");
  EXPECT_EQ(out.last.finish_reason(), v1::FINISH_REASON_STOP);
  // The engine confirms; the slot is free again.
  SendTokens(engine, admit.admit().request_id(), {}, engine::v1::FINISH_REASON_CANCELLED);
  for (int i = 0; i < 200 && server_->scheduler().running() > 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(server_->scheduler().running(), 0);
}

TEST_F(SchedulerTest, AnEngineLostMidStreamIsReplayedWithResumeTokens) {
  std::unique_ptr<FakeEngine> first = Connect();
  auto done = Generate(Request("Hello", 6));
  const engine::v1::CoordinatorMessage admit = Next(*first);
  ASSERT_TRUE(admit.has_admit());
  SendTokens(*first, admit.admit().request_id(), {40, 41});
  first.reset();  // the stream breaks after the tokens (one stream, in order): a crash
  for (int i = 0; i < 500 && server_->registry().size() > 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }

  std::unique_ptr<FakeEngine> connected = Connect();
  FakeEngine& second = *connected;
  const engine::v1::CoordinatorMessage replay = Next(second);
  ASSERT_TRUE(replay.has_admit());
  EXPECT_EQ(replay.admit().request_id(), admit.admit().request_id());
  EXPECT_THAT(replay.admit().prompt_token_ids(),
              ElementsAreArray(admit.admit().prompt_token_ids()));
  EXPECT_THAT(replay.admit().resume_tokens(), ElementsAre(40, 41));
  SendTokens(second, replay.admit().request_id(), {42, 43, 44, 45},
             engine::v1::FINISH_REASON_LENGTH);
  const Streamed out = done.get();
  ASSERT_TRUE(out.status.ok()) << out.status.error_message();
  EXPECT_THAT(out.tokens, ElementsAre(40, 41, 42, 43, 44, 45));  // none lost, none repeated
  EXPECT_EQ(out.last.usage().completion_tokens(), 6);
}

TEST_F(SchedulerTest, ARetriedRequestIdStreamsTheSameRequest) {
  std::unique_ptr<FakeEngine> connected = Connect();
  FakeEngine& engine = *connected;
  v1::GenerateRequest request = Request("Hello", 3);
  request.set_request_id("client-42");
  auto first = Generate(request);
  const engine::v1::CoordinatorMessage admit = Next(engine);
  ASSERT_TRUE(admit.has_admit());
  SendTokens(engine, admit.admit().request_id(), {7});
  auto retry = Generate(request);  // same id while running: attached, not admitted again
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  SendTokens(engine, admit.admit().request_id(), {8, 9}, engine::v1::FINISH_REASON_LENGTH);
  const Streamed a = first.get(), b = retry.get();
  ASSERT_TRUE(a.status.ok() && b.status.ok());
  EXPECT_THAT(a.tokens, ElementsAre(7, 8, 9));
  EXPECT_EQ(b.tokens, a.tokens);
  const Streamed c = Generate(request).get();  // after it finished: the same record
  EXPECT_EQ(c.tokens, a.tokens);
  EXPECT_EQ(c.last.finish_reason(), v1::FINISH_REASON_LENGTH);

  // Only one Admit reached the engine: the next message is the next request's.
  v1::GenerateRequest other = Request("Bye", 1);
  auto next = Generate(other);
  const engine::v1::CoordinatorMessage second = Next(engine);
  ASSERT_TRUE(second.has_admit());
  EXPECT_NE(second.admit().request_id(), admit.admit().request_id());
  SendTokens(engine, second.admit().request_id(), {5}, engine::v1::FINISH_REASON_LENGTH);
  EXPECT_TRUE(next.get().status.ok());
}

TEST_F(SchedulerTest, ClientCancellationCancelsTheEngineSide) {
  std::unique_ptr<FakeEngine> connected = Connect();
  FakeEngine& engine = *connected;
  auto context = std::make_shared<grpc::ClientContext>();
  auto done = Generate(Request("Hello", 100), context);
  const engine::v1::CoordinatorMessage admit = Next(engine);
  ASSERT_TRUE(admit.has_admit());
  SendTokens(engine, admit.admit().request_id(), {3});
  context->TryCancel();
  const engine::v1::CoordinatorMessage cancel = Next(engine);
  ASSERT_TRUE(cancel.has_cancel());
  EXPECT_EQ(cancel.cancel().request_id(), admit.admit().request_id());
  EXPECT_EQ(done.get().status.error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_EQ(server_->scheduler().running(), 1);  // until the engine confirms
  SendTokens(engine, admit.admit().request_id(), {}, engine::v1::FINISH_REASON_CANCELLED);
  for (int i = 0; i < 200 && server_->scheduler().running() > 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(server_->scheduler().running(), 0);
  EXPECT_THAT(server_->metrics().Scrape(),
              HasSubstr("dsv4_requests_total{status=\"cancelled\"} 1"));
}

TEST_F(SchedulerTest, APassedDeadlineCancelsTheEngineSide) {
  std::unique_ptr<FakeEngine> connected = Connect();
  FakeEngine& engine = *connected;
  auto context = std::make_shared<grpc::ClientContext>();
  v1::GenerateRequest request = Request("Hello", 100);
  auto done = std::async(std::launch::async, [&] {
    context->set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(300));
    auto reader = stub_->Generate(context.get(), request);
    v1::GenerateResponse response;
    while (reader->Read(&response)) {
    }
    return reader->Finish();
  });
  const engine::v1::CoordinatorMessage admit = Next(engine);
  ASSERT_TRUE(admit.has_admit());
  const engine::v1::CoordinatorMessage cancel = Next(engine);  // no tokens ever came
  ASSERT_TRUE(cancel.has_cancel());
  EXPECT_EQ(cancel.cancel().request_id(), admit.admit().request_id());
  EXPECT_EQ(done.get().error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
}

TEST_F(SchedulerTest, RequestsBeyondAnEnginesMaxRunningWaitAndAFullQueueRefuses) {
  TearDown();
  Start(/*max_queue=*/1);
  std::unique_ptr<FakeEngine> connected = Connect(/*max_running=*/1);
  FakeEngine& engine = *connected;
  auto running = Generate(Request("one", 1));
  const engine::v1::CoordinatorMessage admit = Next(engine);
  ASSERT_TRUE(admit.has_admit());
  auto queued = Generate(Request("two", 1));
  for (int i = 0; i < 200 && server_->scheduler().queue_depth() < 1; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_EQ(server_->scheduler().queue_depth(), 1);
  const Streamed refused = Generate(Request("three", 1)).get();
  EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(refused.status.error_message(), HasSubstr("coordinator.max_queue = 1"));

  SendTokens(engine, admit.admit().request_id(), {5}, engine::v1::FINISH_REASON_LENGTH);
  EXPECT_TRUE(running.get().status.ok());
  const engine::v1::CoordinatorMessage second = Next(engine);  // the queued one, now admitted
  ASSERT_TRUE(second.has_admit());
  SendTokens(engine, second.admit().request_id(), {6}, engine::v1::FINISH_REASON_LENGTH);
  EXPECT_THAT(queued.get().tokens, ElementsAre(6));
}

TEST_F(SchedulerTest, EnginesFailedForGoodEndRequestsWithTheReason) {
  std::unique_ptr<FakeEngine> connected = Connect();
  FakeEngine& engine = *connected;
  auto done = Generate(Request("Hello", 10));
  ASSERT_TRUE(Next(engine).has_admit());
  server_->scheduler().SetUnavailable(absl::UnavailableError("engine-0 failed 4 times"));
  const Streamed out = done.get();
  EXPECT_EQ(out.status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_THAT(out.status.error_message(), HasSubstr("engine-0 failed 4 times"));
  EXPECT_EQ(Generate(Request("again", 1)).get().status.error_code(), grpc::StatusCode::UNAVAILABLE);
}

TEST_F(SchedulerTest, EngineErrorsReachTheClient) {
  std::unique_ptr<FakeEngine> connected = Connect();
  FakeEngine& engine = *connected;
  auto done = Generate(Request("Hello", 10));
  const engine::v1::CoordinatorMessage admit = Next(engine);
  engine::v1::EngineMessage m;
  m.mutable_tokens()->set_request_id(admit.admit().request_id());
  m.mutable_tokens()->set_finish_reason(engine::v1::FINISH_REASON_ERROR);
  m.mutable_tokens()->set_error("prompt too long for this engine");
  ASSERT_TRUE(engine.Send(m));
  const Streamed out = done.get();
  EXPECT_EQ(out.status.error_code(), grpc::StatusCode::INTERNAL);
  EXPECT_THAT(out.status.error_message(), HasSubstr("prompt too long for this engine"));
}

}  // namespace
}  // namespace dsv4::coordinator
