// registry.cpp — see registry.hpp.
#include "registry.hpp"

#include <sys/mman.h>

#include <atomic>
#include <cstdio>
#include <map>
#include <mutex>
#include <random>
#include <vector>

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

// The pfn ranges of the open pools by base (registry_lock): overlap tests and the names in a
// refusal. Translation never reads it.
struct open_range {
  pfn_t end;  // of the capacity: no other pool takes a pfn below it
  std::string name;
  section rec;  // as registered, nr_pages raised by grow_section: its pages now
  std::uint64_t capacity;  // pages its descriptor and data address granules are claimed for
};
std::map<pfn_t, open_range> g_open_ranges;

// The pfn-range quarantine: the last PFN_BASE_QUARANTINE closed pools' ranges, a FIFO.
struct pfn_range {
  pfn_t start, end;
};
pfn_range g_closed_ranges[PFN_BASE_QUARANTINE];
unsigned g_closed_first = 0, g_closed_count = 0;
// Bases picked for a pool being made and not yet registered (pick_pfn_base).
std::vector<pfn_range> g_picked;
std::function<pfn_t()> g_test_source;  // set_pfn_base_source_for_testing

bool overlaps(pfn_range a, pfn_range b) { return a.start < b.end && b.start < a.end; }

pfn_range range_of(pfn_t base, std::uint64_t nr_pages) { return {base, base + nr_pages}; }

// The open pool whose pfns overlap r, if any (registry_lock).
const std::pair<const pfn_t, open_range>* open_overlap(pfn_range r) {
  auto it = g_open_ranges.lower_bound(r.end);  // first base at or past r's end: no overlap there
  if (it == g_open_ranges.begin()) return nullptr;
  --it;  // the last pool starting before r's end: the only one that can overlap (ranges are disjoint)
  return it->second.end > r.start ? &*it : nullptr;
}

bool pickable(pfn_range r) {
  if (r.start < MIN_PFN_BASE || r.start > MAX_PFN_BASE || (r.start & SECTION_PAGES_MASK) != 0) return false;
  if (open_overlap(r)) return false;
  for (const pfn_range& p : g_picked)
    if (overlaps(p, r)) return false;
  for (unsigned i = 0; i < g_closed_count; ++i)
    if (overlaps(g_closed_ranges[(g_closed_first + i) % PFN_BASE_QUARANTINE], r)) return false;
  return true;
}

void unpick(pfn_t base) {
  for (auto it = g_picked.begin(); it != g_picked.end(); ++it)
    if (it->start == base) {
      g_picked.erase(it);
      return;
    }
}

std::string hex(std::uint64_t v) {
  char b[24];
  std::snprintf(b, sizeof b, "%#llx", static_cast<unsigned long long>(v));
  return b;
}

// ---- the overflow table -------------------------------------------------------------------------
// Pfn granules whose primary entry (g_sections) another open pool's granule already held when
// their pool registered. Open addressing with linear probing, keyed by the granule number;
// written under registry_lock inside a sequence lock (odd while it changes), read lock-free by
// the out-of-line miss paths, which retry when the sequence moved. Removing a pool's entries
// rebuilds the table (rare: only pools that had an overflowing granule), so a probe chain ends
// at the first empty slot. 16384 slots (1 MiB of BSS, touched only where used): open pools have
// at most MAX_OPEN_POOLS + 128 granules (16 TiB pools take 16 each, and 128 TiB of address space
// holds 8 of them), so the load stays below 0.26 even if every granule overflowed.
constexpr unsigned OVERFLOW_SLOTS = 16384;
static_assert(OVERFLOW_SLOTS >= 2 * (MAX_OPEN_POOLS + 128));
section g_overflow[OVERFLOW_SLOTS];
std::atomic<std::uint64_t> g_overflow_seq{0};
unsigned g_overflow_used = 0;  // registry_lock

unsigned overflow_hash(std::uint64_t granule) {
  // Fibonacci hashing: the primary index is the granule's low 16 bits; this one mixes them all.
  return unsigned((granule * 0x9E3779B97F4A7C15ull) >> (64 - 14));
}
static_assert(OVERFLOW_SLOTS == 1u << 14);

template <class T>
T load_relaxed(const T& v) {
  return std::atomic_ref<T>(const_cast<T&>(v)).load(std::memory_order_relaxed);
}
template <class T>
void store_relaxed(T& v, T x) {
  std::atomic_ref<T>(v).store(x, std::memory_order_relaxed);
}

