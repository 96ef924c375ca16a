// The routed experts a process holds (all of them in-process; a placement's share on an
// expert rank), in their released formats (views of the mapped checkpoint), and their
// grouped forward: tokens are grouped by expert and each expert runs as MatMuls over its
// group.
#ifndef DSV4_EXPERT_NODE_ROUTED_EXPERTS_H_
#define DSV4_EXPERT_NODE_ROUTED_EXPERTS_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "core/model_config.h"
#include "core/safetensors.h"
#include "core/swiglu_ffn.h"
#include "core/weight_loader.h"

namespace dsv4 {

class RoutedExperts {
 public:
  // Chooses the experts to load: (layer, expert) with layer in [0, L) for main layers
  // and L + i for MTP block i.
  using Selector = std::function<bool(int layer, int expert)>;

  // Loads "layers.<l>.ffn.experts.<e>.*" (and "mtp.<i>.ffn.experts.<e>.*" when
  // `include_mtp`) for every selected pair.
  static absl::StatusOr<std::unique_ptr<RoutedExperts>> Load(const ModelConfig& config,
                                                             Checkpoint* checkpoint,
                                                             const Selector& select,
                                                             bool include_mtp);

  const WeightBytes& weight_bytes() const { return weight_bytes_; }
  int64_t dim() const { return config_.hidden_size; }

  // Rows the routed experts run on, in place: row r reads x[r] and writes out[r] (d floats
  // each), with up to k (expert, routing weight) pairs; expert −1 pads unused pairs.
  struct Rows {
    absl::Span<const float* const> x;
    absl::Span<float* const> out;
    absl::Span<const int32_t> expert_ids;  // [rows · k]
    absl::Span<const float> weights;       // [rows · k]
    int k = 0;

    int64_t size() const { return static_cast<int64_t>(x.size()); }
  };
  // One expert's group in a call: its pairs, gathered inputs, routing weights, outputs and
  // SwiGLU scratch.
  struct ExpertWork {
    const SwigluWeights* weights = nullptr;
    const std::vector<int64_t>* group = nullptr;  // pair indices r·k + j
    std::vector<float> x, routing, y, hidden;
  };
  // Buffers of Run, kept by the caller to reuse their allocations.
  struct Scratch {
    std::vector<std::vector<int64_t>> groups;  // pair indices per expert
    std::vector<ExpertWork> work;              // the experts with pairs, ascending
    std::vector<const float*> pair_out;        // [rows · k]: each pair's expert output row
  };

  // out[r] = Σ_j weights[r·k+j] · Expert_{ids[r·k+j]}(x[r]) over the pairs whose expert this
  // object holds, summed from zero in ascending expert id (so the order is fixed; experts
  // run in parallel on the process's threads, then rows are summed in parallel). Each
  // expert gathers its rows into its GEMM's operand; the sum writes out[r] once, so the
  // caller's rows may be a send buffer. FAILED_PRECONDITION if `require_all` and a routed
  // expert is not held.
  absl::Status Run(int layer, const Rows& rows, bool require_all, Scratch* scratch) const;

 private:
  explicit RoutedExperts(const ModelConfig& config) : config_(config) {}

  ModelConfig config_;
  std::map<std::pair<int, int>, SwigluWeights> experts_;  // (layer, expert) → weights
  WeightBytes weight_bytes_;
  WeightMappings mappings_;  // keeps the views in experts_ valid
};

}  // namespace dsv4

#endif  // DSV4_EXPERT_NODE_ROUTED_EXPERTS_H_
