// Dispatch + combine benchmark: the whole data-plane path of one MoE layer against a raw
// MPI_Alltoallv of the same bytes, in the same run, at the v4-mini (d 768, 32 experts) and
// V4-Flash (d 4096, 256 experts) shapes, top-6, 1–4096 tokens per attention rank.
// Writes bench/results/dispatch.json.
//
//   bench_dispatch [--np 2,4] [--max-tokens 4096] [--out bench/results/dispatch.json]
//
// Launched directly, it runs itself under `mpirun -np N` once per N and merges the results;
// the ranks are half attention, half expert, on a modelled tree of 2 supernodes × 1 node ×
// N/2 chips (attention ranks on supernode 0, expert ranks on supernode 1), so hierarchical
// mode has real relays when N ≥ 4.
//
// The whole path is what the engine runs per layer: StartDispatch (pack records), the
// exchange, FinishDispatch (list the records in place per slot), then, after the expert
// step, StartCombine, the exchange back, FinishCombine (sum each token's rows). The expert
// step (here the identity: each record's combine row is a copy of its token row, the least
// any expert writes) is the expert's work, outside the path and timed apart. The
// headline is "engine": the protocol the engine picks (low latency up to 128 tokens per
// rank, bulk above), flat, without a progress thread (the engine's default); the same with
// the thread is reported beside it. The breakdown times each local part
// on its own (exchanges driven to completion with Progress first). Each half (dispatch,
// combine) starts after a barrier and counts the slowest rank; variants are interleaved
// so drift hits all. "best" adds the halves' fastest iterations: on a shared 2-core machine
// the medians mostly measure preemption.
#include <mpi.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <numeric>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "bench/bench_util.h"
#include "core/topology.h"
#include "dispatch/dispatcher.h"
#include "nlohmann/json.hpp"

