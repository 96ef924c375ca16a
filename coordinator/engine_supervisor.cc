#include "coordinator/engine_supervisor.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/status_macros.h"
#include "engine/control_client.h"
#include "rpc/security.h"

namespace dsv4::coordinator {
namespace {

std::string DescribeExit(int status) {
  if (WIFEXITED(status)) return absl::StrCat("exited with code ", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return absl::StrCat("killed by signal ", WTERMSIG(status));
  return absl::StrCat("ended with wait status ", status);
}

}  // namespace

std::string NewSecret() {
  unsigned char bytes[32];
  size_t got = 0;
  while (got < sizeof(bytes)) {
    const ssize_t n = getrandom(bytes + got, sizeof(bytes) - got, 0);
    if (n > 0) got += static_cast<size_t>(n);
  }
  static const char kHex[] = "0123456789abcdef";
  std::string hex;
  for (unsigned char b : bytes) {
    hex.push_back(kHex[b >> 4]);
    hex.push_back(kHex[b & 15]);
  }
  return hex;
}

absl::StatusOr<std::string> ReadOrCreateEngineToken(const std::string& path) {
  const int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd >= 0) {
    const std::string line = NewSecret() + "\n";
    const bool written = write(fd, line.data(), line.size()) == static_cast<ssize_t>(line.size());
    close(fd);
    if (!written) return absl::InternalError(absl::StrCat("cannot write ", path));
  } else if (errno != EEXIST) {
    return absl::NotFoundError(
        absl::StrCat("cannot create the engine token file ", path, ": ", std::strerror(errno)));
  }
  struct stat info;
  if (stat(path.c_str(), &info) == 0 && (info.st_mode & 077) != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("the engine token file ", path, " is readable by others; chmod 600 ", path));
  }
  return rpc::ReadTokenFile(path);
}

std::vector<std::string> DefaultMpirunArgs() {
  std::vector<std::string> args = {"--oversubscribe", "--mca", "mpi_yield_when_idle", "1"};
  if (geteuid() == 0) args.push_back("--allow-run-as-root");
  return args;
}

absl::StatusOr<std::vector<std::string>> MpirunCommand(
    const std::string& engine_binary, const std::string& cluster_yaml,
    const std::string& checkpoint_dir, const std::string& coordinator_address,
    const std::string& engine_id, int ranks, const std::vector<std::string>& hosts,
    const std::vector<std::string>& extra_mpirun_args) {
  std::vector<std::string> argv = {"mpirun"};
  argv.insert(argv.end(), extra_mpirun_args.begin(), extra_mpirun_args.end());
  argv.insert(argv.end(), {"-np", absl::StrCat(ranks)});
  std::vector<std::pair<std::string, int>> slots;  // host, ranks; in rank order
  bool remote = false;
  for (size_t r = 0; r < hosts.size(); ++r) {
    const std::string& h = hosts[r];
    if (!slots.empty() && slots.back().first == h) {
      slots.back().second += 1;
      continue;
    }
    for (const auto& [seen, count] : slots) {
      if (seen == h) {
        return absl::InvalidArgumentError(absl::StrCat(
            "rank ", r, " is on host ", h,
            " again after other hosts: mpirun --host places a "
            "host's ranks contiguously; start this layout with --engines attach and a rankfile"));
      }
    }
    slots.emplace_back(h, 1);
    remote = remote || (h != "localhost" && h != "127.0.0.1");
  }
  if (remote) {
    std::vector<std::string> host_slots;
    for (const auto& [h, n] : slots) host_slots.push_back(absl::StrCat(h, ":", n));
    argv.insert(argv.end(), {"--host", absl::StrJoin(host_slots, ",")});
  }
  argv.insert(argv.end(), {"-x", kEngineTokenEnv, "-x", kEngineLaunchNonceEnv});
  argv.insert(argv.end(), {engine_binary, "--cluster", cluster_yaml, "--checkpoint", checkpoint_dir,
                           "--coordinator", coordinator_address, "--engine_id", engine_id});
  return argv;
}

EngineSupervisor::EngineSupervisor(LaunchSpec spec, Callbacks callbacks)
    : spec_(std::move(spec)), callbacks_(std::move(callbacks)) {}

EngineSupervisor::~EngineSupervisor() { Stop(absl::Seconds(5)); }

