#include "attention_node/engram.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <tuple>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/checkpoint_layout.h"
#include "core/engram_hash.h"
#include "core/kernels.h"
#include "core/matmul.h"
#include "core/status_macros.h"

namespace dsv4 {
namespace {

// The demo's gate norms are torch RMSNorms with eps=None, i.e. the fp32 machine epsilon;
// the conv norms use 1e-5.
constexpr float kGateNormEps = FLT_EPSILON;
constexpr float kConvNormEps = 1e-5f;

// NumPy's int64 `%` with a positive modulus: the result takes the modulus's sign.
int64_t FloorMod(int64_t a, int64_t p) {
  const int64_t r = a % p;
  return r < 0 ? r + p : r;
}

// Local rows are gathered on the spot; the fetch just carries the request.
class LocalFetch : public EngramRowFetch {
 public:
  LocalFetch(const std::vector<const TensorView*>* tables, std::vector<std::vector<int64_t>> rows)
      : tables_(tables), rows_(std::move(rows)) {}

  absl::Status Wait(int index, float* out) override {
    const TensorView& t = *(*tables_)[index];
    const int64_t dim = t.shape[1], row_bytes = dim * DTypeSize(t.dtype);
    for (size_t i = 0; i < rows_[index].size(); ++i) {
      const int64_t row = rows_[index][i];
      if (row < 0 || row >= t.shape[0]) {
        return absl::OutOfRangeError(
            absl::StrCat(t.name, ": row ", row, " outside [0, ", t.shape[0], ")"));
      }
      RETURN_IF_ERROR(RowsToF32(t.dtype, t.data + row * row_bytes, 1, dim, out + i * dim));
    }
    return absl::OkStatus();
  }

 private:
  const std::vector<const TensorView*>* tables_;
  std::vector<std::vector<int64_t>> rows_;
};

}  // namespace

absl::StatusOr<EngramHasher> EngramHasher::Create(const ModelConfig& config,
                                                  std::vector<int64_t> canonical_ids,
                                                  std::vector<std::vector<int64_t>> multipliers) {
  const EngramConfig& e = config.engram;
  if (!e.enabled()) return absl::InvalidArgumentError("the model config has no Engram layers");
  if (static_cast<int64_t>(canonical_ids.size()) != config.vocab_size) {
    return absl::InvalidArgumentError(absl::StrCat("Engram canonical map has ",
                                                   canonical_ids.size(), " entries, vocab_size is ",
                                                   config.vocab_size));
  }
  for (size_t id = 0; id < canonical_ids.size(); ++id) {
    if (canonical_ids[id] < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("Engram canonical id of token ", id, " is negative: ", canonical_ids[id]));
    }
  }
  if (multipliers.size() != e.layer_ids.size()) {
    return absl::InvalidArgumentError(absl::StrCat("Engram multipliers for ", multipliers.size(),
                                                   " layers, config has ", e.layer_ids.size()));
  }
  for (size_t i = 0; i < multipliers.size(); ++i) {
    if (static_cast<int>(multipliers[i].size()) != e.max_ngram_size) {
      return absl::InvalidArgumentError(
          absl::StrCat("Engram layer ", e.layer_ids[i], " has ", multipliers[i].size(),
                       " multipliers, engram_max_ngram_size is ", e.max_ngram_size));
    }
  }
  EngramHasher h;
  h.layer_ids_ = e.layer_ids;
  h.max_ngram_ = e.max_ngram_size;
  h.n_heads_ = e.n_heads;
  h.head_dim_ = e.head_dim;
  h.hc_mult_ = config.hc_mult;
  h.hidden_ = config.hidden_size;
  h.conv_history_ = (e.kernel_size - 1) * e.max_ngram_size;
  h.pad_id_ = canonical_ids[e.pad_token_id];
  h.canonical_ = std::move(canonical_ids);
  h.multipliers_ = std::move(multipliers);
  h.head_sizes_ = EngramHeadSizes(e);
  for (const std::vector<int64_t>& sizes : h.head_sizes_) {
    std::vector<int64_t> offsets;
    int64_t total = 0;
    for (int64_t p : sizes) {
      offsets.push_back(total);
      total += p;
    }
    h.offsets_.push_back(std::move(offsets));
    h.table_rows_.push_back(total);
  }
  return h;
}

