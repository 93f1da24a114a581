// test_grow.cpp — pool::grow and options::max_size (docs/api.md "Growing a pool"): whole regions
// added in place, existing pages untouched, the grown pool fully allocatable, every refusal
// clear, and the superblock rules that make a torn grow open as the old or the new size.
// (Crash points of grow: tests/reliability/test_crash_points.cpp, GrowCrash.)
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <set>
#include <thread>

#include "layout.hpp"     // src/: the superblock fields and rules
#include "pool_impl.hpp"  // src/: growth_refused_for
#include "test_util.hpp"
#include <pmpage/fsck.hpp>
#include <pmpage/pmpage.h>

using namespace pmpage;
using namespace pmtest;
namespace fs = std::filesystem;

namespace {

class GrowTest : public TempPathTest {
 protected:
  static pool create_growable(const fs::path& path, std::uint64_t size, std::uint64_t max_size) {
    pool::options o;
    o.size = size;
    o.max_size = max_size;
    return pool::create(path, o);
  }
  static detail::superblock read_sb(const fs::path& path, unsigned copy) {
    detail::superblock sb{};
    std::ifstream in(path, std::ios::binary);
    in.seekg(copy * detail::SUPERBLOCK_SIZE);
    in.read(reinterpret_cast<char*>(&sb), sizeof sb);
    return sb;
  }
  static void write_sb(const fs::path& path, unsigned copy, const detail::superblock& sb) {
    std::fstream out(path, std::ios::binary | std::ios::in | std::ios::out);
    out.seekp(copy * detail::SUPERBLOCK_SIZE);
    out.write(reinterpret_cast<const char*>(&sb), sizeof sb);
  }
  template <class F>
  static std::string error_of(F&& f, int want_errno) {
    try {
      f();
    } catch (const pmpage::error& e) {
      EXPECT_EQ(e.code().value(), want_errno) << e.what();
      return e.what();
    }
    ADD_FAILURE() << "no error (wanted errno " << want_errno << ")";
    return {};
  }
};

}  // namespace

TEST_F(GrowTest, GrownPoolFillsCompletelyWithTheNewRegions) {
  const fs::path path = new_path();
  std::uint64_t old_regions = 0;
  {
    pool p = create_growable(path, 16 * MiB, 64 * MiB);
    old_regions = p.stats().total_regions;
  }
  const pool::grow_result r = pool::grow(path, 48 * MiB);
  EXPECT_EQ(r.old_regions, old_regions);
  EXPECT_GT(r.new_regions, old_regions);
  EXPECT_GE(r.max_regions, r.new_regions);
  EXPECT_EQ(fs::file_size(path), 48 * MiB);
  pool p = pool::open(path);
  const pool_stats s = p.stats();
  EXPECT_EQ(s.total_regions, r.new_regions);
  EXPECT_EQ(s.total_pages, r.new_regions * 512);
  EXPECT_EQ(s.free_pages, s.total_pages);
  EXPECT_EQ(p.end_pfn() - p.start_pfn(), s.total_pages);
  // Every page, old and new, is handed out, once, from several threads: whole regions and 4 KiB pages.
  std::vector<std::vector<pfn_t>> got(2);
  std::vector<std::thread> ts;
  for (unsigned t = 0; t < 2; ++t)
    ts.emplace_back([&, t] {
      for (;;) {
        page* pg = p.alloc_pages(t == 0 ? 9 : 0);
        if (!pg) break;
        const pfn_t f = page_to_pfn(pg);
        for (pfn_t i = 0; i < (t == 0 ? 512u : 1u); ++i) got[t].push_back(f + i);
      }
    });
  for (auto& t : ts) t.join();
  std::set<pfn_t> all(got[0].begin(), got[0].end());
  all.insert(got[1].begin(), got[1].end());
  EXPECT_EQ(all.size(), got[0].size() + got[1].size()) << "a page was handed out twice";
  EXPECT_EQ(all.size(), s.total_pages);
  EXPECT_EQ(*all.begin(), p.start_pfn());
  EXPECT_EQ(*all.rbegin(), p.end_pfn() - 1);
  EXPECT_EQ(p.stats().free_pages, 0u);
  EXPECT_EQ(p.check(), "");
}