void overflow_store(section& e, const section& r) {
  store_relaxed(e.vmemmap, r.vmemmap);
  store_relaxed(e.regions, r.regions);
  store_relaxed(e.data, r.data);
  store_relaxed(e.nr_pages, r.nr_pages);
  store_relaxed(e.start_pfn, r.start_pfn);
  store_relaxed(e.owner, r.owner);
  store_relaxed(e.base_index, r.base_index);
}

void overflow_insert(const section& r) {  // inside the sequence lock
  for (unsigned i = overflow_hash(r.start_pfn >> SECTION_SHIFT);; i = (i + 1) % OVERFLOW_SLOTS)
    if (g_overflow[i].nr_pages == 0) {
      overflow_store(g_overflow[i], r);
      ++g_overflow_used;
      return;
    }
}

void overflow_write_begin() { g_overflow_seq.fetch_add(1, std::memory_order_acq_rel); }
void overflow_write_end() { g_overflow_seq.fetch_add(1, std::memory_order_release); }

// The record of pool granule k (0-based from the pool's base): rebased like g_desc_sections.
// A granule past the pool's pages now (a pool that can grow) gets nr_pages 0: no page there.
section rebased(const section& s, std::uint64_t base) {
  section r = s;
  r.vmemmap += base;
  r.regions += base >> HPAGE_PMD_ORDER;
  r.data += base << PAGE_SHIFT;
  r.nr_pages = s.nr_pages > base ? s.nr_pages - base : 0;
  r.start_pfn += base;
  r.base_index = base;
  return r;
}
std::uint64_t pfn_granules(const section& s) { return (s.nr_pages + SECTION_PAGES_MASK) >> SECTION_SHIFT; }
section& primary_entry(pfn_t granule_start) {
  return g_sections[(granule_start >> SECTION_SHIFT) & ((1u << SECTION_BITS) - 1)];
}
// An address-table entry is taken while a pool claims it, even with no page in it yet (owner set,
// nr_pages 0: the part of a growable pool's capacity it has not grown into; readers reject it).
bool taken(const section& e) { return e.nr_pages != 0 || e.owner != nullptr; }
section with_pages(section s, std::uint64_t nr_pages) {
  s.nr_pages = nr_pages;
  return s;
}

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

static std::string conflict_locked(pfn_t base, std::uint64_t nr_pages, const std::string& name) {
  const auto* o = open_overlap(range_of(base, nr_pages));
  if (!o) return {};
  const bool same = o->first == base && o->second.end == base + nr_pages;
  std::string why = "its pfns [" + hex(base) + ", " + hex(base + nr_pages) + ") are used by another open pool, " +
                    (o->second.name.empty() ? std::string("(anonymous)") : o->second.name) + " [" + hex(o->first) +
                    ", " + hex(o->second.end) + ")";
  if (same && !name.empty() && name == o->second.name) return why + ": the same pool, open already in this process";
  return why + (same ? ": one is a copy of the other, or" : ":") +
         " two pools drew overlapping pfn bases (docs/api.md, Limits); close one and give it a new identity with "
         "`pmpage reidentify` (pfns the engine stored outside its slots must then be translated by the engine)";
}

std::string pfn_range_conflict(pfn_t base, std::uint64_t nr_pages, const std::string& name) {
  std::lock_guard g(registry_lock);
  return conflict_locked(base, nr_pages, name);
}

pfn_t pfn_base_from_random(std::uint64_t r) {
  constexpr std::uint64_t choices = ((MAX_PFN_BASE - MIN_PFN_BASE) >> SECTION_SHIFT) + 1;
  return MIN_PFN_BASE + ((r % choices) << SECTION_SHIFT);
}

void set_pfn_base_source_for_testing(std::function<pfn_t()> draw) {
  std::lock_guard g(registry_lock);
  g_test_source = std::move(draw);
}

pfn_t first_pickable_pfn_base(std::span<const pfn_t> bases, std::uint64_t nr_pages) {
  std::lock_guard g(registry_lock);
  for (const pfn_t b : bases)
    if (pickable(range_of(b, nr_pages))) {
      g_picked.push_back(range_of(b, nr_pages));
      return b;
    }
  return 0;
}

pfn_t pick_pfn_base(std::uint64_t nr_pages) {
  {
    std::lock_guard g(registry_lock);
    if (g_test_source) {
      const pfn_t b = g_test_source();
      g_picked.push_back(range_of(b, nr_pages));  // released as usual; never consulted here
      return b;
    }
  }
  std::random_device rd;
  for (int round = 0; round < 16; ++round) {
    // Drawn outside the registry lock: random_device may read a file.
    pfn_t bases[16];
    for (auto& b : bases) b = pfn_base_from_random(std::uint64_t(rd()) << 32 | rd());
    if (const pfn_t b = first_pickable_pfn_base(bases, nr_pages)) return b;
  }
  return 0;
}

