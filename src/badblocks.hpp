// badblocks.hpp — bad blocks (media errors) of a pool's file or device: where they come from
// (libpmem2 for an NVDIMM, the caller's list for anything else), which pool structure a range
// hits, and clearing one. The allocator's reaction (quarantine, PG_hwpoison) is pool_impl's
// (badblocks.cpp, second half).
//
// Where the list comes from
//   * open_options::bad_blocks: the caller's (a CXL device's poison list, tests);
//   * libpmem2 (pmem2_badblock_context_new / pmem2_badblock_next), asked only for device DAX and
//     for a file whose inode is in DAX mode (statx STATX_ATTR_DAX): libpmem2 knows NVDIMM
//     namespaces only, finds nothing elsewhere, and its first call in a process costs ~1 ms
//     (ndctl scans every bus), which a plain file's open must not pay.
// Both are behind badblock_source, the seam tests replace (set_badblock_source): there is no
// NVDIMM here, and libpmem2 has no way to inject bad blocks without one (nfit_test).
//
// Nothing about bad blocks is written to the media: the list is an input of every open.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "layout.hpp"
#include "pmpage/pool.hpp"

namespace pmpage::detail {

/// Where bad blocks are found and cleared. Offsets are bytes from the start of the file/device.
class badblock_source {
 public:
  virtual ~badblock_source() = default;
  /// The bad ranges of the open file or device `fd` (`path` names it in messages; `device_dax`:
  /// a character device). Throws pmpage::error (EIO) when the source fails.
  virtual std::vector<bad_block> list(int fd, const std::string& path, bool device_dax) = 0;
  /// Clears (zeroes) `range`, which the caller has checked lies inside a range list() reported.
  /// Throws pmpage::error (EIO) when the source fails.
  virtual void clear(int fd, const std::string& path, bool device_dax, const bad_block& range) = 0;
};

/// libpmem2's source: asks only device DAX and files in DAX mode (list() returns {} for others);
/// clear() runs pmem2_badblock_clear on any file (on a plain file it punches the range and
/// allocates it again: zeroes, whether or not the range was bad).
badblock_source& libpmem2_badblocks();
/// The source pool::open and pool::clear_bad_block use: libpmem2's unless a test installed its own.
badblock_source& current_badblock_source();
/// Tests: installs `s` (nullptr restores libpmem2's). Not thread-safe against opens running.
void set_badblock_source(badblock_source* s);

/// True for a regular file whose inode is in DAX mode (statx STATX_ATTR_DAX).
bool file_is_dax(int fd);

/// Sorted, overlapping and adjacent ranges merged.
std::vector<bad_block> normalise_bad_blocks(std::vector<bad_block> v);

/// The pool structures [offset, offset + length) touches in layout `lay` (superblock copies,
/// intent lanes, root area, region table, page maps, owner tables, with the regions they
/// describe), joined by "; "; "" when it touches none (the data area, padding, beyond the pool).
std::string metadata_hit(const layout& lay, std::uint64_t offset, std::uint64_t length);
/// "0x1000+0x200 (bytes 4096..4607)"
std::string describe_range(const bad_block& b);

}  // namespace pmpage::detail
