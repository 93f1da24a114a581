// intent_log.hpp — the intent lanes that make the multi-word slot calls atomic.
//
// An intent says "extent (pfn, order) is being moved / split / allocated into / freed from the
// pfn slot at slot_offset". Protocol (two fences):
//   split_huge_page_to: [intent] fence  [page map + owner entries + slots 1..511 + SPLIT word] fence
//   move_pages_owner: [intent] fence  [owner entry + *dest = pfn + *src = 0] fence
//   alloc_pages_bulk_to / free_pages_bulk_from, one lane per slot, up to NR_LANES / 4 at once:
//     [intents] fence  [page map / region words + owner entries + slots] fence
// then the intent is retired lazily: seq = 0 and a flush, no fence of its own. Recovery
// (recovery.cpp) rolls every valid intent forward or back from the slot's value, committed
// alloc_to intents first (recovery.cpp, replay_intents).
// The single alloc_pages_to, free_pages_from and replace_pages use no lane (the slot protocol:
// pool.cpp, publish_to; docs/format.md). A pool written by pmpage 0.2 may still hold their
// alloc_to / free_from intents, replayed at open as before.
//
// A retired intent whose retirement may not be durable yet is "pending". It must never be
// replayed over an operation that completed after it, so EVERY fence the pool issues, from any
// thread, first re-flushes the retirement of every pending lane and, once the fence returns,
// counts it durable (before_fence / after_fence). Any operation that completes after a
// retirement fences after it, so its effects can never be durable while the stale intent is
// not. A live intent belongs to a lane held mid-operation, and no other operation may act on its
// extent until the retirement is pending (rule P5, pool_impl.hpp): the holder has reserved it,
// and where the extent becomes reachable before the retirement (a bulk call's slot, filled
// before its second fence) the page is marked PG_publishing and other slot calls wait.
//
// No lock: lanes are claimed with a compare-and-swap, pending retirements tracked with atomics.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>

#include "layout.hpp"
#include "pmpage/persistence.hpp"

namespace pmpage::detail {

class intent_log {
  struct alignas(64) mirror {
    std::atomic<bool> busy{false};
    /// The seq of this lane's retired intent while its retirement may not be durable yet, else 0.
    std::atomic<std::uint64_t> pending_seq{0};
    std::uint64_t seq_written = 0;  // the seq of the last intent written (by the lane's holder)
  };

 public:
  intent_log() = default;
  intent_log(const intent_log&) = delete;  // st_ may point at own_
  intent_log& operator=(const intent_log&) = delete;
  /// Who holds which lane and which retirements are pending: lock-free atomics and no address,
  /// so every process of a shared pool can use one (each fence must re-flush every process's
  /// pending retirements). An intent_log is a view: this state, the process's mapping of the
  /// lanes and its persistence backend.
  struct state {
    /// Bit i set whenever lane i's pending_seq is non-zero (a superset: fences check
    /// pending_seq). Set by the retiring holder; cleared only by the lane's next holder when
    /// pending_seq is 0. Lock-free, so fences of different threads never wait for each other.
    std::atomic<std::uint64_t> pending{0};
    std::atomic<std::uint64_t> next_seq{1};
    mirror mirrors[NR_LANES];
  };
  /// enabled = false (a volatile pool): every call is a no-op; acquire hands out lane 0 to all.
  /// st: the state to use (reset here), or null for the view's own.
  void init(lane* lanes, persistence* pers, bool enabled = true, state* st = nullptr);
  /// Takes a lane for one operation (yields while all are busy).
  unsigned acquire() noexcept;
  /// Takes a free lane if there is one (never waits); NR_LANES if all are busy. The bulk slot
  /// calls take their first lane with acquire() and the rest of a batch with this: a thread
  /// waits for a lane only while it holds none, so callers holding several cannot deadlock.
  unsigned try_acquire() noexcept;
  void release(unsigned i) noexcept;
  /// Writes and flushes an intent into held lane i (not fenced).
  void write(unsigned i, intent_kind kind, unsigned order, std::uint64_t slot_offset, std::uint64_t pfn,
             std::uint64_t aux = 0) noexcept;
  /// Retires lane i's intent: seq = 0, published as pending; the caller then flushes seq_word(i)
  /// (no fence of its own: see the header comment).
  void retire_lazily(unsigned i) noexcept;
  const void* seq_word(unsigned i) const noexcept { return &lanes_[i].seq; }

  /// What one fence makes durable: the lanes (and their seqs) whose retirement it re-flushed.
  struct fence_token {
    std::uint64_t lanes = 0;
    std::uint64_t seq[NR_LANES];
  };
  /// Before a fence: re-flush every pending retirement (cheap no-op when there is none).
  void before_fence(fence_token& t) noexcept;
  /// After that fence returned: those retirements are durable.
  void after_fence(const fence_token& t) noexcept;

  /// For pool::check(): "" if every lane holding an intent (seq != 0) is held by an operation in
  /// progress and passes its checksum and `valid`, else the first problem.
  std::string check(const std::function<bool(const lane&)>& valid);

 private:
  lane* lanes_ = nullptr;
  persistence* pers_ = nullptr;
  bool enabled_ = true;
  state* st_ = &own_;
  state own_;
};

}  // namespace pmpage::detail
