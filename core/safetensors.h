// Safetensors checkpoints in the official DeepSeek layout: memory-mapped files, a parsed
// JSON header, zero-copy tensor views, sharding through model.safetensors.index.json,
// exact dequantisation to fp32, and a writer.
//
// Every error names the file and, where one is involved, the tensor.
#ifndef DSV4_CORE_SAFETENSORS_H_
#define DSV4_CORE_SAFETENSORS_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/dtype.h"
#include "core/tensor.h"

namespace dsv4 {

// The block an FP8 weight's E8M0 scale covers: V4 releases 128×128, V4.1 32×32 (its
// `quantization_config.weight_block_size`), and V4.1's Engram tables one scale per 32
// values of a row (1×32).
struct Fp8Block {
  int64_t rows = 128;
  int64_t cols = 128;
};

// A zero-copy view of one stored tensor. `data` points into the mapped file and stays
// valid while the file that owns it is open.
struct TensorView {
  std::string name;
  std::string file;  // path of the .safetensors file holding it
  DType dtype = DType::kF32;
  Shape shape;
  const uint8_t* data = nullptr;
  size_t nbytes = 0;
};

// Parses and validates the header of a whole safetensors file held in `bytes[0, size)`:
// the 8-byte little-endian header length (at most 100 MB, as in the official reader), the
// JSON header (`__metadata__` is ignored), known dtypes, byte counts that match shapes,
// offsets inside the data section, no two tensors overlapping. Gaps between tensors are
// allowed. Entries come back sorted by name. Any bad input gives InvalidArgument naming
// `file` (and the tensor); it never throws. Exposed on its own for the fuzzer and tests.
struct HeaderEntry {
  std::string name;
  DType dtype;
  Shape shape;
  uint64_t begin;  // offsets relative to the start of the data section
  uint64_t end;
};
absl::StatusOr<std::vector<HeaderEntry>> ParseSafetensorsHeader(const uint8_t* bytes, size_t size,
                                                                const std::string& file);

// One memory-mapped (read-only) .safetensors file. Only the pages of tensors that are
// read get loaded.
class SafetensorsFile {
 public:
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const std::map<std::string, TensorView>& tensors() const { return tensors_; }
  const TensorView* Find(const std::string& name) const;  // null when absent
  size_t mapped_bytes() const { return size_; }

 private:
  SafetensorsFile() = default;
  std::string path_;
  void* map_ = nullptr;
  size_t size_ = 0;
  std::map<std::string, TensorView> tensors_;
};

// A checkpoint directory: shards listed in model.safetensors.index.json ("weight_map":
// tensor → file) if it exists, else a single model.safetensors. Shards are opened (mapped)
// on first use, so a rank that asks only for some tensors maps only the files holding
// them. Not thread-safe: Get/Load* may open files.
class Checkpoint {
 public:
  static absl::StatusOr<std::unique_ptr<Checkpoint>> Open(const std::string& dir);

  const std::string& dir() const { return dir_; }
  std::vector<std::string> TensorNames() const;  // sorted
  bool Has(const std::string& name) const;
  // NotFound naming the tensor when it is absent; the view lives as long as the Checkpoint.
  absl::StatusOr<const TensorView*> Get(const std::string& name);
  // The mapped file holding `name` (after a successful Get): views into it stay valid while
  // a caller holds it, even after the Checkpoint is gone.
  std::shared_ptr<const SafetensorsFile> FileHolding(const std::string& name) const;

  // Dequantised fp32 weight of a parameter by its full tensor name. For "X.weight":
  // F8_E4M3 uses "X.scale" (E8M0 blocks of `fp8_block`, 128×128 by default), I8 is packed
  // FP4 with "X.scale" (1×32 E8M0 blocks); BF16/F16/F32 (and E8M0 scales) are converted
  // directly. A missing scale, a scale of the wrong shape or dtype, or an integer tensor
  // is an error.
  absl::StatusOr<Tensor> LoadF32(const std::string& name, Fp8Block fp8_block = {});
  absl::StatusOr<std::vector<int64_t>> LoadI64(const std::string& name);  // I64 only

 private:
  std::string dir_;
  std::map<std::string, std::string> tensor_file_;  // tensor name → file name
  std::map<std::string, std::shared_ptr<SafetensorsFile>> open_files_;
};

// Exact dequantisation of stored views. Each checks dtypes, byte counts and scale shapes
// (FP8 with block b: scale [⌈N/b.rows⌉, ⌈K/b.cols⌉]; FP4 in I8 [N, K/2]: scale [N, ⌈K/32⌉])
// and names both tensors on a mismatch.
absl::StatusOr<Tensor> ToF32(const TensorView& view);  // BF16, F16, F32, F8_E8M0
absl::StatusOr<Tensor> DequantFp8(const TensorView& weight, const TensorView& scale,
                                  Fp8Block block = {});
absl::StatusOr<Tensor> DequantFp4(const TensorView& weight, const TensorView& scale);

// Writes tensors into one .safetensors file as the official writer does: header keys
// sorted, `"__metadata__": {"format": "pt"}`, the header padded with spaces so the data
// starts 8-byte aligned, and the data contiguous (no gaps, which the official reader
// rejects), ordered by element size then name so each tensor is aligned to its element
// size.
class SafetensorsWriter {
 public:
  // Adds (or replaces) a tensor; `bytes` is its little-endian data, checked by Write.
  void Add(const std::string& name, DType dtype, Shape shape, std::vector<uint8_t> bytes);
  size_t size() const { return entries_.size(); }
  uint64_t data_bytes() const;  // the data section's size; sum these for total_size
  absl::Status Write(const std::string& path) const;
  std::vector<std::string> names() const;  // sorted

 private:
  struct Entry {
    DType dtype;
    Shape shape;
    std::vector<uint8_t> bytes;
  };
  std::map<std::string, Entry> entries_;
};

// Writes dir/model.safetensors.index.json:
// {"metadata": {"total_size": N}, "weight_map": {tensor: file, ...}}.
absl::Status WriteSafetensorsIndex(const std::string& dir,
                                   const std::map<std::string, std::string>& weight_map,
                                   uint64_t total_size);

}  // namespace dsv4

#endif  // DSV4_CORE_SAFETENSORS_H_
