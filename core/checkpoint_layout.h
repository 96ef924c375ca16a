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
  kTid2Eid,      // hash-routing table
  kEngramTable,  // layers.N.engram.embed.weight (its scale is a kScale)
  kEngramGate,   // layers.N.engram.q_weight / k_weight
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

// The full list, in a stable order (globals, then layers, then MTP / DSpark stages). Empty
// for deepseek_v3 (planner only). V4.1 (spec deepseek-v41-model.md): no hc_head, CSA2
// tensors by layer role, Engram as released, DSpark stages under mtp.*; the vision tower
// is not listed (text only).
std::vector<TensorSpec> ExpectedTensors(const ModelConfig& config);

// Parameter counts, following DeepSeek's published convention ("671B total, 37B active;
// the 685B checkpoint adds 14B of MTP"):
// - total: the main model, embedding and head included, MTP and Engram excluded;
// - active_per_token: everything in `total` except the routed experts and the embedding
//   matrix, plus k routed experts per MoE layer and one embedding row (the head counts
//   in full);
// - routed_expert: all routed experts of the main layers;
// - mtp: the MTP blocks (V3: including their embedding/head copies);
// - engram: Engram table rows × engram_head_dim. The Engram projection (wkv) and gate
//   weights run for every token and count in total and active_per_token like other dense
//   weights.
// Scales and tid2eid are not parameters; an FP4 byte holds two.
struct ParameterCount {
  int64_t total = 0;
  int64_t active_per_token = 0;
  int64_t routed_expert = 0;
  int64_t mtp = 0;
  int64_t engram = 0;
};
ParameterCount CountParameters(const ModelConfig& config);

// V4.1's vision tower (vision.*, aligner.*, image_start/end/newline, the gates' bias_vl):
// present in the release, absent from small checkpoints, never read (text-only serving).
bool IsVisionTensor(const ModelConfig& config, const std::string& name);

// Names of the Engram tensors of main layer `layer` (spec deepseek-v41-model.md §2):
//   <p>embed.weight F8_E4M3 [rows, d_e], <p>embed.scale F8_E8M0 [rows, d_e/32]
//   <p>wkv.{weight,scale} FP8 [(n+1)·d, (N−1)·K·d_e], <p>q_weight, <p>k_weight BF16 [n, d]
// with <p> = "layers.<layer>.engram.". The token map and hash multipliers are not stored:
// they follow from tokenizer.json and the config.
std::string EngramPrefix(int layer);
std::string EngramTableName(int layer);
std::string EngramScaleName(int layer);

}  // namespace dsv4

#endif  // DSV4_CORE_CHECKPOINT_LAYOUT_H_
