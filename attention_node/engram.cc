#include "attention_node/engram.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <tuple>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/checkpoint_layout.h"
#include "core/engram_hash.h"
#include "core/engram_token_map.h"
#include "core/kernels.h"
#include "core/matmul.h"
#include "core/status_macros.h"
#include "core/tokenizer.h"

namespace dsv4 {
namespace {

// The official gate's floor under |dot| before the square root.
constexpr float kGateClamp = 1e-6f;

// NumPy's int64 `%` with a positive modulus: the result takes the modulus's sign.
int64_t FloorMod(int64_t a, int64_t p) {
  const int64_t r = a % p;
  return r < 0 ? r + p : r;
}

// Local rows are dequantised on the spot; the fetch just carries the request.
class LocalFetch : public EngramRowFetch {
 public:
  LocalFetch(const std::vector<LocalEngramTables::Table>* tables,
             std::vector<std::vector<int64_t>> rows)
      : tables_(tables), rows_(std::move(rows)) {}

  absl::Status Wait(int index, float* out) override {
    const LocalEngramTables::Table& t = (*tables_)[index];
    const int64_t dim = t.values->shape[1], blocks = t.scales->shape[1];
    for (size_t i = 0; i < rows_[index].size(); ++i) {
      const int64_t row = rows_[index][i];
      if (row < 0 || row >= t.values->shape[0]) {
        return absl::OutOfRangeError(
            absl::StrCat(t.values->name, ": row ", row, " outside [0, ", t.values->shape[0], ")"));
      }
      DequantizeEngramRow(t.values->data + row * dim, t.scales->data + row * blocks, dim,
                          out + i * dim);
    }
    return absl::OkStatus();
  }

 private:
  const std::vector<LocalEngramTables::Table>* tables_;
  std::vector<std::vector<int64_t>> rows_;
};

}  // namespace

absl::StatusOr<EngramHasher> EngramHasher::Create(const ModelConfig& config,
                                                  std::vector<int64_t> compressed,
                                                  int64_t compressed_size) {
  const EngramConfig& e = config.engram;
  if (!e.enabled()) return absl::InvalidArgumentError("the model config has no Engram layers");
  if (compressed_size != e.compressed_vocab_size) {
    return absl::InvalidArgumentError(
        absl::StrCat(config.source, ": the tokenizer gives ", compressed_size,
                     " compressed Engram token ids, engram_compressed_vocab_size is ",
                     e.compressed_vocab_size, " (the hash multipliers depend on it)"));
  }
  if (static_cast<int64_t>(compressed.size()) > config.vocab_size ||
      e.pad_token_id >= static_cast<int64_t>(compressed.size())) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the Engram token map covers ", compressed.size(), " ids; it must cover the pad token ",
        e.pad_token_id, " and at most vocab_size = ", config.vocab_size));
  }
  for (size_t id = 0; id < compressed.size(); ++id) {
    if (compressed[id] < 0 || compressed[id] >= compressed_size) {
      return absl::InvalidArgumentError(absl::StrCat("Engram compressed id of token ", id, " is ",
                                                     compressed[id], ", outside [0, ",
                                                     compressed_size, ")"));
    }
  }
  EngramHasher h;
  h.layer_ids_ = e.layer_ids;
  h.max_ngram_ = e.max_ngram_size;
  h.n_heads_ = e.n_heads;
  h.head_dim_ = e.head_dim;
  h.pad_id_ = compressed[e.pad_token_id];
  h.compressed_ = std::move(compressed);
  for (int layer : e.layer_ids) {
    h.multipliers_.push_back(EngramMultipliers(layer, compressed_size, e.max_ngram_size));
  }
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
  const std::string path = checkpoint->dir() + "/tokenizer.json";
  absl::StatusOr<Tokenizer> tokenizer = Tokenizer::Load(path);
  if (!tokenizer.ok()) {
    return absl::Status(tokenizer.status().code(),
                        absl::StrCat("Engram builds its token map from the checkpoint's "
                                     "tokenizer.json: ",
                                     tokenizer.status().message()));
  }
  EngramTokenMap map = BuildEngramTokenMap(*tokenizer);
  return Create(config, std::move(map.compressed), map.size);
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
}

int64_t EngramHasher::compressed(int32_t token) const {
  return token < static_cast<int64_t>(compressed_.size()) ? compressed_[token] : pad_id_;
}

