#!/usr/bin/env bash
# Runs the parser fuzzers (core/fuzz/: clang + libFuzzer + ASan) from seed corpora, each for
# a while (default 60 s): the safetensors header parser, the cluster YAML parser
# (core/cluster_config) and the config.json parser (core/model_config). A crash, a leak, an
# input slower than 25 s (a hang) or a parser error without a message fails the script.
#   scripts/fuzz-smoke.sh [seconds] [fuzzer ...]
# Fuzzers: safetensors_fuzz cluster_config_fuzz model_config_fuzz (default: all). The seeds
# are the tree's own inputs: core/fuzz/corpus/* (safetensors), cluster-configs/**/*.yaml,
# models/*/config.json (V4.1's nested text_config included), plus deep nesting.
# The fuzzers are built in build-fuzzer unless FUZZ_BIN_DIR names a directory that holds
# them (CTest passes the main build's build/fuzz).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
shift || true
fuzzers=("$@")
[ ${#fuzzers[@]} -gt 0 ] || fuzzers=(safetensors_fuzz cluster_config_fuzz model_config_fuzz)

bin_dir="${FUZZ_BIN_DIR:-}"
if [ -z "$bin_dir" ]; then
  bin_dir=build-fuzzer
  cmake -S core/fuzz -B "$bin_dir" -G Ninja -DCMAKE_CXX_COMPILER=clang++ \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  cmake --build "$bin_dir" --target "${fuzzers[@]}"
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
for fuzzer in "${fuzzers[@]}"; do
  corpus="$work/$fuzzer"
  mkdir -p "$corpus"
  case "$fuzzer" in
    safetensors_fuzz) cp core/fuzz/corpus/* "$corpus"; max_len=4096 ;;
    cluster_config_fuzz)
      for f in cluster-configs/*.yaml cluster-configs/hardware/*.yaml; do
        cp "$f" "$corpus/$(echo "$f" | tr / _)"
      done
      printf '%*s' 200 '' | tr ' ' '[' >"$corpus/deep-nesting.yaml"
      printf '#\n,' >"$corpus/stray-comma.yaml"  # hung yaml-cpp 0.7's LoadAll (fixed)
      max_len=16384 ;;
    model_config_fuzz)
      for f in models/*/config.json; do cp "$f" "$corpus/$(basename "$(dirname "$f")").json"; done
      printf '%*s' 200 '' | sed 's/ /{"a":/g' >"$corpus/deep-nesting.json"
      max_len=16384 ;;
    *) echo "fuzz-smoke: unknown fuzzer $fuzzer" >&2; exit 2 ;;
  esac
  echo "== $fuzzer: ${seconds} s from $(ls "$corpus" | wc -l) seeds"
  "$bin_dir/$fuzzer" -max_total_time="$seconds" -timeout=25 -max_len="$max_len" -seed=1 \
    -print_final_stats=1 -artifact_prefix="$bin_dir/" "$corpus" 2>"$work/log" || {
    rc=$?
    tail -n 60 "$work/log" >&2
    echo "fuzz-smoke: $fuzzer failed (exit $rc); the input is saved in $bin_dir/" \
      "(crash-*, timeout-*, leak-*, oom-*); rerun it with $bin_dir/$fuzzer FILE" >&2
    exit "$rc"
  }
  grep -E "^(Done|stat::number_of_executed_units)" "$work/log" || true
done
echo "fuzz-smoke: no crash, hang or leak"
