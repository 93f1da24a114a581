// bench/flat_model.hpp — the baseline pmpage is measured against: the kernel's SPARSEMEM_VMEMMAP.
//
// One 64-byte descriptor per 4 KiB page of the whole device, in one dense array, every descriptor
// initialised when the device is "discovered" (model::init). Translation is what the kernel does on
// x86-64 (include/asm-generic/memory_model.h, arch/x86/include/asm/page_64.h):
//
//   pfn_to_page(pfn)   = vmemmap + pfn                      one add
//   page_to_pfn(page)  = page - vmemmap                     one sub + shift
//   page_address(page) = PAGE_OFFSET + (page_to_pfn(page) << PAGE_SHIFT)
//   virt_to_page(addr) = vmemmap + ((addr - PAGE_OFFSET) >> PAGE_SHIFT)
//
// `vmemmap` and `PAGE_OFFSET` are biased globals (vmemmap_base / page_offset_base under KASLR), so
// no translation checks a bound — exactly like the kernel, and the fastest the model can be.
// get_page/put_page follow include/linux/mm.h: page_folio() (one load of compound_head) then an
// atomic increment / decrement-and-test on the head's refcount.
#pragma once

#include <sys/mman.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <new>

namespace flat {

using pfn_t = std::uint64_t;
inline constexpr unsigned PAGE_SHIFT = 12;

/// The kernel's struct page, reduced to the fields its initialisation writes (64 bytes).
struct alignas(64) page {
  std::atomic<std::uint64_t> flags;     // page->flags: zone/node/section links + PG_* bits
  std::uintptr_t compound_head;         // head | 1 on tails (union with lru.next in the kernel)
  std::uintptr_t lru_prev;
  std::uintptr_t mapping;
  std::uint64_t index;
  std::uintptr_t private_;
  std::atomic<std::int32_t> mapcount;   // _mapcount, -1 = unmapped
  std::atomic<std::int32_t> refcount;   // _refcount
  std::uint64_t memcg_data;
};
static_assert(sizeof(page) == 64);

// Biased bases: vmemmap_base + (pfn << 6) is pfn's descriptor; data_base + (pfn << 12) its memory.
inline std::uintptr_t g_vmemmap_base = 0;
inline std::uintptr_t g_data_base = 0;

inline page* pfn_to_page(pfn_t pfn) noexcept {
  return reinterpret_cast<page*>(g_vmemmap_base + pfn * sizeof(page));
}
inline pfn_t page_to_pfn(const page* p) noexcept {
  return (reinterpret_cast<std::uintptr_t>(p) - g_vmemmap_base) / sizeof(page);
}
inline void* page_address(const page* p) noexcept {
  return reinterpret_cast<void*>(g_data_base + (page_to_pfn(p) << PAGE_SHIFT));
}
inline page* virt_to_page(const void* addr) noexcept {
  return pfn_to_page((reinterpret_cast<std::uintptr_t>(addr) - g_data_base) >> PAGE_SHIFT);
}

inline page* compound_head(page* p) noexcept {
  const std::uintptr_t h = __atomic_load_n(&p->compound_head, __ATOMIC_RELAXED);  // READ_ONCE
  return (h & 1) ? reinterpret_cast<page*>(h - 1) : p;
}

/// __folio_put: the benchmarks never drop a count to zero; kept out of line like the kernel's.
[[gnu::noinline, gnu::cold]] inline void free_compound_slow(page* head) noexcept {
  head->flags.fetch_or(1, std::memory_order_relaxed);
}

inline void get_page(page* p) noexcept {  // folio_get(page_folio(page))
  compound_head(p)->refcount.fetch_add(1, std::memory_order_relaxed);
}
inline void put_page(page* p) noexcept {  // folio_put: atomic_dec_and_test, full barrier
  page* h = compound_head(p);
  if (h->refcount.fetch_sub(1, std::memory_order_acq_rel) == 1) free_compound_slow(h);
}

/// A "device" of nr_pages 4 KiB pages starting at base_pfn, with its memmap.
class model {
 public:
  model() = default;
  model(const model&) = delete;
  model& operator=(const model&) = delete;
  ~model() { release(); }

  /// Reserves and faults in the memmap (64 B per page). Kept apart from init() so the timed part
  /// is only what the kernel's memmap_init does: its memmap comes from memblock, already mapped.
  bool allocate(std::uint64_t nr_pages) {
    release();
    bytes_ = nr_pages * sizeof(page);
    void* m = mmap(nullptr, bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) {
      bytes_ = 0;
      return false;
    }
    madvise(m, bytes_, MADV_HUGEPAGE);
    // Fault everything in (and let THP back it) so init() is charged no page faults.
    for (std::size_t off = 0; off < bytes_; off += 4096) static_cast<volatile char*>(m)[off] = 0;
    mem_ = static_cast<page*>(m);
    nr_pages_ = nr_pages;
    return true;
  }

  /// memmap_init: every descriptor written (__init_single_page), then the globals published.
  void init(pfn_t base_pfn, void* data) noexcept {
    const std::uint64_t links = (base_pfn >> 15) << 40;  // section/node/zone bits, as set_page_links
    for (std::uint64_t i = 0; i < nr_pages_; ++i) {
      page* p = mem_ + i;
      p->flags.store(links, std::memory_order_relaxed);
      p->compound_head = reinterpret_cast<std::uintptr_t>(p);  // INIT_LIST_HEAD(&page->lru)
      p->lru_prev = reinterpret_cast<std::uintptr_t>(p);
      p->mapping = 0;
      p->index = 0;
      p->private_ = 0;
      p->mapcount.store(-1, std::memory_order_relaxed);
      p->refcount.store(1, std::memory_order_relaxed);  // init_page_count
      p->memcg_data = 0;
    }
    base_pfn_ = base_pfn;
    data_ = data;
    publish();
  }

  /// Makes this model the one the translation functions use (the globals are process-wide, like
  /// the kernel's; another model's init() takes them over).
  void publish() const noexcept {
    g_vmemmap_base = reinterpret_cast<std::uintptr_t>(mem_) - base_pfn_ * sizeof(page);
    g_data_base = reinterpret_cast<std::uintptr_t>(data_) - (base_pfn_ << PAGE_SHIFT);
  }

  /// Marks [head, head + 2^order) a compound page: tails point at the head (prep_compound_page).
  void make_compound(pfn_t head_pfn, unsigned order) noexcept {
    page* h = pfn_to_page(head_pfn);
    h->compound_head = 0;
    for (std::uint64_t i = 1; i < (std::uint64_t{1} << order); ++i)
      pfn_to_page(head_pfn + i)->compound_head = reinterpret_cast<std::uintptr_t>(h) | 1;
  }
  /// Order-0 pages: compound_head cleared (the lru list head aliases it in the kernel).
  void make_order0(pfn_t pfn) noexcept { pfn_to_page(pfn)->compound_head = 0; }

  void release() noexcept {
    if (mem_) munmap(mem_, bytes_);
    mem_ = nullptr;
    bytes_ = 0;
    nr_pages_ = 0;
  }

  std::uint64_t dram_bytes() const noexcept { return bytes_; }
  std::uint64_t nr_pages() const noexcept { return nr_pages_; }
  pfn_t base_pfn() const noexcept { return base_pfn_; }

 private:
  page* mem_ = nullptr;
  std::size_t bytes_ = 0;
  std::uint64_t nr_pages_ = 0;
  pfn_t base_pfn_ = 0;
  void* data_ = nullptr;
};

}  // namespace flat
