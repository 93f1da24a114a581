/// \file
/// pmpage/fsck.hpp — checking, describing and repairing a pool that is not open: the library
/// behind the pmpage(1) tool (`pmpage info`, `check`, `map`, `dump`).
///
/// Layer: beside pool.hpp; independent of the allocator. It reads the media as bytes (the format
/// is docs/format.md) and never builds descriptors, so it works on pools that pool::open refuses
/// (a corrupt region table, both superblock copies damaged, a truncated file) and on pools of any
/// size at O(metadata) cost. Counterparts: a file system's fsck, PMDK's `pmempool info/check`.
///
/// Read-only unless options::repair: the file is opened O_RDONLY, mapped PROT_READ and locked
/// shared (several readers; refused with EBUSY while a writer holds the pool). A repairing check
/// opens it read-write and locks it exclusively.
///
/// Thread-safety: every function is independent and reentrant; two calls on one path follow the
/// lock rules above.
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "pmpage/types.hpp"

/// Checking, describing, repairing and re-identifying pools that are not open (fsck.hpp).
namespace pmpage::fsck {

/// One finding. Locations are -1 when they do not apply.
struct problem {
  /// The rule broken, as docs/format.md ("Checking a pool") names it: F1-F2 the file, SB1-SB4
  /// superblocks, L1-L3 intent lanes, R1-R3 and P1 the region table, P2 page maps, O1 owners.
  std::string rule;
  /// "file", "superblock A", "superblock B", "intent lanes", "region table", "page map",
  /// "owner table".
  std::string structure;
  std::int64_t region = -1;  ///< 2 MiB region index
  std::int64_t page = -1;    ///< 4 KiB page within the region (0..511)
  std::int64_t word = -1;    ///< index of the 8-byte word in its structure (lane number for lanes)
  std::uint64_t offset = 0;  ///< byte offset in the file of the first byte concerned
  std::uint64_t length = 0;  ///< bytes concerned
  std::string what;          ///< one line: what is wrong
  /// What a repairing check does about it; empty when it cannot be repaired without possibly
  /// losing an allocation (the problem is then left for a human, and the exit code says so).
  std::string repair;
  /// The leftovers of an interrupted operation that pool::open's recovery completes or undoes
  /// by itself (pending intents, torn page maps, a superblock copy being rewritten): expected
  /// after a crash or kill, not damage. A pool with only these is healthy.
  bool recovery = false;
  /// Set by a repairing check when the repair was made (and a re-check no longer finds it).
  bool repaired = false;

  /// A repairing check can repair it (repair is not empty).
  bool repairable() const { return !repair.empty(); }
};

/// A region as the map draws it.
enum class region_kind : std::uint8_t {
  free,     ///< wholly free (FREE on the media, not inside a large allocation)
  split,    ///< split into 4 KiB pages; see used_pages
  head,     ///< first region of an allocation of order >= 9
  tail,     ///< a later region of such an allocation
  damaged,  ///< its region word or page map breaks a rule that the repair cannot decide
};

/// One region of report::regions (`pmpage map`).
struct region_info {
  region_kind kind = region_kind::free;  ///< what the region holds
  std::uint8_t order = 0;        ///< head/tail: the allocation's order (9..18)
  std::uint16_t used_pages = 0;  ///< split: allocated 4 KiB pages, 0..512
};

/// A bad block (media error) and what it means for the pool (report::bad_blocks; docs/cli.md).
struct bad_block_finding {
  /// What the bad block hits.
  enum class kind : std::uint8_t {
    metadata,   ///< in the pool's metadata: pool::open refuses the pool (damage)
    allocated,  ///< an allocated data page: open marks its allocation PG_hwpoison (its data is lost)
    free,       ///< a free data page: open quarantines it (not damage)
    outside,    ///< padding or beyond the pool: nothing uses it
  };
  kind what = kind::outside;  ///< what it hits
  std::uint64_t offset = 0;   ///< file offset of the bad range (metadata, outside), or of its part in one page
  std::uint64_t length = 0;   ///< bytes of it
  std::string where;    ///< "the page maps [0x7000, 0x8f00), the entries of region 3", "pfn 0x...5 (...)"
  pfn_t pfn = 0;        ///< allocated / free: the bad page
  pfn_t head = 0;       ///< allocated: the head of its allocation
  unsigned order = 0;   ///< allocated: the allocation's order
  std::string advice;   ///< what can be done (one or two sentences)
};

/// What a check found. Figures describe the media as recovery would leave the page maps (torn
/// codes counted free) but before pending intents are replayed; pending_intents says how many.
struct report {
  std::string path;             ///< the path checked
  std::uint64_t file_size = 0;  ///< bytes of the file or device
  bool is_device_dax = false;   ///< the path is a device DAX character device (/dev/daxX.Y)
  /// False when no usable superblock was found: the figures below are zero and `problems` says
  /// why (not a pool, an interrupted creation, both copies damaged, truncated file).
  bool readable = false;

