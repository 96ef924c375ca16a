#include "core/checkpoint_layout.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/engram_rows.h"

namespace dsv4 {
namespace {

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Appends the tensors of spec §2.1 in a stable order.
class LayoutBuilder {
 public:
  explicit LayoutBuilder(const ModelConfig& config) : c_(config) {}

  std::vector<TensorSpec> Build() && {
    const int64_t d = c_.hidden_size, n = c_.hc_mult;
    layer_ = -1;
    Add("embed.weight", {c_.vocab_size, d}, DType::kBF16, TensorRole::kEmbedding);
    Add("head.weight", {c_.vocab_size, d}, DType::kBF16, TensorRole::kHead);
    Add("norm.weight", {d}, DType::kBF16, TensorRole::kNormWeight);
    if (!c_.is_v41()) {  // V4.1 collapses the streams with the last lagged pre-mix instead
      Add("hc_head_fn", {n, n * d}, DType::kF32, TensorRole::kHcFn);
      Add("hc_head_base", {n}, DType::kF32, TensorRole::kHcBase);
      Add("hc_head_scale", {1}, DType::kF32, TensorRole::kHcScale);
    }
    for (int i = 0; i < c_.num_hidden_layers; ++i) {
      layer_ = i;
      Block(absl::StrCat("layers.", i, "."));
    }
    if (c_.is_v41()) {
      DSpark();
      return std::move(out_);
    }
    for (int i = 0; i < c_.num_nextn_predict_layers; ++i) {
      layer_ = c_.num_hidden_layers + i;
      const std::string p = absl::StrCat("mtp.", i, ".");
      Block(p);
      Linear(p + "e_proj", d, d);
      Linear(p + "h_proj", d, d);
      Add(p + "enorm.weight", {d}, DType::kBF16, TensorRole::kNormWeight);
      Add(p + "hnorm.weight", {d}, DType::kBF16, TensorRole::kNormWeight);
      Add(p + "norm.weight", {d}, DType::kBF16, TensorRole::kNormWeight);
      Add(p + "hc_head_fn", {n, n * d}, DType::kF32, TensorRole::kHcFn);
      Add(p + "hc_head_base", {n}, DType::kF32, TensorRole::kHcBase);
      Add(p + "hc_head_scale", {1}, DType::kF32, TensorRole::kHcScale);
    }
    return std::move(out_);
  }

 private:
  void Add(std::string name, Shape shape, DType dtype, TensorRole role, int expert = -1) {
    out_.push_back({std::move(name), std::move(shape), dtype, role, layer_, expert});
  }

  // An [rows, cols] matrix in the checkpoint's dense-weight format: FP8 with E8M0 block
  // scales (partial edge blocks round the scale grid up), or BF16 without scales.
  void Linear(const std::string& name, int64_t rows, int64_t cols, int expert = -1) {
    if (!c_.fp8_weights) {
      Add(name + ".weight", {rows, cols}, DType::kBF16, TensorRole::kLinear, expert);
      return;
    }
    const int64_t b = c_.weight_block_size;
    Add(name + ".weight", {rows, cols}, DType::kF8E4M3, TensorRole::kLinear, expert);
    Add(name + ".scale", {CeilDiv(rows, b), CeilDiv(cols, b)}, DType::kF8E8M0, TensorRole::kScale,
        expert);
  }

  // A routed expert matrix: FP4 packs two inputs per byte with one E8M0 scale per 32
  // inputs (the parser requires both expert input widths to be multiples of 32).
  void ExpertLinear(const std::string& name, int64_t rows, int64_t cols, int expert) {
    if (c_.expert_dtype == "fp4") {
      Add(name + ".weight", {rows, cols / 2}, DType::kI8, TensorRole::kLinear, expert);
      Add(name + ".scale", {rows, cols / 32}, DType::kF8E8M0, TensorRole::kScale, expert);
    } else if (c_.expert_dtype == "fp8") {
      const int64_t b = c_.weight_block_size;
      Add(name + ".weight", {rows, cols}, DType::kF8E4M3, TensorRole::kLinear, expert);
      Add(name + ".scale", {CeilDiv(rows, b), CeilDiv(cols, b)}, DType::kF8E8M0, TensorRole::kScale,
          expert);
    } else {
      Add(name + ".weight", {rows, cols}, DType::kBF16, TensorRole::kLinear, expert);
    }
  }

