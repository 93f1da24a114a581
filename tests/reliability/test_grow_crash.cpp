// test_grow_crash.cpp — a power failure at every fence of pool::grow (and after it returned)
// leaves the pool with its old size or its new one, never a half-grown pool: open accepts every
// image, its allocations and slots are those of before, check() is clean, every page of the size
// it has is allocatable, and a grow run again on an image that kept the old size completes.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <thread>

#include "crash_harness.hpp"
#include "layout.hpp"  // src/: the superblock (data_offset: what grow writes lies before it)
#include <pmpage/fsck.hpp>
#include <pmpage/testing.hpp>

using namespace pmpage;
namespace fs = std::filesystem;

namespace {

constexpr std::uint64_t MiB = 1ull << 20;

struct GrowCrash : ::testing::TestWithParam<granularity> {
  fs::path path_;
  void SetUp() override {
    path_ = fs::path("/dev/shm") / ("pmpage-grow-crash-" + std::to_string(::getpid()) + "-" +
                                    std::to_string(int(GetParam())));
    fs::remove(path_);
  }
  void TearDown() override { fs::remove(path_); }
};

}  // namespace

TEST_P(GrowCrash, EveryFenceLeavesTheOldOrTheNewSizeAndCheckIsClean) {
  pmpage::testing::pool_state before;
  std::uint64_t old_regions = 0, data_offset = 0;
  {
    pool::options o;
    o.size = 8 * MiB;
    o.max_size = 32 * MiB;
    pool p = pool::create(path_, o);
    auto* slots = static_cast<pfn_t*>(p.root());
    // Something to keep: owned and plain pages, small and large, and a slot naming each.
    ASSERT_NE(p.alloc_pages_to(0, &slots[0]), nullptr);
    ASSERT_NE(p.alloc_pages_to(4, &slots[1]), nullptr);
    ASSERT_NE(p.alloc_pages_to(9, &slots[2]), nullptr);
    page* plain = p.alloc_pages(1);
    ASSERT_NE(plain, nullptr);
    slots[3] = page_to_pfn(plain);
    ASSERT_EQ(p.persist(&slots[3], 8), 0);
    before = pmpage::testing::read_state(p);
    old_regions = p.stats().total_regions;
  }
  {
    detail::superblock sb{};
    std::ifstream in(path_, std::ios::binary);
    in.read(reinterpret_cast<char*>(&sb), sizeof sb);
    data_offset = sb.data_offset;
  }
  pmpage::testing::crash_options co;
  co.tracked = data_offset;  // grow writes only superblocks and region words
  co.granularity = GetParam();
  std::uint64_t new_regions = 0;
  std::map<std::string, int> seen;
  const auto rep = pmpage::testing::run_crash_test(
      path_, co,
      [&](const std::shared_ptr<persistence>& device) {
        pool::grow_options g;
        g.backend = device;
        new_regions = pool::grow(path_, 24 * MiB, g).new_regions;
      },
      [&](const fs::path& image, const pmpage::testing::crash_point& at) -> std::string {
        // Before open repairs anything: what the crash left is recovery's work, never damage,
        // a superblock copy torn mid-write among it (pmpage check exits 0).
        {
          const pmpage::fsck::report r = pmpage::fsck::check(image);
          if (r.exit_code() != 0) {
            std::string why = "pmpage check before open: exit " + std::to_string(r.exit_code());
            for (const auto& p : r.problems) why += "; " + p.rule + " " + p.structure + ": " + p.what;
            return why;
          }
        }
        std::uint64_t regions = 0;
        {
          pool q = pool::open(image);
          regions = q.stats().total_regions;
          if (regions != old_regions && regions != new_regions)
            return "half-grown: " + std::to_string(regions) + " regions (old " + std::to_string(old_regions) + ", new " +
                   std::to_string(new_regions) + ")";
          if (at.fence == 0 && regions != new_regions) return "grow returned but the new size is not durable";
          if (std::string why = q.check(); !why.empty()) return "check: " + why;
          if (!(pmpage::testing::read_state(q) == before)) return "the allocations or slots changed";
          if (q.end_pfn() - q.start_pfn() != regions * 512) return "pfn range does not match the size";
          // Every free region of the size it has is allocatable.
          std::uint64_t got = 0;
          while (q.alloc_pages(9) != nullptr) ++got;
          if (got + 1 + 1 != regions)  // the order-9 page and the region the small pages split
            return "allocated " + std::to_string(got) + " free regions of " + std::to_string(regions);
        }
        ++seen[regions == new_regions ? "new size" : "old size"];
        if (regions == old_regions) {
          // A grow run again on what the crash left completes it.
          if (pool::grow(image, 24 * MiB).new_regions != new_regions) return "grow again: a different size";
          pool q = pool::open(image);
          if (q.stats().total_regions != new_regions || !q.check().empty()) return "grow again did not complete";
        }
        return {};
      });
  EXPECT_TRUE(rep.ok()) << rep.describe();
  EXPECT_EQ(rep.fences, 3u) << "region words, superblock B, superblock A";
  EXPECT_GT(seen["old size"], 0);
  EXPECT_GT(seen["new size"], 0);
  pool p = pool::open(path_);
  EXPECT_EQ(p.stats().total_regions, new_regions);
  EXPECT_TRUE(pmpage::testing::read_state(p) == before);
}

