#include "engine/engine.h"

#include <mpi.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"
#include "attention_node/model.h"
#include "core/check.h"
#include "core/npy.h"
#include "core/parallel.h"
#include "core/safetensors.h"
#include "core/status_macros.h"
#include "core/topology.h"
#include "core/units.h"
#include "dispatch/dispatcher.h"
#include "engine/attention_rank.h"
#include "engine/collectives.h"
#include "engine/control_client.h"
#include "engine/expert_rank.h"
#include "engine/log.h"
#include "engine/mpi_expert_executor.h"
#include "engine/serving_leader.h"
#include "engram_store/client.h"
#include "expert_node/routed_experts.h"
#include "rpc/security.h"

namespace dsv4 {
namespace {

using Clock = std::chrono::steady_clock;

// What one rank reports to the leader after a step, besides its StepCost.
struct RankStepReport {
  double seconds = 0;          // in the step
  double blocked_seconds = 0;  // of them, blocked on the data plane
  ExchangeTraffic sent;        // sent during the step
};

std::array<double, kNumLinkClasses> Scaled(const std::array<int64_t, kNumLinkClasses>& counts,
                                           double factor) {
  std::array<double, kNumLinkClasses> out{};
  for (int c = 0; c < kNumLinkClasses; ++c) out[c] = static_cast<double>(counts[c]) * factor;
  return out;
}

void Add(const std::array<double, kNumLinkClasses>& from, std::array<double, kNumLinkClasses>* to) {
  for (int c = 0; c < kNumLinkClasses; ++c) (*to)[c] += from[c];
}

nlohmann::json LinkBytesJson(const std::array<double, kNumLinkClasses>& dispatch,
                             const std::array<double, kNumLinkClasses>& combine) {
  return {{"dispatch", dispatch}, {"combine", combine}};
}

}  // namespace

// "blocked a0 12% a1 9% e2 40%": each rank's share of its step time blocked on the data
// plane, by world rank (a: attention, e: expert).
std::string Engine::BlockedSummary(const StepTiming& timing) const {
  std::string out = "blocked";
  for (int r = 0; r < size_; ++r) {
    absl::StrAppend(&out, " ", topology_->role(r) == RankRole::kAttention ? "a" : "e", r, " ",
                    static_cast<int>(std::lround(100 * timing.blocked_fraction(r))), "%");
  }
  return out;
}

// "link kB measured/modelled (FP8/BF16 wire): intra_node 72.4/72.4": dispatch + combine per
// link class used, measured copies at the target's wire format (StepTiming).
std::string Engine::LinkSummary(const StepTiming& timing) const {
  std::string out = "link kB measured/modelled (FP8/BF16 wire):";
  bool any = false;
  for (int c = 0; c < kNumLinkClasses; ++c) {
    const double measured = timing.measured_wire.dispatch[c] + timing.measured_wire.combine[c];
    const double modelled = timing.modelled_bytes.dispatch[c] + timing.modelled_bytes.combine[c];
    if (measured == 0 && modelled == 0) continue;
    absl::StrAppend(&out, " ", LinkClassName(static_cast<LinkClass>(c)), " ",
                    absl::StrFormat("%.1f/%.1f", measured * 1e-3, modelled * 1e-3));
    any = true;
  }
  if (!any) absl::StrAppend(&out, " none");
  return out;
}

double Engine::LinkBytes::total() const {
  double sum = 0;
  for (int c = 0; c < kNumLinkClasses; ++c) sum += dispatch[c] + combine[c];
  return sum;
}

Engine::~Engine() = default;

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(const EngineOptions& options) {
  std::unique_ptr<Engine> engine(new Engine());
  RETURN_IF_ERROR(engine->Setup(options));
  return engine;
}

absl::Status Engine::Setup(const EngineOptions& options) {
  options_ = options;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
  MPI_Comm_size(MPI_COMM_WORLD, &size_);
  if (options.threads < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("threads must be ≥ 0 (0: the cluster YAML's), got ", options.threads));
  }
  ASSIGN_OR_RETURN(cluster_, LoadClusterConfig(options.cluster));
  // The ranks on this host, and on the host with fewest: below the world, ranks span hosts.
  MPI_Comm local;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &local);
  int local_ranks = 1, fewest_local_ranks = 1;
  MPI_Comm_size(local, &local_ranks);
  MPI_Comm_free(&local);
  MPI_Allreduce(&local_ranks, &fewest_local_ranks, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  int threads = options.threads > 0 ? options.threads : cluster_.engine.threads_per_rank;
  if (threads == 0) {  // the rank's cores, shared with the other ranks on this host
    threads = std::max(1, AvailableCores() / local_ranks);
  }
  SetThreads(threads);
  if (cluster_.roles.num_ranks() != size_) {
    return absl::InvalidArgumentError(absl::StrCat(
        cluster_.path, ": roles give ", cluster_.roles.attention_ranks, " attention + ",
        cluster_.roles.expert_ranks, " expert ranks, but the MPI world has ", size_,
        " ranks (mpirun -np ", cluster_.roles.num_ranks(), ")"));
  }
  ASSIGN_OR_RETURN(Topology topology, Topology::Build(cluster_));
  topology_ = std::make_unique<Topology>(std::move(topology));
  attention_ = topology_->role(rank_) == RankRole::kAttention;
  SetEngineLogRank(rank_, attention_ ? "attention" : "expert");

  if (options.checkpoint.empty()) return absl::InvalidArgumentError("--checkpoint DIR is required");
  ASSIGN_OR_RETURN(config_, LoadModelConfigFromDir(options.checkpoint));
  ASSIGN_OR_RETURN(checkpoint_, Checkpoint::Open(options.checkpoint));

  // Placement over the expert ranks; dispatcher slots map onto world ranks A + expert rank.
  const int attention_ranks = topology_->num_attention_ranks();
  placement_options_.policy = cluster_.engine.placement;
  placement_options_.num_slots = config_.n_routed_experts + cluster_.engine.redundant_experts;
  placement_options_.num_groups = config_.n_group;
  placement_options_.num_nodes = topology_->num_expert_nodes();
  placement_options_.num_ranks = topology_->num_expert_ranks();
  ASSIGN_OR_RETURN(ExpertPlacement placement,
                   ExpertPlacement::Uniform(config_.num_hidden_layers, config_.n_routed_experts,
                                            placement_options_));
  placement_ = std::make_unique<ExpertPlacement>(std::move(placement));
  std::vector<int> rank_of_slot(placement_->num_slots());
  for (int s = 0; s < placement_->num_slots(); ++s) {
    rank_of_slot[s] = attention_ranks + placement_->RankOfSlot(s);
  }
  DispatcherOptions dispatch_options;
  dispatch_options.hidden = config_.hidden_size;
  dispatch_options.top_k = config_.num_experts_per_tok;
  dispatch_options.mode = cluster_.engine.dispatch;
  dispatch_options.micro_batches = cluster_.engine.micro_batches;
  dispatch_options.low_latency_tokens = cluster_.engine.low_latency_tokens;
  dispatch_options.low_latency_capacity = cluster_.engine.low_latency_capacity;
  dispatch_options.progress_thread =
      cluster_.engine.progress == ProgressMode::kThread ||
      (cluster_.engine.progress == ProgressMode::kAuto && fewest_local_ranks < size_);
  ASSIGN_OR_RETURN(dispatcher_, Dispatcher::Create(MPI_COMM_WORLD, *topology_,
                                                   std::move(rank_of_slot), dispatch_options));

  WeightBytes weights;
  if (attention_) {
    ASSIGN_OR_RETURN(engram_, engram::ConnectEngram(config_, cluster_.engram));
    ModelOptions model_options;
    model_options.max_seq_len = cluster_.engine.max_seq_len;
    model_options.engram_rows = engram_.get();
    ASSIGN_OR_RETURN(model_, Model::Load(config_, checkpoint_.get(), model_options));
    weights = model_->weight_bytes();
    executor_ = std::make_unique<MpiExpertExecutor>(dispatcher_.get(), placement_.get(), rank_);
  } else {
    RETURN_IF_ERROR(LoadExperts());
    weights = experts_->weight_bytes();
  }
  weights_ = GatherToRoot(weights, 0, MPI_COMM_WORLD);
  if (rank_ != 0) return absl::OkStatus();
  EngineLog()->info(
      "{} attention + {} expert ranks, {} dispatch, {} slots ({} redundant), {} micro-batches, "
      "low latency up to {} tokens, progress {}",
      attention_ranks, topology_->num_expert_ranks(),
      dispatcher_->two_stage() ? "hierarchical" : "flat", placement_->num_slots(),
      cluster_.engine.redundant_experts, cluster_.engine.micro_batches,
      cluster_.engine.low_latency_tokens,
      dispatcher_->options().progress_thread ? "thread" : "in MPI calls");
  for (int r = 0; r < size_; ++r) {
    EngineLog()->info("weights: rank {} ({}, {}) {} resident, {} as released ({:.2f}x)", r,
                      topology_->role(r) == RankRole::kAttention ? "attention" : "expert",
                      topology_->rank_position(r).ToString(),
                      FormatBytes(static_cast<double>(weights_[r].resident)),
                      FormatBytes(static_cast<double>(weights_[r].released)),
                      static_cast<double>(weights_[r].resident) /
                          static_cast<double>(std::max<int64_t>(weights_[r].released, 1)));
  }
  return absl::OkStatus();
}

