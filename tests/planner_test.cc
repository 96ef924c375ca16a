// The capacity planner: workload validation, the sweep on V4-Pro and the Atlas 950
// SuperPoD, scaling-law sanity, memory limits, infeasible answers, reports, the emitted
// cluster YAML and the CLI.
#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "core/cluster_config.h"
#include "core/model_config.h"
#include "core/topology.h"
#include "engine/placement.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "planner/layout_search.h"
#include "planner/report.h"
#include "planner/workload.h"
#include "tests/test_util.h"

namespace dsv4::planner {
namespace {

using ::testing::HasSubstr;

const std::string kRoot = DSV4_SOURCE_DIR;
using ::dsv4::testing::PresetModelConfig;
using ::dsv4::testing::ShippedClusterConfig;

// The sweep tests plan dsv4-engine's layouts (attention-FFN disaggregated), which the
// runtime can run and emit.
PlannerOptions Afd() {
  PlannerOptions options;
  options.layouts = LayoutFamily::kAfd;
  return options;
}

Workload LoadShipped(const std::string& name) {
  absl::StatusOr<Workload> w = LoadWorkload(kRoot + "/workloads/" + name + ".yaml");
  EXPECT_TRUE(w.ok()) << w.status();
  return *w;
}

absl::Status ParseError(const std::string& text) { return ParseWorkload(text, "w.yaml").status(); }

const char kMinimal[] =
    "name: t\nrate: {requests_per_s: 10}\ninput_tokens: 1000\noutput_tokens: 100\n";

TEST(WorkloadTest, ShippedWorkloadsLoad) {
  const Workload chat = LoadShipped("chat");
  EXPECT_EQ(chat.name, "chat");
  EXPECT_DOUBLE_EQ(chat.requests_per_s, 400);
  EXPECT_NEAR(chat.input.Mean(), 2000, 0.05 * 2000);  // the 32k clamp trims the tail a little
  EXPECT_NEAR(chat.output.Mean(), 500, 0.05 * 500);
  EXPECT_DOUBLE_EQ(*chat.slo_tpot, 0.050);
  const Workload long_context = LoadShipped("long-context");
  EXPECT_GE(long_context.input.Quantile(0.5), 100000);
  EXPECT_LE(long_context.input.Max(), 1000000);
  const Workload agent = LoadShipped("agent");
  EXPECT_NEAR(agent.speculative.TokensPerStep(), 1 + 0.75 + 0.75 * 0.75, 1e-12);
}

TEST(WorkloadTest, DistributionsKeepTheirMean) {
  for (const char* length : {"{distribution: lognormal, mean: 3000, sigma: 1.2}",
                             "{distribution: exponential, mean: 3000}",
                             "{distribution: uniform, min: 1000, max: 5000}"}) {
    absl::StatusOr<Workload> w =
        ParseWorkload(absl::StrCat("name: t\nrate: {requests_per_s: 1}\ninput_tokens: ", length,
                                   "\noutput_tokens: 10\n"),
                      "w.yaml");
    ASSERT_TRUE(w.ok()) << w.status();
    EXPECT_NEAR(w->input.Mean(), 3000, 3) << length;
    double total = 0;
    for (const LengthBucket& b : w->input.buckets) total += b.weight;
    EXPECT_NEAR(total, 1, 1e-12);
  }
  absl::StatusOr<Workload> rate = ParseWorkload(
      "name: t\nrate: {output_tokens_per_s: 5000}\ninput_tokens: 10\noutput_tokens: 500\n",
      "w.yaml");
  ASSERT_TRUE(rate.ok());
  EXPECT_DOUBLE_EQ(rate->requests_per_s, 10);
}

TEST(WorkloadTest, ErrorsNameFileLineAndKey) {
  EXPECT_THAT(ParseError(std::string(kMinimal) + "prefix_cache_hitrate: 0.5\n").message(),
              HasSubstr("w.yaml:5: prefix_cache_hitrate: unknown key"));
  EXPECT_THAT(ParseError("name: t\nrate: {requests_per_s: 10}\ninput_tokens:\n  mean: lots\n"
                         "  distribution: lognormal\n  sigma: 1\noutput_tokens: 100\n")
                  .message(),
              HasSubstr("w.yaml:4: input_tokens.mean: expected a positive number"));
  EXPECT_THAT(ParseError("name: t\nrate: {requests_per_s: 1, output_tokens_per_s: 2}\n"
                         "input_tokens: 1\noutput_tokens: 1\n")
                  .message(),
              HasSubstr("w.yaml:2: rate: give exactly one"));
  EXPECT_THAT(ParseError(std::string(kMinimal) + "prefix_cache_hit_rate: 1\n").message(),
              HasSubstr("w.yaml:5: prefix_cache_hit_rate: must be below 1"));
  EXPECT_THAT(ParseError("name: t\nrate: {requests_per_s: 1}\ninput_tokens: {distribution: zipf}\n"
                         "output_tokens: 1\n")
                  .message(),
              HasSubstr("input_tokens.distribution: unknown distribution"));
  EXPECT_THAT(ParseError("name: t\nrate: {requests_per_s: 1}\noutput_tokens: 1\n").message(),
              HasSubstr("input_tokens: missing required key"));
  EXPECT_THAT(ParseError("name: t\nrate: {requests_per_s: 1}\ninput_tokens:\n  distribution: "
                         "buckets\n  buckets:\n    - {tokens: 10, weight: 1}\n    - {tokens: 20}\n"
                         "output_tokens: 1\n")
                  .message(),
              HasSubstr("w.yaml:7: input_tokens.buckets[1].weight: missing required key"));
  EXPECT_EQ(LoadWorkload(kRoot + "/workloads/missing.yaml").status().code(),
            absl::StatusCode::kNotFound);
}

// Every mistake of a file in one error, one line each, without consequences of the others.
TEST(WorkloadTest, ReportsEveryError) {
  EXPECT_EQ(ParseError("name: t\nrate: {requests_per_s: -1}\ninput_tokens: 1000\n"
                       "output_tokens: lots\nexpert_load_skew: 0.5\nmax_utilization: 2\n")
                .message(),
            "w.yaml:2: rate.requests_per_s: expected a positive number, got \"-1\"\n"
            "w.yaml:4: output_tokens: expected a positive number, got \"lots\"\n"
            "w.yaml:5: expert_load_skew: must be at least 1 (busiest / mean load)\n"
            "w.yaml:6: max_utilization: expected a number in (0, 1], got \"2\"");
  EXPECT_EQ(ParseError("name: t\nrate: {requests_per_s: 1}\ninput_tokens: 1000\n"
                       "output_tokens: 10\nslo:\n\tttft_ms: 100\n")
                .message(),
            "w.yaml:6: tab character in indentation (YAML indents with spaces)");
}

class PlannerSweepTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    config_ = new ModelConfig(PresetModelConfig("deepseek-v4-pro"));
    cluster_ = new ClusterConfig(ShippedClusterConfig("cluster-configs/atlas950-superpod.yaml"));
    workload_ = new Workload(LoadShipped("chat"));
    absl::StatusOr<PlanResult> result = RunPlanner(*config_, *cluster_, *workload_, Afd());
    ASSERT_TRUE(result.ok()) << result.status();
    result_ = new PlanResult(*std::move(result));
  }
  static void TearDownTestSuite() {
    delete result_;
    delete workload_;
    delete cluster_;
    delete config_;
  }
  static ModelConfig* config_;
  static ClusterConfig* cluster_;
  static Workload* workload_;
  static PlanResult* result_;
};
ModelConfig* PlannerSweepTest::config_ = nullptr;
ClusterConfig* PlannerSweepTest::cluster_ = nullptr;
Workload* PlannerSweepTest::workload_ = nullptr;
PlanResult* PlannerSweepTest::result_ = nullptr;

