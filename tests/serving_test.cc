// The serving path end to end: a coordinator (in this process) launches dsv4-engine under
// mpirun on a v4-tiny checkpoint and clients call Generate over loopback gRPC. Checked
// against the single process (`dsv4 run --generate`), and under faults: an expert rank
// killed with SIGKILL during 8 concurrent streams, an Engram memory node killed, restarts
// exhausted, a client cancelling.
#include <signal.h>

#include <atomic>
#include <chrono>
#include <fstream>
#include <future>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "coordinator/coordinator_server.h"
#include "engine/control_client.h"
#include "grpcpp/grpcpp.h"
#include "proto/admin.grpc.pb.h"
#include "proto/inference.grpc.pb.h"
#include "rpc/security.h"
#include "tests/coordinator_test_util.h"
#include "tests/engram_test_util.h"
#include "tests/test_util.h"

namespace dsv4::coordinator {
namespace {

using ::testing::HasSubstr;

// A one-node cluster of `attention` + `experts` ranks, with `extra` YAML appended.
std::string ClusterYaml(int attention, int experts, const std::string& extra = "") {
  return absl::StrCat("name: serving-test\nhardware: ", DSV4_SOURCE_DIR,
                      "/cluster-configs/hardware/ascend-950dt.yaml\n"
                      "topology:\n  supernodes: 1\n  nodes_per_supernode: 1\n  chips_per_node: ",
                      attention + experts,
                      "\n  links:\n"
                      "    intra_node: {bandwidth_GBps: 1000, latency_us: 1.0}\n"
                      "    intra_supernode: {bandwidth_GBps: 1000, latency_us: 2.1}\n"
                      "    inter_supernode: {bandwidth_GBps: 50, latency_us: 5.0}\n"
                      "roles:\n  attention_ranks: ",
                      attention, "\n  expert_ranks: ", experts,
                      "\nengine:\n  micro_batches: 2\n  chunked_prefill_tokens: 64\n", extra);
}

class ServingTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new testing::TempDir("serving");
    for (const char* preset : {"v4-tiny", "v41-tiny"}) {
      const testing::CommandResult gen =
          testing::RunCommand(absl::StrCat(testing::Dsv4(), " checkpoint generate --preset ",
                                           preset, " --seed 7 --out ", Path(preset)));
      ASSERT_EQ(gen.exit_code, 0) << gen.output;
    }
  }
  static void TearDownTestSuite() { delete dir_; }
  static std::string Path(const std::string& name) { return dir_->path() + "/" + name; }

  // The operator API, and a call context carrying the admin token Start created.
  std::unique_ptr<admin::v1::Admin::Stub> Admin() const {
    return admin::v1::Admin::NewStub(
        grpc::CreateChannel(server_->admin_address(), grpc::InsecureChannelCredentials()));
  }
  static void AddAdminToken(grpc::ClientContext* context) {
    context->AddMetadata("authorization", "Bearer " + *rpc::ReadTokenFile(Path("admin.token")));
  }
  // Drains engine-0 (it finishes its work and, launched, starts again).
  void DrainEngine0() {
    grpc::ClientContext context;
    AddAdminToken(&context);
    admin::v1::DrainEngineRequest drain;
    drain.set_engine_id("engine-0");
    admin::v1::DrainEngineResponse ignored;
    ASSERT_TRUE(Admin()->DrainEngine(&context, drain, &ignored).ok());
  }

  void TearDown() override {
    if (server_) server_->Shutdown();
  }

