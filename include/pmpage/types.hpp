/// \file
/// pmpage/types.hpp — units, constants, the error type and the misuse policy.
///
/// Layer: bottom. Included by every other public header; includes nothing of pmpage.
///
/// Error policy (one per layer):
///   * Set-up (pool::create / pool::open) throws pmpage::error, naming the path and the reason.
///   * Hot paths (translation, get/put, flags, alloc/free) never throw and never block on I/O.
///     Allocation failure is a nullptr / short count. Caller mistakes (misuse) are reported through
///     the misuse handler; the default prints and aborts, and if an installed handler returns, the
///     offending call does nothing (and returns nullptr / 0 / -EINVAL where it has a result).
#pragma once

#if __cplusplus < 202002L
#error "pmpage's C++ API needs C++20 (-std=c++20; pkg-config --variable=cxxflags pmpage); C programs include <pmpage/pmpage.h>"
#endif

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <system_error>

// Symbols of the shared library: it is built with -fvisibility=hidden and a version script
// (src/libpmpage.map), so only declarations marked PMPAGE_API (the documented C++ API, the slow
// paths its inline functions call, and the C API of <pmpage/pmpage.h>) are exported.
#ifndef PMPAGE_API
#define PMPAGE_API __attribute__((visibility("default")))
#endif

/// The C++ API (namespace pmpage): pools (pool.hpp), the kernel's page API on their descriptors
/// (mm.hpp), the persistence seam (persistence.hpp); pmpage::fsck checks closed pools (fsck.hpp)
/// and pmpage::testing simulates power failures (testing.hpp, a library of its own). The C API
/// (pmpage.h) has the same operations under a pmpage_ prefix.
namespace pmpage {

/// A page frame number. Unique across every pool open in the process, never 0, and stable across
/// close and reopen of a pool (engines store pfns on the device). Layout: the pool's pfn base
/// (its identity: a random multiple of 2^28 of at least 2^32, drawn at create) plus the page's
/// index in the pool's data area; pfns of one pool are contiguous, [start_pfn, end_pfn).
using pfn_t = std::uint64_t;

/// log2 of PAGE_SIZE (the kernel's PAGE_SHIFT on x86-64).
inline constexpr unsigned PAGE_SHIFT = 12;
/// Bytes of a page, the unit of allocation: 4 KiB. A page of order k is PAGE_SIZE << k bytes.
inline constexpr std::size_t PAGE_SIZE = std::size_t{1} << PAGE_SHIFT;
/// The order of a 2 MiB page (a PMD mapping), which is also a region of the pool: 9.
inline constexpr unsigned HPAGE_PMD_ORDER = 9;
/// Pages in a 2 MiB page or region: 512.
inline constexpr std::size_t HPAGE_PMD_NR = std::size_t{1} << HPAGE_PMD_ORDER;
/// Bytes of a 2 MiB page or region.
inline constexpr std::size_t HPAGE_PMD_SIZE = PAGE_SIZE << HPAGE_PMD_ORDER;
/// The largest order an allocation may have: 18, 1 GiB (2^18 pages). A larger order is misuse.
inline constexpr unsigned MAX_PAGE_ORDER = 18;

/// Allocation flags, the kernel's gfp_t. Only the modifiers that mean something for a pool exist.
using gfp_t = unsigned;
/// No modifier (the kernel's GFP_KERNEL as far as a pool is concerned).
inline constexpr gfp_t GFP_DEFAULT = 0;
/// The kernel's `__GFP_ZERO` (renamed: identifiers containing `__` are reserved in C++): the pages
/// are zeroed and the zeros are durable by the time the allocation returns, inside the
/// allocation's own fence. Without it a page holds whatever its previous owner wrote.
inline constexpr gfp_t GFP_ZERO = 0x100u;

/// The largest reference count a compound page can reach (the kernel saturates refcount_t and
/// refuses try_get_page near overflow for the same reason): get_page beyond it is misuse and leaves
/// the count unchanged; get_page_unless_zero returns false. 2^30 leaves headroom for racing
/// increments, so the count can never wrap.
inline constexpr int PAGE_REF_MAX = 1 << 30;

// ---- limits (docs/api.md "Limits"; tests/test_limits.cpp holds each one to its word) ----------

/// Pools open at once in one process; pool::create / pool::open of one more throws pmpage::error
/// with EMFILE, before touching its file. Each open pool holds a file descriptor (its lock),
/// about five mappings (vm.max_map_count, 65530 by default, is for the whole process), and
/// address space: its data mapping plus 1 GiB of alignment slack, and a descriptor window that
/// starts a 4 GiB granule of its own (user space is 128 TiB). 4096 leaves most of each to the
/// rest of the process; it is four times the usual RLIMIT_NOFILE soft limit (1024), which a
/// process opening that many pools must raise anyway.
inline constexpr unsigned MAX_OPEN_POOLS = 4096;

/// The smallest pool pool::create accepts: the metadata (superblocks, intent lanes, a root area
/// of up to 2 MiB - 24 KiB, region table, page map, owner table) rounded up to the 2 MiB data alignment, plus
/// one 2 MiB region. A larger root area or a device alignment above 2 MiB needs more; anything
/// smaller throws pmpage::error with EINVAL.
inline constexpr std::uint64_t MIN_POOL_SIZE = std::uint64_t{4} << 20;

/// The largest data area: a pfn keeps 32 bits for the page index (16 TiB of 4 KiB pages). A
/// bigger file or device is accepted; only the first 16 TiB after the metadata hold pages.
inline constexpr std::uint64_t MAX_POOL_PAGES = std::uint64_t{1} << 32;

/// The largest options.root_size; more throws pmpage::error with EINVAL. create zeroes and
/// flushes the root area, and it sits in the mapping before the data area: larger application
/// structures belong in allocated pages, whose pfns the root can hold.
inline constexpr std::uint64_t MAX_ROOT_SIZE = std::uint64_t{1} << 30;

/// Merge hysteresis (docs/api.md "When descriptor memory comes back"). A split region whose last
/// allocation is freed keeps its 512 descriptors (32 KiB of DRAM) so that the next small
/// allocation there costs what it costs inside a region: at most EMPTY_SPLIT_KEPT such regions
/// per pool (the oldest merges first) and each for at most EMPTY_SPLIT_KEEP_MS, enforced whenever
/// the allocator next takes its pool lock (a cache refill, a large alloc or free, a free that
/// empties a region, stats(), trim()). pool::trim() merges them all now.
inline constexpr unsigned EMPTY_SPLIT_KEPT = 16;
/// Milliseconds an empty split region keeps its descriptors at most (see EMPTY_SPLIT_KEPT).
inline constexpr unsigned EMPTY_SPLIT_KEEP_MS = 1000;

/// A per-CPU cache that allocated nothing for this long is drained (its region goes back to the
/// shared filler) the next time any thread takes the pool lock; pool::trim() drains them all.
inline constexpr unsigned PCP_IDLE_MS = 1000;

/// Thrown by set-up calls. code() is an errno-style std::errc value; what() names the path and
/// the reason, e.g. "pmpage: open /dev/shm/x: superblock copy A: bad checksum, copy B: bad magic".
/// what() is the message as given (std::system_error would append the code's strerror text, which
/// the messages already carry where it helps: "cannot open read-only: No such file or directory").
class PMPAGE_API error : public std::system_error {
 public:
  /// An error with `code` and the message `what` (returned by what() as given).
  error(std::error_code code, const std::string& what)
      : std::system_error(code, what), what_(std::make_shared<const std::string>(what)) {}
  /// An error whose code() is errno_value in std::generic_category() (EINVAL, ENOENT, ...).
  error(int errno_value, const std::string& what)
      : error(std::error_code(errno_value, std::generic_category()), what) {}
  /// The message as given: names the path and the reason. Valid as long as the error (copies share it).
  const char* what() const noexcept override { return what_->c_str(); }

