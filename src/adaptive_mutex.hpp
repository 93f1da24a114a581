// adaptive_mutex.hpp — the allocator's locks: glibc's adaptive mutex (PTHREAD_MUTEX_ADAPTIVE_NP).
//
// Why this lock: every critical section here is short (choose pages in a DRAM bitmap, write one
// page-map line: ~50-100 ns) and, with per-CPU caches, rarely contended. An uncontended
// lock/unlock is one compare-and-swap and one exchange. Under contention the adaptive mutex spins
// a bounded, self-tuning number of times and then SLEEPS on a futex. The spin-then-sched_yield
// lock used before starved when threads outnumbered cores: a waiter that yields still competes
// for the CPU with the preempted holder, and the holder's section never finished; a futex sleeper
// leaves the CPU to it. (The kernel's answer for per-CPU data is to disable preemption; user
// space cannot, and restartable sequences do not cover a section that writes the media.)
// glibc's own, well-tested implementation, and ThreadSanitizer understands it.
#pragma once

#include <pthread.h>

namespace pmpage::detail {

class adaptive_mutex {
 public:
  adaptive_mutex() noexcept {
    pthread_mutexattr_t a;
    pthread_mutexattr_init(&a);
    pthread_mutexattr_settype(&a, PTHREAD_MUTEX_ADAPTIVE_NP);
    pthread_mutex_init(&m_, &a);
    pthread_mutexattr_destroy(&a);
  }
  ~adaptive_mutex() { pthread_mutex_destroy(&m_); }
  adaptive_mutex(const adaptive_mutex&) = delete;
  adaptive_mutex& operator=(const adaptive_mutex&) = delete;
  void lock() noexcept { pthread_mutex_lock(&m_); }
  bool try_lock() noexcept { return pthread_mutex_trylock(&m_) == 0; }
  void unlock() noexcept { pthread_mutex_unlock(&m_); }

 private:
  pthread_mutex_t m_;
};

}  // namespace pmpage::detail