  // A compressor with `dim`-wide entries for ratio m (c = 2 for the overlapping m = 4).
  void Compressor(const std::string& p, int m, int64_t dim) {
    const int64_t width = (m == 4 ? 2 : 1) * dim;
    Add(p + "ape", {m, width}, DType::kF32, TensorRole::kApe);
    Add(p + "wkv.weight", {width, c_.hidden_size}, DType::kBF16, TensorRole::kLinear);
    Add(p + "wgate.weight", {width, c_.hidden_size}, DType::kBF16, TensorRole::kLinear);
    Add(p + "norm.weight", {dim}, DType::kBF16, TensorRole::kNormWeight);
  }

  // V4.1's CSA2 tensors of an attention (prefix "layers.L.attn."): a kv source's
  // compressor (no APE, no overlap; ratio 1 has no gate) and the indexer's key half; an
  // index source's query half.
  void Csa2(const std::string& a) {
    const int64_t d = c_.hidden_size, D = c_.head_dim;
    const int64_t HI = c_.index_n_heads, DI = c_.index_head_dim;
    if (c_.is_kv_source(layer_)) {
      Add(a + "compressor.wkv.weight", {D, d}, DType::kBF16, TensorRole::kLinear);
      if (c_.ratio(layer_) > 1) {
        Add(a + "compressor.wgate.weight", {D, d}, DType::kBF16, TensorRole::kLinear);
      }
      Add(a + "compressor.norm.weight", {D}, DType::kBF16, TensorRole::kNormWeight);
      Add(a + "indexer.wk.weight", {DI, D}, DType::kBF16, TensorRole::kLinear);
      Add(a + "indexer.k_norm.weight", {DI}, DType::kBF16, TensorRole::kNormWeight);
    }
    if (c_.is_index_source(layer_)) {
      Linear(a + "indexer.wq_b", HI * DI, c_.q_lora_rank);
      Add(a + "indexer.weights_proj.weight", {HI, d}, DType::kBF16, TensorRole::kLinear);
    }
  }

  // The Engram module of a main layer, as released: the FP8 table with its per-32 E8M0
  // scales, the fused key/value projection and the gate weights.
  void Engram(int engram_index) {
    const EngramConfig& e = c_.engram;
    const int64_t d = c_.hidden_size, n = c_.hc_mult;
    const int64_t rows = e.num_embeddings[engram_index];
    const std::string p = EngramPrefix(layer_);
    Add(EngramTableName(layer_), {rows, e.head_dim}, DType::kF8E4M3, TensorRole::kEngramTable);
    Add(EngramScaleName(layer_), {rows, e.head_dim / kEngramScaleBlock}, DType::kF8E8M0,
        TensorRole::kScale);
    Linear(p + "wkv", (n + 1) * d, int64_t{e.columns()} * e.head_dim);
    Add(p + "q_weight", {n, d}, DType::kBF16, TensorRole::kEngramGate);
    Add(p + "k_weight", {n, d}, DType::kBF16, TensorRole::kEngramGate);
  }

  // The DSpark draft stages under mtp.* (written and checked; not evaluated): window-only
  // blocks routing over their own expert bank, the main-model projection on stage 0 and
  // the Markov and confidence heads on the last stage.
  void DSpark() {
    const int64_t d = c_.hidden_size, v = c_.vocab_size, r = c_.dspark_markov_rank;
    const int stages = c_.num_nextn_predict_layers;
    for (int i = 0; i < stages; ++i) {
      layer_ = c_.num_hidden_layers + i;
      const std::string p = absl::StrCat("mtp.", i, ".");
      Block(p);
      if (i == 0) {
        Linear(p + "main_proj", d, d * static_cast<int64_t>(c_.dspark_target_layer_ids.size()));
        Add(p + "main_norm.weight", {d}, DType::kBF16, TensorRole::kNormWeight);
      }
      if (i == stages - 1) {
        Add(p + "norm.weight", {d}, DType::kBF16, TensorRole::kNormWeight);
        Add(p + "markov_head.embed.weight", {v, r}, DType::kBF16, TensorRole::kEmbedding);
        Add(p + "markov_head.head.weight", {v, r}, DType::kBF16, TensorRole::kHead);
        Add(p + "confidence_head.proj.weight", {1, d + r}, DType::kBF16, TensorRole::kLinear);
      }
    }
  }

