// dsv4-engine: the distributed engine (engine/engine.h), one MPI world. This file only turns
// flags into EngineOptions and picks the mode:
//   serving (--coordinator ADDR): run the requests a coordinator admits until it drains or
//     shuts the engine down;
//   one-shot (--tokens): prefill (and decode) the given prompts and write their logits like
//     `dsv4 run` does.
// A failing rank logs its error and aborts the whole world (MPI_Abort), so the job exits
// non-zero instead of hanging.
#include <mpi.h>

#include <cstdlib>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/status/status.h"
#include "cli/cli_util.h"
#include "core/status_macros.h"
#include "engine/control_client.h"
#include "engine/engine.h"
#include "engine/log.h"
#include "rpc/security.h"

ABSL_FLAG(std::string, cluster, "", "cluster YAML (roles, topology, engine settings)");
ABSL_FLAG(std::string, checkpoint, "", "checkpoint directory (config.json and safetensors)");
ABSL_FLAG(std::string, tokens, "",
          "one-shot mode: prompt token ids, comma-separated; several sequences separated by ';'");
ABSL_FLAG(std::string, logits_out, "",
          "write each prompt's logits, float32 [T, vocab], here (FILE.<i>.npy per sequence when "
          "there are several)");
ABSL_FLAG(int64_t, decode_from, 0,
          "prefill this many prompt tokens, then decode the rest one at a time (0: prefill all)");
ABSL_FLAG(std::string, stats_out, "",
          "write per-step measured and modelled times, resident bytes and overlap as JSON");
ABSL_FLAG(int32_t, threads, 0,
          "kernel threads per rank; 0 (default): the cluster YAML's engine.threads_per_rank, "
          "whose default 0 divides the cores among the ranks on each host");
ABSL_FLAG(std::string, coordinator, "",
          "serving mode: the coordinator's address (host:port); the leader connects to it");
ABSL_FLAG(std::string, engine_id, "engine-0",
          "serving mode: this engine's id, stable across restarts of the same serving unit");
ABSL_FLAG(std::string, engine_token_file, "",
          "serving mode: the engine token (a file, 0600), which the coordinator's engine "
          "listener requires; default: $DSV4_ENGINE_TOKEN (set by a launching coordinator), "
          "else the cluster YAML's coordinator.engine_token_file");
ABSL_FLAG(int32_t, connect_timeout_s, 60, "serving mode: how long to wait for the coordinator");
ABSL_FLAG(int32_t, max_step_seconds, 0,
          "serving mode: heartbeats stop when a step runs longer, so the coordinator declares "
          "a hung engine dead; 0 (default): the cluster YAML's engine.max_step_seconds (300)");
ABSL_FLAG(int32_t, fail_rank, -1, "test only: this rank exits abnormally (_exit(3)) ...");
ABSL_FLAG(int64_t, fail_at_step, 0, "test only: ... at the start of this step");

namespace dsv4 {
namespace {

absl::Status Run() {
  const bool serving = !absl::GetFlag(FLAGS_coordinator).empty();
  if (serving == !absl::GetFlag(FLAGS_tokens).empty()) {
    return absl::InvalidArgumentError(
        "give either --coordinator ADDR (serving mode) or --tokens (one-shot mode)");
  }
  EngineOptions options;
  options.cluster = absl::GetFlag(FLAGS_cluster);
  options.checkpoint = absl::GetFlag(FLAGS_checkpoint);
  options.threads = absl::GetFlag(FLAGS_threads);
  options.fail_rank = absl::GetFlag(FLAGS_fail_rank);
  options.fail_at_step = absl::GetFlag(FLAGS_fail_at_step);
  std::vector<std::vector<int32_t>> prompts;
  if (!serving) {
    ASSIGN_OR_RETURN(prompts, cli::ParseTokenSequences(absl::GetFlag(FLAGS_tokens), "--tokens"));
  }
  ASSIGN_OR_RETURN(std::unique_ptr<Engine> engine, Engine::Create(options));

  if (serving) {
    ServeOptions serve;
    serve.coordinator = absl::GetFlag(FLAGS_coordinator);
    serve.engine_id = absl::GetFlag(FLAGS_engine_id);
    // The engine credential and the launch nonce: out of band, never on the command line.
    if (!absl::GetFlag(FLAGS_engine_token_file).empty()) {
      ASSIGN_OR_RETURN(serve.engine_token,
                       rpc::ReadTokenFile(absl::GetFlag(FLAGS_engine_token_file)));
    } else if (const char* token = std::getenv(kEngineTokenEnv); token != nullptr) {
      serve.engine_token = token;
    }
    if (const char* nonce = std::getenv(kEngineLaunchNonceEnv); nonce != nullptr) {
      serve.launch_nonce = nonce;
    }
    serve.connect_timeout = absl::Seconds(absl::GetFlag(FLAGS_connect_timeout_s));
    if (const int seconds = absl::GetFlag(FLAGS_max_step_seconds); seconds > 0) {
      serve.max_step = absl::Seconds(seconds);
    }
    return engine->ServeCoordinator(serve);
  }
  ASSIGN_OR_RETURN(OneShotResult result,
                   engine->RunOneShot(prompts, absl::GetFlag(FLAGS_decode_from)));
  return WriteOneShotResult(result, engine->config().vocab_size, prompts.size(),
                            absl::GetFlag(FLAGS_logits_out), absl::GetFlag(FLAGS_stats_out));
}

}  // namespace
}  // namespace dsv4

int main(int argc, char** argv) {
  // The dispatcher's progress thread calls MPI beside the rank's main thread.
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  dsv4::SetEngineLogRank(rank);
  const std::vector<std::string> positional = dsv4::cli::ParseFlags(
      argc, argv,
      "mpirun -np N dsv4-engine --cluster CFG.yaml --checkpoint DIR --coordinator HOST:PORT\n"
      "       [--engine-id ID] [--engine-token-file FILE]\n"
      "mpirun -np N dsv4-engine --cluster CFG.yaml --checkpoint DIR --tokens 1,2,3[;4,5,...]\n"
      "       [--logits-out FILE.npy] [--decode-from K] [--stats-out FILE.json]\n\n"
      "The distributed engine: attention ranks (data parallel over sequences) and expert ranks\n"
      "(routed experts per the placement) in lock step, tokens routed by MPI all-to-all.\n"
      "Serving mode: runs the requests a coordinator admits (dsv4-coordinator launches it so,\n"
      "or an operator does, for multi-host deployments). One-shot mode: writes the same logits\n"
      "as `dsv4 run` (FILE.<i>.npy per sequence when there are several).",
      "dsv4_engine_main.cc");
  const absl::Status status =
      positional.empty() ? dsv4::Run()
                         : absl::InvalidArgumentError("unexpected argument: " + positional[0]);
  if (!status.ok()) {
    dsv4::EngineLog()->error("{}", status.ToString());
    const bool usage = absl::IsInvalidArgument(status) || absl::IsNotFound(status);
    MPI_Abort(MPI_COMM_WORLD, usage ? 2 : 1);
  }
  MPI_Finalize();
  return 0;
}
