// Misuse: caller mistakes are reported through the misuse handler; when the handler returns, the
// call does nothing, and neither the volatile nor the persistent state is damaged.
#include <cstring>

#include <memory>

#include "test_util.hpp"

namespace {

using namespace pmtest;
using pmpage::HPAGE_PMD_NR;
using pmpage::page;
using pmpage::pfn_t;

class MisuseBase : public PoolTest {
 protected:
  page* tail(page* head, std::uint64_t i) { return pmpage::pfn_to_page(pmpage::page_to_pfn(head) + i); }

  // Runs f and expects exactly one new misuse report with a non-empty message.
  template <class F>
  void expect_reported(F&& f, const char* what) {
    const int before = recorder_.count();
    f();
    EXPECT_EQ(recorder_.count(), before + 1) << what << ": expected one misuse report";
    if (recorder_.count() > before) {
      EXPECT_FALSE(recorder_.last().empty()) << what << ": empty message";
    }
  }

  // The pool is as it was: same free pages and allocations, invariants hold, and the same after a
  // reopen (misuse must never reach persistent state; a volatile pool is not reopened).
  void expect_state(std::uint64_t free, const std::map<pfn_t, unsigned>& allocs) {
    EXPECT_EQ(free_pages(), free);
    EXPECT_EQ(allocations(pool_).by_pfn, allocs);
    EXPECT_EQ(pool_.check(), "");
    reopen_if_persistent();
    EXPECT_EQ(free_pages(), free);
    EXPECT_EQ(allocations(pool_).by_pfn, allocs);
    EXPECT_EQ(pool_.check(), "");
  }

