// dsv4-engram-store: one Engram memory node. Serves its shards of a DeepSeek-V4.1
// checkpoint's Engram tables (FP8 rows with E8M0 scales, as released) over gRPC
// (proto/engram.proto) until SIGINT/SIGTERM.
//
//   dsv4-engram-store --checkpoint DIR --cluster cluster.yaml --index I
//       listens on engram.servers[I]; N and R from the YAML's engram section
//   dsv4-engram-store --checkpoint DIR --listen 127.0.0.1:0 [--num_servers N
//       --replication R --index I]     explicit; port 0 picks a free port
//   dsv4-engram-store --config models/deepseek-v4.1-flash/config.json --servers 4
//       --replication 2 --plan         sizing only: RAM per node, no tables needed
// At startup it prints the RAM this node needs (values + scales of its shards, per layer
// and in total) before it maps and verifies anything, then "listening on HOST:PORT" once
// serving.
#include <atomic>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "cli/cli_util.h"
#include "core/cluster_config.h"
#include "core/model_config.h"
#include "engram_store/server.h"
#include "engram_store/table_shards.h"
#include "spdlog/spdlog.h"

ABSL_FLAG(std::string, checkpoint, "",
          "checkpoint directory (config.json, model.safetensors.index.json, shards, "
          "engram_checksums.json)");
ABSL_FLAG(std::string, config, "",
          "with --plan: a config.json, a directory holding one, or a preset name "
          "(deepseek-v4.1-flash); default: --checkpoint's config.json");
ABSL_FLAG(bool, plan, false,
          "only print the sizing (RAM each of the N nodes needs for its shards, per layer and "
          "in total) and exit; needs --config or --checkpoint, not the tables");
ABSL_FLAG(std::string, cluster, "",
          "cluster YAML; its engram section gives servers and replication");
ABSL_FLAG(std::string, listen, "", "host:port to listen on (default: engram.servers[index])");
ABSL_FLAG(int, index, 0, "this server's position in the server list (0-based)");
ABSL_FLAG(int, num_servers, 1, "number of memory nodes N (without --cluster)");
ABSL_FLAG(int, servers, 0, "same as --num_servers (0: use --num_servers)");
ABSL_FLAG(int, replication, 1, "copies R of each shard, 1 ≤ R ≤ N (without --cluster)");
ABSL_FLAG(bool, mlock, false,
          "lock the served rows in RAM (needs a memlock limit of at least the printed size)");
ABSL_FLAG(bool, verify_checksums, true,
          "refuse tables whose held rows (values or scales) fail engram_checksums.json "
          "(false: serve unverified)");
ABSL_FLAG(int64_t, max_batch_rows, 65536, "largest lookup batch accepted");
ABSL_FLAG(std::string, tls_cert, "",
          "PEM certificate to serve TLS with (with --tls_key; default: the YAML's engram.tls)");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of --tls_cert");
ABSL_FLAG(std::string, token_file, "",
          "file whose first line is the bearer token clients must send (default: the YAML's "
          "engram.token_file; none: rows are served to anyone reaching the port)");

namespace {

constexpr char kUsage[] =
    R"(dsv4-engram-store --checkpoint DIR (--cluster YAML --index I | --listen HOST:PORT)
dsv4-engram-store (--config CONFIG | --checkpoint DIR) [--servers N --replication R] --plan

An Engram memory node. Serves this node's shards of a DeepSeek-V4.1 checkpoint's Engram
tables over gRPC (proto/engram.proto, service dsv4.engram.v1.EngramStore, plus
grpc.health.v1.Health). The tables are served as released: per Engram layer L,
layers.L.engram.embed.weight (F8_E4M3 [rows, d_e]) and layers.L.engram.embed.scale
(F8_E8M0 [rows, d_e/32]), read in place from the memory-mapped safetensors; a row goes out
as one record of d_e value bytes then d_e/32 scale bytes (264 B for V4.1-Flash).

Sharding: each layer's table is cut into N row ranges; node I holds ranges I, I-1, ...,
I-R+1 (mod N), so every row lives on R nodes and a node holds about R/N of the tables
(V4.1-Flash: 202.76 GB in all). N and R come from the cluster YAML's engram section
(engram.servers, engram.replication) or from --num_servers/--servers and --replication.

At startup the node prints the RAM it needs (values + scales of its shards, per layer and
in total, GB = 10^9 B) before it maps anything, then verifies the checksums of the rows it
holds (both tensors; a mismatch is refused naming the tensor), then prints
"listening on HOST:PORT".

Security: the rows are the model's weights. --tls_cert/--tls_key (or engram.tls in the
YAML) serve TLS; --token_file (or engram.token_file) requires "authorization: Bearer
<token>" on every lookup and Stats call (UNAUTHENTICATED otherwise). Health stays open.
Create a token with: (umask 077; openssl rand -hex 32 > engram.token)

