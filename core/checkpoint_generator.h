// Synthetic, seeded checkpoints in the official DeepSeek-V4 layout: the tensor names,
// shapes and dtypes of ExpectedTensors (FP8 block-scaled dense weights, FP4 routed
// experts, BF16 and F32 where the release has them, I64 tid2eid), sharded with a
// model.safetensors.index.json, plus the config.json. The values are random but scaled
// so that activations stay well-conditioned through every layer, and the same seed
// always gives the same bytes.
#ifndef DSV4_CORE_CHECKPOINT_GENERATOR_H_
#define DSV4_CORE_CHECKPOINT_GENERATOR_H_

#include <cstdint>
#include <functional>
#include <string>

#include "absl/status/status.h"
#include "core/model_config.h"

namespace dsv4 {

struct GenerateOptions {
  uint64_t seed = 0;
  uint64_t max_shard_bytes = 256ull << 20;  // tensors are packed into shards up to this
  // Called after each tensor with (bytes written so far, total bytes).
  std::function<void(uint64_t, uint64_t)> progress;
};

// Writes `config_json_text` as out_dir/config.json and the tensors as
// model-0000i-of-0000N.safetensors with an index. Creates out_dir if needed.
absl::Status GenerateCheckpoint(const ModelConfig& config, const std::string& config_json_text,
                                const std::string& out_dir, const GenerateOptions& options);

}  // namespace dsv4

#endif  // DSV4_CORE_CHECKPOINT_GENERATOR_H_
