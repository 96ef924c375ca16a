// dsv4-engine under mpirun against `dsv4 run` on the same v4-tiny checkpoint and tokens, for
// several rank layouts (flat and hierarchical dispatch, redundant experts, data parallelism
// over sequences), prefill and decode; a failing rank; modelled time against the cost model;
// Engram tables on real dsv4-engram-store processes, one of them killed mid-run.
//
// Tolerance: with several expert ranks the engine sums a token's k expert outputs per
// expert rank, then over ranks (replicas change which rank holds a slot), not in the
// in-process order (ascending expert), so results differ by float rounding; every row is
// otherwise batch-invariant, and with one expert rank the engine is bit-identical to
// `dsv4 run` (engine_mpi_test asserts it). Each layer adds a few ulps that the following
// layers carry on, so logits must agree to |a − b| ≤ 2e-5 · (1 + max |ref|): about 25× the
// largest difference seen (≤ 5e-6 at max |ref| ≈ 4.5, i.e. ~1e-6 relative), far below any
// real error (a wrong expert, weight or token moves logits by 1e-2 and more).
// Engram rows looked up on memory nodes are the checkpoint's bytes, so remote tables add
// no difference of their own: `dsv4 run` with remote tables equals it with local ones exactly.
#include <signal.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "core/cluster_config.h"
#include "core/cost_model.h"
#include "core/model_config.h"
#include "core/npy.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/engine_test_util.h"
#include "tests/engram_test_util.h"
#include "tests/test_util.h"

namespace dsv4 {
namespace {

using testing::Hardware;
using testing::OneNodeYaml;
using testing::Tokens;

constexpr double kTolerance = 2e-5;

class EngineTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { Generate("v4-tiny"); }
  static void Generate(const std::string& preset) {
    dir_ = new testing::TempDir("engine");
    const testing::CommandResult gen =
        testing::RunCommand(absl::StrCat(testing::Dsv4(), " checkpoint generate --preset ", preset,
                                         " --seed 7 --out ", Checkpoint()));
    ASSERT_EQ(gen.exit_code, 0) << gen.output;
  }
  static void TearDownTestSuite() { delete dir_; }

  static std::string Checkpoint() { return dir_->path() + "/ckpt"; }
  static std::string Path(const std::string& name) { return dir_->path() + "/" + name; }

  static std::string WriteYaml(const std::string& name, const std::string& text) {
    std::ofstream(Path(name)) << text;
    return Path(name);
  }

  // `dsv4 run` logits of one prompt (cached by file name).
  static NpyArray Reference(const std::string& tokens, int decode_from) {
    const std::string out =
        Path(absl::StrCat("ref-", std::hash<std::string>()(tokens), "-", decode_from, ".npy"));
    if (!std::ifstream(out)) {
      const testing::CommandResult run = testing::RunCommand(
          absl::StrCat(testing::Dsv4(), " run --checkpoint ", Checkpoint(), " --tokens ", tokens,
                       " --decode_from ", decode_from, " --logits_out ", out));
      EXPECT_EQ(run.exit_code, 0) << run.output;
    }
    absl::StatusOr<NpyArray> a = ReadNpyF32(out);
    EXPECT_TRUE(a.ok()) << a.status();
    return a.ok() ? *a : NpyArray{};
  }

  static std::string EngineCommand(const std::string& yaml, int np, const std::string& args) {
    return absl::StrCat("env OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 ",
                        "mpirun --oversubscribe -np ", np, " ", DSV4_BIN_DIR, "/dsv4-engine",
                        " --cluster ", yaml, " --checkpoint ", Checkpoint(), " ", args);
  }
  static testing::CommandResult Engine(const std::string& yaml, int np, const std::string& args) {
    return testing::RunCommand("timeout 120 " + EngineCommand(yaml, np, args));
  }

  static void ExpectClose(const NpyArray& ref, const std::string& path) {
    absl::StatusOr<NpyArray> got = ReadNpyF32(path);
    ASSERT_TRUE(got.ok()) << got.status();
    ASSERT_EQ(got->shape, ref.shape) << path;
    double max_ref = 0, max_diff = 0;
    for (size_t i = 0; i < ref.data.size(); ++i) {
      max_ref = std::max<double>(max_ref, std::fabs(ref.data[i]));
      max_diff = std::max<double>(max_diff, std::fabs(ref.data[i] - got->data[i]));
    }
    EXPECT_LE(max_diff, kTolerance * (1 + max_ref))
        << path << ": max |diff| " << max_diff << ", max |ref| " << max_ref;
  }

