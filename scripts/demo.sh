#!/usr/bin/env bash
# make demo: a whole dsv4-cluster on this machine, serving the trained demo model.
#   1. verify the committed v41-kjv checkpoint (a small DeepSeek-V4.1 trained on the King
#      James Bible: models/v41-kjv/README.md);
#   2. start two Engram memory nodes (dsv4-engram-store, replication 2);
#   3. start the coordinator, which launches the engine (mpirun: 1 attention + 2 expert
#      ranks, cluster-configs/local-engram.yaml) and supervises it;
#   4. stream a generation through the public gRPC API (dsv4 generate), rebalance the
#      experts from the observed load (dsv4 admin: expert-rank load imbalance before and
#      after) and print the cluster (dsv4 status);
#   5. read a held-out chapter token by token through the memory nodes with `dsv4 run`
#      (the Engram client's cache hit rate and lookup stall on real text);
#   6. stop everything.
# DEMO_JSON=FILE also writes the figures of steps 4 and 5 as JSON (bench/trained-traffic.sh).
set -euo pipefail
BUILD_DIR=${1:-build}
BIN="$BUILD_DIR/bin"
CKPT=${CKPT:-models/v41-kjv/checkpoint}
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

echo "== dsv4 checkpoint inspect $CKPT"
"$BIN/dsv4" checkpoint inspect "$CKPT" | head -n 12

echo "== starting 2 Engram memory nodes ($CLUSTER, engram.servers)"
ENGRAM_TOKEN=checkpoints/engram.token  # engram.token_file of $CLUSTER: required by the nodes
mkdir -p checkpoints
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

TEXT="And God said unto Moses,"
echo "== dsv4 generate --server $SERVER \"$TEXT\" (96 tokens, streamed)"
"$BIN/dsv4" generate --server "$SERVER" --max-tokens 96 --temperature 0.7 --seed 1 "$TEXT"

echo "== dsv4 admin rebalance engine-0: expert placement from the load just observed"
# The engine reports expert load with its next heartbeat (every second).
for _ in $(seq 1 30); do
  "$BIN/dsv4" admin rebalance engine-0 --token-file "${CLUSTER%.yaml}.admin-token" \
    >"$LOGS/rebalance.txt" 2>&1 && break
  sleep 0.2
done
head -n 1 "$LOGS/rebalance.txt"
grep "mean over layers" "$LOGS/rebalance.txt" | sed 's/^ */   /'
# "... load 1.234 (plain placement 1.567)": after, then before.
read -r AFTER BEFORE < <(sed -n '1s/.*expert-rank load \([0-9.]*\) (plain placement \([0-9.]*\)).*/\1 \2/p' \
  "$LOGS/rebalance.txt")
echo "   expert load imbalance (max/mean over expert ranks): $BEFORE before -> $AFTER after rebalance"

echo "== dsv4 status --server $SERVER"
"$BIN/dsv4" status --server "$SERVER"

# Genesis 1, a chapter held out of training (scripts/train/corpus.py), read token by token
# as decode steps would: one Engram lookup per token, so repeated n-grams meet the cache.
PASSAGE=models/v41-kjv/heldout-sample.txt
echo "== dsv4 run: $PASSAGE token by token through the Engram memory nodes (client cache and stall)"
"$BIN/dsv4" run --checkpoint "$CKPT" --prompt "$(cat "$PASSAGE")" --decode-from 1 \
  --engram-servers 127.0.0.1:50061,127.0.0.1:50062 --engram-replication 2 \
  --engram-token-file "$ENGRAM_TOKEN" >"$LOGS/run.txt" 2>&1
ENGRAM_LINE=$(grep "^engram:" "$LOGS/run.txt")
echo "   $ENGRAM_LINE"
HIT_RATE=$(sed -n 's/.*(\([0-9.]*\)% hit rate).*/\1/p' <<<"$ENGRAM_LINE")
STALL=$(sed -n 's/.*, \([0-9.]*\) s stalled.*/\1/p' <<<"$ENGRAM_LINE")
LOOKUPS=$(sed -n 's/^engram: \([0-9]*\) lookups.*/\1/p' <<<"$ENGRAM_LINE")
echo "   Engram client on real text: ${HIT_RATE}% cache hit rate, ${STALL} s lookup stall over $LOOKUPS lookups"

if [ -n "${DEMO_JSON:-}" ]; then
  printf '{"checkpoint": "%s", "expert_load_imbalance_before": %s, "expert_load_imbalance_after": %s,\n "engram_cache_hit_rate_percent": %s, "engram_stall_seconds": %s, "engram_lookups": %s,\n "engram_report": "%s"}\n' \
    "$CKPT" "$BEFORE" "$AFTER" "$HIT_RATE" "$STALL" "$LOOKUPS" "$ENGRAM_LINE" >"$DEMO_JSON"
fi

echo "== stopping the coordinator (it shuts the engine down) and the memory nodes"
kill -TERM "$COORDINATOR"
wait "$COORDINATOR"
grep -E "shutting down|engine-0 disconnected" "$LOGS/coordinator.log" | sed 's/^\[[^]]*\] //' || true
echo "== done"
