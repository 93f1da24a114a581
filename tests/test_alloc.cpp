// Allocation: orders 0..18, natural alignment, exhaustion, placement, bulk, alloc_pages_to /
// free_pages_from, and the split/free-region accounting in stats().
#include <random>
#include <set>

#include "test_util.hpp"

namespace {

using namespace pmtest;
using pmpage::HPAGE_PMD_NR;
using pmpage::page;
using pmpage::pfn_t;

class Alloc : public Kinds<PoolTest> {};
class AllocPersistent : public PoolTest {};

// Orders up to 18 need a naturally aligned free GiB: a sparse file slightly over 1 GiB (it costs
// no memory until pages are touched; the tests below only touch metadata).
class AllocLarge : public Kinds<PoolTest> {
 protected:
  std::uint64_t pool_size() const override { return GiB + 64 * MiB; }
};

TEST_P(AllocLarge, EveryOrderGivesANaturallyAlignedHeadWithCountOne) {
  ASSERT_GE(total_pages_, std::uint64_t{1} << pmpage::MAX_PAGE_ORDER);
  for (unsigned order = 0; order <= pmpage::MAX_PAGE_ORDER; ++order) {
    SCOPED_TRACE("order " + std::to_string(order));
    page* p = pool_.alloc_pages(order);
    ASSERT_NE(p, nullptr);
    const pfn_t pfn = pmpage::page_to_pfn(p);
    const pfn_t mask = (pfn_t{1} << order) - 1;
    EXPECT_EQ(pfn & mask, 0u) << "head pfn not aligned to 1 << order";
    EXPECT_EQ((pfn - start_) & mask, 0u);
    EXPECT_LE(pfn - start_ + (pfn_t{1} << order), total_pages_);
    EXPECT_EQ(pmpage::page_count(p), 1);
    EXPECT_EQ(pmpage::compound_order(p), order);
    EXPECT_EQ(pmpage::PageHead(p), order > 0);
    EXPECT_EQ(free_pages(), total_pages_ - (std::uint64_t{1} << order));
    EXPECT_EQ(pool_.check(), "");
    // The data is ours: write the first and last byte.
    auto* data = static_cast<char*>(pmpage::page_address(p));
    data[0] = 1;
    data[(pmpage::PAGE_SIZE << order) - 1] = 2;
    pmpage::free_pages(p, order);
    EXPECT_EQ(free_pages(), total_pages_);
    pool_.trim();  // a freed split region is kept for a while (merge hysteresis)
    EXPECT_EQ(pool_.stats().split_regions, 0u);
  }
}

TEST_P(AllocLarge, OnlyOneGiBPageFitsAndItCoversAWholeGiB) {
  page* gib = pool_.alloc_pages(pmpage::MAX_PAGE_ORDER);
  ASSERT_NE(gib, nullptr);
  EXPECT_EQ(pool_.alloc_pages(pmpage::MAX_PAGE_ORDER), nullptr);
  const pfn_t head = pmpage::page_to_pfn(gib);
  // Tails far from the head, in other regions, still belong to it.
  page* last = pmpage::pfn_to_page(head + (pfn_t{1} << pmpage::MAX_PAGE_ORDER) - 1);
  EXPECT_EQ(pmpage::compound_head(last), gib);
  EXPECT_TRUE(pmpage::PageTail(last));
  // What is left is smaller than 1 GiB but still usable.
  page* rest = pool_.alloc_pages(9);
  ASSERT_NE(rest, nullptr);
  const pfn_t rp = pmpage::page_to_pfn(rest);
  EXPECT_TRUE(rp >= head + (pfn_t{1} << pmpage::MAX_PAGE_ORDER) || rp + HPAGE_PMD_NR <= head);
  EXPECT_EQ(pool_.check(), "");
}

TEST_P(Alloc, NoAlignedExtentMeansNull) {
  const pmpage::pool_stats before = pool_.stats();
  ASSERT_LT(total_pages_, std::uint64_t{1} << pmpage::MAX_PAGE_ORDER);
  EXPECT_EQ(pool_.alloc_pages(pmpage::MAX_PAGE_ORDER), nullptr);
  const pmpage::pool_stats after = pool_.stats();
  EXPECT_EQ(after.free_pages, before.free_pages);
  EXPECT_EQ(after.split_regions, before.split_regions);
  EXPECT_EQ(pool_.check(), "");
}

TEST_P(Alloc, FreePagesWithoutAnAlignedExtentStillMeanNull) {
  // Keep one order-0 page in every region: half the pool is free, yet no order-9 page fits.
  std::vector<page*> huge;
  while (page* p = pool_.alloc_pages(9)) huge.push_back(p);
  ASSERT_EQ(huge.size(), total_regions_);
  for (page* h : huge) {
    ASSERT_EQ(pmpage::split_huge_page(h), 0);
    const pfn_t base = pmpage::page_to_pfn(h);
    for (pfn_t q = base; q < base + HPAGE_PMD_NR; ++q)
      if (q != base + 100) pmpage::put_page(pmpage::pfn_to_page(q));
  }
  EXPECT_EQ(free_pages(), total_pages_ - total_regions_);
  EXPECT_EQ(pool_.stats().split_regions, total_regions_);
  EXPECT_EQ(pool_.stats().free_regions, 0u);
  EXPECT_EQ(pool_.alloc_pages(9), nullptr);
  EXPECT_EQ(pool_.alloc_pages(10), nullptr);
  // Order 6 still fits (pages 0..63 of every region are free).
  EXPECT_NE(pool_.alloc_pages(6), nullptr);
  EXPECT_EQ(pool_.check(), "");
}

TEST_P(Alloc, WholeRegionsRunOutAfterTotalRegions) {
  std::vector<page*> got;
  while (page* p = pool_.alloc_pages(9)) got.push_back(p);
  EXPECT_EQ(got.size(), total_regions_);
  EXPECT_EQ(free_pages(), 0u);
  EXPECT_EQ(pool_.stats().free_regions, 0u);
  EXPECT_EQ(pool_.stats().split_regions, 0u) << "order-9 pages must not split regions";
  EXPECT_EQ(pool_.alloc_pages(0), nullptr);
  for (page* p : got) pmpage::free_pages(p, 9);
  EXPECT_EQ(free_pages(), total_pages_);
  EXPECT_EQ(pool_.stats().free_regions, total_regions_);
  EXPECT_EQ(pool_.check(), "");
}

TEST_P(Alloc, EveryPageCanBeAllocatedOneByOneAndAllMergeBack) {
  std::vector<page*> got;
  std::set<pfn_t> pfns;
  while (page* p = pool_.alloc_pages(0)) {
    got.push_back(p);
    pfns.insert(pmpage::page_to_pfn(p));
  }
  EXPECT_EQ(got.size(), total_pages_);
  EXPECT_EQ(pfns.size(), got.size()) << "a page was handed out twice";
  EXPECT_EQ(free_pages(), 0u);
  EXPECT_EQ(pool_.stats().split_regions, total_regions_);
  EXPECT_EQ(pool_.check(), "");
  free_on_exiting_thread([&] {  // (a volatile pool's magazine goes back to the regions at its exit)
    for (page* p : got) pmpage::put_page(p);
  });
  // Wholly free regions beyond EMPTY_SPLIT_KEPT merge at once; trim() merges the rest.
  EXPECT_LE(pool_.stats().empty_split_regions, pmpage::EMPTY_SPLIT_KEPT);
  EXPECT_LE(pool_.stats().materialised_regions, pmpage::EMPTY_SPLIT_KEPT + pool_.stats().cpu_cached_regions);
  EXPECT_GE(pool_.trim(), 1u);
  const pmpage::pool_stats s = pool_.stats();
  EXPECT_EQ(s.free_pages, total_pages_);
  EXPECT_EQ(s.split_regions, 0u);
  EXPECT_EQ(s.materialised_regions, 0u);
  EXPECT_EQ(s.free_regions, total_regions_);
  EXPECT_EQ(s.descriptor_bytes, expected_descriptor_bytes(0));
  EXPECT_EQ(pool_.check(), "");
}

TEST_P(Alloc, RandomOrdersNeverOverlapAndAreAligned) {
  std::mt19937 rng(1234);
  std::vector<std::uint8_t> owned(total_pages_, 0);
  std::uint64_t used = 0;
  for (int i = 0; i < 400; ++i) {
    const unsigned order = std::uniform_int_distribution<unsigned>(0, 10)(rng);
    page* p = pool_.alloc_pages(order);
    if (!p) continue;
    const std::uint64_t idx = index_of(p);
    ASSERT_EQ(idx % (std::uint64_t{1} << order), 0u) << "order " << order;
    for (std::uint64_t q = idx; q < idx + (std::uint64_t{1} << order); ++q) {
      ASSERT_EQ(owned[q], 0) << "page " << q << " handed out twice (order " << order << ")";
      owned[q] = 1;
    }
    used += std::uint64_t{1} << order;
    ASSERT_EQ(free_pages(), total_pages_ - used);
  }
  EXPECT_EQ(pool_.check(), "");
  EXPECT_EQ(pages_in(allocations(pool_).by_pfn), used);
}

TEST_P(Alloc, SmallOrdersSplitARegionAndCountInStats) {
  page* p = pool_.alloc_pages(0);
  ASSERT_NE(p, nullptr);
  EXPECT_TRUE(pmpage::PageSplit(p));
  pmpage::pool_stats s = pool_.stats();
  EXPECT_EQ(s.split_regions, 1u);
  EXPECT_EQ(s.materialised_regions, 1u);
  EXPECT_EQ(s.free_regions, total_regions_ - 1);
  EXPECT_EQ(s.descriptor_bytes, expected_descriptor_bytes(1));
  EXPECT_EQ(s.free_pages, total_pages_ - 1);
  EXPECT_GT(s.allocator_bytes, 0u);

  // More small pages pack into the same split region.
  page* q = pool_.alloc_pages(4);
  ASSERT_NE(q, nullptr);
  EXPECT_EQ(index_of(q) / HPAGE_PMD_NR, index_of(p) / HPAGE_PMD_NR);
  EXPECT_EQ(pool_.stats().split_regions, 1u);
}

TEST_P(Alloc, OrderZeroPagesFillOneRegionBeforeSplittingAnother) {
  for (std::size_t i = 0; i < HPAGE_PMD_NR; ++i) ASSERT_NE(pool_.alloc_pages(0), nullptr);
  EXPECT_EQ(pool_.stats().split_regions, 1u);
  ASSERT_NE(pool_.alloc_pages(0), nullptr);
  EXPECT_EQ(pool_.stats().split_regions, 2u);
}

TEST_P(Alloc, OrderZeroGoesToTheFullestSplitRegionWithRoom) {
  // Two split regions: A keeps 12 pages, B keeps 412. New order-0 pages go to B, so that A can
  // drain and merge.
  page* a = pool_.alloc_pages(9);
  page* b = pool_.alloc_pages(9);
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  ASSERT_EQ(pmpage::split_huge_page(a), 0);
  ASSERT_EQ(pmpage::split_huge_page(b), 0);
  const pfn_t pa = pmpage::page_to_pfn(a), pb = pmpage::page_to_pfn(b);
  for (pfn_t i = 12; i < HPAGE_PMD_NR; ++i) pmpage::put_page(pmpage::pfn_to_page(pa + i));
  for (pfn_t i = 412; i < HPAGE_PMD_NR; ++i) pmpage::put_page(pmpage::pfn_to_page(pb + i));
  for (int i = 0; i < 100; ++i) {
    page* p = pool_.alloc_pages(0);
    ASSERT_NE(p, nullptr);
    const pfn_t pfn = pmpage::page_to_pfn(p);
    EXPECT_TRUE(pfn >= pb && pfn < pb + HPAGE_PMD_NR) << "allocation " << i << " went elsewhere";
  }
  EXPECT_EQ(pool_.stats().split_regions, 2u);
}

TEST_P(Alloc, FreeingAPageMakesItAllocatableAgain) {
  std::vector<page*> got;
  while (page* p = pool_.alloc_pages(9)) got.push_back(p);
  const pfn_t victim = pmpage::page_to_pfn(got[got.size() / 2]);
  pmpage::put_page(got[got.size() / 2]);
  page* again = pool_.alloc_pages(9);
  ASSERT_NE(again, nullptr);
  EXPECT_EQ(pmpage::page_to_pfn(again), victim);
  EXPECT_EQ(pmpage::page_count(again), 1);
}

TEST_P(Alloc, BulkAllocatesDistinctPagesEachWithCountOne) {
  std::vector<page*> out(300, nullptr);
  ASSERT_EQ(pool_.alloc_pages_bulk(0, out.size(), out.data()), out.size());
  std::set<pfn_t> pfns;
  for (page* p : out) {
    ASSERT_NE(p, nullptr);
    EXPECT_EQ(pmpage::page_count(p), 1);
    EXPECT_EQ(pmpage::compound_order(p), 0u);
    pfns.insert(pmpage::page_to_pfn(p));
  }
  EXPECT_EQ(pfns.size(), out.size());
  EXPECT_EQ(free_pages(), total_pages_ - out.size());
  EXPECT_EQ(allocations(pool_).by_pfn.size(), out.size()) << "each bulk page is its own allocation";
  for (page* p : out) pmpage::put_page(p);
  EXPECT_EQ(free_pages(), total_pages_);
  EXPECT_EQ(pool_.check(), "");
}

TEST_P(Alloc, BulkOfHigherOrdersIsAlignedAndCompound) {
  std::vector<page*> out(20, nullptr);
  ASSERT_EQ(pool_.alloc_pages_bulk(3, out.size(), out.data()), out.size());
  for (page* p : out) {
    EXPECT_EQ(pmpage::page_to_pfn(p) % 8, 0u);
    EXPECT_EQ(pmpage::compound_order(p), 3u);
    EXPECT_EQ(pmpage::page_count(p), 1);
  }
  EXPECT_EQ(free_pages(), total_pages_ - 20 * 8);
}

TEST_P(Alloc, BulkReturnsHowManyFitWhenThePoolRunsOut) {
  std::vector<page*> out(total_regions_ + 5, nullptr);
  EXPECT_EQ(pool_.alloc_pages_bulk(9, out.size(), out.data()), total_regions_);
  EXPECT_EQ(free_pages(), 0u);
  EXPECT_EQ(pool_.alloc_pages_bulk(0, 1, out.data()), 0u);
  EXPECT_EQ(pool_.alloc_pages_bulk(0, 0, out.data()), 0u);
  EXPECT_EQ(pool_.check(), "");
}

TEST_P(Alloc, AllocPagesToStoresTheHeadPfnInTheSlot) {
  pfn_t* slots = root_slots(pool_);
  page* p = pool_.alloc_pages_to(0, &slots[0]);
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(slots[0], pmpage::page_to_pfn(p));
  page* q = pool_.alloc_pages_to(9, &slots[1]);
  ASSERT_NE(q, nullptr);
  EXPECT_EQ(slots[1], pmpage::page_to_pfn(q));
  EXPECT_EQ(pmpage::compound_order(q), 9u);
  EXPECT_EQ(pmpage::page_count(q), 1);
  EXPECT_EQ(free_pages(), total_pages_ - 1 - HPAGE_PMD_NR);

  EXPECT_EQ(pool_.free_pages_from(&slots[0]), 0);
  EXPECT_EQ(slots[0], 0u);
  EXPECT_EQ(pool_.free_pages_from(&slots[1]), 0);
  EXPECT_EQ(slots[1], 0u);
  EXPECT_EQ(free_pages(), total_pages_);
  pool_.trim();
  EXPECT_EQ(pool_.stats().split_regions, 0u);
  EXPECT_EQ(pool_.check(), "");
}

TEST_P(Alloc, AllocPagesToSlotInTheDataArea) {
  // A slot inside an allocated page of the pool (engines keep pfns in their own pages).
  page* table = pool_.alloc_pages(0);
  ASSERT_NE(table, nullptr);
  auto* slots = static_cast<pfn_t*>(pmpage::page_address(table));
  slots[5] = 0;
  page* p = pool_.alloc_pages_to(2, &slots[5]);
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(slots[5], pmpage::page_to_pfn(p));
  EXPECT_EQ(pool_.free_pages_from(&slots[5]), 0);
  EXPECT_EQ(slots[5], 0u);
  EXPECT_EQ(free_pages(), total_pages_ - 1);
}

TEST_P(Alloc, AllocPagesToLeavesTheSlotAloneOnFailure) {
  pfn_t* slots = root_slots(pool_);
  slots[3] = 0;
  EXPECT_EQ(pool_.alloc_pages_to(pmpage::MAX_PAGE_ORDER, &slots[3]), nullptr);
  EXPECT_EQ(slots[3], 0u);
  EXPECT_EQ(free_pages(), total_pages_);
}

TEST_P(Alloc, FreePagesFromIsBusyWhileOtherReferencesAreHeld) {
  pfn_t* slots = root_slots(pool_);
  page* p = pool_.alloc_pages_to(3, &slots[0]);
  ASSERT_NE(p, nullptr);
  const pfn_t pfn = slots[0];
  pmpage::get_page(pmpage::pfn_to_page(pfn + 5));  // a reference through a tail
  EXPECT_EQ(pool_.free_pages_from(&slots[0]), -EBUSY);
  EXPECT_EQ(slots[0], pfn) << "a busy free must leave the slot alone";
  EXPECT_EQ(pmpage::page_count(p), 2);
  EXPECT_EQ(free_pages(), total_pages_ - 8);
  pmpage::put_page(p);
  EXPECT_EQ(pool_.free_pages_from(&slots[0]), 0);
  EXPECT_EQ(slots[0], 0u);
  EXPECT_EQ(free_pages(), total_pages_);
}

TEST_F(AllocPersistent, AllocPagesToSurvivesReopen) {
  pfn_t* slots = root_slots(pool_);
  for (unsigned i = 0; i < 12; ++i) ASSERT_NE(pool_.alloc_pages_to(i % 11, &slots[i]), nullptr);
  ASSERT_EQ(pool_.free_pages_from(&slots[4]), 0);
  std::map<pfn_t, unsigned> expected;
  for (unsigned i = 0; i < 12; ++i)
    if (slots[i]) expected[slots[i]] = i % 11;
  ASSERT_EQ(expected.size(), 11u);

  reopen();
  slots = root_slots(pool_);
  EXPECT_EQ(slots[4], 0u);
  std::map<pfn_t, unsigned> in_slots;
  for (unsigned i = 0; i < 12; ++i)
    if (slots[i]) in_slots[slots[i]] = i % 11;
  EXPECT_EQ(in_slots, expected);
  EXPECT_EQ(allocations(pool_).by_pfn, expected);
  EXPECT_EQ(pool_.check(), "");
}

INSTANTIATE_TEST_SUITE_P(, Alloc, kKinds, kind_name);
INSTANTIATE_TEST_SUITE_P(, AllocLarge, kKinds, kind_name);

}  // namespace