absl::StatusOr<EngramHasher> EngramHasher::Load(const ModelConfig& config, Checkpoint* checkpoint) {
  ASSIGN_OR_RETURN(std::vector<int64_t> canonical, checkpoint->LoadI64(kEngramCanonicalIdsName));
  std::vector<std::vector<int64_t>> multipliers;
  for (int layer : config.engram.layer_ids) {
    ASSIGN_OR_RETURN(std::vector<int64_t> m,
                     checkpoint->LoadI64(EngramPrefix(layer) + "multipliers"));
    multipliers.push_back(std::move(m));
  }
  return Create(config, std::move(canonical), std::move(multipliers));
}

int EngramHasher::index_of(int layer) const {
  const auto it = std::find(layer_ids_.begin(), layer_ids_.end(), layer);
  return it == layer_ids_.end() ? -1 : static_cast<int>(it - layer_ids_.begin());
}

EngramState EngramHasher::NewState() const {
  EngramState state;
  Reset(&state);
  return state;
}

void EngramHasher::Reset(EngramState* state) const {
  state->history.assign(max_ngram_ - 1, pad_id_);
  state->conv.resize(layer_ids_.size());
  for (std::vector<float>& c : state->conv) c.assign(conv_history_ * hc_mult_ * hidden_, 0.0f);
}

void EngramHasher::RowIds(int index, const EngramState& state, absl::Span<const int32_t> tokens,
                          int64_t* rows) const {
  const int h_total = heads();
  const int64_t hist = static_cast<int64_t>(state.history.size());
  const std::vector<int64_t>& m = multipliers_[index];
  for (int64_t t = 0; t < static_cast<int64_t>(tokens.size()); ++t) {
    // tok_k = canonical id k positions back; the history supplies positions before t = 0.
    auto tok = [&](int k) {
      const int64_t at = t - k;
      return at >= 0 ? canonical_[tokens[at]] : state.history[hist + at];
    };
    // NumPy multiplies and XORs in wrapping int64; unsigned arithmetic gives those bits.
    uint64_t mix = static_cast<uint64_t>(tok(0)) * static_cast<uint64_t>(m[0]);
    for (int n = 2; n <= max_ngram_; ++n) {
      mix ^= static_cast<uint64_t>(tok(n - 1)) * static_cast<uint64_t>(m[n - 1]);
      for (int j = 0; j < n_heads_; ++j) {
        const int h = (n - 2) * n_heads_ + j;
        rows[t * h_total + h] =
            offsets_[index][h] + FloorMod(static_cast<int64_t>(mix), head_sizes_[index][h]);
      }
    }
  }
}

void EngramHasher::Advance(EngramState* state, absl::Span<const int32_t> tokens) const {
  for (int32_t token : tokens) {
    state->history.erase(state->history.begin());
    state->history.push_back(canonical_[token]);
  }
}

absl::StatusOr<std::unique_ptr<LocalEngramTables>> LocalEngramTables::Load(
    const ModelConfig& config, Checkpoint* checkpoint) {
  const std::vector<std::vector<int64_t>> sizes = EngramHeadSizes(config.engram);
  auto tables = std::unique_ptr<LocalEngramTables>(new LocalEngramTables());
  for (size_t i = 0; i < sizes.size(); ++i) {
    ASSIGN_OR_RETURN(const TensorView* view,
                     checkpoint->Get(EngramTableName(config.engram.layer_ids[i])));
    int64_t rows = 0;
    for (int64_t p : sizes[i]) rows += p;
    const Shape expected = {rows, config.engram.head_dim};
    if (view->shape != expected) {
      return absl::InvalidArgumentError(absl::StrCat(
          "checkpoint ", checkpoint->dir(), ": tensor ", view->name, " has shape ",
          ShapeToString(view->shape), ", config.json implies ", ShapeToString(expected)));
    }
    if (absl::Status s = CheckRowDType(view->dtype); !s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(view->name, ": ", s.message()));
    }
    tables->tables_.push_back(view);
  }
  return tables;
}

std::unique_ptr<EngramRowFetch> LocalEngramTables::Prefetch(
    std::vector<std::vector<int64_t>> rows) {
  return std::make_unique<LocalFetch>(&tables_, std::move(rows));
}

