// pool_impl.hpp — one open pool: its device, its persistent metadata, its descriptors and its
// allocator. The public pmpage::pool is a handle to this.
//
// Owns
//   * the mapping (device), the persistence backend, the section registration;
//   * region descriptors (dense, 64 B per region) and the vmemmap reservation of 4 KiB
//     descriptors (backed only for materialised split regions);
//   * the allocator: region_buddy (orders 9..18), filler + split_state (orders 0..8),
//     the lazy list (split on media, not yet materialised), intent_log (alloc_pages_to).
//
// Persistent state and its invariants (P1..P4; docs/format.md)
//   P1  region word HEAD(n)  =>  region index % 2^(n-9) == 0 and the 2^(n-9)-1 following region
//       words are FREE (tails are derived, never stored).
//   P2  region word SPLIT    =>  its page map lists its allocations: a head code of order k at a
//       2^k-aligned index followed by 2^k-1 tail codes. (After a crash: broken heads and orphan
//       tails are in-flight work and are cleared when the region is materialised.)
//   P3  region word FREE     =>  its page map is ignored (zeroed when the region splits again).
//   P4  a valid intent lane names an operation whose effects recovery completes or undoes
//       (move_pages_owner, split_huge_page_to, the bulk slot calls; a 0.2 pool's alloc_to and
//       free_from lanes are still replayed at open).
//   P5  no operation acts on a live intent's extent until the intent's retirement is pending
//       (so that the next fence of any thread makes it durable). alloc_pages_to's page is
//       reachable through its slot from the compare-and-swap on, before its last fence: it is
//       PG_publishing until that fence returned, and free_pages_from, free_pages_bulk_from,
//       move_pages_owner, split_huge_page_to and the orphan release wait for that, so an intent
//       they write never precedes the publication it acts on. A free keeps its page from the
//       allocator until its lane retired (bulk); a move keeps its reference until retired; a
//       split builds the pieces' descriptors after retiring.
//   O1  the slot protocol (pool.cpp, publish_to and free_pages_from; docs/format.md): a page is
//       recorded allocated and owned — the owned marker in its head's page-map word (or its
//       region word's owned bit) and its owner entry naming the slot, one epoch — before the slot
//       can name it, and the slot is cleared (one epoch) before the page can be recorded free
//       (codes FREE, flushed unfenced). So an allocation with the marker has an entry naming its
//       owner slot, which holds the head's pfn, except after a crash: recovery frees an owned
//       allocation its slot does not name (an interrupted call, or a slot the engine overwrote),
//       and drops the record of one whose entry fails its check (damage). The owner entry counts
//       only where the owned marker is set; elsewhere it is ignored and may be stale (a free
//       leaves it: format flag SB_LAZY_OWNERS), so every reader gates on the marker (slot_owner:
//       PG_slot_owned; counted_owner on the media). Every owned allocation writes its entry in
//       the marker's epoch, or before it (adopt_pages). A raw entry (a 0.2 pool's) counts without
//       a marker and never goes stale: frees, splits and region loads clear it.
//       The slot lies in the root area or in an allocated page.
//
// Ownership (slot-owned pages, docs/api.md "Slot ownership")
//   O2  PG_slot_owned on a state holder <=> its owned marker (page-map code; HEAD: region word
//       bit 16) => its owner entry is non-zero (an unowned one's entry may be anything stale).
//   O3  a slot-owned page's count never reaches 0 except inside free_pages_from on its owner
//       slot, which claims it (count 1 -> 0) before reading the owner; split_huge_page_to freezes
//       it the same way; move_pages_owner holds a reference plus PG_owner_busy; adopt_pages claims
//       an unowned page (count 1 -> 0) and marks it PG_publishing until its ownership is durable.
//       So the owner of a page changes only under one of those four claims.
//   A fork() child (g_fork_generation differs) never writes the media.
//   A volatile pool (volatile_) has the same words in anonymous DRAM and the same invariants, but
//   no backend call: fence() and flush_later() return at once and the intent log is disabled.
//   A read-only pool (read_only_) writes only its private mapping, and only while open() runs
//   recovery (media_writable_); after that the mapping is PROT_READ and the repairs of lazy loads
//   go to overlay_ (DRAM), which check() reads in place of the media words they replace.
//
// Volatile invariants (V1..V5; checked by check())
//   V1  every region is exactly one of: in a free buddy block, HEAD/TAIL of an allocated compound,
//       SPLIT (materialised or lazy), or in transit inside one operation.
//   V2  a DRAM allocation exists iff the persistent state records it (after the op's fence).
//   V3  core_->free_pages + the caches' free_delta and remote_delta == pages in free buddy blocks + stashed blocks +
//       free pages of materialised split regions.
//   V4  descriptors: see pmpage/page.hpp I1..I5.
//   M1  (volatile pools) a page in a thread's magazine (magazine.hpp) is an order-0 head in its
//       region's page map and used in its free_bits, counted allocated by the region and V3, with
//       its descriptor in the free state (count 0, no flags, order 0, no compound link, private 0;
//       its owner entry may be stale: O1), and in no other magazine. stats().free_pages adds the magazines' pages.
//   R1  a region a cache holds, a stashed block and every allocation made in this open have
//       their blocks reserved in a sparse backing file (region_backing.hpp).
//   S6, H1, C1: split_region.hpp (region locks), the empty list, per-CPU stashes (check.cpp).
//
// Lock order (cpu_cache.hpp, magazine.hpp): g_mags -> magazine::busy -> cpu_cache::mu -> core_->mu (the
// pool lock) -> split_state::own_lock.
// None is held while fencing on the common paths (flushes are issued after the locks:
// flush_later) or while calling user code. The intent log has no lock. The registry lock and
// the open-pools list are taken by open/close; fork() takes every lock of the library in the
// order written at the top of fork.cpp.
//
// Every flush and fence goes through pers_ (the persistence seam); fence() also makes every lazily
// retired intent durable (intent_log.hpp), and returns the pool's write-back error: once a backend
// reported one (msync failed), every later fence of the pool returns it (durability_failed) and
// every call that makes something durable fails with it until the pool is reopened; the DRAM
// state stays consistent (an allocation is undone, a free is completed).
#pragma once

