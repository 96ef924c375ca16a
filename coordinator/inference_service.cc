#include "coordinator/inference_service.h"

#include <algorithm>
#include <array>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "coordinator/log_safe.h"
#include "core/checkpoint_layout.h"
#include "core/status_macros.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/io/zero_copy_stream_impl_lite.h"
#include "rpc/security.h"
#include "rpc/status.h"
#include "spdlog/spdlog.h"

namespace dsv4::coordinator {

InferenceService::InferenceService(const Tokenizer& tokenizer, const ModelConfig& config,
                                   const RequestLimits& limits, const EngineRegistry& registry,
                                   Scheduler& scheduler, Metrics* metrics, rpc::ApiKeys keys,
                                   LaunchedStatus launched, std::shared_ptr<spdlog::logger> logger)
    : tokenizer_(tokenizer),
      config_(config),
      limits_(limits),
      registry_(registry),
      scheduler_(scheduler),
      metrics_(metrics),
      keys_(std::move(keys)),
      launched_(std::move(launched)),
      logger_(std::move(logger)) {
  if (metrics_ != nullptr) metrics_->SetCallers(keys_.names());
}

grpc::Status InferenceService::Generate(grpc::ServerContext* context,
                                        const v1::GenerateRequest* request,
                                        grpc::ServerWriter<v1::GenerateResponse>* writer) {
  auto refuse = [this](const grpc::Status& status) {
    if (metrics_ != nullptr)
      metrics_->RequestFinished(static_cast<absl::StatusCode>(status.error_code()));
    return status;
  };
  std::string caller;
  const grpc::Status authenticated = keys_.Authenticate(*context, &caller);
  if (metrics_ != nullptr) metrics_->CallerRequest(authenticated.ok() ? caller : "");
  if (!authenticated.ok()) return refuse(authenticated);
  if (absl::Status s = ValidateGenerateRequest(*request, limits_); !s.ok())
    return refuse(rpc::ToGrpc(s));
  GenerationSpec spec;
  if (request->has_text()) {
    const std::vector<int> ids = tokenizer_.Encode(request->text());
    absl::Status s =
        ValidatePromptLength(static_cast<int>(ids.size()), request->max_tokens(), limits_);
    if (s.ok()) s = ValidateTextOnly("text", ids, limits_);
    if (!s.ok()) return refuse(rpc::ToGrpc(s));
    spec.prompt_token_ids.assign(ids.begin(), ids.end());
  } else {
    spec.prompt_token_ids.assign(request->token_ids().ids().begin(),
                                 request->token_ids().ids().end());
  }
  const v1::SamplingParams& sampling = request->sampling();
  spec.sampling = {sampling.temperature(), sampling.top_p(), sampling.top_k(), sampling.seed()};
  spec.max_tokens = request->max_tokens();
  spec.stop_token_ids.assign(request->stop_token_ids().begin(), request->stop_token_ids().end());
  spec.ignore_eos = request->ignore_eos();
  spec.stop.assign(request->stop().begin(), request->stop().end());
  ClientRequestId client{caller, request->request_id(), ""};
  if (!client.request_id.empty()) {
    // A retry must repeat the request: its digest, request_id left out, identifies it.
    v1::GenerateRequest body = *request;
    body.clear_request_id();
    std::string bytes;
    {
      google::protobuf::io::StringOutputStream output(&bytes);
      google::protobuf::io::CodedOutputStream coded(&output);
      coded.SetSerializationDeterministic(true);
      body.SerializeToCodedStream(&coded);
    }
    const std::array<uint8_t, 32> digest = rpc::Sha256(bytes);
    client.digest.assign(digest.begin(), digest.end());
  }
  absl::StatusOr<std::shared_ptr<Request>> submitted = scheduler_.Submit(std::move(spec), client);
  if (!submitted.ok()) return refuse(rpc::ToGrpc(submitted.status()));
  const std::shared_ptr<Request> admitted = std::move(*submitted);

  size_t tokens_seen = 0, text_seen = 0;
  for (;;) {
    if (context->IsCancelled()) {  // the client left or its deadline passed
      scheduler_.Detach(admitted);
      return grpc::Status(grpc::StatusCode::CANCELLED, "the client cancelled the request");
    }
    // Short waits, so a client that leaves is noticed soon.
    const Request::Update update =
        admitted->WaitForUpdate(tokens_seen, text_seen, absl::Milliseconds(50));
    if (update.finished && !update.error.ok() && update.tokens.empty() && update.text.empty()) {
      return rpc::ToGrpc(update.error);
    }
    const bool last = update.finished && update.error.ok();
    if (update.tokens.empty() && update.text.empty() && !last) continue;
    v1::GenerateResponse response;
    response.mutable_token_ids()->Add(update.tokens.begin(), update.tokens.end());
    response.set_text(update.text);
    if (last) {
      response.set_finish_reason(update.finish_reason);
      admitted->FillUsageAndTimings(&response);
    }
    if (!writer->Write(response)) {
      scheduler_.Detach(admitted);
      return grpc::Status(grpc::StatusCode::CANCELLED, "the client stopped reading");
    }
    if (metrics_ != nullptr && !update.tokens.empty()) {
      metrics_->ObserveCoordinatorOverhead(absl::ToDoubleSeconds(absl::Now() - update.arrived));
    }
    tokens_seen += update.tokens.size();
    text_seen += update.text.size();
    if (update.finished) return rpc::ToGrpc(update.error);
  }
}

grpc::Status InferenceService::Tokenize(grpc::ServerContext* context,
                                        const v1::TokenizeRequest* request,
                                        v1::TokenizeResponse* response) {
  std::string caller;
  if (grpc::Status s = keys_.Authenticate(*context, &caller); !s.ok()) return s;
  if (absl::Status s = ValidateTokenizeRequest(*request, limits_); !s.ok()) return rpc::ToGrpc(s);
  // The same encoding Generate uses for a text prompt (BOS first).
  const std::vector<int> ids = tokenizer_.Encode(request->text());
  response->mutable_token_ids()->Add(ids.begin(), ids.end());
  return grpc::Status::OK;
}

grpc::Status InferenceService::ListModels(grpc::ServerContext* context,
                                          const v1::ListModelsRequest* /*request*/,
                                          v1::ListModelsResponse* response) {
  std::string caller;
  if (grpc::Status s = keys_.Authenticate(*context, &caller); !s.ok()) return s;
  const ParameterCount count = CountParameters(config_);
  v1::ModelInfo* model = response->add_models();
  model->set_name(limits_.model);
  model->set_parameters(count.total);
  model->set_active_parameters(count.active_per_token);
  model->set_max_context(limits_.max_context);
  return grpc::Status::OK;
}

grpc::Status InferenceService::GetClusterStatus(grpc::ServerContext* context,
                                                const v1::ClusterStatusRequest* /*request*/,
                                                v1::ClusterStatus* response) {
  std::string caller;
  if (grpc::Status s = keys_.Authenticate(*context, &caller); !s.ok()) return s;
  registry_.FillStatus(response);
  scheduler_.FillRunning(response);
  if (launched_) launched_(response);
  response->set_queue_depth(scheduler_.queue_depth());
  return grpc::Status::OK;
}

EngineControlService::EngineControlService(EngineExpectations expected, int heartbeat_interval_ms,
                                           EngineRegistry& registry, Scheduler& scheduler,
                                           Metrics* metrics, std::string engine_token,
                                           std::shared_ptr<spdlog::logger> logger)
    : expected_(std::move(expected)),
      heartbeat_interval_ms_(heartbeat_interval_ms),
      registry_(registry),
      scheduler_(scheduler),
      metrics_(metrics),
      engine_token_(std::move(engine_token)),
      logger_(std::move(logger)) {}

absl::Status EngineControlService::CheckHello(const engine::v1::Hello& hello) const {
  const std::string& id = hello.engine_id();
  const bool printable =
      std::all_of(id.begin(), id.end(), [](char c) { return c > ' ' && c < 127; });
  if (id.empty() || id.size() > 128 || !printable) {
    return absl::InvalidArgumentError(
        "hello.engine_id must be 1 to 128 printable ASCII characters without spaces");
  }
  // What does not match is named; the coordinator's value never is.
  auto mismatch = [](absl::string_view field) {
    return absl::InvalidArgumentError(
        absl::StrCat("hello.", field, " does not match the coordinator's model"));
  };
  const engine::v1::ModelInfo& model = hello.model();
  if (model.name() != expected_.model) return mismatch("model.name");
  if (model.vocab_size() != expected_.vocab_size) return mismatch("model.vocab_size");
  if (model.num_layers() != expected_.num_layers) return mismatch("model.num_layers");
  if (model.num_routed_experts() != expected_.num_routed_experts) {
    return mismatch("model.num_routed_experts");
  }
  if (model.config_sha256() != expected_.config_sha256) {
    return absl::InvalidArgumentError(
        "hello.model.config_sha256 does not match the coordinator's model (its config.json or "
        "tokenizer.json differs from the coordinator's)");
  }
  if (hello.ranks().empty() || hello.ranks_size() > expected_.max_ranks) {
    return absl::InvalidArgumentError("hello.ranks must list every rank of the engine");
  }
  for (const engine::v1::RankInfo& rank : hello.ranks()) {
    if (rank.host().size() > 255 || rank.position().size() > 256) {
      return absl::InvalidArgumentError("hello.ranks: host or position too long");
    }
  }
  if (hello.max_running() < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("hello.max_running must be ≥ 1, got ", hello.max_running()));
  }
  return absl::OkStatus();
}

