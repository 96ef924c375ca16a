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

// Parses a safetensors header (the JSON after the 8-byte length) for a file of
// `file_size` bytes and validates it: known dtypes, byte counts that match shapes,
// offsets inside the data section, no overlaps. `file` is used in error messages.
// Exposed on its own for the fuzzer and tests.
struct HeaderEntry {
  std::string name;
  DType dtype;
  Shape shape;
  uint64_t begin;  // offsets relative to the start of the data section
  uint64_t end;
};
absl::StatusOr<std::vector<HeaderEntry>> ParseSafetensorsHeader(const uint8_t* bytes,
                                                                size_t size,
                                                                const std::string& file);

// One memory-mapped .safetensors file.
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

// A checkpoint directory: a single model.safetensors, or shards listed in
// model.safetensors.index.json. Shards are opened (mapped) on first use, so a rank that
// asks only for some tensors maps only the files holding them.
class Checkpoint {
 public:
  static absl::StatusOr<std::unique_ptr<Checkpoint>> Open(const std::string& dir);

  const std::string& dir() const { return dir_; }
  std::vector<std::string> TensorNames() const;  // sorted
  bool Has(const std::string& name) const;
  absl::StatusOr<const TensorView*> Get(const std::string& name);

  // Dequantised fp32 weight of a parameter by its full tensor name. For "X.weight":
  // F8_E4M3 uses "X.scale" (128×128 E8M0 blocks), I8 is packed FP4 with "X.scale"
  // (1×32 E8M0 blocks); BF16/F16/F32 are converted directly.
  absl::StatusOr<Tensor> LoadF32(const std::string& name);
  absl::StatusOr<std::vector<int64_t>> LoadI64(const std::string& name);

 private:
  std::string dir_;
  std::map<std::string, std::string> tensor_file_;  // tensor name → file name
  std::map<std::string, std::unique_ptr<SafetensorsFile>> open_files_;
};

// Exact dequantisation of stored views.
absl::StatusOr<Tensor> ToF32(const TensorView& view);  // BF16, F16, F32
absl::StatusOr<Tensor> DequantFp8(const TensorView& weight, const TensorView& scale);
absl::StatusOr<Tensor> DequantFp4(const TensorView& weight, const TensorView& scale);

// Writes tensors into one .safetensors file (header keys sorted, 8-byte aligned data).
class SafetensorsWriter {
 public:
  void Add(const std::string& name, DType dtype, Shape shape, std::vector<uint8_t> bytes);
  size_t size() const { return entries_.size(); }
  uint64_t data_bytes() const;
  absl::Status Write(const std::string& path) const;
  std::vector<std::string> names() const;

 private:
  struct Entry {
    DType dtype;
    Shape shape;
    std::vector<uint8_t> bytes;
  };
  std::map<std::string, Entry> entries_;
};

// Writes model.safetensors.index.json mapping each tensor to its file.
absl::Status WriteSafetensorsIndex(const std::string& dir,
                                   const std::map<std::string, std::string>& weight_map,
                                   uint64_t total_size);

}  // namespace dsv4

#endif  // DSV4_CORE_SAFETENSORS_H_
