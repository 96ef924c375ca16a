#!/usr/bin/env bash
# make demo: generate the embedded default checkpoint (v4-mini, cached under
# checkpoints/), verify it, generate tokens with the single-process model, then run the
# same prompt on a local cluster (cluster-configs/local.yaml: 1 attention + 1 expert rank
# over MPI) and show per-rank memory and per-step measured vs modelled time.
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

PROMPT=0,17,42,99,123,256,511,1000,7,8,9,10,11,12,13,14

TEXT="DeepSeek-V4 runs on a cluster of"
echo "== dsv4 run: the prompt \"$TEXT\", then 32 sampled tokens (single process;"
echo "   the weights are random, so the text is too)"
"$BIN/dsv4" run --checkpoint "$CKPT" --prompt "$TEXT" --generate 32 --seed 1

echo "== dsv4-engine on cluster-configs/local.yaml: prefill 8 tokens, decode 8, over MPI"
MPIRUN_FLAGS=(--oversubscribe)
[ "$(id -u)" -eq 0 ] && MPIRUN_FLAGS+=(--allow-run-as-root)
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
mpirun "${MPIRUN_FLAGS[@]}" -np 2 "$BIN/dsv4-engine" --cluster cluster-configs/local.yaml \
  --checkpoint "$CKPT" --tokens "$PROMPT" --decode-from 8 --logits-out "$OUT/engine.npy"
"$BIN/dsv4" run --checkpoint "$CKPT" --tokens "$PROMPT" --decode-from 8 \
  --logits-out "$OUT/single.npy" >/dev/null 2>&1
if cmp -s "$OUT/engine.npy" "$OUT/single.npy"; then
  echo "== the cluster's logits are bit-identical to the single process's"
else
  echo "== the cluster's logits differ bitwise from the single process's (tests bound the difference at float rounding)"
fi
