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
#include <algorithm>
#include <chrono>
#include <memory>
#include <cstring>
#include <cstdio>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include <fcntl.h>
#include <poll.h>

#include "adaptive_mutex.hpp"
#include "futex.hpp"
#include "segment.hpp"
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

// ---- allocator locks shared between processes ------------------------------------------------

TEST(SharedMutex, ALockWhoseHolderIsKilledGoesToTheNextLockerMarkedOwnerDied) {
  // Without robustness a process killed inside an allocator lock would leave every other
  // process waiting for ever: the next locker must get the lock, and learn that its guarded
  // state may be half-changed.
  using pmpage::detail::adaptive_mutex;
  shared_object obj;
  ASSERT_GE(obj.fd, 0);
  void* mine = obj.map();
  ASSERT_NE(mine, MAP_FAILED);
  auto* m = new (mine) adaptive_mutex(adaptive_mutex::sharing::process_shared);
  auto* locked = reinterpret_cast<std::atomic<int>*>(static_cast<char*>(mine) + 1024);
  locked->store(0);
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    // Another mapping, at another address: the lock is keyed by the object.
    void* its = obj.map();
    auto* cm = static_cast<adaptive_mutex*>(its);
    cm->lock();
    reinterpret_cast<std::atomic<int>*>(static_cast<char*>(its) + 1024)->store(1);
    for (;;) ::pause();
  }
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (locked->load() == 0 && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(1ms);
  ASSERT_EQ(locked->load(), 1);
  EXPECT_FALSE(m->try_lock()) << "a live holder's lock must not be taken";
  EXPECT_FALSE(m->owner_died());
  ::kill(child, SIGKILL);
  ::waitpid(child, nullptr, 0);
  m->lock();  // hangs for ever without robustness
  EXPECT_TRUE(m->owner_died());
  m->unlock();
  EXPECT_TRUE(m->try_lock()) << "made consistent: usable again";
  m->unlock();
  m->~adaptive_mutex();
  ::munmap(mine, 4096);
}

TEST(SharedMutex, AProcessPrivateLockIsUnchanged) {
  pmpage::detail::adaptive_mutex m;
  m.lock();
  EXPECT_FALSE(m.try_lock());
  m.unlock();
  EXPECT_TRUE(m.try_lock());
  m.unlock();
  EXPECT_FALSE(m.owner_died());
}

// ---- the shared segment's life cycle (src/segment.hpp), with real processes -------------------

using pmpage::detail::shared_segment;

/// A pmpage_mp_child process (tests/mp_child.cpp): its stdin and stdout are pipes to us.
class child_process {
 public:
  explicit child_process(const std::vector<std::string>& args) {
    int in[2], out[2];
    if (::pipe2(in, O_CLOEXEC) != 0 || ::pipe2(out, O_CLOEXEC) != 0) return;
    pid_ = ::fork();
    if (pid_ == 0) {
      ::dup2(in[0], 0);
      ::dup2(out[1], 1);
      std::vector<char*> argv;
      argv.push_back(const_cast<char*>(PMPAGE_MP_CHILD));
      for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
      argv.push_back(nullptr);
      ::execv(PMPAGE_MP_CHILD, argv.data());
      _exit(127);
    }
    ::close(in[0]);
    ::close(out[1]);
    to_ = in[1];
    from_ = out[0];
  }
  ~child_process() {
    if (pid_ > 0 && !reaped_) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
    if (to_ >= 0) ::close(to_);
    if (from_ >= 0) ::close(from_);
  }
  pid_t pid() const { return pid_; }
  /// The next line it prints, or "" if none comes within 20 s.
  std::string line() {
    std::string l;
    for (;;) {
      pollfd p{from_, POLLIN, 0};
      if (::poll(&p, 1, 20000) <= 0) return l;
      char c;
      if (::read(from_, &c, 1) != 1 || c == '\n') return l;
      l += c;
    }
  }
  /// Closes its stdin (it detaches and exits) and returns its exit status (-1: it did not exit).
  int finish() {
    ::close(to_);
    to_ = -1;
    reaped_ = true;
    return wait_child(pid_, 20s);
  }
  void kill() {
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
    reaped_ = true;
  }

