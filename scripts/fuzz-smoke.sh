#!/usr/bin/env bash
# Builds the safetensors header fuzzer (core/fuzz/, clang + libFuzzer + ASan) in build-fuzzer
# and runs it from the seed corpus for a while (default 60 s). CTest runs it for 10 s.
#   scripts/fuzz-smoke.sh [seconds]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
build_dir=build-fuzzer

cmake -S core/fuzz -B "$build_dir" -G Ninja -DCMAKE_CXX_COMPILER=clang++ \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$build_dir"

corpus="$(mktemp -d)"
trap 'rm -rf "$corpus"' EXIT
cp core/fuzz/corpus/* "$corpus"
"$build_dir/safetensors_fuzz" -max_total_time="$seconds" -max_len=4096 -print_final_stats=1 \
  "$corpus"