TEST_F(PlannerSweepTest, FindsRankedFeasiblePlans) {
  const PlanResult& r = *result_;
  EXPECT_GE(r.candidates, 10000);
  ASSERT_TRUE(r.feasible) << r.binding_constraint;
  ASSERT_EQ(r.plans.size(), 10u);
  for (size_t i = 1; i < r.plans.size(); ++i) {
    EXPECT_GE(r.plans[i - 1].tokens_per_s_per_chip, r.plans[i].tokens_per_s_per_chip);
  }
  for (const Plan& p : r.plans) {
    EXPECT_TRUE(p.feasible());
    EXPECT_LE(p.ttft, *workload_->slo_ttft * (1 + 1e-9));
    EXPECT_LE(p.tpot, *workload_->slo_tpot);
    EXPECT_LE(p.chips, r.cluster_chips);
    // Units serve the rate at no more than the planned load.
    const double output = r.requests_per_s * workload_->output.Mean();
    EXPECT_GE(p.decode_units * p.decode.tokens_per_s * p.decode.max_load, output * (1 - 1e-9));
  }
  EXPECT_FALSE(r.decode_frontier.empty());
}

// A plan never exceeds chip memory: every rank of every feasible plan fits in HBM less
// the reserve, and the breakdown adds up.
TEST_F(PlannerSweepTest, PlansNeverExceedChipMemory) {
  for (const Plan& p : result_->plans) {
    for (const PhaseEvaluation* e : {&p.prefill, &p.decode}) {
      for (const MemoryUse* m : {&e->attention_memory, &e->expert_memory}) {
        if (m->capacity == 0) continue;  // co-located: no separate expert chip
        EXPECT_LE(m->used(), m->usable);
        EXPECT_LE(m->usable, m->capacity);
        EXPECT_DOUBLE_EQ(m->headroom(), m->usable - m->used());
      }
    }
  }
}

TEST_F(PlannerSweepTest, ReportsCarryTheResult) {
  const std::string table = FormatPlanTable(*result_);
  EXPECT_THAT(table, HasSubstr("deepseek-v4-pro on atlas950-superpod"));
  EXPECT_THAT(table, HasSubstr("Chosen plan"));
  const nlohmann::json json = PlanResultToJson(*result_);
  EXPECT_EQ(json["plans"].size(), 10u);
  EXPECT_TRUE(json["feasible"].get<bool>());
  const nlohmann::json& decode = json["plans"][0]["decode"];
  EXPECT_GT(decode["memory"]["attention_rank"]["kv_GB"].get<double>(), 0);
  EXPECT_GT(decode["memory"]["expert_rank"]["weights_GB"]["fp4"].get<double>(), 0);
  EXPECT_TRUE(decode["busy_ms"].contains("cross_supernode_links"));
  const std::string svg = RenderPlanSvg(*result_);
  EXPECT_EQ(svg.rfind("<svg", 0), 0u);
  EXPECT_THAT(svg, HasSubstr("frontier"));
  EXPECT_THAT(svg, HasSubstr("chosen:"));
}

