// dsv4-coordinator: the public endpoint of a dsv4-cluster. Serves dsv4.v1.Inference and the
// EngineControl service engines connect to on the cluster YAML's coordinator.listen, and the
// Admin service on coordinator.admin_listen, until SIGINT or SIGTERM.
#include <csignal>
#include <iostream>
#include <string>

#include "absl/flags/flag.h"
#include "cli/cli_util.h"
#include "coordinator/coordinator_server.h"
#include "core/cluster_config.h"
#include "spdlog/spdlog.h"

ABSL_FLAG(std::string, cluster, "", "cluster YAML (coordinator.listen, engine.max_seq_len)");
ABSL_FLAG(std::string, checkpoint, "", "checkpoint directory (config.json, tokenizer.json)");
ABSL_FLAG(std::string, listen, "", "override coordinator.listen (host:port; port 0 = any free)");
ABSL_FLAG(std::string, admin_listen, "",
          "override coordinator.admin_listen (host:port; port 0 = any free)");

int main(int argc, char** argv) {
  dsv4::cli::ParseFlags(
      argc, argv,
      "dsv4-coordinator --cluster cluster-configs/local.yaml --checkpoint checkpoints/v4-mini",
      "dsv4_coordinator_main.cc");
  if (absl::GetFlag(FLAGS_cluster).empty() || absl::GetFlag(FLAGS_checkpoint).empty()) {
    std::cerr << "dsv4-coordinator: --cluster and --checkpoint are required\n";
    return 2;
  }
  absl::StatusOr<dsv4::ClusterConfig> cluster =
      dsv4::LoadClusterConfig(absl::GetFlag(FLAGS_cluster));
  if (!cluster.ok()) {
    std::cerr << "dsv4-coordinator: " << cluster.status().message() << "\n";
    return 2;
  }
  dsv4::coordinator::CoordinatorOptions options;
  options.listen = absl::GetFlag(FLAGS_listen).empty() ? cluster->coordinator.listen
                                                       : absl::GetFlag(FLAGS_listen);
  options.admin_listen = absl::GetFlag(FLAGS_admin_listen).empty()
                             ? cluster->coordinator.admin_listen
                             : absl::GetFlag(FLAGS_admin_listen);
  options.checkpoint_dir = absl::GetFlag(FLAGS_checkpoint);
  options.max_context = cluster->engine.max_seq_len;

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
  // Scripts read the bound address from this line (the port may have been 0).
  std::cout << "dsv4-coordinator listening on " << (*server)->address() << "\n"
            << "dsv4-coordinator admin on " << (*server)->admin_address() << std::endl;
  int signal = 0;
  sigwait(&stop, &signal);
  dsv4::coordinator::Logger()->info("signal {}: shutting down", signal);
  (*server)->Shutdown();
  return 0;
}
