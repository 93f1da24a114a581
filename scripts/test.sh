#!/usr/bin/env bash
# The test command: installs what is missing, builds (Debug, with assertions) and runs the whole
# test suite, including the install/consume check and the benchmark smoke run.
# Usage: scripts/test.sh [ctest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
build=${PMPAGE_TEST_BUILD_DIR:-build-test}
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Debug -DPMPAGE_BUILD_TESTS=ON -DPMPAGE_BUILD_BENCH=ON >/dev/null
cmake --build "$build" -j"$(nproc)"
cd "$build"
PMEM_IS_PMEM_FORCE=1 ctest --output-on-failure -j"$(nproc)" --timeout 600 "$@"
