#include "engram_store/table_shards.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "core/checkpoint_generator.h"
#include "core/checkpoint_layout.h"
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

std::vector<std::pair<int64_t, int64_t>> HeldRows(const ShardPlan& plan, int server, int64_t rows) {
  std::vector<std::pair<int64_t, int64_t>> ranges;
  for (int s : plan.ShardsOf(server)) ranges.push_back(plan.ShardRows(rows, s));
  return Merge(std::move(ranges));
}

absl::Status CheckPlan(const ShardPlan& plan, int server_index) {
  RETURN_IF_ERROR(plan.Validate());
  if (server_index < 0 || server_index >= plan.num_servers) {
    return absl::InvalidArgumentError(absl::StrCat("Engram store: server index ", server_index,
                                                   " outside [0, ", plan.num_servers, ")"));
  }
  return absl::OkStatus();
}

absl::Status CheckEngramConfig(const ModelConfig& config) {
  if (!config.engram.enabled()) {
    return absl::FailedPreconditionError("has no Engram layers (engram_layer_ids)");
  }
  if (config.engram.head_dim <= 0 || config.engram.head_dim % kEngramScaleBlock != 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "has engram_head_dim ", config.engram.head_dim, ", not a positive multiple of ",
        kEngramScaleBlock, " (one E8M0 scale per ", kEngramScaleBlock, " values)"));
  }
  if (config.engram.num_embeddings.size() != config.engram.layer_ids.size()) {
    return absl::FailedPreconditionError(
        absl::StrCat("lists ", config.engram.num_embeddings.size(), " engram_num_embeddings for ",
                     config.engram.layer_ids.size(), " engram_layer_ids"));
  }
  return absl::OkStatus();
}

std::string Ranges(const std::vector<std::pair<int64_t, int64_t>>& held) {
  std::string out;
  for (const auto& [begin, end] : held) {
    absl::StrAppend(&out, out.empty() ? "" : " ", "[", begin, ", ", end, ")");
  }
  return out;
}

// 202758032400 → "202,758,032,400".
std::string Commas(uint64_t n) {
  std::string digits = absl::StrCat(n), out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return out;
}

std::string Gb(uint64_t bytes) { return absl::StrFormat("%.3f GB", bytes / 1e9); }
std::string GbGib(uint64_t bytes) {
  return absl::StrFormat("%.3f GB = %.2f GiB", bytes / 1e9, bytes / 1073741824.0);
}