EngramLayer::EngramLayer(const ModelConfig& config, Weights weights)
    : w_(std::move(weights)),
      d_(config.hidden_size),
      n_(config.hc_mult),
      width_(int64_t{config.engram.max_ngram_size - 1} * config.engram.n_heads *
             config.engram.head_dim),
      kernel_(config.engram.kernel_size),
      dilation_(config.engram.max_ngram_size) {}

absl::StatusOr<EngramLayer> EngramLayer::Load(WeightLoader& loader, const ModelConfig& config,
                                              int layer) {
  const int64_t d = config.hidden_size, n = config.hc_mult;
  const EngramConfig& e = config.engram;
  const int64_t width = int64_t{e.max_ngram_size - 1} * e.n_heads * e.head_dim;
  const std::string p = EngramPrefix(layer);
  Weights w;
  // Stacks n per-stream tensors of `shape` into one [n, ...] tensor.
  auto stacked = [&](const std::string& stem, const std::string& leaf, const Shape& shape,
                     Tensor* out) -> absl::Status {
    Shape full = shape;
    full.insert(full.begin(), n);
    *out = Tensor(full);
    const int64_t numel = NumElements(shape);
    for (int64_t i = 0; i < n; ++i) {
      ASSIGN_OR_RETURN(Tensor t, loader.Load(absl::StrCat(p, stem, i, leaf), shape));
      std::memcpy(out->data() + i * numel, t.data(), numel * sizeof(float));
    }
    return absl::OkStatus();
  };
  ASSIGN_OR_RETURN(w.value_w, loader.LoadMatrix(p + "value_proj.weight", d, width));
  for (int64_t i = 0; i < n; ++i) {
    ASSIGN_OR_RETURN(WeightMatrix key,
                     loader.LoadMatrix(absl::StrCat(p, "key_projs.", i, ".weight"), d, width));
    w.key_w.push_back(key);
  }
  ASSIGN_OR_RETURN(w.value_b, loader.Load(p + "value_proj.bias", {d}));
  ASSIGN_OR_RETURN(Tensor conv_w,
                   loader.Load(p + "short_conv.conv.weight", {n * d, 1, e.kernel_size}));
  w.conv_w = conv_w.Reshape({n * d, e.kernel_size});
  for (auto [stem, leaf, shape, out] :
       {std::tuple{"key_projs.", ".bias", Shape{d}, &w.key_b},
        std::tuple{"norm1.", ".weight", Shape{d}, &w.norm1},
        std::tuple{"norm2.", ".weight", Shape{d}, &w.norm2},
        std::tuple{"short_conv.norms.", ".weight", Shape{d}, &w.conv_norm}}) {
    RETURN_IF_ERROR(stacked(stem, leaf, shape, out));
  }
  return EngramLayer(config, std::move(w));
}

void EngramLayer::Apply(const float* x, const float* e, int64_t T, std::vector<float>* conv_history,
                        float* out) const {
  const int64_t d = d_, n = n_, channels = n * d;
  if (T == 0) return;
  const int64_t hist = static_cast<int64_t>(conv_history->size()) / channels;
  // v [T, d] and, per stream, the gate α [T, n].
  std::vector<float> v(T * d), key(T * d), xn(d), alpha(T * n);
  MatMul(e, T, w_.value_w, v.data());
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t c = 0; c < d; ++c) v[t * d + c] += w_.value_b.data()[c];
  }
  const float inv_sqrt_d = 1.0f / std::sqrt(static_cast<float>(d));
  for (int64_t i = 0; i < n; ++i) {
    MatMul(e, T, w_.key_w[i], key.data());
    for (int64_t t = 0; t < T; ++t) {
      float* k = key.data() + t * d;
      for (int64_t c = 0; c < d; ++c) k[c] += w_.key_b.data()[i * d + c];
      RmsNorm(k, w_.norm1.data() + i * d, 1, d, kGateNormEps, k);
      RmsNorm(x + (t * n + i) * d, w_.norm2.data() + i * d, 1, d, kGateNormEps, xn.data());
      float z = 0.0f;
      for (int64_t c = 0; c < d; ++c) z += k[c] * xn[c];
      z *= inv_sqrt_d;
      const float root = std::sqrt(std::max(std::fabs(z), 1e-6f));
      alpha[t * n + i] = Sigmoid(z > 0 ? root : (z < 0 ? -root : 0.0f));
    }
  }
  // Conv input û = RMSNorm_i(u_i), appended after the history: ext [hist + T, n·d].
  std::vector<float> ext(conv_history->size() + T * channels);
  std::copy(conv_history->begin(), conv_history->end(), ext.begin());
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t i = 0; i < n; ++i) {
      float* u = ext.data() + (hist + t) * channels + i * d;
      for (int64_t c = 0; c < d; ++c) u[c] = alpha[t * n + i] * v[t * d + c];
      RmsNorm(u, w_.conv_norm.data() + i * d, 1, d, kConvNormEps, u);
    }
  }
  // y_c[t] = Σ_j w_c[j] · û_c[t − (kernel−1−j)·dilation]; the history holds exactly the
  // (kernel−1)·dilation inputs a decode step reaches back to, zeros before the start.
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t ch = 0; ch < channels; ++ch) {
      float y = 0.0f;
      for (int j = 0; j < kernel_; ++j) {
        const int64_t at = hist + t - int64_t{kernel_ - 1 - j} * dilation_;
        if (at >= 0) y += w_.conv_w.data()[ch * kernel_ + j] * ext[at * channels + ch];
      }
      const int64_t i = ch / d, c = ch % d;
      const int64_t o = (t * n + i) * d + c;
      out[o] = x[o] + alpha[t * n + i] * v[t * d + c] + Silu(y);
    }
  }
  std::copy(ext.end() - conv_history->size(), ext.end(), conv_history->begin());
}

