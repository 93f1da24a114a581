// Stated limits are the real limits: each constant of the "limits" block of <pmpage/types.hpp>
// is reached (it works at the limit) and overstepped (one more fails with the documented errno,
// and a message naming the limit), and descriptors outside every open pool stay misuse.
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <iterator>
#include <limits>
#include <random>
#include <set>
#include <thread>

#include "layout.hpp"
#include "pmpage/fsck.hpp"
#include "pmpage/pmpage.h"
#include "cpu_pinning.hpp"
#include "registry.hpp"
#include "test_util.hpp"

namespace {

using namespace pmtest;
using pmpage::page;
using pmpage::pfn_t;
using pmpage::pool;

// ThreadSanitizer keeps the application's mappings in a few TiB of the address space: about 800
// pools' 4 GiB descriptor windows fit (docs/api.md, MAX_OPEN_POOLS), so the tests that open
// hundreds of pools at once run in the plain and ASan builds only.
#if defined(__SANITIZE_THREAD__)
inline constexpr bool kAddressSpaceForThousandsOfPools = false;
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
inline constexpr bool kAddressSpaceForThousandsOfPools = false;
#else
inline constexpr bool kAddressSpaceForThousandsOfPools = true;
#endif
#else
inline constexpr bool kAddressSpaceForThousandsOfPools = true;
#endif

class Limits : public TempPathTest {
 protected:
  static pool create_with_root(const std::filesystem::path& path, std::uint64_t size, std::size_t root_size) {
    pool::options opts;
    opts.size = size;
    opts.root_size = root_size;
    return pool::create(path, opts);
  }
};

// ---- pool size -------------------------------------------------------------------------------

TEST_F(Limits, MinPoolSizeIsTheSmallestPoolCreateAccepts) {
  for (const std::uint64_t below : {pmpage::MIN_POOL_SIZE - 1, pmpage::MIN_POOL_SIZE - pmpage::PAGE_SIZE}) {
    const auto path = new_path();
    const std::string what = expect_error(EINVAL, [&] { create_pool(path, below); });
    EXPECT_NE(what.find("MIN_POOL_SIZE"), std::string::npos) << what;
    EXPECT_FALSE(std::filesystem::exists(path)) << "a file create made must be removed when it fails";
  }

  pool p = create_pool(new_path(), pmpage::MIN_POOL_SIZE);
  EXPECT_EQ(p.stats().total_pages, pmpage::HPAGE_PMD_NR) << "one 2 MiB region";
  page* huge = p.alloc_pages(pmpage::HPAGE_PMD_ORDER);
  ASSERT_NE(huge, nullptr);
  EXPECT_EQ(p.alloc_pages(0), nullptr) << "the pool is full";
  pmpage::put_page(huge);
  EXPECT_EQ(p.check(), "");
}

TEST_F(Limits, MinPoolSizeHoldsARootAreaOfUpTo2MiBMinus24KiB) {
  // Superblocks (8 KiB), lanes (4 KiB), region table, page map and owner table (4 KiB each) share
  // the first 2 MiB with the root area.
  constexpr std::size_t fits = (2 << 20) - (24 << 10);
  pool p = create_with_root(new_path(), pmpage::MIN_POOL_SIZE, fits);
  EXPECT_EQ(p.root_size(), fits);
  EXPECT_EQ(p.stats().total_pages, pmpage::HPAGE_PMD_NR);
  p.close();

  const std::string what = expect_error(EINVAL, [&] {
    create_with_root(new_path(), pmpage::MIN_POOL_SIZE, fits + pmpage::PAGE_SIZE);
  });
  EXPECT_NE(what.find("too small"), std::string::npos) << what;
}

TEST_F(Limits, DataAreaStopsAtMaxPoolPages) {
  // A sparse /dev/shm file a little over 16 TiB + metadata. Sparse is not free: create reserves
  // the metadata blocks (2 GiB of page maps, 64 MiB of region table) and the region descriptors
  // take 512 MiB of DRAM, about 5 s in a Debug build. Too much for every run: on demand.
  if (!std::getenv("PMPAGE_TEST_LARGE"))
    GTEST_SKIP() << "a 16 TiB pool costs 2.1 GiB of /dev/shm and 512 MiB of DRAM; set PMPAGE_TEST_LARGE=1 to run it";
  constexpr std::uint64_t size = (pmpage::MAX_POOL_PAGES << pmpage::PAGE_SHIFT) + 4 * GiB;
  const auto path = new_path();
  pool p = create_pool(path, size);
  EXPECT_EQ(std::filesystem::file_size(path), size);
  EXPECT_EQ(p.stats().total_pages, pmpage::MAX_POOL_PAGES) << "the rest of the file is left unused";
  ASSERT_EQ(p.end_pfn() - p.start_pfn(), pmpage::MAX_POOL_PAGES);

  // The last page translates like the first; one past it is no page of this pool.
  const pfn_t last = p.end_pfn() - 1;
  page* d = pmpage::pfn_to_page(last);
  ASSERT_NE(d, nullptr);
  EXPECT_EQ(pmpage::page_to_pfn(d), last);
  EXPECT_EQ(pmpage::virt_to_page(pmpage::page_address(d)), d);
  EXPECT_EQ(static_cast<char*>(pmpage::page_address(d)) + pmpage::PAGE_SIZE,
            data_start(p) + (pmpage::MAX_POOL_PAGES << pmpage::PAGE_SHIFT));
  EXPECT_FALSE(pmpage::pfn_valid(p.end_pfn()));

  page* top = p.alloc_pages(pmpage::MAX_PAGE_ORDER);
  ASSERT_NE(top, nullptr);
  EXPECT_EQ(pmpage::page_to_pfn(pmpage::pfn_to_page(pmpage::page_to_pfn(top))), pmpage::page_to_pfn(top));
  pmpage::put_page(top);
}

TEST_F(Limits, PoolsSpanningSeveralDescriptorGranulesTranslateInEachOfThem) {
  // 2^27 + 2^18 pages (~513 GiB of sparse file): descriptors in three 4 GiB granules. Costs
  // 1 GiB + 33 MiB of /dev/shm (owner tables and page maps, reserved at create) and 8 MiB of
  // DRAM (region descriptors).
  constexpr std::uint64_t per_granule = std::uint64_t{1} << 26;  // pages whose descriptors fill 4 GiB
  const auto path = new_path();
  constexpr std::uint64_t pages = 2 * per_granule + (1u << 18);
  pool p = create_pool(path, (pages << pmpage::PAGE_SHIFT) + pages * 8 + 64 * MiB);
  const std::uint64_t total = p.end_pfn() - p.start_pfn();
  ASSERT_GT(total, 2 * per_granule);

  // Fill the first granule with 1 GiB pages, until one (a multi-region compound) lands beyond it;
  // then an order-0 page splits a region there too.
  page* head = nullptr;
  for (std::uint64_t i = 0; i <= total >> pmpage::MAX_PAGE_ORDER && !head; ++i) {
    page* g = p.alloc_pages(pmpage::MAX_PAGE_ORDER);
    ASSERT_NE(g, nullptr);
    if (pmpage::page_to_pfn(g) - p.start_pfn() >= per_granule) head = g;
  }
  ASSERT_NE(head, nullptr);
  page* small = p.alloc_pages(0);
  ASSERT_NE(small, nullptr);
  const pfn_t head_pfn = pmpage::page_to_pfn(head), small_pfn = pmpage::page_to_pfn(small);
  ASSERT_GE(small_pfn - p.start_pfn(), per_granule) << "the first granule should be full";

  for (const pfn_t pfn : {p.start_pfn(), p.start_pfn() + per_granule - 1, p.start_pfn() + per_granule,
                          p.start_pfn() + 2 * per_granule, p.end_pfn() - 1, head_pfn + 1000, small_pfn}) {
    page* d = pmpage::pfn_to_page(pfn);
    ASSERT_NE(d, nullptr);
    EXPECT_EQ(pmpage::page_to_pfn(d), pfn);
    EXPECT_EQ(pmpage::virt_to_page(pmpage::page_address(d)), d);
    EXPECT_EQ(static_cast<char*>(pmpage::page_address(d)), data_start(p) + ((pfn - p.start_pfn()) << pmpage::PAGE_SHIFT));
  }
  // A tail in another region of the compound (PG_region_tail) finds its head.
  page* tail = pmpage::pfn_to_page(head_pfn + (pmpage::HPAGE_PMD_NR * 100) + 7);
  EXPECT_EQ(pmpage::compound_head(tail), head);
  EXPECT_TRUE(pmpage::PageTail(tail));
  pmpage::get_page(tail);
  EXPECT_EQ(pmpage::page_count(head), 2);
  pmpage::put_page(tail);
  EXPECT_EQ(pmpage::page_count(head), 1);
  EXPECT_EQ(p.check(), "");

  // After reopen the split region is lazy: the first touch loads it by its absolute index.
  p.close();
  p = pool::open(path);
  page* again = pmpage::pfn_to_page(small_pfn);
  ASSERT_NE(again, nullptr);
  EXPECT_EQ(pmpage::page_count(again), 1);
  EXPECT_EQ(pmpage::compound_head(pmpage::pfn_to_page(head_pfn + 3 * pmpage::HPAGE_PMD_NR)), pmpage::pfn_to_page(head_pfn));
  EXPECT_EQ(p.check(), "");
}

// ---- root area -------------------------------------------------------------------------------

TEST_F(Limits, RootSizeAboveMaxRootSizeIsEinvalBeforeAnythingIsWritten) {
  for (const std::size_t root : {std::size_t(pmpage::MAX_ROOT_SIZE + 1), std::size_t(pmpage::MAX_ROOT_SIZE + pmpage::PAGE_SIZE),
                                 std::numeric_limits<std::size_t>::max()}) {
    const auto path = new_path();
    const std::string what = expect_error(EINVAL, [&] { create_with_root(path, 64 * MiB, root); });
    EXPECT_NE(what.find("MAX_ROOT_SIZE"), std::string::npos) << what;
    EXPECT_FALSE(std::filesystem::exists(path));
  }
  // MAX_ROOT_SIZE itself passes that check: here the file is just too small for it. (A pool
  // with a 1 GiB root would make create zero 1 GiB of /dev/shm: not a unit test's job.)
  const std::string what = expect_error(EINVAL, [&] { create_with_root(new_path(), 64 * MiB, pmpage::MAX_ROOT_SIZE); });
  EXPECT_NE(what.find("too small"), std::string::npos) << what;
}

// ---- open pools ------------------------------------------------------------------------------

// Raises RLIMIT_NOFILE to at least `need` for the test's lifetime (the hard limit too when the
// process may: root); restores it after.
class nofile_limit {
 public:
  explicit nofile_limit(rlim_t need) {
    ::getrlimit(RLIMIT_NOFILE, &saved_);
    rlimit rl = saved_;
    if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < need) {
      rl.rlim_max = need;
      if (::setrlimit(RLIMIT_NOFILE, &rl) != 0) rl.rlim_max = saved_.rlim_max;  // not privileged
    }
    if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < need) rl.rlim_cur = rl.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &rl);
    ::getrlimit(RLIMIT_NOFILE, &rl);
    ok_ = rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur >= need;
    have_ = rl.rlim_cur;
  }
  ~nofile_limit() { ::setrlimit(RLIMIT_NOFILE, &saved_); }
  bool ok() const { return ok_; }
  rlim_t have() const { return have_; }

 private:
  rlimit saved_{};
  rlim_t have_ = 0;
  bool ok_ = false;
};

