// pmpage/persistence.hpp — the one seam through which every flush and fence goes.
//
// Layer: beside types.hpp; used by pool.hpp. The library never calls libpmem, msync or a fence
// instruction except through a `persistence` object, so tests can substitute a simulated device
// (one that models which cache lines reach the media before a power failure) and benchmarks can
// count fences.
//
// Contract: a store to the pool mapping is durable once flush() covered it and a later drain()
// (the fence) returned. drain() orders and completes every earlier flush of the calling thread.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>

#include "pmpage/types.hpp"  // PMPAGE_API

namespace pmpage {

class PMPAGE_API persistence {
 public:
  virtual ~persistence() = default;

  /// Called once when a pool maps its device, before any flush. `is_pmem` tells whether CPU cache
  /// flushes reach the media (DAX with MAP_SYNC, device DAX, or PMEM_IS_PMEM_FORCE=1); when false
  /// the libpmem backend falls back to msync.
  virtual void attach(void* base, std::size_t length, bool is_pmem) = 0;
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

  void persist(const void* addr, std::size_t len) noexcept {
    flush(addr, len);
    drain();
  }
};

/// The production backend: libpmem's pmem_flush/pmem_drain on pmem, pmem_msync otherwise.
PMPAGE_API std::shared_ptr<persistence> make_libpmem_persistence();

/// Wraps another backend and counts its calls (relaxed atomics): what benchmarks and the
/// fence-budget tests use to prove "one fence per order-0 alloc".
class PMPAGE_API counting_persistence final : public persistence {
 public:
  explicit counting_persistence(std::shared_ptr<persistence> inner) : inner_(std::move(inner)) {}
  void attach(void* base, std::size_t length, bool is_pmem) override { inner_->attach(base, length, is_pmem); }
  void detach() noexcept override { inner_->detach(); }
  void flush(const void* addr, std::size_t len) noexcept override {
    flushes_.fetch_add(1, std::memory_order_relaxed);
    inner_->flush(addr, len);
  }
  void drain() noexcept override {
    fences_.fetch_add(1, std::memory_order_relaxed);
    inner_->drain();
  }
  void copy_nodrain(void* dst, const void* src, std::size_t len) noexcept override {
    flushes_.fetch_add(1, std::memory_order_relaxed);
    inner_->copy_nodrain(dst, src, len);
  }
  void memset_nodrain(void* dst, int c, std::size_t len) noexcept override {
    flushes_.fetch_add(1, std::memory_order_relaxed);
    inner_->memset_nodrain(dst, c, len);
  }
  std::uint64_t fences() const noexcept { return fences_.load(std::memory_order_relaxed); }
  std::uint64_t flushes() const noexcept { return flushes_.load(std::memory_order_relaxed); }
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