  void Block(const std::string& p) {
    const int64_t d = c_.hidden_size, n = c_.hc_mult, mix = c_.mix_dim();
    const std::vector<int>& engram_layers = c_.engram.layer_ids;
    const auto engram = std::find(engram_layers.begin(), engram_layers.end(), layer_);
    if (engram != engram_layers.end()) Engram(static_cast<int>(engram - engram_layers.begin()));
    const int64_t H = c_.num_attention_heads, D = c_.head_dim, Q = c_.q_lora_rank;
    const int64_t G = c_.o_groups, R = c_.o_lora_rank;
    const int64_t E = c_.routed_experts(layer_), F = c_.moe_intermediate_size;
    const int m = c_.ratio(layer_);
    for (const char* sub : {"attn", "ffn"}) {
      Add(absl::StrCat(p, "hc_", sub, "_fn"), {mix, n * d}, DType::kF32, TensorRole::kHcFn);
      Add(absl::StrCat(p, "hc_", sub, "_base"), {mix}, DType::kF32, TensorRole::kHcBase);
      Add(absl::StrCat(p, "hc_", sub, "_scale"), {3}, DType::kF32, TensorRole::kHcScale);
    }
    Add(p + "attn_norm.weight", {d}, DType::kBF16, TensorRole::kNormWeight);
    Add(p + "ffn_norm.weight", {d}, DType::kBF16, TensorRole::kNormWeight);

    const std::string a = p + "attn.";
    Add(a + "attn_sink", {H}, DType::kF32, TensorRole::kAttnSink);
    Linear(a + "wq_a", Q, d);
    Add(a + "q_norm.weight", {Q}, DType::kBF16, TensorRole::kNormWeight);
    Linear(a + "wq_b", H * D, Q);
    Linear(a + "wkv", D, d);
    Add(a + "kv_norm.weight", {D}, DType::kBF16, TensorRole::kNormWeight);
    Linear(a + "wo_a", G * R, H * D / G);
    Linear(a + "wo_b", d, G * R);
    if (c_.is_v41()) {
      Csa2(a);
    } else if (m > 0) {
      Compressor(a + "compressor.", m, D);
    }
    if (c_.is_csa(layer_)) {
      const int64_t HI = c_.index_n_heads, DI = c_.index_head_dim;
      Linear(a + "indexer.wq_b", HI * DI, Q);
      Add(a + "indexer.weights_proj.weight", {HI, d}, DType::kBF16, TensorRole::kLinear);
      Compressor(a + "indexer.compressor.", m, DI);
    }

    const std::string f = p + "ffn.";
    Add(f + "gate.weight", {E, d}, DType::kBF16, TensorRole::kLinear);
    if (c_.is_hash_layer(layer_)) {
      Add(f + "gate.tid2eid", {c_.vocab_size, c_.num_experts_per_tok}, DType::kI64,
          TensorRole::kTid2Eid);
    } else {
      Add(f + "gate.bias", {E}, DType::kF32, TensorRole::kGateBias);
    }
    for (int e = 0; e < E; ++e) {
      const std::string x = absl::StrCat(f, "experts.", e, ".");
      ExpertLinear(x + "w1", F, d, e);
      ExpertLinear(x + "w2", d, F, e);
      ExpertLinear(x + "w3", F, d, e);
    }
    Linear(f + "shared_experts.w1", F, d);
    Linear(f + "shared_experts.w2", d, F);
    Linear(f + "shared_experts.w3", F, d);
  }

