// Synthetic, seeded checkpoints in the official DeepSeek-V4 / V4.1 layout: the tensor
// names, shapes and dtypes of ExpectedTensors (FP8 block-scaled dense weights, FP4 routed
// experts, BF16 and F32 where the release has them, I64 tid2eid, FP8 Engram tables with
// per-32 E8M0 scales), sharded with a model.safetensors.index.json, plus the config.json
// and the tokenizer.json (Engram's token map follows from it). A checksum sidecar covers
// the Engram tables. The values are random but scaled
// so that activations stay well-conditioned through every layer, and the same seed
// always gives the same bytes.
#ifndef DSV4_CORE_CHECKPOINT_GENERATOR_H_
#define DSV4_CORE_CHECKPOINT_GENERATOR_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

#include "absl/status/status.h"
#include "core/model_config.h"

namespace dsv4 {

struct GenerateOptions {
  uint64_t seed = 0;
  uint64_t max_shard_bytes = 256ull << 20;  // tensors are packed into shards up to this
  // Copied into the checkpoint as tokenizer.json when set; required for Engram models.
  std::string tokenizer_path;
  // Called after each tensor with (bytes written so far, total bytes).
  std::function<void(uint64_t, uint64_t)> progress;
};

// Engram tables get a sidecar next to the shards, so a memory node refuses a corrupt
// or mismatched table while verifying only the rows it serves:
//   engram_checksums.json: {"algorithm": "fnv1a64-le-words", "chunk_rows": 65536,
//                           "tensors": {"<table or scale name>": ["<16 hex digits>", ...]}}
// with one EngramChunkChecksum per chunk of chunk_rows rows (the last may be shorter), for
// the table (embed.weight) and its scales (embed.scale) alike.
inline constexpr char kEngramChecksumsFile[] = "engram_checksums.json";
inline constexpr char kEngramChecksumAlgorithm[] = "fnv1a64-le-words";
inline constexpr int64_t kEngramChecksumChunkRows = 65536;
// FNV-1a 64 over little-endian 64-bit words, then over the remaining bytes.
uint64_t EngramChunkChecksum(const uint8_t* data, size_t size);

// Writes `config_json_text` as out_dir/config.json and the tensors as
// model-0000i-of-0000N.safetensors with an index (and engram_checksums.json for Engram
// models). Creates out_dir if needed.
absl::Status GenerateCheckpoint(const ModelConfig& config, const std::string& config_json_text,
                                const std::string& out_dir, const GenerateOptions& options);

}  // namespace dsv4

#endif  // DSV4_CORE_CHECKPOINT_GENERATOR_H_
