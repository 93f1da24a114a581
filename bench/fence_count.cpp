// bench/fence_count.cpp — counts libpmem fences made by any library in the process.
//
// libpmemobj (and libpmem's own pmem_persist / pmem_memcpy_persist / ...) reach the fence through
// the exported pmem_drain, which the dynamic linker resolves to this definition first. That gives
// the PMDK baseline of the "fences per operation" measure without modifying PMDK. The cost when
// counting is off is one predictable branch per fence (~1 ns against a ~200 ns fence), paid
// equally by pmpage (whose libpmem backend also calls pmem_drain), PMDK and the persist floor.
#include <dlfcn.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>

#include "fence_count.hpp"

namespace bench {
std::atomic<bool> g_count_fences{false};
std::atomic<std::uint64_t> g_fences{0};
}  // namespace bench

namespace {
using drain_fn = void (*)();
drain_fn resolve() {
  auto f = reinterpret_cast<drain_fn>(dlsym(RTLD_NEXT, "pmem_drain"));
  if (!f) {
    std::fprintf(stderr, "pmpage_bench: cannot find libpmem's pmem_drain: %s\n", dlerror());
    std::abort();
  }
  return f;
}
drain_fn g_real_drain = nullptr;
// Resolved before main, so no thread ever races to fill it.
[[gnu::constructor]] void resolve_at_load() { g_real_drain = resolve(); }
}  // namespace

extern "C" void pmem_drain(void) {
  if (bench::g_count_fences.load(std::memory_order_relaxed))  // single-threaded when on
    bench::g_fences.store(bench::g_fences.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  drain_fn f = g_real_drain;
  if (__builtin_expect(!f, 0)) g_real_drain = f = resolve();
  f();
}
