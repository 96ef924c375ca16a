#include "core/checkpoint_generator.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <numeric>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_format.h"
#include "core/checkpoint_layout.h"
#include "core/dtype.h"
#include "core/engram_rows.h"
#include "core/safetensors.h"
#include "core/status_macros.h"
#include "nlohmann/json.hpp"

namespace dsv4 {
namespace {

// splitmix64: a tiny, well-mixed generator; one stream per tensor, seeded from the
// checkpoint seed and the tensor name, so each tensor's bytes are independent of order.
class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}
  uint64_t Next() {
    uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  float Uniform() { return static_cast<float>(Next() >> 40) * (1.0f / 16777216.0f); }  // [0,1)
  // Uniform with the given mean and standard deviation.
  float Sample(float mean, float stddev) {
    return mean + stddev * 1.7320508f * (2.0f * Uniform() - 1.0f);
  }

 private:
  uint64_t state_;
};

uint64_t TensorSeed(uint64_t seed, const std::string& name) {
  uint64_t h = 1469598103934665603ull;  // FNV-1a
  for (unsigned char c : name) h = (h ^ c) * 1099511628211ull;
  return h ^ (seed * 0x9E3779B97F4A7C15ull);
}

// The logical [rows, cols] of a weight: FP4 packs two columns per I8 byte.
std::pair<int64_t, int64_t> LogicalMatrix(const TensorSpec& spec) {
  const int64_t rows = spec.shape.size() > 1 ? spec.shape[0] : 1;
  int64_t cols = spec.shape.back();
  if (spec.dtype == DType::kI8) cols *= 2;
  return {rows, cols};
}

// mHC biases: pre and post mixes start neutral, the residual mix favours keeping each
// stream (a diagonal bias), so the streams stay distinct and bounded through the layers.
float HcBase(const ModelConfig& config, const TensorSpec& spec, int64_t i, Rng& rng) {
  const int n = config.hc_mult;
  if (spec.shape[0] == n) return rng.Sample(0.0f, 0.1f);  // hc_head_base
  if (i < 2 * n) return rng.Sample(0.0f, 0.1f);
  const int64_t a = (i - 2 * n) / n, b = (i - 2 * n) % n;
  return (a == b ? 1.0f : 0.0f) + rng.Sample(0.0f, 0.1f);
}

// Values of a tensor in fp32, before encoding into its dtype.
std::vector<float> SampleValues(const ModelConfig& config, const TensorSpec& spec, Rng& rng) {
  const auto [rows, cols] = LogicalMatrix(spec);
  std::vector<float> v(static_cast<size_t>(rows * cols));
  auto fill = [&](float mean, float stddev) {
    for (float& x : v) x = rng.Sample(mean, stddev);
  };
  const float fan_in = 1.0f / std::sqrt(static_cast<float>(cols));
  switch (spec.role) {
    case TensorRole::kEmbedding:
      fill(0.0f, 1.0f);
      break;
    case TensorRole::kNormWeight:
    case TensorRole::kEngramGate:
      fill(1.0f, 0.1f);
      break;
    case TensorRole::kHead:
    case TensorRole::kLinear:
    case TensorRole::kHcFn:
      fill(0.0f, fan_in);
      break;
    case TensorRole::kHcBase:
      for (size_t i = 0; i < v.size(); ++i) v[i] = HcBase(config, spec, i, rng);
      break;
    case TensorRole::kHcScale:
      for (float& x : v) x = 0.2f + 0.4f * rng.Uniform();
      break;
    case TensorRole::kAttnSink:
      fill(0.0f, 0.5f);
      break;
    case TensorRole::kApe:
    case TensorRole::kGateBias:
      fill(0.0f, 0.1f);
      break;
    case TensorRole::kEngramTable:  // rows of magnitudes 2^−3 … 2^3, so their scales differ
      for (int64_t r = 0; r < rows; ++r) {
        const float magnitude = std::ldexp(1.0f, static_cast<int>(rng.Uniform() * 7) - 3);
        for (int64_t c = 0; c < cols; ++c) v[r * cols + c] = magnitude * rng.Sample(0.0f, 1.0f);
      }
      break;
    case TensorRole::kScale:
    case TensorRole::kTid2Eid:
      break;  // produced with their weight / by HashRouting
  }
  return v;
}

template <typename T>
void Append(std::vector<uint8_t>& out, T value) {
  const size_t at = out.size();
  out.resize(at + sizeof(T));
  std::memcpy(out.data() + at, &value, sizeof(T));
}

// FP8 e4m3 with one E8M0 scale per 128×128 block: the scale is the smallest power of two
// that brings the block's largest magnitude within ±448.
void EncodeFp8(const std::vector<float>& w, int64_t rows, int64_t cols, int64_t block_rows,
               int64_t block, std::vector<uint8_t>& weight, std::vector<uint8_t>& scale) {
  const int64_t brows = (rows + block_rows - 1) / block_rows, bcols = (cols + block - 1) / block;
  std::vector<float> block_scale(brows * bcols);
  scale.resize(brows * bcols);
  for (int64_t br = 0; br < brows; ++br) {
    for (int64_t bc = 0; bc < bcols; ++bc) {
      float amax = 0.0f;
      for (int64_t r = br * block_rows; r < std::min(rows, (br + 1) * block_rows); ++r)
        for (int64_t c = bc * block; c < std::min(cols, (bc + 1) * block); ++c)
          amax = std::max(amax, std::fabs(w[r * cols + c]));
      const uint8_t code = E8M0CeilCode(std::max(amax, 1e-30f) / 448.0f);
      scale[br * bcols + bc] = code;
      block_scale[br * bcols + bc] = E8M0ToFloat(code);
    }
  }
  weight.resize(rows * cols);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c)
      weight[r * cols + c] =
          FloatToE4M3(w[r * cols + c] / block_scale[(r / block_rows) * bcols + c / block]);
}

