/// \file
/// pmpage/pool.hpp — a pool: a DAX-mapped file or device whose data area is handed out as pages.
/// A persistent pool (create/open) keeps its allocator state on the device, crash-consistently; a
/// volatile pool (create_volatile) keeps it in DRAM and hands out memory whose contents die with
/// the process: anonymous memory, a file or device used as plain memory, optionally on huge pages
/// and bound to a NUMA node (CXL memory). Both give the same descriptors and the same API.
///
/// Layer: above mm.hpp and persistence.hpp. Set-up (create/open) throws pmpage::error; everything
/// else is noexcept and thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "pmpage/mm.hpp"
#include "pmpage/page.hpp"
#include "pmpage/persistence.hpp"
#include "pmpage/types.hpp"

namespace pmpage {

namespace detail {
class pool_impl;
}

/// pool::stats(). One snapshot taken under every allocator lock, so the figures agree with each
/// other even while other threads allocate and free (a region being merged counts as split until
/// it is a free region):
/// ```
///   free_pages <= total_pages;  cpu_cached_free_pages <= free_pages;
///   512 x free_regions + cpu_cached_free_pages <= free_pages;
///   free_regions + split_regions <= total_regions;
///   materialised_regions, cpu_cached_regions, empty_split_regions <= split_regions.
/// ```
/// Only free_pages is approximate while others run: it may lag below the truth by the pages of
/// frees still in progress. Exact when no other thread uses the pool.
struct pool_stats {
  std::uint64_t total_pages = 0;       ///< 4 KiB pages in the data area
  std::uint64_t free_pages = 0;        ///< of which free
  std::uint64_t total_regions = 0;     ///< 2 MiB regions in the data area
  std::uint64_t free_regions = 0;      ///< regions wholly free and unsplit
  std::uint64_t split_regions = 0;     ///< regions whose pages are tracked 4 KiB at a time
  std::uint64_t materialised_regions = 0;  ///< split regions whose 4 KiB descriptors exist in DRAM
  std::uint64_t descriptor_bytes = 0;  ///< DRAM holding descriptors: regions x 64 B + 32 KiB x materialised
  std::uint64_t allocator_bytes = 0;   ///< DRAM of the allocator's own indexes (split-region state)
  std::uint64_t repaired_at_open = 0;  ///< torn updates found and repaired by recovery
  /// Owner records dropped when a region was loaded because their owner entry was damaged (its
  /// check fails): those pages stay allocated, owned by nobody; check_slots lists their slots as
  /// misowned (a page whose slot no longer names it is freed instead: docs/format.md, "The slot
  /// protocol"). Also counts owners dropped at a page's last put_page/free_pages because its slot
  /// was void (docs/api.md).
  std::uint64_t orphaned_owners = 0;
  /// Per-CPU caches (docs/scaling.md): split regions a CPU's cache holds for its own small
  /// allocations, and the free pages inside them. Those pages are free on the media (a crash
  /// loses nothing) and are counted in free_pages; another CPU takes them only when the pool has
  /// no other room. An idle cache is drained after PCP_IDLE_MS, and trim() drains them all.
  std::uint64_t cpu_cached_regions = 0;
  std::uint64_t cpu_cached_free_pages = 0;  ///< the free pages inside cpu_cached_regions
  /// Split regions with no allocation that keep their 4 KiB descriptors for a while (merge
  /// hysteresis, docs/api.md "When descriptor memory comes back"): at most EMPTY_SPLIT_KEPT, each
  /// for at most EMPTY_SPLIT_KEEP_MS; trim() merges them now. Included in split_regions.
  std::uint64_t empty_split_regions = 0;
  /// Bad blocks (docs/api.md "Bad blocks"): free pages held out of every allocation path for this
  /// open because they lie in a bad block or share a free 2 MiB region with one (free on the
  /// media, not counted in free_pages), and allocated pages that lie in a bad block (their
  /// allocation carries PG_hwpoison: PageHWPoison). Both 0 for a pool opened without bad blocks.
  std::uint64_t quarantined_pages = 0;
  std::uint64_t hwpoison_pages = 0;  ///< allocated pages in a bad block (see quarantined_pages)
  /// 0, or the errno (EIO, ENOSPC, ...) of the write-back failure this pool latched: see
  /// pool::writeback_error(). Nonzero means nothing made durable since can be trusted.
  int writeback_errno = 0;
};

/// A pool: a file or device (persistent: create, open) or memory (create_volatile) whose data
/// area is handed out as pages with kernel-style descriptors. A move-only handle; the pool closes
/// when its handle is destroyed or close() is called. Set-up (create, open, create_volatile)
/// throws pmpage::error; the other calls report errors by their result (only those that return
/// a container can throw, std::bad_alloc) and may be called from any number of threads at once
/// (check and check_slots are exact only while no other thread allocates or frees). Kernel
/// counterpart: a memory zone and its buddy allocator, with ZONE_DEVICE-style descriptors;
/// PMDK's: a pmemobj pool.
class PMPAGE_API pool {
 public:
  /// pool::create's options (docs/api.md "Creating and opening").
  struct options {
    /// Bytes for a regular file that does not exist or must grow; 0 = use the existing size.
    /// Ignored for device DAX (its whole size is used).
    std::uint64_t size = 0;
    /// Format an existing file that holds a valid pool or anything else. Without it create()
    /// formats an existing file only if it is blank (0 bytes, holes, zeros) or an interrupted
    /// creation (ERR_CREATE_INTERRUPTED), and refuses the rest with EEXIST.
    bool overwrite = false;
    /// Bytes of the persistent root area (rounded up to 4 KiB; at least 4 KiB). Zeroed at create.
    std::size_t root_size = 4096;
    /// Reserve the file's blocks up front (posix_fallocate) so a full file system fails create()
    /// instead of an allocation. Off by default: pools are often sparse files, whose blocks are
    /// reserved a 2 MiB region at a time as the allocator first takes each region; when the file
    /// system is full the allocation then fails with errno ENOSPC (never a SIGBUS at a store).
    bool preallocate = false;
    /// File mode for a newly created file.
    unsigned mode = 0600;
    /// The persistence backend; nullptr = libpmem. Tests pass a simulated device.
    std::shared_ptr<persistence> backend;
    /// Bytes the pool may later grow to with pool::grow (docs/api.md "Growing a pool"): the
    /// metadata tables are laid out for this size at create, so growth never moves them or the
    /// data. 0 (the default) or `size`: no room to grow beyond the slack of the tables (often
    /// none), and the pool stays readable by pmpage 0.3. Above `size` the pool gets the format
    /// flag `growable` (libraries before 0.3 refuse it). Cost: 264 B per 2 MiB of max_size in the
    /// file (region words and page maps, reserved at create), plus 4 KiB per 2 MiB of max_size of
    /// owner tables that a sparse file keeps as holes until the regions exist; the data area
    /// starts after all of it (about 0.2 % of max_size), so `size` must hold that and one region
    /// (EINVAL, naming the least size). A writable open of such a pool reserves the address
    /// space, descriptor windows and pfn range of max_size, so that grow(new_size) grows it in
    /// place. Below `size`: EINVAL; device DAX: EINVAL (fixed size); above MAX_POOL_PAGES pages
    /// of data: EINVAL.
    std::uint64_t max_size = 0;  // last: added in 0.3
  };

