// registry.cpp — see registry.hpp.
#include "registry.hpp"

#include <atomic>
#include <mutex>

namespace pmpage::detail {

section g_sections[1u << SECTION_BITS];
section g_desc_sections[VMEMMAP_SLOTS];
section g_data_sections[DATA_GRANULES];

namespace {
std::mutex registry_lock;

void granule_range(const section& s, std::uintptr_t& first, std::uintptr_t& last) {
  const auto d = reinterpret_cast<std::uintptr_t>(s.data);
  first = d >> DATA_GRANULE_SHIFT;
  last = (d + (s.nr_pages << PAGE_SHIFT) - 1) >> DATA_GRANULE_SHIFT;
}
}  // namespace

bool section_id_free(std::uint16_t id) {
  std::lock_guard g(registry_lock);
  return id != 0 && g_sections[id].nr_pages == 0;
}

std::string register_section(std::uint16_t id, const section& s) {
  std::lock_guard g(registry_lock);
  if (id == 0) return "section id 0 is reserved";
  if (g_sections[id].nr_pages != 0)
    return "its pfn range (section " + std::to_string(id) +
           ") is already used by another open pool (is one a copy of the other?)";
  const auto v = reinterpret_cast<std::uintptr_t>(s.vmemmap);
  if ((v >> VMEMMAP_SLOT_SHIFT) >= VMEMMAP_SLOTS || g_desc_sections[v >> VMEMMAP_SLOT_SHIFT].nr_pages != 0)
    return "descriptor address slot unavailable";
  std::uintptr_t first, last;
  granule_range(s, first, last);
  if (last >= DATA_GRANULES) return "data mapping above the 47-bit address space";
  for (auto gr = first; gr <= last; ++gr)
    if (g_data_sections[gr].nr_pages != 0) return "data address granule already owned";
  // A pool's pointers and pfns reach other threads only after open returns (a release of its
  // own), so plain stores suffice; the fence documents the order.
  g_sections[id] = s;
  g_desc_sections[v >> VMEMMAP_SLOT_SHIFT] = s;
  for (auto gr = first; gr <= last; ++gr) g_data_sections[gr] = s;
  std::atomic_thread_fence(std::memory_order_release);
  return {};
}

void unregister_section(std::uint16_t id) {
  std::lock_guard g(registry_lock);
  section& s = g_sections[id];
  if (s.nr_pages == 0) return;
  std::uintptr_t first, last;
  granule_range(s, first, last);
  for (auto gr = first; gr <= last; ++gr) g_data_sections[gr] = section{};
  g_desc_sections[reinterpret_cast<std::uintptr_t>(s.vmemmap) >> VMEMMAP_SLOT_SHIFT] = section{};
  s = section{};
}

}  // namespace pmpage::detail