  // Runs the engine on `prompts` (prefill, then with decode) and compares every sequence.
  static void ExpectMatchesRun(const std::string& yaml, int np,
                               const std::vector<std::string>& prompts, int decode_from,
                               const std::string& tag) {
    for (int decode : {0, decode_from}) {
      const std::string out = Path(absl::StrCat(tag, "-", decode, ".npy"));
      const testing::CommandResult run =
          Engine(yaml, np,
                 absl::StrCat("--tokens '", absl::StrJoin(prompts, ";"), "' --decode_from ", decode,
                              " --logits_out ", out));
      ASSERT_EQ(run.exit_code, 0) << run.output;
      for (size_t i = 0; i < prompts.size(); ++i) {
        const std::string path =
            prompts.size() == 1 ? out : Path(absl::StrCat(tag, "-", decode, ".", i, ".npy"));
        ExpectClose(Reference(prompts[i], decode), path);
      }
    }
  }

  static testing::TempDir* dir_;
};
testing::TempDir* EngineTest::dir_ = nullptr;

TEST_F(EngineTest, OneAttentionOneExpert) {
  ExpectMatchesRun(WriteYaml("1+1.yaml", OneNodeYaml(1, 1, 0)), 2, {Tokens(150, 0)}, 120, "1+1");
}

TEST_F(EngineTest, OneAttentionOneExpertTwoMicroBatches) {
  // Two sequences on one attention rank: one per micro-batch, both in flight.
  ExpectMatchesRun(WriteYaml("1+1.yaml", OneNodeYaml(1, 1, 0)), 2, {Tokens(150, 0), Tokens(110, 1)},
                   100, "1+1-mb");
}

TEST_F(EngineTest, TwoAttentionTwoExpertsDataParallel) {
  ExpectMatchesRun(WriteYaml("2+2.yaml", OneNodeYaml(2, 2, 0)), 4,
                   {Tokens(150, 0), Tokens(120, 2), Tokens(64, 3)}, 60, "2+2");
}

TEST_F(EngineTest, OneAttentionThreeExpertsRedundant) {
  // 8 experts + 1 redundant slot over 3 expert ranks.
  ExpectMatchesRun(WriteYaml("1+3.yaml", OneNodeYaml(1, 3, 1)), 4, {Tokens(150, 0)}, 120, "1+3");
}

TEST_F(EngineTest, RedundantExpertsGiveTheSameLogits) {
  ExpectMatchesRun(WriteYaml("2+2r.yaml", OneNodeYaml(2, 2, 2)), 4,
                   {Tokens(150, 0), Tokens(120, 2)}, 100, "2+2r");
}

TEST_F(EngineTest, ThreeAttentionThreeExpertsHierarchicalTwoSupernodes) {
  std::ifstream in(DSV4_SOURCE_DIR "/cluster-configs/two-supernodes-test.yaml");
  std::stringstream text;
  text << in.rdbuf();
  // The copy lives in a temp dir, so its hardware path must be absolute. Low-latency
  // exchanges are direct, so bulk ones only: every exchange takes the relays.
  const std::string yaml = absl::StrReplaceAll(
      text.str(), {{"hardware/ascend-950dt.yaml", Hardware()},
                   {"dispatch: hierarchical", "dispatch: hierarchical\n  low_latency_tokens: 0"}});
  ASSERT_NE(yaml.find("dispatch: hierarchical"), std::string::npos);
  const testing::CommandResult probe =
      Engine(WriteYaml("3+3.yaml", yaml), 6,
             absl::StrCat("--tokens ", Tokens(8, 0), " --stats_out ", Path("3+3-stats.json")));
  ASSERT_EQ(probe.exit_code, 0) << probe.output;
  EXPECT_NE(probe.output.find("hierarchical dispatch"), std::string::npos) << probe.output;
  // The step's data plane: every rank's blocked share, and records crossing supernodes
  // (whole fp32 records: 8 + 8·k + 4·d bytes each) in the dispatch and rows in the combine.
  EXPECT_NE(probe.output.find("blocked a0 "), std::string::npos) << probe.output;
  {
    std::ifstream in(Path("3+3-stats.json"));
    const nlohmann::json stats = nlohmann::json::parse(in);
    absl::StatusOr<ModelConfig> config = LoadModelConfigFromDir(Checkpoint());
    ASSERT_TRUE(config.ok()) << config.status();
    const int64_t d = config->hidden_size, k = config->num_experts_per_tok;
    ASSERT_EQ(stats["steps"].size(), 1u);
    const nlohmann::json& step = stats["steps"][0];
    ASSERT_EQ(step["blocked_fraction"].size(), 6u);
    for (const nlohmann::json& f : step["blocked_fraction"]) {
      EXPECT_GE(f.get<double>(), 0);
      EXPECT_LE(f.get<double>(), 1);
    }
    // An 8-token prefill is a bulk exchange (low_latency_tokens: 0 in this YAML), so the
    // cross-supernode bytes are whole records and rows; rows retrace the records' path.
    const nlohmann::json& raw = step["link_bytes"]["measured_raw"];
    const double cross_dispatch = raw["dispatch"][2].get<double>();
    const double cross_combine = raw["combine"][2].get<double>();
    EXPECT_GT(cross_dispatch, 0) << step.dump();
    EXPECT_EQ(std::fmod(cross_dispatch, static_cast<double>(8 + 8 * k + 4 * d)), 0);
    EXPECT_EQ(std::fmod(cross_combine, static_cast<double>(4 * d)), 0);
    EXPECT_EQ(cross_dispatch / (8 + 8 * k + 4 * d), cross_combine / (4 * d));
    EXPECT_GT(step["link_bytes"]["modelled"]["dispatch"][2].get<double>(), 0);
  }
  ExpectMatchesRun(Path("3+3.yaml"), 6, {Tokens(150, 0), Tokens(130, 4), Tokens(100, 5)}, 90,
                   "3+3");
}

TEST_F(EngineTest, ChunkedPrefill) {
  // The plan splits the 150-token prefill into chunks of 48, 48, 48 and 6 tokens.
  ExpectMatchesRun(WriteYaml("2+2c.yaml", OneNodeYaml(2, 2, 0, 48)), 4,
                   {Tokens(150, 0), Tokens(100, 1)}, 90, "2+2c");
}

// The exchange protocol and what drives it change no bit: bulk only without a progress
// thread, low latency everywhere with one-record blocks (every block overflows) and a
// progress thread, and the defaults (low latency for decode) give identical logits, and
// they match `dsv4 run`.
TEST_F(EngineTest, ProtocolsAndProgressGiveBitIdenticalLogits) {
  const std::string base = OneNodeYaml(2, 2, 0, 48);
  const std::vector<std::pair<std::string, std::string>> variants = {
      {"bulk-calls", "engine:\n  low_latency_tokens: 0\n  progress: calls\n"},
      {"ll-overflow-thread",
       "engine:\n  low_latency_tokens: 100000\n  low_latency_capacity: 1\n  progress: thread\n"},
      {"defaults", "engine:\n"}};
  const std::string prompts = absl::StrCat(Tokens(100, 0), ";", Tokens(70, 1), ";", Tokens(40, 2));
  std::vector<std::vector<float>> logits;
  for (const auto& [name, engine] : variants) {
    const std::string yaml =
        WriteYaml(name + ".yaml", absl::StrReplaceAll(base, {{"engine:\n", engine}}));
    const std::string out = Path(name + ".npy");
    const testing::CommandResult run = Engine(
        yaml, 4, absl::StrCat("--tokens '", prompts, "' --decode_from 30 --logits_out ", out));
    ASSERT_EQ(run.exit_code, 0) << name << ": " << run.output;
    std::vector<float> all;
    for (int i = 0; i < 3; ++i) {
      absl::StatusOr<NpyArray> a = ReadNpyF32(Path(absl::StrCat(name, ".", i, ".npy")));
      ASSERT_TRUE(a.ok()) << a.status();
      all.insert(all.end(), a->data.begin(), a->data.end());
      if (name == "defaults") {
        ExpectClose(Reference(i == 0   ? Tokens(100, 0)
                              : i == 1 ? Tokens(70, 1)
                                       : Tokens(40, 2),
                              30),
                    Path(absl::StrCat(name, ".", i, ".npy")));
      }
    }
    logits.push_back(std::move(all));
  }
  for (size_t v = 1; v < variants.size(); ++v) {
    EXPECT_TRUE(logits[v] == logits[0])
        << variants[v].first << " differs from " << variants[0].first;
  }
}

TEST_F(EngineTest, FailingRankEndsTheJobNamingIt) {
  const std::string yaml = WriteYaml("2+2.yaml", OneNodeYaml(2, 2, 0));
  const auto start = std::chrono::steady_clock::now();
  const testing::CommandResult run =
      Engine(yaml, 4,
             absl::StrCat("--tokens ", Tokens(40, 0), " --decode_from 20",
                          " --fail_rank 2 --fail_at_step 3"));
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_NE(run.exit_code, 0) << run.output;
  EXPECT_NE(run.exit_code, 124) << "timed out (hang): " << run.output;
  EXPECT_LT(seconds, 60);
  // The rank's own last words, and mpirun's report naming world rank 2 ("[[job,1],2]"), which
  // is all there is when a rank dies without a word.
  EXPECT_NE(run.output.find("rank 2"), std::string::npos) << run.output;
  EXPECT_NE(run.output.find(",1],2]"), std::string::npos) << run.output;
}

TEST_F(EngineTest, ModelledStepTimeEqualsCostModel) {
  // One sequence on 1 + 1 ranks: micro-batch 0 holds it, micro-batch 1 is empty but still
  // exchanges. The analytic step below is what the planner's builders give for that batch.
  const std::string yaml = WriteYaml("1+1.yaml", OneNodeYaml(1, 1, 0));
  const int64_t tokens = 100;
  const testing::CommandResult run =
      Engine(yaml, 2,
             absl::StrCat("--tokens ", Tokens(tokens, 0), " --decode_from 99", " --stats_out ",
                          Path("stats.json")));
  ASSERT_EQ(run.exit_code, 0) << run.output;
  std::ifstream in(Path("stats.json"));
  const nlohmann::json stats = nlohmann::json::parse(in);
  ASSERT_EQ(stats["steps"].size(), 2u);

  absl::StatusOr<ModelConfig> config = LoadModelConfigFromDir(Checkpoint());
  ASSERT_TRUE(config.ok()) << config.status();
  absl::StatusOr<ClusterConfig> cluster = LoadClusterConfig(yaml);
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  ExpertGeometry geometry;  // one expert rank in the sender's node, holding all experts
  geometry.expert_ranks = 1;
  geometry.same_node = geometry.same_supernode = 1;
  const int layers = config->num_hidden_layers;
  const int k = config->num_experts_per_tok;
  // Step 0 prefills 99 tokens, step 1 decodes one at position 99.
  const std::vector<SequenceChunk> steps[] = {{{1, 0, 99, 99}}, {{1, 99, 1, 1}}};
  for (int s = 0; s < 2; ++s) {
    const double new_tokens = static_cast<double>(steps[s][0].new_tokens);
    StepCost attention, expert;
    attention.micro_batches = expert.micro_batches = 2;
    for (int l = 0; l < layers; ++l) attention += AttentionLayerCost(*config, l, steps[s], {});
    attention += EdgeCost(*config, steps[s]);
    for (int mb = 0; mb < 2; ++mb) {
      for (int l = 0; l < layers; ++l) {
        AddAllToAllCost(*config, mb == 0 ? new_tokens : 0, geometry, &attention);
        expert += RoutedExpertCost(*config, mb == 0 ? new_tokens * k : 0, config->n_routed_experts);
      }
    }
    expert.dispatch = attention.dispatch;
    expert.combine = attention.combine;
    const StepCost ranks[] = {attention, expert};
    const double analytic = ModelledTime(ranks, cluster->hardware, cluster->topology.links).total;
    const double engine = stats["steps"][s]["modelled_seconds"];
    EXPECT_NEAR(engine, analytic, 1e-9 * analytic) << "step " << s;
    EXPECT_GT(analytic, 0);
  }
}

// DeepSeek-V4.1 (v41-tiny: CSA2, lagged mHC, Engram on local tables) in other rank layouts.
class EngineV41Test : public EngineTest {
 protected:
  static void SetUpTestSuite() { Generate("v41-tiny"); }
};

TEST_F(EngineV41Test, OneAttentionTwoExperts) {
  ExpectMatchesRun(WriteYaml("v41-1+2.yaml", OneNodeYaml(1, 2, 0)), 3,
                   {Tokens(150, 0), Tokens(90, 2)}, 80, "v41-1+2");
}

TEST_F(EngineV41Test, TwoAttentionTwoExpertsChunkedPrefill) {
  ExpectMatchesRun(WriteYaml("v41-2+2c.yaml", OneNodeYaml(2, 2, 0, 48)), 4,
                   {Tokens(150, 0), Tokens(130, 4), Tokens(100, 5)}, 90, "v41-2+2c");
}

// Engram tables on two replicated dsv4-engram-store processes on loopback (v41-tiny).
class EngineEngramTest : public EngineTest {
 protected:
  static void SetUpTestSuite() { Generate("v41-tiny"); }
  void SetUp() override {
    servers_ = engram::testing::StartServerProcesses(Checkpoint(), 2, 2);
    ASSERT_EQ(servers_.addresses.size(), 2u);
  }

