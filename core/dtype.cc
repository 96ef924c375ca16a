#include "core/dtype.h"

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <limits>
#include <optional>

namespace dsv4 {
namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

struct DTypeInfo {
  DType dtype;
  std::string_view name;
  int size;
};

constexpr std::array<DTypeInfo, 9> kDTypes = {{
    {DType::kBF16, "BF16", 2},
    {DType::kF16, "F16", 2},
    {DType::kF32, "F32", 4},
    {DType::kI64, "I64", 8},
    {DType::kI32, "I32", 4},
    {DType::kI8, "I8", 1},
    {DType::kU8, "U8", 1},
    {DType::kF8E4M3, "F8_E4M3", 1},
    {DType::kF8E8M0, "F8_E8M0", 1},
}};

const DTypeInfo& Info(DType dtype) {
  return *std::find_if(kDTypes.begin(), kDTypes.end(),
                       [dtype](const DTypeInfo& info) { return info.dtype == dtype; });
}

// A small IEEE-like binary format with subnormals. The encoders of E4M3, FP4 and F16
// share this instead of three sets of bit tricks; it works in double, where every
// intermediate below is exact.
struct MiniFloat {
  int mantissa_bits;
  int bias;
  double max_finite;
};

constexpr MiniFloat kE4M3 = {3, 7, 448.0};
constexpr MiniFloat kFp4 = {1, 1, 6.0};
constexpr MiniFloat kF16 = {10, 15, 65504.0};

double RoundHalfEven(double x) {  // x ≥ 0 and small enough that x - floor(x) is exact
  const double floor = std::floor(x);
  const double fraction = x - floor;
  const bool odd = std::fmod(floor, 2.0) != 0.0;
  return (fraction > 0.5 || (fraction == 0.5 && odd)) ? floor + 1.0 : floor;
}

// floor(log2(x)) for finite x > 0.
int FloorLog2(double x) {
  int exp2 = 0;
  std::frexp(x, &exp2);  // x = f · 2^exp2 with f in [0.5, 1)
  return exp2 - 1;
}

// The magnitude bits (exponent and mantissa fields) of |value| rounded to nearest, ties to
// even, or nullopt when it rounds above the largest finite value (or is infinite).
std::optional<uint32_t> EncodeMagnitude(double magnitude, const MiniFloat& format) {
  if (!(magnitude <= 2.0 * format.max_finite)) return std::nullopt;
  if (magnitude == 0.0) return 0;
  const int min_normal_exponent = 1 - format.bias;
  // Quantum of the binade holding `magnitude`; subnormals share the lowest normal one.
  const int exponent = std::max(FloorLog2(magnitude), min_normal_exponent);
  const double quantum = std::ldexp(1.0, exponent - format.mantissa_bits);
  const double rounded = RoundHalfEven(magnitude / quantum) * quantum;
  if (rounded > format.max_finite) return std::nullopt;
  if (rounded == 0.0) return 0;
  const int rounded_exponent = FloorLog2(rounded);
  if (rounded_exponent < min_normal_exponent) {  // subnormal: exponent field 0
    return static_cast<uint32_t>(rounded / quantum);
  }
  const auto significand = static_cast<uint32_t>(
      std::ldexp(rounded, format.mantissa_bits - rounded_exponent));  // in [2^m, 2^(m+1))
  return (static_cast<uint32_t>(rounded_exponent + format.bias) << format.mantissa_bits) |
         (significand - (1u << format.mantissa_bits));
}

const std::array<float, 16> kFp4Values = {0.0f,  0.5f,  1.0f,  1.5f,  2.0f,  3.0f,  4.0f,  6.0f,
                                          -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f};

}  // namespace

std::string_view DTypeName(DType dtype) { return Info(dtype).name; }

std::optional<DType> DTypeFromName(std::string_view name) {
  for (const DTypeInfo& info : kDTypes) {
    if (info.name == name) return info.dtype;
  }
  return std::nullopt;
}

int DTypeSize(DType dtype) { return Info(dtype).size; }

float Bf16ToFloat(uint16_t bits) { return std::bit_cast<float>(uint32_t{bits} << 16); }

uint16_t FloatToBf16(float value) {
  const uint32_t bits = std::bit_cast<uint32_t>(value);
  if (std::isnan(value)) return static_cast<uint16_t>((bits >> 16) | 0x0040);  // keep it quiet
  // Adding 0x7FFF plus the lowest kept bit rounds to nearest, ties to even; a carry into
  // the exponent is the correct result, including overflow to infinity.
  const uint32_t lsb = (bits >> 16) & 1;
  return static_cast<uint16_t>((bits + 0x7FFF + lsb) >> 16);
}

float F16ToFloat(uint16_t bits) {
  const bool negative = bits & 0x8000;
  const int exponent = (bits >> 10) & 0x1F;
  const int mantissa = bits & 0x3FF;
  float magnitude;
  if (exponent == 0x1F) {
    magnitude = mantissa == 0 ? std::numeric_limits<float>::infinity() : kNaN;
  } else if (exponent == 0) {
    magnitude = std::ldexp(static_cast<float>(mantissa), -24);
  } else {
    magnitude = std::ldexp(static_cast<float>(1024 + mantissa), exponent - 25);
  }
  return negative ? -magnitude : magnitude;
}

uint16_t FloatToF16(float value) {
  const uint16_t sign = std::signbit(value) ? 0x8000 : 0;
  if (std::isnan(value)) return sign | 0x7E00;
  return sign | static_cast<uint16_t>(EncodeMagnitude(std::fabs(value), kF16).value_or(0x7C00));
}

float E4M3ToFloat(uint8_t code) {
  const int exponent = (code >> 3) & 0xF;
  const int mantissa = code & 0x7;
  if (exponent == 0xF && mantissa == 0x7) return kNaN;
  const float magnitude = exponent == 0
                              ? std::ldexp(static_cast<float>(mantissa), -9)
                              : std::ldexp(static_cast<float>(8 + mantissa), exponent - 10);
  return (code & 0x80) ? -magnitude : magnitude;
}

uint8_t FloatToE4M3(float value) {
  const uint8_t sign = std::signbit(value) ? 0x80 : 0;
  if (std::isnan(value)) return sign | 0x7F;
  constexpr uint32_t kMaxCode = 0x7E;  // 448
  return sign | static_cast<uint8_t>(EncodeMagnitude(std::fabs(value), kE4M3).value_or(kMaxCode));
}

float E8M0ToFloat(uint8_t code) {
  if (code == 0xFF) return kNaN;
  return std::ldexp(1.0f, static_cast<int>(code) - 127);
}

uint8_t E8M0CeilCode(float value) {
  if (std::isnan(value)) return 0xFF;
  if (!(value > 0.0f)) return 0;
  if (std::isinf(value)) return 254;
  int exp2 = 0;
  const float fraction = std::frexp(value, &exp2);  // value = fraction · 2^exp2
  const int ceil_log2 = fraction == 0.5f ? exp2 - 1 : exp2;
  return static_cast<uint8_t>(std::clamp(ceil_log2 + 127, 0, 254));
}

float Fp4ToFloat(uint8_t nibble) { return kFp4Values[nibble & 0x0F]; }

uint8_t FloatToFp4(float value) {
  if (std::isnan(value)) return 0;  // e2m1 has no NaN
  const uint8_t sign = std::signbit(value) ? 0x8 : 0;
  constexpr uint32_t kMaxCode = 0x7;  // 6
  return sign | static_cast<uint8_t>(EncodeMagnitude(std::fabs(value), kFp4).value_or(kMaxCode));
}

}  // namespace dsv4
