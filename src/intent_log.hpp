// intent_log.hpp — the intent lanes that make alloc_pages_to / free_pages_from atomic.
//
// An intent says "extent (pfn, order) is being allocated into / freed from the pfn slot at
// slot_offset". Protocol (two fences):
//   alloc_pages_to:  [page map / region words + intent] fence  [fresh SPLIT word + *slot = pfn] fence
//   free_pages_from: [intent] fence  [page map / region words + *slot = 0] fence
// then the intent is retired lazily (seq = 0, flushed, made durable by the thread's next fence).
// Recovery (recovery.cpp) rolls every valid intent forward or back from the slot's value.
//
// A retired-but-not-yet-durable intent is "pending". A pending intent must never be replayed
// over a later operation, so any operation that touches a pending intent's extent or slot first
// clobbers that intent itself (resolve_conflicts), and its own fence makes the clobber durable
// before its effects can be.
//
// Lock order: callers never hold the allocator lock or a lane when calling resolve_conflicts;
// intent_log::mu_ is a leaf lock.
#pragma once

#include <atomic>
#include <cstdint>
#include <mutex>

#include "layout.hpp"
#include "pmpage/persistence.hpp"

namespace pmpage::detail {

class intent_log {
 public:
  void init(lane* lanes, persistence* pers);
  /// Takes a lane for one operation (yields while all are busy).
  unsigned acquire() noexcept;
  void release(unsigned i) noexcept;
  /// Writes and flushes an intent into held lane i (not fenced).
  void write(unsigned i, intent_kind kind, unsigned order, std::uint64_t slot_offset, std::uint64_t pfn) noexcept;
  /// Retires lane i's intent: seq = 0 and flush, no fence (see header comment).
  void retire_lazily(unsigned i) noexcept;
  /// Called by the pool after each fence it issues: intents this thread retired are now durable.
  void after_fence() noexcept;
  /// Clobbers every pending intent of another lane whose extent overlaps [pfn, pfn + 2^order) or
  /// whose slot is slot_offset (0 = none). Waits for lanes busy mid-operation.
  void resolve_conflicts(std::uint64_t pfn, unsigned order, std::uint64_t slot_offset) noexcept;
  unsigned pending() const noexcept { return nr_pending_.load(std::memory_order_relaxed); }

 private:
  struct mirror {
    std::atomic<bool> busy{false};
    bool pending = false;  // guarded by mu_
    std::uint64_t seq = 0, slot = 0, pfn = 0;
    unsigned order = 0;
  };
  lane* lanes_ = nullptr;
  persistence* pers_ = nullptr;
  std::mutex mu_;
  std::atomic<unsigned> nr_pending_{0};
  std::atomic<std::uint64_t> next_seq_{1};
  mirror mirrors_[NR_LANES];
};

}  // namespace pmpage::detail
