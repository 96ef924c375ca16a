#include "core/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <optional>
#include <sstream>
#include <string_view>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/status_macros.h"
#include "nlohmann/json.hpp"

namespace dsv4 {
namespace {

static_assert(std::endian::native == std::endian::little,
              "safetensors data is little-endian and is read in place");

using Json = nlohmann::json;

constexpr uint64_t kMaxHeaderBytes = 100'000'000;  // the official reader's limit
constexpr char kIndexFile[] = "model.safetensors.index.json";
constexpr char kSingleFile[] = "model.safetensors";
constexpr int64_t kFp4Block = 32;  // FP4 scales cover 1×32 blocks

uint64_t ReadLe64(const uint8_t* bytes) {
  uint64_t value = 0;
  for (int i = 7; i >= 0; --i) value = (value << 8) | bytes[i];
  return value;
}

// Abseil here is built with its own string_view, so std::string_view needs converting.
std::string Name(DType dtype) { return std::string(DTypeName(dtype)); }

std::string Quoted(absl::string_view name) { return absl::StrCat("'", name, "'"); }

absl::Status FileError(absl::string_view file, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(file, ": ", what));
}

absl::Status TensorError(absl::string_view file, absl::string_view tensor, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(file, ": tensor ", Quoted(tensor), ": ", what));
}

// Bytes needed by `shape` elements of `dtype`; nullopt on a negative dimension or overflow.
std::optional<uint64_t> ByteCount(const Shape& shape, DType dtype) {
  uint64_t bytes = static_cast<uint64_t>(DTypeSize(dtype));
  for (const int64_t dim : shape) {
    if (dim < 0 || __builtin_mul_overflow(bytes, static_cast<uint64_t>(dim), &bytes)) {
      return std::nullopt;
    }
  }
  return bytes;
}

std::string ByteRange(uint64_t begin, uint64_t end) {
  return absl::StrCat("[", begin, ", ", end, ")");
}

absl::StatusOr<DType> ParseDType(const Json& info, const std::string& name,
                                 const std::string& file) {
  const auto it = info.find("dtype");
  if (it == info.end() || !it->is_string()) {
    return TensorError(file, name, "missing string field 'dtype'");
  }
  const std::string& dtype_name = it->get_ref<const std::string&>();
  const std::optional<DType> dtype = DTypeFromName(dtype_name);
  if (!dtype) return TensorError(file, name, absl::StrCat("unknown dtype ", Quoted(dtype_name)));
  return *dtype;
}

