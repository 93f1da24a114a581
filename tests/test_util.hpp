// tests/test_util.hpp — shared test scaffolding: temporary pool files, a misuse recorder, an RSS
// reader and a snapshot of a pool's allocations.
//
// Every test process runs with PMEM_IS_PMEM_FORCE=1 (set by ctest and, as a fallback for running
// the binary by hand, by the environment below) so that libpmem treats /dev/shm mappings as pmem
// and uses cache flushes instead of msync: the suite stays fast and the fence counts are those of
// real pmem.
//
// Misuse policy in tests: the library's default handler aborts, which would kill the whole test
// binary with little context. The global environment installs a handler that turns any misuse
// report into a test failure instead. Tests that provoke misuse on purpose install
// misuse_recorder, which records the reports without failing.
#pragma once

#include <gtest/gtest.h>
#include <sched.h>
#include <sys/mount.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include <pmpage/pmpage.hpp>

namespace pmtest {

inline constexpr std::uint64_t MiB = std::uint64_t{1} << 20;
inline constexpr std::uint64_t GiB = std::uint64_t{1} << 30;

// ---- misuse reports ---------------------------------------------------------------------------

// Plain globals: the handler is a plain function pointer, and it may run on any thread.
inline std::mutex g_misuse_mutex;
inline std::vector<std::string> g_misuse_messages;
inline std::atomic<int> g_misuse_count{0};

inline void record_misuse(const char* message) {
  std::lock_guard<std::mutex> lock(g_misuse_mutex);
  g_misuse_messages.emplace_back(message ? message : "");
  g_misuse_count.fetch_add(1);
}

// Installed for the whole run: an unexpected misuse report fails the current test (and, as the
// handler returns, the offending call does nothing).
inline void fail_on_misuse(const char* message) {
  record_misuse(message);
  ADD_FAILURE() << "unexpected misuse report: " << (message ? message : "(null)");
}

// RAII: while alive, misuse reports are recorded and do not fail the test.
class misuse_recorder {
 public:
  misuse_recorder() {
    reset();
    previous_ = pmpage::set_misuse_handler(&record_misuse);
  }
  ~misuse_recorder() { pmpage::set_misuse_handler(previous_); }
  misuse_recorder(const misuse_recorder&) = delete;
  misuse_recorder& operator=(const misuse_recorder&) = delete;

  static void reset() {
    std::lock_guard<std::mutex> lock(g_misuse_mutex);
    g_misuse_messages.clear();
    g_misuse_count.store(0);
  }
  int count() const { return g_misuse_count.load(); }
  std::string last() const {
    std::lock_guard<std::mutex> lock(g_misuse_mutex);
    return g_misuse_messages.empty() ? std::string() : g_misuse_messages.back();
  }

 private:
  pmpage::misuse_handler previous_ = nullptr;
};

class pmpage_environment : public ::testing::Environment {
 public:
  void SetUp() override {
    ::setenv("PMEM_IS_PMEM_FORCE", "1", /*overwrite=*/0);
    pmpage::set_misuse_handler(&fail_on_misuse);
  }
};

// Registered once for the whole binary (inline variable: one instance across translation units).
// setenv also runs here, at static-initialisation time, so it precedes any libpmem call.
inline ::testing::Environment* const g_pmpage_environment = [] {
  ::setenv("PMEM_IS_PMEM_FORCE", "1", 0);
  return ::testing::AddGlobalTestEnvironment(new pmpage_environment);
}();

// Runs f, which must throw pmpage::error with `err`; returns what() (for checks on the message).
template <class F>
std::string expect_error(int err, F&& f) {
  try {
    f();
  } catch (const pmpage::error& e) {
    EXPECT_EQ(e.code().value(), err) << e.what();
    return e.what();
  }
  ADD_FAILURE() << "expected pmpage::error (" << std::strerror(err) << "), nothing was thrown";
  return {};
}

// ---- process memory ---------------------------------------------------------------------------

// Sanitizers keep shadow memory for every mapping the program touches and do not drop it on
// madvise(MADV_DONTNEED), so RSS figures say nothing about the library under them.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
inline constexpr bool kRssIsMeaningful = false;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer) || __has_feature(memory_sanitizer)
inline constexpr bool kRssIsMeaningful = false;
#else
inline constexpr bool kRssIsMeaningful = true;
#endif
#else
inline constexpr bool kRssIsMeaningful = true;
#endif

// RssAnon of this process in KiB: the anonymous memory (where 4 KiB descriptors live); the pool
// files themselves are shmem and do not count.
inline long rss_anon_kib() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("RssAnon:", 0) == 0) return std::strtol(line.c_str() + 8, nullptr, 10);
  }
  return -1;
}

// ---- pool helpers -----------------------------------------------------------------------------

