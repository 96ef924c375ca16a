#!/usr/bin/env bash
# Builds the safetensors header fuzzer with clang in build-fuzz and runs it for a short
# while without a corpus. dsv4_core is compiled with coverage instrumentation too, or
# libFuzzer would see no coverage of the parser and fuzz blindly.
#   scripts/fuzz-smoke.sh [seconds]   (default 20)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-20}"
build_dir=build-fuzz

CXX=clang++ CC=clang cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_CXX_FLAGS="-fsanitize=fuzzer-no-link,address" >/dev/null
cmake --build "$build_dir" -j "$(nproc)" --target safetensors_fuzz

corpus="$(mktemp -d)"
trap 'rm -rf "$corpus"' EXIT
# One valid file as a seed (nothing checked in), so mutations start from the real format:
# an 8-byte little-endian header length (< 256 here), the JSON header, 8 data bytes.
header='{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}'
printf "\\$(printf '%03o' "${#header}")\0\0\0\0\0\0\0%s\0\0\0\0\0\0\0\0" "$header" \
  >"$corpus/seed.safetensors"

"$build_dir/bin/safetensors_fuzz" -max_total_time="$seconds" -max_len=4096 \
  -print_final_stats=1 "$corpus"
