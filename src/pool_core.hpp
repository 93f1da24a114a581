// pool_core.hpp — the allocator state of one pool that every user of the pool must see: the pool
// lock, the per-CPU caches, the list of kept empty regions, the free-region index, the filler, the
// intent lanes' ownership and the counters. No member holds an address (the buddy, filler and
// intent log keep only address-free state here and are viewed through each process's own
// mappings), so it can live in memory several processes map at different addresses: the shared
// segment of a pool opened shared (segment.hpp, docs/design.md "Several processes"). An
// exclusive pool keeps it on the heap (pool_impl::own_core_).
//
// Guarded by `mu` (the pool lock) unless a member says otherwise; lock order: pool_impl.hpp.
#pragma once

#include <sys/mman.h>

#include <cstdint>
#include <memory>
#include <new>

#include "adaptive_mutex.hpp"
#include "cpu_cache.hpp"
#include "intent_log.hpp"
#include "region_buddy.hpp"
#include "split_region.hpp"

namespace pmpage::detail {

struct pool_core {
  adaptive_mutex mu;                                   // the pool lock
  unsigned nr_caches = 1;                              // caches in use (nr_cpu_caches() at open)
  std::uint32_t empty_head = NIL, empty_tail = NIL;    // wholly free split regions, oldest first
  std::uint64_t nr_empty = 0;
  std::uint64_t last_idle_sweep_ms = 0;
  std::uint64_t free_pages = 0;     // V3 with the caches' free_delta (excludes lazy regions)
  std::uint64_t split_regions = 0;  // includes the regions of merges not yet in the buddy
  /// Regions an operation holds between its locks, free pages and all: fresh splits until
  /// publish_fresh, merges until merged_locked. A last-resort allocation waits for them.
  std::uint32_t regions_in_transit = 0;
  std::uint64_t materialised = 0;
  std::uint64_t repaired = 0;
  std::uint64_t orphaned = 0;             // owner records dropped at load: their slot no longer named the page
  std::uint64_t quarantined_regions = 0;  // regions of kind RK_QUARANTINED
  region_buddy::state buddy_state;
  filler::state filler_state;
  intent_log::state intent_state;  // lock-free (intent_log.hpp)
  /// One per configured CPU (nr_caches of them used); each has its own lock (cpu_cache.hpp).
  cpu_cache caches[MAX_CPU_CACHES];
};

/// An exclusive pool's core lives in an anonymous mapping of its own, not on the heap: the same
/// kind of memory a shared segment gives, and no allocator lock on the path of an open or a
/// create. Why it matters: a fork() child of a process whose threads open pools must be able to
/// open one too; glibc's malloc takes its arena locks around fork(), but not every allocator a
/// program may run under does (ASan's does not: a child deadlocked on a size class a parent
/// thread held while it allocated a core).
struct core_unmapper {
  void operator()(pool_core* c) const noexcept {
    c->~pool_core();
    ::munmap(c, bytes());
  }
  static std::size_t bytes() noexcept { return (sizeof(pool_core) + 4095) & ~std::size_t{4095}; }
};
using core_ptr = std::unique_ptr<pool_core, core_unmapper>;
/// A new core in a private anonymous mapping; throws std::bad_alloc when none can be mapped.
inline core_ptr map_core() {
  void* m = ::mmap(nullptr, core_unmapper::bytes(), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (m == MAP_FAILED) throw std::bad_alloc();
  return core_ptr(new (m) pool_core());
}

}  // namespace pmpage::detail