absl::Status Engine::LoadExperts() {
  const int expert_rank = rank_ - topology_->num_attention_ranks();
  const ExpertPlacement& p = *placement_;
  const int layers = config_.num_hidden_layers;
  expert_rank_.reset();  // it points at the experts being replaced
  ASSIGN_OR_RETURN(experts_, RoutedExperts::Load(
                                 config_, checkpoint_.get(),
                                 [&](int layer, int e) {
                                   return layer < layers && p.RankHolds(layer, expert_rank, e);
                                 },
                                 /*include_mtp=*/false));
  expert_rank_ =
      std::make_unique<ExpertRank>(config_, experts_.get(), placement_.get(), dispatcher_.get());
  last_wait_seconds_ = 0;  // the new ExpertRank counts from zero
  last_traffic_ = ExchangeTraffic();
  return absl::OkStatus();
}

void Engine::StartAttention(bool keep_logits) {
  if (!attention_) return;
  attention_rank_ = std::make_unique<AttentionRank>(
      model_.get(), executor_.get(), rank_, cluster_.engine.micro_batches,
      ExpertGeometryOf(*topology_, rank_, dispatcher_->two_stage()), keep_logits);
}

absl::StatusOr<Engine::StepTiming> Engine::RunStep(const StepPlan& plan,
                                                   std::vector<SampledToken>* sampled) {
  if (rank_ == options_.fail_rank && plan.step == options_.fail_at_step) {
    EngineLog()->error("--fail_rank: exiting with code 3 at step {}", plan.step);
    _exit(3);
  }
  const int attention_ranks = topology_->num_attention_ranks();
  const Clock::time_point start = Clock::now();
  StepCost cost;
  cost.micro_batches = cluster_.engine.micro_batches;
  RETURN_IF_ERROR(attention_ ? attention_rank_->RunStep(plan, &cost, sampled)
                             : expert_rank_->RunStep(plan, &cost));
  RankStepReport report;
  report.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  step_seconds_ += report.seconds;
  {
    const double waited = attention_ ? executor_->wait_seconds() : expert_rank_->wait_seconds();
    const ExchangeTraffic& traffic = attention_ ? executor_->traffic() : expert_rank_->traffic();
    report.blocked_seconds = waited - last_wait_seconds_;
    report.sent.dispatch = traffic.dispatch - last_traffic_.dispatch;
    report.sent.combine = traffic.combine - last_traffic_.combine;
    last_wait_seconds_ = waited;
    last_traffic_ = traffic;
  }
  std::vector<StepCost> costs = GatherToRoot(cost, 0, MPI_COMM_WORLD);
  const std::vector<RankStepReport> reports = GatherToRoot(report, 0, MPI_COMM_WORLD);
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
  timing.modelled_bytes.dispatch = sent.dispatch.bytes;
  timing.modelled_bytes.combine = sent.combine.bytes;

  // Measured. The dispatchers count the token copies they send per link class (records
  // and rows); the wire-format bytes price those copies as the target sends them (FP8
  // dispatch, BF16 combine), as the model does. Raw bytes add this runtime's fp32 rows and
  // headers.
  const double dispatch_copy = DispatchBytesPerCopy(config_);
  const double combine_copy = CombineBytesPerCopy(config_);
  std::vector<StepCost> measured_costs = costs;
  for (int r = 0; r < size_; ++r) {
    const RankStepReport& rep = reports[r];
    timing.rank_seconds.push_back(rep.seconds);
    timing.blocked_seconds.push_back(rep.blocked_seconds);
    const std::array<double, kNumLinkClasses> dispatch_raw = Scaled(rep.sent.dispatch.bytes, 1);
    const std::array<double, kNumLinkClasses> combine_raw = Scaled(rep.sent.combine.bytes, 1);
    const std::array<double, kNumLinkClasses> dispatch_wire =
        Scaled(rep.sent.dispatch.copies, dispatch_copy);
    const std::array<double, kNumLinkClasses> combine_wire =
        Scaled(rep.sent.combine.copies, combine_copy);
    Add(dispatch_raw, &timing.measured_raw.dispatch);
    Add(combine_raw, &timing.measured_raw.combine);
    Add(dispatch_wire, &timing.measured_wire.dispatch);
    Add(combine_wire, &timing.measured_wire.combine);
    // Each rank's StepCost counts the exchange it sends and the one it receives (see the
    // mirror above). The received one is priced as the mirror of what the rank sent: one
    // combine row comes back per dispatch record, and one record came in per combine row,
    // over the same link class. Exact in flat mode; in hierarchical mode a relay also
    // forwards other ranks' records and rows, which this keeps only in its role's direction.
    const bool expert = r >= attention_ranks;
    measured_costs[r] =
        expert ? WithExchangeBytes(costs[r], Scaled(rep.sent.combine.copies, dispatch_copy),
                                   combine_wire)
               : WithExchangeBytes(costs[r], dispatch_wire,
                                   Scaled(rep.sent.dispatch.copies, combine_copy));
  }
  timing.modelled_measured_traffic =
      ModelledTime(measured_costs, cluster_.hardware, cluster_.topology.links);
  timing.cpu_seconds = *std::max_element(timing.rank_seconds.begin(), timing.rank_seconds.end());
  return timing;
}

