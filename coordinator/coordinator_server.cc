#include "coordinator/coordinator_server.h"

#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <initializer_list>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/cluster_config.h"
#include "core/status_macros.h"
#include "engine/control_client.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"
#include "rpc/security.h"
#include "spdlog/spdlog.h"

namespace dsv4::coordinator {
namespace {

// Starts a server for `services` on `listen` ("host:port" or "unix:path"); sets `*port` to
// the bound port (0 for a unix socket) and returns the bound address.
absl::StatusOr<std::string> Listen(const std::string& listen,
                                   std::shared_ptr<grpc::ServerCredentials> credentials,
                                   std::initializer_list<grpc::Service*> services,
                                   std::unique_ptr<grpc::Server>* server, int* port) {
  grpc::ServerBuilder builder;
  builder.AddListeningPort(listen, std::move(credentials), port);
  // Bounds what a client can make the coordinator buffer; prompts are far smaller (1 MiB
  // of text at most, see RequestLimits).
  builder.SetMaxReceiveMessageSize(4 << 20);
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

// Waits (bounded) for a rank that is our child (the coordinator is a child subreaper, so a
// rank whose mpirun is gone is ours), so that it leaves no zombie; no-op for others.
void ReapRank(pid_t pid) {
  for (int i = 0; i < 100; ++i) {
    const pid_t r = waitpid(pid, nullptr, WNOHANG);
    if (r != 0) return;  // reaped, or not our child
    if (i == 50) kill(pid, SIGKILL);
    absl::SleepFor(absl::Milliseconds(20));
  }
}

// This host's name, to tell its ranks from remote ones.
std::string HostName() {
  char host[256] = {};
  gethostname(host, sizeof(host) - 1);
  return host;
}

}  // namespace

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
  ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfigFromDir(options.checkpoint_dir));
  ASSIGN_OR_RETURN(Tokenizer tokenizer, Tokenizer::LoadFromDir(options.checkpoint_dir));
  if (options.heartbeat_interval_ms < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "coordinator: heartbeat_interval_ms must be ≥ 1, got ", options.heartbeat_interval_ms));
  }
  if (options.max_context < 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("coordinator: max_context must be ≥ 2, got ", options.max_context));
  }
  ASSIGN_OR_RETURN(std::shared_ptr<grpc::ServerCredentials> credentials,
                   rpc::MakeServerCredentials(options.tls_cert, options.tls_key));
  std::string token;
  if (!options.auth_token_file.empty()) {
    ASSIGN_OR_RETURN(token, rpc::ReadTokenFile(options.auth_token_file));
  }
  rpc::ApiKeys keys;
  if (!options.api_keys_file.empty()) {
    ASSIGN_OR_RETURN(keys, rpc::ApiKeys::LoadFile(options.api_keys_file));
  }
  if (!token.empty()) {
    if (absl::Status s = keys.Add("default", token); !s.ok())
      return absl::InvalidArgumentError(absl::StrCat("coordinator.auth_token_file: ", s.message()));
  }
  std::string admin_token;
  bool admin_token_created = false;
  if (!options.admin_listen.empty()) {
    if (options.admin_token_file.empty()) {
      return absl::InvalidArgumentError(
          "coordinator: admin_listen needs an admin_token_file (the admin credential; the "
          "coordinator creates it with a fresh token when it does not exist)");
    }
    ASSIGN_OR_RETURN(admin_token,
                     rpc::ReadOrCreateTokenFile(options.admin_token_file, &admin_token_created));
    if (keys.Matches(admin_token)) {
      return absl::InvalidArgumentError(absl::StrCat("coordinator: the admin token of ",
                                                     options.admin_token_file,
                                                     " is also an API key: it must be distinct"));
    }
  }
  // The engine credential: its own token, never a client's.
  std::string engine_token = NewSecret();
  if (!options.engine_token_file.empty()) {
    ASSIGN_OR_RETURN(engine_token, ReadOrCreateEngineToken(options.engine_token_file));
  }
  if (keys.Matches(engine_token) || (!admin_token.empty() && engine_token == admin_token)) {
    return absl::InvalidArgumentError(
        "coordinator: the engine token must differ from every API key and the admin token");
  }
  ASSIGN_OR_RETURN(const std::string config_sha256, CheckpointConfigSha256(options.checkpoint_dir));
  int max_running = options.max_running_per_engine;
  if (max_running <= 0 && options.launch) {
    ASSIGN_OR_RETURN(const ClusterConfig launched, LoadClusterConfig(options.launch->cluster_yaml));
    max_running = launched.roles.attention_ranks * launched.engine.max_seqs_per_rank;
  }
  auto server = std::unique_ptr<CoordinatorServer>(
      new CoordinatorServer(std::move(config), std::move(tokenizer), options.checkpoint_dir));
  server->engine_token_ = engine_token;
  const int max_context = static_cast<int>(
      std::min<int64_t>(options.max_context, server->config_.max_position_embeddings));
  server->limits_ = MakeRequestLimits(ModelNameFromDir(options.checkpoint_dir),
                                      static_cast<int>(server->config_.vocab_size), max_context);
  server->limits_.image_token_id = static_cast<int>(server->config_.image_token_id);
  const std::shared_ptr<spdlog::logger> logger = Logger();
  ASSIGN_OR_RETURN(server->metrics_, Metrics::Start(options.metrics_listen));
  SchedulerOptions scheduler_options;
  scheduler_options.max_queue = options.max_queue;
  server->scheduler_ = std::make_unique<Scheduler>(scheduler_options, server->registry_,
                                                   server->tokenizer_, server->metrics_.get());
  CoordinatorServer* self = server.get();
  server->inference_ = std::make_unique<InferenceService>(
      server->tokenizer_, server->config_, server->limits_, server->registry_, *server->scheduler_,
      server->metrics_.get(), keys,
      [self](v1::ClusterStatus* status) { self->FillLaunchedStatus(status); }, logger);
  EngineExpectations expected;
  expected.model = server->limits_.model;
  expected.vocab_size = server->limits_.vocab_size;
  expected.num_layers = server->config_.num_hidden_layers;
  expected.num_routed_experts = server->config_.n_routed_experts;
  expected.config_sha256 = config_sha256;
  if (max_running > 0) expected.max_running = max_running;
  server->engine_control_ = std::make_unique<EngineControlService>(
      expected, options.heartbeat_interval_ms, server->registry_, *server->scheduler_,
      server->metrics_.get(), engine_token, logger);

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  ASSIGN_OR_RETURN(server->address_, Listen(options.listen, credentials, {server->inference_.get()},
                                            &server->server_, &server->port_));
  // The control plane on its own listener (same TLS), so the public port serves no
  // EngineControl and the engine token is checked apart from clients' credentials.
  ASSIGN_OR_RETURN(server->engine_address_,
                   Listen(options.engine_listen, credentials, {server->engine_control_.get()},
                          &server->engine_server_, &server->engine_port_));
  if (!options.admin_listen.empty()) {
    server->admin_ = std::make_unique<AdminService>(server->registry_, logger, admin_token, keys);
    if (admin_token_created)
      logger->info("admin token created in {} (dsv4 admin --token-file)", options.admin_token_file);
    int admin_port = 0;
    // The operator API stays plaintext on its own (loopback by default) address.
    ASSIGN_OR_RETURN(server->admin_address_,
                     Listen(options.admin_listen, grpc::InsecureServerCredentials(),
                            {server->admin_.get()}, &server->admin_server_, &admin_port));
  }
  if (options.launch) {
    RETURN_IF_ERROR(server->LaunchEngines(*options.launch));
  }
  const absl::Duration interval = absl::Milliseconds(options.heartbeat_interval_ms);
  server->watchdog_ = std::thread([self, interval, logger] {
    while (!self->stop_.WaitForNotificationWithTimeout(interval)) {
      for (const std::string& id : self->registry_.CancelSilent(3 * interval, absl::Now())) {
        logger->warn("engine {} missed 3 heartbeats: disconnecting it", id);
        for (const auto& supervisor : self->supervisors_) {
          if (supervisor->engine_id() == id) supervisor->Kill("3 missed heartbeats");
        }
      }
    }
  });
  logger->info("serving model {} on {} (engines: {}, admin: {}, metrics: {}, tls: {}, auth: {})",
               server->limits_.model, server->address_, server->engine_address_,
               server->admin_address_.empty() ? "off" : server->admin_address_,
               server->metrics_->address().empty() ? "off" : server->metrics_->address(),
               options.tls_cert.empty() ? "off" : "on",
               keys.empty() ? "off" : absl::StrCat(keys.names().size(), " API keys"));
  return server;
}