// pool.grow on an open pool while another thread publishes pages into slots (alloc_pages_to):
// at every fence of either thread, the image opens with the old or the new size, check() is
// clean, the pages of before are there, and every slot the other thread filled owns its page.
TEST_P(GrowCrash, OpenPoolGrowRacingSlotAllocationsLeavesTheOldOrTheNewSize) {
  constexpr unsigned FIRST = 8, COUNT = 16;  // the racing thread's root slots
  pmpage::testing::pool_state before;
  std::uint64_t old_regions = 0, data_offset = 0;
  {
    pool::options o;
    o.size = 8 * MiB;
    o.max_size = 32 * MiB;
    pool p = pool::create(path_, o);
    auto* slots = static_cast<pfn_t*>(p.root());
    ASSERT_NE(p.alloc_pages_to(0, &slots[0]), nullptr);
    ASSERT_NE(p.alloc_pages_to(9, &slots[1]), nullptr);
    before = pmpage::testing::read_state(p);
    old_regions = p.stats().total_regions;
  }
  {
    detail::superblock sb{};
    std::ifstream in(path_, std::ios::binary);
    in.read(reinterpret_cast<char*>(&sb), sizeof sb);
    data_offset = sb.data_offset;
  }
  pmpage::testing::crash_options co;
  co.tracked = data_offset;
  co.granularity = GetParam();
  co.random_subsets = 1;
  std::uint64_t new_regions = 0;
  std::map<std::string, int> seen;
  const auto rep = pmpage::testing::run_crash_test(
      path_, co,
      [&](const std::shared_ptr<persistence>& device) {
        pool::open_options oo;
        oo.backend = device;
        pool p = pool::open(path_, oo);
        auto* slots = static_cast<pfn_t*>(p.root());
        std::thread t([&] {
          for (unsigned i = 0; i < COUNT; ++i) ASSERT_NE(p.alloc_pages_to(i % 2 ? 0 : 4, &slots[FIRST + i]), nullptr);
        });
        ASSERT_EQ(p.grow(24 * MiB), 0);
        t.join();
        new_regions = p.stats().total_regions;
      },
      [&](const fs::path& image, const pmpage::testing::crash_point& at) -> std::string {
        pool q = pool::open(image);
        const std::uint64_t regions = q.stats().total_regions;
        if (regions != old_regions && regions != new_regions)
          return "half-grown: " + std::to_string(regions) + " regions";
        if (at.fence == 0 && regions != new_regions) return "grow returned but the new size is not durable";
        if (std::string why = q.check(); !why.empty()) return "check: " + why;
        auto* slots = static_cast<pfn_t*>(q.root());
        if (slots[0] != before.slots[0] || slots[1] != before.slots[1]) return "a slot of before changed";
        std::vector<pfn_t*> list = {&slots[0], &slots[1]};
        for (unsigned i = 0; i < COUNT; ++i) list.push_back(&slots[FIRST + i]);
        const pool::slot_check c = q.check_slots(list);
        if (!c.clean()) return "slots: " + c.describe();
        ++seen[regions == new_regions ? "new size" : "old size"];
        return {};
      });
  EXPECT_TRUE(rep.ok()) << rep.describe();
  EXPECT_GT(rep.fences, 3u);
  EXPECT_GT(seen["old size"], 0);
  EXPECT_GT(seen["new size"], 0);
}

INSTANTIATE_TEST_SUITE_P(Models, GrowCrash, ::testing::Values(granularity::cache_line, granularity::byte),
                         [](const auto& info) { return info.param == granularity::byte ? "Byte" : "CacheLine"; });