TEST_F(PlannerSweepTest, EmittedClusterYamlLoads) {
  dsv4::testing::TempDir dir("plan");
  const std::string path = dir.path() + "/unit.yaml";
  absl::StatusOr<EmittedConfigs> emitted =
      WriteClusterConfigs(*result_, *config_, *cluster_, *workload_, path);
  ASSERT_TRUE(emitted.ok()) << emitted.status();
  EXPECT_EQ(emitted->plan_index, 0);  // afd: the chosen plan itself
  EXPECT_TRUE(emitted->note.empty());
  ASSERT_EQ(emitted->paths.size(), 2u);
  const std::vector<std::string>& written = emitted->paths;
  const Plan& plan = result_->plans[0];
  absl::StatusOr<ClusterConfig> decode = LoadClusterConfig(written[0]);
  ASSERT_TRUE(decode.ok()) << decode.status();
  EXPECT_EQ(decode->roles.attention_ranks, plan.decode.layout.attention_ranks);
  EXPECT_EQ(decode->roles.expert_ranks, plan.decode.layout.expert_ranks);
  EXPECT_EQ(decode->engine.micro_batches, plan.decode.layout.micro_batches);
  EXPECT_EQ(decode->engine.redundant_experts, plan.decode.layout.redundant_experts);
  EXPECT_EQ(decode->engine.max_seqs_per_rank, plan.decode.layout.batch);
  EXPECT_EQ(decode->hardware.name, cluster_->hardware.name);
  absl::StatusOr<ClusterConfig> prefill = LoadClusterConfig(written[1]);
  ASSERT_TRUE(prefill.ok()) << prefill.status();
  EXPECT_EQ(prefill->roles.attention_ranks, plan.prefill.layout.attention_ranks);
  EXPECT_EQ(prefill->engine.chunked_prefill_tokens, plan.prefill.layout.batch);
  // The header says what the file is: one engine serving both phases of its unit.
  std::ifstream in(written[1]);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_THAT(text, HasSubstr("no\n# KV hand-off between units"));
}

// What dsv4-engine checks at startup before it loads weights (Engine::Setup): the YAML
// loads, the topology builds with the ranks on chips, the world has the roles' ranks, and
// the uniform expert placement exists for the model over the expert ranks. Starting a real
// V4-Pro engine needs its 1.6T-parameter checkpoint, so the test stops there; the MPI
// dispatcher's own checks need an MPI world.
absl::Status EngineStartupChecks(const std::string& path, const ModelConfig& config) {
  absl::StatusOr<ClusterConfig> cluster = LoadClusterConfig(path);
  if (!cluster.ok()) return cluster.status();
  absl::StatusOr<Topology> topology = Topology::Build(*cluster);
  if (!topology.ok()) return topology.status();
  if (topology->num_ranks() != cluster->roles.num_ranks()) {
    return absl::InternalError("the topology's ranks differ from the roles'");
  }
  PlacementOptions options;
  options.policy = cluster->engine.placement;
  options.num_slots = config.n_routed_experts + cluster->engine.redundant_experts;
  options.num_groups = config.n_group;
  options.num_nodes = topology->num_expert_nodes();
  options.num_ranks = topology->num_expert_ranks();
  return ExpertPlacement::Uniform(config.num_hidden_layers, config.n_routed_experts, options)
      .status();
}

TEST_F(PlannerSweepTest, EmittedClusterYamlPassesEngineStartupChecks) {
  dsv4::testing::TempDir dir("plan-engine");
  // Every plan of the result, not just the first: each could be the one emitted.
  for (size_t i = 0; i < result_->plans.size(); ++i) {
    PlanResult one = *result_;
    one.plans = {result_->plans[i]};
    const std::string path = dir.path() + "/unit" + std::to_string(i) + ".yaml";
    absl::StatusOr<EmittedConfigs> emitted =
        WriteClusterConfigs(one, *config_, *cluster_, *workload_, path);
    ASSERT_TRUE(emitted.ok()) << emitted.status();
    for (const std::string& written : emitted->paths) {
      const absl::Status status = EngineStartupChecks(written, *config_);
      EXPECT_TRUE(status.ok()) << "plan " << i + 1 << ", " << written << ": " << status;
    }
  }
  // The check can fail: 7 expert ranks cannot hold the experts evenly.
  std::ifstream in(dir.path() + "/unit0.yaml");
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const Plan& plan = result_->plans[0];
  const std::string bad_path = dir.path() + "/bad.yaml";
  std::ofstream(bad_path) << absl::StrReplaceAll(
      text, {{absl::StrCat("redundant_experts: ", plan.decode.layout.redundant_experts, "}"),
              absl::StrCat("redundant_experts: ", plan.decode.layout.redundant_experts + 1, "}")}});
  EXPECT_FALSE(EngineStartupChecks(bad_path, *config_).ok());
}

