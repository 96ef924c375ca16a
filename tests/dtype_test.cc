// Element-type decoders against tables of every code point computed here from the format
// definitions (spec §2.2), and encoders by round trips, ties and saturation.
#include "core/dtype.h"

#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>

namespace dsv4 {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// Same value and same sign of zero; any NaN equals any NaN.
void ExpectSameFloat(float expected, float actual, const std::string& what) {
  if (std::isnan(expected)) {
    EXPECT_TRUE(std::isnan(actual)) << what << ": got " << actual;
    return;
  }
  EXPECT_EQ(expected, actual) << what;
  EXPECT_EQ(std::signbit(expected), std::signbit(actual)) << what << ": sign of zero";
}

std::string Code(int code) { return "code " + std::to_string(code); }

// e4m3fn from its definition: s eeee mmm, bias 7, e == 0 subnormal, 0x7F/0xFF NaN.
double ReferenceE4M3(int code) {
  const int s = code >> 7, e = (code >> 3) & 15, m = code & 7;
  if (e == 15 && m == 7) return NAN;
  const double magnitude = e == 0 ? std::ldexp(m / 8.0, -6) : std::ldexp(1.0 + m / 8.0, e - 7);
  return s ? -magnitude : magnitude;
}

TEST(DTypeTest, NamesAndSizes) {
  const struct {
    DType dtype;
    const char* name;
    int size;
  } kCases[] = {
      {DType::kBF16, "BF16", 2}, {DType::kF16, "F16", 2},        {DType::kF32, "F32", 4},
      {DType::kI64, "I64", 8},   {DType::kI32, "I32", 4},        {DType::kI8, "I8", 1},
      {DType::kU8, "U8", 1},     {DType::kF8E4M3, "F8_E4M3", 1}, {DType::kF8E8M0, "F8_E8M0", 1}};
  for (const auto& c : kCases) {
    EXPECT_EQ(DTypeName(c.dtype), c.name);
    EXPECT_EQ(DTypeSize(c.dtype), c.size) << c.name;
    EXPECT_EQ(DTypeFromName(c.name), c.dtype) << c.name;
  }
  EXPECT_EQ(DTypeFromName("F8_E5M2"), std::nullopt);
  EXPECT_EQ(DTypeFromName("f32"), std::nullopt);
  EXPECT_EQ(DTypeFromName(""), std::nullopt);
}

TEST(E4M3Test, DecodesEveryCode) {
  for (int code = 0; code < 256; ++code) {
    ExpectSameFloat(static_cast<float>(ReferenceE4M3(code)),
                    E4M3ToFloat(static_cast<uint8_t>(code)), Code(code));
  }
  EXPECT_EQ(E4M3ToFloat(0x7E), 448.0f);
  EXPECT_EQ(E4M3ToFloat(0xFE), -448.0f);
  EXPECT_EQ(E4M3ToFloat(0x01), 0.001953125f);  // 2^-9, the smallest subnormal
  EXPECT_EQ(E4M3ToFloat(0x08), 0.015625f);     // 2^-6, the smallest normal
  EXPECT_EQ(E4M3ToFloat(0x38), 1.0f);
  EXPECT_EQ(E4M3ToFloat(0x78), 256.0f);  // e = 15 is an ordinary binade (no infinity)
  EXPECT_TRUE(std::isnan(E4M3ToFloat(0x7F)));
  EXPECT_TRUE(std::isnan(E4M3ToFloat(0xFF)));
}

TEST(E4M3Test, EncoderRoundTripsEveryCode) {
  for (int code = 0; code < 256; ++code) {
    if (code == 0x7F || code == 0xFF) continue;
    EXPECT_EQ(FloatToE4M3(E4M3ToFloat(static_cast<uint8_t>(code))), code) << Code(code);
  }
  EXPECT_TRUE(std::isnan(E4M3ToFloat(FloatToE4M3(kNaN))));
}

TEST(E4M3Test, EncoderRoundsTiesToEven) {
  EXPECT_EQ(FloatToE4M3(1.0625f), 0x38);  // 1 and 1.125: mantissa 0 is even
  EXPECT_EQ(FloatToE4M3(1.1875f), 0x3A);  // 1.125 and 1.25 → 1.25
  EXPECT_EQ(FloatToE4M3(1.07f), 0x39);    // above the tie
  EXPECT_EQ(FloatToE4M3(-1.0625f), 0xB8);
  EXPECT_EQ(FloatToE4M3(std::ldexp(1.0f, -10)), 0x00);   // 0 and 2^-9 → 0
  EXPECT_EQ(FloatToE4M3(std::ldexp(3.0f, -10)), 0x02);   // 2^-9 and 2^-8 → 2^-8
  EXPECT_EQ(FloatToE4M3(std::ldexp(7.5f, -9)), 0x08);    // last subnormal and 2^-6
  EXPECT_EQ(FloatToE4M3(std::ldexp(1.0f, -30)), 0x00);   // underflow to +0
  EXPECT_EQ(FloatToE4M3(-std::ldexp(1.0f, -30)), 0x80);  // and to -0
  EXPECT_EQ(FloatToE4M3(400.0f), 0x7C);                  // 384 and 416 → 384
  EXPECT_EQ(FloatToE4M3(432.0f), 0x7E);                  // 416 and 448 → 448
}

TEST(E4M3Test, EncoderSaturates) {
  EXPECT_EQ(FloatToE4M3(448.0f), 0x7E);
  EXPECT_EQ(FloatToE4M3(464.0f), 0x7E);  // the tie with the missing 480 goes to 448
  EXPECT_EQ(FloatToE4M3(500.0f), 0x7E);
  EXPECT_EQ(FloatToE4M3(1e30f), 0x7E);
  EXPECT_EQ(FloatToE4M3(kInf), 0x7E);
  EXPECT_EQ(FloatToE4M3(-kInf), 0xFE);
  EXPECT_EQ(FloatToE4M3(-1e9f), 0xFE);
}

TEST(E8M0Test, DecodesEveryCode) {
  for (int code = 0; code < 256; ++code) {
    const float expected = code == 255 ? NAN : static_cast<float>(std::ldexp(1.0, code - 127));
    ExpectSameFloat(expected, E8M0ToFloat(static_cast<uint8_t>(code)), Code(code));
  }
  EXPECT_EQ(E8M0ToFloat(127), 1.0f);
  EXPECT_EQ(std::fpclassify(E8M0ToFloat(0)), FP_SUBNORMAL);  // 2^-127, not zero
  EXPECT_EQ(E8M0ToFloat(254), std::ldexp(1.0f, 127));
}

TEST(E8M0Test, CeilCode) {
  for (int code = 0; code < 255; ++code) {
    const float power = static_cast<float>(std::ldexp(1.0, code - 127));
    EXPECT_EQ(E8M0CeilCode(power), code) << Code(code);
    if (code < 254) {
      EXPECT_EQ(E8M0CeilCode(std::nextafter(power, kInf)), code + 1) << Code(code);
    }
    if (code > 0) {
      EXPECT_EQ(E8M0CeilCode(power * 0.75f), code) << Code(code);
    }
  }
  EXPECT_EQ(E8M0CeilCode(3.0f), 129);    // 4
  EXPECT_EQ(E8M0CeilCode(448.0f), 136);  // 512
  EXPECT_EQ(E8M0CeilCode(1e-44f), 0);    // below 2^-127: clamped to the smallest code
  EXPECT_EQ(E8M0CeilCode(3e38f), 254);   // above 2^127: clamped to the largest
  EXPECT_EQ(E8M0CeilCode(kInf), 254);
  EXPECT_EQ(E8M0CeilCode(0.0f), 0);
  EXPECT_EQ(E8M0CeilCode(-1.0f), 0);
  EXPECT_EQ(E8M0CeilCode(kNaN), 255);
}

TEST(Fp4Test, DecodesEveryCode) {
  const float kExpected[16] = {0.0f,  0.5f,  1.0f,  1.5f,  2.0f,  3.0f,  4.0f,  6.0f,
                               -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f};
  for (int code = 0; code < 16; ++code) {
    ExpectSameFloat(kExpected[code], Fp4ToFloat(static_cast<uint8_t>(code)), Code(code));
  }
  EXPECT_TRUE(std::signbit(Fp4ToFloat(8)));  // -0
  EXPECT_EQ(Fp4ToFloat(0xF7), 6.0f);         // only the low nibble counts
}

TEST(Fp4Test, PackedElementsLowNibbleFirst) {
  const uint8_t packed[2] = {0x72, 0x9F};  // elements: 1, 6, -6, -0.5
  EXPECT_EQ(Fp4PackedElement(packed, 0), 1.0f);
  EXPECT_EQ(Fp4PackedElement(packed, 1), 6.0f);
  EXPECT_EQ(Fp4PackedElement(packed, 2), -6.0f);
  EXPECT_EQ(Fp4PackedElement(packed, 3), -0.5f);
}

TEST(Fp4Test, EncoderRoundTripsTiesAndSaturates) {
  for (int code = 0; code < 16; ++code) {
    EXPECT_EQ(FloatToFp4(Fp4ToFloat(static_cast<uint8_t>(code))), code) << Code(code);
  }
  EXPECT_EQ(FloatToFp4(0.25f), 0x0);  // 0 and 0.5 → 0
  EXPECT_EQ(FloatToFp4(0.75f), 0x2);  // 0.5 and 1 → 1
  EXPECT_EQ(FloatToFp4(1.25f), 0x2);  // 1 and 1.5 → 1
  EXPECT_EQ(FloatToFp4(1.75f), 0x4);  // 1.5 and 2 → 2
  EXPECT_EQ(FloatToFp4(2.5f), 0x4);   // 2 and 3 → 2
  EXPECT_EQ(FloatToFp4(3.5f), 0x6);   // 3 and 4 → 4
  EXPECT_EQ(FloatToFp4(5.0f), 0x6);   // 4 and 6 → 4
  EXPECT_EQ(FloatToFp4(5.01f), 0x7);  // above the tie → 6
  EXPECT_EQ(FloatToFp4(-2.5f), 0xC);
  EXPECT_EQ(FloatToFp4(6.5f), 0x7);
  EXPECT_EQ(FloatToFp4(100.0f), 0x7);
  EXPECT_EQ(FloatToFp4(kInf), 0x7);
  EXPECT_EQ(FloatToFp4(-kInf), 0xF);
  EXPECT_EQ(FloatToFp4(-0.1f), 0x8);  // rounds to -0
}

TEST(Bf16Test, DecodesAsTheTopHalfOfFloat32) {
  for (uint32_t bits = 0; bits < 0x10000; ++bits) {
    const float expected = std::bit_cast<float>(bits << 16);
    ExpectSameFloat(expected, Bf16ToFloat(static_cast<uint16_t>(bits)), Code(bits));
  }
  EXPECT_EQ(Bf16ToFloat(0x3F80), 1.0f);
  EXPECT_EQ(Bf16ToFloat(0xC000), -2.0f);
  EXPECT_EQ(Bf16ToFloat(0x3F81), 1.0f + std::ldexp(1.0f, -7));
  EXPECT_EQ(Bf16ToFloat(0x7F7F), std::ldexp(255.0f, 120));  // largest finite
  EXPECT_EQ(Bf16ToFloat(0x0001), std::ldexp(1.0f, -133));   // smallest subnormal
  EXPECT_EQ(Bf16ToFloat(0x7F80), kInf);
  EXPECT_EQ(Bf16ToFloat(0xFF80), -kInf);
  EXPECT_TRUE(std::isnan(Bf16ToFloat(0x7FC0)));
}

TEST(Bf16Test, EncoderRoundTripsAndRoundsTiesToEven) {
  for (uint32_t bits = 0; bits < 0x10000; ++bits) {
    const float value = Bf16ToFloat(static_cast<uint16_t>(bits));
    if (std::isnan(value)) {
      EXPECT_TRUE(std::isnan(Bf16ToFloat(FloatToBf16(value)))) << Code(bits);
    } else {
      EXPECT_EQ(FloatToBf16(value), bits) << Code(bits);
    }
  }
  EXPECT_EQ(FloatToBf16(1.0f + std::ldexp(1.0f, -8)), 0x3F80);  // tie → even
  EXPECT_EQ(FloatToBf16(1.0f + std::ldexp(3.0f, -8)), 0x3F82);  // tie → even
  EXPECT_EQ(FloatToBf16(1.0f + std::ldexp(1.0f, -8) + std::ldexp(1.0f, -20)), 0x3F81);
  EXPECT_EQ(FloatToBf16(std::numeric_limits<float>::max()), 0x7F80);  // rounds to inf
  // A NaN whose payload sits only in the low bits must not turn into infinity.
  EXPECT_TRUE(std::isnan(Bf16ToFloat(FloatToBf16(std::bit_cast<float>(0x7F800001u)))));
}

// IEEE binary16 from its definition.
double ReferenceF16(int bits) {
  const int s = bits >> 15, e = (bits >> 10) & 31, m = bits & 1023;
  double magnitude;
  if (e == 31) {
    magnitude = m == 0 ? INFINITY : NAN;
  } else if (e == 0) {
    magnitude = std::ldexp(m / 1024.0, -14);
  } else {
    magnitude = std::ldexp(1.0 + m / 1024.0, e - 15);
  }
  return s ? -magnitude : magnitude;
}

TEST(F16Test, DecodesEveryCodeAndRoundTrips) {
  for (int bits = 0; bits < 0x10000; ++bits) {
    const float expected = static_cast<float>(ReferenceF16(bits));
    ExpectSameFloat(expected, F16ToFloat(static_cast<uint16_t>(bits)), Code(bits));
    if (!std::isnan(expected)) {
      EXPECT_EQ(FloatToF16(expected), bits) << Code(bits);
    }
  }
  EXPECT_TRUE(std::isnan(F16ToFloat(FloatToF16(kNaN))));
}

TEST(F16Test, EncoderRoundsTiesToEvenAndOverflowsToInfinity) {
  EXPECT_EQ(FloatToF16(1.0f + std::ldexp(1.0f, -11)), 0x3C00);  // tie → even
  EXPECT_EQ(FloatToF16(1.0f + std::ldexp(3.0f, -11)), 0x3C02);  // tie → even
  EXPECT_EQ(FloatToF16(std::ldexp(1.0f, -25)), 0x0000);         // 0 and 2^-24 → 0
  EXPECT_EQ(FloatToF16(std::ldexp(3.0f, -25)), 0x0002);         // subnormal tie → even
  EXPECT_EQ(FloatToF16(65504.0f), 0x7BFF);
  EXPECT_EQ(FloatToF16(65519.0f), 0x7BFF);
  EXPECT_EQ(FloatToF16(65520.0f), 0x7C00);  // IEEE: the tie with 65536 overflows
  EXPECT_EQ(FloatToF16(-1e10f), 0xFC00);
  EXPECT_EQ(FloatToF16(kInf), 0x7C00);
}

}  // namespace
}  // namespace dsv4