  /// pool::open's options.
  struct open_options {
    std::shared_ptr<persistence> backend;  ///< nullptr = libpmem; ignored when read_only
    /// Open for reading only (docs/api.md "Read-only open"). The file is opened O_RDONLY (a file
    /// the caller may only read works) under a shared lock: any number of read-only opens of one
    /// pool coexist across processes, and a writer's open fails EBUSY while a reader holds it (a
    /// read-only open fails EBUSY while a writer does). A regular file is mapped private: recovery
    /// runs as usual but on this process's copy (recovery_log() lists what it did there), the file
    /// never changes, and the mapping is then made read-only, so a stray store faults. Device DAX
    /// cannot be mapped private: a read-only open of one that needs recovery (a live intent, a
    /// damaged superblock copy) fails EROFS; open it read-write once, or run `pmpage check --repair`.
    /// Every mutating call on a read-only pool is misuse (reported, nothing changes): see
    /// is_read_only().
    bool read_only = false;
    /// Bad blocks of the file or device (docs/api.md "Bad blocks"), added to those libpmem2
    /// reports: for a CXL memory device, whose poison list comes from the CXL driver, and for
    /// tests. Every range must lie inside the file or device and be non-empty (EINVAL). Used for
    /// this open only; nothing about them is written to the pool. A range that touches the
    /// pool's metadata (superblocks, intent lanes, root area, region table, page maps, owner
    /// tables) refuses the open (EIO, naming the range and the structure); in the data area a
    /// free page is quarantined (never handed out while the pool is open, the rest of its 2 MiB
    /// region too when the region is wholly free) and an allocated one is marked PG_hwpoison.
    std::vector<bad_block> bad_blocks;
    /// Ask libpmem2 for the bad blocks of an NVDIMM (device DAX, or a file on a DAX file system);
    /// a file that is not DAX is not asked (libpmem2 only knows NVDIMM namespaces). An error of
    /// libpmem2 fails the open (EIO) rather than risk handing out poisoned pages.
    bool device_bad_blocks = true;
  };