absl::Status EngineControlService::CheckOccupancy(const engine::v1::Occupancy& o,
                                                  absl::string_view field) const {
  constexpr int64_t kMaxTokens = int64_t{1} << 40;  // far beyond any real KV budget
  if (o.running_sequences() < 0 || o.running_sequences() > expected_.max_running ||
      o.queued_sequences() < 0 || o.queued_sequences() > expected_.max_running) {
    return absl::InvalidArgumentError(absl::StrCat(
        field, ": running_sequences or queued_sequences exceeds the engine's capacity"));
  }
  if (o.kv_used_tokens() < 0 || o.kv_budget_tokens() < 0 || o.kv_budget_tokens() > kMaxTokens ||
      o.kv_used_tokens() > o.kv_budget_tokens()) {
    return absl::InvalidArgumentError(absl::StrCat(
        field, ": kv_used_tokens and kv_budget_tokens must satisfy 0 ≤ used ≤ budget"));
  }
  return absl::OkStatus();
}

void EngineControlService::RecordOccupancy(const std::string& engine_id,
                                           const engine::v1::Occupancy& occupancy) {
  registry_.RecordOccupancy(engine_id, occupancy);
  if (metrics_ != nullptr && occupancy.kv_budget_tokens() > 0) {
    metrics_->SetKvUsage(engine_id, static_cast<double>(occupancy.kv_used_tokens()) /
                                        static_cast<double>(occupancy.kv_budget_tokens()));
  }
}