  const ModelConfig& c_;
  std::vector<TensorSpec> out_;
  int layer_ = -1;
};

// A tensor's parameter count; FP4 expert bytes hold two parameters each. Scales and the
// integer tables (tid2eid) are not parameters.
int64_t Params(const TensorSpec& t) {
  if (t.role == TensorRole::kScale || t.dtype == DType::kI64) return 0;
  return NumElements(t.shape) * (t.dtype == DType::kI8 ? 2 : 1);
}

// DeepSeek-V3 (MLA, dense first layers, no mHC), from the HF modelling code.
ParameterCount CountV3(const ModelConfig& c) {
  const int64_t d = c.hidden_size, H = c.num_attention_heads, Q = c.q_lora_rank;
  const int64_t qk = c.qk_nope_head_dim + c.qk_rope_head_dim;
  const int64_t q_proj = Q > 0 ? Q * d + Q + H * qk * Q : H * qk * d;
  const int64_t attn = q_proj + (c.kv_lora_rank + c.qk_rope_head_dim) * d + c.kv_lora_rank +
                       H * (c.qk_nope_head_dim + c.v_head_dim) * c.kv_lora_rank +
                       d * H * c.v_head_dim + 2 * d;
  const int64_t expert = 3 * d * c.moe_intermediate_size;
  const int64_t routed = c.n_routed_experts * expert;
  const int64_t moe_dense = c.n_shared_experts * expert + c.n_routed_experts * (d + 1);
  const int64_t dense_ffn = 3 * d * c.intermediate_size;
  const int64_t embed = c.vocab_size * d;
  const int dense_layers = c.first_k_dense_replace;
  const int moe_layers = c.num_hidden_layers - dense_layers;

  ParameterCount p;
  p.routed_expert = moe_layers * routed;
  p.total = 2 * embed + d + c.num_hidden_layers * attn + dense_layers * dense_ffn +
            moe_layers * (moe_dense + routed);
  p.active_per_token =
      p.total - p.routed_expert - embed + d + moe_layers * c.num_experts_per_tok * expert;
  // Each V3 MTP module is a MoE block plus eh_proj [d, 2d], enorm, hnorm, its own
  // shared_head.norm, and (in the released checkpoint) copies of the embedding and head.
  p.mtp = c.num_nextn_predict_layers * (attn + moe_dense + routed + 2 * d * d + 3 * d + 2 * embed);
  return p;
}

}  // namespace

int64_t TensorSpec::nbytes() const { return NumElements(shape) * DTypeSize(dtype); }

std::string EngramPrefix(int layer) { return absl::StrCat("layers.", layer, ".engram."); }
std::string EngramTableName(int layer) { return EngramPrefix(layer) + "embed.weight"; }
std::string EngramScaleName(int layer) { return EngramPrefix(layer) + "embed.scale"; }

bool IsVisionTensor(const ModelConfig& config, const std::string& name) {
  if (!config.is_v41()) return false;
  for (const char* prefix : {"vision.", "aligner."}) {
    if (name.rfind(prefix, 0) == 0) return true;
  }
  const std::string suffix = ".ffn.gate.bias_vl";
  return name == "image_start" || name == "image_end" || name == "image_newline" ||
         (name.size() > suffix.size() &&
          name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0);
}

std::vector<TensorSpec> ExpectedTensors(const ModelConfig& config) {
  if (!config.is_v4()) return {};
  return LayoutBuilder(config).Build();
}

ParameterCount CountParameters(const ModelConfig& config) {
  if (!config.is_v4()) return CountV3(config);
  ParameterCount p;
  for (const TensorSpec& t : ExpectedTensors(config)) {
    const int64_t params = Params(t);
    if (config.is_mtp(t.layer)) {
      p.mtp += params;
      continue;
    }
    if (t.role == TensorRole::kEngramTable) {
      p.engram += params;
      continue;
    }
    p.total += params;
    if (t.expert >= 0) {
      p.routed_expert += params;
    } else if (t.role == TensorRole::kEmbedding) {
      p.active_per_token += config.hidden_size;  // a token reads one embedding row
    } else {
      p.active_per_token += params;
    }
  }
  // Every token runs k of the E routed experts in each main layer (hash layers too).
  p.active_per_token += p.routed_expert / config.n_routed_experts * config.num_experts_per_tok;
  return p;
}

}  // namespace dsv4