inline pmpage::pfn_t pfn_of(const pmpage::page* p) { return pmpage::page_to_pfn(p); }

inline char* data_start(const pmpage::pool& pool) {
  return static_cast<char*>(pmpage::page_address(pmpage::pfn_to_page(pool.start_pfn())));
}

// head pfn -> order, as reported by for_each_allocated. `visits` counts calls so a test can tell
// an allocation reported twice from one reported once.
struct allocation_snapshot {
  std::map<pmpage::pfn_t, unsigned> by_pfn;
  std::size_t visits = 0;
};

inline allocation_snapshot allocations(const pmpage::pool& pool) {
  allocation_snapshot s;
  pool.for_each_allocated([&](pmpage::page* head, unsigned order) {
    ++s.visits;
    s.by_pfn[pmpage::page_to_pfn(head)] = order;
  });
  return s;
}

inline std::uint64_t pages_in(const std::map<pmpage::pfn_t, unsigned>& allocs) {
  std::uint64_t n = 0;
  for (const auto& [pfn, order] : allocs) n += std::uint64_t{1} << order;
  return n;
}

// Reference models: does a page-use map (one entry per pool page, non-zero = in use) have a free
// naturally aligned extent of 2^order pages? (An allocation of that order must then succeed.)
inline bool has_free_extent(const std::vector<std::uint8_t>& used, unsigned order) {
  const std::uint64_t n = std::uint64_t{1} << order;
  for (std::uint64_t b = 0; b + n <= used.size(); b += n) {
    bool free = true;
    for (std::uint64_t i = b; i < b + n && free; ++i) free = !used[i];
    if (free) return true;
  }
  return false;
}

// The root area seen as an array of pfn slots (for alloc_pages_to / free_pages_from).
inline pmpage::pfn_t* root_slots(const pmpage::pool& pool) {
  return reinterpret_cast<pmpage::pfn_t*>(pool.root());
}
inline std::size_t root_slot_count(const pmpage::pool& pool) {
  return pool.root_size() / sizeof(pmpage::pfn_t);
}

// Runs f on a thread of its own, which has exited when this returns. A volatile pool keeps the
// order-0 pages a thread frees in that thread's magazine (src/magazine.hpp: allocated in their
// region's books, free in fact) until the thread exits, trim() runs, or an allocation finds no
// other room. Tests that look at where freed pages went (the empty list, merges, descriptor
// memory, exact region counts) free them this way, so that both kinds of pool show the regions'
// own state.
template <class F>
void free_on_exiting_thread(F&& f) {
  std::thread t(std::forward<F>(f));
  t.join();
}

// ---- fixtures ---------------------------------------------------------------------------------

// Hands out unique pool paths under /dev/shm and removes them after the test.
class TempPathTest : public ::testing::Test {
 protected:
  std::filesystem::path new_path(const std::string& tag = "") {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    std::string name = std::string("pmpage-test-") + info->test_suite_name() + "." + info->name();
    for (char& c : name)
      if (c == '/') c = '_';
    name += "-" + std::to_string(::getpid()) + "-" + std::to_string(paths_.size());
    if (!tag.empty()) name += "-" + tag;
    std::filesystem::path p = std::filesystem::path("/dev/shm") / name;
    std::error_code ec;
    std::filesystem::remove_all(p, ec);
    paths_.push_back(p);
    return p;
  }

  static pmpage::pool create_pool(const std::filesystem::path& path, std::uint64_t size,
                                  std::shared_ptr<pmpage::persistence> backend = nullptr) {
    pmpage::pool::options opts;
    opts.size = size;
    opts.backend = std::move(backend);
    return pmpage::pool::create(path, opts);
  }

  void TearDown() override {
    std::error_code ec;
    for (const auto& p : paths_) std::filesystem::remove_all(p, ec);
  }

  std::vector<std::filesystem::path> paths_;
};

// A tmpfs of `bytes` mounted on a fresh directory under /tmp for the object's life: a file system
// that fills up, where a sparse pool runs out of blocks. Needs root (CAP_SYS_ADMIN): ok() is false
// otherwise, and why() says why, for GTEST_SKIP. The mount is made in a private mount namespace
// of this process when it can be, so a test that dies (the SIGBUS these tests guard against)
// leaves no mount behind.
class small_tmpfs {
 public:
  explicit small_tmpfs(std::uint64_t bytes) {
    static const bool private_ns = ::geteuid() == 0 && ::unshare(CLONE_NEWNS) == 0 &&
                                   ::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) == 0;
    (void)private_ns;
    char tmpl[] = "/tmp/pmpage-small-tmpfs-XXXXXX";
    if (!::mkdtemp(tmpl)) {
      why_ = std::string("mkdtemp: ") + std::strerror(errno);
      return;
    }
    dir_ = tmpl;
    const std::string opts = "size=" + std::to_string(bytes) + ",mode=0700";
    if (::geteuid() != 0) {
      why_ = "not root: cannot mount a small tmpfs";
    } else if (::mount("tmpfs", tmpl, "tmpfs", 0, opts.c_str()) != 0) {
      why_ = std::string("mount -t tmpfs: ") + std::strerror(errno);
    } else {
      mounted_ = true;
    }
  }
  ~small_tmpfs() {
    if (mounted_) ::umount2(dir_.c_str(), MNT_DETACH);
    if (!dir_.empty()) ::rmdir(dir_.c_str());
  }
  small_tmpfs(const small_tmpfs&) = delete;
  small_tmpfs& operator=(const small_tmpfs&) = delete;
  bool ok() const { return mounted_; }
  const std::string& why() const { return why_; }
  std::filesystem::path dir() const { return dir_; }

 private:
  std::filesystem::path dir_;
  std::string why_;
  bool mounted_ = false;
};

