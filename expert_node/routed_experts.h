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

  // One expert's group in a call: its rows, routing weights, outputs and SwiGLU scratch.
  struct ExpertWork {
    const SwigluWeights* weights = nullptr;
    const std::vector<int64_t>* group = nullptr;  // (token, slot) indices
    std::vector<float> x, routing, y, hidden;
  };
  // Buffers of Accumulate, kept by the caller to reuse their allocations.
  struct Scratch {
    std::vector<std::vector<int64_t>> groups;  // (token, slot) indices per expert
    std::vector<ExpertWork> work;              // the experts with tokens, ascending
  };

  // out[t] += Σ_j weights[t·k+j] · Expert_{ids[t·k+j]}(x[t]) over the (t, j) whose expert
  // this object holds, added expert by expert in ascending id (so the sum's order is fixed;
  // the experts themselves run in parallel on the process's threads). x, out: [T, d] rows.
  // FAILED_PRECONDITION if `require_all` and a routed expert is not held.
  absl::Status Accumulate(int layer, const float* x, int64_t tokens,
                          absl::Span<const int32_t> expert_ids, absl::Span<const float> weights,
                          int k, bool require_all, Scratch* scratch, float* out) const;

 private:
  explicit RoutedExperts(const ModelConfig& config) : config_(config) {}

  ModelConfig config_;
  std::map<std::pair<int, int>, SwigluWeights> experts_;  // (layer, expert) → weights
  WeightBytes weight_bytes_;
  WeightMappings mappings_;  // keeps the views in experts_ valid
};

}  // namespace dsv4

#endif  // DSV4_EXPERT_NODE_ROUTED_EXPERTS_H_
