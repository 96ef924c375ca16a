// The engine leader's end of EngineControl.Connect (proto/engine.proto): dials the
// coordinator, says Hello, and then carries TokenEvents and Heartbeats out and the
// coordinator's Admit / Cancel / Drain / Shutdown in. A reader thread queues incoming
// messages so the step loop never blocks on the network. Thread-safe.
#ifndef DSV4_ENGINE_CONTROL_CLIENT_H_
#define DSV4_ENGINE_CONTROL_CLIENT_H_

#include <deque>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "proto/engine.grpc.pb.h"

namespace dsv4 {

// The engine credential's out-of-band channels from a coordinator to the engines it
// launches: environment variables mpirun passes on to the ranks (never the command line).
inline constexpr char kEngineTokenEnv[] = "DSV4_ENGINE_TOKEN";
inline constexpr char kEngineLaunchNonceEnv[] = "DSV4_ENGINE_LAUNCH_NONCE";

// The digest an engine reports as Hello.model.config_sha256 and the coordinator expects: hex
// SHA-256 over the hex SHA-256s of `checkpoint_dir`'s config.json and tokenizer.json (an
// absent tokenizer.json hashes as empty). NOT_FOUND when config.json cannot be read.
absl::StatusOr<std::string> CheckpointConfigSha256(const std::string& checkpoint_dir);

class ControlClient {
 public:
  // Dials `address` until it answers or `timeout` passes (the coordinator may still be
  // starting), sends `hello` and waits for the Welcome. `bearer_token` may be empty.
  // UNAVAILABLE when nothing answers, the coordinator's status when it refuses the Hello.
  static absl::StatusOr<std::unique_ptr<ControlClient>> Connect(
      const std::string& address, std::shared_ptr<grpc::ChannelCredentials> credentials,
      const std::string& bearer_token, const engine::v1::Hello& hello, absl::Duration timeout);
  ~ControlClient();

  int heartbeat_interval_ms() const { return heartbeat_interval_ms_; }

  // The messages received so far, waiting up to `timeout` for the first one. Once the
  // stream has ended and everything before was taken: the status the stream ended with
  // (UNAVAILABLE when it ended cleanly: the coordinator left).
  absl::StatusOr<std::vector<engine::v1::CoordinatorMessage>> Receive(absl::Duration timeout);
  absl::Status Send(const engine::v1::EngineMessage& message);
  // Half-closes the stream (after a Drained) and waits for the coordinator to end it.
  void Close();

 private:
  ControlClient() = default;
  void ReadLoop();

  std::unique_ptr<engine::v1::EngineControl::Stub> stub_;
  grpc::ClientContext context_;
  std::unique_ptr<
      grpc::ClientReaderWriter<engine::v1::EngineMessage, engine::v1::CoordinatorMessage>>
      stream_;
  int heartbeat_interval_ms_ = 1000;
  std::thread reader_;

  absl::Mutex write_mu_;
  bool writes_done_ ABSL_GUARDED_BY(write_mu_) = false;
  absl::Mutex mu_;
  std::deque<engine::v1::CoordinatorMessage> inbox_ ABSL_GUARDED_BY(mu_);
  bool ended_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status end_status_ ABSL_GUARDED_BY(mu_);
};

}  // namespace dsv4

#endif  // DSV4_ENGINE_CONTROL_CLIENT_H_
