// device.hpp — the outside world below a pool: opening the file or device DAX, its size and
// alignment, the single-opener lock, and the address-space reservations.
//
// Owns: the file descriptor, the mapping of the device, and the anonymous reservations for the
// descriptor arrays. Nothing here knows the on-media format. Errors throw pmpage::error naming
// the path.
#pragma once

#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "pmpage/persistence.hpp"  // granularity

namespace pmpage::detail {

[[noreturn]] void fail(int err, const std::string& path, const std::string& reason);

class device {
 public:
  enum class kind { regular_file, device_dax };

  device() = default;
  device(const device&) = delete;
  device& operator=(const device&) = delete;
  ~device();

  enum class access { read_write, read_only };
  /// Opens an existing path (O_RDWR, or O_RDONLY for read_only: works on a file the caller may
  /// only read). Refuses directories, non-DAX character devices, FIFOs...
  void open_existing(const std::string& path, access a = access::read_write);
  /// Creates a new regular file under the temporary name temp_name(path), locked (flock), to be
  /// formatted there and published at `path` by publish(); abandon() removes it. A temporary file
  /// left by an interrupted create (unlocked) is replaced; one held by a running create is EBUSY.
  void create_temp(const std::string& path, unsigned mode);
  /// Makes the temporary file durable (fsync), renames it to the final path without replacing
  /// anything there (EEXIST if a file appeared meanwhile), and makes the rename durable.
  void publish();
  /// `<path>.pmpage-creating`: where create() builds a new pool file before publishing it.
  static std::string temp_name(const std::string& path);
  /// Takes the opener lock (flock, never waits): exclusive for a writer, shared for read-only
  /// openers (several readers, no writer). Throws EBUSY naming who holds it. The destructor
  /// releases it (LOCK_UN, then close) in the process that took it; in a fork() child, which
  /// shares the locked file description, it only closes the child's descriptor.
  void lock(bool shared = false);
  /// Grows a regular file to at least `size` bytes; preallocate reserves all its blocks.
  void ensure_size(std::uint64_t size, bool preallocate);
  /// A regular file whose size is not `size` is truncated (or grown) back to it: a create that
  /// failed before writing anything undoes ensure_size. Best effort (a failure is ignored).
  void restore_size(std::uint64_t size) noexcept;
  /// Reserves the blocks of [0, len) of a regular file, so that a full file system is an error
  /// here instead of SIGBUS when the mapping is first written.
  void reserve_blocks(std::uint64_t len);
  /// Reads [offset, offset + len) with pread (used before anything is mapped or trusted).
  void read_at(void* buf, std::size_t len, std::uint64_t offset) const;
  /// True for a regular file that holds nothing: 0 bytes, or only holes and zero bytes (read,
  /// skipping holes with SEEK_DATA). False for device DAX (it cannot be scanned cheaply).
  bool is_blank() const;
  /// The parts of [begin, end) that may hold data, as sorted [first, last) byte ranges: a regular
  /// file's extents outside its holes (SEEK_DATA/SEEK_HOLE), or the whole range when the file
  /// system cannot tell (and for device DAX). Lets a reader skip holes instead of faulting them
  /// in (on tmpfs a read fault on a hole allocates a page).
  std::vector<std::pair<std::uint64_t, std::uint64_t>> data_extents(std::uint64_t begin, std::uint64_t end) const;
  /// fsync: the file's size and blocks (and, without MAP_SYNC, its mapped pages) are durable.
  void sync();

  /// How map() maps: shared and writable (a pool open for writing; tries MAP_SYNC first); shared
  /// and read-only (PROT_READ: fsck); or private copy-on-write over a read-only descriptor (a
  /// read-only pool: recovery runs on this process's copy of the pages it touches, the file
  /// never changes; made PROT_READ by protect_read_only() once recovery is done).
  enum class map_mode { shared_write, shared_read, private_copy };
  /// Maps the first `length` bytes so that base() + data_offset is 1 GiB aligned (huge-page
  /// friendly; also what the data-address table needs).
  /// `reserve_length` (>= length; 0: length): address space kept after the mapping for
  /// extend_map (a pool that can grow in place, pool::grow), never touched until then.
  void map(std::uint64_t length, std::uint64_t data_offset, map_mode mode = map_mode::shared_write,
           std::uint64_t reserve_length = 0);
  /// Maps [mapped_length(), new_length) of the file over the reservation map() kept, as map()
  /// mapped the rest (same mode, MAP_SYNC if it had it): the mapping grows in place, nothing
  /// moves. The file must be that long already. Throws pmpage::error (EINVAL beyond the
  /// reservation, mmap's errno). Not concurrent with itself (pool::grow serialises).
  void extend_map(std::uint64_t new_length);
  /// A volatile pool's memory (volatile_pool.cpp). [0, meta_len) becomes private anonymous DRAM
  /// (the allocator's metadata and the root area) and [meta_len, meta_len + data_len) the pages:
  /// the first data_len bytes of the open backing file or device, shared, or, with no backing
  /// (name_memory() instead of open_existing), private anonymous memory, on 2 MiB hugetlb pages
  /// if `hugetlb`. The pages start 1 GiB aligned, as map() places them. Returns false, mapping
  /// nothing, when the hugetlb mapping alone failed (errno says why: the caller falls back);
  /// throws for every other failure.
  bool map_volatile(std::uint64_t meta_len, std::uint64_t data_len, bool hugetlb);
  /// Names anonymous memory in error messages (there is no path).
  void name_memory(const std::string& name) { path_ = name; }
  int fd() const { return fd_; }
  /// Device DAX: the NUMA node its memory is on (sysfs target_node, else numa_node); -1 when
  /// unknown or not device DAX.
  int numa_node() const { return numa_node_; }

