// test_badblocks.cpp — bad blocks (docs/api.md "Bad blocks"): lists injected through
// open_options::bad_blocks and through the bad-block source seam (libpmem2 needs an NVDIMM to
// report any: none here). Guards: a free page in a bad block is never handed out, at any order,
// through any path (per-CPU caches, splits, merges, the buddy); an allocated one is marked
// PageHWPoison, counted and listed, and stays out once freed; a range over the metadata refuses
// the open, naming the structure; nothing is written for any of it; clearing (which zeroes) runs
// only when asked and only on a reported range.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <set>
#include <thread>

#include "badblocks.hpp"  // src/: the bad-block source seam
#include "test_util.hpp"

using namespace pmpage;
using namespace pmtest;
namespace fs = std::filesystem;

namespace {

constexpr std::uint64_t POOL_SIZE = 64 * MiB;

std::vector<char> read_bytes(const fs::path& p) {
  std::vector<char> b(fs::file_size(p));
  std::ifstream in(p, std::ios::binary);
  in.read(b.data(), std::streamsize(b.size()));
  return b;
}

/// Device offset of page `pfn` of an open pool.
std::uint64_t offset_of(const pool& p, pfn_t pfn) {
  return std::uint64_t(static_cast<char*>(page_address(pfn_to_page(pfn))) - static_cast<char*>(p.base()));
}

pool open_with(const fs::path& path, std::vector<bad_block> bad) {
  pool::open_options o;
  o.bad_blocks = std::move(bad);
  return pool::open(path, o);
}

/// Allocates order-`order` pages until the pool has none left; returns their pfns (kept allocated).
std::vector<pfn_t> allocate_everything(pool& p, unsigned order) {
  std::vector<pfn_t> out;
  while (page* pg = p.alloc_pages(order)) out.push_back(page_to_pfn(pg));
  return out;
}

bool covers(const std::vector<pfn_t>& heads, unsigned order, pfn_t bad) {
  return std::any_of(heads.begin(), heads.end(), [&](pfn_t h) { return bad >= h && bad < h + (pfn_t{1} << order); });
}

/// A source that reports a fixed list and clears through libpmem2 (which zeroes a plain file's
/// range): what an NVDIMM with those bad blocks would look like, on a file.
class fake_source final : public detail::badblock_source {
 public:
  std::vector<bad_block> listed;
  int list_calls = 0;
  std::vector<bad_block> cleared;
  std::vector<bad_block> list(int, const std::string&, bool) override {
    ++list_calls;
    return listed;
  }
  void clear(int fd, const std::string& path, bool dax, const bad_block& range) override {
    cleared.push_back(range);
    detail::libpmem2_badblocks().clear(fd, path, dax, range);
  }
};

struct source_scope {
  explicit source_scope(detail::badblock_source* s) { detail::set_badblock_source(s); }
  ~source_scope() { detail::set_badblock_source(nullptr); }
};

class BadBlockTest : public TempPathTest {};

// Where the bad page lies at open: in a wholly free region, or beside an allocation in a split one.
enum class placement { free_region, split_region };

class BadFreePageTest : public TempPathTest, public ::testing::WithParamInterface<std::tuple<unsigned, placement>> {};

}  // namespace

// ---- free pages ----------------------------------------------------------------------------------