  // ---- the superblock (the copy recovery would use) ----
  std::uint32_t format_major = 0;    ///< on-media format version (docs/format.md): 3 for a new pool
  std::uint32_t format_minor = 0;    ///< minor version: compatible additions
  std::string uuid;                  ///< 32 hex digits
  std::uint64_t create_time_ns = 0;  ///< CLOCK_REALTIME at create
  std::uint32_t section_id = 0;      ///< format 2.x: the 16-bit section id (pfn bits 32..47); 3.x: 0
  pfn_t start_pfn = 0;               ///< the pool's first pfn (its pfn base): its identity
  pfn_t end_pfn = 0;                 ///< one past its last pfn: its pfns are [start_pfn, end_pfn)
  std::uint64_t device_size = 0;     ///< bytes the pool was created on, or last grown to (pool::grow)
  std::uint64_t nr_regions = 0;      ///< 2 MiB regions in the data area
  std::uint64_t root_size = 0;       ///< bytes of the root area
  std::uint64_t data_offset = 0;     ///< byte offset of the data area (= bytes of metadata + padding)
  std::uint64_t metadata_bytes = 0;  ///< superblocks, lanes, root, region table, page maps, owner tables

  // ---- contents ----
  std::uint64_t total_pages = 0;        ///< 4 KiB pages in the data area
  std::uint64_t free_pages = 0;         ///< of which free
  std::uint64_t free_regions = 0;       ///< regions wholly free
  std::uint64_t split_regions = 0;      ///< regions split into 4 KiB pages
  std::uint64_t large_allocations = 0;  ///< allocations of order >= 9
  std::uint64_t large_regions = 0;      ///< regions they cover
  std::uint64_t small_allocations = 0;  ///< allocations of order 0..8 (in split regions)
  std::uint64_t owned_allocations = 0;  ///< allocations owned by a slot (alloc_pages_to)
  std::uint64_t damaged_regions = 0;    ///< regions drawn as damaged
  /// Split regions by allocated pages: [0] none (recovery merges it), [1] 1..127, [2] 128..255,
  /// [3] 256..383, [4] 384..511, [5] all 512.
  std::array<std::uint64_t, 6> split_fullness{};
  int largest_free_order = -1;  ///< largest order alloc_pages could return now; -1 when full
  std::uint64_t pending_intents = 0;  ///< intent lanes recovery would replay
  /// DRAM for page descriptors once open: at open (64 B per region) and with every split region
  /// materialised (+ 32 KiB each), the most the pool needs as it stands.
  std::uint64_t descriptor_bytes_at_open = 0;
  std::uint64_t descriptor_bytes_max = 0;  ///< with every split region materialised (see above)

  /// One entry per region when options::regions is set (what `pmpage map` draws).
  std::vector<region_info> regions;
  std::vector<problem> problems;  ///< everything found, damage and recovery's leftovers alike
  /// The bad blocks checked (options::bad_blocks and libpmem2's), one entry per metadata range
  /// and per bad data page. A metadata hit or an allocated page is also a problem (rule BB1, BB2:
  /// damage, never repaired by check); with a metadata hit nothing but the superblocks was read
  /// (reading a bad block kills the reader), so the content figures are 0.
  std::vector<bad_block_finding> bad_blocks;
  /// The most regions pool::grow can give the pool (its capacity: options::max_size at create,
  /// else the slack of its tables); nr_regions when it cannot grow. (Last: added in 0.3.)
  std::uint64_t max_regions = 0;

