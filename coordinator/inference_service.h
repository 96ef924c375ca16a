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
// EngineControl contract: see proto/engine.proto. A connection is registered after a valid
// Hello (model name and vocabulary must match the coordinator's) and removed when the
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

class EngineControlService final : public engine::v1::EngineControl::Service {
 public:
  // `model` is the served model name an engine's Hello must match; the registry, scheduler
  // and metrics (may be null) must outlive the service.
  EngineControlService(std::string model, int vocab_size, int heartbeat_interval_ms,
                       EngineRegistry& registry, Scheduler& scheduler, Metrics* metrics,
                       std::string bearer_token, std::shared_ptr<spdlog::logger> logger);

  grpc::Status Connect(grpc::ServerContext* context,
                       grpc::ServerReaderWriter<engine::v1::CoordinatorMessage,
                                                engine::v1::EngineMessage>* stream) override;

 private:
  absl::Status CheckHello(const engine::v1::Hello& hello) const;
  void RecordHeartbeat(const std::string& engine_id, const engine::v1::Heartbeat& heartbeat);

  const std::string model_;
  const int vocab_size_;
  const int heartbeat_interval_ms_;
  EngineRegistry& registry_;
  Scheduler& scheduler_;
  Metrics* const metrics_;
  const std::string bearer_token_;
  std::shared_ptr<spdlog::logger> logger_;
};

}  // namespace dsv4::coordinator

#endif  // DSV4_COORDINATOR_INFERENCE_SERVICE_H_
