// media.cpp — the media recipe: which persistent words an operation writes and flushes (page-map
// lines from the DRAM mirror, region words, owner entries, slots). Nothing here fences: the
// operation in pool.cpp fences once its words are all flushed (the recipes are listed at the top
// of pool.cpp and in docs/crash-consistency.md). Nothing here chooses pages either.
#include <cstdio>
#include <cstring>

#include "misuse.hpp"
#include "pool_impl.hpp"

namespace pmpage::detail {

namespace {
/// This thread's queued flushes (pool_impl::flush_later). Each entry names its backend: a thread
/// may queue for one pool and fence another (that only flushes earlier than needed).
struct deferred_flushes {
  static constexpr unsigned MAX = 16;
  persistence* pers[MAX];
  const void* addr[MAX];
  std::size_t len[MAX];
  unsigned n = 0;
};
thread_local deferred_flushes t_deferred;
}  // namespace

void pool_impl::flush_later(const void* p, std::size_t len) noexcept {
  if (no_flush_) return;  // volatile, or byte granularity: the fence alone makes the stores durable
  deferred_flushes& d = t_deferred;
  if (d.n == deferred_flushes::MAX) issue_deferred_flushes();  // correct, only a little slower
  d.pers[d.n] = pers_.get();
  d.addr[d.n] = p;
  d.len[d.n] = len;
  ++d.n;
}

void pool_impl::issue_deferred_flushes() noexcept {
  deferred_flushes& d = t_deferred;
  const unsigned n = d.n;
  d.n = 0;  // first: a backend that fails mid-way (a simulated power failure) leaves nothing stale
  for (unsigned i = 0; i < n; ++i) d.pers[i]->flush(d.addr[i], d.len[i]);
}

void pool_impl::forget_deferred_flushes() noexcept {
  // What is left are lazily queued intent retirements (retire_intent) and what a pool that failed
  // to open queued; they name this pool's mapping and backend, which are going away.
  deferred_flushes& d = t_deferred;
  unsigned k = 0;
  for (unsigned i = 0; i < d.n; ++i)
    if (d.pers[i] != pers_.get()) {
      d.pers[k] = d.pers[i];
      d.addr[k] = d.addr[i];
      d.len[k++] = d.len[i];
    }
  d.n = k;
}

persistence& no_flush_sink() noexcept {
  // The intent log's backend at byte granularity: it only ever flushes (the pool fences).
  struct sink final : persistence {
    granularity attach(void*, std::size_t, granularity g) override { return g; }
    void flush(const void*, std::size_t) noexcept override {}
    void drain() noexcept override {}
  };
  static sink s;
  return s;
}

int pool_impl::latch_writeback_error() const noexcept {
  // Failures the backend reported before this pool attached (a backend reused after a failed
  // pool) are not this pool's; every one since is, whichever thread's flush met it.
  if (pers_->writeback_errors() != wb_seen_) {
    int expected = 0;
    const int e = pers_->last_writeback_error();
    wb_error_.compare_exchange_strong(expected, e > 0 ? e : EIO, std::memory_order_relaxed);
  }
  return wb_error_.load(std::memory_order_relaxed);
}

void pool_impl::note_writeback_failure(const char* caller, int e) const noexcept {
  char m[512];
  std::snprintf(m, sizeof m,
                "pmpage: %s: %s: writing back to the media failed (%s): what the call changed may not be durable (an "
                "allocation was undone, a free completed in memory); every later call that makes something durable "
                "on this pool fails the same way until it is reopened",
                path().c_str(), caller, std::strerror(e));
  note_backing_failure(e, m);
}

void pool_impl::write_map_locked(std::uint32_t r, unsigned w0, unsigned w1) {
  if (volatile_) return;  // no media: the mirror is the page map (check() reads it as such)
  // Whole cache lines of the mirror (S5), stored under the region lock; their flush is issued
  // after the lock is dropped (flush_later): the write-back then carries these codes or newer.
  constexpr unsigned words_per_line = 64 / 8;
  const unsigned l0 = w0 / words_per_line * words_per_line, l1 = (w1 / words_per_line + 1) * words_per_line;
  std::uint64_t* map = page_map(r);
  const std::uint64_t* mirror = sstate(r).map;
  for (unsigned w = l0; w < l1; ++w) store_word(&map[w], mirror[w]);
  flush_later(map + l0, (l1 - l0) * 8);
}

void pool_impl::apply_small_held(std::uint32_t r, page* p, unsigned order, std::uint64_t owner) {
  const auto index = std::uint64_t(p - vmemmap_);
  const unsigned first = unsigned(index & (HPAGE_PMD_NR - 1));
  // An owned allocation (alloc_pages_to): its owner entry, and the owned marker in its head's
  // map word, in the same epoch (O1). A plain one leaves the entry alone: it may be stale, and is
  // read only under the marker. An entry that already names the slot stays as it is (record_owner).
  if (owner) record_owner(index, owner);
  std::uint64_t* mirror = sstate(r).map;
  for_each_map_word(first, order, true, [&](unsigned w, std::uint64_t mask, std::uint64_t bits) {
    mirror[w] = (mirror[w] & ~mask) | bits;
  });
  if (owner) set_map_owned(mirror, first, order, true);
  write_map_locked(r, first / PAGES_PER_MAP_WORD, (first + (1u << order) - 1) / PAGES_PER_MAP_WORD);
}

void pool_impl::apply_alloc(page* p, unsigned order, std::uint64_t owner) {
  const auto index = std::uint64_t(p - vmemmap_);
  const auto r = std::uint32_t(index >> HPAGE_PMD_ORDER);
  if (order >= HPAGE_PMD_ORDER) {
    // The region word of an allocated large page is written only by its allocator and its
    // freer, who hold the page: no lock.
    if (owner) record_owner(index, owner);
    persist_word(region_word(r), make_region_word(region_state::head, order, owner != 0));
    return;
  }
  // The page is allocated in DRAM, so its region cannot merge: its state stays.
  adaptive_mutex& m = lock_region(sstate(r));
  apply_small_held(r, p, order, owner);
  m.unlock();
}

void pool_impl::write_fresh_split_words(const alloc_plan& plan) {
  for (unsigned i = 0; i < plan.nr_fresh; ++i)
    persist_word(region_word(plan.fresh[i]), make_region_word(region_state::split));
}

void pool_impl::zero_pages(page* p, unsigned order) {
  // Outside the lock, before the allocation's fence: the zeros are durable when it returns.
  void* a = page_address(p);
  const std::size_t len = PAGE_SIZE << order;
  if (no_flush_)  // volatile, or byte granularity (durable once the fence has ordered them)
    std::memset(a, 0, len);
  else
    pers_->memset_nodrain(a, 0, len);
}

void pool_impl::clear_owner_entries(std::uint32_t r) {
  // A split gives every page a new life without an owned marker, so its tagged entries, stale or
  // not, are ignored (O1) and stay. Only a raw entry (a 0.2 pool's, which counts without a marker)
  // is cleared: read them (cheaper than writing 64 lines back) and clear only those.
  std::uint64_t* e = owner_entry(std::uint64_t(r) << HPAGE_PMD_ORDER);
  for (unsigned line = 0; line < HPAGE_PMD_NR / 8; ++line) {
    bool any = false;
    for (unsigned w = 0; w < 8; ++w) any |= owner_entry_raw(load_word(&e[line * 8 + w]));
    if (!any) continue;
    for (unsigned w = 0; w < 8; ++w)
      if (owner_entry_raw(load_word(&e[line * 8 + w]))) store_word(&e[line * 8 + w], 0);
    flush_later(&e[line * 8], 64);
  }
}

void pool_impl::write_split_map(std::uint32_t r, bool owned) {
  if (volatile_) return;  // split_descriptors builds the mirror, the only page map a volatile pool has
  std::uint64_t* map = page_map(r);
  for (unsigned w = 0; w < PAGE_MAP_WORDS; ++w) store_word(&map[w], owned ? SPLIT_MAP_OWNED_WORD : SPLIT_MAP_WORD);
  flush_now(map, PAGE_MAP_BYTES);
}

void pool_impl::write_split_to_words(std::uint32_t r, std::uint64_t slots_off, bool store_slots) {
  const std::uint64_t first = std::uint64_t(r) << HPAGE_PMD_ORDER;
  write_split_map(r, /*owned=*/true);
  for (unsigned i = 0; i < HPAGE_PMD_NR; ++i) store_word(owner_entry(first + i), encode_owner(first + i, slots_off + 8 * i));
  flush_now(owner_entry(first), OWNER_TABLE_BYTES);
  auto* slots = reinterpret_cast<pfn_t*>(dev_.base() + slots_off);
  if (store_slots)
    for (unsigned i = 1; i < HPAGE_PMD_NR; ++i)
      std::atomic_ref<pfn_t>(slots[i]).store(pfn_of_index(first + i), std::memory_order_relaxed);
  flush_now(slots + 1, (HPAGE_PMD_NR - 1) * sizeof(pfn_t));
}

}  // namespace pmpage::detail
