// MatMul benchmark (core/matmul.h) on 1 thread and on --threads threads (default: every
// core of the process), per format:
// - decode (m = 1, 8, 64): GB/s of weight bytes in their released format (data + scales)
//   over a rotating set of matrices larger than the last-level cache, as a fraction of the
//   streaming-read bandwidth measured in the same run on as many threads (bench/limits.h);
// - prefill (m = 64): GFLOP/s on one cache-resident matrix, as a fraction of the fp32 FMA
//   peak of the dispatched Highway target on as many threads.
// Prints a table and writes JSON (naming the commit measured).
//
//   bench_matmul [--threads T] [--out bench/results/matmul.json] [--only FORMAT] [--m M]
//   bench_matmul --prefill-sweep [--only FORMAT]: quick run, 1 thread, resident N = 1024
//   prefill at m = 64, 256 and K = 384, 768, 4096 only (no decode sweep, no JSON).
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "bench/bench_util.h"
#include "bench/limits.h"
#include "core/matmul.h"
#include "core/parallel.h"
#include "core/weight_matrix.h"
#include "nlohmann/json.hpp"

namespace dsv4 {
namespace {

using json = nlohmann::ordered_json;
using bench::TimePerCall;

// Storage for one matrix in a format, filled with finite, normal values.
struct Storage {
  std::vector<uint8_t> data, scales;
  WeightMatrix view;
};

Storage MakeStorage(WeightFormat format, int64_t n, int64_t k, int64_t block, uint32_t seed) {
  Storage s;
  s.view.format = format;
  s.view.rows = n;
  s.view.cols = k;
  if (format == WeightFormat::kFp8) s.view.block_rows = s.view.block_cols = block;
  if (format == WeightFormat::kFp4) {
    s.view.block_rows = 1;
    s.view.block_cols = 32;
  }
  s.data.resize(static_cast<size_t>(n * s.view.row_bytes()));
  uint32_t state = seed * 2654435761u + 1;
  const auto next = [&] {
    state ^= state << 13;
    state ^= state >> 17;
    state ^= state << 5;
    return state;
  };
  switch (format) {
    case WeightFormat::kF32:
      for (size_t i = 0; i < s.data.size(); i += 4) {
        const float v = static_cast<float>(next() % 2001) / 1000.0f - 1.0f;
        std::memcpy(&s.data[i], &v, 4);
      }
      break;
    case WeightFormat::kBF16:
      for (size_t i = 0; i < s.data.size(); i += 2) {
        const uint16_t v = static_cast<uint16_t>(0x3C00 | (next() & 0x83FF));  // |v| in [2^-7, 2)
        std::memcpy(&s.data[i], &v, 2);
      }
      break;
    default:
      for (uint8_t& b : s.data) b = static_cast<uint8_t>(next() & 0xF7);  // no E4M3 NaN
      break;
  }
  s.scales.assign(static_cast<size_t>(s.view.scale_rows() * s.view.scale_cols()), 120);
  s.view.data = s.data.data();
  s.view.scales = s.scales.empty() ? nullptr : s.scales.data();
  return s;
}

struct FormatCase {
  WeightFormat format;
  int64_t block;
  std::string name;
};

// Seconds of the fastest of `reps` calls after one warm-up call (for calls of a second or
// more, where TimePerCall's batches would take too long).
double BestOf(const std::function<void()>& fn, int reps) {
  fn();
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const bench::Stopwatch watch;
    fn();
    best = std::min(best, watch.wall());
  }
  return best;
}

int Main(int argc, char** argv) {
  std::string out = (bench::SourceRoot() / "bench/results/matmul.json").string();
  int threads = AvailableCores();
  // --only FORMAT and --m M run one format (e.g. "FP4 1x32") and one decode m, without
  // writing JSON.
  std::string only;
  int64_t only_m = 0;
  std::vector<int64_t> decode_ms = {1, 8, 64};
  bool prefill_sweep = false;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--prefill-sweep") {
      prefill_sweep = true;
      continue;
    }
    if (i + 1 >= argc) {
      std::fprintf(stderr, "missing value for %s\n", arg.c_str());
      return 2;
    }
    if (arg == "--out") {
      out = argv[++i];
    } else if (arg == "--only") {
      only = argv[++i];
    } else if (arg == "--m") {
      only_m = std::atoll(argv[++i]);
    } else if (arg == "--threads") {
      threads = std::max(1, std::atoi(argv[++i]));
    } else {
      std::fprintf(stderr,
                   "usage: bench_matmul [--threads T] [--out path.json] [--only FORMAT] [--m M]\n"
                   "       bench_matmul --prefill-sweep [--only FORMAT]\n");
      return 2;
    }
  }
  const std::vector<FormatCase> formats = {{WeightFormat::kF32, 0, "F32"},
                                           {WeightFormat::kBF16, 0, "BF16"},
                                           {WeightFormat::kFp8, 128, "FP8 128x128"},
                                           {WeightFormat::kFp8, 32, "FP8 32x32"},
                                           {WeightFormat::kFp4, 32, "FP4 1x32"}};
  if (prefill_sweep) {
    SetThreads(1);
    const double peak1 = bench::FmaPeakGflops(1);
    std::printf("MatMul target %s, 1 thread FMA peak %.1f GFLOP/s\n", MatMulTargetName(), peak1);
    constexpr int64_t kN = 1024;
    for (const FormatCase& f : formats) {
      if (!only.empty() && f.name != only) continue;
      for (const int64_t k : {int64_t{384}, int64_t{768}, int64_t{4096}}) {
        const Storage w = MakeStorage(f.format, kN, k, f.block, 7);
        for (const int64_t m : {int64_t{64}, int64_t{256}}) {
          std::vector<float> x(static_cast<size_t>(m * k), 0.25f), y(static_cast<size_t>(m * kN));
          const double s = TimePerCall([&] { MatMul(x.data(), m, w.view, y.data()); }, 0.5);
          const double gflops = 2.0 * m * kN * k / s / 1e9;
          std::printf("%-12s m %4lld K %5lld N %lld %8.1f GFLOP/s %5.0f%%\n", f.name.c_str(),
                      static_cast<long long>(m), static_cast<long long>(k),
                      static_cast<long long>(kN), gflops, 100.0 * gflops / peak1);
        }
      }
    }
    SetThreads(threads);
    return 0;
  }
  std::vector<int> thread_counts = {1};
  if (threads > 1) thread_counts.push_back(threads);
  std::printf("MatMul target %s, probes target %s\n", MatMulTargetName(),
              bench::LimitsTargetName());
  json limits = json::array();
  std::vector<bench::Bandwidth> read(thread_counts.size());
  std::vector<double> peak(thread_counts.size());
  for (size_t t = 0; t < thread_counts.size(); ++t) {
    read[t] = bench::StreamReadBandwidth(thread_counts[t]);
    peak[t] = bench::FmaPeakGflops(thread_counts[t]);
    std::printf(
        "%d thread(s): streaming read %.1f GB/s (best; median %.1f), FMA peak %.1f GFLOP/s\n",
        thread_counts[t], read[t].best_gbs, read[t].median_gbs, peak[t]);
    limits.push_back({{"threads", thread_counts[t]},
                      {"read_bytes", bench::kProbeBytes},
                      {"read_best_gb_per_s", read[t].best_gbs},
                      {"read_median_gb_per_s", read[t].median_gbs},
                      {"fma_peak_gflops", peak[t]}});
  }

  // Decode: N = K = 4096 matrices, as many as make ≥ 1 GiB of released bytes (twice the
  // 512 MiB LLC this VM reports), swept once per timed call.
  constexpr int64_t kDecodeN = 4096, kDecodeK = 4096, kSweepBytes = int64_t{1} << 30;
  if (only_m > 0) decode_ms = {only_m};
  // Prefill: one N = 1024, K = 4096 matrix (cache-resident), 64 rows.
  constexpr int64_t kPrefillM = 64, kPrefillN = 1024, kPrefillK = 4096;
  json rows = json::array();
  std::printf("%-12s %3s %4s %9s %8s %9s   %-8s %9s %8s\n", "format", "thr", "m", "GB/s", "of read",
              "GFLOP/s", "", "GFLOP/s", "of peak");
  for (const FormatCase& f : formats) {
    if (!only.empty() && f.name != only) continue;
    std::vector<Storage> mats;
    int64_t bytes = 0;
    while (bytes < kSweepBytes) {
      mats.push_back(MakeStorage(f.format, kDecodeN, kDecodeK, f.block,
                                 static_cast<uint32_t>(mats.size() + 1)));
      bytes += mats.back().view.released_bytes();
    }
    const int64_t matrices = static_cast<int64_t>(mats.size());
    const Storage w = MakeStorage(f.format, kPrefillN, kPrefillK, f.block, 7);
    std::vector<float> xp(kPrefillM * kPrefillK, 0.25f), yp(kPrefillM * kPrefillN);
    json runs = json::array();
    for (size_t t = 0; t < thread_counts.size(); ++t) {
      SetThreads(thread_counts[t]);
      json decode = json::array();
      for (int64_t m : decode_ms) {
        std::vector<float> x(m * kDecodeK, 0.5f), y(m * kDecodeN);
        const auto sweep = [&] {
          for (const Storage& s : mats) MatMul(x.data(), m, s.view, y.data());
        };
        const double sweep_s = m == 1 ? TimePerCall(sweep, 1.5) : BestOf(sweep, 3);
        const double gbs = static_cast<double>(bytes) / sweep_s / 1e9;
        const double gflops = 2.0 * m * kDecodeN * kDecodeK * matrices / sweep_s / 1e9;
        std::printf("%-12s %3d %4lld %9.2f %7.0f%% %9.1f\n", f.name.c_str(), thread_counts[t],
                    static_cast<long long>(m), gbs, 100.0 * gbs / read[t].best_gbs, gflops);
        decode.push_back({{"m", m},
                          {"gb_per_s", gbs},
                          {"fraction_of_read_bandwidth", gbs / read[t].best_gbs},
                          {"gflops", gflops},
                          {"fraction_of_fma_peak", gflops / peak[t]}});
      }
      if (only_m > 0) {
        // Quick runs: the same m on the cache-resident prefill matrix, i.e. the kernel's speed
        // without DRAM (less noisy when other work shares the memory bus).
        std::vector<float> x(only_m * kPrefillK, 0.5f), y(only_m * kPrefillN);
        const double s = TimePerCall([&] { MatMul(x.data(), only_m, w.view, y.data()); }, 0.5);
        const double gbs = static_cast<double>(w.view.released_bytes()) / s / 1e9;
        const double gflops = 2.0 * only_m * kPrefillN * kPrefillK / s / 1e9;
        std::printf("%-12s %3d %4lld %9.2f %8s %9.1f   %-8s %9s %7.0f%%\n", f.name.c_str(),
                    thread_counts[t], static_cast<long long>(only_m), gbs, "", gflops, "resident",
                    "", 100.0 * gflops / peak[t]);
      }
      const double prefill_s =
          TimePerCall([&] { MatMul(xp.data(), kPrefillM, w.view, yp.data()); }, 1.0);
      const double gflops = 2.0 * kPrefillM * kPrefillN * kPrefillK / prefill_s / 1e9;
      std::printf("%-12s %3d %4lld %9s %8s %9s   %-8s %9.1f %7.0f%%\n", f.name.c_str(),
                  thread_counts[t], static_cast<long long>(kPrefillM), "", "", "", "prefill",
                  gflops, 100.0 * gflops / peak[t]);
      runs.push_back({{"threads", thread_counts[t]},
                      {"decode", decode},
                      {"prefill",
                       {{"m", kPrefillM},
                        {"n", kPrefillN},
                        {"k", kPrefillK},
                        {"gflops", gflops},
                        {"fraction_of_fma_peak", gflops / peak[t]}}}});
    }
    rows.push_back({{"format", f.name},
                    {"decode_shape",
                     {{"n", kDecodeN},
                      {"k", kDecodeK},
                      {"matrices", matrices},
                      {"released_bytes_per_sweep", bytes}}},
                    {"runs", runs}});
  }
  SetThreads(threads);
  if (!only.empty() || only_m > 0) return 0;
  json machine = bench::MachineJson();
  machine["highway_target"] = MatMulTargetName();
  const json result = {
      {"machine", machine},
      {"threads", thread_counts},
      {"limits",
       {{"read", "Highway loads into 8 accumulators over 1 GiB, each thread a contiguous share"},
        {"fma", "Highway MulAdd, 16 chains, dispatched target"},
        {"by_threads", limits}}},
      {"formats", rows}};
  bench::WriteJson(out, result);
  return 0;
}

}  // namespace
}  // namespace dsv4

int main(int argc, char** argv) { return dsv4::Main(argc, argv); }
