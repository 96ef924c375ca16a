#!/usr/bin/env python3
"""scripts/train/formats.py (the exporter's FP8 E4M3, FP4 E2M1, E8M0 and BF16 encoders)
against the runtime's own encodings: a checkpoint that `dsv4 checkpoint generate` wrote
(C++ encoders) is decoded with formats.py, and re-encoding those values must give them back
exactly, and the same codes wherever the re-derived scale is the file's (a block whose
largest value rounded up to the next power of two gets a smaller scale the second time);
midpoints between neighbouring values must round to the even code, and out-of-range values
saturate. NumPy only (scripts/install-deps.sh).

  trained_reference_test_formats.py BIN_DIR SOURCE_DIR
"""
import pathlib
import subprocess
import sys
import tempfile

import numpy as np

BIN, SRC = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
sys.path.insert(0, str(SRC / "scripts" / "train"))
import formats  # noqa: E402
from checkpoint import read_safetensors  # noqa: E402

failures = []


def check(condition, what):
    if not condition:
        failures.append(what)


with tempfile.TemporaryDirectory() as tmp:
    subprocess.run([str(BIN / "dsv4"), "checkpoint", "generate", "--preset", "v41-tiny",
                    "--seed", "3", "--out", tmp], check=True, capture_output=True)
    tensors = {}
    for f in sorted(pathlib.Path(tmp).glob("*.safetensors")):
        tensors.update(read_safetensors(f))
counts = {"F8_E4M3": 0, "I8": 0, "BF16": 0}
for name, (dtype, shape, data) in tensors.items():
    scale = tensors.get(name[:-7] + ".scale") if name.endswith(".weight") else None
    if dtype == "F8_E4M3":
        block = (1, 32) if name.endswith("engram.embed.weight") else (32, 32)
        values = formats.dequantize_fp8_blocks(data, scale[2], *block)
        codes, scales = formats.quantize_fp8_blocks(values, *block)
        check(np.array_equal(formats.dequantize_fp8_blocks(codes, scales, *block), values),
              f"{name}: E4M3 values differ")
        same = np.repeat(np.repeat(scales == scale[2], block[0], 0), block[1], 1)[:shape[0], :shape[1]]
        check(np.array_equal(codes[same], data[same]), f"{name}: E4M3 codes differ")
    elif dtype == "I8":
        values = formats.dequantize_fp4_rows(data, scale[2])
        packed, scales = formats.quantize_fp4_rows(values)
        check(np.array_equal(formats.dequantize_fp4_rows(packed, scales), values),
              f"{name}: E2M1 values differ")
        same = np.repeat(scales == scale[2], 16, axis=1)
        check(np.array_equal(packed[same], data[same]), f"{name}: packed E2M1 differs")
    elif dtype == "BF16":
        check(np.array_equal(formats.encode_bf16(formats.decode_bf16(data)), data),
              f"{name}: BF16 differs")
    else:
        continue
    counts[dtype] += 1
check(min(counts.values()) > 0, f"the generated checkpoint lacks a format: {counts}")

# Ties to the even code, saturation, signed zero.
e4m3 = formats.E4M3_VALUES[:127]
mid = (e4m3[:-1] + e4m3[1:]) / 2
expect = np.where(np.arange(126) % 2 == 0, np.arange(126), np.arange(1, 127))
check(np.array_equal(formats.encode_e4m3(mid), expect.astype(np.uint8)), "E4M3 midpoints")
check(formats.encode_e4m3(np.float32(1e6)) == 0x7E, "E4M3 saturates at 448")
check(formats.encode_e4m3(np.float32(-0.0)) == 0x80, "E4M3 -0")
e2m1 = formats.E2M1_VALUES[:8]
mid = (e2m1[:-1] + e2m1[1:]) / 2
expect = np.where(np.arange(7) % 2 == 0, np.arange(7), np.arange(1, 8))
check(np.array_equal(formats.encode_e2m1(mid), expect.astype(np.uint8)), "E2M1 midpoints")
check(formats.encode_e2m1(np.float32(-100)) == 0xF, "E2M1 saturates at -6")
check(formats.encode_bf16(np.float32(1 + 2**-8)) == 0x3F80, "BF16 tie to even (down)")
check(formats.encode_bf16(np.float32(1 + 3 * 2**-8)) == 0x3F82, "BF16 tie to even (up)")
check(formats.e8m0_ceil_code(np.float32(1.0)) == 127 and formats.e8m0_ceil_code(np.float32(1.5)) == 128,
      "E8M0: the smallest power of two at or above")

print(f"formats: {counts} tensors of a C++-generated checkpoint re-encode exactly")
if failures:
    print("FAIL:\n  " + "\n  ".join(failures), file=sys.stderr)
    sys.exit(1)
print("1 passed, 0 failed")