// An ext4 file system whose write-back fails: ext4 in an image file of image_bytes on a
// small_tmpfs of tmpfs_bytes (smaller), mounted through a loop device (mount -o loop: the loop
// device is released at unmount, and with the private mount namespace of small_tmpfs also when the
// process dies). Once the tmpfs is full, a write-back of the ext4 fails and msync returns the
// error (ENOSPC or EIO) once, then 0 for the same pages: the case that loses data when the first
// error is dropped. Needs root, mkfs.ext4 and loop devices: ok() is false otherwise and why()
// says why (for GTEST_SKIP).
class failing_ext4 {
 public:
  failing_ext4(std::uint64_t tmpfs_bytes, std::uint64_t image_bytes) : tmpfs_(tmpfs_bytes) {
    if (!tmpfs_.ok()) {
      why_ = tmpfs_.why();
      return;
    }
    const std::filesystem::path img = tmpfs_.dir() / "ext4.img";
    mnt_ = tmpfs_.dir() / "mnt";
    std::error_code ec;
    std::filesystem::create_directory(mnt_, ec);
    std::ofstream(img).close();
    if (::truncate(img.c_str(), off_t(image_bytes)) != 0) {
      why_ = std::string("truncate: ") + std::strerror(errno);
      return;
    }
    if (std::string out; !run("mkfs.ext4 -q -F " + img.string(), out)) {
      why_ = "mkfs.ext4 refused: " + out;
      return;
    }
    if (std::string out; !run("mount -t ext4 -o loop,errors=continue " + img.string() + " " + mnt_.string(), out)) {
      why_ = "mount -o loop refused (no loop devices?): " + out;
      return;
    }
    mounted_ = true;
  }
  ~failing_ext4() {
    if (mounted_ && ::umount2(mnt_.c_str(), 0) != 0) ::umount2(mnt_.c_str(), MNT_DETACH);
  }
  failing_ext4(const failing_ext4&) = delete;
  failing_ext4& operator=(const failing_ext4&) = delete;
  bool ok() const { return mounted_; }
  const std::string& why() const { return why_; }
  std::filesystem::path dir() const { return mnt_; }

 private:
  static bool run(const std::string& cmd, std::string& out) {
    FILE* f = ::popen((cmd + " 2>&1").c_str(), "r");
    if (!f) {
      out = std::strerror(errno);
      return false;
    }
    char buf[256];
    while (std::fgets(buf, sizeof buf, f)) out += buf;
    return ::pclose(f) == 0;
  }
  small_tmpfs tmpfs_;
  std::filesystem::path mnt_;
  std::string why_;
  bool mounted_ = false;
};

// The two kinds of pool the behaviour suites run on (issue #12): a persistent pool (pool::create
// on a /dev/shm file) and a volatile one (pool::create_volatile over anonymous memory, the same
// size). Suites parameterised over it instantiate with kKinds and kind_name.
enum class pool_kind { persistent, volatile_ };

inline const char* kind_text(pool_kind k) { return k == pool_kind::persistent ? "Persistent" : "Volatile"; }
inline std::string kind_name(const ::testing::TestParamInfo<pool_kind>& info) { return kind_text(info.param); }
inline const auto kKinds = ::testing::Values(pool_kind::persistent, pool_kind::volatile_);

// One open pool, pool_, created in SetUp: a persistent pool at path_, or (kind() == volatile_) a
// volatile pool of the same size over anonymous memory (path_ is then unused). Subclasses choose
// the size (and the backend); Kinds<...> makes the kind the test parameter.
class PoolTest : public TempPathTest {
 protected:
  virtual std::uint64_t pool_size() const { return 64 * MiB; }
  virtual std::shared_ptr<pmpage::persistence> backend() { return nullptr; }
  virtual pool_kind kind() const { return pool_kind::persistent; }
  bool is_volatile_kind() const { return kind() == pool_kind::volatile_; }
  // What a persistent pool pays (fences, flushes): a volatile pool pays nothing.
  std::uint64_t per_kind(std::uint64_t persistent_cost) const { return is_volatile_kind() ? 0 : persistent_cost; }