#include <array>
#include <atomic>
#include <cassert>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "device.hpp"
#include "intent_log.hpp"
#include "layout.hpp"
#include "pmpage/pool.hpp"
#include "region_backing.hpp"
#include "region_buddy.hpp"
#include "registry.hpp"
#include "adaptive_mutex.hpp"
#include "cpu_cache.hpp"
#include "magazine.hpp"
#include "pool_core.hpp"
#include "split_region.hpp"

namespace pmpage::detail {

/// Persistent stores an allocation made under the lock, to be made durable by its caller.
/// The regions an allocation (or a bulk batch) split fresh: they need their SPLIT word after
/// the first fence, and are published to the filler only then.
struct alloc_plan {
  static constexpr unsigned MAX_FRESH = 8;
  std::uint32_t fresh[MAX_FRESH];
  unsigned nr_fresh = 0;
  bool fresh_full = false;  // a fresh region was needed but fresh[] is full
};

/// Regions a sweep took off the empty list to merge: FREE on the media (not yet fenced), their
/// descriptors still backed; finish_merges fences, gives the memory back and frees them.
struct merge_batch {
  static constexpr unsigned MAX = 32;
  std::uint32_t regions[MAX];
  unsigned n = 0;
};

/// What a free left to do after its fence.
struct free_result {
  enum kind_t { done, refile, return_large, deferred } kind = done;
  bool large = false;  // an order >= 9 page (region)
  unsigned first = 0;  // small: index of the head within its region
  std::uint32_t region = 0;
  unsigned order = 0;  // order of the freed compound page
};

class pool_impl {
 public:
  pool_impl() = default;
  ~pool_impl();

  // ---- set-up (recovery.cpp) -------------------------------------------------------------------
  static std::unique_ptr<pool_impl> create(const std::string& path, const pool::options& opts);
  static std::unique_ptr<pool_impl> open(const std::string& path, const pool::open_options& opts);
  // volatile_pool.cpp: a pool whose metadata lives in DRAM (no flush, fence or intent)
  static std::unique_ptr<pool_impl> create_volatile(const pool::volatile_options& opts);

  // ---- allocation (pool.cpp) -------------------------------------------------------------------
  page* alloc_pages(unsigned order, gfp_t gfp) noexcept;
  std::size_t alloc_pages_bulk(unsigned order, std::size_t n, page** out, gfp_t gfp) noexcept;
  page* alloc_pages_to(unsigned order, pfn_t* dest, gfp_t gfp, const pool::page_init* init = nullptr) noexcept;
  page* replace_pages(pfn_t* dest, unsigned order, gfp_t gfp, const pool::page_init* init) noexcept;
  int free_pages_from(pfn_t* src) noexcept;
  /// The bulk slot calls (pool.cpp, "bulk slot calls"): alloc_pages_bulk_to's batches of up to
  /// BULK_BATCH slots (its stack arrays).
  static constexpr unsigned BULK_BATCH = 64;
  std::size_t alloc_pages_bulk_to(unsigned order, std::span<pfn_t* const> dests, gfp_t gfp) noexcept;
  int free_pages_bulk_from(std::span<pfn_t* const> srcs) noexcept;
  int move_pages_owner(pfn_t* src, pfn_t* dest) noexcept;
  /// Makes *slot the owner of the unowned allocation it names (pool.cpp, "adoption").
  int adopt_pages(pfn_t* slot) noexcept;
  /// A compound page's count reached zero: free it durably. `holder` is its state holder.
  void release(page* holder) noexcept;
  int split_huge_page(page* head) noexcept;
  int split_huge_page_to(page* head, pfn_t* slots) noexcept;
  /// put_page/free_pages reached zero on a slot-owned page: restore the count and report.
  void report_owned_release(page* p, page* holder) noexcept;
  /// The same report without touching the count (put_page saw the slot's reference first).
  /// Both free the page instead when its owning slot is void (pool.cpp, "orphaned owned pages").
  void report_owned(page* p, page* holder) noexcept;
  pool::slot_check check_slots(std::span<pfn_t* const> slots);
  void materialise(std::uint32_t region) noexcept;

  /// pool.grow(new_size) (grow.cpp): grows this open pool in place; 0 or -errno (errno and the C
  /// API's message set; misuse reported for a read-only pool or a fork() child).
  int grow(std::uint64_t new_size) noexcept;

  // ---- read-only pools and the recovery log (recovery.cpp) ---------------------------------------
  bool read_only() const { return read_only_; }
  bool is_volatile() const { return volatile_; }
  int numa_node() const { return numa_node_; }
  std::string memory_description() const;  // pool::memory_description (pool.cpp)
  /// Misuse if the pool is read-only: reports `caller` (nothing may change) and returns true.
  bool refuse_read_only(const char* caller) const noexcept;
  std::vector<std::string> recovery_log() const;

  // ---- bad blocks (badblocks.cpp) -----------------------------------------------------------------
  /// The list as the caller knows it: device offsets, or a volatile pool's backing offsets.
  std::vector<bad_block> bad_block_list() const {
    std::vector<bad_block> v = bad_blocks_;
    if (volatile_)
      for (bad_block& b : v) b.offset -= lay_.data_offset;
    return v;
  }
  std::vector<hwpoison_page> hwpoison_list();

