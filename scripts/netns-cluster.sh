#!/usr/bin/env bash
# A small cluster of hosts on this machine, for multi-host tests: each host is a network
# namespace with its own address on a bridge and its own host name (a UTS namespace).
# mpirun reaches a host through scripts/netns-rsh (its rsh agent), so ranks on different
# hosts see different host names, and Open MPI talks between them over TCP on the bridge,
# never shared memory. Host names resolve through a hosts file that `run` bind-mounts over
# /etc/hosts in a private mount namespace; the machine's own /etc/hosts is never touched.
#
#   scripts/netns-cluster.sh up N      hosts h1..hN at 10.77.0.11.. (the bridge, the
#                                      "outside", is 10.77.0.1), idempotent
#   scripts/netns-cluster.sh run CMD   CMD with the cluster's host names resolvable
#   scripts/netns-cluster.sh down      removes every host, the bridge and the state
#
# Needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN). State lives in $DSV4_NETNS_STATE
# (default /run/dsv4-netns).
set -euo pipefail
STATE=${DSV4_NETNS_STATE:-/run/dsv4-netns}
BRIDGE=dsv4br0
SUBNET=10.77.0

up() {
  local n=$1
  # A machine (or container) that may not create namespaces skips, it does not fail: exit
  # 77, CTest's SKIP_RETURN_CODE for the netns tests.
  if ! ip netns add dsv4-probe 2>/dev/null || ! ip netns del dsv4-probe 2>/dev/null; then
    echo "netns-cluster: cannot create network namespaces here (needs root and CAP_SYS_ADMIN)"
    exit 77
  fi
  mkdir -p "$STATE"
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge
    ip addr add "$SUBNET.1/24" dev "$BRIDGE"
    ip link set "$BRIDGE" up
  fi
  {
    echo "127.0.0.1 localhost"
    echo "$SUBNET.1 outside"
  } >"$STATE/hosts"
  for i in $(seq 1 "$n"); do
    local host="h$i" address="$SUBNET.$((10 + i))"
    if ! ip netns list | grep -qw "$host"; then
      ip link del "veth-$host" 2>/dev/null || true  # left over from a host deleted in use
      ip netns add "$host"
      ip link add "veth-$host" type veth peer name eth0 netns "$host"
      ip link set "veth-$host" master "$BRIDGE" up
      ip -n "$host" addr add "$address/24" dev eth0
      ip -n "$host" link set eth0 up
      ip -n "$host" link set lo up
      ip -n "$host" route add default via "$SUBNET.1"
      touch "$STATE/$host.uts"
      unshare --uts="$STATE/$host.uts" hostname "$host"
    fi
    echo "$address $host" >>"$STATE/hosts"
  done
  echo "netns-cluster: $n hosts up ($(ip netns list | grep -c '^h[0-9]') namespaces)"
}

down() {
  for host in $(ip netns list | awk '/^h[0-9]+/ {print $1}'); do
    ip netns pids "$host" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
    ip netns del "$host"
    umount "$STATE/$host.uts" 2>/dev/null || true
  done
  # A namespace still in use outlives `ip netns del`, and its link with it.
  for veth in $(ip -br link | awk '/^veth-h[0-9]+@/ {sub(/@.*/, "", $1); print $1}'); do
    ip link del "$veth" 2>/dev/null || true
  done
  ip link del "$BRIDGE" 2>/dev/null || true
  rm -rf "$STATE"
  echo "netns-cluster: down"
}

run() {
  [ -f "$STATE/hosts" ] || { echo "netns-cluster: not up (run: $0 up N)" >&2; exit 2; }
  # The hosts have no route to the machine's DNS server, and gRPC's c-ares resolver waits
  # on it until the deadline instead of reading the hosts file: resolve with getaddrinfo.
  export GRPC_DNS_RESOLVER=native
  exec unshare --mount --propagation private -- sh -c \
    'mount --bind "$0" /etc/hosts && exec "$@"' "$STATE/hosts" "$@"
}

case "${1:-}" in
  up) up "${2:?usage: $0 up N}" ;;
  down) down ;;
  run) shift; run "$@" ;;
  *) echo "usage: $0 up N | run CMD... | down" >&2; exit 2 ;;
esac