absl::Status EngineControlService::CheckHeartbeat(const engine::v1::Heartbeat& hb,
                                                  int num_ranks) const {
  constexpr int64_t kMaxCount = int64_t{1} << 40;  // tokens, steps: far beyond any real run
  auto bad = [](absl::string_view what) {
    return absl::InvalidArgumentError(absl::StrCat("heartbeat.", what));
  };
  if (hb.step() < 0 || hb.step() > kMaxCount) return bad("step is out of range");
  RETURN_IF_ERROR(CheckOccupancy(hb.occupancy(), "heartbeat.occupancy"));
  for (double ms : {hb.measured_step_ms(), hb.modelled_step_ms(), hb.engram_stall_ms()}) {
    if (!(ms >= 0 && ms < 1e12)) return bad("a time is negative, not finite or out of range");
  }
  for (double bytes : {hb.measured_link_bytes_per_step(), hb.modelled_link_bytes_per_step()}) {
    if (!(bytes >= 0 && bytes < 1e18)) {
      return bad("link bytes per step are negative, not finite or out of range");
    }
  }
  if (hb.blocked_fraction_size() > num_ranks) {
    return bad(absl::StrCat("blocked_fraction has ", hb.blocked_fraction_size(),
                            " entries, more than the engine's ", num_ranks, " ranks"));
  }
  for (int r = 0; r < hb.blocked_fraction_size(); ++r) {
    if (!(hb.blocked_fraction(r) >= 0 && hb.blocked_fraction(r) <= 1)) {
      return bad(absl::StrCat("blocked_fraction[", r, "] must be in [0, 1], got ",
                              hb.blocked_fraction(r)));
    }
  }
  if (hb.expert_load_size() > expected_.num_layers) {
    return bad(absl::StrCat("expert_load has ", hb.expert_load_size(),
                            " layers, more than the coordinator's model"));
  }
  for (int i = 0; i < hb.expert_load_size(); ++i) {
    const engine::v1::LayerExpertLoad& layer = hb.expert_load(i);
    if (layer.layer() < 0 || layer.layer() >= expected_.num_layers) {
      return bad(absl::StrCat("expert_load[", i, "].layer ", layer.layer(),
                              " is not a layer of the coordinator's model"));
    }
    if (layer.tokens_per_expert_size() > expected_.num_routed_experts) {
      return bad(absl::StrCat("expert_load[", i, "] has ", layer.tokens_per_expert_size(),
                              " experts, more than the coordinator's model"));
    }
    for (int64_t tokens : layer.tokens_per_expert()) {
      if (tokens < 0 || tokens > kMaxCount) {
        return bad(absl::StrCat("expert_load[", i, "].tokens_per_expert is out of range"));
      }
    }
  }
  return absl::OkStatus();
}