// ---- pool identity: pools created independently open together ----------------------------------

// Pools created each by its own process, at different times, open together in one process (the
// target: 1,000 of them with probability >= 99.99 %; docs/api.md, Limits, has the birthday bound).
// A process that creates a pool sees none of the others, so it cannot avoid their pfn ranges: the
// test emulates that by taking each pool's pfn base from a random stream of its own (a fresh
// generator per "process", the distribution create uses) with the in-process avoidance off. The
// seeds make it deterministic; the 16-bit section ids this replaces collided for 5-10 of 1,000.
TEST_F(Limits, AThousandPoolsCreatedIndependentlyOpenTogether) {
  constexpr unsigned n = 1000;
  if (!kAddressSpaceForThousandsOfPools) GTEST_SKIP() << "ThreadSanitizer's address range holds about 800 open pools";
  const nofile_limit fds(n + 256);
  if (!fds.ok()) GTEST_SKIP() << "RLIMIT_NOFILE is " << fds.have() << " and cannot be raised to " << n + 256;
  unsigned process = 0;
  pmpage::detail::set_pfn_base_source_for_testing([&] {
    std::mt19937_64 own_random(0x9e3779b97f4a7c15ull ^ ++process);  // this "process"'s random source
    return pmpage::detail::pfn_base_from_random(own_random());
  });
  std::vector<std::filesystem::path> paths;
  std::vector<pfn_t> owned;  // the pfn each pool's root slot 0 owns
  for (unsigned i = 0; i < n; ++i) {
    paths.push_back(new_path());
    pool p = create_pool(paths.back(), pmpage::MIN_POOL_SIZE);
    auto* slots = static_cast<pfn_t*>(p.root());
    ASSERT_NE(p.alloc_pages_to(0, &slots[0]), nullptr) << "pool " << i;
    owned.push_back(slots[0]);
  }  // each closes at once, as its creating process would exit
  pmpage::detail::set_pfn_base_source_for_testing({});

  std::vector<pool> pools;
  pools.reserve(n);
  for (unsigned i = 0; i < n; ++i) pools.push_back(pool::open(paths[i]));  // throws EBUSY on a collision
  std::set<pfn_t> bases;
  for (unsigned i = 0; i < n; ++i) {
    bases.insert(pools[i].start_pfn());
    page* p = pmpage::pfn_to_page(owned[i]);
    ASSERT_NE(p, nullptr) << "pool " << i;
    ASSERT_EQ(pmpage::page_to_pfn(p), owned[i]) << "pool " << i;
    ASSERT_EQ(pmpage::virt_to_page(pmpage::page_address(p)), p) << "pool " << i;
    ASSERT_EQ(pools[i].check(), "") << "pool " << i;
  }
  EXPECT_EQ(bases.size(), n);
  // Some pools share a table entry with another (about n^2 / 2^17 pairs): they translated above
  // through the overflow table.
  EXPECT_GT(pmpage::detail::overflow_granules(), 0u);
  pools.clear();
  EXPECT_EQ(pmpage::detail::overflow_granules(), 0u);
}