absl::StatusOr<OneShotResult> Engine::RunOneShot(const std::vector<std::vector<int32_t>>& prompts,
                                                 int64_t decode_from) {
  for (const std::vector<int32_t>& p : prompts) {
    if (decode_from < 0 || decode_from > static_cast<int64_t>(p.size())) {
      return absl::InvalidArgumentError(
          absl::StrCat("--decode_from must be in [0, ", p.size(), "], got ", decode_from));
    }
  }
  StartAttention(/*keep_logits=*/true);
  const int attention_ranks = topology_->num_attention_ranks();
  OneShotPlanner planner(prompts, decode_from, cluster_.engine.chunked_prefill_tokens,
                         attention_ranks, cluster_.engine.micro_batches);
  OneShotResult result;
  if (rank_ == 0) {
    // Per step, link_bytes arrays are indexed by link class, in this order.
    for (int c = 0; c < kNumLinkClasses; ++c) {
      result.stats["link_classes"].push_back(LinkClassName(static_cast<LinkClass>(c)));
    }
    for (const WeightBytes& w : weights_) {
      result.stats["resident_bytes"].push_back(w.resident);
      result.stats["released_bytes"].push_back(w.released);
    }
  }
  for (;;) {
    StepPlan plan;
    if (rank_ == 0) plan = planner.Next();
    RETURN_IF_ERROR(BroadcastPlan(&plan, 0, MPI_COMM_WORLD));
    if (plan.stop) break;
    std::vector<SampledToken> unused;
    ASSIGN_OR_RETURN(const StepTiming timing, RunStep(plan, &unused));
    if (rank_ != 0) continue;
    int64_t tokens = 0;
    for (const PlanEntry& e : plan.entries) tokens += static_cast<int64_t>(e.tokens.size());
    EngineLog()->info(
        "step {}: {} tokens, {} sequences: cpu {:.3f} ms, modelled {:.3f} us on {} ({}-bound), "
        "{:.3f} us with the measured traffic; {}; {}",
        plan.step, tokens, plan.entries.size(), timing.cpu_seconds * 1e3,
        timing.modelled.total * 1e6, cluster_.hardware.name,
        BottleneckName(timing.modelled.binding), timing.modelled_measured_traffic.total * 1e6,
        BlockedSummary(timing), LinkSummary(timing));
    std::vector<double> blocked_fraction;
    for (int r = 0; r < size_; ++r) blocked_fraction.push_back(timing.blocked_fraction(r));
    result.stats["steps"].push_back(
        {{"step", plan.step},
         {"tokens", tokens},
         {"cpu_seconds", timing.cpu_seconds},
         {"modelled_seconds", timing.modelled.total},
         {"modelled_seconds_measured_traffic", timing.modelled_measured_traffic.total},
         {"rank_seconds", timing.rank_seconds},
         {"blocked_seconds", timing.blocked_seconds},
         {"blocked_fraction", blocked_fraction},
         {"link_bytes",
          {{"measured_raw",
            LinkBytesJson(timing.measured_raw.dispatch, timing.measured_raw.combine)},
           {"measured_wire",
            LinkBytesJson(timing.measured_wire.dispatch, timing.measured_wire.combine)},
           {"modelled",
            LinkBytesJson(timing.modelled_bytes.dispatch, timing.modelled_bytes.combine)}}}});
  }
  if (engram_) EngineLog()->info("{}", engram::EngramReport(*engram_));
  // Overlap: how long attention ranks were blocked on the experts, of their step time.
  const double waited = attention_ ? executor_->wait_seconds() : 0;
  const std::vector<double> waits = GatherToRoot(waited, 0, MPI_COMM_WORLD);
  const std::vector<double> totals = GatherToRoot(step_seconds_, 0, MPI_COMM_WORLD);
  if (attention_) result.logits = attention_rank_->logits();
  if (rank_ != 0) return result;
  double wait_sum = 0, total_sum = 0;
  for (int r = 0; r < attention_ranks; ++r) {
    wait_sum += waits[r];
    total_sum += totals[r];
  }
  const double fraction = total_sum > 0 ? wait_sum / total_sum : 0;
  EngineLog()->info(
      "overlap: attention ranks blocked on the expert ranks (MpiExpertExecutor Start + Finish) "
      "for {:.3f} s of {:.3f} s of steps ({:.1f}%)",
      wait_sum, total_sum, 100 * fraction);
  result.stats["attention_wait_seconds"] = wait_sum;
  result.stats["attention_step_seconds"] = total_sum;
  return result;
}