  // A pool of this test's kind (persistent: at path_, which must be set).
  pmpage::pool make_pool(std::uint64_t size, std::shared_ptr<pmpage::persistence> be, std::size_t root_size = 4096) {
    if (is_volatile_kind()) {
      pmpage::pool::volatile_options v;
      v.size = size;
      v.root_size = root_size;
      v.backend = std::move(be);
      return pmpage::pool::create_volatile(v);
    }
    pmpage::pool::options o;
    o.size = size;
    o.root_size = root_size;
    o.backend = std::move(be);
    return pmpage::pool::create(path_, o);
  }

  // A second pool of this test's kind (persistent: at a new path tagged `tag`).
  pmpage::pool make_another_pool(std::uint64_t size, const std::string& tag) {
    if (is_volatile_kind()) {
      pmpage::pool::volatile_options v;
      v.size = size;
      return pmpage::pool::create_volatile(v);
    }
    return create_pool(new_path(tag), size);
  }

  void SetUp() override {
    path_ = new_path();
    pool_ = make_pool(pool_size(), backend());
    const pmpage::pool_stats s = pool_.stats();
    total_pages_ = s.total_pages;
    total_regions_ = s.total_regions;
    start_ = pool_.start_pfn();
  }

  void TearDown() override {
    pool_.close();
    TempPathTest::TearDown();
  }

  // Close and reopen pool_ (same path); refreshes nothing else: pfns must not change. Persistent
  // pools only.
  void reopen() {
    ASSERT_FALSE(is_volatile_kind()) << "reopen() of a volatile pool";
    pool_.close();
    pool_ = pmpage::pool::open(path_);
  }

  // Where a test reopens only on its way to checking that the state it built is still there: a
  // persistent pool is reopened, a volatile one (no media to reopen) is left as it is, so the
  // checks after it hold for the same pool. Returns whether it reopened.
  bool reopen_if_persistent() {
    if (is_volatile_kind()) return false;
    reopen();
    return true;
  }

  pmpage::page* page_at(std::uint64_t index) const { return pmpage::pfn_to_page(start_ + index); }
  std::uint64_t index_of(const pmpage::page* p) const { return pmpage::page_to_pfn(p) - start_; }
  std::uint64_t free_pages() const { return pool_.stats().free_pages; }

  // The descriptor DRAM the contract allows: 64 B per region + 32 KiB per materialised region.
  std::uint64_t expected_descriptor_bytes(std::uint64_t materialised) const {
    return total_regions_ * 64 + materialised * 32768;
  }

  std::filesystem::path path_;
  pmpage::pool pool_;
  pmpage::pfn_t start_ = 0;
  std::uint64_t total_pages_ = 0;
  std::uint64_t total_regions_ = 0;
};

/// A PoolTest whose pool runs on a counting backend: fences_of(f) / flushes_of(f) are what f cost.
class CountingPoolTest : public PoolTest {
 protected:
  std::shared_ptr<pmpage::persistence> backend() override { return counter_; }
  template <class F>
  std::uint64_t fences_of(F&& f) {
    counter_->reset();
    f();
    return counter_->fences();
  }
  template <class F>
  std::uint64_t flushes_of(F&& f) {
    counter_->reset();
    f();
    return counter_->flushes();
  }
  std::shared_ptr<pmpage::counting_persistence> counter_ =
      std::make_shared<pmpage::counting_persistence>(pmpage::make_libpmem_persistence());
};

// A fixture Base run on both kinds of pool: the test parameter is the kind.
//   class Alloc : public Kinds<PoolTest> {};  TEST_P(Alloc, ...)
//   INSTANTIATE_TEST_SUITE_P(, Alloc, kKinds, kind_name);
template <class Base>
class Kinds : public Base, public ::testing::WithParamInterface<pool_kind> {
 protected:
  pool_kind kind() const override { return this->GetParam(); }
};

// A fixture Base with a parameter P of its own (an order, a seed) run on both kinds of pool: the
// test parameter is (P, kind); param() is the P.
template <class Base, class P>
class KindsAnd : public Base, public ::testing::WithParamInterface<std::tuple<P, pool_kind>> {
 protected:
  pool_kind kind() const override { return std::get<1>(this->GetParam()); }
  static P param() { return std::get<0>(KindsAnd::GetParam()); }
};

template <class P>
std::string kind_and_name(const ::testing::TestParamInfo<std::tuple<P, pool_kind>>& info, const std::string& p) {
  return p + "_" + kind_text(std::get<1>(info.param));
}

}  // namespace pmtest