void EngramHasher::RowIds(int index, const EngramState& state, absl::Span<const int32_t> tokens,
                          int64_t* rows) const {
  const int h_total = heads();
  const int64_t hist = static_cast<int64_t>(state.history.size());
  const std::vector<int64_t>& m = multipliers_[index];
  for (int64_t t = 0; t < static_cast<int64_t>(tokens.size()); ++t) {
    // tok_k = compressed id k positions back; the history supplies positions before t = 0.
    auto tok = [&](int k) {
      const int64_t at = t - k;
      return at >= 0 ? compressed(tokens[at]) : state.history[hist + at];
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
    state->history.push_back(compressed(token));
  }
}

absl::StatusOr<std::unique_ptr<LocalEngramTables>> LocalEngramTables::Load(
    const ModelConfig& config, Checkpoint* checkpoint) {
  const EngramConfig& e = config.engram;
  auto tables = std::unique_ptr<LocalEngramTables>(new LocalEngramTables());
  for (size_t i = 0; i < e.layer_ids.size(); ++i) {
    Table table;
    ASSIGN_OR_RETURN(table.values, checkpoint->Get(EngramTableName(e.layer_ids[i])));
    ASSIGN_OR_RETURN(table.scales, checkpoint->Get(EngramScaleName(e.layer_ids[i])));
    const int64_t rows = e.num_embeddings[i];
    for (auto [view, dtype, shape] :
         {std::tuple{table.values, DType::kF8E4M3, Shape{rows, e.head_dim}},
          std::tuple{table.scales, DType::kF8E8M0, Shape{rows, e.head_dim / kEngramScaleBlock}}}) {
      const bool dtype_ok =
          view->dtype == dtype || (dtype == DType::kF8E8M0 && view->dtype == DType::kU8);
      if (view->shape != shape || !dtype_ok) {
        return absl::InvalidArgumentError(absl::StrCat(
            "checkpoint ", checkpoint->dir(), ": tensor ", view->name, " is ",
            std::string(DTypeName(view->dtype)), " ", ShapeToString(view->shape),
            ", config.json implies ", std::string(DTypeName(dtype)), " ", ShapeToString(shape)));
      }
    }
    tables->tables_.push_back(table);
  }
  return tables;
}

std::unique_ptr<EngramRowFetch> LocalEngramTables::Prefetch(
    std::vector<std::vector<int64_t>> rows) {
  return std::make_unique<LocalFetch>(&tables_, std::move(rows));
}

EngramLayer::EngramLayer(WeightMatrix wkv, Tensor gate, float eps)
    : wkv_(wkv), gate_(std::move(gate)), eps_(eps) {}

absl::StatusOr<EngramLayer> EngramLayer::Load(WeightLoader& loader, const ModelConfig& config,
                                              int layer) {
  const int64_t d = config.hidden_size, n = config.hc_mult;
  const std::string p = EngramPrefix(layer);
  ASSIGN_OR_RETURN(WeightMatrix wkv,
                   loader.LoadMatrix(p + "wkv.weight", (n + 1) * d,
                                     int64_t{config.engram.columns()} * config.engram.head_dim));
  ASSIGN_OR_RETURN(Tensor q, loader.Load(p + "q_weight", {n, d}));
  ASSIGN_OR_RETURN(Tensor k, loader.Load(p + "k_weight", {n, d}));
  for (int64_t i = 0; i < n * d; ++i) q.data()[i] *= k.data()[i];  // only the product is used
  return EngramLayer(wkv, std::move(q), static_cast<float>(config.rms_norm_eps));
}

void EngramLayer::Apply(const float* x, const float* e, int64_t T, float* out) const {
  const int64_t n = gate_.dim(0), d = gate_.dim(1);
  std::vector<float> kv(T * (n + 1) * d);  // [T, (n+1)·d]: n keys, then the value
  MatMul(e, T, wkv_, kv.data());
  const float inv_sqrt_d = static_cast<float>(1.0 / std::sqrt(static_cast<double>(d)));
  for (int64_t t = 0; t < T; ++t) {
    const float* v = kv.data() + (t * (n + 1) + n) * d;
    std::vector<float> gate(n);
    for (int64_t i = 0; i < n; ++i) {
      const float* h = x + (t * n + i) * d;
      const float* key = kv.data() + (t * (n + 1) + i) * d;
      const float* w = gate_.data() + i * d;
      float dot = 0, hh = 0, kk = 0;
      for (int64_t c = 0; c < d; ++c) {
        dot += h[c] * w[c] * key[c];
        hh += h[c] * h[c];
        kk += key[c] * key[c];
      }
      const float rstd = (1.0f / std::sqrt(hh / d + eps_)) * (1.0f / std::sqrt(kk / d + eps_));
      dot = dot * rstd * inv_sqrt_d;
      gate[i] = Sigmoid(std::copysign(std::sqrt(std::max(std::fabs(dot), kGateClamp)), dot));
    }
    for (int64_t i = 0; i < n; ++i) {
      const int64_t o = (t * n + i) * d;
      for (int64_t c = 0; c < d; ++c) out[o + c] = x[o + c] + gate[i] * v[c];
    }
  }
}

absl::StatusOr<std::unique_ptr<EngramModule>> EngramModule::Load(const ModelConfig& config,
                                                                 Checkpoint* checkpoint,
                                                                 EngramRowSource* source) {
  ASSIGN_OR_RETURN(EngramHasher hasher, EngramHasher::Load(config, checkpoint));
  auto module = std::unique_ptr<EngramModule>(
      new EngramModule(std::move(hasher), config.hc_mult * config.hidden_size));
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
  // The segments' rows are the step's rows in order, so one call covers them all.
  l.Apply(x + segments.front().row_begin * stride_, e.data(), tokens,
          x + segments.front().row_begin * stride_);
  return absl::OkStatus();
}

void EngramModule::Advance(absl::Span<const Segment> segments) const {
  for (const Segment& s : segments) hasher_.Advance(s.state, s.tokens);
}

}  // namespace dsv4
