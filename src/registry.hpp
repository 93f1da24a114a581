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
#pragma once

#include <cstdint>
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
