// The cluster and hardware YAML loaders: every shipped file loads with the published
// figures, and every kind of mistake gives an error naming the file, line and key.
#include "core/cluster_config.h"

#include <filesystem>
#include <fstream>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_replace.h"
#include "core/hardware.h"
#include "core/topology.h"
#include "core/yaml_reader.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace dsv4 {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

const std::string kConfigDir = std::string(DSV4_SOURCE_DIR) + "/cluster-configs";
// Inline test configs pretend to live in cluster-configs/ so `hardware/...` resolves.
const std::string kInline = kConfigDir + "/inline-test.yaml";

// Lines are numbered in the comments; the error tests below rely on them.
constexpr char kValid[] = R"(name: t
hardware: hardware/ascend-950dt.yaml
topology:
  supernodes: 1
  nodes_per_supernode: 1
  chips_per_node: 4
  links:
    intra_node: {bandwidth_GBps: 392, latency_us: 1.0}
    intra_supernode: {bandwidth_GBps: 392, latency_us: 2.0}
    inter_supernode: {bandwidth_GBps: 50, latency_us: 5.0}
roles:
  attention_ranks: 1
  expert_ranks: 1
)";

std::string Edit(absl::string_view from, absl::string_view to) {
  std::string text = kValid;
  EXPECT_TRUE(absl::StrContains(text, from)) << from;
  return absl::StrReplaceAll(text, {{from, to}});
}

std::string ErrorOf(const std::string& yaml) {
  absl::StatusOr<ClusterConfig> config = ParseClusterConfig(yaml, kInline);
  EXPECT_FALSE(config.ok()) << yaml;
  return config.ok() ? "" : std::string(config.status().message());
}

std::string WriteTemp(const std::string& name, const std::string& text) {
  const std::string path = testing::TempDir() + "/" + name;
  std::ofstream(path) << text;
  return path;
}

std::vector<std::string> YamlFiles(const std::string& dir) {
  std::vector<std::string> files;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    if (entry.path().extension() == ".yaml") files.push_back(entry.path().string());
  }
  std::sort(files.begin(), files.end());
  return files;
}

TEST(ClusterConfig, EveryShippedConfigLoadsAndBuildsATopology) {
  const std::vector<std::string> files = YamlFiles(kConfigDir);
  for (const char* name : {"local", "cloudmatrix384", "atlas950-superpod", "two-supernodes-test"}) {
    EXPECT_NE(std::find(files.begin(), files.end(), kConfigDir + "/" + name + ".yaml"), files.end())
        << name;
  }
  for (const std::string& file : files) {
    absl::StatusOr<ClusterConfig> config = LoadClusterConfig(file);
    ASSERT_TRUE(config.ok()) << config.status();
    absl::StatusOr<Topology> topology = Topology::Build(*config);
    ASSERT_TRUE(topology.ok()) << file << ": " << topology.status();
    for (const LinkSpec& link : config->topology.links) {
      EXPECT_GT(link.bandwidth, 0) << file;
      EXPECT_FALSE(link.source.empty()) << file;
    }
  }
}

TEST(HardwareSpec, EveryShippedFileLoadsWithSources) {
  const std::vector<std::string> files = YamlFiles(kConfigDir + "/hardware");
  for (const char* name : {"ascend-910c", "ascend-950pr", "ascend-950dt", "h800", "h100", "h200"}) {
    EXPECT_NE(std::find(files.begin(), files.end(), kConfigDir + "/hardware/" + name + ".yaml"),
              files.end())
        << name;
  }
  for (const std::string& file : files) {
    absl::StatusOr<HardwareSpec> hw = LoadHardwareSpec(file);
    ASSERT_TRUE(hw.ok()) << hw.status();
    for (const Figure* figure :
         {&hw->peak_bf16, &hw->hbm_capacity, &hw->hbm_bandwidth, &hw->scale_up_bandwidth,
          &hw->efficiency_gemm, &hw->efficiency_attention, &hw->efficiency_memory_bound,
          &hw->efficiency_all_to_all}) {
      EXPECT_GT(figure->value, 0) << file;
      EXPECT_FALSE(figure->source.empty()) << file;
    }
  }
}

