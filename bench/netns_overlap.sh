#!/usr/bin/env bash
# Overlap across hosts: dsv4-engine with 1 attention rank on h1 and 1 expert rank on h2
# (scripts/netns-cluster.sh: network namespaces, TCP over a bridge, no shared memory), two
# sequences (one per micro-batch), 128-token prompts + 64 decode steps on v4-tiny, with
# engine.progress: calls and thread, alternated `repeats` times. Over TCP a rendezvous
# message moves only while its sender is in MPI, which is what the progress thread is for.
# Reports decode tokens/s and each role's share of step time blocked on the data plane
# (from --stats_out). Writes bench/results/netns-overlap.json with the machine and the
# commit. Needs root.
# Usage: bench/netns_overlap.sh [BUILD_DIR] [REPEATS]
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=$(realpath "${1:-build}")
REPEATS=${2:-3}
ROOT=$(pwd)
out=bench/results/netns-overlap.json
work=$(mktemp -d)
trap 'scripts/netns-cluster.sh down >/dev/null; rm -rf "$work"' EXIT
scripts/netns-cluster.sh up 2 >/dev/null
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
"$BUILD/bin/dsv4" checkpoint generate --preset v4-tiny --seed 1 --out "$work/ckpt" >/dev/null
prompt() { python3 -c "print(','.join(str((i * 37 + $1 * 101 + 11) % 1024) for i in range(192)))"; }
tokens="$(prompt 0);$(prompt 1)"
for progress in calls thread; do
  sed "s/^engine:/engine:\n  progress: $progress/" cluster-configs/local.yaml |
    sed "s#hardware/#$ROOT/cluster-configs/hardware/#" >"$work/$progress.yaml"
done
for r in $(seq "$REPEATS"); do
  for progress in calls thread; do
    scripts/netns-cluster.sh run mpirun --oversubscribe \
      --mca plm_rsh_agent "$ROOT/scripts/netns-rsh" --mca btl tcp,self \
      --mca btl_tcp_if_include 10.77.0.0/24 --mca oob_tcp_if_include 10.77.0.0/24 \
      --host h1,h2 -np 2 "$BUILD/bin/dsv4-engine" --cluster "$work/$progress.yaml" \
      --checkpoint "$work/ckpt" --tokens "$tokens" --decode_from 128 \
      --stats_out "$work/$progress.$r.json" >"$work/$progress.$r.log" 2>&1 ||
      { cat "$work/$progress.$r.log"; exit 1; }
  done
done
python3 - "$work" "$REPEATS" "$out" <<'PY'
import json, sys
sys.path.insert(0, "bench")
from machine import machine_json
work, repeats, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
runs = {}
for progress in ("calls", "thread"):
    results = []
    for r in range(1, repeats + 1):
        steps = json.load(open(f"{work}/{progress}.{r}.json"))["steps"]
        decode = steps[1:]
        def blocked(rank, steps):
            return (sum(s["blocked_seconds"][rank] for s in steps) /
                    sum(s["rank_seconds"][rank] for s in steps))
        results.append({
            "decode_tokens_per_s": sum(s["tokens"] for s in decode) /
                                   sum(s["cpu_seconds"] for s in decode),
            "prefill_tokens_per_s": steps[0]["tokens"] / steps[0]["cpu_seconds"],
            "blocked_fraction": {
                "prefill": {"attention": blocked(0, steps[:1]), "expert": blocked(1, steps[:1])},
                "decode": {"attention": blocked(0, decode), "expert": blocked(1, decode)}},
        })
    runs[progress] = results
    best = max(results, key=lambda x: x["decode_tokens_per_s"])
    print(f"progress {progress}: decode {[round(x['decode_tokens_per_s']) for x in results]} "
          f"tokens/s; best run blocked attention/expert prefill "
          f"{best['blocked_fraction']['prefill']['attention']:.0%}/"
          f"{best['blocked_fraction']['prefill']['expert']:.0%}, decode "
          f"{best['blocked_fraction']['decode']['attention']:.0%}/"
          f"{best['blocked_fraction']['decode']['expert']:.0%}")
result = {
    "benchmark": "netns_overlap",
    "description": "1 attention rank on h1 + 1 expert rank on h2 (network namespaces, TCP over "
                   "a bridge), v4-tiny, 2 sequences of 128 prompt + 64 decode tokens, one per "
                   "micro-batch; engine.progress calls vs thread, alternated; every repeat",
    "runs": runs,
    "machine": machine_json(),
}
json.dump(result, open(out, "w"), indent=2)
print("wrote", out)
PY