// A JSON array of non-negative integers that fit in int64 (nlohmann stores non-negative
// integers as unsigned).
std::optional<Shape> ParseNonNegativeInts(const Json& value) {
  if (!value.is_array()) return std::nullopt;
  Shape out;
  for (const Json& element : value) {
    if (!element.is_number_unsigned()) return std::nullopt;
    const auto n = element.get<uint64_t>();
    if (n > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return std::nullopt;
    out.push_back(static_cast<int64_t>(n));
  }
  return out;
}

absl::StatusOr<HeaderEntry> ParseEntry(const std::string& name, const Json& info,
                                       uint64_t data_size, const std::string& file) {
  if (!info.is_object()) return TensorError(file, name, "header entry is not a JSON object");
  ASSIGN_OR_RETURN(DType dtype, ParseDType(info, name, file));
  const auto shape_it = info.find("shape");
  std::optional<Shape> shape;
  if (shape_it != info.end()) shape = ParseNonNegativeInts(*shape_it);
  if (!shape) return TensorError(file, name, "'shape' must be an array of non-negative integers");
  const auto offsets_it = info.find("data_offsets");
  std::optional<Shape> offsets;
  if (offsets_it != info.end()) offsets = ParseNonNegativeInts(*offsets_it);
  if (!offsets || offsets->size() != 2) {
    return TensorError(file, name, "'data_offsets' must be two non-negative integers");
  }
  const auto begin = static_cast<uint64_t>((*offsets)[0]);
  const auto end = static_cast<uint64_t>((*offsets)[1]);
  if (begin > end) {
    return TensorError(
        file, name, absl::StrCat("data offsets ", ByteRange(begin, end), " end before they begin"));
  }
  if (end > data_size) {
    return TensorError(file, name,
                       absl::StrCat("data offsets ", ByteRange(begin, end),
                                    " are outside the data section of ", data_size, " bytes"));
  }
  const std::optional<uint64_t> needed = ByteCount(*shape, dtype);
  if (!needed || *needed != end - begin) {
    return TensorError(
        file, name,
        absl::StrCat("data offsets ", ByteRange(begin, end), " hold ", end - begin,
                     " bytes but shape ", ShapeToString(*shape), " of ", Name(dtype), " needs ",
                     needed ? absl::StrCat(*needed) : std::string("more than 2^64")));
  }
  return HeaderEntry{name, dtype, std::move(*shape), begin, end};
}

// Rejects two tensors whose non-empty byte ranges intersect. Sorted by start, any overlap
// shows up between neighbours.
absl::Status CheckNoOverlap(const std::vector<HeaderEntry>& entries, const std::string& file) {
  std::vector<const HeaderEntry*> by_offset;
  for (const HeaderEntry& entry : entries) {
    if (entry.begin < entry.end) by_offset.push_back(&entry);
  }
  std::sort(by_offset.begin(), by_offset.end(), [](const HeaderEntry* a, const HeaderEntry* b) {
    return std::pair(a->begin, a->end) < std::pair(b->begin, b->end);
  });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    const HeaderEntry& previous = *by_offset[i - 1];
    const HeaderEntry& entry = *by_offset[i];
    if (entry.begin < previous.end) {
      return TensorError(
          file, entry.name,
          absl::StrCat("data offsets ", ByteRange(entry.begin, entry.end), " overlap tensor ",
                       Quoted(previous.name), " at ", ByteRange(previous.begin, previous.end)));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<Json> ParseJson(std::string_view text, const std::string& file) {
  try {
    return Json::parse(text.begin(), text.end());
  } catch (const Json::exception& e) {
    return FileError(file, absl::StrCat("invalid JSON: ", e.what()));
  }
}

std::string JoinPath(const std::string& dir, const std::string& name) {
  return (std::filesystem::path(dir) / name).string();
}

absl::StatusOr<std::string> ReadTextFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::ErrnoToStatus(errno, absl::StrCat("cannot open ", path));
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) return absl::ErrnoToStatus(errno, absl::StrCat("cannot read ", path));
  return text.str();
}

// Writes `chunks` one after another into `path`.
absl::Status WriteChunks(const std::string& path, const std::vector<std::string_view>& chunks) {
  std::FILE* out = std::fopen(path.c_str(), "wb");
  if (out == nullptr) return absl::ErrnoToStatus(errno, absl::StrCat("cannot create ", path));
  int error = 0;
  for (const std::string_view chunk : chunks) {
    if (std::fwrite(chunk.data(), 1, chunk.size(), out) != chunk.size()) {
      error = errno != 0 ? errno : EIO;
      break;
    }
  }
  if (std::fclose(out) != 0 && error == 0) error = errno != 0 ? errno : EIO;
  if (error == 0) return absl::OkStatus();
  std::remove(path.c_str());  // leave no truncated file that looks like a checkpoint
  return absl::ErrnoToStatus(error, absl::StrCat("cannot write ", path));
}

// The weight_map of an index file: tensor name → shard file name.
absl::StatusOr<std::map<std::string, std::string>> ReadIndex(const std::string& path) {
  ASSIGN_OR_RETURN(std::string text, ReadTextFile(path));
  ASSIGN_OR_RETURN(Json index, ParseJson(text, path));
  const auto map_it = index.is_object() ? index.find("weight_map") : index.end();
  if (map_it == index.end() || !map_it->is_object()) {
    return FileError(path, "missing object 'weight_map'");
  }
  std::map<std::string, std::string> weight_map;
  for (const auto& [name, file] : map_it->items()) {
    if (!file.is_string() || file.get_ref<const std::string&>().empty()) {
      return TensorError(path, name, "weight_map value is not a file name");
    }
    weight_map.emplace(name, file.get<std::string>());
  }
  return weight_map;
}

// Checks that a view holds exactly the bytes its shape and dtype need (views may be built
// by hand, not only by the parser).
absl::Status CheckView(const TensorView& view, DType dtype, int rank) {
  if (view.dtype != dtype) {
    return TensorError(view.file, view.name,
                       absl::StrCat("dtype ", Name(view.dtype), ", expected ", Name(dtype)));
  }
  if (rank >= 0 && static_cast<int>(view.shape.size()) != rank) {
    return TensorError(view.file, view.name,
                       absl::StrCat("shape ", ShapeToString(view.shape), ", expected rank ", rank));
  }
  const std::optional<uint64_t> needed = ByteCount(view.shape, view.dtype);
  if (!needed || *needed != view.nbytes || (view.data == nullptr && view.nbytes > 0)) {
    return TensorError(view.file, view.name,
                       absl::StrCat(view.nbytes, " bytes do not match shape ",
                                    ShapeToString(view.shape), " of ", Name(view.dtype)));
  }
  return absl::OkStatus();
}

absl::Status CheckScaleShape(const TensorView& weight, const TensorView& scale,
                             const Shape& expected, absl::string_view blocks) {
  if (scale.shape == expected) return absl::OkStatus();
  return TensorError(
      scale.file, scale.name,
      absl::StrCat("scale shape ", ShapeToString(scale.shape), " does not fit ", blocks,
                   " blocks of weight ", Quoted(weight.name), " ", ShapeToString(weight.shape),
                   "; expected ", ShapeToString(expected)));
}

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

std::vector<float> DecodeScales(const TensorView& scale) {
  std::vector<float> values(scale.nbytes);
  for (size_t i = 0; i < scale.nbytes; ++i) values[i] = E8M0ToFloat(scale.data[i]);
  return values;
}

const std::array<float, 256>& E4M3Table() {
  static const std::array<float, 256> table = [] {
    std::array<float, 256> values{};
    for (int code = 0; code < 256; ++code) values[code] = E4M3ToFloat(static_cast<uint8_t>(code));
    return values;
  }();
  return table;
}

template <typename Decode>
Tensor DecodeElements(const TensorView& view, Decode decode) {
  Tensor out(view.shape);
  float* dst = out.data();
  const int64_t n = NumElements(view.shape);
  const int size = DTypeSize(view.dtype);
  for (int64_t i = 0; i < n; ++i) dst[i] = decode(view.data + i * size);
  return out;
}

uint16_t ReadU16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }

}  // namespace