// The emitted YAML is always one dsv4-engine runs: a co-located chosen plan gives way to the
// best afd plan of the result, and a result without one is refused, saying what to do.
TEST_F(PlannerSweepTest, EmitsTheBestPlanTheEngineRunsOrRefuses) {
  dsv4::testing::TempDir dir("plan-emit");
  const std::string path = dir.path() + "/unit.yaml";
  PlanResult mixed = *result_;
  mixed.plans[0].prefill.layout.colocated = true;
  absl::StatusOr<EmittedConfigs> emitted =
      WriteClusterConfigs(mixed, *config_, *cluster_, *workload_, path);
  ASSERT_TRUE(emitted.ok()) << emitted.status();
  EXPECT_EQ(emitted->plan_index, 1);
  EXPECT_THAT(emitted->note, HasSubstr("emitting plan #2"));
  absl::StatusOr<ClusterConfig> decode = LoadClusterConfig(emitted->paths[0]);
  ASSERT_TRUE(decode.ok()) << decode.status();
  EXPECT_EQ(decode->roles.expert_ranks, mixed.plans[1].decode.layout.expert_ranks);

  PlanResult colocated = *result_;
  for (Plan& p : colocated.plans) p.decode.layout.colocated = true;
  const absl::Status refused =
      WriteClusterConfigs(colocated, *config_, *cluster_, *workload_, dir.path() + "/no.yaml")
          .status();
  EXPECT_EQ(refused.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(refused.message(), HasSubstr("co-located"));
  EXPECT_THAT(refused.message(), HasSubstr("--layouts afd"));
  EXPECT_FALSE(std::ifstream(dir.path() + "/no.yaml").good());

  // Units with ranks sharing a chip cannot be placed by dsv4-engine either.
  PlanResult dies = *result_;
  for (Plan& p : dies.plans) p.decode.layout.ranks_per_chip = 2;
  EXPECT_FALSE(WriteClusterConfigs(dies, *config_, *cluster_, *workload_, path).ok());
}

// Pinned evaluation is the search's computation: the chosen plan's layouts, evaluated alone
// with the result's options, give the same figures, field for field.
TEST_F(PlannerSweepTest, PinnedEvaluationReproducesTheSearch) {
  for (const Plan& plan : result_->plans) {
    for (const PhaseEvaluation* searched : {&plan.prefill, &plan.decode}) {
      const PhaseEvaluation pinned =
          EvaluateLayout(*config_, *cluster_, *workload_, searched->layout, result_->options);
      EXPECT_EQ(PhaseEvaluationToJson(pinned), PhaseEvaluationToJson(*searched))
          << searched->layout.Describe();
      EXPECT_EQ(pinned.step.total, searched->step.total);
      EXPECT_EQ(pinned.latency, searched->latency);
      EXPECT_EQ(pinned.tokens_per_s_per_chip, searched->tokens_per_s_per_chip);
    }
  }
}

TEST_F(PlannerSweepTest, TableShowsPhaseRatesAndWhatTheEngineRuns) {
  const std::string table = FormatPlanTable(*result_);
  EXPECT_THAT(table, HasSubstr("P in/chip"));
  EXPECT_THAT(table, HasSubstr("D out/chip"));
  EXPECT_THAT(table, HasSubstr("dsv4-engine"));
  EXPECT_THAT(table, HasSubstr("units*"));
  EXPECT_THAT(table, HasSubstr("no KV hand-off"));
  EXPECT_THAT(table, HasSubstr("link time (ms): intra_node"));
  const nlohmann::json json = PlanResultToJson(*result_);
  EXPECT_TRUE(json["plans"][0]["dsv4_engine"]["runs"].get<bool>());
  EXPECT_THAT(json["plans"][0]["dsv4_engine"]["reason"].get<std::string>(),
              HasSubstr("no KV hand-off"));
  EXPECT_DOUBLE_EQ(json["plans"][0]["decode"]["tokens_per_s_per_chip_at_planned_load"],
                   result_->plans[0].decode.effective_per_chip());

  PlanResult colocated = *result_;
  colocated.plans[0].decode.layout.colocated = true;
  const std::string marked = FormatPlanTable(colocated);
  EXPECT_THAT(marked, HasSubstr("no: co-located"));
  EXPECT_THAT(marked, HasSubstr("plan with --layouts afd"));
  EXPECT_FALSE(PlanResultToJson(colocated)["plans"][0]["dsv4_engine"]["runs"].get<bool>());
}

// Doubling HBM bandwidth never slows a plan, and memory-bound decode layouts get faster.
TEST_F(PlannerSweepTest, MoreHbmBandwidthNeverSlowsDecode) {
  ClusterConfig faster = *cluster_;
  faster.hardware.hbm_bandwidth.value *= 2;
  int memory_bound = 0;
  for (int attention : {8, 64}) {
    for (int batch : {1, 8, 64, 256}) {
      UnitLayout layout;
      layout.phase = Phase::kDecode;
      layout.attention_ranks = attention;
      layout.expert_ranks = 96;
      layout.batch = batch;
      layout.micro_batches = batch > 1 ? 2 : 1;
      const PhaseEvaluation base = EvaluateLayout(*config_, *cluster_, *workload_, layout, {});
      const PhaseEvaluation more = EvaluateLayout(*config_, faster, *workload_, layout, {});
      EXPECT_LE(more.step.total, base.step.total);
      if (base.step.binding == Bottleneck::kHbm) {
        ++memory_bound;
        EXPECT_LT(more.step.total, base.step.total);
      }
    }
  }
  EXPECT_GT(memory_bound, 0);
  absl::StatusOr<PlanResult> again = RunPlanner(*config_, faster, *workload_, Afd());
  ASSERT_TRUE(again.ok());
  EXPECT_GE(again->plans[0].tokens_per_s_per_chip, result_->plans[0].tokens_per_s_per_chip);
}

TEST_F(PlannerSweepTest, ImpossibleSloNamesTheBindingConstraint) {
  PlannerOptions options = Afd();
  options.slo_tpot = 1e-4;
  absl::StatusOr<PlanResult> r = RunPlanner(*config_, *cluster_, *workload_, options);
  ASSERT_TRUE(r.ok());
  EXPECT_FALSE(r->feasible);
  EXPECT_THAT(r->binding_constraint, HasSubstr("TPOT"));
  ASSERT_FALSE(r->plans.empty());  // the closest layouts, never an empty answer
  EXPECT_THAT(absl::StrJoin(r->plans[0].violations, ";"), HasSubstr("TPOT"));
  EXPECT_THAT(FormatPlanTable(*r), HasSubstr("NO LAYOUT MEETS THE CONSTRAINTS"));
}

TEST_F(PlannerSweepTest, TooLittleMemoryNamesMemory) {
  ClusterConfig small = *cluster_;
  small.hardware.hbm_capacity.value = 8e9;  // less than the attention weights
  absl::StatusOr<PlanResult> r = RunPlanner(*config_, small, *workload_, Afd());
  ASSERT_TRUE(r.ok());
  EXPECT_FALSE(r->feasible);
  EXPECT_THAT(r->binding_constraint, HasSubstr("memory"));
  EXPECT_FALSE(r->plans.empty());
}

TEST_F(PlannerSweepTest, ObjectivesRankDifferently) {
  PlannerOptions options = Afd();
  options.objective = Objective::kChipsForRate;
  absl::StatusOr<PlanResult> r = RunPlanner(*config_, *cluster_, *workload_, options);
  ASSERT_TRUE(r.ok());
  ASSERT_TRUE(r->feasible);
  for (size_t i = 1; i < r->plans.size(); ++i) EXPECT_LE(r->plans[i - 1].chips, r->plans[i].chips);
  EXPECT_LE(r->plans[0].chips, result_->plans[0].chips);
  options.objective = Objective::kCost;
  r = RunPlanner(*config_, *cluster_, *workload_, options);
  ASSERT_TRUE(r.ok());
  for (size_t i = 1; i < r->plans.size(); ++i) {
    EXPECT_LE(r->plans[i - 1].cost_per_hour, r->plans[i].cost_per_hour);
  }
}

// DeepSeek-V3 (MLA, group-limited routing, dense first layers) plans too.
TEST(PlannerTest, PlansDeepSeekV3) {
  const ModelConfig config = PresetModelConfig("deepseek-v3");
  const ClusterConfig cluster = ShippedClusterConfig("planner/validation/h800-deepseek.yaml");
  absl::StatusOr<Workload> workload =
      LoadWorkload(kRoot + "/planner/validation/deepseek-v3-day6.yaml");
  ASSERT_TRUE(workload.ok()) << workload.status();
  PlannerOptions options;
  options.layouts = LayoutFamily::kBoth;
  absl::StatusOr<PlanResult> r = RunPlanner(config, cluster, *workload, options);
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->feasible) << r->binding_constraint;
  EXPECT_GE(r->candidates, 10000);
}