absl::Status EngineSupervisor::SpawnLocked() {
  std::vector<char*> argv;
  for (const std::string& a : spec_.argv) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  // Its own process group (so a kill reaches every rank), and no blocked signals: the
  // coordinator blocks SIGINT/SIGTERM for its sigwait, the engine must get them.
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t none;
  sigemptyset(&none);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setpgroup(&attr, 0);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK);
  // The environment: the coordinator's, without engine secrets of its own, plus the spec's
  // and a fresh launch nonce (announced first, so the registry expects it).
  const std::string nonce = NewSecret();
  if (callbacks_.launching) callbacks_.launching(nonce);
  std::vector<std::string> env_strings;
  for (char** e = environ; *e != nullptr; ++e) {
    const absl::string_view entry(*e);
    if (absl::StartsWith(entry, absl::StrCat(kEngineTokenEnv, "=")) ||
        absl::StartsWith(entry, absl::StrCat(kEngineLaunchNonceEnv, "="))) {
      continue;
    }
    env_strings.emplace_back(entry);
  }
  env_strings.insert(env_strings.end(), spec_.env.begin(), spec_.env.end());
  env_strings.push_back(absl::StrCat(kEngineLaunchNonceEnv, "=", nonce));
  std::vector<char*> envp;
  for (std::string& e : env_strings) envp.push_back(e.data());
  envp.push_back(nullptr);
  pid_t pid = -1;
  const int error = posix_spawnp(&pid, argv[0], nullptr, &attr, argv.data(), envp.data());
  posix_spawnattr_destroy(&attr);
  if (error != 0) {
    return absl::InternalError(
        absl::StrCat("cannot start ", spec_.argv[0], ": ", std::strerror(error)));
  }
  pid_ = pid;
  return absl::OkStatus();
}

absl::Status EngineSupervisor::Start() {
  absl::MutexLock lock(&mu_);
  RETURN_IF_ERROR(SpawnLocked());
  monitor_ = std::thread([this] { Monitor(); });
  return absl::OkStatus();
}

void EngineSupervisor::Monitor() {
  for (;;) {
    pid_t pid;
    {
      absl::MutexLock lock(&mu_);
      pid = pid_;
    }
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    kill(-pid, SIGKILL);  // whatever is left in mpirun's group
    absl::MutexLock lock(&mu_);
    pid_ = -1;
    if (stopping_) return;
    std::string why =
        absl::StrCat("engine ", spec_.engine_id, " (", spec_.argv[0], ") ", DescribeExit(status));
    // Exit code 0 is an engine that drained or was shut down by an operator: started again
    // (a graceful restart), not counted as a failure.
    const bool clean = kill_reason_.empty() && WIFEXITED(status) && WEXITSTATUS(status) == 0;
    if (!kill_reason_.empty()) why = absl::StrCat(why, " after ", kill_reason_);
    kill_reason_.clear();
    if (!clean && restarts_ >= spec_.max_restarts) {
      failed_ = true;
      const absl::Status reason =
          absl::UnavailableError(absl::StrCat("the engine failed ", restarts_ + 1,
                                              " times and will not be restarted "
                                              "(coordinator.max_restarts = ",
                                              spec_.max_restarts, "); last failure: ", why));
      mu_.Unlock();
      if (callbacks_.gave_up) callbacks_.gave_up(reason);
      mu_.Lock();
      return;
    }
    if (!clean) restarts_ += 1;
    const int restarts = restarts_;
    mu_.Unlock();
    if (clean && callbacks_.relaunching) callbacks_.relaunching(why);
    if (!clean && callbacks_.restarted) callbacks_.restarted(restarts, why);
    if (callbacks_.cleanup) callbacks_.cleanup();
    absl::SleepFor(spec_.restart_delay);
    mu_.Lock();
    if (stopping_) return;
    if (absl::Status s = SpawnLocked(); !s.ok()) {
      failed_ = true;
      mu_.Unlock();
      if (callbacks_.gave_up) callbacks_.gave_up(absl::UnavailableError(s.message()));
      mu_.Lock();
      return;
    }
  }
}

void EngineSupervisor::Kill(const std::string& why) {
  absl::MutexLock lock(&mu_);
  if (pid_ <= 0 || stopping_) return;
  kill_reason_ = why;
  kill(-pid_, SIGKILL);
}

void EngineSupervisor::Stop(absl::Duration grace) {
  pid_t pid;
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    pid = pid_;
  }
  if (pid > 0) {
    kill(-pid, SIGTERM);
    const absl::Time deadline = absl::Now() + grace;
    for (;;) {
      {
        absl::MutexLock lock(&mu_);
        if (pid_ <= 0) break;
      }
      if (absl::Now() > deadline) {
        kill(-pid, SIGKILL);
        break;
      }
      absl::SleepFor(absl::Milliseconds(20));
    }
  }
  if (monitor_.joinable()) monitor_.join();
}

std::string EngineSupervisor::state() const {
  absl::MutexLock lock(&mu_);
  if (failed_) return "failed";
  return restarts_ > 0 ? "restarting" : "starting";
}

int EngineSupervisor::restarts() const {
  absl::MutexLock lock(&mu_);
  return restarts_;
}

}  // namespace dsv4::coordinator