absl::StatusOr<std::vector<HeaderEntry>> ParseSafetensorsHeader(const uint8_t* bytes, size_t size,
                                                                const std::string& file) {
  if (size < 8) {
    return FileError(
        file, absl::StrCat("truncated: ", size, " bytes, too short for the 8-byte header length"));
  }
  const uint64_t header_bytes = ReadLe64(bytes);
  if (header_bytes > kMaxHeaderBytes) {
    return FileError(file, absl::StrCat("header length ", header_bytes, " exceeds the limit of ",
                                        kMaxHeaderBytes, " bytes"));
  }
  if (header_bytes > size - 8) {
    return FileError(file, absl::StrCat("truncated: header length ", header_bytes,
                                        " runs past the end of the file (", size, " bytes)"));
  }
  ASSIGN_OR_RETURN(Json header,
                   ParseJson({reinterpret_cast<const char*>(bytes + 8), header_bytes}, file));
  if (!header.is_object()) return FileError(file, "header is not a JSON object");
  const uint64_t data_size = size - 8 - header_bytes;
  std::vector<HeaderEntry> entries;
  for (const auto& [name, info] : header.items()) {
    if (name == "__metadata__") continue;
    ASSIGN_OR_RETURN(HeaderEntry entry, ParseEntry(name, info, data_size, file));
    entries.push_back(std::move(entry));
  }
  RETURN_IF_ERROR(CheckNoOverlap(entries, file));
  return entries;
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return absl::ErrnoToStatus(errno, absl::StrCat("cannot open ", path));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int error = errno;
    ::close(fd);
    return absl::ErrnoToStatus(error, absl::StrCat("cannot stat ", path));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return FileError(path, "not a regular file");
  }
  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile);
  file->path_ = path;
  file->size_ = static_cast<size_t>(st.st_size);
  if (file->size_ > 0) {  // mmap rejects empty files; the parser reports them as truncated
    void* map = ::mmap(nullptr, file->size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (map == MAP_FAILED) {
      const int error = errno;
      ::close(fd);
      return absl::ErrnoToStatus(error, absl::StrCat("cannot map ", path));
    }
    file->map_ = map;
  }
  ::close(fd);  // the mapping keeps the file alive
  const auto* bytes = static_cast<const uint8_t*>(file->map_);
  ASSIGN_OR_RETURN(std::vector<HeaderEntry> entries,
                   ParseSafetensorsHeader(bytes, file->size_, path));
  const uint8_t* data = bytes + 8 + ReadLe64(bytes);
  for (HeaderEntry& entry : entries) {
    TensorView view{entry.name,         path,
                    entry.dtype,        std::move(entry.shape),
                    data + entry.begin, entry.end - entry.begin};
    file->tensors_.emplace(entry.name, std::move(view));
  }
  return file;
}

