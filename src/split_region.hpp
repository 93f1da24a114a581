// split_region.hpp — a split 2 MiB region: which of its 512 pages are free (DRAM), how its
// persistent page map encodes allocations, and the filler that chooses a region for a small
// allocation.
//
// Owns: split_state (one per materialised split region, volatile) and the filler lists.
// Invariants, for a materialised split region r with state s:
//   S1  popcount(s.free_bits) == s.nr_free, 0 < s.nr_free < 512 while r is published
//       (nr_free == 512 only transiently, inside the free that merges r).
//   S2  page i is free in s  <=>  page map code of i is CODE_FREE (after recovery).
//   S3  s.longest == the largest k with a free naturally aligned 2^k block, or -1 if none.
//   S3 and S4 hold for regions no per-CPU cache holds; a held region's longest is recomputed
//   when its cache lets it go (nothing else looks at it meanwhile).
//   S4  r is on filler list (fullness(s), min(s.longest, 8)) iff s.longest >= 0, r is published
//       and no cache holds it (s.cpu == NO_CPU). Wholly free regions are listed too (the merge
//       hysteresis keeps them split for a while; they are the last choice).
//   S5  s.map equals the persistent page map. Writers update s.map under the region lock and
//       store whole cache lines of it to the media (ordinary stores + flush), never reading it.
//   S6  s.lock_cpu == s.cpu: the region lock is cache s.cpu's mutex while that cache holds r, else
//       s.own_lock; it changes only while the lock it names AND the pool lock are held.
// Storage: the pool's split_state table, one entry per region (pool_impl::states_), constructed
// when a region is materialised and destroyed when it merges or the pool closes; a region
// descriptor's alloc_state_ is 1 while its entry is constructed. No entry holds a pointer.
// Lock: the bitmap, map mirror, nr_free and longest are guarded by the region lock (S6);
// s.cpu, s.list, the filler lists and the empty list by the pool lock plus the region lock.
#pragma once

#include <atomic>
#include <cstdint>

#include "adaptive_mutex.hpp"
#include "layout.hpp"
#include "pmpage/page.hpp"

