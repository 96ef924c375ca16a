#include "coordinator/coordinator_server.h"

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <initializer_list>
#include <utility>

#include "absl/strings/str_cat.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"
#include "spdlog/spdlog.h"

namespace dsv4::coordinator {
namespace {

// Starts a server for `services` on `listen` ("host:port" or "unix:path"); sets `*port` to
// the bound port (0 for a unix socket) and returns the bound address.
absl::StatusOr<std::string> Listen(const std::string& listen,
                                   std::initializer_list<grpc::Service*> services,
                                   std::unique_ptr<grpc::Server>* server, int* port) {
  grpc::ServerBuilder builder;
  builder.AddListeningPort(listen, grpc::InsecureServerCredentials(), port);
  for (grpc::Service* service : services) builder.RegisterService(service);
  *server = builder.BuildAndStart();
  const bool unix_socket = listen.rfind("unix:", 0) == 0;
  if (!*server || (!unix_socket && *port == 0)) {
    return absl::UnavailableError(absl::StrCat("coordinator: cannot listen on ", listen));
  }
  (*server)->GetHealthCheckService()->SetServingStatus(true);
  if (unix_socket) return listen;
  return absl::StrCat(listen.substr(0, listen.rfind(':')), ":", *port);
}

}  // namespace

std::string ModelNameFromDir(const std::string& checkpoint_dir) {
  std::filesystem::path path(checkpoint_dir);
  if (!path.has_filename()) path = path.parent_path();  // "dir/" → "dir"
  return path.filename().string();
}

std::shared_ptr<spdlog::logger> Logger() {
  static const std::shared_ptr<spdlog::logger> logger = [] {
    auto l = spdlog::default_logger()->clone("coordinator");
    spdlog::register_logger(l);
    return l;
  }();
  return logger;
}

absl::StatusOr<std::unique_ptr<CoordinatorServer>> CoordinatorServer::Start(
    const CoordinatorOptions& options) {
  absl::StatusOr<ModelConfig> config = LoadModelConfigFromDir(options.checkpoint_dir);
  if (!config.ok()) return config.status();
  absl::StatusOr<Tokenizer> tokenizer = Tokenizer::LoadFromDir(options.checkpoint_dir);
  if (!tokenizer.ok()) return tokenizer.status();
  if (options.heartbeat_interval_ms < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "coordinator: heartbeat_interval_ms must be ≥ 1, got ", options.heartbeat_interval_ms));
  }
  if (options.max_context < 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("coordinator: max_context must be ≥ 2, got ", options.max_context));
  }
  auto server = std::unique_ptr<CoordinatorServer>(
      new CoordinatorServer(*std::move(config), *std::move(tokenizer)));
  const int max_context = static_cast<int>(
      std::min<int64_t>(options.max_context, server->config_.max_position_embeddings));
  server->limits_ = MakeRequestLimits(ModelNameFromDir(options.checkpoint_dir),
                                      static_cast<int>(server->config_.vocab_size), max_context);
  const std::shared_ptr<spdlog::logger> logger = Logger();
  server->inference_ = std::make_unique<InferenceService>(
      server->tokenizer_, server->config_, server->limits_, server->registry_, logger);
  server->engine_control_ = std::make_unique<EngineControlService>(
      server->limits_.model, server->limits_.vocab_size, options.heartbeat_interval_ms,
      server->registry_, logger);

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  absl::StatusOr<std::string> address =
      Listen(options.listen, {server->inference_.get(), server->engine_control_.get()},
             &server->server_, &server->port_);
  if (!address.ok()) return address.status();
  server->address_ = *address;
  if (!options.admin_listen.empty()) {
    server->admin_ = std::make_unique<AdminService>(server->registry_, logger);
    int admin_port = 0;
    address =
        Listen(options.admin_listen, {server->admin_.get()}, &server->admin_server_, &admin_port);
    if (!address.ok()) return address.status();
    server->admin_address_ = *address;
  }
  const absl::Duration interval = absl::Milliseconds(options.heartbeat_interval_ms);
  CoordinatorServer* self = server.get();
  server->watchdog_ = std::thread([self, interval, logger] {
    while (!self->stop_.WaitForNotificationWithTimeout(interval)) {
      for (const std::string& id : self->registry_.CancelSilent(3 * interval, absl::Now())) {
        logger->warn("engine {} missed 3 heartbeats: disconnecting it", id);
      }
    }
  });
  logger->info("serving model {} on {} (admin: {})", server->limits_.model, server->address_,
               server->admin_address_.empty() ? "off" : server->admin_address_);
  return server;
}

CoordinatorServer::~CoordinatorServer() { Shutdown(); }

void CoordinatorServer::Shutdown() {
  if (!stop_.HasBeenNotified()) stop_.Notify();
  if (watchdog_.joinable()) watchdog_.join();
  const auto now = std::chrono::system_clock::now();
  if (admin_server_) admin_server_->Shutdown(now);
  if (server_) server_->Shutdown(now);
}

}  // namespace dsv4::coordinator
