#!/usr/bin/env bash
# Installs pmpage from the build tree into a scratch prefix, then configures, builds and runs a
# consumer with find_package(pmpage) and with pkg-config, so the install cannot rot; likewise a
# consumer of the crash-testing toolkit (pmpage_testing / pmpage-testing.pc) and of the SQLite VFS
# (pmpage_sqlite_vfs / pmpage-sqlite.pc), and the stock sqlite3 shell loading the installed extension;
# the installed pmpage(1) tool and its man page, and the tool's sources built against the package.
# The version every installed artefact states (pkg-config, the CMake package, `pmpage --version`,
# the man page) is the CMake project's, given as $3; no .pc file puts a -std flag in Cflags.
set -euo pipefail
src=$1; build=$2; version=$3
prefix=$(mktemp -d); work=$(mktemp -d)
trap 'rm -rf "$prefix" "$work"' EXIT
cmake --install "$build" --prefix "$prefix" >/dev/null
cmake -S "$src/tests/install_consumer" -B "$work/cmake" -DCMAKE_PREFIX_PATH="$prefix" \
  -DPMPAGE_EXPECTED_VERSION="$version" >/dev/null
cmake --build "$work/cmake" >/dev/null
PMEM_IS_PMEM_FORCE=1 "$work/cmake/consumer"
PMEM_IS_PMEM_FORCE=1 "$work/cmake/consumer_static"
PMEM_IS_PMEM_FORCE=1 "$work/cmake/crash_consumer"
PMEM_IS_PMEM_FORCE=1 "$work/cmake/c_consumer" "$work/c.pool" >/dev/null
PMEM_IS_PMEM_FORCE=1 "$work/cmake/c_consumer_static" "$work/c.pool" >/dev/null
export PKG_CONFIG_PATH="$prefix/lib/pkgconfig:$prefix/lib/x86_64-linux-gnu/pkgconfig"
# One version and one rule for the C++ standard across the .pc files: Cflags without -std (C
# programs share pmpage.pc, and a -std after the consumer's own would lower C++23 to C++20), the
# C++ standard the headers need in the cxxflags variable.
for pc in pmpage pmpage-testing pmpage-sqlite; do
  pkg-config --exists "$pc" || { [ "$pc" = pmpage-sqlite ] && continue; echo "$pc.pc not installed"; exit 1; }
  [ "$(pkg-config --modversion "$pc")" = "$version" ] ||
    { echo "$pc.pc says version $(pkg-config --modversion "$pc"), the project is $version"; exit 1; }
  case " $(pkg-config --cflags "$pc") " in *" -std="*) echo "$pc.pc puts a -std flag in Cflags: $(pkg-config --cflags "$pc")"; exit 1 ;; esac
  [ "$(pkg-config --variable=cxxflags "$pc")" = "-std=c++20" ] || { echo "$pc.pc: cxxflags is not -std=c++20"; exit 1; }
done
# A C++23 consumer keeps C++23 with every package's flags (the headers need C++20 or later).
printf '#include <pmpage/pmpage.hpp>\n#include <pmpage/testing.hpp>\nstatic_assert(__cplusplus > 202002L);\nint main() {}\n' |
  g++ -std=c++23 -x c++ - -o "$work/cxx23_consumer" $(pkg-config --cflags --libs pmpage-testing) \
    -Wl,-rpath,"$(pkg-config --variable=libdir pmpage-testing)"
g++ $(pkg-config --variable=cxxflags pmpage) -o "$work/pc_consumer" "$src/tests/install_consumer/consumer.cpp" \
  $(pkg-config --cflags --libs pmpage) -Wl,-rpath,"$(pkg-config --variable=libdir pmpage)"
PMEM_IS_PMEM_FORCE=1 "$work/pc_consumer"
# A C consumer with pkg-config: the C API's example, strict C11.
cc -std=c11 -Wall -Wextra -Werror -pedantic -o "$work/pc_c_consumer" "$src/examples/hello.c" \
  $(pkg-config --cflags --libs pmpage) -Wl,-rpath,"$(pkg-config --variable=libdir pmpage)"
