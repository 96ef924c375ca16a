// The operator API (proto/admin.proto) over the engine registry: drain, stop or rebalance
// one engine.
// Served on its own address, never next to the public API. Every call needs the admin
// credential, even on loopback: "authorization: Bearer <admin token>" (UNAUTHENTICATED
// when missing or wrong; PERMISSION_DENIED for an API key, which is not an admin
// credential, and for every call when no admin token is configured).
#ifndef DSV4_COORDINATOR_ADMIN_SERVICE_H_
#define DSV4_COORDINATOR_ADMIN_SERVICE_H_

#include <memory>
#include <string>

#include "coordinator/engine_registry.h"
#include "grpcpp/grpcpp.h"
#include "proto/admin.grpc.pb.h"
#include "rpc/security.h"
#include "spdlog/logger.h"

namespace dsv4::coordinator {

class AdminService final : public admin::v1::Admin::Service {
 public:
  // The registry must outlive the service. `admin_token` empty refuses every call;
  // `api_keys` only tells an API key from a wrong token.
  AdminService(EngineRegistry& registry, std::shared_ptr<spdlog::logger> logger,
               std::string admin_token, rpc::ApiKeys api_keys = {})
      : registry_(registry),
        logger_(std::move(logger)),
        admin_token_(std::move(admin_token)),
        api_keys_(std::move(api_keys)) {}

  grpc::Status DrainEngine(grpc::ServerContext* context,
                           const admin::v1::DrainEngineRequest* request,
                           admin::v1::DrainEngineResponse* response) override;
  grpc::Status ShutdownEngine(grpc::ServerContext* context,
                              const admin::v1::ShutdownEngineRequest* request,
                              admin::v1::ShutdownEngineResponse* response) override;
  grpc::Status Rebalance(grpc::ServerContext* context, const admin::v1::RebalanceRequest* request,
                         admin::v1::RebalanceResponse* response) override;

 private:
  grpc::Status Authorize(const grpc::ServerContext& context) const;

  EngineRegistry& registry_;
  std::shared_ptr<spdlog::logger> logger_;
  const std::string admin_token_;
  const rpc::ApiKeys api_keys_;
};

}  // namespace dsv4::coordinator

#endif  // DSV4_COORDINATOR_ADMIN_SERVICE_H_