--plan prints that sizing for every node and exits, without the tables; e.g.
  dsv4-engram-store --config models/deepseek-v4.1-flash/config.json --servers 4 \
      --replication 2 --plan)";

std::atomic<bool> g_stop{false};

// A config.json path from --config: the file, a directory holding config.json, or a
// preset name under models/; relative paths also resolve against the project.
absl::StatusOr<std::string> ResolveConfig(const std::string& given) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (fs::is_regular_file(given, ec)) return given;
  if (fs::is_directory(given, ec) && fs::is_regular_file(fs::path(given) / "config.json", ec)) {
    return (fs::path(given) / "config.json").string();
  }
  for (const std::string& candidate :
       {given, given + "/config.json", "models/" + given + "/config.json"}) {
    absl::StatusOr<std::string> found = dsv4::cli::FindProjectFile(candidate);
    if (found.ok()) return found;
  }
  return absl::NotFoundError(absl::StrCat("--config ", given,
                                          ": no such config.json, directory holding one, "
                                          "or preset under models/"));
}

// MemAvailable of /proc/meminfo in bytes, or 0 when unknown.
uint64_t MemAvailable() {
  std::ifstream in("/proc/meminfo");
  std::string key;
  uint64_t kb = 0;
  std::string unit;
  while (in >> key >> kb >> unit) {
    if (key == "MemAvailable:") return kb * 1024;
  }
  return 0;
}