TEST_F(GrowTest, GrowKeepsPfnsSlotsAndContentsOfExistingPages) {
  const fs::path path = new_path();
  pfn_t start = 0, owned = 0, plain = 0;
  {
    pool p = create_growable(path, 16 * MiB, 64 * MiB);
    start = p.start_pfn();
    page* o = p.alloc_pages_to(3, &root_slots(p)[0]);
    ASSERT_NE(o, nullptr);
    owned = root_slots(p)[0];
    std::memset(page_address(o), 0x5a, 8 * PAGE_SIZE);
    page* g = p.alloc_pages(9);
    ASSERT_NE(g, nullptr);
    plain = page_to_pfn(g);
    root_slots(p)[1] = plain;
    std::memset(page_address(g), 0xa5, HPAGE_PMD_SIZE);
    p.persist(page_address(o), 8 * PAGE_SIZE);
    p.persist(page_address(g), HPAGE_PMD_SIZE);
    p.persist(root_slots(p), 16);
  }
  const pool::grow_result r = pool::grow(path, 40 * MiB);
  pool p = pool::open(path);
  EXPECT_EQ(p.start_pfn(), start);
  EXPECT_EQ(p.stats().total_regions, r.new_regions);
  EXPECT_EQ(root_slots(p)[0], owned);
  EXPECT_EQ(root_slots(p)[1], plain);
  const auto* a = static_cast<const unsigned char*>(page_address(pfn_to_page(owned)));
  const auto* b = static_cast<const unsigned char*>(page_address(pfn_to_page(plain)));
  for (std::size_t i = 0; i < 8 * PAGE_SIZE; ++i) ASSERT_EQ(a[i], 0x5a) << i;
  for (std::size_t i = 0; i < HPAGE_PMD_SIZE; ++i) ASSERT_EQ(b[i], 0xa5) << i;
  const pool::slot_check c = p.check_slots(std::vector<pfn_t*>{&root_slots(p)[0]});
  EXPECT_TRUE(c.dangling.empty() && c.misowned.empty()) << c.describe();
  EXPECT_EQ(allocations(p).by_pfn.size(), 1u + 1u);
  EXPECT_EQ(p.free_pages_from(&root_slots(p)[0]), 0);
  EXPECT_EQ(p.check(), "");
}

TEST_F(GrowTest, ShrinkSameSizeAndLessThanARegionAreRefusedAndChangeNothing) {
  const fs::path path = new_path();
  create_growable(path, 16 * MiB, 64 * MiB).close();
  const auto before = read_sb(path, 0);
  EXPECT_NE(error_of([&] { pool::grow(path, 8 * MiB); }, EINVAL).find("never shrinks"), std::string::npos);
  EXPECT_NE(error_of([&] { pool::grow(path, 16 * MiB); }, EINVAL).find("never shrinks"), std::string::npos);
  EXPECT_NE(error_of([&] { pool::grow(path, 16 * MiB + 4096); }, EINVAL).find("no whole 2 MiB region"), std::string::npos);
  const auto after = read_sb(path, 0);
  EXPECT_EQ(std::memcmp(&before, &after, sizeof before), 0);
  EXPECT_EQ(fs::file_size(path), 16 * MiB);
  EXPECT_EQ(pool::open(path).stats().total_regions, before.nr_regions);
}

TEST_F(GrowTest, BeyondTheCapacityIsRefusedAndUpToItWorks) {
  const fs::path path = new_path();
  create_growable(path, 16 * MiB, 64 * MiB).close();
  const std::string why = error_of([&] { pool::grow(path, 66 * MiB); }, EINVAL);
  EXPECT_NE(why.find("capacity"), std::string::npos) << why;
  EXPECT_NE(why.find("max_size"), std::string::npos) << why;
  EXPECT_EQ(fs::file_size(path), 16 * MiB) << "a refused grow extended the file";
  const pool::grow_result r = pool::grow(path, 64 * MiB);
  EXPECT_EQ(r.new_regions, r.max_regions);
  EXPECT_EQ(pool::open(path).stats().total_regions, r.max_regions);
  EXPECT_NE(error_of([&] { pool::grow(path, 66 * MiB); }, EINVAL).find("capacity"), std::string::npos);
  // A size no pool can describe: refused at create.
  pool::options o;
  o.size = 16 * MiB;
  o.max_size = detail::MAX_GROWABLE_SIZE + 1;
  EXPECT_NE(error_of([&] { pool::create(new_path(), o); }, EINVAL).find("largest pool"), std::string::npos);
  o.max_size = 8 * MiB;
  EXPECT_NE(error_of([&] { pool::create(new_path(), o); }, EINVAL).find("below the pool's size"), std::string::npos);
  o.max_size = 64 * GiB;  // its tables alone take more than 16 MiB
  EXPECT_NE(error_of([&] { pool::create(new_path(), o); }, EINVAL).find("needs at least"), std::string::npos);
}

TEST_F(GrowTest, APoolCreatedWithoutMaxSizeSaysHowToGetRoom) {
  const fs::path path = new_path();
  create_pool(path, 16 * MiB).close();
  const auto sb = read_sb(path, 0);
  EXPECT_EQ(sb.flags & detail::SB_GROWABLE, 0u) << "max_size 0 must keep the format older libraries read";
  EXPECT_EQ(sb.max_regions, 0u);
  const std::uint64_t cap = detail::superblock_capacity(sb);
  const std::string why = error_of([&] { pool::grow(path, 64 * MiB); }, EINVAL);
  EXPECT_NE(why.find("max_size"), std::string::npos) << why;
  if (cap > sb.nr_regions) {
    // The slack of its tables: grown without the flag, still readable by older libraries.
    pool::grow(path, sb.data_offset + cap * HPAGE_PMD_SIZE);
    const auto g = read_sb(path, 0);
    EXPECT_EQ(g.nr_regions, cap);
    EXPECT_EQ(g.flags & detail::SB_GROWABLE, 0u);
    EXPECT_EQ(pool::open(path).stats().total_regions, cap);
  }
  EXPECT_NE(error_of([&] { pool::grow(path, 64 * MiB); }, EINVAL).find("max_size"), std::string::npos);
}