// FP4 e2m1 packed two per byte (low nibble = even column), one E8M0 scale per 1×32 block
// bringing the block within ±6.
void EncodeFp4(const std::vector<float>& w, int64_t rows, int64_t cols,
               std::vector<uint8_t>& weight, std::vector<uint8_t>& scale) {
  constexpr int kBlock = 32;
  const int64_t bcols = (cols + kBlock - 1) / kBlock;
  scale.resize(rows * bcols);
  weight.assign(rows * ((cols + 1) / 2), 0);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t bc = 0; bc < bcols; ++bc) {
      const int64_t c0 = bc * kBlock, c1 = std::min(cols, c0 + kBlock);
      float amax = 0.0f;
      for (int64_t c = c0; c < c1; ++c) amax = std::max(amax, std::fabs(w[r * cols + c]));
      const uint8_t code = E8M0CeilCode(std::max(amax, 1e-30f) / 6.0f);
      scale[r * bcols + bc] = code;
      const float s = E8M0ToFloat(code);
      for (int64_t c = c0; c < c1; ++c) {
        const uint8_t nibble = FloatToFp4(w[r * cols + c] / s);
        weight[r * ((cols + 1) / 2) + c / 2] |= (c & 1) ? (nibble << 4) : nibble;
      }
    }
  }
}

// tid2eid [V, k]: k distinct experts per token id.
std::vector<uint8_t> HashRouting(const TensorSpec& spec, int n_experts, Rng& rng) {
  const int64_t vocab = spec.shape[0], k = spec.shape[1];
  std::vector<uint8_t> out;
  out.reserve(vocab * k * sizeof(int64_t));
  std::vector<int64_t> pick;
  for (int64_t t = 0; t < vocab; ++t) {
    pick.clear();
    while (static_cast<int64_t>(pick.size()) < k) {
      const int64_t e = static_cast<int64_t>(rng.Next() % n_experts);
      if (std::find(pick.begin(), pick.end(), e) == pick.end()) pick.push_back(e);
    }
    for (int64_t e : pick) Append(out, e);
  }
  return out;
}

// Chunk checksums of an Engram table (see kEngramChecksumsFile).
nlohmann::json TableChecksums(const TensorSpec& spec, const std::vector<uint8_t>& bytes) {
  const size_t chunk = kEngramChecksumChunkRows * spec.shape[1] * DTypeSize(spec.dtype);
  nlohmann::json list = nlohmann::json::array();
  for (size_t at = 0; at < bytes.size(); at += chunk) {
    list.push_back(absl::StrFormat(
        "%016x", EngramChunkChecksum(bytes.data() + at, std::min(chunk, bytes.size() - at))));
  }
  return list;
}

// One unit of generation: a tensor, or a quantised weight together with its scale.
struct Unit {
  const TensorSpec* weight;
  const TensorSpec* scale = nullptr;
  uint64_t nbytes() const { return weight->nbytes() + (scale ? scale->nbytes() : 0); }
};

absl::Status EmitUnit(const ModelConfig& config, const Unit& unit, uint64_t seed,
                      SafetensorsWriter& writer, nlohmann::json& checksums) {
  const TensorSpec& spec = *unit.weight;
  Rng rng(TensorSeed(seed, spec.name));
  if (spec.dtype == DType::kI64) {
    writer.Add(spec.name, spec.dtype, spec.shape, HashRouting(spec, config.n_routed_experts, rng));
    return absl::OkStatus();
  }
  const std::vector<float> values = SampleValues(config, spec, rng);
  const auto [rows, cols] = LogicalMatrix(spec);
  std::vector<uint8_t> bytes, scale;
  switch (spec.dtype) {
    case DType::kF8E4M3:
      if (!unit.scale) return absl::InternalError("FP8 tensor without scale: " + spec.name);
      if (spec.role == TensorRole::kEngramTable) {  // one scale per 32 values of a row
        EncodeFp8(values, rows, cols, 1, kEngramScaleBlock, bytes, scale);
      } else {
        EncodeFp8(values, rows, cols, config.weight_block_size, config.weight_block_size, bytes,
                  scale);
      }
      break;
    case DType::kI8:
      if (!unit.scale) return absl::InternalError("FP4 tensor without scale: " + spec.name);
      EncodeFp4(values, rows, cols, bytes, scale);
      break;
    case DType::kBF16:
      for (float x : values) Append(bytes, FloatToBf16(x));
      break;
    case DType::kF32:
      for (float x : values) Append(bytes, x);
      break;
    default:
      return absl::InternalError(
          absl::StrFormat("no generator for %s (%s)", spec.name, DTypeName(spec.dtype)));
  }
  if (spec.role == TensorRole::kEngramTable) {  // the rows and their scales
    checksums[spec.name] = TableChecksums(spec, bytes);
    checksums[unit.scale->name] = TableChecksums(*unit.scale, scale);
  }
  writer.Add(spec.name, spec.dtype, spec.shape, std::move(bytes));
  if (unit.scale) {
    const size_t expected = static_cast<size_t>(unit.scale->nbytes());
    if (scale.size() != expected) {
      return absl::InternalError(absl::StrFormat("%s: generated %d scale bytes, layout says %d",
                                                 unit.scale->name, scale.size(), expected));
    }
    writer.Add(unit.scale->name, unit.scale->dtype, unit.scale->shape, std::move(scale));
  }
  return absl::OkStatus();
}

