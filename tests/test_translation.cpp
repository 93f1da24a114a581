// Translation: pfn_to_page, page_to_pfn, page_address, virt_to_page, pfn_valid, virt_addr_valid.
// The contract holds for every valid pfn whatever its state (free, allocated, split or not) and
// descriptor pointers never move while the pool is open.
#include <atomic>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <thread>

#include "pmpage/pmpage.h"
#include "registry.hpp"
#include "test_util.hpp"

namespace {

using namespace pmtest;
using pmpage::page;
using pmpage::PAGE_SIZE;
using pmpage::pfn_t;

class TranslationBase : public PoolTest {
 protected:
  // Checks the round trips for every pfn of pool_ and returns how many pfns failed (so a broken
  // library reports one failure, not sixteen thousand).
  void expect_round_trips_for_every_pfn() {
    char* data = data_start(pool_);
    std::uint64_t bad = 0;
    pfn_t first_bad = 0;
    for (pfn_t pfn = pool_.start_pfn(); pfn < pool_.end_pfn(); ++pfn) {
      page* p = pmpage::pfn_to_page(pfn);
      char* addr = data + (pfn - start_) * PAGE_SIZE;
      const bool ok = p != nullptr && pmpage::pfn_valid(pfn) && pmpage::page_to_pfn(p) == pfn &&
                      pmpage::page_address(p) == addr && pmpage::virt_to_page(addr) == p &&
                      pmpage::virt_to_page(addr + 1) == p && pmpage::virt_to_page(addr + 2049) == p &&
                      pmpage::virt_to_page(addr + PAGE_SIZE - 1) == p && pmpage::virt_addr_valid(addr);
      if (!ok && bad++ == 0) first_bad = pfn;
    }
    EXPECT_EQ(bad, 0u) << "first failing pfn index " << (first_bad - start_);
  }
};
class Translation : public Kinds<TranslationBase> {};
class TranslationPersistent : public TranslationBase {};

TEST_P(Translation, RoundTripsForEveryPfnOfAFreshPool) { expect_round_trips_for_every_pfn(); }

TEST_P(Translation, RoundTripsForEveryPfnWhateverItsState) {
  // A mix: a split region with order-0 and small compound pages, whole-region pages, a
  // multi-region compound page, a region split by split_huge_page, and free regions.
  ASSERT_NE(pool_.alloc_pages(0), nullptr);
  ASSERT_NE(pool_.alloc_pages(3), nullptr);
  ASSERT_NE(pool_.alloc_pages(8), nullptr);
  ASSERT_NE(pool_.alloc_pages(9), nullptr);
  ASSERT_NE(pool_.alloc_pages(10), nullptr);
  page* huge = pool_.alloc_pages(9);
  ASSERT_NE(huge, nullptr);
  ASSERT_EQ(pmpage::split_huge_page(huge), 0);
  pmpage::put_page(pmpage::pfn_to_page(pmpage::page_to_pfn(huge) + 7));
  ASSERT_GT(pool_.stats().split_regions, 0u);
  ASSERT_GT(pool_.stats().free_regions, 0u);
  expect_round_trips_for_every_pfn();
}

TEST_P(Translation, ConsecutivePfnsAreConsecutivePagesOfTheMapping) {
  for (pfn_t pfn = pool_.start_pfn(); pfn + 1 < pool_.end_pfn(); pfn += 97) {
    auto* a = static_cast<char*>(pmpage::page_address(pmpage::pfn_to_page(pfn)));
    auto* b = static_cast<char*>(pmpage::page_address(pmpage::pfn_to_page(pfn + 1)));
    ASSERT_EQ(b - a, static_cast<std::ptrdiff_t>(PAGE_SIZE)) << "pfn index " << pfn - start_;
  }
}

TEST_P(Translation, PageAddressIsWritableMemoryOfThePool) {
  page* p = pool_.alloc_pages(1);
  ASSERT_NE(p, nullptr);
  auto* bytes = static_cast<unsigned char*>(pmpage::page_address(p));
  for (std::size_t i = 0; i < 2 * PAGE_SIZE; ++i) bytes[i] = static_cast<unsigned char>(i);
  pool_.persist(bytes, 2 * PAGE_SIZE);
  page* second = pmpage::pfn_to_page(pmpage::page_to_pfn(p) + 1);
  EXPECT_EQ(static_cast<unsigned char*>(pmpage::page_address(second))[0],
            static_cast<unsigned char>(PAGE_SIZE));
}

TEST_P(Translation, DescriptorPointersDoNotMoveAcrossSplitAndMerge) {
  page* huge = pool_.alloc_pages(9);
  ASSERT_NE(huge, nullptr);
  const pfn_t base = pmpage::page_to_pfn(huge);
  std::vector<page*> before;
  for (pfn_t pfn = base; pfn < base + pmpage::HPAGE_PMD_NR; ++pfn) before.push_back(pmpage::pfn_to_page(pfn));

  auto same = [&](const char* when) {
    for (std::size_t i = 0; i < before.size(); ++i) {
      ASSERT_EQ(pmpage::pfn_to_page(base + i), before[i]) << when << ", page " << i;
      ASSERT_EQ(pmpage::page_to_pfn(before[i]), base + i) << when << ", page " << i;
      ASSERT_EQ(pmpage::virt_to_page(pmpage::page_address(before[i])), before[i]) << when;
    }
  };
  ASSERT_FALSE(pmpage::PageSplit(huge));
  ASSERT_EQ(pmpage::split_huge_page(huge), 0);
  ASSERT_TRUE(pmpage::PageSplit(huge));
  same("after split");
  for (page* p : before) pmpage::put_page(p);
  ASSERT_TRUE(pmpage::PageSplit(huge)) << "an empty region is kept split for a while (merge hysteresis)";
  same("after the last free");
  ASSERT_EQ(pool_.trim(), 1u);
  ASSERT_FALSE(pmpage::PageSplit(huge)) << "trim() merges it";
  same("after merge");
  // Split it again through an order-0 allocation in the same (only free) region.
  std::vector<page*> held;
  while (page* p = pool_.alloc_pages(0)) {
    held.push_back(p);
    if (pmpage::page_to_pfn(p) - base < pmpage::HPAGE_PMD_NR) break;
  }
  same("after re-split");
}

TEST_P(Translation, VirtToPageOfMemoryOutsideEveryPoolIsNull) {
  int on_stack = 0;
  auto on_heap = std::make_unique<char[]>(1 << 20);
  static char in_bss[4096];
  EXPECT_EQ(pmpage::virt_to_page(&on_stack), nullptr);
  EXPECT_EQ(pmpage::virt_to_page(on_heap.get()), nullptr);
  EXPECT_EQ(pmpage::virt_to_page(on_heap.get() + (1 << 19)), nullptr);
  EXPECT_EQ(pmpage::virt_to_page(in_bss), nullptr);
  EXPECT_EQ(pmpage::virt_to_page(nullptr), nullptr);
  EXPECT_EQ(pmpage::virt_to_page(reinterpret_cast<void*>(~std::uintptr_t{0})), nullptr);
  EXPECT_FALSE(pmpage::virt_addr_valid(&on_stack));
  EXPECT_FALSE(pmpage::virt_addr_valid(nullptr));
  // A descriptor is not pool memory either.
  EXPECT_EQ(pmpage::virt_to_page(pmpage::pfn_to_page(start_)), nullptr);
}

TEST_P(Translation, VirtToPageOfPoolMetadataAndRootIsNull) {
  // Only the data area holds pages; the superblocks, metadata and root area around it do not.
  char* data = data_start(pool_);
  EXPECT_EQ(pmpage::virt_to_page(pool_.root()), nullptr);
  EXPECT_EQ(pmpage::virt_to_page(static_cast<char*>(pool_.root()) + pool_.root_size() - 1), nullptr);
  EXPECT_EQ(pmpage::virt_to_page(pool_.base()), nullptr);
  EXPECT_EQ(pmpage::virt_to_page(data - 1), nullptr);
  EXPECT_EQ(pmpage::virt_to_page(data + total_pages_ * PAGE_SIZE), nullptr);
  EXPECT_NE(pmpage::virt_to_page(data + total_pages_ * PAGE_SIZE - 1), nullptr);
}

TEST_P(Translation, PfnValidOnlyInsideAnOpenPool) {
  EXPECT_FALSE(pmpage::pfn_valid(0));
  EXPECT_TRUE(pmpage::pfn_valid(pool_.start_pfn()));
  EXPECT_TRUE(pmpage::pfn_valid(pool_.end_pfn() - 1));
  EXPECT_FALSE(pmpage::pfn_valid(pool_.end_pfn()));
  EXPECT_FALSE(pmpage::pfn_valid(pool_.end_pfn() + 12345));
  EXPECT_FALSE(pmpage::pfn_valid(pool_.start_pfn() - 1));
  EXPECT_FALSE(pmpage::pfn_valid(~pfn_t{0}));
  EXPECT_FALSE(pmpage::pfn_valid(pfn_t{1} << 62));
}

TEST_P(Translation, ClosingThePoolInvalidatesItsPfnsAndAddresses) {
  char* data = data_start(pool_);
  const pfn_t start = pool_.start_pfn();
  pool_.close();
  EXPECT_FALSE(pmpage::pfn_valid(start));
  EXPECT_EQ(pmpage::virt_to_page(data), nullptr);
  EXPECT_FALSE(pmpage::virt_addr_valid(data));
}

TEST_F(TranslationPersistent, PfnsAndAddressesTranslateAgainAfterReopen) {
  page* p = pool_.alloc_pages(0);
  ASSERT_NE(p, nullptr);
  const pfn_t pfn = pmpage::page_to_pfn(p);
  reopen();
  page* q = pmpage::pfn_to_page(pfn);
  ASSERT_NE(q, nullptr);
  EXPECT_EQ(pmpage::page_to_pfn(q), pfn);
  EXPECT_EQ(pmpage::virt_to_page(pmpage::page_address(q)), q);
  expect_round_trips_for_every_pfn();
}

TEST_P(Translation, SeveralPoolsTranslateIndependently) {
  pmpage::pool other = create_pool(new_path("other"), 32 * MiB);
  page* a = pool_.alloc_pages(0);
  page* b = other.alloc_pages(0);
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  EXPECT_NE(pmpage::page_to_pfn(a), pmpage::page_to_pfn(b));
  for (pmpage::pool* p : {&pool_, &other}) {
    char* data = data_start(*p);
    for (pfn_t pfn = p->start_pfn(); pfn < p->end_pfn(); pfn += 61) {
      page* d = pmpage::pfn_to_page(pfn);
      ASSERT_EQ(pmpage::page_to_pfn(d), pfn);
      ASSERT_EQ(pmpage::page_address(d), data + (pfn - p->start_pfn()) * PAGE_SIZE);
      ASSERT_EQ(pmpage::virt_to_page(pmpage::page_address(d)), d);
    }
  }
  EXPECT_EQ(pmpage::virt_to_page(pmpage::page_address(b)), b);
  EXPECT_EQ(pmpage::page_count(b), 1);
}

// "Looking up a descriptor of an unsplit region allocates no memory": walk every page of a pool
// full of whole-region allocations through the read-side API and watch RssAnon.
TEST_P(Translation, LookupsInUnsplitRegionsAllocateNoMemory) {
  if (!kRssIsMeaningful) GTEST_SKIP() << "RSS is not meaningful under a sanitizer";
  std::vector<page*> huge;
  while (page* p = pool_.alloc_pages(9)) huge.push_back(p);
  ASSERT_EQ(huge.size(), total_regions_);
  const std::uint64_t descriptor_bytes = pool_.stats().descriptor_bytes;

  const long before = rss_anon_kib();
  std::uint64_t heads = 0, sum = 0;
  for (pfn_t pfn = pool_.start_pfn(); pfn < pool_.end_pfn(); ++pfn) {
    page* p = pmpage::pfn_to_page(pfn);
    sum += static_cast<std::uint64_t>(pmpage::page_count(p));
    heads += pmpage::PageHead(p) ? 1 : 0;
    sum += pmpage::compound_head(p) == p ? 1 : 0;
    sum += pmpage::PageSplit(p) ? 1000000 : 0;
    sum += pmpage::PageDirty(p) ? 1000000 : 0;
    pmpage::get_page(p);
    pmpage::put_page(p);
  }
  const long after = rss_anon_kib();

  EXPECT_EQ(heads, total_regions_);
  EXPECT_EQ(sum, total_pages_ + total_regions_);  // count 1 everywhere, one head per region
  // 32 KiB per region would be 1 MiB here; allow a little noise from the process itself.
  EXPECT_LT(after - before, 128) << "RssAnon grew by " << after - before << " KiB";
  EXPECT_EQ(pool_.stats().descriptor_bytes, descriptor_bytes);
  EXPECT_EQ(pool_.stats().materialised_regions, 0u);
}

INSTANTIATE_TEST_SUITE_P(, Translation, kKinds, kind_name);

// ---- pool identity: 64-bit pfn bases, the hashed section table and its overflow -------------------

// Chooses the pfn base of the pools created in its scope (registry.hpp's test seam), one after
// the other from `bases`.
class forced_bases {
 public:
  explicit forced_bases(std::vector<pfn_t> bases) : bases_(std::move(bases)) {
    pmpage::detail::set_pfn_base_source_for_testing([this] { return bases_.at(next_++); });
  }
  ~forced_bases() { pmpage::detail::set_pfn_base_source_for_testing({}); }