// When two pools' pfns do collide (a copy of a pool file, or the rare independent draw), the second
// open is refused with EBUSY and a message that names the other pool, its pfns and the way out.
TEST_F(Limits, OpeningAPoolWhosePfnsAnOpenPoolUsesNamesItAndTheRemedy) {
  const pfn_t base = pfn_t{0xc0ffee} << 28;
  pmpage::detail::set_pfn_base_source_for_testing([&] { return base; });  // two "processes" drew it
  const auto a_path = new_path("a"), b_path = new_path("b");
  create_pool(a_path, 8 * MiB).close();
  create_pool(b_path, 16 * MiB).close();
  pmpage::detail::set_pfn_base_source_for_testing({});
  const auto copy = new_path("copy");
  std::filesystem::copy_file(a_path, copy);

  pool a = pool::open(a_path);
  std::string what = expect_error(EBUSY, [&] { pool::open(b_path); });
  for (const char* s : {"cannot open", "used by another open pool", "two pools drew overlapping pfn bases",
                        "pmpage reidentify", "docs/api.md"})
    EXPECT_NE(what.find(s), std::string::npos) << s << " in: " << what;
  EXPECT_NE(what.find(a_path.string()), std::string::npos) << what;
  EXPECT_NE(what.find("0xc0ffee0000000"), std::string::npos) << "the pfns: " << what;

  what = expect_error(EBUSY, [&] { pool::open(copy); });
  EXPECT_NE(what.find("one is a copy of the other"), std::string::npos) << what;
  EXPECT_NE(what.find(a_path.string()), std::string::npos) << what;

  // The open that was refused changed nothing: each opens alone.
  a.close();
  EXPECT_EQ(pool::open(b_path).start_pfn(), base);
  EXPECT_EQ(pool::open(copy).start_pfn(), base);
}

