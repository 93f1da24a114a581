// Placement with no media at all: the region buddy, the filler and the split-region bitmaps are
// DRAM-only classes (src/region_buddy.hpp, src/split_region.hpp); the pool only adds locks and
// the media recipe around them. These tests drive them directly.
#include <gtest/gtest.h>

#include <memory>
#include <random>
#include <set>

#include "region_buddy.hpp"
#include "split_region.hpp"

using namespace pmpage;
using namespace pmpage::detail;

namespace {

std::unique_ptr<page[]> regions(std::size_t n) {
  auto r = std::make_unique<page[]>(n);
  for (std::size_t i = 0; i < n; ++i) r[i].list_next_ = r[i].list_prev_ = NIL;
  return r;
}

std::unique_ptr<split_state> region_with_free(std::initializer_list<std::pair<unsigned, unsigned>> free_runs) {
  auto s = std::make_unique<split_state>();
  for (auto& w : s->free_bits) w = 0;
  s->nr_free = 0;
  for (auto [first, count] : free_runs) mark_free(*s, first, count);
  s->published = true;
  return s;
}

}  // namespace

TEST(PlacementBuddy, AllocatesAlignedBlocksBestFitAndMergesBuddiesBack) {
  constexpr std::uint64_t n = 64;
  auto r = regions(n);
  region_buddy b;
  b.init(r.get(), n);
  b.add_free_run(0, n);
  EXPECT_EQ(b.free_regions(), n);
  std::set<std::uint32_t> got;
  for (int i = 0; i < 4; ++i) {
    const std::uint32_t x = b.alloc(HPAGE_PMD_ORDER + 2);  // 4 regions
    ASSERT_NE(x, NIL);
    EXPECT_EQ(x % 4, 0u) << "naturally aligned";
    EXPECT_TRUE(got.insert(x).second);
  }
  EXPECT_EQ(b.free_regions(), n - 16);
  const std::uint32_t one = b.alloc(HPAGE_PMD_ORDER);
  ASSERT_NE(one, NIL);
  // Best fit: the single region comes from the smallest free block, next to the 4-region ones.
  EXPECT_EQ(one, 16u);
  b.free(one, HPAGE_PMD_ORDER);
  for (std::uint32_t x : got) b.free(x, HPAGE_PMD_ORDER + 2);
  EXPECT_EQ(b.free_regions(), n);
  // Everything merged back: the whole pool is one block of 64 regions again.
  EXPECT_EQ(b.alloc(HPAGE_PMD_ORDER + 6), 0u);
  EXPECT_EQ(b.alloc(HPAGE_PMD_ORDER), NIL);
}

TEST(PlacementBitmap, FindsOnlyNaturallyAlignedFreeBlocks) {
  auto s = region_with_free({{3, 5}});  // pages 3..7 free
  EXPECT_EQ(find_free_block(*s, 0), 3);
  EXPECT_EQ(find_free_block(*s, 1), 4);
  EXPECT_EQ(find_free_block(*s, 2), 4);
  EXPECT_EQ(find_free_block(*s, 3), -1) << "8 pages at 0..7 are not all free";
  EXPECT_EQ(longest_free_order(*s), 2);
  auto whole = region_with_free({{0, HPAGE_PMD_NR}});
  EXPECT_EQ(longest_free_order(*whole), int(HPAGE_PMD_ORDER));
  mark_used(*whole, 256, 1);
  EXPECT_EQ(find_free_block(*whole, 8), 0);
  EXPECT_EQ(longest_free_order(*whole), 8);
  EXPECT_EQ(whole->nr_free, HPAGE_PMD_NR - 1);
}

TEST(PlacementFiller, ServesTheFullestRegionThatHasRoomAndSkipsCachedOnes) {
  auto r = regions(4);
  filler f;
  f.init(r.get());
  auto nearly_full = region_with_free({{0, 2}});        // 2 free
  auto half = region_with_free({{0, 256}});             // 256 free
  auto empty = region_with_free({{0, HPAGE_PMD_NR}});   // wholly free (kept by the hysteresis)
  auto cached = region_with_free({{0, 100}});
  cached->cpu = 3;  // a per-CPU cache holds it: never listed
  f.update(0, *nearly_full);
  f.update(1, *half);
  f.update(2, *empty);
  f.update(3, *cached);
  EXPECT_EQ(f.size(), 3u);
  EXPECT_EQ(cached->list, 0xff);
  EXPECT_EQ(f.find(0), 0u) << "fullest first";
  EXPECT_EQ(f.find(1), 0u);
  EXPECT_EQ(f.find(2), 1u) << "the nearly full one has no aligned 4-page block";
  EXPECT_EQ(f.find(8), 1u);
  EXPECT_EQ(f.find(0, 1), 1u) << "a refill wants >= ~64 free pages when there is such a region";
  f.remove(1, *half);
  EXPECT_EQ(f.find(8), 2u) << "the wholly free region is the last choice";
  // Freeing pages moves a region to an emptier list.
  mark_free(*nearly_full, 2, 510);
  f.update(0, *nearly_full, filler::change::freed);
  EXPECT_EQ(nearly_full->longest, int(HPAGE_PMD_ORDER));
  EXPECT_EQ(f.find(0, 1), 0u) << "ties go to the most recently filed region";
}

TEST(PlacementFiller, RandomUpdatesKeepEveryRegionOnTheListItsStateNames) {
  constexpr unsigned n = 32;
  auto r = regions(n);
  filler f;
  f.init(r.get());
  std::vector<std::unique_ptr<split_state>> st;
  for (unsigned i = 0; i < n; ++i) st.push_back(region_with_free({{0, HPAGE_PMD_NR}}));
  for (unsigned i = 0; i < n; ++i) f.update(i, *st[i]);
  std::mt19937_64 rng(42);
  for (int step = 0; step < 20000; ++step) {
    const unsigned i = unsigned(rng() % n);
    split_state& s = *st[i];
    const unsigned order = unsigned(rng() % 4);
    if (rng() % 2) {
      const int pos = find_free_block(s, order);
      if (pos < 0) continue;
      mark_used(s, unsigned(pos), 1u << order);
      f.update(i, s, filler::change::allocated);
    } else {
      const unsigned first = unsigned(rng() % HPAGE_PMD_NR) & ~((1u << order) - 1);
      bool used = true;
      for (unsigned j = first; j < first + (1u << order); ++j) used = used && !(s.free_bits[j / 64] >> (j % 64) & 1);
      if (!used) continue;
      mark_free(s, first, 1u << order);
      f.update(i, s, filler::change::freed);
    }
    ASSERT_EQ(s.longest, longest_free_order(s)) << "step " << step;
    ASSERT_EQ(s.list, filler::target_list(s)) << "step " << step;
  }
  // find() returns a region that really has the block, and none fuller that has it.
  for (unsigned order = 0; order <= 8; ++order) {
    const std::uint32_t x = f.find(order);
    if (x == NIL) {
      for (auto& s : st) ASSERT_LT(find_free_block(*s, order), 0);
      continue;
    }
    ASSERT_GE(find_free_block(*st[x], order), 0);
  }
}
