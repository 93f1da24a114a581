// persistence.cpp — the production persistence backend over libpmem.
//
// By the mapping's granularity (persistence.hpp): byte (eADR: the caches are persistent) needs no
// flush and the fence is pmem_drain (sfence); cache_line (MAP_SYNC DAX, device DAX) flushes with
// pmem_flush (clwb or clflushopt, whichever the CPU has) and fences with pmem_drain; page (page
// cache) is made durable only by msync: flush() msyncs the covering pages at once, reporting a
// failure, and the fence has nothing left to do. (libpmem2's own flush functions need a
// pmem2_map of the pool's mapping, which pmpage places itself; pmem2_map_from_existing's PAGE
// persist never returns in 1.12.1: docs/design.md.)
#include <libpmem.h>

#include <cerrno>
#include <cstring>

#include "pmpage/persistence.hpp"

namespace pmpage {
namespace {

class libpmem_persistence final : public persistence {
 public:
  granularity attach(void*, std::size_t, granularity g) override {
    g_ = g;
    return g;
  }
  void flush(const void* addr, std::size_t len) noexcept override {
    if (g_ == granularity::cache_line)
      pmem_flush(addr, len);
    else if (g_ == granularity::page)
      msync_checked(addr, len);
  }
  void drain() noexcept override {
    if (g_ != granularity::page) pmem_drain();
  }
  void memset_nodrain(void* dst, int c, std::size_t len) noexcept override {
    // Data pages only (GFP_ZERO), written outside the allocator lock and fenced by the caller:
    // libpmem may use non-temporal stores here. Byte: plain stores, the fence orders them.
    // Page cache: plain memset, then msync.
    if (g_ == granularity::cache_line) {
      pmem_memset_nodrain(dst, c, len);
    } else {
      std::memset(dst, c, len);
      if (g_ == granularity::page) msync_checked(dst, len);
    }
  }
  // copy_nodrain: the default (ordinary stores, then flush). Non-temporal stores would skip the
  // read of a just-evicted line, but they are not ordered with the ordinary store that releases
  // the allocator lock: another thread could write the same page-map line in between and then be
  // overwritten by our older line when it finally leaves the write-combining buffer.

 private:
  /// msync's failure is the write-back error of the page cache (EIO, ENOSPC, EDQUOT): the kernel
  /// reports it once and then marks the pages clean, so it is recorded here, where the pool's next
  /// fence finds it (persistence.hpp), instead of being lost ("fsyncgate").
  void msync_checked(const void* addr, std::size_t len) noexcept {
    if (__builtin_expect(pmem_msync(addr, len) != 0, 0)) report_writeback_error(errno);
  }
  granularity g_ = granularity::cache_line;
};

}  // namespace

std::shared_ptr<persistence> make_libpmem_persistence() { return std::make_shared<libpmem_persistence>(); }

}  // namespace pmpage