std::vector<Unit> PairUnits(const std::vector<TensorSpec>& specs) {
  std::map<std::string, const TensorSpec*> scales;
  for (const TensorSpec& s : specs)
    if (s.role == TensorRole::kScale) scales[s.name] = &s;
  std::vector<Unit> units;
  for (const TensorSpec& s : specs) {
    if (s.role == TensorRole::kScale) continue;
    Unit unit{&s};
    if (absl::EndsWith(s.name, ".weight")) {
      auto it = scales.find(s.name.substr(0, s.name.size() - 7) + ".scale");
      if (it != scales.end()) unit.scale = it->second;
    }
    units.push_back(unit);
  }
  return units;
}

}  // namespace

uint64_t EngramChunkChecksum(const uint8_t* data, size_t size) {
  uint64_t h = 1469598103934665603ull;
  size_t i = 0;
  for (; i + 8 <= size; i += 8) {
    uint64_t word;
    std::memcpy(&word, data + i, 8);
    h = (h ^ word) * 1099511628211ull;
  }
  for (; i < size; ++i) h = (h ^ data[i]) * 1099511628211ull;
  return h;
}

absl::Status GenerateCheckpoint(const ModelConfig& config, const std::string& config_json_text,
                                const std::string& out_dir, const GenerateOptions& options) {
  std::error_code ec;
  std::filesystem::create_directories(out_dir, ec);
  if (ec) return absl::InternalError("cannot create " + out_dir + ": " + ec.message());
  {
    std::ofstream out(out_dir + "/config.json");
    out << config_json_text;
    if (!out) return absl::InternalError("cannot write " + out_dir + "/config.json");
  }
  if (config.engram.enabled() && options.tokenizer_path.empty()) {
    return absl::InvalidArgumentError(
        "an Engram model needs its tokenizer.json (the token map is built from it)");
  }
  if (!options.tokenizer_path.empty()) {
    std::filesystem::copy_file(options.tokenizer_path, out_dir + "/tokenizer.json",
                               std::filesystem::copy_options::overwrite_existing, ec);
    if (ec) {
      return absl::InternalError("cannot copy " + options.tokenizer_path + " to " + out_dir + ": " +
                                 ec.message());
    }
  }

  const std::vector<TensorSpec> specs = ExpectedTensors(config);
  const std::vector<Unit> units = PairUnits(specs);

  // Shards are planned up front so file names carry the shard count.
  std::vector<std::vector<const Unit*>> shards(1);
  uint64_t shard_bytes = 0, total = 0;
  for (const Unit& unit : units) {
    if (shard_bytes > 0 && shard_bytes + unit.nbytes() > options.max_shard_bytes) {
      shards.emplace_back();
      shard_bytes = 0;
    }
    shards.back().push_back(&unit);
    shard_bytes += unit.nbytes();
    total += unit.nbytes();
  }

  std::map<std::string, std::string> weight_map;
  nlohmann::json checksums = nlohmann::json::object();
  uint64_t done = 0;
  for (size_t i = 0; i < shards.size(); ++i) {
    const std::string file =
        absl::StrFormat("model-%05d-of-%05d.safetensors", i + 1, shards.size());
    SafetensorsWriter writer;
    for (const Unit* unit : shards[i]) {
      RETURN_IF_ERROR(EmitUnit(config, *unit, options.seed, writer, checksums));
      done += unit->nbytes();
      if (options.progress) options.progress(done, total);
    }
    for (const std::string& name : writer.names()) weight_map[name] = file;
    RETURN_IF_ERROR(writer.Write(out_dir + "/" + file));
  }
  if (config.engram.enabled()) {
    const std::string path = out_dir + "/" + kEngramChecksumsFile;
    std::ofstream out(path);
    out << nlohmann::json{{"algorithm", kEngramChecksumAlgorithm},
                          {"chunk_rows", kEngramChecksumChunkRows},
                          {"tensors", checksums}}
               .dump(1)
        << "\n";
    if (!out) return absl::InternalError("cannot write " + path);
  }
  return WriteSafetensorsIndex(out_dir, weight_map, total);
}

}  // namespace dsv4
