// spin_mutex.hpp — the allocator lock: test-and-test-and-set with pause, yielding after a while.
//
// Why not std::mutex: the allocator's critical sections are ~50-100 ns (choose pages, update the
// DRAM state, write a page-map line) while each operation's fence, outside the lock, takes
// ~200 ns. With std::mutex two threads kept meeting in the futex (sleep + wake cost microseconds:
// alloc/free got slower with 2 threads than with 1). Spinning briefly is the right trade for
// sections that short; yielding keeps it sane when threads outnumber cores.
#pragma once

#include <sched.h>

#include <atomic>

namespace pmpage::detail {

class spin_mutex {
 public:
  void lock() noexcept {
    for (unsigned spins = 0;; ++spins) {
      if (!locked_.load(std::memory_order_relaxed) && !locked_.exchange(true, std::memory_order_acquire)) return;
      if (spins < 256)
        __builtin_ia32_pause();
      else
        sched_yield();
    }
  }
  bool try_lock() noexcept { return !locked_.load(std::memory_order_relaxed) && !locked_.exchange(true, std::memory_order_acquire); }
  void unlock() noexcept { locked_.store(false, std::memory_order_release); }

 private:
  std::atomic<bool> locked_{false};
};

}  // namespace pmpage::detail
