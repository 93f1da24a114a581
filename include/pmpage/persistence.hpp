/// \file
/// pmpage/persistence.hpp — the one seam through which every flush and fence goes.
///
/// Layer: beside types.hpp; used by pool.hpp. The library never calls libpmem, msync or a fence
/// instruction except through a `persistence` object, so tests can substitute a simulated device
/// (one that models which cache lines reach the media before a power failure) and benchmarks can
/// count fences.
///
/// Contract: a store to the pool mapping is durable once flush() covered it and a later drain()
/// (the fence) returned. drain() orders and completes every earlier flush of the calling thread.
///
/// Write-back errors: a backend whose write-back can fail (msync on a file that is not DAX) calls
/// report_writeback_error() with the errno before its flush() or drain() returns. The pool reads
/// writeback_errors() after every fence (one relaxed load) and, when it moved, fails the operation
/// and keeps reporting the error until it is reopened (docs/api.md "Write-back errors").
#pragma once

#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>

#include "pmpage/types.hpp"  // PMPAGE_API

namespace pmpage {

/// How a store to the mapping becomes durable: the platform's store granularity, in libpmem2's
/// terms (pmem2_granularity), finest first. What a pool's fences and flushes do follows it:
enum class granularity : std::uint8_t {
  /// The CPU caches are in the persistence domain (eADR; CXL memory with Global Persistent
  /// Flush): a store is durable once it leaves the store buffer. No flush; the fence (sfence)
  /// orders the stores, one where CACHE_LINE has one.
  byte = 0,
  /// ADR: a store is durable once its cache line is written back (clwb) and fenced (sfence).
  cache_line = 1,
  /// The mapping is page cache (a file that is not DAX): durable after msync of its pages, whose
  /// failure is a write-back error (report_writeback_error).
  page = 2,
};
/// "byte", "cache_line", "page".
constexpr const char* granularity_name(granularity g) noexcept {
  return g == granularity::byte ? "byte" : g == granularity::cache_line ? "cache_line" : "page";
}

/// The flush/fence seam (the contract is at the top of this header): a pool makes every store of
/// its own durable through the backend it was given (pool::options::backend, open_options::backend;
/// make_libpmem_persistence() by default). Implement it to model a device (testing::sim_pmem) or
/// wrap one to count (counting_persistence). A pool calls flush, drain and the copy functions
/// from every thread that uses it, at once: they must be thread-safe.
/// Counterparts: libpmem's pmem_flush / pmem_drain; the kernel's arch_wb_cache_pmem / pmem_wmb.
class PMPAGE_API persistence {
 public:
  virtual ~persistence() = default;

  /// Called once when a pool maps its device, before any flush. `g` is the granularity the
  /// platform gives the mapping (detected with libpmem2; PMEM2_FORCE_GRANULARITY forces it;
  /// docs/api.md "Persistence by granularity"). Returns the granularity the pool follows with
  /// this backend: `g` for a backend over the real device; a simulated device returns the one it
  /// models (testing.hpp). At byte the pool issues no flush at all, only its fences.
  virtual granularity attach(void* base, std::size_t length, granularity g) = 0;
  /// Called when the pool unmaps, while the mapping is still readable (a simulated device copies
  /// it); no flush follows. May be called a second time (after a failed create): a no-op then.
  virtual void detach() noexcept {}

  /// Starts writing back the cache lines covering [addr, addr + len). Not ordered until drain().
  virtual void flush(const void* addr, std::size_t len) noexcept = 0;
  /// The fence: every flush issued before it by this thread is durable when it returns.
  virtual void drain() noexcept = 0;

  /// Writes len bytes (8-byte aligned, a multiple of 8) from DRAM to the mapping and starts
  /// writing them back: a store of each word (one 8-byte store each) and a flush; durable after
  /// the next drain(). The stores must be ordered with the caller's later ordinary stores (the
  /// allocator releases its lock after it), so a backend must not use non-temporal stores here.
  virtual void copy_nodrain(void* dst, const void* src, std::size_t len) noexcept {
    auto* d = static_cast<std::uint64_t*>(dst);
    const auto* s = static_cast<const std::uint64_t*>(src);
    for (std::size_t i = 0; i < len / 8; ++i) std::atomic_ref<std::uint64_t>(d[i]).store(s[i], std::memory_order_relaxed);
    flush(dst, len);
  }

  /// Sets len bytes at dst to c and starts writing them back; durable after the next drain().
  /// Used for data pages (GFP_ZERO), never for metadata, so a backend may use non-temporal stores.
  virtual void memset_nodrain(void* dst, int c, std::size_t len) noexcept {
    std::memset(dst, c, len);
    flush(dst, len);
  }

