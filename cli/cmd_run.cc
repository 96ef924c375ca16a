// dsv4 run: the single-process forward pass on a checkpoint — logits of a prompt (prefill,
// or prefill then token-by-token decode), sampling, throughput and memory figures.
#include <chrono>
#include <filesystem>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "attention_node/model.h"
#include "cli/cli_util.h"
#include "cli/commands.h"
#include "cli/common_flags.h"
#include "core/cluster_config.h"
#include "core/kv_accounting.h"
#include "core/model_config.h"
#include "core/npy.h"
#include "core/parallel.h"
#include "core/safetensors.h"
#include "core/sampling.h"
#include "core/status_macros.h"
#include "core/tokenizer.h"
#include "core/units.h"
#include "engram_store/client.h"
#include "expert_node/in_process_executor.h"

ABSL_FLAG(std::string, checkpoint, "", "checkpoint directory (config.json and safetensors)");
ABSL_FLAG(std::string, tokens, "", "prompt token ids, comma-separated (e.g. 1,2,3)");
ABSL_FLAG(std::string, prompt, "",
          "prompt text, encoded with the checkpoint's tokenizer.json (instead of --tokens)");
ABSL_FLAG(std::string, logits_out, "",
          "write the prompt's logits, float32 [T, vocab], to this .npy file");
ABSL_FLAG(int64_t, decode_from, 0,
          "prefill this many prompt tokens, then decode the rest one at a time (0: one prefill)");
ABSL_FLAG(int64_t, generate, 0, "sample this many tokens after the prompt");
ABSL_FLAG(int64_t, max_seq_len, 0,
          "longest sequence accepted (0: the config's max_position_embeddings)");
ABSL_FLAG(bool, mtp, true, "load (and validate) the MTP block; it never runs here");
ABSL_FLAG(std::string, kv_report, "",
          "configs (paths or preset names, comma-separated) to report KV state for, from the "
          "config alone; works without --checkpoint");
ABSL_FLAG(int64_t, kv_context, 1 << 20, "context length for --kv_report");
ABSL_FLAG(int32_t, threads, 0, "kernel threads; 0 (default): every core this process may run on");
ABSL_FLAG(std::vector<std::string>, engram_servers, {},
          "Engram memory nodes (host:port, comma-separated, in shard-plan order) to look table "
          "rows up on instead of reading them from the checkpoint");
ABSL_FLAG(int32_t, engram_replication, 1, "copies of each Engram shard on --engram_servers");
ABSL_FLAG(std::string, engram_tls_ca, "",
          "PEM CA (or the self-signed certificate) to trust when --engram_servers serve TLS");
ABSL_FLAG(std::string, engram_token_file, "",
          "file whose first line is the bearer token --engram_servers require");

namespace dsv4::cli {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point since) {
  return std::chrono::duration<double>(Clock::now() - since).count();
}

absl::StatusOr<ModelConfig> LoadConfigByName(const std::string& name) {
  if (name.find('/') == std::string::npos && name.find(".json") == std::string::npos) {
    ASSIGN_OR_RETURN(std::string path, FindProjectFile("models/" + name + "/config.json"));
    return LoadModelConfig(path);
  }
  return LoadModelConfig(name);
}

std::string PerToken(double bytes) { return absl::StrFormat("%.1f B/token", bytes); }

