// Forward-pass benchmark on v4-mini (or --preset v41-mini), on 1 thread and on --threads threads:
// prefill and decode tokens/s for batches of 1, 8 and 64 sequences, against two ceilings measured
// in the same run at the same thread count (bench/limits.h):
//   (a) the decode roofline: streaming-read bandwidth ÷ bytes read per decode step, weights
//       counted in their released formats (the experts actually routed to are counted);
//   (b) the fp32 FMA peak of the widest vector unit, for prefill FLOP/s.
// Targets (issue 12): batch-1 decode ≥ 80% of its roofline; prefill ≥ 60% of the FMA peak.
//
//   bench_forward [--preset v4-mini|v41-mini] [--checkpoint DIR] [--prompt 256] [--threads T]
//                 [--out bench/results/forward.json (v4-mini), forward-<preset>.json (others)]
//
// Without --checkpoint it generates a seeded checkpoint of the preset in a temporary
// directory.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "attention_node/model.h"
#include "bench/bench_util.h"
#include "bench/limits.h"
#include "core/checkpoint_generator.h"
#include "core/engram_rows.h"
#include "core/model_config.h"
#include "core/parallel.h"
#include "core/safetensors.h"
#include "expert_node/in_process_executor.h"
#include "nlohmann/json.hpp"

namespace dsv4 {
namespace {

using bench::Clock;
using bench::SecondsSince;
using nlohmann::json;

// Forwards to the in-process executor, timing it and counting the bytes of the distinct
// experts each call reads.
class CountingExecutor : public ExpertExecutor {
 public:
  CountingExecutor(ExpertExecutor& inner, int64_t expert_bytes)
      : inner_(inner), expert_bytes_(expert_bytes) {}
  absl::Status Run(int layer, const Tensor& x, absl::Span<const int32_t> expert_ids,
                   absl::Span<const float> weights, int k, Tensor* out) override {
    bytes_ += static_cast<int64_t>(std::set<int32_t>(expert_ids.begin(), expert_ids.end()).size()) *
              expert_bytes_;
    const auto t0 = Clock::now();
    absl::Status s = inner_.Run(layer, x, expert_ids, weights, k, out);
    seconds_ += SecondsSince(t0);
    return s;
  }
  void Reset() {
    bytes_ = 0;
    seconds_ = 0;
  }
  int64_t bytes() const { return bytes_; }
  double seconds() const { return seconds_; }

