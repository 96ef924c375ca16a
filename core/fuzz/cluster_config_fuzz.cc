// libFuzzer target: arbitrary bytes as a cluster YAML (core/cluster_config.h). The parser
// must return a status (never crash, throw or hang) with a message. (A config it accepts has
// already built its topology: ParseClusterConfig calls Topology::Build.) The input is read as if it
// lived in cluster-configs/, so the shipped hardware files resolve and accepted inputs reach the
// topology checks.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "core/cluster_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  const absl::StatusOr<dsv4::ClusterConfig> config =
      dsv4::ParseClusterConfig(text, DSV4_SOURCE_DIR "/cluster-configs/fuzz-input.yaml");
  if (!config.ok() && config.status().message().empty()) std::abort();  // errors say something
  return 0;
}