TEST_F(Limits, MaxOpenPoolsAreOpenAtOnceAndOneMoreIsEmfile) {
  constexpr unsigned n = pmpage::MAX_OPEN_POOLS;
  if (!kAddressSpaceForThousandsOfPools) GTEST_SKIP() << "ThreadSanitizer's address range holds about 800 open pools";
  const nofile_limit fds(n + 256);  // the pools' descriptors plus the test's own
  if (!fds.ok())
    GTEST_SKIP() << "RLIMIT_NOFILE is " << fds.have() << " and cannot be raised to " << n + 256
                 << ": this process cannot hold " << n << " pool files open";

  std::vector<std::filesystem::path> paths;
  std::vector<pool> pools;
  std::vector<page*> pages;
  paths.reserve(n);
  pools.reserve(n);
  pages.reserve(n);
  for (unsigned i = 0; i < n; ++i) {
    paths.push_back(new_path());
    pools.push_back(create_pool(paths.back(), pmpage::MIN_POOL_SIZE));
    page* p = pools.back().alloc_pages(0);  // splits the pool's region: its 4 KiB descriptors exist
    ASSERT_NE(p, nullptr) << "pool " << i;
    *static_cast<std::uint64_t*>(pmpage::page_address(p)) = i;
    pages.push_back(p);
  }

  // Every pool translates, and only to itself: pfn ranges and descriptors never overlap.
  std::set<pfn_t> starts;
  for (unsigned i = 0; i < n; ++i) {
    const pfn_t pfn = pmpage::page_to_pfn(pages[i]);
    ASSERT_GE(pfn, pools[i].start_pfn()) << "pool " << i;
    ASSERT_LT(pfn, pools[i].end_pfn()) << "pool " << i;
    ASSERT_EQ(pmpage::pfn_to_page(pfn), pages[i]) << "pool " << i;
    void* addr = pmpage::page_address(pages[i]);
    ASSERT_EQ(pmpage::virt_to_page(addr), pages[i]) << "pool " << i;
    ASSERT_EQ(*static_cast<std::uint64_t*>(addr), i) << "pool " << i;
    ASSERT_EQ(pmpage::page_count(pages[i]), 1) << "pool " << i;
    starts.insert(pools[i].start_pfn());
  }
  EXPECT_EQ(starts.size(), n) << "every open pool has its own pfn section";

  // One more, created or opened, is EMFILE, and create leaves no file behind.
  const auto extra = new_path();
  std::string what = expect_error(EMFILE, [&] { create_pool(extra, pmpage::MIN_POOL_SIZE); });
  EXPECT_NE(what.find("MAX_OPEN_POOLS"), std::string::npos) << what;
  EXPECT_NE(what.find(std::to_string(n)), std::string::npos) << what;
  EXPECT_FALSE(std::filesystem::exists(extra));

  // Closing one makes room for exactly one; its descriptors are then misuse.
  constexpr unsigned victim = 7;
  const pfn_t victim_pfn = pmpage::page_to_pfn(pages[victim]);
  pools[victim].close();
  {
    misuse_recorder rec;
    EXPECT_EQ(pmpage::page_to_pfn(pages[victim]), 0u);
    EXPECT_EQ(rec.count(), 1) << "a descriptor of a closed pool must be reported";
    EXPECT_EQ(pmpage::pfn_to_page(victim_pfn), nullptr);
    EXPECT_EQ(rec.count(), 2);
  }
  pool replacement = create_pool(extra, pmpage::MIN_POOL_SIZE);
  ASSERT_NE(replacement.alloc_pages(0), nullptr);
  what = expect_error(EMFILE, [&] { pool::open(paths[victim]); });
  EXPECT_NE(what.find("MAX_OPEN_POOLS"), std::string::npos) << what;

  replacement.close();
  pools[victim] = pool::open(paths[victim]);
  page* again = pmpage::pfn_to_page(victim_pfn);
  ASSERT_NE(again, nullptr) << "pfns are stable across close and reopen";
  EXPECT_EQ(pmpage::page_count(again), 1);
  EXPECT_EQ(*static_cast<std::uint64_t*>(pmpage::page_address(again)), victim);
  EXPECT_EQ(pools[victim].check(), "");

  pools.clear();  // close all before the files go (TearDown) and the fd limit is restored
}