void release_picked_pfn_base(pfn_t base) {
  std::lock_guard g(registry_lock);
  unpick(base);
}

std::string register_section(const section& s, std::uint64_t capacity, const std::string& name) {
  if (s.start_pfn < MIN_PFN_BASE || s.start_pfn > MAX_PFN_BASE || (s.start_pfn & SECTION_PAGES_MASK) != 0)
    return "pfn base " + hex(s.start_pfn) + " is out of range";  // superblock_problem refuses it first
  if (capacity < s.nr_pages) return "more pages than its capacity";
  std::lock_guard g(registry_lock);
  if (std::string why = conflict_locked(s.start_pfn, capacity, name); !why.empty()) return why;
  // The address granules of the whole capacity are claimed now (grow_section only raises their
  // nr_pages); the pfn granules only as far as the pool has pages (see grow_section).
  const section cap = with_pages(s, capacity);
  std::uintptr_t vfirst, vlast;
  desc_granules(cap, vfirst, vlast);
  if (reinterpret_cast<std::uintptr_t>(s.vmemmap) & ((std::uintptr_t{1} << DESC_GRANULE_SHIFT) - 1))
    return "descriptor window not aligned to its granule";
  if (vlast >= DESC_GRANULES) return "descriptor window above the 47-bit address space";
  for (auto gr = vfirst; gr <= vlast; ++gr)
    if (taken(g_desc_sections[gr])) return "descriptor address granule already owned";
  std::uintptr_t first, last;
  data_granules(cap, first, last);
  if (last >= DATA_GRANULES) return "data mapping above the 47-bit address space";
  for (auto gr = first; gr <= last; ++gr)
    if (taken(g_data_sections[gr])) return "data address granule already owned";
  // A pool's pointers and pfns reach other threads only after open returns (a release of its
  // own), so plain stores suffice for its own entries. A primary entry is only ever written when
  // it is empty (a pool in the overflow table is not moved when the entry frees up), so a reader
  // of another pool's pfn that hashes there sees zero or this pool's values, never a mix that
  // passes its range check (page.hpp, MIN_PFN_BASE); the overflow table has its sequence lock.
  const std::uint64_t n = pfn_granules(s);
  bool overflowing = false;
  for (std::uint64_t k = 0; k < n; ++k) {
    const section r = rebased(s, k << SECTION_SHIFT);
    section& e = primary_entry(r.start_pfn);
    if (e.nr_pages == 0) {
      e = r;
      continue;
    }
    if (!overflowing) overflow_write_begin();
    overflowing = true;
    overflow_insert(r);
  }
  if (overflowing) overflow_write_end();
  for (auto gr = vfirst; gr <= vlast; ++gr) g_desc_sections[gr] = rebased(s, (gr - vfirst) * DESC_GRANULE_PAGES);
  for (auto gr = first; gr <= last; ++gr) g_data_sections[gr] = s;
  g_open_ranges.emplace(s.start_pfn, open_range{s.start_pfn + capacity, name, s, capacity});
  unpick(s.start_pfn);  // registered: no longer only picked
  std::atomic_thread_fence(std::memory_order_release);
  return {};
}

bool grow_section(pfn_t base, std::uint64_t nr_pages) {
  std::lock_guard g(registry_lock);
  const auto it = g_open_ranges.find(base);
  if (it == g_open_ranges.end() || nr_pages > it->second.capacity || nr_pages < it->second.rec.nr_pages) return false;
  const section old = it->second.rec;
  const section s = with_pages(old, nr_pages);
  // Lock-free readers load nr_pages on their own (mm.hpp, pmpage.h): it only rises while the
  // pool is open, so they see the old count or the new one, and every other field of an entry
  // that had pages is unchanged. The new pages reach other threads only through the allocator
  // (its lock, after this returns), which orders these stores before their use.
  const section cap = with_pages(s, it->second.capacity);
  std::uintptr_t first, last;
  desc_granules(cap, first, last);
  for (auto gr = first; gr <= last; ++gr)
    store_relaxed(g_desc_sections[gr].nr_pages, rebased(s, (gr - first) * DESC_GRANULE_PAGES).nr_pages);
  data_granules(cap, first, last);
  for (auto gr = first; gr <= last; ++gr) store_relaxed(g_data_sections[gr].nr_pages, nr_pages);
  // The pfn granules: one with pages already has its record in its primary entry or the overflow
  // table (raised in place); a granule it grows into is registered now, as register_section would
  // have: its primary entry if empty (every other field first, nr_pages last: a reader that sees
  // the count sees the record), else the overflow table.
  const std::uint64_t had = pfn_granules(old), has = pfn_granules(s);
  bool overflowing = false;
  for (std::uint64_t k = 0; k < has; ++k) {
    const section r = rebased(s, k << SECTION_SHIFT);
    section& e = primary_entry(r.start_pfn);
    if (e.nr_pages != 0 && e.start_pfn == r.start_pfn && e.owner == r.owner) {
      store_relaxed(e.nr_pages, r.nr_pages);
      continue;
    }
    if (k >= had && e.nr_pages == 0) {
      overflow_store(e, with_pages(r, 0));
      std::atomic_ref<std::uint64_t>(e.nr_pages).store(r.nr_pages, std::memory_order_release);
      continue;
    }
    if (!overflowing) overflow_write_begin();
    overflowing = true;
    if (k >= had) {
      overflow_insert(r);
      continue;
    }
    for (section& o : g_overflow)
      if (o.nr_pages != 0 && o.start_pfn == r.start_pfn) store_relaxed(o.nr_pages, r.nr_pages);
  }
  if (overflowing) overflow_write_end();
  it->second.rec = s;
  return true;
}

