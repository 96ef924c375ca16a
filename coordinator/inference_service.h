// The public dsv4.v1.Inference service and the dsv4.engine.v1.EngineControl service that
// engine leaders connect to.
//
// Inference contract (phase 1): Tokenize and ListModels answer from the checkpoint's
// tokenizer and config.json; GetClusterStatus reports the connected engines; Generate
// validates every field (INVALID_ARGUMENT naming the field and range) and then answers
// UNAVAILABLE "no engine connected" when no engine is registered. Routing admitted requests
// to engines (scheduler, continuous batching, replay) is the next step: with an engine
// connected Generate answers UNIMPLEMENTED saying so.
//
// EngineControl contract: see proto/engine.proto. A connection is registered after a valid
// Hello (model name and vocabulary must match the coordinator's) and removed when the
// stream ends, whichever side ends it: the engine, a Drained message, a protocol error, or
// the coordinator's watchdog after 3 missed heartbeats (CoordinatorServer).
#ifndef DSV4_COORDINATOR_INFERENCE_SERVICE_H_
#define DSV4_COORDINATOR_INFERENCE_SERVICE_H_

#include <memory>
#include <string>

#include "coordinator/engine_registry.h"
#include "coordinator/request_validation.h"
#include "core/model_config.h"
#include "core/tokenizer.h"
#include "grpcpp/grpcpp.h"
#include "proto/engine.grpc.pb.h"
#include "proto/inference.grpc.pb.h"
#include "spdlog/logger.h"

namespace dsv4::coordinator {

class InferenceService final : public v1::Inference::Service {
 public:
  // The tokenizer, config and registry must outlive the service.
  InferenceService(const Tokenizer& tokenizer, const ModelConfig& config,
                   const RequestLimits& limits, const EngineRegistry& registry,
                   std::shared_ptr<spdlog::logger> logger);

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
  std::shared_ptr<spdlog::logger> logger_;
};

class EngineControlService final : public engine::v1::EngineControl::Service {
 public:
  // `model` is the served model name an engine's Hello must match; the registry must
  // outlive the service.
  EngineControlService(std::string model, int vocab_size, int heartbeat_interval_ms,
                       EngineRegistry& registry, std::shared_ptr<spdlog::logger> logger);

  grpc::Status Connect(grpc::ServerContext* context,
                       grpc::ServerReaderWriter<engine::v1::CoordinatorMessage,
                                                engine::v1::EngineMessage>* stream) override;

 private:
  absl::Status CheckHello(const engine::v1::Hello& hello) const;

  const std::string model_;
  const int vocab_size_;
  const int heartbeat_interval_ms_;
  EngineRegistry& registry_;
  std::shared_ptr<spdlog::logger> logger_;
};

// absl::Status → grpc::Status, keeping the code and message.
grpc::Status ToGrpc(const absl::Status& status);

}  // namespace dsv4::coordinator

#endif  // DSV4_COORDINATOR_INFERENCE_SERVICE_H_
