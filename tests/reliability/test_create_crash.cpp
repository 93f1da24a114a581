// test_create_crash.cpp — an interrupted pool::create never leaves something that looks like a
// foreign file or a corrupt pool: the path is absent (or as it was), a valid pool, or a file open()
// reports as ERR_CREATE_INTERRUPTED, which create() then formats without options.overwrite.
// A foreign file is never formatted without options.overwrite.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <thread>

#include "crash_harness.hpp"
#include "layout.hpp"  // src/: CREATING_MAGIC, superblock offsets
#include <pmpage/testing.hpp>

using namespace pmpage;
using pmpage::testing::read_file;
using pmpage::testing::write_file;
namespace fs = std::filesystem;

namespace {

constexpr std::uint64_t MiB = 1ull << 20;

std::string temp_of(const std::string& path) { return path + ".pmpage-creating"; }

bool all_zero(const std::vector<char>& b) {
  return std::all_of(b.begin(), b.end(), [](char c) { return c == 0; });
}

/// The outcome of pool::open on a file left by an interrupted create.
enum class opened { pool, interrupted, not_a_pool, other_error };

opened try_open(const std::string& path, std::string* why) {
  try {
    pool p = pool::open(path);
    *why = p.check();
    const auto st = pmpage::testing::read_state(p);
    if (why->empty()) *why = pmpage::testing::check_recovered(p, st, false);
    return opened::pool;
  } catch (const pmpage::error& e) {
    *why = e.what();
    if (e.code().value() == ERR_CREATE_INTERRUPTED) {
      EXPECT_NE(why->find("interrupted"), std::string::npos) << *why;
      EXPECT_NE(why->find("create again"), std::string::npos) << *why;
      return opened::interrupted;
    }
    if (e.code() == std::errc::invalid_argument &&
        (why->find("not a pmpage pool") != std::string::npos || why->find("too small to be a pmpage pool") != std::string::npos))
      return opened::not_a_pool;
    return opened::other_error;
  }
}

/// create() without overwrite over what an interrupted create left; the new pool must be sound.
void expect_create_succeeds(const std::string& path, std::uint64_t size, const std::string& context) {
  pool::options o;
  o.size = size;
  try {
    pool p = pool::create(path, o);
    EXPECT_EQ(p.check(), "") << context;
    EXPECT_EQ(p.stats().free_pages, p.stats().total_pages) << context;
  } catch (const std::exception& e) {
    ADD_FAILURE() << context << ": create without overwrite failed: " << e.what();
  }
  EXPECT_FALSE(fs::exists(temp_of(path))) << context << ": the temporary file outlived a successful create";
}

class CreateCrash : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = "/dev/shm/pmpage-create-" + std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()) +
            "-" + std::to_string(::getpid());
    cleanup();
  }
  void TearDown() override { cleanup(); }
  void cleanup() {
    fs::remove(path_);
    fs::remove(temp_of(path_));
    fs::remove(path_ + ".img");
  }
  std::string path_;
};

// ---- 1. SIGKILL at random points ---------------------------------------------------------------

/// A child running create(path): `ready` is readable when it is about to call create, `done`
/// when create has returned.
struct create_child {
  pid_t pid;
  int done;
};

create_child spawn_create(const std::string& path, const pool::options& o) {
  int ready[2], done[2];
  if (::pipe(ready) != 0 || ::pipe(done) != 0) std::abort();
  const pid_t child = ::fork();
  if (child == 0) {
    char c = 1;
    (void)!::write(ready[1], &c, 1);
    try {
      pool p = pool::create(path, o);
      (void)!::write(done[1], &c, 1);
    } catch (...) {
      _exit(2);
    }
    _exit(0);
  }
  ::close(ready[1]);
  ::close(done[1]);
  char c;
  (void)!::read(ready[0], &c, 1);
  ::close(ready[0]);
  return {child, done[0]};
}

