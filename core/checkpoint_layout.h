// Every tensor an official V4 checkpoint holds for a given config: name, shape, dtype and
// role. The generator writes exactly this list, `checkpoint inspect` verifies it, and the
// loaders name tensors through it.
#ifndef DSV4_CORE_CHECKPOINT_LAYOUT_H_
#define DSV4_CORE_CHECKPOINT_LAYOUT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/model_config.h"
#include "core/tensor.h"

namespace dsv4 {

// What a tensor is, for generating plausible values and for accounting.
enum class TensorRole {
  kEmbedding,     // embed.weight
  kHead,          // head.weight
  kNormWeight,    // RMSNorm gains
  kLinear,        // a weight matrix [out, in] (any dtype)
  kScale,         // E8M0 block scales of the preceding linear
  kHcFn,          // mHC projections
  kHcBase,
  kHcScale,
  kAttnSink,
  kApe,           // compressor positional bias
  kGateBias,
  kTid2Eid,       // hash-routing table
  kEngramTable,
  kEngramConv,
};

struct TensorSpec {
  std::string name;
  Shape shape;
  DType dtype;
  TensorRole role;
  int layer = -1;   // main layer index, L + i for MTP block i, -1 for globals
  int expert = -1;  // routed expert id, -1 otherwise
  int64_t nbytes() const;
};

// The full list, in a stable order (globals, then layers, then MTP).
std::vector<TensorSpec> ExpectedTensors(const ModelConfig& config);

// Parameter counts: total, and active per token (one token's routed top-k experts,
// the shared expert, all dense weights; embedding rows counted once, Engram excluded).
struct ParameterCount {
  int64_t total = 0;
  int64_t active_per_token = 0;
  int64_t routed_expert = 0;  // all routed experts
  int64_t mtp = 0;            // in the MTP blocks
  int64_t engram = 0;         // Engram tables
};
ParameterCount CountParameters(const ModelConfig& config);

}  // namespace dsv4

#endif  // DSV4_CORE_CHECKPOINT_LAYOUT_H_
