#!/usr/bin/env python3
"""Trains a small DeepSeek-V4.1 preset (models/v41-kjv) on the King James Bible, on CPU.

One seeded run: AdamW with warm-up and cosine decay, batches of BOS + (seq − 1) tokens
starting at verse starts, next-token cross-entropy plus the indexer's KL loss (model.py),
expert-bias balancing after every step, and quantisation-aware training (FP8/FP4 rounding
with straight-through gradients) over the last part of the run. Writes to --out:
model.pt (state dict, fp32), train-log.json (losses, held-out perplexity, timings) and
loss-curve.png.

  python3 scripts/train/train.py --preset models/v41-kjv --corpus /tmp/kjv --out /tmp/run
"""
import argparse
import json
import math
import pathlib
import sys
import time

import numpy as np
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from engram_hash import EngramHasher  # noqa: E402
from model import Transformer, indexer_loss  # noqa: E402
from tokenize_text import Tokenizer  # noqa: E402


class Data:
    """The encoded corpus and the token offsets at which verses start."""

    def __init__(self, tokenizer, text):
        self.ids = np.array(tokenizer.encode(text, bos=False), dtype=np.int64)
        newline = np.array([("\n" in tokenizer.decode([i])) for i in range(len(tokenizer.id_to_token))])
        starts = np.nonzero(newline[self.ids[:-1]])[0] + 1
        self.starts = np.concatenate([[0], starts[~newline[self.ids[starts]]]])
        self.bos = tokenizer.bos

    def window(self, start, seq):
        out = np.empty(seq + 1, dtype=np.int64)
        out[0] = self.bos
        piece = self.ids[start:start + seq]
        out[1:1 + len(piece)] = piece
        return out[:1 + len(piece)]

    def batch(self, rng, batch, seq):
        starts = rng.choice(self.starts[self.starts < len(self.ids) - seq], size=batch)
        return np.stack([self.window(s, seq) for s in starts])

    def eval_windows(self, seq):
        """Non-overlapping windows covering the text, each BOS + up to seq tokens."""
        return [self.window(s, seq) for s in range(0, len(self.ids), seq)]


def nll(model, hasher, windows):
    """Total negative log-likelihood and token count of the windows' next-token targets."""
    total, count = 0.0, 0
    with torch.no_grad():
        for w in windows:
            tokens = torch.from_numpy(w[None, :-1])
            rows = [torch.from_numpy(r) for r in hasher.rows(w[None, :-1])]
            logits, _ = model(tokens, rows)
            loss = torch.nn.functional.cross_entropy(logits[0], torch.from_numpy(w[1:]), reduction="sum")
            total += loss.item()
            count += len(w) - 1
    return total, count


def plot(log, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    ax.plot([s for s, _ in log["train"]], [l for _, l in log["train"]], lw=1, label="training loss")
    ax.plot([s for s, _ in log["heldout"]], [l for _, l in log["heldout"]], "o-", ms=3,
            label="held-out loss")
    if log.get("qat_from_step") is not None:
        ax.axvline(log["qat_from_step"], color="gray", ls=":", lw=1, label="FP8/FP4 QAT from here")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(f"{log['preset']}: KJV Bible, {log['parameters'] / 1e6:.1f}M parameters")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", required=True, help="directory with config.json and tokenizer.json")
    p.add_argument("--corpus", required=True, help="directory with train.txt and heldout.txt")
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--max-minutes", type=float, default=43.0, help="stop early past this")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--qat-from", type=float, default=0.7, help="fraction of steps")
    p.add_argument("--bias-rate", type=float, default=1e-3)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--seed", type=int, default=1)
    # One: on the shared 2-core machine two threads ran 5× slower (models/v41-kjv/README.md).
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    preset = pathlib.Path(args.preset)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text_config = json.loads((preset / "config.json").read_text())["text_config"]
    tokenizer = Tokenizer(preset / "tokenizer.json")
    hasher = EngramHasher(text_config, preset / "tokenizer.json")
    corpus = pathlib.Path(args.corpus)
    train = Data(tokenizer, (corpus / "train.txt").read_text(encoding="utf-8"))
    held = Data(tokenizer, (corpus / "heldout.txt").read_text(encoding="utf-8"))
    held_windows = held.eval_windows(args.seq)
    probe = held_windows[::8]  # the curve's held-out points: an eighth of the held-out text

    model = Transformer(text_config)
    params = sum(p.numel() for p in model.parameters())
    decay = [p for n, p in model.named_parameters() if p.dim() == 2 and "engram.embed" not in n
             and not n.startswith("embed")]
    no_decay = [p for n, p in model.named_parameters() if not any(p is q for q in decay)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95))
    qat_from = int(args.steps * args.qat_from)
    log = {"preset": preset.name, "parameters": params, "train_tokens": int(len(train.ids)),
           "heldout_tokens": int(len(held.ids)), "args": vars(args), "train": [], "heldout": [],
           "qat_from_step": qat_from}
    print(f"train: {params / 1e6:.2f}M parameters, {len(train.ids)} training tokens, "
          f"{len(held.ids)} held-out", flush=True)

    start, step = time.time(), 0
    for step in range(1, args.steps + 1):
        lr = args.lr * min(1.0, step / args.warmup) * (
            0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, step / args.steps))))
        for group in opt.param_groups:
            group["lr"] = lr
        model.cfg.fake_quant = step > qat_from
        batch = train.batch(rng, args.batch, args.seq)
        tokens, targets = torch.from_numpy(batch[:, :-1]), torch.from_numpy(batch[:, 1:])
        rows = [torch.from_numpy(r) for r in hasher.rows(batch[:, :-1])]
        aux = []
        logits, loads = model(tokens, rows, aux)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
        total = loss + indexer_loss(aux)
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        model.update_expert_bias(loads, args.bias_rate)
        log["train"].append((step, loss.item()))
        minutes = (time.time() - start) / 60
        if step % 10 == 0:
            print(f"step {step} loss {loss.item():.3f} lr {lr:.2e} {minutes:.1f} min", flush=True)
        last = step == args.steps or minutes > args.max_minutes
        if step % args.eval_every == 0 or last:
            model.eval()
            t, c = nll(model, hasher, probe)
            model.train()
            log["heldout"].append((step, t / c))
            print(f"step {step} held-out loss {t / c:.3f}", flush=True)
        if last:
            break

    log["steps"] = step
    log["train_minutes"] = (time.time() - start) / 60
    model.cfg.fake_quant = True  # the weights as exported
    t, c = nll(model, hasher, held_windows)
    log["heldout_loss"] = t / c
    log["heldout_perplexity"] = math.exp(t / c)
    print(f"done: {step} steps in {log['train_minutes']:.1f} min, held-out perplexity "
          f"{log['heldout_perplexity']:.2f} (loss {t / c:.3f}) over {c} tokens", flush=True)
    torch.save(model.state_dict(), out / "model.pt")
    (out / "train-log.json").write_text(json.dumps(log, indent=1))
    plot(log, out / "loss-curve.png")


if __name__ == "__main__":
    main()
