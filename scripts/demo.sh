#!/usr/bin/env bash
# make demo: a whole dsv4-cluster on this machine.
#   1. generate the v41-mini checkpoint (cached under checkpoints/) and verify it;
#   2. start two Engram memory nodes (dsv4-engram-store, replication 2);
#   3. start the coordinator, which launches the engine (mpirun: 1 attention + 1 expert
#      rank, cluster-configs/local-engram.yaml) and supervises it;
#   4. stream a generation through the public gRPC API (dsv4 generate), rebalance the
#      experts from the observed load (dsv4 admin) and print the cluster (dsv4 status);
#   5. stop everything.
# The weights are random, so the generated text is too.
set -euo pipefail
BUILD_DIR=${1:-build}
BIN="$BUILD_DIR/bin"
CKPT=checkpoints/v41-mini
CLUSTER=cluster-configs/local-engram.yaml
SERVER=127.0.0.1:50051
LOGS=$(mktemp -d)
PIDS=()

cleanup() {
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$LOGS"
}
trap cleanup EXIT

# Waits up to $3 seconds for $2 to appear in file $1.
wait_for() {
  for _ in $(seq 1 $(($3 * 10))); do
    grep -q "$2" "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "demo: timed out waiting for \"$2\" in $1:" >&2
  cat "$1" >&2
  return 1
}

if [ ! -f "$CKPT/model.safetensors.index.json" ]; then
  echo "== generating the v41-mini checkpoint (seed 0) into $CKPT"
  "$BIN/dsv4" checkpoint generate --preset v41-mini --seed 0 --out "$CKPT"
else
  echo "== using the cached checkpoint in $CKPT"
fi
echo "== dsv4 checkpoint inspect $CKPT"
"$BIN/dsv4" checkpoint inspect "$CKPT" | head -n 12

echo "== starting 2 Engram memory nodes ($CLUSTER, engram.servers)"
ENGRAM_TOKEN=checkpoints/engram.token  # engram.token_file of $CLUSTER: required by the nodes
if [ ! -s "$ENGRAM_TOKEN" ]; then
  (umask 077 && openssl rand -hex 32 >"$ENGRAM_TOKEN")
  echo "   created the Engram bearer token $ENGRAM_TOKEN"
fi
for i in 0 1; do
  "$BIN/dsv4-engram-store" --checkpoint "$CKPT" --cluster "$CLUSTER" --index "$i" \
    >"$LOGS/engram-$i.log" 2>&1 &
  PIDS+=($!)
done
for i in 0 1; do
  wait_for "$LOGS/engram-$i.log" "listening on" 60
  grep "listening on" "$LOGS/engram-$i.log"
done

echo "== starting dsv4-coordinator; it launches the engine with mpirun"
# Secured by default: engines authenticate on their own listener (engine_listen) with an
# engine token that the coordinator makes for this run and hands to the engine it launches
# in its environment (never on the command line); the public port serves no control plane.
"$BIN/dsv4-coordinator" --cluster "$CLUSTER" --checkpoint "$CKPT" >"$LOGS/coordinator.log" 2>&1 &
COORDINATOR=$!
PIDS=("$COORDINATOR" "${PIDS[@]}")  # stopped first: it stops the engine
wait_for "$LOGS/coordinator.log" "listening on" 30
wait_for "$LOGS/coordinator.log" "engine engine-0 connected" 120
grep -E "launching|listening on|engines on|connected" "$LOGS/coordinator.log" | sed 's/^\[[^]]*\] //'

TEXT="DeepSeek-V4 runs on a cluster of"
echo "== dsv4 generate --server $SERVER \"$TEXT\" (48 tokens, streamed)"
"$BIN/dsv4" generate --server "$SERVER" --max-tokens 48 --seed 1 "$TEXT"

echo "== dsv4 admin rebalance engine-0: expert placement from the load just observed"
# The engine reports expert load with its next heartbeat (every second).
for _ in $(seq 1 30); do
  "$BIN/dsv4" admin rebalance engine-0 --token-file "${CLUSTER%.yaml}.admin-token" \
    >"$LOGS/rebalance.txt" 2>&1 && break
  sleep 0.2
done
head -n 3 "$LOGS/rebalance.txt"

echo "== dsv4 status --server $SERVER"
"$BIN/dsv4" status --server "$SERVER"

echo "== stopping the coordinator (it shuts the engine down) and the memory nodes"
kill -TERM "$COORDINATOR"
wait "$COORDINATOR"
grep -E "shutting down|engine-0 disconnected" "$LOGS/coordinator.log" | sed 's/^\[[^]]*\] //' || true
echo "== done"