// DeepSeek-V4.1-Flash: CSA2 KV at the released precision (3 ratio-2 sources × (288 + 68) / 2
// + layer 20's 288 + 68 = 890 B/token; windows 40 × 128 × 528 B and 3 compressor buffers of
// 2 × 2 × 512 × 4 B per sequence) and the released Engram tables on memory nodes
// ((384006168 + 384016682) rows × 264 B), looked up at 2 layers × 24 rows × 264 B a token.
TEST(PlannerTest, PlansDeepSeekV41FlashWithEngramMemoryNodes) {
  const ModelConfig config = PresetModelConfig("deepseek-v4.1-flash");
  const ClusterConfig cluster = ShippedClusterConfig("cluster-configs/atlas950-superpod.yaml");
  const Workload workload = LoadShipped("chat");
  absl::StatusOr<PlanResult> r = RunPlanner(config, cluster, workload, {});
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_FALSE(r->plans.empty());
  EXPECT_TRUE(r->feasible) << r->binding_constraint;
  EXPECT_DOUBLE_EQ(r->kv_bytes_per_token, 890);
  EXPECT_DOUBLE_EQ(r->kv_fixed_bytes_per_sequence, 40 * 128 * 528 + 3 * 8192);
  EXPECT_DOUBLE_EQ(r->engram_table_bytes, (384006168.0 + 384016682.0) * 264);
  EXPECT_DOUBLE_EQ(r->engram_bytes_per_token, 2 * 24 * 264);
  EXPECT_EQ(r->speculative_drafts, 0);  // DSpark is not modelled
  for (const Plan& plan : r->plans) {
    // Enough RAM for the tables (512 GB nodes, replication 1) and enough network (50 GB/s a
    // node) for the lookups of every unit at its planned load.
    const double tokens_per_s =
        plan.prefill_units * plan.prefill.tokens_per_s * plan.prefill.max_load +
        plan.decode_units * plan.decode.tokens_per_s * plan.decode.max_load;
    EXPECT_NEAR(plan.engram_lookup_bytes_per_s, tokens_per_s * 12672, 1e-6 * tokens_per_s);
    const int expected_nodes = std::max(
        1, static_cast<int>(
               std::ceil(std::max(202758032400.0 / 512e9, plan.engram_lookup_bytes_per_s / 50e9))));
    EXPECT_EQ(plan.memory_nodes, expected_nodes);
    EXPECT_DOUBLE_EQ(plan.engram_ram_per_node, 202758032400.0 / plan.memory_nodes);
  }
  const Plan& best = r->plans[0];
  EXPECT_GT(best.decode.step.stages.engram, 0);
  EXPECT_GT(best.decode.step.stages.component[static_cast<int>(CostComponent::kEngram)], 0);
  // The KV a decode rank holds is the released-precision state of its sequences.
  EXPECT_GT(best.decode.attention_memory.kv, 0);
  const std::string table = FormatPlanTable(*r);
  EXPECT_THAT(table, HasSubstr("KV 890.0 B/token"));
  EXPECT_THAT(table, HasSubstr("Engram tables 202.76 GB"));
  EXPECT_THAT(table, HasSubstr("lookups 12672 B/token"));
  EXPECT_THAT(table, HasSubstr("GB RAM (tables 202.76 GB x replication 1)"));
}