 private:
  std::vector<pfn_t> bases_;
  std::size_t next_ = 0;
};

class PoolIdentity : public TranslationBase {
 protected:
  void expect_translates(pmpage::pool& p) {
    std::uint64_t bad = 0;
    for (pfn_t pfn = p.start_pfn(); pfn < p.end_pfn(); ++pfn) {
      page* pg = pmpage::pfn_to_page(pfn);
      void* addr = pg ? pmpage::page_address(pg) : nullptr;
      bad += !(pg && pmpage::pfn_valid(pfn) && pmpage::page_to_pfn(pg) == pfn && addr &&
               pmpage::virt_to_page(addr) == pg);
    }
    EXPECT_EQ(bad, 0u) << "pfns of [" << std::hex << p.start_pfn() << ", " << p.end_pfn() << ") that failed";
  }
};

// The pfn base is 64 bits wide: pools with their identity in bits 48..63 translate like any other,
// through the one-load inline path, persistent (across close and reopen) and volatile alike.
TEST_F(PoolIdentity, PfnsWithHighBaseBitsTranslateAndSurviveReopen) {
  const pfn_t high = pfn_t{0xfedcba987} << 28, top = pmpage::detail::MAX_PFN_BASE;
  forced_bases force({high, top});
  const auto path = new_path();
  page* kept;
  {
    pmpage::pool p = create_pool(path, 8 * MiB);
    ASSERT_EQ(p.start_pfn(), high);
    expect_translates(p);
    kept = p.alloc_pages(3);
    ASSERT_NE(kept, nullptr);
    static_cast<pfn_t*>(p.root())[0] = pmpage::page_to_pfn(kept);
  }
  pmpage::pool p = pmpage::pool::open(path);
  EXPECT_EQ(p.start_pfn(), high) << "a pool's pfns are stable for its life";
  const pfn_t stored = static_cast<pfn_t*>(p.root())[0];
  EXPECT_EQ(stored >> 48, 0xfedcu);
  EXPECT_EQ(pmpage::compound_order(pmpage::pfn_to_page(stored)), 3u);
  expect_translates(p);

  pmpage::pool::volatile_options v;
  v.size = 4 * MiB;
  pmpage::pool vp = pmpage::pool::create_volatile(v);
  EXPECT_EQ(vp.start_pfn(), top);
  EXPECT_LT(vp.start_pfn(), vp.end_pfn()) << "the largest base leaves room below 2^64";
  expect_translates(vp);
  EXPECT_EQ(pmpage::detail::overflow_granules(), 0u) << "their granules hash to different entries";
}

// Two open pools whose pfn granules share an entry of the hashed table (same low 16 granule
// bits): the later one lives in the overflow table and still translates, both ways, through the
// C++ and the C inline functions; it stays correct when the other closes, and its own close
// empties the overflow.
TEST_F(PoolIdentity, PoolsWhoseGranulesShareATableEntryBothTranslate) {
  const pfn_t a_base = pfn_t{0x1234} << 32;
  const pfn_t b_base = a_base + (pfn_t{1} << (pmpage::detail::SECTION_SHIFT + pmpage::detail::SECTION_BITS));
  forced_bases force({a_base, b_base});
  const unsigned overflow_before = pmpage::detail::overflow_granules();
  pmpage::pool::volatile_options v;
  v.size = 4 * MiB;
  pmpage::pool a = pmpage::pool::create_volatile(v);
  const auto b_path = new_path();
  pmpage::pool b = create_pool(b_path, 8 * MiB);
  ASSERT_EQ(a.start_pfn(), a_base);
  ASSERT_EQ(b.start_pfn(), b_base);
  EXPECT_EQ(pmpage::detail::overflow_granules(), overflow_before + 1);
  expect_translates(a);
  expect_translates(b);
  {
    misuse_recorder rec;  // the overflow path is a lookup, not misuse
    page* pg = pmpage::pfn_to_page(b_base + 5);
    EXPECT_EQ(pmpage_pfn_to_page(b_base + 5), reinterpret_cast<pmpage_page*>(pg));
    EXPECT_TRUE(pmpage_pfn_valid(b_base + 5));
    EXPECT_EQ(pmpage_page_to_pfn(reinterpret_cast<pmpage_page*>(pg)), b_base + 5);
    EXPECT_FALSE(pmpage::pfn_valid(b.end_pfn())) << "past its end";
    EXPECT_FALSE(pmpage::pfn_valid(b_base - 1));
    EXPECT_EQ(rec.count(), 0);
  }
  a.close();
  expect_translates(b);  // not moved into the freed entry: it stays where readers look
  const pfn_t b_pfn = b_base + 9;
  b.close();
  EXPECT_EQ(pmpage::detail::overflow_granules(), overflow_before);
  misuse_recorder rec;
  EXPECT_FALSE(pmpage::pfn_valid(b_pfn));
  EXPECT_EQ(pmpage::pfn_to_page(b_pfn), nullptr);
  EXPECT_EQ(rec.count(), 1) << "a pfn of a closed pool in the overflow is misuse, reported";
}

// Readers of a pool in the overflow table never see a wrong answer while other pools sharing its
// entry register and close (which rebuilds the table under its sequence lock). TSan checks the
// lock-free reads.
TEST_F(PoolIdentity, OverflowLookupsStayRightWhileOtherPoolsComeAndGo) {
  const pfn_t step = pfn_t{1} << (pmpage::detail::SECTION_SHIFT + pmpage::detail::SECTION_BITS);
  const pfn_t a_base = pfn_t{0x2345} << 32;
  constexpr unsigned kChurn = 40;
  std::vector<pfn_t> bases = {a_base, a_base + step};
  for (unsigned i = 0; i < kChurn; ++i) bases.push_back(a_base + (2 + i % 3) * step);
  forced_bases force(bases);
  pmpage::pool::volatile_options v;
  v.size = 4 * MiB;
  pmpage::pool a = pmpage::pool::create_volatile(v);
  pmpage::pool b = pmpage::pool::create_volatile(v);  // in the overflow table
  const pfn_t probe = b.start_pfn() + 7;
  page* const expected = pmpage::pfn_to_page(probe);
  ASSERT_NE(expected, nullptr);
  std::atomic<bool> stop{false};
  std::atomic<std::uint64_t> wrong{0}, lookups{0};
  std::thread reader([&] {
    while (!stop.load(std::memory_order_relaxed)) {
      wrong += pmpage::pfn_to_page(probe) != expected || !pmpage::pfn_valid(probe);
      ++lookups;
    }
  });
  for (unsigned i = 0; i < kChurn; ++i) pmpage::pool::create_volatile(v).close();
  while (lookups.load() < 1000) std::this_thread::yield();
  stop = true;
  reader.join();
  EXPECT_EQ(wrong.load(), 0u);
  expect_translates(b);
}

// A pool larger than one pfn granule (1 TiB of pages) has a table record per granule, each
// rebased to it; pfns on both sides of the boundary translate, and closing the pool empties
// every entry. Volatile, on a sparse file: 1 TiB + 4 MiB of address space, memory only for what
// is touched.
TEST_F(PoolIdentity, APoolSpanningTwoPfnGranulesTranslatesAcrossTheBoundary) {
  const pfn_t base = pfn_t{0x31} << 36;
  forced_bases force({base});
  pmpage::pool::volatile_options v;
  v.size = (std::uint64_t{1} << 40) + 4 * MiB;
  v.backing = new_path();  // a sparse /dev/shm file: a shared mapping, no overcommit of 1 TiB
  std::ofstream{v.backing};
  std::string why;
  pmpage::pool p = [&] {
    try {
      return pmpage::pool::create_volatile(v);
    } catch (const pmpage::error& e) {
      why = e.what();
      return pmpage::pool();
    }
  }();
  if (!p.is_open()) GTEST_SKIP() << "no room for a 1 TiB volatile pool here: " << why;
  ASSERT_EQ(p.start_pfn(), base);
  const pfn_t boundary = base + (pfn_t{1} << pmpage::detail::SECTION_SHIFT);
  ASSERT_GT(p.end_pfn(), boundary);
  for (const pfn_t pfn : {base, boundary - 1, boundary, boundary + 1, p.end_pfn() - 1}) {
    page* pg = pmpage::pfn_to_page(pfn);
    ASSERT_NE(pg, nullptr) << std::hex << pfn;
    EXPECT_EQ(pmpage::page_to_pfn(pg), pfn);
    EXPECT_EQ(pmpage::virt_to_page(pmpage::page_address(pg)), pg);
    EXPECT_TRUE(pmpage::pfn_valid(pfn));
  }
  page* across = pmpage::pfn_to_page(boundary);
  EXPECT_EQ(static_cast<char*>(pmpage::page_address(across)) - static_cast<char*>(pmpage::page_address(pmpage::pfn_to_page(base))),
            std::ptrdiff_t(PAGE_SIZE) << pmpage::detail::SECTION_SHIFT);
  p.close();
  EXPECT_FALSE(pmpage::pfn_valid(base));
  EXPECT_FALSE(pmpage::pfn_valid(boundary));
}

// A pfn of a pool that is not open is rejected, whichever way its identity is drawn: the inline
// range check compares the whole 64 bits, so a pfn that shares the table entry of an open pool
// (same granule bits 28..43, other high bits) finds nothing either.
TEST_F(PoolIdentity, APfnOfAPoolThatIsNotOpenIsRejected) {
  const pfn_t base = pfn_t{0x77} << 40;
  const pfn_t alias = base + (pfn_t{0x5} << 48);  // same table entry, another pool's pfns
  forced_bases force({base});
  const auto path = new_path();
  pfn_t pfn;
  {
    pmpage::pool p = create_pool(path, 8 * MiB);
    pfn = pmpage::page_to_pfn(p.alloc_pages(0));
    misuse_recorder rec;
    EXPECT_FALSE(pmpage::pfn_valid(alias + (pfn - base)));
    EXPECT_EQ(pmpage::pfn_to_page(alias + (pfn - base)), nullptr);
    EXPECT_EQ(rec.count(), 1);
  }
  misuse_recorder rec;
  EXPECT_FALSE(pmpage::pfn_valid(pfn));
  EXPECT_EQ(pmpage::pfn_to_page(pfn), nullptr);
  EXPECT_EQ(pmpage_pfn_to_page(pfn), nullptr);
  EXPECT_FALSE(pmpage_pfn_valid(pfn));
  EXPECT_EQ(rec.count(), 2);
  EXPECT_NE(rec.last().find("not a page of any open pool"), std::string::npos) << rec.last();
}

}  // namespace
