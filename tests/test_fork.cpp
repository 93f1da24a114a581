// fork() and the library's process-wide state: the locks a child inherits (issue #18 defect 4)
// and the single-opener lock a child's inherited descriptor shares (defect 8).
//
// A child is waited for with a deadline (a pidfd, else a WNOHANG poll): a hang is a failure with
// the child killed, never a stuck test. The deadline only bounds a hang; no result depends on
// timing.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <thread>
#include <vector>

#include <pmpage/pmpage.h>

#include "test_util.hpp"

namespace {

using namespace pmtest;
using pmpage::page;
using pmpage::pool;

constexpr int kHung = -1;

// Waits for child `pid` at most `limit`; returns its wait status, or kHung after killing it.
int wait_or_kill(pid_t pid, std::chrono::milliseconds limit) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  const int pidfd = int(::syscall(SYS_pidfd_open, pid, 0));
  int status = 0;
  for (;;) {
    const pid_t r = ::waitpid(pid, &status, WNOHANG);
    if (r == pid) break;
    if (r < 0 && errno != EINTR) {
      ADD_FAILURE() << "waitpid: " << std::strerror(errno);
      status = kHung;
      break;
    }
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      status = kHung;
      break;
    }
    if (pidfd >= 0) {
      pollfd p{pidfd, POLLIN, 0};
      ::poll(&p, 1, int(left.count()));  // readable when the child exits
    } else {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));  // no pidfd (kernel < 5.3)
    }
  }
  if (pidfd >= 0) ::close(pidfd);
  return status;
}

// Forks; the child runs f and _exits with its result (2 on an exception). Returns the child's pid.
template <class F>
pid_t fork_child(F&& f) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    int rc = 2;
    try {
      rc = f();
    } catch (...) {
    }
    ::_exit(rc);
  }
  return pid;
}

// ---- defect 4: every lock the library owns is safe across fork ---------------------------------

std::atomic<int> g_c_misuse{0};
void count_c_misuse(const char*, void*) { g_c_misuse.fetch_add(1, std::memory_order_relaxed); }

class Fork : public TempPathTest {};

// Parent threads create and close volatile pools (the registry lock, the open-pools list, section
// ids), open and close a persistent pool, read a pool's recovery log (its log lock) and report
// misuse through the C handler (its lock), while this thread forks. Each child creates a volatile
// pool, reads the log, reports misuse and closes its copy of the parent's pools: all documented as
// allowed in a child. Before the fix a child could hang for ever on a lock a parent thread held
// at the fork (the registry lock, the C handler lock, the pool's log lock).
TEST_F(Fork, ChildCreatesAndClosesPoolsWhileParentThreadsOpenAndClose) {
  const auto path = new_path();
  { pool made = create_pool(path, 8 * MiB); }
  pool kept = create_pool(new_path("kept"), 8 * MiB);
  pool::volatile_options vo;
  vo.size = 2 * MiB;
  pool kept_volatile = pool::create_volatile(vo);

  // Misuse goes through the C API's handler (and its lock) for the whole test.
  const pmpage::misuse_handler previous = pmpage::set_misuse_handler(nullptr);
  pmpage_set_misuse_handler(&count_c_misuse, nullptr);

  std::atomic<bool> stop{false};
  std::atomic<int> failures{0};
  std::mutex first_failure_mu;
  std::string first_failure;
  auto failed_with = [&](const char* what) {
    if (failures.fetch_add(1) == 0) {
      std::lock_guard g(first_failure_mu);
      first_failure = what;
    }
  };
  std::vector<std::thread> churn;
  for (int t = 0; t < 2; ++t)
    churn.emplace_back([&] {
      while (!stop.load(std::memory_order_relaxed)) {
        try {
          pool v = pool::create_volatile(vo);
          if (page* p = v.alloc_pages(0)) pmpage::put_page(p);
          v.close();
        } catch (const std::exception& e) {
          failed_with(e.what());
        }
      }
    });
  churn.emplace_back([&] {
    while (!stop.load(std::memory_order_relaxed)) {
      try {
        pool p = pool::open(path);
        p.close();
      } catch (const std::exception& e) {
        failed_with(e.what());
      }
    }
  });
  churn.emplace_back([&] {
    static int not_a_page[16];
    while (!stop.load(std::memory_order_relaxed)) {
      (void)kept.recovery_log();
      (void)pmpage::page_to_pfn(reinterpret_cast<page*>(&not_a_page[0]));  // misuse: the C handler's lock
    }
  });

  constexpr int kChildren = 200;
  int hung = 0, failed = 0;
  for (int i = 0; i < kChildren; ++i) {
    const pid_t pid = fork_child([&] {
      pool v = pool::create_volatile(vo);
      page* p = v.alloc_pages(0);
      if (!p) return 3;
      pmpage::put_page(p);
      v.close();
      (void)kept.recovery_log();
      static int bogus;
      (void)pmpage::page_to_pfn(reinterpret_cast<page*>(&bogus));
      kept.close();  // the child's copies: closing them changes nothing for the parent
      kept_volatile.close();
      return 0;
    });
    ASSERT_GT(pid, 0) << std::strerror(errno);
    const int status = wait_or_kill(pid, std::chrono::seconds(10));
    if (status == kHung)
      ++hung;
    else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
      ++failed;
  }
  stop.store(true);
  for (auto& t : churn) t.join();
  pmpage_set_misuse_handler(nullptr, nullptr);
  pmpage::set_misuse_handler(previous);

  EXPECT_EQ(hung, 0) << "children that did not exit within 10 s (a lock held across fork)";
  EXPECT_EQ(failed, 0);
  EXPECT_EQ(failures.load(), 0) << "parent threads' creates and opens that failed; the first: " << first_failure;
  EXPECT_GT(g_c_misuse.load(), 0);
  EXPECT_EQ(kept.check(), "");
  EXPECT_EQ(kept_volatile.check(), "");
}

