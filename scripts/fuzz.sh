#!/usr/bin/env bash
# Builds the libFuzzer target with clang and runs it over the committed corpus for a bounded
# time (default 60 s; FUZZ_SECONDS=N to change). New crashing inputs land in fuzz/crashes/ and
# fail the run; regression inputs live in fuzz/regressions/ and are replayed first.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh clang libclang-rt-14-dev
build=build-fuzz
CC=clang CXX=clang++ cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPMPAGE_BUILD_FUZZ=ON \
  -DPMPAGE_BUILD_TESTS=OFF -DPMPAGE_BUILD_BENCH=OFF -DPMPAGE_BUILD_EXAMPLES=OFF >/dev/null
cmake --build "$build" -j"$(nproc)" --target pmpage_fuzz_open pmpage_fuzz_corpus
corpus=fuzz/corpus/open
mkdir -p "$corpus" fuzz/regressions fuzz/crashes
[ -n "$(ls -A "$corpus")" ] || "$build/fuzz/pmpage_fuzz_corpus" "$corpus"
export PMEM_IS_PMEM_FORCE=1
# Regression inputs: every one must pass.
mapfile -t regressions < <(find fuzz/regressions -type f ! -name '.*' | sort)
if [ ${#regressions[@]} -gt 0 ]; then
  "$build/fuzz/pmpage_fuzz_open" -runs=0 "${regressions[@]}"
fi
work=$(mktemp -d)
# The target keeps one scratch pool per process (/dev/shm/pmpage-fuzz-<pid>), and libFuzzer exits
# with _Exit: remove those whose process is gone, when this script ends.
cleanup() {
  rm -rf "$work"
  for f in /dev/shm/pmpage-fuzz-*; do
    [ -e "$f" ] || continue
    kill -0 "${f##*-}" 2>/dev/null || rm -f "$f"
  done
}
trap cleanup EXIT
cp "$corpus"/* "$work"/
"$build/fuzz/pmpage_fuzz_open" -max_total_time="${FUZZ_SECONDS:-60}" -max_len=$((64 * 1024)) -timeout=20 \
  -rss_limit_mb=4096 -artifact_prefix=fuzz/crashes/ -print_final_stats=1 "$work" 2>&1 | tail -20
