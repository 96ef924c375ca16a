// The serving engine's leader, the part of rank 0 that talks to the coordinator (no MPI):
// the control stream (engine/control_client.h), the scheduler (engine/serving_planner.h)
// and a heartbeat thread. The engine's step loop asks it for each plan, runs the plan on
// every rank, and hands back what the step produced:
//
//   for (;;) { plan = leader.NextPlan();  broadcast; run;  leader.StepDone(...); }
//
// Heartbeats go out every Welcome.heartbeat_interval_ms from their own thread, so a long
// step never looks like a dead engine, unless a step outlasts `max_step`: then they stop
// and the coordinator's watchdog declares the engine hung. What the engine holds (running
// sequences, KV in use) also goes out after every step that changed it, so the cluster's
// status is fresh within a step.
#ifndef DSV4_ENGINE_SERVING_LEADER_H_
#define DSV4_ENGINE_SERVING_LEADER_H_

#include <cstdint>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "engine/control_client.h"
#include "engine/serving_planner.h"
#include "engine/step_plan.h"

namespace dsv4 {

struct ServingLeaderOptions {
  ServingLimits limits;
  int num_layers = 0;   // MoE layers, for expert load
  int num_experts = 0;  // routed experts per layer
  absl::Duration max_step = absl::Minutes(5);
};

// A step's data plane, from the engine's StepTiming: each world rank's seconds in the step
// and the part of them it was blocked on the exchange, and the link bytes sent (dispatch +
// combine, all ranks, at the target's wire format) as measured and as modelled.
struct StepDataPlane {
  std::vector<double> rank_seconds, blocked_seconds;
  double measured_link_bytes = 0;
  double modelled_link_bytes = 0;
};

class ServingLeader {
 public:
  // Starts heartbeating on a connected control stream, which must outlive the leader.
  ServingLeader(ControlClient& control, const ServingLeaderOptions& options);
  // Stops the heartbeats; after a clean stop (a stop plan) also half-closes the stream.
  ~ServingLeader();

  // The next step's plan, waiting while there is nothing to do. A plan with `stop` after a
  // Shutdown or once drained; an error when the coordinator is gone. A plan may carry no
  // entries: it then only collects the expert load (`report_load`) or rebalances.
  absl::StatusOr<StepPlan> NextPlan();
  // After `rebalance`: the load to place by, dense [layers · experts]; empties it.
  std::vector<double> TakeRebalanceLoad();
  absl::Status Rebalanced(const engine::v1::Rebalanced& rebalanced);

  // What the plan NextPlan returned produced: the sampled tokens (all ranks'), the step's
  // times (when it ran entries) and, with `report_load`, the expert load summed over the
  // ranks [layers · experts] and the attention ranks' Engram stall since start; and (when it
  // ran entries) its data plane, which heartbeats report per rank over their interval.
  void StepDone(const StepPlan& plan, absl::Span<const SampledToken> sampled, double cpu_seconds,
                double modelled_seconds, absl::Span<const int64_t> load, double engram_stall_ms,
                const StepDataPlane& data_plane = {});

 private:
  void HeartbeatLoop();
  void Apply(const engine::v1::CoordinatorMessage& message);

  ControlClient& control_;
  const ServingLeaderOptions options_;
  ServingPlanner planner_;
  bool draining_ = false;
  bool stopped_cleanly_ = false;
  bool load_pending_ = false;  // steps ran since the last load report
  absl::Time last_load_report_ = absl::Now();
  std::vector<double> rebalance_load_;  // a pending Rebalance's load

  // Shared with the heartbeat thread.
  absl::Mutex mu_;
  engine::v1::Heartbeat heartbeat_ ABSL_GUARDED_BY(mu_);   // the fields kept current
  std::vector<int64_t> expert_load_ ABSL_GUARDED_BY(mu_);  // since the last heartbeat
  double step_seconds_ ABSL_GUARDED_BY(mu_) = 0;           // since the last heartbeat
  double modelled_seconds_ ABSL_GUARDED_BY(mu_) = 0;
  int steps_ ABSL_GUARDED_BY(mu_) = 0;
  // Per rank, since the last heartbeat: seconds in steps and blocked on the data plane.
  std::vector<double> rank_seconds_ ABSL_GUARDED_BY(mu_);
  std::vector<double> blocked_seconds_ ABSL_GUARDED_BY(mu_);
  double measured_link_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  double modelled_link_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Time progress_ ABSL_GUARDED_BY(mu_) = absl::Now();  // last step or idle wait
  absl::Notification stop_heartbeats_;
  std::thread heartbeats_;
};

}  // namespace dsv4

#endif  // DSV4_ENGINE_SERVING_LEADER_H_
