// futex.hpp — sleeping on a descriptor's flags word so that a waker in ANY process finds the
// sleeper: futex(2) without FUTEX_PRIVATE_FLAG.
//
// Why not std::atomic<T>::wait/notify_all: libstdc++ 12 (bits/atomic_wait.h) calls futex with
// FUTEX_PRIVATE_FLAG, whose key is (mm, address): a waiter in another process, or one that maps
// the same memory at another address, is never woken. And notify_all returns without a syscall
// when the calling process's own waiter table counts no sleeper, so a waker in process B does not
// even try to wake a sleeper of process A. The descriptors will live in memory several processes
// map (issue #20, docs/design.md "Several processes"); a shared futex is keyed by the backing
// object and offset (the inode's pages for a MAP_SHARED file or memfd, the mm and address for
// private memory), so it works wherever the word lives.
//
// Cost: only the slow paths sleep or wake (a waker calls futex_wake_all only when the word's
// waiters bit said someone sleeps, as before). A shared key costs the kernel a page lookup that a
// private key skips: a few hundred ns on a path that already sleeps.
//
// The protocol is the caller's, as with the kernel's futexes: set a waiters bit, re-check the
// condition, futex_wait on the value seen; the waker clears the condition, then wakes if the bit
// was set. futex_wait returns on a wake, a value change (EAGAIN), a signal (EINTR) or a spurious
// wake-up alike: every caller re-reads the word in a loop.
#pragma once

#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <climits>
#include <cstdint>

namespace pmpage::detail {

static_assert(sizeof(std::atomic<std::uint32_t>) == sizeof(std::uint32_t) &&
                  alignof(std::atomic<std::uint32_t>) == alignof(std::uint32_t),
              "a futex word is a plain aligned 32-bit integer");

/// Sleeps while *w == expected (checked by the kernel atomically with going to sleep). Returns
/// on any wake-up; the caller re-reads *w. Never spins.
inline void futex_wait(std::atomic<std::uint32_t>* w, std::uint32_t expected) noexcept {
  ::syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(w), FUTEX_WAIT, expected, nullptr, nullptr, 0);
}

/// Wakes every sleeper of futex_wait on w, in every process that maps the word.
inline void futex_wake_all(std::atomic<std::uint32_t>* w) noexcept {
  ::syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(w), FUTEX_WAKE, INT_MAX, nullptr, nullptr, 0);
}

}  // namespace pmpage::detail
