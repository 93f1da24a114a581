// registry.hpp — the process-wide tables that make translation pool-free (pfn -> section,
// descriptor address -> section, data address -> section). Owned by this file; written only by
// pool open/close under registry_lock, read lock-free by <pmpage/mm.hpp>.
//
// Invariant: for an open pool with pfn base b, vmemmap v (4 GiB-aligned) and data area d, for
// every pfn granule k it covers (page.hpp: [b, b + nr_pages) cut at multiples of 2^28) a record
// rebased to that granule is either in g_sections[(b >> 28) + k mod 2^16] (the primary entry,
// if it was free when the pool registered) or in the overflow table (registry.cpp), never both;
// the record itself is in g_data_sections[g] for every 1 GiB granule g overlapping
// [d, d + nr_pages * 4 KiB), and g_desc_sections[g] holds it rebased to g (page.hpp) for every
// 4 GiB granule g overlapping [v, v + nr_pages * 64 B); all other entries are zero. No two open
// pools' pfn ranges overlap (register_section refuses it), and no pfn below MIN_PFN_BASE is
// ever valid.
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
/// base, a multiple of 2^SECTION_SHIFT). `name` (its path) names it in a later pool's refusal.
/// Returns an empty string on success, else why it cannot be registered (its pfns overlap those
/// of an open pool, address slot taken).
std::string register_section(const section& s, const std::string& name);
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