// KV figures of one config in the three layouts; with `vs_v32`, the ratio to
// DeepSeek-V3.2's cache at `context` tokens (the published V4 comparison).
void PrintKvReport(const ModelConfig& config, const std::string& name, int64_t context,
                   bool vs_v32) {
  const KvCost f32 = ModelKvCost(config, {KvLayout::kRuntimeF32});
  const KvCost bf16 = ModelKvCost(config, {KvLayout::kReferenceBf16});
  const KvCost prod = ModelKvCost(config, {KvLayout::kProduction});
  const KvCost prod_scaled = ModelKvCost(config, {KvLayout::kProduction, true});
  std::cout << absl::StrFormat(
      "kv %s: growth %s (runtime fp32), %s (reference bf16), %s (production FP8/FP4; %s with "
      "KV-entry scales)\n",
      name, PerToken(f32.bytes_per_token), PerToken(bf16.bytes_per_token),
      PerToken(prod.bytes_per_token), PerToken(prod_scaled.bytes_per_token));
  std::cout << absl::StrFormat(
      "kv %s: fixed per sequence: windows %s (fp32) / %s (bf16) / %s (production), "
      "compressor states %s (fp32)\n",
      name, FormatBytes(f32.window_bytes), FormatBytes(bf16.window_bytes),
      FormatBytes(prod.window_bytes), FormatBytes(f32.compressor_state_bytes));
  std::cout << absl::StrFormat(
      "kv %s at %d tokens: %s (production, fixed costs included) = %s per sequence\n", name,
      context, PerToken(prod.PerTokenAt(context)), FormatBytes(prod.PerTokenAt(context) * context));
  if (!vs_v32) return;
  absl::StatusOr<ModelConfig> v3 = LoadConfigByName("deepseek-v3");
  if (v3.ok()) {
    const double v32 = V32KvBytesPerToken(*v3);
    // The V4 report compares with V3.2 (10% for Pro, 7% for Flash); V4.1's states 890 B/token.
    std::cout << absl::StrFormat(
        "kv %s vs DeepSeek-V3.2 (FP8 MLA cache + FP8 indexer keys, %s): %.1f%% "
        "(%.1f%% with KV-entry scales)%s\n",
        name, PerToken(v32), 100 * prod.PerTokenAt(context) / v32,
        100 * prod_scaled.PerTokenAt(context) / v32,
        config.is_v41() ? "; published: 890 B/token of compressed KV"
                        : "; published: Pro 10%, Flash 7%");
  }
}

absl::Status KvReportOnly() {
  for (absl::string_view name :
       absl::StrSplit(absl::GetFlag(FLAGS_kv_report), ',', absl::SkipWhitespace())) {
    ASSIGN_OR_RETURN(ModelConfig config, LoadConfigByName(std::string(name)));
    if (!config.is_v4()) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, ": not a deepseek_v4 or deepseek_v41 config"));
    }
    PrintKvReport(config, std::string(name), absl::GetFlag(FLAGS_kv_context), true);
  }
  return absl::OkStatus();
}