  /// A volatile pool's memory (create_volatile; docs/api.md "Volatile pools").
  struct volatile_options {
    /// Bytes of pages to hand out: a multiple of 2 MiB, at least 2 MiB (EINVAL otherwise). With a
    /// backing file or device, 0 = all of it (rounded down to 2 MiB); a regular file shorter than
    /// `size` is grown (never shrunk). Anonymous memory needs a size.
    std::uint64_t size = 0;
    /// Empty: anonymous memory. Else a file or device whose memory the pool uses as plain memory:
    /// a file on tmpfs or hugetlbfs, a memfd (pass "/proc/self/fd/N"), any regular file (page
    /// cache), or device DAX (/dev/daxX.Y, e.g. a CXL expander in devdax mode). Its contents are
    /// not kept and nothing but the application's data is written to it (the allocator's state
    /// lives in DRAM); it must exist and is locked exclusively while the pool lives (EBUSY if
    /// another pool, volatile or persistent, has it). A file holding a persistent pmpage pool is
    /// refused (EEXIST) unless `overwrite`.
    std::filesystem::path backing;
    /// Use a backing that holds a persistent pmpage pool (its pool is destroyed); else EEXIST.
    bool overwrite = false;
    /// Huge pages for the pages handed out (anonymous memory and tmpfs/memfd files; a hugetlbfs
    /// file and device DAX bring their own): none = base pages; thp = transparent huge pages
    /// (madvise(MADV_HUGEPAGE)); hugetlb = 2 MiB pages reserved in /proc/sys/vm/nr_hugepages
    /// (MAP_HUGETLB, anonymous memory only). When they cannot be had (THP disabled, too few huge
    /// pages reserved) the pool falls back, hugetlb to thp to none, and memory_description() says
    /// why; with require_huge_pages create fails ENOMEM instead.
    enum class huge_pages { none, thp, hugetlb };
    huge_pages huge = huge_pages::none;  ///< the huge pages asked for (see huge_pages)
    /// Fail create_volatile with ENOMEM instead of falling back to fewer huge pages.
    bool require_huge_pages = false;
    /// Pre-fault the pages (docs/api.md "Volatile pools"): create_volatile allocates every page of
    /// the pool and maps it writable before it returns (madvise(MADV_POPULATE_WRITE), after the
    /// huge-page advice and the NUMA binding; with a backing file its blocks are reserved first),
    /// so no page handed out takes a page fault at its first touch: a cache tier's first inserts
    /// run at full speed. Costs the whole size in memory at once and time at create (the kernel
    /// zeroes every page). Memory that cannot be had fails create instead of a later SIGBUS:
    /// ENOMEM (out of memory, or the bound node or the huge pages ran out), ENOSPC (the backing's
    /// file system is full). A region holding a bad block is not touched. Nothing is written to
    /// the backing. Off: each page is faulted in when first touched. Kernel: MAP_POPULATE.
    bool populate = false;
    /// Bind the pages to this NUMA node (mbind MPOL_BIND through libnuma; every page is then
    /// allocated on it or not at all, SIGBUS when it is full); -1 = the process's policy. A node
    /// that does not exist or has no memory is EINVAL, as is a node on a backing whose placement
    /// the kernel cannot set: a regular file on a disk file system (its page cache follows the
    /// task's policy), or device DAX on another node (its memory is where the device is).
    int numa_node = -1;
    /// Bytes of the root area (DRAM, zeroed; rounded up to 4 KiB): room for alloc_pages_to slots.
    std::size_t root_size = 4096;
    /// Bad blocks of the backing (docs/api.md "Bad blocks"): byte offsets from its start, i.e. of
    /// the pages (a CXL device's poison list; libpmem2 is not asked for volatile pools). Each must
    /// lie inside the pool's `size` bytes (EINVAL). The free 2 MiB regions holding them are never
    /// handed out; pool::bad_blocks() returns them as given (merged).
    std::vector<bad_block> bad_blocks;
    /// A volatile pool never flushes or fences: a backend given here sees attach() and detach()
    /// only (tests and benchmarks pass a counting_persistence to prove it). nullptr = none.
    std::shared_ptr<persistence> backend;
  };

  /// Formats `path` as a new pool and opens it. See docs/api.md for what each kind of path does.
  static pool create(const std::filesystem::path& path, const options& opts);