TEST_F(GrowTest, AnOpenPoolIsRefusedReadOnlyOrNot) {
  const fs::path path = new_path();
  {
    pool p = create_growable(path, 16 * MiB, 64 * MiB);
    EXPECT_NE(error_of([&] { pool::grow(path, 32 * MiB); }, EBUSY).find("open"), std::string::npos);
  }
  {
    pool::open_options ro;
    ro.read_only = true;
    pool p = pool::open(path, ro);
    EXPECT_NE(error_of([&] { pool::grow(path, 32 * MiB); }, EBUSY).find("open"), std::string::npos);
  }
  EXPECT_EQ(fs::file_size(path), 16 * MiB);
  const std::uint64_t grown = pool::grow(path, 32 * MiB).new_regions;
  EXPECT_EQ(pool::open(path).stats().total_regions, grown);
}

TEST_F(GrowTest, DeviceDaxIsRefusedAndCannotBeCreatedGrowable) {
  // No device DAX here: the kind check grow makes right after opening the path.
  EXPECT_NE(detail::growth_refused_for(detail::device::kind::device_dax).find("fixed size"), std::string::npos);
  EXPECT_EQ(detail::growth_refused_for(detail::device::kind::regular_file), "");
  EXPECT_NE(error_of([&] { pool::grow(new_path(), 32 * MiB); }, ENOENT), "");
}

TEST_F(GrowTest, GrowableSuperblockRulesAndTheTornGrowRollsForward) {
  const fs::path path = new_path();
  create_growable(path, 16 * MiB, 64 * MiB).close();
  const auto old_sb = read_sb(path, 0);
  EXPECT_NE(old_sb.flags & detail::SB_GROWABLE, 0u);
  EXPECT_GT(old_sb.max_regions, old_sb.nr_regions);
  EXPECT_EQ(detail::superblock_problem(old_sb), "");
  {
    auto bad = old_sb;  // a capacity below the regions it has
    bad.max_regions = bad.nr_regions - 1;
    detail::seal_superblock(bad);
    EXPECT_NE(detail::superblock_problem(bad), "");
    bad = old_sb;  // a capacity without the flag
    bad.flags &= ~detail::SB_GROWABLE;
    detail::seal_superblock(bad);
    EXPECT_NE(detail::superblock_problem(bad), "");
  }
  pool::grow(path, 32 * MiB);
  const auto new_sb = read_sb(path, 1);
  EXPECT_TRUE(detail::superblocks_differ_by_grow(old_sb, new_sb));
  EXPECT_FALSE(detail::superblocks_differ_by_grow(new_sb, old_sb)) << "a shrink is no grow";
  auto other = new_sb;  // more than the size changed: not a grow
  other.create_time_ns += 1;
  detail::seal_superblock(other);
  EXPECT_FALSE(detail::superblocks_differ_by_grow(old_sb, other));
  // The crash between the two copies: A old, B new. check names it as recovery's leftover (not
  // damage: exit 0) and describes the new size; open takes B (the new size) and repairs A.
  write_sb(path, 0, old_sb);
  {
    const fsck::report r = fsck::check(path);
    EXPECT_EQ(r.exit_code(), 0);
    EXPECT_EQ(r.nr_regions, new_sb.nr_regions);
    ASSERT_EQ(r.problems.size(), 1u);
    EXPECT_TRUE(r.problems[0].recovery);
    EXPECT_NE(r.problems[0].what.find("pool::grow"), std::string::npos) << r.problems[0].what;
  }
  {
    pool p = pool::open(path);
    EXPECT_EQ(p.stats().total_regions, new_sb.nr_regions);
    const auto log = p.recovery_log();
    ASSERT_FALSE(log.empty());
    EXPECT_NE(log.back().find("interrupted pool::grow"), std::string::npos) << log.back();
    EXPECT_EQ(p.check(), "");
  }
  const auto repaired = read_sb(path, 0);
  EXPECT_EQ(std::memcmp(&repaired, &new_sb, sizeof new_sb), 0);
  // The other order (A new, B old) is no crash of grow: refused as copies that differ.
  write_sb(path, 1, old_sb);
  EXPECT_NE(error_of([&] { pool::open(path); }, EINVAL).find("differ"), std::string::npos);
}

// ---- growing an open pool: pool.grow(new_size) ----------------------------------------------------

