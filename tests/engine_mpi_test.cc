// The Engine class in process, under mpirun with 2 attention ranks and 1 expert rank: no
// dsv4-engine binary, the same calls its main makes.
//  - RunOneShot: each attention rank's logits against the single-process model (Model with
//    the InProcessExecutor, a different expert path) on the same checkpoint and prompts:
//    bitwise equal, since rows are batch-invariant and the one expert rank sums a token's
//    expert outputs in the in-process order (ascending expert).
//  - ServeCoordinator: a scripted coordinator on rank 0 admits two greedy requests; the
//    streamed tokens equal a greedy decode of the single-process model, and a Shutdown
//    stops every rank cleanly.
#include "engine/engine.h"

#include <mpi.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "attention_node/model.h"
#include "core/sampling.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/engine_test_util.h"
#include "tests/fake_coordinator.h"
#include "tests/model_test_util.h"
#include "tests/mpi_test_util.h"
#include "tests/test_util.h"

namespace dsv4 {
namespace {

constexpr int kAttentionRanks = 2, kExpertRanks = 1;

// The same string on every rank: rank 0's.
std::string Broadcast(std::string text) {
  int size = static_cast<int>(text.size());
  MPI_Bcast(&size, 1, MPI_INT, 0, MPI_COMM_WORLD);
  text.resize(size);
  MPI_Bcast(text.data(), size, MPI_CHAR, 0, MPI_COMM_WORLD);
  return text;
}

// The single-process model on the checkpoint (all routed experts in process): the logits
// of every position of `prompt`, a prefill of `decode_from` tokens (all when 0) then one
// token per step.
std::vector<float> ReferenceLogits(testing::LoadedModel& m, const std::vector<int32_t>& prompt,
                                   int64_t decode_from) {
  SequenceState state = m.model->NewSequence();
  std::vector<float> out;
  const size_t prefill = decode_from > 0 ? decode_from : prompt.size();
  for (size_t begin = 0; begin < prompt.size();) {
    const size_t n = begin == 0 ? prefill : 1;
    StepInput in{&state, absl::MakeConstSpan(prompt).subspan(begin, n)};
    absl::StatusOr<Tensor> logits = m.model->Forward({&in, 1}, *m.experts);
    EXPECT_TRUE(logits.ok()) << logits.status();
    out.insert(out.end(), logits->data(), logits->data() + logits->numel());
    begin += n;
  }
  return out;
}

// `count` greedy tokens after `prompt`, from the single-process model.
std::vector<int32_t> ReferenceGreedy(testing::LoadedModel& m, const std::vector<int32_t>& prompt,
                                     int count) {
  SequenceState state = m.model->NewSequence();
  std::vector<int32_t> generated;
  std::vector<int32_t> feed = prompt;
  for (int i = 0; i < count; ++i) {
    StepInput in{&state, feed};
    absl::StatusOr<Tensor> logits =
        m.model->Forward({&in, 1}, *m.experts, LogitRows::kLastPerSequence);
    EXPECT_TRUE(logits.ok()) << logits.status();
    generated.push_back(Sampler::SampleDraw(absl::MakeConstSpan(logits->data(), logits->numel()),
                                            SamplingParams{.temperature = 0}, i));
    feed = {generated.back()};
  }
  return generated;
}

class EngineMpiTest : public testing::MpiTest {
 protected:
  static void SetUpTestSuite() {
    ASSERT_EQ(testing::WorldSize(), kAttentionRanks + kExpertRanks);
    std::string dir;
    if (testing::WorldRank() == 0) {
      temp_ = new testing::TempDir("engine-mpi");
      dir = temp_->path();
      const testing::CommandResult gen = testing::RunCommand(absl::StrCat(
          testing::Dsv4(), " checkpoint generate --preset v4-tiny --seed 7 --out ", dir, "/ckpt"));
      EXPECT_EQ(gen.exit_code, 0) << gen.output;
      std::ofstream(dir + "/cluster.yaml")
          << testing::OneNodeYaml(kAttentionRanks, kExpertRanks, 0, /*prefill_chunk=*/64);
    }
    dir_ = new std::string(Broadcast(dir));
  }
  static void TearDownTestSuite() {
    MPI_Barrier(MPI_COMM_WORLD);  // every rank is done with the files
    delete temp_;
    delete dir_;
  }

  static EngineOptions Options() {
    EngineOptions options;
    options.cluster = *dir_ + "/cluster.yaml";
    options.checkpoint = *dir_ + "/ckpt";
    return options;
  }