  // 2 attention ranks (each with its own client) + 1 expert rank, tables on the servers.
  std::string Yaml() {
    return WriteYaml("engram.yaml", absl::StrCat(OneNodeYaml(2, 1, 0), "engram:\n  servers: [",
                                                 absl::StrJoin(servers_.addresses, ", "),
                                                 "]\n  replication: 2\n"));
  }

  // Runs `command` (in the background), SIGKILLs server 0 `delay` after `progress` shows in
  // its output, lets it finish, and checks it used the servers, failed over and said nothing
  // of it but its report.
  void RunKillingAServer(const std::string& command, const std::string& progress,
                         std::chrono::milliseconds delay) {
    testing::Process run(command);
    EXPECT_TRUE(run.WaitFor(progress, std::chrono::seconds(60))) << run.output();
    std::this_thread::sleep_for(delay);
    servers_.processes[0]->Signal(SIGKILL);
    const testing::CommandResult result = run.Finish(std::chrono::seconds(120));
    EXPECT_EQ(result.exit_code, 0) << result.output;
    // Every lookup the dead server's shard needed after the kill went to its replica.
    EXPECT_THAT(result.output, ::testing::ContainsRegex("\\([1-9][0-9]* retried on another"))
        << result.output;
    EXPECT_THAT(result.output, ::testing::HasSubstr(" 0 failed,")) << result.output;
    for (const char* error : {"rror", "UNAVAILABLE", "navailable", "failed to"}) {
      EXPECT_THAT(result.output, ::testing::Not(::testing::HasSubstr(error))) << result.output;
    }
  }