TEST(HardwareSpec, AscendFiguresAndFallbacks) {
  absl::StatusOr<HardwareSpec> dt = LoadHardwareSpec(kConfigDir + "/hardware/ascend-950dt.yaml");
  ASSERT_TRUE(dt.ok()) << dt.status();
  EXPECT_EQ(dt->name, "Ascend 950DT");
  EXPECT_DOUBLE_EQ(dt->PeakFlops(ComputeDtype::kFp8), 1e15);
  EXPECT_DOUBLE_EQ(dt->PeakFlops(ComputeDtype::kFp4), 2e15);
  EXPECT_DOUBLE_EQ(dt->PeakFlops(ComputeDtype::kBf16), 5e14);
  EXPECT_DOUBLE_EQ(dt->PeakFlops(ComputeDtype::kFp32), 5e14);  // no fp32 figure: bf16 rate
  EXPECT_DOUBLE_EQ(dt->hbm_capacity.value, 144e9);
  EXPECT_DOUBLE_EQ(dt->hbm_bandwidth.value, 4e12);
  EXPECT_DOUBLE_EQ(dt->scale_up_bandwidth.value, 1e12);
  EXPECT_FALSE(dt->scale_out_bandwidth.has_value());
  EXPECT_THAT(dt->peak_fp8->source, HasSubstr("Huawei Connect 2025"));
  EXPECT_THAT(dt->peak_bf16.source, StartsWith("assumption"));

  absl::StatusOr<HardwareSpec> pr = LoadHardwareSpec(kConfigDir + "/hardware/ascend-950pr.yaml");
  ASSERT_TRUE(pr.ok()) << pr.status();
  EXPECT_DOUBLE_EQ(pr->hbm_capacity.value, 128e9);
  EXPECT_DOUBLE_EQ(pr->hbm_bandwidth.value, 1.6e12);

  absl::StatusOr<HardwareSpec> c = LoadHardwareSpec(kConfigDir + "/hardware/ascend-910c.yaml");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_DOUBLE_EQ(c->PeakFlops(ComputeDtype::kBf16), 752e12);
  // No FP8/FP4 units: 1-byte GEMMs run as INT8, and the report says so via the figure.
  EXPECT_DOUBLE_EQ(c->PeakFlops(ComputeDtype::kFp8), 1504e12);
  EXPECT_DOUBLE_EQ(c->PeakFlops(ComputeDtype::kFp4), 1504e12);
  EXPECT_EQ(&c->PeakFlopsFigure(ComputeDtype::kFp4), &*c->peak_int8);
  EXPECT_EQ(c->dies_per_chip.value, 2);
  EXPECT_DOUBLE_EQ(c->hbm_capacity.value, 128e9);
  EXPECT_DOUBLE_EQ(c->hbm_bandwidth.value, 3.2e12);
  EXPECT_DOUBLE_EQ(c->scale_up_bandwidth.value, 392e9);
  EXPECT_DOUBLE_EQ(c->scale_out_bandwidth->value, 50e9);
}

TEST(HardwareSpec, NvidiaFiguresAndEfficiencies) {
  absl::StatusOr<HardwareSpec> h800 = LoadHardwareSpec(kConfigDir + "/hardware/h800.yaml");
  ASSERT_TRUE(h800.ok()) << h800.status();
  EXPECT_DOUBLE_EQ(h800->PeakFlops(ComputeDtype::kBf16), 989e12);
  EXPECT_DOUBLE_EQ(h800->PeakFlops(ComputeDtype::kFp8), 1979e12);
  EXPECT_DOUBLE_EQ(h800->PeakFlops(ComputeDtype::kFp4), 1979e12);  // Hopper: no FP4
  EXPECT_DOUBLE_EQ(h800->PeakFlops(ComputeDtype::kFp32), 67e12);
  EXPECT_DOUBLE_EQ(h800->hbm_capacity.value, 80e9);
  EXPECT_DOUBLE_EQ(h800->hbm_bandwidth.value, 3.35e12);
  EXPECT_DOUBLE_EQ(h800->scale_up_bandwidth.value, 200e9);
  EXPECT_DOUBLE_EQ(h800->Efficiency(OpClass::kGemm).value, 0.70);
  EXPECT_DOUBLE_EQ(h800->Efficiency(OpClass::kAttention).value, 0.60);
  EXPECT_DOUBLE_EQ(h800->Efficiency(OpClass::kMemoryBound).value, 0.85);
  EXPECT_DOUBLE_EQ(h800->Efficiency(OpClass::kAllToAll).value, 0.525);  // sustained (fitted)
  EXPECT_THAT(h800->Efficiency(OpClass::kAllToAll).source, HasSubstr("DeepEP"));
  EXPECT_THAT(h800->Efficiency(OpClass::kAllToAll).source, HasSubstr("bench_planner_validation"));
  EXPECT_DOUBLE_EQ(h800->kernel_floor_graph.value, 5e-6);
  EXPECT_DOUBLE_EQ(h800->dispatch_overhead.value, 30e-6);
  EXPECT_DOUBLE_EQ(h800->AchievableFlops(ComputeDtype::kFp8, OpClass::kGemm), 1979e12 * 0.70);
  EXPECT_DOUBLE_EQ(h800->AchievableHbmBandwidth(), 3.35e12 * 0.85);

  absl::StatusOr<HardwareSpec> h100 = LoadHardwareSpec(kConfigDir + "/hardware/h100.yaml");
  ASSERT_TRUE(h100.ok()) << h100.status();
  EXPECT_DOUBLE_EQ(h100->scale_up_bandwidth.value, 450e9);
  EXPECT_DOUBLE_EQ(h100->host_memory_per_chip->value, 250e9);

  absl::StatusOr<HardwareSpec> h200 = LoadHardwareSpec(kConfigDir + "/hardware/h200.yaml");
  ASSERT_TRUE(h200.ok()) << h200.status();
  EXPECT_DOUBLE_EQ(h200->hbm_capacity.value, 141e9);
  EXPECT_DOUBLE_EQ(h200->hbm_bandwidth.value, 4.8e12);
  EXPECT_STREQ(OpClassName(OpClass::kMemoryBound), "memory_bound");
  EXPECT_STREQ(ComputeDtypeName(ComputeDtype::kFp4), "fp4");
}