// Per-thread magazines (src/magazine.hpp): their locks are taken around fork() like every other
// allocator lock. A parent thread allocates and frees order-0 pages in a loop (its magazine lock
// taken and dropped on every call) while this thread forks; each child reads stats() of its copy,
// which takes every magazine lock of the pool, and closes it (no drain: a child never writes). Without the fork handlers' magazine locks a child could wait for ever on the lock the
// parent thread held at the fork.
TEST_F(Fork, ChildReadsAPoolWhoseMagazinesAParentThreadWasUsing) {
  pool::volatile_options vo;
  vo.size = 8 * MiB;
  pool v = pool::create_volatile(vo);
  const std::uint64_t total = v.stats().total_pages;
  // This thread's magazine holds pages too: the child sees them as free.
  std::vector<page*> held;
  for (int i = 0; i < 20; ++i) held.push_back(v.alloc_pages(0));
  for (std::size_t i = 0; i < held.size(); i += 2) pmpage::put_page(held[i]);
  std::atomic<bool> stop{false};
  std::thread churn([&] {
    while (!stop.load(std::memory_order_relaxed))
      if (page* p = v.alloc_pages(0)) pmpage::put_page(p);
  });
  constexpr int kChildren = 50;
  int hung = 0, failed = 0;
  for (int i = 0; i < kChildren; ++i) {
    const pid_t pid = fork_child([&] {
      misuse_recorder rec;
      const pmpage::pool_stats s = v.stats();
      if (s.free_pages > total || s.free_pages < total - 10 - 1) return 3;  // at most the churn's page in flight
      if (v.alloc_pages(0) != nullptr) return 4;  // refused in a child (and reported)
      v.close();
      return 0;
    });
    ASSERT_GT(pid, 0) << std::strerror(errno);
    const int status = wait_or_kill(pid, std::chrono::seconds(10));
    if (status == kHung)
      ++hung;
    else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
      ++failed;
  }
  stop.store(true);
  churn.join();
  EXPECT_EQ(hung, 0) << "children that did not exit within 10 s (a magazine lock held across fork)";
  EXPECT_EQ(failed, 0);
  for (std::size_t i = 1; i < held.size(); i += 2) pmpage::put_page(held[i]);
  EXPECT_EQ(v.check(), "");
  EXPECT_EQ(v.stats().free_pages, total);
}

// ---- defect 8: the single-opener lock belongs to the opener, not to its fork children ------------

// One kind of pool that holds an opener lock on a file: persistent (read-write or read-only) or
// volatile over a backing file.
enum class lock_kind { persistent, read_only, volatile_backing };

