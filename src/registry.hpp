// registry.hpp — the process-wide tables that make translation pool-free (pfn -> section,
// descriptor address -> section, data address -> section). Owned by this file; written only by
// pool open/close under registry_lock, read lock-free by <pmpage/mm.hpp>.
//
// Invariant: for an open pool with section id s, vmemmap v (4 GiB-aligned) and data area d, the
// same section record is in g_sections[s] and in g_data_sections[g] for every 1 GiB granule g
// overlapping [d, d + nr_pages * 4 KiB), and g_desc_sections[g] holds it rebased to g (page.hpp)
// for every 4 GiB granule g overlapping [v, v + nr_pages * 64 B); all other entries are zero. g_sections[0] stays zero
// forever, so pfns below 2^32 are never valid.
//
// It also counts the open pools: at most MAX_OPEN_POOLS hold an open_slot at once.
//
// Quarantine (a stale page* or pfn of a closed pool must not reach a newer pool, issue #18): a
// closed pool's 4 KiB descriptor window stays reserved (PROT_NONE, its memory given back) while it
// is among the last QUARANTINE_POOLS closed, so no later pool's descriptors land at its addresses
// and a stale page* finds an empty table entry (misuse, reported by the existing slow path: the
// inline paths pay nothing). Likewise a new pool (create, create_volatile) takes no section id
// one of the last SECTION_ID_QUARANTINE closed pools had, so a stale pfn finds no pool. Reopening
// a persistent pool takes its own id regardless: its pfns are names on the media.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "pmpage/page.hpp"

namespace pmpage::detail {

/// Publishes a pool's section. Returns an empty string on success, else why it cannot be
/// registered (section id in use by another open pool, address slot taken).
std::string register_section(std::uint16_t id, const section& s);
/// Withdraws a section; after this every lookup of its pfns and pointers is rejected.
void unregister_section(std::uint16_t id);
/// True if no open pool uses section id.
bool section_id_free(std::uint16_t id);
/// The first of `ids` that no open pool uses, none of the last SECTION_ID_QUARANTINE closed pools
/// used and no other pool picked since; 0 if there is none (a new pool's id: pick_section_id).
/// The id returned stays picked, so two pools made at once never both get it, until
/// register_section registers it or release_picked_section_id gives it back (a failed create).
std::uint16_t first_pickable_section_id(std::span<const std::uint16_t> ids);
void release_picked_section_id(std::uint16_t id);

/// How many closed pools' descriptor windows (at most QUARANTINE_BYTES of address space, the
/// newest always) and section ids stay out of reach of new pools.
inline constexpr unsigned QUARANTINE_POOLS = 64;
inline constexpr std::uint64_t QUARANTINE_BYTES = std::uint64_t{64} << 30;
inline constexpr unsigned SECTION_ID_QUARANTINE = 4096;
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
