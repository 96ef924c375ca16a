// Where a layer's routed experts run. The model path calls Run once per layer with the
// step's routed tokens; the in-process executor computes them locally, the MPI executor
// (distributed engine) dispatches them to expert ranks and combines the results. Both
// must give the same `out` up to float rounding.
#ifndef DSV4_EXPERT_NODE_EXPERT_EXECUTOR_H_
#define DSV4_EXPERT_NODE_EXPERT_EXECUTOR_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "core/tensor.h"

namespace dsv4 {

class ExpertExecutor {
 public:
  virtual ~ExpertExecutor() = default;

  // For every token t of x [T, d]:
  //   out[t] = Σ_{j<k} weights[t·k+j] · Expert_{expert_ids[t·k+j]}(x[t])
  // with the routing weight applied inside the expert, before w2 (see SwigluForward),
  // and the terms summed in ascending expert id. `layer` is a main layer index (or L + i
  // for MTP block i). `out` is resized to [T, d] if needed and overwritten.
  virtual absl::Status Run(int layer, const Tensor& x, absl::Span<const int32_t> expert_ids,
                           absl::Span<const float> weights, int k, Tensor* out) = 0;
};

}  // namespace dsv4

#endif  // DSV4_EXPERT_NODE_EXPERT_EXECUTOR_H_