absl::Status CoordinatorServer::LaunchEngines(const EngineLaunch& launch) {
  std::string advertise = launch.advertise;
  if (advertise.empty()) {
    advertise = engine_address_;
    for (const char* wildcard : {"0.0.0.0:", "[::]:"}) {
      if (absl::StartsWith(advertise, wildcard)) {
        advertise = absl::StrCat("127.0.0.1:", engine_port_);
      }
    }
  }
  if (launch.engines < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("coordinator.engines must be ≥ 1, got ", launch.engines));
  }
  const std::shared_ptr<spdlog::logger> logger = Logger();
  // Ranks that outlive their mpirun become the coordinator's children, so it can reap them.
  prctl(PR_SET_CHILD_SUBREAPER, 1);
  scheduler_->SetEnginesExpected(true);
  for (int e = 0; e < launch.engines; ++e) {
    const std::string id = absl::StrCat("engine-", e);
    LaunchSpec spec;
    spec.engine_id = id;
    spec.max_restarts = launch.max_restarts;
    spec.env = {absl::StrCat(kEngineTokenEnv, "=", engine_token_)};  // out of band
    ASSIGN_OR_RETURN(spec.argv,
                     MpirunCommand(launch.engine_binary, launch.cluster_yaml, checkpoint_dir_,
                                   advertise, id, launch.ranks, launch.hosts, launch.mpirun_args));
    logger->info("launching engine {}: {}", id, absl::StrJoin(spec.argv, " "));
    EngineSupervisor::Callbacks callbacks;
    callbacks.restarted = [this, id, logger](int restarts, const std::string& why) {
      logger->warn("{}; restarting it (restart {})", why, restarts);
      registry_.SetRestarts(id, restarts);
      metrics_->EngineRestarted(id);
    };
    callbacks.relaunching = [logger](const std::string& why) {
      logger->info("{} (drained or shut down); starting it again", why);
    };
    // Each launch binds the id to its nonce: nobody else can take it, and whatever holds it
    // from an earlier launch is disconnected.
    callbacks.launching = [this, id](const std::string& nonce) { registry_.Reserve(id, nonce); };
    callbacks.cleanup = [this, id, logger] {
      // Ranks on this host that outlived mpirun: kill them (only a launched engine, which
      // proved its nonce, can hold this id), then wait for their stream to go.
      const std::string host = HostName();
      for (const auto& [rank_host, pid] : registry_.RankProcesses(id)) {
        if (rank_host == host && pid > 0) {
          kill(static_cast<pid_t>(pid), SIGKILL);
          ReapRank(static_cast<pid_t>(pid));
        }
      }
      registry_.Reserve(id, NewSecret());  // the old launch's nonce is void
      for (int i = 0; i < 200 && registry_.Has(id); ++i) absl::SleepFor(absl::Milliseconds(50));
      if (registry_.Has(id)) logger->warn("engine {}'s old control stream is still open", id);
    };
    callbacks.gave_up = [this, logger](const absl::Status& reason) {
      logger->error("{}", std::string(reason.message()));
      // Requests go to the engines still running; only when none is left do they fail.
      absl::MutexLock lock(&launch_mu_);
      if (++failed_engines_ == static_cast<int>(supervisors_.size())) {
        scheduler_->SetUnavailable(reason);
      }
    };
    supervisors_.push_back(
        std::make_unique<EngineSupervisor>(std::move(spec), std::move(callbacks)));
  }
  for (const auto& supervisor : supervisors_) {
    RETURN_IF_ERROR(supervisor->Start());
  }
  return absl::OkStatus();
}