// ---- misuse ----------------------------------------------------------------------------------

TEST_F(Limits, DescriptorsOutsideEveryOpenPoolAreReported) {
  pool a = create_pool(new_path(), pmpage::MIN_POOL_SIZE);
  pool b = create_pool(new_path(), pmpage::MIN_POOL_SIZE);
  page* pa = a.alloc_pages(0);
  page* pb = b.alloc_pages(0);
  ASSERT_NE(pa, nullptr);
  ASSERT_NE(pb, nullptr);
  page* first_a = pmpage::pfn_to_page(a.start_pfn());
  const std::uint64_t pages_a = a.end_pfn() - a.start_pfn();

  int local = 0;
  const auto addr = [](std::uintptr_t v) { return reinterpret_cast<const page*>(v); };
  const auto va = reinterpret_cast<std::uintptr_t>(first_a);
  const std::vector<std::pair<const page*, const char*>> foreign = {
      {addr(va + pages_a * sizeof(page)), "one past the pool's last descriptor (same 4 GiB granule)"},
      {addr(va + (std::uint64_t{1} << 30)), "later in the pool's granule"},
      {addr(va - sizeof(page)), "just below the pool's descriptors (the granule before)"},
      {reinterpret_cast<const page*>(&local), "a stack address"},
      {addr(64), "a low address"},
      {addr(std::uintptr_t{1} << 47), "2^47, above user space"},
      {addr(~std::uintptr_t{63}), "the top of the address space"},
  };
  misuse_recorder rec;
  for (const auto& [p, what] : foreign) {
    const int before = rec.count();
    EXPECT_EQ(pmpage::page_to_pfn(p), 0u) << what;
    EXPECT_EQ(pmpage::page_address(p), nullptr) << what;
    EXPECT_EQ(rec.count(), before + 2) << what;
  }
  EXPECT_EQ(pmpage::page_to_pfn(pa) - a.start_pfn(), std::uint64_t(pa - first_a));
  EXPECT_GE(pmpage::page_to_pfn(pb), b.start_pfn());
  EXPECT_LT(pmpage::page_to_pfn(pb), b.end_pfn());
  EXPECT_EQ(rec.count(), int(foreign.size()) * 2) << "b's and a's own pages are not misuse";

  const pfn_t pfn_b = pmpage::page_to_pfn(pb);
  b.close();
  EXPECT_EQ(pmpage::page_to_pfn(pb), 0u) << "descriptor of a closed pool";
  EXPECT_EQ(pmpage::pfn_to_page(pfn_b), nullptr) << "pfn of a closed pool";
  EXPECT_EQ(rec.count(), int(foreign.size()) * 2 + 2);
  EXPECT_EQ(pmpage::page_to_pfn(pa) - a.start_pfn(), std::uint64_t(pa - first_a)) << "a is unaffected";
  pmpage::put_page(pa);
}


// ---- a full file system (issue #18, defect 3) -------------------------------------------------
// A pool file is sparse unless created with options.preallocate. A store into a page whose
// blocks the file system cannot provide is a SIGBUS, which no caller can handle: the allocator
// reserves a region's 2 MiB before it hands out any page of it, and an allocation the file
// system cannot back returns nullptr with errno ENOSPC (docs/api.md, "Allocation").

std::uint64_t read_word_at(const std::filesystem::path& path, std::uint64_t off) {
  std::uint64_t v = 0;
  const int fd = ::open(path.c_str(), O_RDONLY);
  EXPECT_GE(fd, 0);
  EXPECT_EQ(::pread(fd, &v, sizeof v, off_t(off)), ssize_t(sizeof v));
  ::close(fd);
  return v;
}

std::uint64_t blocks_of(const std::filesystem::path& path) {
  struct stat st;
  EXPECT_EQ(::stat(path.c_str(), &st), 0);
  return std::uint64_t(st.st_blocks) * 512;  // bytes the file system holds for the file
}

TEST_F(Limits, AnAllocationReservesItsWholeRegionInTheFileOnceNotPerPage) {
  // 16 MiB on /dev/shm (tmpfs counts a block the moment it is allocated). Nothing below writes a
  // page: every block the file gains is a reservation.
  const auto path = new_path();
  pool p = create_pool(path, 16 * MiB);
  const std::uint64_t at_create = blocks_of(path);
  std::vector<page*> small(200);
  ASSERT_EQ(p.alloc_pages_bulk(0, small.size(), small.data()), small.size());
  for (unsigned order : {0u, 3u, 8u}) small.push_back(p.alloc_pages(order));
  page* huge = p.alloc_pages(9);
  page* huger = p.alloc_pages(10);
  ASSERT_NE(huge, nullptr);
  ASSERT_NE(huger, nullptr);
  std::set<std::uint64_t> regions;  // every region a page came from: each reserved whole, once
  for (page* x : small) {
    ASSERT_NE(x, nullptr);
    regions.insert((pmpage::page_to_pfn(x) - p.start_pfn()) >> pmpage::HPAGE_PMD_ORDER);
  }
  const std::uint64_t reserved = (regions.size() + 1 + 2) * pmpage::HPAGE_PMD_SIZE;
  EXPECT_EQ(blocks_of(path) - at_create, reserved)
      << "small pages from " << regions.size() << " regions, an order-9 and an order-10 page";
  // Frees and allocations in reserved regions reserve nothing more.
  for (page* x : small) pmpage::put_page(x);
  pmpage::put_page(huge);
  pmpage::put_page(huger);
  ASSERT_NE(huge = p.alloc_pages(9), nullptr);
  pmpage::put_page(huge);
  EXPECT_EQ(blocks_of(path) - at_create, reserved);
  EXPECT_EQ(p.check(), "");
}