engine::v1::Hello Engine::MakeHello(const std::string& engine_id) {
  struct Identity {
    int64_t pid;
    char host[64];
  };
  Identity self{getpid(), {}};
  gethostname(self.host, sizeof(self.host) - 1);
  const std::vector<Identity> identities = GatherToRoot(self, 0, MPI_COMM_WORLD);
  engine::v1::Hello hello;
  hello.set_engine_id(engine_id);
  for (int r = 0; r < static_cast<int>(identities.size()); ++r) {
    engine::v1::RankInfo* info = hello.add_ranks();
    info->set_rank(r);
    info->set_role(topology_->role(r) == RankRole::kAttention ? engine::v1::ROLE_ATTENTION
                                                              : engine::v1::ROLE_EXPERT);
    info->set_position(topology_->rank_position(r).ToString());
    info->set_resident_bytes(weights_[r].resident);
    info->set_released_bytes(weights_[r].released);
    info->set_host(identities[r].host);
    info->set_pid(identities[r].pid);
  }
  engine::v1::ModelInfo* model = hello.mutable_model();
  model->set_name(ModelNameFromDir(options_.checkpoint));
  model->set_vocab_size(static_cast<int32_t>(config_.vocab_size));
  model->set_num_layers(config_.num_hidden_layers);
  model->set_num_routed_experts(config_.n_routed_experts);
  if (absl::StatusOr<std::string> sha = CheckpointConfigSha256(options_.checkpoint); sha.ok()) {
    model->set_config_sha256(*sha);
  }
  hello.set_max_running(topology_->num_attention_ranks() * cluster_.engine.max_seqs_per_rank);
  hello.set_max_seq_len(cluster_.engine.max_seq_len);
  hello.set_placement_summary(placement_->Summary());
  return hello;
}

