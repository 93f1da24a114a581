// magazine.hpp — per-thread magazines of free order-0 pages in front of the per-CPU caches, for
// volatile pools (issue 19). The models: the kernel's per-CPU page lists (struct per_cpu_pages:
// a free page goes to the freeing CPU's list and the next allocation there takes it back without
// touching the zone), TCMalloc's per-CPU slabs and mimalloc's thread-local free lists. A magazine
// is the Bonwick/Adams name (a fixed-size stack of objects a CPU or thread allocates from).
//
// What a page in a magazine is. From the region's point of view it is ALLOCATED: its page-map
// code is an order-0 head, its bit in free_bits is clear, and the region's free count and the
// per-CPU free_delta counted it out when the magazine took it (like a page on a kernel pcp list,
// which the buddy allocator counts as allocated). From the caller's point of view it is FREE: its
// descriptor is in the free state (count 0, flags 0, order 0, no compound link, private 0), so
// get_page_unless_zero on it fails, put_page/free_pages on it is reported as a double free, and
// every "is this page free" test that reads the count (slots_in_free_page, owner_problem) says
// free. Every reader that walks allocations sees through the magazines (they are listed by
// magazine_pages under the magazine locks): check() checks them as free pages (M1), the walks
// (check_slots, for_each_allocated) leave them out, stats().free_pages counts them as free.
// A region with a page in some magazine never looks wholly free, so it never merges: trim(),
// the last-resort allocation paths and pool close drain the magazines first.
//
// Why volatile pools only. A persistent pool keeps the rule "a page a cache holds is free on the
// media" (a crash loses nothing and leaks nothing): a magazine of pages free on the media would
// still have to write the page-map code of every allocation and free, under the region lock, and
// fence it; that fence and its flushes are ~90 % of a persistent pair (docs/benchmarks.md), so a
// magazine would save little and cost a second rule. A volatile pool has no media: its page map
// is bookkeeping only, so a page can sit in a magazine allocated in the map and free in fact.
//
// Ownership and lifetime. A magazine belongs to one (thread, pool) pair: the thread allocates it
// on its first order-0 call on the pool and frees it when it exits; the pool links it in its list
// (pool_impl::mags_) so that trim(), check(), stats(), the last-resort paths, fork() and close can
// reach it. Both links and magazine::pool are guarded by one process-wide lock (g_mags,
// magazine.cpp). Pool close drains every magazine of the pool and marks it dead (pool = nullptr)
// under that lock; a thread finds its magazine through a thread-local cache keyed by the pool's
// serial (unique per created pool, never reused), so a closed pool's magazine is never looked up
// again, and the thread frees it at its next slow-path lookup or at exit. Thread exit drains its
// live magazines back to their pools under the same lock, so exit and close never race.
//
// Locks. magazine::busy is a spin lock: the owning thread takes it on every order-0 allocation
// and free of a page (one exchange, on a line no other thread writes), other threads only to
// drain or inspect it. Lock order (extends cpu_cache.hpp's):
//     g_mags  ->  magazine::busy  ->  cpu_cache::mu  ->  pool_impl::core_->mu  ->  split_state::own_lock
// The owner holds its magazine's lock while it refills it from its CPU's cache or flushes pages
// back to their regions. Nobody takes g_mags or a magazine lock while holding a cache, pool or
// region lock.
#pragma once

#include <sched.h>

#include <atomic>
#include <cstdint>

#include "pmpage/page.hpp"

namespace pmpage::detail {

class pool_impl;

struct alignas(64) magazine {
  /// Pages it holds at most, and how many a refill takes from the CPU's cache / a flush gives back
  /// (the kernel's pcp high and batch): 32 pages = 128 KiB a thread keeps out of the regions.
  static constexpr unsigned CAPACITY = 32;
  static constexpr unsigned BATCH = 16;

  std::atomic<bool> busy{false};
  /// Pages in pages[0..count): written under busy; read without it only for a figure (idle drain).
  std::atomic<unsigned> count{0};
  page* pages[CAPACITY];  // guarded by busy; the top (count - 1) is the most recently freed
  // --- guarded by g_mags
  pool_impl* pool = nullptr;  // nullptr once the pool closed (the magazine is dead)
  magazine* pool_prev = nullptr;
  magazine* pool_next = nullptr;
  // --- the owning thread's (and g_mags at its exit)
  magazine* thread_next = nullptr;
  std::uint64_t serial = 0;  // the pool's magazine serial (pool_impl::mag_serial_)

  void lock() noexcept {
    for (unsigned spins = 0; busy.exchange(true, std::memory_order_acquire);) {
      // Contended only by a drain or an inspection: the holder's section is short, but it may
      // have been preempted, so yield after a while instead of burning its CPU.
      while (busy.load(std::memory_order_relaxed)) {
        if (++spins < 128) {
#if defined(__x86_64__) || defined(__i386__)
          __builtin_ia32_pause();
#elif defined(__aarch64__)
          asm volatile("yield");
#endif
        } else {
          sched_yield();
        }
      }
    }
  }
  void unlock() noexcept { busy.store(false, std::memory_order_release); }
};

/// fork.cpp's prepare / parent / child handlers: g_mags (taken after g_open_mu, before any pool's
/// locks; each pool's magazine locks are taken by pool_impl::lock_for_fork).
void magazines_lock_for_fork() noexcept;
void magazines_unlock_after_fork() noexcept;

}  // namespace pmpage::detail