SafetensorsFile::~SafetensorsFile() {
  if (map_ != nullptr) ::munmap(map_, size_);
}

const TensorView* SafetensorsFile::Find(const std::string& name) const {
  const auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

absl::StatusOr<std::unique_ptr<Checkpoint>> Checkpoint::Open(const std::string& dir) {
  auto checkpoint = std::make_unique<Checkpoint>();
  checkpoint->dir_ = dir;
  const std::string index_path = JoinPath(dir, kIndexFile);
  const std::string single_path = JoinPath(dir, kSingleFile);
  std::error_code error;
  if (std::filesystem::exists(index_path, error)) {
    ASSIGN_OR_RETURN(checkpoint->tensor_file_, ReadIndex(index_path));
    return checkpoint;
  }
  if (!std::filesystem::exists(single_path, error)) {
    return absl::NotFoundError(absl::StrCat(dir, ": no ", kIndexFile, " or ", kSingleFile));
  }
  // Without an index the file's own header is the list of tensors.
  ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file, SafetensorsFile::Open(single_path));
  for (const auto& [name, view] : file->tensors()) {
    checkpoint->tensor_file_.emplace(name, kSingleFile);
  }
  checkpoint->open_files_.emplace(kSingleFile, std::move(file));
  return checkpoint;
}

std::vector<std::string> Checkpoint::TensorNames() const {
  std::vector<std::string> names;
  names.reserve(tensor_file_.size());
  for (const auto& [name, file] : tensor_file_) names.push_back(name);
  return names;
}

bool Checkpoint::Has(const std::string& name) const { return tensor_file_.contains(name); }

absl::StatusOr<const TensorView*> Checkpoint::Get(const std::string& name) {
  const auto it = tensor_file_.find(name);
  if (it == tensor_file_.end()) {
    return absl::NotFoundError(
        absl::StrCat(dir_, ": tensor ", Quoted(name), " is not in the checkpoint"));
  }
  auto& file = open_files_[it->second];
  if (file == nullptr) {
    absl::StatusOr<std::unique_ptr<SafetensorsFile>> opened =
        SafetensorsFile::Open(JoinPath(dir_, it->second));
    if (!opened.ok()) {
      open_files_.erase(it->second);  // a later Get may retry
      return absl::Status(
          opened.status().code(),
          absl::StrCat(opened.status().message(), " (holding tensor ", Quoted(name), ")"));
    }
    file = *std::move(opened);
  }
  const TensorView* view = file->Find(name);
  if (view == nullptr) {
    return absl::NotFoundError(absl::StrCat(file->path(), ": tensor ", Quoted(name),
                                            " is listed in ", kIndexFile,
                                            " but missing from the file"));
  }
  return view;
}

std::shared_ptr<const SafetensorsFile> Checkpoint::FileHolding(const std::string& name) const {
  const auto it = tensor_file_.find(name);
  if (it == tensor_file_.end()) return nullptr;
  const auto file = open_files_.find(it->second);
  return file == open_files_.end() ? nullptr : file->second;
}