  misuse_recorder recorder_;
};
class Misuse : public Kinds<MisuseBase> {};
class MisusePersistent : public MisuseBase {};

TEST_P(Misuse, HandlerCanBeReplacedAndRestored) {
  auto handler_a = [](const char*) {};
  auto handler_b = [](const char*) {};
  pmpage::misuse_handler a = +handler_a;
  pmpage::misuse_handler b = +handler_b;
  EXPECT_EQ(pmpage::set_misuse_handler(a), &record_misuse);
  EXPECT_EQ(pmpage::set_misuse_handler(b), a);
  pmpage::set_misuse_handler(nullptr);  // back to the default
  EXPECT_NE(pmpage::set_misuse_handler(&record_misuse), b);
}

TEST_P(Misuse, GetPageOnAFreePageIsReportedAndDoesNothing) {
  page* p = page_at(3);
  ASSERT_EQ(pmpage::page_count(p), 0);
  expect_reported([&] { pmpage::get_page(p); }, "get_page on a free page");
  EXPECT_EQ(pmpage::page_count(p), 0);
  expect_state(total_pages_, {});
  // The page can still be allocated normally.
  page* q = pool_.alloc_pages(9);
  ASSERT_NE(q, nullptr);
  EXPECT_EQ(pmpage::page_count(q), 1);
}

TEST_P(Misuse, PutPageOnAFreePageIsReportedAndDoesNothing) {
  page* keep = pool_.alloc_pages(0);
  ASSERT_NE(keep, nullptr);
  // A free page next to it in its split region, and a page of a free (unsplit) region.
  page* neighbour = page_at(index_of(keep) ^ 1);
  page* unsplit = page_at((index_of(keep) / HPAGE_PMD_NR + 1) % total_regions_ * HPAGE_PMD_NR + 3);
  for (page* p : {neighbour, unsplit}) {
    ASSERT_EQ(pmpage::page_count(p), 0);
    expect_reported([&] { pmpage::put_page(p); }, "put_page on a free page");
    EXPECT_EQ(pmpage::page_count(p), 0);
  }
  EXPECT_EQ(pmpage::page_count(keep), 1);
  expect_state(total_pages_ - 1, {{pmpage::page_to_pfn(keep), 0}});
}

// Double put across the representations: order 0 and 3 in a split region, a whole region, and a
// multi-region compound page; the second put is also tried through a tail.
class MisuseDoublePut : public KindsAnd<MisuseBase, unsigned> {};

TEST_P(MisuseDoublePut, SecondPutIsReportedAndDoesNothing) {
  const unsigned order = param();
  page* keep = pool_.alloc_pages(order);
  page* p = pool_.alloc_pages(order);
  ASSERT_TRUE(keep && p);
  const std::map<pfn_t, unsigned> expected{{pmpage::page_to_pfn(keep), order}};
  const std::uint64_t free_after = total_pages_ - (std::uint64_t{1} << order);
  pmpage::put_page(p);
  ASSERT_EQ(free_pages(), free_after);
  expect_reported([&] { pmpage::put_page(p); }, "second put_page");
  EXPECT_EQ(pmpage::page_count(p), 0);
  if (order > 0) {
    expect_reported([&] { pmpage::put_page(tail(p, 1)); }, "put_page on a tail of a freed page");
  }
  expect_reported([&] { pmpage::free_pages(p, order); }, "free_pages of a freed page");
  EXPECT_EQ(pmpage::page_count(keep), 1);
  EXPECT_EQ(pmpage::page_count(p), 0);
  expect_state(free_after, expected);
}

INSTANTIATE_TEST_SUITE_P(Orders, MisuseDoublePut, ::testing::Combine(::testing::Values(0u, 3u, 9u, 10u), kKinds),
                         [](const auto& info) {
                           return kind_and_name(info, "order" + std::to_string(std::get<0>(info.param)));
                         });

TEST_P(Misuse, FreePagesWithTheWrongOrderIsReportedAndDoesNothing) {
  page* p = pool_.alloc_pages(3);
  page* h = pool_.alloc_pages(9);
  ASSERT_TRUE(p && h);
  expect_reported([&] { pmpage::free_pages(p, 2); }, "free_pages order 2 of an order-3 page");
  expect_reported([&] { pmpage::free_pages(p, 4); }, "free_pages order 4 of an order-3 page");
  expect_reported([&] { pmpage::free_pages(h, 0); }, "free_pages order 0 of an order-9 page");
  expect_reported([&] { pmpage::free_pages(h, 10); }, "free_pages order 10 of an order-9 page");
  EXPECT_EQ(pmpage::page_count(p), 1);
  EXPECT_EQ(pmpage::page_count(h), 1);
  const std::map<pfn_t, unsigned> expected{{pmpage::page_to_pfn(p), 3}, {pmpage::page_to_pfn(h), 9}};
  expect_state(total_pages_ - 8 - HPAGE_PMD_NR, expected);
  // The right order still works.
  pmpage::free_pages(pmpage::pfn_to_page(expected.begin()->first), expected.begin()->second);
  EXPECT_EQ(recorder_.count(), 4);
}

TEST_P(Misuse, FreePagesOnATailIsReportedAndDoesNothing) {
  page* p = pool_.alloc_pages(4);
  ASSERT_NE(p, nullptr);
  expect_reported([&] { pmpage::free_pages(tail(p, 2), 4); }, "free_pages on a tail");
  expect_reported([&] { pmpage::free_pages(tail(p, 2), 0); }, "free_pages order 0 on a tail");
  EXPECT_EQ(pmpage::page_count(p), 1);
  expect_state(total_pages_ - 16, {{pmpage::page_to_pfn(p), 4}});
}

TEST_P(Misuse, FreePagesOfANeverAllocatedPageIsReported) {
  expect_reported([&] { pmpage::free_pages(page_at(0), 0); }, "free_pages of a free order-0 page");
  expect_reported([&] { pmpage::free_pages(page_at(HPAGE_PMD_NR), 9); }, "free_pages of a free region");
  expect_state(total_pages_, {});
}

TEST_P(Misuse, PfnOutsideEveryPoolIsReported) {
  expect_reported([&] { EXPECT_EQ(pmpage::pfn_to_page(0), nullptr); }, "pfn_to_page(0)");
  expect_reported([&] { EXPECT_EQ(pmpage::pfn_to_page(pool_.end_pfn()), nullptr); }, "pfn_to_page(end_pfn)");
  expect_reported([&] { EXPECT_EQ(pmpage::pfn_to_page(pool_.start_pfn() - 1), nullptr); },
                  "pfn_to_page(start_pfn - 1)");
  expect_reported([&] { EXPECT_EQ(pmpage::pfn_to_page(pfn_t{0xfffe} << 32), nullptr); },
                  "pfn_to_page of a section with no pool");
  expect_reported([&] { EXPECT_EQ(pmpage::pfn_to_page(~pfn_t{0}), nullptr); }, "pfn_to_page(~0)");
  expect_state(total_pages_, {});
}

TEST_P(Misuse, ForeignDescriptorPointerIsReported) {
  // A page* that no pool handed out: a heap object, and a pointer past the pool's descriptors.
  auto foreign = std::make_unique<pmpage::page>();
  expect_reported([&] { pmpage::get_page(foreign.get()); }, "get_page of a heap object");
  expect_reported([&] { pmpage::put_page(foreign.get()); }, "put_page of a heap object");
  expect_reported([&] { EXPECT_EQ(pmpage::page_to_pfn(foreign.get()), 0u); }, "page_to_pfn of a heap object");
  expect_reported([&] { EXPECT_EQ(pmpage::page_address(foreign.get()), nullptr); }, "page_address of a heap object");
  page* past_end = page_at(0) + total_pages_;
  expect_reported([&] { pmpage::lock_page(past_end); }, "lock_page past the last descriptor");
  expect_reported([&] { pmpage::free_pages(past_end, 0); }, "free_pages past the last descriptor");
  expect_state(total_pages_, {});
}

TEST_F(MisusePersistent, PfnOfAClosedPoolIsReported) {
  page* p = pool_.alloc_pages(0);
  ASSERT_NE(p, nullptr);
  const pfn_t pfn = pmpage::page_to_pfn(p);
  pool_.close();
  expect_reported([&] { EXPECT_EQ(pmpage::pfn_to_page(pfn), nullptr); }, "pfn_to_page after close");
  EXPECT_FALSE(pmpage::pfn_valid(pfn));
  // Reopening makes it valid again, with the allocation intact.
  pool_ = pmpage::pool::open(path_);
  ASSERT_EQ(pmpage::pfn_to_page(pfn) != nullptr, true);
  EXPECT_EQ(pmpage::page_count(pmpage::pfn_to_page(pfn)), 1);
}

TEST_P(Misuse, AllocationCallsOnAClosedPoolAreReported) {
  // Found by review: they returned nullptr / 0 / -EINVAL silently, so a closed pool looked full.
  pmpage::pool closed;
  pfn_t slot = 0;
  pfn_t* one[] = {&slot};
  expect_reported([&] { EXPECT_EQ(closed.alloc_pages(0), nullptr); }, "alloc_pages on a closed pool");
  page* out[2];
  expect_reported([&] { EXPECT_EQ(closed.alloc_pages_bulk(0, 2, out), 0u); }, "alloc_pages_bulk on a closed pool");
  expect_reported([&] { EXPECT_EQ(closed.alloc_pages_to(0, &slot), nullptr); }, "alloc_pages_to on a closed pool");
  expect_reported([&] { EXPECT_EQ(closed.free_pages_from(&slot), -EINVAL); }, "free_pages_from on a closed pool");
  expect_reported([&] { EXPECT_EQ(closed.alloc_pages_bulk_to(0, one), 0u); }, "alloc_pages_bulk_to on a closed pool");
  expect_reported([&] { EXPECT_EQ(closed.free_pages_bulk_from(one), -EINVAL); }, "free_pages_bulk_from on a closed pool");
  expect_reported([&] { EXPECT_EQ(closed.move_pages_owner(&slot, &slot), -EINVAL); }, "move_pages_owner on a closed pool");
  // The same hole's other members: persisting through a closed pool made nothing durable without
  // a word, and checking one answered "healthy".
  expect_reported([&] { closed.persist(&slot, 8); }, "persist on a closed pool");
  expect_reported([&] { closed.flush(&slot, 8); }, "flush on a closed pool");
  expect_reported([&] { closed.drain(); }, "drain on a closed pool");
  expect_reported([&] { EXPECT_NE(closed.check(), ""); }, "check on a closed pool");
  expect_reported([&] { (void)closed.check_slots(one); }, "check_slots on a closed pool");
  expect_reported([&] { closed.for_each_allocated([](page*, unsigned) {}); }, "for_each_allocated on a closed pool");
  expect_state(total_pages_, {});
}

TEST_P(Misuse, UnlockOfAnUnlockedPageIsReported) {
  page* p = pool_.alloc_pages(0);
  ASSERT_NE(p, nullptr);
  expect_reported([&] { pmpage::unlock_page(p); }, "unlock_page of an unlocked page");
  EXPECT_FALSE(pmpage::PageLocked(p));
  EXPECT_TRUE(pmpage::trylock_page(p));
  pmpage::unlock_page(p);
}

TEST_P(Misuse, FreePagesFromAnEmptySlotIsANoOp) {
  // The kernel's kfree(NULL) / free_pages(0, order) rule: a truncate loop needs no guard.
  pfn_t* slots = root_slots(pool_);
  EXPECT_EQ(pool_.free_pages_from(&slots[0]), 0);
  EXPECT_EQ(pool_.free_pages_from(&slots[0]), 0);
  EXPECT_EQ(slots[0], 0u);
  expect_state(total_pages_, {});
}

TEST_P(Misuse, FreePagesFromASlotNamingNoAllocationIsReported) {
  pfn_t* slots = root_slots(pool_);
  page* p = pool_.alloc_pages_to(2, &slots[0]);
  ASSERT_NE(p, nullptr);
  const pfn_t head = slots[0];
  slots[1] = head + 1;                 // a tail
  slots[2] = head + 64;                // a free page
  slots[3] = pool_.end_pfn() + 5;      // no page at all
  pool_.persist(slots, 4 * sizeof(pfn_t));
  for (int i = 1; i <= 3; ++i) {
    int rc = 0;
    const pfn_t before = slots[i];
    expect_reported([&] { rc = pool_.free_pages_from(&slots[i]); }, "free_pages_from a bad slot");
    EXPECT_EQ(rc, -EINVAL) << "slot " << i;
    EXPECT_EQ(slots[i], before) << "slot " << i << " must be left alone";
  }
  EXPECT_EQ(pmpage::page_count(p), 1);
  expect_state(total_pages_ - 4, {{head, 2}});
}

TEST_P(Misuse, AllocPagesToOutsideThePoolIsReported) {
  pfn_t on_stack = 0;
  page* p = nullptr;
  expect_reported([&] { p = pool_.alloc_pages_to(0, &on_stack); }, "alloc_pages_to a stack slot");
  EXPECT_EQ(p, nullptr);
  EXPECT_EQ(on_stack, 0u);
  expect_state(total_pages_, {});
}

TEST_P(Misuse, FreePagesFromOutsideThePoolIsReported) {
  page* p = pool_.alloc_pages(0);
  ASSERT_NE(p, nullptr);
  pfn_t on_stack = pmpage::page_to_pfn(p);
  int rc = 0;
  expect_reported([&] { rc = pool_.free_pages_from(&on_stack); }, "free_pages_from a stack slot");
  EXPECT_EQ(rc, -EINVAL);
  EXPECT_EQ(pmpage::page_count(p), 1);
  expect_state(total_pages_ - 1, {{on_stack, 0}});
}

TEST_P(Misuse, OrderAboveTheMaximumAllocatesNothing) {
  // Reporting it is allowed but not required; it must not allocate.
  EXPECT_EQ(pool_.alloc_pages(pmpage::MAX_PAGE_ORDER + 1), nullptr);
  EXPECT_EQ(pool_.alloc_pages(1000), nullptr);
  page* out[4] = {};
  EXPECT_EQ(pool_.alloc_pages_bulk(pmpage::MAX_PAGE_ORDER + 1, 4, out), 0u);
  expect_state(total_pages_, {});
}

TEST_P(Misuse, DefaultHandlerPrintsAndAborts) {
  // "fast" death tests fork without re-running SetUp, so the child shares this pool and leaves no
  // file behind.
  GTEST_FLAG_SET(death_test_style, "fast");
  page* free_page = page_at(0);
  EXPECT_DEATH(
      {
        pmpage::set_misuse_handler(nullptr);
        pmpage::put_page(free_page);
      },
      ".+");
  EXPECT_EQ(pool_.check(), "");
}


}  // namespace

