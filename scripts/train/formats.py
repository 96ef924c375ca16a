"""The released number formats, encoded and decoded with NumPy (torch 1.13 has no float8):
FP8 E4M3 (the "fn" variant: no infinities, ±448 at most), FP4 E2M1 (two per byte, low
nibble first), E8M0 power-of-two scales, and BF16. Encoders round to nearest, ties to the
even code, and saturate at the largest finite value, as the runtime's encoders do
(core/dtype.cc). Scales are the smallest power of two that brings a block's largest
magnitude within range (core/checkpoint_generator.cc)."""
import numpy as np

E4M3_MAX = 448.0
E2M1_MAX = 6.0


def _e4m3_value(code):
    sign = -1.0 if code & 0x80 else 1.0
    exp, man = (code >> 3) & 0xF, code & 0x7
    if exp == 0xF and man == 0x7:
        return float("nan")
    if exp == 0:
        return sign * man / 8.0 * 2.0 ** -6
    return sign * (1.0 + man / 8.0) * 2.0 ** (exp - 7)


E4M3_VALUES = np.array([_e4m3_value(c) for c in range(256)], dtype=np.float32)
E2M1_VALUES = np.array([0, .5, 1, 1.5, 2, 3, 4, 6, -0., -.5, -1, -1.5, -2, -3, -4, -6],
                       dtype=np.float32)


def _encode_magnitude(mag, values):
    """Codes (0..len(values)-1) of the nearest of the ascending non-negative `values`,
    ties to the even code, saturating at the largest."""
    mag = np.minimum(mag, values[-1])
    hi = np.clip(np.searchsorted(values, mag, side="left"), 1, len(values) - 1)
    lo = hi - 1
    d_lo, d_hi = mag - values[lo], values[hi] - mag
    pick_hi = (d_hi < d_lo) | ((d_hi == d_lo) & (hi % 2 == 0))
    return np.where(pick_hi, hi, lo).astype(np.uint8)


def encode_e4m3(x):
    x = np.asarray(x, dtype=np.float32)
    code = _encode_magnitude(np.abs(x), E4M3_VALUES[:127])  # codes 0..126: 0 … 448
    return code | np.where(np.signbit(x), 0x80, 0).astype(np.uint8)


def encode_e2m1(x):
    x = np.asarray(x, dtype=np.float32)
    code = _encode_magnitude(np.abs(x), E2M1_VALUES[:8])
    return code | np.where(np.signbit(x), 0x8, 0).astype(np.uint8)


def decode_e4m3(codes):
    return E4M3_VALUES[np.asarray(codes, dtype=np.uint8)]


def decode_e2m1(codes):
    return E2M1_VALUES[np.asarray(codes, dtype=np.uint8) & 0xF]


def e8m0_ceil_code(x):
    """The E8M0 code of the smallest power of two ≥ x (x > 0)."""
    x = np.asarray(x, dtype=np.float32).astype(np.float64)
    mant, exp = np.frexp(x)  # x = mant · 2^exp, mant in [0.5, 1)
    e = np.where(mant == 0.5, exp - 1, exp)
    return np.clip(e + 127, 0, 254).astype(np.uint8)


def decode_e8m0(codes):
    return np.ldexp(1.0, np.asarray(codes, dtype=np.int32) - 127).astype(np.float32)


def encode_bf16(x):
    """uint16 bit patterns, round to nearest even."""
    bits = np.asarray(x, dtype=np.float32).view(np.uint32)
    rounded = bits + 0x7FFF + ((bits >> 16) & 1)
    return (rounded >> 16).astype(np.uint16)


def decode_bf16(bits):
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def quantize_fp8_blocks(w, block_rows, block_cols):
    """w [rows, cols] → (E4M3 codes [rows, cols], E8M0 codes [⌈rows/br⌉, ⌈cols/bc⌉])."""
    w = np.asarray(w, dtype=np.float32)
    rows, cols = w.shape
    br, bc = -(-rows // block_rows), -(-cols // block_cols)
    padded = np.zeros((br * block_rows, bc * block_cols), dtype=np.float32)
    padded[:rows, :cols] = np.abs(w)
    amax = padded.reshape(br, block_rows, bc, block_cols).max(axis=(1, 3))
    scale = e8m0_ceil_code(np.maximum(amax, 1e-30).astype(np.float32) / np.float32(E4M3_MAX))
    full = np.repeat(np.repeat(decode_e8m0(scale), block_rows, 0), block_cols, 1)[:rows, :cols]
    return encode_e4m3(w / full), scale


def dequantize_fp8_blocks(codes, scale, block_rows, block_cols):
    rows, cols = codes.shape
    full = np.repeat(np.repeat(decode_e8m0(scale), block_rows, 0), block_cols, 1)[:rows, :cols]
    return decode_e4m3(codes) * full


def quantize_fp4_rows(w):
    """w [rows, cols] (cols a multiple of 32) → (packed bytes [rows, cols/2] as int8,
    E8M0 codes [rows, cols/32])."""
    w = np.asarray(w, dtype=np.float32)
    rows, cols = w.shape
    amax = np.abs(w).reshape(rows, cols // 32, 32).max(axis=2)
    scale = e8m0_ceil_code(np.maximum(amax, 1e-30).astype(np.float32) / np.float32(E2M1_MAX))
    codes = encode_e2m1(w / np.repeat(decode_e8m0(scale), 32, axis=1))
    packed = codes[:, 0::2] | (codes[:, 1::2] << 4)
    return packed.astype(np.uint8).view(np.int8), scale


def dequantize_fp4_rows(packed, scale):
    b = np.asarray(packed).view(np.uint8)
    codes = np.stack([b & 0xF, b >> 4], axis=-1).reshape(b.shape[0], -1)
    return decode_e2m1(codes) * np.repeat(decode_e8m0(scale), 32, axis=1)
