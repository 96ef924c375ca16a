#include "core/npy.h"

#include <bit>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <iterator>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace dsv4 {
namespace {

static_assert(std::endian::native == std::endian::little, "npy I/O assumes a little-endian host");

constexpr char kMagic[] = "\x93NUMPY";
constexpr size_t kMagicSize = 6;

std::string ShapeTuple(const Shape& shape) {
  std::string out = "(";
  for (size_t i = 0; i < shape.size(); ++i) {
    absl::StrAppend(&out, shape[i], (shape.size() == 1 || i + 1 < shape.size()) ? "," : "");
    if (i + 1 < shape.size()) out += " ";
  }
  return out + ")";
}

// The value text after `'key':` in a header dict, up to the next top-level comma.
std::string DictValue(const std::string& header, const std::string& key) {
  const size_t at = header.find("'" + key + "'");
  if (at == std::string::npos) return "";
  size_t begin = header.find(':', at);
  if (begin == std::string::npos) return "";
  ++begin;
  int depth = 0;
  size_t end = begin;
  for (; end < header.size(); ++end) {
    const char c = header[end];
    if (c == '(') ++depth;
    if (c == ')') --depth;
    if ((c == ',' && depth == 0) || c == '}') break;
  }
  return std::string(absl::StripAsciiWhitespace(header.substr(begin, end - begin)));
}

}  // namespace

absl::Status WriteNpyF32(const std::string& path, const Shape& shape, const float* data) {
  std::string header =
      absl::StrCat("{'descr': '<f4', 'fortran_order': False, 'shape': ", ShapeTuple(shape), ", }");
  // Pad with spaces so that magic + version + length + header (ending in \n) is a
  // multiple of 64 bytes, as NumPy does.
  const size_t prefix = kMagicSize + 2 + 2;
  const size_t total = (prefix + header.size() + 1 + 63) / 64 * 64;
  header.append(total - prefix - header.size() - 1, ' ');
  header += '\n';
  if (header.size() > 65535) return absl::InvalidArgumentError("npy header too long");
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) return absl::UnavailableError(absl::StrCat("cannot open ", path, " for writing"));
  const uint16_t len = static_cast<uint16_t>(header.size());
  out.write(kMagic, kMagicSize);
  out.put(1);
  out.put(0);
  out.put(static_cast<char>(len & 0xFF));
  out.put(static_cast<char>(len >> 8));
  out.write(header.data(), static_cast<std::streamsize>(header.size()));
  out.write(reinterpret_cast<const char*>(data),
            static_cast<std::streamsize>(NumElements(shape) * sizeof(float)));
  if (!out) return absl::UnavailableError(absl::StrCat("error writing ", path));
  return absl::OkStatus();
}

absl::StatusOr<NpyArray> ReadNpyF32(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  auto bad = [&](const std::string& why) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a float32 .npy file: ", why));
  };
  if (bytes.size() < kMagicSize + 4 || bytes.compare(0, kMagicSize, kMagic) != 0) {
    return bad("bad magic");
  }
  const int major = static_cast<uint8_t>(bytes[kMagicSize]);
  size_t header_len = 0;
  size_t header_begin = 0;
  if (major == 1) {
    header_len = static_cast<uint8_t>(bytes[8]) | (static_cast<uint8_t>(bytes[9]) << 8);
    header_begin = 10;
  } else if (major == 2 || major == 3) {
    if (bytes.size() < 12) return bad("truncated header");
    uint32_t len32 = 0;
    std::memcpy(&len32, bytes.data() + 8, 4);
    header_len = len32;
    header_begin = 12;
  } else {
    return bad(absl::StrCat("unsupported version ", major));
  }
  if (header_begin + header_len > bytes.size()) return bad("truncated header");
  const std::string header = bytes.substr(header_begin, header_len);
  if (DictValue(header, "descr") != "'<f4'") return bad("descr is not '<f4'");
  if (DictValue(header, "fortran_order") != "False") return bad("not C order");
  std::string tuple = DictValue(header, "shape");
  if (tuple.size() < 2 || tuple.front() != '(' || tuple.back() != ')') return bad("bad shape");
  NpyArray array;
  for (absl::string_view part : absl::StrSplit(tuple.substr(1, tuple.size() - 2), ',')) {
    part = absl::StripAsciiWhitespace(part);
    if (part.empty()) continue;
    int64_t dim = 0;
    if (!absl::SimpleAtoi(part, &dim) || dim < 0) return bad("bad shape");
    array.shape.push_back(dim);
  }
  const size_t data_begin = header_begin + header_len;
  const size_t count = static_cast<size_t>(NumElements(array.shape));
  if (bytes.size() - data_begin != count * sizeof(float)) return bad("data size mismatch");
  array.data.resize(count);
  std::memcpy(array.data.data(), bytes.data() + data_begin, count * sizeof(float));
  return array;
}

}  // namespace dsv4