  /// pool::grow's options.
  struct grow_options {
    /// Reserve the new part of the file up front (posix_fallocate), as options::preallocate.
    bool preallocate = false;
    /// The persistence backend of the superblock and region-table writes; nullptr = libpmem.
    /// Tests pass a simulated device (testing::sim_pmem) to crash the grow at every fence.
    std::shared_ptr<persistence> backend;
  };
  /// What pool::grow did.
  struct grow_result {
    std::uint64_t old_regions = 0;  ///< 2 MiB regions before
    std::uint64_t new_regions = 0;  ///< and after (old_regions + the regions added)
    std::uint64_t max_regions = 0;  ///< the most the pool can have (options::max_size at create)
    std::uint64_t device_size = 0;  ///< bytes the pool now records (new_size)
  };
  /// Grows the closed pool at `path` in place to `new_size` bytes (docs/api.md "Growing a
  /// pool"): the file is extended, and the whole 2 MiB regions that fit in new_size, up to the
  /// capacity chosen at create (options::max_size), are added at the end of the data area. Pfns
  /// and offsets of existing pages, the root area and every slot stay as they are; the next
  /// open() sees the new size (stats().total_pages, `pmpage info`). Crash-atomic: a crash leaves
  /// the old size or the new one, never a half-grown pool (3 fences: the new region words, then
  /// superblock copy B, then A; open rolls a torn pair forward). Offline: the pool must not be
  /// open anywhere (it takes the exclusive opener lock, EBUSY otherwise); an open pool grows with
  /// the member grow(new_size). Thread-safety: any thread, like open().
  /// Throws pmpage::error: EINVAL if new_size is not above the pool's size or adds no whole
  /// region, if the pool is at its capacity or new_size is beyond it (the message says how much
  /// is possible, and for a pool created without max_size how to get room: create with
  /// options::max_size and copy the data), or the pool is unreadable, being re-identified or
  /// has copies that differ by more than a crash leaves; ENOTSUP for device DAX (a namespace has
  /// a fixed size); EBUSY if the pool is open (anywhere) or its grown pfn range overlaps a pool
  /// open in this process; EACCES/EROFS for a file this process may only read; ENOSPC/EFBIG and
  /// other errnos of extending the file. Nothing is changed when it throws before its first
  /// fence; a write-back failure after that leaves the old or the new size (run it again).
  static grow_result grow(const std::filesystem::path& path, std::uint64_t new_size, const grow_options& opts);
  /// grow(path, new_size, grow_options{}): default options (no preallocation, libpmem backend).
  static grow_result grow(const std::filesystem::path& path, std::uint64_t new_size) {
    return grow(path, new_size, grow_options{});
  }
  /// Grows this open pool in place to `new_size` bytes (docs/api.md "Growing a pool"): as the
  /// static grow, for a pool created with room to grow (options::max_size), whose open reserved
  /// the address space, descriptors and pfns of its capacity: nothing moves (base(), every page*
  /// and pfn stay valid), and the new regions are allocatable from every thread when it returns.
  /// Crash-atomic, 3 fences plus an fsync; allocations in other threads may run meanwhile (they
  /// see the new regions once it returns). Thread-safe; two grows of one pool run one after the
  /// other. Returns 0, or -errno (errno and pmpage_errormsg() set): -EINVAL as the static grow
  /// (not larger, no whole region, beyond the capacity, created without max_size), -ENOTSUP for
  /// device DAX and volatile pools (fixed size), -EROFS for a read-only pool (misuse, reported:
  /// nothing changes), the errno of extending or mapping the file (-ENOSPC, -EFBIG, -ENOMEM) or
  /// of a write-back failure (the media then has the old or the new size; the pool keeps the
  /// old until reopened). On a closed pool: misuse, -EINVAL.
  int grow(std::uint64_t new_size) noexcept;
  /// Opens and recovers an existing pool (opts.read_only: without writing it; see open_options).
  static pool open(const std::filesystem::path& path, const open_options& opts);
  /// open(path, open_options{}): read-write, libpmem, libpmem2's bad blocks.
  static pool open(const std::filesystem::path& path) { return open(path, open_options{}); }
  /// Creates a volatile pool (docs/api.md "Volatile pools"): the same descriptors, allocator and
  /// API as a persistent pool, with the allocator's state in DRAM and no flush, fence or intent
  /// (alloc_pages_to and free_pages_from are plain stores). Its pages hold zeros or the bytes a
  /// previous user of the backing left (GFP_ZERO zeroes them). Everything is gone at close().
  /// Throws pmpage::error: EINVAL (bad size, node), ENOENT (no backing), EBUSY (backing in use),
  /// EEXIST (backing holds a persistent pool), ENOMEM (no memory, or huge pages required and none),
  /// ENODEV (a backing that is neither a regular file nor device DAX), or the errno of a failed
  /// system call on the backing (EACCES, EPERM). A refused create leaves the backing unchanged.
  static pool create_volatile(const volatile_options& opts);

  /// A closed pool (is_open() false): every call on it is misuse or returns its closed-pool value.
  pool() noexcept;
  /// Takes over the other's pool; the other is left closed.
  pool(pool&&) noexcept;
  /// Closes this pool (as close(), its write-back error is lost: call close() first to see it),
  /// then takes over the other's; the other is left closed.
  pool& operator=(pool&&) noexcept;
  pool(const pool&) = delete;
  pool& operator=(const pool&) = delete;
  ~pool();

