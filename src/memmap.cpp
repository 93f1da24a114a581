// memmap.cpp — the descriptors: materialising a split region's 512 4 KiB descriptors and giving
// their memory back, and building the descriptors of a new allocation (compound head and tails,
// large pages in the dense region array). The kernel's counterpart is the vmemmap with
// HugeTLB Vmemmap Optimization (mm/hugetlb_vmemmap.c): descriptors exist only where they are
// needed. Nothing here touches the media or chooses pages; callers own the pages involved (or hold
// the pool lock for a region's state).
#include <sys/mman.h>

#include <cstring>

#include "futex.hpp"
#include "pool_impl.hpp"

namespace pmpage::detail {

void pool_impl::back_descriptors(std::uint32_t r) {
  // The window is either never touched or was given back with MADV_DONTNEED: both read as zero,
  // but callers rely on every field being reset, so say it explicitly. With atomic stores, not
  // memset: a lock-free reader that resolved the region as split before it merged (translation,
  // page_count on a free page) may still load these descriptors while the region splits again.
  static_assert(sizeof(page) % 8 == 0 && alignof(page) >= 8);
  auto* w = reinterpret_cast<std::uint64_t*>(vpage(std::uint64_t(r) << HPAGE_PMD_ORDER));
  for (std::size_t i = 0; i < HPAGE_PMD_NR * sizeof(page) / 8; ++i)
    std::atomic_ref<std::uint64_t>(w[i]).store(0, std::memory_order_relaxed);
  ++core_->materialised;
}

void pool_impl::release_descriptors(std::uint32_t r) {
  ::madvise(vpage(std::uint64_t(r) << HPAGE_PMD_ORDER), HPAGE_PMD_NR * sizeof(page), MADV_DONTNEED);
}

void pool_impl::init_compound_small(std::uint32_t r, unsigned first, unsigned order) {
  page* head = vpage((std::uint64_t(r) << HPAGE_PMD_ORDER) + first);
  for (unsigned j = 1; j < (1u << order); ++j) {
    page* t = head + j;
    store_compound_head(t, tail_link(t, head));
    store_order(t, 0);
    t->private_.store(0, std::memory_order_relaxed);
    t->refcount_.store(0, std::memory_order_relaxed);
    t->flags_.store(0, std::memory_order_relaxed);
  }
  store_compound_head(head, 0);
  store_order(head, order);
  head->private_.store(0, std::memory_order_relaxed);
  head->refcount_.store(1, std::memory_order_relaxed);
  head->flags_.store(order ? std::uint32_t{PG_head} : 0u, std::memory_order_release);
}

page* pool_impl::setup_large(std::uint32_t r, unsigned order) {
  const std::uint32_t n = 1u << (order - HPAGE_PMD_ORDER);
  for (std::uint32_t i = 1; i < n; ++i) {
    page& t = regions_[r + i];
    store_kind(t, RK_TAIL);
    store_head_index(&t, r);
    t.refcount_.store(0, std::memory_order_relaxed);
    t.flags_.store(PG_region_tail, std::memory_order_release);
  }
  page& h = regions_[r];
  store_kind(h, RK_HEAD);
  store_order(&h, order);
  store_head_index(&h, r);
  h.private_.store(0, std::memory_order_relaxed);
  h.refcount_.store(1, std::memory_order_relaxed);
  h.flags_.store(PG_head, std::memory_order_release);
  return vpage(std::uint64_t(r) << HPAGE_PMD_ORDER);
}

void pool_impl::split_descriptors(page* h, std::uint32_t r, bool owned) {
  std::lock_guard g(core_->mu);
  back_descriptors(r);
  const std::uint32_t hflags = h->flags_.load(std::memory_order_relaxed);
  constexpr std::uint32_t inherited = PG_dirty | PG_uptodate;
  page* first = vpage(std::uint64_t(r) << HPAGE_PMD_ORDER);
  for (unsigned i = 0; i < HPAGE_PMD_NR; ++i) {
    page* d = first + i;
    d->refcount_.store(1, std::memory_order_relaxed);
    d->flags_.store((hflags & inherited) | (owned ? PG_slot_owned : 0u), std::memory_order_relaxed);
  }
  first->private_.store(h->private_.load(std::memory_order_relaxed), std::memory_order_relaxed);
  split_state* s = make_sstate(r);  // all pages in use: no free bits
  h->alloc_state_ = 0;              // published below, once built
  for (auto& w : s->map) w = owned ? SPLIT_MAP_OWNED_WORD : SPLIT_MAP_WORD;  // S5: as write_split_map
  s->list = 0xff;
  s->published = true;
  if (const std::uint64_t* bad = bad_bits_of(r)) {
    // The poisoned page's flag goes to the pieces that hold a bad page, and only to them (Q3);
    // freeing one of those later holds it out (Q2).
    s->has_bad = true;
    std::memcpy(s->bad_bits, bad, sizeof s->bad_bits);
    for (unsigned i = 0; i < HPAGE_PMD_NR; ++i)
      if (bad[i / 64] >> (i % 64) & 1) first[i].flags_.fetch_or(PG_hwpoison, std::memory_order_relaxed);
  }
  h->alloc_state_ = 1;
  store_kind(*h, RK_SPLIT);
  store_order(h, 0);
  h->private_.store(0, std::memory_order_relaxed);
  ++core_->split_regions;
  // The region descriptor stops being a holder in one atomic step. Its PG_locked (the split's own
  // lock) is never released: a thread that resolved the holder before this exchange and tries the
  // lock finds it taken and re-resolves in lock_page_slow, reaching its own subpage.
  const std::uint32_t old = h->flags_.exchange(PG_split | PG_locked, std::memory_order_release);
  if (const std::uint32_t late = old & inherited & ~hflags)  // set while we copied: pass it on
    for (unsigned i = 0; i < HPAGE_PMD_NR; ++i) first[i].flags_.fetch_or(late, std::memory_order_relaxed);
  if (old & PG_waiters) futex_wake_all(&h->flags_);  // they re-resolve to their subpages
  // Its pieces are reachable now, and a free of one takes the region lock, not the pool lock.
  s->own_lock.lock();
  filler_.update(r, *s);
  s->own_lock.unlock();
}

}  // namespace pmpage::detail