const char* lock_kind_name(lock_kind k) {
  switch (k) {
    case lock_kind::persistent: return "Persistent";
    case lock_kind::read_only: return "ReadOnly";
    case lock_kind::volatile_backing: return "VolatileBacking";
  }
  return "?";
}

class ForkOpenerLock : public TempPathTest, public ::testing::WithParamInterface<lock_kind> {
 protected:
  void SetUp() override {
    path_ = new_path();
    if (GetParam() == lock_kind::volatile_backing) {
      const int fd = ::open(path_.c_str(), O_RDWR | O_CREAT | O_EXCL, 0600);
      ASSERT_GE(fd, 0);
      ASSERT_EQ(::ftruncate(fd, off_t(4 * MiB)), 0);
      ::close(fd);
    } else {
      create_pool(path_, 8 * MiB);
    }
  }
  // Opens the pool the way this test's kind does.
  pool open_it() const {
    switch (GetParam()) {
      case lock_kind::persistent: return pool::open(path_);
      case lock_kind::read_only: {
        pool::open_options o;
        o.read_only = true;
        return pool::open(path_, o);
      }
      case lock_kind::volatile_backing: {
        pool::volatile_options v;
        v.backing = path_;
        return pool::create_volatile(v);
      }
    }
    return pool();
  }
  // What conflicts with open_it() while it is open: a writer (for read-only: a read-write open).
  pool open_conflicting() const {
    if (GetParam() == lock_kind::read_only) return pool::open(path_);
    return open_it();
  }
  std::filesystem::path path_;
};

// A child closing its inherited copy only closes its descriptor: the parent keeps the lock (before
// and after the fix; the fix must not unlock the parent's lock from a child).
TEST_P(ForkOpenerLock, AChildClosingItsCopyLeavesTheParentsLock) {
  pool p = open_it();
  const pid_t pid = fork_child([&] {
    p.close();
    try {
      pool q = open_conflicting();
      return 1;  // opened: the child's close released the parent's lock
    } catch (const pmpage::error& e) {
      return e.code().value() == EBUSY ? 0 : 3;
    }
  });
  ASSERT_GT(pid, 0);
  const int status = wait_or_kill(pid, std::chrono::seconds(10));
  ASSERT_NE(status, kHung);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "1: the child's close released the parent's lock; 3: another error";
  // Still the parent's: a second open here is refused as well.
  expect_error(EBUSY, [&] { open_conflicting(); });
  EXPECT_EQ(p.check(), "");
}

// open; fork (the child idles, never touching the pool); the parent closes and reopens: before
// the fix the reopen was EBUSY until the child exited (the child's descriptor shares the locked
// file description). Then the documented hand-over: the parent has closed, the child closes its
// copy and opens the pool itself.
TEST_P(ForkOpenerLock, TheParentsCloseReleasesTheLockWhileAChildIdles) {
  int go[2];
  ASSERT_EQ(::pipe(go), 0);
  pool p = open_it();
  const pid_t pid = fork_child([&] {
    ::close(go[1]);
    char c;
    while (::read(go[0], &c, 1) < 0 && errno == EINTR) {
    }  // idle until the parent has closed and reopened
    p.close();
    try {
      pool mine = open_conflicting();
      return mine.is_open() ? 0 : 4;
    } catch (const pmpage::error& e) {
      return e.code().value() == EBUSY ? 1 : 3;
    }
  });
  ASSERT_GT(pid, 0);
  ::close(go[0]);
  p.close();
  int reopened = 0;
  try {
    pool again = open_conflicting();  // a writer after a read-only close
    reopened = again.is_open();
    again.close();
    pool same = open_it();
    reopened += same.is_open();
  } catch (const pmpage::error& e) {
    ADD_FAILURE() << "reopen after close while a fork child idles: " << e.what();
  }
  EXPECT_EQ(reopened, 2);
  ::close(go[1]);  // the child goes on: the hand-over
  const int status = wait_or_kill(pid, std::chrono::seconds(10));
  ASSERT_NE(status, kHung);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "1: the hand-over open was EBUSY; 3: another error";
}

INSTANTIATE_TEST_SUITE_P(, ForkOpenerLock,
                         ::testing::Values(lock_kind::persistent, lock_kind::read_only, lock_kind::volatile_backing),
                         [](const auto& info) { return std::string(lock_kind_name(info.param)); });

}  // namespace