  // ---- introspection (check.cpp / pool.cpp) -----------------------------------------------------
  pool_stats stats() noexcept;
  std::size_t trim() noexcept;
  /// pthread_atfork: every allocator lock of this pool, taken before fork() and released after
  /// it in both processes (region locks re-made in the child).
  void lock_for_fork();
  void unlock_after_fork(bool child);
  std::size_t trim_now() noexcept;  // trim without the fork check (close)
  std::size_t merge_empty_regions() noexcept;  // every empty split region no cache holds; how many
  void collect_allocations(std::vector<std::pair<page*, unsigned>>& out);
  std::string check();

  // ---- accessors ---------------------------------------------------------------------------------
  const std::string& path() const { return dev_.path(); }
  pfn_t start_pfn() const { return pfn_base_; }
  pfn_t end_pfn() const { return start_pfn() + nr_pages_; }
  char* base() const { return dev_.base(); }
  std::uint64_t mapped_length() const { return dev_.mapped_length(); }
  bool is_pmem() const { return gran_ != granularity::page; }
  /// The granularity the pool's flushes and fences follow (persistence.hpp): the backend's
  /// answer at attach. A volatile pool: page (it never flushes).
  granularity store_granularity() const { return gran_; }
  char* root() const { return dev_.base() + lay_.root_offset; }
  std::uint64_t root_size() const { return lay_.root_size; }
  persistence& pers() const { return *pers_; }
  /// Starts writing back [p, p + len) now (slots the caller's stores just filled); nothing in a
  /// volatile pool.
  void flush_now(const void* p, std::size_t len) noexcept {
    if (!no_flush_) pers_->flush(p, len);
  }
  /// The fence every caller uses, the application's pool.drain() included (intent_log.hpp).
  /// It first issues this thread's deferred flushes (flush_later). Returns 0, or the pool's
  /// write-back error (a positive errno, see durability_failed): what this fence covered may not
  /// be durable.
  int fence() noexcept {
    if (volatile_) return 0;  // nothing to make durable: a volatile pool queues no flush either
    issue_deferred_flushes();
    intent_log::fence_token t;
    intents_.before_fence(t);
    pers_->drain();
    intents_.after_fence(t);
    // One load of a counter that never moves on a healthy backend (persistence.hpp).
    if (PMPAGE_UNLIKELY(pers_->writeback_errors() != 0)) return latch_writeback_error();
    return 0;
  }
  /// 0, or the write-back error (a positive errno: EIO, ENOSPC, ...) that made this pool's
  /// durability unknown. Latched the first time a fence (or this call) finds the backend reported
  /// a failure since attach, and returned by every later call until the pool is closed: once a
  /// write-back failed, nothing the pool makes durable afterwards can be trusted either (the
  /// kernel reports a failed write-back once, then calls the pages clean). For paths that fence
  /// through other means (the slot calls' fences are fence(), which returns the same value).
  /// One load on a healthy pool.
  int durability_failed() const noexcept {
    if (volatile_ || !pers_ || PMPAGE_LIKELY(pers_->writeback_errors() == 0)) return 0;
    return latch_writeback_error();
  }
  /// A call that could not make its change durable (e: durability_failed()): sets errno and the
  /// C API's message (pmpage_errormsg) naming the pool, the call and the error. Cold.
  void note_writeback_failure(const char* caller, int e) const noexcept;
  /// pool::close: the final trim and fence (idempotent; the destructor calls it too), then
  /// durability_failed().
  int close_flush() noexcept;
  std::filesystem::path fs_path;

 private:
  /// durability_failed's slow path (media.cpp): latches the backend's error if it came after attach.
  int latch_writeback_error() const noexcept __attribute__((noinline, cold));
  /// The undo of an allocation whose fence failed (e: its error): the page goes back, the call
  /// fails with e (note_writeback_failure). Returns nullptr.
  page* fail_alloc(page* p, const char* caller, int e) noexcept __attribute__((noinline, cold));