TEST_P(BadFreePageTest, IsNeverHandedOutEvenWhenEverythingElseIsAllocated) {
  const auto [order, where] = GetParam();
  const fs::path path = new_path();
  pfn_t bad = 0, keep = 0;
  std::uint64_t bad_off = 0;
  {
    pool p = create_pool(path, POOL_SIZE);
    if (where == placement::split_region) {
      page* k = p.alloc_pages(0);  // stays allocated: its region is split at the next open
      ASSERT_NE(k, nullptr);
      keep = page_to_pfn(k);
      bad = keep + 5;
    } else {
      bad = p.start_pfn() + 3 * HPAGE_PMD_NR + 17;  // region 3: free
    }
    bad_off = offset_of(p, bad);
  }
  pool p = open_with(path, {{bad_off + 512, 512}});  // one sector inside the page
  ASSERT_EQ(p.bad_blocks().size(), 1u);
  const pool_stats s0 = p.stats();
  EXPECT_EQ(s0.quarantined_pages, where == placement::free_region ? HPAGE_PMD_NR : 1u);
  EXPECT_EQ(s0.hwpoison_pages, 0u);
  EXPECT_EQ(p.check(), "");

  // Twice: before and after everything went back (frees, per-CPU caches drained, merges).
  for (int round = 0; round < 2; ++round) {
    const std::vector<pfn_t> got = allocate_everything(p, order);
    ASSERT_FALSE(got.empty());
    EXPECT_FALSE(covers(got, order, bad)) << "order " << order << " round " << round;
    if (order == 0) {
      // Everything but the quarantined pages (and the kept page) was handed out.
      EXPECT_EQ(got.size() + s0.quarantined_pages + (keep ? 1 : 0), p.stats().total_pages);
    }
    EXPECT_EQ(p.check(), "");
    for (pfn_t f : got) free_pages(pfn_to_page(f), order);
    p.trim();
    EXPECT_EQ(p.check(), "");
    EXPECT_EQ(p.stats().quarantined_pages, s0.quarantined_pages);
  }
  // The split region holding the bad page never merged (it never looked wholly free).
  if (where == placement::split_region) {
    free_pages(pfn_to_page(keep), 0);
    p.trim();
    EXPECT_EQ(p.stats().split_regions, 1u);
    EXPECT_EQ(p.check(), "");
    const std::vector<pfn_t> got = allocate_everything(p, 0);
    EXPECT_FALSE(covers(got, 0, bad));
    EXPECT_EQ(got.size() + 1, p.stats().total_pages);
  }
}

INSTANTIATE_TEST_SUITE_P(Orders, BadFreePageTest,
                         ::testing::Combine(::testing::Values(0u, 1u, 9u),
                                            ::testing::Values(placement::free_region, placement::split_region)),
                         [](const auto& info) {
                           return "Order" + std::to_string(std::get<0>(info.param)) +
                                  (std::get<1>(info.param) == placement::free_region ? "InAFreeRegion" : "InASplitRegion");
                         });

TEST_F(BadBlockTest, ABulkAllocationNeverTakesAQuarantinedPage) {
  const fs::path path = new_path();
  std::uint64_t off;
  pfn_t keep;
  {
    pool p = create_pool(path, POOL_SIZE);
    keep = page_to_pfn(p.alloc_pages(0));
    off = offset_of(p, keep + 1);
  }
  pool p = open_with(path, {{off, 4096}});
  std::vector<page*> out(p.stats().total_pages);
  const std::size_t n = p.alloc_pages_bulk(0, out.size(), out.data());
  EXPECT_EQ(n + 2, p.stats().total_pages);  // all but the kept page and the bad one
  for (std::size_t i = 0; i < n; ++i) ASSERT_NE(page_to_pfn(out[i]), keep + 1);
  EXPECT_EQ(p.check(), "");
}

// ---- allocated pages -----------------------------------------------------------------------------

namespace {

struct poisoned_pool {
  pfn_t small = 0, small_bad = 0;     // order 0, the bad page itself
  pfn_t mid = 0, mid_bad = 0;         // order 3, its page 5
  pfn_t huge = 0, huge_bad = 0;       // order 9, its page 100
  pfn_t clean = 0;                    // an allocation beside them with no bad page
  std::vector<bad_block> bad;
};

poisoned_pool make_poisoned(const fs::path& path) {
  poisoned_pool pp;
  pool::options o;
  o.size = POOL_SIZE;
  pool p = pool::create(path, o);
  pp.small = page_to_pfn(p.alloc_pages(0));
  pp.mid = page_to_pfn(p.alloc_pages(3));
  pp.huge = page_to_pfn(p.alloc_pages(9));
  pp.clean = page_to_pfn(p.alloc_pages(0));
  pp.small_bad = pp.small;
  pp.mid_bad = pp.mid + 5;
  pp.huge_bad = pp.huge + 100;
  pp.bad = {{offset_of(p, pp.small_bad), 4096}, {offset_of(p, pp.mid_bad) + 1024, 512}, {offset_of(p, pp.huge_bad), 8}};
  return pp;
}

}  // namespace

