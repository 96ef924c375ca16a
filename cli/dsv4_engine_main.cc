// dsv4-engine: the distributed engine, one MPI world (DESIGN.md "Processes and planes").
// Ranks 0..A-1 attend (data parallel over sequences), ranks A..A+E-1 hold routed experts;
// every step the leader (rank 0) broadcasts the plan and all ranks run it layer by layer in
// lock step, routed tokens going by MPI all-to-all.
//
// Serving mode (--coordinator ADDR): the leader dials the coordinator's EngineControl
// service and runs the requests it admits (engine/serving_planner.h), streaming sampled
// tokens back, until the coordinator drains or shuts it down. A heartbeat thread on the
// leader reports load every interval while steps make progress.
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
#include "coordinator/coordinator_server.h"
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
#include "engine/serving_leader.h"
#include "engine/step_plan.h"
#include "engram_store/client.h"
#include "expert_node/routed_experts.h"
#include "nlohmann/json.hpp"
#include "rpc/security.h"

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
ABSL_FLAG(std::string, coordinator, "",
          "serving mode: the coordinator's address (host:port); the leader connects to it");
ABSL_FLAG(std::string, engine_id, "engine-0",
          "serving mode: this engine's id, stable across restarts of the same serving unit");
ABSL_FLAG(int32_t, connect_timeout_s, 60, "serving mode: how long to wait for the coordinator");
ABSL_FLAG(int32_t, max_step_seconds, 300,
          "serving mode: heartbeats stop when a step runs longer, so the coordinator declares "
          "a hung engine dead");
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
  struct StepTiming {
    double cpu_seconds = 0;  // slowest rank
    StepTime modelled;
  };

  absl::Status Setup();
  absl::Status RunOneShot();
  absl::Status Serve();
  absl::Status WriteOutputs();
  // Every rank: runs the broadcast `plan`, appends tokens sampled here to `sampled`; rank 0
  // gets the step's timing.
  absl::StatusOr<StepTiming> RunStep(const StepPlan& plan, std::vector<SampledToken>* sampled);
  engine::v1::Hello MakeHello();
  // Every rank, at a step boundary: the placement from the leader's pending load; expert
  // ranks load the experts of their new slots.
  absl::Status ApplyRebalance(int64_t step);
  absl::Status LoadExperts();
  // Rank 0 collects one value per rank.
  template <typename T>
  std::vector<T> Gather(const T& value) {
    std::vector<T> all(rank_ == 0 ? size_ : 0);
    MPI_Gather(&value, sizeof(T), MPI_BYTE, all.data(), sizeof(T), MPI_BYTE, 0, MPI_COMM_WORLD);
    return all;
  }
  std::vector<SampledToken> GatherSampled(const std::vector<SampledToken>& local);

  int rank_ = 0, size_ = 0;
  bool attention_ = false;
  ClusterConfig cluster_;
  std::unique_ptr<Topology> topology_;
  ModelConfig config_;
  std::unique_ptr<Checkpoint> checkpoint_;
  PlacementOptions placement_options_;
  std::unique_ptr<ExpertPlacement> placement_;
  std::unique_ptr<Dispatcher> dispatcher_;
  std::unique_ptr<engram::EngramClient> engram_;   // attention ranks, tables on memory nodes
  std::unique_ptr<Model> model_;                   // attention ranks
  std::unique_ptr<MpiExpertExecutor> executor_;    // attention ranks
  std::unique_ptr<AttentionRank> attention_rank_;  // attention ranks
  std::unique_ptr<RoutedExperts> experts_;         // expert ranks
  std::unique_ptr<ExpertRank> expert_rank_;        // expert ranks
  std::vector<int64_t> resident_;                  // rank 0: per rank
  std::vector<std::vector<int32_t>> prompts_;      // one-shot mode
  double step_seconds_ = 0;                        // this rank's time in steps
  nlohmann::json stats_;
  std::unique_ptr<ServingLeader> leader_;  // serving mode, rank 0
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
  const bool serving = !absl::GetFlag(FLAGS_coordinator).empty();
  if (serving == !absl::GetFlag(FLAGS_tokens).empty()) {
    return absl::InvalidArgumentError(
        "give either --coordinator ADDR (serving mode) or --tokens (one-shot mode)");
  }
  if (!serving) {
    absl::StatusOr<std::vector<std::vector<int32_t>>> prompts =
        ParsePrompts(absl::GetFlag(FLAGS_tokens));
    if (!prompts.ok()) return prompts.status();
    prompts_ = std::move(*prompts);
  }

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
  PlacementOptions& placement_options = placement_options_;
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
        GeometryFor(*topology_, rank_, config_, dispatcher_->two_stage()),
        /*keep_logits=*/!serving);
  } else {
    if (absl::Status s = LoadExperts(); !s.ok()) return s;
    resident = experts_->weight_bytes();
  }
  resident_ = Gather(resident);
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
          cli::FormatBytes(static_cast<double>(resident_[r])));
      stats_["resident_bytes"].push_back(resident_[r]);
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<Engine::StepTiming> Engine::RunStep(const StepPlan& plan,
                                                   std::vector<SampledToken>* sampled) {
  if (rank_ == absl::GetFlag(FLAGS_fail_rank) && plan.step == absl::GetFlag(FLAGS_fail_at_step)) {
    std::cerr << absl::StrFormat(
                     "dsv4-engine: rank %d: --fail_rank: exiting with code 3 at step %d\n", rank_,
                     plan.step)
              << std::flush;
    _exit(3);
  }
  const int attention_ranks = topology_->num_attention_ranks();
  const Clock::time_point start = Clock::now();
  StepCost cost;
  cost.micro_batches = cluster_.engine.micro_batches;
  absl::Status status =
      attention_ ? attention_rank_->RunStep(plan, &cost, sampled) : expert_rank_->RunStep(&cost);
  if (!status.ok()) return status;
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  step_seconds_ += seconds;
  std::vector<StepCost> costs = Gather(cost);
  const std::vector<double> times = Gather(seconds);
  StepTiming timing;
  if (rank_ != 0) return timing;
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
  timing.modelled = ModelledTime(costs, cluster_.hardware, cluster_.topology.links);
  timing.cpu_seconds = *std::max_element(times.begin(), times.end());
  return timing;
}

