#include "coordinator/admin_service.h"

#include "coordinator/log_safe.h"

#include "rpc/status.h"

namespace dsv4::coordinator {

grpc::Status AdminService::Authorize(const grpc::ServerContext& context) const {
  if (admin_token_.empty()) {
    return grpc::Status(grpc::StatusCode::PERMISSION_DENIED,
                        "no admin credential is configured on this coordinator "
                        "(coordinator.admin_token_file)");
  }
  grpc::Status s = rpc::CheckBearerToken(context, admin_token_);
  if (s.ok()) return s;
  std::string caller;
  if (!api_keys_.empty() && api_keys_.Authenticate(context, &caller).ok()) {
    return grpc::Status(grpc::StatusCode::PERMISSION_DENIED,
                        "an API key is not an admin credential: use the admin token "
                        "(dsv4 admin --token-file)");
  }
  return s;
}

grpc::Status AdminService::DrainEngine(grpc::ServerContext* context,
                                       const admin::v1::DrainEngineRequest* request,
                                       admin::v1::DrainEngineResponse* /*response*/) {
  if (grpc::Status s = Authorize(*context); !s.ok()) return s;
  engine::v1::CoordinatorMessage message;
  message.mutable_drain();
  const absl::Status status = registry_.Send(request->engine_id(), message);
  if (status.ok())
    logger_->info("admin {}: draining engine {}", context->peer(), LogSafe(request->engine_id()));
  return rpc::ToGrpc(status);
}

grpc::Status AdminService::ShutdownEngine(grpc::ServerContext* context,
                                          const admin::v1::ShutdownEngineRequest* request,
                                          admin::v1::ShutdownEngineResponse* /*response*/) {
  if (grpc::Status s = Authorize(*context); !s.ok()) return s;
  engine::v1::CoordinatorMessage message;
  message.mutable_shutdown()->set_reason(request->reason());
  const absl::Status status = registry_.Send(request->engine_id(), message);
  if (status.ok()) {
    logger_->info("admin {}: shutting down engine {} ({})", context->peer(),
                  LogSafe(request->engine_id()), LogSafe(request->reason()));
  }
  return rpc::ToGrpc(status);
}

grpc::Status AdminService::Rebalance(grpc::ServerContext* context,
                                     const admin::v1::RebalanceRequest* request,
                                     admin::v1::RebalanceResponse* response) {
  if (grpc::Status s = Authorize(*context); !s.ok()) return s;
  const std::string& id = request->engine_id();
  absl::StatusOr<std::vector<engine::v1::LayerExpertLoad>> load = registry_.ExpertLoad(id);
  if (!load.ok()) return rpc::ToGrpc(load.status());
  int64_t routed = 0;
  for (const engine::v1::LayerExpertLoad& layer : *load) {
    for (int64_t n : layer.tokens_per_expert()) routed += n;
  }
  if (routed == 0) {
    return grpc::Status(
        grpc::StatusCode::FAILED_PRECONDITION,
        "engine \"" + id + "\" has reported no expert load yet: run some requests, then rebalance");
  }
  const int before = registry_.RebalanceCount(id);
  engine::v1::CoordinatorMessage message;
  message.mutable_rebalance()->mutable_load()->Add(load->begin(), load->end());
  if (absl::Status s = registry_.Send(id, message); !s.ok()) return rpc::ToGrpc(s);
  absl::Duration timeout = absl::Minutes(5);
  if (context->deadline() != std::chrono::system_clock::time_point::max()) {
    timeout = absl::FromChrono(context->deadline() - std::chrono::system_clock::now());
  }
  absl::StatusOr<engine::v1::Rebalanced> done = registry_.WaitRebalanced(id, before, timeout);
  if (!done.ok()) return rpc::ToGrpc(done.status());
  response->set_step(done->step());
  response->set_placement_summary(done->placement_summary());
  response->set_imbalance(done->imbalance());
  response->set_baseline_imbalance(done->baseline_imbalance());
  logger_->info("admin {}: rebalanced engine {} from {} routed tokens", context->peer(),
                LogSafe(id), routed);
  return grpc::Status::OK;
}

}  // namespace dsv4::coordinator
