#include "core/hardware.h"

#include "absl/strings/str_cat.h"
#include "core/status_macros.h"
#include "core/yaml_reader.h"

namespace dsv4 {
namespace {

constexpr double kTera = 1e12;
constexpr double kGiga = 1e9;

// Reads `key: {value: N, source: "..."}` and scales the value to SI units. The source is
// required: a catalog figure without provenance cannot be checked or replaced.
Figure ReadFigure(const YamlMap& parent, absl::string_view key, NumberRule rule, double scale) {
  const YamlMap figure = parent.Map(key, {"value", "source"}, /*required=*/true);
  Figure out;
  out.value = figure.Number("value", rule) * scale;
  out.source = figure.String("source");
  if (figure.Has("source") && out.source.empty()) {
    figure.Fail("source",
                "must say where the value comes from (write \"assumption: ...\" "
                "when it is one)");
  }
  return out;
}

std::optional<Figure> ReadOptionalFigure(const YamlMap& parent, absl::string_view key,
                                         NumberRule rule, double scale) {
  if (!parent.Has(key)) return std::nullopt;
  return ReadFigure(parent, key, rule, scale);
}

HardwareSpec Parse(YamlReader& reader) {
  HardwareSpec hw;
  hw.path = reader.file();
  const YamlMap root =
      reader.Root({"name", "description", "peak_tflops", "hbm", "interconnect",
                   "host_memory_GB_per_chip", "dies_per_chip", "efficiency", "overheads"});
  hw.name = root.String("name");
  if (root.Has("name") && hw.name.empty()) root.Fail("name", "must not be empty");
  hw.description = root.String("description", "");

  const YamlMap peak =
      root.Map("peak_tflops", {"fp32", "bf16", "fp8", "fp4", "int8"}, /*required=*/true);
  hw.peak_fp32 = ReadOptionalFigure(peak, "fp32", NumberRule::kPositive, kTera);
  hw.peak_bf16 = ReadFigure(peak, "bf16", NumberRule::kPositive, kTera);
  hw.peak_fp8 = ReadOptionalFigure(peak, "fp8", NumberRule::kPositive, kTera);
  hw.peak_fp4 = ReadOptionalFigure(peak, "fp4", NumberRule::kPositive, kTera);
  hw.peak_int8 = ReadOptionalFigure(peak, "int8", NumberRule::kPositive, kTera);

  const YamlMap hbm = root.Map("hbm", {"capacity_GB", "bandwidth_TBps"}, /*required=*/true);
  hw.hbm_capacity = ReadFigure(hbm, "capacity_GB", NumberRule::kPositive, kGiga);
  hw.hbm_bandwidth = ReadFigure(hbm, "bandwidth_TBps", NumberRule::kPositive, kTera);

  const YamlMap link =
      root.Map("interconnect", {"scale_up_GBps", "scale_out_GBps"}, /*required=*/true);
  hw.scale_up_bandwidth = ReadFigure(link, "scale_up_GBps", NumberRule::kPositive, kGiga);
  hw.scale_out_bandwidth = ReadOptionalFigure(link, "scale_out_GBps", NumberRule::kPositive, kGiga);
  hw.host_memory_per_chip =
      ReadOptionalFigure(root, "host_memory_GB_per_chip", NumberRule::kPositive, kGiga);
  if (root.Has("dies_per_chip")) {
    hw.dies_per_chip = ReadFigure(root, "dies_per_chip", NumberRule::kPositive, 1.0);
    const double dies = hw.dies_per_chip.value;
    if (dies > 0 && (dies != static_cast<int>(dies) || dies > 16)) {  // 0: already reported
      root.Fail("dies_per_chip", absl::StrCat("must be a whole number from 1 to 16, got ", dies));
    }
  }

  const YamlMap eff = root.Map("efficiency", {"gemm", "attention", "memory_bound", "all_to_all"},
                               /*required=*/true);
  hw.efficiency_gemm = ReadFigure(eff, "gemm", NumberRule::kFraction, 1.0);
  hw.efficiency_attention = ReadFigure(eff, "attention", NumberRule::kFraction, 1.0);
  hw.efficiency_memory_bound = ReadFigure(eff, "memory_bound", NumberRule::kFraction, 1.0);
  hw.efficiency_all_to_all = ReadFigure(eff, "all_to_all", NumberRule::kFraction, 1.0);

  const YamlMap overheads = root.Map("overheads",
                                     {"kernel_floor_graph_us", "kernel_floor_eager_us",
                                      "dispatch_us", "combine_us", "compute_lost_to_communication"},
                                     /*required=*/false);
  auto overhead = [&](absl::string_view key, double scale, Figure* out) {
    if (overheads.Has(key)) *out = ReadFigure(overheads, key, NumberRule::kNonNegative, scale);
  };
  constexpr double kMicro = 1e-6;
  overhead("kernel_floor_graph_us", kMicro, &hw.kernel_floor_graph);
  overhead("kernel_floor_eager_us", kMicro, &hw.kernel_floor_eager);
  overhead("dispatch_us", kMicro, &hw.dispatch_overhead);
  overhead("combine_us", kMicro, &hw.combine_overhead);
  overhead("compute_lost_to_communication", 1.0, &hw.compute_lost_to_communication);
  if (hw.compute_lost_to_communication.value >= 1) {
    overheads.Fail("compute_lost_to_communication", "must be below 1");
  }
  return hw;
}

absl::StatusOr<HardwareSpec> ParseGuarded(YamlReader& reader) {
  try {
    HardwareSpec hw = Parse(reader);
    RETURN_IF_ERROR(reader.status());
    return hw;
  } catch (const YAML::Exception& e) {  // defensive: the reader checks node types first
    return absl::InternalError(absl::StrCat(reader.file(), ": unexpected YAML error: ", e.what()));
  }
}

}  // namespace

const char* ComputeDtypeName(ComputeDtype dtype) {
  switch (dtype) {
    case ComputeDtype::kFp32:
      return "fp32";
    case ComputeDtype::kBf16:
      return "bf16";
    case ComputeDtype::kFp8:
      return "fp8";
    case ComputeDtype::kFp4:
      return "fp4";
  }
  return "?";
}

const char* OpClassName(OpClass op) {
  switch (op) {
    case OpClass::kGemm:
      return "gemm";
    case OpClass::kAttention:
      return "attention";
    case OpClass::kMemoryBound:
      return "memory_bound";
    case OpClass::kAllToAll:
      return "all_to_all";
  }
  return "?";
}

const Figure& HardwareSpec::PeakFlopsFigure(ComputeDtype dtype) const {
  switch (dtype) {
    case ComputeDtype::kFp32:
      return peak_fp32 ? *peak_fp32 : peak_bf16;
    case ComputeDtype::kFp4:
      if (peak_fp4) return *peak_fp4;
      [[fallthrough]];
    case ComputeDtype::kFp8:
      if (peak_fp8) return *peak_fp8;
      if (peak_int8) return *peak_int8;
      [[fallthrough]];
    case ComputeDtype::kBf16:
      break;
  }
  return peak_bf16;
}

double HardwareSpec::PeakFlops(ComputeDtype dtype) const { return PeakFlopsFigure(dtype).value; }

const Figure& HardwareSpec::Efficiency(OpClass op) const {
  switch (op) {
    case OpClass::kGemm:
      return efficiency_gemm;
    case OpClass::kAttention:
      return efficiency_attention;
    case OpClass::kMemoryBound:
      return efficiency_memory_bound;
    case OpClass::kAllToAll:
      break;
  }
  return efficiency_all_to_all;
}

HardwareSpec HardwareSpec::Share(int ranks_per_chip) const {
  HardwareSpec share = *this;
  if (ranks_per_chip <= 1) return share;
  const double f = 1.0 / ranks_per_chip;
  for (std::optional<Figure>* peak :
       {&share.peak_fp32, &share.peak_fp8, &share.peak_fp4, &share.peak_int8,
        &share.scale_out_bandwidth, &share.host_memory_per_chip}) {
    if (*peak) (*peak)->value *= f;
  }
  for (Figure* figure :
       {&share.peak_bf16, &share.hbm_capacity, &share.hbm_bandwidth, &share.scale_up_bandwidth}) {
    figure->value *= f;
  }
  return share;
}

double HardwareSpec::AchievableFlops(ComputeDtype dtype, OpClass op) const {
  return PeakFlops(dtype) * Efficiency(op).value;
}

double HardwareSpec::AchievableHbmBandwidth() const {
  return hbm_bandwidth.value * efficiency_memory_bound.value;
}

absl::StatusOr<HardwareSpec> ParseHardwareSpec(const std::string& yaml_text,
                                               const std::string& source) {
  YamlReader reader(yaml_text, source);
  return ParseGuarded(reader);
}

absl::StatusOr<HardwareSpec> LoadHardwareSpec(const std::string& path) {
  YamlReader reader = YamlReader::FromFile(path);
  return ParseGuarded(reader);
}

}  // namespace dsv4
