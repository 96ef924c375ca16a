#!/usr/bin/env bash
# Trains the demo model from scratch and replaces the committed one: one seeded run on
# this machine's CPU, as models/v41-kjv/README.md describes.
#   1. install PyTorch and the corpus (scripts/install-train-deps.sh);
#   2. print the King James Bible to train.txt / heldout.txt (corpus.py);
#   3. train the preset's byte-level BPE tokenizer on train.txt (scripts/make_tokenizer.py;
#      deterministic, so it reproduces the committed tokenizer.json);
#   4. train (train.py: about 40 minutes on one core), export in the released layout
#      (checkpoint.py) to models/v41-kjv/checkpoint;
#   5. record the training log (bench/results/trained-training.json) and the loss curve
#      (models/v41-kjv/loss-curve.png), then run bench/trained.sh: dsv4 run against the
#      PyTorch model on the held-out text, and the demo's traffic figures.
# Usage: scripts/train/run.sh [BUILD_DIR] (dsv4 must be built there).
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD_DIR=${1:-build}
PRESET=models/v41-kjv
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
PY=/usr/bin/python3  # Debian's, where python3-torch installs

bash scripts/install-train-deps.sh
$PY scripts/train/corpus.py --out-dir "$WORK/corpus"
$PY scripts/make_tokenizer.py --config "$PRESET/config.json" --out "$PRESET/tokenizer.json" \
  --corpus "$WORK/corpus/train.txt"
$PY scripts/train/train.py --preset "$PRESET" --corpus "$WORK/corpus" --out "$WORK/run"
rm -rf "$PRESET/checkpoint"
$PY scripts/train/checkpoint.py --state "$WORK/run/model.pt" --preset "$PRESET" \
  --out "$PRESET/checkpoint"
"$BUILD_DIR/bin/dsv4" checkpoint inspect "$PRESET/checkpoint" --verify-values | tail -n 1
cp "$WORK/run/loss-curve.png" "$PRESET/loss-curve.png"
cp "$WORK/run/train-log.json" bench/results/trained-training.json
head -n 40 "$WORK/corpus/heldout.txt" >"$PRESET/heldout-sample.txt"  # for the test
bash bench/trained.sh "$BUILD_DIR"
