// Ownership: a page published with alloc_pages_to is owned by its slot. Every case of issue #7
// that once leaked a page, left a slot naming a free page or gave one page to two owners is here,
// each as the sequence of public calls that did it, with the rule that now stops it:
//   1 alloc_pages_to into a slot that is not empty          -> refused
//   2 an unbalanced put_page on a slot-owned page            -> refused, the slot's reference stays
//   3 split_huge_page of a slot-owned page                   -> -EBUSY; split_huge_page_to instead
//   4 fork() after open                                      -> the child cannot allocate or free
//   6 2^31 get_page calls                                    -> the count saturates at PAGE_REF_MAX
//   7 lock_page racing split_huge_page                       -> the split refuses locked pages
//   9 free_pages_from of an empty slot                       -> no-op (kfree(NULL))
// plus move_pages_owner, adopt_pages (a repair tool's restoration of a dropped owner record),
// check_slots, check()'s owner and lane rules, and GFP_ZERO. (Case 5 is in
// tests/reliability, case 8 in test_limits.cpp.)
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <stdexcept>
#include <barrier>
#include <cerrno>
#include <cstring>
#include <random>
#include <thread>
#include <vector>

#include "pool_image.hpp"
#include "test_util.hpp"

namespace {

using namespace pmtest;
using pmpage::HPAGE_PMD_NR;
using pmpage::page;
using pmpage::pfn_t;

class OwnershipBase : public PoolTest {
 protected:
  pfn_t* slots() { return root_slots(pool_); }
  // Runs f and expects exactly one new misuse report.
  template <class F>
  void expect_reported(F&& f, const char* what, const char* needle = nullptr) {
    const int before = recorder_.count();
    f();
    EXPECT_EQ(recorder_.count(), before + 1) << what << ": expected one misuse report";
    if (needle && recorder_.count() > before) {
      EXPECT_NE(recorder_.last().find(needle), std::string::npos) << what << ": message was: " << recorder_.last();
    }
  }
  // The pool's own rules hold, and the engine's slots (root slots 0..n) account for every page.
  void expect_consistent(std::size_t nslots) {
    EXPECT_EQ(pool_.check(), "");
    std::vector<pfn_t*> list;
    for (std::size_t i = 0; i < nslots; ++i) list.push_back(&slots()[i]);
    const auto r = pool_.check_slots(list);
    EXPECT_TRUE(r.clean()) << r.describe();
  }
  misuse_recorder recorder_;
};
class Ownership : public Kinds<OwnershipBase> {};
class OwnershipPersistent : public OwnershipBase {};

// ---- case 1 ------------------------------------------------------------------------------------

TEST_P(Ownership, AllocPagesToIntoAFullSlotIsRefusedAndLeaksNothing) {
  page* a = pool_.alloc_pages_to(0, &slots()[0]);
  ASSERT_NE(a, nullptr);
  const pfn_t first = slots()[0];
  const std::uint64_t free_before = free_pages();
  page* b = nullptr;
  expect_reported([&] { b = pool_.alloc_pages_to(0, &slots()[0]); }, "alloc_pages_to into a full slot", "already holds");
  EXPECT_EQ(b, nullptr);
  EXPECT_EQ(slots()[0], first);
  EXPECT_EQ(free_pages(), free_before);
  expect_consistent(1);
  reopen_if_persistent();
  EXPECT_EQ(allocations(pool_).by_pfn.size(), 1u);
  expect_consistent(1);
}

TEST_P(Ownership, ConcurrentAllocPagesToForOneSlotLeavesOneOwner) {
  // Many threads race for the same empty slots: each slot ends with exactly one page, the losers'
  // pages go back, and every loser is told (misuse).
  constexpr int kThreads = 4, kRounds = 200;
  for (int round = 0; round < kRounds; ++round) {
    std::barrier sync(kThreads);
    std::atomic<int> won{0};
    std::vector<std::thread> ts;
    for (int t = 0; t < kThreads; ++t)
      ts.emplace_back([&] {
        sync.arrive_and_wait();
        if (pool_.alloc_pages_to(0, &slots()[round % 8])) won.fetch_add(1);
      });
    for (auto& t : ts) t.join();
    ASSERT_EQ(won.load(), 1) << "round " << round;
    ASSERT_EQ(pool_.free_pages_from(&slots()[round % 8]), 0);
  }
  EXPECT_EQ(recorder_.count(), kRounds * (kThreads - 1));
  EXPECT_EQ(free_pages(), total_pages_);
  expect_consistent(8);
}

// ---- case 2 ------------------------------------------------------------------------------------

TEST_P(Ownership, AnUnbalancedPutCannotFreeASlotOwnedPage) {
  for (unsigned order : {0u, 3u, 9u, 10u}) {
    SCOPED_TRACE("order " + std::to_string(order));
    page* p = pool_.alloc_pages_to(order, &slots()[0]);
    ASSERT_NE(p, nullptr);
    const pfn_t pfn = slots()[0];
    pmpage::get_page(p);
    pmpage::put_page(p);
    expect_reported([&] { pmpage::put_page(p); }, "the slot's reference dropped by put_page", "owns");
    EXPECT_EQ(pmpage::page_count(p), 1);
    expect_reported([&] { pmpage::free_pages(p, order); }, "the slot's reference dropped by free_pages", "owns");
    EXPECT_EQ(pmpage::page_count(p), 1);
    // The page stays allocated: a second slot gets a different page, and freeing A leaves B intact.
    page* q = pool_.alloc_pages_to(order, &slots()[1]);
    ASSERT_NE(q, nullptr);
    EXPECT_NE(slots()[1], pfn);
    expect_consistent(2);
    // Ownership is on the media: it survives reopen (split regions are loaded lazily).
    reopen_if_persistent();
    p = pmpage::pfn_to_page(pfn);
    expect_reported([&] { pmpage::put_page(p); }, "put_page after reopen", "owns");
    EXPECT_EQ(pmpage::page_count(p), 1);
    EXPECT_EQ(pool_.free_pages_from(&slots()[0]), 0);
    EXPECT_EQ(slots()[0], 0u);
    expect_consistent(2);
    EXPECT_EQ(pool_.free_pages_from(&slots()[1]), 0);
    EXPECT_EQ(free_pages(), total_pages_);
  }
}

TEST_P(Ownership, FreePagesFromThroughACopiedPfnIsRefused) {
  ASSERT_NE(pool_.alloc_pages_to(0, &slots()[0]), nullptr);
  slots()[1] = slots()[0];  // the engine copies the pfn by hand
  int rc = 0;
  expect_reported([&] { rc = pool_.free_pages_from(&slots()[1]); }, "free through a copy", "owns that page");
  EXPECT_EQ(rc, -EINVAL);
  EXPECT_EQ(slots()[0], slots()[1]);
  slots()[1] = 0;
  page* plain = pool_.alloc_pages(0);  // not slot-owned
  slots()[2] = pmpage::page_to_pfn(plain);
  expect_reported([&] { rc = pool_.free_pages_from(&slots()[2]); }, "free_pages_from of an unowned page", "no slot owns");
  EXPECT_EQ(rc, -EINVAL);
  slots()[2] = 0;
  pmpage::put_page(plain);
  expect_consistent(3);
}

TEST_P(Ownership, MovePagesOwnerRelocatesAReference) {
  ASSERT_NE(pool_.alloc_pages_to(9, &slots()[0]), nullptr);
  const pfn_t pfn = slots()[0];
  ASSERT_EQ(pool_.move_pages_owner(&slots()[0], &slots()[5]), 0);
  EXPECT_EQ(slots()[0], 0u);
  EXPECT_EQ(slots()[5], pfn);
  expect_consistent(6);
  reopen_if_persistent();
  expect_consistent(6);
  int rc = 0;
  ASSERT_NE(pool_.alloc_pages_to(0, &slots()[1]), nullptr);
  expect_reported([&] { rc = pool_.move_pages_owner(&slots()[5], &slots()[1]); }, "move onto a full slot", "already holds");
  EXPECT_EQ(rc, -EINVAL);
  slots()[2] = pfn;
  expect_reported([&] { rc = pool_.move_pages_owner(&slots()[2], &slots()[3]); }, "move from a non-owner", "does not own");
  slots()[2] = 0;
  EXPECT_EQ(pool_.free_pages_from(&slots()[5]), 0);
  EXPECT_EQ(pool_.free_pages_from(&slots()[1]), 0);
  EXPECT_EQ(free_pages(), total_pages_);
  expect_consistent(6);
}

TEST_P(Ownership, SlotsMustLieInMemorySomebodyOwns) {
  // A slot in a free data page could be handed out and overwritten with the page: refused. A slot
  // inside an allocated page (an engine's table page) is fine, even inside the page it owns.
  page* table_page = pool_.alloc_pages(0, pmpage::GFP_ZERO);
  ASSERT_NE(table_page, nullptr);
  auto* table = static_cast<pfn_t*>(pmpage::page_address(table_page));
  ASSERT_NE(pool_.alloc_pages_to(0, &table[0]), nullptr);
  page* freed = pool_.alloc_pages(0);
  auto* in_free = static_cast<pfn_t*>(pmpage::page_address(freed));
  pmpage::put_page(freed);
  page* p = nullptr;
  int rc = 0;
  expect_reported([&] { p = pool_.alloc_pages_to(0, in_free); }, "slot in a free page", "free page");
  EXPECT_EQ(p, nullptr);
  expect_reported([&] { rc = pool_.move_pages_owner(&table[0], in_free); }, "move into a free page", "free page");
  EXPECT_EQ(rc, -EINVAL);
  expect_reported([&] { rc = pool_.free_pages_from(in_free); }, "free through a free page", "free page");
  EXPECT_EQ(rc, -EINVAL);
  // A table page that holds the slot owning the table page itself: freeing it clears the slot
  // before the page is free (nothing is written into a page that is no longer ours).
  ASSERT_EQ(pool_.move_pages_owner(&table[0], &slots()[0]), 0);
  pmpage::put_page(table_page);  // an unowned table page; the slot it held was moved out first
  page* self = pool_.alloc_pages_to(0, &slots()[1], pmpage::GFP_ZERO);
  ASSERT_NE(self, nullptr);
  auto* inside = static_cast<pfn_t*>(pmpage::page_address(self));
  ASSERT_EQ(pool_.move_pages_owner(&slots()[1], &inside[5]), 0);  // the page owns itself
  EXPECT_EQ(inside[5], pmpage::page_to_pfn(self));
  EXPECT_EQ(pool_.check(), "");
  std::vector<pfn_t*> list{&slots()[0], &slots()[1], &inside[5]};
  EXPECT_TRUE(pool_.check_slots(list).clean()) << pool_.check_slots(list).describe();
  ASSERT_EQ(pool_.free_pages_from(&inside[5]), 0);
  ASSERT_EQ(pool_.free_pages_from(&slots()[0]), 0);
  EXPECT_EQ(free_pages(), total_pages_);
  EXPECT_EQ(pool_.check(), "");
}

TEST_P(Ownership, ConcurrentMovesOfOneSlotLeaveOneOwner) {
  // Two threads move the same slot's page to two different slots: one wins, the other is told.
  constexpr int kRounds = 300;
  int won_total = 0;
  for (int round = 0; round < kRounds; ++round) {
    ASSERT_NE(pool_.alloc_pages_to(round % 2 ? 9 : 0, &slots()[0]), nullptr);
    std::barrier sync(2);
    std::atomic<int> won{0};
    auto mover = [&](unsigned to) {
      sync.arrive_and_wait();
      if (pool_.move_pages_owner(&slots()[0], &slots()[to]) == 0) won.fetch_add(1);
    };
    std::thread a(mover, 1), b(mover, 2);
    a.join();
    b.join();
    ASSERT_EQ(won.load(), 1) << "round " << round;
    won_total += won.load();
    expect_consistent(3);
    ASSERT_EQ(pool_.free_pages_from(&slots()[1]), 0);
    ASSERT_EQ(pool_.free_pages_from(&slots()[2]), 0);
  }
  EXPECT_EQ(recorder_.count(), kRounds);
  EXPECT_EQ(free_pages(), total_pages_);
}

// What the next open makes of an owned page whose slot does not name it (the slot protocol's
// rule, docs/format.md): a slot call the crash interrupted, or a slot the engine overwrote by
// hand, look the same, and the page is freed. Only a damaged owner entry (its check fails) drops
// the record and keeps the page, counted in stats().orphaned_owners.
constexpr pfn_t kForeignValue = 0x5eed0000beefull;  // no pfn of any pool

// Flips one bit of page `pfn`'s owner entry in the closed pool file at `path` (damage).
void damage_owner_entry(const std::filesystem::path& path, pfn_t pfn) {
  const auto sb = pmtest::image::read_sb(path);
  const std::uint64_t index = pfn - pmpage::detail::superblock_pfn_base(sb);
  pmtest::image::flip_bit(path, sb.owner_table_offset + 8 * index, 3);
}

TEST_F(OwnershipPersistent, ASlotOverwrittenByHandLosesItsPageAtReopen) {
  // Zeroed or overwritten with another value: after reopen the page is free (no leak, and no
  // slot names a free page). While the pool stays open the page stays allocated and check()
  // names the slot.
  for (const pfn_t written : {pfn_t{0}, kForeignValue}) {
    for (unsigned order : {0u, 3u, 9u, 10u}) {
      SCOPED_TRACE("order " + std::to_string(order) + (written ? ", overwritten" : ", zeroed"));
      ASSERT_NE(pool_.alloc_pages_to(order, &slots()[0]), nullptr);
      slots()[0] = written;
      pool_.persist(&slots()[0], sizeof(pfn_t));
      EXPECT_NE(pool_.check().find("O1"), std::string::npos);
      reopen();
      EXPECT_EQ(pool_.check(), "");
      EXPECT_EQ(pool_.stats().orphaned_owners, 0u);
      EXPECT_EQ(free_pages(), total_pages_) << "the page was freed by recovery";
      bool noted = false;
      for (const std::string& line : pool_.recovery_log()) noted = noted || line.find("interrupted slot call") != std::string::npos;
      EXPECT_TRUE(noted) << "recovery_log names the repair";
      slots()[0] = 0;
    }
  }
}

TEST_F(OwnershipPersistent, ADamagedOwnerRecordIsDroppedAndCountedAfterReopen) {
  // Damage to the entry itself (a flipped bit fails its check): the record is dropped when the
  // region loads (a large page's at open), the page stays allocated, unowned, counted in
  // stats().orphaned_owners, and check_slots lists the slot's page as named but not owned.
  for (unsigned order : {0u, 9u}) {
    SCOPED_TRACE("order " + std::to_string(order));
    ASSERT_NE(pool_.alloc_pages_to(order, &slots()[0]), nullptr);
    const pfn_t kept = slots()[0];
    pool_.close();
    damage_owner_entry(path_, kept);
    pool_ = pmpage::pool::open(path_);
    EXPECT_EQ(pool_.check(), "");  // loads every region: the record is dropped now
    EXPECT_EQ(pool_.stats().orphaned_owners, 1u);
    std::vector<pfn_t*> list{&slots()[0]};
    const auto r = pool_.check_slots(list);
    ASSERT_EQ(r.misowned.size(), 1u) << r.describe();
    EXPECT_EQ(r.misowned[0].pfn, kept);
    slots()[0] = 0;
    pmpage::free_pages(pmpage::pfn_to_page(kept), order);  // unowned now: the engine can reclaim it
    EXPECT_EQ(free_pages(), total_pages_);
    reopen();
    EXPECT_EQ(pool_.stats().orphaned_owners, 0u);
  }
}

TEST_P(Ownership, CheckSeesAFreedPageThatStillHeldAnOwningSlot) {
  // The kernel's rule for page-table pages holds here too: a page holding slots that own pages
  // must not be freed before those slots are emptied. check() names the violation at once.
  ASSERT_NE(pool_.alloc_pages_to(0, &slots()[0], pmpage::GFP_ZERO), nullptr);
  auto* table = static_cast<pfn_t*>(pmpage::page_address(pmpage::pfn_to_page(slots()[0])));
  ASSERT_NE(pool_.alloc_pages_to(0, &table[3]), nullptr);
  ASSERT_EQ(pool_.free_pages_from(&slots()[0]), 0);  // the table page, with table[3] still owning
  const std::string why = pool_.check();
  EXPECT_NE(why.find("which is free"), std::string::npos) << why;
}

TEST_P(Ownership, APageWhoseOwningSlotIsVoidIsFreedByItsLastPut) {
  // The slot that owns a page can be lost without free_pages_from: overwritten by hand, or left in
  // a page the engine freed. Nothing could free the page through it; a persistent pool drops such
  // owners at its next open, and a volatile pool has no next open. So the last put of the page
  // drops the void owner and frees it, on both kinds, with no misuse report; while the slot still
  // names the page, the same put is refused (AnUnbalancedPutCannotFreeASlotOwnedPage).
  for (unsigned order : {0u, 3u, 9u, 10u}) {
    SCOPED_TRACE("overwritten slot, order " + std::to_string(order));
    ASSERT_NE(pool_.alloc_pages_to(order, &slots()[0]), nullptr);
    const pfn_t lost = slots()[0];
    slots()[0] = 0;  // the engine forgets the page
    const std::uint64_t before = pool_.stats().orphaned_owners;
    pmpage::free_pages(pmpage::pfn_to_page(lost), order);
    EXPECT_EQ(recorder_.count(), 0) << recorder_.last();
    EXPECT_EQ(pool_.stats().orphaned_owners, before + 1);
    EXPECT_EQ(free_pages(), total_pages_) << "the page was freed";
    EXPECT_EQ(pool_.check(), "");
  }
  {
    SCOPED_TRACE("a slot in a freed table page");
    ASSERT_NE(pool_.alloc_pages_to(0, &slots()[0], pmpage::GFP_ZERO), nullptr);
    auto* table = static_cast<pfn_t*>(pmpage::page_address(pmpage::pfn_to_page(slots()[0])));
    page* owned = pool_.alloc_pages_to(0, &table[3]);
    ASSERT_NE(owned, nullptr);
    ASSERT_EQ(pool_.free_pages_from(&slots()[0]), 0);  // the table page, with table[3] still owning
    EXPECT_EQ(pool_.free_pages_from(&table[3]), -EINVAL) << "a slot in free memory frees nothing";
    EXPECT_EQ(recorder_.count(), 1);
    pmpage::get_page(owned);  // a reader's reference: the put below is not the last
    pmpage::put_page(owned);
    EXPECT_NE(free_pages(), total_pages_);
    pmpage::put_page(owned);  // the last one: the void owner is dropped, the page freed
    EXPECT_EQ(recorder_.count(), 1) << recorder_.last();
    EXPECT_EQ(free_pages(), total_pages_);
    EXPECT_EQ(pool_.check(), "");
  }
  {
    SCOPED_TRACE("the slot still names the page");
    ASSERT_NE(pool_.alloc_pages_to(0, &slots()[1]), nullptr);
    expect_reported([&] { pmpage::put_page(pmpage::pfn_to_page(slots()[1])); }, "put of a live slot's page", "owns");
    EXPECT_EQ(pool_.free_pages_from(&slots()[1]), 0);
  }
  bool found = false;
  for (const std::string& line : pool_.recovery_log()) found |= line.find("dropped at its last put") != std::string::npos;
  EXPECT_TRUE(found) << "the drop is logged";
  if (reopen_if_persistent()) {
    EXPECT_EQ(pool_.check(), "");
    EXPECT_EQ(free_pages(), total_pages_);
  }
}

// ---- case 3 ------------------------------------------------------------------------------------

class OwnershipBigRoot : public Kinds<OwnershipBase> {
 protected:
  void SetUp() override {
    path_ = new_path();
    // root_size 16384: 2048 slots, room for a 512-slot array after a few single slots
    pool_ = make_pool(64 * MiB, nullptr, 16384);
    total_pages_ = pool_.stats().total_pages;
    start_ = pool_.start_pfn();
  }
};

TEST_P(OwnershipBigRoot, SplittingASlotOwnedHugePageNeedsASlotForEveryPiece) {
  pfn_t* table = slots() + 512;  // the engine's 512-entry table; table[0] owns the huge page
  page* huge = pool_.alloc_pages_to(9, &table[0]);
  ASSERT_NE(huge, nullptr);
  const pfn_t pfn = table[0];
  EXPECT_EQ(pmpage::split_huge_page(huge), -EBUSY) << "511 pieces would have no owner";
  EXPECT_FALSE(pmpage::PageSplit(huge));
  int rc = 0;
  table[7] = 12345;
  expect_reported([&] { rc = pmpage::split_huge_page_to(huge, table); }, "a full slot among 1..511", "must be empty");
  EXPECT_EQ(rc, -EINVAL);
  table[7] = 0;
  expect_reported([&] { rc = pmpage::split_huge_page_to(huge, slots()); }, "slots[0] not the owner", "owns");
  expect_reported([&] { rc = pmpage::split_huge_page_to(huge, slots() + 2047); }, "array past the root area", "512");
  EXPECT_EQ(pool_.check(), "");

  ASSERT_EQ(pmpage::split_huge_page_to(huge, table), 0);
  EXPECT_TRUE(pmpage::PageSplit(huge));
  for (unsigned i = 0; i < HPAGE_PMD_NR; ++i) ASSERT_EQ(table[i], pfn + i) << i;
  std::vector<pfn_t*> list;
  for (unsigned i = 0; i < HPAGE_PMD_NR; ++i) list.push_back(&table[i]);
  EXPECT_TRUE(pool_.check_slots(list).clean()) << pool_.check_slots(list).describe();
  EXPECT_EQ(pool_.check(), "");
  // Every piece is owned: an unbalanced put is refused for each, before and after reopen.
  expect_reported([&] { pmpage::put_page(pmpage::pfn_to_page(pfn + 300)); }, "put on a piece", "owns");
  reopen_if_persistent();
  expect_reported([&] { pmpage::put_page(pmpage::pfn_to_page(pfn + 301)); }, "put on a piece after reopen", "owns");
  EXPECT_TRUE(pool_.check_slots(list).clean()) << pool_.check_slots(list).describe();
  for (unsigned i = 0; i < HPAGE_PMD_NR; ++i) ASSERT_EQ(pool_.free_pages_from(&table[i]), 0) << i;
  EXPECT_EQ(free_pages(), total_pages_);
  pool_.trim();
  EXPECT_EQ(pool_.stats().split_regions, 0u);
  EXPECT_EQ(pool_.check(), "");
}

TEST_P(OwnershipBigRoot, ConcurrentSplitHugePageToAndAllocPagesToIntoItsSlotsLeaveOneOwnerPerSlot) {
  // A split claims its 511 slots one compare-and-swap at a time; an alloc_pages_to racing into
  // one of them either wins (the split fails, undone) or loses (misuse): never both.
  pfn_t* table = slots() + 512;
  int splits = 0, allocs = 0;
  for (int round = 0; round < 60; ++round) {
    page* huge = pool_.alloc_pages_to(9, &table[0]);
    ASSERT_NE(huge, nullptr);
    const unsigned k = 1 + unsigned(round * 37) % (HPAGE_PMD_NR - 1);
    std::atomic<int> split_rc{1};
    std::atomic<bool> alloc_ok{false};
    std::barrier sync(2);
    std::thread a([&] {
      sync.arrive_and_wait();
      split_rc = pmpage::split_huge_page_to(huge, table);
    });
    std::thread b([&] {
      sync.arrive_and_wait();
      alloc_ok = pool_.alloc_pages_to(0, &table[k]) != nullptr;
    });
    a.join();
    b.join();
    ASSERT_NE(split_rc.load() == 0, alloc_ok.load()) << "round " << round << ": exactly one must win";
    splits += split_rc.load() == 0;
    allocs += alloc_ok.load();
    std::vector<pfn_t*> list;
    for (unsigned i = 0; i < HPAGE_PMD_NR; ++i) list.push_back(&table[i]);
    const auto r = pool_.check_slots(list);
    ASSERT_TRUE(r.clean()) << "round " << round << "\n" << r.describe();
    ASSERT_EQ(pool_.check(), "");
    for (unsigned i = 0; i < HPAGE_PMD_NR; ++i) ASSERT_EQ(pool_.free_pages_from(&table[i]), 0);
  }
  EXPECT_EQ(recorder_.count(), 60);
  EXPECT_EQ(free_pages(), total_pages_);
  RecordProperty("splits", splits);
  RecordProperty("allocs", allocs);
}

TEST_P(OwnershipBigRoot, ConcurrentSplitHugePageToRacingAFreeAndReallocationNeverSplitsAnotherSlotsPage) {
  // Thread A splits table's page; thread B frees it through table[0] and allocates an order-9
  // page into another slot (often the same extent). The split checks the owner only once the
  // page is frozen, so it either splits the page table[0] owns or refuses: never X's page.
  pfn_t* table = slots() + 512;
  pfn_t* x = &slots()[3];
  for (int round = 0; round < 200; ++round) {
    page* huge = pool_.alloc_pages_to(9, &table[0]);
    ASSERT_NE(huge, nullptr);
    std::barrier sync(2);
    std::atomic<int> split_rc{1}, free_rc{1};
    std::thread a([&] {
      sync.arrive_and_wait();
      split_rc = pmpage::split_huge_page_to(huge, table);
    });
    std::thread b([&] {
      sync.arrive_and_wait();
      free_rc = pool_.free_pages_from(&table[0]);
      if (free_rc == 0) pool_.alloc_pages_to(9, x);
    });
    a.join();
    b.join();
    std::vector<pfn_t*> list{x};
    for (unsigned i = 0; i < HPAGE_PMD_NR; ++i) list.push_back(&table[i]);
    const auto r = pool_.check_slots(list);
    ASSERT_TRUE(r.clean()) << "round " << round << " split " << split_rc << " free " << free_rc << "\n" << r.describe();
    ASSERT_EQ(pool_.check(), "") << "round " << round;
    for (pfn_t* s : list) ASSERT_EQ(pool_.free_pages_from(s), 0);
  }
  EXPECT_EQ(free_pages(), total_pages_);
}

// ---- case 4 ------------------------------------------------------------------------------------

TEST_P(Ownership, AForkedChildCannotAllocateOrFreeAndTheParentIsUnaffected) {
  page* kept = pool_.alloc_pages_to(0, &slots()[0]);
  ASSERT_NE(kept, nullptr);
  std::memcpy(pmpage::page_address(kept), "parent", 7);
  page* plain = pool_.alloc_pages(0);
  ASSERT_NE(plain, nullptr);
  const auto before = allocations(pool_).by_pfn;
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    // Child: report misuse by counting (the recorder's mutex state is inherited; use a fresh count).
    static std::atomic<int> reports{0};
    pmpage::set_misuse_handler(+[](const char*) { reports.fetch_add(1); });
    int bad = 0;
    // Reading is allowed: the mapping is shared with the parent.
    if (std::memcmp(pmpage::page_address(pmpage::pfn_to_page(slots()[0])), "parent", 7) != 0) bad |= 1;
    if (pool_.alloc_pages(0) != nullptr) bad |= 2;
    if (pool_.alloc_pages_to(0, &slots()[1]) != nullptr) bad |= 4;
    if (pool_.free_pages_from(&slots()[0]) != -EINVAL) bad |= 8;
    pmpage::put_page(plain);  // the last reference: the child must not free it
    if (pmpage::page_count(plain) != 1) bad |= 16;
    page* out[4];
    if (pool_.alloc_pages_bulk(0, 4, out) != 0) bad |= 32;
    if (reports.load() != 5) bad |= 64;
    ::_exit(bad);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "bit mask of the child's failed expectations";
  EXPECT_EQ(allocations(pool_).by_pfn, before);
  EXPECT_EQ(slots()[0], pmpage::page_to_pfn(kept));
  EXPECT_EQ(slots()[1], 0u);
  page* more = pool_.alloc_pages(0);  // the parent still allocates
  ASSERT_NE(more, nullptr);
  pmpage::put_page(more);
  pmpage::put_page(plain);
  expect_consistent(2);
  reopen_if_persistent();
  expect_consistent(2);
}

// ---- case 6 ------------------------------------------------------------------------------------

TEST_P(Ownership, ReferenceCountsSaturateInsteadOfWrapping) {
  page* p = pool_.alloc_pages(0);
  ASSERT_NE(p, nullptr);
  // 2^30 real get_page calls take too long for a unit test: start just below the limit. The
  // descriptor of a page in a split region is real memory (PageSplit), so its count is writable.
  ASSERT_TRUE(pmpage::PageSplit(p));
  p->refcount_.store(pmpage::PAGE_REF_MAX - 1);
  pmpage::get_page(p);
  EXPECT_EQ(pmpage::page_count(p), pmpage::PAGE_REF_MAX);
  expect_reported([&] { pmpage::get_page(p); }, "get_page at the limit", "saturated");
  EXPECT_EQ(pmpage::page_count(p), pmpage::PAGE_REF_MAX);
  EXPECT_FALSE(pmpage::get_page_unless_zero(p));
  EXPECT_EQ(pmpage::page_count(p), pmpage::PAGE_REF_MAX);
  // Even a count driven to INT_MAX by hand never wraps (no signed overflow: UBSan runs this).
  p->refcount_.store(INT32_MAX);
  expect_reported([&] { pmpage::get_page(p); }, "get_page at INT_MAX", "saturated");
  EXPECT_EQ(pmpage::page_count(p), INT32_MAX);
  EXPECT_FALSE(pmpage::get_page_unless_zero(p));
  // Puts still work from a saturated count; the legitimate last put frees the page.
  p->refcount_.store(2);
  pmpage::put_page(p);
  pmpage::put_page(p);
  EXPECT_EQ(free_pages(), total_pages_);
  EXPECT_EQ(pool_.check(), "");
}

// ---- case 7 ------------------------------------------------------------------------------------

TEST_P(Ownership, ConcurrentLockersNeverLoseTheLockWhileTheOwnerSplits) {
  // Lockers lock random subpages of an order-9 page WITHOUT references while its owner splits it.
  // A lock_page that returns must hold the lock: PageLocked, and unlock_page not reported.
  constexpr int kLockers = 3;
#if defined(__SANITIZE_THREAD__)
  constexpr int kRounds = 150;
#else
  constexpr int kRounds = 1500;
#endif
  std::atomic<page*> current{nullptr};
  std::atomic<bool> stop{false};
  std::atomic<long> locked{0}, lost{0};
  std::barrier sync(kLockers + 1);
  std::vector<std::thread> lockers;
  for (int t = 0; t < kLockers; ++t)
    lockers.emplace_back([&, t] {
      std::mt19937 rng(t);
      for (;;) {
        sync.arrive_and_wait();  // round starts
        if (stop.load()) return;
        page* huge = current.load();
        const pfn_t base = pmpage::page_to_pfn(huge);
        for (int k = 0; k < 20; ++k) {
          page* p = pmpage::pfn_to_page(base + (k == 0 ? 0 : rng() % HPAGE_PMD_NR));
          pmpage::lock_page(p);
          if (!pmpage::PageLocked(p)) lost.fetch_add(1);
          locked.fetch_add(1);
          if (k % 2) std::this_thread::yield();  // hold it a while: the split must not move it
          if (!pmpage::PageLocked(p)) lost.fetch_add(1);
          pmpage::unlock_page(p);
        }
        sync.arrive_and_wait();  // round ends: the owner frees the pages
      }
    });
  for (int round = 0; round < kRounds; ++round) {
    page* huge = pool_.alloc_pages(9);
    ASSERT_NE(huge, nullptr);
    current.store(huge);
    sync.arrive_and_wait();
    int rc;
    while ((rc = pmpage::split_huge_page(huge)) == -EBUSY) std::this_thread::yield();
    ASSERT_EQ(rc, 0);
    sync.arrive_and_wait();
    const pfn_t base = pmpage::page_to_pfn(huge);
    for (unsigned i = 0; i < HPAGE_PMD_NR; ++i) pmpage::put_page(pmpage::pfn_to_page(base + i));
  }
  stop.store(true);
  sync.arrive_and_wait();
  for (auto& t : lockers) t.join();
  EXPECT_EQ(lost.load(), 0);
  EXPECT_EQ(recorder_.count(), 0) << recorder_.last();
  EXPECT_EQ(locked.load(), long(kRounds) * kLockers * 20);
  EXPECT_EQ(free_pages(), total_pages_);
  EXPECT_EQ(pool_.check(), "");
}

// ---- adopt_pages -------------------------------------------------------------------------------

TEST_P(Ownership, AdoptPagesMakesASlotTheOwnerOfAnUnownedAllocation) {
  // alloc_pages -> the slot names it -> adopt_pages -> owned exactly as alloc_pages_to's page: the
  // allocation's reference became the slot's (count 1), put_page of it is refused, free_pages_from
  // frees it, and (persistent) the ownership survives reopen.
  for (unsigned order : {0u, 3u, 9u, 10u}) {
    SCOPED_TRACE("order " + std::to_string(order));
    page* p = pool_.alloc_pages(order);
    ASSERT_NE(p, nullptr);
    const pfn_t pfn = pmpage::page_to_pfn(p);
    slots()[0] = pfn;
    pool_.persist(&slots()[0], sizeof(pfn_t));
    const int reports = recorder_.count();
    ASSERT_EQ(pool_.adopt_pages(&slots()[0]), 0);
    EXPECT_EQ(recorder_.count(), reports) << recorder_.last();
    EXPECT_EQ(pmpage::page_count(p), 1) << "the allocation's reference is the slot's";
    expect_consistent(1);
    expect_reported([&] { pmpage::put_page(p); }, "put_page of the slot's reference", "owns");
    EXPECT_EQ(pmpage::page_count(p), 1);
    if (reopen_if_persistent()) expect_consistent(1);
    ASSERT_EQ(pool_.free_pages_from(&slots()[0]), 0);
    EXPECT_EQ(slots()[0], 0u);
    EXPECT_EQ(free_pages(), total_pages_);
    expect_consistent(1);
  }
}

TEST_P(Ownership, AdoptPagesRefusesEveryMisuseAndChangesNothing) {
  pfn_t* s = slots();
  page* plain = pool_.alloc_pages(3);  // unowned, order 3
  ASSERT_NE(plain, nullptr);
  const pfn_t plain_pfn = pmpage::page_to_pfn(plain);
  ASSERT_NE(pool_.alloc_pages_to(0, &s[1]), nullptr);  // owned by slot 1
  page* gone = pool_.alloc_pages(0);
  const pfn_t gone_pfn = pmpage::page_to_pfn(gone);
  void* gone_memory = pmpage::page_address(gone);
  pmpage::put_page(gone);  // a free page
  auto nothing_changed = [&] {
    EXPECT_EQ(pmpage::page_count(plain), 1);
    std::vector<pfn_t*> list{&s[0], &s[1]};
    s[0] = plain_pfn;
    const auto r = pool_.check_slots(list);
    ASSERT_EQ(r.misowned.size(), 1u) << r.describe();  // slot 0 names the page, which no slot owns
    EXPECT_EQ(r.misowned[0].slot, &s[0]);
    EXPECT_EQ(pool_.check(), "");
  };
  pfn_t outside = plain_pfn;
  expect_reported([&] { EXPECT_EQ(pool_.adopt_pages(&outside), -EINVAL); }, "slot outside the pool", "root or data area");
  auto* misaligned = reinterpret_cast<pfn_t*>(reinterpret_cast<char*>(&s[2]) + 4);
  expect_reported([&] { EXPECT_EQ(pool_.adopt_pages(misaligned), -EINVAL); }, "misaligned slot", "aligned");
  expect_reported([&] { EXPECT_EQ(pool_.adopt_pages(static_cast<pfn_t*>(gone_memory)), -EINVAL); },
                  "slot in a free page", "free page");
  s[0] = 0;
  expect_reported([&] { EXPECT_EQ(pool_.adopt_pages(&s[0]), -EINVAL); }, "empty slot", "empty");
  s[0] = pool_.end_pfn() + 3;
  expect_reported([&] { EXPECT_EQ(pool_.adopt_pages(&s[0]), -EINVAL); }, "no page of this pool", "not a page of pool");
  s[0] = plain_pfn + 1;
  expect_reported([&] { EXPECT_EQ(pool_.adopt_pages(&s[0]), -EINVAL); }, "a tail", "tail");
  s[0] = gone_pfn;
  expect_reported([&] { EXPECT_EQ(pool_.adopt_pages(&s[0]), -EINVAL); }, "a free page", "not allocated");
  expect_reported([&] { EXPECT_EQ(pool_.adopt_pages(&s[1]), -EINVAL); }, "owned by this slot", "already");
  s[0] = s[1];
  expect_reported([&] { EXPECT_EQ(pool_.adopt_pages(&s[0]), -EINVAL); }, "owned by another slot", "owned by the slot at");
  nothing_changed();
  // Other references: -EBUSY, not misuse, nothing changed; once they are dropped it adopts.
  pmpage::get_page(plain);
  const int before = recorder_.count();
  EXPECT_EQ(pool_.adopt_pages(&s[0]), -EBUSY);
  EXPECT_EQ(recorder_.count(), before);
  pmpage::put_page(plain);
  nothing_changed();
  // A locked page (a split holds the page lock while it checks for an owner): -EBUSY too.
  pmpage::lock_page(plain);
  EXPECT_EQ(pool_.adopt_pages(&s[0]), -EBUSY);
  EXPECT_EQ(recorder_.count(), before);
  pmpage::unlock_page(plain);
  nothing_changed();
  ASSERT_EQ(pool_.adopt_pages(&s[0]), 0);
  expect_consistent(2);
  ASSERT_EQ(pool_.free_pages_from(&s[0]), 0);
  ASSERT_EQ(pool_.free_pages_from(&s[1]), 0);
  EXPECT_EQ(free_pages(), total_pages_);
}

TEST_F(OwnershipPersistent, AnOwnerRecordDroppedAtOpenIsRestoredByAdoption) {
  // The repair tool's round trip: the owner entry was damaged, open dropped the owner record
  // (the page stays allocated, owned by nobody); the tool adopts the page into its slot;
  // the engine's slots are clean again, across reopen, and the slot frees the page.
  for (unsigned order : {0u, 9u, 10u}) {
    SCOPED_TRACE("order " + std::to_string(order));
    ASSERT_NE(pool_.alloc_pages_to(order, &slots()[0]), nullptr);
    const pfn_t lost = slots()[0];
    pool_.close();
    damage_owner_entry(path_, lost);
    pool_ = pmpage::pool::open(path_);
    EXPECT_EQ(pool_.check(), "");  // loads every region: the record is dropped now
    EXPECT_EQ(pool_.stats().orphaned_owners, 1u);
    std::vector<pfn_t*> list{&slots()[0]};
    ASSERT_EQ(pool_.check_slots(list).misowned.size(), 1u) << "named but not owned";
    ASSERT_EQ(pool_.adopt_pages(&slots()[0]), 0);  // ... and adopts the page
    expect_consistent(1);
    reopen();
    EXPECT_EQ(pool_.stats().orphaned_owners, 0u);
    expect_consistent(1);
    EXPECT_EQ(pool_.stats().orphaned_owners, 0u) << "nothing dropped when the regions loaded";
    ASSERT_EQ(pool_.free_pages_from(&slots()[0]), 0);
    EXPECT_EQ(free_pages(), total_pages_);
  }
}

TEST_F(OwnershipPersistent, AdoptPagesOnAReadOnlyPoolIsRefused) {
  page* p = pool_.alloc_pages(0);
  ASSERT_NE(p, nullptr);
  slots()[0] = pmpage::page_to_pfn(p);
  pool_.persist(&slots()[0], sizeof(pfn_t));
  pool_.close();
  pmpage::pool::open_options ro;
  ro.read_only = true;
  pool_ = pmpage::pool::open(path_, ro);
  expect_reported([&] { EXPECT_EQ(pool_.adopt_pages(&slots()[0]), -EROFS); }, "adopt on a read-only pool", "read-only");
  std::vector<pfn_t*> list{&slots()[0]};
  EXPECT_EQ(pool_.check_slots(list).misowned.size(), 1u);
}

TEST_P(Ownership, ConcurrentAdoptionsOfOnePageLeaveOneOwner) {
  // Several slots name one unowned page and adopt it at once: exactly one becomes its owner, every
  // other call is refused (misuse: owned, or claimed by the winner) or -EBUSY, and nothing leaks.
  constexpr int kThreads = 4, kRounds = 100;
  for (int round = 0; round < kRounds; ++round) {
    const unsigned order = round % 2 ? 9 : 0;
    page* p = pool_.alloc_pages(order);
    ASSERT_NE(p, nullptr);
    for (int t = 0; t < kThreads; ++t) slots()[t] = pmpage::page_to_pfn(p);
    pool_.persist(slots(), kThreads * sizeof(pfn_t));
    std::barrier sync(kThreads);
    std::atomic<int> won{-1}, refused{0};
    std::vector<std::thread> ts;
    for (int t = 0; t < kThreads; ++t)
      ts.emplace_back([&, t] {
        sync.arrive_and_wait();
        const int rc = pool_.adopt_pages(&slots()[t]);
        if (rc == 0) {
          int none = -1;
          EXPECT_TRUE(won.compare_exchange_strong(none, t)) << "two owners";
        } else {
          EXPECT_TRUE(rc == -EINVAL || rc == -EBUSY) << rc;
          refused.fetch_add(1);
        }
      });
    for (auto& t : ts) t.join();
    ASSERT_GE(won.load(), 0) << "round " << round << ": nobody adopted the page";
    EXPECT_EQ(refused.load(), kThreads - 1);
    for (int t = 0; t < kThreads; ++t)
      if (t != won.load()) slots()[t] = 0;  // the losers' copies
    expect_consistent(kThreads);
    ASSERT_EQ(pool_.free_pages_from(&slots()[won.load()]), 0);
  }
  EXPECT_EQ(free_pages(), total_pages_);
  expect_consistent(kThreads);
}

TEST_P(Ownership, ConcurrentFreeThroughASlotBeingAdoptedSeesItUnownedOrOwned) {
  // free_pages_from on the slot while it is being adopted: before the adoption it is misuse (the
  // slot does not own the page) and changes nothing; once adopt_pages has returned it frees the
  // page. Never a slot naming a freed page with an owner record, never a leak.
  constexpr int kRounds = 200;
  for (int round = 0; round < kRounds; ++round) {
    const unsigned order = round % 2 ? 9 : 0;
    page* p = pool_.alloc_pages(order);
    ASSERT_NE(p, nullptr);
    slots()[0] = pmpage::page_to_pfn(p);
    pool_.persist(&slots()[0], sizeof(pfn_t));
    std::barrier sync(2);
    std::atomic<bool> adopted{false};
    std::thread adopter([&] {
      sync.arrive_and_wait();
      EXPECT_EQ(pool_.adopt_pages(&slots()[0]), 0);
      adopted.store(true, std::memory_order_release);
    });
    std::thread freer([&] {
      sync.arrive_and_wait();
      for (;;) {
        const bool after = adopted.load(std::memory_order_acquire);
        const int rc = pool_.free_pages_from(&slots()[0]);
        if (rc == 0) break;
        ASSERT_FALSE(after) << "a free after the adoption returned failed: " << rc;
        ASSERT_TRUE(rc == -EINVAL || rc == -EBUSY) << rc;
        std::this_thread::yield();
      }
    });
    adopter.join();
    freer.join();
    ASSERT_EQ(slots()[0], 0u) << "round " << round;
    ASSERT_EQ(free_pages(), total_pages_) << "round " << round;
  }
  expect_consistent(1);
}

TEST_P(Ownership, ConcurrentPutOfTheReferenceBeingAdoptedNeverFreesAnOwnedPage) {
  // The allocation's reference dropped while it is being adopted (the caller's race): either the
  // put came first (the page is free, the adoption refused) or the adoption did (the put is
  // refused, or finds the count claimed and is reported); never an owned page freed or a count
  // that no longer adds up.
  constexpr int kRounds = 200;
  for (int round = 0; round < kRounds; ++round) {
    const unsigned order = round % 2 ? 9 : 0;
    page* p = pool_.alloc_pages(order);
    ASSERT_NE(p, nullptr);
    slots()[0] = pmpage::page_to_pfn(p);
    pool_.persist(&slots()[0], sizeof(pfn_t));
    std::barrier sync(2);
    int rc = 1;
    std::thread adopter([&] {
      sync.arrive_and_wait();
      rc = pool_.adopt_pages(&slots()[0]);
    });
    std::thread putter([&] {
      sync.arrive_and_wait();
      pmpage::put_page(p);
    });
    adopter.join();
    putter.join();
    if (rc == 0) {
      ASSERT_EQ(pmpage::page_count(p), 1) << "round " << round;
      expect_consistent(1);
      ASSERT_EQ(pool_.free_pages_from(&slots()[0]), 0);
    } else {
      ASSERT_EQ(rc, -EINVAL);
      slots()[0] = 0;  // it named the page the put freed
    }
    ASSERT_EQ(free_pages(), total_pages_) << "round " << round;
  }
  expect_consistent(1);
}

TEST_P(Ownership, ConcurrentAdoptionAndSplitHugePageNeverSplitAnOwnedPage) {
  // split_huge_page checked for an owner before it froze the page; an adoption in between would
  // have made it split an owned page into 512 unowned pieces (or freeze an owned page). It checks
  // again under the page lock now, and an adoption refuses a locked page: either the split wins
  // (and the slot may adopt piece 0, or gets -EBUSY / misuse) or the adoption does (the split is
  // -EBUSY).
  constexpr int kRounds = 200;
  for (int round = 0; round < kRounds; ++round) {
    page* p = pool_.alloc_pages(9);
    ASSERT_NE(p, nullptr);
    const pfn_t pfn = pmpage::page_to_pfn(p);
    slots()[0] = pfn;
    pool_.persist(&slots()[0], sizeof(pfn_t));
    std::barrier sync(2);
    int adopted = 1, split = 1;
    std::thread a([&] {
      sync.arrive_and_wait();
      adopted = pool_.adopt_pages(&slots()[0]);
    });
    std::thread b([&] {
      sync.arrive_and_wait();
      split = pmpage::split_huge_page(p);
    });
    a.join();
    b.join();
    EXPECT_EQ(pool_.check(), "") << "round " << round;
    std::vector<pfn_t*> list{&slots()[0]};
    const auto r = pool_.check_slots(list);
    if (adopted == 0) {
      EXPECT_TRUE(r.misowned.empty() && r.dangling.empty()) << r.describe();
    }
    if (split == 0) {  // the adoption came after (piece 0) or failed while the page was frozen
      EXPECT_TRUE(adopted == 0 || adopted == -EINVAL || adopted == -EBUSY) << adopted;
      for (pfn_t i = adopted == 0 ? 1 : 0; i < HPAGE_PMD_NR; ++i) pmpage::put_page(pmpage::pfn_to_page(pfn + i));
      if (adopted == 0) {
        ASSERT_EQ(pool_.free_pages_from(&slots()[0]), 0);
      }
    } else {
      ASSERT_EQ(split, -EBUSY);
      if (adopted == 0) {
        ASSERT_EQ(pool_.free_pages_from(&slots()[0]), 0);
      } else {  // each found the other's claim: nothing changed
        ASSERT_EQ(adopted, -EBUSY);
        pmpage::free_pages(p, 9);
      }
    }
    slots()[0] = 0;
    ASSERT_EQ(free_pages(), total_pages_) << "round " << round;
  }
  EXPECT_EQ(pool_.check(), "");
}

class OwnershipFences : public Kinds<CountingPoolTest> {};

TEST_P(OwnershipFences, AdoptPagesCostsTwoFences) {
  // The owner entry is durable before the owned marker (or bit) that gives it meaning.
  ASSERT_NE(pool_.alloc_pages(0), nullptr);  // the small pages land in a published split region
  pfn_t* s = root_slots(pool_);
  for (unsigned order : {0u, 3u, 8u, 9u, 10u}) {
    SCOPED_TRACE("order " + std::to_string(order));
    page* p = pool_.alloc_pages(order);
    ASSERT_NE(p, nullptr);
    s[0] = pmpage::page_to_pfn(p);
    pool_.persist(&s[0], sizeof(pfn_t));
    EXPECT_EQ(fences_of([&] { ASSERT_EQ(pool_.adopt_pages(&s[0]), 0); }), per_kind(2));
    ASSERT_EQ(pool_.free_pages_from(&s[0]), 0);
  }
}

TEST_P(OwnershipFences, AllocateFillAndPublishCostsTwoFencesWithTheContents) {
  // The page's contents ride in the allocation's first epoch: 4 KiB written and flushed by the
  // initialiser, then the slot, 2 fences in all (6 with a staging slot and move_pages_owner).
  ASSERT_NE(pool_.alloc_pages(0), nullptr);  // a published split region
  pfn_t* s = root_slots(pool_);
  const pmpage::pool::page_init fill = [&](page*, void* addr, std::size_t bytes) {
    std::memset(addr, 0x5a, bytes);
    pool_.flush(addr, bytes);
    return 0;
  };
  for (unsigned order : {0u, 9u}) {
    SCOPED_TRACE("order " + std::to_string(order));
    EXPECT_EQ(fences_of([&] { ASSERT_NE(pool_.alloc_pages_to(order, &s[0], 0, fill), nullptr); }), per_kind(2));
    EXPECT_EQ(static_cast<unsigned char*>(pmpage::page_address(pmpage::pfn_to_page(s[0])))[4095], 0x5a);
    EXPECT_EQ(fences_of([&] { ASSERT_NE(pool_.replace_pages(&s[0], order, 0, fill), nullptr); }), per_kind(2))
        << "replace: the new page, then the slot; the old page's free needs no fence";
    EXPECT_EQ(fences_of([&] { ASSERT_EQ(pool_.free_pages_from(&s[0]), 0); }), per_kind(1));
  }
  EXPECT_EQ(pool_.check(), "");
}

TEST_P(Ownership, AllocateFillAndPublishPublishesOnlyWhatTheInitialiserAccepted) {
  const std::uint64_t free_before = free_pages();
  // Accepted: the slot names the filled page, owned.
  page* p = pool_.alloc_pages_to(1, &slots()[0], pmpage::GFP_ZERO, [&](page* head, void* addr, std::size_t bytes) {
    EXPECT_EQ(bytes, 2 * pmpage::PAGE_SIZE);
    EXPECT_EQ(pmpage::page_address(head), addr);
    EXPECT_EQ(static_cast<unsigned char*>(addr)[100], 0) << "GFP_ZERO's zeros come first";
    EXPECT_EQ(slots()[0], 0u) << "not published while the initialiser runs";
    std::memcpy(addr, "hello", 6);
    pool_.flush(addr, 6);
    return 0;
  });
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(slots()[0], pmpage::page_to_pfn(p));
  EXPECT_STREQ(static_cast<const char*>(pmpage::page_address(p)), "hello");
  // Refused (a negative errno, a positive value, an exception): nothing allocated or published.
  for (int variant = 0; variant < 3; ++variant) {
    SCOPED_TRACE("refusal " + std::to_string(variant));
    errno = 0;
    page* q = pool_.alloc_pages_to(0, &slots()[1], 0, [&](page*, void*, std::size_t) -> int {
      if (variant == 2) throw std::runtime_error("engine failure");
      return variant == 0 ? -ENODATA : 7;
    });
    EXPECT_EQ(q, nullptr);
    EXPECT_EQ(errno, variant == 0 ? ENODATA : ECANCELED);
    EXPECT_EQ(slots()[1], 0u);
    EXPECT_EQ(free_pages(), free_before - 2);
  }
  EXPECT_EQ(recorder_.count(), 0) << "a refusal is not misuse";
  expect_consistent(2);
  reopen_if_persistent();
  EXPECT_STREQ(static_cast<const char*>(pmpage::page_address(pmpage::pfn_to_page(slots()[0]))), "hello");
  expect_consistent(2);
  ASSERT_EQ(pool_.free_pages_from(&slots()[0]), 0);
  EXPECT_EQ(free_pages(), free_before);
}

TEST_P(Ownership, AnUnbalancedPutInsideTheInitialiserIsReportedAndNeitherHangsNorFreesThePage) {
  // The page is the slot's from the start of the call: a put_page that would free it is misuse
  // (reported, the count stays), and it must not wait for the publication it is part of.
  page* p = nullptr;
  expect_reported([&] {
    p = pool_.alloc_pages_to(0, &slots()[0], 0, [](page* head, void*, std::size_t) {
      pmpage::put_page(head);
      return 0;
    });
  }, "put_page inside the initialiser");
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(slots()[0], pmpage::page_to_pfn(p));
  EXPECT_EQ(pmpage::page_count(p), 1);
  expect_consistent(1);
  ASSERT_EQ(pool_.free_pages_from(&slots()[0]), 0);
}

TEST_P(Ownership, ReplacePagesSwapsTheSlotsPageAndFreesTheOldOne) {
  const std::uint64_t free_before = free_pages();
  for (unsigned order : {0u, 3u, 9u}) {
    SCOPED_TRACE("order " + std::to_string(order));
    ASSERT_NE(pool_.alloc_pages_to(order, &slots()[0]), nullptr);
    const pfn_t old = slots()[0];
    page* n = pool_.replace_pages(&slots()[0], order == 9 ? 0 : order + 1, 0, [&](page*, void* addr, std::size_t) {
      std::memcpy(addr, "copy", 5);
      pool_.flush(addr, 5);
      return 0;
    });
    ASSERT_NE(n, nullptr);
    EXPECT_NE(slots()[0], old);
    EXPECT_EQ(slots()[0], pmpage::page_to_pfn(n));
    EXPECT_EQ(pmpage::page_count(n), 1);
    expect_consistent(1);
    EXPECT_EQ(allocations(pool_).by_pfn.count(old), 0u) << "the old page is free";
    reopen_if_persistent();
    expect_consistent(1);
    EXPECT_STREQ(static_cast<const char*>(pmpage::page_address(pmpage::pfn_to_page(slots()[0]))), "copy");
    ASSERT_EQ(pool_.free_pages_from(&slots()[0]), 0);
    EXPECT_EQ(free_pages(), free_before);
  }
  // An empty slot: allocates, as alloc_pages_to.
  ASSERT_NE(pool_.replace_pages(&slots()[0], 0), nullptr);
  ASSERT_EQ(pool_.free_pages_from(&slots()[0]), 0);
  EXPECT_EQ(recorder_.count(), 0);
}

TEST_P(Ownership, ReplacePagesRefusesWhatFreePagesFromRefusesAndChangesNothing) {
  ASSERT_NE(pool_.alloc_pages_to(0, &slots()[0], pmpage::GFP_ZERO), nullptr);
  const pfn_t owned = slots()[0];
  const std::uint64_t free_before = free_pages();
  // Other references: EBUSY, nothing changed, not misuse.
  pmpage::get_page(pmpage::pfn_to_page(owned));
  errno = 0;
  EXPECT_EQ(pool_.replace_pages(&slots()[0], 0), nullptr);
  EXPECT_EQ(errno, EBUSY);
  EXPECT_EQ(recorder_.count(), 0);
  pmpage::put_page(pmpage::pfn_to_page(owned));
  // A copy of the pfn in another slot does not own it.
  slots()[1] = owned;
  expect_reported([&] { EXPECT_EQ(pool_.replace_pages(&slots()[1], 0), nullptr); }, "replace through a copy", "does not own");
  slots()[1] = 0;
  // Every misuse sets errno = EINVAL, as the C API does: a value that is no pfn of the pool, an
  // order past 18, unknown gfp bits, a slot outside the pool.
  slots()[3] = 12345;
  for (int variant = 0; variant < 4; ++variant) {
    SCOPED_TRACE("misuse " + std::to_string(variant));
    errno = 0;
    pfn_t outside = 0;
    expect_reported([&] {
      EXPECT_EQ(variant == 0   ? pool_.replace_pages(&slots()[3], 0)
                : variant == 1 ? pool_.replace_pages(&slots()[0], 30)
                : variant == 2 ? pool_.replace_pages(&slots()[0], 0, pmpage::gfp_t{0x4000})
                               : pool_.replace_pages(&outside, 0),
                nullptr);
    }, "replace misuse");
    EXPECT_EQ(errno, EINVAL);
  }
  slots()[3] = 0;
  // An unowned page.
  page* plain = pool_.alloc_pages(0);
  ASSERT_NE(plain, nullptr);
  slots()[2] = pmpage::page_to_pfn(plain);
  expect_reported([&] { EXPECT_EQ(pool_.replace_pages(&slots()[2], 0), nullptr); }, "replace of an unowned page", "no slot owns");
  slots()[2] = 0;
  pmpage::put_page(plain);
  // A slot inside the page it owns (a table that owns itself).
  auto* table = static_cast<pfn_t*>(pmpage::page_address(pmpage::pfn_to_page(owned)));
  ASSERT_EQ(pool_.move_pages_owner(&slots()[0], &table[5]), 0);
  expect_reported([&] { EXPECT_EQ(pool_.replace_pages(&table[5], 0), nullptr); }, "replace of a self-owning table", "inside");
  ASSERT_EQ(pool_.move_pages_owner(&table[5], &slots()[0]), 0);
  EXPECT_EQ(slots()[0], owned);
  EXPECT_EQ(free_pages(), free_before);
  expect_consistent(1);
  ASSERT_EQ(pool_.free_pages_from(&slots()[0]), 0);
}

TEST_P(Ownership, ConcurrentReplacementsOfOneSlotLeaveOneOwnerAndNoLeak) {
  // Threads replace the page of one slot over and over: each call either wins (the slot names its
  // page, the previous one freed) or finds the old page claimed by another and gets EBUSY /
  // a misuse report for a page freed under it; at the end exactly one page is allocated.
  pmpage::set_misuse_handler(+[](const char*) {});
  ASSERT_NE(pool_.alloc_pages_to(0, &slots()[0]), nullptr);
  const std::uint64_t free_before = free_pages();
  std::vector<std::thread> ts;
  std::atomic<unsigned> won{0};
  for (unsigned t = 0; t < 4; ++t)
    ts.emplace_back([&] {
      for (unsigned i = 0; i < 300; ++i)
        if (pool_.replace_pages(&slots()[0], 0)) won.fetch_add(1);
    });
  for (auto& t : ts) t.join();
  EXPECT_GT(won.load(), 0u);
  EXPECT_EQ(free_pages(), free_before);
  EXPECT_EQ(allocations(pool_).by_pfn.size(), 1u);
  expect_consistent(1);
  reopen_if_persistent();
  expect_consistent(1);
  EXPECT_EQ(allocations(pool_).by_pfn.size(), 1u);
}

// ---- check() and check_slots -------------------------------------------------------------------

TEST_P(Ownership, CheckSeesASlotOverwrittenByHand) {
  ASSERT_NE(pool_.alloc_pages_to(0, &slots()[0]), nullptr);
  ASSERT_NE(pool_.alloc_pages_to(9, &slots()[1]), nullptr);
  const pfn_t small = slots()[0], huge = slots()[1];
  slots()[0] = 0;  // the engine forgets the page without freeing it
  EXPECT_NE(pool_.check().find("O1"), std::string::npos) << pool_.check();
  slots()[0] = small;
  slots()[1] = 7;
  EXPECT_NE(pool_.check().find("O1"), std::string::npos) << pool_.check();
  slots()[1] = huge;
  EXPECT_EQ(pool_.check(), "");
}

TEST_P(Ownership, CheckSlotsNeverReportsTheOwnerWhateverTheListsOrder) {
  // Two hand copies of an owned pfn, listed before and after the owner: both copies are misowned
  // and shared, the owner is neither, in every order (an engine that clears what check_slots
  // lists must keep the owner).
  pfn_t* s = slots();
  ASSERT_NE(pool_.alloc_pages_to(0, &s[5]), nullptr);
  s[2] = s[5];
  s[9] = s[5];
  const std::vector<std::vector<pfn_t*>> orders = {
      {&s[2], &s[5], &s[9]}, {&s[5], &s[2], &s[9]}, {&s[9], &s[2], &s[5]}, {&s[2], &s[9], &s[5]}};
  for (const auto& list : orders) {
    const auto r = pool_.check_slots(list);
    std::vector<const pfn_t*> shared, misowned;
    for (const auto& e : r.shared) shared.push_back(e.slot);
    for (const auto& e : r.misowned) misowned.push_back(e.slot);
    std::sort(shared.begin(), shared.end());
    std::sort(misowned.begin(), misowned.end());
    const std::vector<const pfn_t*> copies = {&s[2], &s[9]};
    EXPECT_EQ(shared, copies) << r.describe();
    EXPECT_EQ(misowned, copies) << r.describe();
    EXPECT_TRUE(r.dangling.empty() && r.unreferenced.empty()) << r.describe();
    EXPECT_NE(r.describe().find("owns (and names too)"), std::string::npos) << r.describe();
  }
  s[2] = s[9] = 0;
  EXPECT_TRUE(pool_.check_slots(std::vector<pfn_t*>{&s[5]}).clean());
  EXPECT_EQ(pool_.free_pages_from(&s[5]), 0);
}

TEST_P(Ownership, CheckSlotsReportsEveryKindOfBrokenReference) {
  pfn_t* s = slots();
  ASSERT_NE(pool_.alloc_pages_to(0, &s[0]), nullptr);
  ASSERT_NE(pool_.alloc_pages_to(2, &s[1]), nullptr);
  page* plain = pool_.alloc_pages(0);   // named by slot 3, owned by nobody
  page* leaked = pool_.alloc_pages(1);  // named by no slot
  s[2] = s[0];                          // shared: a copy of slot 0
  s[3] = pmpage::page_to_pfn(plain);    // misowned
  s[4] = s[1] + 1;                      // dangling: a tail
  s[5] = pool_.end_pfn() + 3;           // dangling: no page of this pool
  std::vector<pfn_t*> list;
  for (int i = 0; i < 8; ++i) list.push_back(&s[i]);
  const auto r = pool_.check_slots(list);
  ASSERT_EQ(r.shared.size(), 1u) << r.describe();
  EXPECT_EQ(r.shared[0].slot, &s[2]);
  ASSERT_EQ(r.misowned.size(), 2u) << r.describe();  // the copy owns nothing either
  EXPECT_EQ(r.misowned[0].slot, &s[2]);
  EXPECT_EQ(r.misowned[1].slot, &s[3]);
  ASSERT_EQ(r.dangling.size(), 2u) << r.describe();
  ASSERT_EQ(r.unreferenced.size(), 1u) << r.describe();
  EXPECT_EQ(r.unreferenced[0].pfn, pmpage::page_to_pfn(leaked));
  EXPECT_EQ(r.unreferenced[0].order, 1u);
  EXPECT_FALSE(r.clean());
  EXPECT_NE(r.describe().find("shared"), std::string::npos);
  // Without the slot to the freed page it is dangling too: free through the owner, keep the copy.
  s[2] = 0;
  s[3] = 0;
  s[4] = 0;
  s[5] = 0;
  const pfn_t old = s[0];
  ASSERT_EQ(pool_.free_pages_from(&s[0]), 0);
  s[6] = old;
  const auto r2 = pool_.check_slots(list);
  ASSERT_EQ(r2.dangling.size(), 1u) << r2.describe();
  EXPECT_EQ(r2.dangling[0].slot, &s[6]);
  s[6] = 0;
  pmpage::put_page(plain);
  pmpage::free_pages(leaked, 1);
  EXPECT_TRUE(pool_.check_slots(list).clean()) << pool_.check_slots(list).describe();
}

// ---- GFP_ZERO ----------------------------------------------------------------------------------

TEST_P(Ownership, GfpZeroHandsOutZeroedPages) {
  auto all_zero = [](page* p, unsigned order) {
    const auto* b = static_cast<const unsigned char*>(pmpage::page_address(p));
    for (std::size_t i = 0; i < (pmpage::PAGE_SIZE << order); ++i)
      if (b[i]) return false;
    return true;
  };
  for (unsigned order : {0u, 4u, 9u}) {
    SCOPED_TRACE("order " + std::to_string(order));
    page* p = pool_.alloc_pages(order);
    ASSERT_NE(p, nullptr);
    std::memset(pmpage::page_address(p), 0xA5, pmpage::PAGE_SIZE << order);
    const pfn_t pfn = pmpage::page_to_pfn(p);
    pmpage::free_pages(p, order);
    page* again = pool_.alloc_pages(order);  // the same extent: lowest first
    ASSERT_EQ(pmpage::page_to_pfn(again), pfn);
    EXPECT_FALSE(all_zero(again, order)) << "pages are not zeroed unless asked (documented)";
    pmpage::free_pages(again, order);
    page* z = pool_.alloc_pages(order, pmpage::GFP_ZERO);
    ASSERT_EQ(pmpage::page_to_pfn(z), pfn);
    EXPECT_TRUE(all_zero(z, order));
    std::memset(pmpage::page_address(z), 0x5A, pmpage::PAGE_SIZE << order);
    pmpage::free_pages(z, order);
    page* zt = pool_.alloc_pages_to(order, &slots()[0], pmpage::GFP_ZERO);
    ASSERT_NE(zt, nullptr);
    EXPECT_TRUE(all_zero(zt, order));
    ASSERT_EQ(pool_.free_pages_from(&slots()[0]), 0);
  }
  page* out[3];
  ASSERT_EQ(pool_.alloc_pages_bulk(0, 3, out, pmpage::GFP_ZERO), 3u);
  for (page* p : out) {
    EXPECT_TRUE(all_zero(p, 0));
    pmpage::put_page(p);
  }
  page* bad = nullptr;
  expect_reported([&] { bad = pool_.alloc_pages(0, 0x4); }, "unknown gfp flag", "gfp");
  EXPECT_EQ(bad, nullptr);
  EXPECT_EQ(free_pages(), total_pages_);
}

INSTANTIATE_TEST_SUITE_P(, Ownership, kKinds, kind_name);
INSTANTIATE_TEST_SUITE_P(, OwnershipBigRoot, kKinds, kind_name);
INSTANTIATE_TEST_SUITE_P(, OwnershipFences, kKinds, kind_name);

}  // namespace
