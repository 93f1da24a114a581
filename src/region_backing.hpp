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
// lanes, root, region table, page maps, owner tables) is reserved whole at create, and at every
// writable open where it has a hole (reserve_file_holes), so its stores never fault either.
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
  void init(int fd, std::uint64_t data_offset, std::uint64_t nr_regions) {
    fd_ = fd;
    data_offset_ = data_offset;
    nr_words_ = (nr_regions + 63) / 64;
    bits_ = std::make_unique<std::atomic<std::uint64_t>[]>(nr_words_);
    for (std::uint64_t i = 0; i < nr_words_; ++i) bits_[i].store(0, std::memory_order_relaxed);
  }

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
    const int e = reserve_file_range(fd_, offset_of(r), std::uint64_t(n) * HPAGE_PMD_SIZE);
    if (e != 0 && !cannot_reserve(e)) return e;
    for (std::uint64_t i = r; i < std::uint64_t(r) + n; ++i)
      bits_[i / 64].fetch_or(std::uint64_t{1} << (i % 64), std::memory_order_relaxed);
    return 0;
  }

  /// The file offset of region r's data (for error messages).
  std::uint64_t offset_of(std::uint32_t r) const { return data_offset_ + std::uint64_t(r) * HPAGE_PMD_SIZE; }
  /// fallocate calls made so far (tests count them: one per region first taken in an open).
  std::uint64_t calls() const { return calls_.load(std::memory_order_relaxed); }

 private:
  int fd_ = -1;
  std::uint64_t data_offset_ = 0;
  std::uint64_t nr_words_ = 0;
  std::unique_ptr<std::atomic<std::uint64_t>[]> bits_;  // bit r: region r reserved in this open
  std::atomic<std::uint64_t> calls_{0};
};

}  // namespace pmpage::detail