TEST_F(BadBlockTest, AllocatedPagesInABadBlockAreMarkedHWPoisonCountedAndListed) {
  const fs::path path = new_path();
  const poisoned_pool pp = make_poisoned(path);
  pool p = open_with(path, pp.bad);
  EXPECT_TRUE(PageHWPoison(pfn_to_page(pp.small)));
  EXPECT_TRUE(PageHWPoison(pfn_to_page(pp.mid)));
  EXPECT_TRUE(PageHWPoison(pfn_to_page(pp.mid_bad)));  // any page of the allocation answers
  EXPECT_TRUE(PageHWPoison(pfn_to_page(pp.huge)));
  EXPECT_TRUE(PageHWPoison(pfn_to_page(pp.huge_bad)));
  EXPECT_FALSE(PageHWPoison(pfn_to_page(pp.clean)));
  const pool_stats s = p.stats();
  EXPECT_EQ(s.hwpoison_pages, 3u);
  EXPECT_EQ(s.quarantined_pages, 0u);
  std::vector<hwpoison_page> want = {{pp.small_bad, pp.small, 0}, {pp.mid_bad, pp.mid, 3}, {pp.huge_bad, pp.huge, 9}};
  std::sort(want.begin(), want.end(), [](auto& a, auto& b) { return a.pfn < b.pfn; });
  EXPECT_EQ(p.hwpoison_pages(), want);
  EXPECT_EQ(p.check(), "");
  // The flag is the allocator's: a caller cannot set it on a clean page (no setter exists) and
  // the page-flag calls leave it alone.
  SetPageDirty(pfn_to_page(pp.small));
  ClearPageDirty(pfn_to_page(pp.small));
  EXPECT_TRUE(PageHWPoison(pfn_to_page(pp.small)));
}

TEST_F(BadBlockTest, FreeingAPoisonedPageQuarantinesItsBadPagesForever) {
  const fs::path path = new_path();
  const poisoned_pool pp = make_poisoned(path);
  pool p = open_with(path, pp.bad);
  free_pages(pfn_to_page(pp.small), 0);
  free_pages(pfn_to_page(pp.mid), 3);
  free_pages(pfn_to_page(pp.huge), 9);
  EXPECT_EQ(p.check(), "");
  pool_stats s = p.stats();
  EXPECT_EQ(s.hwpoison_pages, 0u);
  EXPECT_EQ(s.quarantined_pages, 2u + HPAGE_PMD_NR);  // two pages; the huge page's region whole
  EXPECT_TRUE(p.hwpoison_pages().empty());
  for (unsigned order : {0u, 3u, 9u, 10u}) {
    const std::vector<pfn_t> got = allocate_everything(p, order);
    for (pfn_t b : {pp.small_bad, pp.mid_bad, pp.huge_bad}) EXPECT_FALSE(covers(got, order, b)) << "order " << order;
    for (pfn_t f : got) free_pages(pfn_to_page(f), order);
    p.trim();
    EXPECT_EQ(p.check(), "");
  }
  // Nothing was written for the quarantine: without the list the pages are free again.
  p.close();
  pool q = pool::open(path);
  EXPECT_EQ(q.stats().quarantined_pages, 0u);
  EXPECT_EQ(q.check(), "");
  const std::vector<pfn_t> got = allocate_everything(q, 0);
  EXPECT_TRUE(covers(got, 0, pp.small_bad) && covers(got, 0, pp.mid_bad) && covers(got, 0, pp.huge_bad));
}

TEST_F(BadBlockTest, SplittingAPoisonedHugePageMarksOnlyThePieceWithTheBadPage) {
  const fs::path path = new_path();
  const poisoned_pool pp = make_poisoned(path);
  pool p = open_with(path, pp.bad);
  ASSERT_EQ(split_huge_page(pfn_to_page(pp.huge)), 0);
  for (unsigned i = 0; i < HPAGE_PMD_NR; ++i)
    ASSERT_EQ(PageHWPoison(pfn_to_page(pp.huge + i)), pp.huge + i == pp.huge_bad) << i;
  EXPECT_EQ(p.check(), "");
  for (unsigned i = 0; i < HPAGE_PMD_NR; ++i) free_pages(pfn_to_page(pp.huge + i), 0);
  EXPECT_EQ(p.check(), "");
  const std::vector<pfn_t> got = allocate_everything(p, 0);
  EXPECT_FALSE(covers(got, 0, pp.huge_bad));
  EXPECT_TRUE(covers(got, 0, pp.huge_bad + 1));  // its neighbours are handed out again
}