int Run() {
  using dsv4::engram::TableShardOptions;
  const std::string dir = absl::GetFlag(FLAGS_checkpoint);
  const bool plan_only = absl::GetFlag(FLAGS_plan);
  if (dir.empty() && !(plan_only && !absl::GetFlag(FLAGS_config).empty())) {
    std::cerr << "dsv4-engram-store: --checkpoint is required"
              << " (or --config with --plan; see --help)\n";
    return 2;
  }
  TableShardOptions options;
  options.server_index = absl::GetFlag(FLAGS_index);
  int num_servers = absl::GetFlag(FLAGS_num_servers);
  if (absl::GetFlag(FLAGS_servers) != 0) {
    if (num_servers != 1 && num_servers != absl::GetFlag(FLAGS_servers)) {
      std::cerr << "dsv4-engram-store: --servers " << absl::GetFlag(FLAGS_servers)
                << " and --num_servers " << num_servers << " disagree\n";
      return 2;
    }
    num_servers = absl::GetFlag(FLAGS_servers);
  }
  options.plan = {num_servers, absl::GetFlag(FLAGS_replication)};
  options.mlock = absl::GetFlag(FLAGS_mlock);
  options.verify_checksums = absl::GetFlag(FLAGS_verify_checksums);
  std::string listen = absl::GetFlag(FLAGS_listen);
  dsv4::EngramSpec security;  // tls and token_file: the YAML's, then the flags'
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
    security = e;
  }
  if (!absl::GetFlag(FLAGS_tls_cert).empty() || !absl::GetFlag(FLAGS_tls_key).empty()) {
    security.tls_cert = absl::GetFlag(FLAGS_tls_cert);
    security.tls_key = absl::GetFlag(FLAGS_tls_key);
  }
  if (!absl::GetFlag(FLAGS_token_file).empty()) {
    security.token_file = absl::GetFlag(FLAGS_token_file);
  }
  if (absl::Status s = options.plan.Validate(); !s.ok()) {
    std::cerr << "dsv4-engram-store: " << s.message() << "\n";
    return 2;
  }

  if (!plan_only && !absl::GetFlag(FLAGS_config).empty()) {
    std::cerr << "dsv4-engram-store: --config goes with --plan; a serving node reads "
                 "--checkpoint's config.json\n";
    return 2;
  }
  // The config (and so the sizing) first: nothing is mapped yet.
  std::string config_path = dir + "/config.json";
  if (!absl::GetFlag(FLAGS_config).empty()) {
    absl::StatusOr<std::string> resolved = ResolveConfig(absl::GetFlag(FLAGS_config));
    if (!resolved.ok()) {
      std::cerr << "dsv4-engram-store: " << resolved.status().message() << "\n";
      return 2;
    }
    config_path = *resolved;
  }
  absl::StatusOr<dsv4::ModelConfig> config = dsv4::LoadModelConfig(config_path);
  if (!config.ok()) {
    std::cerr << "dsv4-engram-store: " << config.status().message() << "\n";
    return 1;
  }
  const std::string where = config_path.substr(0, config_path.size() - 11);  // "…/"
  if (plan_only) {
    absl::StatusOr<std::string> sizing = dsv4::engram::FormatSizing(*config, options.plan);
    if (!sizing.ok()) {
      std::cerr << "dsv4-engram-store: " << where << sizing.status().message() << "\n";
      return 1;
    }
    std::cout << "Engram memory-node plan for " << config_path << "\n" << *sizing << std::flush;
    return 0;
  }
  if (options.server_index < 0 || options.server_index >= options.plan.num_servers) {
    std::cerr << "dsv4-engram-store: --index " << options.server_index << " outside [0, "
              << options.plan.num_servers << ")\n";
    return 2;
  }
  if (listen.empty()) {
    std::cerr << "dsv4-engram-store: give --listen or --cluster\n";
    return 2;
  }
  auto logger = spdlog::default_logger()->clone("engram-store");
  absl::StatusOr<std::vector<dsv4::engram::LayerSizing>> held =
      dsv4::engram::SizeServer(*config, options.plan, options.server_index);
  absl::StatusOr<std::string> sizing =
      dsv4::engram::FormatSizing(*config, options.plan, {options.server_index});
  if (!held.ok() || !sizing.ok()) {
    logger->error("[server {}] {}{}", options.server_index, where,
                  std::string((held.ok() ? sizing.status() : held.status()).message()));
    return 1;
  }
  uint64_t need = 0;
  for (const dsv4::engram::LayerSizing& l : *held) need += l.bytes();
  std::cout << "[server " << options.server_index << "/" << options.plan.num_servers
            << "] RAM needed for this node's Engram rows: "
            << absl::StrFormat("%.3f GB", need / 1e9) << "\n"
            << *sizing << std::flush;
  if (const uint64_t available = MemAvailable(); available != 0 && need > available) {
    logger->warn(
        "[server {}] this node's rows ({:.3f} GB) exceed the memory available here ({:.3f} GB): "
        "lookups will page from disk (use more nodes, or --mlock to refuse instead)",
        options.server_index, need / 1e9, available / 1e9);
  }
  logger->info("[server {}/{}] mapping{} the Engram tables of {}", options.server_index,
               options.plan.num_servers, options.verify_checksums ? " and verifying" : "", dir);
  absl::StatusOr<std::unique_ptr<dsv4::engram::TableShards>> shards =
      dsv4::engram::TableShards::Load(dir, options);
  if (!shards.ok()) {
    logger->error("[server {}] {}", options.server_index, shards.status().ToString());
    return 1;
  }
  const uint64_t values = (*shards)->held_value_bytes(), scales = (*shards)->held_scale_bytes();
  dsv4::engram::ServerOptions server_options;
  server_options.max_batch_rows = absl::GetFlag(FLAGS_max_batch_rows);
  if (absl::Status s = dsv4::engram::LoadServerSecurity(security, &server_options); !s.ok()) {
    logger->error("[server {}] {}", options.server_index, s.ToString());
    return 2;
  }
  absl::StatusOr<std::unique_ptr<dsv4::engram::EngramStoreServer>> server =
      dsv4::engram::EngramStoreServer::Start(std::move(*shards), listen, server_options);
  if (!server.ok()) {
    logger->error("[server {}] {}", options.server_index, server.status().ToString());
    return 1;
  }
  logger->info(
      "[server {}] serving {:.3f} GB of rows ({:.3f} GB values + {:.3f} GB scales){}, {}, {}",
      options.server_index, (values + scales) / 1e9, values / 1e9, scales / 1e9,
      options.mlock ? ", mlocked" : "", server_options.tls_cert.empty() ? "plaintext" : "TLS",
      server_options.token.empty() ? "no token required (anyone reaching the port reads the rows)"
                                   : "bearer token required");
  std::cout << "listening on " << (*server)->address() << std::endl;
  std::signal(SIGINT, [](int) { g_stop = true; });
  std::signal(SIGTERM, [](int) { g_stop = true; });
  while (!g_stop) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  (*server)->Shutdown();
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::vector<std::string> positional =
      dsv4::cli::ParseFlags(argc, argv, kUsage, "dsv4_engram_store_main.cc");
  if (!positional.empty()) {
    std::cerr << "dsv4-engram-store: unexpected argument " << positional[0] << "\n";
    return 2;
  }
  dsv4::engram::TuneMallocForLargeMessages();
  return Run();
}