namespace dsv4 {
namespace {

using nlohmann::json;

constexpr int kTopK = 6;

std::string MpiLibraryVersion() {
  char version[MPI_MAX_LIBRARY_VERSION_STRING];
  int len = 0;
  MPI_Get_library_version(version, &len);
  std::string s(version, len);
  return s.substr(0, s.find_first_of(",\n"));
}

json MachineJson() {
  return {{"cpu_model", bench::CpuModel()},
          {"logical_cores", std::thread::hardware_concurrency()},
          {"mpi_library", MpiLibraryVersion()},
          {"date", bench::UtcNow()}};
}

constexpr char kNotes[] =
    "Times are per MoE layer: per iteration each half's time (dispatch; combine) on the "
    "slowest rank, summed (the expert step between them is not counted); best and median over "
    "iterations. raw_alltoallv is "
    "two MPI_Alltoallv calls on preallocated buffers with the bulk protocol's byte matrices "
    "(records out, rows back). engine = the protocol the engine picks (low latency at <= 128 "
    "tokens per rank, bulk above), flat, without a progress thread (the engine's default); "
    "engine_progress_thread adds the thread; the other variants pin one protocol or mode. "
    "whole_over_raw is the headline: "
    "engine.best_us / raw_alltoallv.best_us. breakdown_best_us times the engine variant's "
    "local parts separately: pack (StartDispatch), list (FinishDispatch once the records "
    "are in), expert (the identity expert writing combine rows), sum (FinishCombine once the "
    "rows are in). Traffic sums every rank's sends (self excluded). Runs with np above the "
    "core count are oversubscribed: ranks share cores and MPI's polling competes with the "
    "copies.";

// ---- The MPI part: one run at the world's size. ----

struct Model {
  std::string name;
  int64_t hidden;
  int experts;
};

// A variant's per-layer time: each half's per-iteration time on the slowest rank, summed.
struct Timing {
  double best, median, dispatch_median, combine_median;
};

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

Timing Summarize(std::vector<double> dispatch_s, std::vector<double> combine_s, MPI_Comm comm) {
  const int n = static_cast<int>(dispatch_s.size());
  MPI_Allreduce(MPI_IN_PLACE, dispatch_s.data(), n, MPI_DOUBLE, MPI_MAX, comm);
  MPI_Allreduce(MPI_IN_PLACE, combine_s.data(), n, MPI_DOUBLE, MPI_MAX, comm);
  std::vector<double> layer(n);
  for (int i = 0; i < n; ++i) layer[i] = dispatch_s[i] + combine_s[i];
  // The halves are separated by barriers, so their best times add up to a best layer.
  return {*std::min_element(dispatch_s.begin(), dispatch_s.end()) +
              *std::min_element(combine_s.begin(), combine_s.end()),
          Median(layer), Median(dispatch_s), Median(combine_s)};
}

double Timed(const std::function<void()>& fn, MPI_Comm comm) {
  MPI_Barrier(comm);
  const double t0 = MPI_Wtime();
  fn();
  return MPI_Wtime() - t0;
}

json TrafficJson(const LinkTraffic& t) {
  json j = json::object();
  for (int c = 0; c < kNumLinkClasses; ++c) {
    j[std::string(LinkClassName(static_cast<LinkClass>(c)))] = {
        {"bytes", t.bytes[c]}, {"messages", t.messages[c]}, {"copies", t.copies[c]}};
  }
  return j;
}

LinkTraffic SumOverRanks(const ExchangeTraffic& traffic, MPI_Comm comm) {
  LinkTraffic t = traffic.dispatch;
  t += traffic.combine;
  MPI_Allreduce(MPI_IN_PLACE, t.bytes.data(), kNumLinkClasses, MPI_INT64_T, MPI_SUM, comm);
  MPI_Allreduce(MPI_IN_PLACE, t.messages.data(), kNumLinkClasses, MPI_INT64_T, MPI_SUM, comm);
  MPI_Allreduce(MPI_IN_PLACE, t.copies.data(), kNumLinkClasses, MPI_INT64_T, MPI_SUM, comm);
  return t;
}

json RunCase(const Topology& topology, const Model& model, int tokens_per_rank) {
  int rank = 0, size = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  const int attention = topology.num_attention_ranks();
  const int expert = topology.num_expert_ranks();
  const int64_t d = model.hidden;
  std::vector<int> rank_of_slot(model.experts);
  for (int s = 0; s < model.experts; ++s) rank_of_slot[s] = attention + s * expert / model.experts;

  // Uniform routing: k distinct experts per token.
  const int64_t tokens = rank < attention ? tokens_per_rank : 0;
  std::mt19937 rng(1234 + rank);
  Tensor x({tokens, d});
  std::uniform_real_distribution<float> value(-1.0f, 1.0f);
  for (int64_t i = 0; i < x.numel(); ++i) x.data()[i] = value(rng);
  std::vector<int32_t> slots;
  std::vector<float> weights;
  std::vector<int> records_to(size, 0);  // dedup: one record per (token, rank)
  for (int64_t t = 0; t < tokens; ++t) {
    std::vector<int32_t> chosen;
    while (static_cast<int>(chosen.size()) < kTopK) {
      const int32_t s = static_cast<int32_t>(rng() % model.experts);
      if (std::find(chosen.begin(), chosen.end(), s) == chosen.end()) chosen.push_back(s);
    }
    std::vector<bool> hit(size, false);
    for (int32_t s : chosen) {
      slots.push_back(s);
      weights.push_back(1.0f / kTopK);
      hit[rank_of_slot[s]] = true;
    }
    for (int r = 0; r < size; ++r) records_to[r] += hit[r];
  }

  // The raw baseline's byte matrices, from the documented wire format.
  const int64_t record_bytes = 8 + 8 * kTopK + 4 * d;
  const int64_t row_bytes = 4 * d;
  std::vector<int> records_from(size);
  MPI_Alltoall(records_to.data(), 1, MPI_INT, records_from.data(), 1, MPI_INT, MPI_COMM_WORLD);
  auto bytes_of = [](const std::vector<int>& records, int64_t item) {
    std::vector<int> bytes(records.size());
    for (size_t r = 0; r < records.size(); ++r) bytes[r] = static_cast<int>(records[r] * item);
    return bytes;
  };
  auto displs_of = [](const std::vector<int>& counts) {
    std::vector<int> displs(counts.size(), 0);
    std::exclusive_scan(counts.begin(), counts.end(), displs.begin(), 0);
    return displs;
  };
  const std::vector<int> d_send = bytes_of(records_to, record_bytes);
  const std::vector<int> d_recv = bytes_of(records_from, record_bytes);
  const std::vector<int> c_send = bytes_of(records_from, row_bytes);
  const std::vector<int> c_recv = bytes_of(records_to, row_bytes);
  const std::vector<int> d_send_displs = displs_of(d_send), d_recv_displs = displs_of(d_recv);
  const std::vector<int> c_send_displs = displs_of(c_send), c_recv_displs = displs_of(c_recv);
  auto total = [](const std::vector<int>& v) { return std::accumulate(v.begin(), v.end(), 0L); };
  std::vector<char> raw_send(std::max(total(d_send), total(c_send)), 1);
  std::vector<char> raw_recv(std::max(total(d_recv), total(c_recv)), 0);

  auto check = [rank](const absl::Status& status) {
    if (status.ok()) return;
    std::fprintf(stderr, "rank %d: %s\n", rank, status.ToString().c_str());
    MPI_Abort(MPI_COMM_WORLD, 1);
  };
  // The identity expert: each record's combine row is its token row.
  auto identity = [d](const ExpertBatch& batch) {
    for (int64_t r = 0; r < batch.records(); ++r) {
      std::memcpy(batch.y[r], batch.x[r], d * sizeof(float));
    }
  };

  // The Dispatcher variants.
  struct Exchange {
    std::unique_ptr<Dispatcher> dispatcher;
    ExchangeProtocol protocol = ExchangeProtocol::kBulk;
    ExpertBatch batch;
    std::optional<DispatchHandle> handle;
    Tensor out;
    ExchangeTraffic traffic;
  };
  constexpr int64_t kLowLatencyTokens = 128;  // the engine's default
  auto make = [&](DispatchMode mode, std::optional<ExchangeProtocol> protocol, bool thread) {
    auto e = std::make_shared<Exchange>();
    DispatcherOptions options{d, kTopK, mode, 1};
    options.low_latency_tokens = kLowLatencyTokens;
    options.progress_thread = thread;
    absl::StatusOr<std::unique_ptr<Dispatcher>> dispatcher =
        Dispatcher::Create(MPI_COMM_WORLD, topology, rank_of_slot, options);
    check(dispatcher.status());
    e->dispatcher = *std::move(dispatcher);
    e->protocol = protocol.value_or(e->dispatcher->ProtocolFor(tokens_per_rank));
    return e;
  };
  auto dispatch = [&](Exchange& e) {
    absl::StatusOr<DispatchHandle> handle =
        e.dispatcher->Dispatch(e.protocol, x, slots, weights, &e.batch);
    check(handle.status());
    e.handle = *std::move(handle);
  };
  auto combine = [&](Exchange& e) {
    check(e.dispatcher->Combine(*e.handle, &e.out));
    e.traffic = e.handle->traffic();
    e.handle.reset();
  };

  struct Variant {
    std::string name;
    std::function<void()> dispatch, combine;
    std::vector<double> dispatch_s, combine_s;
    std::shared_ptr<Exchange> exchange;  // null for the raw exchange
  };
  const std::vector<std::pair<std::string, std::shared_ptr<Exchange>>> exchanges = {
      {"engine", make(DispatchMode::kFlat, std::nullopt, false)},
      {"engine_progress_thread", make(DispatchMode::kFlat, std::nullopt, true)},
      {"bulk_flat", make(DispatchMode::kFlat, ExchangeProtocol::kBulk, false)},
      {"bulk_hierarchical", make(DispatchMode::kHierarchical, ExchangeProtocol::kBulk, false)},
      {"low_latency", make(DispatchMode::kFlat, ExchangeProtocol::kLowLatency, false)}};
  std::vector<Variant> variants;
  for (const auto& [name, e] : exchanges) {
    variants.push_back({name, [&, e] { dispatch(*e); }, [&, e] { combine(*e); }, {}, {}, e});
  }
  variants.push_back({"raw_alltoallv",
                      [&] {
                        MPI_Alltoallv(raw_send.data(), d_send.data(), d_send_displs.data(),
                                      MPI_BYTE, raw_recv.data(), d_recv.data(),
                                      d_recv_displs.data(), MPI_BYTE, MPI_COMM_WORLD);
                      },
                      [&] {
                        MPI_Alltoallv(raw_send.data(), c_send.data(), c_send_displs.data(),
                                      MPI_BYTE, raw_recv.data(), c_recv.data(),
                                      c_recv_displs.data(), MPI_BYTE, MPI_COMM_WORLD);
                      },
                      {},
                      {},
                      nullptr});
  // The breakdown: the engine variant's local parts, each timed once its exchange is done.
  Exchange& engine = *exchanges[0].second;
  std::vector<double> pack_s, list_s, expert_s, sum_s;
  auto breakdown = [&] {
    auto wait = [&] {
      absl::StatusOr<bool> done = false;
      while (done.ok() && !*done) done = engine.dispatcher->Progress(*engine.handle);
      check(done.status());
      MPI_Barrier(MPI_COMM_WORLD);
    };
    MPI_Barrier(MPI_COMM_WORLD);
    double t0 = MPI_Wtime();
    absl::StatusOr<DispatchHandle> handle =
        engine.dispatcher->StartDispatch(0, engine.protocol, x, slots, weights);
    pack_s.push_back(MPI_Wtime() - t0);
    check(handle.status());
    engine.handle = *std::move(handle);
    wait();
    t0 = MPI_Wtime();
    check(engine.dispatcher->FinishDispatch(*engine.handle, &engine.batch));
    list_s.push_back(MPI_Wtime() - t0);
    t0 = MPI_Wtime();
    identity(engine.batch);
    expert_s.push_back(MPI_Wtime() - t0);
    check(engine.dispatcher->StartCombine(*engine.handle));
    wait();
    t0 = MPI_Wtime();
    check(engine.dispatcher->FinishCombine(*engine.handle, &engine.out));
    sum_s.push_back(MPI_Wtime() - t0);
    engine.handle.reset();
  };

  // Warm up (buffers reach their size), then size the iteration count to ~0.6 s per case.
  // The expert step runs between the halves, untimed: it is the expert's work, timed in
  // the breakdown.
  auto expert_step = [&](Variant& v) {
    if (v.exchange) identity(v.exchange->batch);
  };
  double once = 0;
  for (Variant& v : variants) {
    once += Timed(v.dispatch, MPI_COMM_WORLD);
    expert_step(v);
    once += Timed(v.combine, MPI_COMM_WORLD);
  }
  MPI_Allreduce(MPI_IN_PLACE, &once, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  const int iters = std::clamp(static_cast<int>(0.6 / once), 15, 300);
  for (int i = 0; i < iters; ++i) {
    for (Variant& v : variants) {
      v.dispatch_s.push_back(Timed(v.dispatch, MPI_COMM_WORLD));
      expert_step(v);
      v.combine_s.push_back(Timed(v.combine, MPI_COMM_WORLD));
    }
    breakdown();
  }

  json c = {
      {"model", model.name},
      {"hidden", d},
      {"experts", model.experts},
      {"top_k", kTopK},
      {"tokens_per_attention_rank", tokens_per_rank},
      {"engine_protocol", engine.protocol == ExchangeProtocol::kBulk ? "bulk" : "low_latency"},
      {"iterations", iters}};
  int64_t sums[2] = {total(d_send), total(c_send)};
  MPI_Allreduce(MPI_IN_PLACE, sums, 2, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD);
  c["dispatch_bytes_all_ranks"] = sums[0];
  c["combine_bytes_all_ranks"] = sums[1];
  for (Variant& v : variants) {
    const Timing t = Summarize(v.dispatch_s, v.combine_s, MPI_COMM_WORLD);
    c[v.name] = {{"best_us", t.best * 1e6},
                 {"median_us", t.median * 1e6},
                 {"dispatch_median_us", t.dispatch_median * 1e6},
                 {"combine_median_us", t.combine_median * 1e6}};
  }
  const double raw_best = c["raw_alltoallv"]["best_us"].get<double>();
  const double raw_median = c["raw_alltoallv"]["median_us"].get<double>();
  c["whole_over_raw"] = {{"best", c["engine"]["best_us"].get<double>() / raw_best},
                         {"median", c["engine"]["median_us"].get<double>() / raw_median}};
  for (const char* name :
       {"engine_progress_thread", "bulk_flat", "bulk_hierarchical", "low_latency"}) {
    c[std::string(name) + "_over_raw_best"] = c[name]["best_us"].get<double>() / raw_best;
  }
  json parts = json::object();
  for (auto [name, times] : {std::pair{"pack", &pack_s}, std::pair{"list", &list_s},
                             std::pair{"expert", &expert_s}, std::pair{"sum", &sum_s}}) {
    MPI_Allreduce(MPI_IN_PLACE, times->data(), iters, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    parts[name] = *std::min_element(times->begin(), times->end()) * 1e6;
  }
  c["breakdown_best_us"] = parts;
  c["flat_traffic"] = TrafficJson(SumOverRanks(exchanges[2].second->traffic, MPI_COMM_WORLD));
  c["hierarchical_traffic"] =
      TrafficJson(SumOverRanks(exchanges[3].second->traffic, MPI_COMM_WORLD));
  c["low_latency_traffic"] =
      TrafficJson(SumOverRanks(exchanges[4].second->traffic, MPI_COMM_WORLD));
  return c;
}

int Worker(int max_tokens, const std::string& out) {
  int provided = 0;
  MPI_Init_thread(nullptr, nullptr, MPI_THREAD_MULTIPLE, &provided);
  int rank = 0, size = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  if (size < 2 || size % 2 != 0) {
    if (rank == 0) std::fprintf(stderr, "bench_dispatch needs an even number of ranks\n");
    MPI_Finalize();
    return 2;
  }
  TopologySpec spec;
  spec.supernodes.assign(2, {{NodeSpec{size / 2, ""}}});
  const Topology topology = *Topology::Build(spec, {size / 2, size / 2, {}});
  const std::vector<Model> models = {{"v4-mini", 768, 32}, {"deepseek-v4-flash", 4096, 256}};
  json cases = json::array();
  if (rank == 0) {
    std::printf("np %d (%d attention + %d expert ranks), %s\n", size, size / 2, size / 2,
                topology.Describe().c_str());
    std::printf("%-18s %6s %4s %9s %9s %9s %9s %9s %9s %7s %7s %7s %7s %8s\n", "model", "tokens",
                "eng", "engine", "raw", "bulk", "hier", "lowlat", "whole/raw", "pack", "list",
                "expert", "sum", "x-SN msg");
  }
  for (const Model& model : models) {
    for (int tokens = 1; tokens <= max_tokens; tokens *= 4) {
      json c = RunCase(topology, model, tokens);
      if (rank == 0) {
        const char* inter = "inter_supernode";
        const json& parts = c["breakdown_best_us"];
        std::printf(
            "%-18s %6d %4s %9.1f %9.1f %9.1f %9.1f %9.1f %9.2f %7.1f %7.1f %7.1f %7.1f "
            "%3lld/%-3lld\n",
            model.name.c_str(), tokens, c["engine_protocol"] == "bulk" ? "bulk" : "ll",
            c["engine"]["best_us"].get<double>(), c["raw_alltoallv"]["best_us"].get<double>(),
            c["bulk_flat"]["best_us"].get<double>(),
            c["bulk_hierarchical"]["best_us"].get<double>(),
            c["low_latency"]["best_us"].get<double>(), c["whole_over_raw"]["best"].get<double>(),
            parts["pack"].get<double>(), parts["list"].get<double>(), parts["expert"].get<double>(),
            parts["sum"].get<double>(), c["flat_traffic"][inter]["messages"].get<long long>(),
            c["hierarchical_traffic"][inter]["messages"].get<long long>());
        std::fflush(stdout);
      }
      cases.push_back(std::move(c));
    }
  }
  if (rank == 0) {
    const unsigned cores = std::thread::hardware_concurrency();
    json run = {{"np", size},
                {"attention_ranks", size / 2},
                {"expert_ranks", size / 2},
                {"oversubscribed", size > static_cast<int>(cores)},
                {"topology", topology.Describe()},
                {"cases", cases}};
    json result = {{"machine", MachineJson()}, {"notes", kNotes}, {"runs", json::array({run})}};
    std::ofstream(out) << result.dump(2) << "\n";
  }
  MPI_Finalize();
  return 0;
}

// ---- The launcher: one mpirun per rank count, results merged. ----

int Launcher(const std::vector<int>& nps, int max_tokens, const std::filesystem::path& out) {
  const std::string self = std::filesystem::read_symlink("/proc/self/exe").string();
  // Containers often run as root, which Open MPI refuses without this flag.
  const std::string flags =
      absl::StrCat("--oversubscribe", geteuid() == 0 ? " --allow-run-as-root" : "");
  json result;
  for (int np : nps) {
    const std::filesystem::path part =
        std::filesystem::temp_directory_path() / absl::StrCat("bench_dispatch_np", np, ".json");
    const std::string command =
        absl::StrCat("mpirun ", flags, " -np ", np, " '", self, "' --max-tokens ", max_tokens,
                     " --out '", part.string(), "'");
    std::printf("== %s\n", command.c_str());
    std::fflush(stdout);
    if (std::system(command.c_str()) != 0) {
      std::fprintf(stderr, "bench_dispatch: mpirun -np %d failed\n", np);
      return 1;
    }
    std::ifstream in(part);
    json part_result = json::parse(in);
    if (result.empty()) {
      result = part_result;
      result["machine"]["mpirun_flags"] = flags;
    } else {
      result["runs"].push_back(part_result["runs"][0]);
    }
    std::filesystem::remove(part);
  }
  std::filesystem::create_directories(out.parent_path());
  std::ofstream(out) << result.dump(2) << "\n";
  std::printf("wrote %s\n", out.string().c_str());
  return 0;
}

int Main(int argc, char** argv) {
  std::vector<int> nps = {2, 4};
  int max_tokens = 4096;
  std::filesystem::path out = bench::SourceRoot() / "bench/results/dispatch.json";
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (i + 1 < argc && arg == "--np") {
      nps.clear();
      for (absl::string_view n : absl::StrSplit(argv[++i], ',')) {
        int np = 0;
        if (!absl::SimpleAtoi(n, &np) || np < 2) {
          std::fprintf(stderr, "--np: expected even rank counts >= 2, got \"%s\"\n", argv[i]);
          return 2;
        }
        nps.push_back(np);
      }
    } else if (i + 1 < argc && arg == "--max-tokens") {
      max_tokens = std::max(1, std::atoi(argv[++i]));
    } else if (i + 1 < argc && arg == "--out") {
      out = argv[++i];
    } else {
      std::fprintf(stderr, "usage: %s [--np 2,4] [--max-tokens N] [--out PATH]\n", argv[0]);
      return 2;
    }
  }
  // Under mpirun (Open MPI sets this), run as a rank; otherwise launch the runs.
  if (std::getenv("OMPI_COMM_WORLD_SIZE") != nullptr) return Worker(max_tokens, out);
  return Launcher(nps, max_tokens, out);
}

}  // namespace
}  // namespace dsv4

int main(int argc, char** argv) { return dsv4::Main(argc, argv); }