  /// Closes the pool; every page* and pfn of it becomes invalid. Idempotent. Returns 0, or the
  /// pool's write-back error as -errno (writeback_error(): the last fence at close, or any earlier
  /// one, failed to make the pool's state durable); the pool is closed either way. A closed pool
  /// returns 0.
  int close() noexcept;
  /// Write-back errors (docs/api.md "Write-back errors"). 0 while every fence of this pool made
  /// what it covered durable; else -errno of the first failure (-EIO, -ENOSPC, -EDQUOT: msync
  /// failed on a pool file that is not DAX). Latched: once nonzero it stays so until the pool is
  /// closed, and every call that makes something durable fails with it: alloc_pages and the other
  /// allocating calls return nullptr / fewer (errno set, the pages not handed out), the int-returning
  /// calls return it (their change undone, or for a free completed in memory), persist / drain /
  /// close return it, put_page / free_pages of a last reference set errno. Reopening the pool
  /// clears it (open fails if recovery cannot write back either). 0 for a closed pool.
  /// Thread-safe; one load.
  int writeback_error() const noexcept;
  /// False for a default-constructed, moved-from or closed pool.
  bool is_open() const noexcept { return impl_ != nullptr; }
  /// True for a pool opened with open_options::read_only (false for a closed pool). On such a
  /// pool every call that would write the media is misuse, reported, and changes nothing:
  /// alloc_pages, alloc_pages_bulk, alloc_pages_to, alloc_pages_bulk_to (nullptr / 0),
  /// free_pages_from, free_pages_bulk_from, move_pages_owner, adopt_pages, split_huge_page,
  /// split_huge_page_to (-EROFS), persist / flush / drain (nothing done), trim (0), and a put_page / free_pages that
  /// would drop a page's last reference (the reference stays). Reads are all allowed: stats,
  /// for_each_allocated, check, check_slots, root(), page_address() loads, and get_page /
  /// put_page that do not free, lock_page and the page flags (DRAM only). Thread-safe.
  bool is_read_only() const noexcept;
  /// What recovery repaired, one line per repair: a superblock copy rewritten, each intent lane
  /// replayed (kind, pfn, order; rolled forward or undone), each owned large page whose slot no
  /// longer names it, and, when a split region is first loaded (lazily, after open), a torn page
  /// map cleared, a 0.2 pool's stale raw owner entries cleared, an empty split region merged. Lines are added as
  /// lazy loads happen (check() loads every region). For a read-only pool it is what recovery
  /// would do, done only to this process's view. Empty for a healthy pool and a closed one.
  /// Thread-safe.
  std::vector<std::string> recovery_log() const;

  /// True for a pool made by create_volatile (false for a closed pool).
  bool is_volatile() const noexcept;
  /// The NUMA node the pool's pages are on, when one is known for all of them: the node a volatile
  /// pool was bound to, or the node of the device DAX it maps (sysfs); -1 otherwise (page_to_nid
  /// then asks the kernel page by page).
  int numa_node() const noexcept;
  /// One line saying what memory backs the pool: its kind and size, the huge pages it got (and,
  /// after a fallback, why it got fewer than asked), its NUMA binding. E.g. "volatile, anonymous
  /// memory, 1 GiB, transparent huge pages, bound to node 0". Thread-safe.
  std::string memory_description() const;

  /// The pool's first pfn: its pfn base, its identity (types.hpp, pfn_t), the same at every open.
  pfn_t start_pfn() const noexcept;
  /// One past the pool's last pfn: its pfns are [start_pfn(), end_pfn()), total_pages of them.
  pfn_t end_pfn() const noexcept;

  /// Allocates a naturally aligned compound page of `order` (0..18); head with refcount 1, or
  /// nullptr when no such free extent exists, or when the file system under a sparse pool file
  /// cannot back the region it needs (errno ENOSPC; the same for every allocating call). Durable before it returns (1 fence; 2 when a fresh
  /// region must be split). The page holds its previous owner's bytes unless gfp has GFP_ZERO.
  /// Kernel: alloc_pages(gfp, order). Misuse: order > 18, or a fork() child.
  page* alloc_pages(unsigned order, gfp_t gfp = GFP_DEFAULT) noexcept;
  /// Allocates up to n pages of `order` into out[]; returns how many. Each page is its own
  /// allocation; all of them share the fences (one for a batch that fits in split regions).
  /// Kernel: alloc_pages_bulk_array.
  std::size_t alloc_pages_bulk(unsigned order, std::size_t n, page** out, gfp_t gfp = GFP_DEFAULT) noexcept;
  /// Allocates a compound page and publishes its head pfn into the empty slot *dest, atomically with
  /// respect to a crash. The slot then OWNS the page: the ownership is recorded on the media,
  /// survives close, crash and reopen, and only free_pages_from(dest) frees the page (put_page /
  /// free_pages cannot take its count below 1). dest must be an 8-byte aligned word of this pool's
  /// root or data area and must hold 0; a non-empty slot is misuse (nothing changes, returns
  /// nullptr). Returns the head, or nullptr when the pool has no room.
  /// Fences: 2 (the page recorded allocated and owned | the slot); 3 when a fresh 2 MiB region
  /// must be split for it (its SPLIT word is durable before a slot names a page in it). When it
  /// returns, the slot holding the pfn is durable; a crash before that leaves the slot empty and
  /// the page free (docs/format.md, "The slot protocol"). Thread-safe. Kernel: none (the kernel's
  /// allocator records no owner; PMDK's pmemobj_alloc(oidp) is the model).
  page* alloc_pages_to(unsigned order, pfn_t* dest, gfp_t gfp = GFP_DEFAULT) noexcept;