PMEM_IS_PMEM_FORCE=1 "$work/pc_c_consumer" "$work/pc_c.pool" >/dev/null
# Only the documented API is exported: the C names, pmpage::*, nothing else.
lib=$(find "$prefix" -name 'libpmpage.so.2' | head -1)
bad=$(nm -D --defined-only "$lib" | awk '$3 != "" {print $3}' | grep -v -E '^(pmpage_|_ZN6pmpage|_ZNK6pmpage|_ZTIN6pmpage|_ZTSN6pmpage|_ZTVN6pmpage|PMPAGE_2$)' || true)
[ -z "$bad" ] || { echo "libpmpage exports undocumented symbols:"; echo "$bad"; exit 1; }
g++ $(pkg-config --variable=cxxflags pmpage-testing) -o "$work/pc_crash_consumer" \
  "$src/tests/install_consumer/crash_consumer.cpp" $(pkg-config --cflags --libs pmpage-testing) \
  -Wl,-rpath,"$(pkg-config --variable=libdir pmpage-testing)"
PMEM_IS_PMEM_FORCE=1 "$work/pc_crash_consumer"
if [ -f "$build/examples/sqlite/libpmpage_sqlite.so" ]; then
  PMEM_IS_PMEM_FORCE=1 "$work/cmake/sqlite_consumer"
  g++ $(pkg-config --variable=cxxflags pmpage-sqlite) -o "$work/pc_sqlite_consumer" "$src/tests/install_consumer/sqlite_consumer.cpp" \
    $(pkg-config --cflags --libs pmpage-sqlite) -Wl,-rpath,"$(pkg-config --variable=libdir pmpage-sqlite)"
  PMEM_IS_PMEM_FORCE=1 "$work/pc_sqlite_consumer"
  ext=$(find "$prefix" -name libpmpage_sqlite.so | head -1)
  pool="$work/shell.pool"
  out=$(printf '.load %s\n.open file:%s?vfs=pmpage&pool_size=16M\nCREATE TABLE t(a); INSERT INTO t VALUES (7); SELECT a FROM t;\n' \
    "${ext%.so}" "$pool" | PMEM_IS_PMEM_FORCE=1 sqlite3)
  [ "$out" = 7 ] || { echo "installed extension in the sqlite3 shell printed: $out"; exit 1; }
fi
if [ -x "$build/tools/pmpage/pmpage" ]; then
  tool="$prefix/bin/pmpage"
  [ "$("$tool" --version)" = "pmpage $version" ] || { echo "installed pmpage --version: $("$tool" --version), the project is $version"; exit 1; }
  help=$("$tool" --help)
  case $help in *"Exit status"*) ;; *) echo "installed pmpage --help lacks the exit codes: $help"; exit 1 ;; esac
  libs=$(ldd "$tool")
  case $libs in *"$prefix"/*libpmpage.so*) ;; *) echo "installed pmpage does not use the installed libpmpage: $libs"; exit 1 ;; esac
  man1=$(find "$prefix" -path '*/man1/pmpage.1')
  [ -n "$man1" ] && grep -q '^\.SH "EXIT STATUS"' "$man1" || { echo "pmpage.1 not installed"; exit 1; }
  grep -q "^\.TH PMPAGE 1 .* \"pmpage $version\"" "$man1" || { echo "pmpage.1 does not say pmpage $version: $(grep '^\.TH' "$man1")"; exit 1; }
  PMEM_IS_PMEM_FORCE=1 "$tool" create "$work/tool.pool" --size 8M >/dev/null
  PMEM_IS_PMEM_FORCE=1 "$tool" check "$work/tool.pool" >/dev/null
  cmake -S "$src/tools/pmpage" -B "$work/tool" -DCMAKE_PREFIX_PATH="$prefix" >/dev/null
  cmake --build "$work/tool" -j"$(nproc)" >/dev/null
  [ "$("$work/tool/pmpage" --version)" = "pmpage $version" ] ||
    { echo "pmpage built against the package: --version says $("$work/tool/pmpage" --version)"; exit 1; }
  out=$(PMEM_IS_PMEM_FORCE=1 "$work/tool/pmpage" info --json "$work/tool.pool")
  case $out in *'"readable": true'*) ;; *) echo "pmpage built against the package printed: $out"; exit 1 ;; esac
fi