absl::Status Run() {
  if (absl::GetFlag(FLAGS_threads) < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--threads must be ≥ 0, got ", absl::GetFlag(FLAGS_threads)));
  }
  if (absl::GetFlag(FLAGS_threads) > 0) SetThreads(absl::GetFlag(FLAGS_threads));
  const std::string dir = absl::GetFlag(FLAGS_checkpoint);
  if (dir.empty()) {
    if (!absl::GetFlag(FLAGS_kv_report).empty()) return KvReportOnly();
    return absl::InvalidArgumentError("--checkpoint DIR is required");
  }
  // The checkpoint's tokenizer, when it ships one: encodes --prompt, decodes the samples.
  const bool has_tokenizer = std::filesystem::exists(dir + "/tokenizer.json");
  std::optional<Tokenizer> tokenizer;
  if (has_tokenizer) {
    ASSIGN_OR_RETURN(tokenizer, Tokenizer::LoadFromDir(dir));
  }
  const std::string prompt_text = absl::GetFlag(FLAGS_prompt);
  if (!prompt_text.empty() && !absl::GetFlag(FLAGS_tokens).empty())
    return absl::InvalidArgumentError("give --prompt TEXT or --tokens IDS, not both");
  if (!prompt_text.empty() && !tokenizer)
    return absl::InvalidArgumentError(dir + " has no tokenizer.json: give --tokens IDS");
  std::vector<int32_t> tokens;
  if (prompt_text.empty()) {
    ASSIGN_OR_RETURN(std::vector<std::vector<int32_t>> sequences,
                     ParseTokenSequences(absl::GetFlag(FLAGS_tokens), "--tokens"));
    if (sequences.size() != 1) {
      return absl::InvalidArgumentError("--tokens: give one sequence (no ';')");
    }
    tokens = std::move(sequences[0]);
  } else {
    tokens = tokenizer->Encode(prompt_text);
  }
  const int64_t prompt = static_cast<int64_t>(tokens.size());
  const int64_t decode_from = absl::GetFlag(FLAGS_decode_from);
  const int64_t generate = absl::GetFlag(FLAGS_generate);
  if (decode_from < 0 || decode_from > prompt) {
    return absl::InvalidArgumentError(absl::StrCat("--decode_from must be in [0, ", prompt,
                                                   "] (the prompt length), got ", decode_from));
  }
  if (generate < 0) return absl::InvalidArgumentError("--generate must be ≥ 0");
  SamplingParams sampling{static_cast<float>(absl::GetFlag(FLAGS_temperature)),
                          static_cast<float>(absl::GetFlag(FLAGS_top_p)),
                          absl::GetFlag(FLAGS_top_k), absl::GetFlag(FLAGS_seed)};
  RETURN_IF_ERROR(ValidateSamplingParams(sampling));

  const Clock::time_point load_start = Clock::now();
  ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfigFromDir(dir));
  ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> checkpoint, Checkpoint::Open(dir));
  ModelOptions options;
  options.max_seq_len = absl::GetFlag(FLAGS_max_seq_len);
  options.load_mtp = absl::GetFlag(FLAGS_mtp);
  EngramSpec engram_spec;
  engram_spec.servers = absl::GetFlag(FLAGS_engram_servers);
  engram_spec.replication = absl::GetFlag(FLAGS_engram_replication);
  engram_spec.tls_ca = absl::GetFlag(FLAGS_engram_tls_ca);
  engram_spec.token_file = absl::GetFlag(FLAGS_engram_token_file);
  ASSIGN_OR_RETURN(std::unique_ptr<engram::EngramClient> engram,
                   engram::ConnectEngram(config, engram_spec));
  options.engram_rows = engram.get();
  ASSIGN_OR_RETURN(std::unique_ptr<Model> model, Model::Load(config, checkpoint.get(), options));
  ASSIGN_OR_RETURN(std::unique_ptr<InProcessExecutor> experts,
                   InProcessExecutor::Load(config, checkpoint.get(), options.load_mtp));
  const Model& m = *model;
  const int64_t total = prompt + std::max<int64_t>(generate - 1, 0);
  if (m.max_seq_len() > 0 && total > m.max_seq_len()) {
    return absl::OutOfRangeError(absl::StrCat("the prompt (", prompt, " tokens) and ", generate,
                                              " generated tokens exceed the maximum of ",
                                              m.max_seq_len(), " tokens"));
  }
  std::cerr << absl::StrFormat("loaded %s in %.2f s\n", dir, Seconds(load_start));

  // The prompt: one prefill of the first `prefill` tokens, then one token per step.
  const int64_t vocab = config.vocab_size;
  const int64_t prefill = decode_from > 0 ? decode_from : prompt;
  const bool want_logits = !absl::GetFlag(FLAGS_logits_out).empty();
  const LogitRows rows = want_logits ? LogitRows::kAll : LogitRows::kLastPerSequence;
  SequenceState state = m.NewSequence();
  std::vector<float> logits;  // [prompt, vocab] when written out, else the last row
  auto step = [&](absl::Span<const int32_t> ids) -> absl::Status {
    StepInput in{&state, ids};
    ASSIGN_OR_RETURN(Tensor out, m.Forward({&in, 1}, *experts, rows));
    if (!want_logits) logits.clear();
    logits.insert(logits.end(), out.data(), out.data() + out.numel());
    return absl::OkStatus();
  };
  Clock::time_point start = Clock::now();
  RETURN_IF_ERROR(step(absl::MakeConstSpan(tokens).first(prefill)));
  const double prefill_seconds = Seconds(start);
  start = Clock::now();
  for (int64_t t = prefill; t < prompt; ++t) {
    RETURN_IF_ERROR(step(absl::MakeConstSpan(tokens).subspan(t, 1)));
  }
  if (want_logits) {
    RETURN_IF_ERROR(WriteNpyF32(absl::GetFlag(FLAGS_logits_out), {prompt, vocab}, logits.data()));
  }
  // Sampling: each new token comes from the previous position's logits.
  std::vector<int32_t> generated;
  Sampler sampler(sampling);
  for (int64_t i = 0; i < generate; ++i) {
    const int32_t next = sampler.Sample(absl::MakeConstSpan(logits).last(vocab));
    generated.push_back(next);
    if (i + 1 < generate) {
      RETURN_IF_ERROR(step({&generated.back(), 1}));
    }
  }
  const double decode_seconds = Seconds(start);
  const int64_t decode_steps = (prompt - prefill) + std::max<int64_t>(generate - 1, 0);

  if (generate > 0) {
    std::cout << "generated: " << absl::StrJoin(generated, ",") << "\n";
    if (tokenizer) std::cout << "text: " << tokenizer->Decode(generated) << "\n";
  }
  std::cout << absl::StrFormat("prefill: %d tokens in %.3f s (%.1f tokens/s)\n", prefill,
                               prefill_seconds, prefill / prefill_seconds);
  if (decode_steps > 0) {
    std::cout << absl::StrFormat("decode: %d tokens in %.3f s (%.1f tokens/s)\n", decode_steps,
                                 decode_seconds, decode_steps / decode_seconds);
  }
  WeightBytes weights = m.weight_bytes();
  weights += experts->weight_bytes();
  const auto pair = [](const WeightBytes& w) {
    return absl::StrFormat("%s (%s)", FormatBytes(w.resident), FormatBytes(w.released));
  };
  std::cout << absl::StrFormat(
      "memory: weights %s resident, %s as released (%.2fx); resident (released): attention "
      "side %s incl. MTP %s, routed experts %s\n",
      FormatBytes(weights.resident), FormatBytes(weights.released),
      static_cast<double>(weights.resident) / static_cast<double>(weights.released),
      pair(m.weight_bytes()), pair(m.mtp_weight_bytes()), pair(experts->weight_bytes()));
  std::cout << absl::StrFormat("memory: KV state %s after %d tokens (fp32) = %s amortised\n",
                               FormatBytes(state.bytes()), state.position(),
                               PerToken(static_cast<double>(state.bytes()) / state.position()));
  PrintKvReport(config, "this model", absl::GetFlag(FLAGS_kv_context), false);
  if (engram) std::cout << engram::EngramReport(*engram) << "\n";
  if (!absl::GetFlag(FLAGS_kv_report).empty()) return KvReportOnly();
  return absl::OkStatus();
}

}  // namespace

