// The serving engine's scheduler (engine/serving_planner.h) without MPI: placement over
// attention ranks, chunked prefill budgets, decode, finishing rules, releases, replays.
#include "engine/serving_planner.h"

#include <map>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace dsv4 {
namespace {

using ::testing::ElementsAre;

engine::v1::Admit MakeAdmit(const std::string& id, int prompt, int max_tokens,
                            std::vector<int32_t> resume = {}) {
  engine::v1::Admit a;
  a.set_request_id(id);
  for (int i = 0; i < prompt; ++i) a.add_prompt_token_ids(100 + i);
  a.set_max_tokens(max_tokens);
  a.mutable_sampling()->set_seed(9);
  a.mutable_resume_tokens()->Add(resume.begin(), resume.end());
  return a;
}

ServingLimits Limits() {
  ServingLimits l;
  l.attention_ranks = 2;
  l.engine.micro_batches = 2;
  l.engine.max_seqs_per_rank = 2;
  l.engine.max_seq_len = 64;
  l.engine.kv_budget_tokens = 100;
  l.engine.chunked_prefill_tokens = 8;
  l.eos_token_id = 1;
  return l;
}

// Samples `token` for every entry of `plan` that asks for one.
std::vector<SampledToken> SampleAll(const StepPlan& plan, int32_t token) {
  std::vector<SampledToken> out;
  for (const PlanEntry& e : plan.entries) {
    if (e.sample) out.push_back({e.sequence, token});
  }
  return out;
}

TEST(ServingPlannerTest, SpreadsOverRanksByReservedKvAndAlternatesMicroBatches) {
  ServingPlanner planner(Limits());
  planner.Admit(MakeAdmit("a", 4, 40));  // reserves 44
  planner.Admit(MakeAdmit("b", 4, 10));  // 14: rank 1 is emptier
  planner.Admit(MakeAdmit("c", 4, 10));  // rank 1 (14) < rank 0 (44)
  planner.Admit(MakeAdmit("d", 4, 10));  // rank 1 is full (2 sequences): rank 0
  planner.Admit(MakeAdmit("e", 4, 10));  // both full: waits
  const StepPlan plan = planner.Next();
  std::map<int, std::pair<int, int>> where;  // sequence → (rank, micro-batch)
  for (const PlanEntry& e : plan.entries) where[e.sequence] = {e.rank, e.micro_batch};
  ASSERT_EQ(where.size(), 4u);
  EXPECT_EQ(where[0], std::pair(0, 0));
  EXPECT_EQ(where[1], std::pair(1, 0));
  EXPECT_EQ(where[2], std::pair(1, 1));
  EXPECT_EQ(where[3], std::pair(0, 1));
  EXPECT_EQ(planner.running(), 4);
  EXPECT_EQ(planner.waiting(), 1);
}

TEST(ServingPlannerTest, ChunksPrefillWithinTheBudgetThenDecodesOneTokenPerStep) {
  ServingLimits limits = Limits();
  limits.attention_ranks = 1;
  ServingPlanner planner(limits);
  planner.Admit(MakeAdmit("a", 12, 3));
  StepPlan p = planner.Next();  // 8 of 12 prompt tokens, no sample yet
  ASSERT_EQ(p.entries.size(), 1u);
  EXPECT_EQ(p.entries[0].tokens.size(), 8u);
  EXPECT_FALSE(p.entries[0].sample);
  planner.OnSampled({});
  p = planner.Next();  // the last 4, sampling draw 0
  ASSERT_EQ(p.entries.size(), 1u);
  EXPECT_THAT(p.entries[0].tokens, ElementsAre(108, 109, 110, 111));
  EXPECT_TRUE(p.entries[0].sample);
  EXPECT_EQ(p.entries[0].draw, 0u);
  EXPECT_EQ(p.entries[0].sampling.seed, 9u);
  EXPECT_FLOAT_EQ(p.entries[0].sampling.top_p, 1.0f);  // 0 in the proto means off
  planner.OnSampled(SampleAll(p, 50));
  p = planner.Next();  // decode: feeds the sampled token, draw 1
  EXPECT_THAT(p.entries[0].tokens, ElementsAre(50));
  EXPECT_EQ(p.entries[0].draw, 1u);
  planner.OnSampled(SampleAll(p, 51));
  p = planner.Next();
  planner.OnSampled(SampleAll(p, 52));  // third token: max_tokens reached
  // Events not yet taken merge into one per request, the finish riding on the last token.
  const std::vector<engine::v1::TokenEvent> events = planner.TakeEvents();
  ASSERT_EQ(events.size(), 1u);
  EXPECT_THAT(events[0].token_ids(), ElementsAre(50, 51, 52));
  EXPECT_EQ(events[0].finish_reason(), engine::v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(planner.Next().release, std::vector<int32_t>{0});  // its state is freed
  EXPECT_TRUE(planner.idle());
}

TEST(ServingPlannerTest, PrefillSharesTheChunkWhileDecodesAlwaysRun) {
  ServingLimits limits = Limits();
  limits.attention_ranks = 1;
  limits.engine.chunked_prefill_tokens = 6;
  ServingPlanner planner(limits);
  planner.Admit(MakeAdmit("a", 3, 5));
  StepPlan p = planner.Next();
  planner.OnSampled(SampleAll(p, 7));  // a decodes from now on
  planner.Admit(MakeAdmit("b", 10, 5));
  planner.Admit(MakeAdmit("c", 10, 5));
  p = planner.Next();
  std::map<int, size_t> fed;
  for (const PlanEntry& e : p.entries) fed[e.sequence] = e.tokens.size();
  EXPECT_EQ(fed[0], 1u);        // decode
  EXPECT_EQ(fed[1], 6u);        // the whole chunk budget
  EXPECT_EQ(fed.count(2), 0u);  // nothing left for c this step
}

TEST(ServingPlannerTest, StopTokensEosAndCancelFinishRequests) {
  ServingPlanner planner(Limits());
  engine::v1::Admit stop = MakeAdmit("stop", 2, 10);
  stop.add_stop_token_ids(77);
  planner.Admit(stop);
  planner.Admit(MakeAdmit("eos", 2, 10));
  engine::v1::Admit keep = MakeAdmit("keep", 2, 10);
  keep.set_ignore_eos(true);
  planner.Admit(keep);
  StepPlan p = planner.Next();
  std::vector<SampledToken> sampled = {{0, 77}, {1, 1}, {2, 1}};
  planner.OnSampled(sampled);
  planner.Cancel("keep");
  planner.Cancel("unknown");  // ignored
  std::map<std::string, engine::v1::FinishReason> finish;
  for (const auto& e : planner.TakeEvents()) finish[e.request_id()] = e.finish_reason();
  EXPECT_EQ(finish["stop"], engine::v1::FINISH_REASON_STOP);
  EXPECT_EQ(finish["eos"], engine::v1::FINISH_REASON_EOS);
  EXPECT_EQ(finish["keep"], engine::v1::FINISH_REASON_CANCELLED);  // EOS did not end it
  EXPECT_EQ(finish.count("unknown"), 0u);
  EXPECT_THAT(planner.Next().release, ElementsAre(0, 1, 2));
  EXPECT_EQ(planner.kv_used_tokens(), 0);
}

TEST(ServingPlannerTest, AReplayPrefillsItsResumeTokensAndContinuesTheDraws) {
  ServingLimits limits = Limits();
  limits.attention_ranks = 1;
  ServingPlanner planner(limits);
  planner.Admit(MakeAdmit("r", 3, 6, {40, 41, 42}));
  const StepPlan p = planner.Next();
  ASSERT_EQ(p.entries.size(), 1u);
  EXPECT_THAT(p.entries[0].tokens, ElementsAre(100, 101, 102, 40, 41, 42));
  EXPECT_TRUE(p.entries[0].sample);
  EXPECT_EQ(p.entries[0].draw, 3u);  // three draws were made before the loss
  planner.OnSampled(SampleAll(p, 43));
  const std::vector<engine::v1::TokenEvent> events = planner.TakeEvents();
  ASSERT_EQ(events.size(), 1u);
  EXPECT_THAT(events[0].token_ids(), ElementsAre(43));  // only the new token is sent
}

TEST(ServingPlannerTest, RefusesWhatCanNeverRunWithAnError) {
  ServingPlanner planner(Limits());
  planner.Admit(MakeAdmit("long", 64, 1));         // no room left in max_seq_len 64
  planner.Admit(MakeAdmit("big", 50, 60));         // 64 reserved ≤ 100: fine
  planner.Admit(MakeAdmit("big", 5, 5));           // duplicate id
  planner.Admit(MakeAdmit("done", 2, 2, {5, 6}));  // nothing left to generate
  std::map<std::string, std::string> errors;
  for (const auto& e : planner.TakeEvents()) {
    EXPECT_EQ(e.finish_reason(), engine::v1::FINISH_REASON_ERROR);
    errors[e.request_id()] = e.error();
  }
  EXPECT_THAT(errors["long"], ::testing::HasSubstr("max_seq_len 64"));
  EXPECT_THAT(errors["big"], ::testing::HasSubstr("already running"));
  EXPECT_THAT(errors["done"], ::testing::HasSubstr("leaves nothing to generate"));
  EXPECT_EQ(planner.waiting(), 1);
}

}  // namespace
}  // namespace dsv4
