// The Engram table rows one memory node serves: for every Engram layer of a checkpoint,
// the shards its ShardPlan assigns to this server, read in place from the memory-mapped
// safetensors (optionally mlock'ed so they never page out).
//
// Loading refuses, naming the tensor, a table whose shape differs from what config.json
// implies, a dtype that is not a row type, and rows whose checksum (engram_checksums.json,
// written by `dsv4 checkpoint generate`) does not match. Only the chunks overlapping the
// held rows are read, so a node touches only its own part of a huge table.
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

struct TableShardOptions {
  int server_index = 0;
  ShardPlan plan;
  bool verify_checksums = true;  // false: accept a checkpoint without the sidecar
  bool mlock = false;
};

class TableShards {
 public:
  struct Table {
    int layer = 0;  // main-layer id
    std::string name;
    DType dtype = DType::kBF16;
    int64_t rows = 0;  // whole table
    int64_t row_bytes = 0;
    const uint8_t* data = nullptr;                  // row 0 of the whole (mapped) table
    std::vector<std::pair<int64_t, int64_t>> held;  // row ranges served here, ascending
    bool Holds(int64_t row) const;
  };

  static absl::StatusOr<std::unique_ptr<TableShards>> Load(const std::string& checkpoint_dir,
                                                           const TableShardOptions& options);

  const TableShardOptions& options() const { return options_; }
  const std::vector<Table>& tables() const { return tables_; }
  const Table* Find(int layer) const;  // null when `layer` has no Engram table
  uint64_t held_bytes() const;

 private:
  TableShards() = default;
  absl::Status VerifyChecksums(const std::string& dir) const;

  TableShardOptions options_;
  std::unique_ptr<Checkpoint> checkpoint_;  // keeps the mapping alive
  std::vector<Table> tables_;
};

}  // namespace dsv4::engram

#endif  // DSV4_ENGRAM_STORE_TABLE_SHARDS_H_
