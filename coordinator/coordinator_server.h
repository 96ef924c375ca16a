// A running coordinator: the public Inference service and the EngineControl service on one
// listening address, with standard gRPC health checking (grpc.health.v1, SERVING once
// started) and server reflection; the Admin service on its own address.
#ifndef DSV4_COORDINATOR_COORDINATOR_SERVER_H_
#define DSV4_COORDINATOR_COORDINATOR_SERVER_H_

#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/synchronization/notification.h"
#include "coordinator/admin_service.h"
#include "coordinator/engine_registry.h"
#include "coordinator/inference_service.h"
#include "core/model_config.h"
#include "core/tokenizer.h"
#include "grpcpp/grpcpp.h"

namespace dsv4::coordinator {

struct CoordinatorOptions {
  std::string listen = "127.0.0.1:50051";  // host:port (port 0 picks a free one) or unix:path
  std::string admin_listen;                // the Admin service's own address; empty = none
  std::string checkpoint_dir;              // config.json and tokenizer.json
  int max_context = 4096;                  // the engines' max_seq_len (cluster YAML)
  // Engines heartbeat this often; one silent for 3 intervals is disconnected.
  int heartbeat_interval_ms = 1000;
};

class CoordinatorServer {
 public:
  // Loads the model config and tokenizer and starts serving; NOT_FOUND / INVALID_ARGUMENT
  // for a bad checkpoint, UNAVAILABLE when the address cannot be bound.
  static absl::StatusOr<std::unique_ptr<CoordinatorServer>> Start(
      const CoordinatorOptions& options);
  ~CoordinatorServer();

  int port() const { return port_; }
  std::string address() const { return address_; }              // host:bound port
  std::string admin_address() const { return admin_address_; }  // empty without admin
  const std::string& model_name() const { return limits_.model; }
  const EngineRegistry& registry() const { return registry_; }
  void Wait() { server_->Wait(); }
  // Stops accepting calls and cancels those in flight, engine streams included.
  void Shutdown();

 private:
  CoordinatorServer(ModelConfig config, Tokenizer tokenizer)
      : config_(std::move(config)), tokenizer_(std::move(tokenizer)) {}

  ModelConfig config_;
  Tokenizer tokenizer_;
  RequestLimits limits_;
  EngineRegistry registry_;
  std::unique_ptr<InferenceService> inference_;
  std::unique_ptr<EngineControlService> engine_control_;
  std::unique_ptr<AdminService> admin_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<grpc::Server> admin_server_;
  absl::Notification stop_;
  std::thread watchdog_;  // disconnects silent engines
  int port_ = 0;
  std::string address_;
  std::string admin_address_;
};

// The coordinator's logger ("coordinator"), registered with spdlog on first use.
std::shared_ptr<spdlog::logger> Logger();

// The served model's name: the checkpoint directory's last path component ("v4-mini").
std::string ModelNameFromDir(const std::string& checkpoint_dir);

}  // namespace dsv4::coordinator

#endif  // DSV4_COORDINATOR_COORDINATOR_SERVER_H_
