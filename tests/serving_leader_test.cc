// The serving leader (engine/serving_leader.h) without MPI: its real control stream
// (ControlClient) against a scripted coordinator on a loopback port, driven the way the
// engine's step loop drives it (NextPlan, run, StepDone). Covers admission to finished
// token events, heartbeats carrying load and stopping when a step hangs, rebalance load,
// drain, shutdown and the coordinator going away.
#include "engine/serving_leader.h"

#include <memory>
#include <string>
#include <vector>

#include "engine/control_client.h"
#include "gmock/gmock.h"
#include "grpcpp/security/credentials.h"
#include "gtest/gtest.h"
#include "tests/fake_coordinator.h"

namespace dsv4 {
namespace {

using ::testing::ElementsAre;
using Received = std::vector<engine::v1::EngineMessage>;

constexpr int kLayers = 2, kExperts = 4;

engine::v1::CoordinatorMessage AdmitMessage(const std::string& id, int prompt, int max_tokens) {
  engine::v1::CoordinatorMessage m;
  engine::v1::Admit& a = *m.mutable_admit();
  a.set_request_id(id);
  for (int i = 0; i < prompt; ++i) a.add_prompt_token_ids(10 + i);
  a.set_max_tokens(max_tokens);
  return m;
}

int Count(const Received& received, engine::v1::EngineMessage::KindCase kind) {
  int n = 0;
  for (const engine::v1::EngineMessage& m : received) n += m.kind_case() == kind;
  return n;
}

class ServingLeaderTest : public ::testing::Test {
 protected:
  // Connects a leader to the fake coordinator (heartbeats every 20 ms).
  void Start(absl::Duration max_step = absl::Minutes(5)) {
    engine::v1::Hello hello;
    hello.set_engine_id("engine-test");
    absl::StatusOr<std::unique_ptr<ControlClient>> control = ControlClient::Connect(
        coordinator_.address(), grpc::InsecureChannelCredentials(), "", hello, absl::Seconds(10));
    ASSERT_TRUE(control.ok()) << control.status();
    control_ = std::move(*control);
    ServingLeaderOptions options;
    options.limits.attention_ranks = 1;
    options.limits.engine.micro_batches = 1;
    options.limits.eos_token_id = -1;
    options.num_layers = kLayers;
    options.num_experts = kExperts;
    options.max_step = max_step;
    leader_ = std::make_unique<ServingLeader>(*control_, options);
  }

  // Runs plans until nothing is left, sampling `token` for every entry that samples. The
  // ranks' expert load is zero except `load`, reported by the plan that ends the burst of
  // work: the first one without entries that collects the load (the leader sends none after
  // it until new work arrives).
  void RunUntilIdle(int32_t token, std::vector<int64_t> load = {}) {
    for (int guard = 0; guard < 100; ++guard) {
      absl::StatusOr<StepPlan> plan = leader_->NextPlan();
      ASSERT_TRUE(plan.ok()) << plan.status();
      ASSERT_FALSE(plan->stop);
      std::vector<SampledToken> sampled;
      for (const PlanEntry& e : plan->entries) {
        if (e.sample) sampled.push_back({e.sequence, token});
      }
      const bool last = plan->entries.empty() && plan->report_load;
      std::vector<int64_t> reported;
      if (plan->report_load) {
        reported = last ? load : std::vector<int64_t>(kLayers * kExperts, 0);
      }
      leader_->StepDone(*plan, sampled, 0.001, 0.002, reported, 0);
      if (last) return;
    }
    FAIL() << "no idle plan after 100 steps";
  }

