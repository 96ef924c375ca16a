// MatMul benchmark (core/matmul.h), single-threaded, one row per format:
// - decode (m = 1): GB/s of weight bytes in their released format (data + scales), over
//   a rotating set of matrices larger than the last-level cache, against the
//   streaming-read bandwidth measured in the same run (bench::ReadBandwidth);
// - prefill (m = 64): GFLOP/s on one cache-resident matrix, against the peak of a
//   register-blocked Highway FMA loop measured in the same run.
// Prints a table and writes JSON.
//
//   bench_matmul [--out bench/results/matmul.json]
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "bench/bench_util.h"
#include "core/matmul.h"
#include "core/weight_matrix.h"
#include "hwy/highway.h"
#include "nlohmann/json.hpp"

namespace dsv4 {
namespace {

namespace hn = hwy::HWY_NAMESPACE;
using json = nlohmann::ordered_json;
using bench::TimePerCall;

// GFLOP/s of kChains independent FMA chains per lane (enough to hide FMA latency on
// current x86 and Arm cores), statically compiled for the baseline target.
HWY_NOINLINE double FmaPeakGflops() {
  const hn::ScalableTag<float> df;
  constexpr int kChains = 12;
  constexpr int64_t kIters = int64_t{1} << 22;
  double best = 0.0;
  for (int rep = 0; rep < 5; ++rep) {
    hn::Vec<decltype(df)> acc[kChains];
    for (int j = 0; j < kChains; ++j) acc[j] = hn::Set(df, static_cast<float>(j));
    const auto mul = hn::Set(df, 0.999999f), add = hn::Set(df, 1e-6f);
    const bench::Stopwatch watch;
    for (int64_t it = 0; it < kIters; ++it) {
      for (int j = 0; j < kChains; ++j) acc[j] = hn::MulAdd(acc[j], mul, add);
    }
    const double s = watch.wall();
    auto sum = acc[0];
    for (int j = 1; j < kChains; ++j) sum = hn::Add(sum, acc[j]);
    volatile float sink = hn::GetLane(sum);
    (void)sink;
    best = std::max(best, 2.0 * kChains * hn::Lanes(df) * kIters / s / 1e9);
  }
  return best;
}

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

int Main(int argc, char** argv) {
  std::string out = (bench::SourceRoot() / "bench/results/matmul.json").string();
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::string(argv[i]) == "--out") out = argv[++i];
  }
  const std::vector<FormatCase> formats = {{WeightFormat::kF32, 0, "F32"},
                                           {WeightFormat::kBF16, 0, "BF16"},
                                           {WeightFormat::kFp8, 128, "FP8 128x128"},
                                           {WeightFormat::kFp8, 32, "FP8 32x32"},
                                           {WeightFormat::kFp4, 32, "FP4 1x32"}};
  std::printf("MatMul target %s\n", MatMulTargetName());
  const bench::Bandwidth bw = bench::ReadBandwidth();
  const double fma_peak = FmaPeakGflops();
  std::printf("streaming read %.1f GB/s (best), Highway FMA peak %.1f GFLOP/s\n", bw.best_gbs,
              fma_peak);

  // Decode: N = K = 4096 matrices, as many as make ≥ 1 GiB of released bytes (the LLC this
  // VM reports is 512 MiB), swept once per timed call.
  constexpr int64_t kDecodeN = 4096, kDecodeK = 4096, kSweepBytes = int64_t{1} << 30;
  // Prefill: one N = 1024, K = 4096 matrix, 64 rows.
  constexpr int64_t kPrefillM = 64, kPrefillN = 1024, kPrefillK = 4096;
  json rows = json::array();
  std::printf("%-12s %14s %10s %16s %10s\n", "format", "m=1 GB/s", "of read", "m=64 GFLOP/s",
              "of FMA");
  for (const FormatCase& f : formats) {
    std::vector<Storage> mats;
    int64_t bytes = 0;
    while (bytes < kSweepBytes) {
      mats.push_back(MakeStorage(f.format, kDecodeN, kDecodeK, f.block,
                                 static_cast<uint32_t>(mats.size() + 1)));
      bytes += mats.back().view.released_bytes();
    }
    std::vector<float> x(kDecodeK, 0.5f), y(kDecodeN);
    const double sweep_s = TimePerCall(
        [&] {
          for (const Storage& s : mats) MatMul(x.data(), 1, s.view, y.data());
        },
        1.5);
    const double decode_gbs = static_cast<double>(bytes) / sweep_s / 1e9;
    const int64_t matrices = static_cast<int64_t>(mats.size());
    mats.clear();

    const Storage w = MakeStorage(f.format, kPrefillN, kPrefillK, f.block, 7);
    std::vector<float> xp(kPrefillM * kPrefillK, 0.25f), yp(kPrefillM * kPrefillN);
    const double prefill_s =
        TimePerCall([&] { MatMul(xp.data(), kPrefillM, w.view, yp.data()); }, 1.0);
    const double gflops = 2.0 * kPrefillM * kPrefillN * kPrefillK / prefill_s / 1e9;
    std::printf("%-12s %14.2f %9.0f%% %16.2f %9.0f%%\n", f.name.c_str(), decode_gbs,
                100.0 * decode_gbs / bw.best_gbs, gflops, 100.0 * gflops / fma_peak);
    rows.push_back({{"format", f.name},
                    {"decode",
                     {{"m", 1},
                      {"n", kDecodeN},
                      {"k", kDecodeK},
                      {"matrices", matrices},
                      {"released_bytes_per_sweep", bytes},
                      {"gb_per_s", decode_gbs},
                      {"fraction_of_read_bandwidth", decode_gbs / bw.best_gbs}}},
                    {"prefill",
                     {{"m", kPrefillM},
                      {"n", kPrefillN},
                      {"k", kPrefillK},
                      {"gflops", gflops},
                      {"fraction_of_fma_peak", gflops / fma_peak}}}});
  }
  json machine = bench::MachineJson();
  machine["highway_target"] = MatMulTargetName();
  const json result = {
      {"machine", machine},
      {"threads", 1},
      {"read_bandwidth", {{"best_gb_per_s", bw.best_gbs}, {"median_gb_per_s", bw.median_gbs}}},
      {"fma_peak", {{"name", "Highway MulAdd, 12 chains, static target"}, {"gflops", fma_peak}}},
      {"formats", rows}};
  bench::WriteJson(out, result);
  return 0;
}

}  // namespace
}  // namespace dsv4

int main(int argc, char** argv) { return dsv4::Main(argc, argv); }
