// Flags and private data: the page lock (a sleeping lock), dirty, uptodate, private. All act on
// the compound head, are volatile, and never disturb the allocator's own bits.
#include <atomic>
#include <chrono>
#include <thread>

#include "test_util.hpp"

namespace {

using namespace pmtest;
using namespace std::chrono_literals;
using pmpage::page;
using pmpage::pfn_t;

class FlagsBase : public PoolTest {
 protected:
  page* tail(page* head, std::uint64_t i) { return pmpage::pfn_to_page(pmpage::page_to_pfn(head) + i); }
};
class Flags : public Kinds<FlagsBase> {};
class FlagsPersistent : public FlagsBase {};

TEST_P(Flags, FreshAllocationHasNoFlagsAndNoPrivate) {
  for (unsigned order : {0u, 3u, 9u, 10u}) {
    page* p = pool_.alloc_pages(order);
    ASSERT_NE(p, nullptr);
    EXPECT_FALSE(pmpage::PageLocked(p)) << "order " << order;
    EXPECT_FALSE(pmpage::PageDirty(p)) << "order " << order;
    EXPECT_FALSE(pmpage::PageUptodate(p)) << "order " << order;
    EXPECT_EQ(pmpage::page_private(p), 0u) << "order " << order;
  }
}

TEST_P(Flags, TrylockIsExclusiveUntilUnlock) {
  page* p = pool_.alloc_pages(0);
  ASSERT_NE(p, nullptr);
  EXPECT_FALSE(pmpage::PageLocked(p));
  EXPECT_TRUE(pmpage::trylock_page(p));
  EXPECT_TRUE(pmpage::PageLocked(p));
  EXPECT_FALSE(pmpage::trylock_page(p));
  pmpage::unlock_page(p);
  EXPECT_FALSE(pmpage::PageLocked(p));
  pmpage::lock_page(p);  // uncontended: returns at once
  EXPECT_TRUE(pmpage::PageLocked(p));
  pmpage::unlock_page(p);
  EXPECT_TRUE(pmpage::trylock_page(p));
  pmpage::unlock_page(p);
}

TEST_P(Flags, LockOnATailLocksTheHead) {
  for (unsigned order : {2u, 9u, 11u}) {
    page* head = pool_.alloc_pages(order);
    ASSERT_NE(head, nullptr);
    page* t = tail(head, (std::uint64_t{1} << order) - 1);
    pmpage::lock_page(t);
    EXPECT_TRUE(pmpage::PageLocked(head)) << "order " << order;
    EXPECT_FALSE(pmpage::trylock_page(head)) << "order " << order;
    EXPECT_FALSE(pmpage::trylock_page(tail(head, 1))) << "order " << order;
    pmpage::unlock_page(head);
    EXPECT_FALSE(pmpage::PageLocked(t)) << "order " << order;
  }
}

TEST_P(Flags, LocksOfNeighbouringPagesAreIndependent) {
  page* a = pool_.alloc_pages(0);
  page* b = pool_.alloc_pages(0);
  page* c = pool_.alloc_pages(1);
  ASSERT_TRUE(a && b && c);
  ASSERT_TRUE(pmpage::trylock_page(a));
  EXPECT_TRUE(pmpage::trylock_page(b));
  EXPECT_TRUE(pmpage::trylock_page(c));
  pmpage::unlock_page(b);
  EXPECT_TRUE(pmpage::PageLocked(a));
  EXPECT_TRUE(pmpage::PageLocked(c));
  pmpage::unlock_page(a);
  pmpage::unlock_page(c);
}

TEST_P(Flags, LockPageSleepsUntilTheHolderUnlocks) {
  for (unsigned order : {0u, 9u}) {
    page* p = pool_.alloc_pages(order);
    ASSERT_NE(p, nullptr);
    pmpage::lock_page(p);
    std::atomic<bool> acquired{false};
    std::thread waiter([&] {
      pmpage::lock_page(p);
      acquired.store(true);
      pmpage::unlock_page(p);
    });
    std::this_thread::sleep_for(150ms);
    EXPECT_FALSE(acquired.load()) << "lock_page returned while another thread held the lock";
    pmpage::unlock_page(p);
    waiter.join();  // hangs (and the test times out) if the wake-up is lost
    EXPECT_TRUE(acquired.load());
    EXPECT_FALSE(pmpage::PageLocked(p));
  }
}

TEST_P(Flags, LockPageWakesEveryWaiter) {
  page* p = pool_.alloc_pages(0);
  ASSERT_NE(p, nullptr);
  pmpage::lock_page(p);
  std::atomic<int> done{0};
  std::vector<std::thread> waiters;
  for (int i = 0; i < 3; ++i)
    waiters.emplace_back([&] {
      pmpage::lock_page(p);
      done.fetch_add(1);
      pmpage::unlock_page(p);
    });
  std::this_thread::sleep_for(100ms);
  EXPECT_EQ(done.load(), 0);
  pmpage::unlock_page(p);
  for (auto& t : waiters) t.join();
  EXPECT_EQ(done.load(), 3);
  EXPECT_FALSE(pmpage::PageLocked(p));
}

TEST_P(Flags, LockPageGivesMutualExclusion) {
  page* p = pool_.alloc_pages(3);
  ASSERT_NE(p, nullptr);
  long counter = 0;  // deliberately not atomic: only the page lock protects it
  constexpr int kThreads = 3, kIters = 20000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([&, t] {
      page* mine = tail(p, static_cast<std::uint64_t>(t));  // each thread locks via another page
      for (int i = 0; i < kIters; ++i) {
        pmpage::lock_page(mine);
        const long v = counter;
        if ((i & 255) == 0) std::this_thread::yield();  // widen the window
        counter = v + 1;
        pmpage::unlock_page(mine);
      }
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ(counter, long{kThreads} * kIters);
  EXPECT_FALSE(pmpage::PageLocked(p));
}

TEST_P(Flags, DirtyCanBeSetTestedAndCleared) {
  page* p = pool_.alloc_pages(0);
  ASSERT_NE(p, nullptr);
  EXPECT_FALSE(pmpage::PageDirty(p));
  EXPECT_FALSE(pmpage::TestClearPageDirty(p));
  pmpage::SetPageDirty(p);
  EXPECT_TRUE(pmpage::PageDirty(p));
  EXPECT_TRUE(pmpage::TestClearPageDirty(p));
  EXPECT_FALSE(pmpage::PageDirty(p));
  EXPECT_FALSE(pmpage::TestClearPageDirty(p));
  pmpage::SetPageDirty(p);
  pmpage::ClearPageDirty(p);
  EXPECT_FALSE(pmpage::PageDirty(p));
}

TEST_P(Flags, TestSetPageDirtyReturnsTheOldBit) {
  page* p = pool_.alloc_pages(0);
  ASSERT_NE(p, nullptr);
  EXPECT_FALSE(pmpage::TestSetPageDirty(p));
  EXPECT_TRUE(pmpage::PageDirty(p));
  EXPECT_TRUE(pmpage::TestSetPageDirty(p));
  EXPECT_TRUE(pmpage::PageDirty(p));
  EXPECT_TRUE(pmpage::TestClearPageDirty(p));
  EXPECT_FALSE(pmpage::TestSetPageDirty(p));
}

TEST_P(Flags, TestSetPageDirtyOnATailActsOnTheHead) {
  for (unsigned order : {1u, 9u, 10u}) {
    SCOPED_TRACE("order " + std::to_string(order));
    page* head = pool_.alloc_pages(order);
    ASSERT_NE(head, nullptr);
    EXPECT_FALSE(pmpage::TestSetPageDirty(tail(head, (std::uint64_t{1} << order) - 1)));
    EXPECT_TRUE(pmpage::PageDirty(head));
    EXPECT_TRUE(pmpage::TestSetPageDirty(head));
    EXPECT_TRUE(pmpage::TestSetPageDirty(tail(head, 1)));
  }
}

TEST_P(Flags, TestSetPageDirtyRaceHasExactlyOneWinner) {
  // The dirty-list rule: of threads dirtying one page at once, exactly one sees it clean and
  // queues it. Two threads, many rounds, each on a fresh clear bit (a tail for one of them).
  page* p = pool_.alloc_pages(1);
  ASSERT_NE(p, nullptr);
  constexpr int kRounds = 20000;
  std::atomic<int> round{0}, arrived{0}, winners{0};
  std::atomic<bool> bad{false};
  auto body = [&](page* which) {
    for (int r = 0; r < kRounds; ++r) {
      while (round.load(std::memory_order_acquire) != r) std::this_thread::yield();
      if (!pmpage::TestSetPageDirty(which)) winners.fetch_add(1, std::memory_order_relaxed);
      if (arrived.fetch_add(1, std::memory_order_acq_rel) % 2 == 1) {  // the second of the round
        if (winners.exchange(0, std::memory_order_relaxed) != 1) bad.store(true);
        pmpage::ClearPageDirty(p);
        round.store(r + 1, std::memory_order_release);
      }
    }
  };
  std::thread a(body, p), b(body, tail(p, 1));
  a.join();
  b.join();
  EXPECT_FALSE(bad.load()) << "a round had zero or two threads see the dirty bit clear";
  EXPECT_EQ(round.load(), kRounds);
}

TEST_P(Flags, UptodateCanBeSetAndCleared) {
  page* p = pool_.alloc_pages(0);
  ASSERT_NE(p, nullptr);
  EXPECT_FALSE(pmpage::PageUptodate(p));
  pmpage::SetPageUptodate(p);
  EXPECT_TRUE(pmpage::PageUptodate(p));
  pmpage::ClearPageUptodate(p);
  EXPECT_FALSE(pmpage::PageUptodate(p));
}

TEST_P(Flags, PrivateIsStoredAndRead) {
  page* p = pool_.alloc_pages(0);
  ASSERT_NE(p, nullptr);
  pmpage::set_page_private(p, 0xdeadbeefcafeULL);
  EXPECT_EQ(pmpage::page_private(p), 0xdeadbeefcafeULL);
  pmpage::set_page_private(p, 0);
  EXPECT_EQ(pmpage::page_private(p), 0u);
}

TEST_P(Flags, FlagsAndPrivateOnATailActOnTheHead) {
  for (unsigned order : {1u, 9u, 10u}) {
    SCOPED_TRACE("order " + std::to_string(order));
    page* head = pool_.alloc_pages(order);
    ASSERT_NE(head, nullptr);
    page* t = tail(head, (std::uint64_t{1} << order) - 1);
    pmpage::SetPageDirty(t);
    pmpage::SetPageUptodate(t);
    pmpage::set_page_private(t, 42 + order);
    EXPECT_TRUE(pmpage::PageDirty(head));
    EXPECT_TRUE(pmpage::PageUptodate(head));
    EXPECT_EQ(pmpage::page_private(head), 42u + order);
    EXPECT_TRUE(pmpage::PageDirty(tail(head, 1)));
    EXPECT_TRUE(pmpage::TestClearPageDirty(head));
    EXPECT_FALSE(pmpage::PageDirty(t));
  }
}

TEST_P(Flags, FlagsOfNeighbouringPagesAreIndependent) {
  page* a = pool_.alloc_pages(0);
  page* b = pool_.alloc_pages(0);
  ASSERT_TRUE(a && b);
  pmpage::SetPageDirty(a);
  pmpage::set_page_private(a, 7);
  EXPECT_FALSE(pmpage::PageDirty(b));
  EXPECT_EQ(pmpage::page_private(b), 0u);
}

TEST_P(Flags, FlagsDoNotDisturbTheAllocator) {
  page* small = pool_.alloc_pages(2);
  page* huge = pool_.alloc_pages(9);
  ASSERT_TRUE(small && huge);
  for (page* p : {small, huge}) {
    ASSERT_TRUE(pmpage::trylock_page(p));
    pmpage::SetPageDirty(p);
    pmpage::SetPageUptodate(p);
    pmpage::set_page_private(p, ~std::uintptr_t{0});
  }
  EXPECT_EQ(pmpage::compound_order(small), 2u);
  EXPECT_EQ(pmpage::compound_order(huge), 9u);
  EXPECT_TRUE(pmpage::PageHead(huge));
  EXPECT_TRUE(pmpage::PageSplit(small));
  EXPECT_FALSE(pmpage::PageSplit(huge));
  EXPECT_EQ(pool_.check(), "");
  for (page* p : {small, huge}) {
    pmpage::ClearPageDirty(p);
    pmpage::ClearPageUptodate(p);
    pmpage::unlock_page(p);
  }
  EXPECT_EQ(pmpage::compound_order(huge), 9u);
  EXPECT_TRUE(pmpage::PageHead(huge));
  EXPECT_EQ(pool_.check(), "");
}

TEST_P(Flags, AReusedPageStartsClean) {
  // Fill the pool with whole regions so the freed one is the only place the next one can go.
  std::vector<page*> huge;
  while (page* p = pool_.alloc_pages(9)) huge.push_back(p);
  page* victim = huge[1];
  pmpage::SetPageDirty(victim);
  pmpage::SetPageUptodate(victim);
  pmpage::set_page_private(victim, 99);
  pmpage::put_page(victim);
  page* again = pool_.alloc_pages(9);
  ASSERT_EQ(again, victim);
  EXPECT_FALSE(pmpage::PageDirty(again));
  EXPECT_FALSE(pmpage::PageUptodate(again));
  EXPECT_FALSE(pmpage::PageLocked(again));
  EXPECT_EQ(pmpage::page_private(again), 0u);
}

TEST_F(FlagsPersistent, FlagsAreClearedByReopen) {
  page* p = pool_.alloc_pages(0);
  ASSERT_NE(p, nullptr);
  const pfn_t pfn = pmpage::page_to_pfn(p);
  ASSERT_TRUE(pmpage::trylock_page(p));
  pmpage::SetPageDirty(p);
  pmpage::SetPageUptodate(p);
  pmpage::set_page_private(p, 5);
  reopen();
  p = pmpage::pfn_to_page(pfn);
  EXPECT_FALSE(pmpage::PageLocked(p));
  EXPECT_FALSE(pmpage::PageDirty(p));
  EXPECT_FALSE(pmpage::PageUptodate(p));
  EXPECT_EQ(pmpage::page_private(p), 0u);
  EXPECT_TRUE(pmpage::trylock_page(p));
  pmpage::unlock_page(p);
}

INSTANTIATE_TEST_SUITE_P(, Flags, kKinds, kind_name);

}  // namespace

TEST_P(Flags, SplitRefusesALockedHugePageAndWakesWaitersOntoTheirSubpages) {
  // A lock must never move under the thread holding it, so split_huge_page refuses a locked page
  // (-EBUSY). Once it is unlocked the split goes ahead; every subpage starts unlocked.
  pmpage::page* huge = pool_.alloc_pages(9);
  ASSERT_NE(huge, nullptr);
  pmpage::page* sub = pmpage::pfn_to_page(pmpage::page_to_pfn(huge) + 300);
  pmpage::lock_page(sub);  // locks the compound page through a tail
  EXPECT_EQ(pmpage::split_huge_page(huge), -EBUSY);
  EXPECT_FALSE(pmpage::PageSplit(huge));
  EXPECT_EQ(pmpage::page_count(huge), 1);
  std::atomic<bool> acquired{false};
  std::thread waiter([&] {
    pmpage::lock_page(huge);  // sleeps: the page is locked
    acquired = true;
    pmpage::unlock_page(huge);
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_FALSE(acquired.load());
  pmpage::unlock_page(sub);  // through the same tail: the lock it took
  waiter.join();
  EXPECT_TRUE(acquired.load());
  ASSERT_EQ(pmpage::split_huge_page(huge), 0);
  EXPECT_FALSE(pmpage::PageLocked(huge));
  EXPECT_FALSE(pmpage::PageLocked(sub));
  EXPECT_TRUE(pmpage::trylock_page(sub));  // each subpage has its own lock now
  EXPECT_TRUE(pmpage::trylock_page(huge));
  pmpage::unlock_page(sub);
  pmpage::unlock_page(huge);
  EXPECT_EQ(pool_.check(), "");
}
