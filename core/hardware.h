// The chip model of cluster-configs/hardware/*.yaml: peak FLOP/s by dtype, HBM capacity
// and bandwidth, chip interconnect, host memory and achievable-efficiency factors per
// operation class. The capacity planner and the engine's modelled-time accounting read it.
//
// Every figure carries the `source:` string written next to it in the YAML, so reports can
// say where a number came from and a user knows which line to replace. In memory all
// figures are in SI units (FLOP/s, bytes, bytes/s); the YAML uses the units vendors
// publish (TFLOP/s, GB, TB/s, GB/s; G and T are decimal).
//
// Schema (units in key names; each figure is {value: N, source: "..."}):
//   name: Ascend 950DT                  # required
//   description: "..."                  # optional free text
//   peak_tflops: {bf16: F, fp8: F, fp4: F, fp32: F}   # dense; bf16 required, others optional
//   hbm: {capacity_GB: F, bandwidth_TBps: F}           # required
//   interconnect:
//     scale_up_GBps: F                  # required: per chip, one direction (UB, NVLink)
//     scale_out_GBps: F                 # optional: per chip, one direction (RDMA NIC)
//   host_memory_GB_per_chip: F          # optional: host DRAM available per chip
//   dies_per_chip: N                    # optional (1): dies in one package; a rank may own
//                                       # one die and 1/N of the package's figures
//   efficiency: {gemm: F, attention: F, memory_bound: F, all_to_all: F}  # each in (0, 1]
//   overheads:                          # optional, each optional (0 when absent)
//     kernel_floor_graph_us: F          # least time of one kernel inside a captured graph
//     kernel_floor_eager_us: F          # least time of one kernel launched on its own
//     dispatch_us: F                    # fixed cost of one dispatch call (beyond its bytes)
//     combine_us: F                     # fixed cost of one combine call
//     compute_lost_to_communication: F  # share of compute the communication kernels take
//                                       # while they overlap it (SMs given to DeepEP), [0, 1)
// peak_tflops may also give int8 (TOPS): a chip without FP8 units runs the released FP8
// GEMMs as W8A8 INT8 when it has INT8 (as CloudMatrix-Infer serves DeepSeek on the 910C).
#ifndef DSV4_CORE_HARDWARE_H_
#define DSV4_CORE_HARDWARE_H_

#include <optional>
#include <string>

#include "absl/status/statusor.h"

namespace dsv4 {

// A published or assumed number and where it comes from.
struct Figure {
  double value = 0;    // SI units
  std::string source;  // the YAML `source:` string
};

// Arithmetic formats the cost model prices.
enum class ComputeDtype { kFp32, kBf16, kFp8, kFp4 };
const char* ComputeDtypeName(ComputeDtype dtype);  // "bf16"

// Operation classes with their own achievable fraction of peak.
enum class OpClass {
  kGemm,         // dense and grouped matmuls: fraction of peak FLOP/s
  kAttention,    // core attention: fraction of peak FLOP/s
  kMemoryBound,  // streaming kernels: fraction of HBM bandwidth
  kAllToAll,     // dispatch / combine: fraction of link bandwidth
};
const char* OpClassName(OpClass op);  // "memory_bound"

struct HardwareSpec {
  std::string path;  // file it was loaded from, for reports
  std::string name;
  std::string description;

  Figure peak_bf16;                            // FLOP/s, dense
  std::optional<Figure> peak_fp32;             // absent: priced at the bf16 rate
  std::optional<Figure> peak_fp8;              // absent: the chip has no fp8 units, priced at bf16
  std::optional<Figure> peak_fp4;              // absent: priced at fp8 (or bf16)
  std::optional<Figure> peak_int8;             // OP/s; stands in for fp8 on chips without it
  Figure hbm_capacity;                         // bytes
  Figure hbm_bandwidth;                        // bytes/s
  Figure scale_up_bandwidth;                   // bytes/s per chip, one direction
  std::optional<Figure> scale_out_bandwidth;   // bytes/s per chip, one direction
  std::optional<Figure> host_memory_per_chip;  // bytes
  Figure dies_per_chip{1, "default: one die per package"};

  Figure efficiency_gemm;
  Figure efficiency_attention;
  Figure efficiency_memory_bound;
  Figure efficiency_all_to_all;

  // Fixed costs (seconds) and the compute share communication kernels take; 0 when the file
  // gives none.
  Figure kernel_floor_graph{0, "not given"};
  Figure kernel_floor_eager{0, "not given"};
  Figure dispatch_overhead{0, "not given"};
  Figure combine_overhead{0, "not given"};
  Figure compute_lost_to_communication{0, "not given"};

  // Peak dense FLOP/s for `dtype`. A format the chip lacks runs on the next wider units
  // it has (fp4 → fp8 → int8 → bf16); fp32 without a figure is priced at the bf16 rate,
  // because the runtime's fp32 compute stands in for the target's bf16 kernels.
  double PeakFlops(ComputeDtype dtype) const;
  // The figure PeakFlops(dtype) uses, for reports.
  const Figure& PeakFlopsFigure(ComputeDtype dtype) const;
  const Figure& Efficiency(OpClass op) const;
  // One die's (or 1/ranks_per_chip of the package's) share: peaks, HBM and links divided
  // by `ranks_per_chip`; efficiencies and fixed costs unchanged.
  HardwareSpec Share(int ranks_per_chip) const;
  // PeakFlops(dtype) × Efficiency(op); `op` is kGemm or kAttention.
  double AchievableFlops(ComputeDtype dtype, OpClass op) const;
  // HBM bandwidth × the memory_bound efficiency.
  double AchievableHbmBandwidth() const;
};

// Parses hardware YAML text; `source` names the file in errors
// ("cluster-configs/hardware/x.yaml:5: hbm.capacity_GB.value: expected a positive number,
// got "lots"").
absl::StatusOr<HardwareSpec> ParseHardwareSpec(const std::string& yaml_text,
                                               const std::string& source);
// Loads a hardware YAML file; NotFound when it does not exist.
absl::StatusOr<HardwareSpec> LoadHardwareSpec(const std::string& path);

}  // namespace dsv4

#endif  // DSV4_CORE_HARDWARE_H_
