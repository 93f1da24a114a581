#!/usr/bin/env bash
# Installs the Debian packages pmpage needs, only those missing (fast when nothing is).
# Usage: scripts/setup.sh [extra-package ...]
set -euo pipefail
pkgs=(cmake g++ make pkg-config libpmem-dev libpmem2-dev libpmemobj-dev libgtest-dev libbenchmark-dev gnuplot-nox python3
      libsqlite3-dev sqlite3 libcli11-dev nlohmann-json3-dev abigail-tools
      libnuma-dev libmimalloc-dev libjemalloc-dev doxygen "$@")
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
