// A running coordinator: the public Inference service with standard gRPC health checking
// (grpc.health.v1, SERVING once started) and server reflection on one listening address;
// the EngineControl service on its own (engine_listen; it needs the engine token, never a
// client's); the Admin service on its own address; Prometheus metrics on a fourth. In launch mode
// it starts the engine itself (mpirun) and restarts it when it fails; in attach mode engines
// started by an operator connect to it.
#ifndef DSV4_COORDINATOR_COORDINATOR_SERVER_H_
#define DSV4_COORDINATOR_COORDINATOR_SERVER_H_

#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "coordinator/admin_service.h"
#include "coordinator/engine_registry.h"
#include "coordinator/engine_supervisor.h"
#include "coordinator/inference_service.h"
#include "coordinator/metrics.h"
#include "coordinator/scheduler.h"
#include "core/model_config.h"
#include "core/tokenizer.h"
#include "grpcpp/grpcpp.h"

namespace dsv4::coordinator {

// Launch mode: the engines the coordinator starts and supervises.
struct EngineLaunch {
  std::string engine_binary;  // dsv4-engine
  std::string cluster_yaml;
  int ranks = 2;
  std::vector<std::string> hosts;        // one per rank (the YAML's topology)
  std::vector<std::string> mpirun_args;  // after "mpirun", e.g. --oversubscribe
  // Engine units "engine-0", "engine-1", …, each an MPI world of `ranks` ranks on `hosts`.
  int engines = 1;
  int max_restarts = 3;  // per engine
  // The address engines dial; empty = the bound engine address, with a wildcard host
  // replaced by 127.0.0.1.
  std::string advertise;
};

struct CoordinatorOptions {
  std::string listen = "127.0.0.1:50051";     // host:port (port 0 picks a free one) or unix:path
  std::string admin_listen;                   // the Admin service's own address; empty = none
  std::string engine_listen = "127.0.0.1:0";  // EngineControl's own address (engines only)
  // The engine credential; created (0600) when absent. Empty: a fresh token for this run,
  // which only engines the coordinator launches learn (attach-mode engines need the file).
  std::string engine_token_file;
  // An engine's claimed max_running is capped at this (the cluster YAML's attention ranks ×
  // max_seqs_per_rank); 0 = the launch YAML's, or 4096 without one.
  int max_running_per_engine = 0;
  std::string metrics_listen;  // Prometheus /metrics; empty = none
  std::string checkpoint_dir;  // config.json and tokenizer.json
  int max_context = 4096;      // the engines' max_seq_len (cluster YAML)
  int max_queue = 256;
  // Engines heartbeat this often; one silent for 3 intervals is disconnected (and, when
  // launched, killed and restarted).
  int heartbeat_interval_ms = 1000;
  std::string tls_cert, tls_key;  // PEM files; both empty = plaintext
  std::string auth_token_file;    // deprecated: one API key named "default"
  std::string api_keys_file;      // "<name> <token>" a line; empty (and no
                                  // auth_token_file) = no authentication
  // The admin credential, required with admin_listen; created (0600, random token) when
  // the file does not exist.
  std::string admin_token_file;
  std::optional<EngineLaunch> launch;  // absent = attach mode
};

class CoordinatorServer {
 public:
  // Loads the model config and tokenizer and starts serving; NOT_FOUND / INVALID_ARGUMENT
  // for a bad checkpoint, UNAVAILABLE when the address cannot be bound.
  static absl::StatusOr<std::unique_ptr<CoordinatorServer>> Start(
      const CoordinatorOptions& options);
  ~CoordinatorServer();

  int port() const { return port_; }
  std::string address() const { return address_; }                // host:bound port
  std::string admin_address() const { return admin_address_; }    // empty without admin
  std::string engine_address() const { return engine_address_; }  // EngineControl's
  // The engine token (the engine credential) this coordinator requires on engine_address.
  const std::string& engine_token() const { return engine_token_; }
  const std::string& model_name() const { return limits_.model; }
  const EngineRegistry& registry() const { return registry_; }
  Scheduler& scheduler() { return *scheduler_; }
  Metrics& metrics() { return *metrics_; }
  std::string metrics_address() const { return metrics_->address(); }
  void Wait() { server_->Wait(); }
  // Stops a launched engine (Shutdown message, then signals), stops accepting calls and
  // cancels those in flight, engine streams included.
  void Shutdown();

 private:
  CoordinatorServer(ModelConfig config, Tokenizer tokenizer, std::string checkpoint_dir)
      : config_(std::move(config)),
        tokenizer_(std::move(tokenizer)),
        checkpoint_dir_(std::move(checkpoint_dir)) {}
  absl::Status LaunchEngines(const EngineLaunch& launch);
  void FillLaunchedStatus(v1::ClusterStatus* status) const;

  ModelConfig config_;
  Tokenizer tokenizer_;
  std::string checkpoint_dir_;
  RequestLimits limits_;
  EngineRegistry registry_;
  std::unique_ptr<Metrics> metrics_;
  std::unique_ptr<Scheduler> scheduler_;
  std::vector<std::unique_ptr<EngineSupervisor>> supervisors_;
  absl::Mutex launch_mu_;
  int failed_engines_ ABSL_GUARDED_BY(launch_mu_) = 0;
  std::unique_ptr<InferenceService> inference_;
  std::unique_ptr<EngineControlService> engine_control_;
  std::unique_ptr<AdminService> admin_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<grpc::Server> admin_server_;
  std::unique_ptr<grpc::Server> engine_server_;
  std::string engine_address_;
  std::string engine_token_;
  int engine_port_ = 0;
  absl::Notification stop_;
  std::thread watchdog_;  // disconnects silent engines
  int port_ = 0;
  std::string address_;
  std::string admin_address_;
};

// The coordinator's logger ("coordinator"), registered with spdlog on first use.
std::shared_ptr<spdlog::logger> Logger();

}  // namespace dsv4::coordinator

#endif  // DSV4_COORDINATOR_COORDINATOR_SERVER_H_