  engram::testing::ServerProcesses servers_;
};

TEST_F(EngineEngramTest, RemoteTablesGiveTheLocalLogits) {
  ExpectMatchesRun(Yaml(), 3, {Tokens(150, 0), Tokens(110, 1)}, 100, "engram");
}

TEST_F(EngineEngramTest, TokenSecuredTablesGiveTheLocalLogits) {
  // Memory nodes requiring a bearer token; the YAML's engram.token_file gives it to the
  // attention ranks. Without it the engine stops with a clear error.
  const std::string token = Path("engram.token");
  std::ofstream(token) << "engine-test-engram-token\n";
  servers_ = engram::testing::StartServerProcesses(Checkpoint(), 2, 2, " --token_file " + token);
  ASSERT_EQ(servers_.addresses.size(), 2u);
  const std::string secured = WriteYaml(
      "engram-token.yaml", absl::StrCat(OneNodeYaml(2, 1, 0), "engram:\n  servers: [",
                                        absl::StrJoin(servers_.addresses, ", "),
                                        "]\n  replication: 2\n  token_file: ", token, "\n"));
  ExpectMatchesRun(secured, 3, {Tokens(120, 2)}, 100, "engram-token");
  const testing::CommandResult refused = Engine(Yaml(), 3, "--tokens 1,2,3");
  EXPECT_NE(refused.exit_code, 0);
  EXPECT_THAT(refused.output, ::testing::HasSubstr("refused this client")) << refused.output;
}

TEST_F(EngineEngramTest, EngineSurvivesAKilledMemoryNode) {
  // Fresh n-grams every step (Tokens does not repeat), so each decode step looks rows up on
  // both shards; the kill lands after step 5 of 1 + 280 steps.
  const std::string tokens = Tokens(300, 0), out = Path("engine-kill.npy");
  RunKillingAServer(
      EngineCommand(Yaml(), 3,
                    absl::StrCat("--tokens ", tokens, " --decode_from 20 --logits_out ", out)),
      "step 5:", std::chrono::milliseconds(0));
  ExpectClose(Reference(tokens, 20), out);
}

TEST_F(EngineEngramTest, RunSurvivesAKilledMemoryNode) {
  // `dsv4 run` reports nothing per step: the kill comes 50 ms after the model loaded (the
  // client connected), well within the 580 decode steps (~1 ms each); the retry count
  // shows it landed before the end.
  const std::string tokens = Tokens(600, 0), out = Path("run-kill.npy");
  RunKillingAServer(
      absl::StrCat(testing::Dsv4(), " run --checkpoint ", Checkpoint(), " --tokens ", tokens,
                   " --decode_from 20 --logits_out ", out, " --engram_servers ",
                   absl::StrJoin(servers_.addresses, ","), " --engram_replication 2"),
      "loaded ", std::chrono::milliseconds(50));
  absl::StatusOr<NpyArray> got = ReadNpyF32(out);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->data, Reference(tokens, 20).data);
}

}  // namespace
}  // namespace dsv4