absl::StatusOr<Tensor> Checkpoint::LoadF32(const std::string& name, Fp8Block fp8_block) {
  ASSIGN_OR_RETURN(const TensorView* weight, Get(name));
  const DType dtype = weight->dtype;
  if (dtype != DType::kF8E4M3 && dtype != DType::kI8) return ToF32(*weight);
  constexpr std::string_view kSuffix = ".weight";
  if (!name.ends_with(kSuffix)) {
    return TensorError(weight->file, name,
                       absl::StrCat("quantised ", Name(dtype),
                                    " tensor has no '.weight' suffix to find its scale"));
  }
  const std::string scale_name =
      absl::StrCat(name.substr(0, name.size() - kSuffix.size()), ".scale");
  absl::StatusOr<const TensorView*> scale = Get(scale_name);
  if (!scale.ok()) {
    return absl::Status(scale.status().code(), absl::StrCat(scale.status().message(),
                                                            " (the scale of ", Quoted(name), ")"));
  }
  return dtype == DType::kF8E4M3 ? DequantFp8(*weight, **scale, fp8_block)
                                 : DequantFp4(*weight, **scale);
}

absl::StatusOr<std::vector<int64_t>> Checkpoint::LoadI64(const std::string& name) {
  ASSIGN_OR_RETURN(const TensorView* view, Get(name));
  RETURN_IF_ERROR(CheckView(*view, DType::kI64, -1));
  std::vector<int64_t> values(view->nbytes / sizeof(int64_t));
  if (!values.empty()) std::memcpy(values.data(), view->data, view->nbytes);
  return values;
}

absl::StatusOr<Tensor> ToF32(const TensorView& view) {
  switch (view.dtype) {
    case DType::kF32:
    case DType::kBF16:
    case DType::kF16:
    case DType::kF8E8M0:
      break;
    default:
      return TensorError(view.file, view.name,
                         absl::StrCat("dtype ", Name(view.dtype),
                                      " has no direct fp32 conversion (quantised weights need "
                                      "their scale; integers are not weights)"));
  }
  RETURN_IF_ERROR(CheckView(view, view.dtype, -1));
  switch (view.dtype) {
    case DType::kF32:
      // memcpy: the mapped data need not be 4-byte aligned.
      return DecodeElements(view, [](const uint8_t* p) {
        float value;
        std::memcpy(&value, p, sizeof(value));
        return value;
      });
    case DType::kBF16:
      return DecodeElements(view, [](const uint8_t* p) { return Bf16ToFloat(ReadU16(p)); });
    case DType::kF16:
      return DecodeElements(view, [](const uint8_t* p) { return F16ToFloat(ReadU16(p)); });
    default:
      return DecodeElements(view, [](const uint8_t* p) { return E8M0ToFloat(*p); });
  }
}

absl::StatusOr<Tensor> DequantFp8(const TensorView& weight, const TensorView& scale,
                                  Fp8Block block) {
  RETURN_IF_ERROR(CheckView(weight, DType::kF8E4M3, 2));
  RETURN_IF_ERROR(CheckView(scale, DType::kF8E8M0, -1));
  if (block.rows <= 0 || block.cols <= 0) {
    return TensorError(weight.file, weight.name,
                       absl::StrCat("FP8 block ", block.rows, "x", block.cols, " is not positive"));
  }
  const int64_t rows = weight.shape[0];
  const int64_t cols = weight.shape[1];
  const int64_t block_cols = CeilDiv(cols, block.cols);
  RETURN_IF_ERROR(CheckScaleShape(weight, scale, {CeilDiv(rows, block.rows), block_cols},
                                  absl::StrCat(block.rows, "x", block.cols)));
  const std::vector<float> scales = DecodeScales(scale);
  const std::array<float, 256>& fp8 = E4M3Table();
  Tensor out({rows, cols});
  float* dst = out.data();
  for (int64_t r = 0; r < rows; ++r) {
    const uint8_t* src = weight.data + r * cols;
    const float* row_scales = scales.data() + (r / block.rows) * block_cols;
    for (int64_t c = 0; c < cols; ++c) dst[r * cols + c] = fp8[src[c]] * row_scales[c / block.cols];
  }
  return out;
}