  /// Problems that are damage (not recovery's) and not repaired.
  PMPAGE_API std::size_t uncorrected() const;
  /// Problems a repairing check repaired.
  PMPAGE_API std::size_t corrected() const;
  /// fsck's convention: 0 no damage (recovery's leftovers alone are not damage), 1 damage found
  /// and all of it repaired (or recovery's work done by a repairing check), 4 damage left.
  /// Operational errors (cannot open, locked) are exceptions, exit code 8 in the tool.
  PMPAGE_API int exit_code() const;
};

/// check()'s options.
struct options {
  /// Repair what can be repaired without losing an allocation: the file is opened read-write
  /// and locked exclusively, damage is repaired first, then recovery (pool::open) runs if
  /// nothing that would make it lose data is left, and a re-check confirms. Off: nothing is
  /// written, ever.
  bool repair = false;
  /// Fill report::regions.
  bool regions = false;
  /// Called from the checking thread every few thousand regions with (regions checked, total);
  /// the tool prints progress when a check runs longer than a second.
  std::function<void(std::uint64_t done, std::uint64_t total)> progress;
  /// Bad blocks to check the pool against, as pool::open_options::bad_blocks (ranges outside the
  /// file are an error: EINVAL), and whether to ask libpmem2 for the device's too.
  std::vector<bad_block> bad_blocks;
  bool device_bad_blocks = true;  ///< ask libpmem2 for the device's bad blocks too
};

/// Checks the pool at `path` (a regular file or /dev/daxX.Y). Throws pmpage::error for
/// operational errors only: the path cannot be opened (ENOENT, EACCES...), is not a file or
/// device DAX, or the pool is open for writing elsewhere (EBUSY; with repair: open at all), or,
/// with repair, the file system cannot hold the metadata blocks the repair writes (ENOSPC:
/// nothing is repaired).
/// Everything wrong with the contents is a problem in the report, never an exception.
PMPAGE_API report check(const std::filesystem::path& path, const options& opts = {});

/// One region decoded: what `pmpage dump --region R` prints.
struct region_dump {
  std::uint64_t region = 0;       ///< the region's index
  std::uint64_t word = 0;         ///< the raw region-table word
  std::uint64_t word_offset = 0;  ///< its byte offset in the file
  region_info info;               ///< the region decoded as check() draws it
  bool owned = false;             ///< head: the owned bit
  std::uint64_t page_map_offset = 0;     ///< file offset of the region's page map
  std::uint64_t owner_table_offset = 0;  ///< file offset of its owner-table slice
  std::uint64_t data_offset = 0;         ///< file offset of its 2 MiB of data
  pfn_t first_pfn = 0;                   ///< pfn of its first page
  /// Split regions (and, for reference, the leftovers of other kinds): per page, the 4-bit code
  /// (0 free, 1..9 head of order code-1, 15 tail, others invalid), the owner entry that counts
  /// (0, or the file offset of the owning slot; a stale entry, where no owned marker is set, reads
  /// as 0: docs/format.md, "Owner table") and the pfn that slot holds (0 when the entry is 0 or
  /// names no valid slot).
  std::array<std::uint8_t, 512> codes{};
  std::array<std::uint64_t, 512> owners{};  ///< per page: the owner entry (see codes)
  std::array<pfn_t, 512> slot_values{};     ///< per page: the pfn the owning slot holds (see codes)
  std::vector<problem> problems;  ///< those of this region
};

/// Decodes region `region` of the pool at `path` (read-only; same locking as check()). Throws
/// pmpage::error (EINVAL) if the pool has no usable superblock or the region is out of range.
PMPAGE_API region_dump dump_region(const std::filesystem::path& path, std::uint64_t region);

/// reidentify()'s options.
struct reidentify_options {
  /// The new pfn base (a multiple of 2^28 in [2^32, 2^64 - 2^33], apart from the old pfns);
  /// 0: a random one, as create draws, that no pool open in this process uses.
  pfn_t new_start_pfn = 0;
};

/// What reidentify() did.
struct reidentify_result {
  pfn_t old_start_pfn = 0;                     ///< the pool's pfn base before
  pfn_t new_start_pfn = 0;                     ///< and after: a page's new pfn is its old pfn - old + new
  std::string uuid;                            ///< the pool's new uuid (32 hex digits)
  std::uint64_t slots_rewritten = 0;           ///< slots that named a page of the pool and now hold its new pfn
  std::uint32_t old_format_major = 0;          ///< 2: the pool was format 2.x (it is 3.0 now)
  bool resumed = false;                        ///< finished an interrupted re-identification
};

/// Gives the closed pool at `path` a new identity (pfn base and uuid) so that it can be open
/// beside a pool whose pfns it shares (a copy of it, or a pool that drew an overlapping pfn base):
/// the superblock gets the new base and every slot the owner tables name as owning a page of the
/// pool (alloc_pages_to, split_huge_page_to, move_pages_owner, adopt_pages) is rewritten to the
/// page's new pfn. Pfns the engine keeps anywhere else (its own structures, other pools, files)
/// are not known to the library and keep the old values: the engine must translate them (the
/// result gives both bases). A 2.x pool becomes 3.0. Crash-safe: an interrupted run leaves a pool
/// that pool::open refuses until reidentify runs again, which finishes it.
///
/// Locks the pool exclusively (EBUSY if it is open anywhere). Throws pmpage::error: EINVAL if the
/// pool is unreadable or not clean (damage, or a crash's leftovers: run check with repair first),
/// or new_start_pfn is invalid; EBUSY if new_start_pfn overlaps a pool open in this process;
/// the errno of a failed open or block reservation. Nothing is changed when it throws before
/// writing; a failure after it started writing is resumed by running it again.
PMPAGE_API reidentify_result reidentify(const std::filesystem::path& path, const reidentify_options& opts = {});

}  // namespace pmpage::fsck