absl::Status Engine::ApplyRebalance(int64_t step, ServingLeader* leader) {
  const int layers = config_.num_hidden_layers, experts = config_.n_routed_experts;
  std::vector<double> flat(static_cast<size_t>(layers) * experts, 0.0);
  if (rank_ == 0) flat = leader->TakeRebalanceLoad();
  MPI_Bcast(flat.data(), static_cast<int>(flat.size()), MPI_DOUBLE, 0, MPI_COMM_WORLD);
  std::vector<std::vector<double>> load(layers);
  for (int l = 0; l < layers; ++l)
    load[l].assign(flat.begin() + l * experts, flat.begin() + (l + 1) * experts);
  // Every rank computes the same placement from the same load (the policy is deterministic).
  ASSIGN_OR_RETURN(ExpertPlacement placement, ExpertPlacement::Compute(load, placement_options_));
  *placement_ = std::move(placement);  // the executor and expert rank hold this object
  if (!attention_) RETURN_IF_ERROR(LoadExperts());
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
  EngineLog()->info(
      "rebalanced before step {}: mean max/mean rank load {:.3f} (plain placement {:.3f})", step,
      imbalance, baseline);
  return leader->Rebalanced(done);
}

void Engine::ReduceLoad(std::vector<int64_t>* load, double* engram_stall_ms) {
  const size_t size = static_cast<size_t>(config_.num_hidden_layers) * config_.n_routed_experts;
  *load = attention_ ? attention_rank_->TakeExpertLoad() : std::vector<int64_t>(size, 0);
  const double local_stall = engram_ ? engram_->stats().stall_ns * 1e-6 : 0;
  MPI_Reduce(rank_ == 0 ? MPI_IN_PLACE : load->data(), load->data(), static_cast<int>(load->size()),
             MPI_INT64_T, MPI_SUM, 0, MPI_COMM_WORLD);
  MPI_Reduce(&local_stall, engram_stall_ms, 1, MPI_DOUBLE, MPI_SUM, 0, MPI_COMM_WORLD);
}

