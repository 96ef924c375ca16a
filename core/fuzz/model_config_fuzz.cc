// libFuzzer target: arbitrary bytes as a config.json (core/model_config.h: V4, V4.1 with
// its nested text_config, V3). The parser must return a status, never crash or throw.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "core/model_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  const absl::StatusOr<dsv4::ModelConfig> config = dsv4::ParseModelConfig(text, "fuzz-input");
  if (!config.ok() && config.status().message().empty()) std::abort();
  return 0;
}
