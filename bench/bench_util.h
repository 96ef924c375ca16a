// Helpers shared by the benchmark harnesses: the machine description, this machine's
// streaming-read bandwidth measured in the same run (the Highway probes of bench/limits.h),
// and best-of timing.
#ifndef DSV4_BENCH_BENCH_UTIL_H_
#define DSV4_BENCH_BENCH_UTIL_H_

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <thread>

#include "bench/limits.h"
#include "core/parallel.h"
#include "nlohmann/json.hpp"

namespace dsv4::bench {

using Clock = std::chrono::steady_clock;

// The repository root. Harnesses are built as <root>/<build dir>/bin/bench_X, so the root
// is normally three levels above /proc/self/exe; accepted when it holds cluster-configs/
// and bench/. Otherwise (a binary copied elsewhere) from this header's path, which is
// relative to the build's working directory under ccache's base_dir, so made absolute
// from the current directory as a last resort.
inline std::filesystem::path SourceRoot() {
  namespace fs = std::filesystem;
  const auto is_root = [](const fs::path& p) {
    std::error_code ec;
    return fs::is_directory(p / "cluster-configs", ec) && fs::is_directory(p / "bench", ec);
  };
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    // bin/ → build dir → root; also try one level further up for nested build dirs.
    fs::path dir = exe.parent_path();
    for (int up = 0; up < 4 && dir.has_parent_path() && dir != dir.root_path(); ++up) {
      dir = dir.parent_path();
      if (is_root(dir)) return dir;
    }
  }
  const fs::path from_file = fs::path(__FILE__).parent_path().parent_path();
  if (from_file.is_absolute() || is_root(from_file)) return from_file;
  return fs::absolute(from_file, ec);
}

// Writes a benchmark's result JSON (creating bench/results/ if needed) and says where.
inline void WriteJson(const std::filesystem::path& out, const nlohmann::ordered_json& result) {
  std::filesystem::create_directories(out.parent_path());
  std::ofstream(out) << result.dump(2) << "\n";
  std::printf("wrote %s\n", out.c_str());
}

inline double SecondsSince(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// CPU seconds this process has run: on a shared machine, time lost to other processes
// inflates wall time but not this.
inline double ProcessCpuSeconds() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

// Wall and CPU seconds of one timed region.
class Stopwatch {
 public:
  Stopwatch() : wall_(Clock::now()), cpu_(ProcessCpuSeconds()) {}
  double wall() const { return SecondsSince(wall_); }
  double cpu() const { return ProcessCpuSeconds() - cpu_; }

 private:
  Clock::time_point wall_;
  double cpu_;
};

inline std::string CpuModel() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0) {
      const size_t colon = line.find(':');
      if (colon != std::string::npos) return line.substr(line.find_first_not_of(' ', colon + 1));
    }
  }
  return "unknown";
}

inline std::string UtcNow() {
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&now, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

// The source tree's HEAD commit, or "unknown" outside a git checkout.
inline std::string GitCommit() {
  const std::string cmd = "git -C '" + SourceRoot().string() + "' rev-parse HEAD 2>/dev/null";
  std::unique_ptr<FILE, int (*)(FILE*)> pipe(popen(cmd.c_str(), "r"), pclose);
  if (!pipe) return "unknown";
  char buf[64] = {};
  if (!std::fgets(buf, sizeof(buf), pipe.get())) return "unknown";
  std::string out(buf);
  while (!out.empty() && (out.back() == '\n' || out.back() == '\r')) out.pop_back();
  return out.empty() ? "unknown" : out;
}

// The machine a result was measured on, and the commit it measured. kernel_threads is
// core/parallel.h's Threads() when this is called.
inline nlohmann::json MachineJson() {
  return {{"cpu_model", CpuModel()},
          {"commit", GitCommit()},
          {"logical_cores", std::thread::hardware_concurrency()},
          {"kernel_threads", Threads()},
          {"date", UtcNow()}};
}

// Seconds per call of `fn`: the fastest of repeated batches (each ≥ ~2 ms) within
// `budget_s`, after a warm-up call.
inline double TimePerCall(const std::function<void()>& fn, double budget_s = 0.25) {
  fn();
  const auto t0 = Clock::now();
  fn();
  const double once = SecondsSince(t0);
  const int per_batch = std::max(1, static_cast<int>(2e-3 / std::max(once, 1e-9)));
  double best = std::numeric_limits<double>::infinity();
  const auto start = Clock::now();
  for (int batches = 0; batches < 5 || (batches < 1000 && SecondsSince(start) < budget_s);
       ++batches) {
    const auto b0 = Clock::now();
    for (int i = 0; i < per_batch; ++i) fn();
    best = std::min(best, SecondsSince(b0) / per_batch);
  }
  return best;
}

// Streaming-read bandwidth (GB/s, 10^9 B/s) of one thread summing a buffer well above the
// last-level cache with Highway vector loads (bench/limits.h): the best and the median of
// `passes`.
inline Bandwidth ReadBandwidth(size_t bytes = kProbeBytes, int passes = 5) {
  return StreamReadBandwidth(1, bytes, passes);
}

}  // namespace dsv4::bench

#endif  // DSV4_BENCH_BENCH_UTIL_H_
