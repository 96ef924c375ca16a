// The public dsv4.v1.Inference service and the dsv4.engine.v1.EngineControl service that
// engine leaders connect to.
//
// Inference contract: Tokenize and ListModels answer from the checkpoint's tokenizer and
// config.json; GetClusterStatus reports the engines, queue and load; Generate validates
// every field (INVALID_ARGUMENT naming the field and range), tokenizes a text prompt, hands
// the request to the Scheduler (RESOURCE_EXHAUSTED when its queue is full, UNAVAILABLE
// when no engine can run it) and streams the tokens and text as the engines produce them,
// then a final message with the finish reason, usage and timings. A client that leaves, or
// whose deadline passes, cancels its request. With API keys configured every method needs
// "authorization: Bearer <token>" of one of them (UNAUTHENTICATED otherwise). A request_id
// belongs to the key that sent it: the same key retrying the same request (same body, as a
// SHA-256 digest of the request without request_id) re-attaches to its stream, the same key
// with another body gets ALREADY_EXISTS, another key gets a request of its own.
//
// EngineControl contract: see proto/engine.proto. It is served on its own listener and needs
// the engine token. A connection is registered after a valid Hello (model name, vocabulary,
// layer and expert counts and config_sha256 must match the coordinator's; a launched id
// needs its launch nonce; claimed capacity is capped) and removed when the
// stream ends, whichever side ends it: the engine, a Drained message, a protocol error, or
// the coordinator's watchdog after 3 missed heartbeats (CoordinatorServer). When it ends,
// the scheduler takes back every request the engine held and replays it.
#ifndef DSV4_COORDINATOR_INFERENCE_SERVICE_H_
#define DSV4_COORDINATOR_INFERENCE_SERVICE_H_

#include <functional>
#include <memory>
#include <string>

#include "coordinator/engine_registry.h"
#include "coordinator/metrics.h"
#include "coordinator/request_validation.h"
#include "coordinator/scheduler.h"
#include "core/model_config.h"
#include "core/tokenizer.h"
#include "grpcpp/grpcpp.h"
#include "proto/engine.grpc.pb.h"
#include "proto/inference.grpc.pb.h"
#include "rpc/security.h"
#include "spdlog/logger.h"

namespace dsv4::coordinator {

class InferenceService final : public v1::Inference::Service {
 public:
  // Status of the engines the coordinator launched but that are not connected.
  using LaunchedStatus = std::function<void(v1::ClusterStatus*)>;

  // Everything passed by reference must outlive the service; `metrics` may be null and
  // `keys` empty (no authentication).
  InferenceService(const Tokenizer& tokenizer, const ModelConfig& config,
                   const RequestLimits& limits, const EngineRegistry& registry,
                   Scheduler& scheduler, Metrics* metrics, rpc::ApiKeys keys,
                   LaunchedStatus launched, std::shared_ptr<spdlog::logger> logger);

  grpc::Status Generate(grpc::ServerContext* context, const v1::GenerateRequest* request,
                        grpc::ServerWriter<v1::GenerateResponse>* writer) override;
  grpc::Status Tokenize(grpc::ServerContext* context, const v1::TokenizeRequest* request,
                        v1::TokenizeResponse* response) override;
  grpc::Status ListModels(grpc::ServerContext* context, const v1::ListModelsRequest* request,
                          v1::ListModelsResponse* response) override;
  grpc::Status GetClusterStatus(grpc::ServerContext* context,
                                const v1::ClusterStatusRequest* request,
                                v1::ClusterStatus* response) override;

 private:
  const Tokenizer& tokenizer_;
  const ModelConfig& config_;
  const RequestLimits limits_;
  const EngineRegistry& registry_;
  Scheduler& scheduler_;
  Metrics* const metrics_;
  const rpc::ApiKeys keys_;
  const LaunchedStatus launched_;
  std::shared_ptr<spdlog::logger> logger_;
};

// What an engine's Hello and Heartbeats are checked against: the coordinator's own model
// and limits. Errors say what does not match, never the expected value.
struct EngineExpectations {
  std::string model;  // the served model name
  int vocab_size = 0;
  int num_layers = 0;  // heartbeat layer ids are in [0, num_layers)
  int num_routed_experts = 0;
  std::string config_sha256;  // CheckpointConfigSha256 of the coordinator's checkpoint
  int max_running = 4096;     // an engine's claimed max_running is capped at this
  int max_ranks = 65536;      // Hello.ranks bound
};

class EngineControlService final : public engine::v1::EngineControl::Service {
 public:
  // The registry, scheduler and metrics (may be null) must outlive the service. Every
  // stream needs "authorization: Bearer <engine_token>" (the engine credential, never a
  // client's; must be non-empty).
  EngineControlService(EngineExpectations expected, int heartbeat_interval_ms,
                       EngineRegistry& registry, Scheduler& scheduler, Metrics* metrics,
                       std::string engine_token, std::shared_ptr<spdlog::logger> logger);

  grpc::Status Connect(grpc::ServerContext* context,
                       grpc::ServerReaderWriter<engine::v1::CoordinatorMessage,
                                                engine::v1::EngineMessage>* stream) override;

 private:
  absl::Status CheckHello(const engine::v1::Hello& hello) const;
  absl::Status CheckOccupancy(const engine::v1::Occupancy& occupancy,
                              absl::string_view field) const;
  // `num_ranks`: the ranks the engine's Hello listed.
  absl::Status CheckHeartbeat(const engine::v1::Heartbeat& heartbeat, int num_ranks) const;
  void RecordOccupancy(const std::string& engine_id, const engine::v1::Occupancy& occupancy);
  void RecordHeartbeat(const std::string& engine_id, const engine::v1::Heartbeat& heartbeat);

  const EngineExpectations expected_;
  const int heartbeat_interval_ms_;
  EngineRegistry& registry_;
  Scheduler& scheduler_;
  Metrics* const metrics_;
  const std::string engine_token_;
  std::shared_ptr<spdlog::logger> logger_;
};

}  // namespace dsv4::coordinator

#endif  // DSV4_COORDINATOR_INFERENCE_SERVICE_H_
