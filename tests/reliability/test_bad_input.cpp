// test_bad_input.cpp — open never crashes, never writes to a file it rejects, and names the
// problem; create fails cleanly when the file system is full.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include "crash_harness.hpp"
#include "layout.hpp"  // src/: crafting images needs the on-media structures

using namespace pmpage;
using pmpage::testing::read_file;
using pmpage::testing::write_file;
namespace fs = std::filesystem;

namespace {

/// Expects open(path) to throw pmpage::error whose message contains every fragment, and the
/// file to be byte-for-byte unchanged.
void expect_rejected(const std::string& path, std::initializer_list<const char*> fragments) {
  const auto before = fs::is_regular_file(path) ? read_file(path) : std::vector<char>{};
  try {
    pool p = pool::open(path);
    ADD_FAILURE() << "open of " << path << " succeeded";
  } catch (const pmpage::error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find(path), std::string::npos) << "message does not name the path: " << what;
    for (const char* f : fragments) EXPECT_NE(what.find(f), std::string::npos) << "message lacks '" << f << "': " << what;
  }
  if (fs::is_regular_file(path)) EXPECT_TRUE(read_file(path) == before) << "a rejected file was modified";
}

class BadInput : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = "/dev/shm/pmpage-bad-" + std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()) + "-" +
            std::to_string(::getpid());
    fs::remove(path_);
  }
  void TearDown() override {
    fs::remove(path_);
    fs::remove(path_ + ".copy");
  }
  /// A small pool with allocations of every kind, one alloc_pages_to slot, closed.
  void make_pool() {
    pool::options o;
    o.size = 24ull << 20;
    pool p = pool::create(path_, o);
    auto* slots = static_cast<pfn_t*>(p.root());
    ASSERT_NE(p.alloc_pages(0), nullptr);
    ASSERT_NE(p.alloc_pages(3), nullptr);
    ASSERT_NE(p.alloc_pages(9), nullptr);
    ASSERT_NE(p.alloc_pages(10), nullptr);
    ASSERT_NE(p.alloc_pages_to(1, &slots[0]), nullptr);
    data_offset_ = std::uint64_t(static_cast<char*>(page_address(pfn_to_page(p.start_pfn()))) - static_cast<char*>(p.base()));
  }
  std::string path_;
  std::uint64_t data_offset_ = 0;
};

TEST_F(BadInput, NonexistentPathIsNamed) { expect_rejected(path_, {"No such file"}); }

TEST_F(BadInput, DirectoryIsRejected) {
  fs::create_directory(path_);
  expect_rejected(path_, {"directory"});
  fs::remove(path_);
}

TEST_F(BadInput, DevNullIsRejected) { expect_rejected("/dev/null", {"not device DAX"}); }

TEST_F(BadInput, TinyFileIsRejected) {
  write_file(path_, std::vector<char>(100, 'x'));
  expect_rejected(path_, {"too small"});
}

TEST_F(BadInput, EmptyFileIsRejected) {
  write_file(path_, {});
  expect_rejected(path_, {"too small"});
}

TEST_F(BadInput, WrongMagicIsNotAPool) {
  write_file(path_, std::vector<char>(64 << 10, 'x'));
  expect_rejected(path_, {"not a pmpage pool"});
}

TEST_F(BadInput, UnsupportedMajorVersionIsNamed) {
  make_pool();
  auto bytes = read_file(path_);
  // Rewrite both copies with the next major and a valid checksum: a newer format, not damage.
  for (std::size_t off : {std::size_t{0}, std::size_t{4096}}) {
    detail::superblock sb;
    std::memcpy(&sb, bytes.data() + off, sizeof sb);
    sb.major = detail::FORMAT_MAJOR + 1;
    sb.checksum = detail::fletcher64(&sb, offsetof(detail::superblock, checksum));
    std::memcpy(bytes.data() + off, &sb, sizeof sb);
  }
  write_file(path_, bytes);
  const std::string named = "format version " + std::to_string(detail::FORMAT_MAJOR + 1) + ".0";
  expect_rejected(path_, {named.c_str()});
}

TEST_F(BadInput, TruncatedPoolIsRejected) {
  make_pool();
  fs::resize_file(path_, fs::file_size(path_) - (2u << 20));
  expect_rejected(path_, {"truncated"});
}

TEST_F(BadInput, ExtendedPoolStillOpensAndIgnoresTheTail) {
  make_pool();
  pmpage::testing::pool_state before;
  {
    pool p = pool::open(path_);
    before = pmpage::testing::read_state(p);
  }
  fs::resize_file(path_, fs::file_size(path_) + (64u << 20));
  pool p = pool::open(path_);
  EXPECT_EQ(pmpage::testing::read_state(p), before);
  EXPECT_EQ(p.check(), "");
}

