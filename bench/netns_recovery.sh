#!/usr/bin/env bash
# Recovery times on the five-host namespace cluster (tests/netns_faults_test.py): a memory
# node unreachable, the engine leader's link down for 4 s, a host's processes killed.
# Writes bench/results/netns-recovery.json with the machine and the commit. Needs root.
# Usage: bench/netns_recovery.sh [BUILD_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
out=bench/results/netns-recovery.json
raw=$(mktemp)
trap 'scripts/netns-cluster.sh down >/dev/null; rm -f "$raw"' EXIT
scripts/netns-cluster.sh up 5
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_WAIT_POLICY=PASSIVE
DSV4_RECOVERY_JSON=$raw scripts/netns-cluster.sh run /usr/bin/python3 \
  tests/netns_faults_test.py "$BUILD/bin" . "$BUILD/python"
python3 - "$raw" "$out" <<'PY'
import json, sys
sys.path.insert(0, "bench")
from machine import machine_json
raw, out = sys.argv[1:3]
result = {
    "benchmark": "netns_recovery",
    "description": "tests/netns_faults_test.py on scripts/netns-cluster.sh's five hosts "
                   "(network + UTS namespaces on one machine, TCP over a bridge); heartbeats "
                   "every 500 ms; seconds from the fault",
    "recovery": json.load(open(raw)),
    "machine": machine_json(),
}
json.dump(result, open(out, "w"), indent=2)
print("wrote", out)
PY
