// dsv4-engine: the distributed engine, one MPI world (DESIGN.md "Processes and planes").
// Ranks 0..A-1 attend (data parallel over sequences), ranks A..A+E-1 hold routed experts;
// every step the leader (rank 0) broadcasts the plan and all ranks run it layer by layer in
// lock step, routed tokens going by MPI all-to-all.
//
// One-shot mode (tests, benchmarks): the prompts of --tokens ("1,2,3" or, for several
// sequences, "1,2,3;4,5,6,7") are prefilled (or prefilled up to --decode_from then decoded
// token by token) and the logits of every prompt position are written like `dsv4 run`'s:
// float32 [T, vocab] .npy, to --logits_out for one sequence and, for several, to
// FILE.<i>.npy for sequence i (FILE being --logits_out without its .npy suffix).
//
// A failing rank prints "dsv4-engine: rank R (role): <error>" and aborts the whole world
// (MPI_Abort), so the job exits non-zero instead of hanging.
#include <mpi.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "attention_node/model.h"
#include "cli/cli_util.h"
#include "coordinator/placement.h"
#include "core/cluster_config.h"
#include "core/cost_model.h"
#include "core/kernels.h"
#include "core/model_config.h"
#include "core/npy.h"
#include "core/safetensors.h"
#include "core/topology.h"
#include "dispatch/dispatcher.h"
#include "engine/attention_rank.h"
#include "engine/expert_rank.h"
#include "engine/mpi_expert_executor.h"
#include "engine/step_plan.h"
#include "engram_store/client.h"
#include "expert_node/routed_experts.h"
#include "nlohmann/json.hpp"

ABSL_FLAG(std::string, cluster, "", "cluster YAML (roles, topology, engine settings)");
ABSL_FLAG(std::string, checkpoint, "", "checkpoint directory (config.json and safetensors)");
ABSL_FLAG(std::string, tokens, "",
          "prompt token ids, comma-separated; several sequences separated by ';'");
ABSL_FLAG(std::string, logits_out, "",
          "write each prompt's logits, float32 [T, vocab], here (FILE.<i>.npy per sequence when "
          "there are several)");
ABSL_FLAG(int64_t, decode_from, 0,
          "prefill this many prompt tokens, then decode the rest one at a time (0: prefill all)");
ABSL_FLAG(std::string, stats_out, "",
          "write per-step measured and modelled times, resident bytes and overlap as JSON");
ABSL_FLAG(int32_t, threads, 1, "OpenBLAS threads per rank");
ABSL_FLAG(int32_t, fail_rank, -1, "test only: this rank exits abnormally (_exit(3)) ...");
ABSL_FLAG(int64_t, fail_at_step, 0, "test only: ... at the start of this step");

namespace dsv4 {
namespace {

using Clock = std::chrono::steady_clock;
static_assert(std::is_trivially_copyable_v<StepCost>, "StepCost is gathered as bytes");

absl::StatusOr<std::vector<std::vector<int32_t>>> ParsePrompts(const std::string& text) {
  std::vector<std::vector<int32_t>> prompts;
  for (absl::string_view sequence : absl::StrSplit(text, ';', absl::SkipWhitespace())) {
    std::vector<int32_t>& tokens = prompts.emplace_back();
    for (absl::string_view part : absl::StrSplit(sequence, ',', absl::SkipWhitespace())) {
      int32_t id = 0;
      if (!absl::SimpleAtoi(part, &id)) {
        return absl::InvalidArgumentError(
            absl::StrCat("--tokens: \"", part, "\" is not an integer"));
      }
      tokens.push_back(id);
    }
    if (tokens.empty()) return absl::InvalidArgumentError("--tokens: empty sequence");
  }
  if (prompts.empty()) return absl::InvalidArgumentError("--tokens is empty: give a prompt");
  return prompts;
}

std::string LogitsPath(const std::string& out, size_t sequence, size_t sequences) {
  if (sequences == 1) return out;
  return absl::StrCat(absl::StripSuffix(out, ".npy"), ".", sequence, ".npy");
}

// Where the expert ranks sit as seen from attention rank `rank`, for the cost model.
ExpertGeometry GeometryFor(const Topology& topology, int rank, const ModelConfig& config,
                           bool hierarchical) {
  ExpertGeometry g;
  const int attention = topology.num_attention_ranks();
  const int experts = topology.num_expert_ranks();
  std::vector<int> nodes, supernodes;
  const ChipPosition& self = topology.rank_position(rank);
  for (int r = attention; r < attention + experts; ++r) {
    const ChipPosition& p = topology.rank_position(r);
    if (p.global_node == self.global_node) g.same_node += 1;
    if (p.supernode == self.supernode) g.same_supernode += 1;
    nodes.push_back(p.global_node);
    supernodes.push_back(p.supernode);
  }
  auto distinct = [](std::vector<int> v) {
    std::sort(v.begin(), v.end());
    return static_cast<double>(std::unique(v.begin(), v.end()) - v.begin());
  };
  g.expert_ranks = experts;
  g.experts_per_rank = static_cast<double>(config.n_routed_experts) / experts;
  g.ranks_per_node = experts / distinct(nodes);
  g.ranks_per_supernode = experts / distinct(supernodes);
  g.hierarchical = hierarchical;
  return g;
}

class Engine {
 public:
  absl::Status Run();