TEST(ClusterConfig, LocalDefault) {
  absl::StatusOr<ClusterConfig> config = LoadClusterConfig(kConfigDir + "/local.yaml");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->name, "local");
  EXPECT_EQ(config->hardware.name, "Ascend 950DT");
  EXPECT_EQ(config->hardware.path, kConfigDir + "/hardware/ascend-950dt.yaml");
  EXPECT_EQ(config->topology.num_chips(), 2);
  EXPECT_EQ(config->topology.supernodes[0].nodes[0].host, "localhost");
  EXPECT_EQ(config->roles.attention_ranks, 1);
  EXPECT_EQ(config->roles.expert_ranks, 1);
  EXPECT_EQ(config->engine.max_seqs_per_rank, 64);
  EXPECT_EQ(config->engine.max_seq_len, 4096);
  EXPECT_EQ(config->engine.kv_budget_tokens, 65536);
  EXPECT_EQ(config->engine.chunked_prefill_tokens, 512);
  EXPECT_EQ(config->engine.micro_batches, 2);
  EXPECT_EQ(config->engine.threads_per_rank, 0);  // the rank's share of its host's cores
  EXPECT_EQ(config->engine.dispatch, DispatchMode::kFlat);
  EXPECT_EQ(config->engine.placement, PlacementPolicy::kHierarchical);
  EXPECT_FALSE(config->engram.remote());
  EXPECT_DOUBLE_EQ(config->engram.memory_node_ram, 512e9);
  EXPECT_EQ(config->coordinator.listen, "127.0.0.1:50051");
  EXPECT_EQ(config->coordinator.admin_listen, "127.0.0.1:50052");
  EXPECT_EQ(config->coordinator.metrics_listen, "127.0.0.1:9464");
  EXPECT_EQ(config->coordinator.max_queue, 256);
  EXPECT_EQ(config->coordinator.max_restarts, 3);
  EXPECT_TRUE(config->coordinator.tls_cert.empty());
  EXPECT_TRUE(config->coordinator.auth_token_file.empty());
}