  static testing::TempDir* temp_;
  static std::string* dir_;
};
testing::TempDir* EngineMpiTest::temp_ = nullptr;
std::string* EngineMpiTest::dir_ = nullptr;

TEST_F(EngineMpiTest, OneShotLogitsMatchTheSingleProcessModel) {
  absl::StatusOr<std::unique_ptr<Engine>> engine = Engine::Create(Options());
  ASSERT_TRUE(engine.ok()) << engine.status();  // fails on every rank alike
  const std::vector<std::vector<int32_t>> prompts = {
      testing::TokenIds(150, 0), testing::TokenIds(90, 1), testing::TokenIds(40, 2)};
  const int64_t decode_from = 30;
  absl::StatusOr<OneShotResult> result = (*engine)->RunOneShot(prompts, decode_from);
  ASSERT_TRUE(result.ok()) << result.status();
  const int rank = testing::WorldRank();
  if (rank == 0) {
    EXPECT_EQ(result->stats["resident_bytes"].size(), 3u);
    EXPECT_GT(result->stats["steps"].size(), 1u);
  }
  if (!(*engine)->is_attention()) {
    EXPECT_TRUE(result->logits.empty());
    return;
  }
  absl::StatusOr<testing::LoadedModel> reference = testing::LoadModelDir(Options().checkpoint);
  ASSERT_TRUE(reference.ok()) << reference.status();
  std::vector<int32_t> held;
  for (const auto& [sequence, rows] : result->logits) held.push_back(sequence);
  // Prompt i lives on attention rank i mod A.
  const std::vector<int32_t> expected_held =
      rank == 0 ? std::vector<int32_t>{0, 2} : std::vector<int32_t>{1};
  EXPECT_EQ(held, expected_held);
  for (const auto& [sequence, rows] : result->logits) {
    const std::vector<float> expected = ReferenceLogits(*reference, prompts[sequence], decode_from);
    ASSERT_EQ(rows.size(), expected.size()) << "sequence " << sequence;
    double max_diff = 0;
    for (size_t i = 0; i < rows.size(); ++i) {
      max_diff = std::max<double>(max_diff, std::fabs(expected[i] - rows[i]));
    }
    EXPECT_EQ(max_diff, 0.0) << "sequence " << sequence;
  }
}

// Every step's stats give each rank's share of its step time blocked on the data plane, and
// the link bytes the dispatchers sent: with one expert rank every token of a step goes to it
// as one record per MoE layer (8 + 8·k + 4·d bytes) and comes back as one row (4·d bytes),
// all on the one node's links. Counted as copies at the target's wire format, that is
// exactly what the cost model counted.
TEST_F(EngineMpiTest, OneShotStatsReportBlockedTimeAndExactLinkBytes) {
  absl::StatusOr<std::unique_ptr<Engine>> engine = Engine::Create(Options());
  ASSERT_TRUE(engine.ok()) << engine.status();
  const std::vector<std::vector<int32_t>> prompts = {
      testing::TokenIds(20, 0), testing::TokenIds(12, 1), testing::TokenIds(7, 2)};
  absl::StatusOr<OneShotResult> result = (*engine)->RunOneShot(prompts, /*decode_from=*/5);
  ASSERT_TRUE(result.ok()) << result.status();
  if (testing::WorldRank() != 0) return;
  const ModelConfig& config = (*engine)->config();
  const int64_t d = config.hidden_size, k = config.num_experts_per_tok;
  const int64_t layers = config.num_hidden_layers;
  const nlohmann::json& stats = result->stats;
  EXPECT_EQ(stats["link_classes"],
            nlohmann::json({"intra_node", "intra_supernode", "inter_supernode"}));
  ASSERT_GT(stats["steps"].size(), 1u);
  double expert_blocked = 0;
  for (const nlohmann::json& step : stats["steps"]) {
    SCOPED_TRACE(step.dump());
    const int64_t tokens = step["tokens"].get<int64_t>();
    ASSERT_EQ(step["blocked_fraction"].size(), 3u);
    ASSERT_EQ(step["blocked_seconds"].size(), 3u);
    for (int r = 0; r < 3; ++r) {
      const double fraction = step["blocked_fraction"][r].get<double>();
      EXPECT_GE(fraction, 0.0);
      EXPECT_LE(fraction, 1.0);
      EXPECT_LE(step["blocked_seconds"][r].get<double>(), step["rank_seconds"][r].get<double>());
    }
    expert_blocked += step["blocked_seconds"][2].get<double>();
    // One record per token and layer (one expert rank), one row back; raw bytes add the
    // low-latency blocks' 8-byte headers to the records and rows.
    const nlohmann::json& raw = step["link_bytes"]["measured_raw"];
    const double records = static_cast<double>(layers * tokens);
    EXPECT_GE(raw["dispatch"][0].get<double>(), records * (8 + 8 * k + 4 * d));
    EXPECT_EQ(std::fmod(raw["dispatch"][0].get<double>() - records * (8 + 8 * k + 4 * d), 8), 0);
    EXPECT_GE(raw["combine"][0].get<double>(), records * 4 * d);
    EXPECT_EQ(std::fmod(raw["combine"][0].get<double>() - records * 4 * d, 8), 0);
    const nlohmann::json& wire = step["link_bytes"]["measured_wire"];
    const nlohmann::json& modelled = step["link_bytes"]["modelled"];
    for (const char* exchange : {"dispatch", "combine"}) {
      for (int c = 0; c < 3; ++c) {
        EXPECT_NEAR(wire[exchange][c].get<double>(), modelled[exchange][c].get<double>(),
                    1e-9 * modelled[exchange][c].get<double>())
            << exchange << " class " << c;
      }
    }
    EXPECT_DOUBLE_EQ(wire["dispatch"][0].get<double>(),
                     static_cast<double>(layers * tokens) * DispatchBytesPerCopy(config));
    // The same copies priced: the measured-traffic step time is the modelled one.
    EXPECT_NEAR(step["modelled_seconds_measured_traffic"].get<double>(),
                step["modelled_seconds"].get<double>(),
                1e-9 * step["modelled_seconds"].get<double>());
  }
  // The expert rank waits for the attention ranks' tokens every layer.
  EXPECT_GT(expert_blocked, 0.0);
}

TEST_F(EngineMpiTest, ServesACoordinatorsRequestsUntilShutdown) {
  absl::StatusOr<std::unique_ptr<Engine>> engine = Engine::Create(Options());
  ASSERT_TRUE(engine.ok()) << engine.status();
  const int rank = testing::WorldRank();
  const std::vector<std::vector<int32_t>> prompts = {testing::TokenIds(50, 3),
                                                     testing::TokenIds(20, 4)};
  constexpr int kTokens = 6;
  std::unique_ptr<testing::FakeCoordinator> coordinator;
  std::thread client;
  std::map<std::string, std::vector<int32_t>> streamed;
  if (rank == 0) {
    coordinator = std::make_unique<testing::FakeCoordinator>(/*heartbeat_interval_ms=*/100);
    for (size_t i = 0; i < prompts.size(); ++i) {
      engine::v1::CoordinatorMessage m;
      engine::v1::Admit& admit = *m.mutable_admit();
      admit.set_request_id(absl::StrCat("r", i));
      admit.mutable_prompt_token_ids()->Add(prompts[i].begin(), prompts[i].end());
      admit.set_max_tokens(kTokens);
      admit.set_ignore_eos(true);
      coordinator->Push(m);
    }
    // Once both requests have finished, shut the engine down.
    client = std::thread([&] {
      const bool finished = coordinator->WaitFor(
          [&](const std::vector<engine::v1::EngineMessage>& received) {
            int done = 0;
            for (const auto& m : received) {
              done += m.has_tokens() &&
                      m.tokens().finish_reason() != engine::v1::FINISH_REASON_UNSPECIFIED;
            }
            return done == static_cast<int>(prompts.size());
          },
          absl::Seconds(60));
      EXPECT_TRUE(finished);
      engine::v1::CoordinatorMessage shutdown;
      shutdown.mutable_shutdown()->set_reason("test done");
      coordinator->Push(shutdown);
    });
  }
  ServeOptions serve;
  serve.coordinator = Broadcast(coordinator ? coordinator->address() : "");
  serve.engine_id = "engine-mpi-test";
  serve.engine_token = "engine-mpi-token";
  serve.launch_nonce = "launch-nonce";
  serve.connect_timeout = absl::Seconds(10);
  EXPECT_TRUE((*engine)->ServeCoordinator(serve).ok());
  if (rank != 0) return;
  client.join();
  const std::vector<engine::v1::EngineMessage> received = coordinator->received();
  ASSERT_FALSE(received.empty());
  ASSERT_TRUE(received[0].has_hello());
  const engine::v1::Hello& hello = received[0].hello();
  EXPECT_EQ(hello.engine_id(), "engine-mpi-test");
  EXPECT_EQ(coordinator->authorization(), "Bearer engine-mpi-token");  // the engine credential
  EXPECT_EQ(hello.launch_nonce(), "launch-nonce");
  EXPECT_EQ(hello.model().config_sha256().size(), 64u);
  EXPECT_EQ(hello.model().name(), "ckpt");
  ASSERT_EQ(hello.ranks_size(), 3);
  EXPECT_EQ(hello.ranks(2).role(), engine::v1::ROLE_EXPERT);
  EXPECT_EQ(hello.max_running(), kAttentionRanks * 64);
  for (const engine::v1::EngineMessage& m : received) {
    if (!m.has_tokens()) continue;
    EXPECT_TRUE(m.tokens().error().empty()) << m.tokens().error();
    std::vector<int32_t>& tokens = streamed[m.tokens().request_id()];
    tokens.insert(tokens.end(), m.tokens().token_ids().begin(), m.tokens().token_ids().end());
  }
  absl::StatusOr<testing::LoadedModel> reference = testing::LoadModelDir(Options().checkpoint);
  ASSERT_TRUE(reference.ok()) << reference.status();
  for (size_t i = 0; i < prompts.size(); ++i) {
    EXPECT_EQ(streamed[absl::StrCat("r", i)], ReferenceGreedy(*reference, prompts[i], kTokens))
        << "request r" << i;
  }
}

}  // namespace
}  // namespace dsv4