namespace pmpage::detail {

inline constexpr std::uint32_t NIL = 0xffffffffu;
inline constexpr std::uint16_t NO_CPU = 0xffff;

struct alignas(64) split_state {
  std::uint64_t map[PAGE_MAP_WORDS];  // S5: the region's page map as it is (or is being written) on the media
  std::uint64_t free_bits[8];  // bit i set <=> page i free
  std::uint16_t nr_free = 0;
  std::int8_t longest = -1;    // S3
  std::uint8_t list = 0xff;    // filler list it is on, or 0xff
  bool published = false;      // its SPLIT word is durable (until then only its splitter uses it)
  std::uint16_t cpu = NO_CPU;  // the per-CPU cache holding it (cpu_cache.hpp), or NO_CPU
  // Merge hysteresis: the list of wholly free regions no cache holds, oldest first (pool lock).
  bool on_empty = false;
  std::uint32_t empty_prev = NIL, empty_next = NIL;
  std::uint64_t empty_since_ms = 0;
  /// has_bad: the region has bad pages, bad_bits says which (bit i: page i lies in a bad block;
  /// almost never): such a page never becomes free in free_bits (badblocks.cpp, Q2). Fixed while
  /// the region is materialised.
  bool has_bad = false;
  std::uint64_t bad_bits[8] = {};
  adaptive_mutex own_lock;                  // the region lock while no cache holds it
  /// S6: the cache whose mutex is the region lock, or NO_CPU for own_lock. An index, not a
  /// pointer: a split_state holds no address (it is to live in memory several processes map,
  /// each at its own address: issue #20). pool_impl::lock_region resolves it.
  std::atomic<std::uint16_t> lock_cpu{NO_CPU};
};

/// Finds the lowest naturally aligned free block of 2^order pages; -1 if none.
int find_free_block(const split_state& s, unsigned order);
/// Largest order with a free aligned block, -1 if the region is full.
int longest_free_order(const split_state& s);
void mark_used(split_state& s, unsigned first, unsigned count);
void mark_free(split_state& s, unsigned first, unsigned count);

/// Page map word updates for an extent [first, first + 2^order) of a region: calls f(word_index,
/// clear_mask, set_bits) for each 64-bit word it touches.
template <class F>
void for_each_map_word(unsigned first, unsigned order, bool allocate, F&& f) {
  const unsigned count = 1u << order;
  for (unsigned i = first; i < first + count;) {
    const unsigned w = i / PAGES_PER_MAP_WORD;
    const unsigned end = (w + 1) * PAGES_PER_MAP_WORD < first + count ? (w + 1) * PAGES_PER_MAP_WORD : first + count;
    std::uint64_t mask = 0, bits = 0;
    for (unsigned j = i; j < end; ++j) {
      const unsigned sh = (j % PAGES_PER_MAP_WORD) * 4;
      mask |= std::uint64_t{0xF} << sh;
      if (allocate) bits |= std::uint64_t(j == first ? code_head(order) : CODE_TAIL) << sh;
    }
    f(w, mask, bits);
    i = end;
  }
}

/// Page i's code as an allocation reads it (the owned markers as their plain codes: layout.hpp).
inline std::uint8_t map_code(const std::uint64_t* map, unsigned i) { return plain_code(raw_map_code(map, i)); }

/// Filler: lists of published split regions by (fullness bucket, longest free order). Allocation
/// takes the fullest region that has room, so nearly empty regions drain and merge back.
class filler {
 public:
  filler() = default;
  filler(const filler&) = delete;  // st_ may point at own_
  filler& operator=(const filler&) = delete;
  static constexpr unsigned FULLNESS_BUCKETS = 8;
  static constexpr unsigned ORDERS = HPAGE_PMD_ORDER;  // longest free order 0..8
  __extension__ typedef unsigned __int128 list_mask;
  /// The lists (linked by region index through the region descriptors) and their count: no
  /// address, so it can live in memory several processes map; a filler is a view of it through
  /// the process's own mapping of the region array (as region_buddy).
  struct state {
    std::uint32_t heads[FULLNESS_BUCKETS * ORDERS];
    list_mask nonempty = 0;  // bit l set <=> heads[l] != NIL: find() tests 9 lists at once
    std::uint64_t count = 0;
  };
  /// Makes *st (the view's own state when st is null) empty, viewed through `regions`.
  void init(page* regions, state* st = nullptr) {
    regions_ = regions;
    st_ = st ? st : &own_;
    for (auto& h : st_->heads) h = NIL;
    st_->nonempty = 0;
    st_->count = 0;
  }
  /// Views a state that is built already.
  void attach(page* regions, state* st) {
    regions_ = regions;
    st_ = st;
  }
  enum class change { allocated, freed, unknown };
  /// Brings s.longest up to date after pages were allocated or freed (region lock).
  static void refresh_longest(split_state& s, change c);
  /// The list region s belongs on now (S4), or 0xff for none.
  static unsigned target_list(const split_state& s) {
    const bool wanted = s.published && s.cpu == NO_CPU && s.longest >= 0;
    return wanted ? list_of(s) : 0xff;
  }
  /// Re-files region r after its state changed (or files it the first time).
  void update(std::uint32_t r, split_state& s, change c = change::unknown);
  void remove(std::uint32_t r, split_state& s);
  /// The fullest region with a free aligned block of `order` in fullness bucket >= min_bucket
  /// (bucket b holds regions with about 64 b .. 64 b + 63 free pages), or NIL.
  std::uint32_t find(unsigned order, unsigned min_bucket = 0) const;
  std::uint64_t size() const { return st_->count; }

 private:
  static unsigned list_of(const split_state& s) {
    const unsigned fb = unsigned(s.nr_free) * FULLNESS_BUCKETS / (HPAGE_PMD_NR + 1);
    const unsigned longest = unsigned(s.longest) < ORDERS ? unsigned(s.longest) : ORDERS - 1;  // free: any order
    return fb * ORDERS + longest;
  }
  page* regions_ = nullptr;  // this process's mapping of the region descriptors
  state* st_ = &own_;
  state own_{};
};

}  // namespace pmpage::detail