TEST(ClusterConfig, ShippedTopologies) {
  absl::StatusOr<ClusterConfig> cm = LoadClusterConfig(kConfigDir + "/cloudmatrix384.yaml");
  ASSERT_TRUE(cm.ok()) << cm.status();
  EXPECT_EQ(cm->hardware.name, "Ascend 910C");
  EXPECT_EQ(cm->topology.supernodes.size(), 1u);
  EXPECT_EQ(cm->topology.num_nodes(), 48);
  EXPECT_EQ(cm->topology.num_chips(), 384);
  EXPECT_DOUBLE_EQ(cm->topology.link(LinkClass::kIntraSupernode).bandwidth, 392e9);
  EXPECT_DOUBLE_EQ(cm->topology.link(LinkClass::kInterSupernode).bandwidth, 50e9);
  EXPECT_DOUBLE_EQ(cm->topology.link(LinkClass::kIntraSupernode).latency, 1e-6);
  EXPECT_EQ(cm->roles.num_ranks(), 384);
  EXPECT_EQ(cm->engine.placement, PlacementPolicy::kGlobal);

  absl::StatusOr<ClusterConfig> pod = LoadClusterConfig(kConfigDir + "/atlas950-superpod.yaml");
  ASSERT_TRUE(pod.ok()) << pod.status();
  EXPECT_EQ(pod->topology.num_chips(), 8192);
  EXPECT_DOUBLE_EQ(pod->topology.link(LinkClass::kIntraSupernode).latency, 2.1e-6);

  absl::StatusOr<ClusterConfig> two = LoadClusterConfig(kConfigDir + "/two-supernodes-test.yaml");
  ASSERT_TRUE(two.ok()) << two.status();
  EXPECT_EQ(two->topology.supernodes.size(), 2u);
  EXPECT_EQ(two->topology.num_chips(), 6);
  EXPECT_EQ(two->roles.attention_ranks, 3);
  EXPECT_EQ(two->roles.expert_ranks, 3);
  EXPECT_EQ(two->engine.dispatch, DispatchMode::kHierarchical);
}

TEST(ClusterConfig, InlineValidConfigUsesDefaults) {
  absl::StatusOr<ClusterConfig> config = ParseClusterConfig(kValid, kInline);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->engine.max_seqs_per_rank, 64);
  EXPECT_EQ(config->coordinator.listen, "127.0.0.1:50051");
  EXPECT_TRUE(config->topology.link(LinkClass::kIntraNode).source.empty());
}

TEST(ClusterConfigErrors, WrongType) {
  EXPECT_EQ(ErrorOf(Edit("chips_per_node: 4", "chips_per_node: four")),
            kInline + ":6: topology.chips_per_node: expected a positive integer, got \"four\"");
  EXPECT_EQ(ErrorOf(Edit("chips_per_node: 4", "chips_per_node: 4.5")),
            kInline + ":6: topology.chips_per_node: expected a positive integer, got \"4.5\"");
  EXPECT_EQ(ErrorOf(Edit("chips_per_node: 4", "chips_per_node: [4]")),
            kInline + ":6: topology.chips_per_node: expected a positive integer, got a sequence");
  EXPECT_EQ(ErrorOf(Edit("name: t", "name: {a: 1}")),
            kInline + ":1: name: expected a string, got a map");
}

TEST(ClusterConfigErrors, UnknownKey) {
  // The misspelt key is unknown, and the key it meant is missing: both are said, by line.
  EXPECT_EQ(ErrorOf(Edit("chips_per_node: 4", "chips_per_nod: 4")),
            kInline + ":3: topology.chips_per_node: missing required key\n" + kInline +
                ":6: topology.chips_per_nod: unknown key (allowed: supernodes, "
                "nodes_per_supernode, chips_per_node, hosts, links)");
  EXPECT_THAT(ErrorOf(Edit("latency_us: 5.0}", "latency_us: 5.0, latncy: 1}")),
              StartsWith(kInline + ":10: topology.links.inter_supernode.latncy: unknown key"));
  EXPECT_THAT(ErrorOf(std::string(kValid) + "engin:\n  micro_batches: 2\n"),
              StartsWith(kInline + ":14: engin: unknown key"));
}

TEST(ClusterConfig, ThreadsPerRank) {
  absl::StatusOr<ClusterConfig> config =
      ParseClusterConfig(std::string(kValid) + "engine:\n  threads_per_rank: 3\n", kInline);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->engine.threads_per_rank, 3);
  EXPECT_EQ(ErrorOf(std::string(kValid) + "engine:\n  threads_per_rank: -1\n"),
            kInline + ":15: engine.threads_per_rank: expected a non-negative integer, got \"-1\"");
}

TEST(ClusterConfig, MaxStepSeconds) {
  absl::StatusOr<ClusterConfig> config = ParseClusterConfig(std::string(kValid), kInline);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->engine.max_step_seconds, 300);
  config = ParseClusterConfig(std::string(kValid) + "engine:\n  max_step_seconds: 5\n", kInline);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->engine.max_step_seconds, 5);
  EXPECT_EQ(ErrorOf(std::string(kValid) + "engine:\n  max_step_seconds: 0\n"),
            kInline + ":15: engine.max_step_seconds: expected a positive integer, got \"0\"");
}

