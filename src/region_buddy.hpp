// region_buddy.hpp — the free-region index: a binary buddy allocator over whole 2 MiB regions
// for orders 9..18 (1..512 regions), naturally aligned, smallest fitting block first (best fit).
//
// Owns: the free lists and the kind_/order_ bookkeeping of free region descriptors.
// Invariants (checked by pool_impl::check):
//   B1  a free block of order n starts at a region index that is a multiple of 2^(n-9), lies
//       wholly inside the pool, and its head descriptor has kind_ == RK_FREE_BLOCK, order_ == n;
//       its other regions have kind_ == RK_FREE_INNER.
//   B2  two free buddies of the same order never both exist (they are merged).
//   B3  free_regions() == sum over free blocks of 2^(n-9).
// Lock: every function runs under the pool's allocator lock. The persistent region table is not
// touched here: callers make a region durably free before freeing it here, and make it durably
// allocated after taking it from here.
#pragma once

#include <cstdint>

#include "pmpage/page.hpp"

namespace pmpage::detail {

/// page::kind_ values of region descriptors.
enum region_kind : std::uint8_t {
  RK_FREE_INNER = 0,  // free, inside a larger free block (or in transit)
  RK_FREE_BLOCK = 1,  // head of a free buddy block of order_
  RK_HEAD = 2,        // head of an allocated compound page of order_ >= 9
  RK_TAIL = 3,        // region of a multi-region compound page, not its head (head_index_)
  RK_SPLIT = 4,       // tracked 4 KiB at a time (alloc_state_ once materialised)
  RK_STASHED = 5,     // head of a free block of order_ (9..10) a per-CPU cache holds (cpu_cache.hpp)
  RK_QUARANTINED = 6, // free on the media but holds a bad page: held out whole (badblocks.cpp, Q1)
};

/// A region descriptor's kind. Atomic (relaxed): a large page's descriptors change kind outside
/// the pool lock (per-CPU stashes, frees) while the buddy, under it, looks at a neighbour's kind.
/// No such change ever makes or unmakes RK_FREE_BLOCK, the only kind the buddy acts on.
inline std::uint8_t load_kind(const page& d) noexcept {
  return std::atomic_ref<const std::uint8_t>(d.kind_).load(std::memory_order_relaxed);
}
inline void store_kind(page& d, std::uint8_t k) noexcept {
  std::atomic_ref<std::uint8_t>(d.kind_).store(k, std::memory_order_relaxed);
}

class region_buddy {
 public:
  region_buddy() = default;
  region_buddy(const region_buddy&) = delete;  // st_ may point at own_
  region_buddy& operator=(const region_buddy&) = delete;
  /// The buddy's lists and count. No address (the lists are linked by region index through the
  /// region descriptors), so it can live in memory several processes map, each at its own
  /// address: a region_buddy is a view, this state plus the process's own mapping of the region
  /// array.
  struct state {
    std::uint64_t nr_regions = 0;
    std::uint32_t heads[MAX_PAGE_ORDER - HPAGE_PMD_ORDER + 1];
    std::uint64_t free_regions = 0;
  };
  /// Makes *st (the view's own state when st is null) an empty buddy over nr_regions regions,
  /// viewed through `regions`.
  void init(page* regions, std::uint64_t nr_regions, state* st = nullptr);
  /// Views a state that is built already (another process's view of it, or a new mapping).
  void attach(page* regions, state* st) {
    regions_ = regions;
    st_ = st;
  }
  /// Takes a free naturally aligned block of 2^(order-9) regions; returns its first region or
  /// UINT32_MAX. The regions come back with kind_ RK_FREE_INNER: the caller sets them up.
  std::uint32_t alloc(unsigned order);
  /// Returns the block [first, first + 2^(order-9)) and merges it with free buddies.
  void free(std::uint32_t first, unsigned order);
  /// Open: adds the free run [first, first + count), which no free region borders, as maximal
  /// naturally aligned blocks (no merging needed: O(blocks), not O(regions x orders)).
  void add_free_run(std::uint32_t first, std::uint64_t count);
  /// pool.grow: the pool now has nr_regions regions (more than before); the caller frees the new
  /// ones (free(), which merges them with free buddies below the old end).
  void grow_to(std::uint64_t nr_regions) { st_->nr_regions = nr_regions; }
  std::uint64_t free_regions() const { return st_->free_regions; }
  /// Lists for check(): head of the free list of `order`, and the next link.
  std::uint32_t list_head(unsigned order) const { return st_->heads[order - HPAGE_PMD_ORDER]; }

 private:
  void push(std::uint32_t r, unsigned order);
  void unlink(std::uint32_t r, unsigned order);
  page* regions_ = nullptr;  // this process's mapping of the region descriptors
  state* st_ = &own_;
  state own_{};
};

}  // namespace pmpage::detail