TEST_F(BadBlockTest, AReadOnlyOpenReportsPoisonWithoutWriting) {
  const fs::path path = new_path();
  const poisoned_pool pp = make_poisoned(path);
  const std::vector<char> before = read_bytes(path);
  {
    pool::open_options o;
    o.read_only = true;
    o.bad_blocks = pp.bad;
    pool p = pool::open(path, o);
    EXPECT_TRUE(PageHWPoison(pfn_to_page(pp.mid)));
    EXPECT_EQ(p.stats().hwpoison_pages, 3u);
    EXPECT_EQ(p.check(), "");
  }
  EXPECT_EQ(read_bytes(path), before);
}

// ---- metadata --------------------------------------------------------------------------------------

TEST_F(BadBlockTest, ARangeInTheMetadataRefusesTheOpenNamingTheStructure) {
  const fs::path path = new_path();
  std::uint64_t data_off;
  {
    pool p = create_pool(path, POOL_SIZE);
    data_off = offset_of(p, p.start_pfn());
  }
  const std::vector<char> image = read_bytes(path);
  detail::superblock sb;
  std::memcpy(&sb, image.data(), sizeof sb);
  const struct {
    bad_block b;
    const char* names;
  } cases[] = {
      {{100, 512}, "superblock copy A"},
      {{4096 + 512, 512}, "superblock copy B"},
      {{4000, 200}, "superblock copy A [0, 0x1000); superblock copy B"},
      {{sb.lanes_offset + 64 * 3, 64}, "the intent lanes"},
      {{sb.root_offset + 8, 8}, "the root area"},
      {{sb.region_table_offset + 2 * 8, 8}, "the region table"},
      {{sb.page_map_offset + 3 * 256, 512}, "the page maps"},
      {{sb.owner_table_offset + 4096 + 8, 8}, "the owner tables"},
  };
  for (const auto& c : cases) {
    const std::string m = expect_error(EIO, [&] { open_with(path, {c.b}); });
    EXPECT_NE(m.find(c.names), std::string::npos) << m;
    EXPECT_NE(m.find(detail::describe_range(c.b)), std::string::npos) << m;
  }
  EXPECT_NE(expect_error(EIO, [&] { open_with(path, {{sb.page_map_offset + 3 * 256, 512}}); }).find("regions 3..4"),
            std::string::npos);
  // Out of the file, or empty: the option is wrong.
  expect_error(EINVAL, [&] { open_with(path, {{POOL_SIZE - 512, 1024}}); });
  expect_error(EINVAL, [&] { open_with(path, {{data_off, 0}}); });
  // Nothing was written by any refused open, and the pool opens without the list.
  EXPECT_EQ(read_bytes(path), image);
  EXPECT_EQ(pool::open(path).check(), "");
}

TEST_F(BadBlockTest, MetadataHitNamesEachStructureAndTheRegionsItDescribes) {
  detail::layout lay;
  ASSERT_TRUE(detail::compute_layout(POOL_SIZE, 4096, HPAGE_PMD_SIZE, lay));
  EXPECT_EQ(detail::metadata_hit(lay, lay.data_offset, 4096), "");
  EXPECT_EQ(detail::metadata_hit(lay, lay.owner_table_offset + lay.nr_regions * 4096, 8), "");  // padding
  const std::string h = detail::metadata_hit(lay, lay.owner_table_offset + 4096 * 2 - 8, 16);
  EXPECT_NE(h.find("the owner tables"), std::string::npos) << h;
  EXPECT_NE(h.find("regions 1..2"), std::string::npos) << h;
}

// ---- the sources ---------------------------------------------------------------------------------

