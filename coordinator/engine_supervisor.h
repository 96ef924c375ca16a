// Launches one engine (an `mpirun … dsv4-engine --coordinator …` command) and keeps it
// running: when the process fails (a rank crashed, was killed, or the engine lost its
// control stream) or is killed for missed heartbeats (Kill), it is started again, up to
// `max_restarts` times over the coordinator's life. Then it gives up and reports why. A
// clean exit (code 0: drained or shut down by an operator) is a graceful restart and
// does not count.
// The process runs in its own process group; Open MPI puts its ranks in groups of their
// own, so the `cleanup` callback must reap ranks that outlive mpirun before a restart.
// Thread-safe.
#ifndef DSV4_COORDINATOR_ENGINE_SUPERVISOR_H_
#define DSV4_COORDINATOR_ENGINE_SUPERVISOR_H_

#include <sys/types.h>

#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "proto/inference.pb.h"

namespace dsv4::coordinator {

struct LaunchSpec {
  std::string engine_id;
  std::vector<std::string> argv;  // the command, argv[0] looked up in PATH
  // "NAME=value" entries added to the inherited environment (secrets: never logged, never
  // on the command line). Each launch also gets kEngineLaunchNonceEnv = a fresh nonce.
  std::vector<std::string> env;
  int max_restarts = 3;
  absl::Duration restart_delay = absl::Milliseconds(200);
};

class EngineSupervisor {
 public:
  struct Callbacks {
    std::function<void(int restarts, const std::string& why)> restarted;
    // Before each launch, with the nonce that launch's engine will present.
    std::function<void(const std::string& nonce)> launching;
    // The engine exited with code 0 (drained, or shut down by an operator); it is started
    // again without counting as a failure.
    std::function<void(const std::string& why)> relaunching;
    // After the process exited, before the next one starts: make sure no rank of the old
    // one is left (it would still hold the engine id).
    std::function<void()> cleanup;
    // Called once, when the engine failed more than max_restarts times.
    std::function<void(const absl::Status& reason)> gave_up;
  };

  EngineSupervisor(LaunchSpec spec, Callbacks callbacks);
  // Stops the engine (Stop with a short grace) if still running.
  ~EngineSupervisor();

  // Starts the first process; INTERNAL when it cannot be spawned.
  absl::Status Start();
  // Kills the running process (SIGKILL to its group); it is then restarted as after a crash.
  void Kill(const std::string& why);
  // Stops for good: SIGTERM to the group, SIGKILL after `grace`; waits for the exit.
  void Stop(absl::Duration grace);

  // "starting", "restarting" or "failed", for an engine that is not connected.
  std::string state() const;
  int restarts() const;
  const std::string& engine_id() const { return spec_.engine_id; }

 private:
  absl::Status SpawnLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Monitor();

  const LaunchSpec spec_;
  const Callbacks callbacks_;
  mutable absl::Mutex mu_;
  pid_t pid_ ABSL_GUARDED_BY(mu_) = -1;  // also the process group id
  int restarts_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool failed_ ABSL_GUARDED_BY(mu_) = false;
  std::string kill_reason_ ABSL_GUARDED_BY(mu_);
  std::thread monitor_;
};

// A fresh random secret: 32 bytes from getrandom(2), hex-encoded.
std::string NewSecret();

// The engine token in `path` (rpc::ReadTokenFile); when the file does not exist, creates it
// (mode 0600) with a NewSecret(). INVALID_ARGUMENT when the file is readable by group or
// others.
absl::StatusOr<std::string> ReadOrCreateEngineToken(const std::string& path);

// mpirun arguments for an engine sharing cores with the coordinator: --oversubscribe, and
// ranks that yield the core while they wait (Open MPI busy-polls otherwise, which on a
// loaded host delays the coordinator's stream writes by milliseconds; bench/load), plus
// --allow-run-as-root when running as root.
std::vector<std::string> DefaultMpirunArgs();

// The launch command for `cluster_yaml`'s engine: mpirun with `ranks` ranks on `hosts`
// (one per rank; as --host h1:slots,… unless all are this machine), then dsv4-engine in
// serving mode; the engine token and launch nonce travel in the environment (-x NAME). mpirun
// fills hosts in order, so each host's ranks must be contiguous;
// INVALID_ARGUMENT otherwise (start such a layout in attach mode, with a rankfile).
absl::StatusOr<std::vector<std::string>> MpirunCommand(
    const std::string& engine_binary, const std::string& cluster_yaml,
    const std::string& checkpoint_dir, const std::string& coordinator_address,
    const std::string& engine_id, int ranks, const std::vector<std::string>& hosts,
    const std::vector<std::string>& extra_mpirun_args);

}  // namespace dsv4::coordinator

#endif  // DSV4_COORDINATOR_ENGINE_SUPERVISOR_H_
