// registry.hpp — the process-wide tables that make translation pool-free (pfn -> section,
// descriptor address -> section, data address -> section). Owned by this file; written only by
// pool open/close under registry_lock, read lock-free by <pmpage/mm.hpp>.
//
// Invariant: for an open pool with section id s, vmemmap v (2^38-aligned) and data area d:
//   g_sections[s].nr_pages > 0, g_vmemmap_owner[v >> 38] == s,
//   g_data_owner[g] == s for every 1 GiB granule g overlapping [d, d + nr_pages * 4 KiB).
// Entry 0 of every table means "no pool"; g_sections[0].nr_pages == 0 forever.
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

}  // namespace pmpage::detail
