// Threads: every function is thread-safe. Threads allocate, free, reference and lock their own
// pages concurrently (sharing split regions through the allocator's packing), share references to
// one page, race the last put, and translate while regions split and merge under them.
#include <atomic>
#include <chrono>
#include <random>
#include <set>
#include <thread>

#include "test_util.hpp"

namespace {

using namespace pmtest;
using pmpage::HPAGE_PMD_NR;
using pmpage::page;
using pmpage::pfn_t;

class Threads : public Kinds<PoolTest> {
 protected:
  static constexpr int kThreads = 4;
};

TEST_P(Threads, ConcurrentAllocFreeGetPutLockOnOwnPages) {
  struct held {
    page* p;
    unsigned order;
  };
  std::vector<std::vector<held>> kept(kThreads);
  std::atomic<int> corrupted{0}, failed_checks{0};

  auto worker = [&](int id) {
    std::mt19937 rng(static_cast<unsigned>(id) * 7919u + 1);
    std::vector<held>& mine = kept[id];
    const std::uint64_t tag = 0xabc0000000000000ULL | static_cast<std::uint64_t>(id);
    for (int i = 0; i < 3000; ++i) {
      const unsigned r = rng() % 100;
      if (r < 45 || mine.empty()) {
        const unsigned order = (rng() % 8 == 0) ? 9u : static_cast<unsigned>(rng() % 4);
        page* p = nullptr;
        if (rng() % 3 == 0) {
          page* one = nullptr;
          if (pool_.alloc_pages_bulk(order, 1, &one) == 1) p = one;
        } else {
          p = pool_.alloc_pages(order);
        }
        if (!p) continue;
        // Stamp the data: a page handed to two threads at once shows up as a wrong stamp.
        *static_cast<volatile std::uint64_t*>(pmpage::page_address(p)) = tag;
        pmpage::set_page_private(p, tag);
        mine.push_back({p, order});
      } else if (r < 85) {
        const std::size_t k = rng() % mine.size();
        held h = mine[k];
        if (*static_cast<volatile std::uint64_t*>(pmpage::page_address(h.p)) != tag ||
            pmpage::page_private(h.p) != tag)
          corrupted.fetch_add(1);
        if (pmpage::page_count(h.p) != 1 || pmpage::compound_order(h.p) != h.order) failed_checks.fetch_add(1);
        mine[k] = mine.back();
        mine.pop_back();
        if (rng() % 2)
          pmpage::put_page(h.p);
        else
          pmpage::free_pages(h.p, h.order);
      } else {
        held h = mine[rng() % mine.size()];
        pmpage::get_page(h.p);
        pmpage::lock_page(h.p);
        pmpage::SetPageDirty(h.p);
        if (!pmpage::TestClearPageDirty(h.p)) failed_checks.fetch_add(1);
        pmpage::unlock_page(h.p);
        pmpage::put_page(h.p);
      }
    }
  };

  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) threads.emplace_back(worker, t);
  for (auto& t : threads) t.join();

  EXPECT_EQ(corrupted.load(), 0) << "a page was handed to two owners at once";
  EXPECT_EQ(failed_checks.load(), 0);
  EXPECT_EQ(pool_.check(), "");

  // What the threads still hold is exactly what the pool has allocated.
  std::map<pfn_t, unsigned> expected;
  for (const auto& v : kept)
    for (const held& h : v) EXPECT_TRUE(expected.emplace(pmpage::page_to_pfn(h.p), h.order).second);
  EXPECT_EQ(allocations(pool_).by_pfn, expected);
  EXPECT_EQ(free_pages(), total_pages_ - pages_in(expected));

  for (const auto& v : kept)
    for (const held& h : v) pmpage::put_page(h.p);
  pool_.trim();
  const pmpage::pool_stats s = pool_.stats();
  EXPECT_EQ(s.free_pages, total_pages_);
  EXPECT_EQ(s.split_regions, 0u);
  EXPECT_EQ(s.descriptor_bytes, expected_descriptor_bytes(0));
  EXPECT_EQ(pool_.check(), "");
}

