#!/usr/bin/env python3
"""The second reference: model.py evaluated in fp32 on a checkpoint's exactly dequantised
weights, against `dsv4 run` on the same checkpoint and tokens.

Encodes the first --tokens tokens of a text (BOS first), has `dsv4 run` write their logits
as .npy, runs model.py on the weights read back from the safetensors (not on the training
state: this checks the export too), and compares: max |Δlogit| / max |logit| (must be
≤ --tolerance) and the perplexity of the text's next tokens under each (relative
difference ≤ --tolerance). Exits 1 when either is over, naming the figure.

  python3 scripts/train/reference.py --checkpoint models/v41-kjv/checkpoint \\
      --text heldout.txt --dsv4 build/bin/dsv4 [--json OUT]
"""
import argparse
import json
import math
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from checkpoint import load_dequantized  # noqa: E402
from engram_hash import EngramHasher  # noqa: E402
from model import Transformer  # noqa: E402
from tokenize_text import Tokenizer  # noqa: E402


def load_model(ckpt):
    text_config = json.loads((ckpt / "config.json").read_text())["text_config"]
    model = Transformer(text_config)
    weights = load_dequantized(ckpt)
    state = model.state_dict()
    missing = sorted(set(state) - set(weights))
    if missing:
        sys.exit(f"reference: the checkpoint lacks {missing[:5]}")
    model.load_state_dict({k: torch.from_numpy(np.array(weights[k])).reshape(state[k].shape)
                           for k in state})
    return model.eval(), EngramHasher(text_config, ckpt / "tokenizer.json")


def perplexity(logits, tokens):
    logp = torch.log_softmax(torch.as_tensor(logits, dtype=torch.float64), -1)
    nll = -logp[torch.arange(len(tokens) - 1), torch.as_tensor(tokens[1:])].mean().item()
    return math.exp(nll)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--text", required=True, help="text file; its first --tokens tokens are used")
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--dsv4", required=True, help="the dsv4 binary")
    p.add_argument("--tolerance", type=float, default=1e-4)
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args()
    torch.set_num_threads(1)
    ckpt = pathlib.Path(args.checkpoint)
    tokenizer = Tokenizer(ckpt / "tokenizer.json")
    tokens = tokenizer.encode(pathlib.Path(args.text).read_text(encoding="utf-8"))[:args.tokens]

    with tempfile.TemporaryDirectory() as tmp:
        npy = pathlib.Path(tmp) / "logits.npy"
        start = time.time()
        subprocess.run([args.dsv4, "run", "--checkpoint", str(ckpt), "--threads", "1",
                        "--tokens", ",".join(map(str, tokens)), "--logits-out", str(npy)],
                       check=True, capture_output=True)
        runtime_seconds = time.time() - start
        runtime = np.load(npy)

    start = time.time()
    model, hasher = load_model(ckpt)
    with torch.no_grad():
        batch = np.array([tokens])
        rows = [torch.from_numpy(r) for r in hasher.rows(batch)]
        ours = model(torch.from_numpy(batch), rows)[0][0].numpy()
    torch_seconds = time.time() - start

    scale = float(np.abs(runtime).max())
    rel = float(np.abs(runtime - ours).max()) / scale
    ppl_runtime, ppl_torch = perplexity(runtime, tokens), perplexity(ours, tokens)
    ppl_rel = abs(ppl_runtime - ppl_torch) / ppl_torch
    figures = {"checkpoint": str(ckpt), "tokens": len(tokens), "logit_scale": scale,
               "max_abs_diff_over_scale": rel, "perplexity_dsv4_run": ppl_runtime,
               "perplexity_pytorch": ppl_torch, "perplexity_rel_diff": ppl_rel,
               "tolerance": args.tolerance, "dsv4_run_seconds": runtime_seconds,
               "pytorch_seconds": torch_seconds}
    print(json.dumps(figures, indent=1))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(figures, indent=1) + "\n")
    failed = [k for k, v in (("max |Δlogit| / logit scale", rel), ("perplexity", ppl_rel))
              if not v <= args.tolerance]
    if failed:
        print(f"reference: {', '.join(failed)} differ by more than {args.tolerance}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
