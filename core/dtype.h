// Element types of the official checkpoints and their exact conversions to and from fp32.
//
// Decoders are exact. Encoders round to nearest, ties to even, and saturate where the
// format has no infinity (E4M3 at ±448, FP4 at ±6); they exist for the synthetic
// checkpoint generator and the tests.
#ifndef DSV4_CORE_DTYPE_H_
#define DSV4_CORE_DTYPE_H_

#include <cstdint>
#include <optional>
#include <string_view>

namespace dsv4 {

// Safetensors dtype names: BF16 F16 F32 I64 I32 I8 U8 F8_E4M3 F8_E8M0.
enum class DType { kBF16, kF16, kF32, kI64, kI32, kI8, kU8, kF8E4M3, kF8E8M0 };

std::string_view DTypeName(DType dtype);  // "F8_E4M3"
std::optional<DType> DTypeFromName(std::string_view name);
int DTypeSize(DType dtype);  // bytes per element

float Bf16ToFloat(uint16_t bits);
uint16_t FloatToBf16(float value);  // round to nearest even; NaN stays NaN

float F16ToFloat(uint16_t bits);
uint16_t FloatToF16(float value);  // IEEE: overflows to ±inf

// e4m3fn: bias 7, no infinity, 0x7F/0xFF are NaN, max ±448.
float E4M3ToFloat(uint8_t code);
uint8_t FloatToE4M3(float value);  // saturating (±inf too); NaN gives 0x7F/0xFF

// ue8m0: 2^(e-127); 255 is NaN; 0 is 2^-127 (a float32 subnormal).
float E8M0ToFloat(uint8_t code);
// The code of the smallest power of two ≥ value, clamped to [0, 254] (so values ≤ 0 give
// 0 and +inf gives 254); NaN gives 255. A block scale that lets every element fit is
// E8M0CeilCode(amax / 448) for E4M3 (amax / 6 for FP4).
uint8_t E8M0CeilCode(float value);

// FP4 e2m1: bit 3 sign, bits 0-2 index {0, .5, 1, 1.5, 2, 3, 4, 6}.
float Fp4ToFloat(uint8_t nibble);
uint8_t FloatToFp4(float value);  // saturating at ±6, ties to even; NaN gives +0 (no NaN)
// Packing: the low nibble of byte j holds element 2j, the high nibble element 2j+1.
inline float Fp4PackedElement(const uint8_t* packed, int64_t k) {
  const uint8_t byte = packed[k >> 1];
  return Fp4ToFloat((k & 1) ? (byte >> 4) : (byte & 0x0F));
}

}  // namespace dsv4

#endif  // DSV4_CORE_DTYPE_H_