TEST_F(CreateCrash, KilledAtRandomPointsLeavesNoPoolAValidPoolOrAnInterruptedCreation) {
  pool::options o;
  o.size = 64 * MiB;
  o.root_size = 16 * MiB;  // zeroing and flushing the root makes create long enough to hit its middle
  // How long a create takes here, from the child's "ready" to create's return.
  std::vector<double> times;
  for (int i = 0; i < 3; ++i) {
    cleanup();
    const create_child c = spawn_create(path_, o);
    const auto t0 = std::chrono::steady_clock::now();
    char b;
    const bool returned = ::read(c.done, &b, 1) == 1;
    times.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count());
    ::close(c.done);
    int status;
    ::waitpid(c.pid, &status, 0);
    ASSERT_TRUE(returned && WIFEXITED(status) && WEXITSTATUS(status) == 0) << "create failed in the child";
  }
  std::sort(times.begin(), times.end());
  const double create_us = times[1];

  const int iterations = std::getenv("PMPAGE_CREATE_KILLS") ? std::atoi(std::getenv("PMPAGE_CREATE_KILLS")) : 120;
  std::mt19937_64 rng(12345);
  // A little past the end too, so that some kills find create finished.
  std::uniform_real_distribution<double> delay(0, 1.1 * create_us);
  // Outcome counts, by whether the path existed (as an empty file) before create ran.
  std::map<std::string, int> counts;
  for (int it = 0; it < iterations; ++it) {
    cleanup();
    const bool existing = it % 2 == 1;
    if (existing) write_file(path_, {});
    const auto d = std::chrono::duration<double, std::micro>(delay(rng));
    // Every tenth pair of kills waits for create to return first: a loaded machine (sanitizers,
    // parallel tests) stretches create past the calibrated time, and the kills after the end must
    // not depend on timing.
    const bool after_return = it % 10 >= 8;
    const create_child c = spawn_create(path_, o);
    if (after_return) {
      char b;
      ASSERT_EQ(::read(c.done, &b, 1), 1) << "create failed in the child, iteration " << it;
    } else {
      std::this_thread::sleep_for(d);  // sleeping, not spinning: the child needs the CPU
    }
    ::kill(c.pid, SIGKILL);
    ::close(c.done);
    int status;
    ::waitpid(c.pid, &status, 0);
    ASSERT_FALSE(WIFEXITED(status) && WEXITSTATUS(status) != 0) << "create failed in the child, iteration " << it;

    const std::string ctx = "iteration " + std::to_string(it) + (existing ? " (existing empty file)" : " (new path)");
    std::string outcome, why;
    bool recreate = true;
    if (!fs::exists(path_)) {
      ASSERT_FALSE(existing) << ctx << ": the existing file disappeared";
      outcome = fs::exists(temp_of(path_)) ? "no pool, temporary file left (killed mid-create)" : "no pool, nothing left";
      std::string why2;
      try {
        pool::open(path_);
        ADD_FAILURE() << ctx << ": open of a missing path succeeded";
      } catch (const pmpage::error& e) {
        EXPECT_EQ(e.code(), std::errc::no_such_file_or_directory) << ctx << ": " << e.what();
      }
    } else {
      switch (try_open(path_, &why)) {
        case opened::pool:
          EXPECT_EQ(why, "") << ctx << ": the pool is not sound";
          outcome = "valid pool";
          recreate = false;
          break;
        case opened::interrupted:
          outcome = "interrupted creation reported";
          break;
        case opened::not_a_pool:
          // Only before create wrote anything: the file is still blank.
          EXPECT_TRUE(existing && all_zero(read_file(path_))) << ctx << ": looks foreign: " << why;
          outcome = "blank file untouched";
          break;
        case opened::other_error:
          ADD_FAILURE() << ctx << ": unexpected error: " << why;
          outcome = "unexpected error";
          break;
      }
    }
    ++counts[std::string(existing ? "existing: " : "new: ") + outcome];
    if (recreate) {
      expect_create_succeeds(path_, o.size, ctx);
    } else {
      pool::options again = o;
      EXPECT_THROW(pool::create(path_, again), pmpage::error) << ctx << ": create without overwrite replaced a pool";
    }
    if (HasFailure()) break;
  }
  std::printf("create takes ~%.0f us; %d kills, 4 in 5 at uniform delays in [0, %.0f) us, 1 in 5 after create "
              "returned:\n",
              create_us, iterations, 1.1 * create_us);
  for (auto& [k, v] : counts) std::printf("  %4d  %s\n", v, k.c_str());
  // The kills must really land in the middle of create, in both modes.
  EXPECT_GT(counts["new: no pool, temporary file left (killed mid-create)"], 0);
  EXPECT_GT(counts["new: valid pool"] + counts["existing: valid pool"], 0);
  EXPECT_GT(counts["existing: interrupted creation reported"], 0);
}

// ---- 2. Power failure at every fence of an in-place create (simulated device) ----------------------