TEST(ClusterConfig, DataPlaneKeys) {
  absl::StatusOr<ClusterConfig> config = ParseClusterConfig(std::string(kValid), kInline);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->engine.low_latency_tokens, 128);
  EXPECT_EQ(config->engine.low_latency_capacity, 0);
  EXPECT_EQ(config->engine.progress, ProgressMode::kCalls);
  config = ParseClusterConfig(std::string(kValid) +
                                  "engine:\n  low_latency_tokens: 0\n  low_latency_capacity: 4\n"
                                  "  progress: auto\n",
                              kInline);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->engine.low_latency_tokens, 0);
  EXPECT_EQ(config->engine.low_latency_capacity, 4);
  EXPECT_EQ(config->engine.progress, ProgressMode::kAuto);
  EXPECT_EQ(ErrorOf(std::string(kValid) + "engine:\n  progress: always\n"),
            kInline + ":15: engine.progress: expected auto, calls or thread, got \"always\"");
  EXPECT_EQ(
      ErrorOf(std::string(kValid) + "engine:\n  low_latency_capacity: -2\n"),
      kInline + ":15: engine.low_latency_capacity: expected a non-negative integer, got \"-2\"");
}

TEST(ClusterConfigErrors, DuplicateKey) {
  EXPECT_EQ(ErrorOf(Edit("  expert_ranks: 1\n", "  expert_ranks: 1\n  expert_ranks: 2\n")),
            kInline + ":14: roles.expert_ranks: duplicate key");
}

TEST(ClusterConfigErrors, NegativeValue) {
  EXPECT_EQ(ErrorOf(Edit("latency_us: 2.0", "latency_us: -2")),
            kInline +
                ":9: topology.links.intra_supernode.latency_us: expected a non-negative number, "
                "got \"-2\"");
  EXPECT_EQ(ErrorOf(Edit("expert_ranks: 1", "expert_ranks: -1")),
            kInline + ":13: roles.expert_ranks: expected a positive integer, got \"-1\"");
  EXPECT_EQ(ErrorOf(Edit("{bandwidth_GBps: 50,", "{bandwidth_GBps: 0,")),
            kInline +
                ":10: topology.links.inter_supernode.bandwidth_GBps: expected a positive number, "
                "got \"0\"");
}

TEST(ClusterConfigErrors, MissingRequiredKey) {
  EXPECT_EQ(ErrorOf(Edit("  expert_ranks: 1\n", "")),
            kInline + ":11: roles.expert_ranks: missing required key");
  EXPECT_EQ(ErrorOf(Edit("hardware: hardware/ascend-950dt.yaml\n", "")),
            kInline + ":1: hardware: missing required key");
  EXPECT_EQ(ErrorOf(Edit("    inter_supernode: {bandwidth_GBps: 50, latency_us: 5.0}\n", "")),
            kInline + ":7: topology.links.inter_supernode: missing required key");
  EXPECT_EQ(ErrorOf(Edit("intra_node: {bandwidth_GBps: 392, ", "intra_node: {")),
            kInline + ":8: topology.links.intra_node.bandwidth_GBps: missing required key");
}

TEST(ClusterConfigErrors, BadYamlSyntax) {
  EXPECT_THAT(ErrorOf(Edit("{bandwidth_GBps: 50, latency_us: 5.0}", "{bandwidth_GBps: 50")),
              StartsWith(kInline + ":11: YAML syntax error: "));
  EXPECT_THAT(ErrorOf("name: t\n  bad indent: [\n"), StartsWith(kInline + ":"));
  EXPECT_EQ(ErrorOf(""), kInline + ": the file is empty");
  EXPECT_THAT(ErrorOf(std::string(kValid) + "---\nname: u\n"),
              StartsWith(kInline + ":15: expected one YAML document, found 2"));
}

// Every mistake of a file comes in one error, a line each, in file order.
TEST(ClusterConfigErrors, ReportsEveryError) {
  std::string yaml = Edit("chips_per_node: 4", "chips_per_node: four");
  yaml = absl::StrReplaceAll(yaml, {{"latency_us: 2.0", "latency_us: -2"},
                                    {"expert_ranks: 1", "expert_ranks: -1"},
                                    {"name: t", "name: t\nnmae: u"}});
  EXPECT_EQ(ErrorOf(yaml),
            kInline +
                ":2: nmae: unknown key (allowed: name, description, hardware, topology, "
                "roles, engine, engram, coordinator)\n" +
                kInline +
                ":7: topology.chips_per_node: expected a positive integer, got \"four\"\n" +
                kInline +
                ":10: topology.links.intra_supernode.latency_us: expected a non-negative number, "
                "got \"-2\"\n" +
                kInline + ":14: roles.expert_ranks: expected a positive integer, got \"-1\"");
}

