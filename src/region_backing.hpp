// region_backing.hpp — a region's blocks in a sparse backing file are reserved before any of its
// pages is handed out.
//
// Why: a pool file is sparse unless created with options.preallocate (the SQLite VFS's pools
// are), and a volatile pool's backing file (tmpfs, a disk file) may be too. A store into a hole of
// a shared file mapping makes the file system allocate the block at that moment; when it has
// none, the kernel sends SIGBUS, which a library cannot turn into an error. So the allocator
// reserves a region's 2 MiB (fallocate, mode 0) before it hands out any page of it, and a region
// the file system cannot back is not handed out: the allocation reports "no room" with errno
// ENOSPC (or the file system's errno: EDQUOT, EIO). The library's own metadata (superblocks,
// lanes, root, region table, page maps, owner tables) is reserved whole at create. At every
// writable open the head of it (everything before the owner tables) is reserved where it has a
// hole (reserve_file_holes); a region's owner-table slice (4 KiB) is reserved with its data, when
// the allocator first takes the region in an open, and by the two writers of owner entries that
// may touch a region not taken in this open (adopt_pages, and recovery's replay of an intent):
// reserve_owner_slice. Every other owner-entry store clears an entry that is non-zero on the
// media, so its block exists. (Searching 4 KiB per region for holes at open cost 1 TiB pools
// 23 ms.) So the library's stores never fault either.
//
// Where (placement.cpp, pool.cpp): pages are handed out only (1) as a large block taken from the
// region buddy or from a per-CPU stash, or (2) from a region a per-CPU cache holds, which it took
// from the filler (attach_locked) or split fresh from the buddy (take_fresh_region_locked).
// Buddy blocks and filler regions are reserved as they are taken, with the pool lock dropped (on
// tmpfs the call allocates and zeroes 2 MiB); a stash only ever receives reserved blocks
// (finish_free sends any other to the buddy). Invariant R1 (check.cpp): every region a cache
// holds, every stashed block and every allocation made since open is reserved.
//
// Cost: one bit per region in DRAM, tested once per region taken, never per page; one fallocate
// per region the first time it is taken in an open. The bits live in DRAM only: after a reopen
// each region is reserved again when first taken, which costs the file system no space (nothing
// punches holes in a pool file, so the blocks are still there) but catches a file copied sparse
// since. Nothing to do for device DAX, anonymous memory, a hugetlbfs file (its mapping reserved
// the huge pages), a preallocated pool file, or a pool that never allocates (read-only).
#pragma once

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <memory>

#include "device.hpp"
#include "pmpage/mm.hpp"
#include "pmpage/types.hpp"

namespace pmpage::detail {

class region_backing {
 public:
  /// Region r's data is [data_offset + r * 2 MiB, + 2 MiB) of the regular file open as fd. No
  /// call (fd < 0) means nothing needs reserving: every region counts as reserved.
  /// owner_table_offset: where the owner tables start in the file (0: none there, a volatile
  /// pool's backing), so that reserve() takes each region's 4 KiB slice of them too.
  void init(int fd, std::uint64_t data_offset, std::uint64_t nr_regions, std::uint64_t owner_table_offset = 0) {
    fd_ = fd;
    data_offset_ = data_offset;
    owner_table_offset_ = owner_table_offset;
    nr_words_ = (nr_regions + 63) / 64;
    bits_ = std::make_unique<std::atomic<std::uint64_t>[]>(nr_words_);
    for (std::uint64_t i = 0; i < nr_words_; ++i) bits_[i].store(0, std::memory_order_relaxed);
  }

  /// False when init was never called: every region counts as reserved (a preallocated file,
  /// or no file).
  bool tracking() const noexcept { return bits_ != nullptr; }

  /// True if regions [r, r + n) are known to be reserved. Any thread, no lock.
  bool reserved(std::uint32_t r, std::uint32_t n = 1) const noexcept {
    if (PMPAGE_LIKELY(!bits_)) return true;
    for (std::uint64_t i = r, end = std::uint64_t(r) + n; i < end;) {
      const unsigned sh = unsigned(i % 64);
      const std::uint64_t take = end - i < 64 - sh ? end - i : 64 - sh;
      const std::uint64_t mask = (take == 64 ? ~std::uint64_t{0} : (std::uint64_t{1} << take) - 1) << sh;
      if ((bits_[i / 64].load(std::memory_order_relaxed) & mask) != mask) return false;
      i += take;
    }
    return true;
  }

  /// Reserves the blocks of regions [r, r + n) (one fallocate for the run). Returns 0, or the
  /// errno of fallocate (ENOSPC, EDQUOT, EIO, ...): then nothing of that run may be handed out.
  /// A file system without fallocate (cannot_reserve) cannot be helped: its regions count as
  /// reserved, as before this check existed. Any thread, no lock needed; several threads may
  /// reserve one region at once (the call is idempotent).
  int reserve(std::uint32_t r, std::uint32_t n) noexcept {
    if (reserved(r, n)) return 0;
    calls_.fetch_add(1, std::memory_order_relaxed);
    int e = reserve_file_range(fd_, offset_of(r), std::uint64_t(n) * HPAGE_PMD_SIZE);
    if (e != 0 && !cannot_reserve(e)) return e;
    if (owner_table_offset_) {
      e = reserve_file_range(fd_, owner_slice_of(r), std::uint64_t(n) * OWNER_SLICE_BYTES);
      if (e != 0 && !cannot_reserve(e)) return e;
    }
    for (std::uint64_t i = r; i < std::uint64_t(r) + n; ++i)
      bits_[i / 64].fetch_or(std::uint64_t{1} << (i % 64), std::memory_order_relaxed);
    return 0;
  }

  /// Reserves region r's 4 KiB slice of the owner tables, for a store into an owner entry of a
  /// region this open may not have taken (adopt_pages, replay). 0 or fallocate's errno; a no-op
  /// for a region reserved in this open or a file that needs no reservation. Any thread.
  int reserve_owner_slice(std::uint32_t r) noexcept {
    if (!owner_table_offset_ || reserved(r)) return 0;
    const int e = reserve_file_range(fd_, owner_slice_of(r), OWNER_SLICE_BYTES);
    return e != 0 && !cannot_reserve(e) ? e : 0;
  }
  /// The file offset of region r's owner-table slice.
  std::uint64_t owner_slice_of(std::uint32_t r) const { return owner_table_offset_ + std::uint64_t(r) * OWNER_SLICE_BYTES; }

  /// The file offset of region r's data (for error messages).
  std::uint64_t offset_of(std::uint32_t r) const { return data_offset_ + std::uint64_t(r) * HPAGE_PMD_SIZE; }
  /// fallocate calls made so far (tests count them: one per region first taken in an open).
  std::uint64_t calls() const { return calls_.load(std::memory_order_relaxed); }

 private:
  static constexpr std::uint64_t OWNER_SLICE_BYTES = 4096;  // layout.hpp OWNER_TABLE_BYTES
  int fd_ = -1;
  std::uint64_t data_offset_ = 0;
  std::uint64_t owner_table_offset_ = 0;
  std::uint64_t nr_words_ = 0;
  std::unique_ptr<std::atomic<std::uint64_t>[]> bits_;  // bit r: region r reserved in this open
  std::atomic<std::uint64_t> calls_{0};
};

}  // namespace pmpage::detail
