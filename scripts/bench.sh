#!/usr/bin/env bash
# make bench: runs every benchmark harness (build/bin/bench_*); each writes its JSON to
# bench/results/. BENCH=name runs just bench_name.
set -euo pipefail
BUILD_DIR=${1:-build}
mkdir -p bench/results
for b in "$BUILD_DIR"/bin/bench_*; do
  name=$(basename "$b")
  if [ -n "${BENCH:-}" ] && [ "$name" != "bench_$BENCH" ]; then continue; fi
  echo "== $name"
  "$b"
done
