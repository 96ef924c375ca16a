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
  kEmbedding,   // embed.weight
  kHead,        // head.weight
  kNormWeight,  // RMSNorm gains
  kLinear,      // a weight matrix [out, in] (any dtype)
  kScale,       // E8M0 block scales of the preceding linear
  kHcFn,        // mHC projections
  kHcBase,
  kHcScale,
  kAttnSink,
  kApe,  // compressor positional bias
  kGateBias,
  kTid2Eid,            // hash-routing table
  kBias,               // linear biases (Engram projections)
  kEngramTable,        // layers.N.engram.multi_head_embedding.embedding.weight
  kEngramConv,         // layers.N.engram.short_conv.conv.weight
  kEngramMultipliers,  // layers.N.engram.multipliers: I64 hash multipliers (spec §6.3)
  kEngramTokenMap,     // engram.canonical_ids: I64 canonical id of each token (spec §6.2)
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

// The full list, in a stable order (globals, then layers, then MTP). Empty for
// deepseek_v3 (planner only). The V4.1 Engram names are unpublished; Engram tensors use
// the demo module's names under layers.N.engram. (see EngramTensors below).
std::vector<TensorSpec> ExpectedTensors(const ModelConfig& config);

// Parameter counts, following DeepSeek's published convention ("671B total, 37B active;
// the 685B checkpoint adds 14B of MTP"):
// - total: the main model, embedding and head included, MTP and Engram excluded;
// - active_per_token: everything in `total` except the routed experts and the embedding
//   matrix, plus k routed experts per MoE layer and one embedding row (the head counts
//   in full);
// - routed_expert: all routed experts of the main layers;
// - mtp: the MTP blocks (V3: including their embedding/head copies);
// - engram: Engram table rows × engram_head_dim. The Engram projections, norms and conv
//   run for every token and count in total and active_per_token like other dense weights.
// Scales, tid2eid and the Engram multipliers and canonical map are not parameters; an FP4
// byte holds two.
struct ParameterCount {
  int64_t total = 0;
  int64_t active_per_token = 0;
  int64_t routed_expert = 0;
  int64_t mtp = 0;
  int64_t engram = 0;
};
ParameterCount CountParameters(const ModelConfig& config);

// Names of the Engram tensors of main layer `layer` (demo module names; the table dtype
// is BF16, the projections are BF16 [d, (N−1)·K·d_e] with BF16 biases):
//   <p>multi_head_embedding.embedding.weight  [Σ primes, d_e]   the hashed table
//   <p>multipliers                            [N] I64
//   <p>value_proj.{weight,bias}, <p>key_projs.{i}.{weight,bias}   i < hc_mult
//   <p>norm1.{i}.weight, <p>norm2.{i}.weight  gate RMSNorms of key and stream
//   <p>short_conv.conv.weight [n·d, 1, kernel], <p>short_conv.norms.{i}.weight
// with <p> = "layers.<layer>.engram."; plus the global engram.canonical_ids [V] I64.
std::string EngramPrefix(int layer);
std::string EngramTableName(int layer);
inline constexpr char kEngramCanonicalIdsName[] = "engram.canonical_ids";

}  // namespace dsv4

#endif  // DSV4_CORE_CHECKPOINT_LAYOUT_H_
