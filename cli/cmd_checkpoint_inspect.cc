// dsv4 checkpoint inspect: summary and verification of a checkpoint directory.
#include <cmath>
#include <iostream>
#include <map>
#include <set>

#include "absl/flags/flag.h"
#include "absl/strings/str_format.h"
#include "cli/cli_util.h"
#include "cli/commands.h"
#include "core/checkpoint_layout.h"
#include "core/engram_rows.h"
#include "core/model_config.h"
#include "core/progress.h"
#include "core/safetensors.h"
#include "core/status_macros.h"
#include "core/units.h"

ABSL_FLAG(bool, verify_values, false,
          "also dequantise every tensor and check that all values are finite");

namespace dsv4::cli {
namespace {

std::string LayerSchedule(const ModelConfig& c) {
  if (c.is_v41()) {  // CSA2 roles: Full (kv source), Reindex (index source), Reuse
    int window = 0, full = 0, reindex = 0, reuse = 0;
    for (int i = 0; i < c.num_hidden_layers; ++i) {
      if (c.ratio(i) == 0) {
        ++window;
      } else if (c.is_kv_source(i)) {
        ++full;
      } else if (c.is_index_source(i)) {
        ++reindex;
      } else {
        ++reuse;
      }
    }
    return absl::StrFormat(
        "%d layers (%d window-only, CSA2: %d Full, %d Reindex, %d Reuse), %d Engram, %d DSpark "
        "stages (not evaluated)",
        c.num_hidden_layers, window, full, reindex, reuse, c.engram.layer_ids.size(),
        c.num_nextn_predict_layers);
  }
  int window = 0, csa = 0, hca = 0;
  for (int i = 0; i < c.num_hidden_layers; ++i) {
    if (c.ratio(i) == 0)
      ++window;
    else if (c.is_csa(i))
      ++csa;
    else
      ++hca;
  }
  return absl::StrFormat("%d layers (%d window-only, %d CSA, %d HCA), %d hash-routed, %d MTP",
                         c.num_hidden_layers, window, csa, hca, c.num_hash_layers,
                         c.num_nextn_predict_layers);
}

// Dequantises a tensor and reports the first non-finite value, naming the tensor.
absl::Status CheckFinite(Checkpoint& ckpt, const ModelConfig& c, const TensorSpec& spec) {
  if (spec.role == TensorRole::kScale || spec.dtype == DType::kI64) return absl::OkStatus();
  const Fp8Block block = spec.role == TensorRole::kEngramTable
                             ? Fp8Block{1, kEngramScaleBlock}
                             : Fp8Block{c.weight_block_size, c.weight_block_size};
  ASSIGN_OR_RETURN(Tensor t, ckpt.LoadF32(spec.name, block));
  const float* p = t.data();
  for (int64_t i = 0; i < t.numel(); ++i) {
    if (!std::isfinite(p[i]))
      return absl::DataLossError(
          absl::StrFormat("%s: element %d is %f (corrupt value or scale)", spec.name, i, p[i]));
  }
  return absl::OkStatus();
}

absl::Status Inspect(const std::string& dir) {
  ASSIGN_OR_RETURN(const ModelConfig c, LoadModelConfigFromDir(dir));
  ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> ckpt, Checkpoint::Open(dir));

  std::cout << absl::StrFormat("checkpoint   %s\n", dir);
  std::cout << absl::StrFormat("model        %s: %s\n", c.model_type, LayerSchedule(c));
  std::cout << absl::StrFormat(
      "             hidden %d, %d heads x %d (rope %d), q_lora %d, output %d x %d, window %d\n",
      c.hidden_size, c.num_attention_heads, c.head_dim, c.qk_rope_head_dim, c.q_lora_rank,
      c.o_groups, c.o_lora_rank, c.sliding_window);
  std::cout << absl::StrFormat(
      "             %d routed experts top-%d + %d shared, moe_inter %d, vocab %d, hc_mult %d\n",
      c.n_routed_experts, c.num_experts_per_tok, c.n_shared_experts, c.moe_intermediate_size,
      c.vocab_size, c.hc_mult);