constexpr std::size_t TRACKED = 2u << 20;  // the metadata of a 12 MiB pool ends below 2 MiB
constexpr std::uint64_t POOL = 12 * MiB;

struct start_state {
  const char* name;
  bool overwrite;
  std::function<void(const std::string&)> make;
};

TEST_F(CreateCrash, PowerFailureAtEveryFenceOfAnInPlaceCreate) {
  const start_state starts[] = {
      {"blank file", false, [](const std::string& p) { write_file(p, std::vector<char>(POOL, 0)); }},
      {"interrupted creation", false,
       [](const std::string& p) {
         std::vector<char> b(POOL, 0);
         std::memcpy(b.data(), detail::CREATING_MAGIC, 8);
         std::memcpy(b.data() + 4096, detail::CREATING_MAGIC, 8);
         write_file(p, b);
       }},
      {"old pool, overwrite", true,
       [](const std::string& p) {
         pool::options o;
         o.size = POOL;
         pool q = pool::create(p, o);
         ASSERT_NE(q.alloc_pages(0), nullptr);
         ASSERT_NE(q.alloc_pages_to(3, static_cast<pfn_t*>(q.root())), nullptr);
       }},
      {"foreign file, overwrite", true,
       [](const std::string& p) {
         std::vector<char> b(POOL);
         std::mt19937_64 r(3);
         for (auto& c : b) c = char(r());
         write_file(p, b);
       }},
  };
  const unsigned seeds = std::getenv("PMPAGE_CRASH_SEEDS") ? unsigned(std::atoi(std::getenv("PMPAGE_CRASH_SEEDS"))) : 3;
  for (const start_state& s : starts) {
    cleanup();
    s.make(path_);
    if (HasFatalFailure()) return;
    const std::vector<char> original = read_file(path_);
    pmpage::testing::pool_state old_state;
    const bool old_is_pool = std::string(s.name).rfind("old pool", 0) == 0;
    if (old_is_pool) {
      pool q = pool::open(path_);
      old_state = pmpage::testing::read_state(q);
    }

    // The operation is the create itself, on the simulated device; the images are checked after
    // it returned (the untracked rest of each image is the file as create left it: create writes
    // nothing beyond the metadata).
    pmpage::testing::crash_options co;
    co.tracked = TRACKED;
    co.random_subsets = seeds;
    std::map<std::string, int> counts;
    std::uint64_t create_fences = 0;
    const auto rep = pmpage::testing::run_crash_test(
        path_, co,
        [&](const std::shared_ptr<persistence>& device) {
          pool::options o;
          o.size = POOL;
          o.overwrite = s.overwrite;
          o.backend = device;
          pool p = pool::create(path_, o);
          create_fences = dynamic_cast<const pmpage::testing::sim_pmem&>(*device).fences();
        },  // and the close (one more fence; crashed too)
        [&](const fs::path& image, const pmpage::testing::crash_point& at) -> std::string {
          if (HasFailure()) return {};  // the first failure is the one to read
          const std::string label = std::string(s.name) + ": " + at.label();
          const std::string img = image.string();
          const std::vector<char> bytes = read_file(img);
          std::string why;
          const opened r = try_open(img, &why);
          bool recreate = false;
          switch (r) {
            case opened::pool: {
              EXPECT_EQ(why, "") << label << ": a corrupt pool";
              if (!why.empty()) return {};
              pool q = pool::open(img);
              const auto st = pmpage::testing::read_state(q);
              const bool fresh = st.allocations.empty() && st.slots == std::vector<pfn_t>(pmpage::testing::NR_SLOTS, 0);
              EXPECT_TRUE(fresh || (old_is_pool && st == old_state)) << label << ": neither the new pool nor the old one";
              ++counts[fresh ? "new pool" : "old pool, untouched"];
              break;
            }
            case opened::interrupted:
              ++counts["interrupted creation"];
              recreate = true;
              break;
            case opened::not_a_pool:
              // Nothing create wrote reached the media: the file is as it was.
              EXPECT_TRUE(bytes == original) << label << ": reported as not a pool: " << why;
              ++counts["unchanged, not a pool"];
              recreate = all_zero(original);
              break;
            case opened::other_error:
              ADD_FAILURE() << label << ": " << why;
              break;
          }
          if (at.fence == 0) EXPECT_EQ(r, opened::pool) << label << ": create returned but the pool is not durable";
          if (recreate) expect_create_succeeds(img, POOL, label);
          return {};
        });
    EXPECT_EQ(create_fences, 4u) << s.name << ": create's fences changed; update docs/crash-consistency.md";
    EXPECT_TRUE(rep.ok()) << rep.describe();
    EXPECT_EQ(rep.images, (2 + seeds) * 2 * rep.fences + 1) << s.name;
    std::printf("%s: %zu crash images:", s.name, rep.images);
    for (auto& [k, v] : counts) std::printf(" %d %s;", v, k.c_str());
    std::printf("\n");
    EXPECT_GT(counts["interrupted creation"], 0) << s.name;
    EXPECT_GT(counts["new pool"], 0) << s.name;
    if (HasFailure()) return;
  }
}

