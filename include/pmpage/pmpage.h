/** \file
 * pmpage/pmpage.h — the C API of pmpage (C11; includable from C++).
 *
 * Every operation of the C++ API (<pmpage/pmpage.hpp>) under a pmpage_ prefix: pools, the
 * allocation calls, slot ownership, the root area, persistence, stats, checks, the allocation
 * walk, translation, references, compound pages, flags, the page lock, private data and the
 * misuse handler. docs/api.md ("C API") maps each name to its C++ and kernel counterpart.
 *
 * Errors, C's convention (PMDK's): a function returns NULL or a negative errno value (-EINVAL,
 * -EEXIST, ...) and sets errno; pmpage_errormsg() returns the last error's message of the
 * calling thread. A successful call does not clear the message. No C++ exception crosses this
 * interface. Caller mistakes (misuse: a double free, a bad pfn, ...) go to the misuse handler
 * (pmpage_set_misuse_handler); the default prints the message and aborts; if an installed
 * handler returns, the call does nothing and returns NULL / 0 / -EINVAL.
 *
 * Hot paths (translation, references, compound queries, flags, lock, private) are static
 * inline functions here, reading the library's section tables directly, as the C++ inline
 * functions of <pmpage/mm.hpp> do: they need GCC or Clang (`__atomic` builtins; any other compiler
 * stops at an `#error`). Everything else is an exported function of libpmpage.
 *
 * Thread safety: as the C++ API: every function may be called from any thread (pmpage_pool_check
 * is exact only when no other thread uses the pool; pmpage_pool_check_slots and
 * pmpage_pool_for_each_allocated see a snapshot).
 *
 * Link: pkg-config --cflags --libs pmpage, or CMake find_package(pmpage) and pmpage::pmpage.
 */
#ifndef PMPAGE_PMPAGE_H
#define PMPAGE_PMPAGE_H

#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#ifndef __cplusplus
#include <stdbool.h>
#endif

#if !defined(__GNUC__)
#error "<pmpage/pmpage.h> needs GCC or Clang (its inline functions use the __atomic builtins)"
#endif