 private:
  ExpertExecutor& inner_;
  int64_t expert_bytes_;
  int64_t bytes_ = 0;
  double seconds_ = 0;
};

// Multiply-adds of one token's projections, shared and routed experts (the GEMM work),
// summed over the main layers. V4: every compressed layer compresses, CSA layers (m = 4)
// index with their own compressor. V4.1: kv sources compress (and project indexer keys
// once per entry), index sources project indexer queries, Engram layers run wkv.
double MatmulMacsPerToken(const ModelConfig& c) {
  const double d = c.hidden_size, hd = c.num_attention_heads * c.head_dim, q = c.q_lora_rank;
  const double gr = c.o_groups * c.o_lora_rank, f = c.moe_intermediate_size;
  double macs = 0;
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    macs += q * d + hd * q + c.head_dim * d + hd / c.o_groups * gr + d * gr;  // attention
    macs += 2.0 * c.mix_dim() * c.hc_mult * d + c.n_routed_experts * d;       // mHC, gate
    macs += 3 * f * d * (1 + c.num_experts_per_tok);                          // experts
    const int m = c.ratio(l);
    const double index_query = c.index_n_heads * c.index_head_dim * q + c.index_n_heads * d;
    if (c.is_v41()) {
      if (c.is_kv_source(l)) {
        macs += (m > 1 ? 2.0 : 1.0) * c.head_dim * d +
                static_cast<double>(c.index_head_dim) * c.head_dim / m;
      }
      if (c.is_index_source(l)) macs += index_query;
      if (std::count(c.engram.layer_ids.begin(), c.engram.layer_ids.end(), l) > 0) {
        macs += (c.hc_mult + 1) * d * c.engram.columns() * c.engram.head_dim;
      }
      continue;
    }
    if (m > 0) macs += 2.0 * (m == 4 ? 2 : 1) * c.head_dim * d;        // compressor
    if (m == 4) macs += index_query + 2.0 * 2 * c.index_head_dim * d;  // indexer
  }
  return macs;
}

// Attention multiply-adds of a query at position t (scores and weighted sum over its
// candidates, plus the indexer's scoring when it has to choose), and the bytes of KV state
// it reads.
struct AttentionCost {
  double macs = 0;
  double kv_bytes = 0;
};
AttentionCost AttentionAt(const ModelConfig& c, int64_t t) {
  AttentionCost cost;
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    const int m = c.ratio(l);
    double rows = std::min<int64_t>(t + 1, c.sliding_window);
    const int64_t visible = m > 0 ? (t + 1) / m : 0;
    const bool selects = c.is_v41() || m == 4;
    if (m > 0) rows += selects ? std::min<int64_t>(visible, c.index_topk) : visible;
    cost.macs += 2.0 * c.num_attention_heads * c.head_dim * rows;
    cost.kv_bytes += 4.0 * c.head_dim * rows;
    const bool scores = c.is_v41() ? c.is_index_source(l) : m == 4;
    if (scores && visible > c.index_topk) {
      // V4.1's Reindex layers score only inside the candidate pool.
      const int64_t scored =
          c.uses_candidates(l) ? std::min(visible, c.candidate_topk_blocks * c.candidate_block_size)
                               : visible;
      cost.macs += static_cast<double>(c.index_n_heads) * c.index_head_dim * scored;
      cost.kv_bytes += 4.0 * c.index_head_dim * scored;
    }
  }
  return cost;
}

std::vector<int32_t> Prompt(int64_t count, int64_t vocab, uint64_t seed) {
  std::vector<int32_t> tokens(count);
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  for (int32_t& t : tokens) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    t = static_cast<int32_t>(x % static_cast<uint64_t>(vocab));
  }
  return tokens;
}

