// dsv4-coordinator: the public endpoint of a dsv4-cluster. Serves dsv4.v1.Inference on the
// cluster YAML's coordinator.listen, the EngineControl service engines connect to on
// coordinator.engine_listen (engine token required), the Admin service on
// coordinator.admin_listen and Prometheus metrics on coordinator.metrics_listen, until
// SIGINT or SIGTERM. By default it launches the engine itself (mpirun, one rank per role of
// the YAML) and restarts it when it fails.
#include <unistd.h>

#include <csignal>
#include <filesystem>
#include <iostream>
#include <string>

#include "absl/flags/flag.h"
#include "absl/strings/str_split.h"
#include "cli/cli_util.h"
#include "coordinator/coordinator_server.h"
#include "core/cluster_config.h"
#include "core/topology.h"
#include "spdlog/spdlog.h"

ABSL_FLAG(std::string, cluster, "", "cluster YAML (coordinator, engine and roles sections)");
ABSL_FLAG(std::string, checkpoint, "", "checkpoint directory (config.json, tokenizer.json)");
ABSL_FLAG(std::string, listen, "", "override coordinator.listen (host:port; port 0 = any free)");
ABSL_FLAG(std::string, admin_listen, "",
          "override coordinator.admin_listen (host:port; port 0 = any free)");
ABSL_FLAG(std::string, engine_listen, "",
          "override coordinator.engine_listen: the engines' EngineControl listener (host:port; "
          "port 0 = any free); it requires the engine token");
ABSL_FLAG(std::string, engine_token_file, "",
          "override coordinator.engine_token_file: the engine credential, created (0600) when "
          "absent; launch mode without one uses a fresh token per run, passed to the engines in "
          "their environment; attach mode needs one (the engines read the same file)");
ABSL_FLAG(std::string, metrics_listen, "",
          "override coordinator.metrics_listen (host:port; \"off\" = no metrics endpoint)");
ABSL_FLAG(std::string, engines, "launch",
          "launch: start the engine with mpirun and restart it when it fails; attach: wait for "
          "engines started by an operator (mpirun --hostfile, srun) to connect");
ABSL_FLAG(std::string, mpirun_args, "",
          "launch mode: extra mpirun arguments, space-separated (default: --oversubscribe --mca "
          "mpi_yield_when_idle 1, and --allow-run-as-root when running as root)");
ABSL_FLAG(std::string, advertise, "",
          "launch mode: the address engines dial (default: the bound engine_listen address; a "
          "wildcard host becomes 127.0.0.1)");
ABSL_FLAG(std::string, api_keys_file, "",
          "override coordinator.api_keys_file (API keys, \"<name> <token>\" a line, mode 0600)");
ABSL_FLAG(std::string, admin_token_file, "",
          "override coordinator.admin_token_file (the admin credential; created with a fresh "
          "token, mode 0600, when missing)");
ABSL_FLAG(int32_t, heartbeat_ms, 1000,
          "engines heartbeat this often; 3 missed heartbeats mark an engine dead");