TEST_F(GrowTest, AnOpenPoolGrowsInPlaceAndItsNewRegionsAreAllocatable) {
  const fs::path path = new_path();
  pool p = create_growable(path, 16 * MiB, 64 * MiB);
  void* const base = p.base();
  const pfn_t start = p.start_pfn();
  page* kept = p.alloc_pages_to(2, &root_slots(p)[0]);
  ASSERT_NE(kept, nullptr);
  std::memset(page_address(kept), 0x3c, 4 * PAGE_SIZE);
  const std::uint64_t old_regions = p.stats().total_regions;
  ASSERT_EQ(p.grow(40 * MiB), 0);
  EXPECT_EQ(p.base(), base) << "the pool moved";
  EXPECT_EQ(p.start_pfn(), start);
  EXPECT_EQ(fs::file_size(path), 40 * MiB);
  const pool_stats s = p.stats();
  EXPECT_GT(s.total_regions, old_regions);
  EXPECT_EQ(p.end_pfn() - p.start_pfn(), s.total_pages);
  EXPECT_EQ(page_address(pfn_to_page(root_slots(p)[0])), page_address(kept));
  EXPECT_EQ(static_cast<unsigned char*>(page_address(kept))[4 * PAGE_SIZE - 1], 0x3c);
  // Grown again, then filled: every new page, from the last region down, is handed out.
  ASSERT_EQ(p.grow(64 * MiB), 0);
  const std::uint64_t total = p.stats().total_pages;
  std::set<pfn_t> got;
  for (page* g; (g = p.alloc_pages(0)) != nullptr;) got.insert(page_to_pfn(g));
  EXPECT_EQ(got.size() + 4, total);
  EXPECT_EQ(*got.rbegin(), p.end_pfn() - 1);
  for (pfn_t f : {*got.begin(), *got.rbegin()}) std::memset(page_address(pfn_to_page(f)), 1, PAGE_SIZE);
  EXPECT_EQ(p.check(), "");
  p.close();
  const fsck::report r = fsck::check(path);  // what `pmpage info` shows
  EXPECT_EQ(r.exit_code(), 0);
  EXPECT_EQ(r.total_pages, total);
  EXPECT_EQ(r.free_pages, 0u);
  EXPECT_EQ(r.max_regions, r.nr_regions) << "grown to its capacity";
  EXPECT_EQ(r.end_pfn - r.start_pfn, total);
  pool q = pool::open(path);
  EXPECT_EQ(q.stats().total_pages, total);
  EXPECT_EQ(q.stats().free_pages, 0u);
  EXPECT_EQ(q.check(), "");
}

TEST_F(GrowTest, GrowRacingAllocationsInTwoThreadsLosesAndDoublesNothing) {
  const fs::path path = new_path();
  pool p = create_growable(path, 8 * MiB, 64 * MiB);
  std::atomic<bool> grown{false};
  std::vector<std::vector<pfn_t>> got(2);
  std::vector<std::thread> ts;
  for (unsigned t = 0; t < 2; ++t)
    ts.emplace_back([&, t] {
      for (;;) {
        const bool done = grown.load();
        page* pg = p.alloc_pages(t == 0 ? 0 : 3);
        if (pg) {
          for (pfn_t i = 0; i < (t == 0 ? 1u : 8u); ++i) got[t].push_back(page_to_pfn(pg) + i);
        } else if (done) {
          break;  // no room after the last grow: the pool is full
        } else {
          std::this_thread::yield();
        }
      }
    });
  for (std::uint64_t size = 16 * MiB; size <= 64 * MiB; size += 8 * MiB) ASSERT_EQ(p.grow(size), 0) << size;
  grown = true;
  for (auto& t : ts) t.join();
  std::set<pfn_t> all(got[0].begin(), got[0].end());
  all.insert(got[1].begin(), got[1].end());
  EXPECT_EQ(all.size(), got[0].size() + got[1].size()) << "a page was handed out twice";
  const pool_stats s = p.stats();
  EXPECT_EQ(s.free_pages, 0u);
  EXPECT_EQ(all.size(), s.total_pages);
  EXPECT_EQ(*all.rbegin(), p.end_pfn() - 1);
  EXPECT_EQ(p.check(), "");
}

TEST_F(GrowTest, AnOpenPoolRefusesReadOnlyVolatileUnplannedShrinkAndBeyond) {
  const fs::path path = new_path();
  {
    pool p = create_growable(path, 16 * MiB, 64 * MiB);
    errno = 0;
    EXPECT_EQ(p.grow(16 * MiB), -EINVAL);
    EXPECT_EQ(errno, EINVAL);
    EXPECT_EQ(p.grow(8 * MiB), -EINVAL);
    EXPECT_EQ(p.grow(16 * MiB + 4096), -EINVAL);
    EXPECT_EQ(p.grow(1 * GiB), -EINVAL);
    EXPECT_EQ(fs::file_size(path), 16 * MiB) << "a refused grow extended the file";
  }
  {
    pool::open_options ro;
    ro.read_only = true;
    pool p = pool::open(path, ro);
    misuse_recorder rec;
    EXPECT_EQ(p.grow(32 * MiB), -EROFS);
    EXPECT_EQ(rec.count(), 1);
    EXPECT_EQ(fs::file_size(path), 16 * MiB);
  }
  {
    pool::volatile_options vo;
    vo.size = 16 * MiB;
    pool v = pool::create_volatile(vo);
    EXPECT_EQ(v.grow(32 * MiB), -ENOTSUP);
  }
  {
    const fs::path plain = new_path();
    pool p = create_pool(plain, 16 * MiB);
    EXPECT_EQ(p.grow(32 * MiB), -EINVAL);
  }
  {
    pool closed;
    misuse_recorder rec;
    EXPECT_EQ(closed.grow(32 * MiB), -EINVAL);
    EXPECT_EQ(rec.count(), 1);
  }
}

