// bench/common.hpp — what every benchmark file shares: the run configuration (device, scratch
// directory, smoke mode), the workload pools (pmpage or libpmemobj on the device under test),
// scratch pools for the size sweeps, and small measuring helpers.
//
// Naming: every benchmark is "<measure>/<variant>/<implementation>[...]" so that
// scripts/bench_summary.py can pair pmpage with its baseline from the JSON output.
#pragma once

#include <benchmark/benchmark.h>
#include <libpmemobj.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <stdexcept>
#include <string>

#include <pmpage/pmpage.hpp>

namespace bench {

struct config {
  std::filesystem::path device;   // --device / PMPAGE_BENCH_DEVICE when it is a file or /dev/dax
  std::filesystem::path dir;      // where scratch pool files go (sparse files for the sweeps)
  bool single_device = false;     // device is one file/char device: workload pools reuse it
  bool own_dir = false;           // dir was created by us (removed at exit)
  bool emulated = false;          // no device given: /dev/shm + PMEM_IS_PMEM_FORCE=1
  bool smoke = false;             // tiny sizes, for the ctest
  std::uint64_t workload_bytes = std::uint64_t{2} << 30;  // workload pool size when it is a file
};
config& cfg();

/// Marks a benchmark failed (and the process exit status non-zero).
void fail(benchmark::State& state, const std::string& msg);

/// Reports fences counted over n alloc/free pairs as the counters the summary reads.
inline void report_fences(benchmark::State& state, std::uint64_t fences_alloc, std::uint64_t fences_free,
                          std::uint64_t n) {
  if (!n) return;
  state.counters["fences_alloc"] = double(fences_alloc) / double(n);
  state.counters["fences_free"] = double(fences_free) / double(n);
}
bool any_failed();

/// Runs a benchmark body; an exception (a failed create, a failed allocation) fails the benchmark.
template <class F>
void guarded(benchmark::State& state, F&& f) {
  try {
    f();
  } catch (const std::exception& e) {
    fail(state, e.what());
  }
}

// ---- workload pools on the device under test ---------------------------------------------------
// At most one is open at a time (a /dev/dax device holds one pool). Asking for another kind closes
// the open one and formats the device (or a fresh file) for the new one.

/// The pmpage workload pool with the production (libpmem) backend.
pmpage::pool& pmpage_pool();
/// The pmpage workload pool with a counting backend; `counter` receives the counter.
pmpage::pool& counting_pool(pmpage::counting_persistence** counter);
/// The pmpage workload pool run at byte granularity (eADR: fences only, no flush), whatever the
/// platform: the same file, reformatted.
pmpage::pool& byte_pool();

struct obj_root {
  PMEMoid oid;            // the handle an engine keeps in pmem
  PMEMoid oids[256];      // batch handles
};
struct pmemobj_ctx {
  PMEMobjpool* pop = nullptr;
  obj_root* root = nullptr;
  std::uint64_t uuid_lo = 0;
  unsigned class_4k = 0;  // 4 KiB unit, 4 KiB aligned, no header
  unsigned class_2m = 0;  // 2 MiB unit, 2 MiB aligned, no header
  bool have_4k = false, have_2m = false;
};
/// The libpmemobj workload pool, with its allocation classes registered.
pmemobj_ctx& pmemobj_pool();

void close_workload() noexcept;

// ---- volatile pools (issue #12) ----------------------------------------------------------------
// Anonymous memory, independent of the device under test (they stay open while the workload pool
// changes kind). Created on first use and reused, like the workload pool.

/// The volatile workload pool: cfg().workload_bytes of anonymous memory, no backend, root area of
/// 64 KiB (as the persistent workload pool).
pmpage::pool& volatile_pool();
/// A volatile pool (256 MiB) whose volatile_options::backend counts: it must see no flush and no
/// fence. `counter` receives the counter.
pmpage::pool& volatile_counting_pool(pmpage::counting_persistence** counter);
void close_volatile() noexcept;

/// Removes every file this process created; called at exit.
void cleanup() noexcept;

// ---- scratch pools (sparse files in cfg().dir) -------------------------------------------------
std::filesystem::path scratch_path(const std::string& name);
void remove_scratch(const std::filesystem::path& p) noexcept;

// ---- measuring ---------------------------------------------------------------------------------
/// RssAnon of this process in bytes (/proc/self/status).
std::uint64_t rss_anon_bytes();

inline double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

/// Forces v to be computed, without the memory clobber of benchmark::DoNotOptimize (which would
/// make both sides reload their globals on every call, unlike real code).
template <class T>
inline __attribute__((always_inline)) void keep(T v) {
  asm volatile("" : : "r"(v));
}

/// A small xorshift generator: reproducible, no allocation.
struct rng {
  std::uint64_t s;
  explicit rng(std::uint64_t seed) : s(seed * 0x9E3779B97F4A7C15ull + 1) {}
  std::uint64_t next() {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    return s;
  }
  std::uint64_t below(std::uint64_t n) { return next() % n; }
};

// ---- registration (one function per file) ------------------------------------------------------
void register_c_api();       // bench_c_api.cpp: the C header's inline hot paths against the C++ ones
void register_translation();   // bench_translation.cpp: translation + get/put + atomic floor
void register_alloc();         // bench_alloc.cpp: pmpage alloc/free, fences, bulk, persist floor
void register_pmemobj();       // bench_pmemobj.cpp: libpmemobj baselines
void register_memory();        // bench_memory.cpp: DRAM, open time, sweep, split/merge, fragmentation
void register_threads();       // bench_threads.cpp: thread scaling, remote free, 2-thread fragmentation

}  // namespace bench
