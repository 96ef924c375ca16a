#include "engine/serving_leader.h"

#include <algorithm>
#include <utility>

#include "core/status_macros.h"
#include "engine/log.h"
#include "google/protobuf/util/message_differencer.h"

namespace dsv4 {

ServingLeader::ServingLeader(ControlClient& control, const ServingLeaderOptions& options)
    : control_(control), options_(options), planner_(options.limits) {
  heartbeats_ = std::thread([this] { HeartbeatLoop(); });
}

ServingLeader::~ServingLeader() {
  stop_heartbeats_.Notify();
  heartbeats_.join();
  if (stopped_cleanly_) control_.Close();
}

void ServingLeader::HeartbeatLoop() {
  const absl::Duration interval = absl::Milliseconds(control_.heartbeat_interval_ms());
  while (!stop_heartbeats_.WaitForNotificationWithTimeout(interval)) {
    engine::v1::EngineMessage message;
    {
      absl::MutexLock lock(&mu_);
      if (absl::Now() - progress_ > options_.max_step) continue;  // hung: the watchdog acts
      // Step times are means over the steps since the last heartbeat; an idle engine
      // keeps reporting the last ones.
      if (steps_ > 0) {
        heartbeat_.set_measured_step_ms(1e3 * step_seconds_ / steps_);
        heartbeat_.set_modelled_step_ms(1e3 * modelled_seconds_ / steps_);
        heartbeat_.set_measured_link_bytes_per_step(measured_link_bytes_ / steps_);
        heartbeat_.set_modelled_link_bytes_per_step(modelled_link_bytes_ / steps_);
        if (!rank_seconds_.empty()) {
          heartbeat_.clear_blocked_fraction();
          for (size_t r = 0; r < rank_seconds_.size(); ++r) {
            const double fraction =
                rank_seconds_[r] > 0 ? blocked_seconds_[r] / rank_seconds_[r] : 0;
            heartbeat_.add_blocked_fraction(std::clamp(fraction, 0.0, 1.0));
          }
        }
      }
      engine::v1::Heartbeat& hb = *message.mutable_heartbeat();
      hb = heartbeat_;
      const size_t experts = options_.num_experts;
      for (size_t layer = 0; experts > 0 && (layer + 1) * experts <= expert_load_.size(); ++layer) {
        engine::v1::LayerExpertLoad* load = hb.add_expert_load();
        load->set_layer(static_cast<int32_t>(layer));
        load->mutable_tokens_per_expert()->Add(expert_load_.begin() + layer * experts,
                                               expert_load_.begin() + (layer + 1) * experts);
      }
      expert_load_.clear();
      step_seconds_ = modelled_seconds_ = 0;
      measured_link_bytes_ = modelled_link_bytes_ = 0;
      rank_seconds_.clear();
      blocked_seconds_.clear();
      steps_ = 0;
      // Sent under the lock: a heartbeat never overtakes a newer Occupancy from the step loop.
      if (!control_.Send(message).ok()) return;
    }
  }
}

void ServingLeader::Apply(const engine::v1::CoordinatorMessage& m) {
  if (m.has_admit() && !draining_) planner_.Admit(m.admit());
  if (m.has_cancel()) planner_.Cancel(m.cancel().request_id());
  if (m.has_drain()) draining_ = true;
  if (m.has_rebalance()) {
    // Dense [layers · experts]; layers or experts the message leaves out have no load.
    const int layers = options_.num_layers, experts = options_.num_experts;
    rebalance_load_.assign(static_cast<size_t>(layers) * experts, 0.0);
    for (const engine::v1::LayerExpertLoad& l : m.rebalance().load()) {
      if (l.layer() < 0 || l.layer() >= layers) continue;
      for (int e = 0; e < std::min(experts, l.tokens_per_expert_size()); ++e) {
        rebalance_load_[static_cast<size_t>(l.layer()) * experts + e] =
            static_cast<double>(std::max<int64_t>(l.tokens_per_expert(e), 0));
      }
    }
  }
}

absl::StatusOr<StepPlan> ServingLeader::NextPlan() {
  StepPlan stop;
  stop.stop = true;
  for (;;) {
    // Block only when there is nothing to run.
    ASSIGN_OR_RETURN(
        const std::vector<engine::v1::CoordinatorMessage> messages,
        control_.Receive(planner_.idle() ? absl::Milliseconds(200) : absl::ZeroDuration()));
    for (const engine::v1::CoordinatorMessage& m : messages) {
      if (m.has_shutdown()) {
        EngineLog()->info("shutdown: {}", m.shutdown().reason());
        stopped_cleanly_ = true;
        return stop;
      }
      Apply(m);
    }
    for (engine::v1::TokenEvent& event : planner_.TakeEvents()) {
      engine::v1::EngineMessage out;
      *out.mutable_tokens() = std::move(event);
      RETURN_IF_ERROR(control_.Send(out));
    }
    {
      absl::MutexLock lock(&mu_);
      progress_ = absl::Now();
      engine::v1::Occupancy occupancy;
      occupancy.set_running_sequences(planner_.running());
      occupancy.set_queued_sequences(planner_.waiting());
      occupancy.set_kv_used_tokens(planner_.kv_used_tokens());
      occupancy.set_kv_budget_tokens(planner_.kv_budget_tokens());
      if (!google::protobuf::util::MessageDifferencer::Equals(occupancy, heartbeat_.occupancy())) {
        *heartbeat_.mutable_occupancy() = occupancy;
        engine::v1::EngineMessage out;
        *out.mutable_occupancy() = std::move(occupancy);
        RETURN_IF_ERROR(control_.Send(out));
      }
    }
    if (draining_ && planner_.idle()) {
      engine::v1::EngineMessage drained;
      drained.mutable_drained();
      RETURN_IF_ERROR(control_.Send(drained));
      EngineLog()->info("drained");
      stopped_cleanly_ = true;
      return stop;
    }
    const bool rebalance = !rebalance_load_.empty();
    if (planner_.idle() && !load_pending_ && !rebalance) continue;
    StepPlan plan;
    if (planner_.idle()) {
      plan.step = planner_.steps();  // nothing to run: it takes no step number
    } else {
      plan = planner_.Next();
    }
    plan.rebalance = rebalance;
    // The load goes out about once per heartbeat, and at the end of a burst of work.
    const absl::Time now = absl::Now();
    if (planner_.idle() ||
        now - last_load_report_ > absl::Milliseconds(control_.heartbeat_interval_ms())) {
      plan.report_load = true;
      last_load_report_ = now;
    }
    return plan;
  }
}

std::vector<double> ServingLeader::TakeRebalanceLoad() {
  std::vector<double> load;
  load.swap(rebalance_load_);
  return load;
}

absl::Status ServingLeader::Rebalanced(const engine::v1::Rebalanced& rebalanced) {
  engine::v1::EngineMessage message;
  *message.mutable_rebalanced() = rebalanced;
  return control_.Send(message);
}

void ServingLeader::StepDone(const StepPlan& plan, absl::Span<const SampledToken> sampled,
                             double cpu_seconds, double modelled_seconds,
                             absl::Span<const int64_t> load, double engram_stall_ms,
                             const StepDataPlane& data_plane) {
  planner_.OnSampled(sampled);
  const bool ran = !plan.entries.empty() || !plan.release.empty();
  absl::MutexLock lock(&mu_);
  progress_ = absl::Now();
  if (ran) {
    heartbeat_.set_step(plan.step + 1);
    step_seconds_ += cpu_seconds;
    modelled_seconds_ += modelled_seconds;
    steps_ += 1;
    load_pending_ = true;
    measured_link_bytes_ += data_plane.measured_link_bytes;
    modelled_link_bytes_ += data_plane.modelled_link_bytes;
    const size_t ranks =
        std::min(data_plane.rank_seconds.size(), data_plane.blocked_seconds.size());
    rank_seconds_.resize(std::max(rank_seconds_.size(), ranks), 0.0);
    blocked_seconds_.resize(rank_seconds_.size(), 0.0);
    for (size_t r = 0; r < ranks; ++r) {
      rank_seconds_[r] += data_plane.rank_seconds[r];
      blocked_seconds_[r] += data_plane.blocked_seconds[r];
    }
  }
  if (plan.report_load) {
    load_pending_ = false;
    heartbeat_.set_engram_stall_ms(engram_stall_ms);
    if (expert_load_.empty()) expert_load_.assign(load.size(), 0);
    for (size_t i = 0; i < load.size() && i < expert_load_.size(); ++i) expert_load_[i] += load[i];
  }
}

}  // namespace dsv4