absl::Status Engine::Serve(ControlClient* control, absl::Duration max_step) {
  DSV4_CHECK(rank_ != 0 || control != nullptr, "rank 0 serves through a control stream");
  StartAttention(/*keep_logits=*/false);
  std::unique_ptr<ServingLeader> leader;
  if (rank_ == 0) {
    ServingLeaderOptions options;
    options.limits.engine = cluster_.engine;
    options.limits.attention_ranks = topology_->num_attention_ranks();
    options.limits.eos_token_id = static_cast<int>(config_.eos_token_id);
    options.num_layers = config_.num_hidden_layers;
    options.num_experts = config_.n_routed_experts;
    options.max_step = max_step;
    leader = std::make_unique<ServingLeader>(*control, options);
  }
  absl::Status status;
  for (;;) {
    StepPlan plan;
    if (rank_ == 0) {
      absl::StatusOr<StepPlan> next = leader->NextPlan();
      if (!next.ok()) {
        status = next.status();  // the coordinator is gone: stop every rank, then report
        plan.stop = true;
      } else {
        plan = std::move(*next);
      }
    }
    RETURN_IF_ERROR(BroadcastPlan(&plan, 0, MPI_COMM_WORLD));
    if (plan.stop) break;
    if (plan.rebalance) RETURN_IF_ERROR(ApplyRebalance(plan.step, leader.get()));
    // A plan with nothing to run only collects the load or rebalances.
    std::vector<SampledToken> sampled;
    StepTiming timing;
    if (!plan.entries.empty() || !plan.release.empty()) {
      ASSIGN_OR_RETURN(timing, RunStep(plan, &sampled));
      sampled = GatherSampled(sampled, 0, MPI_COMM_WORLD);
    }
    std::vector<int64_t> load;
    double stall_ms = 0;
    if (plan.report_load) ReduceLoad(&load, &stall_ms);
    if (rank_ == 0) {
      StepDataPlane data_plane;
      data_plane.rank_seconds = std::move(timing.rank_seconds);
      data_plane.blocked_seconds = std::move(timing.blocked_seconds);
      data_plane.measured_link_bytes = timing.measured_wire.total();
      data_plane.modelled_link_bytes = timing.modelled_bytes.total();
      leader->StepDone(plan, sampled, timing.cpu_seconds, timing.modelled.total, load, stall_ms,
                       data_plane);
    }
  }
  return status;  // the leader's destructor stops the heartbeats, closes a cleanly stopped stream
}

