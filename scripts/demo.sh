#!/usr/bin/env bash
# make demo: generate the embedded default checkpoint (v4-mini, cached under
# checkpoints/), verify it, and generate tokens with the single-process model.
set -euo pipefail
BUILD_DIR=${1:-build}
BIN="$BUILD_DIR/bin"
CKPT=checkpoints/v4-mini
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}

if [ ! -f "$CKPT/model.safetensors.index.json" ]; then
  echo "== generating the v4-mini checkpoint (seed 0) into $CKPT"
  "$BIN/dsv4" checkpoint generate --preset v4-mini --seed 0 --out "$CKPT"
else
  echo "== using the cached checkpoint in $CKPT"
fi

echo "== dsv4 checkpoint inspect $CKPT"
"$BIN/dsv4" checkpoint inspect "$CKPT"

if "$BIN/dsv4" --help 2>/dev/null | grep -q "^  run "; then
  echo "== dsv4 run: prefill 16 tokens, then sample 32 more"
  "$BIN/dsv4" run --checkpoint "$CKPT" --tokens 0,17,42,99,123,256,511,1000,7,8,9,10,11,12,13,14 \
    --generate 32 --seed 1
fi