// Every failure of pool.grow sets errno and pmpage_errormsg() (pool.hpp), the misused calls too:
// on a closed pool and in a fork() child the misuse report is the message, not an older one.
TEST_F(GrowTest, AMisusedGrowSetsErrnoAndTheMessage) {
  auto stale = [] {
    ASSERT_EQ(pmpage_pool_grow_closed(nullptr, 32 * MiB), -EINVAL);  // leaves "path is NULL"
    errno = 0;
  };
  {
    pool closed;
    misuse_recorder rec;
    stale();
    EXPECT_EQ(closed.grow(32 * MiB), -EINVAL);
    EXPECT_EQ(rec.count(), 1);
    EXPECT_EQ(errno, EINVAL);
    EXPECT_NE(std::strstr(pmpage_errormsg(), "the pool is closed"), nullptr) << pmpage_errormsg();
  }
  const fs::path path = new_path();
  pool p = create_growable(path, 16 * MiB, 64 * MiB);
  stale();
  const pid_t pid = ::fork();
  if (pid == 0) {
    // The child: a misuse handler that returns (the recorder), then the refused call.
    misuse_recorder rec;
    ::pmpage_pool_grow_closed(nullptr, 1);
    errno = 0;
    int rc = 0;
    if (p.grow(32 * MiB) != -EINVAL) rc |= 1;
    if (errno != EINVAL) rc |= 2;
    if (!std::strstr(pmpage_errormsg(), "fork")) rc |= 4;
    if (rec.count() != 1) rc |= 8;
    ::_exit(rc);
  }
  ASSERT_GT(pid, 0);
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "1: not -EINVAL, 2: errno, 4: the message does not name fork(), 8: no misuse report";
  EXPECT_EQ(fs::file_size(path), 16 * MiB);
}

TEST_F(GrowTest, APreallocatedPoolStaysPreallocatedWhenItGrowsOpen) {
  // A pool preallocated at create takes regions without reserving them (all blocks exist): its
  // new part must be reserved by the grow itself, or a full file system would SIGBUS a store.
  const fs::path path = new_path();
  pool::options o;
  o.size = 16 * MiB;
  o.max_size = 64 * MiB;
  o.preallocate = true;
  pool p = pool::create(path, o);
  ASSERT_EQ(p.grow(48 * MiB), 0);
  struct stat st {};
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_GE(std::uint64_t(st.st_blocks) * 512, 48 * MiB - 16 * MiB) << "the grown part is a hole";
  for (page* g; (g = p.alloc_pages(9)) != nullptr;) std::memset(page_address(g), 7, HPAGE_PMD_SIZE);
  EXPECT_EQ(p.check(), "");
}