TEST_P(Misuse, PersistOutsideThePoolIsReportedAndFlushesNothing) {
  // A flush of memory that is not the pool's makes nothing durable, and a cache-line flush of an
  // unmapped address faults: both are refused.
  char dram[64] = {};
  expect_reported([&] { pool_.persist(dram, sizeof dram); }, "persist of a DRAM buffer");
  expect_reported([&] { pool_.flush(nullptr, 4096); }, "flush of NULL");
  char* const end = static_cast<char*>(pool_.base()) + pool_.mapped_length();
  expect_reported([&] { pool_.persist(end - 8, 4096); }, "persist running past the mapping");
  pool_.persist(pool_.root(), 64);  // inside: fine, nothing reported
  expect_state(total_pages_, {});
}

TEST_P(Misuse, CheckSlotsListsASlotOutsideThePoolWithoutReadingIt) {
  auto* root = static_cast<pfn_t*>(pool_.root());
  ASSERT_NE(pool_.alloc_pages_to(0, &root[0]), nullptr);
  pfn_t dram_slot = root[0];
  pfn_t* const slots[] = {&root[0], &dram_slot, reinterpret_cast<pfn_t*>(8)};
  const pmpage::pool::slot_check c = pool_.check_slots(slots);  // the bad pointer must not be read
  ASSERT_EQ(c.dangling.size(), 2u) << c.describe();
  EXPECT_NE(c.dangling[0].problem.find("not an 8-byte aligned word of this pool"), std::string::npos) << c.describe();
  EXPECT_TRUE(c.unreferenced.empty());
  EXPECT_EQ(pool_.free_pages_from(&root[0]), 0);
}

INSTANTIATE_TEST_SUITE_P(, Misuse, kKinds, kind_name);
