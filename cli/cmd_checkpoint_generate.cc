// dsv4 checkpoint generate: a synthetic, seeded checkpoint in the official layout.
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>

#include "absl/flags/flag.h"
#include "absl/strings/str_format.h"
#include "cli/cli_util.h"
#include "cli/commands.h"
#include "cli/common_flags.h"
#include "core/checkpoint_generator.h"
#include "core/checkpoint_layout.h"
#include "core/model_config.h"
#include "core/progress.h"
#include "core/status_macros.h"
#include "core/units.h"

ABSL_FLAG(std::string, preset, "",
          "model preset under models/ (v4-tiny, v4-mini, deepseek-v4-flash, ...)");
ABSL_FLAG(std::string, config, "", "path of a config.json to use instead of --preset");
ABSL_FLAG(std::string, out, "", "output directory (created if missing)");
ABSL_FLAG(uint64_t, shard_mb, 256, "largest shard file, in MiB");

namespace dsv4::cli {
namespace {

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError("cannot read " + path);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

absl::Status Generate() {
  std::string config_path = absl::GetFlag(FLAGS_config);
  const std::string preset = absl::GetFlag(FLAGS_preset);
  if (config_path.empty() == preset.empty())
    return absl::InvalidArgumentError("give exactly one of --preset NAME or --config FILE");
  if (absl::GetFlag(FLAGS_out).empty()) return absl::InvalidArgumentError("--out DIR is required");
  if (!preset.empty()) {
    absl::StatusOr<std::string> found = FindProjectFile("models/" + preset + "/config.json");
    if (!found.ok())
      return absl::NotFoundError("unknown preset '" + preset +
                                 "': " + std::string(found.status().message()));
    config_path = *found;
  }
  ASSIGN_OR_RETURN(std::string text, ReadFile(config_path));
  ASSIGN_OR_RETURN(ModelConfig config, ParseModelConfig(text, config_path));
  if (!config.is_v4())
    return absl::InvalidArgumentError(
        config_path + ": model_type '" + config.model_type +
        "' has no runnable checkpoint layout (deepseek_v4 or deepseek_v41 only)");

  GenerateOptions options;
  options.seed = absl::GetFlag(FLAGS_seed);
  options.max_shard_bytes = absl::GetFlag(FLAGS_shard_mb) << 20;
  std::unique_ptr<ProgressBar> progress;
  options.progress = [&](uint64_t done, uint64_t total) {
    if (!progress) progress = std::make_unique<ProgressBar>("generating", total >> 20, "MiB");
    progress->Update(done >> 20);
  };
  // A tokenizer.json beside the config (the presets ship one) belongs in the checkpoint.
  const std::filesystem::path tokenizer =
      std::filesystem::path(config_path).parent_path() / "tokenizer.json";
  if (std::filesystem::exists(tokenizer)) options.tokenizer_path = tokenizer.string();
  const std::string out = absl::GetFlag(FLAGS_out);
  RETURN_IF_ERROR(GenerateCheckpoint(config, text, out, options));
  if (progress) progress->Finish();
  const ParameterCount params = CountParameters(config);
  std::cout << absl::StrFormat("wrote %s: %s parameters, seed %d\n", out, FormatCount(params.total),
                               options.seed);
  return absl::OkStatus();
}

}  // namespace

int CheckpointGenerateMain(int argc, char** argv) {
  const std::vector<std::string> args = ParseFlags(
      argc, argv,
      "dsv4 checkpoint generate --preset NAME --seed N --out DIR\n\n"
      "Writes a synthetic, seeded checkpoint in the official DeepSeek-V4 or V4.1 layout\n"
      "(config.json, sharded *.safetensors with model.safetensors.index.json; FP8\n"
      "block-scaled dense weights, FP4 routed experts, BF16/F32 where the release has them;\n"
      "V4.1: FP8 Engram tables with per-32 E8M0 scales and DSpark stages), plus the\n"
      "tokenizer.json found beside the config (required for Engram models).",
      "cmd_checkpoint_generate.cc", {"seed"});
  if (!args.empty())
    return ExitCode(absl::InvalidArgumentError("unexpected argument '" + args[0] + "'"),
                    "checkpoint generate");
  return ExitCode(Generate(), "checkpoint generate");
}

}  // namespace dsv4::cli
