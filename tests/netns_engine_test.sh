#!/usr/bin/env bash
# An engine over two hosts (scripts/netns-cluster.sh): 1 attention rank on h1, 1 expert
# rank on h2, launched by mpirun through the namespace rsh agent, talking over TCP on the
# bridge (btl tcp,self: no shared memory). Its logits must equal, bitwise, the same engine
# run on one host with Open MPI's defaults; the ranks must really have run on h1 and h2.
# Usage: netns_engine_test.sh BIN_DIR SOURCE_DIR (the netns_cluster fixture is up).
set -euo pipefail
BIN=$1
ROOT=$2
[ -f "${DSV4_NETNS_STATE:-/run/dsv4-netns}/h2.uts" ] ||
  { echo "skipped: no namespace cluster (netns_cluster_up skipped)"; exit 77; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$BIN/dsv4" checkpoint generate --preset v4-tiny --seed 7 --out "$work/ckpt" >/dev/null
# engine.progress: auto, which runs the progress thread only when the ranks span hosts.
sed "s/^engine:/engine:\n  progress: auto/; s#hardware/#$ROOT/cluster-configs/hardware/#" \
  "$ROOT/cluster-configs/local.yaml" >"$work/auto.yaml"
engine=("$BIN/dsv4-engine" --cluster "$work/auto.yaml" --checkpoint "$work/ckpt"
  --tokens '1,2,3;4,5' --decode_from 2)

mpirun --oversubscribe -np 2 "${engine[@]}" --logits_out "$work/one.npy" >"$work/one.log" 2>&1 ||
  { cat "$work/one.log"; exit 1; }
"$ROOT/scripts/netns-cluster.sh" run mpirun --oversubscribe \
  --mca plm_rsh_agent "$ROOT/scripts/netns-rsh" --mca btl tcp,self \
  --mca btl_tcp_if_include 10.77.0.0/24 --mca oob_tcp_if_include 10.77.0.0/24 \
  --host h1,h2 -np 2 sh -c "hostname > $work/host.\$OMPI_COMM_WORLD_RANK; exec \"\$@\"" engine \
  "${engine[@]}" --logits_out "$work/two.npy" >"$work/two.log" 2>&1 ||
  { cat "$work/two.log"; exit 1; }

[ "$(cat "$work/host.0")" = h1 ] && [ "$(cat "$work/host.1")" = h2 ] ||
  { echo "ranks ran on $(cat "$work"/host.*), not h1 and h2"; exit 1; }
grep -q "progress in MPI calls" "$work/one.log" ||
  { echo "one host: expected progress in MPI calls"; cat "$work/one.log"; exit 1; }
grep -q "progress thread" "$work/two.log" ||
  { echo "two hosts: expected the progress thread"; cat "$work/two.log"; exit 1; }
for i in 0 1; do
  cmp "$work/one.$i.npy" "$work/two.$i.npy" || { echo "sequence $i: logits differ"; exit 1; }
done
echo "netns_engine_test: ranks on h1 and h2 over TCP (progress thread), logits equal the single-host run"
