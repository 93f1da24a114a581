// Sleeping and waking across processes: the primitives the page lock and the publication wait
// use (src/futex.hpp), on a word in memory two processes map — each at its own address — as they
// will map a shared pool's descriptors (issue #20). std::atomic<T>::wait, which lock_page used
// before, never wakes a sleeper of another process: these tests hang (and fail at their
// deadline) with it.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <cstdio>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "futex.hpp"
#include "pmpage/mm.hpp"
#include "pmpage/page.hpp"
#include "pmpage/pool.hpp"

namespace {

using namespace std::chrono_literals;

/// The scheduler state letter of a process (/proc/<pid>/stat field 3): 'S' while it sleeps.
char process_state(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  std::getline(f, line);
  const auto close = line.rfind(')');  // the command name may hold spaces
  return close == std::string::npos || close + 2 >= line.size() ? '?' : line[close + 2];
}

/// Waits up to `limit` for child to exit; kills it and returns -1 if it does not.
int wait_child(pid_t child, std::chrono::milliseconds limit) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  for (;;) {
    int status = 0;
    const pid_t r = ::waitpid(child, &status, WNOHANG);
    if (r == child) return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    if (std::chrono::steady_clock::now() > deadline) {
      ::kill(child, SIGKILL);
      ::waitpid(child, &status, 0);
      return -1;
    }
    std::this_thread::sleep_for(2ms);
  }
}

/// A page-sized MAP_SHARED memory object, as a pool's shared descriptor segment will be.
struct shared_object {
  int fd = -1;
  shared_object() {
    fd = ::memfd_create("pmpage-futex-test", MFD_CLOEXEC);
    if (fd >= 0 && ::ftruncate(fd, 4096) != 0) fd = -1;
  }
  ~shared_object() {
    if (fd >= 0) ::close(fd);
  }
  void* map() const { return ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0); }
};

/// Forks a child that maps the object at an address of its own, publishes that it is about to
/// sleep, and sleeps on the descriptor's flags word until PG_locked clears (lock_page_slow's
/// protocol); then this process clears the bit and wakes through `wake`. The child must wake.
template <class Wake>
void expect_cross_process_wake(Wake wake) {
  shared_object obj;
  ASSERT_GE(obj.fd, 0);
  void* mine = obj.map();
  ASSERT_NE(mine, MAP_FAILED);
  auto* desc = new (mine) pmpage::page{};
  desc->flags_.store(pmpage::PG_locked | pmpage::PG_waiters, std::memory_order_relaxed);
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    // Its own mapping, at another address than the parent's: the futex must be keyed by the
    // object, not by (process, address).
    void* its = obj.map();
    if (its == MAP_FAILED || its == mine) _exit(3);
    auto* d = static_cast<pmpage::page*>(its);
    for (;;) {
      const std::uint32_t f = d->flags_.load(std::memory_order_acquire);
      if (!(f & pmpage::PG_locked)) _exit(0);
      pmpage::detail::futex_wait(&d->flags_, f);
    }
  }
  // Wake only once the child sleeps in the kernel: a wake before that would pass whatever the
  // futex's key (the child would see the bit clear without sleeping).
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (process_state(child) != 'S' && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(1ms);
  std::this_thread::sleep_for(5ms);  // the sleep is the futex (the child does nothing else); settle
  desc->flags_.fetch_and(~(pmpage::PG_locked | pmpage::PG_waiters), std::memory_order_release);
  wake(desc);
  EXPECT_EQ(wait_child(child, 10s), 0) << "a sleeper in another process, mapping the word at another address, "
                                          "was not woken (-1: still asleep after 10 s)";
  ::munmap(mine, 4096);
}

TEST(SharedFutex, UnlockWakesAPageLockSleeperInAnotherProcess) {
  // wake_page_waiters is what unlock_page and the split call when PG_waiters was set.
  expect_cross_process_wake([](pmpage::page* d) { pmpage::detail::wake_page_waiters(d); });
}

TEST(SharedFutex, WakeAllReachesASleeperThatMapsTheWordElsewhere) {
  // The publication wait (pool.cpp, wait_published / end_publication) uses the same pair.
  expect_cross_process_wake([](pmpage::page* d) { pmpage::detail::futex_wake_all(&d->flags_); });
}

TEST(SharedFutex, AWaitOnAChangedWordReturnsAtOnce) {
  // The kernel compares the word with the expected value atomically with going to sleep: a
  // waiter whose value is stale must not sleep (the lost-wake-up guard every caller relies on).
  std::atomic<std::uint32_t> w{1};
  pmpage::detail::futex_wait(&w, 0);  // returns (EAGAIN) instead of sleeping forever
  SUCCEED();
}

TEST(PositionIndependentDescriptors, ATailNamesItsHeadWhereverTheDescriptorsAreMapped) {
  // Several processes will map one pool's descriptors, each at its own address: no descriptor
  // field may hold an address. A copy of a compound page's descriptors at another address must
  // lead from its tails to its (copied) head, as the originals do.
  pmpage::pool::volatile_options o;
  o.size = 4 * pmpage::HPAGE_PMD_SIZE;
  pmpage::pool p = pmpage::pool::create_volatile(o);
  pmpage::page* head = p.alloc_pages(3);
  ASSERT_NE(head, nullptr);
  std::vector<pmpage::page> copy(8);
  for (unsigned j = 0; j < 8; ++j) {
    pmpage::page* t = head + j;
    ASSERT_EQ(pmpage::compound_head(t), head);
    std::memcpy(static_cast<void*>(&copy[j]), static_cast<const void*>(t), sizeof(pmpage::page));
  }
  for (unsigned j = 1; j < 8; ++j)
    EXPECT_EQ(pmpage::detail::linked_head(&copy[j], pmpage::detail::load_compound_head(&copy[j])), &copy[0])
        << "tail " << j << " names an address, not its head";
  EXPECT_EQ(pmpage::detail::linked_head(&copy[0], pmpage::detail::load_compound_head(&copy[0])), &copy[0]);
  pmpage::free_pages(head, 3);
}

}  // namespace