  /// An engine's initialiser for a page being allocated into a slot: called once with the head,
  /// its address and its size in bytes (4096 << order), before the page is published, on a page
  /// no other thread can reach, with no library lock held. It writes the page and flushes what it
  /// wrote (pool::flush; no drain: the allocation's first fence makes it durable). Returns 0 to
  /// publish; anything else gives the page back unpublished, and the call returns nullptr with
  /// errno = -rc for a negative rc (else ECANCELED). An exception counts as a refusal.
  /// PMDK counterpart: pmemobj_constr.
  using page_init = std::function<int(page* head, void* addr, std::size_t bytes)>;
  /// alloc_pages_to whose page holds what `init` wrote (after GFP_ZERO's zeros, if asked) when the
  /// slot names it: allocate, fill and publish in the same 2 fences (3 from a fresh region), the
  /// contents durable with the slot. A crash leaves the slot empty and the page free, or the slot
  /// naming the filled page. Errors and thread-safety as alloc_pages_to.
  page* alloc_pages_to(unsigned order, pfn_t* dest, gfp_t gfp, const page_init& init) noexcept;
  /// Replaces the page slot *slot owns with a new page of `order` (filled by `init`, zeroed with
  /// GFP_ZERO) and frees the old one, atomically with respect to a crash: afterwards the slot
  /// names and owns the new page and the old one is free; a crash leaves the old page (slot
  /// unchanged, the new page free) or the new one (the old page free), never both or neither.
  /// Copy-on-write and shadow paging (LMDB, CoW B-trees) in one call. Fences: 2, as
  /// alloc_pages_to (3 from a fresh region). An empty slot: alloc_pages_to. Returns the new head,
  /// or nullptr with errno: ENOMEM-like no room (nothing changed); EBUSY: the old page has
  /// references besides its slot's (nothing changed); EINVAL on misuse (reported): the slot does
  /// not own the page it names, lies in a free page or inside the page it owns; EIO/ENOSPC... a
  /// write-back failure (the slot keeps the old page). The old page must hold no slot that owns
  /// a page (as for free_pages_from: those children would stay owned by slots in a freed page).
  /// Thread-safe; the old page is claimed (its count held at 0) while the call runs, as
  /// free_pages_from claims it: the initialiser may read it (page_address of its pfn, for a copy)
  /// but must take no reference to it. Kernel: none.
  page* replace_pages(pfn_t* slot, unsigned order, gfp_t gfp = GFP_DEFAULT, const page_init& init = {}) noexcept;
  /// Frees the page that slot *src owns and sets *src = 0, atomically with respect to a crash
  /// (1 fence: the slot cleared; the page's free record follows unfenced, and recovery completes
  /// it). An empty slot (0) is a no-op returning 0 (the kernel's kfree(NULL) rule).
  /// Returns 0; -EBUSY if other references are held (nothing changes); -EINVAL on misuse (also
  /// reported): src not a slot of this pool, *src not the head of an allocation, or a page this
  /// slot does not own (allocated with alloc_pages, or owned by another slot); -EROFS on a
  /// read-only pool (misuse, reported); -errno of a write-back failure (the page is freed in
  /// DRAM and the slot emptied all the same; pool::writeback_error()). Thread-safe. Kernel:
  /// free_pages / kfree.
  int free_pages_from(pfn_t* src) noexcept;

  /// alloc_pages_to for many slots: fills each empty slot *dests[i] with its own new allocation
  /// of `order`, owned by that slot exactly as alloc_pages_to's (only free_pages_from or
  /// free_pages_bulk_from on it frees the page). Returns how many slots were filled: always
  /// dests[0..n) in list order; fewer than dests.size() when the pool ran out of room (or a
  /// concurrent call filled a slot first, reported as misuse: the slots from it on stay empty).
  /// Misuse refuses the whole call before anything changes (returns 0, reported): a slot that is
  /// not an 8-byte word of the root or data area, lies in a free page, is not empty, or is listed
  /// twice; order > 18; unknown gfp bits.
  /// Crash atomicity is per slot: after a crash each slot is empty or names its page, owned,
  /// independently of the others; never a leaked page. Fences: 2 per batch of up to 64 slots
  /// (every page recorded | every slot, the slot protocol of alloc_pages_to), so n slots cost
  /// 2 * ceil(n / 64) fences instead of 2n. Thread-safe. Kernel: alloc_pages_bulk_array.
  std::size_t alloc_pages_bulk_to(unsigned order, std::span<pfn_t* const> dests,
                                  gfp_t gfp = GFP_DEFAULT) noexcept;
  /// free_pages_from for many slots: frees the page every non-empty slot *srcs[i] owns and sets
  /// the slot to 0. Empty slots are skipped. Returns 0; or, with nothing changed:
  /// -EBUSY if a page has references besides its slot's (or its alloc_pages_to is still
  /// publishing); -EINVAL on misuse (reported), checked for every slot before anything is freed:
  /// any of free_pages_from's misuses, a slot listed twice, or a slot lying inside a page this
  /// same call frees (free a table page in a later call than the slots it holds); -EROFS on a
  /// read-only pool (misuse, reported).
  /// Crash atomicity is per slot (each slot ends before or after, never a slot naming a free page
  /// nor a leaked page); 1 fence for the whole list (every slot 0, then the pages freed).
  /// Thread-safe.
  /// Kernel: release_pages / free_pages_bulk.
  int free_pages_bulk_from(std::span<pfn_t* const> srcs) noexcept;

