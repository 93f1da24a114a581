#!/usr/bin/env bash
# bench.sh — the main job: set up a fresh Debian 12 machine (as root), build pmpage in Release and
# run the benchmark suite against pmpage's baselines. Idempotent; fast when nothing changed.
#
#   scripts/bench.sh [--device=PATH] [--scratch=DIR] [extra Google Benchmark flags]
#
# Without --device (or PMPAGE_BENCH_DEVICE) the pools are emulated pmem files in /dev/shm, flushed
# with clwb/clflushopt + sfence (PMEM_IS_PMEM_FORCE=1), and removed afterwards. With
# --device=/dev/daxX.Y the device is formatted (its data is lost).
#
# Output (in results/, or $PMPAGE_RESULTS): bench.json, sqlite.json, malloc_mimalloc.json and
# malloc_jemalloc.json (Google Benchmark), summary.md (the table printed at the end), latency.png,
# dram_vs_size.png, open_vs_size.png.
#
# The --benchmark_* flags given here also go to pmpage_bench_mimalloc and pmpage_bench_jemalloc
# (the malloc baselines of volatile pools, issue #12: one program each, as each replaces malloc).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
build=${PMPAGE_BUILD_DIR:-build-release}
out=${PMPAGE_RESULTS:-results}
jobs=${JOBS:-2}

# ---- packages: install only what is missing -------------------------------------------------------
scripts/setup.sh

# ---- build (incremental) ------------------------------------------------------------------------------
# Configured every time (fast when nothing changed): a build directory made before a new target
# existed would otherwise not know it ("No rule to make target").
if [ ! -f "$build/CMakeCache.txt" ]; then
  cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DPMPAGE_BUILD_TESTS=OFF -DPMPAGE_BUILD_EXAMPLES=OFF >/dev/null
else
  cmake -S . -B "$build" >/dev/null
fi
cmake --build "$build" -j"$jobs" --target pmpage_bench pmpage_sqlite_bench pmpage_bench_mimalloc pmpage_bench_jemalloc

# ---- run ---------------------------------------------------------------------------------------------
# Emulated pools of an interrupted earlier run (their process is gone) would only waste RAM.
for d in /dev/shm/pmpage-bench.*; do
  [ -d "$d" ] || continue
  kill -0 "${d##*.}" 2>/dev/null || rm -rf "$d"
done
load=$(cut -d' ' -f1 /proc/loadavg)
if awk -v l="$load" 'BEGIN { exit !(l > 0.5) }'; then
  echo "bench.sh: note: load average is $load — other work on this machine will show in the timings" >&2
fi
mkdir -p "$out"
rc=0
"$build/bench/pmpage_bench" \
  --benchmark_out="$out/bench.json" --benchmark_out_format=json \
  --benchmark_min_time="${PMPAGE_BENCH_MIN_TIME:-0.2}" \
  --benchmark_repetitions="${PMPAGE_BENCH_REPETITIONS:-5}" \
  --benchmark_display_aggregates_only=true \
  --benchmark_enable_random_interleaving=true \
  "$@" || rc=$?
# The malloc baselines of volatile pools (issue #12), right after pmpage_bench: mimalloc and jemalloc
# each replace malloc for their whole process, so each has its own program.
malloc_flags=()
for a in "$@"; do
  case "$a" in --benchmark_*) malloc_flags+=("$a") ;; esac
done
malloc_json=()
for m in mimalloc jemalloc; do
  rm -f "$out/malloc_$m.json"
  "$build/bench/pmpage_bench_$m" \
    --benchmark_out="$out/malloc_$m.json" --benchmark_out_format=json \
    --benchmark_min_time="${PMPAGE_BENCH_MIN_TIME:-0.2}" \
    --benchmark_repetitions="${PMPAGE_BENCH_REPETITIONS:-5}" \
    --benchmark_display_aggregates_only=true \
    --benchmark_enable_random_interleaving=true \
    ${malloc_flags[@]+"${malloc_flags[@]}"} || rc=$?
  malloc_json+=("$out/malloc_$m.json")
done
# The SQLite workload (issue #9): the pmpage VFS against SQLite's unix VFS and in-memory database.
"$build/bench/pmpage_sqlite_bench" \
  --benchmark_out="$out/sqlite.json" --benchmark_out_format=json \
  --benchmark_repetitions="${PMPAGE_SQLITE_REPETITIONS:-5}" \
  --benchmark_display_aggregates_only=true \
  --benchmark_enable_random_interleaving=true || rc=$?
# A failed benchmark still leaves the others in the JSON: summarise what there is, then report.
python3 scripts/bench_summary.py "$out/bench.json" "$out" "$out/sqlite.json" "${malloc_json[@]}"
gnuplot -e "dir='$out'" scripts/plot.gp
echo "bench.sh: results in $out/ (summary.md, bench.json, malloc_*.json, latency.png, dram_vs_size.png, open_vs_size.png)"
[ "$rc" -eq 0 ] || echo "bench.sh: a benchmark program exited with status $rc (see the errors above)" >&2
exit "$rc"
