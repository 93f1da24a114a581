// persistence.cpp — the production persistence backend over libpmem.
//
// On pmem (MAP_SYNC DAX, device DAX, or PMEM_IS_PMEM_FORCE=1) a flush is pmem_flush (clwb or
// clflushopt, whichever the CPU has) and the fence is pmem_drain (sfence). Otherwise the mapping is
// page cache and only msync makes it durable: flush() msyncs the covering pages at once and the
// fence has nothing left to do.
#include <libpmem.h>

#include <cerrno>
#include <cstring>

#include "pmpage/persistence.hpp"

namespace pmpage {
namespace {

class libpmem_persistence final : public persistence {
 public:
  void attach(void*, std::size_t, bool is_pmem) override { is_pmem_ = is_pmem; }
  void flush(const void* addr, std::size_t len) noexcept override {
    if (is_pmem_)
      pmem_flush(addr, len);
    else
      msync_checked(addr, len);
  }
  void drain() noexcept override {
    if (is_pmem_) pmem_drain();
  }
  void memset_nodrain(void* dst, int c, std::size_t len) noexcept override {
    // Data pages only (GFP_ZERO), written outside the allocator lock and fenced by the caller:
    // libpmem may use non-temporal stores here. Not pmem: plain memset, then msync.
    if (is_pmem_)
      pmem_memset_nodrain(dst, c, len);
    else {
      std::memset(dst, c, len);
      msync_checked(dst, len);
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
  bool is_pmem_ = true;
};

}  // namespace

std::shared_ptr<persistence> make_libpmem_persistence() { return std::make_shared<libpmem_persistence>(); }

}  // namespace pmpage