  /// Moves the ownership of the page that slot *src owns to the empty slot *dest: *dest = pfn,
  /// *src = 0 and the owner recorded on the media, atomically with respect to a crash (2 fences).
  /// This is how an engine relocates a persistent reference (a page-table entry that moves);
  /// copying the pfn by hand leaves the old slot the owner. Returns 0, or -EINVAL on misuse
  /// (reported): a slot outside the pool, *dest not empty, *src empty or not the owner; -EROFS on
  /// a read-only pool (misuse, reported).
  int move_pages_owner(pfn_t* src, pfn_t* dest) noexcept;

  /// Makes slot *slot the owner of the allocation it names, which no slot owns: a page allocated
  /// with alloc_pages (or split from an unowned page), or one whose owner record open dropped
  /// because its owner entry was damaged (stats().orphaned_owners; check_slots lists the slot as
  /// misowned). For an engine's repair tool: restore the slot (store
  /// the pfn, persist it), then adopt. Afterwards the slot owns the page exactly as if
  /// alloc_pages_to had put it there: only free_pages_from(slot) frees it, move_pages_owner moves
  /// it, and put_page / free_pages of its last reference is misuse.
  /// References: an unowned allocation holds count 1, the reference alloc_pages returned; adopting
  /// converts that reference into the slot's (the count stays 1, and the caller must not drop it
  /// afterwards). A page with other references (count > 1), or locked (lock_page; a split holds
  /// the page lock), is -EBUSY, nothing changed.
  /// Durability: *slot must already be durable (it is flushed again, which costs nothing if it
  /// is). When the call returns the ownership is durable; a crash during it leaves the page owned
  /// by the slot or allocated and owned by nobody, never free (docs/format.md). Fences: 2 (the
  /// owner entry, then the owned marker in the page map or the region word's owned bit); none in
  /// a volatile pool.
  /// Returns 0; -EBUSY (other references, or locked: nothing changed); -EINVAL on misuse (reported; nothing
  /// changed): slot not an 8-byte aligned word of the root or data area, or in a free page; slot
  /// empty; *slot not a page of this pool, a tail, a free page; the page already owned (by this or
  /// another slot); -EROFS on a read-only pool (misuse, reported); -ENOSPC (or the file system's
  /// errno) when a sparse pool file cannot back the page's owner-table block (nothing changed).
  /// Thread-safe. The page is claimed while its owner changes (its count held at 0, as
  /// free_pages_from holds it): no other thread may take or drop references to it meanwhile
  /// (get_page / put_page then see a free page and are reported), and slot calls on it either see
  /// it unowned or wait until it is owned. Counterpart: fsck's reconnection of an orphaned inode
  /// to lost+found; the kernel's allocator and PMDK record no owner, so they have none.
  int adopt_pages(pfn_t* slot) noexcept;

  /// What check_slots found: an fsck of the engine's own persistent references.
  struct slot_check {
    /// One finding.
    struct entry {
      const pfn_t* slot;    ///< the engine's slot (nullptr for an unreferenced allocation)
      pfn_t pfn;            ///< what it names / the allocation's head
      unsigned order;       ///< the allocation's order (when it is one)
      std::string problem;  ///< one line, naming slot address, pfn and the rule broken
    };
    std::vector<entry> unreferenced;  ///< allocations no listed slot names (leaks, if the list is complete)
    std::vector<entry> dangling;      ///< slots naming a free page, a tail, or no page of this pool
    /// slots naming a page another listed slot also names — never the page's recorded owner: the
    /// owner is not reported, so clearing what is listed keeps the slot the media trusts
    std::vector<entry> shared;
    /// slots naming a page the media says another slot (or none) owns: every such slot, whatever
    /// the list's order (a shared one is listed here too)
    std::vector<entry> misowned;
    /// No finding of any kind.
    bool clean() const { return unreferenced.empty() && dangling.empty() && shared.empty() && misowned.empty(); }
    /// All problems, one per line ("" when clean).
    std::string describe() const;
  };
  /// Checks the engine's complete list of slots (pointers to pfn slots; empty slots are allowed and
  /// ignored) against the pool: every allocation must be named by exactly one slot, which must be
  /// its recorded owner. Takes the allocator lock; O(allocations + slots). Not concurrent with
  /// allocation or free in this pool (their effects may or may not be seen).
  slot_check check_slots(std::span<pfn_t* const> slots) const;

  /// The persistent root area (zeroed at create), at least 4 KiB.
  void* root() const noexcept;
  /// Bytes of the root area: options::root_size (volatile_options::root_size) rounded up to 4 KiB.
  std::size_t root_size() const noexcept;