  // Starts a coordinator that launches the engine of `yaml` on `checkpoint` and waits
  // (bounded) until it connects.
  void Start(const std::string& yaml, int ranks, const std::string& checkpoint = "v4-tiny",
             int max_restarts = 3, int engines = 1) {
    SCOPED_TRACE(yaml);
    const std::string yaml_path = Path(absl::StrCat("cluster-", ++yamls_, ".yaml"));
    std::ofstream(yaml_path) << yaml;
    CoordinatorOptions options;
    options.listen = "127.0.0.1:0";
    options.admin_listen = "127.0.0.1:0";
    options.admin_token_file = Path("admin.token");  // created by Start
    options.checkpoint_dir = Path(checkpoint);
    options.max_context = 1024;
    options.heartbeat_interval_ms = heartbeat_interval_ms_;
    options.tls_cert = tls_cert_;
    options.tls_key = tls_key_;
    options.auth_token_file = token_file_;
    EngineLaunch launch;
    launch.engine_binary = std::string(DSV4_BIN_DIR) + "/dsv4-engine";
    launch.cluster_yaml = yaml_path;
    launch.ranks = ranks;
    launch.hosts.assign(ranks, "localhost");
    launch.mpirun_args = DefaultMpirunArgs();
    launch.max_restarts = max_restarts;
    launch.engines = engines;
    options.launch = launch;
    auto server = CoordinatorServer::Start(options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    absl::StatusOr<rpc::ClientSecurity> security = rpc::LoadClientSecurity(tls_cert_, token_file_);
    ASSERT_TRUE(security.ok()) << security.status();
    stub_ = v1::Inference::NewStub(
        grpc::CreateChannel(absl::StrCat("localhost:", server_->port()), security->credentials));
    token_ = security->token;
    WaitForEngines(engines);
  }
  void WaitForEngines(int engines) {
    for (int i = 0; i < 600 && server_->registry().size() < engines; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    ASSERT_EQ(server_->registry().size(), engines) << "the launched engines never connected";
  }

  v1::ClusterStatus Status() {
    grpc::ClientContext context;
    context.set_deadline(Deadline(10));
    v1::ClusterStatus status;
    rpc::AddBearerToken(&context, token_);
    EXPECT_TRUE(stub_->GetClusterStatus(&context, {}, &status).ok());
    return status;
  }

  static v1::GenerateRequest Request(const std::vector<int32_t>& prompt, int max_tokens,
                                     uint64_t seed) {
    v1::GenerateRequest r;
    r.mutable_token_ids()->mutable_ids()->Add(prompt.begin(), prompt.end());
    r.set_max_tokens(max_tokens);
    r.mutable_sampling()->set_temperature(0.8f);
    r.mutable_sampling()->set_seed(seed);
    return r;
  }
  static std::vector<int32_t> Prompt(int length, int salt) {
    std::vector<int32_t> ids;
    for (int i = 0; i < length; ++i) ids.push_back((i * 37 + salt * 101 + 11) % 1000 + 2);
    return ids;
  }

  // Generate in the background; `received` counts the tokens streamed so far.
  std::future<Streamed> Generate(const v1::GenerateRequest& request,
                                 std::atomic<int>* received = nullptr,
                                 std::shared_ptr<grpc::ClientContext> context = nullptr) {
    if (!context) context = std::make_shared<grpc::ClientContext>();
    context->set_deadline(Deadline(180));
    rpc::AddBearerToken(context.get(), token_);
    return GenerateAsync(stub_.get(), request, context, received);
  }

  // All of `requests` at once; the results in order.
  std::vector<Streamed> GenerateAll(const std::vector<v1::GenerateRequest>& requests,
                                    std::atomic<int>* received) {
    std::vector<std::future<Streamed>> futures;
    for (const v1::GenerateRequest& r : requests) futures.push_back(Generate(r, received));
    std::vector<Streamed> out;
    for (auto& f : futures) out.push_back(f.get());
    return out;
  }
  // Waits (bounded) until `received` reaches `n`.
  static void WaitForTokens(const std::atomic<int>& received, int n) {
    for (int i = 0; i < 6000 && received < n; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    ASSERT_GE(received.load(), n) << "the streams stalled";
  }

  // The pid of the first rank with `role` (of engine `engine_id`, or of any engine), from
  // GetClusterStatus.
  int64_t RankPid(const std::string& role, const std::string& engine_id = "") {
    const v1::ClusterStatus status = Status();
    for (const v1::EngineStatus& engine : status.engines()) {
      if (!engine_id.empty() && engine.id() != engine_id) continue;
      for (const v1::RankStatus& rank : engine.ranks()) {
        if (rank.role() == role) return rank.pid();
      }
    }
    ADD_FAILURE() << "no " << role << " rank in " << status.DebugString();
    return -1;
  }
  int64_t ExpertRankPid() { return RankPid("expert"); }
  // Signals one rank's process. A pid that is not positive (no such rank) fails the test
  // instead of reaching kill(2), where -1 would signal every process on the machine; call
  // it inside ASSERT_NO_FATAL_FAILURE so that the test stops there.
  static void SignalRank(int64_t pid, int signal) {
    ASSERT_GT(pid, 0);
    ASSERT_EQ(kill(static_cast<pid_t>(pid), signal), 0);
  }

  static testing::TempDir* dir_;
  int yamls_ = 0;
  std::string tls_cert_, tls_key_, token_file_;  // set before Start for a secured cluster
  int heartbeat_interval_ms_ = 250;
  std::string token_;
  std::unique_ptr<CoordinatorServer> server_;
  std::unique_ptr<v1::Inference::Stub> stub_;
};

testing::TempDir* ServingTest::dir_ = nullptr;

TEST_F(ServingTest, GeneratesTheSingleProcessTokensAndFreesTheKvState) {
  Start(ClusterYaml(1, 1), 2);
  const std::vector<int32_t> prompt = Prompt(90, 0);  // two prefill chunks of 64
  const int n = 24;
  const Streamed out = Generate(Request(prompt, n, 5)).get();
  ASSERT_TRUE(out.status.ok()) << out.status.error_message();

  const testing::CommandResult run = testing::RunCommand(
      absl::StrCat(testing::Dsv4(), " run --checkpoint ", Path("v4-tiny"), " --tokens ",
                   absl::StrJoin(prompt, ","), " --generate ", n, " --temperature 0.8 --seed 5"));
  ASSERT_EQ(run.exit_code, 0) << run.output;
  const size_t at = run.output.find("generated: ") + 11;
  std::vector<int32_t> reference;
  for (absl::string_view id :
       absl::StrSplit(run.output.substr(at, run.output.find('\n', at) - at), ',')) {
    int32_t value = 0;
    ASSERT_TRUE(absl::SimpleAtoi(id, &value));
    reference.push_back(value);
  }
  // The engine stops at EOS (id 1), `dsv4 run` does not: compare up to the engine's end.
  ASSERT_FALSE(out.tokens.empty());
  ASSERT_LE(out.tokens.size(), reference.size());
  EXPECT_EQ(out.tokens,
            std::vector<int32_t>(reference.begin(), reference.begin() + out.tokens.size()));
  if (out.tokens.size() < reference.size()) {
    EXPECT_EQ(out.last.finish_reason(), v1::FINISH_REASON_EOS);
  } else {
    EXPECT_EQ(out.last.finish_reason(), v1::FINISH_REASON_LENGTH);
  }
  EXPECT_EQ(out.last.usage().prompt_tokens(), static_cast<int>(prompt.size()));

  // The finished request's sequence was released: the engine reports no KV in use.
  v1::ClusterStatus status;
  for (int i = 0; i < 100; ++i) {
    status = Status();
    // Heartbeats bring the step times and the expert load; wait for both, not only the
    // first (a fast engine finishes before its next heartbeat).
    if (status.engines_size() == 1 && status.engines(0).measured_step_ms() > 0 &&
        status.engines(0).kv_usage() == 0 && status.engines(0).running_requests() == 0 &&
        status.expert_load_size() > 0 && status.engines(0).measured_link_bytes_per_step() > 0) {
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_EQ(status.engines_size(), 1);
  EXPECT_EQ(status.engines(0).running_requests(), 0);
  EXPECT_EQ(status.engines(0).kv_usage(), 0);
  EXPECT_GT(status.engines(0).measured_step_ms(), 0);
  EXPECT_GT(status.engines(0).modelled_step_ms(), 0);
  EXPECT_GT(status.expert_load_size(), 0);
  // Each rank's share of its step time blocked on the data plane; the expert rank waits for
  // tokens every layer. With one expert rank every token is one copy per layer, as modelled.
  const v1::EngineStatus& engine = status.engines(0);
  ASSERT_EQ(engine.ranks_size(), 2);
  for (const v1::RankStatus& rank : engine.ranks()) {
    EXPECT_GE(rank.blocked_fraction(), 0) << rank.rank();
    EXPECT_LE(rank.blocked_fraction(), 1) << rank.rank();
  }
  EXPECT_GT(engine.ranks(1).blocked_fraction(), 0);
  EXPECT_NEAR(engine.measured_link_bytes_per_step(), engine.modelled_link_bytes_per_step(),
              1e-9 * engine.modelled_link_bytes_per_step());
}

TEST_F(ServingTest, DsvGenerateStreamsAndStatusPrintsTheCluster) {
  Start(ClusterYaml(1, 1), 2);
  const std::string server = absl::StrCat(" --server ", server_->address());
  const testing::CommandResult generate = testing::RunCommand(
      absl::StrCat(testing::Dsv4(), " generate", server,
                   " --max-tokens 8 --ignore-eos --seed 1 --request-id cli-1 \"Hello there\""));
  EXPECT_EQ(generate.exit_code, 0) << generate.output;
  EXPECT_THAT(generate.output, HasSubstr("[finish: length"));
  EXPECT_THAT(generate.output, HasSubstr("completion tokens: 8"));
  const testing::CommandResult status =
      testing::RunCommand(absl::StrCat(testing::Dsv4(), " status", server));
  EXPECT_EQ(status.exit_code, 0) << status.output;
  EXPECT_THAT(status.output, HasSubstr("engine-0"));
  EXPECT_THAT(status.output, HasSubstr("attention"));
  EXPECT_THAT(status.output, HasSubstr("placement: expert placement"));
  EXPECT_THAT(status.output, HasSubstr("BLOCKED"));
  EXPECT_THAT(status.output, HasSubstr("LINK/STEP meas/model"));
}

// TLS and a bearer token from the cluster YAML: the launched engine reads them from the same
// file and connects; clients need both.
TEST_F(ServingTest, ASecuredClusterServesWithTlsAndToken) {
  const testing::CommandResult cert = testing::RunCommand(
      absl::StrCat("/usr/bin/openssl req -x509 -newkey rsa:2048 -nodes -subj /CN=localhost "
                   "-addext subjectAltName=DNS:localhost,IP:127.0.0.1 -days 1 -keyout ",
                   Path("key.pem"), " -out ", Path("cert.pem")));
  ASSERT_EQ(cert.exit_code, 0) << cert.output;
  testing::WriteFile(Path("token"), "serving-token\n");
  tls_cert_ = Path("cert.pem");
  tls_key_ = Path("key.pem");
  token_file_ = Path("token");
  Start(ClusterYaml(1, 1,
                    absl::StrCat("coordinator:\n  tls: {cert: ", tls_cert_, ", key: ", tls_key_,
                                 "}\n  auth_token_file: ", token_file_, "\n")),
        2);
  const Streamed out = Generate(Request(Prompt(10, 7), 6, 1)).get();
  ASSERT_TRUE(out.status.ok()) << out.status.error_message();
  EXPECT_FALSE(out.tokens.empty());
  token_.clear();  // without the token
  EXPECT_EQ(Generate(Request(Prompt(10, 7), 6, 1)).get().status.error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
}

TEST_F(ServingTest, ACancelledRequestFreesItsSequence) {
  Start(ClusterYaml(1, 1), 2);
  auto context = std::make_shared<grpc::ClientContext>();
  std::atomic<int> received{0};
  v1::GenerateRequest request = Request(Prompt(20, 1), 900, 3);
  request.set_ignore_eos(true);  // runs until cancelled
  auto done = Generate(request, &received, context);
  WaitForTokens(received, 5);
  // Running: the engine holds the sequence.
  v1::ClusterStatus status;
  for (int i = 0; i < 100; ++i) {
    status = Status();
    if (status.engines_size() == 1 && status.engines(0).kv_usage() > 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_GT(status.engines(0).kv_usage(), 0)
      << received << " tokens received; done: "
      << (done.wait_for(std::chrono::seconds(0)) == std::future_status::ready);
  context->TryCancel();
  EXPECT_EQ(done.get().status.error_code(), grpc::StatusCode::CANCELLED);
  for (int i = 0; i < 100; ++i) {
    status = Status();
    if (status.engines(0).kv_usage() == 0 && server_->scheduler().running() == 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_EQ(status.engines(0).kv_usage(), 0);
  EXPECT_EQ(status.engines(0).running_requests(), 0);
  EXPECT_EQ(server_->scheduler().running(), 0);
}

// Status reports what the engine holds as of its last step, not its last heartbeat: with
// heartbeats a minute apart, the KV usage of a running request is seen to grow and then to
// return to zero.
TEST_F(ServingTest, StatusKvUsageIsFreshBetweenHeartbeats) {
  heartbeat_interval_ms_ = 60000;
  Start(ClusterYaml(1, 1), 2);
  auto context = std::make_shared<grpc::ClientContext>();
  std::atomic<int> received{0};
  v1::GenerateRequest request = Request(Prompt(20, 2), 900, 3);
  request.set_ignore_eos(true);  // runs until cancelled
  auto done = Generate(request, &received, context);
  WaitForTokens(received, 2);
  auto usage = [&] { return Status().engines(0).kv_usage(); };
  const double first = usage();
  EXPECT_GT(first, 0);
  // A step's Occupancy follows its tokens and precedes the next step's on the engine's
  // stream, so by the second token it counts the prompt; it then grows with every token.
  double later = usage();
  for (int i = 0; i < 300 && later <= first; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    later = usage();
  }
  EXPECT_GT(later, first) << received << " tokens received";
  context->TryCancel();
  EXPECT_EQ(done.get().status.error_code(), grpc::StatusCode::CANCELLED);
  double last = usage();
  for (int i = 0; i < 200 && last != 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    last = usage();
  }
  EXPECT_EQ(last, 0);
  EXPECT_EQ(Status().engines(0).running_requests(), 0);
}

TEST_F(ServingTest, KillingAnExpertRankDuringEightStreamsLosesNoToken) {
  Start(ClusterYaml(2, 1), 3);
  std::vector<v1::GenerateRequest> requests;
  for (int i = 0; i < 8; ++i) requests.push_back(Request(Prompt(30 + 7 * i, i), 120, 100 + i));
  std::atomic<int> ignored{0};
  const std::vector<Streamed> undisturbed = GenerateAll(requests, &ignored);

  const int64_t pid = ExpertRankPid();
  std::atomic<int> received{0};
  std::future<std::vector<Streamed>> disturbed =
      std::async(std::launch::async, [&] { return GenerateAll(requests, &received); });
  WaitForTokens(received, 80);
  ASSERT_NO_FATAL_FAILURE(SignalRank(pid, SIGKILL));
  const int at_kill = received.load();
  const std::vector<Streamed> replayed = disturbed.get();
  EXPECT_LT(at_kill, 8 * 100) << "the kill landed after (nearly) everything was streamed";
  for (int i = 0; i < 8; ++i) {
    ASSERT_TRUE(undisturbed[i].status.ok()) << undisturbed[i].status.error_message();
    ASSERT_TRUE(replayed[i].status.ok()) << replayed[i].status.error_message();
    EXPECT_EQ(replayed[i].tokens, undisturbed[i].tokens) << "stream " << i;
    EXPECT_EQ(replayed[i].last.finish_reason(), undisturbed[i].last.finish_reason());
  }
  const v1::ClusterStatus status = Status();
  ASSERT_EQ(status.engines_size(), 1);
  EXPECT_EQ(status.engines(0).restarts(), 1);
  EXPECT_THAT(server_->metrics().Scrape(),
              HasSubstr("dsv4_engine_restarts_total{engine=\"engine-0\"} 1"));
}

// Two engines take the streams between them; one loses a rank and restarts, and its
// requests finish (on either engine) with exactly the tokens of an undisturbed run: rows
// are batch-invariant, so neither the batch mix (which depends on timing here) nor the
// engine a replay lands on changes a token.
TEST_F(ServingTest, TwoEnginesShareTheStreamsAndSurviveOneRankKilled) {
  Start(ClusterYaml(1, 1), 2, "v4-tiny", 3, /*engines=*/2);
  std::vector<v1::GenerateRequest> requests;
  for (int i = 0; i < 8; ++i) requests.push_back(Request(Prompt(20 + 5 * i, i), 100, 50 + i));
  for (v1::GenerateRequest& r : requests) r.set_ignore_eos(true);
  std::atomic<int> ignored{0};
  const std::vector<Streamed> undisturbed = GenerateAll(requests, &ignored);
  std::atomic<int> received{0};
  std::future<std::vector<Streamed>> streams =
      std::async(std::launch::async, [&] { return GenerateAll(requests, &received); });
  WaitForTokens(received, 40);
  const v1::ClusterStatus status = Status();
  ASSERT_EQ(status.engines_size(), 2);
  EXPECT_GT(status.engines(0).running_requests(), 0);  // the requests are spread
  EXPECT_GT(status.engines(1).running_requests(), 0);
  ASSERT_NO_FATAL_FAILURE(SignalRank(RankPid("expert", "engine-1"), SIGKILL));
  const std::vector<Streamed> replayed = streams.get();
  for (size_t i = 0; i < replayed.size(); ++i) {
    const Streamed& out = replayed[i];
    ASSERT_TRUE(out.status.ok()) << out.status.error_message();
    ASSERT_TRUE(undisturbed[i].status.ok()) << undisturbed[i].status.error_message();
    EXPECT_EQ(out.tokens.size(), 100u);
    EXPECT_EQ(out.last.usage().completion_tokens(), 100);
    EXPECT_EQ(out.tokens, undisturbed[i].tokens) << "stream " << i;
  }
  WaitForEngines(2);  // engine-1 came back
  const v1::ClusterStatus after = Status();
  for (const v1::EngineStatus& e : after.engines()) {
    EXPECT_EQ(e.restarts(), e.id() == "engine-1" ? 1 : 0) << e.id();
  }
}

TEST_F(ServingTest, AHungEngineIsKilledAndItsRequestsReplayed) {
  Start(ClusterYaml(1, 1), 2);
  v1::GenerateRequest request = Request(Prompt(25, 4), 150, 21);
  request.set_ignore_eos(true);  // long enough to be mid-stream at the stop
  std::atomic<int> ignored{0};
  const Streamed undisturbed = GenerateAll({request}, &ignored)[0];

  // SIGSTOP the leader mid-stream: its stream stays open but heartbeats stop, so only the
  // watchdog (3 missed heartbeats of 250 ms) can notice; it kills and restarts the engine.
  const int64_t leader = RankPid("attention");
  std::atomic<int> received{0};
  auto done = Generate(request, &received);
  WaitForTokens(received, 20);
  ASSERT_NO_FATAL_FAILURE(SignalRank(leader, SIGSTOP));
  const Streamed replayed = done.get();
  ASSERT_TRUE(replayed.status.ok()) << replayed.status.error_message();
  EXPECT_EQ(replayed.tokens, undisturbed.tokens);
  EXPECT_EQ(Status().engines(0).restarts(), 1);
  kill(static_cast<pid_t>(leader), SIGKILL);  // already killed by the supervisor; to be sure
}

TEST_F(ServingTest, ADrainedEngineFinishesItsWorkAndStartsAgain) {
  Start(ClusterYaml(1, 1), 2);
  v1::GenerateRequest request = Request(Prompt(20, 5), 60, 2);
  request.set_ignore_eos(true);
  std::atomic<int> received{0};
  auto running = Generate(request, &received);
  WaitForTokens(received, 5);
  ASSERT_NO_FATAL_FAILURE(DrainEngine0());
  auto queued = Generate(Request(Prompt(10, 6), 8, 3));  // waits for the new engine

  const Streamed finished = running.get();  // the drained engine ran it to its end
  ASSERT_TRUE(finished.status.ok()) << finished.status.error_message();
  EXPECT_EQ(finished.tokens.size(), 60u);
  const Streamed later = queued.get();
  ASSERT_TRUE(later.status.ok()) << later.status.error_message();
  EXPECT_FALSE(later.tokens.empty());
  const v1::ClusterStatus status = Status();
  ASSERT_EQ(status.engines_size(), 1);
  EXPECT_EQ(status.engines(0).state(), "serving");
  EXPECT_EQ(status.engines(0).restarts(), 0);  // a graceful restart, not a failure
}

// A squatter holding the engine token itself (more than any client has) but not the launch
// nonce keeps claiming "engine-0" while the engine is drained and relaunched, then killed
// and restarted: every claim is refused and both relaunches connect and serve. The engine
// token is on no command line.
TEST_F(ServingTest, SquattersOnALaunchedIdAreRefusedAndNeverBlockItsRelaunch) {
  Start(ClusterYaml(1, 1), 2);
  const int64_t first = RankPid("attention");
  ASSERT_GT(first, 0);
  const std::string cmdline = testing::ReadFile(absl::StrCat("/proc/", first, "/cmdline"));
  EXPECT_THAT(cmdline, ::testing::Not(HasSubstr(server_->engine_token())));
  EXPECT_THAT(cmdline, HasSubstr("--engine_id"));

  engine::v1::Hello hello = FakeEngine::FakeHello("engine-0");
  const ModelConfig config = *LoadModelConfigFromDir(Path("v4-tiny"));
  hello.mutable_model()->set_name(server_->model_name());
  hello.mutable_model()->set_vocab_size(static_cast<int>(config.vocab_size));
  hello.mutable_model()->set_num_layers(config.num_hidden_layers);
  hello.mutable_model()->set_num_routed_experts(config.n_routed_experts);
  hello.mutable_model()->set_config_sha256(*CheckpointConfigSha256(Path("v4-tiny")));
  std::atomic<bool> stop{false};
  std::atomic<int> refused{0}, accepted{0};
  std::thread squatter([&] {
    auto channel = EngineChannel(server_->engine_address(), server_->engine_token());
    while (!stop) {
      for (const std::string nonce : {"", "guess"}) {
        hello.set_launch_nonce(nonce);
        FakeEngine engine(channel, hello);
        engine::v1::CoordinatorMessage welcome;
        if (engine.Receive(&welcome)) accepted += 1;
        if (engine.Close().error_code() == grpc::StatusCode::PERMISSION_DENIED) refused += 1;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  });
  // Waits until engine-0 is connected with an attention rank other than `old`.
  auto relaunched = [&](int64_t old) {
    for (int i = 0; i < 1200; ++i) {
      const v1::ClusterStatus status = Status();
      for (const v1::EngineStatus& engine : status.engines()) {
        for (const v1::RankStatus& rank : engine.ranks()) {
          if (engine.id() == "engine-0" && rank.role() == "attention" && rank.pid() != old) {
            return rank.pid();
          }
        }
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return int64_t{-1};
  };

  ASSERT_NO_FATAL_FAILURE(DrainEngine0());
  const int64_t second = relaunched(first);
  ASSERT_GT(second, 0) << "the drained engine was not relaunched";
  const Streamed after_drain = Generate(Request(Prompt(10, 3), 4, 1)).get();
  EXPECT_TRUE(after_drain.status.ok()) << after_drain.status.error_message();

  ASSERT_NO_FATAL_FAILURE(SignalRank(second, SIGKILL));
  const int64_t third = relaunched(second);
  ASSERT_GT(third, 0) << "the killed engine was not restarted";
  const Streamed after_kill = Generate(Request(Prompt(10, 4), 4, 1)).get();
  EXPECT_TRUE(after_kill.status.ok()) << after_kill.status.error_message();
  stop = true;
  squatter.join();
  EXPECT_EQ(accepted.load(), 0);
  EXPECT_GT(refused.load(), 10);
}

// Shutting the coordinator down mid-step stops mpirun and leaves no rank behind, not even a
// zombie: ranks whose mpirun is gone are the coordinator's (a child subreaper) to reap, and
// it has reaped them when Shutdown returns. (Left to the machine's init, a rank lingers as
// a zombie for a while, or for ever where init does not reap.)
TEST_F(ServingTest, ShutdownReapsEveryRank) {
  Start(ClusterYaml(1, 1), 2);
  std::vector<int64_t> pids;
  const v1::ClusterStatus status = Status();
  for (const v1::EngineStatus& engine : status.engines()) {
    for (const v1::RankStatus& rank : engine.ranks()) pids.push_back(rank.pid());
  }
  ASSERT_EQ(pids.size(), 2u);
  v1::GenerateRequest request = Request(Prompt(20, 1), 900, 3);
  request.set_ignore_eos(true);  // busy until the shutdown
  std::atomic<int> received{0};
  auto running = Generate(request, &received);
  WaitForTokens(received, 5);
  server_->Shutdown();
  for (const int64_t pid : pids) {
    std::ifstream stat(absl::StrCat("/proc/", pid, "/stat"));
    std::string line;
    EXPECT_FALSE(std::getline(stat, line)) << "rank " << pid << " is still there: " << line;
  }
  running.get();
}

TEST_F(ServingTest, RebalancingMidStreamDropsNothing) {
  // 8 experts + 2 redundant slots over 2 expert ranks, placed by observed load.
  Start(ClusterYaml(1, 2, "  placement: {policy: global, redundant_experts: 2}\n"), 3);
  std::vector<v1::GenerateRequest> requests;
  for (int i = 0; i < 4; ++i) requests.push_back(Request(Prompt(40 + 9 * i, i), 100, 7 + i));
  std::atomic<int> ignored{0};
  const std::vector<Streamed> before = GenerateAll(requests, &ignored);  // also the load to balance
  const std::string uniform = Status().placement_summary();
  for (int i = 0; i < 100 && Status().expert_load_size() == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }

  std::atomic<int> received{0};
  std::future<std::vector<Streamed>> during =
      std::async(std::launch::async, [&] { return GenerateAll(requests, &received); });
  WaitForTokens(received, 40);
  auto admin = Admin();
  grpc::ClientContext context;
  context.set_deadline(Deadline(60));
  AddAdminToken(&context);
  admin::v1::RebalanceRequest request;
  request.set_engine_id("engine-0");
  admin::v1::RebalanceResponse response;
  const grpc::Status rebalanced = admin->Rebalance(&context, request, &response);
  ASSERT_TRUE(rebalanced.ok()) << rebalanced.error_message();
  EXPECT_GT(response.step(), 0);
  EXPECT_LE(response.imbalance(), response.baseline_imbalance());
  EXPECT_NE(response.placement_summary(), uniform);
  EXPECT_EQ(Status().placement_summary(), response.placement_summary());

  const std::vector<Streamed> after = during.get();
  for (int i = 0; i < 4; ++i) {
    ASSERT_TRUE(after[i].status.ok()) << after[i].status.error_message();
    EXPECT_EQ(after[i].tokens, before[i].tokens) << "stream " << i;
  }
  EXPECT_EQ(Status().engines(0).restarts(), 0);
}

TEST_F(ServingTest, AfterMaxRestartsRequestsAreUnavailableWithTheReason) {
  Start(ClusterYaml(1, 1), 2, "v4-tiny", /*max_restarts=*/0);
  std::atomic<int> received{0};
  v1::GenerateRequest request = Request(Prompt(20, 2), 900, 1);
  request.set_ignore_eos(true);  // still running when the rank dies
  auto done = Generate(request, &received);
  WaitForTokens(received, 3);
  ASSERT_NO_FATAL_FAILURE(SignalRank(ExpertRankPid(), SIGKILL));
  const Streamed out = done.get();
  EXPECT_EQ(out.status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_THAT(out.status.error_message(), HasSubstr("coordinator.max_restarts = 0"));
  const Streamed later = Generate(Request(Prompt(5, 3), 4, 1)).get();
  EXPECT_EQ(later.status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_THAT(later.status.error_message(), HasSubstr("will not be restarted"));
  EXPECT_EQ(Status().engines(0).state(), "failed");
}

TEST_F(ServingTest, AKilledEngramMemoryNodeNeverReachesTheClient) {
  engram::testing::ServerProcesses stores =
      engram::testing::StartServerProcesses(Path("v41-tiny"), 2, 2);
  ASSERT_EQ(stores.addresses.size(), 2u);
  Start(ClusterYaml(1, 1,
                    absl::StrCat("engram:\n  servers: [", absl::StrJoin(stores.addresses, ", "),
                                 "]\n  replication: 2\n")),
        2, "v41-tiny");
  std::vector<std::future<Streamed>> futures;
  std::atomic<int> received{0};
  for (int i = 0; i < 4; ++i)
    futures.push_back(Generate(Request(Prompt(40, i), 150, i), &received));
  WaitForTokens(received, 40);
  stores.processes[0]->Signal(SIGKILL);
  for (auto& f : futures) {
    const Streamed out = f.get();
    EXPECT_TRUE(out.status.ok()) << out.status.error_message();
    EXPECT_NE(out.last.finish_reason(), v1::FINISH_REASON_UNSPECIFIED);
  }
  EXPECT_EQ(Status().engines(0).restarts(), 0);  // the engine never noticed
}

}  // namespace
}  // namespace dsv4::coordinator
