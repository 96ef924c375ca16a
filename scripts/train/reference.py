#!/usr/bin/env python3
"""The second reference: model.py evaluated in fp32 on a checkpoint's exactly dequantised
weights, against `dsv4 run` on the same checkpoint and tokens.

Cuts a text into windows as train.py evaluates held-out text (BOS, then the next --seq
tokens), has `dsv4 run` write each window's logits as .npy, runs model.py on the weights
read back from the safetensors (not on the training state: this checks the export too), and
compares: max |Δlogit| / max |logit| (must be ≤ --tolerance) and the perplexity of the
windows' tokens under each (relative difference ≤ --tolerance). Exits 1 when either is
over, naming the figure.

A top-k choice (experts, indexer positions, candidate blocks) whose last kept and first
dropped scores are within --tie-gap (relative) of each other is a tie at fp32 rounding:
the runtime, summing in another order, may keep the other one, and every later position
then differs. The PyTorch side detects such windows itself (model.topk_margins); they
still count in the perplexity, and their logit difference is reported apart
("near_tie_windows", "max_abs_diff_over_scale_all_windows"), not held to the tolerance.

  python3 scripts/train/reference.py --checkpoint models/v41-kjv/checkpoint \\
      --text heldout.txt --dsv4 build/bin/dsv4 [--windows N] [--json OUT]
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
import model as model_module  # noqa: E402
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


def nll(logits, window):
    """Summed negative log-likelihood of window[1:] under logits[:-1] (float64)."""
    logp = torch.log_softmax(torch.as_tensor(logits[:-1], dtype=torch.float64), -1)
    return -logp[torch.arange(len(window) - 1), torch.as_tensor(window[1:])].sum().item()


def run_dsv4(dsv4, ckpt, window, tmp):
    npy = pathlib.Path(tmp) / "logits.npy"
    subprocess.run([dsv4, "run", "--checkpoint", str(ckpt), "--threads", "1",
                    "--tokens", ",".join(map(str, window)), "--logits-out", str(npy)],
                   check=True, capture_output=True)
    return np.load(npy)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--text", required=True, help="text file; its first --tokens tokens are used")
    p.add_argument("--seq", type=int, default=128, help="tokens per window after BOS")
    p.add_argument("--windows", type=int, default=0, help="windows to compare (0: the whole text)")
    p.add_argument("--dsv4", required=True, help="the dsv4 binary")
    p.add_argument("--tolerance", type=float, default=1e-4)
    p.add_argument("--tie-gap", type=float, default=1e-5)
    p.add_argument("--json", help="write the figures here")
    p.add_argument("--perturb", metavar="TENSOR",
                   help="add 0.05 (about one FP8 step at 1) to this weight on the PyTorch side "
                        "(the test's check that a difference is caught)")
    args = p.parse_args()
    torch.set_num_threads(1)
    ckpt = pathlib.Path(args.checkpoint)
    tokenizer = Tokenizer(ckpt / "tokenizer.json")
    ids = tokenizer.encode(pathlib.Path(args.text).read_text(encoding="utf-8"), bos=False)
    windows = [[tokenizer.bos] + ids[s:s + args.seq] for s in range(0, len(ids), args.seq)]
    windows = windows[:args.windows] if args.windows else windows

    model, hasher = load_model(ckpt)
    if args.perturb:
        with torch.no_grad():
            model.state_dict()[args.perturb].add_(0.05)
    seconds = {"dsv4_run": 0.0, "pytorch": 0.0}
    diff = diff_all = scale = nll_runtime = nll_torch = 0.0
    near_ties = []
    with tempfile.TemporaryDirectory() as tmp:
        for index, window in enumerate(windows):
            start = time.time()
            runtime = run_dsv4(args.dsv4, ckpt, window, tmp)
            seconds["dsv4_run"] += time.time() - start
            start = time.time()
            model_module.topk_margins = []
            with torch.no_grad():
                batch = np.array([window])
                rows = [torch.from_numpy(r) for r in hasher.rows(batch)]
                ours = model(torch.from_numpy(batch), rows)[0][0].numpy()
            seconds["pytorch"] += time.time() - start
            window_diff = float(np.abs(runtime - ours).max())
            diff_all = max(diff_all, window_diff)
            if min(model_module.topk_margins, default=1.0) < args.tie_gap:
                near_ties.append({"window": index, "max_abs_diff": window_diff,
                                  "smallest_topk_gap": min(model_module.topk_margins)})
            else:
                diff = max(diff, window_diff)
            scale = max(scale, float(np.abs(runtime).max()))
            nll_runtime += nll(runtime, window)
            nll_torch += nll(ours, window)

    count = sum(len(w) - 1 for w in windows)
    ppl_runtime, ppl_torch = math.exp(nll_runtime / count), math.exp(nll_torch / count)
    rel, ppl_rel = diff / scale, abs(ppl_runtime - ppl_torch) / ppl_torch
    figures = {"checkpoint": str(ckpt), "text": args.text, "windows": len(windows),
               "tokens_per_window": args.seq + 1, "predicted_tokens": count,
               "logit_scale": scale, "max_abs_diff": diff, "max_abs_diff_over_scale": rel,
               "tie_gap": args.tie_gap, "near_tie_windows": near_ties,
               "max_abs_diff_over_scale_all_windows": diff_all / scale,
               "perplexity_dsv4_run": ppl_runtime, "perplexity_pytorch": ppl_torch,
               "perplexity_rel_diff": ppl_rel, "tolerance": args.tolerance,
               "seconds": seconds}
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
