// Test helpers for the coordinator: a fake engine leader (a real gRPC client on the
// EngineControl stream, driven by the test) and the channel it dials with the engine token, a
// streaming Generate call in the background, and RPC deadlines.
#ifndef DSV4_TESTS_COORDINATOR_TEST_UTIL_H_
#define DSV4_TESTS_COORDINATOR_TEST_UTIL_H_

#include <atomic>
#include <chrono>
#include <future>
#include <memory>
#include <string>
#include <vector>

#include "core/model_config.h"
#include "engine/control_client.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/support/client_interceptor.h"
#include "proto/engine.grpc.pb.h"
#include "proto/inference.grpc.pb.h"

namespace dsv4::coordinator {

inline std::chrono::system_clock::time_point Deadline(int seconds = 10) {
  return std::chrono::system_clock::now() + std::chrono::seconds(seconds);
}

// Adds "authorization: Bearer <token>" to every call of a channel (EngineChannel).
class BearerInterceptor final : public grpc::experimental::Interceptor {
 public:
  explicit BearerInterceptor(std::string token) : token_(std::move(token)) {}
  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(
            grpc::experimental::InterceptionHookPoints::PRE_SEND_INITIAL_METADATA) &&
        !token_.empty()) {
      methods->GetSendInitialMetadata()->insert({"authorization", "Bearer " + token_});
    }
    methods->Proceed();
  }

 private:
  const std::string token_;
};
class BearerInterceptorFactory final
    : public grpc::experimental::ClientInterceptorFactoryInterface {
 public:
  explicit BearerInterceptorFactory(std::string token) : token_(std::move(token)) {}
  grpc::experimental::Interceptor* CreateClientInterceptor(
      grpc::experimental::ClientRpcInfo* /*info*/) override {
    return new BearerInterceptor(token_);
  }

 private:
  const std::string token_;
};

// A plaintext channel to `address` whose calls carry `token` as a bearer token (none when
// empty): what a fake engine dials the engine listener with.
inline std::shared_ptr<grpc::Channel> EngineChannel(const std::string& address,
                                                    const std::string& token) {
  std::vector<std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface>> factories;
  factories.push_back(std::make_unique<BearerInterceptorFactory>(token));
  return grpc::experimental::CreateCustomChannelWithInterceptors(
      address, grpc::InsecureChannelCredentials(), grpc::ChannelArguments(), std::move(factories));
}

// A fake engine leader: a real gRPC client on the EngineControl stream. Its Hello (FakeHello)
// says `max_running` and, unless given, models/v4-mini's vocabulary, layer and expert counts
// and config digest.
class FakeEngine {
 public:
  FakeEngine(const std::shared_ptr<grpc::Channel>& channel, const std::string& id,
             const std::string& model = "v4-mini", int vocab = -1, int max_running = 8)
      : FakeEngine(channel, FakeHello(id, model, vocab, max_running)) {}
  FakeEngine(const std::shared_ptr<grpc::Channel>& channel, const engine::v1::Hello& h)
      : stub_(engine::v1::EngineControl::NewStub(channel)) {
    context_.set_deadline(Deadline(30));
    stream_ = stub_->Connect(&context_);
    engine::v1::EngineMessage hello;
    *hello.mutable_hello() = h;
    stream_->Write(hello);
  }
  static engine::v1::Hello FakeHello(const std::string& id, const std::string& model = "v4-mini",
                                     int vocab = -1, int max_running = 8) {
    const std::string dir = std::string(DSV4_SOURCE_DIR) + "/models/v4-mini";
    const ModelConfig config = *LoadModelConfigFromDir(dir);
    engine::v1::Hello h;
    h.set_engine_id(id);
    h.mutable_model()->set_name(model);
    h.mutable_model()->set_vocab_size(vocab >= 0 ? vocab : static_cast<int>(config.vocab_size));
    h.mutable_model()->set_num_layers(config.num_hidden_layers);
    h.mutable_model()->set_num_routed_experts(config.n_routed_experts);
    h.mutable_model()->set_config_sha256(*CheckpointConfigSha256(dir));
    h.set_max_running(max_running);
    h.set_max_seq_len(256);
    for (int r = 0; r < 2; ++r) {
      engine::v1::RankInfo* rank = h.add_ranks();
      rank->set_rank(r);
      rank->set_role(r == 0 ? engine::v1::ROLE_ATTENTION : engine::v1::ROLE_EXPERT);
      rank->set_position("sn0/node0/chip" + std::to_string(r));
      rank->set_resident_bytes(1000 * (r + 1));
      rank->set_released_bytes(950 * (r + 1));
    }
    return h;
  }
  static int VocabSize(const std::string& dir) {
    return static_cast<int>(LoadModelConfigFromDir(dir)->vocab_size);
  }

  bool Send(const engine::v1::EngineMessage& m) { return stream_->Write(m); }
  bool Receive(engine::v1::CoordinatorMessage* m) { return stream_->Read(m); }
  grpc::Status Close() {
    stream_->WritesDone();
    engine::v1::CoordinatorMessage m;
    while (stream_->Read(&m)) {
    }
    return stream_->Finish();
  }

 private:
  std::unique_ptr<engine::v1::EngineControl::Stub> stub_;
  grpc::ClientContext context_;
  std::unique_ptr<
      grpc::ClientReaderWriter<engine::v1::EngineMessage, engine::v1::CoordinatorMessage>>
      stream_;
};

// What one Generate call streamed.
struct Streamed {
  grpc::Status status;
  std::vector<int32_t> tokens;
  std::string text;
  int messages = 0;
  v1::GenerateResponse last;
};

// Runs Generate in the background (`context` lets the caller cancel it, and must outlive
// the call); `received`, when given, counts the tokens streamed so far.
inline std::future<Streamed> GenerateAsync(v1::Inference::Stub* stub, v1::GenerateRequest request,
                                           std::shared_ptr<grpc::ClientContext> context,
                                           std::atomic<int>* received = nullptr) {
  return std::async(std::launch::async, [stub, request, context, received] {
    Streamed out;
    auto reader = stub->Generate(context.get(), request);
    v1::GenerateResponse response;
    while (reader->Read(&response)) {
      out.tokens.insert(out.tokens.end(), response.token_ids().begin(), response.token_ids().end());
      out.text += response.text();
      out.messages += 1;
      if (received != nullptr) *received += response.token_ids_size();
      out.last = response;
    }
    out.status = reader->Finish();
    return out;
  });
}

}  // namespace dsv4::coordinator

#endif  // DSV4_TESTS_COORDINATOR_TEST_UTIL_H_