// Checks across keys run on what their keys read, whatever else in the file is wrong.
TEST(ClusterConfigErrors, CrossKeyChecksBesideOtherErrors) {
  EXPECT_EQ(ErrorOf(Edit("name: t", "name: {a: 1}") +
                    "engine:\n  max_seq_len: 8192\n  kv_budget_tokens: 4096\n"
                    "coordinator:\n  tls: {cert: a.pem}\n  max_queue: 0\n"),
            kInline + ":1: name: expected a string, got a map\n" + kInline +
                ":16: engine.kv_budget_tokens: must hold at least one sequence of max_seq_len = "
                "8192 tokens, got 4096\n" +
                kInline + ":18: coordinator.tls: cert and key must be given together\n" + kInline +
                ":19: coordinator.max_queue: expected a positive integer, got \"0\"");
  // But not on a value that could not be read: no "must not be empty" for a missing name.
  EXPECT_EQ(ErrorOf(Edit("name: t\n", "")), kInline + ":1: name: missing required key");
}

// A missing or malformed section is one error, not one per key it should hold.
TEST(ClusterConfigErrors, NoErrorsThatOnlyFollowFromAnother) {
  EXPECT_EQ(ErrorOf(Edit("topology:\n  supernodes: 1\n  nodes_per_supernode: 1\n  chips_per_node: "
                         "4\n  links:\n    intra_node: {bandwidth_GBps: 392, latency_us: 1.0}\n"
                         "    intra_supernode: {bandwidth_GBps: 392, latency_us: 2.0}\n"
                         "    inter_supernode: {bandwidth_GBps: 50, latency_us: 5.0}\n",
                         "")),
            kInline + ":1: topology: missing required key");
  EXPECT_EQ(ErrorOf(Edit("roles:\n  attention_ranks: 1\n  expert_ranks: 1\n", "roles: 2\n")),
            kInline + ":11: roles: expected a map, got \"2\"");
  EXPECT_EQ(ErrorOf(Edit("  links:\n", "  links: []\n  old_links:\n")),
            kInline + ":7: topology.links: expected a map, got a sequence\n" + kInline +
                ":8: topology.old_links: unknown key (allowed: supernodes, nodes_per_supernode, "
                "chips_per_node, hosts, links)");
  // Nothing follows a syntax error.
  EXPECT_THAT(ErrorOf(Edit("{bandwidth_GBps: 50, latency_us: 5.0}", "{bandwidth_GBps: 50")),
              ::testing::Not(HasSubstr("\n")));
}

TEST(ClusterConfigErrors, TabInIndentation) {
  EXPECT_EQ(ErrorOf(Edit("  chips_per_node: 4", "\tchips_per_node: 4")),
            kInline + ":6: tab character in indentation (YAML indents with spaces)");
  EXPECT_EQ(ErrorOf(Edit("  chips_per_node: 4\n  links", " \tchips_per_node: 4\n\t links")),
            kInline + ":6: tab character in indentation (YAML indents with spaces)\n" + kInline +
                ":7: tab character in indentation (YAML indents with spaces)");
  EXPECT_EQ(ErrorOf(Edit("  chips_per_node: 4", "\t# four chips\n  chips_per_node: 4")),
            kInline + ":6: tab character in indentation (YAML indents with spaces)");
  EXPECT_EQ(ErrorOf(Edit("  chips_per_node: 4", "\t\n  chips_per_node: 4")),
            kInline + ":6: tab character in indentation (YAML indents with spaces)");
  // A tab after the key is not indentation.
  absl::StatusOr<ClusterConfig> ok =
      ParseClusterConfig(Edit("  chips_per_node: 4", "  chips_per_node:\t4"), kInline);
  EXPECT_TRUE(ok.ok()) << ok.status();
}

TEST(ClusterConfigErrors, ManyErrorsAreCapped) {
  std::string engine = "engine:\n";
  for (int i = 0; i < 25; ++i) absl::StrAppend(&engine, "  typo", i, ": 1\n");
  const std::string message = ErrorOf(std::string(kValid) + engine);
  EXPECT_EQ(std::count(message.begin(), message.end(), '\n'), YamlReader::kMaxErrors);
  EXPECT_THAT(message, StartsWith(kInline + ":15: engine.typo0: unknown key"));
  EXPECT_THAT(message, HasSubstr(":34: engine.typo19: unknown key"));
  EXPECT_THAT(message, ::testing::EndsWith("\n... and 5 more errors"));
}