// Replication puts a copy of every row on `replication` nodes: RAM per node is the tables ×
// replication / nodes, with one node per replica at least.
TEST(PlannerTest, EngramReplicationMultipliesMemoryNodeRam) {
  const ModelConfig config = PresetModelConfig("deepseek-v4.1-flash");
  ClusterConfig cluster = ShippedClusterConfig("cluster-configs/atlas950-superpod.yaml");
  cluster.engram.replication = 3;
  cluster.engram.memory_node_ram = 256e9;
  PlannerOptions options;
  options.top = 1;
  absl::StatusOr<PlanResult> r = RunPlanner(config, cluster, LoadShipped("chat"), options);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_FALSE(r->plans.empty());
  const Plan& best = r->plans[0];
  // 3 × 202.76 GB over 256 GB nodes needs 3 nodes for capacity.
  EXPECT_GE(best.memory_nodes, 3);
  EXPECT_DOUBLE_EQ(best.engram_ram_per_node, 3 * 202758032400.0 / best.memory_nodes);
  EXPECT_LE(best.engram_ram_per_node, 256e9);
}

TEST(PlannerCliTest, PlansDeepSeekV41Flash) {
  dsv4::testing::TempDir dir("plan-v41");
  const auto run = dsv4::testing::RunCommand(
      dsv4::testing::Dsv4() +
      " plan --model deepseek-v4.1-flash --cluster atlas950-superpod --workload chat --top 3 "
      "--json " +
      dir.path() + "/r.json");
  ASSERT_EQ(run.exit_code, 0) << run.output;
  EXPECT_THAT(run.output, HasSubstr("KV 890.0 B/token"));
  EXPECT_THAT(run.output, HasSubstr("Engram tables 202.76 GB"));
  EXPECT_THAT(run.output, HasSubstr("Engram memory nodes"));
  std::ifstream json(dir.path() + "/r.json");
  const nlohmann::json j = nlohmann::json::parse(json);
  EXPECT_DOUBLE_EQ(j["kv_bytes_per_token"].get<double>(), 890);
  EXPECT_NEAR(j["engram_table_GB"].get<double>(), 202.758, 1e-3);
  EXPECT_GE(j["plans"][0]["engram_memory_nodes"].get<int>(), 1);
}

TEST(PlannerCliTest, AcceptsDashedFlagsAndWritesOutputs) {
  dsv4::testing::TempDir dir("plan-cli");
  const auto run = dsv4::testing::RunCommand(
      dsv4::testing::Dsv4() +
      " plan --model models/deepseek-v4-pro/config.json --cluster "
      "cluster-configs/atlas950-superpod.yaml --workload workloads/chat.yaml --slo-tpot-ms 45 "
      "--objective=chips-for-rate --layouts afd --top 3 --json " +
      dir.path() + "/r.json --svg " + dir.path() + "/r.svg --emit-cluster-config " + dir.path() +
      "/unit.yaml");
  ASSERT_EQ(run.exit_code, 0) << run.output;
  EXPECT_THAT(run.output, HasSubstr("TPOT <= 45.0 ms"));
  EXPECT_THAT(run.output, HasSubstr("objective chips-for-rate"));
  EXPECT_THAT(run.output, HasSubstr("loads as a cluster config"));
  std::ifstream json(dir.path() + "/r.json");
  EXPECT_EQ(nlohmann::json::parse(json)["plans"].size(), 3u);
  EXPECT_TRUE(std::ifstream(dir.path() + "/unit.prefill.yaml").good());

  const auto bad = dsv4::testing::RunCommand(dsv4::testing::Dsv4() +
                                             " plan --model deepseek-v4-pro --cluster "
                                             "atlas950-superpod --workload nope");
  EXPECT_EQ(bad.exit_code, 2);
  EXPECT_THAT(bad.output, HasSubstr("--workload: cannot open 'nope'"));
}

