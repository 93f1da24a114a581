#!/usr/bin/env bash
# abi_check.sh — checks libpmpage.so's ABI against the committed baseline abi/libpmpage.abi with
# libabigail's abidiff (Debian abigail-tools). Builds the shared library alone (RelWithDebInfo,
# its own build directory) and compares every exported symbol and the types reachable from the
# public headers (include/pmpage/).
#
#   scripts/abi_check.sh            check; exit 1 on any ABI difference (a symbol removed, changed
#                                   or added, a public type's layout changed) or an abidiff error
#   scripts/abi_check.sh --update   rewrite abi/libpmpage.abi from the current sources
#
# The baseline must describe the library exactly: a compatible change (symbols added) fails too,
# with its own message, until the baseline is updated in the same commit (and PMPAGE_ABI_MINOR
# bumped), so a later removal of the new symbols is caught. An intentional incompatible change needs the soname bumped
# (PMPAGE_ABI_MAJOR in CMakeLists.txt, the version node in src/libpmpage.map) and the baseline
# regenerated with --update — see docs/api.md "ABI and soname policy".
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh abigail-tools
build=${PMPAGE_ABI_BUILD_DIR:-build-abi}
baseline=abi/libpmpage.abi
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPMPAGE_BUILD_TESTS=OFF -DPMPAGE_BUILD_BENCH=OFF \
  -DPMPAGE_BUILD_EXAMPLES=OFF -DPMPAGE_BUILD_SQLITE=OFF >/dev/null
cmake --build "$build" -j"${JOBS:-2}" --target pmpage >/dev/null
lib=$(readlink -f "$build/libpmpage.so")

if [ "${1:-}" = --update ]; then
  mkdir -p abi
  abidw --headers-dir include/pmpage --drop-private-types --no-corpus-path --no-comp-dir-path --short-locs \
    --out-file "$baseline" "$lib"
  echo "abi_check: wrote $baseline from $(basename "$lib")"
  exit 0
fi

[ -f "$baseline" ] || { echo "abi_check: no baseline $baseline (run scripts/abi_check.sh --update)" >&2; exit 1; }
rc=0
abidiff --headers-dir2 include/pmpage --drop-private-types --fail-no-debug-info "$baseline" "$lib" || rc=$?
# abidiff's status is a bit field: 1 error, 2 usage error, 4 ABI change, 8 incompatible change.
if (( rc & 3 )); then
  echo "abi_check: abidiff failed (status $rc)" >&2
  exit 1
elif (( rc & 8 )); then
  echo "abi_check: INCOMPATIBLE ABI change against $baseline (see above). If intended: bump the soname" >&2
  echo "           (PMPAGE_ABI_MAJOR, src/libpmpage.map) and run scripts/abi_check.sh --update." >&2
  exit 1
elif (( rc & 4 )); then
  # abidiff flags only removed symbols as incompatible by itself; a changed type (a field added to
  # a struct passed by reference, as above) is reported as a plain change: read the report.
  echo "abi_check: the ABI changed against $baseline (see above). Added symbols only: compatible, bump" >&2
  echo "           PMPAGE_ABI_MINOR. A public type's size or layout changed: incompatible, bump the soname" >&2
  echo "           (PMPAGE_ABI_MAJOR, src/libpmpage.map). Either way run scripts/abi_check.sh --update and" >&2
  echo "           commit abi/libpmpage.abi with the change." >&2
  exit 1
fi
echo "abi_check: $(basename "$lib") matches $baseline"