absl::Status Lock(const uint8_t* base, int64_t row_bytes, const TableShards::Table& t,
                  const std::string& name) {
  const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  for (const auto& [begin, end] : t.held) {
    const uintptr_t from = reinterpret_cast<uintptr_t>(base + begin * row_bytes) & ~(page - 1);
    const uintptr_t to = reinterpret_cast<uintptr_t>(base + end * row_bytes);
    if (mlock(reinterpret_cast<const void*>(from), to - from) != 0) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "mlock of ", name, " rows [", begin, ", ", end, ") failed: ", std::strerror(errno),
          " (raise the memlock limit, e.g. ulimit -l unlimited, or run without --mlock)"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::vector<LayerSizing>> SizeServer(const ModelConfig& config,
                                                    const ShardPlan& plan, int server_index) {
  RETURN_IF_ERROR(CheckPlan(plan, server_index));
  if (absl::Status s = CheckEngramConfig(config); !s.ok()) {
    return absl::FailedPreconditionError(absl::StrCat("config.json ", s.message()));
  }
  std::vector<LayerSizing> out;
  const int64_t d_e = config.engram.head_dim;
  for (size_t i = 0; i < config.engram.layer_ids.size(); ++i) {
    LayerSizing s;
    s.layer = config.engram.layer_ids[i];
    s.table_rows = config.engram.num_embeddings[i];
    s.head_dim = d_e;
    s.held = HeldRows(plan, server_index, s.table_rows);
    for (const auto& [begin, end] : s.held) s.held_rows += end - begin;
    s.value_bytes = static_cast<uint64_t>(s.held_rows) * d_e;
    s.scale_bytes = static_cast<uint64_t>(s.held_rows) * (d_e / kEngramScaleBlock);
    out.push_back(std::move(s));
  }
  return out;
}

absl::StatusOr<std::string> FormatSizing(const ModelConfig& config, const ShardPlan& plan,
                                         const std::vector<int>& servers) {
  RETURN_IF_ERROR(CheckPlan(plan, 0));
  if (absl::Status s = CheckEngramConfig(config); !s.ok()) {
    return absl::FailedPreconditionError(absl::StrCat("config.json ", s.message()));
  }
  const EngramConfig& e = config.engram;
  const int64_t d_e = e.head_dim, scales = d_e / kEngramScaleBlock;
  const int64_t record = EngramRecordBytes(d_e);
  std::string out = absl::StrFormat(
      "Engram tables: %d layers, rows of %d F8_E4M3 values + %d E8M0 scales = %d B a row "
      "(format %s)\n",
      e.layer_ids.size(), d_e, scales, record, kEngramRecordFormat);
  uint64_t total = 0;
  int64_t total_rows = 0;
  for (size_t i = 0; i < e.layer_ids.size(); ++i) {
    const int64_t rows = e.num_embeddings[i];
    const uint64_t bytes = static_cast<uint64_t>(rows) * record;
    absl::StrAppendFormat(&out, "  layer %d: %d rows, %s (%s values + %s scales; %s B)\n",
                          e.layer_ids[i], rows, Gb(bytes), Gb(static_cast<uint64_t>(rows) * d_e),
                          Gb(static_cast<uint64_t>(rows) * scales), Commas(bytes));
    total += bytes;
    total_rows += rows;
  }
  absl::StrAppendFormat(&out, "  all layers: %d rows, %s (%s B)\n", total_rows, Gb(total),
                        Commas(total));
  absl::StrAppendFormat(&out,
                        "%d memory node%s, replication %d: each row on %d node%s, %s of table "
                        "RAM over all nodes\n",
                        plan.num_servers, plan.num_servers == 1 ? "" : "s", plan.replication,
                        plan.replication, plan.replication == 1 ? "" : "s",
                        Gb(total * plan.replication));
  std::vector<int> which = servers;
  if (which.empty()) {
    for (int s = 0; s < plan.num_servers; ++s) which.push_back(s);
  }
  uint64_t largest = 0;
  for (int server : which) {
    ASSIGN_OR_RETURN(std::vector<LayerSizing> layers, SizeServer(config, plan, server));
    uint64_t bytes = 0;
    for (const LayerSizing& l : layers) bytes += l.bytes();
    largest = std::max(largest, bytes);
    absl::StrAppendFormat(&out, "  server %d (shards %s): %s (%s B)\n", server,
                          absl::StrJoin(plan.ShardsOf(server), ", "), GbGib(bytes), Commas(bytes));
    for (const LayerSizing& l : layers) {
      absl::StrAppendFormat(&out, "    layer %d: %d rows %s: %s (%s values + %s scales)\n", l.layer,
                            l.held_rows, Ranges(l.held), Gb(l.bytes()), Gb(l.value_bytes),
                            Gb(l.scale_bytes));
    }
  }
  if (which.size() > 1) {
    absl::StrAppendFormat(&out,
                          "largest node: %s of table rows (add the OS, page tables and gRPC "
                          "buffers; --mlock needs that much lockable memory)\n",
                          GbGib(largest));
  }
  return out;
}

bool TableShards::Table::Holds(int64_t row) const {
  for (const auto& [begin, end] : held) {
    if (row >= begin && row < end) return true;
  }
  return false;
}

void TableShards::Table::AppendRecord(int64_t row, std::string* out) const {
  out->append(reinterpret_cast<const char*>(values) + row * head_dim, head_dim);
  out->append(reinterpret_cast<const char*>(scales) + row * scale_bytes, scale_bytes);
}

absl::StatusOr<std::unique_ptr<TableShards>> TableShards::Load(const std::string& dir,
                                                               const TableShardOptions& options) {
  RETURN_IF_ERROR(CheckPlan(options.plan, options.server_index));
  ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfigFromDir(dir));
  if (absl::Status s = CheckEngramConfig(config); !s.ok()) {
    return absl::FailedPreconditionError(absl::StrCat(dir, "/config.json ", s.message()));
  }
  ASSIGN_OR_RETURN(std::vector<LayerSizing> sizing,
                   SizeServer(config, options.plan, options.server_index));
  ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> ckpt, Checkpoint::Open(dir));

  auto shards = std::unique_ptr<TableShards>(new TableShards());
  shards->options_ = options;
  for (const LayerSizing& s : sizing) {
    Table t;
    t.layer = s.layer;
    t.name = EngramTableName(t.layer);
    t.scale_name = EngramScaleName(t.layer);
    t.rows = s.table_rows;
    t.head_dim = s.head_dim;
    t.scale_bytes = s.head_dim / kEngramScaleBlock;
    t.record_bytes = EngramRecordBytes(s.head_dim);
    t.held = s.held;

    ASSIGN_OR_RETURN(const TensorView* values, ckpt->Get(t.name));
    const Shape value_shape = {t.rows, t.head_dim};
    if (values->dtype != DType::kF8E4M3) {
      return absl::FailedPreconditionError(
          absl::StrCat("checkpoint ", dir, ": Engram table ", t.name, " is ",
                       std::string(DTypeName(values->dtype)),
                       ", expected F8_E4M3 (the released FP8 table with per-32 E8M0 scales)"));
    }
    if (values->shape != value_shape) {
      return absl::FailedPreconditionError(
          absl::StrCat("checkpoint ", dir, ": Engram table ", t.name, " has shape ",
                       ShapeToString(values->shape), ", but config.json implies ",
                       ShapeToString(value_shape), " (engram_num_embeddings, engram_head_dim)"));
    }
    t.values = values->data;

    ASSIGN_OR_RETURN(const TensorView* scales, ckpt->Get(t.scale_name));
    const Shape scale_shape = {t.rows, t.scale_bytes};
    if (scales->dtype != DType::kF8E8M0 && scales->dtype != DType::kU8) {
      return absl::FailedPreconditionError(
          absl::StrCat("checkpoint ", dir, ": Engram scale ", t.scale_name, " is ",
                       std::string(DTypeName(scales->dtype)), ", expected F8_E8M0 (or U8)"));
    }
    if (scales->shape != scale_shape) {
      return absl::FailedPreconditionError(absl::StrCat(
          "checkpoint ", dir, ": Engram scale ", t.scale_name, " has shape ",
          ShapeToString(scales->shape), ", but config.json implies ", ShapeToString(scale_shape),
          " (one E8M0 scale per ", kEngramScaleBlock, " values of a row)"));
    }
    t.scale_dtype = scales->dtype;
    t.scales = scales->data;
    shards->tables_.push_back(std::move(t));
  }
  shards->checkpoint_ = std::move(ckpt);
  if (options.verify_checksums) {
    RETURN_IF_ERROR(shards->VerifyChecksums(dir));
  }
  if (options.mlock) {
    for (const Table& t : shards->tables_) {
      RETURN_IF_ERROR(Lock(t.values, t.head_dim, t, t.name));
      RETURN_IF_ERROR(Lock(t.scales, t.scale_bytes, t, t.scale_name));
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
    const int64_t chunks = (t.rows + chunk_rows - 1) / chunk_rows;
    // The values and the scales of the held rows, chunk by chunk.
    const struct {
      const std::string& name;
      const uint8_t* data;
      int64_t row_bytes;
    } tensors[] = {{t.name, t.values, t.head_dim}, {t.scale_name, t.scales, t.scale_bytes}};
    for (const auto& tensor : tensors) {
      const auto it = j["tensors"].find(tensor.name);
      if (it == j["tensors"].end() || !it->is_array() ||
          static_cast<int64_t>(it->size()) != chunks) {
        return absl::FailedPreconditionError(
            absl::StrCat(path, ": no list of ", chunks, " chunk checksums for ", tensor.name,
                         " (the sidecar belongs to another checkpoint?)"));
      }
      for (const auto& [begin, end] : t.held) {
        for (int64_t c = begin / chunk_rows; c * chunk_rows < end; ++c) {
          const int64_t first = c * chunk_rows, count = std::min(chunk_rows, t.rows - first);
          const std::string got =
              absl::StrFormat("%016x", EngramChunkChecksum(tensor.data + first * tensor.row_bytes,
                                                           count * tensor.row_bytes));
          const nlohmann::json& want = (*it)[c];
          if (!want.is_string() || want.get<std::string>() != got) {
            return absl::DataLossError(
                absl::StrCat("Engram tensor ", tensor.name, " rows [", first, ", ", first + count,
                             ") fail their checksum: ", path, " says ", want.dump(),
                             ", the data gives \"", got, "\" (corrupt or replaced shard file)"));
          }
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

uint64_t TableShards::held_value_bytes() const {
  uint64_t bytes = 0;
  for (const Table& t : tables_) {
    for (const auto& [begin, end] : t.held) bytes += (end - begin) * t.head_dim;
  }
  return bytes;
}

uint64_t TableShards::held_scale_bytes() const {
  uint64_t bytes = 0;
  for (const Table& t : tables_) {
    for (const auto& [begin, end] : t.held) bytes += (end - begin) * t.scale_bytes;
  }
  return bytes;
}

}  // namespace dsv4::engram