  /// flush(addr, len) then drain(), on the calling thread: [addr, addr + len) is durable when it
  /// returns (libpmem's pmem_persist).
  void persist(const void* addr, std::size_t len) noexcept {
    flush(addr, len);
    drain();
  }

  /// Write-back failures this backend has reported since it was constructed (any pool, any
  /// thread). A pool compares it with its value at attach after each fence. Thread-safe.
  std::uint64_t writeback_errors() const noexcept { return wb_errors_.load(std::memory_order_acquire); }
  /// The errno of the latest failure (EIO, ENOSPC, ...), or 0 if there was none. Thread-safe.
  int last_writeback_error() const noexcept { return wb_errno_.load(std::memory_order_relaxed); }

 protected:
  /// For backends: a write-back failed with err (an errno value; 0 is taken as EIO). Call it
  /// before the flush() or drain() that saw the failure returns, so the fence that follows (or
  /// this one) reports it. Thread-safe; lock-free.
  void report_writeback_error(int err) noexcept {
    wb_errno_.store(err > 0 ? err : EIO, std::memory_order_relaxed);
    wb_errors_.fetch_add(1, std::memory_order_release);
  }
  /// For wrappers (counting_persistence): reports the failures `inner` reported since the last
  /// call. One relaxed load when there are none.
  void forward_writeback_errors(const persistence& inner) noexcept {
    if (__builtin_expect(inner.wb_errors_.load(std::memory_order_relaxed) == forwarded_.load(std::memory_order_relaxed), 1))
      return;
    forward_slow(inner);
  }

 private:
  void forward_slow(const persistence& inner) noexcept {
    std::uint64_t seen = forwarded_.load(std::memory_order_relaxed);
    const std::uint64_t now = inner.writeback_errors();
    while (seen < now && !forwarded_.compare_exchange_weak(seen, now, std::memory_order_relaxed)) {
    }
    if (seen < now) report_writeback_error(inner.last_writeback_error());
  }
  std::atomic<std::uint64_t> wb_errors_{0};
  std::atomic<int> wb_errno_{0};
  std::atomic<std::uint64_t> forwarded_{0};  // forward_writeback_errors: inner's count seen
};

/// The production backend: at byte granularity flush does nothing and drain is pmem_drain
/// (sfence); at cache_line pmem_flush (clwb) and pmem_drain; at page pmem_msync, whose failure
/// is reported (report_writeback_error).
PMPAGE_API std::shared_ptr<persistence> make_libpmem_persistence();

/// Wraps another backend and counts its calls (relaxed atomics): what benchmarks and the
/// fence-budget tests use to prove "one fence per order-0 alloc".
class PMPAGE_API counting_persistence final : public persistence {
 public:
  /// Counts the calls made to it and passes each to `inner` (must not be nullptr), whose
  /// write-back failures it reports as its own.
  explicit counting_persistence(std::shared_ptr<persistence> inner) : inner_(std::move(inner)) {}
  granularity attach(void* base, std::size_t length, granularity g) override { return inner_->attach(base, length, g); }
  void detach() noexcept override { inner_->detach(); }
  void flush(const void* addr, std::size_t len) noexcept override {
    flushes_.fetch_add(1, std::memory_order_relaxed);
    inner_->flush(addr, len);
  }
  void drain() noexcept override {
    fences_.fetch_add(1, std::memory_order_relaxed);
    inner_->drain();
    // The pool reads this object's error count: the inner backend's failures (made during this
    // drain or the flushes before it) become this object's before the drain returns.
    forward_writeback_errors(*inner_);
  }
  void copy_nodrain(void* dst, const void* src, std::size_t len) noexcept override {
    flushes_.fetch_add(1, std::memory_order_relaxed);
    inner_->copy_nodrain(dst, src, len);
  }
  void memset_nodrain(void* dst, int c, std::size_t len) noexcept override {
    flushes_.fetch_add(1, std::memory_order_relaxed);
    inner_->memset_nodrain(dst, c, len);
  }
  /// drain() calls since construction or reset(), all threads. Thread-safe (relaxed).
  std::uint64_t fences() const noexcept { return fences_.load(std::memory_order_relaxed); }
  /// flush(), copy_nodrain() and memset_nodrain() calls since construction or reset().
  std::uint64_t flushes() const noexcept { return flushes_.load(std::memory_order_relaxed); }
  /// Sets both counts to 0 (not atomically with respect to calls still running on other threads).
  void reset() noexcept {
    fences_.store(0, std::memory_order_relaxed);
    flushes_.store(0, std::memory_order_relaxed);
  }

 private:
  std::shared_ptr<persistence> inner_;
  std::atomic<std::uint64_t> fences_{0};
  std::atomic<std::uint64_t> flushes_{0};
};

}  // namespace pmpage