TEST_F(BadBlockTest, TheDeviceListFromTheSourceIsUsedAtOpenUnlessTurnedOff) {
  const fs::path path = new_path();
  pfn_t bad;
  std::uint64_t off;
  {
    pool p = create_pool(path, POOL_SIZE);
    bad = page_to_pfn(p.alloc_pages(0));
    off = offset_of(p, bad);
  }
  fake_source src;
  src.listed = {{off, 512}};
  source_scope scope(&src);
  {
    pool p = pool::open(path);
    EXPECT_EQ(src.list_calls, 1);
    EXPECT_EQ(p.bad_blocks(), src.listed);
    EXPECT_TRUE(PageHWPoison(pfn_to_page(bad)));
  }
  {
    pool::open_options o;
    o.device_bad_blocks = false;
    pool p = pool::open(path, o);
    EXPECT_EQ(src.list_calls, 1);
    EXPECT_TRUE(p.bad_blocks().empty());
    EXPECT_FALSE(PageHWPoison(pfn_to_page(bad)));
  }
  // The caller's list and the device's are merged.
  pool p = open_with(path, {{off + 512, 512}, {off + 4096, 100}});
  EXPECT_EQ(p.bad_blocks(), (std::vector<bad_block>{{off, 1024}, {off + 4096, 100}}));
}

TEST_F(BadBlockTest, Libpmem2FindsNoBadBlocksOnAPlainFileAndIsNotAskedForOne) {
  // No NVDIMM here: libpmem2's calls run (device_dax = true skips the DAX gate) and find none;
  // through the gate a plain file is not even asked.
  const fs::path path = new_path();
  create_pool(path, POOL_SIZE).close();
  const int fd = ::open(path.c_str(), O_RDONLY);
  ASSERT_GE(fd, 0);
  EXPECT_FALSE(detail::file_is_dax(fd));
  EXPECT_TRUE(detail::libpmem2_badblocks().list(fd, path, /*device_dax=*/true).empty());
  EXPECT_TRUE(detail::libpmem2_badblocks().list(fd, path, /*device_dax=*/false).empty());
  ::close(fd);
  EXPECT_TRUE(pool::device_bad_blocks(path).empty());
  EXPECT_TRUE(pool::open(path).bad_blocks().empty());
}

// ---- clearing --------------------------------------------------------------------------------------

TEST_F(BadBlockTest, ClearingHappensOnlyOnRequestAndOnlyForAReportedRange) {
  const fs::path path = new_path();
  pfn_t victim;
  std::uint64_t off;
  {
    pool p = create_pool(path, POOL_SIZE);
    victim = page_to_pfn(p.alloc_pages(1));
    std::memset(page_address(pfn_to_page(victim)), 0xA5, 2 * 4096);
    p.persist(page_address(pfn_to_page(victim)), 2 * 4096);
    off = offset_of(p, victim);
  }
  fake_source src;
  src.listed = {{off, 4096}};  // the first page of the two
  source_scope scope(&src);
  const std::vector<char> before = read_bytes(path);
  // Opening, using and closing with the bad block reported writes nothing to it.
  {
    pool p = pool::open(path);
    EXPECT_TRUE(PageHWPoison(pfn_to_page(victim)));
    EXPECT_NE(p.alloc_pages(0), nullptr);
    // While the pool is open nothing can clear it.
    expect_error(EBUSY, [&] { pool::clear_bad_block(path, {off, 4096}); });
  }
  EXPECT_TRUE(src.cleared.empty());
  std::vector<char> after = read_bytes(path);
  EXPECT_TRUE(std::equal(before.begin() + std::ptrdiff_t(off), before.begin() + std::ptrdiff_t(off + 8192),
                         after.begin() + std::ptrdiff_t(off)));
  // A range that was not reported is refused and nothing is zeroed.
  const std::string m = expect_error(EINVAL, [&] { pool::clear_bad_block(path, {off + 4096, 4096}); });
  EXPECT_NE(m.find("not inside a bad block the device reports"), std::string::npos) << m;
  expect_error(EINVAL, [&] { pool::clear_bad_block(path, {off, 8192}); });  // partly reported
  EXPECT_TRUE(src.cleared.empty());
  EXPECT_EQ(read_bytes(path), after);
  // The reported range is cleared when asked: zeroed (libpmem2 on a file), nothing else touched.
  pool::clear_bad_block(path, {off, 4096});
  ASSERT_EQ(src.cleared.size(), 1u);
  const std::vector<char> cleared = read_bytes(path);
  for (std::uint64_t i = 0; i < 4096; ++i) ASSERT_EQ(cleared[off + i], 0) << i;
  for (std::uint64_t i = 4096; i < 8192; ++i) ASSERT_EQ(cleared[off + i], char(0xA5)) << i;
  std::copy(cleared.begin() + std::ptrdiff_t(off), cleared.begin() + std::ptrdiff_t(off + 4096),
            after.begin() + std::ptrdiff_t(off));
  EXPECT_EQ(cleared, after);
}