nlohmann::json ReadJson(const std::string& path) {
  std::ifstream in(path);
  return nlohmann::json::parse(in);
}

const std::string kProPlan = " --model deepseek-v4-pro --cluster atlas950-superpod --workload chat";

// `dsv4 plan evaluate` of the search's chosen layouts prints the search's figures: the same
// computation, through the flags. The default search is co-located; the library test above
// covers afd.
TEST(PlannerCliTest, EvaluateReproducesTheSearchsChosenPlan) {
  dsv4::testing::TempDir dir("plan-eval");
  const auto search = dsv4::testing::RunCommand(dsv4::testing::Dsv4() + " plan" + kProPlan +
                                                " --json " + dir.path() + "/r.json");
  ASSERT_EQ(search.exit_code, 0) << search.output;
  const nlohmann::json chosen = ReadJson(dir.path() + "/r.json")["plans"][0];
  for (const char* phase : {"prefill", "decode"}) {
    const nlohmann::json& layout = chosen[phase]["layout"];
    const std::string out = dir.path() + "/" + phase + ".json";
    const auto pinned = dsv4::testing::RunCommand(
        dsv4::testing::Dsv4() + " plan evaluate" + kProPlan + " --unit '" +
        layout["description"].get<std::string>() + "' --ranks-per-chip " +
        std::to_string(layout["ranks_per_chip"].get<int>()) + " --shared-expert-ranks " +
        std::to_string(layout["shared_expert_ranks"].get<int>()) + " --json " + out);
    ASSERT_EQ(pinned.exit_code, 0) << pinned.output;
    EXPECT_EQ(ReadJson(out)["evaluation"], chosen[phase]) << phase;
    EXPECT_THAT(pinned.output, HasSubstr("time by component (ms, roofline)"));
    EXPECT_THAT(pinned.output, HasSubstr("link time (ms): intra_node"));
    EXPECT_THAT(pinned.output, HasSubstr("binding: "));
    EXPECT_THAT(pinned.output, HasSubstr("dsv4-engine: cannot run it"));
  }
  // The same decode layout spelt out flag by flag.
  const nlohmann::json& d = chosen["decode"]["layout"];
  const std::string out = dir.path() + "/flags.json";
  const auto flags = dsv4::testing::RunCommand(
      dsv4::testing::Dsv4() + " plan evaluate" + kProPlan +
      " --phase decode --layout colocated --attention_ranks " +
      std::to_string(d["attention_ranks"].get<int>()) + " --batch " +
      std::to_string(d["sequences_per_rank"].get<int>()) + " --micro_batches " +
      std::to_string(d["micro_batches"].get<int>()) + " --redundant_experts " +
      std::to_string(d["redundant_experts"].get<int>()) +
      " --hierarchical=" + (d["dispatch"] == "hierarchical" ? "true" : "false") + " --json " + out);
  ASSERT_EQ(flags.exit_code, 0) << flags.output;
  EXPECT_EQ(ReadJson(out)["evaluation"], chosen["decode"]);
}

TEST(PlannerCliTest, EvaluateNamesTheFlagAtFault) {
  const std::string evaluate = dsv4::testing::Dsv4() + " plan evaluate" + kProPlan;
  auto r = dsv4::testing::RunCommand(evaluate + " --layout afd --attention_ranks 8 --batch 64");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.output, HasSubstr("give --phase prefill|decode"));
  r = dsv4::testing::RunCommand(evaluate + " --unit 'A8+X8 r0 b64 m1 flat'");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.output, HasSubstr("--unit \"A8+X8 r0 b64 m1 flat\": expected the ranks first"));
  r = dsv4::testing::RunCommand(evaluate + " --unit 'A8+E7 r0 b64 m1 flat'");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.output, HasSubstr("do not divide evenly over 7 expert ranks"));
  r = dsv4::testing::RunCommand(evaluate + " --unit 'A8+E8 r0 b2 m3 flat'");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.output, HasSubstr("--micro_batches: 3 is more than the batch"));
  // Too big for the cluster, and said so.
  r = dsv4::testing::RunCommand(evaluate + " --unit 'A8192+E384 r0 b64 m1 flat'");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("INFEASIBLE: "));
  EXPECT_THAT(r.output, HasSubstr("needs 8576 chips, the cluster has 8192"));
}

