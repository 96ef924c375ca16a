#include "coordinator/inference_service.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/checkpoint_layout.h"
#include "spdlog/spdlog.h"

namespace dsv4::coordinator {

grpc::Status ToGrpc(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

InferenceService::InferenceService(const Tokenizer& tokenizer, const ModelConfig& config,
                                   const RequestLimits& limits, const EngineRegistry& registry,
                                   std::shared_ptr<spdlog::logger> logger)
    : tokenizer_(tokenizer),
      config_(config),
      limits_(limits),
      registry_(registry),
      logger_(std::move(logger)) {}

grpc::Status InferenceService::Generate(grpc::ServerContext* /*context*/,
                                        const v1::GenerateRequest* request,
                                        grpc::ServerWriter<v1::GenerateResponse>* /*writer*/) {
  if (absl::Status s = ValidateGenerateRequest(*request, limits_); !s.ok()) return ToGrpc(s);
  if (request->has_text()) {
    const int prompt_tokens = static_cast<int>(tokenizer_.Encode(request->text()).size());
    if (absl::Status s = ValidatePromptLength(prompt_tokens, request->max_tokens(), limits_);
        !s.ok()) {
      return ToGrpc(s);
    }
  }
  if (registry_.size() == 0) {
    return grpc::Status(grpc::StatusCode::UNAVAILABLE,
                        "no engine connected: the coordinator has no serving engine to run the "
                        "request; start dsv4-engine against this coordinator and retry");
  }
  return grpc::Status(grpc::StatusCode::UNIMPLEMENTED,
                      "an engine is connected but this coordinator cannot route requests to "
                      "engines yet (scheduler not implemented)");
}

grpc::Status InferenceService::Tokenize(grpc::ServerContext* /*context*/,
                                        const v1::TokenizeRequest* request,
                                        v1::TokenizeResponse* response) {
  if (absl::Status s = ValidateTokenizeRequest(*request, limits_); !s.ok()) return ToGrpc(s);
  // The same encoding Generate uses for a text prompt (BOS first).
  const std::vector<int> ids = tokenizer_.Encode(request->text());
  response->mutable_token_ids()->Add(ids.begin(), ids.end());
  return grpc::Status::OK;
}

grpc::Status InferenceService::ListModels(grpc::ServerContext* /*context*/,
                                          const v1::ListModelsRequest* /*request*/,
                                          v1::ListModelsResponse* response) {
  const ParameterCount count = CountParameters(config_);
  v1::ModelInfo* model = response->add_models();
  model->set_name(limits_.model);
  model->set_parameters(count.total);
  model->set_active_parameters(count.active_per_token);
  model->set_max_context(limits_.max_context);
  return grpc::Status::OK;
}

grpc::Status InferenceService::GetClusterStatus(grpc::ServerContext* /*context*/,
                                                const v1::ClusterStatusRequest* /*request*/,
                                                v1::ClusterStatus* response) {
  registry_.FillStatus(response);
  return grpc::Status::OK;
}

EngineControlService::EngineControlService(std::string model, int vocab_size,
                                           int heartbeat_interval_ms, EngineRegistry& registry,
                                           std::shared_ptr<spdlog::logger> logger)
    : model_(std::move(model)),
      vocab_size_(vocab_size),
      heartbeat_interval_ms_(heartbeat_interval_ms),
      registry_(registry),
      logger_(std::move(logger)) {}

absl::Status EngineControlService::CheckHello(const engine::v1::Hello& hello) const {
  if (hello.engine_id().empty() || hello.engine_id().size() > 128) {
    return absl::InvalidArgumentError(
        absl::StrCat("hello.engine_id length must be in [1, 128], got ", hello.engine_id().size()));
  }
  if (hello.model().name() != model_) {
    return absl::InvalidArgumentError(absl::StrCat("hello.model.name must be \"", model_,
                                                   "\" (the coordinator's model), got \"",
                                                   hello.model().name(), "\""));
  }
  if (hello.model().vocab_size() != vocab_size_) {
    return absl::InvalidArgumentError(absl::StrCat("hello.model.vocab_size must be ", vocab_size_,
                                                   ", got ", hello.model().vocab_size()));
  }
  if (hello.ranks().empty()) {
    return absl::InvalidArgumentError("hello.ranks must list every rank of the engine");
  }
  return absl::OkStatus();
}

grpc::Status EngineControlService::Connect(
    grpc::ServerContext* context,
    grpc::ServerReaderWriter<engine::v1::CoordinatorMessage, engine::v1::EngineMessage>* stream) {
  engine::v1::EngineMessage message;
  if (!stream->Read(&message)) return grpc::Status::OK;  // the engine left before saying hello
  if (!message.has_hello()) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        "the first EngineMessage on a Connect stream must be a hello");
  }
  const engine::v1::Hello hello = message.hello();
  if (absl::Status s = CheckHello(hello); !s.ok()) return ToGrpc(s);
  auto connection = std::make_shared<EngineConnection>(context, stream);
  if (absl::Status s = registry_.Add(hello, connection); !s.ok()) return ToGrpc(s);
  const std::string& id = hello.engine_id();
  logger_->info("engine {} connected from {}: {} ranks", id, context->peer(), hello.ranks_size());

  grpc::Status result = grpc::Status::OK;
  engine::v1::CoordinatorMessage welcome;
  welcome.mutable_welcome()->set_heartbeat_interval_ms(heartbeat_interval_ms_);
  if (connection->Open(welcome).ok()) {
    while (stream->Read(&message)) {
      if (message.has_heartbeat()) {
        registry_.RecordHeartbeat(id, message.heartbeat());
      } else if (message.has_drained()) {
        break;
      } else if (message.has_tokens()) {
        // Nothing is admitted to engines yet, so every request id is unknown.
        result = grpc::Status(
            grpc::StatusCode::FAILED_PRECONDITION,
            absl::StrCat("tokens for unknown request_id \"", message.tokens().request_id(), "\""));
        break;
      } else {
        result = grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                              "expected heartbeat, tokens or drained after hello");
        break;
      }
    }
  }
  registry_.Remove(id);
  connection->Close();
  logger_->info("engine {} disconnected{}", id,
                result.ok() ? "" : absl::StrCat(": ", result.error_message()));
  return result;
}

}  // namespace dsv4::coordinator
