#!/usr/bin/env bash
# Installs what training the demo model needs (scripts/train/run.sh), on top of
# scripts/install-deps.sh: PyTorch, NumPy and Matplotlib from Debian, and the King James
# Bible (bible-kjv-text, public domain, read with bible-kjv's `bible`). Not needed by
# `make test` or `make demo` (the trained checkpoint is committed; the reference test skips
# without torch). Idempotent.
set -euo pipefail

PACKAGES=(python3-torch python3-numpy python3-matplotlib bible-kjv bible-kjv-text)

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-train-deps: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  echo "install-train-deps: done" >&2
fi