// ---- 3. Foreign files ------------------------------------------------------------------------------

TEST_F(CreateCrash, ForeignFilesAreNotPoolsAndCreateRefusesThemWithoutOverwrite) {
  std::vector<char> random(3 * MiB);
  std::mt19937_64 r(11);
  for (auto& c : random) c = char(r());
  const std::string text_s = "this is somebody's text file, not a pool\n";
  std::vector<char> text;
  for (int i = 0; i < 500; ++i) text.insert(text.end(), text_s.begin(), text_s.end());
  std::vector<char> short_text(text_s.begin(), text_s.end());
  // A sparse 32 MiB file whose only data is one byte far from the start: the blank check must
  // look past the holes.
  std::vector<char> late_byte(32 * MiB, 0);
  late_byte[20 * MiB + 5] = 1;
  const std::pair<const char*, const std::vector<char>*> foreign[] = {
      {"random bytes", &random}, {"text", &text}, {"short text", &short_text}, {"one late non-zero byte", &late_byte}};
  for (auto& [name, bytes] : foreign) {
    cleanup();
    write_file(path_, *bytes);
    std::string why;
    EXPECT_EQ(try_open(path_, &why), opened::not_a_pool) << name << ": " << why;
    pool::options o;
    o.size = 32 * MiB;
    try {
      pool p = pool::create(path_, o);
      ADD_FAILURE() << name << ": create formatted a foreign file without overwrite";
    } catch (const pmpage::error& e) {
      EXPECT_EQ(e.code(), std::errc::file_exists) << name << ": " << e.what();
      EXPECT_NE(std::string(e.what()).find(path_), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("overwrite"), std::string::npos) << e.what();
    }
    EXPECT_TRUE(read_file(path_) == *bytes) << name << ": a refused file was modified";
    o.overwrite = true;
    pool p = pool::create(path_, o);
    EXPECT_EQ(p.check(), "") << name;
  }
}

TEST_F(CreateCrash, BlankFilesAreFormattedWithoutOverwrite) {
  // Nothing to lose: a 0-byte file (touch, mkstemp) and a file of holes and zeros (ftruncate,
  // dd if=/dev/zero). Both are "not a pmpage pool" to open.
  for (std::uint64_t size : {std::uint64_t{0}, 32 * MiB}) {
    cleanup();
    write_file(path_, std::vector<char>(size, 0));
    std::string why;
    EXPECT_EQ(try_open(path_, &why), opened::not_a_pool) << why;
    expect_create_succeeds(path_, 32 * MiB, "blank file of " + std::to_string(size) + " bytes");
  }
}

// ---- the marker and the temporary file --------------------------------------------------------------

TEST_F(CreateCrash, ValidCopyBBesideTheMarkerInCopyAIsAPoolAndARepairs) {
  {
    pool::options o;
    o.size = POOL;
    pool p = pool::create(path_, o);
    ASSERT_NE(p.alloc_pages(0), nullptr);
  }
  auto bytes = read_file(path_);
  std::memset(bytes.data(), 0, 4096);
  std::memcpy(bytes.data(), detail::CREATING_MAGIC, 8);  // crash between fences 3 and 4
  write_file(path_, bytes);
  {
    pool p = pool::open(path_);
    EXPECT_GE(p.stats().repaired_at_open, 1u);
    EXPECT_EQ(p.check(), "");
    EXPECT_EQ(pmpage::testing::read_state(p).allocations.size(), 1u);
  }
  const auto after = read_file(path_);
  EXPECT_TRUE(std::equal(after.begin(), after.begin() + 4096, after.begin() + 4096)) << "copy A was not repaired from B";
}