class FullFileSystem : public TempPathTest {
 protected:
  void SetUp() override {
    if (!fs_.ok()) GTEST_SKIP() << fs_.why();
  }
  std::filesystem::path in_fs(const char* name) const { return fs_.dir() / name; }
  /// Writes a file until the file system is full; returns its path.
  std::filesystem::path fill_up() {
    const auto path = in_fs("filler");
    const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    EXPECT_GE(fd, 0) << std::strerror(errno);
    std::vector<char> buf(64 * 1024, 'f');
    while (::write(fd, buf.data(), buf.size()) > 0) {
    }
    while (::write(fd, buf.data(), 1) > 0) {
    }
    ::close(fd);
    return path;
  }
  small_tmpfs fs_{8 * MiB};
};

TEST_F(FullFileSystem, AllocationsFailWithEnospcInsteadOfSigbusAndNothingLeaks) {
  // A 64 MiB sparse pool in an 8 MiB file system: it runs out of blocks long before pages.
  const auto path = in_fs("pool");
  std::set<page*> kept;
  std::uint64_t total = 0;
  {
    pool p = create_pool(path, 64 * MiB);
    total = p.stats().total_pages;
    page* big = p.alloc_pages(9);  // freed once the file system is full: reusable
    ASSERT_NE(big, nullptr);
    errno = 0;
    for (;;) {
      page* x = p.alloc_pages(0, pmpage::GFP_ZERO);  // zeroing stores into the page: SIGBUS before
      if (!x) break;
      std::memset(pmpage::page_address(x), 0x5a, pmpage::PAGE_SIZE);
      kept.insert(x);
      ASSERT_LT(kept.size(), total) << "the file system never filled up";
    }
    EXPECT_EQ(errno, ENOSPC);
    EXPECT_NE(std::string(pmpage_errormsg()).find("fallocate"), std::string::npos) << pmpage_errormsg();
    EXPECT_GE(kept.size(), 512u) << "a region's worth fits";
    EXPECT_EQ(p.check(), "");
    EXPECT_EQ(p.stats().free_pages, total - kept.size() - 512);

    // Every way in says the same and changes nothing.
    page* out[64];
    errno = 0;
    EXPECT_EQ(p.alloc_pages(10), nullptr);
    EXPECT_EQ(errno, ENOSPC);
    errno = 0;
    EXPECT_EQ(p.alloc_pages_bulk(0, 64, out), 0u);
    EXPECT_EQ(errno, ENOSPC);
    pfn_t* slots = root_slots(p);
    errno = 0;
    EXPECT_EQ(p.alloc_pages_to(0, &slots[0]), nullptr);
    EXPECT_EQ(errno, ENOSPC);
    EXPECT_EQ(slots[0], 0u);
    pfn_t* bulk[4] = {&slots[1], &slots[2], &slots[3], &slots[4]};
    EXPECT_EQ(p.alloc_pages_bulk_to(2, bulk), 0u);
    EXPECT_EQ(slots[1] | slots[2] | slots[3] | slots[4], 0u);
    EXPECT_EQ(p.check(), "");
    EXPECT_EQ(p.stats().free_pages, total - kept.size() - 512);

    // Pages freed are reserved already: they are handed out again, and then no more.
    pmpage::put_page(big);
    page* again = p.alloc_pages(9, pmpage::GFP_ZERO);
    EXPECT_NE(again, nullptr);
    std::vector<page*> freed;
    for (auto it = kept.begin(); it != kept.end();) {
      freed.push_back(*it);
      pmpage::put_page(*it);
      it = kept.erase(it);
      if (it != kept.end()) ++it;
    }
    for (std::size_t i = 0; i < freed.size(); ++i) {
      page* x = p.alloc_pages(0, pmpage::GFP_ZERO);
      ASSERT_NE(x, nullptr) << "freed page " << i << " of " << freed.size() << " not handed out again";
      kept.insert(x);
    }
    EXPECT_EQ(p.alloc_pages(0), nullptr);
    if (again) pmpage::put_page(again);
    EXPECT_EQ(p.check(), "");
  }
  // Reopened (on the full file system): healthy, every kept page still allocated, nothing more.
  pool p = pool::open(path);
  EXPECT_EQ(p.check(), "");
  const auto snap = allocations(p);
  EXPECT_EQ(snap.by_pfn.size(), kept.size());
  EXPECT_EQ(pages_in(snap.by_pfn), kept.size());
  EXPECT_EQ(p.stats().free_pages, total - kept.size());
  // Free regions are reserved again when first taken after an open: only the one that held the
  // order-9 page has its blocks still (the reservation is a no-op there).
  std::vector<page*> huge;
  errno = 0;
  while (page* h = p.alloc_pages(9)) huge.push_back(h);
  EXPECT_EQ(errno, ENOSPC);
  EXPECT_LE(huge.size(), 1u);
  for (page* h : huge) pmpage::put_page(h);
  // A page freed after the reopen is reserved (its region's blocks exist): handed out again.
  pmpage::free_pages(pmpage::pfn_to_page(snap.by_pfn.begin()->first), 0);
  page* x = p.alloc_pages(0, pmpage::GFP_ZERO);
  ASSERT_NE(x, nullptr);
  EXPECT_EQ(p.check(), "");
}

