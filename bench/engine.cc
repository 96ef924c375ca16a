// Engine throughput: prefill and decode tokens/s of dsv4-engine (mpirun, 1 + 1 and 2 + 2
// ranks) against the single-process `dsv4 run` on the same v4-tiny checkpoint and prompt,
// on this machine. Writes bench/results/engine.json.
//
//   bench_engine [--prompt 128] [--decode 64] [--repeats 3] [--out bench/results/engine.json]
//
// Every run prefills `prompt` tokens then decodes `decode` tokens one step at a time; the
// engine figures come from its per-step times (--stats_out; a step's time is its slowest
// rank's), the single-process ones from `dsv4 run`'s report. Best of `repeats`. The 2 + 2
// layout also runs two sequences at once (one per attention rank: data parallelism).
// With 2 cores, 2 ranks already fill the machine and 4 ranks oversubscribe it: Open MPI
// ranks busy-poll while they wait, so waiting ranks take CPU from working ones.
//
// Overlap: each run also reports the share of their step time attention and expert ranks
// spent blocked on the data plane, for prefill and decode (the engine's per-rank step
// stats). The 1 + 1 layout with two sequences puts one in each micro-batch, so the two
// micro-batches can hide each other's exchanges; it runs with the progress thread
// (engine.progress: thread) and without (calls, the default, which the other runs use).
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <regex>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "bench/bench_util.h"
#include "nlohmann/json.hpp"

namespace dsv4 {
namespace {

using json = nlohmann::json;

struct Output {
  int status = -1;
  std::string text;
};

Output Shell(const std::string& command) {
  Output out;
  FILE* pipe = popen((command + " 2>&1").c_str(), "r");
  if (!pipe) return out;
  char buffer[4096];
  size_t n;
  while ((n = fread(buffer, 1, sizeof(buffer), pipe)) > 0) out.text.append(buffer, n);
  out.status = pclose(pipe);
  return out;
}

std::string Prompt(int tokens, int salt) {
  std::vector<int> ids;
  for (int i = 0; i < tokens; ++i) ids.push_back((i * 37 + salt * 101 + 11) % 1024);
  return absl::StrJoin(ids, ",");
}

struct Throughput {
  double prefill = 0;  // tokens/s
  double decode = 0;
};

int Main(int argc, char** argv) {
  int prompt = 128, decode = 64, repeats = 3;
  std::filesystem::path out = bench::SourceRoot() / "bench/results/engine.json";
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string arg = argv[i];
    if (arg == "--prompt")
      prompt = std::max(1, std::atoi(argv[i + 1]));
    else if (arg == "--decode")
      decode = std::max(1, std::atoi(argv[i + 1]));
    else if (arg == "--repeats")
      repeats = std::max(1, std::atoi(argv[i + 1]));
    else if (arg == "--out")
      out = argv[i + 1];
    else {
      std::fprintf(stderr, "usage: %s [--prompt N] [--decode N] [--repeats N] [--out PATH]\n",
                   argv[0]);
      return 2;
    }
  }
  const std::filesystem::path bin = std::filesystem::read_symlink("/proc/self/exe").parent_path();
  char pattern[] = "/tmp/bench-engine-XXXXXX";
  const std::string dir = mkdtemp(pattern);
  const std::string ckpt = dir + "/ckpt";
  if (Shell(absl::StrCat(bin.string(), "/dsv4 checkpoint generate --preset v4-tiny --seed 1 --out ",
                         ckpt))
          .status != 0) {
    std::fprintf(stderr, "bench_engine: checkpoint generation failed\n");
    return 1;
  }
  const std::string hardware =
      (bench::SourceRoot() / "cluster-configs/hardware/ascend-950dt.yaml").string();
  auto yaml = [&](int attention, int experts, const std::string& progress) {
    const std::string path = absl::StrCat(dir, "/", attention, "+", experts, progress, ".yaml");
    std::ofstream(path) << "name: bench\nhardware: " << hardware
                        << "\ntopology:\n  supernodes: 1\n  nodes_per_supernode: 1\n"
                        << "  chips_per_node: " << attention + experts
                        << "\n  links:\n    intra_node: {bandwidth_GBps: 1000, latency_us: 1.0}\n"
                        << "    intra_supernode: {bandwidth_GBps: 1000, latency_us: 2.1}\n"
                        << "    inter_supernode: {bandwidth_GBps: 50, latency_us: 5.0}\n"
                        << "roles: {attention_ranks: " << attention << ", expert_ranks: " << experts
                        << "}\nengine: {progress: " << progress << "}\n";
    return path;
  };
  const int total = prompt + decode;
  const std::string mpirun =
      absl::StrCat("mpirun --oversubscribe", geteuid() == 0 ? " --allow-run-as-root" : "");