std::vector<SampledToken> Engine::GatherSampled(const std::vector<SampledToken>& local) {
  static_assert(sizeof(SampledToken) == 2 * sizeof(int32_t));
  const int count = static_cast<int>(local.size()) * 2;
  const std::vector<int> counts = Gather(count);
  std::vector<int> displs(counts.size(), 0);
  for (size_t r = 1; r < counts.size(); ++r) displs[r] = displs[r - 1] + counts[r - 1];
  std::vector<SampledToken> all(rank_ == 0 ? (displs.back() + counts.back()) / 2 : 0);
  MPI_Gatherv(local.data(), count, MPI_INT32_T, all.data(), counts.data(), displs.data(),
              MPI_INT32_T, 0, MPI_COMM_WORLD);
  return all;
}

absl::Status Engine::RunOneShot() {
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
  for (;;) {
    StepPlan plan;
    if (rank_ == 0) plan = planner.Next();
    if (absl::Status s = BroadcastPlan(&plan, 0, MPI_COMM_WORLD); !s.ok()) return s;
    if (plan.stop) break;
    std::vector<SampledToken> unused;
    absl::StatusOr<StepTiming> timing = RunStep(plan, &unused);
    if (!timing.ok()) return timing.status();
    if (rank_ != 0) continue;
    int64_t tokens = 0;
    for (const PlanEntry& e : plan.entries) tokens += static_cast<int64_t>(e.tokens.size());
    std::cout << absl::StrFormat(
        "step %d: %d tokens, %d sequences: cpu %.3f ms, modelled %.3f us on %s (%s-bound)\n",
        plan.step, tokens, plan.entries.size(), timing->cpu_seconds * 1e3,
        timing->modelled.total * 1e6, cluster_.hardware.name,
        BottleneckName(timing->modelled.binding));
    std::cout << std::flush;  // progress is visible as it happens, also through a pipe
    stats_["steps"].push_back({{"step", plan.step},
                               {"tokens", tokens},
                               {"cpu_seconds", timing->cpu_seconds},
                               {"modelled_seconds", timing->modelled.total}});
  }
  if (engram_) {
    std::cout << absl::StrCat(cli::EngramReport(*engram_), " (rank ", rank_, ")\n");
  }
  // Overlap: how long attention ranks were blocked on the experts, of their step time.
  const double waited = attention_ ? executor_->wait_seconds() : 0;
  const std::vector<double> waits = Gather(waited);
  const std::vector<double> totals = Gather(step_seconds_);
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

absl::Status Engine::LoadExperts() {
  const int expert_rank = rank_ - topology_->num_attention_ranks();
  const ExpertPlacement& p = *placement_;
  const int layers = config_.num_hidden_layers;
  expert_rank_.reset();  // it points at the experts being replaced
  absl::StatusOr<std::unique_ptr<RoutedExperts>> experts = RoutedExperts::Load(
      config_, checkpoint_.get(),
      [&](int layer, int e) { return layer < layers && p.RankHolds(layer, expert_rank, e); },
      /*include_mtp=*/false);
  if (!experts.ok()) return experts.status();
  experts_ = std::move(*experts);
  expert_rank_ =
      std::make_unique<ExpertRank>(config_, experts_.get(), placement_.get(), dispatcher_.get());
  return absl::OkStatus();
}

absl::Status Engine::ApplyRebalance(int64_t step) {
  const int layers = config_.num_hidden_layers, experts = config_.n_routed_experts;
  std::vector<double> flat(static_cast<size_t>(layers) * experts, 0.0);
  if (rank_ == 0) flat = leader_->TakeRebalanceLoad();
  MPI_Bcast(flat.data(), static_cast<int>(flat.size()), MPI_DOUBLE, 0, MPI_COMM_WORLD);
  std::vector<std::vector<double>> load(layers);
  for (int l = 0; l < layers; ++l)
    load[l].assign(flat.begin() + l * experts, flat.begin() + (l + 1) * experts);
  // Every rank computes the same placement from the same load (the policy is deterministic).
  absl::StatusOr<ExpertPlacement> placement = ExpertPlacement::Compute(load, placement_options_);
  if (!placement.ok()) return placement.status();
  *placement_ = std::move(*placement);  // the executor and expert rank hold this object
  if (!attention_) {
    if (absl::Status s = LoadExperts(); !s.ok()) return s;
  }
  if (rank_ != 0) return absl::OkStatus();
  engine::v1::Rebalanced done;
  done.set_step(step);
  done.set_placement_summary(placement_->Summary());
  double imbalance = 0, baseline = 0;
  for (int l = 0; l < layers; ++l) {
    imbalance += placement_->Imbalance(l) / layers;
    baseline += placement_->BaselineImbalance(l) / layers;
  }
  done.set_imbalance(imbalance);
  done.set_baseline_imbalance(baseline);
  std::cout << absl::StrFormat(
                   "dsv4-engine: rebalanced before step %d: mean max/mean rank load %.3f (plain "
                   "placement %.3f)\n",
                   step, imbalance, baseline)
            << std::flush;
  return leader_->Rebalanced(done);
}

engine::v1::Hello Engine::MakeHello() {
  struct Identity {
    int64_t pid;
    char host[64];
  };
  Identity self{getpid(), {}};
  gethostname(self.host, sizeof(self.host) - 1);
  const std::vector<Identity> identities = Gather(self);
  engine::v1::Hello hello;
  hello.set_engine_id(absl::GetFlag(FLAGS_engine_id));
  for (int r = 0; r < static_cast<int>(identities.size()); ++r) {
    engine::v1::RankInfo* info = hello.add_ranks();
    info->set_rank(r);
    info->set_role(topology_->role(r) == RankRole::kAttention ? engine::v1::ROLE_ATTENTION
                                                              : engine::v1::ROLE_EXPERT);
    info->set_position(topology_->rank_position(r).ToString());
    info->set_resident_bytes(resident_[r]);
    info->set_host(identities[r].host);
    info->set_pid(identities[r].pid);
  }
  engine::v1::ModelInfo* model = hello.mutable_model();
  model->set_name(coordinator::ModelNameFromDir(absl::GetFlag(FLAGS_checkpoint)));
  model->set_vocab_size(static_cast<int32_t>(config_.vocab_size));
  model->set_num_layers(config_.num_hidden_layers);
  model->set_num_routed_experts(config_.n_routed_experts);
  hello.set_max_running(topology_->num_attention_ranks() * cluster_.engine.max_seqs_per_rank);
  hello.set_max_seq_len(cluster_.engine.max_seq_len);
  hello.set_placement_summary(placement_->Summary());
  return hello;
}

absl::Status Engine::Serve() {
  const engine::v1::Hello hello = MakeHello();
  if (rank_ == 0) {
    // TLS and the bearer token come from the same YAML as the coordinator's.
    absl::StatusOr<rpc::ClientSecurity> security = rpc::LoadClientSecurity(
        cluster_.coordinator.tls_cert, cluster_.coordinator.auth_token_file);
    if (!security.ok()) return security.status();
    absl::StatusOr<std::unique_ptr<ControlClient>> control = ControlClient::Connect(
        absl::GetFlag(FLAGS_coordinator), security->credentials, security->token, hello,
        absl::Seconds(absl::GetFlag(FLAGS_connect_timeout_s)));
    if (!control.ok()) return control.status();
    ServingLeaderOptions options;
    options.limits.attention_ranks = topology_->num_attention_ranks();
    options.limits.micro_batches = cluster_.engine.micro_batches;
    options.limits.max_seqs_per_rank = cluster_.engine.max_seqs_per_rank;
    options.limits.max_seq_len = cluster_.engine.max_seq_len;
    options.limits.kv_budget_tokens = cluster_.engine.kv_budget_tokens;
    options.limits.chunk = cluster_.engine.chunked_prefill_tokens;
    options.limits.eos_token_id = static_cast<int>(config_.eos_token_id);
    options.num_layers = config_.num_hidden_layers;
    options.num_experts = config_.n_routed_experts;
    options.max_step = absl::Seconds(absl::GetFlag(FLAGS_max_step_seconds));
    leader_ = std::make_unique<ServingLeader>(std::move(*control), options);
    std::cout << "dsv4-engine: " << hello.engine_id() << " serving for "
              << absl::GetFlag(FLAGS_coordinator) << std::endl;
  }
  absl::Status status;
  for (;;) {
    StepPlan plan;
    if (rank_ == 0) {
      absl::StatusOr<StepPlan> next = leader_->NextPlan();
      if (!next.ok()) {
        status = next.status();  // the coordinator is gone: stop every rank, then report
        plan.stop = true;
      } else {
        plan = std::move(*next);
      }
    }
    if (absl::Status s = BroadcastPlan(&plan, 0, MPI_COMM_WORLD); !s.ok()) return s;
    if (plan.stop) break;
    if (plan.rebalance) {
      if (absl::Status s = ApplyRebalance(plan.step); !s.ok()) return s;
    }
    // A plan with nothing to run only collects the load or rebalances.
    std::vector<SampledToken> sampled;
    StepTiming timing;
    if (!plan.entries.empty() || !plan.release.empty()) {
      absl::StatusOr<StepTiming> ran = RunStep(plan, &sampled);
      if (!ran.ok()) return ran.status();
      timing = *ran;
      sampled = GatherSampled(sampled);
    }
    std::vector<int64_t> load;
    double stall_ms = 0;
    if (plan.report_load) {
      load =
          attention_
              ? attention_rank_->TakeExpertLoad()
              : std::vector<int64_t>(
                    static_cast<size_t>(config_.num_hidden_layers) * config_.n_routed_experts, 0);
      const double local_stall = engram_ ? engram_->stats().stall_ns * 1e-6 : 0;
      MPI_Reduce(rank_ == 0 ? MPI_IN_PLACE : load.data(), load.data(),
                 static_cast<int>(load.size()), MPI_INT64_T, MPI_SUM, 0, MPI_COMM_WORLD);
      MPI_Reduce(&local_stall, &stall_ms, 1, MPI_DOUBLE, MPI_SUM, 0, MPI_COMM_WORLD);
    }
    if (rank_ == 0) {
      leader_->StepDone(plan, sampled, timing.cpu_seconds, timing.modelled.total, load, stall_ms);
    }
  }
  leader_.reset();  // stops the heartbeats; closes the stream after a clean stop
  return status;
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
  if (!absl::GetFlag(FLAGS_coordinator).empty()) return Serve();
  if (absl::Status s = RunOneShot(); !s.ok()) return s;
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
      "mpirun -np N dsv4-engine --cluster CFG.yaml --checkpoint DIR --coordinator HOST:PORT\n"
      "       [--engine-id ID]\n"
      "mpirun -np N dsv4-engine --cluster CFG.yaml --checkpoint DIR --tokens 1,2,3[;4,5,...]\n"
      "       [--logits-out FILE.npy] [--decode-from K] [--stats-out FILE.json]\n\n"
      "The distributed engine: attention ranks (data parallel over sequences) and expert ranks\n"
      "(routed experts per the placement) in lock step, tokens routed by MPI all-to-all.\n"
      "Serving mode: runs the requests a coordinator admits (dsv4-coordinator launches it so,\n"
      "or an operator does, for multi-host deployments). One-shot mode: writes the same logits\n"
      "as `dsv4 run` (FILE.<i>.npy per sequence when there are several).",
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
