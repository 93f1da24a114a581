/// \file
/// pmpage/page.hpp — the page descriptor (`struct page`) and the process-wide section tables.
///
/// Layer: above types.hpp. Everything here is volatile (DRAM) state, rebuilt when a pool opens.
///
/// Glossary
/// ```
///   region       2 MiB of a pool's data area (HPAGE_PMD_NR pages). Region r of a pool covers pool
///                page indexes [r * 512, r * 512 + 512).
///   region desc  one `page` per region, in a dense array (section::regions). It is the head
///                descriptor of every compound page of order >= 9, and holds the PG_split bit.
///   4 KiB desc   one `page` per pfn in section::vmemmap, a virtual array reserved for the whole
///                pool but backed by memory only for split regions (32 KiB per split region).
///   user pointer the `page*` the API hands out is always `vmemmap + index`, split or not, so
///                page_to_pfn(pfn_to_page(pfn)) == pfn and the pointer never changes while the pool
///                is open. The memory behind it is only read when its region is split (PG_split);
///                otherwise the state lives in the region descriptor ("state holder").
/// ```
///
/// Invariants (I1..I5; checked by detail::pool_impl::check_invariants)
/// ```
///   I1  region.flags & PG_split  <=>  the region's 512 4 KiB descriptors are materialised.
///   I2  unsplit region, allocated: region desc of the compound head region holds refcount/flags;
///       other regions of a multi-region compound carry PG_region_tail and head_index.
///   I3  split region: a 4 KiB desc is a head (PG_head, order >= 1), a tail (compound_head & 1),
///       or an order-0 page; tails of orders 1..8 never leave their region.
///   I4  refcount > 0  <=>  the compound page is allocated (and the persistent page map says so).
///   I5  page_to_pfn(pfn_to_page(p)) == p for every valid pfn p.
/// ```
///
/// Do not touch the fields directly: use the functions of <pmpage/mm.hpp>, which resolve the state
/// holder first (the kernel's folio rule: operations on a tail act on the head).
#pragma once

#include <atomic>
#include <cstdint>

#include "pmpage/types.hpp"

