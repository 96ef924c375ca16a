#!/usr/bin/env bash
# The trained demo model's figures, written to bench/results/:
#   trained-reference.json  dsv4 run against the PyTorch model (scripts/train/reference.py)
#                           on the whole held-out text (every 50th chapter of the KJV, in
#                           windows of BOS + 128 tokens as training evaluated it): max
#                           |Δlogit| / logit scale and both perplexities. Needs
#                           scripts/install-train-deps.sh (torch, the `bible` reader);
#                           skipped, and saying so, without torch; without `bible` it
#                           reads the committed 40-line held-out sample instead.
#   trained-traffic.json    what `make demo` shows on the cluster: expert-rank load
#                           imbalance before and after `dsv4 admin rebalance`, and the
#                           Engram client's cache hit rate and lookup stall on real text.
# Usage: bench/trained.sh [BUILD_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${1:-build}
CKPT=models/v41-kjv/checkpoint
mkdir -p bench/results

if /usr/bin/python3 -c "import torch" 2>/dev/null; then
  TEXT=models/v41-kjv/heldout-sample.txt WORK=none
  if command -v bible >/dev/null; then
    WORK=$(mktemp -d)
    trap 'rm -rf "$WORK"' EXIT
    /usr/bin/python3 scripts/train/corpus.py --out-dir "$WORK"
    TEXT="$WORK/heldout.txt"
  fi
  echo "== reference: dsv4 run vs PyTorch on $TEXT"
  /usr/bin/python3 scripts/train/reference.py --checkpoint "$CKPT" --text "$TEXT" \
    --dsv4 "$BUILD_DIR/bin/dsv4" --json bench/results/trained-reference.json >/dev/null
  # name the text, not the temporary file
  sed -i "s|\"$WORK/heldout.txt\"|\"every 50th KJV chapter (scripts/train/corpus.py)\"|" \
    bench/results/trained-reference.json
  cat bench/results/trained-reference.json
else
  echo "== reference: SKIPPED (/usr/bin/python3 cannot import torch: scripts/install-train-deps.sh)"
fi

echo "== traffic: the demo cluster on the trained model"
DEMO_JSON=bench/results/trained-traffic.json bash scripts/demo.sh "$BUILD_DIR" >/dev/null
cat bench/results/trained-traffic.json