TEST_F(BadInput, OneDamagedSuperblockCopyIsRepairedFromTheOther) {
  make_pool();
  for (std::size_t victim : {std::size_t{0}, std::size_t{4096}}) {
    auto bytes = read_file(path_);
    bytes[victim + 200] ^= 0x10;  // inside the reserved area: only the checksum notices
    write_file(path_, bytes);
    {
      pool p = pool::open(path_);
      EXPECT_GE(p.stats().repaired_at_open, 1u);
      EXPECT_EQ(p.check(), "");
    }
    const auto after = read_file(path_);
    EXPECT_TRUE(std::equal(after.begin(), after.begin() + 4096, after.begin() + 4096)) << "copies differ after repair";
  }
}

TEST_F(BadInput, BothSuperblocksDamagedNamesBothProblems) {
  make_pool();
  auto bytes = read_file(path_);
  bytes[100] ^= 1;
  bytes[4096] ^= 1;  // magic of copy B
  write_file(path_, bytes);
  expect_rejected(path_, {"copy A: bad checksum", "copy B: bad magic"});
}

TEST_F(BadInput, CorruptRegionTableIsRejectedWithTheRegion) {
  make_pool();
  pool p = pool::open(path_);
  const std::uint64_t table = std::uint64_t(static_cast<char*>(p.root()) - static_cast<char*>(p.base())) + p.root_size();
  p.close();
  auto bytes = read_file(path_);
  const std::uint64_t bad = 0x0000000000000107ull;  // kind 7: no such state
  std::memcpy(bytes.data() + table + 8 * 5, &bad, 8);
  write_file(path_, bytes);
  expect_rejected(path_, {"region table corrupt", "region 5"});
}

TEST_F(BadInput, CraftedHeadRunningPastTheEndIsRejected) {
  make_pool();
  pool p = pool::open(path_);
  const std::uint64_t table = std::uint64_t(static_cast<char*>(p.root()) - static_cast<char*>(p.base())) + p.root_size();
  const std::uint64_t regions = p.stats().total_regions;
  p.close();
  auto bytes = read_file(path_);
  const std::uint64_t head18 = 1 | (18u << 8);  // 512 regions from region 0: past the end
  std::memcpy(bytes.data() + table, &head18, 8);
  write_file(path_, bytes);
  ASSERT_LT(regions, 512u);
  expect_rejected(path_, {"region table corrupt"});
}

TEST_F(BadInput, CraftedIntentCannotWriteOutsideThePool) {
  make_pool();
  auto bytes = read_file(path_);
  const auto original = bytes;
  // Lanes with valid checksums whose slot offset or pfn point far outside the pool.
  const std::uint64_t slot_ok = 3 * 4096;  // the root area
  const std::uint64_t cases[][2] = {{1ull << 40, 0xdeadbeefull << 32}, {slot_ok, 0xdeadbeefull << 32}, {1ull << 40, 0}};
  for (unsigned i = 0; i < 3; ++i) {
    detail::lane l{};
    l.seq = 1;
    l.kind = std::uint32_t(detail::intent_kind::free_from);
    l.slot_offset = cases[i][0];
    l.pfn = cases[i][1];
    l.checksum = detail::fletcher64(reinterpret_cast<const char*>(&l) + 8, sizeof l - 8);
    std::memcpy(bytes.data() + 8192 + i * sizeof l, &l, sizeof l);
  }
  write_file(path_, bytes);
  pool p = pool::open(path_);  // ignored: bounds-checked before use
  EXPECT_EQ(p.check(), "");
}

TEST_F(BadInput, CraftedIntentInsideAnotherAllocationIsIgnored) {
  // A checksummed alloc_to intent naming a region inside an existing order-10 page, with its slot
  // "committed": replaying it would put a HEAD inside a HEAD and make the pool unopenable.
  pfn_t big = 0;
  std::uint64_t root_off = 0;
  {
    pool::options o;
    o.size = 24ull << 20;
    pool p = pool::create(path_, o);
    page* pg = p.alloc_pages(10);
    ASSERT_NE(pg, nullptr);
    big = page_to_pfn(pg);
    root_off = std::uint64_t(static_cast<char*>(p.root()) - static_cast<char*>(p.base()));
  }
  auto bytes = read_file(path_);
  const pfn_t inner = big + HPAGE_PMD_NR;  // the order-10 page's second region
  std::memcpy(bytes.data() + root_off, &inner, sizeof inner);
  detail::lane l{};
  l.seq = 7;
  l.kind = std::uint32_t(detail::intent_kind::alloc_to);
  l.order = HPAGE_PMD_ORDER;
  l.slot_offset = root_off;
  l.pfn = inner;
  l.checksum = detail::fletcher64(reinterpret_cast<const char*>(&l) + 8, sizeof l - 8);
  std::memcpy(bytes.data() + 8192, &l, sizeof l);
  write_file(path_, bytes);
  for (int round = 0; round < 2; ++round) {  // and the pool stays openable afterwards
    pool p = pool::open(path_);
    EXPECT_EQ(p.check(), "");
    const auto st = pmpage::testing::read_state(p);
    ASSERT_EQ(st.allocations.size(), 1u);
    EXPECT_EQ(st.allocations.begin()->first, big);
    EXPECT_EQ(st.allocations.begin()->second, 10u);
  }
}

