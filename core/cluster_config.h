// The cluster YAML (cluster-configs/*.yaml): the target hardware tree (supernodes → nodes →
// chips with a link class per tier), the chip model, the MPI rank roles and the settings
// of the engine, the Engram memory nodes and the coordinator.
//
// Every key is validated on load and unknown keys are errors. Every error names the file,
// the 1-based line and the key path:
//   cluster-configs/local.yaml:7: topology.chips_per_node: expected a positive integer, got "four"
// Relative paths (hardware, tls, token and key files) are relative to the YAML file.
//
// Schema (required keys marked *; everything else has the default shown):
//   name*: local
//   description: ""
//   hardware*: hardware/ascend-950dt.yaml
//   topology*:
//     supernodes*: 1                 # compact form: counts ...
//     nodes_per_supernode*: 1
//     chips_per_node*: 2
//     hosts: [localhost]             # optional: one host per node, in node order
//     # ... or an explicit list:  supernodes: [{nodes: [{chips: 8, host: a}, {chips: 4}]}]
//     links*:                        # per chip, one direction
//       intra_node*:      {bandwidth_GBps*: 392, latency_us*: 1.0, source: "..."}
//       intra_supernode*: {...}
//       inter_supernode*: {...}
//   roles*:
//     attention_ranks*: 1            # MPI ranks 0..A-1 attend, ranks A..A+E-1 are experts
//     expert_ranks*: 1
//     rank_chips: [0, 1]             # optional global chip index of each rank (default r → r)
//   engine:
//     max_seqs_per_rank: 64
//     max_seq_len: 4096
//     kv_budget_tokens: 65536        # must hold at least one max_seq_len sequence
//     chunked_prefill_tokens: 512
//     micro_batches: 2
//     dispatch: flat                 # flat | hierarchical
//     low_latency_tokens: 128        # exchanges of at most this many tokens per rank skip
//                                    # the count round (fixed blocks per peer); 0 = never
//     low_latency_capacity: 0        # records per peer block (0 = low_latency_tokens);
//                                    # more go in a second message, never dropped
//     progress: calls                # calls | thread | auto: what advances in-flight
//                                    # exchanges (auto: thread when ranks span hosts)
//     placement: {policy: hierarchical, redundant_experts: 0}   # hierarchical | global
//     max_step_seconds: 300          # serving: a longer step stops the heartbeats, so the
//                                    # coordinator declares the engine hung and relaunches it
//   engram:
//     servers: []                    # host:port of memory nodes; empty = local tables
//     replication: 1                 # ≤ number of servers when there are servers
//     memory_node_ram_GB: 512
//     tls: {cert: "", key: "", ca: ""}   # memory nodes serve TLS with cert+key (both or
//                                    # neither); clients trust ca (default: cert, self-signed)
//     token_file: ""                 # bearer token memory nodes require and clients send
//   coordinator:
//     listen: 127.0.0.1:50051        # addresses are host:port or unix:path
//     admin_listen: 127.0.0.1:50052
//     engine_listen: 127.0.0.1:50053 # EngineControl (engines only; needs the engine token)
//     engine_token_file: ""          # the engine credential; created (0600) when absent
//     metrics_listen: 127.0.0.1:9464
//     max_queue: 256
//     max_restarts: 3                # per launched engine
//     engines: 1                     # engine units launched, each with the roles above
//     tls: {cert: "", key: ""}       # both or neither
//     auth_token_file: ""            # deprecated: one API key named "default"
//     api_keys_file: ""              # "<name> <token>" a line, mode 0600; "" = no API keys
//     admin_token_file: <yaml stem>.admin-token  # created (0600) when missing
#ifndef DSV4_CORE_CLUSTER_CONFIG_H_
#define DSV4_CORE_CLUSTER_CONFIG_H_

#include <array>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/hardware.h"

namespace dsv4 {

// The tier of the tree a transfer between two chips crosses.
enum class LinkClass { kIntraNode = 0, kIntraSupernode = 1, kInterSupernode = 2 };
inline constexpr int kNumLinkClasses = 3;
const char* LinkClassName(LinkClass link);  // "intra_node", the YAML key

struct LinkSpec {
  double bandwidth = 0;  // bytes/s per chip, one direction
  double latency = 0;    // seconds
  std::string source;
};

struct NodeSpec {
  int chips = 0;
  std::string host;  // empty when not given
};

struct SupernodeSpec {
  std::vector<NodeSpec> nodes;
};

struct TopologySpec {
  std::vector<SupernodeSpec> supernodes;  // the compact form is expanded into this
  std::array<LinkSpec, kNumLinkClasses> links;