 private:
  pid_t pid_ = -1;
  int to_ = -1, from_ = -1;
  bool reaped_ = false;
};

/// A segment name no other test (or run) uses.
std::string segment_name(const char* test) {
  static int n = 0;
  return "/pmpage-test." + std::to_string(::getpid()) + "." + test + "." + std::to_string(n++);
}

bool segment_exists(const std::string& name) {
  const int fd = ::shm_open(name.c_str(), O_RDONLY, 0);
  if (fd < 0) return false;
  ::close(fd);
  return true;
}

/// The value of "key=" in a child's report line, or -1.
long long field(const std::string& line, const std::string& key) {
  const auto at = line.find(key + "=");
  return at == std::string::npos ? -1 : std::stoll(line.substr(at + key.size() + 1));
}

constexpr std::uint64_t kSegmentSize = 1 << 20;

std::uint64_t& first_word(shared_segment& s) {
  return *reinterpret_cast<std::uint64_t*>(static_cast<char*>(s.base()) + shared_segment::header_bytes());
}

TEST(Segment, TheFirstAttacherInitialisesItAndAnotherProcessJoinsWhatItBuilt) {
  const std::string name = segment_name("join");
  int built = 0;
  {
    shared_segment mine(name, kSegmentSize, [&](shared_segment& s) {
      ++built;
      first_word(s) = 42;
    });
    EXPECT_TRUE(mine.initialised_here());
    EXPECT_EQ(built, 1);
    child_process other({"attach", name, std::to_string(kSegmentSize), "hold"});
    const std::string l = other.line();
    EXPECT_EQ(field(l, "initialised"), 0) << l;
    EXPECT_EQ(field(l, "value"), 42) << "the joiner must see the initialiser's contents: " << l;
    EXPECT_NE(field(l, "slot"), static_cast<long long>(mine.slot()));
    const auto procs = mine.processes();
    ASSERT_EQ(procs.size(), 2u);
    for (const auto& p : procs) EXPECT_TRUE(p.alive);
    EXPECT_EQ(other.finish(), 0);
    EXPECT_EQ(mine.processes().size(), 1u) << "a normal exit clears the process's record";
    EXPECT_TRUE(mine.dead_slots().empty());
    EXPECT_TRUE(segment_exists(name));
  }
  EXPECT_FALSE(segment_exists(name)) << "the last process to detach removes the segment";
}

TEST(Segment, ThirtyTwoProcessesAttachingAtOnceBuildItExactlyOnce) {
  const std::string name = segment_name("32");
  std::vector<std::unique_ptr<child_process>> kids;
  for (int i = 0; i < 32; ++i)
    kids.push_back(std::make_unique<child_process>(std::vector<std::string>{"attach", name, std::to_string(kSegmentSize), "hold"}));
  int initialisers = 0;
  std::vector<long long> slots;
  for (auto& k : kids) {
    const std::string l = k->line();
    ASSERT_GE(field(l, "slot"), 0) << l;
    initialisers += int(field(l, "initialised"));
    EXPECT_EQ(field(l, "generation"), 1) << l;
    EXPECT_EQ(field(l, "value"), 42) << l;
    slots.push_back(field(l, "slot"));
  }
  EXPECT_EQ(initialisers, 1);
  std::sort(slots.begin(), slots.end());
  EXPECT_EQ(std::unique(slots.begin(), slots.end()), slots.end()) << "two processes got one slot";
  EXPECT_EQ(shared_segment::inspect(name).size(), 32u);
  for (auto& k : kids) EXPECT_EQ(k->finish(), 0);
  EXPECT_FALSE(segment_exists(name));
}