  // --- open path (recovery.cpp)
  void adopt_superblock(const superblock& sb);
  /// Throws pmpage::error(durability_failed(), ...) if a write-back failed (create, open).
  void refuse_if_not_durable(const char* what) const;
  void map_and_attach(std::shared_ptr<persistence> backend, device::map_mode mode = device::map_mode::shared_write);
  /// Points the metadata tables and the intent log into the mapping (lay_ and pers_ set).
  void locate_metadata();
  /// One line of recovery_log() (the places that count core_->repaired).
  void note_repair(std::string line);
  /// A repair's word store: persisted while the mapping may be written, else kept in overlay_
  /// (a read-only pool after open; core_->mu held, or open still running).
  void repair_word(std::uint64_t* w, std::uint64_t v) {
    if (media_writable_)
      persist_word(w, v);
    else
      overlay_[w] = v;
  }
  /// A metadata word as recovery leaves it: overlay_'s value if a lazy repair of a read-only pool
  /// put one there, else the media's (core_->mu held). What check() reads.
  std::uint64_t view_word(const std::uint64_t* w) const {
    if (PMPAGE_LIKELY(overlay_.empty())) return load_word(w);
    const auto it = overlay_.find(w);
    return it == overlay_.end() ? load_word(w) : it->second;
  }
  std::string validate_region_table() const;
  void replay_intents();
  bool replay_ensure_allocated(std::uint64_t index, unsigned order, std::uint64_t owner);
  bool replay_ensure_free(std::uint64_t index, unsigned order, std::uint64_t owner);
  bool replay_split_to(std::uint64_t index, std::uint64_t slots_off, bool& undone);
  bool replay_move_to(std::uint64_t index, std::uint64_t src_off, std::uint64_t dest_off);
  void build_volatile();
  void register_pool();
  // --- bad blocks (badblocks.cpp; pool_impl.hpp has nothing of them on the media)
  /// open_options' list and libpmem2's into bad_blocks_ (validated, normalised); refuses (EIO) a
  /// range over a superblock copy before either is read.
  void gather_bad_blocks(const pool::open_options& opts);
  /// EIO naming the range and the structure when a bad block touches the metadata of `lay`.
  void refuse_metadata_hits(const layout& lay) const;
  /// bad_pages_ and bad_bits_ from bad_blocks_ (lay_ known).
  void index_bad_pages();
  /// After build_volatile: PG_hwpoison on large allocations over a bad page, bad split regions
  /// loaded (materialise_locked holds their bad free pages out and marks their allocations).
  void apply_bad_pages_at_open();
  /// region r's bad-page bitmap (8 words), or nullptr.
  const std::uint64_t* bad_bits_of(std::uint32_t r) const;
  bool has_bad_region(std::uint32_t first, std::uint32_t n) const;
  /// A free region with a bad page leaves every allocator index (core_->mu, or open): Q1.
  void quarantine_region_locked(std::uint32_t r);
  /// Region lock held, s.bad_bits set: takes the bad pages of [first, first + count) back out of
  /// free_bits (Q2); returns how many.
  unsigned hold_bad_pages(split_state& s, unsigned first, unsigned count);
  /// PG_hwpoison on every allocation of split region r (s built) that holds a bad page (Q3).
  void mark_hwpoison_small(std::uint32_t r, split_state& s);
  struct bad_page_state {
    enum kind_t { none, quarantined, poisoned } kind = none;
    std::uint64_t head = 0;  // poisoned: pool page index of the allocation's head
    unsigned order = 0;
  };
  /// What bad page `index` is now (every allocator lock held, or the region's).
  bad_page_state classify_bad_page(std::uint64_t index) const;
  /// Under lock_all: stats' two figures, and the poisoned pages into *list if given.
  void count_bad_pages_locked(std::uint64_t& quarantined, std::uint64_t& poisoned, std::vector<hwpoison_page>* list);
  // --- create path (recovery.cpp): marker, metadata, superblock B, superblock A (4 fences)
  void format(const layout& lay, const superblock& sb);

  // --- persistent metadata addresses
  std::uint64_t* region_word(std::uint32_t r) const { return region_table_ + r; }
  std::uint64_t* page_map(std::uint32_t r) const { return page_maps_ + std::uint64_t(r) * PAGE_MAP_WORDS; }
  /// The owner entry of pool page `index` (layout.hpp, rule O1): raw words (0 tests work on them
  /// raw); write_owner / read_owner encode and decode the slot offset they name.
  std::uint64_t* owner_entry(std::uint64_t index) const { return owner_table_ + index; }
  void write_owner(std::uint64_t index, std::uint64_t slot_off) { persist_word(owner_entry(index), encode_owner(index, slot_off)); }
  /// The slot offset page index's entry names: 0 none, OWNER_INVALID damaged (as check() sees it).
  std::uint64_t read_owner(std::uint64_t index) const { return decode_owner(index, view_word(owner_entry(index))); }
  /// An owned allocation's entry (its epoch 1). An entry that already holds the value (the page's
  /// previous owned life was in the same slot, and its free left the entry: O1) is neither stored
  /// nor written back: it is durable, since every writer of a non-zero entry fences it before the
  /// page can change hands (alloc_pages_to's first epoch, move_pages_owner, split_huge_page_to,
  /// adopt_pages, recovery); only zeros are left unfenced, and a zero never equals an entry.
  void record_owner(std::uint64_t index, std::uint64_t slot_off) {
    const std::uint64_t want = encode_owner(index, slot_off);
    if (load_word(owner_entry(index)) != want) persist_word(owner_entry(index), want);
  }
  /// A free of an owned page: its entry is left stale (it counts only under the owned marker the
  /// free clears: O1), except a raw one (a 0.2 pool's), which counts without a marker: cleared.
  void forget_owner(std::uint64_t index) {
    if (PMPAGE_UNLIKELY(owner_entry_raw(load_word(owner_entry(index))))) persist_word(owner_entry(index), 0);
  }
  /// The owner table words of a split_huge_page_to and the caller's slots 1..511 (flushed).
  void write_split_to_words(std::uint32_t r, std::uint64_t slots_off, bool store_slots);
  /// Every page of region r an order-0 head in its page map, owned or plain (flushed).
  void write_split_map(std::uint32_t r, bool owned = false);
  /// Zeroes region r's raw owner entries (flushed), which count without a marker; tagged ones
  /// stay (stale entries are ignored: O1).
  void clear_owner_entries(std::uint32_t r);
  static void store_word(std::uint64_t* w, std::uint64_t v) {
    std::atomic_ref<std::uint64_t>(*w).store(v, std::memory_order_relaxed);
  }
  static std::uint64_t load_word(const std::uint64_t* w) {
    return std::atomic_ref<const std::uint64_t>(*w).load(std::memory_order_relaxed);
  }
  /// Stores a word and queues its flush for this thread's next fence (flush_later).
  void persist_word(std::uint64_t* w, std::uint64_t v) {
    assert(media_writable_ && "a media write in a read-only pool");
    store_word(w, v);
    flush_later(w, 8);
  }
  /// Queues a flush of [p, p + len) to be issued by this thread's next fence(). Why: on x86 a
  /// locked instruction (every mutex lock and unlock, every atomic read-modify-write) waits for
  /// the thread's outstanding CLWBs, so a flush issued inside a critical section holds the lock
  /// for a whole write-back, and one issued before taking a lock costs a hidden fence. Every
  /// caller fences before it returns.
  void flush_later(const void* p, std::size_t len) noexcept;
  void issue_deferred_flushes() noexcept;
  void forget_deferred_flushes() noexcept;  // at close: drops this thread's entries for this pool
  /// Issues this thread's queued flushes when a public call returns, so none outlives it (the
  /// pool, and its backend, may be closed by another thread afterwards).
  struct deferred_flush_scope {
    pool_impl* p;
    ~deferred_flush_scope() { p->issue_deferred_flushes(); }
  };
  /// Retires an operation's intent lazily (its flush queued for this thread's next fence; every
  /// other thread's fence re-flushes it meanwhile) and gives the lane back.
  void retire_intent(unsigned lane) noexcept {
    intents_.retire_lazily(lane);
    flush_later(intents_.seq_word(lane), 8);
    intents_.release(lane);
  }
  /// Publication (pool.cpp, "publication"): alloc_pages_to marks its page PG_publishing from
  /// before its slot's compare-and-swap until its intent's retirement is pending; every other
  /// operation that can act on a slot-owned page waits for the mark to clear (P5).
  void end_publication(page* h) noexcept;
  /// Returns at once in a fork() child: the publishing thread does not exist there, and a child
  /// never writes the media (nothing it does can be replayed over).
  void wait_published(page* h) const noexcept;
  // --- descriptors
  page* region_desc(std::uint32_t r) const { return regions_ + r; }
  page* vpage(std::uint64_t index) const { return vmemmap_ + index; }
  pfn_t pfn_of_index(std::uint64_t index) const { return start_pfn() + index; }
  bool is_region_desc(const page* p) const { return p >= regions_ && p < regions_ + nr_regions_; }
  void back_descriptors(std::uint32_t r);     // materialise the 512 4 KiB descriptors (zeroed)
  void release_descriptors(std::uint32_t r);  // give their memory back (madvise)

