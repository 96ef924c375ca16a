// The operator API (proto/admin.proto) over the engine registry: drain, stop or rebalance
// one engine.
// Served on its own address, never next to the public API.
#ifndef DSV4_COORDINATOR_ADMIN_SERVICE_H_
#define DSV4_COORDINATOR_ADMIN_SERVICE_H_

#include <memory>

#include "coordinator/engine_registry.h"
#include "grpcpp/grpcpp.h"
#include "proto/admin.grpc.pb.h"
#include "spdlog/logger.h"

namespace dsv4::coordinator {

class AdminService final : public admin::v1::Admin::Service {
 public:
  // The registry must outlive the service.
  AdminService(EngineRegistry& registry, std::shared_ptr<spdlog::logger> logger)
      : registry_(registry), logger_(std::move(logger)) {}

  grpc::Status DrainEngine(grpc::ServerContext* context,
                           const admin::v1::DrainEngineRequest* request,
                           admin::v1::DrainEngineResponse* response) override;
  grpc::Status ShutdownEngine(grpc::ServerContext* context,
                              const admin::v1::ShutdownEngineRequest* request,
                              admin::v1::ShutdownEngineResponse* response) override;
  grpc::Status Rebalance(grpc::ServerContext* context, const admin::v1::RebalanceRequest* request,
                         admin::v1::RebalanceResponse* response) override;

 private:
  EngineRegistry& registry_;
  std::shared_ptr<spdlog::logger> logger_;
};

}  // namespace dsv4::coordinator

#endif  // DSV4_COORDINATOR_ADMIN_SERVICE_H_
