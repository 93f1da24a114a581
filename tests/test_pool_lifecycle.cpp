// Pools: create, open, reopen, errors, the one-process-at-a-time lock, several pools at once.
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <functional>
#include <iterator>

#include "registry.hpp"  // src/: the section-id quarantine
#include "test_util.hpp"

namespace {

using namespace pmtest;
using pmpage::page;
using pmpage::pfn_t;
using pmpage::pool;

class PoolLifecycle : public TempPathTest {};

std::string read_file(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void write_file(const std::filesystem::path& p, const std::string& bytes) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// Runs f, which must throw pmpage::error, and returns its what().
template <class F>
std::string error_message(F&& f) {
  try {
    f();
  } catch (const pmpage::error& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected pmpage::error, got another exception: " << e.what();
    return e.what();
  }
  ADD_FAILURE() << "expected pmpage::error, nothing was thrown";
  return {};
}

TEST_F(PoolLifecycle, TestsRunWithPmemForced) {
  // The whole suite relies on flush+fence semantics on /dev/shm (see test_util.hpp).
  const char* v = std::getenv("PMEM_IS_PMEM_FORCE");
  ASSERT_NE(v, nullptr);
  EXPECT_STREQ(v, "1");
  pool p = create_pool(new_path(), 64 * MiB);
  EXPECT_TRUE(p.is_pmem());
}

TEST_F(PoolLifecycle, CreateGivesAnEmptyPoolOfWholeRegions) {
  const auto path = new_path();
  pool p = create_pool(path, 64 * MiB);
  ASSERT_TRUE(p.is_open());
  EXPECT_EQ(p.path(), path);

  const pmpage::pool_stats s = p.stats();
  EXPECT_NE(p.start_pfn(), 0u) << "pfn 0 must never be used: a zeroed slot means 'no page'";
  EXPECT_EQ(s.total_pages, p.end_pfn() - p.start_pfn());
  EXPECT_GT(s.total_pages, 0u);
  EXPECT_EQ(s.total_pages % pmpage::HPAGE_PMD_NR, 0u);
  EXPECT_LE(s.total_pages * pmpage::PAGE_SIZE, 64 * MiB);
  EXPECT_EQ(s.total_regions, s.total_pages / pmpage::HPAGE_PMD_NR);
  EXPECT_EQ(s.free_pages, s.total_pages);
  EXPECT_EQ(s.free_regions, s.total_regions);
  EXPECT_EQ(s.split_regions, 0u);
  EXPECT_EQ(s.materialised_regions, 0u);
  EXPECT_EQ(s.descriptor_bytes, s.total_regions * 64);
  EXPECT_EQ(s.repaired_at_open, 0u);
  EXPECT_EQ(p.check(), "");
  EXPECT_TRUE(allocations(p).by_pfn.empty());
}

TEST_F(PoolLifecycle, DataAreaIsTwoMiBAlignedInsideTheMapping) {
  pool p = create_pool(new_path(), 64 * MiB);
  const auto data = reinterpret_cast<std::uintptr_t>(data_start(p));
  EXPECT_EQ(data % pmpage::HPAGE_PMD_SIZE, 0u);
  const auto base = reinterpret_cast<std::uintptr_t>(p.base());
  EXPECT_GE(data, base);
  EXPECT_LE(data + p.stats().total_pages * pmpage::PAGE_SIZE, base + p.mapped_length());
  const auto root = reinterpret_cast<std::uintptr_t>(p.root());
  EXPECT_GE(root, base);
  EXPECT_LE(root + p.root_size(), base + p.mapped_length());
}

TEST_F(PoolLifecycle, RootAreaIsZeroedAndAtLeastFourKiB) {
  pool p = create_pool(new_path(), 64 * MiB);
  ASSERT_GE(p.root_size(), 4096u);
  const auto* root = static_cast<const unsigned char*>(p.root());
  for (std::size_t i = 0; i < p.root_size(); ++i) ASSERT_EQ(root[i], 0) << "byte " << i;
}

TEST_F(PoolLifecycle, RootSizeIsRoundedUpToFourKiB) {
  pool::options opts;
  opts.size = 64 * MiB;
  opts.root_size = 5000;
  const auto path = new_path();
  pool p = pool::create(path, opts);
  EXPECT_GE(p.root_size(), 5000u);
  EXPECT_EQ(p.root_size() % 4096, 0u);
  const auto* root = static_cast<const unsigned char*>(p.root());
  for (std::size_t i = 0; i < p.root_size(); ++i) ASSERT_EQ(root[i], 0) << "byte " << i;
  const std::size_t size = p.root_size();
  p.close();
  p = pool::open(path);
  EXPECT_EQ(p.root_size(), size);
}

TEST_F(PoolLifecycle, CreateOverwritingAnOldPoolZeroesTheRoot) {
  const auto path = new_path();
  {
    pool p = create_pool(path, 64 * MiB);
    std::memset(p.root(), 0xab, p.root_size());
    p.persist(p.root(), p.root_size());
    ASSERT_NE(p.alloc_pages(3), nullptr);
  }
  pool::options opts;
  opts.size = 64 * MiB;
  opts.overwrite = true;
  pool p = pool::create(path, opts);
  const auto* root = static_cast<const unsigned char*>(p.root());
  for (std::size_t i = 0; i < p.root_size(); ++i) ASSERT_EQ(root[i], 0) << "byte " << i;
  EXPECT_EQ(p.stats().free_pages, p.stats().total_pages);
  EXPECT_TRUE(allocations(p).by_pfn.empty());
}

TEST_F(PoolLifecycle, RootAndDataSurviveReopen) {
  const auto path = new_path();
  pfn_t pfn = 0;
  {
    pool p = create_pool(path, 64 * MiB);
    page* pg = p.alloc_pages(2);
    ASSERT_NE(pg, nullptr);
    pfn = pmpage::page_to_pfn(pg);
    auto* data = static_cast<char*>(pmpage::page_address(pg));
    std::strcpy(data, "hello, pmem");
    std::strcpy(data + 3 * pmpage::PAGE_SIZE, "last page of the compound");
    p.persist(data, 4 * pmpage::PAGE_SIZE);
    std::strcpy(static_cast<char*>(p.root()), "root");
    p.flush(p.root(), 8);
    p.drain();
  }
  pool p = pool::open(path);
  EXPECT_STREQ(static_cast<char*>(p.root()), "root");
  auto* data = static_cast<char*>(pmpage::page_address(pmpage::pfn_to_page(pfn)));
  EXPECT_STREQ(data, "hello, pmem");
  EXPECT_STREQ(data + 3 * pmpage::PAGE_SIZE, "last page of the compound");
}

TEST_F(PoolLifecycle, ReopenKeepsPfnsAndAllocationsWithCountOne) {
  const auto path = new_path();
  std::map<pfn_t, unsigned> before;
  pfn_t start = 0, end = 0;
  std::uint64_t free_before = 0;
  {
    pool p = create_pool(path, 128 * MiB);
    start = p.start_pfn();
    end = p.end_pfn();
    for (unsigned order : {0u, 0u, 1u, 3u, 8u, 9u, 10u, 0u, 5u}) {
      page* pg = p.alloc_pages(order);
      ASSERT_NE(pg, nullptr) << "order " << order;
      before[pmpage::page_to_pfn(pg)] = order;
      // Volatile state that must not survive: extra references, flags, private.
      pmpage::get_page(pg);
      pmpage::get_page(pg);
      pmpage::SetPageDirty(pg);
      pmpage::SetPageUptodate(pg);
      pmpage::set_page_private(pg, 0x1234);
      ASSERT_TRUE(pmpage::trylock_page(pg));
    }
    page* split = p.alloc_pages(9);
    ASSERT_NE(split, nullptr);
    ASSERT_EQ(pmpage::split_huge_page(split), 0);
    const pfn_t sp = pmpage::page_to_pfn(split);
    for (pfn_t q = sp; q < sp + pmpage::HPAGE_PMD_NR; ++q) before[q] = 0;
    free_before = p.stats().free_pages;
  }

  pool p = pool::open(path);
  EXPECT_EQ(p.start_pfn(), start);
  EXPECT_EQ(p.end_pfn(), end);
  EXPECT_EQ(p.stats().free_pages, free_before);
  EXPECT_EQ(p.stats().repaired_at_open, 0u);
  EXPECT_EQ(p.check(), "");

  const allocation_snapshot after = allocations(p);
  EXPECT_EQ(after.visits, before.size());
  EXPECT_EQ(after.by_pfn, before);
  for (const auto& [pfn, order] : before) {
    page* pg = pmpage::pfn_to_page(pfn);
    ASSERT_NE(pg, nullptr);
    EXPECT_EQ(pmpage::page_count(pg), 1) << "pfn " << pfn;
    EXPECT_EQ(pmpage::compound_order(pg), order) << "pfn " << pfn;
    EXPECT_EQ(pmpage::PageHead(pg), order > 0) << "pfn " << pfn;
    EXPECT_FALSE(pmpage::PageLocked(pg));
    EXPECT_FALSE(pmpage::PageDirty(pg));
    EXPECT_FALSE(pmpage::PageUptodate(pg));
    EXPECT_EQ(pmpage::page_private(pg), 0u);
  }
}

TEST_F(PoolLifecycle, AllocationsCanBeFreedAfterReopen) {
  const auto path = new_path();
  std::vector<pfn_t> pfns;
  {
    pool p = create_pool(path, 64 * MiB);
    for (unsigned order : {0u, 4u, 9u}) pfns.push_back(pmpage::page_to_pfn(p.alloc_pages(order)));
  }
  pool p = pool::open(path);
  for (pfn_t pfn : pfns) pmpage::put_page(pmpage::pfn_to_page(pfn));
  EXPECT_EQ(p.stats().free_pages, p.stats().total_pages);
  p.trim();
  EXPECT_EQ(p.stats().split_regions, 0u);
  EXPECT_EQ(p.check(), "");
}

// "Opening a pool reads no per-4 KiB state": the 4 KiB descriptors of regions that are split on
// the device are built on first touch, not at open.
TEST_F(PoolLifecycle, OpenBuildsNoSplitRegionDescriptorsUntilTouched) {
  const auto path = new_path();
  std::vector<pfn_t> one_per_region;
  std::uint64_t regions = 0;
  {
    pool p = create_pool(path, 128 * MiB);
    regions = p.stats().total_regions;
    while (page* pg = p.alloc_pages(9)) {
      ASSERT_EQ(pmpage::split_huge_page(pg), 0);
      one_per_region.push_back(pmpage::page_to_pfn(pg) + 7);
    }
    ASSERT_EQ(p.stats().split_regions, regions);
    ASSERT_EQ(p.stats().materialised_regions, regions);
  }
  const long before = rss_anon_kib();
  pool p = pool::open(path);
  const long after = rss_anon_kib();
  pmpage::pool_stats s = p.stats();
  EXPECT_EQ(s.split_regions, regions);
  EXPECT_EQ(s.materialised_regions, 0u);
  EXPECT_EQ(s.descriptor_bytes, regions * 64);
  if (kRssIsMeaningful) {
    EXPECT_LT(after - before, static_cast<long>(regions * 32 / 4))
        << "open grew RssAnon by " << after - before << " KiB for " << regions << " split regions";
  }

  // Touching one page builds its region's descriptors, and only those.
  page* pg = pmpage::pfn_to_page(one_per_region[3]);
  EXPECT_EQ(pmpage::page_count(pg), 1);
  EXPECT_TRUE(pmpage::PageSplit(pg));
  s = p.stats();
  EXPECT_EQ(s.materialised_regions, 1u);
  EXPECT_EQ(s.descriptor_bytes, regions * 64 + 32768);
  EXPECT_EQ(p.check(), "");
}

TEST_F(PoolLifecycle, CreateRefusesAnExistingPoolWithoutOverwrite) {
  const auto path = new_path();
  pfn_t pfn = 0;
  {
    pool p = create_pool(path, 64 * MiB);
    pfn = pmpage::page_to_pfn(p.alloc_pages(0));
  }
  const std::string bytes_before = read_file(path);
  const std::string msg = error_message([&] { create_pool(path, 64 * MiB); });
  EXPECT_NE(msg.find(path.string()), std::string::npos) << msg;
  EXPECT_TRUE(read_file(path) == bytes_before) << "a rejected file must not be modified";

  pool p = pool::open(path);
  const auto snap = allocations(p);
  ASSERT_EQ(snap.by_pfn.size(), 1u);
  EXPECT_EQ(snap.by_pfn.begin()->first, pfn);
}

TEST_F(PoolLifecycle, CreateWithOverwriteReformats) {
  const auto path = new_path();
  { pool p = create_pool(path, 64 * MiB); ASSERT_NE(p.alloc_pages(9), nullptr); }
  pool::options opts;
  opts.size = 64 * MiB;
  opts.overwrite = true;
  pool p = pool::create(path, opts);
  EXPECT_EQ(p.stats().free_pages, p.stats().total_pages);
  EXPECT_TRUE(allocations(p).by_pfn.empty());
}

TEST_F(PoolLifecycle, CreateFormatsAnExistingPlainFileOfItsOwnSize) {
  const auto path = new_path();
  {
    const int fd = ::open(path.c_str(), O_CREAT | O_RDWR, 0600);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::ftruncate(fd, static_cast<off_t>(32 * MiB)), 0);
    ::close(fd);
  }
  pool::options opts;  // size 0: use the file's size
  pool p = pool::create(path, opts);
  EXPECT_GT(p.stats().total_pages, 0u);
  EXPECT_LE(p.stats().total_pages * pmpage::PAGE_SIZE, 32 * MiB);
  EXPECT_EQ(std::filesystem::file_size(path), 32 * MiB);
}

TEST_F(PoolLifecycle, CreateGrowsAnExistingEmptyFile) {
  const auto path = new_path();
  write_file(path, "");
  pool p = create_pool(path, 64 * MiB);
  EXPECT_GE(std::filesystem::file_size(path), 64 * MiB);
  EXPECT_GT(p.stats().total_pages, 0u);
}

// Formatting a file that holds something other than a pool needs options.overwrite (before
// issue #7 create formatted it silently).
TEST_F(PoolLifecycle, CreateRefusesAForeignFileWithoutOverwrite) {
  const auto path = new_path();
  const std::string bytes(4096, 'x');
  write_file(path, bytes);
  try {
    create_pool(path, 64 * MiB);
    ADD_FAILURE() << "create formatted a foreign file without overwrite";
  } catch (const pmpage::error& e) {
    EXPECT_EQ(e.code(), std::errc::file_exists) << e.what();
    EXPECT_NE(std::string(e.what()).find("not a pmpage pool"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(read_file(path) == bytes) << "a refused file must not be modified";
}

TEST_F(PoolLifecycle, CreateWithOverwriteGrowsAnExistingSmallerForeignFile) {
  const auto path = new_path();
  write_file(path, std::string(4096, 'x'));
  pool::options opts;
  opts.size = 64 * MiB;
  opts.overwrite = true;
  pool p = pool::create(path, opts);
  EXPECT_GE(std::filesystem::file_size(path), 64 * MiB);
  EXPECT_GT(p.stats().total_pages, 0u);
  EXPECT_EQ(p.check(), "");
}

TEST_F(PoolLifecycle, PreallocateReservesTheFileBlocks) {
  const auto path = new_path();
  pool::options opts;
  opts.size = 32 * MiB;
  opts.preallocate = true;
  pool p = pool::create(path, opts);
  struct stat st {};
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_GE(static_cast<std::uint64_t>(st.st_blocks) * 512, 32 * MiB);
}

TEST_F(PoolLifecycle, NewFileGetsTheRequestedMode) {
  const auto path = new_path();
  pool::options opts;
  opts.size = 32 * MiB;
  opts.mode = 0640;
  pool p = pool::create(path, opts);
  struct stat st {};
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0640u);
}

TEST_F(PoolLifecycle, ModeBitsBeyondPermissionsAreRefusedBeforeAnythingIsCreated) {
  const auto path = new_path();
  pool::options opts;
  opts.size = 32 * MiB;
  opts.mode = 04755;  // setuid: a pool file is never a program
  const std::string msg = error_message([&] { pool::create(path, opts); });
  EXPECT_NE(msg.find("options.mode"), std::string::npos) << msg;
  EXPECT_FALSE(std::filesystem::exists(path));
}

TEST_F(PoolLifecycle, OpenOfMissingFileThrowsNamingThePath) {
  const auto path = new_path();
  const std::string msg = error_message([&] { pool::open(path); });
  EXPECT_NE(msg.find(path.string()), std::string::npos) << msg;
  EXPECT_FALSE(std::filesystem::exists(path)) << "open must not create the file";
}

TEST_F(PoolLifecycle, OpenErrorCarriesAnErrnoStyleCode) {
  const auto path = new_path();
  try {
    pool::open(path);
    FAIL() << "open of a missing file succeeded";
  } catch (const pmpage::error& e) {
    EXPECT_EQ(e.code(), std::errc::no_such_file_or_directory) << e.what();
  }
}

TEST_F(PoolLifecycle, CreateOnADirectoryThrowsNamingThePath) {
  const auto path = new_path("dir");
  std::filesystem::create_directory(path);
  const std::string msg = error_message([&] { create_pool(path, 64 * MiB); });
  EXPECT_NE(msg.find(path.string()), std::string::npos) << msg;
  EXPECT_TRUE(std::filesystem::is_directory(path));
  const std::string msg2 = error_message([&] { pool::open(path); });
  EXPECT_NE(msg2.find(path.string()), std::string::npos) << msg2;
}

TEST_F(PoolLifecycle, CreateTooSmallThrowsNamingThePath) {
  const auto path = new_path();
  // Not even one 2 MiB data region fits.
  const std::string msg = error_message([&] { create_pool(path, 64 * 1024); });
  EXPECT_NE(msg.find(path.string()), std::string::npos) << msg;
}

TEST_F(PoolLifecycle, CreateInAMissingDirectoryThrowsNamingThePath) {
  const auto path = new_path("nodir") / "pool";
  const std::string msg = error_message([&] { create_pool(path, 64 * MiB); });
  EXPECT_NE(msg.find(path.string()), std::string::npos) << msg;
}

TEST_F(PoolLifecycle, OpenOfAFileThatIsNoPoolThrowsAndLeavesItUntouched) {
  const auto path = new_path();
  std::string garbage(8 * MiB, '\0');
  for (std::size_t i = 0; i < garbage.size(); ++i) garbage[i] = static_cast<char>(i * 131 + 7);
  write_file(path, garbage);
  const std::string msg = error_message([&] { pool::open(path); });
  EXPECT_NE(msg.find(path.string()), std::string::npos) << msg;
  EXPECT_TRUE(read_file(path) == garbage) << "a rejected file must not be modified";

  const auto zeros = new_path("zeros");
  write_file(zeros, std::string(8 * MiB, '\0'));
  const std::string msg2 = error_message([&] { pool::open(zeros); });
  EXPECT_NE(msg2.find(zeros.string()), std::string::npos) << msg2;
}

TEST_F(PoolLifecycle, SecondOpenInTheSameProcessFails) {
  const auto path = new_path();
  pool a = create_pool(path, 64 * MiB);
  const std::string msg = error_message([&] { pool::open(path); });
  EXPECT_NE(msg.find(path.string()), std::string::npos) << msg;
  // The failed open must not have disturbed the open pool.
  EXPECT_TRUE(a.is_open());
  EXPECT_NE(a.alloc_pages(0), nullptr);
  EXPECT_EQ(a.check(), "");
  a.close();
  pool b = pool::open(path);  // the lock is released at close
  EXPECT_TRUE(b.is_open());
}

TEST_F(PoolLifecycle, CreateOverwriteOfAnOpenPoolFails) {
  const auto path = new_path();
  pool a = create_pool(path, 64 * MiB);
  page* pg = a.alloc_pages(0);
  ASSERT_NE(pg, nullptr);
  pool::options opts;
  opts.size = 64 * MiB;
  opts.overwrite = true;
  error_message([&] { pool::create(path, opts); });
  EXPECT_EQ(pmpage::page_count(pg), 1);
  EXPECT_EQ(a.check(), "");
}

TEST_F(PoolLifecycle, SecondOpenFromAnotherProcessFails) {
  const auto path = new_path();
  pool a = create_pool(path, 64 * MiB);
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    int rc = 0;
    try {
      pool b = pool::open(path);
      rc = 1;  // opened: the lock does not work
    } catch (const pmpage::error& e) {
      rc = std::strstr(e.what(), path.c_str()) ? 0 : 2;
    } catch (...) {
      rc = 3;
    }
    ::_exit(rc);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "1: second open succeeded, 2: message lacks the path, 3: wrong exception";
  EXPECT_EQ(a.check(), "");
}

TEST_F(PoolLifecycle, DefaultPoolIsClosedAndCloseIsIdempotent) {
  pool none;
  EXPECT_FALSE(none.is_open());
  none.close();
  none.close();

  pool p = create_pool(new_path(), 64 * MiB);
  const pfn_t start = p.start_pfn();
  EXPECT_TRUE(pmpage::pfn_valid(start));
  p.close();
  EXPECT_FALSE(p.is_open());
  EXPECT_FALSE(pmpage::pfn_valid(start)) << "pfns of a closed pool are invalid";
  p.close();
}

TEST_F(PoolLifecycle, MoveTransfersOwnership) {
  pool a = create_pool(new_path(), 64 * MiB);
  const pfn_t start = a.start_pfn();
  pool b = std::move(a);
  EXPECT_FALSE(a.is_open());  // NOLINT(bugprone-use-after-move): moved-from is a closed pool
  ASSERT_TRUE(b.is_open());
  EXPECT_EQ(b.start_pfn(), start);
  page* pg = b.alloc_pages(0);
  ASSERT_NE(pg, nullptr);

  pool c;
  c = std::move(b);
  EXPECT_FALSE(b.is_open());  // NOLINT(bugprone-use-after-move)
  EXPECT_EQ(pmpage::page_count(pg), 1);
  EXPECT_EQ(c.check(), "");
  a.close();  // closing a moved-from pool must not close the live one
  EXPECT_TRUE(pmpage::pfn_valid(start));
}

TEST_F(PoolLifecycle, MoveAssignmentClosesTheTargetsOldPool) {
  const auto path_a = new_path("a");
  pool a = create_pool(path_a, 64 * MiB);
  pool b = create_pool(new_path("b"), 64 * MiB);
  const pfn_t a_start = a.start_pfn();
  a = std::move(b);
  EXPECT_FALSE(pmpage::pfn_valid(a_start));
  pool again = pool::open(path_a);  // its lock was released
  EXPECT_TRUE(again.is_open());
}

TEST_F(PoolLifecycle, SeveralPoolsHaveDisjointPfnRanges) {
  std::vector<pool> pools;
  for (int i = 0; i < 4; ++i) pools.push_back(create_pool(new_path(std::to_string(i)), 32 * MiB));
  for (std::size_t i = 0; i < pools.size(); ++i) {
    EXPECT_NE(pools[i].start_pfn(), 0u);
    for (std::size_t j = i + 1; j < pools.size(); ++j) {
      const bool disjoint = pools[i].end_pfn() <= pools[j].start_pfn() ||
                            pools[j].end_pfn() <= pools[i].start_pfn();
      EXPECT_TRUE(disjoint) << "pools " << i << " and " << j;
    }
  }
  // Each pfn resolves to its own pool's memory.
  for (auto& p : pools) {
    page* pg = p.alloc_pages(0);
    ASSERT_NE(pg, nullptr);
    const auto addr = reinterpret_cast<std::uintptr_t>(pmpage::page_address(pg));
    const auto data = reinterpret_cast<std::uintptr_t>(data_start(p));
    EXPECT_GE(addr, data);
    EXPECT_LT(addr, data + p.stats().total_pages * pmpage::PAGE_SIZE);
    EXPECT_EQ(pmpage::virt_to_page(reinterpret_cast<void*>(addr)), pg);
  }
  // Closing one leaves the others intact.
  const pfn_t closed_start = pools[1].start_pfn();
  pools[1].close();
  EXPECT_FALSE(pmpage::pfn_valid(closed_start));
  for (std::size_t i : {0u, 2u, 3u}) {
    EXPECT_TRUE(pmpage::pfn_valid(pools[i].start_pfn()));
    EXPECT_EQ(pools[i].check(), "");
  }
}

TEST_F(PoolLifecycle, ReopenAlongsideOtherPoolsKeepsItsPfns) {
  const auto path = new_path("main");
  pool other = create_pool(new_path("other"), 32 * MiB);
  pfn_t start = 0, pfn = 0;
  {
    pool p = create_pool(path, 32 * MiB);
    start = p.start_pfn();
    pfn = pmpage::page_to_pfn(p.alloc_pages(0));
  }
  pool p = pool::open(path);
  EXPECT_EQ(p.start_pfn(), start);
  EXPECT_EQ(pmpage::page_count(pmpage::pfn_to_page(pfn)), 1);
  EXPECT_TRUE(p.end_pfn() <= other.start_pfn() || other.end_pfn() <= p.start_pfn());
}

TEST_F(PoolLifecycle, PfnsDoNotDependOnTheOrderPoolsAreOpened) {
  const auto pa = new_path("a"), pb = new_path("b");
  pfn_t a_start = 0, b_start = 0;
  {
    pool a = create_pool(pa, 32 * MiB);
    pool b = create_pool(pb, 32 * MiB);
    a_start = a.start_pfn();
    b_start = b.start_pfn();
  }
  pool b = pool::open(pb);
  pool a = pool::open(pa);
  EXPECT_EQ(a.start_pfn(), a_start);
  EXPECT_EQ(b.start_pfn(), b_start);
}

TEST_F(PoolLifecycle, ReopenNeverSharesPfnsWithAnOpenPool) {
  // Pools created while others were closed may have been given overlapping pfn ranges; opening
  // them together must then fail cleanly rather than alias pfns (pfns are stored on the device,
  // so they cannot be renumbered).
  std::vector<std::filesystem::path> old_paths;
  std::vector<pfn_t> old_starts;
  for (int i = 0; i < 4; ++i) {
    old_paths.push_back(new_path("old" + std::to_string(i)));
    pool p = create_pool(old_paths.back(), 8 * MiB);
    old_starts.push_back(p.start_pfn());
  }
  std::vector<pool> open_pools;
  for (int i = 0; i < 4; ++i) open_pools.push_back(create_pool(new_path("new" + std::to_string(i)), 8 * MiB));
  for (std::size_t i = 0; i < old_paths.size(); ++i) {
    try {
      pool p = pool::open(old_paths[i]);
      EXPECT_EQ(p.start_pfn(), old_starts[i]);
      for (const pool& q : open_pools)
        EXPECT_TRUE(p.end_pfn() <= q.start_pfn() || q.end_pfn() <= p.start_pfn())
            << "pool " << old_paths[i] << " shares pfns with " << q.path();
      open_pools.push_back(std::move(p));
    } catch (const pmpage::error& e) {
      EXPECT_NE(std::string(e.what()).find(old_paths[i].string()), std::string::npos) << e.what();
    }
  }
}

TEST_F(PoolLifecycle, ReopenRepeatedlyIsStable) {
  const auto path = new_path();
  std::map<pfn_t, unsigned> expected;
  { pool p = create_pool(path, 64 * MiB); }
  for (int round = 0; round < 5; ++round) {
    pool p = pool::open(path);
    ASSERT_EQ(allocations(p).by_pfn, expected) << "round " << round;
    page* pg = p.alloc_pages(static_cast<unsigned>(round * 2));
    ASSERT_NE(pg, nullptr);
    expected[pmpage::page_to_pfn(pg)] = static_cast<unsigned>(round * 2);
    EXPECT_EQ(p.check(), "");
  }
}

// ---- a stale page* or pfn of a closed pool (issue #18 defect 11) ------------------------------------

// What a pool looks like from outside: to check that a stale call left it untouched.
struct pool_view {
  std::map<pfn_t, unsigned> allocs;
  std::uint64_t free_pages;
  bool operator==(const pool_view&) const = default;
};
[[maybe_unused]] void PrintTo(const pool_view& v, std::ostream* os) {
  *os << v.allocs.size() << " allocations, " << v.free_pages << " free pages";
}
pool_view view_of(const pool& p) { return {allocations(p).by_pfn, p.stats().free_pages}; }

pool make_volatile(std::uint64_t size) {
  pool::volatile_options v;
  v.size = size;
  return pool::create_volatile(v);
}

// Pool A is closed while a caller still holds one of its page*; pool B is made next, the same
// size: before the fix B's descriptors landed at A's old addresses and put_page(stale) freed B's
// page without a report. Now A's descriptor addresses are quarantined: the late call is misuse.
void expect_stale_page_reported(const std::function<pool()>& make_a, const std::function<pool()>& make_b) {
  pool a = make_a();
  page* stale = a.alloc_pages(0);
  ASSERT_NE(stale, nullptr);
  page* stale_large = a.alloc_pages(pmpage::HPAGE_PMD_ORDER);
  ASSERT_NE(stale_large, nullptr);
  a.close();

  pool b = make_b();
  page* mine = b.alloc_pages(0);  // A's first allocations again: the same descriptor indexes
  page* mine_large = b.alloc_pages(pmpage::HPAGE_PMD_ORDER);
  ASSERT_TRUE(mine && mine_large);
  const pool_view before = view_of(b);
  {
    misuse_recorder rec;
    pmpage::put_page(stale);
    EXPECT_EQ(rec.count(), 1) << "a stale page* of a closed pool was accepted";
    EXPECT_NE(rec.last().find("closed"), std::string::npos) << rec.last();
    pmpage::free_pages(stale_large, pmpage::HPAGE_PMD_ORDER);
    EXPECT_EQ(rec.count(), 2);
    EXPECT_EQ(pmpage::page_to_pfn(stale), 0u);
    EXPECT_EQ(rec.count(), 3);
  }
  EXPECT_EQ(pmpage::page_count(mine), 1);
  EXPECT_EQ(pmpage::page_count(mine_large), 1);
  EXPECT_EQ(view_of(b), before);
  EXPECT_EQ(b.check(), "");
}

TEST_F(PoolLifecycle, StalePageOfAClosedVolatilePoolIsMisuseNotANewerPoolsPage) {
  expect_stale_page_reported([] { return make_volatile(8 * MiB); }, [] { return make_volatile(8 * MiB); });
}

TEST_F(PoolLifecycle, StalePageOfAClosedPersistentPoolIsMisuseNotANewerPoolsPage) {
  const auto pa = new_path("a"), pb = new_path("b");
  expect_stale_page_reported([&] { return create_pool(pa, 8 * MiB); }, [&] { return create_pool(pb, 8 * MiB); });
}

// The same pool reopened: its pfns are names on the media and stay valid, but a page* from before
// the close is not one of its descriptors any more.
TEST_F(PoolLifecycle, StalePageOfAPoolBeforeItWasReopenedIsMisuse) {
  const auto path = new_path();
  pool a = create_pool(path, 8 * MiB);
  page* stale = a.alloc_pages(0);
  ASSERT_NE(stale, nullptr);
  const pfn_t pfn = pmpage::page_to_pfn(stale);
  a.close();
  pool again = pool::open(path);
  const pool_view before = view_of(again);
  {
    misuse_recorder rec;
    pmpage::put_page(stale);
    EXPECT_EQ(rec.count(), 1);
  }
  EXPECT_EQ(view_of(again), before);
  EXPECT_EQ(pmpage::page_count(pmpage::pfn_to_page(pfn)), 1) << "the page survives close; its pfn names it again";
  EXPECT_EQ(again.check(), "");
}

// The quarantine holds across many pools made and closed after A (the bound is QUARANTINE_POOLS
// closed pools: docs/api.md).
TEST_F(PoolLifecycle, StalePageStaysMisuseWhileOtherPoolsComeAndGo) {
  pool a = make_volatile(2 * MiB);
  page* stale = a.alloc_pages(0);
  ASSERT_NE(stale, nullptr);
  a.close();
  std::vector<pool> open;
  for (unsigned i = 0; i + 2 < pmpage::detail::QUARANTINE_POOLS; ++i) {
    pool p = make_volatile(2 * MiB);
    ASSERT_NE(p.alloc_pages(0), nullptr);
    if (i % 2) open.push_back(std::move(p));  // the others close: they join the quarantine
  }
  misuse_recorder rec;
  pmpage::put_page(stale);
  EXPECT_EQ(rec.count(), 1);
  for (const pool& p : open) EXPECT_EQ(p.check(), "");
}

// A new pool takes no pfn range a recently closed pool had, so a stale pfn finds no pool (not a
// new pool's page); reopening a persistent pool takes its own pfn base regardless.
TEST_F(PoolLifecycle, NewPoolsDoNotTakeThePfnRangeOfARecentlyClosedPool) {
  pool v = make_volatile(2 * MiB);
  const pfn_t stale = v.start_pfn();
  const std::uint64_t n = v.end_pfn() - v.start_pfn();
  const pfn_t ids[] = {stale};
  EXPECT_EQ(pmpage::detail::first_pickable_pfn_base(ids, n), 0u) << "in use";
  v.close();
  EXPECT_EQ(pmpage::detail::first_pickable_pfn_base(ids, n), 0u) << "closed just now: quarantined";
  EXPECT_FALSE(pmpage::pfn_valid(stale));

  const auto path = new_path();
  pfn_t start;
  {
    pool p = create_pool(path, 8 * MiB);
    start = p.start_pfn();
  }
  const pfn_t pid[] = {start};
  EXPECT_EQ(pmpage::detail::first_pickable_pfn_base(pid, 1), 0u);
  pool p = pool::open(path);  // its own pfn base, quarantined or not
  EXPECT_EQ(p.start_pfn(), start);
}

// Two pools made at once never pick overlapping pfn ranges (the second used to fail EBUSY,
// "already used by another open pool"): a picked base stays taken until its pool registers or
// gives it back.
TEST_F(PoolLifecycle, APickedPfnBaseIsNotPickedAgainBeforeItsPoolRegisters) {
  pfn_t candidates[256];
  for (unsigned i = 0; i < 256; ++i) candidates[i] = (std::uint64_t{0xab00} + i) << 32;
  const pfn_t id = pmpage::detail::first_pickable_pfn_base(candidates, 512);
  ASSERT_NE(id, 0u);
  const pfn_t same[] = {id};
  EXPECT_EQ(pmpage::detail::first_pickable_pfn_base(same, 512), 0u) << "picked twice";
  pmpage::detail::release_picked_pfn_base(id);
  EXPECT_EQ(pmpage::detail::first_pickable_pfn_base(same, 512), id);
  pmpage::detail::release_picked_pfn_base(id);
}

}  // namespace
