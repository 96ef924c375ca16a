#!/usr/bin/env bash
# Installs what dsv4-cluster needs: Debian packages, then the pinned npm packages of
# third_party/js (the JS tokenizer the parity tests compare against). Idempotent: when
# everything is already installed it only checks (a second or so) and exits.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(
  build-essential cmake ninja-build pkg-config clang clang-format libclang-rt-14-dev
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libabsl-dev libopenmpi-dev openmpi-bin
  libspdlog-dev libfmt-dev libyaml-cpp-dev nlohmann-json3-dev
  libgtest-dev libgmock-dev libbenchmark-dev prometheus-cpp-dev libpcre2-dev libhwy-dev
  libicu-dev
  python3 python3-grpcio python3-protobuf python3-numpy redis-server
  iproute2 slurmd slurmctld slurm-client
)

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
# Node.js and npm by command, not by package: a machine may have a nodejs build that
# bundles npm (and conflicts with Debian's npm package).
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  echo "install-deps: done" >&2
fi

# third_party/js/node_modules exactly as package-lock.json pins it (npm ci), unless the
# lock file is unchanged since the last install.
js=third_party/js
if ! cmp -s "$js/package-lock.json" "$js/node_modules/.package-lock.json.installed"; then
  echo "install-deps: npm ci in $js" >&2
  (cd "$js" && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error >/dev/null)
  cp "$js/package-lock.json" "$js/node_modules/.package-lock.json.installed"
fi