absl::Status Engine::ServeCoordinator(const ServeOptions& options) {
  engine::v1::Hello hello = MakeHello(options.engine_id);
  hello.set_launch_nonce(options.launch_nonce);
  std::unique_ptr<ControlClient> control;
  absl::Status connected;
  if (rank_ == 0) {
    absl::StatusOr<std::unique_ptr<ControlClient>> dialed =
        [&]() -> absl::StatusOr<std::unique_ptr<ControlClient>> {
      // The engine credential; the client token (auth_token_file) is never sent here.
      ASSIGN_OR_RETURN(
          rpc::ClientSecurity security,
          rpc::LoadClientSecurity(
              cluster_.coordinator.tls_cert,
              options.engine_token.empty() ? cluster_.coordinator.engine_token_file : ""));
      if (!options.engine_token.empty()) security.token = options.engine_token;
      if (security.token.empty()) {
        return absl::InvalidArgumentError(
            "serving mode needs the engine token: --engine_token_file, $DSV4_ENGINE_TOKEN or "
            "the cluster YAML's coordinator.engine_token_file");
      }
      return ControlClient::Connect(options.coordinator, security.credentials, security.token,
                                    hello, options.connect_timeout);
    }();
    connected = dialed.status();
    if (dialed.ok()) control = std::move(*dialed);
  }
  // Every rank learns whether the leader got through, so none waits for a first plan.
  int ok = connected.ok() ? 1 : 0;
  MPI_Bcast(&ok, 1, MPI_INT, 0, MPI_COMM_WORLD);
  if (!ok) {
    return rank_ == 0 ? connected
                      : absl::UnavailableError("the leader could not connect to the coordinator");
  }
  if (rank_ == 0) {
    EngineLog()->info("{} serving for {}", options.engine_id, options.coordinator);
  }
  return Serve(control.get(),
               options.max_step.value_or(absl::Seconds(cluster_.engine.max_step_seconds)));
}

absl::Status WriteOneShotResult(const OneShotResult& result, int64_t vocab, size_t prompts,
                                const std::string& logits_out, const std::string& stats_out) {
  if (!logits_out.empty()) {
    for (const auto& [sequence, rows] : result.logits) {
      const std::string path =
          prompts == 1 ? logits_out
                       : absl::StrCat(absl::StripSuffix(logits_out, ".npy"), ".", sequence, ".npy");
      RETURN_IF_ERROR(
          WriteNpyF32(path, {static_cast<int64_t>(rows.size()) / vocab, vocab}, rows.data()));
    }
  }
  if (!stats_out.empty() && !result.stats.is_null()) {
    std::ofstream file(stats_out);
    file << result.stats.dump(2) << "\n";
    if (!file) return absl::InternalError(absl::StrCat("cannot write ", stats_out));
  }
  return absl::OkStatus();
}

}  // namespace dsv4