namespace pmpage {

/// Page flag bits (kept in page::flags_). Bits below 16 are the kernel-visible ones; bits 16+ are
/// owned by the allocator and only meaningful in region descriptors.
enum page_flag : std::uint32_t {
  PG_locked = 1u << 0,        ///< the page lock (lock_page, trylock_page, unlock_page; PageLocked)
  PG_waiters = 1u << 1,       ///< someone sleeps in lock_page(); unlock must wake them
  PG_dirty = 1u << 2,         ///< the engine's dirty bit (PageDirty, SetPageDirty, ...); volatile
  PG_uptodate = 1u << 3,      ///< the engine's up-to-date bit (PageUptodate, ...); volatile
  PG_head = 1u << 4,          ///< head of a compound page (order >= 1)
  PG_hwpoison = 1u << 5,      ///< the allocation has a page in a bad block (PageHWPoison;
                              ///< pool::hwpoison_pages lists which): set by the allocator only
  PG_split = 1u << 16,        ///< region desc: 4 KiB descriptors materialised (I1)
  PG_region_tail = 1u << 17,  ///< region desc: inside a multi-region compound, not its head
  PG_region_lazy = 1u << 18,  ///< region desc: split on the device, descriptors not built yet
  PG_slot_owned = 1u << 19,   ///< compound head: published by alloc_pages_to; only free_pages_from
                              ///< on its slot may free it (the owner is recorded on the media)
  PG_owner_busy = 1u << 20,   ///< compound head: a move_pages_owner is changing its owner
  PG_publishing = 1u << 21,   ///< compound head: an alloc_pages_to has published it in its slot and
                              ///< its intent is not retired yet; every other slot call waits (pool.cpp)
  PG_publish_waiters = 1u << 22,  ///< someone sleeps until PG_publishing clears (futex on flags_)
};

/// Flags a region descriptor carries that send lookups off the unsplit fast path.
inline constexpr std::uint32_t PG_region_special = PG_split | PG_region_tail | PG_region_lazy;
/// Flags that belong to the allocator; user-visible flag operations never change them.
inline constexpr std::uint32_t PG_allocator_mask =
    PG_head | PG_hwpoison | PG_region_special | PG_slot_owned | PG_owner_busy | PG_publishing | PG_publish_waiters;

/// The page descriptor, the kernel's struct page: 64 bytes of DRAM per page (per region for an
/// unsplit 2 MiB region), rebuilt at open. The API hands out `page*` and takes it back; its fields
/// are the allocator's and are reached through the functions of mm.hpp (which resolve the state
/// holder first: the glossary above), never directly. Layout pinned by static_assert (and, for
/// the C header's inline functions, by src/c_api.cpp).
struct page {
  // --- shared by region descriptors and 4 KiB descriptors -------------------------------------
  std::atomic<std::uint32_t> flags_;    ///< page_flag bits; use the flag functions of mm.hpp
  std::atomic<std::int32_t> refcount_;  ///< DO NOT USE DIRECTLY: get_page/put_page/page_count
  std::uint8_t order_;                  ///< compound order of a head (0 for order-0 pages)
  std::uint8_t kind_;                   ///< allocator bookkeeping (detail::region_kind / page_kind)
  std::uint16_t alloc_aux_;             ///< allocator bookkeeping
  std::uint32_t head_index_;            ///< region desc: head region of a multi-region compound
  std::uintptr_t compound_head_;        ///< 4 KiB desc: on tails, bytes back to the head | 1, else 0
  std::atomic<std::uintptr_t> private_;  ///< page_private / set_page_private
  std::uint64_t alloc_state_;           ///< region desc: 1 while its split region state exists, else 0
  std::uint32_t list_next_;             ///< region desc: allocator free-list links (region index)
  std::uint32_t list_prev_;             ///< region desc: the other free-list link
  std::uint64_t reserved_[2];           ///< zero; keeps the descriptor one cache line
};

static_assert(sizeof(page) == 64, "struct page must stay one cache line");
static_assert(alignof(page) <= 64);

namespace detail {

// The allocator writes these fields while lock-free readers may look (a speculative
// get_page_unless_zero on a page being allocated): every access that can race goes through
// these relaxed atomic accessors, which compile to plain moves on x86.
inline std::uintptr_t load_compound_head(page* p) noexcept {
  return std::atomic_ref<std::uintptr_t>(p->compound_head_).load(std::memory_order_relaxed);
}
inline void store_compound_head(page* p, std::uintptr_t v) noexcept {
  std::atomic_ref<std::uintptr_t>(p->compound_head_).store(v, std::memory_order_relaxed);
}
/// A tail's compound_head_ value: the distance back to its head in bytes, with bit 0 set (the
/// kernel's "tail" bit). Relative, not the head's address: a descriptor means the same wherever
/// it is mapped, so several processes can map one pool's descriptors each at its own address
/// (issue #20); decoding costs what the absolute pointer did (one subtraction from p).
inline std::uintptr_t tail_link(const page* tail, const page* head) noexcept {
  return std::uintptr_t(reinterpret_cast<const char*>(tail) - reinterpret_cast<const char*>(head)) | 1;
}
/// The head a tail's link h (bit 0 set) names; p itself when h is 0 (a head or order-0 page).
inline page* linked_head(page* p, std::uintptr_t h) noexcept {
  return (h & 1) ? reinterpret_cast<page*>(reinterpret_cast<char*>(p) - (h - 1)) : p;
}
inline unsigned load_order(page* p) noexcept {
  return std::atomic_ref<std::uint8_t>(p->order_).load(std::memory_order_relaxed);
}
inline void store_order(page* p, unsigned order) noexcept {
  std::atomic_ref<std::uint8_t>(p->order_).store(std::uint8_t(order), std::memory_order_relaxed);
}
inline std::uint32_t load_head_index(page* p) noexcept {
  return std::atomic_ref<std::uint32_t>(p->head_index_).load(std::memory_order_relaxed);
}
inline void store_head_index(page* p, std::uint32_t v) noexcept {
  std::atomic_ref<std::uint32_t>(p->head_index_).store(v, std::memory_order_relaxed);
}

/// What translation needs to know about one open pool. The registry keeps copies of it in three
/// tables, so that every translation is one table load plus arithmetic:
///   g_sections[(pfn >> 28) % 65536]       pfn -> pool (pfn_to_page, pfn_valid), hashed: see below
///   g_desc_sections[descriptor >> 32]     descriptor -> pool (page_to_pfn, page_address, state)
///   g_data_sections[address >> 30]        data address -> pool (virt_to_page)
/// Written only by pool open/close/grow under the registry lock (a grow only raises nr_pages:
/// section_pages); read lock-free. nr_pages == 0 means "no page here": every lookup through such
/// an entry is rejected (the address granules of a growable pool's capacity past its pages are
/// held that way, owner set, until it grows into them).
///
/// g_desc_sections holds the record *rebased* to each granule: in the entry of a pool's k-th
/// 4 GiB granule, base_index = k * DESC_GRANULE_PAGES, vmemmap/regions/data/start_pfn are
/// advanced by that many pages and nr_pages is reduced by it. "Page i" below then means page
/// base_index + i of the pool, and i is the descriptor's offset in its granule / 64: computed
/// from the address alone, as cheap as a fixed-size window. Only an absolute region index
/// (head_index_, the lazy-region slow path) needs base_index added back.
struct section {
  page* vmemmap;            // 4 KiB descriptors; the one for page i is vmemmap[i]
  page* regions;            // region descriptors; region r is regions[r]
  char* data;               // page i is data + i * PAGE_SIZE
  std::uint64_t nr_pages;   // pages from page 0 to the end of the pool's pages now (section_pages)
  std::uint64_t start_pfn;  // pfn of page 0 (the pool's pfn base + base_index)
  void* owner;              // detail::pool_impl*
  std::uint64_t base_index; // pool page index of page 0: 0 except in rebased records
  std::uint64_t reserved_;
};
static_assert(sizeof(section) == 64);

/// An entry's nr_pages, as the lock-free readers load it: pool.grow raises it while the pool is
/// open (registry.cpp grow_section; every other field of an entry with pages stays put), so a
/// reader sees the old count or the new one. A plain move on x86 and arm64.
inline std::uint64_t section_pages(const section& s) noexcept {
  return std::atomic_ref<std::uint64_t>(const_cast<std::uint64_t&>(s.nr_pages)).load(std::memory_order_relaxed);
}

// A pool's pfns are [pfn base, pfn base + nr_pages). The pfn base is its identity, drawn at
// random at create (a multiple of 2^SECTION_SHIFT in [2^32, 2^64 - 2^33]: about 2^36 choices, so
// pools created independently practically never overlap; docs/api.md, Limits) and stored in the
// superblock; pools of format 2 have section_id << 32. The pfn space is cut into "pfn granules"
// of 2^SECTION_SHIFT pages (1 TiB); a pool covers the ceil(nr_pages / 2^28) granules from its
// base, at most 16. g_sections is a hash table of granules: entry (granule % 2^SECTION_BITS)
// holds the record of the open pool granule that hashes there, rebased to it like
// g_desc_sections (start_pfn = the granule's first pfn of the pool, vmemmap, regions, data and
// base_index advanced to match), so pfn_to_page stays one load, one
// subtraction and one compare: a pfn that is not in the entry's range fails that compare whatever
// its high bits. When two open pools' granules hash to one entry the later one is kept in an
// overflow table, read out of line by the miss path (report_bad_pfn, pfn_valid_slow): correct,
// a few ns slower; with 1,000 single-granule pools open, about 8 of them are there.
inline constexpr unsigned SECTION_SHIFT = 28;  // pfn bits below the pfn granule number
inline constexpr unsigned SECTION_BITS = 16;   // entries of g_sections: 2^16 (4 MiB of BSS)
inline constexpr std::uint64_t SECTION_PAGES_MASK = (std::uint64_t{1} << SECTION_SHIFT) - 1;
// No pool's pfns are below this (a base is at least 2^32), so pfn 0 and any small number are
// never valid, and a pfn is never below a record's nr_pages (at most 2^32): an entry being
// rewritten can never make a pfn of another pool look valid (registry.cpp).
inline constexpr std::uint64_t MIN_PFN_BASE = std::uint64_t{1} << 32;
// The largest base leaves room for a 16 TiB pool and its end_pfn (at most 2^64 - 2^32).
inline constexpr std::uint64_t MAX_PFN_BASE = std::uint64_t{0} - (std::uint64_t{1} << 33);
static_assert(MIN_PFN_BASE % (std::uint64_t{1} << SECTION_SHIFT) == 0 && MAX_PFN_BASE % (std::uint64_t{1} << SECTION_SHIFT) == 0);
static_assert(MAX_POOL_PAGES <= MIN_PFN_BASE);
// A pool's vmemmap is sized to the pool (64 B x nr_pages, rounded up to 4 KiB) and starts on a
// 4 GiB boundary; it owns the ceil(bytes / 4 GiB) granules it overlaps, each with its own
// rebased record (see section), so any address in them finds its pool and index with one load.
// 4 GiB keeps the table at 2 MiB of BSS and leaves 32768 granules, eight times MAX_OPEN_POOLS;
// a 16 TiB pool (the largest) spans 64 of them.
inline constexpr unsigned DESC_GRANULE_SHIFT = 32;
inline constexpr unsigned DESC_GRANULES = 1u << (47 - DESC_GRANULE_SHIFT);
inline constexpr std::uint64_t DESC_GRANULE_PAGES = std::uint64_t{1} << (DESC_GRANULE_SHIFT - 6);
// Address bits that name the granule. The index keeps every other bit, so an address at or
// above 2^47 gets an index >= 2^41 and fails the nr_pages check instead of aliasing a pool.
inline constexpr std::uint64_t DESC_GRANULE_NUMBER_MASK = std::uint64_t{DESC_GRANULES - 1} << DESC_GRANULE_SHIFT;
static_assert(DESC_GRANULES >= 8 * MAX_OPEN_POOLS, "a small pool claims a whole granule");
// A compound page (at most 2^MAX_PAGE_ORDER pages, naturally aligned) never straddles two
// granules, so a head and its tails share one rebased record.
static_assert(MAX_PAGE_ORDER <= DESC_GRANULE_SHIFT - 6);
// Data areas start 1 GiB aligned, so a 1 GiB granule of address space belongs to one pool.
inline constexpr unsigned DATA_GRANULE_SHIFT = 30;
inline constexpr unsigned DATA_GRANULES = 1u << (47 - DATA_GRANULE_SHIFT);

// Zero-initialised (BSS): pages of these tables that no pool uses are never touched.
// Their symbols have C names (the asm labels) so that the inline functions of the C header
// <pmpage/pmpage.h> read the same arrays as these, with no indirection on either side; the C
// header describes the same layout (pmpage_internal_section), pinned by src/c_api.cpp.
extern PMPAGE_API section g_sections[1u << SECTION_BITS] __asm__("pmpage_internal_sections");
extern PMPAGE_API section g_desc_sections[DESC_GRANULES] __asm__("pmpage_internal_desc_sections");
extern PMPAGE_API section g_data_sections[DATA_GRANULES] __asm__("pmpage_internal_data_sections");

}  // namespace detail
}  // namespace pmpage
