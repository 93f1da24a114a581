// page_slow.cpp — the out-of-line slow paths of <pmpage/mm.hpp>: misuse reports, the last
// put_page, lazily loaded regions, sleeping in lock_page, and the allocator-backed page calls.
#include <cerrno>

#include "misuse.hpp"
#include "futex.hpp"
#include "pool_impl.hpp"
#include "registry.hpp"
#include "pmpage/mm.hpp"

namespace pmpage {
namespace detail {

page* report_bad_pfn(pfn_t pfn) noexcept {
  // The primary entry missed: the pfn may be a pool's whose granule shares it (registry.hpp).
  if (page* p = pfn_to_page_slow(pfn)) return p;
  report_misuse("pfn %#llx is not a page of any open pool (closed pool, or outside its data area)",
                static_cast<unsigned long long>(pfn));
  return nullptr;
}

bool pfn_valid_slow(pfn_t pfn) noexcept { return pfn_to_page_slow(pfn) != nullptr; }

pfn_t report_bad_page(const page* p) noexcept {
  if (quarantined(p))  // registry.hpp: no later pool has its descriptors there
    report_misuse("%p is not a page descriptor of any open pool: it is one of a pool closed since (a stale "
                  "page*); nothing done",
                  static_cast<const void*>(p));
  else
    report_misuse("%p is not a page descriptor of any open pool", static_cast<const void*>(p));
  return 0;
}

void report_refcount_misuse(page* p, page* holder, int old, bool is_get) noexcept {
  // Undo our change first so a returning handler leaves the count as it was.
  if (is_get)
    holder->refcount_.fetch_sub(1, std::memory_order_relaxed);
  else
    holder->refcount_.fetch_add(1, std::memory_order_relaxed);
  if (is_get && old > 0)
    report_misuse("get_page on pfn %#llx: reference count saturated at %d (PAGE_REF_MAX); reference not taken",
                  static_cast<unsigned long long>(page_to_pfn(p)), old);
  else
    report_misuse("%s on pfn %#llx whose reference count is %d (page is free or already freed)",
                  is_get ? "get_page" : "put_page", static_cast<unsigned long long>(page_to_pfn(p)), old);
}

void report_owned_put(page* p, page* holder) noexcept { owner_of(p)->report_owned(p, holder); }

void release_compound(page* p, page* holder) noexcept {
  if (PMPAGE_UNLIKELY(holder->flags_.load(std::memory_order_acquire) & PG_slot_owned)) {
    owner_of(p)->report_owned_release(p, holder);
    return;
  }
  owner_of(p)->release(holder);
}

void materialise_lazy_region(const section& s, std::uint64_t region) noexcept {
  static_cast<pool_impl*>(s.owner)->materialise(std::uint32_t(region));
}

void lock_page_slow(page* p) noexcept {
  for (;;) {
    // The holder can change while we sleep (split_huge_page moves the lock to subpage 0).
    page* h = state_holder(p);
    if (!h) return;
    std::uint32_t f = h->flags_.load(std::memory_order_relaxed);
    // A region descriptor whose region was split since we resolved it holds no lock any more (its
    // PG_locked stays set so fast paths come here): resolve the holder again.
    if (f & PG_region_special) continue;
    if (!(f & PG_locked)) {
      if (h->flags_.compare_exchange_weak(f, f | PG_locked, std::memory_order_acquire)) return;
      continue;
    }
    if (!(f & PG_waiters)) {
      if (!h->flags_.compare_exchange_weak(f, f | PG_waiters, std::memory_order_relaxed)) continue;
      f |= PG_waiters;
    }
    futex_wait(&h->flags_, f);  // shared futex (futex.hpp): sleeps until the word changes
  }
}

void wake_page_waiters(page* h) noexcept { futex_wake_all(&h->flags_); }

void report_unlock_misuse(page* p) noexcept {
  report_misuse("unlock_page on pfn %#llx, which is not locked", static_cast<unsigned long long>(page_to_pfn(p)));
}

}  // namespace detail

void free_pages(page* p, unsigned order) noexcept {
  // One lookup for the whole call: this is the kernel's __free_pages, on every free's path.
  detail::page_location loc;
  if (!detail::locate(p, loc)) return;
  bool tail;
  if (loc.rflags & PG_split)
    tail = detail::load_compound_head(p) & 1;
  else if (loc.rflags & PG_region_tail)
    tail = true;
  else
    tail = (loc.rflags & PG_head) && (loc.index & (HPAGE_PMD_NR - 1)) != 0;
  if (tail) {
    detail::report_misuse("free_pages on pfn %#llx: a tail page, not the head of its compound page",
                          static_cast<unsigned long long>(page_to_pfn(p)));
    return;
  }
  page* h = detail::state_holder(loc, p);
  if (h->refcount_.load(std::memory_order_relaxed) <= 0) {
    detail::report_misuse("free_pages on pfn %#llx: page is not allocated (double free?)",
                          static_cast<unsigned long long>(page_to_pfn(p)));
    return;
  }
  const bool is_head = (loc.rflags & PG_split) ? bool(p->flags_.load(std::memory_order_acquire) & PG_head)
                                               : bool(loc.rflags & PG_head);
  const unsigned actual = is_head ? detail::load_order(h) : 0;
  if (actual != order) {
    detail::report_misuse("free_pages on pfn %#llx with order %u, but it was allocated with order %u",
                          static_cast<unsigned long long>(page_to_pfn(p)), order, actual);
    return;
  }
  if (detail::refuse_slot_reference(p, h)) return;
  const int old = h->refcount_.fetch_sub(1, std::memory_order_acq_rel);  // put_page on the holder
  if (old == 1)
    detail::release_compound(p, h);
  else if (old <= 0)
    detail::report_refcount_misuse(p, h, old, false);
}

int split_huge_page(page* p) noexcept {
  detail::page_location loc;
  if (!detail::locate(p, loc)) return -EINVAL;
  return detail::owner_of(p)->split_huge_page(p);
}

int split_huge_page_to(page* p, pfn_t* slots) noexcept {
  detail::page_location loc;
  if (!detail::locate(p, loc)) return -EINVAL;
  return detail::owner_of(p)->split_huge_page_to(p, slots);
}

}  // namespace pmpage