// Without a TTFT SLO prefill would take the largest steps: the planner then plans to a
// default it shows.
TEST(PlannerCliTest, DefaultTtftSloIsShown) {
  dsv4::testing::TempDir dir("plan-slo");
  std::ifstream in(kRoot + "/workloads/chat.yaml");
  std::string chat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  chat = chat.substr(0, chat.find("slo:"));
  ASSERT_THAT(chat, ::testing::Not(HasSubstr("ttft_ms")));
  dsv4::testing::WriteFile(dir.path() + "/w.yaml", chat);
  const auto run =
      dsv4::testing::RunCommand(dsv4::testing::Dsv4() +
                                " plan --model deepseek-v4-pro --cluster atlas950-superpod "
                                "--top 2 --workload " +
                                dir.path() + "/w.yaml --json " + dir.path() + "/r.json");
  ASSERT_EQ(run.exit_code, 0) << run.output;
  EXPECT_THAT(run.output, HasSubstr("SLO TTFT p90 <= 2000 ms, TPOT none"));
  EXPECT_THAT(run.output, HasSubstr("TTFT SLO p90 2000 ms by default"));
  const nlohmann::json j = ReadJson(dir.path() + "/r.json");
  EXPECT_DOUBLE_EQ(j["slo"]["ttft_p90_ms"].get<double>(), 2000);
  EXPECT_LE(j["plans"][0]["ttft_p90_ms"].get<double>(), 2000 * (1 + 1e-9));
  // The flag still overrides it.
  const auto flag =
      dsv4::testing::RunCommand(dsv4::testing::Dsv4() +
                                " plan --model deepseek-v4-pro --cluster atlas950-superpod "
                                "--top 1 --slo_ttft_ms 900 --workload " +
                                dir.path() + "/w.yaml");
  EXPECT_THAT(flag.output, HasSubstr("SLO TTFT p90 <= 900 ms"));
  EXPECT_THAT(flag.output, ::testing::Not(HasSubstr("by default")));
}

// Co-located plans (the default search) cannot run on dsv4-engine: nothing is emitted, and
// the message says how to get plans it runs.
TEST(PlannerCliTest, EmitRefusesCoLocatedPlans) {
  dsv4::testing::TempDir dir("plan-emit-cli");
  const auto run = dsv4::testing::RunCommand(dsv4::testing::Dsv4() + " plan" + kProPlan +
                                             " --emit_cluster_config " + dir.path() + "/u.yaml");
  EXPECT_EQ(run.exit_code, 2);
  EXPECT_THAT(run.output, HasSubstr("add --layouts afd (or both)"));
  EXPECT_FALSE(std::ifstream(dir.path() + "/u.yaml").good());
  // With both families the best afd plan is emitted.
  const auto both = dsv4::testing::RunCommand(dsv4::testing::Dsv4() + " plan" + kProPlan +
                                              " --layouts both --top 50 --emit_cluster_config " +
                                              dir.path() + "/u.yaml");
  ASSERT_EQ(both.exit_code, 0) << both.output;
  EXPECT_THAT(both.output, HasSubstr("loads as a cluster config"));
  EXPECT_THAT(both.output, HasSubstr("no KV\n  hand-off"));
  EXPECT_TRUE(LoadClusterConfig(dir.path() + "/u.yaml").ok());
}

// The emitted YAML starts a real engine: a plan of the small v4-tiny preset on the local
// cluster, each unit's YAML run by dsv4-engine under mpirun on a generated checkpoint
// (prefill then decode of two prompts). V4-Pro plans get the engine's startup checks above.
TEST(PlannerCliTest, EmittedYamlStartsAnEngine) {
  dsv4::testing::TempDir dir("plan-engine-run");
  const auto plan = dsv4::testing::RunCommand(
      dsv4::testing::Dsv4() +
      " plan --model v4-tiny --cluster local --workload chat --layouts afd --top 3 "
      "--emit_cluster_config " +
      dir.path() + "/unit.yaml");
  ASSERT_EQ(plan.exit_code, 0) << plan.output;
  const auto gen = dsv4::testing::RunCommand(dsv4::testing::Dsv4() +
                                             " checkpoint generate --preset v4-tiny --seed 7 "
                                             "--out " +
                                             dir.path() + "/ckpt");
  ASSERT_EQ(gen.exit_code, 0) << gen.output;
  for (const char* unit : {"unit", "unit.prefill"}) {
    const std::string yaml = dir.path() + "/" + unit + ".yaml";
    absl::StatusOr<ClusterConfig> cluster = LoadClusterConfig(yaml);
    ASSERT_TRUE(cluster.ok()) << cluster.status();
    const std::string logits = dir.path() + "/" + unit + ".npy";
    const auto engine = dsv4::testing::RunCommand(
        absl::StrCat("timeout 120 env OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 "
                     "OMP_WAIT_POLICY=PASSIVE mpirun --oversubscribe -np ",
                     cluster->roles.num_ranks(), " ", DSV4_BIN_DIR, "/dsv4-engine --cluster ", yaml,
                     " --checkpoint ", dir.path(),
                     "/ckpt --tokens '1,2,3;4,5' --decode_from 2 --logits_out ", logits));
    EXPECT_EQ(engine.exit_code, 0) << unit << ": " << engine.output;
    for (int prompt : {0, 1}) {  // the engine writes <stem>.<prompt>.npy
      EXPECT_TRUE(std::ifstream(absl::StrCat(dir.path(), "/", unit, ".", prompt, ".npy")).good())
          << unit << " prompt " << prompt;
    }
  }
}

}  // namespace
}  // namespace dsv4::planner
