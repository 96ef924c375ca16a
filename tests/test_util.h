// Helpers shared by tests that drive the built binaries.
#ifndef DSV4_TESTS_TEST_UTIL_H_
#define DSV4_TESTS_TEST_UTIL_H_

#include <sys/wait.h>
#include <cstdio>
#include <filesystem>
#include <string>

namespace dsv4::testing {

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
