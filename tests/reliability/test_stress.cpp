// test_stress.cpp — several threads allocate, free, reference, lock, split and merge at once;
// at every barrier the invariant checker must hold and the threads' own records must match
// the pool. Run under ThreadSanitizer by scripts/test.sh.
#include <gtest/gtest.h>
#include <unistd.h>

#include <barrier>
#include <filesystem>
#include <map>
#include <random>
#include <thread>

#include "crash_harness.hpp"

using namespace pmpage;

namespace {

struct owned {
  std::map<pfn_t, unsigned> pages;  // head pfn -> order, allocated by this thread
};

void worker(pool& p, unsigned id, unsigned rounds, unsigned ops, std::barrier<>& sync, owned& mine, page* shared) {
  std::mt19937_64 rng(1000 + id);
  auto* slots = static_cast<pfn_t*>(p.root()) + id * 8;  // 8 slots per thread
  for (unsigned round = 0; round < rounds; ++round) {
    for (unsigned i = 0; i < ops; ++i) {
      const unsigned kind = unsigned(rng() % 100);
      auto pick = [&]() -> std::pair<pfn_t, unsigned> {
        if (mine.pages.empty()) return {0, 0};
        auto it = mine.pages.begin();
        std::advance(it, rng() % mine.pages.size());
        return *it;
      };
      if (kind < 30) {
        const unsigned order = rng() % 5 == 0 ? unsigned(rng() % 11) : unsigned(rng() % 3);
        if (page* pg = p.alloc_pages(order)) mine.pages[page_to_pfn(pg)] = order;
      } else if (kind < 55) {
        auto [pfn, order] = pick();
        if (!pfn) continue;
        page* pg = pfn_to_page(pfn);
        get_page(pg);                                  // a second reference...
        put_page(pg + (order ? 1 : 0));                // ...dropped through a tail
        free_pages(pg, order);                         // the last one frees
        mine.pages.erase(pfn);
      } else if (kind < 65) {
        auto [pfn, order] = pick();
        if (!pfn) continue;
        page* pg = pfn_to_page(pfn);
        lock_page(pg);
        SetPageDirty(pg);
        set_page_private(pg, id);
        EXPECT_EQ(page_private(pg), id);
        EXPECT_TRUE(TestClearPageDirty(pg));
        unlock_page(pg);
      } else if (kind < 72) {
        auto [pfn, order] = pick();
        if (!pfn || order != HPAGE_PMD_ORDER) continue;
        EXPECT_EQ(split_huge_page(pfn_to_page(pfn)), 0);
        mine.pages.erase(pfn);
        for (pfn_t j = 0; j < HPAGE_PMD_NR; ++j) mine.pages[pfn + j] = 0;
      } else if (kind < 86) {
        const unsigned s = unsigned(rng() % 8);
        if (slots[s]) {
          EXPECT_EQ(p.free_pages_from(&slots[s]), 0);
        } else {
          p.alloc_pages_to(unsigned(rng() % 4), &slots[s]);
        }
      } else if (kind < 96) {
        lock_page(shared);  // contended sleeping lock
        get_page(shared);
        put_page(shared);
        unlock_page(shared);
      } else {
        std::vector<page*> out(16);
        const std::size_t n = p.alloc_pages_bulk(0, out.size(), out.data());
        for (std::size_t j = 0; j < n; ++j) mine.pages[page_to_pfn(out[j])] = 0;
      }
    }
    sync.arrive_and_wait();  // main checks
    sync.arrive_and_wait();  // main done
  }
}

TEST(Stress, ConcurrentAllocFreeGetPutLockSplitMergeKeepEveryInvariant) {
  const std::string path = "/dev/shm/pmpage-stress-" + std::to_string(::getpid());
  pool::options o;
  o.size = 96ull << 20;
  pool p = pool::create(path, o);
  page* shared = p.alloc_pages(0);
  ASSERT_NE(shared, nullptr);
  constexpr unsigned threads = 4, rounds = 6, ops = 400;
  std::barrier sync(threads + 1);
  std::vector<owned> own(threads);
  std::vector<std::thread> ts;
  for (unsigned t = 0; t < threads; ++t)
    ts.emplace_back(worker, std::ref(p), t, rounds, ops, std::ref(sync), std::ref(own[t]), shared);
  for (unsigned round = 0; round < rounds; ++round) {
    sync.arrive_and_wait();
    EXPECT_EQ(p.check(), "") << "round " << round;
    // Everything the threads own (pages and slots) is allocated, and nothing else is.
    std::map<pfn_t, unsigned> expected{{page_to_pfn(shared), 0}};
    for (auto& o2 : own) expected.insert(o2.pages.begin(), o2.pages.end());
    const auto* slots = static_cast<const pfn_t*>(p.root());
    for (unsigned s = 0; s < threads * 8; ++s)
      if (slots[s]) expected.emplace(slots[s], ~0u);
    const auto state = pmpage::testing::read_state(p);
    EXPECT_EQ(state.allocations.size(), expected.size()) << "round " << round;
    for (auto& [pfn, order] : expected) {
      auto it = state.allocations.find(pfn);
      ASSERT_NE(it, state.allocations.end()) << "pfn " << pfn << " owned but not allocated";
      if (order != ~0u) EXPECT_EQ(it->second, order);
    }
    EXPECT_EQ(page_count(shared), 1);
    sync.arrive_and_wait();
  }
  for (auto& t : ts) t.join();
  EXPECT_EQ(p.check(), "");
  p.close();
  std::filesystem::remove(path);
}

}  // namespace