  testing::FakeCoordinator coordinator_{/*heartbeat_interval_ms=*/20};
  std::unique_ptr<ControlClient> control_;
  std::unique_ptr<ServingLeader> leader_;
};

TEST_F(ServingLeaderTest, RunsAnAdmittedRequestToItsLengthAndStreamsItsTokens) {
  Start();
  coordinator_.Push(AdmitMessage("r1", 5, 3));
  RunUntilIdle(/*token=*/42);
  ASSERT_TRUE(coordinator_.WaitFor(
      [](const Received& r) {
        for (const auto& m : r) {
          if (m.has_tokens() && m.tokens().finish_reason() != engine::v1::FINISH_REASON_UNSPECIFIED)
            return true;
        }
        return false;
      },
      absl::Seconds(10)));
  std::vector<int32_t> tokens;
  engine::v1::FinishReason finish = engine::v1::FINISH_REASON_UNSPECIFIED;
  for (const engine::v1::EngineMessage& m : coordinator_.received()) {
    if (!m.has_tokens()) continue;
    EXPECT_EQ(m.tokens().request_id(), "r1");
    tokens.insert(tokens.end(), m.tokens().token_ids().begin(), m.tokens().token_ids().end());
    if (m.tokens().finish_reason() != engine::v1::FINISH_REASON_UNSPECIFIED) {
      finish = m.tokens().finish_reason();
    }
  }
  EXPECT_THAT(tokens, ElementsAre(42, 42, 42));
  EXPECT_EQ(finish, engine::v1::FINISH_REASON_LENGTH);
}

TEST_F(ServingLeaderTest, HeartbeatsCarryTheReportedExpertLoadPerLayer) {
  Start();
  coordinator_.Push(AdmitMessage("r1", 4, 2));
  std::vector<int64_t> load(kLayers * kExperts, 0);
  load[1] = 7;             // layer 0, expert 1
  load[kExperts + 3] = 5;  // layer 1, expert 3
  RunUntilIdle(1, load);
  // The idle plan reported the load; the next heartbeat carries it, layer by layer.
  engine::v1::Heartbeat with_load;
  ASSERT_TRUE(coordinator_.WaitFor(
      [&](const Received& r) {
        for (const auto& m : r) {
          if (m.has_heartbeat() && m.heartbeat().expert_load_size() > 0 &&
              m.heartbeat().expert_load(0).tokens_per_expert(1) > 0) {
            with_load = m.heartbeat();
            return true;
          }
        }
        return false;
      },
      absl::Seconds(10)));
  ASSERT_EQ(with_load.expert_load_size(), kLayers);
  EXPECT_EQ(with_load.expert_load(0).layer(), 0);
  EXPECT_THAT(with_load.expert_load(0).tokens_per_expert(), ElementsAre(0, 7, 0, 0));
  EXPECT_EQ(with_load.expert_load(1).layer(), 1);
  EXPECT_THAT(with_load.expert_load(1).tokens_per_expert(), ElementsAre(0, 0, 0, 5));
  EXPECT_GT(with_load.step(), 0);
  EXPECT_EQ(with_load.occupancy().kv_used_tokens(), 0);  // the request finished, was released
}

// A step's per-rank blocked seconds over its per-rank seconds go out in the next heartbeat,
// by rank and clamped to [0, 1] (timers may make blocked exceed the step), with the step's
// measured and modelled link bytes.
TEST_F(ServingLeaderTest, HeartbeatsCarryEachRanksBlockedFraction) {
  Start();
  coordinator_.Push(AdmitMessage("r1", 4, 1));
  StepDataPlane data_plane;
  data_plane.rank_seconds = {0.010, 0.010, 0.020};
  data_plane.blocked_seconds = {0.002, 0.005, 0.021};
  data_plane.measured_link_bytes = 1000;
  data_plane.modelled_link_bytes = 1500;
  bool ran = false;
  for (int guard = 0; guard < 100 && !ran; ++guard) {
    absl::StatusOr<StepPlan> plan = leader_->NextPlan();
    ASSERT_TRUE(plan.ok()) << plan.status();
    std::vector<SampledToken> sampled;
    for (const PlanEntry& e : plan->entries) {
      if (e.sample) sampled.push_back({e.sequence, 3});
    }
    ran = !plan->entries.empty();
    leader_->StepDone(*plan, sampled, 0.02, 0.001, {}, 0, ran ? data_plane : StepDataPlane{});
  }
  ASSERT_TRUE(ran);
  engine::v1::Heartbeat heartbeat;
  ASSERT_TRUE(coordinator_.WaitFor(
      [&](const Received& r) {
        for (const auto& m : r) {
          if (m.has_heartbeat() && m.heartbeat().blocked_fraction_size() > 0) {
            heartbeat = m.heartbeat();
            return true;
          }
        }
        return false;
      },
      absl::Seconds(10)));
  EXPECT_THAT(heartbeat.blocked_fraction(), ElementsAre(::testing::DoubleNear(0.2, 1e-12),
                                                        ::testing::DoubleNear(0.5, 1e-12), 1.0));
  EXPECT_DOUBLE_EQ(heartbeat.measured_link_bytes_per_step(), 1000);
  EXPECT_DOUBLE_EQ(heartbeat.modelled_link_bytes_per_step(), 1500);
}

// Between heartbeats, an Occupancy goes out after every step that changed what the engine
// holds, and only then: the prompt, then one more token a step, then nothing.
TEST_F(ServingLeaderTest, OccupancyFollowsEveryStepThatChangesIt) {
  Start();
  coordinator_.Push(AdmitMessage("r1", 5, 3));
  RunUntilIdle(/*token=*/42);
  ASSERT_TRUE(coordinator_.WaitFor(
      [](const Received& r) {
        return !r.empty() && r.back().has_occupancy() &&
               r.back().occupancy().running_sequences() == 0;
      },
      absl::Seconds(10)));
  std::vector<int64_t> kv_used;
  std::vector<int> running;
  for (const engine::v1::EngineMessage& m : coordinator_.received()) {
    if (!m.has_occupancy()) continue;
    EXPECT_EQ(m.occupancy().kv_budget_tokens(), 1 * ServingLimits{}.engine.kv_budget_tokens);
    const int held = m.occupancy().running_sequences() + m.occupancy().queued_sequences();
    if (held == 0 && running.empty()) continue;  // idle before the Admit arrived
    kv_used.push_back(m.occupancy().kv_used_tokens());
    running.push_back(held);
  }
  // Admitted (nothing in the KV state yet), prefilled, two decode steps, released.
  EXPECT_THAT(kv_used, ElementsAre(0, 5, 6, 0));
  EXPECT_THAT(running, ElementsAre(1, 1, 1, 0));
}

TEST_F(ServingLeaderTest, HeartbeatsStopWhileAStepOutlastsMaxStep) {
  Start(/*max_step=*/absl::Milliseconds(100));
  coordinator_.Push(AdmitMessage("r1", 4, 8));
  absl::StatusOr<StepPlan> plan = leader_->NextPlan();
  ASSERT_TRUE(plan.ok()) << plan.status();
  ASSERT_FALSE(plan->entries.empty());
  // The step "hangs": no StepDone. After max_step the heartbeats stop.
  absl::SleepFor(absl::Milliseconds(300));
  const int before = Count(coordinator_.received(), engine::v1::EngineMessage::kHeartbeat);
  absl::SleepFor(absl::Milliseconds(300));
  const int after = Count(coordinator_.received(), engine::v1::EngineMessage::kHeartbeat);
  EXPECT_GT(before, 0);
  EXPECT_EQ(after, before) << "heartbeats went on during a hung step";
  // The step finishes: heartbeats resume.
  leader_->StepDone(*plan, {}, 0.5, 0.5, {}, 0);
  EXPECT_TRUE(coordinator_.WaitFor(
      [&](const Received& r) { return Count(r, engine::v1::EngineMessage::kHeartbeat) > after; },
      absl::Seconds(10)));
}

TEST_F(ServingLeaderTest, RebalanceLoadIsDenseAndClamped) {
  Start();
  engine::v1::CoordinatorMessage m;
  engine::v1::LayerExpertLoad* l1 = m.mutable_rebalance()->add_load();
  l1->set_layer(1);
  l1->add_tokens_per_expert(3);
  l1->add_tokens_per_expert(-4);  // clamped to 0
  engine::v1::LayerExpertLoad* out_of_range = m.mutable_rebalance()->add_load();
  out_of_range->set_layer(kLayers);  // ignored
  out_of_range->add_tokens_per_expert(9);
  coordinator_.Push(m);
  absl::StatusOr<StepPlan> plan = leader_->NextPlan();
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_TRUE(plan->rebalance);
  EXPECT_TRUE(plan->entries.empty());
  EXPECT_THAT(leader_->TakeRebalanceLoad(), ElementsAre(0, 0, 0, 0, 3, 0, 0, 0));
  engine::v1::Rebalanced done;
  done.set_step(plan->step);
  done.set_placement_summary("summary");
  ASSERT_TRUE(leader_->Rebalanced(done).ok());
  leader_->StepDone(*plan, {}, 0, 0, {}, 0);
  EXPECT_TRUE(coordinator_.WaitFor(
      [](const Received& r) { return Count(r, engine::v1::EngineMessage::kRebalanced) == 1; },
      absl::Seconds(10)));
}

TEST_F(ServingLeaderTest, DrainFinishesRunningRequestsThenStopsAndRefusesNewOnes) {
  Start();
  coordinator_.Push(AdmitMessage("r1", 4, 2));
  absl::StatusOr<StepPlan> first = leader_->NextPlan();
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_EQ(first->entries.size(), 1u);
  engine::v1::CoordinatorMessage drain;
  drain.mutable_drain();
  coordinator_.Push(drain);
  coordinator_.Push(AdmitMessage("late", 4, 2));  // after the drain: not run
  std::vector<SampledToken> sampled = {{first->entries[0].sequence, 5}};
  leader_->StepDone(*first, sampled, 0, 0, {}, 0);
  absl::SleepFor(absl::Milliseconds(100));  // both messages have arrived
  StepPlan plan;
  for (int guard = 0; guard < 20; ++guard) {
    absl::StatusOr<StepPlan> next = leader_->NextPlan();
    ASSERT_TRUE(next.ok()) << next.status();
    plan = *next;
    if (plan.stop) break;
    for (const PlanEntry& e : plan.entries) EXPECT_EQ(e.sequence, first->entries[0].sequence);
    sampled.clear();
    for (const PlanEntry& e : plan.entries) {
      if (e.sample) sampled.push_back({e.sequence, 6});
    }
    leader_->StepDone(plan, sampled, 0, 0, {}, 0);
  }
  ASSERT_TRUE(plan.stop);
  leader_.reset();  // a clean stop half-closes the stream
  EXPECT_TRUE(coordinator_.WaitFor(
      [](const Received& r) { return Count(r, engine::v1::EngineMessage::kDrained) == 1; },
      absl::Seconds(10)));
  std::vector<int32_t> tokens;
  for (const engine::v1::EngineMessage& m : coordinator_.received()) {
    if (!m.has_tokens()) continue;
    EXPECT_EQ(m.tokens().request_id(), "r1");
    tokens.insert(tokens.end(), m.tokens().token_ids().begin(), m.tokens().token_ids().end());
  }
  EXPECT_THAT(tokens, ElementsAre(5, 6));
}

TEST_F(ServingLeaderTest, ShutdownGivesAStopPlan) {
  Start();
  engine::v1::CoordinatorMessage shutdown;
  shutdown.mutable_shutdown()->set_reason("test");
  coordinator_.Push(shutdown);
  absl::StatusOr<StepPlan> plan = leader_->NextPlan();
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_TRUE(plan->stop);
}

TEST_F(ServingLeaderTest, TheCoordinatorGoingAwayIsAnError) {
  Start();
  coordinator_.EndStream(grpc::Status(grpc::StatusCode::UNAVAILABLE, "gone"));
  absl::StatusOr<StepPlan> plan;
  for (int guard = 0; guard < 100 && (plan = leader_->NextPlan()).ok(); ++guard) {
    ASSERT_FALSE(plan->stop);
  }
  EXPECT_FALSE(plan.ok());
}

}  // namespace
}  // namespace dsv4