// A large block freed into one CPU's stash is reserved (R1): on a full file system another CPU's
// allocation of that order gets it (the last resort drains the stashes) instead of ENOSPC
// (found by review: the ENOSPC path returned before the stashes were looked at).
TEST_F(FullFileSystem, AReservedBlockInAnotherCpusStashIsHandedOutBeforeEnospc) {
  const auto path = in_fs("pool");
  pool p = create_pool(path, 64 * MiB);
  for (const unsigned order : {9u, 10u}) {
    SCOPED_TRACE("order " + std::to_string(order));
    std::vector<page*> held;
    pmpage::testing::run_on_cpu(pmpage::testing::nth_cpu(0), [&] {
      while (page* h = p.alloc_pages(order, pmpage::GFP_ZERO)) held.push_back(h);
      ASSERT_FALSE(held.empty());
      pmpage::free_pages(held.back(), order);  // into CPU 0's stash
      held.pop_back();
    });
    page* other = nullptr;
    int err = 0;
    pmpage::testing::run_on_cpu(pmpage::testing::nth_cpu(1), [&] {
      errno = 0;
      other = p.alloc_pages(order);
      err = errno;
    });
    EXPECT_NE(other, nullptr) << "no room reported (errno " << err << ") with a reserved block stashed on CPU 0";
    if (other) held.push_back(other);
    EXPECT_EQ(p.check(), "");
    for (page* h : held) pmpage::free_pages(h, order);
  }
}

TEST_F(FullFileSystem, ThreadsRacingForTheLastBlocksGetPagesOrEnospcAndThePoolAddsUp) {
  // Regions are reserved with the pool lock dropped: several threads take fresh regions, and
  // filler regions, at once while the file system runs out. Each allocation either succeeds
  // (its page is backed: stored into) or fails with ENOSPC; afterwards every page is accounted.
  const auto path = in_fs("pool");
  pool p = create_pool(path, 64 * MiB);
  const std::uint64_t total = p.stats().total_pages;
  constexpr int kThreads = 4;
  std::vector<std::vector<page*>> got(kThreads);
  std::vector<int> last_errno(kThreads, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([&, t] {
      for (unsigned i = 0;; ++i) {
        const unsigned order = i % 16 == 15 ? 9 : i % 3;
        errno = 0;
        page* x = p.alloc_pages(order, pmpage::GFP_ZERO);
        if (!x) {
          if (order != 0) continue;  // a large or order-1/2 block may fail while order 0 still fits
          last_errno[t] = errno;
          return;
        }
        got[t].push_back(x);
        // Frees now and then, so regions come back and are taken again by other threads.
        if (i % 7 == 6) {
          pmpage::put_page(got[t].back());
          got[t].pop_back();
        }
      }
    });
  for (auto& th : threads) th.join();
  std::uint64_t held = 0;
  for (int t = 0; t < kThreads; ++t) {
    EXPECT_EQ(last_errno[t], ENOSPC) << "thread " << t;
    for (page* x : got[t]) held += std::uint64_t{1} << pmpage::compound_order(x);
  }
  EXPECT_EQ(p.check(), "");
  EXPECT_EQ(p.stats().free_pages, total - held);
  for (auto& v : got)
    for (page* x : v) pmpage::put_page(x);
  EXPECT_EQ(p.check(), "");
  EXPECT_EQ(p.stats().free_pages, total);
}

TEST_F(FullFileSystem, OpenReservesHolesInTheMetadataOrFailsWithEnospc) {
  // A pool copied sparse (cp, rsync -S) has holes where its metadata was never written: a store
  // into one on a full file system would be a SIGBUS. Open fills those before the owner tables,
  // or refuses; an owner-table slice is reserved with its region's data when the allocator takes
  // the region (and by adopt_pages): no SIGBUS, an allocation the file system cannot back is
  // ENOSPC, and nothing is searched for holes per region at open.
  const auto path = in_fs("pool");
  create_pool(path, 64 * MiB).close();
  pmpage::detail::superblock sb;
  const int fd = ::open(path.c_str(), O_RDWR);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::pread(fd, &sb, sizeof sb, 0), ssize_t(sizeof sb));
  const std::uint64_t owners = sb.owner_table_offset, len = sb.nr_regions * pmpage::detail::OWNER_TABLE_BYTES;
  auto punch = [&](std::uint64_t off, std::uint64_t n) {
    ASSERT_EQ(::fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off_t(off), off_t(n)), 0);
  };
  // 1. A hole in the page maps (before the owner tables): open fills it or refuses.
  punch(sb.page_map_offset, 4096);
  {
    const auto filler = fill_up();
    const std::string what = expect_error(ENOSPC, [&] { pool::open(path); });
    EXPECT_NE(what.find("metadata"), std::string::npos) << what;
    std::filesystem::remove(filler);
    const std::uint64_t before = blocks_of(path);
    pool::open(path).close();  // with room: the hole is filled
    EXPECT_EQ(blocks_of(path), before + 4096);
  }
  // 2. Holes in all the owner tables: open succeeds even on a full file system.
  punch(owners, len);
  const std::uint64_t head = blocks_of(path);
  {
    const auto filler = fill_up();
    pool p = pool::open(path);
    EXPECT_EQ(blocks_of(path), head) << "nothing reserved at open";
    pfn_t* slots = root_slots(p);
    errno = 0;
    EXPECT_EQ(p.alloc_pages_to(0, &slots[0]), nullptr) << "no region can be reserved";
    EXPECT_EQ(errno, ENOSPC);
    EXPECT_EQ(p.check(), "");
    std::filesystem::remove(filler);
    ASSERT_NE(p.alloc_pages_to(0, &slots[0]), nullptr);  // its region and owner slice reserved first
    EXPECT_EQ(blocks_of(path), head + pmpage::HPAGE_PMD_SIZE + 4096) << "one region's data and owner slice";
    EXPECT_EQ(p.check(), "");
    ASSERT_EQ(p.free_pages_from(&slots[0]), 0);
    // 3. adopt_pages of a page from a region this open did not take: its owner slice first.
    page* plain = p.alloc_pages(9);
    ASSERT_NE(plain, nullptr);
    slots[1] = pmpage::page_to_pfn(plain);
    p.persist(&slots[1], sizeof(pfn_t));
  }
  {
    const std::uint64_t r = (read_word_at(path, sb.root_offset + 8) - pmpage::detail::superblock_pfn_base(sb)) >> 9;
    punch(owners + r * 4096, 4096);
    const auto filler = fill_up();
    pool p = pool::open(path);
    pfn_t* slots = root_slots(p);
    EXPECT_EQ(p.adopt_pages(&slots[1]), -ENOSPC);
    EXPECT_EQ(p.check_slots(std::vector<pfn_t*>{&slots[1]}).misowned.size(), 1u) << "nothing adopted";
    std::filesystem::remove(filler);
    EXPECT_EQ(p.adopt_pages(&slots[1]), 0);
    EXPECT_EQ(p.check(), "");
    ASSERT_EQ(p.free_pages_from(&slots[1]), 0);
  }
  ::close(fd);
}