 private:
  std::shared_ptr<const std::string> what_;  // shared: copying an exception must not throw
};

/// error::code().value() when pool::open finds a file (or device) whose pool::create was
/// interrupted (crash, kill, power failure mid-format). Not a usable pool and not someone else's
/// file: run pool::create again, which formats it without options.overwrite. ("Not a pmpage
/// pool" is EINVAL; an existing pool refused by create without overwrite is EEXIST.)
inline constexpr int ERR_CREATE_INTERRUPTED = ECANCELED;

/// A byte range of a pool's file or device that cannot be read: a media error ("bad block",
/// "poison"). Offsets are from the start of the file or device, as libpmem2 and ndctl report
/// them (512-byte sectors on an NVDIMM; a CXL device's poison list gives device physical
/// addresses, which the caller translates to offsets in the devdax device).
struct bad_block {
  std::uint64_t offset = 0;  ///< bytes from the start of the file or device
  std::uint64_t length = 0;  ///< bytes; never 0 in a list the library accepts
  /// Same range.
  friend bool operator==(const bad_block&, const bad_block&) = default;
};

/// An allocated page in a bad block (pool::hwpoison_pages): the pfn of the bad page, and the head
/// and order of the allocation it belongs to (the allocation carries PG_hwpoison).
struct hwpoison_page {
  pfn_t pfn = 0;       ///< the page in the bad block
  pfn_t head = 0;      ///< the head of its allocation, which carries PG_hwpoison
  unsigned order = 0;  ///< the allocation's order
  /// Same page of the same allocation.
  friend bool operator==(const hwpoison_page&, const hwpoison_page&) = default;
};

/// Called with a human-readable description of an API misuse (double free, get_page on a page
/// whose count is 0, a pfn outside every open pool, ...). The default handler prints the message
/// to stderr and aborts. An installed handler may return; the misused call then does nothing.
using misuse_handler = void (*)(const char* message);

/// Installs `handler` (nullptr restores the default) and returns the previous one. Thread-safe.
PMPAGE_API misuse_handler set_misuse_handler(misuse_handler handler) noexcept;

}  // namespace pmpage