absl::StatusOr<Tensor> DequantFp4(const TensorView& weight, const TensorView& scale) {
  RETURN_IF_ERROR(CheckView(weight, DType::kI8, 2));
  RETURN_IF_ERROR(CheckView(scale, DType::kF8E8M0, -1));
  const int64_t rows = weight.shape[0];
  const int64_t cols = 2 * weight.shape[1];  // two codes per byte
  const int64_t block_cols = CeilDiv(cols, kFp4Block);
  RETURN_IF_ERROR(CheckScaleShape(weight, scale, {rows, block_cols}, "1x32"));
  const std::vector<float> scales = DecodeScales(scale);
  Tensor out({rows, cols});
  float* dst = out.data();
  for (int64_t r = 0; r < rows; ++r) {
    const uint8_t* packed = weight.data + r * (cols / 2);
    const float* row_scales = scales.data() + r * block_cols;
    for (int64_t c = 0; c < cols; ++c) {
      dst[r * cols + c] = Fp4PackedElement(packed, c) * row_scales[c / kFp4Block];
    }
  }
  return out;
}

void SafetensorsWriter::Add(const std::string& name, DType dtype, Shape shape,
                            std::vector<uint8_t> bytes) {
  entries_[name] = Entry{dtype, std::move(shape), std::move(bytes)};
}

uint64_t SafetensorsWriter::data_bytes() const {
  uint64_t total = 0;
  for (const auto& [name, entry] : entries_) total += entry.bytes.size();
  return total;
}

std::vector<std::string> SafetensorsWriter::names() const {
  std::vector<std::string> out;
  out.reserve(entries_.size());
  for (const auto& [name, entry] : entries_) out.push_back(name);
  return out;
}

absl::Status SafetensorsWriter::Write(const std::string& path) const {
  // Data order as in the official writer: larger element sizes first, then by name. With
  // no gaps every tensor is aligned to its element size, and the official reader (which
  // rejects gaps) accepts the file.
  std::vector<std::pair<const std::string*, const Entry*>> order;
  for (const auto& [name, entry] : entries_) {
    const std::optional<uint64_t> needed = ByteCount(entry.shape, entry.dtype);
    if (!needed || *needed != entry.bytes.size()) {
      return TensorError(path, name,
                         absl::StrCat(entry.bytes.size(), " bytes do not match shape ",
                                      ShapeToString(entry.shape), " of ", Name(entry.dtype)));
    }
    order.emplace_back(&name, &entry);
  }
  std::stable_sort(order.begin(), order.end(), [](const auto& a, const auto& b) {
    return DTypeSize(a.second->dtype) > DTypeSize(b.second->dtype);
  });
  Json header = Json::object();  // nlohmann keeps object keys sorted
  header["__metadata__"] = {{"format", "pt"}};
  uint64_t offset = 0;
  for (const auto& [name, entry] : order) {
    header[*name] = {{"dtype", Name(entry->dtype)},
                     {"shape", entry->shape},
                     {"data_offsets", {offset, offset + entry->bytes.size()}}};
    offset += entry->bytes.size();
  }
  std::string header_text = header.dump();
  header_text.append((8 - header_text.size() % 8) % 8, ' ');  // data starts 8-byte aligned
  std::array<char, 8> length{};
  for (int i = 0; i < 8; ++i) length[i] = static_cast<char>(header_text.size() >> (8 * i));
  std::vector<std::string_view> chunks = {{length.data(), length.size()}, header_text};
  for (const auto& [name, entry] : order) {
    chunks.emplace_back(reinterpret_cast<const char*>(entry->bytes.data()), entry->bytes.size());
  }
  return WriteChunks(path, chunks);
}

absl::Status WriteSafetensorsIndex(const std::string& dir,
                                   const std::map<std::string, std::string>& weight_map,
                                   uint64_t total_size) {
  const Json index = {{"metadata", {{"total_size", total_size}}}, {"weight_map", weight_map}};
  const std::string text = index.dump(2) + "\n";
  return WriteChunks(JoinPath(dir, kIndexFile), {text});
}

}  // namespace dsv4
