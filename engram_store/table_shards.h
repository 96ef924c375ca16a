// The Engram table rows one memory node serves, as DeepSeek-V4.1 releases them (spec
// deepseek-v41-model.md §2): per Engram layer L the FP8 values
//   layers.L.engram.embed.weight  F8_E4M3 [engram_num_embeddings[i], d_e]
// and their scales, one power-of-two exponent per 32 values of a row,
//   layers.L.engram.embed.scale   F8_E8M0 (or U8, as vLLM accepts) [rows, d_e/32]
// (the two may sit in different shard files). For every Engram layer this node holds the
// row ranges its ShardPlan assigns it, read in place from the memory-mapped safetensors
// (optionally mlock'ed so they never page out), and serves each row as one record: its d_e
// value bytes, then its d_e/32 scale bytes (EngramRecordBytes, 264 B for d_e = 256).
//
// Loading refuses, naming the tensor, a table or scale whose dtype or shape differs from
// what config.json implies, and held rows of either tensor whose checksum
// (engram_checksums.json, written by `dsv4 checkpoint generate`) does not match. Only the
// chunks overlapping the held rows are read, so a node touches only its own part of a
// 100 GB table.
#ifndef DSV4_ENGRAM_STORE_TABLE_SHARDS_H_
#define DSV4_ENGRAM_STORE_TABLE_SHARDS_H_

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "core/dtype.h"
#include "core/model_config.h"
#include "core/safetensors.h"
#include "engram_store/shard_plan.h"

namespace dsv4::engram {

// The record format memory nodes serve and clients expect: F8_E4M3 values followed by
// one E8M0 exponent per 32 values.
inline constexpr char kEngramRecordFormat[] = "F8_E4M3+E8M0/32";

struct TableShardOptions {
  int server_index = 0;
  ShardPlan plan;
  bool verify_checksums = true;  // false: accept a checkpoint without the sidecar
  bool mlock = false;
};

// What one server holds of one Engram layer, from the config alone (no tables needed).
struct LayerSizing {
  int layer = 0;                                  // main-layer id
  int64_t table_rows = 0;                         // whole table
  int64_t head_dim = 0;                           // d_e
  std::vector<std::pair<int64_t, int64_t>> held;  // row ranges, ascending, merged
  int64_t held_rows = 0;
  uint64_t value_bytes = 0;  // held_rows · d_e
  uint64_t scale_bytes = 0;  // held_rows · d_e/32
  uint64_t bytes() const { return value_bytes + scale_bytes; }
};

// The held rows and bytes of every Engram layer on server `server_index` of `plan`.
// InvalidArgument for a bad plan or index; FailedPrecondition when the config has no
// Engram layers or a head_dim that is not a multiple of 32.
absl::StatusOr<std::vector<LayerSizing>> SizeServer(const ModelConfig& config,
                                                    const ShardPlan& plan, int server_index);

// A human-readable sizing: the whole tables (per layer: rows, values, scales, exact bytes)
// and, for `servers` (every server when empty), what each holds per layer and in total,
// in GB (10^9 B) with exact byte counts.
absl::StatusOr<std::string> FormatSizing(const ModelConfig& config, const ShardPlan& plan,
                                         const std::vector<int>& servers = {});

class TableShards {
 public:
  struct Table {
    int layer = 0;                       // main-layer id
    std::string name;                    // the value tensor, layers.L.engram.embed.weight
    std::string scale_name;              // layers.L.engram.embed.scale
    DType scale_dtype = DType::kF8E8M0;  // F8_E8M0 or U8 (same bytes)
    int64_t rows = 0;                    // whole table
    int64_t head_dim = 0;                // d_e: value bytes per row
    int64_t scale_bytes = 0;             // d_e/32: scale bytes per row
    int64_t record_bytes = 0;            // head_dim + scale_bytes
    const uint8_t* values = nullptr;     // row 0 of the whole (mapped) value tensor
    const uint8_t* scales = nullptr;     // row 0 of the whole (mapped) scale tensor
    std::vector<std::pair<int64_t, int64_t>> held;  // row ranges served here, ascending
    bool Holds(int64_t row) const;
    // Appends row `row`'s record (values then scales) to `out`.
    void AppendRecord(int64_t row, std::string* out) const;
  };

  static absl::StatusOr<std::unique_ptr<TableShards>> Load(const std::string& checkpoint_dir,
                                                           const TableShardOptions& options);

  const TableShardOptions& options() const { return options_; }
  const std::vector<Table>& tables() const { return tables_; }
  const Table* Find(int layer) const;  // null when `layer` has no Engram table
  uint64_t held_value_bytes() const;
  uint64_t held_scale_bytes() const;
  uint64_t held_bytes() const { return held_value_bytes() + held_scale_bytes(); }

 private:
  TableShards() = default;
  absl::Status VerifyChecksums(const std::string& dir) const;

  TableShardOptions options_;
  std::unique_ptr<Checkpoint> checkpoint_;  // keeps the mappings alive
  std::vector<Table> tables_;
};

}  // namespace dsv4::engram

#endif  // DSV4_ENGRAM_STORE_TABLE_SHARDS_H_
