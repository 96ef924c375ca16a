// Cluster YAML and prompts shared by the engine tests (dsv4-engine under mpirun, and the
// Engine class in process under mpirun).
#ifndef DSV4_TESTS_ENGINE_TEST_UTIL_H_
#define DSV4_TESTS_ENGINE_TEST_UTIL_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace dsv4::testing {

inline std::string Hardware() {
  return DSV4_SOURCE_DIR "/cluster-configs/hardware/ascend-950dt.yaml";
}

// A one-node cluster YAML of attention + expert ranks on one chip each.
inline std::string OneNodeYaml(int attention, int experts, int redundant, int prefill_chunk = 512) {
  return absl::StrCat(R"(name: engine-test
hardware: )",
                      Hardware(), R"(
topology:
  supernodes: 1
  nodes_per_supernode: 1
  chips_per_node: )",
                      attention + experts, R"(
  links:
    intra_node: {bandwidth_GBps: 1000, latency_us: 1.0}
    intra_supernode: {bandwidth_GBps: 1000, latency_us: 2.1}
    inter_supernode: {bandwidth_GBps: 50, latency_us: 5.0}
roles:
  attention_ranks: )",
                      attention, R"(
  expert_ranks: )",
                      experts, R"(
engine:
  micro_batches: 2
  chunked_prefill_tokens: )",
                      prefill_chunk, R"(
  placement: {policy: hierarchical, redundant_experts: )",
                      redundant, R"(}
)");
}

// `count` token ids below 1024, different for each `salt`; Tokens joins them for --tokens.
inline std::vector<int32_t> TokenIds(int count, int salt) {
  std::vector<int32_t> ids;
  for (int i = 0; i < count; ++i) ids.push_back((i * 37 + salt * 101 + 11) % 1024);
  return ids;
}
inline std::string Tokens(int count, int salt) { return absl::StrJoin(TokenIds(count, salt), ","); }

}  // namespace dsv4::testing

#endif  // DSV4_TESTS_ENGINE_TEST_UTIL_H_