  // --- allocator internals; *_locked functions require core_->mu (lock order: cpu_cache.hpp)
  /// Checks the order and chooses pages; with apply, also writes them (unfenced).
  page* reserve(const char* caller, unsigned order, alloc_plan& plan, bool apply);
  // placement.cpp: per-CPU caches, the filler, the empty list, merges
  void init_caches();
  cpu_cache& this_cpu_cache() { return core_->caches[current_cpu() % core_->nr_caches]; }
  /// Orders 0..8 from this CPU's cache (refilled as needed); nullptr when no room is left anywhere.
  page* alloc_small(unsigned order, alloc_plan& plan, bool apply);
  /// alloc_small's last resort, under every lock (lock_all): nullptr means no free extent of that order.
  page* alloc_small_anywhere(unsigned order, alloc_plan& plan, bool apply);
  /// alloc_pages_bulk of order 0: whole words of the free bitmap at a time, one write per line.
  std::size_t bulk_order0(std::size_t n, page** out, alloc_plan& plan);
  /// describe: build each page's descriptor (count 1); without it the descriptors stay in the
  /// free state (a magazine's refill: magazine.hpp).
  std::size_t bulk_order0_held(std::size_t n, page** out, alloc_plan& plan, merge_batch& mb, bool describe = true);
  page* alloc_large(unsigned order, bool apply);
  /// A free block of `order` from the buddy (free_pages_ counted, descriptors not set up yet:
  /// in transit), or NIL.
  std::uint32_t take_large_locked(unsigned order);
  /// alloc_large's last resort, under every lock: stashes drained, empty split regions merged.
  /// fs_full: the file system refused a reservation; only blocks reserved already are taken.
  page* alloc_large_anywhere(unsigned order, bool fs_full);
  /// After a reservation failed: a block of `order` from the buddy whose regions are all
  /// reserved already (used and freed since open), or NIL. Looks at a bounded number of blocks,
  /// makes no system call; the others stay in the buddy.
  std::uint32_t take_reserved_block_locked(unsigned order);
  /// Reserves the blocks of [r, r + n) in a sparse backing file (region_backing.hpp); on failure
  /// sets errno and the C API's message and returns false. No lock held (a syscall).
  bool reserve_backing(std::uint32_t r, std::uint32_t n) noexcept;
  /// R1 for a region refill_locked found unreserved (no lock held): reserves it; a `fresh` one
  /// (taken from the buddy) goes back to the buddy either way. false: the file system is full.
  bool reserve_region_unlocked(std::uint32_t r, bool fresh);
  /// R1 for a large block taken from the buddy (no lock held): r, or a block reserved already
  /// in its place, or NIL when the file system is full (errno set; the block given back).
  std::uint32_t reserve_large_unlocked(std::uint32_t r, unsigned order);
  /// The descriptors of a large page taken from the buddy or a stash at region r.
  page* setup_large(std::uint32_t r, unsigned order);
  /// Region lock held: marks [pos, pos + 2^order) used in region r and builds its descriptors.
  page* carve(cpu_cache& c, std::uint32_t r, unsigned pos, unsigned order);
  /// c.mu held, c's region cannot serve `order`: the region to carve from (attached to c, or a
  /// fresh one of this plan) and the position in pos; NIL when none has room.
  std::uint32_t refill(cpu_cache& c, unsigned order, alloc_plan& plan, int& pos, merge_batch& mb);
  /// c.mu + core_->mu, no sweep: refill's search. A region it would take whose blocks are not
  /// reserved (R1) is returned in `unreserved` instead (NIL result; `fresh`: taken from the
  /// buddy, the caller owns it); with fs_full only reserved regions are taken.
  std::uint32_t refill_locked(cpu_cache& c, unsigned order, alloc_plan& plan, int& pos, std::uint32_t& unreserved,
                              bool& fresh, bool fs_full);
  /// c.mu + core_->mu: its split region goes back to the filler (to the empty list, if wholly free).
  void detach_locked(cpu_cache& c, std::uint64_t empty_since_ms);
  /// c.mu + core_->mu: its region and its stash go back (idle: the region has been idle since last use).
  void drain_locked(cpu_cache& c, bool idle);
  bool attach_locked(cpu_cache& c, std::uint32_t r, unsigned order, int& pos);  // c.mu + core_->mu
  void empty_add_locked(std::uint32_t r, split_state& s, std::uint64_t since_ms);
  void empty_remove_locked(std::uint32_t r, split_state& s);
  void take_empty_locked(std::uint32_t r, merge_batch& mb);
  /// Drains idle caches; takes empty regions past the hysteresis bounds (all of them with `all`).
  void sweep_locked(merge_batch& mb, bool all);
  /// Fences the batch's FREE words, gives back descriptor memory, frees the regions to the buddy.
  void finish_merges(const merge_batch& mb);
  /// finish_merges' last step (core_->mu held, after the fence): the regions go to the buddy.
  void merged_locked(const merge_batch& mb);
  /// A free changed region r's list (no cache holds it): re-file it under the pool lock.
  void refile(std::uint32_t r);
  /// Every cache gives its region back to the filler; true if any held one.
  bool drain_caches();
  std::uint64_t cached_free_delta() const;
  void lock_all();    // every cache lock in index order, then the pool lock (check, walks)
  void unlock_all();
  // magazine.cpp: per-thread magazines of free order-0 pages (volatile pools; magazine.hpp)
  /// Turns magazines on (create_volatile, once the pool is complete).
  void enable_magazines() noexcept;
  /// An order-0 page from this thread's magazine (refilled from this CPU's cache), its count 1;
  /// nullptr when the magazine cannot be had or refilled (the caller takes the ordinary path).
  page* mag_alloc() noexcept;
  /// The last reference of order-0 page h went: h goes to this thread's magazine (its descriptor
  /// set to the free state). false: no magazine (the caller frees it the ordinary way).
  bool mag_free(page* h) noexcept;
  /// This thread's magazine for this pool (created on first use), or nullptr while it exits.
  magazine* this_thread_magazine() noexcept;
  magazine* magazine_slow() noexcept;
  /// busy held: refills m from this CPU's cache; how many it holds now (0: no room there).
  unsigned mag_refill(magazine& m) noexcept;
  /// busy held: gives m's n oldest pages back to their regions.
  void mag_flush(magazine& m, unsigned n) noexcept;
  /// Every magazine of this pool gives its pages back (trim, the last-resort paths). No lock held.
  void drain_magazines() noexcept;
  /// close: drains and kills every magazine of this pool (none is reachable afterwards).
  void close_magazines() noexcept;
  /// g_mags and every magazine lock of this pool, before lock_all (check, stats, walks, fork).
  void lock_magazines() noexcept;
  void unlock_magazines() noexcept;
  /// Under lock_magazines: the pages the magazines hold, sorted (check, the walks).
  std::vector<const page*> magazine_pages() const;
  /// The persistent stores of a chosen allocation (unfenced): page-map codes or region word.
  void apply_alloc(page* p, unsigned order, std::uint64_t owner);
  /// The same for a small page, with its region's lock held.
  void apply_small_held(std::uint32_t r, page* p, unsigned order, std::uint64_t owner);
  bool check_gfp(const char* caller, gfp_t gfp) const noexcept;
  /// GFP_ZERO: zeroes the pages and flushes them (durable at the allocation's fence).
  void zero_pages(page* p, unsigned order);
  /// Copies the cache lines of r's page map holding words [w0, w1] from the mirror (S5) to the media.
  void write_map_locked(std::uint32_t r, unsigned w0, unsigned w1);
  /// Makes region r, just taken from the buddy and reserved, a fresh split region of this plan.
  std::uint32_t take_fresh_region_locked(alloc_plan& plan, std::uint32_t r);
  bool materialise_locked(std::uint32_t r);
  void init_compound_small(std::uint32_t r, unsigned first, unsigned order);
  /// Durability of a finished plan: fence 1 done by caller; writes fresh SPLIT words (flushed).
  void write_fresh_split_words(const alloc_plan& plan);
  void publish_fresh(const alloc_plan& plan);
  /// Writes the persistent stores of a free (flushed, not fenced) and, with release_now, gives
  /// the pages back to the allocator's DRAM state; else returns `deferred` for release_freed.
  free_result free_stores(page* holder, bool release_now = true);
  /// The DRAM half of a deferred free: after it the pages can be handed out again.
  free_result release_freed(free_result fr);
  void release_small_held(split_state& s, free_result& fr);
  void prefetch_map_line(const page* holder) const;
  /// After the free's fence: re-file the region / return regions to the buddy.
  void finish_free(const free_result& fr);
  /// Region r's split state (constructed: regions_[r].alloc_state_ == 1).
  split_state& sstate(std::uint32_t r) const { return states_[r]; }
  /// Constructs region r's split state in the table (materialise, fresh split, split_huge_page).
  /// core_->mu held: every make and drop runs under the pool lock (drop_sstate's page release relies on it).
  split_state* make_sstate(std::uint32_t r) {
    regions_[r].alloc_state_ = 1;
    return new (&states_[r]) split_state{};
  }
  /// Destroys region r's split state (merge, close; core_->mu held), and gives the table's page back
  /// once none of the regions it serves has a state, so the table's memory follows the split
  /// regions as the heap allocations it replaced did.
  void drop_sstate(std::uint32_t r);
  /// Takes region s's lock, whichever mutex it is at the moment (S6), and returns it.
  adaptive_mutex& lock_region(split_state& s) const {
    for (;;) {
      const std::uint16_t c = s.lock_cpu.load(std::memory_order_acquire);
      adaptive_mutex& m = c == NO_CPU ? s.own_lock : core_->caches[c].mu;
      m.lock();
      if (s.lock_cpu.load(std::memory_order_relaxed) == c) return m;
      m.unlock();  // the region changed hands while we waited: take its new lock
    }
  }
  bool dest_offset(const void* slot, std::uint64_t& off) const;
  /// An 8-byte aligned word inside the root or the data area (checked as numbers, before any
  /// pointer is formed from a value read off the media).
  bool slot_offset_valid(std::uint64_t off) const;
  /// What recovery makes of an allocated head's non-zero owner entry e (O1; recovery.cpp).
  enum class owner_verdict { owns, interrupted, damaged };
  owner_verdict slot_verdict(std::uint64_t index, std::uint64_t e) const;
  /// n consecutive slots from off, all inside the root area or all inside the data area.
  bool slot_range_valid(std::uint64_t off, std::uint64_t n) const;
  /// n slots from off (valid) touch a data page that is not allocated: nobody owns that memory.
  bool slots_in_free_page(std::uint64_t off, std::uint64_t n);
  /// Misuse if this process is a fork() child of the one that opened the pool (it may read, not
  /// allocate or free: its DRAM state is a stale copy of the parent's).
  bool forked(const char* caller) const noexcept;
  /// One batch of alloc_pages_bulk_to (validated slots); how many it filled. stop: end the call.
  std::size_t alloc_to_batch(unsigned order, std::span<pfn_t* const> dests, gfp_t gfp, bool& stop) noexcept;
  /// The slot protocol's allocation (pool.cpp): records the reserved page allocated and owned by
  /// the slot at `slot` (epoch 1), fences, fills *dest by compare-and-swap, fences. p's holder h
  /// is PG_slot_owned already (PG_publishing is set here). Null (and the page given back) if *dest
  /// did not hold `old`.
  page* publish_to(page* p, page* h, unsigned order, alloc_plan& plan, pfn_t* dest, std::uint64_t slot, pfn_t old,
                   const char* caller) noexcept;
  /// Zeroes (GFP_ZERO) and runs the engine's initialiser on a reserved, unpublished page; if the
  /// initialiser refuses, gives the page back and returns false (errno and message set).
  bool fill_reserved(page* p, page* h, unsigned order, alloc_plan& plan, gfp_t gfp, const pool::page_init* init,
                     const char* caller) noexcept;
  /// The state holder of a page reserve() returned (its region descriptor for order >= 9).
  page* holder_of_reserved(page* p, unsigned order) const;
  /// A single-slot call's checks of its slot argument (an 8-byte word of the root or data area,
  /// not a fork() child, not in a free page): its device offset in off, or false (reported).
  bool usable_slot(const char* caller, const pfn_t* p, std::uint64_t& off) noexcept;
  /// Makes allocated page h plain on the media (owned marker or bit and owner entry cleared;
  /// flushed, not fenced). A crash before that is durable finds it owned by a slot that does not
  /// name it, which frees it: only for a page no slot names.
  void drop_owner_record(page* h);
  /// publish_to's loser of the slot race: frees its recorded, never published page (no fence).
  void give_back_lost(page* h);
  /// Returns a reserved page its caller never recorded on the media nor published to the
  /// allocator, after publishing `plan`'s fresh regions (pool.cpp).
  void give_back_unpublished(page* h, alloc_plan& plan);
  /// The shared part of split_huge_page / split_huge_page_to after the media is written.
  void split_descriptors(page* h, std::uint32_t r, bool owned);
  /// Takes the split's own page lock on h, freezes the count; undoes and returns an errno on failure.
  int split_prepare(page* h);
  /// Drops the split's own page lock (a split that gave up), waking sleepers.
  void split_unlock(page* h);
  /// The slot offset that owns the allocation held by h and headed at `index`, or 0 (unowned).
  std::uint64_t slot_owner(page* h, std::uint64_t index) const;
  /// Pool page index of the head whose state holder is h.
  std::uint64_t head_index(page* holder) const;
  /// h is owned by a slot that is void: outside the pool's slot areas, in a free page, or not
  /// naming the page (the engine freed or overwrote it). Then only an orphan release frees it.
  bool owner_is_void(page* holder, std::uint64_t index);
  /// Drops a void owner and frees the page (count claimed at 0 by the caller).
  void release_orphan(page* holder, std::uint64_t index) noexcept;
  /// Reports `slot` naming pfn without owning it (dangling, unowned or another slot's); -EINVAL.
  /// The state holder of the allocation whose head `pfn` (read from `slot`) is, or nullptr
  /// after reporting misuse as `caller`: a pfn outside the pool, or a tail.
  page* head_named_by(const char* caller, const pfn_t* slot, pfn_t pfn);
  int report_not_owner(const char* caller, const pfn_t* slot, pfn_t pfn, page* h, std::uint64_t index);
  bool covered_by_earlier_head(std::uint32_t r) const;
  /// mag: the magazines' pages (magazine_pages), checked as free (M1).
  std::string check_locked(const std::vector<const page*>& mag);
  /// O1 for the allocation headed by page `index`: "" or the violation.
  std::string owner_problem(std::uint64_t index, bool owned) const;
  /// The slot offset recorded for the allocation headed at `index`, or 0 if it is not slot-owned.
  std::uint64_t recorded_owner(std::uint64_t index);

