// A scripted coordinator for engine-side tests: a real gRPC EngineControl server on a
// loopback port that welcomes one engine, records everything the engine sends and sends
// whatever the test pushes. It checks nothing itself; tests assert on what it recorded.
#ifndef DSV4_TESTS_FAKE_COORDINATOR_H_
#define DSV4_TESTS_FAKE_COORDINATOR_H_

#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "proto/engine.grpc.pb.h"

namespace dsv4::testing {

class FakeCoordinator final : public engine::v1::EngineControl::Service {
 public:
  explicit FakeCoordinator(int heartbeat_interval_ms) : interval_ms_(heartbeat_interval_ms) {
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    builder.RegisterService(this);
    server_ = builder.BuildAndStart();
  }
  ~FakeCoordinator() override { Stop(); }

  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }

  // Queues a message for the connected (or next) engine.
  void Push(const engine::v1::CoordinatorMessage& message) {
    absl::MutexLock lock(&mu_);
    outbox_.push_back(message);
  }
  // Ends the engine's stream with `status` (the coordinator going away).
  void EndStream(grpc::Status status) {
    absl::MutexLock lock(&mu_);
    end_ = std::move(status);
  }
  void Stop() {
    if (!server_) return;
    EndStream(grpc::Status(grpc::StatusCode::UNAVAILABLE, "fake coordinator stopped"));
    server_->Shutdown(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
    server_.reset();
  }

  // Everything received so far (Hello first).
  std::vector<engine::v1::EngineMessage> received() const {
    absl::MutexLock lock(&mu_);
    return received_;
  }
  // The last engine's "authorization" metadata (its engine token), empty without.
  std::string authorization() const {
    absl::MutexLock lock(&mu_);
    return authorization_;
  }
  // Waits until `done(received)` holds or `timeout` passes; returns whether it held.
  template <typename Predicate>
  bool WaitFor(Predicate done, absl::Duration timeout) const {
    absl::MutexLock lock(&mu_);
    auto ready = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return done(received_); };
    return mu_.AwaitWithTimeout(absl::Condition(&ready), timeout);
  }

  grpc::Status Connect(grpc::ServerContext* context,
                       grpc::ServerReaderWriter<engine::v1::CoordinatorMessage,
                                                engine::v1::EngineMessage>* stream) override {
    {
      absl::MutexLock lock(&mu_);
      auto it = context->client_metadata().find("authorization");
      if (it != context->client_metadata().end()) {
        authorization_.assign(it->second.data(), it->second.size());
      }
    }
    engine::v1::EngineMessage hello;
    if (!stream->Read(&hello)) return grpc::Status::CANCELLED;
    Record(hello);
    engine::v1::CoordinatorMessage welcome;
    welcome.mutable_welcome()->set_heartbeat_interval_ms(interval_ms_);
    stream->Write(welcome);
    std::thread reader([&] {
      engine::v1::EngineMessage message;
      while (stream->Read(&message)) Record(message);
      absl::MutexLock lock(&mu_);
      half_closed_ = true;
    });
    grpc::Status status = grpc::Status::OK;
    for (;;) {
      std::deque<engine::v1::CoordinatorMessage> out;
      {
        absl::MutexLock lock(&mu_);
        auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
          return !outbox_.empty() || end_.has_value() || half_closed_;
        };
        mu_.AwaitWithTimeout(absl::Condition(&ready), absl::Milliseconds(20));
        out.swap(outbox_);
        if (out.empty() && end_) status = *end_;
        if (out.empty() && (end_ || half_closed_)) break;
      }
      for (const engine::v1::CoordinatorMessage& m : out) stream->Write(m);
      if (context->IsCancelled()) break;
    }
    bool reader_done;
    {
      absl::MutexLock lock(&mu_);
      reader_done = half_closed_;
    }
    if (!reader_done) context->TryCancel();  // unblocks the reader: we end the stream
    reader.join();
    return status;
  }

 private:
  void Record(const engine::v1::EngineMessage& message) {
    absl::MutexLock lock(&mu_);
    received_.push_back(message);
  }

  const int interval_ms_;
  int port_ = 0;
  std::unique_ptr<grpc::Server> server_;
  mutable absl::Mutex mu_;
  std::deque<engine::v1::CoordinatorMessage> outbox_ ABSL_GUARDED_BY(mu_);
  std::vector<engine::v1::EngineMessage> received_ ABSL_GUARDED_BY(mu_);
  std::optional<grpc::Status> end_ ABSL_GUARDED_BY(mu_);
  bool half_closed_ ABSL_GUARDED_BY(mu_) = false;
  std::string authorization_ ABSL_GUARDED_BY(mu_);
};

}  // namespace dsv4::testing

#endif  // DSV4_TESTS_FAKE_COORDINATOR_H_