int main(int argc, char** argv) {
  dsv4::cli::ParseFlags(
      argc, argv,
      "dsv4-coordinator --cluster cluster-configs/local.yaml --checkpoint checkpoints/v4-mini\n"
      "                 [--engines launch|attach] [--listen HOST:PORT]\n\n"
      "The cluster's public gRPC endpoint (dsv4.v1.Inference, health, reflection), the engines'\n"
      "control server, the Admin API and Prometheus metrics. Prints the bound addresses.",
      "dsv4_coordinator_main.cc");
  if (absl::GetFlag(FLAGS_cluster).empty() || absl::GetFlag(FLAGS_checkpoint).empty()) {
    std::cerr << "dsv4-coordinator: --cluster and --checkpoint are required\n";
    return 2;
  }
  const std::string engines = absl::GetFlag(FLAGS_engines);
  if (engines != "launch" && engines != "attach") {
    std::cerr << "dsv4-coordinator: --engines must be launch or attach, got \"" << engines
              << "\"\n";
    return 2;
  }
  absl::StatusOr<dsv4::ClusterConfig> cluster =
      dsv4::LoadClusterConfig(absl::GetFlag(FLAGS_cluster));
  if (!cluster.ok()) {
    std::cerr << "dsv4-coordinator: " << cluster.status().message() << "\n";
    return 2;
  }
  auto pick = [](const std::string& flag, const std::string& yaml) {
    return flag.empty() ? yaml : flag;
  };
  dsv4::coordinator::CoordinatorOptions options;
  options.listen = pick(absl::GetFlag(FLAGS_listen), cluster->coordinator.listen);
  options.admin_listen = pick(absl::GetFlag(FLAGS_admin_listen), cluster->coordinator.admin_listen);
  options.engine_listen =
      pick(absl::GetFlag(FLAGS_engine_listen), cluster->coordinator.engine_listen);
  options.engine_token_file =
      pick(absl::GetFlag(FLAGS_engine_token_file), cluster->coordinator.engine_token_file);
  options.max_running_per_engine =
      cluster->roles.attention_ranks * cluster->engine.max_seqs_per_rank;
  if (engines == "attach" && options.engine_token_file.empty()) {
    std::cerr << "dsv4-coordinator: --engines attach needs an engine credential: set "
                 "coordinator.engine_token_file (or --engine-token-file FILE); the coordinator "
                 "creates it (mode 0600) when absent, and the engines read the same file\n";
    return 2;
  }
  options.metrics_listen =
      pick(absl::GetFlag(FLAGS_metrics_listen), cluster->coordinator.metrics_listen);
  if (options.metrics_listen == "off") options.metrics_listen.clear();
  options.checkpoint_dir = absl::GetFlag(FLAGS_checkpoint);
  options.max_context = cluster->engine.max_seq_len;
  options.max_queue = cluster->coordinator.max_queue;
  options.heartbeat_interval_ms = absl::GetFlag(FLAGS_heartbeat_ms);
  options.tls_cert = cluster->coordinator.tls_cert;
  options.tls_key = cluster->coordinator.tls_key;
  options.auth_token_file = cluster->coordinator.auth_token_file;
  options.api_keys_file =
      pick(absl::GetFlag(FLAGS_api_keys_file), cluster->coordinator.api_keys_file);
  options.admin_token_file =
      pick(absl::GetFlag(FLAGS_admin_token_file), cluster->coordinator.admin_token_file);
  if (engines == "launch") {
    dsv4::coordinator::EngineLaunch launch;
    launch.engine_binary =
        (std::filesystem::read_symlink("/proc/self/exe").parent_path() / "dsv4-engine").string();
    launch.cluster_yaml = absl::GetFlag(FLAGS_cluster);
    launch.ranks = cluster->roles.num_ranks();
    absl::StatusOr<dsv4::Topology> topology = dsv4::Topology::Build(*cluster);
    if (!topology.ok()) {
      std::cerr << "dsv4-coordinator: " << topology.status().message() << "\n";
      return 2;
    }
    for (int r = 0; r < launch.ranks; ++r) {
      const std::string& host = topology->host_of_rank(r);
      launch.hosts.push_back(host.empty() ? "localhost" : host);
    }
    if (absl::GetFlag(FLAGS_mpirun_args).empty()) {
      launch.mpirun_args = dsv4::coordinator::DefaultMpirunArgs();
    } else {
      for (absl::string_view arg :
           absl::StrSplit(absl::GetFlag(FLAGS_mpirun_args), ' ', absl::SkipWhitespace())) {
        launch.mpirun_args.emplace_back(arg);
      }
      if (geteuid() == 0) launch.mpirun_args.push_back("--allow-run-as-root");
    }
    launch.max_restarts = cluster->coordinator.max_restarts;
    launch.engines = cluster->coordinator.engines;
    launch.advertise = absl::GetFlag(FLAGS_advertise);
    options.launch = launch;
  }

  // Block the stop signals before gRPC starts its threads, so only sigwait sees them.
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGINT);
  sigaddset(&stop, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop, nullptr);

  auto server = dsv4::coordinator::CoordinatorServer::Start(options);
  if (!server.ok()) {
    std::cerr << "dsv4-coordinator: " << server.status().message() << "\n";
    return server.status().code() == absl::StatusCode::kUnavailable ? 1 : 2;
  }
  // Scripts read the bound addresses from these lines (a port may have been 0).
  std::cout << "dsv4-coordinator listening on " << (*server)->address() << "\n"
            << "dsv4-coordinator admin on " << (*server)->admin_address() << "\n"
            << "dsv4-coordinator engines on " << (*server)->engine_address() << "\n"
            << "dsv4-coordinator metrics on " << (*server)->metrics_address() << std::endl;
  int signal = 0;
  sigwait(&stop, &signal);
  dsv4::coordinator::Logger()->info("signal {}: shutting down", signal);
  (*server)->Shutdown();
  return 0;
}
