#include "core/cluster_config.h"

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <limits>
#include <set>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "core/status_macros.h"
#include "core/topology.h"
#include "core/yaml_reader.h"

namespace dsv4 {
namespace {

// Guards against a typo such as `chips_per_node: 80000000` allocating the tree.
constexpr int64_t kMaxChips = int64_t{1} << 22;

std::string ResolvePath(const std::string& yaml_file, const std::string& path) {
  if (path.empty() || std::filesystem::path(path).is_absolute()) return path;
  return (std::filesystem::path(yaml_file).parent_path() / path).lexically_normal().string();
}

// "" when `address` is host:port (port 1..65535) or unix:path; otherwise the problem.
std::string AddressProblem(const std::string& address) {
  if (address.rfind("unix:", 0) == 0) return address.size() > 5 ? "" : "unix: needs a path";
  const size_t colon = address.rfind(':');
  int port = 0;
  if (colon == std::string::npos || colon == 0 ||
      !absl::SimpleAtoi(address.substr(colon + 1), &port) || port < 1 || port > 65535) {
    return absl::StrCat("expected host:port (port 1..65535) or unix:path, got \"", address, "\"");
  }
  return "";
}

std::string ReadAddress(const YamlMap& map, absl::string_view key, const std::string& fallback) {
  // An unreadable value gives the (valid) fallback, so the check runs on what was read.
  std::string address = map.String(key, fallback);
  if (const std::string problem = AddressProblem(address); !problem.empty()) {
    map.Fail(key, problem);
  }
  return address;
}

LinkSpec ReadLink(const YamlMap& links, absl::string_view key) {
  const YamlMap link =
      links.Map(key, {"bandwidth_GBps", "latency_us", "source"}, /*required=*/true);
  LinkSpec out;
  out.bandwidth = link.Number("bandwidth_GBps", NumberRule::kPositive) * 1e9;
  out.latency = link.Number("latency_us", NumberRule::kNonNegative) * 1e-6;
  out.source = link.String("source", "");
  return out;
}

// The explicit form: supernodes: [{nodes: [{chips: 8, host: a}, ...]}, ...].
void ReadSupernodeList(const YamlMap& topo, TopologySpec& spec) {
  YamlReader& reader = topo.reader();
  // Checks across keys run only on what this list read without error.
  const int errors = reader.error_count();
  for (absl::string_view key : {"nodes_per_supernode", "chips_per_node", "hosts"}) {
    if (topo.Has(key)) {
      topo.Fail(key,
                "not allowed with an explicit supernodes list (give chips and host "
                "per node in the list)");
    }
  }
  const YAML::Node list = topo.Get("supernodes");
  if (list.size() == 0) topo.Fail("supernodes", "expected at least one supernode");
  for (const YAML::Node& item : list) {
    const std::string sn_path =
        absl::StrCat(topo.Path("supernodes"), "[", spec.supernodes.size(), "]");
    const YamlMap sn(&reader, item, sn_path, {"nodes"});
    if (!sn.Has("nodes")) sn.Fail("nodes", "missing required key");
    const YAML::Node nodes = sn.Get("nodes");
    if (reader.error_count() == errors && (!nodes.IsSequence() || nodes.size() == 0)) {
      sn.Fail("nodes", "expected a non-empty list of {chips: N, host: name}");
    }
    if (reader.error_count() > errors) return;
    SupernodeSpec& out = spec.supernodes.emplace_back();
    for (const YAML::Node& node_item : nodes) {
      const YamlMap node(&reader, node_item,
                         absl::StrCat(sn.Path("nodes"), "[", out.nodes.size(), "]"),
                         {"chips", "host"});
      NodeSpec& node_spec = out.nodes.emplace_back();
      node_spec.chips = node.Int("chips", NumberRule::kPositive);
      node_spec.host = node.String("host", "");
      if (reader.error_count() == errors && node.Has("host") && node_spec.host.empty()) {
        node.Fail("host", "must not be empty");
      }
    }
  }
}

// The compact form: supernodes × nodes_per_supernode × chips_per_node, optional hosts.
void ReadCompactTopology(const YamlMap& topo, TopologySpec& spec) {
  const int errors = topo.reader().error_count();
  const int supernodes = topo.Int("supernodes", NumberRule::kPositive);
  const int nodes_per = topo.Int("nodes_per_supernode", NumberRule::kPositive);
  const int chips_per = topo.Int("chips_per_node", NumberRule::kPositive);
  const std::vector<std::string> hosts = topo.Strings("hosts");
  if (topo.reader().error_count() > errors) return;
  const int64_t nodes = int64_t{supernodes} * nodes_per;
  if (nodes * chips_per > kMaxChips) {
    topo.Fail("supernodes", absl::StrCat(supernodes, " × ", nodes_per, " × ", chips_per,
                                         " chips is more than the supported ", kMaxChips));
    return;
  }
  if (topo.Has("hosts") && static_cast<int64_t>(hosts.size()) != nodes) {
    topo.Fail("hosts", absl::StrCat("has ", hosts.size(), " entries, expected one per node (",
                                    supernodes, " × ", nodes_per, " = ", nodes, ")"));
    return;
  }
  for (const std::string& host : hosts) {
    if (host.empty()) {
      topo.Fail("hosts", "host names must not be empty");
      return;
    }
  }
  spec.supernodes.resize(supernodes);
  int node_index = 0;
  for (SupernodeSpec& sn : spec.supernodes) {
    sn.nodes.resize(nodes_per);
    for (NodeSpec& node : sn.nodes) {
      node.chips = chips_per;
      if (!hosts.empty()) node.host = hosts[node_index];
      ++node_index;
    }
  }
}

TopologySpec ReadTopology(const YamlMap& root) {
  const YamlMap topo = root.Map(
      "topology", {"supernodes", "nodes_per_supernode", "chips_per_node", "hosts", "links"},
      /*required=*/true);
  TopologySpec spec;
  const int errors = topo.reader().error_count();
  if (topo.Get("supernodes").IsSequence()) {
    ReadSupernodeList(topo, spec);
  } else {
    ReadCompactTopology(topo, spec);
  }
  if (topo.reader().error_count() == errors && spec.num_chips() > kMaxChips) {
    topo.Fail("supernodes", absl::StrCat("the topology has ", spec.num_chips(),
                                         " chips, more than the supported ", kMaxChips));
  }
  const YamlMap links =
      topo.Map("links", {"intra_node", "intra_supernode", "inter_supernode"}, /*required=*/true);
  for (int c = 0; c < kNumLinkClasses; ++c) {
    spec.links[c] = ReadLink(links, LinkClassName(static_cast<LinkClass>(c)));
  }
  return spec;
}

RolesSpec ReadRoles(const YamlMap& root) {
  const YamlMap roles =
      root.Map("roles", {"attention_ranks", "expert_ranks", "rank_chips"}, /*required=*/true);
  RolesSpec spec;
  spec.attention_ranks = roles.Int("attention_ranks", NumberRule::kPositive);
  spec.expert_ranks = roles.Int("expert_ranks", NumberRule::kPositive);
  if (roles.Has("rank_chips")) {
    const YAML::Node list = roles.Get("rank_chips");
    if (!list.IsSequence()) roles.Fail("rank_chips", "expected a list of chip indices");
    for (const YAML::Node& item : list) {
      const std::optional<int> chip =
          ReadYamlInt(roles.reader(), item,
                      absl::StrCat(roles.Path("rank_chips"), "[", spec.rank_chips.size(), "]"),
                      NumberRule::kNonNegative);
      if (!chip) break;
      spec.rank_chips.push_back(*chip);
    }
  }
  return spec;
}

EngineSpec ReadEngine(const YamlMap& root) {
  const YamlMap engine = root.Map(
      "engine", {"max_seqs_per_rank", "max_seq_len", "kv_budget_tokens", "chunked_prefill_tokens",
                 "micro_batches", "dispatch", "low_latency_tokens", "low_latency_capacity",
                 "progress", "placement", "threads_per_rank", "max_step_seconds"});
  EngineSpec spec;
  const EngineSpec defaults;
  const int errors = engine.reader().error_count();
  spec.max_seqs_per_rank =
      engine.Int("max_seqs_per_rank", NumberRule::kPositive, defaults.max_seqs_per_rank);
  spec.max_seq_len = engine.Int("max_seq_len", NumberRule::kPositive, defaults.max_seq_len);
  spec.kv_budget_tokens =
      engine.Int("kv_budget_tokens", NumberRule::kPositive, defaults.kv_budget_tokens);
  spec.chunked_prefill_tokens =
      engine.Int("chunked_prefill_tokens", NumberRule::kPositive, defaults.chunked_prefill_tokens);
  spec.micro_batches = engine.Int("micro_batches", NumberRule::kPositive, defaults.micro_batches);
  spec.low_latency_tokens =
      engine.Int("low_latency_tokens", NumberRule::kNonNegative, defaults.low_latency_tokens);
  spec.low_latency_capacity =
      engine.Int("low_latency_capacity", NumberRule::kNonNegative, defaults.low_latency_capacity);
  spec.threads_per_rank =
      engine.Int("threads_per_rank", NumberRule::kNonNegative, defaults.threads_per_rank);
  spec.max_step_seconds =
      engine.Int("max_step_seconds", NumberRule::kPositive, defaults.max_step_seconds);
  if (engine.reader().error_count() == errors && spec.kv_budget_tokens < spec.max_seq_len) {
    engine.Fail("kv_budget_tokens",
                absl::StrCat("must hold at least one sequence of max_seq_len = ", spec.max_seq_len,
                             " tokens, got ", spec.kv_budget_tokens));
  }

  const std::string dispatch = engine.String("dispatch", "flat");
  if (dispatch == "hierarchical") {
    spec.dispatch = DispatchMode::kHierarchical;
  } else if (dispatch != "flat") {
    engine.Fail("dispatch", absl::StrCat("expected flat or hierarchical, got \"", dispatch, "\""));
  }

  const std::string progress = engine.String("progress", "calls");
  if (progress == "thread") {
    spec.progress = ProgressMode::kThread;
  } else if (progress == "auto") {
    spec.progress = ProgressMode::kAuto;
  } else if (progress != "calls") {
    engine.Fail("progress", absl::StrCat("expected auto, calls or thread, got \"", progress, "\""));
  }

  const YamlMap placement = engine.Map("placement", {"policy", "redundant_experts"});
  const std::string policy = placement.String("policy", "hierarchical");
  if (policy == "global") {
    spec.placement = PlacementPolicy::kGlobal;
  } else if (policy != "hierarchical") {
    placement.Fail("policy", absl::StrCat("expected hierarchical or global, got \"", policy, "\""));
  }
  spec.redundant_experts = placement.Int("redundant_experts", NumberRule::kNonNegative, 0);
  return spec;
}

EngramSpec ReadEngram(const YamlMap& root, const std::string& yaml_file) {
  const YamlMap engram =
      root.Map("engram", {"servers", "replication", "memory_node_ram_GB", "tls", "token_file"});
  EngramSpec spec;
  YamlReader& reader = engram.reader();
  const int errors = reader.error_count();
  if (engram.Has("servers")) {
    const YAML::Node list = engram.Get("servers");
    if (!list.IsSequence()) engram.Fail("servers", "expected a list of host:port addresses");
    std::set<std::string> seen;
    for (const YAML::Node& item : list) {
      const std::string path = absl::StrCat(engram.Path("servers"), "[", spec.servers.size(), "]");
      const std::optional<std::string> address = ReadYamlString(reader, item, path);
      if (!address) break;
      if (const std::string problem = AddressProblem(*address); !problem.empty()) {
        reader.Fail(item, path, problem);
      } else if (!seen.insert(*address).second) {
        reader.Fail(item, path, absl::StrCat("duplicate server \"", *address, "\""));
      }
      spec.servers.push_back(*address);
    }
  }
  spec.replication = engram.Int("replication", NumberRule::kPositive, 1);
  if (reader.error_count() == errors && spec.remote() &&
      spec.replication > static_cast<int>(spec.servers.size())) {
    engram.Fail("replication", absl::StrCat("is ", spec.replication, " but there are only ",
                                            spec.servers.size(), " servers"));
  }
  spec.memory_node_ram =
      engram.Number("memory_node_ram_GB", NumberRule::kPositive, spec.memory_node_ram / 1e9) * 1e9;
  const YamlMap tls = engram.Map("tls", {"cert", "key", "ca"});
  const int tls_errors = reader.error_count();
  const std::string cert = tls.String("cert", ""), key = tls.String("key", "");
  if (reader.error_count() == tls_errors && cert.empty() != key.empty()) {
    engram.Fail("tls", "cert and key must be given together");
  }
  spec.tls_cert = ResolvePath(yaml_file, cert);
  spec.tls_key = ResolvePath(yaml_file, key);
  spec.tls_ca = ResolvePath(yaml_file, tls.String("ca", cert));
  spec.token_file = ResolvePath(yaml_file, engram.String("token_file", ""));
  return spec;
}

CoordinatorSpec ReadCoordinator(const YamlMap& root, const std::string& yaml_file) {
  const YamlMap coord =
      root.Map("coordinator", {"listen", "admin_listen", "metrics_listen", "max_queue",
                               "max_restarts", "engines", "tls", "auth_token_file", "api_keys_file",
                               "admin_token_file", "engine_listen", "engine_token_file"});
  CoordinatorSpec spec;
  const CoordinatorSpec defaults;
  spec.listen = ReadAddress(coord, "listen", defaults.listen);
  spec.admin_listen = ReadAddress(coord, "admin_listen", defaults.admin_listen);
  spec.metrics_listen = ReadAddress(coord, "metrics_listen", defaults.metrics_listen);
  spec.engine_listen = ReadAddress(coord, "engine_listen", defaults.engine_listen);
  if (spec.admin_listen == spec.listen) {
    coord.Fail("admin_listen", "must differ from listen");
  } else if (spec.metrics_listen == spec.listen || spec.metrics_listen == spec.admin_listen) {
    coord.Fail("metrics_listen", "must differ from listen and admin_listen");
  } else if (spec.engine_listen == spec.listen || spec.engine_listen == spec.admin_listen ||
             spec.engine_listen == spec.metrics_listen) {
    coord.Fail("engine_listen", "must differ from listen, admin_listen and metrics_listen");
  }
  spec.max_queue = coord.Int("max_queue", NumberRule::kPositive, defaults.max_queue);
  spec.max_restarts = coord.Int("max_restarts", NumberRule::kNonNegative, defaults.max_restarts);
  spec.engines = coord.Int("engines", NumberRule::kPositive, defaults.engines);

  const YamlMap tls = coord.Map("tls", {"cert", "key"});
  const int tls_errors = coord.reader().error_count();
  const std::string cert = tls.String("cert", "");
  const std::string key = tls.String("key", "");
  if (coord.reader().error_count() == tls_errors && cert.empty() != key.empty()) {
    coord.Fail("tls", "cert and key must be given together");
  }
  spec.tls_cert = ResolvePath(yaml_file, cert);
  spec.tls_key = ResolvePath(yaml_file, key);
  spec.auth_token_file = ResolvePath(yaml_file, coord.String("auth_token_file", ""));
  spec.api_keys_file = ResolvePath(yaml_file, coord.String("api_keys_file", ""));
  spec.admin_token_file = ResolvePath(
      yaml_file, coord.String("admin_token_file",
                              std::filesystem::path(yaml_file).stem().string() + ".admin-token"));
  spec.engine_token_file = ResolvePath(yaml_file, coord.String("engine_token_file", ""));
  return spec;
}

absl::StatusOr<ClusterConfig> Parse(YamlReader& reader) {
  ClusterConfig config;
  config.path = reader.file();
  const YamlMap root = reader.Root(
      {"name", "description", "hardware", "topology", "roles", "engine", "engram", "coordinator"});
  // "must not be empty" only for a value read as a string: a missing or malformed one has
  // its own error.
  int errors = reader.error_count();
  config.name = root.String("name");
  if (reader.error_count() == errors && config.name.empty()) root.Fail("name", "must not be empty");
  config.description = root.String("description", "");
  errors = reader.error_count();
  const std::string hardware = root.String("hardware");
  if (reader.error_count() == errors && hardware.empty()) {
    root.Fail("hardware", "must name a hardware YAML file");
  }
  config.topology = ReadTopology(root);
  config.roles = ReadRoles(root);
  config.engine = ReadEngine(root);
  config.engram = ReadEngram(root, reader.file());
  config.coordinator = ReadCoordinator(root, reader.file());
  RETURN_IF_ERROR(reader.status());

  // The hardware file's own errors name that file and line; say where it was named too.
  const std::string named_at = root.Where("hardware");
  const std::string hardware_path = ResolvePath(reader.file(), hardware);
  absl::StatusOr<HardwareSpec> hw = LoadHardwareSpec(hardware_path);
  if (absl::IsNotFound(hw.status())) {
    return absl::NotFoundError(
        absl::StrCat(named_at, ": hardware: cannot open hardware file \"", hardware_path, "\""));
  }
  if (!hw.ok()) {
    return absl::Status(
        hw.status().code(),
        absl::StrCat(hw.status().message(), " (hardware file named at ", named_at, ")"));
  }
  config.hardware = *std::move(hw);

  // Rank and chip counts are checked where the tree is built, so hand-built configs get
  // the same checks.
  if (absl::StatusOr<Topology> topology = Topology::Build(config); !topology.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(root.Where("roles"), ": roles: ", topology.status().message()));
  }
  return config;
}

absl::StatusOr<ClusterConfig> ParseGuarded(YamlReader& reader) {
  try {
    return Parse(reader);
  } catch (const YAML::Exception& e) {  // defensive: the reader checks node types first
    return absl::InternalError(absl::StrCat(reader.file(), ": unexpected YAML error: ", e.what()));
  }
}

}  // namespace

const char* LinkClassName(LinkClass link) {
  switch (link) {
    case LinkClass::kIntraNode:
      return "intra_node";
    case LinkClass::kIntraSupernode:
      return "intra_supernode";
    case LinkClass::kInterSupernode:
      return "inter_supernode";
  }
  return "?";
}

int TopologySpec::num_nodes() const {
  int n = 0;
  for (const SupernodeSpec& sn : supernodes) n += static_cast<int>(sn.nodes.size());
  return n;
}

int TopologySpec::num_chips() const {
  int64_t n = 0;
  for (const SupernodeSpec& sn : supernodes) {
    for (const NodeSpec& node : sn.nodes) n += node.chips;
  }
  return static_cast<int>(std::min<int64_t>(n, std::numeric_limits<int>::max()));
}

absl::StatusOr<ClusterConfig> ParseClusterConfig(const std::string& yaml_text,
                                                 const std::string& source) {
  YamlReader reader(yaml_text, source);
  return ParseGuarded(reader);
}

absl::StatusOr<ClusterConfig> LoadClusterConfig(const std::string& path) {
  YamlReader reader = YamlReader::FromFile(path);
  return ParseGuarded(reader);
}

}  // namespace dsv4