TEST(ClusterConfigErrors, MissingFiles) {
  absl::StatusOr<ClusterConfig> missing = LoadClusterConfig(kConfigDir + "/no-such.yaml");
  ASSERT_FALSE(missing.ok());
  EXPECT_TRUE(absl::IsNotFound(missing.status()));
  EXPECT_THAT(missing.status().message(), HasSubstr("no-such.yaml"));

  absl::StatusOr<ClusterConfig> no_hw =
      ParseClusterConfig(Edit("ascend-950dt.yaml", "ascend-9000.yaml"), kInline);
  ASSERT_FALSE(no_hw.ok());
  EXPECT_TRUE(absl::IsNotFound(no_hw.status()));
  EXPECT_EQ(no_hw.status().message(), kInline + ":2: hardware: cannot open hardware file \"" +
                                          kConfigDir + "/hardware/ascend-9000.yaml\"");
}

TEST(ClusterConfigErrors, InvalidHardwareFileNamesThatFile) {
  std::ifstream in(kConfigDir + "/hardware/h800.yaml");
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const std::string bad = absl::StrReplaceAll(text, {{"value: 3.35", "value: fast"}});
  const std::string hw_path = WriteTemp("bad-hw.yaml", bad);
  const std::string message = ErrorOf(Edit("hardware/ascend-950dt.yaml", hw_path));
  EXPECT_THAT(message, StartsWith(hw_path + ":"));
  EXPECT_THAT(message, HasSubstr(": hbm.bandwidth_TBps.value: expected a positive number, got "
                                 "\"fast\" (hardware file named at " +
                                 kInline + ":2)"));
}

TEST(ClusterConfigErrors, TooManyRanksForTheChips) {
  EXPECT_EQ(ErrorOf(Edit("attention_ranks: 1", "attention_ranks: 4")),
            kInline +
                ":11: roles: 4 attention + 1 expert ranks need 5 chips, but the topology has 4 "
                "(1 supernode × 1 node × 4 chips = 4 chips)");
  EXPECT_THAT(ErrorOf(Edit("expert_ranks: 1\n", "expert_ranks: 1\n  rank_chips: [0, 0]\n")),
              HasSubstr(":11: roles: rank_chips: ranks 0 and 1 are both on chip 0"));
  EXPECT_THAT(ErrorOf(Edit("expert_ranks: 1\n", "expert_ranks: 1\n  rank_chips: [0, 7]\n")),
              HasSubstr("roles: rank_chips[1] = 7 is not a chip (0..3)"));
}

TEST(ClusterConfigErrors, SectionRules) {
  const std::string with_engine =
      std::string(kValid) + "engine:\n  max_seq_len: 8192\n  kv_budget_tokens: 4096\n";
  EXPECT_EQ(ErrorOf(with_engine),
            kInline +
                ":16: engine.kv_budget_tokens: must hold at least one sequence of max_seq_len "
                "= 8192 tokens, got 4096");
  EXPECT_EQ(ErrorOf(std::string(kValid) + "engine:\n  dispatch: tree\n"),
            kInline + ":15: engine.dispatch: expected flat or hierarchical, got \"tree\"");
  EXPECT_EQ(
      ErrorOf(std::string(kValid) + "engine:\n  placement: {policy: random}\n"),
      kInline + ":15: engine.placement.policy: expected hierarchical or global, got \"random\"");
  EXPECT_EQ(ErrorOf(std::string(kValid) + "engram:\n  servers: [\"a:1\"]\n  replication: 2\n"),
            kInline + ":16: engram.replication: is 2 but there are only 1 servers");
  EXPECT_EQ(ErrorOf(std::string(kValid) + "engram:\n  servers: [\"a:1\", \"b\"]\n"),
            kInline +
                ":15: engram.servers[1]: expected host:port (port 1..65535) or unix:path, got "
                "\"b\"");
  EXPECT_EQ(ErrorOf(std::string(kValid) + "coordinator:\n  tls: {cert: a.pem}\n"),
            kInline + ":15: coordinator.tls: cert and key must be given together");
  EXPECT_EQ(ErrorOf(std::string(kValid) + "coordinator:\n  admin_listen: \"127.0.0.1:50051\"\n"),
            kInline + ":15: coordinator.admin_listen: must differ from listen");
  EXPECT_EQ(ErrorOf(Edit("  links:", "  hosts: [a, b]\n  links:")),
            kInline + ":7: topology.hosts: has 2 entries, expected one per node (1 × 1 = 1)");
}

