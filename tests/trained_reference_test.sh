#!/usr/bin/env bash
# The trained demo model (models/v41-kjv/checkpoint) in two CTest entries:
#   checkpoint BIN SRC: torch-free. The committed checkpoint verifies in the released layout
#     with finite values, and a greedy continuation from the runtime reads as English
#     (mostly letters and spaces, common KJV words).
#   reference BIN SRC: the second reference (scripts/train/reference.py). dsv4 run and the
#     PyTorch model on the checkpoint's dequantised weights agree on held-out text to 1e-4
#     of the logit scale and in perplexity; and a 0.05 change to one Engram table on the
#     PyTorch side is caught. Needs Debian's python3-torch: without it the test says so and
#     is reported skipped (exit 77).
set -euo pipefail
MODE=$1 BIN=$2 SRC=$3
CKPT="$SRC/models/v41-kjv/checkpoint"

case "$MODE" in
  checkpoint)
    "$BIN/dsv4" checkpoint inspect "$CKPT" --verify-values | tail -n 1
    out=$("$BIN/dsv4" run --checkpoint "$CKPT" --prompt "And the LORD spake unto Moses, saying," \
      --generate 48 --temperature 0 --threads 1)
    text=$(sed -n 's/^text: //p' <<<"$out")
    echo "greedy continuation: $text"
    words=$(grep -oE "\b(the|and|of|unto|LORD|shall|is|that|he|his|in|to)\b" <<<"$text" | wc -l)
    letters=$(tr -cd 'A-Za-z ' <<<"$text" | wc -c)
    if [ "$words" -lt 5 ] || [ $((letters * 10)) -lt $((${#text} * 8)) ]; then
      echo "FAIL: the continuation does not read as English ($words common words)" >&2
      exit 1
    fi
    ;;
  reference)
    if ! /usr/bin/python3 -c "import torch" 2>/dev/null; then
      echo "SKIPPED: /usr/bin/python3 cannot import torch (install it with" \
        "scripts/install-train-deps.sh); the PyTorch reference comparison did not run"
      exit 77
    fi
    REF="/usr/bin/python3 $SRC/scripts/train/reference.py --checkpoint $CKPT --windows 4
         --text $SRC/models/v41-kjv/heldout-sample.txt --dsv4 $BIN/dsv4"
    $REF
    if $REF --perturb layers.3.engram.embed.weight >/dev/null 2>&1; then
      echo "FAIL: a perturbed Engram table went unnoticed" >&2
      exit 1
    fi
    echo "a 0.05 change to layers.3.engram.embed.weight is caught"
    ;;
  *)
    echo "usage: $0 checkpoint|reference BIN_DIR SOURCE_DIR" >&2
    exit 2
    ;;
esac