TEST_F(BadInput, RandomBitFlipsInMetadataNeverCrashAndRejectionsNeverWrite) {
  make_pool();
  const auto pristine = read_file(path_);
  std::mt19937_64 rng(7);
  unsigned opened = 0, rejected = 0;
  for (int i = 0; i < 400; ++i) {
    auto bytes = pristine;
    const std::uint64_t off = rng() % data_offset_;
    bytes[off] ^= char(1u << (rng() % 8));
    write_file(path_, bytes);
    try {
      pool p = pool::open(path_);
      const auto state = pmpage::testing::read_state(p);  // loads (and repairs) every split region
      EXPECT_EQ(p.check(), "") << "flip at offset " << off;
      ++opened;
    } catch (const pmpage::error& e) {
      ++rejected;
      EXPECT_TRUE(read_file(path_) == bytes) << "rejected file modified, flip at offset " << off << ": " << e.what();
    }
  }
  EXPECT_GT(opened, 0u);
  RecordProperty("opened", int(opened));
  RecordProperty("rejected", int(rejected));
}

TEST_F(BadInput, PoolOpenInAnotherProcessIsRefused) {
  make_pool();
  int ready[2], done[2];
  ASSERT_EQ(::pipe(ready), 0);
  ASSERT_EQ(::pipe(done), 0);
  const pid_t child = ::fork();
  if (child == 0) {
    pool p = pool::open(path_);
    char c = 1;
    (void)!::write(ready[1], &c, 1);
    (void)!::read(done[0], &c, 1);
    _exit(0);
  }
  char c;
  ASSERT_EQ(::read(ready[0], &c, 1), 1);
  expect_rejected(path_, {"already open"});
  (void)!::write(done[1], &c, 1);
  int status;
  ::waitpid(child, &status, 0);
  pool p = pool::open(path_);  // the lock went with the child
  EXPECT_TRUE(p.is_open());
}

TEST_F(BadInput, FileWithoutPermissionIsRefused) {
  make_pool();
  ::chmod(path_.c_str(), 0400);
  // root ignores file modes: check as an unprivileged user in a child.
  const pid_t child = ::fork();
  if (child == 0) {
    if (::geteuid() == 0 && ::setuid(65534) != 0) _exit(3);
    try {
      pool p = pool::open(path_);
      _exit(1);
    } catch (const pmpage::error& e) {
      _exit(std::string(e.what()).find("Permission denied") != std::string::npos ? 0 : 2);
    }
  }
  int status;
  ::waitpid(child, &status, 0);
  ASSERT_TRUE(WIFEXITED(status));
  if (WEXITSTATUS(status) == 3) GTEST_SKIP() << "cannot drop privileges here";
  EXPECT_EQ(WEXITSTATUS(status), 0) << "1: opened a read-only file, 2: message does not say 'Permission denied'";
}

TEST(ResourceExhaustion, CreateOnAFullFileSystemFailsAndLeavesNoFile) {
  const std::string dir = "/tmp/pmpage-tinyfs-" + std::to_string(::getpid());
  fs::create_directories(dir);
  if (::mount("tmpfs", dir.c_str(), "tmpfs", 0, "size=1m") != 0) {
    fs::remove(dir);
    GTEST_SKIP() << "cannot mount a small tmpfs here (needs root)";
  }
  const std::string path = dir + "/pool";
  pool::options o;
  o.size = 64ull << 20;
  o.preallocate = true;
  EXPECT_THROW(pool::create(path, o), pmpage::error);
  EXPECT_FALSE(fs::exists(path)) << "a half-made pool was left behind";
  o.preallocate = false;
  o.size = 1ull << 30;  // metadata alone (its blocks are reserved) is more than 1 MiB
  o.root_size = 2u << 20;
  try {
    pool::create(path, o);
    ADD_FAILURE() << "create succeeded on a full file system";
  } catch (const pmpage::error& e) {
    EXPECT_NE(std::string(e.what()).find("No space left"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(path));
  ::umount(dir.c_str());
  fs::remove(dir);
}

TEST(ResourceExhaustion, AFullPoolReturnsNullAndStaysUsable) {
  const std::string path = "/dev/shm/pmpage-full-" + std::to_string(::getpid());
  pool::options o;
  o.size = 12ull << 20;
  pool p = pool::create(path, o);
  std::vector<page*> pages;
  while (page* pg = p.alloc_pages(0)) pages.push_back(pg);
  EXPECT_EQ(pages.size(), p.stats().total_pages);
  EXPECT_EQ(p.alloc_pages(0), nullptr);
  EXPECT_EQ(p.alloc_pages(9), nullptr);
  EXPECT_EQ(p.check(), "");
  free_pages(pages.back(), 0);
  pages.pop_back();
  page* again = p.alloc_pages(0);
  ASSERT_NE(again, nullptr);
  pages.push_back(again);
  for (page* pg : pages) free_pages(pg, 0);
  EXPECT_EQ(p.stats().free_pages, p.stats().total_pages);
  EXPECT_NE(p.alloc_pages(9), nullptr);
  EXPECT_EQ(p.check(), "");
  p.close();
  fs::remove(path);
}

}  // namespace
