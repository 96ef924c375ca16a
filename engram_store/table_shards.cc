#include "engram_store/table_shards.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/checkpoint_generator.h"
#include "core/checkpoint_layout.h"
#include "core/engram_hash.h"
#include "core/engram_rows.h"
#include "core/status_macros.h"
#include "nlohmann/json.hpp"

namespace dsv4::engram {
namespace {

// Merges touching ranges (consecutive shards held by one server).
std::vector<std::pair<int64_t, int64_t>> Merge(std::vector<std::pair<int64_t, int64_t>> r) {
  std::sort(r.begin(), r.end());
  std::vector<std::pair<int64_t, int64_t>> out;
  for (const auto& range : r) {
    if (!out.empty() && out.back().second >= range.first) {
      out.back().second = std::max(out.back().second, range.second);
    } else {
      out.push_back(range);
    }
  }
  return out;
}

absl::Status Lock(const TableShards::Table& t) {
  const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  for (const auto& [begin, end] : t.held) {
    const uintptr_t from = reinterpret_cast<uintptr_t>(t.data + begin * t.row_bytes) & ~(page - 1);
    const uintptr_t to = reinterpret_cast<uintptr_t>(t.data + end * t.row_bytes);
    if (mlock(reinterpret_cast<const void*>(from), to - from) != 0) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "mlock of ", t.name, " rows [", begin, ", ", end, ") failed: ", std::strerror(errno),
          " (raise the memlock limit, e.g. ulimit -l unlimited, or run without --mlock)"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

bool TableShards::Table::Holds(int64_t row) const {
  for (const auto& [begin, end] : held) {
    if (row >= begin && row < end) return true;
  }
  return false;
}

absl::StatusOr<std::unique_ptr<TableShards>> TableShards::Load(const std::string& dir,
                                                               const TableShardOptions& options) {
  RETURN_IF_ERROR(options.plan.Validate());
  if (options.server_index < 0 || options.server_index >= options.plan.num_servers) {
    return absl::InvalidArgumentError(absl::StrCat("Engram store: server index ",
                                                   options.server_index, " outside [0, ",
                                                   options.plan.num_servers, ")"));
  }
  ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfigFromDir(dir));
  if (!config.engram.enabled()) {
    return absl::FailedPreconditionError(
        absl::StrCat(dir, "/config.json has no Engram layers (engram_layer_ids)"));
  }
  ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> ckpt, Checkpoint::Open(dir));

  auto shards = std::unique_ptr<TableShards>(new TableShards());
  shards->options_ = options;
  const std::vector<std::vector<int64_t>> sizes = EngramHeadSizes(config.engram);
  for (size_t i = 0; i < sizes.size(); ++i) {
    Table t;
    t.layer = config.engram.layer_ids[i];
    t.name = EngramTableName(t.layer);
    for (int64_t p : sizes[i]) t.rows += p;
    ASSIGN_OR_RETURN(const TensorView* view, ckpt->Get(t.name));
    const Shape expected = {t.rows, config.engram.head_dim};
    if (view->shape != expected) {
      return absl::FailedPreconditionError(absl::StrCat(
          "checkpoint ", dir, ": Engram table ", t.name, " has shape ", ShapeToString(view->shape),
          ", but config.json implies ", ShapeToString(expected),
          " (engram_vocab_size, engram_n_heads, engram_max_ngram_size, engram_head_dim)"));
    }
    if (absl::Status s = CheckRowDType(view->dtype); !s.ok()) {
      return absl::FailedPreconditionError(absl::StrCat(t.name, ": ", s.message()));
    }
    t.dtype = view->dtype;
    t.row_bytes = config.engram.head_dim * DTypeSize(t.dtype);
    t.data = view->data;
    std::vector<std::pair<int64_t, int64_t>> ranges;
    for (int s : options.plan.ShardsOf(options.server_index)) {
      ranges.push_back(options.plan.ShardRows(t.rows, s));
    }
    t.held = Merge(std::move(ranges));
    shards->tables_.push_back(std::move(t));
  }
  shards->checkpoint_ = std::move(ckpt);
  if (options.verify_checksums) {
    RETURN_IF_ERROR(shards->VerifyChecksums(dir));
  }
  if (options.mlock) {
    for (const Table& t : shards->tables_) {
      RETURN_IF_ERROR(Lock(t));
    }
  }
  return shards;
}

absl::Status TableShards::VerifyChecksums(const std::string& dir) const {
  const std::string path = dir + "/" + kEngramChecksumsFile;
  std::ifstream in(path);
  if (!in) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot verify the Engram tables: ", path,
                     " is missing (written by `dsv4 checkpoint generate`; pass "
                     "--verify_checksums=false to serve unverified tables)"));
  }
  const nlohmann::json j = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object() || j.value("algorithm", "") != kEngramChecksumAlgorithm ||
      !j.contains("chunk_rows") || !j["chunk_rows"].is_number_integer() ||
      j["chunk_rows"].get<int64_t>() <= 0 || !j.contains("tensors") || !j["tensors"].is_object()) {
    return absl::FailedPreconditionError(
        absl::StrCat(path, ": expected {\"algorithm\": \"", kEngramChecksumAlgorithm,
                     "\", \"chunk_rows\": N, \"tensors\": {...}}"));
  }
  const int64_t chunk_rows = j["chunk_rows"].get<int64_t>();
  for (const Table& t : tables_) {
    const auto it = j["tensors"].find(t.name);
    const int64_t chunks = (t.rows + chunk_rows - 1) / chunk_rows;
    if (it == j["tensors"].end() || !it->is_array() || static_cast<int64_t>(it->size()) != chunks) {
      return absl::FailedPreconditionError(
          absl::StrCat(path, ": no list of ", chunks, " chunk checksums for ", t.name,
                       " (the sidecar belongs to another checkpoint?)"));
    }
    for (const auto& [begin, end] : t.held) {
      for (int64_t c = begin / chunk_rows; c * chunk_rows < end; ++c) {
        const int64_t first = c * chunk_rows, count = std::min(chunk_rows, t.rows - first);
        const std::string got = absl::StrFormat(
            "%016x", EngramChunkChecksum(t.data + first * t.row_bytes, count * t.row_bytes));
        const nlohmann::json& want = (*it)[c];
        if (!want.is_string() || want.get<std::string>() != got) {
          return absl::DataLossError(absl::StrCat("Engram table ", t.name, " rows [", first, ", ",
                                                  first + count, ") fail their checksum: ", path,
                                                  " says ", want.dump(), ", the data gives \"", got,
                                                  "\" (corrupt or replaced shard file)"));
        }
      }
    }
  }
  return absl::OkStatus();
}

const TableShards::Table* TableShards::Find(int layer) const {
  for (const Table& t : tables_) {
    if (t.layer == layer) return &t;
  }
  return nullptr;
}

uint64_t TableShards::held_bytes() const {
  uint64_t bytes = 0;
  for (const Table& t : tables_) {
    for (const auto& [begin, end] : t.held) bytes += (end - begin) * t.row_bytes;
  }
  return bytes;
}

}  // namespace dsv4::engram