  /// Persistence of the application's own data in the pool. flush() starts writing back the
  /// cache lines of [addr, addr + len); drain() is the fence: it completes the flushes THE CALLING
  /// THREAD issued (x86 sfence semantics), not other threads'. A connection that moves between
  /// threads must drain on the thread that flushed (or use persist(), which is flush + drain on
  /// one thread). Every drain also makes the pool's lazily retired intents durable. A range
  /// outside the pool's mapping is misuse (reported; nothing is flushed).
  /// persist and drain return 0 when what they cover is durable; -errno when the pool has a
  /// write-back error (writeback_error(): this drain's write-back or an earlier one failed, so the
  /// data may not be durable: an engine must not report its commit durable); -EINVAL for a closed
  /// pool or a range outside the mapping, -EROFS for a read-only pool (misuse, reported).
  int persist(const void* addr, std::size_t len) const noexcept;
  /// Starts writing back [addr, addr + len) (clwb; nothing at byte granularity; msync at page);
  /// durable after this thread's next drain(). See persist(). Kernel: arch_wb_cache_pmem.
  void flush(const void* addr, std::size_t len) const noexcept;
  /// The fence for this thread's flushes: returns 0 or -errno as persist(). Kernel: pmem_wmb.
  int drain() const noexcept;

  /// The pool's counters (pool_stats: which bounds hold while other threads run). Thread-safe: it
  /// holds every allocator lock for the snapshot (one per CPU cache, then the pool lock), and
  /// enforces the idle and hysteresis bounds first (may merge regions: one fence).
  pool_stats stats() const noexcept;
  /// Returns descriptor memory now: drains every per-CPU cache and merges every split region
  /// that has no allocation back into a free 2 MiB region, giving its 32 KiB of 4 KiB
  /// descriptors back to the kernel (madvise). Returns the number of regions merged. Costs one
  /// fence when there is anything to merge. Kernel: drain_all_pages() + compaction's merge.
  /// Thread-safe; concurrent allocations may split regions again right away.
  std::size_t trim() noexcept;
  /// The bad blocks this open uses (open_options::bad_blocks and libpmem2's), sorted, merged;
  /// empty for a pool without any (and for a closed pool). Thread-safe.
  std::vector<bad_block> bad_blocks() const;
  /// The allocated pages that lie in a bad block (their allocations carry PG_hwpoison), by pfn.
  /// An engine reads none of these pages (a load from poisoned memory is a machine check:
  /// SIGBUS), restores what they held from elsewhere, and frees the allocation: its bad pages are
  /// then quarantined, never handed out again while the pool is open. Takes the allocator lock
  /// (loads the split regions that hold bad pages). Thread-safe.
  std::vector<hwpoison_page> hwpoison_pages() const;
  /// The bad blocks libpmem2 reports for `path` (an NVDIMM: device DAX, or a file on a DAX file
  /// system; empty for any other file). Throws pmpage::error: the path cannot be opened, or
  /// libpmem2 fails (EIO).
  static std::vector<bad_block> device_bad_blocks(const std::filesystem::path& path);
  /// Clears bad block `range` of the pool at `path` (docs/api.md "Bad blocks"): libpmem2's
  /// pmem2_badblock_clear, which ZEROES the range (a file: its blocks are deallocated and
  /// allocated again; device DAX: the platform's clear-error command). Only a range inside one
  /// that libpmem2 reports bad (device_bad_blocks) is cleared; anything else is refused (EINVAL)
  /// and nothing is written. The pool must not be open anywhere (the file is locked exclusively:
  /// EBUSY). Poison that came from elsewhere (a CXL device's list) is cleared through that
  /// device's driver, not here. Throws pmpage::error.
  static void clear_bad_block(const std::filesystem::path& path, const bad_block& range);

  /// Calls f(head, order) for every allocation. Allocations made or freed concurrently may or may
  /// not be seen; f must not allocate or free in this pool.
  void for_each_allocated(const std::function<void(page*, unsigned)>& f) const;

  /// Checks every invariant of the volatile and persistent state, the intent lanes and the owner
  /// records (every owned page's slot names it); returns an empty string when all hold, else a
  /// description of the first violation. Takes the allocator lock (slow).
  std::string check() const;

  /// The path given to create or open (empty for anonymous volatile memory and a closed pool).
  const std::filesystem::path& path() const noexcept;
  /// True when flushes go to the media directly (pmem); false when msync is used:
  /// store_granularity() != granularity::page.
  bool is_pmem() const noexcept;
  /// How the pool makes its stores durable (persistence.hpp, docs/api.md "Persistence by
  /// granularity"): byte (eADR: fences only, no flush), cache_line (clwb + sfence), page (msync).
  /// Detected at open with libpmem2 (PMEM2_FORCE_GRANULARITY forces it), or what a simulated
  /// backend models. page for a volatile pool (nothing is flushed) and a closed one.
  granularity store_granularity() const noexcept;
  /// The mapping of the whole device (superblocks, metadata, root, data) and its length.
  void* base() const noexcept;
  /// Bytes of the mapping at base().
  std::size_t mapped_length() const noexcept;

  /// The implementation, for the library's own tools and tests. Not API: its type is not in the
  /// installed headers' documentation and may change with any release.
  detail::pool_impl* impl() const noexcept { return impl_.get(); }

 private:
  explicit pool(std::unique_ptr<detail::pool_impl> impl) noexcept;
  std::unique_ptr<detail::pool_impl> impl_;
};

}  // namespace pmpage
