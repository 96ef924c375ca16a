// Helpers shared by tests: shipped configs, and driving the built binaries.
#ifndef DSV4_TESTS_TEST_UTIL_H_
#define DSV4_TESTS_TEST_UTIL_H_

#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include <gtest/gtest.h>

#include "core/cluster_config.h"
#include "core/model_config.h"

namespace dsv4::testing {

// A shipped model preset's config (models/<name>/config.json); fails the test if invalid.
inline ModelConfig PresetModelConfig(const std::string& name) {
  absl::StatusOr<ModelConfig> config =
      LoadModelConfig(std::string(DSV4_SOURCE_DIR) + "/models/" + name + "/config.json");
  EXPECT_TRUE(config.ok()) << config.status();
  return *config;
}

// A shipped cluster config by its path under the repository root.
inline ClusterConfig ShippedClusterConfig(const std::string& path) {
  absl::StatusOr<ClusterConfig> cluster =
      LoadClusterConfig(std::string(DSV4_SOURCE_DIR) + "/" + path);
  EXPECT_TRUE(cluster.ok()) << cluster.status();
  return *cluster;
}

struct CommandResult {
  int exit_code = -1;
  std::string output;  // stdout and stderr, interleaved
};

// Runs `command` through the shell from the repository root, capturing its output.
inline CommandResult RunCommand(const std::string& command) {
  CommandResult result;
  const std::string full = "cd '" DSV4_SOURCE_DIR "' && " + command + " 2>&1";
  FILE* pipe = popen(full.c_str(), "r");
  if (!pipe) return result;
  char buffer[4096];
  size_t n;
  while ((n = fread(buffer, 1, sizeof(buffer), pipe)) > 0) result.output.append(buffer, n);
  const int status = pclose(pipe);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return result;
}

// A shell command running in the background in its own process group, from the repository
// root, its stdout and stderr read as they come. The group is killed when the object goes
// away, so a failing test leaves nothing running.
class Process {
 public:
  explicit Process(const std::string& command) {
    int fds[2];
    if (pipe(fds) != 0) return;
    pid_ = fork();
    if (pid_ == 0) {
      setpgid(0, 0);
      dup2(fds[1], STDOUT_FILENO);
      dup2(fds[1], STDERR_FILENO);
      close(fds[0]);
      close(fds[1]);
      const std::string full = "cd '" DSV4_SOURCE_DIR "' && " + command;
      execl("/bin/sh", "sh", "-c", full.c_str(), static_cast<char*>(nullptr));
      _exit(127);
    }
    setpgid(pid_, pid_);  // also here, so Signal never races the child's own setpgid
    close(fds[1]);
    fd_ = fds[0];
  }
  ~Process() {
    if (pid_ > 0 && !reaped_) {
      kill(-pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    if (fd_ >= 0) close(fd_);
  }
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;

  void Signal(int signal) { kill(-pid_, signal); }
  const std::string& output() const { return output_; }

  // Reads output until it contains `text` (true), or until the output ends or `timeout`
  // passes (false).
  bool WaitFor(const std::string& text, std::chrono::milliseconds timeout) {
    const auto end = std::chrono::steady_clock::now() + timeout;
    while (output_.find(text) == std::string::npos) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          end - std::chrono::steady_clock::now());
      if (left.count() <= 0 || !Read(left.count())) return false;
    }
    return true;
  }

  // Reads the output to its end and reaps the process; past `timeout` the group is killed
  // and the exit code is 124 (as timeout(1) reports).
  CommandResult Finish(std::chrono::milliseconds timeout) {
    const auto end = std::chrono::steady_clock::now() + timeout;
    bool ended = eof_;
    while (!ended) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          end - std::chrono::steady_clock::now());
      if (left.count() <= 0) break;
      ended = !Read(left.count());
    }
    if (!ended) kill(-pid_, SIGKILL);
    int status = 0;
    waitpid(pid_, &status, 0);
    reaped_ = true;
    CommandResult result{WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status), output_};
    if (!ended) result.exit_code = 124;
    return result;
  }

 private:
  // Appends what arrives within `timeout_ms`; false once the output has ended.
  bool Read(int timeout_ms) {
    if (eof_ || fd_ < 0) return false;
    pollfd p{fd_, POLLIN, 0};
    if (poll(&p, 1, timeout_ms) <= 0) return true;
    char buffer[4096];
    const ssize_t n = read(fd_, buffer, sizeof(buffer));
    if (n <= 0) eof_ = true;
    if (n > 0) output_.append(buffer, n);
    return !eof_;
  }

  pid_t pid_ = -1;
  int fd_ = -1;
  bool eof_ = false;
  bool reaped_ = false;
  std::string output_;
};

// A file's bytes ("" when it cannot be read), and writing them (binary, truncating).
inline std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream bytes;
  bytes << in.rdbuf();
  return bytes.str();
}
inline void WriteFile(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

inline std::string Dsv4() { return std::string(DSV4_BIN_DIR) + "/dsv4"; }

// A fresh directory under the system temp dir, removed when the object goes away.
class TempDir {
 public:
  explicit TempDir(const std::string& tag) {
    std::string pattern = (std::filesystem::temp_directory_path() / (tag + "-XXXXXX")).string();
    path_ = mkdtemp(pattern.data());
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

}  // namespace dsv4::testing

#endif  // DSV4_TESTS_TEST_UTIL_H_