void CoordinatorServer::FillLaunchedStatus(v1::ClusterStatus* status) const {
  for (const auto& supervisor : supervisors_) {
    const bool connected =
        std::any_of(status->engines().begin(), status->engines().end(),
                    [&](const v1::EngineStatus& e) { return e.id() == supervisor->engine_id(); });
    if (connected) continue;  // the registry reported it
    v1::EngineStatus* engine = status->add_engines();
    engine->set_id(supervisor->engine_id());
    engine->set_state(supervisor->state());
    engine->set_restarts(supervisor->restarts());
  }
}

CoordinatorServer::~CoordinatorServer() { Shutdown(); }

void CoordinatorServer::Shutdown() {
  if (!stop_.HasBeenNotified()) stop_.Notify();
  if (watchdog_.joinable()) watchdog_.join();
  // Engines stop cleanly instead of losing their stream (launched and attached alike).
  engine::v1::CoordinatorMessage shutdown;
  shutdown.mutable_shutdown()->set_reason("the coordinator is shutting down");
  std::vector<pid_t> local_ranks;  // of launched engines, reaped once their mpirun is gone
  for (const auto& supervisor : supervisors_) {
    for (const auto& [host, pid] : registry_.RankProcesses(supervisor->engine_id())) {
      if (host == HostName() && pid > 0) local_ranks.push_back(static_cast<pid_t>(pid));
    }
  }
  for (const std::string& id : registry_.Ids()) registry_.Send(id, shutdown).IgnoreError();
  for (const auto& supervisor : supervisors_) supervisor->Stop(absl::Seconds(10));
  for (pid_t pid : local_ranks) ReapRank(pid);
  const auto now = std::chrono::system_clock::now();
  if (admin_server_) admin_server_->Shutdown(now);
  if (engine_server_) engine_server_->Shutdown(now);
  if (server_) server_->Shutdown(now);
}

}  // namespace dsv4::coordinator