int Main(int argc, char** argv) {
  std::string checkpoint_dir, preset = "v4-mini";
  std::filesystem::path out;
  int64_t prompt = 256;
  int max_threads = AvailableCores();
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (i + 1 < argc && arg == "--checkpoint") {
      checkpoint_dir = argv[++i];
    } else if (i + 1 < argc && arg == "--preset") {
      preset = argv[++i];
    } else if (i + 1 < argc && arg == "--out") {
      out = argv[++i];
    } else if (i + 1 < argc && arg == "--prompt") {
      prompt = std::max(1, std::atoi(argv[++i]));
    } else if (i + 1 < argc && arg == "--threads") {
      max_threads = std::max(1, std::atoi(argv[++i]));
    } else {
      std::fprintf(stderr,
                   "usage: %s [--preset NAME] [--checkpoint DIR] [--prompt N] [--threads T] "
                   "[--out PATH]\n",
                   argv[0]);
      return 2;
    }
  }
  if (out.empty()) {
    out = bench::SourceRoot() / (preset == "v4-mini" ? "bench/results/forward.json"
                                                     : "bench/results/forward-" + preset + ".json");
  }
  std::vector<int> thread_counts = {1};
  if (max_threads > 1) thread_counts.push_back(max_threads);
  json result;
  result["machine"] = bench::MachineJson();
  json limits = json::array();
  std::map<int, std::pair<double, bench::Bandwidth>> limit;  // threads → (FMA peak, read)
  for (int threads : thread_counts) {
    const double peak = bench::FmaPeakGflops(threads);
    const bench::Bandwidth bw = bench::StreamReadBandwidth(threads);
    limit[threads] = {peak, bw};
    limits.push_back({{"threads", threads},
                      {"fma_peak_gflops", peak},
                      {"read_best_gb_per_s", bw.best_gbs},
                      {"read_median_gb_per_s", bw.median_gbs}});
    std::printf(
        "%d thread(s): FMA peak %.1f GFLOP/s (%s); streaming read %.1f GB/s (median %.1f)\n",
        threads, peak, bench::LimitsTargetName(), bw.best_gbs, bw.median_gbs);
  }
  result["limits"] = limits;

  std::filesystem::path temp;
  if (checkpoint_dir.empty()) {
    temp = std::filesystem::temp_directory_path() / ("dsv4-bench-forward-" + preset);
    checkpoint_dir = temp.string();
    const std::filesystem::path preset_dir = bench::SourceRoot() / "models" / preset;
    const std::string config_path = (preset_dir / "config.json").string();
    std::ifstream in(config_path);
    std::stringstream text;
    text << in.rdbuf();
    absl::StatusOr<ModelConfig> config = ParseModelConfig(text.str(), config_path);
    if (!config.ok()) {
      std::fprintf(stderr, "%s\n", std::string(config.status().message()).c_str());
      return 1;
    }
    std::printf("generating a %s checkpoint in %s ...\n", preset.c_str(), checkpoint_dir.c_str());
    GenerateOptions gen;
    gen.seed = 1;
    if (std::filesystem::exists(preset_dir / "tokenizer.json")) {
      gen.tokenizer_path = (preset_dir / "tokenizer.json").string();
    }
    if (absl::Status s = GenerateCheckpoint(*config, text.str(), checkpoint_dir, gen); !s.ok()) {
      std::fprintf(stderr, "%s\n", std::string(s.message()).c_str());
      return 1;
    }
  }
  absl::StatusOr<ModelConfig> config = LoadModelConfigFromDir(checkpoint_dir);
  absl::StatusOr<std::unique_ptr<Checkpoint>> checkpoint =
      config.ok() ? Checkpoint::Open(checkpoint_dir)
                  : absl::StatusOr<std::unique_ptr<Checkpoint>>(config.status());
  ModelOptions options;
  options.load_mtp = false;  // not used by the forward pass
  absl::StatusOr<std::unique_ptr<Model>> model =
      checkpoint.ok() ? Model::Load(*config, checkpoint->get(), options)
                      : absl::StatusOr<std::unique_ptr<Model>>(checkpoint.status());
  absl::StatusOr<std::unique_ptr<InProcessExecutor>> experts =
      model.ok() ? InProcessExecutor::Load(*config, checkpoint->get(), false)
                 : absl::StatusOr<std::unique_ptr<InProcessExecutor>>(model.status());
  if (!experts.ok()) {
    std::fprintf(stderr, "%s\n", std::string(experts.status().message()).c_str());
    return 1;
  }
  const ModelConfig& c = *config;
  const Model& m = **model;
  const int64_t d = c.hidden_size;
  // Bytes as released: what a native-precision engine reads.
  const WeightBytes model_bytes = m.weight_bytes();
  const WeightBytes expert_total = (*experts)->weight_bytes();
  const int64_t expert_bytes =
      expert_total.released / (int64_t{c.num_hidden_layers} * c.n_routed_experts);
  // Weights a decode step streams: everything on the attention side but the embedding
  // table (BF16) and hash tables (I64), one row each per token, plus the routed experts it
  // uses.
  const int64_t dense_bytes = model_bytes.released - c.vocab_size * d * 2 -
                              int64_t{c.num_hash_layers} * c.vocab_size * c.num_experts_per_tok * 8;
  // Engram rows each token reads (local tables here): (N−1)·K records per Engram layer.
  const int64_t engram_bytes_per_token =
      static_cast<int64_t>(c.engram.layer_ids.size()) * c.engram.columns() *
      (c.engram.enabled() ? EngramRecordBytes(c.engram.head_dim) : 0);
  CountingExecutor counting(**experts, expert_bytes);
  const double macs_per_token = MatmulMacsPerToken(c);
  result["model"] = {{"preset", preset},
                     {"checkpoint", temp.empty() ? checkpoint_dir : "generated, seed 1"},
                     {"engram_bytes_per_token", engram_bytes_per_token},
                     {"weights_released_bytes", model_bytes.released + expert_total.released},
                     {"weights_resident_bytes", model_bytes.resident + expert_total.resident},
                     {"attention_side_released_bytes", model_bytes.released},
                     {"routed_expert_released_bytes", expert_total.released},
                     {"dense_bytes_read_per_decode_step", dense_bytes},
                     {"matmul_flops_per_token", 2 * macs_per_token}};
  std::printf(
      "%s: %.3f GB weights as released, %.3f GB resident (attention side %.3f GB, "
      "experts %.3f GB released)\n\n",
      preset.c_str(), (model_bytes.released + expert_total.released) / 1e9,
      (model_bytes.resident + expert_total.resident) / 1e9, model_bytes.released / 1e9,
      expert_total.released / 1e9);
  std::printf("%7s %5s %8s %12s %9s %8s | %11s %12s %9s %11s %8s\n", "threads", "batch", "prompt",
              "prefill t/s", "GFLOP/s", "of peak", "decode t/s", "roofline t/s", "of roof",
              "compute t/s", "experts");

  json runs = json::array();
  for (const int threads : thread_counts) {
    SetThreads(threads);
    const double peak = limit[threads].first;
    const bench::Bandwidth bw = limit[threads].second;
    for (int batch : {1, 8, 64}) {
      const int decode_steps = batch == 1 ? 32 : batch == 8 ? 16 : 8;
      std::vector<SequenceState> states(batch, m.NewSequence());
      std::vector<std::vector<int32_t>> prompts;
      std::vector<StepInput> inputs;
      for (int i = 0; i < batch; ++i) prompts.push_back(Prompt(prompt, c.vocab_size, i + 1));
      for (int i = 0; i < batch; ++i) inputs.push_back({&states[i], prompts[i]});

      // Prefill: all sequences' prompts in one step.
      const bench::Stopwatch prefill_watch;
      absl::StatusOr<Tensor> logits = m.Forward(inputs, counting, LogitRows::kLastPerSequence);
      const double prefill_s = prefill_watch.wall(), prefill_cpu = prefill_watch.cpu();
      if (!logits.ok()) {
        std::fprintf(stderr, "%s\n", std::string(logits.status().message()).c_str());
        return 1;
      }
      double prefill_macs =
          batch * (prompt * macs_per_token + static_cast<double>(c.vocab_size) * d);
      for (int64_t t = 0; t < prompt; ++t) prefill_macs += batch * AttentionAt(c, t).macs;
      const double prefill_gflops = 2 * prefill_macs / prefill_s / 1e9;
      const double prefill_cpu_gflops = 2 * prefill_macs / prefill_cpu / 1e9;

      // Decode: one token per sequence per step.
      counting.Reset();
      std::vector<std::vector<int32_t>> next(batch);
      double kv_bytes = 0, decode_macs = 0;
      const bench::Stopwatch decode_watch;
      for (int s = 0; s < decode_steps; ++s) {
        inputs.clear();
        for (int i = 0; i < batch; ++i) {
          next[i] = {static_cast<int32_t>((s * 31 + i * 17) % c.vocab_size)};
          inputs.push_back({&states[i], next[i]});
          const AttentionCost cost = AttentionAt(c, states[i].position());
          kv_bytes += cost.kv_bytes;
          decode_macs += macs_per_token + static_cast<double>(c.vocab_size) * d + cost.macs;
        }
        logits = m.Forward(inputs, counting, LogitRows::kLastPerSequence);
        if (!logits.ok()) {
          std::fprintf(stderr, "%s\n", std::string(logits.status().message()).c_str());
          return 1;
        }
      }
      const double decode_s = decode_watch.wall(), decode_cpu = decode_watch.cpu();
      const double decode_tps = batch * decode_steps / decode_s;
      const double decode_cpu_tps = batch * decode_steps / decode_cpu;
      const double bytes_per_step = dense_bytes + batch * (d * 2.0 + engram_bytes_per_token) +
                                    (counting.bytes() + kv_bytes) / decode_steps;
      const double roofline_tps = batch * bw.best_gbs * 1e9 / bytes_per_step;
      // At larger batches a step is bound by arithmetic rather than by reading weights.
      const double compute_ceiling_tps = peak * 1e9 / (2 * decode_macs / (batch * decode_steps));
      json run = {
          {"threads", threads},
          {"batch", batch},
          {"prompt_tokens", prompt},
          {"prefill",
           {{"tokens", batch * prompt},
            {"seconds", prefill_s},
            {"cpu_seconds", prefill_cpu},
            {"tokens_per_s", batch * prompt / prefill_s},
            {"tokens_per_cpu_s", batch * prompt / prefill_cpu},
            {"gflop", 2 * prefill_macs / 1e9},
            {"gflops", prefill_gflops},
            {"gflops_per_cpu_s", prefill_cpu_gflops},
            {"fraction_of_fma_peak", prefill_gflops / peak},
            {"fraction_of_fma_peak_cpu_time", prefill_cpu_gflops / peak},
            {"target_fraction", 0.6},
            {"target_met", prefill_gflops / peak >= 0.6}}},
          {"decode",
           {{"steps", decode_steps},
            {"seconds", decode_s},
            {"cpu_seconds", decode_cpu},
            {"tokens_per_s", decode_tps},
            {"tokens_per_cpu_s", decode_cpu_tps},
            {"bytes_per_step",
             {{"dense_weights", dense_bytes + batch * d * 2},
              {"engram_rows", batch * engram_bytes_per_token},
              {"routed_experts", counting.bytes() / decode_steps},
              {"kv_state", kv_bytes / decode_steps}}},
            {"roofline_tokens_per_s", roofline_tps},
            {"fraction_of_roofline", decode_tps / roofline_tps},
            {"fraction_of_roofline_cpu_time", decode_cpu_tps / roofline_tps},
            {"compute_ceiling_tokens_per_s", compute_ceiling_tps},
            {"fraction_of_min_ceiling", decode_tps / std::min(roofline_tps, compute_ceiling_tps)},
            {"expert_time_fraction", counting.seconds() / decode_s}}},
      };
      if (batch == 1) {
        run["decode"]["target_fraction"] = 0.8;
        run["decode"]["target_met"] = decode_tps / roofline_tps >= 0.8;
      }
      runs.push_back(run);
      std::printf(
          "%7d %5d %8lld %12.1f %9.1f %7.1f%% | %11.1f %12.1f %8.1f%% %11.1f %7.0f%%   "
          "(per CPU second: %.1f%% / %.1f%%)\n",
          threads, batch, static_cast<long long>(prompt), batch * prompt / prefill_s,
          prefill_gflops, 100 * prefill_gflops / peak, decode_tps, roofline_tps,
          100 * decode_tps / roofline_tps, compute_ceiling_tps, 100 * counting.seconds() / decode_s,
          100 * prefill_cpu_gflops / peak, 100 * decode_cpu_tps / roofline_tps);
    }
  }
  result["runs"] = runs;
  std::ifstream loadavg("/proc/loadavg");
  std::string load;
  std::getline(loadavg, load);
  result["machine"]["loadavg_at_end"] = load;
  result["notes"] =
      "Rates are per wall second; *_cpu_* figures divide by this process's CPU time, which "
      "discounts time lost to other processes on a shared machine (see loadavg); CPU time sums "
      "over threads, so with several threads it is only a rough hint. Weights stay in their "
      "released formats (FP8/FP4/BF16) and are dequantised in registers (exact numerics); "
      "bytes count them as released. Prefill GFLOP/s counts "
      "the projections, shared and routed experts, attention scores/values and indexer "
      "scoring, and the head of the last token per sequence. The decode roofline is the "
      "best streaming-read bandwidth over the bytes one step reads: all attention-side "
      "weights but the embedding and hash tables, the distinct routed experts used, and the "
      "KV rows each query reads (window, visible or selected entries, scored indexer keys).";
  if (!temp.empty()) std::filesystem::remove_all(temp);
  std::filesystem::create_directories(out.parent_path());
  std::ofstream(out) << result.dump(2) << "\n";
  std::printf("\nwrote %s\n", out.string().c_str());
  return 0;
}

}  // namespace
}  // namespace dsv4

int main(int argc, char** argv) { return dsv4::Main(argc, argv); }