// An open growable pool reserves its capacity (pfns, address space) but translates only the pages
// it has: an address of the reserved, not yet grown part of the mapping is no pool memory (a child
// that read there would get SIGSEGV), a pfn or descriptor past end_pfn() is misuse. After the grow
// the new pages translate both ways.
TEST_F(GrowTest, TheCapacityIsReservedButTranslatesOnlyTheGrownPages) {
  const fs::path path = new_path();
  pool p = create_growable(path, 16 * MiB, 64 * MiB);
  const pfn_t start = p.start_pfn(), end = p.end_pfn();
  page* const first = pfn_to_page(start);
  ASSERT_NE(first, nullptr);
  page* const beyond = first + (end - start);  // the descriptor end would have: reserved, no page
  char* const past = static_cast<char*>(page_address(pfn_to_page(end - 1))) + PAGE_SIZE;
  auto expect_not_translated = [&](const char* when) {
    EXPECT_FALSE(pfn_valid(end)) << when;
    EXPECT_FALSE(pfn_valid(end + 5)) << when;
    EXPECT_FALSE(virt_addr_valid(past)) << when;
    EXPECT_EQ(virt_to_page(past), nullptr) << when;
    EXPECT_EQ(virt_to_page(past + 4 * MiB), nullptr) << when;
    misuse_recorder rec;
    EXPECT_EQ(pfn_to_page(end), nullptr) << when;
    EXPECT_EQ(pfn_to_page(end + 5), nullptr) << when;
    EXPECT_EQ(page_to_pfn(beyond), 0u) << when;
    EXPECT_EQ(page_address(beyond + 1), nullptr) << when;
    EXPECT_EQ(rec.count(), 4) << when;
  };
  EXPECT_TRUE(pfn_valid(end - 1));
  EXPECT_EQ(virt_to_page(past - 1), pfn_to_page(end - 1));
  expect_not_translated("before the grow");
  {
    // The pool's own calls see end_pfn() as its end too: a slot naming a pfn past it is misuse.
    misuse_recorder rec;
    root_slots(p)[0] = end;
    EXPECT_EQ(p.free_pages_from(&root_slots(p)[0]), -EINVAL);
    EXPECT_EQ(rec.count(), 1);
    root_slots(p)[0] = 0;
  }
  // The capacity's pfns stay reserved: no other pool may take them.
  EXPECT_NE(detail::pfn_range_conflict(end + 5, 1), "");
  const std::uint64_t capacity = detail::superblock_capacity(read_sb(path, 0)) * HPAGE_PMD_NR;
  EXPECT_NE(detail::pfn_range_conflict(start + capacity - 1, 1), "");
  EXPECT_EQ(detail::pfn_range_conflict(start + capacity, 1), "");

  ASSERT_EQ(p.grow(32 * MiB), 0);
  const pfn_t grown_end = p.end_pfn();
  ASSERT_EQ(grown_end, end + 16 * MiB / PAGE_SIZE);  // 8 more regions
  for (const pfn_t f : {end, end + 5, grown_end - 1}) {
    EXPECT_TRUE(pfn_valid(f)) << f;
    page* pg = pfn_to_page(f);
    ASSERT_EQ(pg, first + (f - start)) << f;
    EXPECT_EQ(page_to_pfn(pg), f);
    EXPECT_EQ(page_address(pg), static_cast<char*>(page_address(first)) + (f - start) * PAGE_SIZE);
    EXPECT_EQ(virt_to_page(static_cast<char*>(page_address(pg)) + 100), pg);
  }
  EXPECT_EQ(virt_to_page(past), beyond);
  {
    misuse_recorder rec;
    EXPECT_FALSE(pfn_valid(grown_end));
    EXPECT_EQ(pfn_to_page(grown_end), nullptr);
    EXPECT_EQ(page_to_pfn(first + (grown_end - start)), 0u);
    EXPECT_EQ(virt_to_page(static_cast<char*>(page_address(first)) + (grown_end - start) * PAGE_SIZE), nullptr);
    EXPECT_EQ(rec.count(), 2);
  }
  {
    const fs::path other = new_path();
    pool q = create_pool(other, 16 * MiB);
    EXPECT_FALSE(pfn_valid(q.end_pfn()));
  }
  std::set<pfn_t> got;
  for (page* g; (g = p.alloc_pages(9)) != nullptr;) got.insert(page_to_pfn(g));
  EXPECT_TRUE(got.count(end)) << "the first new region was not handed out";
  EXPECT_EQ(p.check(), "");
  p.close();
  EXPECT_FALSE(pfn_valid(start));
  EXPECT_EQ(virt_to_page(past), nullptr);
}

// Lock-free translations racing a grow (the registry raises its entries' page counts while other
// threads read them: TSan checks the accesses) see the old size or the new one, never a mix, and
// once a new pfn is valid it stays valid and translates both ways.
TEST_F(GrowTest, TranslationsRacingAGrowSeeTheOldSizeOrTheNew) {
  const fs::path path = new_path();
  pool p = create_growable(path, 8 * MiB, 64 * MiB);
  const pfn_t start = p.start_pfn(), end = p.end_pfn();
  page* const first = pfn_to_page(start);
  char* const past = static_cast<char*>(page_address(pfn_to_page(end - 1))) + PAGE_SIZE;
  std::atomic<bool> done{false};
  std::atomic<unsigned> bad{0}, seen_new{0};
  std::thread reader([&] {
    bool grown = false;
    for (bool last = false; !last;) {
      last = done.load();
      if (pfn_to_page(start) != first || page_to_pfn(first) != start || virt_to_page(past - 1) != pfn_to_page(end - 1))
        ++bad;
      const bool valid = pfn_valid(end);
      page* const at = virt_to_page(past);
      if (grown && !valid) ++bad;  // a page count only rises while the pool is open
      if (valid) {
        grown = true;
        page* pg = pfn_to_page(end);
        if (pg != first + (end - start) || page_to_pfn(pg) != end || page_address(pg) != past) ++bad;
      }
      if (at != nullptr && at != first + (end - start)) ++bad;
    }
    seen_new = grown;
  });
  for (std::uint64_t size = 16 * MiB; size <= 64 * MiB; size += 8 * MiB) ASSERT_EQ(p.grow(size), 0) << size;
  done = true;
  reader.join();
  EXPECT_EQ(bad.load(), 0u);
  EXPECT_EQ(seen_new.load(), 1u) << "the reader's last round ran after the grows";
  EXPECT_EQ(p.check(), "");
}