  open_slot slot_;  // before the resources below, so it is given back after them
  device dev_;
  std::shared_ptr<persistence> pers_;
  std::uint64_t wb_seen_ = 0;             // pers_->writeback_errors() at attach: earlier ones are not ours
  mutable std::atomic<int> wb_error_{0};  // the latched write-back error (durability_failed)
  bool closed_flush_ = false;             // close_flush ran
  layout lay_{};
  pfn_t pfn_base_ = 0;     // the pool's identity: its pfns are pfn_base_ + page index
  pfn_t picked_base_ = 0;  // the base pick_pfn_base reserved for this new pool (create paths)
  bool registered_ = false;
  // The pool's size: grown in place by grow() (under core_->mu and grow_mu_), read by any thread (a
  // thread that got a page of a new region got it through core_->mu, which orders it after the store).
  std::atomic<std::uint64_t> nr_regions_{0};
  std::atomic<std::uint64_t> nr_pages_{0};
  /// The regions the mapping, the descriptor arrays, the backing bitmap and the pfn registration
  /// are sized for at open: nr_regions_, or the capacity of a pool that can grow in place (a
  /// writable regular file whose superblock allows more regions, superblock_capacity).
  std::uint64_t max_regions_ = 0;
  std::mutex grow_mu_;  // one grow() at a time