void unregister_section(pfn_t base) {
  std::lock_guard g(registry_lock);
  const auto it = g_open_ranges.find(base);
  if (it == g_open_ranges.end()) return;
  const pfn_t end = it->second.end;
  const section s = it->second.rec;
  const section cap = with_pages(s, it->second.capacity);
  g_open_ranges.erase(it);
  std::uintptr_t first, last;
  data_granules(cap, first, last);
  for (auto gr = first; gr <= last; ++gr) g_data_sections[gr] = section{};
  desc_granules(cap, first, last);
  for (auto gr = first; gr <= last; ++gr) g_desc_sections[gr] = section{};
  bool overflowed = false;
  // Only the pfn granules it has pages in hold its records (register_section, grow_section); a
  // primary entry is its own iff it names the granule's first pfn (no other pool has that pfn).
  for (pfn_t gs = base; gs < base + s.nr_pages; gs += std::uint64_t{1} << SECTION_SHIFT) {
    section& e = primary_entry(gs);
    if (e.nr_pages != 0 && e.start_pfn == gs)
      e = section{};
    else
      overflowed = true;
  }
  if (overflowed) {
    // Rebuild without this pool's granules: linear probing cannot just empty a slot.
    overflow_write_begin();
    std::vector<section> keep;
    for (section& e : g_overflow) {
      if (e.nr_pages == 0) continue;
      if (e.start_pfn < base || e.start_pfn >= end) keep.push_back(e);
      overflow_store(e, section{});
    }
    g_overflow_used = 0;
    for (const section& r : keep) overflow_insert(r);
    overflow_write_end();
  }
  g_closed_ranges[(g_closed_first + g_closed_count) % PFN_BASE_QUARANTINE] = pfn_range{base, end};
  if (g_closed_count == PFN_BASE_QUARANTINE)
    g_closed_first = (g_closed_first + 1) % PFN_BASE_QUARANTINE;
  else
    ++g_closed_count;
}

page* pfn_to_page_slow(pfn_t pfn) noexcept {
  // The primary entry first: the inline code of a program built against headers with another
  // SECTION_SHIFT (before format 3: 32) looked in the wrong one and lands here for every pfn.
  const section& s = primary_entry(pfn & ~SECTION_PAGES_MASK);
  if (const pfn_t first = load_relaxed(s.start_pfn); pfn - first < load_relaxed(s.nr_pages))
    return load_relaxed(s.vmemmap) + (pfn - first);
  const unsigned h = overflow_hash(pfn >> SECTION_SHIFT);
  for (;;) {
    const std::uint64_t seq = g_overflow_seq.load(std::memory_order_acquire);
    if (seq & 1) continue;  // a pool is registering or closing: microseconds
    page* found = nullptr;
    for (unsigned i = h, probes = 0; probes < OVERFLOW_SLOTS; i = (i + 1) % OVERFLOW_SLOTS, ++probes) {
      const section& e = g_overflow[i];
      const std::uint64_t nr = load_relaxed(e.nr_pages);
      if (nr == 0) break;
      const std::uint64_t idx = pfn - load_relaxed(e.start_pfn);
      if (idx < nr) {
        found = load_relaxed(e.vmemmap) + idx;
        break;
      }
    }
    std::atomic_thread_fence(std::memory_order_acquire);
    if (g_overflow_seq.load(std::memory_order_relaxed) == seq) return found;
  }
}

unsigned overflow_granules() noexcept {
  std::lock_guard g(registry_lock);
  return g_overflow_used;
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
