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
//
// Shared between processes (sharing::process_shared, for the state of a pool several processes
// open: docs/design.md, "Several processes"): the mutex is PTHREAD_PROCESS_SHARED (its futex
// key is the memory object, not the process) and ROBUST: when its holder dies, the kernel
// (robust futex list) hands it to the next locker with EOWNERDEAD instead of leaving every
// other process waiting for ever. The lock is then taken and made consistent, and owner_died()
// says so from then on: the state it guards may be half-changed, and what to do about that is
// its user's rule (a pool's: stop, or repair). A robust lock costs its holder two more stores
// per lock and unlock (the robust list), measured by bench rows locks/adaptive_mutex/*.
#pragma once

#include <pthread.h>

#include <atomic>
#include <cerrno>

namespace pmpage::detail {

class adaptive_mutex {
 public:
  enum class sharing { process_private, process_shared };
  // Not explicit: members default-initialised in aggregates ({}) use it (clang insists).
  adaptive_mutex() noexcept : adaptive_mutex(sharing::process_private) {}
  explicit adaptive_mutex(sharing s) noexcept {
    pthread_mutexattr_t a;
    pthread_mutexattr_init(&a);
    pthread_mutexattr_settype(&a, PTHREAD_MUTEX_ADAPTIVE_NP);
    if (s == sharing::process_shared) {
      pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
      pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    }
    pthread_mutex_init(&m_, &a);
    pthread_mutexattr_destroy(&a);
  }
  ~adaptive_mutex() { pthread_mutex_destroy(&m_); }
  adaptive_mutex(const adaptive_mutex&) = delete;
  adaptive_mutex& operator=(const adaptive_mutex&) = delete;
  void lock() noexcept {
    if (__builtin_expect(pthread_mutex_lock(&m_) == EOWNERDEAD, 0)) took_from_dead_owner();
  }
  bool try_lock() noexcept {
    const int rc = pthread_mutex_trylock(&m_);
    if (__builtin_expect(rc == EOWNERDEAD, 0)) {
      took_from_dead_owner();
      return true;
    }
    return rc == 0;
  }
  void unlock() noexcept { pthread_mutex_unlock(&m_); }
  /// A holder died holding this (process-shared) lock since it was made; the lock was taken over.
  bool owner_died() const noexcept { return died_.load(std::memory_order_relaxed); }

 private:
  void took_from_dead_owner() noexcept {
    died_.store(true, std::memory_order_relaxed);
    pthread_mutex_consistent(&m_);
  }
  pthread_mutex_t m_;
  std::atomic<bool> died_{false};
};

}  // namespace pmpage::detail
