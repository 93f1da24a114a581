/// \file
/// pmpage/mm.hpp — the kernel's page API: translation, references, compound pages, flags.
///
/// Layer: above page.hpp. Everything here is inline and lock-free; the only calls out of line are
/// the slow paths: a count reaching zero (frees the page), a misuse report, a lazily loaded region
/// (first touch after open), and sleeping in lock_page().
///
/// Each function works on any valid `page*`, split or not, head or tail. For a page of an unsplit
/// region nothing behind the pointer is read: its state lives in the region descriptor, found by
/// arithmetic (pfn >> 9), like the kernel finds a folio from a tail page.
#pragma once

#include <atomic>
#include <cstdint>

#include "pmpage/page.hpp"
#include "pmpage/types.hpp"

#if defined(__GNUC__)
#define PMPAGE_LIKELY(x) __builtin_expect(!!(x), 1)
#define PMPAGE_UNLIKELY(x) __builtin_expect(!!(x), 0)
#else
#define PMPAGE_LIKELY(x) (x)
#define PMPAGE_UNLIKELY(x) (x)
#endif

namespace pmpage {

namespace detail {

// Out-of-line slow paths (src/page_slow.cpp).
// pfn_to_page's miss path: the pfn's pool when it is in the overflow table (page.hpp), else
// misuse (reported; returns nullptr).
PMPAGE_API page* report_bad_pfn(pfn_t pfn) noexcept;
PMPAGE_API bool pfn_valid_slow(pfn_t pfn) noexcept;                    // pfn_valid's miss path
PMPAGE_API pfn_t report_bad_page(const page* p) noexcept;              // misuse; returns 0
PMPAGE_API void report_refcount_misuse(page* p, page* holder, int old, bool is_get) noexcept;
PMPAGE_API void release_compound(page* p, page* holder) noexcept;      // count reached 0: free durably
PMPAGE_API void report_owned_put(page* p, page* holder) noexcept;      // misuse: the slot's reference
PMPAGE_API void materialise_lazy_region(const section& s, std::uint64_t region) noexcept;
PMPAGE_API void lock_page_slow(page* p) noexcept;  // re-resolves the holder after every wake-up
PMPAGE_API void wake_page_waiters(page* holder) noexcept;
PMPAGE_API void report_unlock_misuse(page* p) noexcept;

/// Where a descriptor pointer lives: its pool section, pool page index and region descriptor.
struct page_location {
  const section* sec;   // rebased to p's granule (see detail::section)
  std::uint64_t index;  // p is sec->vmemmap[index]; the pool page index is sec->base_index + index
  page* region;         // region descriptor of the page's 2 MiB region
  std::uint32_t rflags; // region flags, loaded with acquire (PG_region_lazy never set here)
};

inline const section& section_of(const page* p) noexcept {
  const auto a = reinterpret_cast<std::uintptr_t>(p);
  return g_desc_sections[(a >> DESC_GRANULE_SHIFT) & (DESC_GRANULES - 1)];
}

/// p's index in section_of(p), valid only if < its nr_pages: an empty entry (nr_pages 0), an
/// address past the pool's vmemmap in its last granule, or one above 2^47 all fail that check.
inline std::uint64_t index_of(const page* p) noexcept {
  return (reinterpret_cast<std::uintptr_t>(p) & ~DESC_GRANULE_NUMBER_MASK) / sizeof(page);
}

/// put_page/free_pages about to drop a slot-owned page's last reference (the slot's): reported,
/// refused before the count is touched, so other threads never see the page at 0 because of this
/// misuse. Count and flags share the descriptor's cache line: no extra miss on the put path.
inline bool refuse_slot_reference(page* p, page* h) noexcept {
  if (PMPAGE_LIKELY(h->refcount_.load(std::memory_order_relaxed) != 1 ||
                    !(h->flags_.load(std::memory_order_relaxed) & PG_slot_owned)))
    return false;
  report_owned_put(p, h);
  return true;
}

/// Locates p. Returns false (after reporting misuse) when p is not a descriptor of an open pool.
inline bool locate(const page* p, page_location& out) noexcept {
  const section& s = section_of(p);
  const std::uint64_t idx = index_of(p);
  if (PMPAGE_UNLIKELY(idx >= section_pages(s))) {
    report_bad_page(p);
    return false;
  }
  page* r = s.regions + (idx >> HPAGE_PMD_ORDER);
  std::uint32_t f = r->flags_.load(std::memory_order_acquire);
  if (PMPAGE_UNLIKELY(f & PG_region_lazy)) {
    materialise_lazy_region(s, (s.base_index + idx) >> HPAGE_PMD_ORDER);
    f = r->flags_.load(std::memory_order_acquire);
  }
  out = page_location{&s, idx, r, f};
  return true;
}

/// The descriptor holding the refcount, flags and private field of p's compound page: the region
/// descriptor of the head region when p's region is unsplit, else the 4 KiB head descriptor.
inline page* state_holder(const page_location& loc, page* p) noexcept {
  if (PMPAGE_LIKELY(!(loc.rflags & PG_region_special))) return loc.region;
  if (loc.rflags & PG_split) {
    return linked_head(p, load_compound_head(p));
  }
  // PG_region_tail: head_index_ is absolute; the head is in the same granule (page.hpp).
  return loc.sec->regions + (load_head_index(loc.region) - (loc.sec->base_index >> HPAGE_PMD_ORDER));
}

inline page* state_holder(page* p) noexcept {
  page_location loc;
  if (PMPAGE_UNLIKELY(!locate(p, loc))) return nullptr;
  return state_holder(loc, p);
}

}  // namespace detail

// ---------------------------------------------------------------------------------------------
// Translation
// ---------------------------------------------------------------------------------------------

/// True iff pfn belongs to the data area of an open pool: [start_pfn(), end_pfn()) of its pages
/// now (a pool open with room to grow reserves its capacity's pfns against other pools, but they
/// are valid only once pool.grow has added their pages: docs/api.md "Growing a pool").
inline bool pfn_valid(pfn_t pfn) noexcept {
  const detail::section& s = detail::g_sections[(pfn >> detail::SECTION_SHIFT) & ((1u << detail::SECTION_BITS) - 1)];
  // One unsigned compare checks both ends and every high bit; a miss may still be a pool whose
  // granule shares the entry with another pool's (page.hpp): the overflow table decides.
  return pfn - s.start_pfn < detail::section_pages(s) || detail::pfn_valid_slow(pfn);
}

/// The descriptor of pfn. An invalid pfn is misuse (reported; returns nullptr). A pfn of a pool
/// in the overflow table (page.hpp) takes the out-of-line path and is found there.
inline page* pfn_to_page(pfn_t pfn) noexcept {
  const detail::section& s = detail::g_sections[(pfn >> detail::SECTION_SHIFT) & ((1u << detail::SECTION_BITS) - 1)];
  const std::uint64_t idx = pfn - s.start_pfn;
  if (PMPAGE_UNLIKELY(idx >= detail::section_pages(s))) return detail::report_bad_pfn(pfn);
  return s.vmemmap + idx;
}

/// The pfn of a descriptor. A pointer that is no descriptor of an open pool is misuse (returns 0).
inline pfn_t page_to_pfn(const page* p) noexcept {
  const detail::section& s = detail::section_of(p);
  const std::uint64_t idx = detail::index_of(p);
  if (PMPAGE_UNLIKELY(idx >= detail::section_pages(s))) return detail::report_bad_page(p);
  return s.start_pfn + idx;
}

/// The 4 KiB of the mapping that page p describes.
inline void* page_address(const page* p) noexcept {
  const detail::section& s = detail::section_of(p);
  const std::uint64_t idx = detail::index_of(p);
  if (PMPAGE_UNLIKELY(idx >= detail::section_pages(s))) {
    detail::report_bad_page(p);
    return nullptr;
  }
  return s.data + (idx << PAGE_SHIFT);
}

/// The descriptor of the page containing addr, or nullptr if addr is outside every open pool's
/// data area (not misuse: this is how callers ask "is this pool memory?").
inline page* virt_to_page(const void* addr) noexcept {
  const auto a = reinterpret_cast<std::uintptr_t>(addr);
  const detail::section& s = detail::g_data_sections[(a >> detail::DATA_GRANULE_SHIFT) & (detail::DATA_GRANULES - 1)];
  const std::uintptr_t off = a - reinterpret_cast<std::uintptr_t>(s.data);
  // An empty entry has nr_pages 0; an address above 2^47 fails the range check of whatever
  // entry its masked granule selects.
  if (off >= (detail::section_pages(s) << PAGE_SHIFT)) return nullptr;
  return s.vmemmap + (off >> PAGE_SHIFT);
}

/// True iff addr lies in the data area of an open pool (virt_to_page would find its page).
/// Kernel: virt_addr_valid.
inline bool virt_addr_valid(const void* addr) noexcept { return virt_to_page(addr) != nullptr; }

// ---------------------------------------------------------------------------------------------
// Compound pages
// ---------------------------------------------------------------------------------------------

/// The head page of p's compound page; p itself for order-0 and free pages.
inline page* compound_head(page* p) noexcept {
  detail::page_location loc;
  if (PMPAGE_UNLIKELY(!detail::locate(p, loc))) return nullptr;
  if (PMPAGE_LIKELY(!(loc.rflags & PG_region_special)))
    return (loc.rflags & PG_head) ? loc.sec->vmemmap + (loc.index & ~std::uint64_t{HPAGE_PMD_NR - 1}) : p;
  if (loc.rflags & PG_split) {
    return detail::linked_head(p, detail::load_compound_head(p));
  }
  return loc.sec->vmemmap + ((std::uint64_t{detail::load_head_index(loc.region)} << HPAGE_PMD_ORDER) - loc.sec->base_index);
}

/// True iff p is the head of a compound page (order >= 1). False for order-0 pages, tails, free
/// pages, and an invalid p (misuse, reported). Kernel: PageHead.
inline bool PageHead(page* p) noexcept {
  detail::page_location loc;
  if (PMPAGE_UNLIKELY(!detail::locate(p, loc))) return false;
  if (loc.rflags & PG_split) return p->flags_.load(std::memory_order_acquire) & PG_head;
  if (loc.rflags & PG_region_tail) return false;
  return (loc.rflags & PG_head) && (loc.index & (HPAGE_PMD_NR - 1)) == 0;
}

/// True iff p is a tail of a compound page (any page of it but the head). False for an invalid p
/// (misuse, reported). Kernel: PageTail.
inline bool PageTail(page* p) noexcept {
  detail::page_location loc;
  if (PMPAGE_UNLIKELY(!detail::locate(p, loc))) return false;
  if (loc.rflags & PG_split) return detail::load_compound_head(p) & 1;
  if (loc.rflags & PG_region_tail) return true;
  return (loc.rflags & PG_head) && (loc.index & (HPAGE_PMD_NR - 1)) != 0;
}

/// PageHead(p) || PageTail(p): p is part of an allocation of order >= 1. Kernel: PageCompound.
inline bool PageCompound(page* p) noexcept { return PageHead(p) || PageTail(p); }

/// Order of a compound head; 0 for order-0 pages and for tails (as in the kernel).
inline unsigned compound_order(page* p) noexcept {
  return PageHead(p) ? detail::load_order(detail::state_holder(p)) : 0;
}

/// True iff p's 2 MiB region has its 4 KiB descriptors materialised.
inline bool PageSplit(page* p) noexcept {
  detail::page_location loc;
  return detail::locate(p, loc) && (loc.rflags & PG_split);
}

// ---------------------------------------------------------------------------------------------
// References (act on the compound head)
// ---------------------------------------------------------------------------------------------

/// The reference count of p's compound page (the head's): 0 for a free page, >= 1 for an
/// allocated one (a slot-owned page counts its slot's reference). A snapshot: other threads may
/// change it at once. 0 for an invalid p (misuse, reported). Kernel: page_count.
inline int page_count(page* p) noexcept {
  page* h = detail::state_holder(p);
  return h ? h->refcount_.load(std::memory_order_relaxed) : 0;
}

/// Takes a reference. The page must already be referenced (count > 0), and the count must be
/// below PAGE_REF_MAX (it saturates instead of wrapping): misuse otherwise, the count unchanged.
inline void get_page(page* p) noexcept {
  page* h = detail::state_holder(p);
  if (PMPAGE_UNLIKELY(!h)) return;
  const int old = h->refcount_.fetch_add(1, std::memory_order_relaxed);
  // Concurrent increments past the limit are each undone: the count can exceed PAGE_REF_MAX by at
  // most the number of racing threads, never reach INT_MAX.
  if (PMPAGE_UNLIKELY(old <= 0 || old >= PAGE_REF_MAX)) detail::report_refcount_misuse(p, h, old, true);
}

/// Takes a reference unless the count is zero (the page is free or being freed) or saturated
/// (PAGE_REF_MAX; the kernel's folio_try_get refuses near overflow the same way).
inline bool get_page_unless_zero(page* p) noexcept {
  page* h = detail::state_holder(p);
  if (PMPAGE_UNLIKELY(!h)) return false;
  int c = h->refcount_.load(std::memory_order_relaxed);
  do {
    if (c <= 0 || c >= PAGE_REF_MAX) return false;
  } while (!h->refcount_.compare_exchange_weak(c, c + 1, std::memory_order_acquire,
                                               std::memory_order_relaxed));
  return true;
}

/// Drops a reference; the last one frees the whole compound page, durably. The last reference of
/// a slot-owned page (alloc_pages_to) belongs to its slot: dropping it here is misuse (reported,
/// the count stays 1); free_pages_from(slot) frees it. Unless that slot is void (in free memory,
/// or no longer naming the page): then the ownership is dropped and the page freed. So is dropping the last reference of a
/// page of a read-only pool (reported; the page keeps it).
inline void put_page(page* p) noexcept {
  page* h = detail::state_holder(p);
  if (PMPAGE_UNLIKELY(!h)) return;
  if (PMPAGE_UNLIKELY(detail::refuse_slot_reference(p, h))) return;
  const int old = h->refcount_.fetch_sub(1, std::memory_order_acq_rel);
  if (PMPAGE_LIKELY(old > 1)) return;
  if (old == 1)
    detail::release_compound(p, h);
  else
    detail::report_refcount_misuse(p, h, old, false);
}

/// The kernel's __free_pages: drops the caller's reference to the compound page of `order` whose
/// head is p; frees it when that was the last one. Wrong order or a non-head is misuse, and so is
/// freeing a page of a read-only pool (the reference stays).
PMPAGE_API void free_pages(page* p, unsigned order) noexcept;

/// The NUMA node of p's memory: the pool's node when it has one (pool::numa_node(): a bound
/// volatile pool, device DAX), else where the kernel has placed p's memory (a query through
/// libnuma, a system call: slow); -1 (the kernel's NUMA_NO_NODE) when p's memory is not backed
/// yet or the kernel cannot tell, and for an invalid p (misuse, reported). Thread-safe.
/// Kernel: page_to_nid().
PMPAGE_API int page_to_nid(const page* p) noexcept;

/// Turns an order-9 page whose count is exactly 1 into 512 order-0 pages, each allocated with
/// count 1. Durable (2 fences). Returns 0; -EBUSY if the count is not 1, if the page is locked
/// (the split takes the page lock itself, so a lock holder never sees its lock move; the kernel
/// instead requires the caller to hold it), or if the page is slot-owned (use
/// split_huge_page_to); -EINVAL if p is not an order-9 head; -EROFS in a read-only pool (misuse,
/// reported).
PMPAGE_API int split_huge_page(page* p) noexcept;

/// split_huge_page of a slot-owned order-9 page: slots[0] must be the slot that owns p (it holds
/// p's pfn) and slots[1..511] must be empty; afterwards slots[i] owns subpage i (slots[i] = pfn + i),
/// crash-atomically (2 fences). slots must be 512 consecutive slots in the pool's root or data
/// area. Returns 0, -EBUSY (count not 1, or locked), -EINVAL (misuse, reported), -EROFS (a
/// read-only pool: misuse, reported).
PMPAGE_API int split_huge_page_to(page* p, pfn_t* slots) noexcept;

// ---------------------------------------------------------------------------------------------
// Flags and private data (act on the compound head; volatile, cleared when the pool opens)
// ---------------------------------------------------------------------------------------------

/// Takes the page lock of p's compound page if it is free: true when taken (acquire), false when
/// another holder has it, and for an invalid p (misuse, reported). Never sleeps. Kernel:
/// trylock_page.
inline bool trylock_page(page* p) noexcept {
  page* h = detail::state_holder(p);
  return h && !(h->flags_.fetch_or(PG_locked, std::memory_order_acquire) & PG_locked);
}

/// Sleeping lock: waits (futex) while another thread holds it.
inline void lock_page(page* p) noexcept {
  page* h = detail::state_holder(p);
  if (PMPAGE_UNLIKELY(!h)) return;
  if (PMPAGE_LIKELY(!(h->flags_.fetch_or(PG_locked, std::memory_order_acquire) & PG_locked))) return;
  detail::lock_page_slow(p);
}

/// Releases the page lock (release) and wakes a lock_page() sleeper. Unlocking a page that is not
/// locked is misuse (reported). Any thread may unlock (the lock has no owner, as in the kernel).
/// Kernel: unlock_page.
inline void unlock_page(page* p) noexcept {
  page* h = detail::state_holder(p);
  if (PMPAGE_UNLIKELY(!h)) return;
  const std::uint32_t old = h->flags_.fetch_and(~(PG_locked | PG_waiters), std::memory_order_release);
  if (PMPAGE_UNLIKELY(!(old & PG_locked))) detail::report_unlock_misuse(p);
  if (old & PG_waiters) detail::wake_page_waiters(h);
}

namespace detail {
inline bool test_flag(page* p, std::uint32_t bit) noexcept {
  page* h = state_holder(p);
  return h && (h->flags_.load(std::memory_order_acquire) & bit);
}
inline void set_flag(page* p, std::uint32_t bit) noexcept {
  if (page* h = state_holder(p)) h->flags_.fetch_or(bit, std::memory_order_release);
}
inline bool test_clear_flag(page* p, std::uint32_t bit) noexcept {
  page* h = state_holder(p);
  return h && (h->flags_.fetch_and(~bit, std::memory_order_acq_rel) & bit);
}
/// One atomic read-modify-write: of racing callers exactly one sees the bit clear. A pointer that
/// is no descriptor (misuse, reported) answers "already set", so no caller acts on it.
inline bool test_set_flag(page* p, std::uint32_t bit) noexcept {
  page* h = state_holder(p);
  return !h || (h->flags_.fetch_or(bit, std::memory_order_acq_rel) & bit);
}
}  // namespace detail

/// True while someone holds the page lock of p's compound page. Kernel: PageLocked.
inline bool PageLocked(page* p) noexcept { return detail::test_flag(p, PG_locked); }
/// PG_dirty of p's compound page: the engine's own bit (the library only hands it on to the
/// pieces of a split); volatile: clear after allocation and at open. Thread-safe (atomic), as
/// are the other flag functions; false for an invalid p (misuse, reported). Kernel: PageDirty.
inline bool PageDirty(page* p) noexcept { return detail::test_flag(p, PG_dirty); }
/// Sets PG_dirty on the compound head (release). Kernel: SetPageDirty.
inline void SetPageDirty(page* p) noexcept { detail::set_flag(p, PG_dirty); }
/// Clears PG_dirty on the compound head. Kernel: ClearPageDirty.
inline void ClearPageDirty(page* p) noexcept { detail::test_clear_flag(p, PG_dirty); }
/// Clears PG_dirty and returns whether it was set, atomically: of threads racing to clean one
/// page exactly one gets true (and writes it back). Kernel: TestClearPageDirty.
inline bool TestClearPageDirty(page* p) noexcept { return detail::test_clear_flag(p, PG_dirty); }
/// Sets PG_dirty on the compound head and returns whether it was already set, atomically: of
/// threads racing to dirty one page exactly one gets false, so exactly one puts it on a dirty
/// list. Misuse (reported, returns true — "already dirty" — so a caller never queues an invalid
/// page): p is not a descriptor of an open pool. Thread-safe.
/// Volatile like every flag (not kept across close). Kernel: TestSetPageDirty.
inline bool TestSetPageDirty(page* p) noexcept { return detail::test_set_flag(p, PG_dirty); }
/// PG_uptodate of p's compound page: the engine's own bit, volatile, clear at open (as
/// PageDirty). Kernel: PageUptodate.
inline bool PageUptodate(page* p) noexcept { return detail::test_flag(p, PG_uptodate); }
/// Sets PG_uptodate on the compound head (release). Kernel: SetPageUptodate.
inline void SetPageUptodate(page* p) noexcept { detail::set_flag(p, PG_uptodate); }
/// Clears PG_uptodate on the compound head. Kernel: ClearPageUptodate.
inline void ClearPageUptodate(page* p) noexcept { detail::test_clear_flag(p, PG_uptodate); }
/// True when the allocation p belongs to has a page in a bad block (media error): reading that
/// page raises a machine check (SIGBUS). Set by the pool at open (open_options::bad_blocks and
/// libpmem2's list) and by split_huge_page on the pieces that hold a bad page; never by the
/// caller. pool::hwpoison_pages lists the bad pages themselves. The flag is on the compound head
/// (the folio, in the kernel's terms: PageHWPoison of any page of it answers for the whole).
/// Kernel: PageHWPoison.
inline bool PageHWPoison(page* p) noexcept { return detail::test_flag(p, PG_hwpoison); }

/// The private word of p's compound page (acquire): the engine's, e.g. a pointer to its buffer
/// header; 0 after allocation and at open (volatile), and for an invalid p (misuse, reported).
/// Kernel: page_private.
inline std::uintptr_t page_private(page* p) noexcept {
  page* h = detail::state_holder(p);
  return h ? h->private_.load(std::memory_order_acquire) : 0;
}
/// Sets the private word of p's compound page (release). Kernel: set_page_private.
inline void set_page_private(page* p, std::uintptr_t value) noexcept {
  if (page* h = detail::state_holder(p)) h->private_.store(value, std::memory_order_release);
}

}  // namespace pmpage