// ---- volatile pools --------------------------------------------------------------------------------

TEST_F(BadBlockTest, AVolatilePoolNeverHandsOutABadPageOfItsBacking) {
  // A CXL expander used as plain memory has poison too: offsets are the backing's (= the pages').
  pool::volatile_options o;
  o.size = 16 * MiB;
  o.bad_blocks = {{3 * HPAGE_PMD_SIZE + 4096 + 100, 8}};
  pool p = pool::create_volatile(o);
  EXPECT_EQ(p.bad_blocks(), o.bad_blocks);
  const pfn_t bad = p.start_pfn() + 3 * HPAGE_PMD_NR + 1;
  EXPECT_EQ(p.stats().quarantined_pages, HPAGE_PMD_NR);
  for (unsigned order : {0u, 1u, 9u}) {
    const std::vector<pfn_t> got = allocate_everything(p, order);
    EXPECT_FALSE(covers(got, order, bad)) << order;
    for (pfn_t f : got) free_pages(pfn_to_page(f), order);
    EXPECT_EQ(p.check(), "");
  }
  o.bad_blocks = {{16 * MiB, 512}};
  expect_error(EINVAL, [&] { pool::create_volatile(o); });
}

// ---- concurrency ---------------------------------------------------------------------------------

TEST_F(BadBlockTest, ThreadsAllocatingAndFreeingBesideStatsNeverGetABadPage) {
  // Poisoned pages freed by several threads while others allocate and one reads the counters:
  // the quarantine happens under the region lock (TSan checks the stats walk's locking too).
  const fs::path path = new_path();
  std::vector<pfn_t> poisoned;
  std::vector<bad_block> bad;
  {
    pool p = create_pool(path, POOL_SIZE);
    for (int i = 0; i < 64; ++i) {
      page* pg = p.alloc_pages(0);
      ASSERT_NE(pg, nullptr);
      if (i % 4 == 0) {
        poisoned.push_back(page_to_pfn(pg));
        bad.push_back({offset_of(p, page_to_pfn(pg)), 512});
      }
    }
  }
  pool p = open_with(path, bad);
  ASSERT_EQ(p.stats().hwpoison_pages, poisoned.size());
  const std::set<pfn_t> bad_set(poisoned.begin(), poisoned.end());
  std::atomic<int> handed_bad{0};
  std::atomic<bool> stop{false};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      for (std::size_t i = std::size_t(t); i < poisoned.size(); i += 4) free_pages(pfn_to_page(poisoned[i]), 0);
      for (int round = 0; round < 200; ++round) {
        page* got[16];
        const std::size_t n = p.alloc_pages_bulk(0, 16, got);
        for (std::size_t k = 0; k < n; ++k) {
          if (bad_set.count(page_to_pfn(got[k]))) handed_bad.fetch_add(1);
          free_pages(got[k], 0);
        }
      }
    });
  std::thread reader([&] {
    while (!stop.load()) {
      (void)p.stats();
      (void)p.hwpoison_pages();
    }
  });
  for (auto& t : threads) t.join();
  stop = true;
  reader.join();
  EXPECT_EQ(handed_bad.load(), 0);
  EXPECT_EQ(p.stats().hwpoison_pages, 0u);
  EXPECT_EQ(p.stats().quarantined_pages, poisoned.size());
  EXPECT_EQ(p.check(), "");
}