TEST_F(CreateCrash, MarkerWithoutAValidCopyIsAnInterruptedCreation) {
  std::vector<char> bytes(POOL, 0);
  std::memcpy(bytes.data(), detail::CREATING_MAGIC, 8);
  for (std::size_t i = 4096; i < 8192; ++i) bytes[i] = char(i * 7);  // copy B torn
  write_file(path_, bytes);
  try {
    pool p = pool::open(path_);
    ADD_FAILURE() << "an interrupted creation opened";
  } catch (const pmpage::error& e) {
    EXPECT_EQ(e.code().value(), ERR_CREATE_INTERRUPTED) << e.what();
    EXPECT_EQ(e.code(), std::errc::operation_canceled) << e.what();
    EXPECT_NE(std::string(e.what()).find(path_), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("interrupted"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(read_file(path_) == bytes) << "open modified an interrupted creation";
  expect_create_succeeds(path_, POOL, "marker in A, garbage in B");
}

TEST_F(CreateCrash, StaleTemporaryFileIsReplacedAndOpenHintsAtIt) {
  write_file(temp_of(path_), std::vector<char>(5 * MiB, 'z'));  // left by a killed create
  try {
    pool::open(path_);
    ADD_FAILURE() << "open of a missing path succeeded";
  } catch (const pmpage::error& e) {
    EXPECT_EQ(e.code(), std::errc::no_such_file_or_directory) << e.what();
    EXPECT_NE(std::string(e.what()).find("interrupted"), std::string::npos) << e.what();
  }
  expect_create_succeeds(path_, POOL, "stale temporary file");
  pool p = pool::open(path_);
  EXPECT_EQ(p.check(), "");
}

TEST_F(CreateCrash, ConcurrentCreatesOfOnePathConflictWithEbusy) {
  // Another process holds the temporary file's lock: its create is running.
  int ready[2], done[2];
  ASSERT_EQ(::pipe(ready), 0);
  ASSERT_EQ(::pipe(done), 0);
  const pid_t child = ::fork();
  if (child == 0) {
    const int fd = ::open(temp_of(path_).c_str(), O_RDWR | O_CREAT | O_EXCL, 0600);
    if (fd < 0 || ::flock(fd, LOCK_EX) != 0) _exit(1);
    char c = 1;
    (void)!::write(ready[1], &c, 1);
    (void)!::read(done[0], &c, 1);
    _exit(0);
  }
  char c;
  ASSERT_EQ(::read(ready[0], &c, 1), 1);
  pool::options o;
  o.size = POOL;
  try {
    pool p = pool::create(path_, o);
    ADD_FAILURE() << "create ran beside another create of the same path";
  } catch (const pmpage::error& e) {
    EXPECT_EQ(e.code(), std::errc::device_or_resource_busy) << e.what();
    EXPECT_NE(std::string(e.what()).find("another pool::create"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(fs::exists(temp_of(path_))) << "the running create's file was removed";
  EXPECT_FALSE(fs::exists(path_));
  (void)!::write(done[1], &c, 1);
  int status;
  ::waitpid(child, &status, 0);
  expect_create_succeeds(path_, POOL, "after the other create died");
}

TEST_F(CreateCrash, CreateDoesNotReplaceAFileThatAppearsAtThePathWhileItRuns) {
  // Someone else creates the path while our create formats its temporary file: publishing must
  // not replace their file, and our temporary file must go.
  auto sim = std::make_shared<pmpage::testing::sim_pmem>(TRACKED);
  const std::vector<char> theirs(4096, 't');
  sim->on_fence = [&](std::uint64_t k, bool before) {
    if (k == 1 && before) {
      EXPECT_FALSE(fs::exists(path_)) << "a new pool is formatted at its final path";
      EXPECT_TRUE(fs::exists(temp_of(path_)));
      write_file(path_, theirs);
    }
  };
  pool::options o;
  o.size = POOL;
  o.backend = sim;
  try {
    pool p = pool::create(path_, o);
    ADD_FAILURE() << "create replaced a file that appeared at the path";
  } catch (const pmpage::error& e) {
    EXPECT_EQ(e.code(), std::errc::file_exists) << e.what();
    EXPECT_NE(std::string(e.what()).find(path_), std::string::npos) << e.what();
  }
  EXPECT_TRUE(read_file(path_) == theirs);
  EXPECT_FALSE(fs::exists(temp_of(path_)));
}

}  // namespace
