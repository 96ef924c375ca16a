// Kernel benchmark: GEMM GFLOP/s at the v4-mini shapes (attention projections and routed
// experts), OpenBLAS SGEMM 1024³ as the peak of this machine measured in the same run,
// streaming-read bandwidth, and the elementwise kernels. Prints a table and writes JSON.
//
//   bench_kernels [--config models/v4-mini/config.json] [--out bench/results/kernels.json]
//                 [--threads 1]
//
// Times are the fastest of several batches of calls. Weights stay hot in cache between calls
// (the same matrices are reused), so the numbers are compute throughput; rows = 1 is
// bandwidth-bound in a real decode, for which the streaming-read figure is the relevant one.
#include <cblas.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "bench/bench_util.h"
#include "core/kernels.h"
#include "nlohmann/json.hpp"

namespace dsv4 {
namespace {

using bench::CpuModel;
using bench::SgemmPeakGflops;
using bench::TimePerCall;
using json = nlohmann::ordered_json;

std::vector<float> RandomVector(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

struct LinearShape {
  std::string name;
  int64_t in = 0;
  int64_t out = 0;
  std::vector<int64_t> rows;
};

// v4-mini shapes from its config.json, falling back to the values it was designed with.
std::vector<LinearShape> ModelShapes(const std::filesystem::path& config_path, json* model_info) {
  json cfg = json::object();
  if (std::ifstream in(config_path); in) cfg = json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (cfg.is_discarded() || !cfg.is_object()) cfg = json::object();
  const auto get = [&](const char* key, int64_t fallback) {
    return cfg.contains(key) && cfg[key].is_number_integer() ? cfg[key].get<int64_t>() : fallback;
  };
  const int64_t d = get("hidden_size", 768);
  const int64_t heads = get("num_attention_heads", 8);
  const int64_t head_dim = get("head_dim", 512);
  const int64_t q_rank = get("q_lora_rank", 384);
  const int64_t groups = get("o_groups", 4);
  const int64_t o_rank = get("o_lora_rank", 256);
  const int64_t index_heads = get("index_n_heads", 16);
  const int64_t index_dim = get("index_head_dim", 128);
  const int64_t experts = get("n_routed_experts", 32);
  const int64_t top_k = get("num_experts_per_tok", 6);
  const int64_t inter = get("moe_intermediate_size", 384);
  const std::filesystem::path relative = config_path.lexically_relative(bench::SourceRoot());
  *model_info = {{"config", relative.empty() ? config_path.string() : relative.string()},
                 {"config_found", !cfg.empty()},
                 {"hidden_size", d},
                 {"num_attention_heads", heads},
                 {"head_dim", head_dim},
                 {"q_lora_rank", q_rank},
                 {"o_groups", groups},
                 {"o_lora_rank", o_rank},
                 {"index_n_heads", index_heads},
                 {"index_head_dim", index_dim},
                 {"n_routed_experts", experts},
                 {"num_experts_per_tok", top_k},
                 {"moe_intermediate_size", inter}};
  const std::vector<int64_t> proj_rows = {1, 8, 64, 512};
  // Rows routed to one expert: with T tokens each expert sees about T·top_k/E of them.
  const std::vector<int64_t> expert_rows = {1, 16, 128};
  return {
      {"attn.wq_a", d, q_rank, proj_rows},
      {"attn.wq_b", q_rank, heads * head_dim, proj_rows},
      {"attn.wkv", d, head_dim, proj_rows},
      {"attn.wo_a (one group)", heads * head_dim / groups, o_rank, proj_rows},
      {"attn.wo_b", groups * o_rank, d, proj_rows},
      {"indexer.wq_b", q_rank, index_heads * index_dim, proj_rows},
      {"expert.w1/w3", d, inter, expert_rows},
      {"expert.w2", inter, d, expert_rows},
  };
}

int Main(int argc, char** argv) {
  std::filesystem::path config = bench::SourceRoot() / "models/v4-mini/config.json";
  std::filesystem::path out = bench::SourceRoot() / "bench/results/kernels.json";
  int threads = 1;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (i + 1 < argc && arg == "--config") {
      config = argv[++i];
    } else if (i + 1 < argc && arg == "--out") {
      out = argv[++i];
    } else if (i + 1 < argc && arg == "--threads") {
      threads = std::max(1, std::atoi(argv[++i]));
    } else {
      std::fprintf(stderr, "usage: %s [--config PATH] [--out PATH] [--threads N]\n", argv[0]);
      return 2;
    }
  }
  SetBlasThreads(threads);

  json result;
  result["machine"] = bench::MachineJson();
  std::printf("CPU %s, %u logical cores, OpenBLAS %s (%s), %d thread(s)\n", CpuModel().c_str(),
              std::thread::hardware_concurrency(), openblas_get_config(), openblas_get_corename(),
              BlasThreads());

  // The peak is measured before and after the shapes and the better run is kept, so a
  // burst of other load on the machine does not set the scale.
  const double peak_before = SgemmPeakGflops();
  std::printf("peak: OpenBLAS sgemm 1024^3 %.1f GFLOP/s (first run)\n", peak_before);

  const size_t bw_bytes = size_t{512} << 20;
  const bench::Bandwidth bw = bench::ReadBandwidth(bw_bytes, 7);
  result["read_bandwidth"] = {{"bytes", bw_bytes},
                              {"threads", 1},
                              {"best_gb_per_s", bw.best_gbs},
                              {"median_gb_per_s", bw.median_gbs}};
  std::printf("streaming read (512 MiB, 1 thread): best %.1f GB/s, median %.1f GB/s\n", bw.best_gbs,
              bw.median_gbs);

  json model_info;
  const std::vector<LinearShape> shapes = ModelShapes(config, &model_info);
  result["model"] = model_info;
  json gemms = json::array();
  for (const LinearShape& shape : shapes) {
    const std::vector<float> w = RandomVector(shape.in * shape.out, 3);
    for (int64_t rows : shape.rows) {
      const std::vector<float> x = RandomVector(rows * shape.in, 4);
      std::vector<float> y(rows * shape.out);
      const double s =
          TimePerCall([&] { Linear(x.data(), rows, shape.in, w.data(), shape.out, y.data()); });
      gemms.push_back({{"name", shape.name},
                       {"rows", rows},
                       {"in", shape.in},
                       {"out", shape.out},
                       {"seconds_per_call", s},
                       {"gflops", 2.0 * rows * shape.in * shape.out / s / 1e9}});
    }
  }
  const double peak_after = SgemmPeakGflops();
  const double peak = std::max(peak_before, peak_after);
  result["peak"] = {{"name", "OpenBLAS sgemm 1024x1024x1024 (NN)"},
                    {"gflops", peak},
                    {"gflops_first_run", peak_before},
                    {"gflops_second_run", peak_after}};
  std::printf("peak: OpenBLAS sgemm 1024^3 %.1f GFLOP/s (second run); using %.1f\n", peak_after,
              peak);
  std::printf("\n%-22s %6s %6s %6s %12s %9s %8s\n", "linear (x·wᵀ)", "rows", "in", "out", "us/call",
              "GFLOP/s", "of peak");
  for (json& g : gemms) {
    g["fraction_of_peak"] = g["gflops"].get<double>() / peak;
    std::printf("%-22s %6lld %6lld %6lld %12.2f %9.1f %7.1f%%\n",
                g["name"].get<std::string>().c_str(), g["rows"].get<long long>(),
                g["in"].get<long long>(), g["out"].get<long long>(),
                g["seconds_per_call"].get<double>() * 1e6, g["gflops"].get<double>(),
                100.0 * g["fraction_of_peak"].get<double>());
  }
  result["gemm"] = gemms;

  // Elementwise kernels at model sizes, as nanoseconds per element.
  json elementwise = json::array();
  const auto record = [&](const std::string& name, int64_t elements, double s) {
    elementwise.push_back({{"name", name},
                           {"elements", elements},
                           {"seconds_per_call", s},
                           {"ns_per_element", s * 1e9 / elements}});
    std::printf("%-34s %9lld elements %8.3f ns/element\n", name.c_str(),
                static_cast<long long>(elements), s * 1e9 / elements);
  };
  std::printf("\n");
  {
    const int64_t rows = 512;
    const int64_t dim = model_info["hidden_size"].get<int64_t>();
    std::vector<float> x = RandomVector(rows * dim, 5);
    const std::vector<float> w(dim, 1.0f);  // unit weight: repeated calls keep x unchanged
    record("RmsNorm 512 x hidden (in place)", rows * dim,
           TimePerCall([&] { RmsNorm(x.data(), w.data(), rows, dim, 1e-6f, x.data()); }));
  }
  {
    // One layer's attention scores at T = 512: heads × T rows over window + compressed keys.
    const int64_t rows = 512 * model_info["num_attention_heads"].get<int64_t>();
    const int64_t n = 256;
    const std::vector<float> src = RandomVector(rows * n, 7);
    std::vector<float> x = src;
    record("SoftmaxRows heads*512 x 256", rows * n,
           TimePerCall([&] { SoftmaxRows(x.data(), rows, n); }));
  }
  {
    // Repeated SiLU drives values to subnormals, so every call restores the input; the
    // copy is timed alone and subtracted.
    const int64_t n = 128 * model_info["moe_intermediate_size"].get<int64_t>();
    const std::vector<float> src = RandomVector(n, 8);
    std::vector<float> x(n);
    const double copy = TimePerCall([&] { std::copy(src.begin(), src.end(), x.begin()); });
    const double both = TimePerCall([&] {
      std::copy(src.begin(), src.end(), x.begin());
      SiluInPlace(x.data(), n);
    });
    record("SiluInPlace 128 x moe_inter", n, std::max(both - copy, 0.0));
  }
  result["elementwise"] = elementwise;

  std::filesystem::create_directories(out.parent_path());
  std::ofstream file(out);
  file << result.dump(2) << "\n";
  if (!file) {
    std::fprintf(stderr, "cannot write %s\n", out.c_str());
    return 1;
  }
  std::printf("\nwrote %s\n", out.c_str());
  return 0;
}

}  // namespace
}  // namespace dsv4

int main(int argc, char** argv) { return dsv4::Main(argc, argv); }