  const LinkSpec& link(LinkClass c) const { return links[static_cast<int>(c)]; }
  int num_nodes() const;
  int num_chips() const;
};

struct RolesSpec {
  int attention_ranks = 1;
  int expert_ranks = 1;
  std::vector<int> rank_chips;  // empty: rank r runs on global chip r

  int num_ranks() const { return attention_ranks + expert_ranks; }
};

enum class DispatchMode { kFlat, kHierarchical };
enum class PlacementPolicy { kHierarchical, kGlobal };  // EPLB policies
enum class ProgressMode { kAuto, kCalls, kThread };     // see EngineSpec::progress

struct EngineSpec {
  int max_seqs_per_rank = 64;
  int max_seq_len = 4096;
  int kv_budget_tokens = 65536;
  int chunked_prefill_tokens = 512;
  int micro_batches = 2;
  DispatchMode dispatch = DispatchMode::kFlat;
  int low_latency_tokens = 128;
  int low_latency_capacity = 0;
  // A progress thread per rank advances in-flight exchanges while the rank computes;
  // without it (kCalls) they advance only inside the rank's own MPI calls. kAuto runs it
  // when the ranks span several hosts: over TCP a message moves only while its sender is in
  // MPI, and the thread cut attention ranks' blocked time by half (bench/netns_overlap.sh);
  // on one host Open MPI's shared memory lets receivers pull large messages themselves,
  // and the thread's polling cost more compute than it saved (bench_engine). Not the
  // default: an engine started by Slurm's srun with the thread hung in a test (not
  // understood yet), where mpirun-launched ones did not.
  ProgressMode progress = ProgressMode::kCalls;
  PlacementPolicy placement = PlacementPolicy::kHierarchical;
  int redundant_experts = 0;
  // Threads of each engine rank's kernels; 0 = the cores the rank may run on (its affinity
  // mask: mpirun's binding decides).
  int threads_per_rank = 0;
  // Serving: the longest step before the leader stops heartbeating (a rank stuck on a dead
  // link must not hang the engine for ever).
  int max_step_seconds = 300;
};

struct EngramSpec {
  std::vector<std::string> servers;  // host:port; empty = tables held locally
  int replication = 1;
  double memory_node_ram = 512e9;  // bytes
  // Resolved paths; empty = off. Memory nodes hold the model's weights: secure them.
  std::string tls_cert, tls_key;  // memory nodes: TLS server certificate and key
  std::string tls_ca;             // clients: CA they trust (defaults to tls_cert)
  std::string token_file;         // bearer token required by nodes, sent by clients

  bool remote() const { return !servers.empty(); }
};

struct CoordinatorSpec {
  std::string listen = "127.0.0.1:50051";
  std::string admin_listen = "127.0.0.1:50052";
  std::string engine_listen = "127.0.0.1:50053";  // the engines' EngineControl listener
  std::string engine_token_file;  // resolved path; empty = launched engines get a fresh token
  std::string metrics_listen = "127.0.0.1:9464";
  int max_queue = 256;
  int max_restarts = 3;
  int engines = 1;
  std::string tls_cert;  // resolved paths; both empty = plaintext
  std::string tls_key;
  std::string auth_token_file;   // resolved path; deprecated: one API key named "default"
  std::string api_keys_file;     // resolved path; empty (and no auth_token_file) = no auth
  std::string admin_token_file;  // resolved path; default <yaml stem>.admin-token beside it
};

struct ClusterConfig {
  std::string path;  // file it was loaded from
  std::string name;
  std::string description;
  HardwareSpec hardware;  // hardware.path is the resolved hardware file
  TopologySpec topology;
  RolesSpec roles;
  EngineSpec engine;
  EngramSpec engram;
  CoordinatorSpec coordinator;
};

// Parses cluster YAML text. `source` names the file in errors and anchors relative paths.
// A config that loads always yields a valid Topology (core/topology.h).
absl::StatusOr<ClusterConfig> ParseClusterConfig(const std::string& yaml_text,
                                                 const std::string& source);
// Loads a cluster YAML file; NotFound when it, or the hardware file it names, is missing.
absl::StatusOr<ClusterConfig> LoadClusterConfig(const std::string& path);

}  // namespace dsv4

#endif  // DSV4_CORE_CLUSTER_CONFIG_H_
