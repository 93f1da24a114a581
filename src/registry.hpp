// registry.hpp — the process-wide tables that make translation pool-free (pfn -> section,
// descriptor address -> section, data address -> section). Owned by this file; written only by
// pool open/close/grow under registry_lock, read lock-free by <pmpage/mm.hpp>.
//
// Invariant: for an open pool with pfn base b, vmemmap v (4 GiB-aligned), data area d, nr_pages
// pages now and room for capacity pages (more than nr_pages only for a pool that can grow), for
// every pfn granule k it has pages in (page.hpp: [b, b + nr_pages) cut at multiples of 2^28) a
// record rebased to that granule is either in g_sections[(b >> 28) + k mod 2^16] (the primary
// entry, if it was free when the pool registered or grew into the granule) or in the overflow
// table (registry.cpp), never both; the record itself is in g_data_sections[g] for every 1 GiB
// granule g overlapping [d, d + capacity * 4 KiB), and g_desc_sections[g] holds it rebased to g
// (page.hpp; nr_pages 0 in a granule it has no page in yet) for every 4 GiB granule g
// overlapping [v, v + capacity * 64 B); all other entries are zero. So every translation sees
// the pages the pool has now, and no other pool takes its capacity's pfns or address granules.
// No two open pools' capacities' pfn ranges overlap (register_section refuses it), and no pfn
// below MIN_PFN_BASE is ever valid.
//
// It also counts the open pools: at most MAX_OPEN_POOLS hold an open_slot at once.
//
// Quarantine (a stale page* or pfn of a closed pool must not reach a newer pool, issue #18): a
// closed pool's 4 KiB descriptor window stays reserved (PROT_NONE, its memory given back) while it
// is among the last QUARANTINE_POOLS closed, so no later pool's descriptors land at its addresses
// and a stale page* finds an empty table entry (misuse, reported by the existing slow path: the
// inline paths pay nothing). Likewise a new pool (create, create_volatile) takes no pfn range
// overlapping one of the last PFN_BASE_QUARANTINE closed pools', so a stale pfn finds no pool.
// Reopening a persistent pool takes its own pfn base regardless: its pfns are names on the media.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <string>

#include "pmpage/page.hpp"

namespace pmpage::detail {

/// Publishes a pool's section: its pfns are [s.start_pfn, s.start_pfn + s.nr_pages) (the pfn
/// base, a multiple of 2^SECTION_SHIFT). capacity (>= s.nr_pages): the pages it may grow to
/// (grow_section); its pfns [start_pfn, start_pfn + capacity) and the address granules of its
/// descriptors and data for that many pages are reserved to it, though only its s.nr_pages pages
/// translate. `name` (its path) names it in a later pool's refusal. Returns an empty string on
/// success, else why it cannot be registered (its pfns overlap those of an open pool, address
/// slot taken).
std::string register_section(const section& s, std::uint64_t capacity, const std::string& name);
/// The pool of pfn base `base` has nr_pages pages now (more than before, at most its capacity):
/// its new pages translate from when this returns. Safe against lock-free readers (they see the
/// old count or the new one). False (nothing changed) if no such pool is open or nr_pages is out
/// of range.
bool grow_section(pfn_t base, std::uint64_t nr_pages);
/// Withdraws the section of pfn base `base`; after this every lookup of its pfns and pointers is
/// rejected.
void unregister_section(pfn_t base);
/// Empty if no open pool's pfns overlap [base, base + nr_pages); else why not (one sentence that
/// names the open pool and what to do: the message of open's EBUSY). `name`: the path of the pool
/// asking, to tell "open already" from a copy.
std::string pfn_range_conflict(pfn_t base, std::uint64_t nr_pages, const std::string& name = {});

/// A new pool's pfn base: drawn at random (see pfn_base_from_random) until one is pickable: its
/// range overlaps no open pool's, none of the last PFN_BASE_QUARANTINE closed pools' and no base
/// picked and not yet registered (two pools made at once never both get it). 0 if none was found
/// in many draws (cannot happen short of a broken random source). The base stays picked until
/// register_section registers it or release_picked_pfn_base gives it back (a failed create).
pfn_t pick_pfn_base(std::uint64_t nr_pages);
/// The first of `bases` that is pickable as above for a pool of nr_pages (and picks it); 0 if none.
pfn_t first_pickable_pfn_base(std::span<const pfn_t> bases, std::uint64_t nr_pages);
void release_picked_pfn_base(pfn_t base);
/// The pfn base that 64 random bits choose: uniform over the multiples of 2^SECTION_SHIFT in
/// [MIN_PFN_BASE, MAX_PFN_BASE] (2^36 - 47 of them).
pfn_t pfn_base_from_random(std::uint64_t r);
/// Tests: emulate pools created each by its own process. While set, pick_pfn_base takes every
/// base from `draw` and skips the in-process avoidance (open, picked and recently closed pools),
/// exactly as a process that sees none of the other pools would. Empty restores the default.
/// Not thread-safe: set it while no pool is being made.
void set_pfn_base_source_for_testing(std::function<pfn_t()> draw);

/// The pool's descriptor of pfn if the pfn is a page of an open pool, looked up out of line: its
/// primary entry, then the overflow table (page.hpp); else nullptr. Lock-free (the overflow has a
/// sequence lock; it retries while a pool registers or unregisters).
page* pfn_to_page_slow(pfn_t pfn) noexcept;
/// How many pfn granules of open pools are in the overflow table (tests, stats).
unsigned overflow_granules() noexcept;

/// How many closed pools' descriptor windows (at most QUARANTINE_BYTES of address space, the
/// newest always) and pfn ranges stay out of reach of new pools.
inline constexpr unsigned QUARANTINE_POOLS = 64;
inline constexpr std::uint64_t QUARANTINE_BYTES = std::uint64_t{64} << 30;
inline constexpr unsigned PFN_BASE_QUARANTINE = 4096;
/// Takes over a closed pool's descriptor window [addr, addr + len) (unregistered already): its
/// memory is given back, its addresses stay reserved until it leaves the quarantine.
void quarantine_descriptors(void* addr, std::size_t len) noexcept;
/// Gives every quarantined window back to the system (a reservation of address space failed);
/// false if there was none.
bool release_quarantine() noexcept;
/// True if p lies in a quarantined window: a page* of a pool closed since (for misuse reports).
bool quarantined(const void* p) noexcept;

/// fork(): the registry lock, taken by the prepare handler and released in both processes
/// (fork.cpp has the lock order).
void registry_lock_for_fork() noexcept;
void registry_unlock_after_fork() noexcept;

/// One of the MAX_OPEN_POOLS places for an open pool. A pool takes it before anything else (its
/// file descriptor included) and gives it back when destroyed, after everything else.
class open_slot {
 public:
  open_slot() = default;
  open_slot(const open_slot&) = delete;
  open_slot& operator=(const open_slot&) = delete;
  ~open_slot();
  /// False when MAX_OPEN_POOLS slots are already held.
  bool acquire() noexcept;

 private:
  bool held_ = false;
};

}  // namespace pmpage::detail