// A grow refused by the file system before its first fence (ENOSPC from the preallocation) changes
// nothing: the file keeps its size (the extension is undone), closed or open, and the pool still
// grows within the room there is.
TEST_F(GrowTest, AGrowTheFileSystemRefusesLeavesTheFileItsSize) {
  small_tmpfs fs(40 * MiB);
  if (!fs.ok()) GTEST_SKIP() << fs.why();
  const fs::path path = fs.dir() / "pool";
  pool::options o;
  o.size = 16 * MiB;
  o.max_size = 256 * MiB;
  o.preallocate = true;
  {
    // Preallocated at create, and open since: an open grow reserves the new part itself.
    pool p = pool::create(path, o);
    const std::uint64_t regions = p.stats().total_regions;
    errno = 0;
    EXPECT_EQ(p.grow(128 * MiB), -ENOSPC);
    EXPECT_EQ(errno, ENOSPC);
    EXPECT_EQ(fs::file_size(path), 16 * MiB) << "the refused grow left the file extended";
    EXPECT_EQ(p.stats().total_regions, regions);
    ASSERT_EQ(p.grow(24 * MiB), 0) << "the room there is";
    EXPECT_EQ(fs::file_size(path), 24 * MiB);
    EXPECT_EQ(p.check(), "");
  }
  pool::grow_options prealloc;
  prealloc.preallocate = true;
  error_of([&] { pool::grow(path, 128 * MiB, prealloc); }, ENOSPC);
  EXPECT_EQ(fs::file_size(path), 24 * MiB) << "the refused grow left the file extended";
  pool::grow(path, 32 * MiB, prealloc);
  EXPECT_EQ(fs::file_size(path), 32 * MiB);
  EXPECT_EQ(pool::open(path).check(), "");
}

// g_sections is a hash table of 2^28-page pfn granules (page.hpp). A growable pool's granule it has
// no page in yet holds no entry, so another pool whose granule hashes to the same entry may take
// it; the grow into that granule then goes to the overflow table, and both pools translate before
// and after, and after either closes. (The capacity must pass 2^28 pages: a 1 TiB sparse file.)
namespace {
constexpr std::uint64_t kGranule = std::uint64_t{1} << detail::SECTION_SHIFT;
constexpr pfn_t kBigBase = pfn_t{0x5eed0} << detail::SECTION_SHIFT;
// Its first granule hashes to the entry of the big pool's second one.
constexpr pfn_t kOtherBase = kBigBase + kGranule * ((std::uint64_t{1} << detail::SECTION_BITS) + 1);
static_assert((kOtherBase >> detail::SECTION_SHIFT) % (1u << detail::SECTION_BITS) ==
              ((kBigBase >> detail::SECTION_SHIFT) + 1) % (1u << detail::SECTION_BITS));
constexpr std::uint64_t kBigSize = 8 * GiB;  // the tables of a 1 TiB capacity (a sparse file)

// Creates the big growable pool (base kBigBase, capacity past one granule), a small one (base
// kOtherBase) and one whose pfns lie in the big pool's capacity past its pages (kBigBase +
// kGranule); an empty string on success, else why it cannot be made here (the test skips).
std::string make_colliding_pools(const fs::path& big, const fs::path& other, const fs::path& inside) {
  std::vector<pfn_t> bases{kBigBase, kOtherBase, kBigBase + kGranule};
  std::size_t next = 0;
  detail::set_pfn_base_source_for_testing([&] { return bases[next++]; });
  std::string why;
  try {
    pool::options o;
    o.max_size = (kGranule << PAGE_SHIFT) + 16 * GiB;
    o.size = kBigSize;
    pool::create(big, o).close();
    o = pool::options{};
    o.size = 16 * MiB;
    pool::create(other, o).close();
    pool::create(inside, o).close();
  } catch (const pmpage::error& e) {
    why = std::string("cannot make a pool with 1 TiB of capacity here: ") + e.what();
  }
  detail::set_pfn_base_source_for_testing({});
  return why;
}

bool round_trips(pfn_t f) {
  page* pg = pfn_to_page(f);
  return pg && page_to_pfn(pg) == f && virt_to_page(page_address(pg)) == pg && pfn_valid(f);
}
}  // namespace