TEST_P(Threads, ConcurrentAllocPagesToAndFreePagesFromOnOwnSlots) {
  pfn_t* slots = root_slots(pool_);
  constexpr int kPerThread = 16;
  std::atomic<int> errors{0};
  auto worker = [&](int id) {
    std::mt19937 rng(static_cast<unsigned>(id) + 99);
    pfn_t* mine = slots + id * kPerThread;
    for (int i = 0; i < 1500; ++i) {
      pfn_t* slot = &mine[rng() % kPerThread];
      if (*slot == 0) {
        const unsigned order = (rng() % 6 == 0) ? 9u : static_cast<unsigned>(rng() % 3);
        page* p = pool_.alloc_pages_to(order, slot);
        if (p && *slot != pmpage::page_to_pfn(p)) errors.fetch_add(1);
      } else if (pool_.free_pages_from(slot) != 0 || *slot != 0) {
        errors.fetch_add(1);
      }
    }
  };
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) threads.emplace_back(worker, t);
  for (auto& t : threads) t.join();
  EXPECT_EQ(errors.load(), 0);
  EXPECT_EQ(pool_.check(), "");

  std::set<pfn_t> in_slots;
  for (int i = 0; i < kThreads * kPerThread; ++i)
    if (slots[i]) {
      EXPECT_TRUE(in_slots.insert(slots[i]).second);
    }
  const auto snap = allocations(pool_);
  std::set<pfn_t> allocated;
  for (const auto& [pfn, order] : snap.by_pfn) allocated.insert(pfn);
  EXPECT_EQ(allocated, in_slots);
  EXPECT_EQ(free_pages(), total_pages_ - pages_in(snap.by_pfn));
}

// An engine may act on a slot the moment it sees it filled, while alloc_pages_to is still
// finishing (its second fence, its intent's retirement). Every slot call on that page then waits
// for the publisher instead of failing or acting under it (issue #18, defect 0): free_pages_from
// and move_pages_owner of a slot another thread just published succeed, every time, and the
// pool ends consistent with every page in exactly one slot.
TEST_P(Threads, ConcurrentFreeAndMoveOfJustPublishedSlotsWaitForThePublisher) {
  pfn_t* slots = root_slots(pool_);
  constexpr int kSlots = 8, kRounds = 400;
  std::atomic<int> failed_free{0}, failed_move{0}, failed_alloc{0};
  std::atomic<bool> stop{false};
  std::thread publisher([&] {
    for (int i = 0; i < kRounds * kSlots; ++i) {
      pfn_t* s = &slots[i % kSlots];
      while (std::atomic_ref<pfn_t>(*s).load(std::memory_order_acquire) != 0) std::this_thread::yield();
      if (!pool_.alloc_pages_to(i % 5 == 0 ? 9u : 0u, s)) failed_alloc.fetch_add(1);
    }
    stop.store(true);
  });
  // Frees slots 0..3 through the slot, moves 4..7 to a second array and frees them there.
  std::thread consumer([&] {
    for (;;) {
      const bool last = stop.load();
      for (int k = 0; k < kSlots; ++k) {
        pfn_t* s = &slots[k];
        if (std::atomic_ref<pfn_t>(*s).load(std::memory_order_acquire) == 0) continue;
        if (k < kSlots / 2) {
          if (pool_.free_pages_from(s) != 0) failed_free.fetch_add(1);
        } else {
          pfn_t* d = &slots[kSlots + k];
          if (pool_.move_pages_owner(s, d) != 0) failed_move.fetch_add(1);
          if (pool_.free_pages_from(d) != 0) failed_free.fetch_add(1);
        }
      }
      if (last) break;
    }
  });
  publisher.join();
  consumer.join();
  EXPECT_EQ(failed_alloc.load(), 0);
  EXPECT_EQ(failed_free.load(), 0) << "free_pages_from of a slot being published failed (-EBUSY) instead of waiting";
  EXPECT_EQ(failed_move.load(), 0) << "move_pages_owner of a slot being published failed instead of waiting";
  EXPECT_EQ(pool_.check(), "");
  for (int k = 0; k < 2 * kSlots; ++k) EXPECT_EQ(slots[k], 0u) << "slot " << k;
  EXPECT_EQ(free_pages(), total_pages_);
}

TEST_P(Threads, ConcurrentGetPutOnOneSharedPageKeepsTheCount) {
  page* small = pool_.alloc_pages(3);
  page* huge = pool_.alloc_pages(9);
  ASSERT_TRUE(small && huge);
  for (page* shared : {small, huge}) {
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t)
      threads.emplace_back([shared, t] {
        // Each thread references the compound page through a different page of it.
        page* via = pmpage::pfn_to_page(pmpage::page_to_pfn(shared) + static_cast<pfn_t>(t));
        for (int i = 0; i < 100000; ++i) {
          if (i % 2)
            pmpage::get_page(via);
          else if (!pmpage::get_page_unless_zero(via))
            std::abort();
          pmpage::put_page(via);
        }
      });
    for (auto& t : threads) t.join();
    EXPECT_EQ(pmpage::page_count(shared), 1);
  }
  EXPECT_EQ(free_pages(), total_pages_ - 8 - HPAGE_PMD_NR);
  EXPECT_EQ(pool_.check(), "");
}