 private:
  absl::Status Setup();
  absl::Status Loop();
  absl::Status WriteOutputs();
  // Rank 0 collects one value per rank.
  template <typename T>
  std::vector<T> Gather(const T& value) {
    std::vector<T> all(rank_ == 0 ? size_ : 0);
    MPI_Gather(&value, sizeof(T), MPI_BYTE, all.data(), sizeof(T), MPI_BYTE, 0, MPI_COMM_WORLD);
    return all;
  }

  int rank_ = 0, size_ = 0;
  bool attention_ = false;
  ClusterConfig cluster_;
  std::unique_ptr<Topology> topology_;
  ModelConfig config_;
  std::unique_ptr<Checkpoint> checkpoint_;
  std::unique_ptr<ExpertPlacement> placement_;
  std::unique_ptr<Dispatcher> dispatcher_;
  std::unique_ptr<engram::EngramClient> engram_;   // attention ranks, tables on memory nodes
  std::unique_ptr<Model> model_;                   // attention ranks
  std::unique_ptr<MpiExpertExecutor> executor_;    // attention ranks
  std::unique_ptr<AttentionRank> attention_rank_;  // attention ranks
  std::unique_ptr<RoutedExperts> experts_;         // expert ranks
  std::unique_ptr<ExpertRank> expert_rank_;        // expert ranks
  std::vector<std::vector<int32_t>> prompts_;
  nlohmann::json stats_;
};

absl::Status Engine::Setup() {
  MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
  MPI_Comm_size(MPI_COMM_WORLD, &size_);
  SetBlasThreads(absl::GetFlag(FLAGS_threads));
  absl::StatusOr<ClusterConfig> cluster = LoadClusterConfig(absl::GetFlag(FLAGS_cluster));
  if (!cluster.ok()) return cluster.status();
  cluster_ = std::move(*cluster);
  if (cluster_.roles.num_ranks() != size_) {
    return absl::InvalidArgumentError(absl::StrCat(
        cluster_.path, ": roles give ", cluster_.roles.attention_ranks, " attention + ",
        cluster_.roles.expert_ranks, " expert ranks, but the MPI world has ", size_,
        " ranks (mpirun -np ", cluster_.roles.num_ranks(), ")"));
  }
  absl::StatusOr<Topology> topology = Topology::Build(cluster_);
  if (!topology.ok()) return topology.status();
  topology_ = std::make_unique<Topology>(std::move(*topology));
  attention_ = topology_->role(rank_) == RankRole::kAttention;
  absl::StatusOr<std::vector<std::vector<int32_t>>> prompts =
      ParsePrompts(absl::GetFlag(FLAGS_tokens));
  if (!prompts.ok()) return prompts.status();
  prompts_ = std::move(*prompts);

  const std::string dir = absl::GetFlag(FLAGS_checkpoint);
  if (dir.empty()) return absl::InvalidArgumentError("--checkpoint DIR is required");
  absl::StatusOr<ModelConfig> config = LoadModelConfigFromDir(dir);
  if (!config.ok()) return config.status();
  config_ = std::move(*config);
  absl::StatusOr<std::unique_ptr<Checkpoint>> checkpoint = Checkpoint::Open(dir);
  if (!checkpoint.ok()) return checkpoint.status();
  checkpoint_ = std::move(*checkpoint);

  // Placement over the expert ranks; dispatcher slots map onto world ranks A + expert rank.
  const int attention_ranks = topology_->num_attention_ranks();
  const int expert_ranks = topology_->num_expert_ranks();
  std::vector<int> expert_nodes;
  for (int r = attention_ranks; r < size_; ++r) {
    expert_nodes.push_back(topology_->rank_position(r).global_node);
  }
  std::sort(expert_nodes.begin(), expert_nodes.end());
  PlacementOptions placement_options;
  placement_options.policy = cluster_.engine.placement;
  placement_options.num_slots = config_.n_routed_experts + cluster_.engine.redundant_experts;
  placement_options.num_groups = config_.n_group;
  placement_options.num_nodes = static_cast<int>(
      std::unique(expert_nodes.begin(), expert_nodes.end()) - expert_nodes.begin());
  placement_options.num_ranks = expert_ranks;
  absl::StatusOr<ExpertPlacement> placement = ExpertPlacement::Uniform(
      config_.num_hidden_layers, config_.n_routed_experts, placement_options);
  if (!placement.ok()) return placement.status();
  placement_ = std::make_unique<ExpertPlacement>(std::move(*placement));
  std::vector<int> rank_of_slot(placement_->num_slots());
  for (int s = 0; s < placement_->num_slots(); ++s) {
    rank_of_slot[s] = attention_ranks + placement_->RankOfSlot(s);
  }
  DispatcherOptions dispatch_options;
  dispatch_options.hidden = config_.hidden_size;
  dispatch_options.top_k = config_.num_experts_per_tok;
  dispatch_options.mode = cluster_.engine.dispatch;
  dispatch_options.micro_batches = cluster_.engine.micro_batches;
  absl::StatusOr<std::unique_ptr<Dispatcher>> dispatcher =
      Dispatcher::Create(MPI_COMM_WORLD, *topology_, std::move(rank_of_slot), dispatch_options);
  if (!dispatcher.ok()) return dispatcher.status();
  dispatcher_ = std::move(*dispatcher);

  int64_t resident = 0;
  if (attention_) {
    ModelOptions options;
    options.max_seq_len = cluster_.engine.max_seq_len;
    absl::StatusOr<std::unique_ptr<engram::EngramClient>> engram =
        cli::ConnectEngram(config_, cluster_.engram);
    if (!engram.ok()) return engram.status();
    engram_ = std::move(*engram);
    options.engram_rows = engram_.get();
    absl::StatusOr<std::unique_ptr<Model>> model = Model::Load(config_, checkpoint_.get(), options);
    if (!model.ok()) return model.status();
    model_ = std::move(*model);
    resident = model_->weight_bytes();
    executor_ = std::make_unique<MpiExpertExecutor>(dispatcher_.get(), placement_.get(), rank_);
    attention_rank_ = std::make_unique<AttentionRank>(
        model_.get(), executor_.get(), rank_, cluster_.engine.micro_batches,
        GeometryFor(*topology_, rank_, config_, dispatcher_->two_stage()));
  } else {
    const int expert_rank = rank_ - attention_ranks;
    const ExpertPlacement& p = *placement_;
    const int layers = config_.num_hidden_layers;
    absl::StatusOr<std::unique_ptr<RoutedExperts>> experts = RoutedExperts::Load(
        config_, checkpoint_.get(),
        [&](int layer, int e) { return layer < layers && p.RankHolds(layer, expert_rank, e); },
        /*include_mtp=*/false);
    if (!experts.ok()) return experts.status();
    experts_ = std::move(*experts);
    resident = experts_->weight_bytes();
    expert_rank_ =
        std::make_unique<ExpertRank>(config_, experts_.get(), placement_.get(), dispatcher_.get());
  }
  const std::vector<int64_t> resident_all = Gather(resident);
  if (rank_ == 0) {
    std::cout << absl::StrFormat(
        "dsv4-engine: %d attention + %d expert ranks, %s dispatch, %d slots (%d redundant), "
        "%d micro-batches\n",
        attention_ranks, expert_ranks, dispatcher_->two_stage() ? "hierarchical" : "flat",
        placement_->num_slots(), cluster_.engine.redundant_experts, cluster_.engine.micro_batches);
    for (int r = 0; r < size_; ++r) {
      std::cout << absl::StrFormat(
          "resident: rank %d (%s, %s) %s weights (fp32)\n", r,
          topology_->role(r) == RankRole::kAttention ? "attention" : "expert",
          topology_->rank_position(r).ToString(),
          cli::FormatBytes(static_cast<double>(resident_all[r])));
      stats_["resident_bytes"].push_back(resident_all[r]);
    }
  }
  return absl::OkStatus();
}

absl::Status Engine::Loop() {
  const int attention_ranks = topology_->num_attention_ranks();
  const int64_t decode_from = absl::GetFlag(FLAGS_decode_from);
  for (const std::vector<int32_t>& p : prompts_) {
    if (decode_from < 0 || decode_from > static_cast<int64_t>(p.size())) {
      return absl::InvalidArgumentError(
          absl::StrCat("--decode_from must be in [0, ", p.size(), "], got ", decode_from));
    }
  }
  OneShotPlanner planner(prompts_, decode_from, cluster_.engine.chunked_prefill_tokens,
                         attention_ranks, cluster_.engine.micro_batches);
  double total_seconds = 0;
  for (;;) {
    StepPlan plan;
    if (rank_ == 0) plan = planner.Next();
    if (absl::Status s = BroadcastPlan(&plan, 0, MPI_COMM_WORLD); !s.ok()) return s;
    if (plan.stop) break;
    if (rank_ == absl::GetFlag(FLAGS_fail_rank) && plan.step == absl::GetFlag(FLAGS_fail_at_step)) {
      std::cerr << absl::StrFormat(
                       "dsv4-engine: rank %d: --fail_rank: exiting with code 3 at step %d\n", rank_,
                       plan.step)
                << std::flush;
      _exit(3);
    }
    const Clock::time_point start = Clock::now();
    StepCost cost;
    cost.micro_batches = cluster_.engine.micro_batches;
    absl::Status status =
        attention_ ? attention_rank_->RunStep(plan, &cost) : expert_rank_->RunStep(&cost);
    if (!status.ok()) return status;
    const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
    total_seconds += seconds;
    std::vector<StepCost> costs = Gather(cost);
    const std::vector<double> times = Gather(seconds);
    if (rank_ != 0) continue;
    // An expert rank receives what the attention ranks send and returns as much: it mirrors
    // their exchanges, shared over the expert ranks (as the planner's unit step does).
    StepCost sent;
    for (int r = 0; r < attention_ranks; ++r) {
      sent.dispatch += costs[r].dispatch;
      sent.combine += costs[r].combine;
    }
    for (int r = attention_ranks; r < size_; ++r) {
      const double share = 1.0 / (size_ - attention_ranks);
      costs[r].dispatch = sent.dispatch;
      costs[r].combine = sent.combine;
      costs[r].dispatch *= share;
      costs[r].combine *= share;
      costs[r].dispatch.exchanges = costs[0].dispatch.exchanges;
      costs[r].combine.exchanges = costs[0].combine.exchanges;
    }
    const StepTime modelled = ModelledTime(costs, cluster_.hardware, cluster_.topology.links);
    int64_t tokens = 0;
    for (const PlanEntry& e : plan.entries) tokens += static_cast<int64_t>(e.tokens.size());
    const double cpu = *std::max_element(times.begin(), times.end());
    std::cout << absl::StrFormat(
        "step %d: %d tokens, %d sequences: cpu %.3f ms, modelled %.3f us on %s (%s-bound)\n",
        plan.step, tokens, plan.entries.size(), cpu * 1e3, modelled.total * 1e6,
        cluster_.hardware.name, BottleneckName(modelled.binding));
    std::cout << std::flush;  // progress is visible as it happens, also through a pipe
    stats_["steps"].push_back({{"step", plan.step},
                               {"tokens", tokens},
                               {"cpu_seconds", cpu},
                               {"modelled_seconds", modelled.total}});
  }
  if (engram_) {
    std::cout << absl::StrCat(cli::EngramReport(*engram_), " (rank ", rank_, ")\n");
  }
  // Overlap: how long attention ranks were blocked on the experts, of their step time.
  const double waited = attention_ ? executor_->wait_seconds() : 0;
  const std::vector<double> waits = Gather(waited);
  const std::vector<double> totals = Gather(total_seconds);
  if (rank_ == 0) {
    double wait_sum = 0, total_sum = 0;
    for (int r = 0; r < attention_ranks; ++r) {
      wait_sum += waits[r];
      total_sum += totals[r];
    }
    const double fraction = total_sum > 0 ? wait_sum / total_sum : 0;
    std::cout << absl::StrFormat(
        "overlap: attention ranks blocked on the expert ranks (MpiExpertExecutor Start + Finish) "
        "for %.3f s of %.3f s of steps (%.1f%%)\n",
        wait_sum, total_sum, 100 * fraction);
    stats_["attention_wait_seconds"] = wait_sum;
    stats_["attention_step_seconds"] = total_sum;
  }
  return absl::OkStatus();
}

absl::Status Engine::WriteOutputs() {
  const std::string out = absl::GetFlag(FLAGS_logits_out);
  if (attention_ && !out.empty()) {
    const int64_t vocab = config_.vocab_size;
    for (const auto& [sequence, rows] : attention_rank_->logits()) {
      if (absl::Status s =
              WriteNpyF32(LogitsPath(out, sequence, prompts_.size()),
                          {static_cast<int64_t>(rows.size()) / vocab, vocab}, rows.data());
          !s.ok()) {
        return s;
      }
    }
  }
  const std::string stats = absl::GetFlag(FLAGS_stats_out);
  if (rank_ == 0 && !stats.empty()) {
    std::ofstream file(stats);
    file << stats_.dump(2) << "\n";
    if (!file) return absl::InternalError(absl::StrCat("cannot write ", stats));
  }
  return absl::OkStatus();
}

absl::Status Engine::Run() {
  if (absl::Status s = Setup(); !s.ok()) return s;
  if (absl::Status s = Loop(); !s.ok()) return s;
  return WriteOutputs();
}

}  // namespace
}  // namespace dsv4

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  const std::vector<std::string> positional = dsv4::cli::ParseFlags(
      argc, argv,
      "mpirun -np N dsv4-engine --cluster CFG.yaml --checkpoint DIR --tokens 1,2,3[;4,5,...]\n"
      "       [--logits-out FILE.npy] [--decode-from K] [--stats-out FILE.json]\n\n"
      "The distributed engine: attention ranks (data parallel over sequences) and expert ranks\n"
      "(routed experts per the placement) in lock step, tokens routed by MPI all-to-all.\n"
      "Writes the same logits as `dsv4 run` (FILE.<i>.npy per sequence when there are several).",
      "dsv4_engine_main.cc");
  absl::Status status = positional.empty()
                            ? dsv4::Engine().Run()
                            : absl::InvalidArgumentError("unexpected argument: " + positional[0]);
  if (!status.ok()) {
    std::cerr << "dsv4-engine: rank " << rank << ": " << status << std::endl;
    const bool usage = absl::IsInvalidArgument(status) || absl::IsNotFound(status);
    MPI_Abort(MPI_COMM_WORLD, usage ? 2 : 1);
  }
  MPI_Finalize();
  return 0;
}