int RunMain(int argc, char** argv) {
  const std::vector<std::string> positional = ParseFlags(
      argc, argv,
      "dsv4 run --checkpoint DIR --tokens 1,2,3 [--logits-out FILE.npy] [--decode-from K]\n"
      "dsv4 run --checkpoint DIR --prompt \"text\" --generate N [--temperature T ...]\n"
      "         [--generate N --temperature T --top-p P --top-k K --seed S]\n"
      "         [--engram-servers HOST:PORT,... --engram-replication R\n"
      "          --engram-tls-ca CA.pem --engram-token-file FILE]\n"
      "dsv4 run --kv-report deepseek-v4-pro,deepseek-v4-flash [--kv-context N]\n\n"
      "Runs the DeepSeek-V4 or V4.1 forward pass in this process (fp32, exact dequantisation): "
      "the\n"
      "prompt's logits from position 0 (one prefill, or a prefill of K tokens then one token at\n"
      "a time), optional sampling, tokens/s for prefill and decode, resident weight bytes and\n"
      "KV-state bytes per token.",
      "cmd_run.cc", {"seed", "temperature", "top_p", "top_k"});
  if (!positional.empty()) {
    return ExitCode(absl::InvalidArgumentError("unexpected argument: " + positional[0]), "run");
  }
  return ExitCode(Run(), "run");
}

}  // namespace dsv4::cli