TEST(ClusterConfig, ExplicitSupernodeListAndPaths) {
  const std::string compact = "  supernodes: 1\n  nodes_per_supernode: 1\n  chips_per_node: 4\n";
  const std::string yaml =
      Edit("  supernodes: 1\n  nodes_per_supernode: 1\n  chips_per_node: 4\n",
           "  supernodes:\n    - nodes: [{chips: 2, host: a}, {chips: 1, host: b}]\n"
           "    - nodes: [{chips: 3}]\n");
  absl::StatusOr<ClusterConfig> config = ParseClusterConfig(
      yaml + "coordinator:\n  tls: {cert: certs/c.pem, key: /abs/k.pem}\n", kInline);
  ASSERT_TRUE(config.ok()) << config.status();
  ASSERT_EQ(config->topology.supernodes.size(), 2u);
  EXPECT_EQ(config->topology.num_nodes(), 3);
  EXPECT_EQ(config->topology.num_chips(), 6);
  EXPECT_EQ(config->topology.supernodes[0].nodes[1].host, "b");
  EXPECT_EQ(config->coordinator.tls_cert, kConfigDir + "/certs/c.pem");
  EXPECT_EQ(config->coordinator.tls_key, "/abs/k.pem");

  EXPECT_EQ(ErrorOf(Edit(compact, "  supernodes: [{nodes: [{chips: 0}]}]\n")),
            kInline +
                ":4: topology.supernodes[0].nodes[0].chips: expected a positive integer, "
                "got \"0\"");
  EXPECT_THAT(ErrorOf(Edit("  supernodes: 1\n", "  supernodes: [{nodes: [{chips: 4}]}]\n")),
              StartsWith(kInline + ":5: topology.nodes_per_supernode: not allowed with an "
                                   "explicit supernodes list"));
}

TEST(HardwareSpecErrors, NameFileLineAndKey) {
  const std::string src = "hw.yaml";
  auto error = [&](const std::string& yaml) {
    absl::StatusOr<HardwareSpec> hw = ParseHardwareSpec(yaml, src);
    EXPECT_FALSE(hw.ok());
    return hw.ok() ? "" : std::string(hw.status().message());
  };
  const std::string base = R"(name: x
peak_tflops:
  bf16: {value: 100, source: "s"}
hbm:
  capacity_GB: {value: 80, source: "s"}
  bandwidth_TBps: {value: 3, source: "s"}
interconnect:
  scale_up_GBps: {value: 100, source: "s"}
efficiency:
  gemm: {value: 0.5, source: "s"}
  attention: {value: 0.5, source: "s"}
  memory_bound: {value: 0.5, source: "s"}
  all_to_all: {value: 0.5, source: "s"}
)";
  ASSERT_TRUE(ParseHardwareSpec(base, src).ok()) << ParseHardwareSpec(base, src).status();
  EXPECT_EQ(error(absl::StrReplaceAll(base, {{"gemm: {value: 0.5", "gemm: {value: 1.5"}})),
            "hw.yaml:10: efficiency.gemm.value: expected a number in (0, 1], got \"1.5\"");
  EXPECT_EQ(error(absl::StrReplaceAll(base, {{"bf16: {value: 100, source: \"s\"}", "bf16: 100"}})),
            "hw.yaml:3: peak_tflops.bf16: expected a map, got \"100\"");
  EXPECT_EQ(error(absl::StrReplaceAll(
                base, {{"bf16: {value: 100, source: \"s\"}", "bf16: {value: 100}"}})),
            "hw.yaml:3: peak_tflops.bf16.source: missing required key");
  EXPECT_THAT(error(absl::StrReplaceAll(base, {{"source: \"s\"}\nhbm", "source: \"\"}\nhbm"}})),
              StartsWith("hw.yaml:3: peak_tflops.bf16.source: must say where the value comes"));
  EXPECT_THAT(error(absl::StrReplaceAll(base, {{"  bf16:", "  bf8:"}})),
              HasSubstr("\nhw.yaml:3: peak_tflops.bf8: unknown key"));
  EXPECT_EQ(
      error(absl::StrReplaceAll(base, {{"capacity_GB: {value: 80", "capacity_GB: {value: -80"}})),
      "hw.yaml:5: hbm.capacity_GB.value: expected a positive number, got \"-80\"");
}

}  // namespace
}  // namespace dsv4
