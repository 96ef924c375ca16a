"""Writes a trained model.py state dict as a checkpoint in the released DeepSeek-V4.1
layout, and reads such a checkpoint back as exactly dequantised fp32 tensors.

The layout is the one core/checkpoint_layout.cc expects (and `dsv4 checkpoint inspect`
verifies): config.json and tokenizer.json beside sharded model-0000i-of-0000N.safetensors
with model.safetensors.index.json; dense linears F8_E4M3 with F8_E8M0 32×32 block scales,
routed experts FP4 e2m1 packed two per byte in I8 with F8_E8M0 1×32 scales, Engram tables
F8_E4M3 with one F8_E8M0 scale per 32 values of a row (and engram_checksums.json, FNV-1a
over 8-byte little-endian words per 65536-row chunk), embeddings, norms and the small
projections BF16, mHC parameters, attention sinks and expert biases F32. The Engram
tables go to the last shard, as in the release. Safetensors are written by hand: an
8-byte header length, the JSON header (padded with spaces to 8 bytes), the raw bytes."""
import json
import pathlib
import shutil
import struct

import numpy as np

import formats

SAFETENSORS_DTYPES = {"F8_E4M3": np.uint8, "F8_E8M0": np.uint8, "I8": np.int8,
                      "BF16": np.uint16, "F32": np.float32}
CHECKSUM_CHUNK_ROWS = 65536


def _is_bf16(name):
    return (name in ("embed.weight", "head.weight") or name.endswith("norm.weight")
            or name.endswith(("gate.weight", "q_weight", "k_weight"))
            or ".compressor." in name or name.endswith(("indexer.wk.weight",
                                                        "indexer.weights_proj.weight")))


def encode(model):
    """[(name, dtype, shape, bytes)] of every checkpoint tensor, weights then scales."""
    import torch
    from model import Linear
    fmts = {f"{n}.weight": m.fmt for n, m in model.named_modules() if isinstance(m, Linear)}
    out = []
    for name, tensor in model.state_dict().items():
        w = tensor.detach().to(torch.float32).numpy()
        fmt = fmts.get(name)
        if name.endswith("engram.embed.weight"):
            codes, scale = formats.quantize_fp8_blocks(w, 1, 32)
            out += [(name, "F8_E4M3", w.shape, codes), (name[:-6] + "scale", "F8_E8M0", scale.shape, scale)]
        elif fmt == "fp8":
            codes, scale = formats.quantize_fp8_blocks(w, 32, 32)
            out += [(name, "F8_E4M3", w.shape, codes), (name[:-6] + "scale", "F8_E8M0", scale.shape, scale)]
        elif fmt == "fp4":
            packed, scale = formats.quantize_fp4_rows(w)
            out += [(name, "I8", packed.shape, packed), (name[:-6] + "scale", "F8_E8M0", scale.shape, scale)]
        elif fmt == "bf16" or _is_bf16(name):
            out.append((name, "BF16", w.shape, formats.encode_bf16(w)))
        else:
            out.append((name, "F32", w.shape, w.astype(np.float32)))
    return out


def write_safetensors(path, tensors):
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, dtype, shape, data in tensors:
        size = data.nbytes
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for _, _, _, data in tensors:
            f.write(np.ascontiguousarray(data).tobytes())


def fnv1a64_words(data):
    """The runtime's Engram chunk checksum: FNV-1a over 8-byte little-endian words, then
    the trailing bytes one at a time."""
    h, prime, mask = 1469598103934665603, 1099511628211, (1 << 64) - 1
    words = np.frombuffer(data[:len(data) // 8 * 8], dtype="<u8")
    for word in words.tolist():
        h = ((h ^ word) * prime) & mask
    for byte in data[len(data) // 8 * 8:]:
        h = ((h ^ byte) * prime) & mask
    return f"{h:016x}"


def export(model, preset_dir, out_dir):
    """Writes the checkpoint of `model` (a model.Transformer) with the preset's config.json
    and tokenizer.json to out_dir."""
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for f in ("config.json", "tokenizer.json"):
        shutil.copy(pathlib.Path(preset_dir) / f, out / f)
    tensors = encode(model)
    engram = [t for t in tensors if ".engram.embed." in t[0]]
    dense = [t for t in tensors if ".engram.embed." not in t[0]]
    shards = [s for s in (dense, engram) if s]
    weight_map, total = {}, 0
    for i, shard in enumerate(shards):
        file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        write_safetensors(out / file, shard)
        for name, _, _, data in shard:
            weight_map[name] = file
            total += data.nbytes
    (out / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, indent=2) + "\n")
    if engram:
        sums = {}
        for name, _, shape, data in engram:
            raw = np.ascontiguousarray(data).tobytes()
            chunk = CHECKSUM_CHUNK_ROWS * shape[1]
            sums[name] = [fnv1a64_words(raw[at:at + chunk]) for at in range(0, len(raw), chunk)]
        (out / "engram_checksums.json").write_text(json.dumps(
            {"algorithm": "fnv1a64-le-words", "chunk_rows": CHECKSUM_CHUNK_ROWS,
             "tensors": dict(sorted(sums.items()))}, indent=1) + "\n")


def read_safetensors(path):
    """{name: (dtype, shape, numpy array of the raw storage type)}."""
    raw = pathlib.Path(path).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    base, out = 8 + n, {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        lo, hi = t["data_offsets"]
        data = np.frombuffer(raw[base + lo:base + hi], dtype=SAFETENSORS_DTYPES[t["dtype"]])
        out[name] = (t["dtype"], t["shape"], data.reshape(t["shape"]))
    return out


def load_dequantized(ckpt_dir):
    """{name: fp32 numpy array} of every weight, scales applied (the names model.py uses)."""
    ckpt = pathlib.Path(ckpt_dir)
    index = json.loads((ckpt / "model.safetensors.index.json").read_text())
    raw = {}
    for file in sorted(set(index["weight_map"].values())):
        raw.update(read_safetensors(ckpt / file))
    out = {}
    for name, (dtype, shape, data) in raw.items():
        if name.endswith(".scale") and name[:-6] + ".weight" in raw:
            continue
        scale = raw.get(name[:-7] + ".scale") if name.endswith(".weight") else None
        if dtype == "F8_E4M3":
            block = (1, 32) if name.endswith("engram.embed.weight") else (32, 32)
            out[name] = formats.dequantize_fp8_blocks(data, scale[2], *block)
        elif dtype == "I8":
            out[name] = formats.dequantize_fp4_rows(data, scale[2])
        elif dtype == "BF16":
            out[name] = formats.decode_bf16(data)
        else:
            out[name] = data.astype(np.float32)
    return out


def main():
    """python3 scripts/train/checkpoint.py --state RUN/model.pt --preset models/v41-kjv
    --out models/v41-kjv/checkpoint"""
    import argparse
    import sys

    import torch
    from model import Transformer
    p = argparse.ArgumentParser(description="Exports a trained state dict in the released layout.")
    p.add_argument("--state", required=True, help="model.pt written by train.py")
    p.add_argument("--preset", required=True, help="directory with config.json and tokenizer.json")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    text_config = json.loads((pathlib.Path(args.preset) / "config.json").read_text())["text_config"]
    model = Transformer(text_config)
    model.load_state_dict(torch.load(args.state))
    export(model, args.preset, args.out)
    total = sum(f.stat().st_size for f in pathlib.Path(args.out).iterdir())
    print(f"exported {args.state} to {args.out}: {total / 1e6:.1f} MB", file=sys.stderr)


if __name__ == "__main__":
    main()