absl::StatusOr<std::unique_ptr<EngramModule>> EngramModule::Load(const ModelConfig& config,
                                                                 Checkpoint* checkpoint,
                                                                 EngramRowSource* source) {
  ASSIGN_OR_RETURN(EngramHasher hasher, EngramHasher::Load(config, checkpoint));
  auto module = std::unique_ptr<EngramModule>(new EngramModule(std::move(hasher)));
  WeightLoader loader(checkpoint, config.weight_block_size);
  for (int layer : config.engram.layer_ids) {
    ASSIGN_OR_RETURN(EngramLayer l, EngramLayer::Load(loader, config, layer));
    module->layers_.push_back(std::move(l));
  }
  module->weight_bytes_ = loader.bytes();
  module->mappings_ = loader.mappings();
  if (source == nullptr) {
    ASSIGN_OR_RETURN(module->local_, LocalEngramTables::Load(config, checkpoint));
    source = module->local_.get();
  }
  module->source_ = source;
  return module;
}

std::unique_ptr<EngramRowFetch> EngramModule::Begin(absl::Span<const Segment> segments) const {
  for (const Segment& s : segments) {
    if (s.state->history.empty()) hasher_.Reset(s.state);
  }
  const int heads = hasher_.heads();
  std::vector<std::vector<int64_t>> rows(hasher_.num_layers());
  for (int index = 0; index < hasher_.num_layers(); ++index) {
    for (const Segment& s : segments) {
      const size_t at = rows[index].size();
      rows[index].resize(at + s.tokens.size() * heads);
      hasher_.RowIds(index, *s.state, s.tokens, rows[index].data() + at);
    }
  }
  return source_->Prefetch(std::move(rows));
}

absl::Status EngramModule::Apply(int layer, EngramRowFetch* fetch,
                                 absl::Span<const Segment> segments, float* x) const {
  const int index = hasher_.index_of(layer);
  if (index < 0) return absl::InternalError(absl::StrCat("layer ", layer, " has no Engram"));
  const EngramLayer& l = layers_[index];
  int64_t tokens = 0;
  for (const Segment& s : segments) tokens += static_cast<int64_t>(s.tokens.size());
  std::vector<float> e(tokens * l.width());
  RETURN_IF_ERROR(fetch->Wait(index, e.data()));
  const int64_t stride = l.weights().conv_norm.numel();  // n·d per row
  int64_t row = 0;
  for (const Segment& s : segments) {
    float* xs = x + s.row_begin * stride;
    const int64_t T = static_cast<int64_t>(s.tokens.size());
    l.Apply(xs, e.data() + row * l.width(), T, &s.state->conv[index], xs);
    row += T;
  }
  return absl::OkStatus();
}

void EngramModule::Advance(absl::Span<const Segment> segments) const {
  for (const Segment& s : segments) hasher_.Advance(s.state, s.tokens);
}

}  // namespace dsv4
