#!/usr/bin/env bash
# The test command. Installs what is missing, then:
#   1. Debug build: unit tests, reliability tests (simulated power failure, bad input), the C API
#      suite, the install/consume check, the examples and the benchmark smoke run; then the ABI
#      check (scripts/abi_check.sh: libpmpage.so against abi/libpmpage.abi with abidiff);
#   2. the unit and reliability suites again under AddressSanitizer + UndefinedBehaviorSanitizer;
#   3. the concurrency tests under ThreadSanitizer;
#   4. the libFuzzer target over open/recover for FUZZ_SECONDS (default 30).
# PMPAGE_TEST_QUICK=1 runs step 1 only. Long runs: see docs/testing.md.
# Usage: scripts/test.sh [extra ctest args for step 1...]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh clang libclang-rt-14-dev
export PMEM_IS_PMEM_FORCE=1
jobs=$(nproc)

step() { printf '\n=== %s\n' "$*"; }

step "1/4 Debug build: all tests"
cmake -S . -B build-test -DCMAKE_BUILD_TYPE=Debug -DPMPAGE_BUILD_TESTS=ON -DPMPAGE_BUILD_BENCH=ON >/dev/null
cmake --build build-test -j"$jobs"
cmake --build build-test --target pmpage_docs  # API reference (Doxygen): an undocumented public name fails
(cd build-test && ctest --output-on-failure -j"$jobs" --timeout 900 "$@")

step "ABI: libpmpage.so against abi/libpmpage.abi (abidiff)"
scripts/abi_check.sh

[ "${PMPAGE_TEST_QUICK:-0}" = 1 ] && exit 0

step "2/4 AddressSanitizer + UndefinedBehaviorSanitizer"
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DPMPAGE_SANITIZE=address,undefined \
  -DPMPAGE_BUILD_BENCH=OFF -DPMPAGE_BUILD_EXAMPLES=OFF >/dev/null
cmake --build build-asan -j"$jobs" --target pmpage_tests pmpage_reliability_tests pmpage_sqlite_tests pmpage_cli pmpage_tool_tests \
  pmpage_c_tests
(cd build-asan && UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 PMPAGE_CRASH_SEEDS=1 PMPAGE_CRASH_ITERATIONS=100 \
  ctest --output-on-failure -j"$jobs" --timeout 900)

step "3/4 ThreadSanitizer: concurrency tests"
cmake -S . -B build-tsan -DCMAKE_BUILD_TYPE=Debug -DPMPAGE_SANITIZE=thread \
  -DPMPAGE_BUILD_BENCH=OFF -DPMPAGE_BUILD_EXAMPLES=OFF >/dev/null
cmake --build build-tsan -j"$jobs" --target pmpage_tests pmpage_reliability_tests
(cd build-tsan && TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 \
  ctest --output-on-failure -j"$jobs" --timeout 900 -R 'Thread|Concurren|Stress')

step "4/4 libFuzzer: open/recover"
FUZZ_SECONDS=${FUZZ_SECONDS:-30} scripts/fuzz.sh