TEST(Segment, AnInitialiserKilledMidwayIsReplacedByTheNextAttacher) {
  const std::string name = segment_name("inithang");
  child_process first({"attach", name, std::to_string(kSegmentSize), "init-hang"});
  ASSERT_EQ(first.line(), "initialising");
  first.kill();
  child_process next({"attach", name, std::to_string(kSegmentSize), "hold"});
  const std::string l = next.line();
  EXPECT_EQ(field(l, "initialised"), 1) << l;
  EXPECT_EQ(field(l, "generation"), 2) << "the dead initialiser's build counts as the first: " << l;
  EXPECT_EQ(field(l, "value"), 42) << l;
  EXPECT_EQ(next.finish(), 0);
  EXPECT_FALSE(segment_exists(name));
}

TEST(Segment, ASegmentWhoseProcessesAllDiedIsRebuiltByTheNextAttacher) {
  const std::string name = segment_name("stale");
  child_process victim({"attach", name, std::to_string(kSegmentSize), "hold"});
  const long long slot = field(victim.line(), "slot");
  ASSERT_GE(slot, 0);
  victim.kill();
  const auto left = shared_segment::inspect(name);
  ASSERT_EQ(left.size(), 1u) << "the dead process's record stays (nobody detached it)";
  EXPECT_EQ(left[0].pid, victim.pid());
  EXPECT_FALSE(left[0].alive);
  int built = 0;
  {
    shared_segment s(name, kSegmentSize, [&](shared_segment&) { ++built; });
    EXPECT_EQ(built, 1) << "a stale segment is rebuilt, never joined";
    EXPECT_EQ(s.generation(), 2u);
    EXPECT_TRUE(s.dead_slots().empty()) << "a rebuilt segment carries no record of the dead";
  }
  EXPECT_FALSE(segment_exists(name));
}

TEST(Segment, AProcessKilledWhileAttachedIsReportedDeadByItsSlot) {
  const std::string name = segment_name("dead");
  shared_segment mine(name, kSegmentSize, [](shared_segment&) {});
  child_process victim({"attach", name, std::to_string(kSegmentSize), "hold"});
  const long long slot = field(victim.line(), "slot");
  ASSERT_GE(slot, 0);
  EXPECT_TRUE(mine.dead_slots().empty());
  victim.kill();
  const auto dead = mine.dead_slots();
  ASSERT_EQ(dead.size(), 1u);
  EXPECT_EQ(dead[0], unsigned(slot));
  for (const auto& p : mine.processes())
    if (p.slot == unsigned(slot)) {
      EXPECT_EQ(p.pid, victim.pid());
    }
}

TEST(Segment, AForkedChildDoesNotKeepItsDeadParentsSlotAlive) {
  // The child inherits the descriptor (and would share the parent's OFD locks): it must drop it,
  // or a parent killed while its child lives would never be seen dead.
  const std::string name = segment_name("fork");
  shared_segment mine(name, kSegmentSize, [](shared_segment&) {});
  child_process parent({"attach", name, std::to_string(kSegmentSize), "fork-hold"});
  const std::string l = parent.line();
  const long long slot = field(l, "slot"), grandchild = field(l, "child");
  ASSERT_GE(slot, 0) << l;
  ASSERT_GT(grandchild, 0) << l;
  parent.kill();
  const auto dead = mine.dead_slots();
  EXPECT_EQ(dead, std::vector<unsigned>{unsigned(slot)}) << "the forked child kept its parent's slot alive";
  ::kill(pid_t(grandchild), SIGKILL);
}

TEST(Segment, AProcessOfAnotherSegmentSizeIsRefusedWithEinval) {
  const std::string name = segment_name("size");
  shared_segment mine(name, kSegmentSize, [](shared_segment&) {});
  child_process other({"attach", name, std::to_string(2 * kSegmentSize), "hold"});
  const std::string l = other.line();
  EXPECT_EQ(field(l, "error"), EINVAL) << l;
  EXPECT_NE(l.find("bytes where this build expects"), std::string::npos) << l;
  EXPECT_EQ(mine.processes().size(), 1u);
}

}  // namespace
