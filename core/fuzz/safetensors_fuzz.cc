// libFuzzer target: arbitrary bytes as a whole .safetensors file. The parser must return
// a status (never crash, throw or read out of bounds), and every entry it accepts must lie
// inside the data section with a byte count that matches its shape and dtype.
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "core/dtype.h"
#include "core/safetensors.h"

namespace {

uint64_t DataSectionBytes(const uint8_t* data, size_t size) {
  uint64_t header_bytes = 0;
  for (int i = 7; i >= 0; --i) header_bytes = (header_bytes << 8) | data[i];
  return size - 8 - header_bytes;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto entries = dsv4::ParseSafetensorsHeader(data, size, "fuzz-input");
  if (!entries.ok()) return 0;
  const uint64_t data_bytes = DataSectionBytes(data, size);
  for (const dsv4::HeaderEntry& entry : *entries) {
    uint64_t elements = 1;
    for (const int64_t dim : entry.shape) elements *= static_cast<uint64_t>(dim);
    const uint64_t expected = elements * static_cast<uint64_t>(dsv4::DTypeSize(entry.dtype));
    if (entry.begin > entry.end || entry.end > data_bytes || entry.end - entry.begin != expected) {
      std::abort();
    }
  }
  return 0;
}