  /// mprotect(PROT_READ) of the whole mapping: a stray store into a read-only pool faults.
  void protect_read_only();
  void unmap() noexcept;

  const std::string& path() const { return path_; }
  kind type() const { return kind_; }
  std::uint64_t size() const { return size_; }
  std::uint64_t alignment() const { return align_; }  // device DAX alignment, else 2 MiB
  char* base() const { return base_; }
  /// Read by any thread (persist's range check) while extend_map may grow it.
  std::uint64_t mapped_length() const { return map_len_.load(std::memory_order_acquire); }
  /// How stores to the shared writable mapping become durable (persistence.hpp): detected by
  /// map() (detect_granularity); page for the other map modes and for volatile mappings.
  granularity store_granularity() const { return gran_; }
  bool is_pmem() const { return gran_ != granularity::page; }
  /// The granularity a shared writable mapping of this open device gets (map() calls it): a
  /// regular file asks libpmem2 (a one-page pmem2_map_new: MAP_SYNC, its eADR probe,
  /// PMEM2_FORCE_GRANULARITY), with pmpage's own rules as the fallback when libpmem2 refuses;
  /// device DAX uses pmpage's own rules (libpmem2 understands only NVDIMM namespaces): byte when
  /// every NVDIMM region's persistence_domain is cpu_cache (eADR), else cache_line. Then
  /// PMEM2_FORCE_GRANULARITY (BYTE | CACHE_LINE | PAGE) wins; without it PMEM_IS_PMEM_FORCE=1
  /// turns page into cache_line (libpmem's test switch, kept working). `map_sync`: whether the
  /// pool's own mapping got MAP_SYNC. Never throws.
  granularity detect_granularity(bool map_sync) const noexcept;
  /// Called when set-up failed: unlinks a file this object created (its temporary name, unless
  /// already published).
  void abandon() noexcept;

 private:
  void probe();
  int fd_ = -1;
  std::string path_;       // the path the caller named (error messages use it)
  std::string temp_path_;  // set while a new file lives under its temporary name
  kind kind_ = kind::regular_file;
  std::uint64_t size_ = 0;
  std::uint64_t align_ = 2u << 20;
  char* reservation_ = nullptr;
  std::size_t reservation_len_ = 0;
  char* base_ = nullptr;
  std::atomic<std::uint64_t> map_len_{0};
  std::uint64_t map_limit_ = 0;  // bytes from base_ that extend_map may map (map's reserve_length)
  map_mode mode_ = map_mode::shared_write;
  bool map_sync_ = false;
  granularity gran_ = granularity::page;
  bool created_ = false;
  int numa_node_ = -1;
  int lock_pid_ = 0;  // the process that took the flock (lock, create_temp); 0: none
};

/// fallocate(fd, 0, offset, len), retried after EINTR: 0, or its errno. Never emulated (glibc's
/// posix_fallocate fallback writes a byte per block, which would race with stores through a
/// mapping of the same bytes): a file system without fallocate gives EOPNOTSUPP.
int reserve_file_range(int fd, std::uint64_t offset, std::uint64_t len) noexcept;
/// reserve_file_range for a range that is normally reserved already (a pool's metadata, reserved
/// at create): asks the file system for its first hole (SEEK_HOLE) and calls fallocate only if
/// the range has one. fallocate over allocated blocks changes nothing but walks them all (on
/// tmpfs, ~3 ms per 128 MiB: the owner table of a 64 GiB pool), which an open must not pay.
int reserve_file_holes(int fd, std::uint64_t offset, std::uint64_t len) noexcept;
/// reserve_file_range's answer when the file system (or kernel) has no fallocate of this kind,
/// rather than no room: EOPNOTSUPP, ENOSYS, and EINVAL, which some file systems give instead.
inline bool cannot_reserve(int e) { return e == EOPNOTSUPP || e == ENOSYS || e == EINVAL; }

/// Reserves `length` bytes of private anonymous memory (MAP_NORESERVE: nothing is charged until
/// touched) starting at an address aligned to `align`. Returns nullptr on failure (when the
/// address space is full, after giving back the quarantined windows of closed pools first).
void* reserve_aligned(std::size_t length, std::size_t align) noexcept;
void release_reservation(void* addr, std::size_t length) noexcept;

}  // namespace pmpage::detail