#ifndef PMPAGE_API
#define PMPAGE_API __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
#define PMPAGE_C_STATIC_ASSERT(c, m) static_assert(c, m)
extern "C" {
#else
#define PMPAGE_C_STATIC_ASSERT(c, m) _Static_assert(c, m)
#endif

/* ---- types and constants ---------------------------------------------------------------------- */

/** A page frame number: the pool's pfn base + page index; never 0; stable across close and reopen. */
typedef uint64_t pmpage_pfn_t;
/** An open pool (pmpage::pool). Opaque. */
typedef struct pmpage_pool pmpage_pool;
/** A page descriptor (the kernel's struct page, pmpage::page). Opaque: use the functions. */
struct pmpage_page;
/** Allocation flags (the kernel's gfp_t). */
typedef unsigned pmpage_gfp_t;

/** pmpage::PAGE_SHIFT: log2 of PMPAGE_PAGE_SIZE. */
#define PMPAGE_PAGE_SHIFT 12
/** pmpage::PAGE_SIZE: bytes of a page (4 KiB); a page of order k is PMPAGE_PAGE_SIZE << k bytes. */
#define PMPAGE_PAGE_SIZE ((size_t)1 << PMPAGE_PAGE_SHIFT)
/** pmpage::HPAGE_PMD_ORDER: the order of a 2 MiB page, which is also a region of the pool. */
#define PMPAGE_HPAGE_PMD_ORDER 9
/** pmpage::HPAGE_PMD_NR: pages in a 2 MiB page or region (512). */
#define PMPAGE_HPAGE_PMD_NR ((size_t)1 << PMPAGE_HPAGE_PMD_ORDER)
/** pmpage::HPAGE_PMD_SIZE: bytes of a 2 MiB page or region. */
#define PMPAGE_HPAGE_PMD_SIZE (PMPAGE_PAGE_SIZE << PMPAGE_HPAGE_PMD_ORDER)
/** pmpage::MAX_PAGE_ORDER: the largest order (1 GiB); a larger one is misuse. */
#define PMPAGE_MAX_PAGE_ORDER 18
/** pmpage::GFP_DEFAULT: no allocation modifier. */
#define PMPAGE_GFP_DEFAULT 0u
/** pmpage::GFP_ZERO (the kernel's `__GFP_ZERO`): the pages are zeroed, durably, inside the
 *  allocation's own fence. */
#define PMPAGE_GFP_ZERO 0x100u
/** pmpage::PAGE_REF_MAX: the largest reference count; a get beyond it is misuse (count unchanged). */
#define PMPAGE_PAGE_REF_MAX (1 << 30)
/** pmpage::MAX_OPEN_POOLS: pools open at once in one process (one more: EMFILE). */
#define PMPAGE_MAX_OPEN_POOLS 4096u
/** pmpage::MIN_POOL_SIZE: the smallest pool in bytes (4 MiB with the default root area). */
#define PMPAGE_MIN_POOL_SIZE ((uint64_t)4 << 20)
/** pmpage::MAX_POOL_PAGES: the largest data area in pages (16 TiB); the rest of a larger file is unused. */
#define PMPAGE_MAX_POOL_PAGES ((uint64_t)1 << 32)
/** pmpage::MAX_ROOT_SIZE: the largest root area in bytes (1 GiB; more: -EINVAL). */
#define PMPAGE_MAX_ROOT_SIZE ((uint64_t)1 << 30)
/** The error of pmpage_pool_open on a file whose pmpage_pool_create was interrupted. */
#define PMPAGE_ERR_CREATE_INTERRUPTED ECANCELED

/* ---- errors and misuse ------------------------------------------------------------------------ */

/** The message of the calling thread's last error ("" if none yet). Every call that fails sets
 *  its own, with errno: a NULL or negative errno result, and an allocation that finds no room
 *  (NULL or a short count, errno ENOMEM, "pmpage_alloc_pages...: no free extent of order k").
 *  A misused call's message is its misuse report, whichever misuse handler is installed; the
 *  other messages start with the C function's name (pmpage_pool_check and
 *  pmpage_pool_check_slots: the problems they found). Successful calls do not clear it. The
 *  pointer stays valid until the thread's next pmpage call. */
PMPAGE_API const char* pmpage_errormsg(void);

/** A misuse handler: message describes the caller's mistake; ctx is the pointer given to
 *  pmpage_set_misuse_handler. It may return (the misused call then does nothing). */
typedef void (*pmpage_misuse_handler)(const char* message, void* ctx);
/** Installs handler with ctx (NULL restores the default: print and abort) for the whole
 *  process, C++ callers included (it replaces pmpage::set_misuse_handler's handler). */
PMPAGE_API void pmpage_set_misuse_handler(pmpage_misuse_handler handler, void* ctx);

/* ---- pools ------------------------------------------------------------------------------------ */

/** Options of pmpage_pool_create. Always fill with pmpage_pool_options_init first: later
 *  versions add fields in place of reserved words, where 0 means the new field's default, so a
 *  program compiled against this header keeps working. Non-zero reserved words are refused
 *  (-EINVAL). */
struct pmpage_pool_options {
  uint64_t size;      /**< bytes of the pool file (0: the existing file's size); ignored for devices */
  uint64_t root_size; /**< bytes of the persistent root area (4 KiB .. PMPAGE_MAX_ROOT_SIZE) */
  int overwrite;      /**< format an existing pool or foreign file (else -EEXIST) */
  int preallocate;    /**< posix_fallocate the file */
  unsigned mode;      /**< file mode of a new file (0600) */
  unsigned reserved0_; /**< zero (pmpage_pool_options_init) */
  uint64_t max_size;  /**< bytes the pool may grow to (pool::options::max_size); 0: no room to grow */
  unsigned reserved_[8]; /**< zero (pmpage_pool_options_init): room for later fields */
};
PMPAGE_C_STATIC_ASSERT(sizeof(struct pmpage_pool_options) == 72, "pmpage_pool_options is ABI");

/** Fills opts with the defaults: size 0, root_size 4096, overwrite 0, preallocate 0, mode 0600,
 *  max_size 0. */
PMPAGE_API void pmpage_pool_options_init(struct pmpage_pool_options* opts);
/** pmpage::pool::create. opts NULL = defaults. NULL on failure (errno, pmpage_errormsg()):
 *  ENOENT, EEXIST, EINVAL (too small, bad options), EBUSY (open, or being created), EMFILE, ... */
PMPAGE_API pmpage_pool* pmpage_pool_create(const char* path, const struct pmpage_pool_options* opts);
/** pmpage::pool::open: verifies, recovers. NULL on failure (errno, pmpage_errormsg()): ENOENT,
 *  EINVAL (not a pool, damaged), PMPAGE_ERR_CREATE_INTERRUPTED, EBUSY (already open), ... */
PMPAGE_API pmpage_pool* pmpage_pool_open(const char* path);
/** pmpage::pool::open with open_options::read_only (docs/api.md "Read-only open"): nothing is
 *  written; every mutating call is misuse. NULL on failure as pmpage_pool_open (also EROFS, EBUSY
 *  while a writer has it open). */
PMPAGE_API pmpage_pool* pmpage_pool_open_read_only(const char* path);
/** pmpage::pool::volatile_options::huge_pages: base pages, transparent huge pages, or hugetlb. */
enum pmpage_huge_pages { PMPAGE_HUGE_NONE = 0, PMPAGE_HUGE_THP = 1, PMPAGE_HUGE_HUGETLB = 2 };
/** pmpage::pool::volatile_options (docs/api.md "Volatile pools"). Fill with
 *  pmpage_volatile_options_init, then set fields; reserved words must stay zero. */
struct pmpage_volatile_options {
  uint64_t size;          /**< bytes of pages, a multiple of 2 MiB (0 with a backing: all of it) */
  uint64_t root_size;     /**< bytes of the root area (DRAM; 4 KiB .. PMPAGE_MAX_ROOT_SIZE) */
  const char* backing;    /**< NULL: anonymous memory; else a file, "/proc/self/fd/N" (memfd), /dev/daxX.Y */
  int huge;               /**< enum pmpage_huge_pages */
  int require_huge_pages; /**< fail with ENOMEM instead of falling back */
  int numa_node;          /**< bind the pages to this node (mbind); -1: no binding */
  int overwrite;          /**< use a backing that holds a persistent pool */
  int populate;           /**< pre-fault every page at create (volatile_options::populate) */
  unsigned reserved_[9];   /**< zero (pmpage_volatile_options_init): room for later fields */
};
PMPAGE_C_STATIC_ASSERT(sizeof(struct pmpage_volatile_options) == 80, "pmpage_volatile_options is ABI");
/** Fills opts with the defaults: size 0, root_size 4096, backing NULL, PMPAGE_HUGE_NONE, numa_node -1,
 *  populate 0. */
PMPAGE_API void pmpage_volatile_options_init(struct pmpage_volatile_options* opts);
/** pmpage::pool::create_volatile: a pool whose allocator state lives in DRAM, with no flush, fence
 *  or intent; its pages are gone at close. opts must not be NULL (anonymous memory needs a size).
 *  NULL on failure (errno, pmpage_errormsg()): EINVAL (size, node), ENOENT, EBUSY (backing in use),
 *  EEXIST (backing holds a persistent pool), ENOMEM. */
PMPAGE_API pmpage_pool* pmpage_pool_create_volatile(const struct pmpage_volatile_options* opts);
/** 1 for a volatile pool, 0 for a persistent one; -EINVAL for NULL (misuse). */
PMPAGE_API int pmpage_pool_is_volatile(const pmpage_pool* pool);
/** pmpage::pool::numa_node: the node all the pool's pages are on, or -1 (also for NULL: misuse). */
PMPAGE_API int pmpage_pool_numa_node(const pmpage_pool* pool);
/** pmpage::pool::memory_description: one line (valid until close; NULL for NULL: misuse). */
PMPAGE_API const char* pmpage_pool_memory_description(const pmpage_pool* pool);
/** The kernel's page_to_nid: the NUMA node of the page's memory, -1 if unknown or not backed yet. */
PMPAGE_API int pmpage_page_to_nid(const struct pmpage_page* page);

/** A bad block (media error) of a pool's file or device: pmpage::bad_block (docs/api.md "Bad blocks"). */
struct pmpage_bad_block {
  uint64_t offset; /**< bytes from the start of the file or device */
  uint64_t length; /**< bytes; not 0 */
};
enum {
  PMPAGE_OPEN_READ_ONLY = 1,             /**< open_options::read_only */
  PMPAGE_OPEN_NO_DEVICE_BAD_BLOCKS = 2,  /**< open_options::device_bad_blocks = false */
};
/** pmpage::pool::open with open_options::bad_blocks = bad[0..n) (bad may be NULL when n is 0) and
 *  `flags` (PMPAGE_OPEN_*; other bits: EINVAL). NULL on failure as pmpage_pool_open, also EIO (a
 *  bad block in the pool's metadata: the message names the range and the structure). */
PMPAGE_API pmpage_pool* pmpage_pool_open_bad_blocks(const char* path, const struct pmpage_bad_block* bad, size_t n,
                                                    unsigned flags);
/** pmpage::hwpoison_page: an allocated page in a bad block. */
struct pmpage_hwpoison_page {
  pmpage_pfn_t pfn;   /**< the bad page */
  pmpage_pfn_t head;  /**< the head of its allocation (which carries PG_hwpoison) */
  unsigned order;     /**< the allocation's order */
  unsigned reserved_;  /**< zero */
};
/** pool::hwpoison_pages(): fills out[0..min(n, count)) by pfn and returns the count (out may be
 *  NULL when n is 0); 0 for NULL pool (misuse). */
PMPAGE_API size_t pmpage_pool_hwpoison_pages(const pmpage_pool* pool, struct pmpage_hwpoison_page* out, size_t n);
/** pool::clear_bad_block: zeroes [offset, offset + length) through libpmem2, only inside a bad
 *  block libpmem2 reports, with the pool closed everywhere. 0, or -errno (pmpage_errormsg()):
 *  -EINVAL (not a reported bad block: nothing written), -EBUSY (the pool is open), -EIO. */
PMPAGE_API int pmpage_clear_bad_block(const char* path, uint64_t offset, uint64_t length);

/** pmpage::pool::grow(path, new_size): grows the closed pool at path in place to new_size bytes
 *  (whole 2 MiB regions, up to the capacity chosen at create with max_size; docs/api.md "Growing
 *  a pool"). Crash-atomic. 0, or -errno (pmpage_errormsg()): -EINVAL (not larger, no whole
 *  region added, beyond the capacity, or created without room to grow), -ENOTSUP (device DAX),
 *  -EBUSY (the pool is open), or the errno of extending the file. */
PMPAGE_API int pmpage_pool_grow_closed(const char* path, uint64_t new_size);
/** pmpage::pool::grow(new_size) on an open pool (created with max_size): grows it in place;
 *  nothing moves, the new regions are allocatable when it returns. 0, or -errno as
 *  pmpage_pool_grow_closed, also -ENOTSUP (volatile pool), -EROFS (read-only pool: misuse),
 *  -EINVAL for NULL (misuse). Thread-safe. */
PMPAGE_API int pmpage_pool_grow(pmpage_pool* pool, uint64_t new_size);

/** 1 for a pool opened read-only, 0 otherwise; -EINVAL for NULL (misuse). */
PMPAGE_API int pmpage_pool_is_read_only(const pmpage_pool* pool);
/** Closes and frees the pool; every page and pfn of it becomes invalid. NULL is a no-op. Returns 0,
 *  or the pool's write-back error as -errno (errno set; the pool is closed and freed either way):
 *  what the pool made durable, up to its final fence at close, may not be. */
PMPAGE_API int pmpage_pool_close(pmpage_pool* pool);

/** pool::start_pfn: the pool's first pfn, its pfn base (its identity). */
PMPAGE_API pmpage_pfn_t pmpage_pool_start_pfn(const pmpage_pool* pool);
/** pool::end_pfn: one past the pool's last pfn. */
PMPAGE_API pmpage_pfn_t pmpage_pool_end_pfn(const pmpage_pool* pool);
/** The persistent root area (zeroed at create); *size (if size is not NULL) gets its length. */
PMPAGE_API void* pmpage_pool_root(const pmpage_pool* pool, size_t* size);
/** The pool's path (valid until close). */
PMPAGE_API const char* pmpage_pool_path(const pmpage_pool* pool);
/** 1 when flushes reach the media directly (pmem), 0 when msync is used; -EINVAL for NULL. */
PMPAGE_API int pmpage_pool_is_pmem(const pmpage_pool* pool);
/** pool::store_granularity (libpmem2's terms): how the pool's stores become durable. */
enum pmpage_granularity {
  PMPAGE_GRANULARITY_BYTE = 0,       /**< eADR / CXL GPF: fences only, no flush */
  PMPAGE_GRANULARITY_CACHE_LINE = 1, /**< clwb + sfence */
  PMPAGE_GRANULARITY_PAGE = 2        /**< page cache: msync */
};
/** One of PMPAGE_GRANULARITY_*; -EINVAL for NULL (misuse). */
PMPAGE_API int pmpage_pool_granularity(const pmpage_pool* pool);
/** The mapping of the whole device; *length (if not NULL) gets its length. */
PMPAGE_API void* pmpage_pool_base(const pmpage_pool* pool, size_t* length);

/** flush + drain of [addr, addr + len). drain completes the calling thread's flushes only.
 *  persist and drain return 0 when what they cover is durable; -errno (errno set, message in
 *  pmpage_errormsg) when the pool has a write-back error (pmpage_pool_writeback_error): the data
 *  may not be durable; -EINVAL / -EROFS on misuse. */
PMPAGE_API int pmpage_pool_persist(const pmpage_pool* pool, const void* addr, size_t len);
/** pool::flush: starts writing back [addr, addr + len); durable after this thread's next drain. */
PMPAGE_API void pmpage_pool_flush(const pmpage_pool* pool, const void* addr, size_t len);
/** pool::drain: the fence for the calling thread's flushes; returns as pmpage_pool_persist. */
PMPAGE_API int pmpage_pool_drain(const pmpage_pool* pool);
/** pool::writeback_error: 0 while every fence of the pool made its writes durable; else -errno of
 *  the first write-back failure (-EIO, -ENOSPC: msync failed on a pool file that is not DAX),
 *  latched until the pool is closed; every call that makes something durable fails with it
 *  meanwhile. -EINVAL for NULL (misuse). */
PMPAGE_API int pmpage_pool_writeback_error(const pmpage_pool* pool);

/** pmpage::pool_stats; reserved words are zero (later versions fill them). One snapshot under the
 *  allocator's locks: while other threads run, free_pages <= total_pages, cpu_cached_free_pages
 *  <= free_pages, free_regions + split_regions <= total_regions (all bounds: pmpage/pool.hpp);
 *  free_pages may lag below the truth by frees still running. */
struct pmpage_pool_stats {
  uint64_t total_pages;           /**< 4 KiB pages in the data area */
  uint64_t free_pages;            /**< of which free */
  uint64_t total_regions;         /**< 2 MiB regions in the data area */
  uint64_t free_regions;          /**< regions wholly free and unsplit */
  uint64_t split_regions;         /**< regions whose pages are tracked 4 KiB at a time */
  uint64_t materialised_regions;  /**< split regions whose 4 KiB descriptors exist in DRAM */
  uint64_t descriptor_bytes;      /**< DRAM holding descriptors */
  uint64_t allocator_bytes;       /**< DRAM of the allocator's own indexes */
  uint64_t repaired_at_open;      /**< torn updates found and repaired by recovery */
  uint64_t orphaned_owners;       /**< owner records dropped because their slot no longer named the page */
  uint64_t cpu_cached_regions;    /**< split regions held by per-CPU caches */
  uint64_t cpu_cached_free_pages; /**< free pages inside them (counted in free_pages) */
  uint64_t empty_split_regions;   /**< split regions without allocation kept for a while (merge hysteresis) */
  uint64_t quarantined_pages; /**< bad blocks: free pages held out for this open */
  uint64_t hwpoison_pages;    /**< bad blocks: allocated pages in a bad block (PG_hwpoison) */
  uint64_t writeback_errno;   /**< 0, or the errno of the pool's latched write-back failure */
  uint64_t reserved_[8];      /**< zero: room for later counters */
};
PMPAGE_C_STATIC_ASSERT(sizeof(struct pmpage_pool_stats) == 192, "pmpage_pool_stats is ABI");
/** Fills *out; 0, or -EINVAL (misuse: NULL pool or out). */
PMPAGE_API int pmpage_pool_stats(const pmpage_pool* pool, struct pmpage_pool_stats* out);
/** pool::trim(): returns the number of regions merged. */
PMPAGE_API size_t pmpage_pool_trim(pmpage_pool* pool);
/** pool::check(): 0 when every invariant holds; -EUCLEAN with the first violation in
 *  pmpage_errormsg() otherwise. Exact only while no other thread uses the pool. */
PMPAGE_API int pmpage_pool_check(const pmpage_pool* pool);
/** pool::check_slots over the engine's complete list of n slots: 0 when clean; -EUCLEAN with
 *  every problem (one per line: unreferenced, dangling, shared, misowned) in pmpage_errormsg(). */
PMPAGE_API int pmpage_pool_check_slots(const pmpage_pool* pool, pmpage_pfn_t* const* slots, size_t n);
/** Calls fn(head, order, ctx) for every allocation (a snapshot: concurrent allocations may or may
 *  not be seen; fn must not allocate or free in this pool). 0, or -EINVAL (misuse). */
typedef void (*pmpage_walk_fn)(struct pmpage_page* head, unsigned order, void* ctx);
/** pool::for_each_allocated: see pmpage_walk_fn. */
PMPAGE_API int pmpage_pool_for_each_allocated(const pmpage_pool* pool, pmpage_walk_fn fn, void* ctx);

/* ---- allocation and slot ownership ------------------------------------------------------------ */

/** A naturally aligned compound page of order (0..18), count 1, durable; NULL when no free extent
 *  (errno ENOMEM) or on misuse (EINVAL). */
PMPAGE_API struct pmpage_page* pmpage_alloc_pages(pmpage_pool* pool, unsigned order);
/** pmpage_alloc_pages with allocation flags (PMPAGE_GFP_ZERO; unknown bits are misuse). */
PMPAGE_API struct pmpage_page* pmpage_alloc_pages_gfp(pmpage_pool* pool, unsigned order, pmpage_gfp_t gfp);
/** Up to n pages of order into out[]; returns how many (fewer than n: errno ENOMEM, no room). */
PMPAGE_API size_t pmpage_alloc_pages_bulk(pmpage_pool* pool, unsigned order, size_t n, struct pmpage_page** out);
/** pmpage_alloc_pages_bulk with allocation flags. */
PMPAGE_API size_t pmpage_alloc_pages_bulk_gfp(pmpage_pool* pool, unsigned order, size_t n, struct pmpage_page** out,
                                              pmpage_gfp_t gfp);
/** Allocates and stores the head pfn into the empty slot, crash-atomically; the slot owns it. */
PMPAGE_API struct pmpage_page* pmpage_alloc_pages_to(pmpage_pool* pool, unsigned order, pmpage_pfn_t* slot);
/** pmpage_alloc_pages_to with allocation flags. */
PMPAGE_API struct pmpage_page* pmpage_alloc_pages_to_gfp(pmpage_pool* pool, unsigned order, pmpage_pfn_t* slot,
                                                         pmpage_gfp_t gfp);
/** An engine's initialiser (pool::page_init): writes the page at addr (bytes = 4096 << order) and
 *  flushes what it wrote (pmpage_pool_flush); returns 0 to publish, anything else to refuse. */
typedef int (*pmpage_page_init_fn)(struct pmpage_page* head, void* addr, size_t bytes, void* arg);
/** pool::alloc_pages_to with an initialiser: allocate, fill and publish in 2 fences, the contents
 *  durable with the slot. NULL: no room (errno ENOMEM), the initialiser refused (errno -rc for a
 *  negative rc, else ECANCELED; nothing allocated), misuse (EINVAL), a write-back failure. */
PMPAGE_API struct pmpage_page* pmpage_alloc_pages_init_to(pmpage_pool* pool, unsigned order, pmpage_pfn_t* slot,
                                                          pmpage_gfp_t gfp, pmpage_page_init_fn init, void* arg);
/** pool::replace_pages: publishes a new page of order (init may be NULL) in the slot and frees the
 *  page the slot owned, crash-atomically, in 2 fences. NULL with errno: ENOMEM (no room), EBUSY
 *  (the old page has other references), EINVAL (misuse, reported), the initialiser's refusal, a
 *  write-back failure; nothing changed in each case. An empty slot: pmpage_alloc_pages_init_to. */
PMPAGE_API struct pmpage_page* pmpage_replace_pages(pmpage_pool* pool, pmpage_pfn_t* slot, unsigned order,
                                                    pmpage_gfp_t gfp, pmpage_page_init_fn init, void* arg);
/** Frees the page slot owns and clears the slot: 0 (also for an empty slot), -EBUSY, -EINVAL. */
PMPAGE_API int pmpage_free_pages_from(pmpage_pool* pool, pmpage_pfn_t* slot);
/** alloc_pages_to for n slots; returns how many were filled (slots[0..k)). */
PMPAGE_API size_t pmpage_alloc_pages_bulk_to(pmpage_pool* pool, unsigned order, pmpage_pfn_t* const* slots, size_t n);
/** pmpage_alloc_pages_bulk_to with allocation flags. */
PMPAGE_API size_t pmpage_alloc_pages_bulk_to_gfp(pmpage_pool* pool, unsigned order, pmpage_pfn_t* const* slots,
                                                 size_t n, pmpage_gfp_t gfp);
/** free_pages_from for n slots: 0, -EBUSY, -EINVAL (nothing changed). */
PMPAGE_API int pmpage_free_pages_bulk_from(pmpage_pool* pool, pmpage_pfn_t* const* slots, size_t n);
/** Moves the ownership of src's page to the empty slot dest: 0 or -EINVAL. */
PMPAGE_API int pmpage_move_pages_owner(pmpage_pool* pool, pmpage_pfn_t* src, pmpage_pfn_t* dest);
/** pool::adopt_pages: makes slot the owner of the unowned allocation it names (a repair tool's
 *  call: a page from pmpage_alloc_pages, or one whose owner record open dropped). The slot's value
 *  must be durable already; the page's count-1 reference becomes the slot's. 1 fence (order >= 9:
 *  2); crash-atomic. 0; -EBUSY (other references, or the page is locked; errno EBUSY); -EINVAL (misuse, reported: slot
 *  outside the pool or in a free page, empty, naming a free page, a tail or an owned page);
 *  -EROFS (read-only pool). */
PMPAGE_API int pmpage_adopt_pages(pmpage_pool* pool, pmpage_pfn_t* slot);

/** The kernel's __free_pages: drops the caller's reference to the compound page of order. */
PMPAGE_API void pmpage_free_pages(struct pmpage_page* page, unsigned order);
/** Order-9 head with count 1 -> 512 order-0 pages: 0, -EBUSY (other references, locked, or
 *  slot-owned), -EINVAL (not an order-9 head; not misuse unless p is no descriptor). */
PMPAGE_API int pmpage_split_huge_page(struct pmpage_page* page);
/** The split of a slot-owned order-9 page: slots[0] its owner, slots[1..511] empty. */
PMPAGE_API int pmpage_split_huge_page_to(struct pmpage_page* page, pmpage_pfn_t* slots);

/* ---- internal: the layout the inline functions below read ---------------------------------------
 * Not API: names and fields may change with the soname (docs/api.md "ABI and soname policy").
 * They describe pmpage::page and pmpage::detail::section (include/pmpage/page.hpp); src/c_api.cpp
 * pins every offset with static_assert. */

struct pmpage_internal_desc {
  uint32_t flags_;
  int32_t refcount_;
  uint8_t order_;
  uint8_t kind_;
  uint16_t alloc_aux_;
  uint32_t head_index_;
  uintptr_t compound_head_;
  uintptr_t private_;
  uint64_t alloc_state_;
  uint32_t list_next_;
  uint32_t list_prev_;
  uint64_t reserved_[2];
};
PMPAGE_C_STATIC_ASSERT(sizeof(struct pmpage_internal_desc) == 64, "a descriptor is one cache line");

struct pmpage_internal_section {
  struct pmpage_internal_desc* vmemmap;
  struct pmpage_internal_desc* regions;
  char* data;
  uint64_t nr_pages;
  uint64_t start_pfn;
  void* owner;
  uint64_t base_index;
  uint64_t reserved_;
};
PMPAGE_C_STATIC_ASSERT(sizeof(struct pmpage_internal_section) == 64, "section record");

enum {
  PMPAGE_INTERNAL_PG_LOCKED = 1u << 0,
  PMPAGE_INTERNAL_PG_WAITERS = 1u << 1,
  PMPAGE_INTERNAL_PG_DIRTY = 1u << 2,
  PMPAGE_INTERNAL_PG_UPTODATE = 1u << 3,
  PMPAGE_INTERNAL_PG_HEAD = 1u << 4,
  PMPAGE_INTERNAL_PG_HWPOISON = 1u << 5,
  PMPAGE_INTERNAL_PG_SPLIT = 1u << 16,
  PMPAGE_INTERNAL_PG_REGION_TAIL = 1u << 17,
  PMPAGE_INTERNAL_PG_REGION_LAZY = 1u << 18,
  PMPAGE_INTERNAL_PG_SLOT_OWNED = 1u << 19,
  PMPAGE_INTERNAL_PG_REGION_SPECIAL = (1u << 16) | (1u << 17) | (1u << 18),
  PMPAGE_INTERNAL_SECTION_SHIFT = 28,
  PMPAGE_INTERNAL_SECTION_BITS = 16,
  PMPAGE_INTERNAL_DESC_GRANULE_SHIFT = 32,
  PMPAGE_INTERNAL_DESC_GRANULES = 1 << (47 - 32),
  PMPAGE_INTERNAL_DATA_GRANULE_SHIFT = 30,
  PMPAGE_INTERNAL_DATA_GRANULES = 1 << (47 - 30)
};
#define PMPAGE_INTERNAL_DESC_GRANULE_NUMBER_MASK \
  ((uint64_t)(PMPAGE_INTERNAL_DESC_GRANULES - 1) << PMPAGE_INTERNAL_DESC_GRANULE_SHIFT)

/* The section tables (pmpage::detail::g_sections, g_desc_sections, g_data_sections). */
extern PMPAGE_API struct pmpage_internal_section pmpage_internal_sections[1u << PMPAGE_INTERNAL_SECTION_BITS];
extern PMPAGE_API struct pmpage_internal_section pmpage_internal_desc_sections[PMPAGE_INTERNAL_DESC_GRANULES];
extern PMPAGE_API struct pmpage_internal_section pmpage_internal_data_sections[PMPAGE_INTERNAL_DATA_GRANULES];

/* The slow paths (pmpage::detail::report_bad_pfn, ...): out of line, C linkage. */
/* pmpage_pfn_to_page's miss path: the overflow table of the section table (page.hpp), else misuse. */
PMPAGE_API struct pmpage_page* pmpage_internal_report_bad_pfn(pmpage_pfn_t pfn);
PMPAGE_API bool pmpage_internal_pfn_valid_slow(pmpage_pfn_t pfn);
PMPAGE_API pmpage_pfn_t pmpage_internal_report_bad_page(const struct pmpage_page* p);
PMPAGE_API void pmpage_internal_report_refcount_misuse(struct pmpage_page* p, struct pmpage_internal_desc* holder,
                                                       int old, int is_get);
PMPAGE_API void pmpage_internal_release_compound(struct pmpage_page* p, struct pmpage_internal_desc* holder);
PMPAGE_API void pmpage_internal_report_owned_put(struct pmpage_page* p, struct pmpage_internal_desc* holder);
PMPAGE_API void pmpage_internal_materialise_lazy_region(const struct pmpage_internal_section* s, uint64_t region);
PMPAGE_API void pmpage_internal_lock_page_slow(struct pmpage_page* p);
PMPAGE_API void pmpage_internal_wake_page_waiters(struct pmpage_internal_desc* holder);
PMPAGE_API void pmpage_internal_report_unlock_misuse(struct pmpage_page* p);

#define PMPAGE_INTERNAL_LIKELY(x) __builtin_expect(!!(x), 1)
#define PMPAGE_INTERNAL_UNLIKELY(x) __builtin_expect(!!(x), 0)
#define PMPAGE_INTERNAL_DESC(p) ((struct pmpage_internal_desc*)(uintptr_t)(p))

struct pmpage_internal_loc {
  const struct pmpage_internal_section* sec;
  uint64_t index;
  struct pmpage_internal_desc* region;
  uint32_t rflags;
};

/* An entry's nr_pages (pmpage::detail::section_pages): pool growth raises it while readers look. */
#define PMPAGE_INTERNAL_NR_PAGES(s) __atomic_load_n(&(s)->nr_pages, __ATOMIC_RELAXED)

static inline const struct pmpage_internal_section* pmpage_internal_section_of(const struct pmpage_page* p) {
  return &pmpage_internal_desc_sections[((uintptr_t)p >> PMPAGE_INTERNAL_DESC_GRANULE_SHIFT) &
                                        (PMPAGE_INTERNAL_DESC_GRANULES - 1)];
}
static inline uint64_t pmpage_internal_index_of(const struct pmpage_page* p) {
  return ((uint64_t)(uintptr_t)p & ~PMPAGE_INTERNAL_DESC_GRANULE_NUMBER_MASK) / sizeof(struct pmpage_internal_desc);
}

/* pmpage::detail::locate: false (misuse reported) when p is no descriptor of an open pool. */
static inline bool pmpage_internal_locate(const struct pmpage_page* p, struct pmpage_internal_loc* out) {
  const struct pmpage_internal_section* s = pmpage_internal_section_of(p);
  const uint64_t idx = pmpage_internal_index_of(p);
  struct pmpage_internal_desc* r;
  uint32_t f;
  if (PMPAGE_INTERNAL_UNLIKELY(idx >= PMPAGE_INTERNAL_NR_PAGES(s))) {
    pmpage_internal_report_bad_page(p);
    return false;
  }
  r = s->regions + (idx >> PMPAGE_HPAGE_PMD_ORDER);
  f = __atomic_load_n(&r->flags_, __ATOMIC_ACQUIRE);
  if (PMPAGE_INTERNAL_UNLIKELY(f & PMPAGE_INTERNAL_PG_REGION_LAZY)) {
    pmpage_internal_materialise_lazy_region(s, (s->base_index + idx) >> PMPAGE_HPAGE_PMD_ORDER);
    f = __atomic_load_n(&r->flags_, __ATOMIC_ACQUIRE);
  }
  out->sec = s;
  out->index = idx;
  out->region = r;
  out->rflags = f;
  return true;
}

static inline struct pmpage_internal_desc* pmpage_internal_holder_at(const struct pmpage_internal_loc* loc,
                                                                     const struct pmpage_page* p) {
  if (PMPAGE_INTERNAL_LIKELY(!(loc->rflags & PMPAGE_INTERNAL_PG_REGION_SPECIAL))) return loc->region;
  if (loc->rflags & PMPAGE_INTERNAL_PG_SPLIT) {
    /* A tail holds the distance back to its head in bytes, bit 0 set (pmpage::detail::linked_head). */
    const uintptr_t h = __atomic_load_n(&PMPAGE_INTERNAL_DESC(p)->compound_head_, __ATOMIC_RELAXED);
    return (h & 1) ? (struct pmpage_internal_desc*)((char*)PMPAGE_INTERNAL_DESC(p) - (h - 1)) : PMPAGE_INTERNAL_DESC(p);
  }
  return loc->sec->regions + (__atomic_load_n(&loc->region->head_index_, __ATOMIC_RELAXED) -
                              (loc->sec->base_index >> PMPAGE_HPAGE_PMD_ORDER));
}

/* pmpage::detail::state_holder: the descriptor with p's compound page's count, flags, private. */
static inline struct pmpage_internal_desc* pmpage_internal_state_holder(const struct pmpage_page* p) {
  struct pmpage_internal_loc loc;
  if (PMPAGE_INTERNAL_UNLIKELY(!pmpage_internal_locate(p, &loc))) return NULL;
  return pmpage_internal_holder_at(&loc, p);
}

/* ---- translation (inline) --------------------------------------------------------------------- */

/** True iff pfn belongs to the data area of an open pool. */
static inline bool pmpage_pfn_valid(pmpage_pfn_t pfn) {
  const struct pmpage_internal_section* s =
      &pmpage_internal_sections[(pfn >> PMPAGE_INTERNAL_SECTION_SHIFT) & ((1u << PMPAGE_INTERNAL_SECTION_BITS) - 1)];
  return pfn - s->start_pfn < PMPAGE_INTERNAL_NR_PAGES(s) || pmpage_internal_pfn_valid_slow(pfn);
}

/** The descriptor of pfn; an invalid pfn is misuse (NULL). */
static inline struct pmpage_page* pmpage_pfn_to_page(pmpage_pfn_t pfn) {
  const struct pmpage_internal_section* s =
      &pmpage_internal_sections[(pfn >> PMPAGE_INTERNAL_SECTION_SHIFT) & ((1u << PMPAGE_INTERNAL_SECTION_BITS) - 1)];
  const uint64_t idx = pfn - s->start_pfn;
  if (PMPAGE_INTERNAL_UNLIKELY(idx >= PMPAGE_INTERNAL_NR_PAGES(s))) return pmpage_internal_report_bad_pfn(pfn);
  return (struct pmpage_page*)(s->vmemmap + idx);
}

/** The pfn of a descriptor; a pointer that is no descriptor of an open pool is misuse (0). */
static inline pmpage_pfn_t pmpage_page_to_pfn(const struct pmpage_page* p) {
  const struct pmpage_internal_section* s = pmpage_internal_section_of(p);
  const uint64_t idx = pmpage_internal_index_of(p);
  if (PMPAGE_INTERNAL_UNLIKELY(idx >= PMPAGE_INTERNAL_NR_PAGES(s))) return pmpage_internal_report_bad_page(p);
  return s->start_pfn + idx;
}

/** The 4 KiB of the mapping that p describes; misuse (NULL) if p is no descriptor. */
static inline void* pmpage_page_address(const struct pmpage_page* p) {
  const struct pmpage_internal_section* s = pmpage_internal_section_of(p);
  const uint64_t idx = pmpage_internal_index_of(p);
  if (PMPAGE_INTERNAL_UNLIKELY(idx >= PMPAGE_INTERNAL_NR_PAGES(s))) {
    pmpage_internal_report_bad_page(p);
    return NULL;
  }
  return s->data + (idx << PMPAGE_PAGE_SHIFT);
}

/** The descriptor of the page containing addr; NULL (not misuse) outside every pool's data. */
static inline struct pmpage_page* pmpage_virt_to_page(const void* addr) {
  const uintptr_t a = (uintptr_t)addr;
  const struct pmpage_internal_section* s =
      &pmpage_internal_data_sections[(a >> PMPAGE_INTERNAL_DATA_GRANULE_SHIFT) & (PMPAGE_INTERNAL_DATA_GRANULES - 1)];
  const uintptr_t off = a - (uintptr_t)s->data;
  if (off >= (PMPAGE_INTERNAL_NR_PAGES(s) << PMPAGE_PAGE_SHIFT)) return NULL;
  return (struct pmpage_page*)(s->vmemmap + (off >> PMPAGE_PAGE_SHIFT));
}

/** pmpage::virt_addr_valid: addr lies in the data area of an open pool. */
static inline bool pmpage_virt_addr_valid(const void* addr) { return pmpage_virt_to_page(addr) != NULL; }

/* ---- compound pages (inline) ------------------------------------------------------------------ */

/** The head of p's compound page; p itself for order-0 and free pages; NULL on misuse. */
static inline struct pmpage_page* pmpage_compound_head(struct pmpage_page* p) {
  struct pmpage_internal_loc loc;
  if (PMPAGE_INTERNAL_UNLIKELY(!pmpage_internal_locate(p, &loc))) return NULL;
  if (PMPAGE_INTERNAL_LIKELY(!(loc.rflags & PMPAGE_INTERNAL_PG_REGION_SPECIAL)))
    return (loc.rflags & PMPAGE_INTERNAL_PG_HEAD)
               ? (struct pmpage_page*)(loc.sec->vmemmap + (loc.index & ~(uint64_t)(PMPAGE_HPAGE_PMD_NR - 1)))
               : p;
  if (loc.rflags & PMPAGE_INTERNAL_PG_SPLIT) {
    const uintptr_t h = __atomic_load_n(&PMPAGE_INTERNAL_DESC(p)->compound_head_, __ATOMIC_RELAXED);
    return (h & 1) ? (struct pmpage_page*)((char*)p - (h - 1)) : p;
  }
  return (struct pmpage_page*)(loc.sec->vmemmap +
                               (((uint64_t)__atomic_load_n(&loc.region->head_index_, __ATOMIC_RELAXED)
                                 << PMPAGE_HPAGE_PMD_ORDER) -
                                loc.sec->base_index));
}

/** pmpage::PageHead: p is the head of a compound page (order >= 1). */
static inline bool pmpage_PageHead(struct pmpage_page* p) {
  struct pmpage_internal_loc loc;
  if (PMPAGE_INTERNAL_UNLIKELY(!pmpage_internal_locate(p, &loc))) return false;
  if (loc.rflags & PMPAGE_INTERNAL_PG_SPLIT)
    return (__atomic_load_n(&PMPAGE_INTERNAL_DESC(p)->flags_, __ATOMIC_ACQUIRE) & PMPAGE_INTERNAL_PG_HEAD) != 0;
  if (loc.rflags & PMPAGE_INTERNAL_PG_REGION_TAIL) return false;
  return (loc.rflags & PMPAGE_INTERNAL_PG_HEAD) && (loc.index & (PMPAGE_HPAGE_PMD_NR - 1)) == 0;
}

/** pmpage::PageTail: p is a tail of a compound page. */
static inline bool pmpage_PageTail(struct pmpage_page* p) {
  struct pmpage_internal_loc loc;
  if (PMPAGE_INTERNAL_UNLIKELY(!pmpage_internal_locate(p, &loc))) return false;
  if (loc.rflags & PMPAGE_INTERNAL_PG_SPLIT)
    return (__atomic_load_n(&PMPAGE_INTERNAL_DESC(p)->compound_head_, __ATOMIC_RELAXED) & 1) != 0;
  if (loc.rflags & PMPAGE_INTERNAL_PG_REGION_TAIL) return true;
  return (loc.rflags & PMPAGE_INTERNAL_PG_HEAD) && (loc.index & (PMPAGE_HPAGE_PMD_NR - 1)) != 0;
}

/** pmpage::PageCompound: p is part of an allocation of order >= 1. */
static inline bool pmpage_PageCompound(struct pmpage_page* p) { return pmpage_PageHead(p) || pmpage_PageTail(p); }

/** Order of a compound head; 0 for order-0 pages and tails. */
static inline unsigned pmpage_compound_order(struct pmpage_page* p) {
  return pmpage_PageHead(p) ? __atomic_load_n(&pmpage_internal_state_holder(p)->order_, __ATOMIC_RELAXED) : 0u;
}

/** True iff p's 2 MiB region has its 4 KiB descriptors materialised (PG_split). */
static inline bool pmpage_PageSplit(struct pmpage_page* p) {
  struct pmpage_internal_loc loc;
  return pmpage_internal_locate(p, &loc) && (loc.rflags & PMPAGE_INTERNAL_PG_SPLIT);
}

/* ---- references (inline; act on the compound head) -------------------------------------------- */

/** pmpage::page_count: the reference count of p's compound page (0: free). */
static inline int pmpage_page_count(struct pmpage_page* p) {
  struct pmpage_internal_desc* h = pmpage_internal_state_holder(p);
  return h ? __atomic_load_n(&h->refcount_, __ATOMIC_RELAXED) : 0;
}

/** Takes a reference; count must be > 0 and below PMPAGE_PAGE_REF_MAX (else misuse). */
static inline void pmpage_get_page(struct pmpage_page* p) {
  struct pmpage_internal_desc* h = pmpage_internal_state_holder(p);
  int old;
  if (PMPAGE_INTERNAL_UNLIKELY(!h)) return;
  old = __atomic_fetch_add(&h->refcount_, 1, __ATOMIC_RELAXED);
  if (PMPAGE_INTERNAL_UNLIKELY(old <= 0 || old >= PMPAGE_PAGE_REF_MAX))
    pmpage_internal_report_refcount_misuse(p, h, old, 1);
}

/** Takes a reference unless the count is 0 or saturated. */
static inline bool pmpage_get_page_unless_zero(struct pmpage_page* p) {
  struct pmpage_internal_desc* h = pmpage_internal_state_holder(p);
  int c;
  if (PMPAGE_INTERNAL_UNLIKELY(!h)) return false;
  c = __atomic_load_n(&h->refcount_, __ATOMIC_RELAXED);
  do {
    if (c <= 0 || c >= PMPAGE_PAGE_REF_MAX) return false;
  } while (!__atomic_compare_exchange_n(&h->refcount_, &c, c + 1, true, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED));
  return true;
}

/** Drops a reference; the last one frees the compound page durably. A slot's reference is not
 *  the caller's to drop (misuse, count stays 1). */
static inline void pmpage_put_page(struct pmpage_page* p) {
  struct pmpage_internal_desc* h = pmpage_internal_state_holder(p);
  int old;
  if (PMPAGE_INTERNAL_UNLIKELY(!h)) return;
  if (PMPAGE_INTERNAL_UNLIKELY(__atomic_load_n(&h->refcount_, __ATOMIC_RELAXED) == 1 &&
                               (__atomic_load_n(&h->flags_, __ATOMIC_RELAXED) & PMPAGE_INTERNAL_PG_SLOT_OWNED))) {
    pmpage_internal_report_owned_put(p, h);
    return;
  }
  old = __atomic_fetch_sub(&h->refcount_, 1, __ATOMIC_ACQ_REL);
  if (PMPAGE_INTERNAL_LIKELY(old > 1)) return;
  if (old == 1)
    pmpage_internal_release_compound(p, h);
  else
    pmpage_internal_report_refcount_misuse(p, h, old, 0);
}

/* ---- flags, lock, private data (inline; act on the compound head; volatile) ------------------ */

/** pmpage::trylock_page: takes the page lock if free (true), never sleeps. */
static inline bool pmpage_trylock_page(struct pmpage_page* p) {
  struct pmpage_internal_desc* h = pmpage_internal_state_holder(p);
  return h && !(__atomic_fetch_or(&h->flags_, PMPAGE_INTERNAL_PG_LOCKED, __ATOMIC_ACQUIRE) & PMPAGE_INTERNAL_PG_LOCKED);
}

/** Sleeping lock (futex). */
static inline void pmpage_lock_page(struct pmpage_page* p) {
  struct pmpage_internal_desc* h = pmpage_internal_state_holder(p);
  if (PMPAGE_INTERNAL_UNLIKELY(!h)) return;
  if (PMPAGE_INTERNAL_LIKELY(
          !(__atomic_fetch_or(&h->flags_, PMPAGE_INTERNAL_PG_LOCKED, __ATOMIC_ACQUIRE) & PMPAGE_INTERNAL_PG_LOCKED)))
    return;
  pmpage_internal_lock_page_slow(p);
}

/** Unlocking an unlocked page is misuse. */
static inline void pmpage_unlock_page(struct pmpage_page* p) {
  struct pmpage_internal_desc* h = pmpage_internal_state_holder(p);
  uint32_t old;
  if (PMPAGE_INTERNAL_UNLIKELY(!h)) return;
  old = __atomic_fetch_and(&h->flags_, ~(uint32_t)(PMPAGE_INTERNAL_PG_LOCKED | PMPAGE_INTERNAL_PG_WAITERS),
                           __ATOMIC_RELEASE);
  if (PMPAGE_INTERNAL_UNLIKELY(!(old & PMPAGE_INTERNAL_PG_LOCKED))) pmpage_internal_report_unlock_misuse(p);
  if (old & PMPAGE_INTERNAL_PG_WAITERS) pmpage_internal_wake_page_waiters(h);
}

static inline bool pmpage_internal_test_flag(struct pmpage_page* p, uint32_t bit) {
  struct pmpage_internal_desc* h = pmpage_internal_state_holder(p);
  return h && (__atomic_load_n(&h->flags_, __ATOMIC_ACQUIRE) & bit);
}
static inline void pmpage_internal_set_flag(struct pmpage_page* p, uint32_t bit) {
  struct pmpage_internal_desc* h = pmpage_internal_state_holder(p);
  if (h) __atomic_fetch_or(&h->flags_, bit, __ATOMIC_RELEASE);
}
static inline bool pmpage_internal_test_clear_flag(struct pmpage_page* p, uint32_t bit) {
  struct pmpage_internal_desc* h = pmpage_internal_state_holder(p);
  return h && (__atomic_fetch_and(&h->flags_, ~bit, __ATOMIC_ACQ_REL) & bit);
}
static inline bool pmpage_internal_test_set_flag(struct pmpage_page* p, uint32_t bit) {
  struct pmpage_internal_desc* h = pmpage_internal_state_holder(p);
  return !h || (__atomic_fetch_or(&h->flags_, bit, __ATOMIC_ACQ_REL) & bit);
}

/** pmpage::PageLocked: someone holds the page lock. */
static inline bool pmpage_PageLocked(struct pmpage_page* p) { return pmpage_internal_test_flag(p, PMPAGE_INTERNAL_PG_LOCKED); }
/** pmpage::PageDirty: the engine's dirty bit of p's compound page (volatile). */
static inline bool pmpage_PageDirty(struct pmpage_page* p) { return pmpage_internal_test_flag(p, PMPAGE_INTERNAL_PG_DIRTY); }
/** pmpage::SetPageDirty. */
static inline void pmpage_SetPageDirty(struct pmpage_page* p) { pmpage_internal_set_flag(p, PMPAGE_INTERNAL_PG_DIRTY); }
/** pmpage::ClearPageDirty. */
static inline void pmpage_ClearPageDirty(struct pmpage_page* p) {
  (void)pmpage_internal_test_clear_flag(p, PMPAGE_INTERNAL_PG_DIRTY);
}
/** pmpage::TestClearPageDirty: clears PG_dirty and returns the old bit atomically. */
static inline bool pmpage_TestClearPageDirty(struct pmpage_page* p) {
  return pmpage_internal_test_clear_flag(p, PMPAGE_INTERNAL_PG_DIRTY);
}
/** Sets PG_dirty and returns the old bit atomically (misuse answers true: "already dirty"). */
static inline bool pmpage_TestSetPageDirty(struct pmpage_page* p) {
  return pmpage_internal_test_set_flag(p, PMPAGE_INTERNAL_PG_DIRTY);
}
/** pmpage::PageUptodate: the engine's up-to-date bit (volatile). */
static inline bool pmpage_PageUptodate(struct pmpage_page* p) {
  return pmpage_internal_test_flag(p, PMPAGE_INTERNAL_PG_UPTODATE);
}
/** pmpage::SetPageUptodate. */
static inline void pmpage_SetPageUptodate(struct pmpage_page* p) { pmpage_internal_set_flag(p, PMPAGE_INTERNAL_PG_UPTODATE); }
/** pmpage::ClearPageUptodate. */
static inline void pmpage_ClearPageUptodate(struct pmpage_page* p) {
  (void)pmpage_internal_test_clear_flag(p, PMPAGE_INTERNAL_PG_UPTODATE);
}

/** pmpage::PageHWPoison: the page's allocation has a page in a bad block (never read it). */
static inline bool pmpage_PageHWPoison(struct pmpage_page* p) {
  return pmpage_internal_test_flag(p, PMPAGE_INTERNAL_PG_HWPOISON);
}

/** pmpage::page_private: the engine's private word of p's compound page (0 after allocation). */
static inline uintptr_t pmpage_page_private(struct pmpage_page* p) {
  struct pmpage_internal_desc* h = pmpage_internal_state_holder(p);
  return h ? __atomic_load_n(&h->private_, __ATOMIC_ACQUIRE) : 0;
}
/** pmpage::set_page_private. */
static inline void pmpage_set_page_private(struct pmpage_page* p, uintptr_t value) {
  struct pmpage_internal_desc* h = pmpage_internal_state_holder(p);
  if (h) __atomic_store_n(&h->private_, value, __ATOMIC_RELEASE);
}

#ifdef __cplusplus
}
#endif

#endif /* PMPAGE_PMPAGE_H */