TEST_P(Threads, RacingLastPutsFreeExactlyOnce) {
  // Several threads each own one reference; they drop them at the same moment. Exactly one put
  // must free the page: a double free would be reported as misuse (and fail the test), a missed
  // one would leave the page allocated.
  for (int round = 0; round < 300; ++round) {
    const unsigned order = (round % 3 == 0) ? 0u : (round % 3 == 1) ? 2u : 9u;
    page* p = pool_.alloc_pages(order);
    ASSERT_NE(p, nullptr);
    for (int t = 1; t < kThreads; ++t) pmpage::get_page(p);
    std::atomic<int> ready{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t)
      threads.emplace_back([&, t] {
        ready.fetch_add(1);
        while (ready.load() < kThreads) std::this_thread::yield();
        pmpage::put_page(pmpage::pfn_to_page(pmpage::page_to_pfn(p) + static_cast<pfn_t>(t % (1 << order))));
      });
    for (auto& t : threads) t.join();
    ASSERT_EQ(free_pages(), total_pages_) << "round " << round;
  }
  pool_.trim();
  const pmpage::pool_stats s = pool_.stats();
  EXPECT_EQ(s.split_regions, 0u);
  EXPECT_EQ(pool_.check(), "");
}

TEST_P(Threads, TranslationStaysCorrectWhileRegionsSplitAndMerge) {
  // One thread splits and merges regions over and over (allocating and freeing the only page of
  // a region, then trim()); the others walk every pfn through the translation and reference API. Free pages
  // must read count 0 and be their own head whatever the state of their region.
  std::atomic<bool> stop{false};
  std::atomic<std::uint64_t> cycles{0}, bad{0};
  std::thread churn([&] {
    while (!stop.load()) {
      page* p = pool_.alloc_pages(static_cast<unsigned>(cycles.load() % 3));
      if (!p) {
        bad.fetch_add(1000000);
        return;
      }
      pmpage::put_page(p);
      pool_.trim();  // merge now (the hysteresis would keep the region split)
      cycles.fetch_add(1);
    }
  });
  std::vector<std::thread> readers;
  for (int t = 0; t < 2; ++t)
    readers.emplace_back([&] {
      char* data = data_start(pool_);
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(500);
      while (std::chrono::steady_clock::now() < deadline) {
        for (pfn_t pfn = pool_.start_pfn(); pfn < pool_.start_pfn() + 4 * HPAGE_PMD_NR; ++pfn) {
          page* p = pmpage::pfn_to_page(pfn);
          if (pmpage::page_to_pfn(p) != pfn) bad.fetch_add(1);
          if (pmpage::virt_to_page(data + (pfn - pool_.start_pfn()) * pmpage::PAGE_SIZE) != p) bad.fetch_add(1);
          const int c = pmpage::page_count(p);
          if (c < 0 || c > 1) bad.fetch_add(1);
          page* h = pmpage::compound_head(p);
          if (!h || pmpage::page_to_pfn(h) > pfn || pfn - pmpage::page_to_pfn(h) >= 4) bad.fetch_add(1);
        }
      }
    });
  for (auto& t : readers) t.join();
  stop.store(true);
  churn.join();
  EXPECT_EQ(bad.load(), 0u);
  EXPECT_GT(cycles.load(), 10u);
  EXPECT_EQ(free_pages(), total_pages_);
  pool_.trim();
  EXPECT_EQ(pool_.stats().split_regions, 0u);
  EXPECT_EQ(pool_.check(), "");
}

TEST_P(Threads, ConcurrentAllocationsInOneSplitRegionNeverCollide) {
  // All threads allocate order-0 pages at once; packing puts them into the same split regions.
  std::vector<std::vector<pfn_t>> got(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([&, t] {
      for (int i = 0; i < 700; ++i)
        if (page* p = pool_.alloc_pages(0)) got[t].push_back(pmpage::page_to_pfn(p));
    });
  for (auto& t : threads) t.join();
  std::set<pfn_t> all;
  std::size_t n = 0;
  for (const auto& v : got) {
    n += v.size();
    all.insert(v.begin(), v.end());
  }
  EXPECT_EQ(n, std::size_t{kThreads} * 700);
  EXPECT_EQ(all.size(), n) << "the same page was handed out twice";
  EXPECT_EQ(free_pages(), total_pages_ - n);
  EXPECT_LE(pool_.stats().split_regions, (n + HPAGE_PMD_NR - 1) / HPAGE_PMD_NR + kThreads);
  EXPECT_EQ(pool_.check(), "");
}

INSTANTIATE_TEST_SUITE_P(, Threads, kKinds, kind_name);

}  // namespace