void EngineControlService::RecordHeartbeat(const std::string& engine_id,
                                           const engine::v1::Heartbeat& heartbeat) {
  registry_.RecordHeartbeat(engine_id, heartbeat);
  RecordOccupancy(engine_id, heartbeat.occupancy());
  if (metrics_ == nullptr) return;
  metrics_->SetEngramStallSeconds(engine_id, heartbeat.engram_stall_ms() * 1e-3);
  for (const engine::v1::LayerExpertLoad& layer : heartbeat.expert_load()) {
    metrics_->RecordExpertLoad(
        layer.layer(), {layer.tokens_per_expert().begin(), layer.tokens_per_expert().end()});
  }
}

grpc::Status EngineControlService::Connect(
    grpc::ServerContext* context,
    grpc::ServerReaderWriter<engine::v1::CoordinatorMessage, engine::v1::EngineMessage>* stream) {
  // Refusals are logged (an operator sees squatting attempts), with the claimed id escaped.
  auto refuse = [&](const grpc::Status& status, const std::string& claimed_id) {
    logger_->warn(
        "refused an engine connection from {}{}: {}", LogSafe(context->peer()),
        claimed_id.empty() ? "" : absl::StrCat(" claiming id \"", LogSafe(claimed_id), "\""),
        LogSafe(status.error_message()));
    return status;
  };
  // The engine credential only (a client's token is refused here); never empty.
  if (engine_token_.empty()) {
    return refuse(
        grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "engine authentication is not set up"), "");
  }
  if (grpc::Status s = rpc::CheckBearerToken(*context, engine_token_); !s.ok())
    return refuse(s, "");
  engine::v1::EngineMessage message;
  if (!stream->Read(&message)) return grpc::Status::OK;  // the engine left before saying hello
  if (!message.has_hello()) {
    return refuse(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                               "the first EngineMessage on a Connect stream must be a hello"),
                  "");
  }
  engine::v1::Hello hello = message.hello();
  if (absl::Status s = CheckHello(hello); !s.ok()) return refuse(rpc::ToGrpc(s), hello.engine_id());
  if (hello.max_running() > expected_.max_running) {
    logger_->warn("engine {} claims max_running {}; capped at the cluster YAML's capacity",
                  hello.engine_id(), hello.max_running());
    hello.set_max_running(expected_.max_running);
  }
  auto connection = std::make_shared<EngineConnection>(context, stream);
  if (absl::Status s = registry_.Add(hello, connection); !s.ok()) {
    return refuse(rpc::ToGrpc(s), hello.engine_id());
  }
  const std::string& id = hello.engine_id();  // printable ASCII (CheckHello)
  logger_->info("engine {} connected from {}: {} ranks", id, LogSafe(context->peer()),
                hello.ranks_size());

  grpc::Status result = grpc::Status::OK;
  engine::v1::CoordinatorMessage welcome;
  welcome.mutable_welcome()->set_heartbeat_interval_ms(heartbeat_interval_ms_);
  if (connection->Open(welcome).ok()) {
    scheduler_.EngineConnected(id, hello.max_running());
    while (stream->Read(&message)) {
      if (message.has_heartbeat()) {
        if (absl::Status s = CheckHeartbeat(message.heartbeat(), hello.ranks_size()); !s.ok()) {
          result = rpc::ToGrpc(s);
          break;
        }
        RecordHeartbeat(id, message.heartbeat());
      } else if (message.has_occupancy()) {
        if (absl::Status s = CheckOccupancy(message.occupancy(), "occupancy"); !s.ok()) {
          result = rpc::ToGrpc(s);
          break;
        }
        RecordOccupancy(id, message.occupancy());
      } else if (message.has_drained()) {
        break;
      } else if (message.has_tokens()) {
        scheduler_.OnTokens(id, message.tokens());
      } else if (message.has_rebalanced()) {
        registry_.RecordRebalanced(id, message.rebalanced());
        logger_->info(
            "engine {} rebalanced its experts before step {}: imbalance {:.3f} "
            "(plain placement {:.3f})",
            id, message.rebalanced().step(), message.rebalanced().imbalance(),
            message.rebalanced().baseline_imbalance());
      } else {
        result = grpc::Status(
            grpc::StatusCode::INVALID_ARGUMENT,
            "expected heartbeat, occupancy, tokens, rebalanced or drained after hello");
        break;
      }
    }
  }
  scheduler_.EngineLost(id);  // before Remove: a restarted engine may take the id at once
  registry_.Remove(id, connection.get());
  connection->Close();
  if (metrics_ != nullptr) metrics_->RemoveEngine(id);
  logger_->info("engine {} disconnected{}", id,
                result.ok() ? "" : absl::StrCat(": ", LogSafe(result.error_message())));
  return result;
}

}  // namespace dsv4::coordinator
