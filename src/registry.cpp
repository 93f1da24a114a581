// registry.cpp — see registry.hpp.
#include "registry.hpp"

#include <sys/mman.h>

#include <atomic>
#include <mutex>

namespace pmpage::detail {

section g_sections[1u << SECTION_BITS];
section g_desc_sections[DESC_GRANULES];
section g_data_sections[DATA_GRANULES];

namespace {
std::mutex registry_lock;
std::atomic<unsigned> open_pools{0};

// The descriptor-window quarantine: a FIFO of the last closed pools' windows (registry_lock).
struct window {
  std::uintptr_t start;
  std::size_t len;
};
window g_quarantine[QUARANTINE_POOLS];
unsigned g_q_first = 0, g_q_count = 0;
std::uint64_t g_q_bytes = 0;

void release_oldest_window() {
  const window w = g_quarantine[g_q_first];
  ::munmap(reinterpret_cast<void*>(w.start), w.len);
  g_q_bytes -= w.len;
  g_q_first = (g_q_first + 1) % QUARANTINE_POOLS;
  --g_q_count;
}

// The section-id quarantine: closes are numbered from 1; g_closed_at[id] is the number of the
// last close of a pool with that id (0: never). BSS: only the entries of ids in use are touched.
std::uint64_t g_closes = 0;
std::uint64_t g_closed_at[1u << SECTION_BITS];
// Ids picked for a pool being made and not yet registered (first_pickable_section_id).
std::uint64_t g_picked[(1u << SECTION_BITS) / 64];
bool picked(std::uint16_t id) { return g_picked[id / 64] >> (id % 64) & 1; }

// The table entries [first, last] that the byte range [start, start + len) overlaps.
void granule_range(std::uintptr_t start, std::uint64_t len, unsigned shift, std::uintptr_t& first,
                   std::uintptr_t& last) {
  first = start >> shift;
  last = (start + len - 1) >> shift;
}
void data_granules(const section& s, std::uintptr_t& first, std::uintptr_t& last) {
  granule_range(reinterpret_cast<std::uintptr_t>(s.data), s.nr_pages << PAGE_SHIFT, DATA_GRANULE_SHIFT, first, last);
}
void desc_granules(const section& s, std::uintptr_t& first, std::uintptr_t& last) {
  granule_range(reinterpret_cast<std::uintptr_t>(s.vmemmap), s.nr_pages * sizeof(page), DESC_GRANULE_SHIFT, first, last);
}
}  // namespace

bool open_slot::acquire() noexcept {
  if (held_) return true;
  unsigned n = open_pools.load(std::memory_order_relaxed);
  do {
    if (n >= MAX_OPEN_POOLS) return false;
  } while (!open_pools.compare_exchange_weak(n, n + 1, std::memory_order_relaxed));
  held_ = true;
  return true;
}

open_slot::~open_slot() {
  if (held_) open_pools.fetch_sub(1, std::memory_order_relaxed);
}

bool section_id_free(std::uint16_t id) {
  std::lock_guard g(registry_lock);
  return id != 0 && g_sections[id].nr_pages == 0;
}

std::uint16_t first_pickable_section_id(std::span<const std::uint16_t> ids) {
  std::lock_guard g(registry_lock);
  for (const std::uint16_t id : ids)
    if (id != 0 && g_sections[id].nr_pages == 0 && !picked(id) &&
        (g_closed_at[id] == 0 || g_closes - g_closed_at[id] >= SECTION_ID_QUARANTINE)) {
      g_picked[id / 64] |= std::uint64_t{1} << (id % 64);
      return id;
    }
  return 0;
}

void release_picked_section_id(std::uint16_t id) {
  std::lock_guard g(registry_lock);
  g_picked[id / 64] &= ~(std::uint64_t{1} << (id % 64));
}

std::string register_section(std::uint16_t id, const section& s) {
  std::lock_guard g(registry_lock);
  if (id == 0) return "section id 0 is reserved";
  if (g_sections[id].nr_pages != 0)
    return "its pfn range (section " + std::to_string(id) +
           ") is already used by another open pool (is one a copy of the other?)";
  std::uintptr_t vfirst, vlast;
  desc_granules(s, vfirst, vlast);
  if (reinterpret_cast<std::uintptr_t>(s.vmemmap) & ((std::uintptr_t{1} << DESC_GRANULE_SHIFT) - 1))
    return "descriptor window not aligned to its granule";
  if (vlast >= DESC_GRANULES) return "descriptor window above the 47-bit address space";
  for (auto gr = vfirst; gr <= vlast; ++gr)
    if (g_desc_sections[gr].nr_pages != 0) return "descriptor address granule already owned";
  std::uintptr_t first, last;
  data_granules(s, first, last);
  if (last >= DATA_GRANULES) return "data mapping above the 47-bit address space";
  for (auto gr = first; gr <= last; ++gr)
    if (g_data_sections[gr].nr_pages != 0) return "data address granule already owned";
  // A pool's pointers and pfns reach other threads only after open returns (a release of its
  // own), so plain stores suffice; the fence documents the order.
  g_sections[id] = s;
  for (auto gr = vfirst; gr <= vlast; ++gr) {
    // The record rebased to granule gr (page.hpp, section).
    const std::uint64_t base = (gr - vfirst) * DESC_GRANULE_PAGES;
    section r = s;
    r.vmemmap += base;
    r.regions += base >> HPAGE_PMD_ORDER;
    r.data += base << PAGE_SHIFT;
    r.nr_pages -= base;
    r.start_pfn += base;
    r.base_index = base;
    g_desc_sections[gr] = r;
  }
  for (auto gr = first; gr <= last; ++gr) g_data_sections[gr] = s;
  g_picked[id / 64] &= ~(std::uint64_t{1} << (id % 64));  // registered: no longer only picked
  std::atomic_thread_fence(std::memory_order_release);
  return {};
}

void unregister_section(std::uint16_t id) {
  std::lock_guard g(registry_lock);
  section& s = g_sections[id];
  if (s.nr_pages == 0) return;
  std::uintptr_t first, last;
  data_granules(s, first, last);
  for (auto gr = first; gr <= last; ++gr) g_data_sections[gr] = section{};
  desc_granules(s, first, last);
  for (auto gr = first; gr <= last; ++gr) g_desc_sections[gr] = section{};
  s = section{};
  g_closed_at[id] = ++g_closes;
}

void quarantine_descriptors(void* addr, std::size_t len) noexcept {
  if (!addr) return;
  // Replacing the mapping in place gives its memory back and keeps its addresses: nothing else,
  // and no later pool's descriptors, can be mapped there while it is quarantined.
  if (::mmap(addr, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0) == MAP_FAILED) {
    ::munmap(addr, len);  // cannot happen short of a kernel out of memory: no quarantine then
    return;
  }
  std::lock_guard g(registry_lock);
  if (g_q_count == QUARANTINE_POOLS) release_oldest_window();
  g_quarantine[(g_q_first + g_q_count) % QUARANTINE_POOLS] = window{reinterpret_cast<std::uintptr_t>(addr), len};
  ++g_q_count;
  g_q_bytes += len;
  while (g_q_bytes > QUARANTINE_BYTES && g_q_count > 1) release_oldest_window();
}

bool release_quarantine() noexcept {
  std::lock_guard g(registry_lock);
  const bool any = g_q_count != 0;
  while (g_q_count) release_oldest_window();
  return any;
}

bool quarantined(const void* p) noexcept {
  const auto a = reinterpret_cast<std::uintptr_t>(p);
  std::lock_guard g(registry_lock);
  for (unsigned i = 0; i < g_q_count; ++i) {
    const window& w = g_quarantine[(g_q_first + i) % QUARANTINE_POOLS];
    if (a - w.start < w.len) return true;
  }
  return false;
}

void registry_lock_for_fork() noexcept { registry_lock.lock(); }
void registry_unlock_after_fork() noexcept { registry_lock.unlock(); }

}  // namespace pmpage::detail