TEST_F(GrowTest, AGranuleGrownIntoWhoseEntryAnotherPoolHoldsGoesToTheOverflow) {
  const fs::path big_path = new_path("big"), other_path = new_path("other"), inside = new_path("inside");
  if (std::string why = make_colliding_pools(big_path, other_path, inside); !why.empty()) GTEST_SKIP() << why;
  pool big = pool::open(big_path);
  ASSERT_EQ(big.start_pfn(), kBigBase);
  ASSERT_LT(big.end_pfn(), kBigBase + kGranule);
  // Its capacity's pfns are reserved, though no pages yet: a pool using them cannot open beside it.
  try {
    pool::open(inside);
    ADD_FAILURE() << "a pool inside the capacity opened";
  } catch (const pmpage::error& e) {
    EXPECT_EQ(e.code().value(), EBUSY) << e.what();
  }
  const unsigned overflowing = detail::overflow_granules();
  {
    pool other = pool::open(other_path);
    ASSERT_EQ(other.start_pfn(), kOtherBase);
    EXPECT_EQ(detail::overflow_granules(), overflowing) << "the entry was free: not grown into yet";
    EXPECT_TRUE(round_trips(kOtherBase));
    EXPECT_TRUE(round_trips(other.end_pfn() - 1));
    EXPECT_TRUE(round_trips(kBigBase));
    EXPECT_FALSE(pfn_valid(kBigBase + kGranule)) << "not grown yet";
    // Grown into its second granule, whose entry the other pool holds: the overflow table.
    ASSERT_EQ(big.grow(kBigSize + (kGranule << PAGE_SHIFT)), 0);
    EXPECT_GT(big.end_pfn(), kBigBase + kGranule);
    EXPECT_EQ(detail::overflow_granules(), overflowing + 1);
    for (const pfn_t f : {kBigBase, kBigBase + kGranule - 1, kBigBase + kGranule, big.end_pfn() - 1})
      EXPECT_TRUE(round_trips(f)) << std::hex << f;
    EXPECT_FALSE(pfn_valid(big.end_pfn()));
    EXPECT_TRUE(round_trips(kOtherBase));
    EXPECT_TRUE(round_trips(other.end_pfn() - 1));
  }
  // The other pool closed: the grown granule still translates (from the overflow table).
  EXPECT_FALSE(pfn_valid(kOtherBase));
  EXPECT_TRUE(round_trips(kBigBase + kGranule));
  EXPECT_TRUE(round_trips(big.end_pfn() - 1));
  {
    // Reopened beside the grown pool: the grown granule keeps its place, the other pool its entry.
    pool other = pool::open(other_path);
    EXPECT_TRUE(round_trips(kOtherBase));
    EXPECT_TRUE(round_trips(kBigBase + kGranule));
    big.close();
    EXPECT_EQ(detail::overflow_granules(), overflowing);
    EXPECT_FALSE(pfn_valid(kBigBase));
    EXPECT_FALSE(pfn_valid(kBigBase + kGranule));
    EXPECT_TRUE(round_trips(kOtherBase));
    EXPECT_TRUE(round_trips(other.end_pfn() - 1));
  }
}

// The other order: the grow finds the entry free and takes it; the pool opened after goes to the
// overflow table; closing the grown pool frees the entry it took.
TEST_F(GrowTest, AGranuleGrownIntoTakesItsFreeEntryAndGivesItBackAtClose) {
  const fs::path big_path = new_path("big"), other_path = new_path("other"), inside = new_path("inside");
  if (std::string why = make_colliding_pools(big_path, other_path, inside); !why.empty()) GTEST_SKIP() << why;
  const unsigned overflowing = detail::overflow_granules();
  pool big = pool::open(big_path);
  ASSERT_EQ(big.grow(kBigSize + (kGranule << PAGE_SHIFT)), 0);
  EXPECT_EQ(detail::overflow_granules(), overflowing);
  EXPECT_TRUE(round_trips(kBigBase + kGranule));
  EXPECT_TRUE(round_trips(big.end_pfn() - 1));
  pool other = pool::open(other_path);
  EXPECT_EQ(detail::overflow_granules(), overflowing + 1);
  EXPECT_TRUE(round_trips(kOtherBase));
  EXPECT_TRUE(round_trips(kBigBase + kGranule));
  big.close();
  EXPECT_FALSE(pfn_valid(kBigBase + kGranule));
  EXPECT_TRUE(round_trips(kOtherBase));
  EXPECT_TRUE(round_trips(other.end_pfn() - 1));
  other.close();
  EXPECT_EQ(detail::overflow_granules(), overflowing);
  EXPECT_FALSE(pfn_valid(kOtherBase));
}

namespace {

TEST(GrowCapacity, AMaxSizeThatAddsNoWholeRegionIsStillTheCapacity) {
  // A max_size a little above size gives no room for another region; the pool must not then fall
  // back to growing into its tables' slack, past the max_size it was created with (a re-check
  // after the review found 16 MiB with max_size 17 MiB growing to 34 MiB).
  const std::string path = "/dev/shm/pmpage-test-grow-capacity-" + std::to_string(::getpid());
  ::unlink(path.c_str());
  pmpage::pool::options o;
  o.size = 16ull << 20;
  o.max_size = 17ull << 20;
  const std::uint64_t regions = pmpage::pool::create(path, o).stats().total_regions;
  try {
    (void)pmpage::pool::grow(path, 34ull << 20);
    ADD_FAILURE() << "grew past max_size";
  } catch (const pmpage::error& e) {
    EXPECT_EQ(e.code().value(), EINVAL) << e.what();
    EXPECT_NE(std::string(e.what()).find("capacity"), std::string::npos) << e.what();
  }
  EXPECT_EQ(pmpage::pool::open(path).stats().total_regions, regions);
  ::unlink(path.c_str());
}

}  // namespace