  // What is stored, by dtype.
  std::map<std::string, std::pair<int64_t, uint64_t>> by_dtype;
  std::set<std::string> files;
  uint64_t total_bytes = 0;
  const std::vector<std::string> names = ckpt->TensorNames();
  for (const std::string& name : names) {
    ASSIGN_OR_RETURN(const TensorView* view, ckpt->Get(name));
    auto& entry = by_dtype[std::string(DTypeName(view->dtype))];
    ++entry.first;
    entry.second += view->nbytes;
    total_bytes += view->nbytes;
    files.insert(view->file);
  }
  std::cout << absl::StrFormat("tensors      %d in %d files, %s\n", names.size(), files.size(),
                               FormatBytes(total_bytes));
  for (const auto& [dtype, entry] : by_dtype)
    std::cout << absl::StrFormat("  %-10s %6d tensors  %12s\n", dtype, entry.first,
                                 FormatBytes(entry.second));
  const ParameterCount params = CountParameters(c);
  std::cout << absl::StrFormat(
      "parameters   %s total, %s active per token (routed experts %s, MTP %s)\n",
      FormatCount(params.total), FormatCount(params.active_per_token),
      FormatCount(params.routed_expert), FormatCount(params.mtp));

  // Verification against the layout the config implies.
  std::vector<std::string> problems;
  std::set<std::string> expected_names;
  const std::vector<TensorSpec> expected = ExpectedTensors(c);
  for (const TensorSpec& spec : expected) {
    expected_names.insert(spec.name);
    absl::StatusOr<const TensorView*> view = ckpt->Get(spec.name);
    if (!view.ok()) {
      problems.push_back(spec.name + ": missing");
      continue;
    }
    if ((*view)->shape != spec.shape)
      problems.push_back(absl::StrFormat("%s: shape %s, expected %s", spec.name,
                                         ShapeToString((*view)->shape), ShapeToString(spec.shape)));
    if ((*view)->dtype != spec.dtype)
      problems.push_back(absl::StrFormat("%s: dtype %s, expected %s", spec.name,
                                         DTypeName((*view)->dtype), DTypeName(spec.dtype)));
  }
  int vision = 0;
  for (const std::string& name : names) {
    if (expected_names.count(name)) continue;
    if (IsVisionTensor(c, name)) {
      ++vision;
    } else {
      problems.push_back(name + ": not part of the layout");
    }
  }
  if (vision > 0) {
    std::cout << absl::StrFormat("ignored      %d vision-tower tensors (served text only)\n",
                                 vision);
  }
  if (problems.empty() && absl::GetFlag(FLAGS_verify_values)) {
    ProgressBar bar("verifying", static_cast<int64_t>(expected.size()), "tensors");
    for (size_t i = 0; i < expected.size(); ++i) {
      if (absl::Status s = CheckFinite(*ckpt, c, expected[i]); !s.ok())
        problems.push_back(std::string(s.message()));
      bar.Update(static_cast<int64_t>(i + 1));
    }
  }
  if (!problems.empty()) {
    constexpr size_t kShown = 20;
    std::cout << absl::StrFormat("verify       FAILED: %d problems\n", problems.size());
    for (size_t i = 0; i < std::min(problems.size(), kShown); ++i)
      std::cout << "  " << problems[i] << "\n";
    if (problems.size() > kShown)
      std::cout << absl::StrFormat("  ... and %d more\n", problems.size() - kShown);
    return absl::FailedPreconditionError(
        absl::StrFormat("%s does not match its config.json (%d problems, first: %s)", dir,
                        problems.size(), problems.front()));
  }
  std::cout << absl::StrFormat(
      "verify       OK: all %d tensors the config implies are present with the right shape and "
      "dtype%s\n",
      expected.size(), absl::GetFlag(FLAGS_verify_values) ? ", all values finite" : "");
  return absl::OkStatus();
}

}  // namespace

int CheckpointInspectMain(int argc, char** argv) {
  const std::vector<std::string> args = ParseFlags(
      argc, argv,
      "dsv4 checkpoint inspect DIR [--verify_values]\n\n"
      "Prints a checkpoint's config summary, tensors and bytes by dtype and parameter counts,\n"
      "and verifies that every tensor its config.json implies is present with the right\n"
      "shape and dtype. Exits non-zero when verification fails.",
      "cmd_checkpoint_inspect.cc");
  if (args.size() != 1)
    return ExitCode(absl::InvalidArgumentError("expected one checkpoint directory"),
                    "checkpoint inspect");
  return ExitCode(Inspect(args[0]), "checkpoint inspect");
}

}  // namespace dsv4::cli