TEST_F(FullFileSystem, RepairOfAPoolWithHolesInItsMetadataFailsWithEnospcInsteadOfSigbus) {
  // Superblock copy B turned into a hole (as a sparse copy of a damaged pool would have it): the
  // repair rewrites it, a store into the hole. On a full file system that is ENOSPC, nothing
  // repaired; with room, the repair goes through.
  const auto path = in_fs("pool");
  create_pool(path, 64 * MiB).close();
  {
    const int fd = ::open(path.c_str(), O_RDWR);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 4096, 4096), 0);
    ::close(fd);
  }
  ASSERT_FALSE(pmpage::fsck::check(path).problems.empty());
  const auto filler = fill_up();
  pmpage::fsck::options repair;
  repair.repair = true;
  expect_error(ENOSPC, [&] { pmpage::fsck::check(path, repair); });
  EXPECT_FALSE(pmpage::fsck::check(path).problems.empty()) << "nothing was repaired";
  std::filesystem::remove(filler);
  pmpage::fsck::check(path, repair);
  EXPECT_TRUE(pmpage::fsck::check(path).problems.empty());
}

TEST_F(FullFileSystem, ARefusedCreateLeavesAnExistingFileAsItWas) {
  // create() on an existing file grows it to options.size before it reserves the metadata (and,
  // with preallocate, everything); when the file system says no, the file keeps its size and bytes.
  const auto path = in_fs("existing");
  const std::string bytes(4096, 'x');
  {
    std::ofstream(path, std::ios::binary) << bytes;
  }
  auto unchanged = [&](const char* what) {
    const std::uint64_t size = std::filesystem::file_size(path);
    EXPECT_EQ(size, bytes.size()) << what << ": the refused create changed the file's size";
    if (size != bytes.size()) return;
    std::ifstream in(path, std::ios::binary);
    const std::string now((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    EXPECT_TRUE(now == bytes) << what << ": the refused create changed the file's bytes";
  };
  pool::options o;
  o.overwrite = true;
  o.size = 4 * GiB;  // 2048 regions: 8.5 MiB of metadata, more than the file system holds
  expect_error(ENOSPC, [&] { pool::create(path, o); });
  unchanged("metadata reservation refused");
  o.size = 16 * MiB;
  o.preallocate = true;
  expect_error(ENOSPC, [&] { pool::create(path, o); });
  unchanged("preallocation refused");
}

}  // namespace
