#include "coordinator/admin_service.h"

#include "coordinator/inference_service.h"

namespace dsv4::coordinator {

grpc::Status AdminService::DrainEngine(grpc::ServerContext* context,
                                       const admin::v1::DrainEngineRequest* request,
                                       admin::v1::DrainEngineResponse* /*response*/) {
  engine::v1::CoordinatorMessage message;
  message.mutable_drain();
  const absl::Status status = registry_.Send(request->engine_id(), message);
  if (status.ok())
    logger_->info("admin {}: draining engine {}", context->peer(), request->engine_id());
  return ToGrpc(status);
}

grpc::Status AdminService::ShutdownEngine(grpc::ServerContext* context,
                                          const admin::v1::ShutdownEngineRequest* request,
                                          admin::v1::ShutdownEngineResponse* /*response*/) {
  engine::v1::CoordinatorMessage message;
  message.mutable_shutdown()->set_reason(request->reason());
  const absl::Status status = registry_.Send(request->engine_id(), message);
  if (status.ok()) {
    logger_->info("admin {}: shutting down engine {} ({})", context->peer(), request->engine_id(),
                  request->reason());
  }
  return ToGrpc(status);
}

}  // namespace dsv4::coordinator