  auto single = [&]() -> Throughput {
    Throughput best;
    for (int r = 0; r < repeats; ++r) {
      const Output o =
          Shell(absl::StrCat(bin.string(), "/dsv4 run --checkpoint ", ckpt, " --tokens ",
                             Prompt(total, 0), " --decode_from ", prompt));
      std::smatch m;
      if (std::regex_search(o.text, m,
                            std::regex(R"(prefill: \d+ tokens in [\d.]+ s \(([\d.]+) tokens/s)")))
        best.prefill = std::max(best.prefill, std::stod(m[1]));
      if (std::regex_search(o.text, m,
                            std::regex(R"(decode: \d+ tokens in [\d.]+ s \(([\d.]+) tokens/s)")))
        best.decode = std::max(best.decode, std::stod(m[1]));
    }
    return best;
  };
  auto engine = [&](int attention, int experts, int sequences, const std::string& progress,
                    json* extra) -> Throughput {
    Throughput best;
    std::vector<std::string> prompts;
    for (int s = 0; s < sequences; ++s) prompts.push_back(Prompt(total, s));
    for (int r = 0; r < repeats; ++r) {
      const std::string stats = dir + "/stats.json";
      const Output o = Shell(absl::StrCat(
          mpirun, " -np ", attention + experts, " ", bin.string(), "/dsv4-engine --cluster ",
          yaml(attention, experts, progress), " --checkpoint ", ckpt, " --tokens '",
          absl::StrJoin(prompts, ";"), "' --decode_from ", prompt, " --stats_out ", stats));
      if (o.status != 0) {
        std::fprintf(stderr, "bench_engine: engine run failed:\n%s\n", o.text.c_str());
        return best;
      }
      std::ifstream in(stats);
      const json j = json::parse(in);
      double decode_tokens = 0, decode_seconds = 0;
      for (size_t s = 1; s < j["steps"].size(); ++s) {
        decode_tokens += j["steps"][s]["tokens"].get<double>();
        decode_seconds += j["steps"][s]["cpu_seconds"].get<double>();
      }
      const Throughput t{
          j["steps"][0]["tokens"].get<double>() / j["steps"][0]["cpu_seconds"].get<double>(),
          decode_tokens / decode_seconds};
      if (t.decode > best.decode) {
        // Blocked share of the ranks' step time, per role, for the prefill step and decode.
        const int ranks = attention + experts;
        auto share = [&](size_t first, size_t last, bool attention_role) {
          double blocked = 0, total = 0;
          for (size_t s = first; s < last; ++s) {
            for (int r = 0; r < ranks; ++r) {
              if ((r < attention) != attention_role) continue;
              blocked += j["steps"][s]["blocked_seconds"][r].get<double>();
              total += j["steps"][s]["rank_seconds"][r].get<double>();
            }
          }
          return total > 0 ? blocked / total : 0.0;
        };
        const size_t steps = j["steps"].size();
        (*extra)["attention_blocked_fraction"] =
            j["attention_wait_seconds"].get<double>() / j["attention_step_seconds"].get<double>();
        (*extra)["blocked_fraction"] = {
            {"prefill", {{"attention", share(0, 1, true)}, {"expert", share(0, 1, false)}}},
            {"decode", {{"attention", share(1, steps, true)}, {"expert", share(1, steps, false)}}}};
      }
      best.prefill = std::max(best.prefill, t.prefill);
      best.decode = std::max(best.decode, t.decode);
    }
    return best;
  };

  const Throughput base = single();
  json result = {{"benchmark", "engine"},
                 {"machine", bench::MachineJson()},
                 {"prompt_tokens", prompt},
                 {"decode_tokens", decode},
                 {"repeats", repeats},
                 {"single_process",
                  {{"prefill_tokens_per_s", base.prefill}, {"decode_tokens_per_s", base.decode}}},
                 {"note",
                  "one MPI rank per process; on 2 cores 4 ranks "
                  "oversubscribe the machine, and Open MPI ranks busy-poll while they wait"}};
  std::printf("single process: prefill %.0f tokens/s, decode %.1f tokens/s\n", base.prefill,
              base.decode);
  struct Layout {
    int attention, experts, sequences;
    std::string progress;
  };
  for (const Layout& l :
       {Layout{1, 1, 1, "calls"}, Layout{1, 1, 2, "calls"}, Layout{1, 1, 2, "thread"},
        Layout{2, 2, 1, "calls"}, Layout{2, 2, 2, "calls"}, Layout{2, 2, 2, "thread"}}) {
    json run = {{"attention_ranks", l.attention},
                {"expert_ranks", l.experts},
                {"sequences", l.sequences},
                {"progress", l.progress}};
    const Throughput t = engine(l.attention, l.experts, l.sequences, l.progress, &run);
    run["prefill_tokens_per_s"] = t.prefill;
    run["decode_tokens_per_s"] = t.decode;
    run["prefill_ratio_vs_single"] = base.prefill > 0 ? t.prefill / base.prefill : 0;
    run["decode_ratio_vs_single"] = base.decode > 0 ? t.decode / base.decode : 0;
    const json& blocked = run["blocked_fraction"];
    std::printf(
        "engine %d+%d, %d sequence(s), progress %s: prefill %.0f tokens/s (%.2fx), decode %.1f "
        "tokens/s (%.2fx); blocked attention/expert: prefill %.0f%%/%.0f%%, decode %.0f%%/%.0f%%\n",
        l.attention, l.experts, l.sequences, l.progress.c_str(), t.prefill,
        t.prefill / base.prefill, t.decode, t.decode / base.decode,
        100 * blocked["prefill"]["attention"].get<double>(),
        100 * blocked["prefill"]["expert"].get<double>(),
        100 * blocked["decode"]["attention"].get<double>(),
        100 * blocked["decode"]["expert"].get<double>());
    result["runs"].push_back(run);
  }
  std::filesystem::remove_all(dir);
  bench::WriteJson(out, result);
  return 0;
}

}  // namespace
}  // namespace dsv4

int main(int argc, char** argv) { return dsv4::Main(argc, argv); }