  // persistent metadata inside the mapping
  std::uint64_t* region_table_ = nullptr;
  std::uint64_t* page_maps_ = nullptr;
  std::uint64_t* owner_table_ = nullptr;
  lane* lanes_ = nullptr;

  // volatile descriptors
  page* regions_ = nullptr;
  std::size_t regions_bytes_ = 0;
  /// The split states, indexed by region (split_region.hpp, "Storage"): a MAP_NORESERVE
  /// reservation backed only where regions were materialised.
  split_state* states_ = nullptr;
  std::size_t states_bytes_ = 0;
  page* vmemmap_ = nullptr;
  std::size_t vmemmap_bytes_ = 0;

  // The allocator: its shared state in core_ (pool_core.hpp: the pool lock core_->mu, the caches,
  // the empty list, the counters, the states of buddy_, filler_ and intents_), which this pool's
  // views below read through this process's mappings. core_ is own_core_ for a pool only this
  // process has open (an anonymous mapping of its own: pool_core.hpp says why not the heap).
  core_ptr own_core_ = map_core();  // pool_core.hpp: mapped, not allocated
  pool_core* core_ = own_core_.get();
  region_buddy buddy_;
  region_backing backing_;  // R1: which regions' blocks are reserved (sparse backing files only)
  filler filler_;
  std::vector<std::uint32_t> lazy_;  // may hold regions materialised since; skipped when popped
  intent_log intents_;
  // Bad blocks of this open (badblocks.cpp): fixed at open, read without a lock.
  std::vector<bad_block> bad_blocks_;       // sorted, merged; device offsets
  std::vector<std::uint64_t> bad_pages_;    // sorted pool page indexes in a bad block
  std::unordered_map<std::uint32_t, std::array<std::uint64_t, 8>> bad_bits_;  // region -> its bad pages
  bool read_only_ = false;       // open_options::read_only: every mutating call is refused
  bool volatile_ = false;        // create_volatile: the "media" is DRAM; nothing is flushed or fenced
  bool no_flush_ = false;        // volatile_, or byte granularity: flush_later / flush_now / zero_pages flush nothing
  granularity gran_ = granularity::page;  // store_granularity()
  int numa_node_ = -1;           // pool::numa_node()
  std::string memory_desc_;      // pool::memory_description()
  bool media_writable_ = true;   // false once a read-only pool's recovery is done (or device DAX)
  std::unordered_map<const std::uint64_t*, std::uint64_t> overlay_;  // see view_word (core_->mu)
  mutable std::mutex log_mu_;    // guards log_ (lazy loads add lines after open)
  std::vector<std::string> log_;
  // Magazines (magazine.hpp): 0 = off (persistent pools); else this pool's serial, unique in the
  // process, the key of every thread's magazine lookup. mags_: the pool's magazines (g_mags).
  std::uint64_t mag_serial_ = 0;
  magazine* mags_ = nullptr;
  friend struct thread_magazines;
  std::uint64_t fork_generation_ = 0;  // g_fork_generation when the pool was opened
  int opener_pid_ = 0;
};

/// Incremented in every fork() child (pthread_atfork): a pool opened in generation g is the
/// parent's when the process is still in generation g.
extern std::atomic<std::uint64_t> g_fork_generation;

// Set-up helpers shared by create, open (recovery.cpp) and create_volatile (volatile_pool.cpp).
/// Stamps a pool with the process generation it was opened in (pool_impl::forked).
void stamp_opener(std::uint64_t& generation, int& pid);
/// The list of open pools whose allocator locks fork() takes (fork.cpp): a pool joins it once
/// registered and leaves it first thing at close.
void add_open_pool(pool_impl* p);
void remove_open_pool(pool_impl* p);
/// The EMFILE reason when MAX_OPEN_POOLS pools are open.
std::string too_many_pools();

/// The regions an open of a pool with superblock sb reserves for (pool_impl::max_regions_).
std::uint64_t live_capacity(const superblock& sb, const device& d, bool read_only);
/// pool::grow (grow.cpp): grows the closed pool at path in place.
pool::grow_result grow_pool(const std::string& path, std::uint64_t new_size, const pool::grow_options& opts);
/// Why a pool on a device of kind k cannot grow (grow_pool's ENOTSUP), or "" when it can.
std::string growth_refused_for(device::kind k);

/// A backend whose flush and drain do nothing: the intent log's at byte granularity (media.cpp).
persistence& no_flush_sink() noexcept;

/// The pool that owns descriptor p (via the section tables).
inline pool_impl* owner_of(const page* p) { return static_cast<pool_impl*>(section_of(p).owner); }

}  // namespace pmpage::detail
