// cpu_cache.hpp — per-CPU caches of split regions: which region a CPU carves its small (order
// 0..8) allocations from. The kernel's counterparts are the per-CPU page lists (struct
// per_cpu_pages, mm/page_alloc.c) and, closer in shape, the 2026 RFC that gives each CPU whole
// 2 MiB pageblocks; TCMalloc's per-CPU caches over its hugepage filler are the user-space model.
//
// A cache holds at most one split region, and up to STASH_MAX free blocks of orders 9 and 10.
// Their pages stay free ON THE MEDIA until they are allocated: a cache is placement only, so a
// crash loses nothing and leaks nothing.
//
// Locks. c.mu is the lock of the region the cache holds (split_state::lock_cpu names it while the
// region is held), so an allocation takes exactly one lock, on a line no other CPU writes unless
// it frees into that region (a remote free) or drains the cache. Lock order:
//     cpu_cache::mu  ->  pool_impl::core_->mu (pool lock)  ->  split_state::own_lock
// A thread holds at most one cache lock, except lock_all() (check, for_each_allocated, stats, the
// fork() handlers, and an allocation's last resort when the pool has no other room), which takes
// them all in index order before the pool lock. The pool lock may TRY a cache lock (the
// idle sweep), never wait for one.
#pragma once

#include <sched.h>
#include <sys/sysinfo.h>

#include <atomic>
#include <cstdint>

#include "adaptive_mutex.hpp"
#include "split_region.hpp"

namespace pmpage::detail {

/// Caches per pool: one per configured CPU, at most this many (CPUs beyond share them).
inline constexpr unsigned MAX_CPU_CACHES = 256;

struct alignas(64) cpu_cache {
  /// Free blocks of orders 9..9+STASH_ORDERS-1 kept for this CPU (the kernel's pcp lists hold
  /// THP-order pages too): an order-9 or -10 alloc+free pair then takes no pool lock. FREE on the
  /// media; region kind RK_STASHED.
  static constexpr unsigned STASH_ORDERS = 2;
  static constexpr unsigned STASH_MAX = 2;
  adaptive_mutex mu;
  std::uint32_t region = NIL;  // the split region it carves from; guarded by mu (and the pool lock to change)
  std::uint32_t stash[STASH_ORDERS][STASH_MAX];  // guarded by mu
  unsigned nr_stash[STASH_ORDERS] = {};
  bool holds_anything() const {
    for (unsigned k = 0; k < STASH_ORDERS; ++k)
      if (nr_stash[k]) return true;
    return region != NIL;
  }
  unsigned index = 0;
  /// Coarse time of the last allocation served; written under mu, read by the idle sweep under
  /// the pool lock.
  std::atomic<std::uint64_t> last_use_ms{0};
  /// Small pages freed minus allocated by threads running on this CPU (the kernel's per-CPU
  /// vm_stat diffs): pool free pages = pool_impl::free_pages_ + the sum of both counters of every
  /// cache. free_delta is written only under mu (add_free_delta: a plain load and store, not a
  /// locked read-modify-write, on the fast paths: allocations, and frees into this cache's own
  /// region); remote_delta takes the frees of this CPU's threads into regions this cache does not
  /// hold (an atomic add on this CPU's own line: writing the holder's counter instead would move
  /// its line between CPUs on every remote free). Both are read without the lock.
  std::atomic<std::int64_t> free_delta{0};
  std::atomic<std::int64_t> remote_delta{0};
  void add_free_delta(std::int64_t d) noexcept {  // mu held
    free_delta.store(free_delta.load(std::memory_order_relaxed) + d, std::memory_order_relaxed);
  }
};

/// CLOCK_MONOTONIC_COARSE in milliseconds (vDSO, a few ns): the clock of the idle and hysteresis bounds.
std::uint64_t coarse_now_ms();

/// How many caches a pool gets on this machine.
inline unsigned nr_cpu_caches() {
  const int n = get_nprocs_conf();
  return n < 1 ? 1u : n > int(MAX_CPU_CACHES) ? MAX_CPU_CACHES : unsigned(n);
}

/// The CPU this thread runs on (glibc reads it from the rseq area: about a nanosecond). A thread
/// may migrate right after: that only costs locality, never correctness (the cache is locked).
inline unsigned current_cpu() {
  const int c = sched_getcpu();
  return c < 0 ? 0u : unsigned(c);
}

}  // namespace pmpage::detail
