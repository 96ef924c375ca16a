// dsv4-engram-store: one Engram memory node. Serves its shards of a checkpoint's Engram
// tables over gRPC (proto/engram.proto) until SIGINT/SIGTERM.
//
//   dsv4-engram-store --checkpoint DIR --cluster cluster.yaml --index I
//       listens on engram.servers[I]; N and R from the YAML's engram section
//   dsv4-engram-store --checkpoint DIR --listen 127.0.0.1:0 [--num_servers N
//       --replication R --index I]     explicit; port 0 picks a free port
// Prints "listening on HOST:PORT" once serving.
#include <csignal>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "cli/cli_util.h"
#include "core/cluster_config.h"
#include "engram_store/server.h"
#include "spdlog/spdlog.h"

ABSL_FLAG(std::string, checkpoint, "", "checkpoint directory (config.json, safetensors)");
ABSL_FLAG(std::string, cluster, "",
          "cluster YAML; its engram section gives servers and replication");
ABSL_FLAG(std::string, listen, "", "host:port to listen on (default: engram.servers[index])");
ABSL_FLAG(int, index, 0, "this server's position in the server list");
ABSL_FLAG(int, num_servers, 1, "number of servers (without --cluster)");
ABSL_FLAG(int, replication, 1, "copies of each shard (without --cluster)");
ABSL_FLAG(bool, mlock, false, "lock the served rows in RAM");
ABSL_FLAG(bool, verify_checksums, true,
          "refuse tables whose rows fail engram_checksums.json (false: serve unverified)");
ABSL_FLAG(int64_t, max_batch_rows, 65536, "largest lookup batch accepted");

namespace {

std::atomic<bool> g_stop{false};

int Run() {
  using dsv4::engram::TableShardOptions;
  const std::string dir = absl::GetFlag(FLAGS_checkpoint);
  if (dir.empty()) {
    std::cerr << "dsv4-engram-store: --checkpoint is required\n";
    return 2;
  }
  TableShardOptions options;
  options.server_index = absl::GetFlag(FLAGS_index);
  options.plan = {absl::GetFlag(FLAGS_num_servers), absl::GetFlag(FLAGS_replication)};
  options.mlock = absl::GetFlag(FLAGS_mlock);
  options.verify_checksums = absl::GetFlag(FLAGS_verify_checksums);
  std::string listen = absl::GetFlag(FLAGS_listen);
  if (!absl::GetFlag(FLAGS_cluster).empty()) {
    absl::StatusOr<dsv4::ClusterConfig> cluster =
        dsv4::LoadClusterConfig(absl::GetFlag(FLAGS_cluster));
    if (!cluster.ok()) {
      std::cerr << "dsv4-engram-store: " << cluster.status() << "\n";
      return 2;
    }
    const dsv4::EngramSpec& e = cluster->engram;
    if (options.server_index < 0 || options.server_index >= static_cast<int>(e.servers.size())) {
      std::cerr << "dsv4-engram-store: --index " << options.server_index << " outside the "
                << e.servers.size() << " engram.servers of " << cluster->path << "\n";
      return 2;
    }
    options.plan = {static_cast<int>(e.servers.size()), e.replication};
    if (listen.empty()) listen = e.servers[options.server_index];
  }
  if (listen.empty()) {
    std::cerr << "dsv4-engram-store: give --listen or --cluster\n";
    return 2;
  }
  auto logger = spdlog::default_logger()->clone("engram-store");
  logger->info("[server {}/{}] loading Engram tables of {}", options.server_index,
               options.plan.num_servers, dir);
  absl::StatusOr<std::unique_ptr<dsv4::engram::TableShards>> shards =
      dsv4::engram::TableShards::Load(dir, options);
  if (!shards.ok()) {
    logger->error("[server {}] {}", options.server_index, shards.status().ToString());
    return 1;
  }
  const uint64_t held = (*shards)->held_bytes();
  dsv4::engram::ServerOptions server_options;
  server_options.max_batch_rows = absl::GetFlag(FLAGS_max_batch_rows);
  absl::StatusOr<std::unique_ptr<dsv4::engram::EngramStoreServer>> server =
      dsv4::engram::EngramStoreServer::Start(std::move(*shards), listen, server_options);
  if (!server.ok()) {
    logger->error("[server {}] {}", options.server_index, server.status().ToString());
    return 1;
  }
  logger->info("[server {}] serving {:.1f} MB of rows", options.server_index, held / 1e6);
  std::cout << "listening on " << (*server)->address() << std::endl;
  std::signal(SIGINT, [](int) { g_stop = true; });
  std::signal(SIGTERM, [](int) { g_stop = true; });
  while (!g_stop) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  (*server)->Shutdown();
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::vector<std::string> positional = dsv4::cli::ParseFlags(
      argc, argv,
      "dsv4-engram-store --checkpoint DIR (--cluster YAML --index I | --listen HOST:PORT)\n\n"
      "Serves this node's shards of a checkpoint's Engram tables over gRPC.",
      "dsv4_engram_store_main.cc");
  if (!positional.empty()) {
    std::cerr << "dsv4-engram-store: unexpected argument " << positional[0] << "\n";
    return 2;
  }
  dsv4::engram::TuneMallocForLargeMessages();
  return Run();
}
