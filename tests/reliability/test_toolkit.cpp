// test_toolkit.cpp — the public power-failure toolkit (pmpage/testing.hpp) finds real bugs.
//
// A tiny "engine" keeps a linked list of values in a pool: the root holds the head slot and a
// count; each push links a new node with alloc_pages_to (into the previous node's next word),
// writes the node's value, persists it, and only then persists count + 1. The checker walks
// `count` nodes. The correct engine passes at every crash point; one that forgets to persist the
// node before publishing the count fails, and the failure reruns alone from its crash point.
#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <cstddef>
#include <cstring>
#include <filesystem>
#include <set>

#include <pmpage/pmpage.hpp>
#include <pmpage/testing.hpp>

using namespace pmpage;
namespace pt = pmpage::testing;
namespace fs = std::filesystem;

namespace {

constexpr std::uint64_t POOL = 8ull << 20;

struct list_root {
  pfn_t head;
  std::uint64_t count;
};
struct list_node {
  std::uint64_t value;
  pfn_t next;
};

list_node* node_of(pfn_t pfn) { return static_cast<list_node*>(page_address(pfn_to_page(pfn))); }

/// Appends value (the engine's "commit"). bug: the node's value is not persisted before the count
/// that makes it part of the list.
void push(pool& p, std::uint64_t value, bool bug) {
  auto* r = static_cast<list_root*>(p.root());
  pfn_t* link = &r->head;
  for (std::uint64_t i = 0; i < r->count; ++i) link = &node_of(*link)->next;
  // A crash after the link and before the count leaves a linked node past the end: reuse it.
  page* pg = *link ? pfn_to_page(*link) : p.alloc_pages_to(0, link);
  ASSERT_NE(pg, nullptr);
  auto* n = static_cast<list_node*>(page_address(pg));
  n->value = value;
  n->next = 0;
  if (!bug) p.persist(n, sizeof *n);
  r->count += 1;
  p.persist(&r->count, sizeof r->count);
}

/// The engine's recovery check: count nodes, holding 1..count; count within [before, after].
std::string check_list(const fs::path& image, const pt::crash_point& at, std::uint64_t before, std::uint64_t after) {
  pool q = pool::open(image);
  if (std::string why = q.check(); !why.empty()) return "pool invariant: " + why;
  const auto* r = static_cast<const list_root*>(q.root());
  if (r->count < before || r->count > after)
    return "count " + std::to_string(r->count) + " outside [" + std::to_string(before) + ", " + std::to_string(after) + "]";
  if (at.fence == 0 && r->count != after) return "the pushes returned but count is " + std::to_string(r->count);
  pfn_t cur = r->head;
  for (std::uint64_t i = 0; i < r->count; ++i) {
    if (cur < q.start_pfn() || cur >= q.end_pfn()) return "node " + std::to_string(i) + " is not linked";
    const list_node* n = node_of(cur);
    if (n->value != i + 1) return "node " + std::to_string(i) + " holds " + std::to_string(n->value) + ", want " + std::to_string(i + 1);
    cur = n->next;
  }
  return {};
}

class Toolkit : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = "/dev/shm/pmpage-toolkit-" + std::to_string(::getpid()) + ".pool";
    fresh();
  }
  void TearDown() override { fs::remove(path_); }

  /// The file every run starts from (the operation changes it: a rerun must start over).
  void fresh() {
    fs::remove(path_);
    pool::options o;
    o.size = POOL;
    pool p = pool::create(path_, o);
    push(p, 1, false);  // one node before the test's operation
  }

  pt::crash_report run(bool bug, pt::crash_options opts = {}) {
    fresh();
    return pt::run_crash_test(
        path_, opts,
        [&](const std::shared_ptr<persistence>& dev) {
          pool::open_options oo;
          oo.backend = dev;
          pool p = pool::open(path_, oo);
          push(p, 2, bug);
          p.close();
          // Reopened on the same device (an engine closing and reopening within one operation).
          pool q = pool::open(path_, oo);
          push(q, 3, bug);
        },
        [&](const fs::path& image, const pt::crash_point& at) {
          checked_.push_back(at);
          return check_list(image, at, 1, 3);
        });
  }

  std::string path_;
  std::vector<pt::crash_point> checked_;
};

TEST_F(Toolkit, CorrectEnginePassesAtEveryCrashPoint) {
  const pt::crash_report rep = run(false);
  EXPECT_TRUE(rep.ok()) << rep.describe();
  // Per push: alloc_pages_to (2 fences), the node, the count; plus whatever open fences.
  EXPECT_GE(rep.fences, 8u);
  EXPECT_EQ(rep.images, rep.fences * 2 * 4 + 1) << "none kept, all kept, 2 random subsets, before and after; plus the end";
  EXPECT_EQ(checked_.back().fence, 0u);
  std::set<std::uint64_t> seeds;
  for (const auto& c : checked_)
    if (c.keep > 0 && c.keep < 1) seeds.insert(c.seed);
  EXPECT_EQ(seeds.size(), rep.fences * 2 * 2) << "every random subset has its own seed";
}

TEST_F(Toolkit, EngineThatPublishesBeforePersistingFailsAndTheFailureRerunsAlone) {
  const pt::crash_report rep = run(true);
  ASSERT_FALSE(rep.ok()) << "the toolkit missed a missing persist";
  ASSERT_EQ(rep.failed.size(), rep.failures.size());
  // The end image (nothing unfenced kept, after the pushes returned) lacks the unpersisted values.
  bool end_failed = false;
  for (const auto& f : rep.failed) end_failed = end_failed || f.fence == 0;
  EXPECT_TRUE(end_failed) << rep.describe();
  const std::string text = rep.describe();
  EXPECT_NE(text.find("PMPAGE_CRASH_ONLY="), std::string::npos) << text;
  EXPECT_NE(text.find("holds 0, want"), std::string::npos) << text;
  EXPECT_NE(rep.failures[0].find(rep.failed[0].label()), std::string::npos);

  // Every failure reruns alone, with the same verdict.
  for (std::size_t i = 0; i < rep.failed.size(); i += std::max<std::size_t>(1, rep.failed.size() / 5)) {
    checked_.clear();
    pt::crash_options o;
    o.only = rep.failed[i];
    const pt::crash_report one = run(true, o);
    ASSERT_EQ(one.images, 1u) << one.describe();
    ASSERT_EQ(checked_.size(), 1u);
    EXPECT_EQ(checked_[0].fence, rep.failed[i].fence);
    EXPECT_EQ(checked_[0].seed, rep.failed[i].seed);
    ASSERT_EQ(one.failures.size(), 1u) << rep.failures[i];
    EXPECT_EQ(one.failures[0], rep.failures[i]);
  }
}

TEST_F(Toolkit, EnvironmentVariableOverridesOnlyAndSelectsOnePoint) {
  ::setenv("PMPAGE_CRASH_ONLY", "3:1:77:0.25", 1);
  pt::crash_options o;
  o.only = pt::crash_point{1, false, 5, 0};  // overridden
  const pt::crash_report rep = run(false, o);
  ::unsetenv("PMPAGE_CRASH_ONLY");
  EXPECT_TRUE(rep.ok()) << rep.describe();
  ASSERT_EQ(checked_.size(), 1u);
  EXPECT_EQ(checked_[0].fence, 3u);
  EXPECT_TRUE(checked_[0].before);
  EXPECT_EQ(checked_[0].seed, 77u);
  EXPECT_EQ(checked_[0].keep, 0.25);
  EXPECT_EQ(checked_[0].label(), "fence 3 (before), random subset seed 77 (keep 0.25)");

  ::setenv("PMPAGE_CRASH_ONLY", "3:yes:77", 1);
  EXPECT_THROW(run(false), std::invalid_argument);
  ::unsetenv("PMPAGE_CRASH_ONLY");

  // A point the operation never reaches is reported, not silently passed.
  checked_.clear();
  o.only = pt::crash_point{100000, false, 0, 0};
  const pt::crash_report none = run(false, o);
  EXPECT_EQ(none.images, 0u);
  EXPECT_FALSE(none.ok());
  EXPECT_NE(none.describe().find("not reached"), std::string::npos) << none.describe();
}

TEST_F(Toolkit, ReopenOnTheSameDeviceKeepsUnfencedStoresVolatile) {
  auto sim = std::make_shared<pt::sim_pmem>();
  pool::open_options oo;
  oo.backend = sim;
  {
    pool p = pool::open(path_, oo);
    auto* r = static_cast<list_root*>(p.root());
    r->count = 42;  // never flushed
  }
  // After the close: the image comes from the copy kept at detach.
  const std::vector<char> closed = sim->crash_image(0, 1.0);
  EXPECT_EQ(closed.size(), sim->tracked());
  {
    pool p = pool::open(path_, oo);
    EXPECT_EQ(static_cast<list_root*>(p.root())->count, 42u) << "the page cache still holds the store";
  }
  std::vector<char> none = sim->crash_image(0, 0.0), every = sim->crash_image(0, 1.0);
  ASSERT_EQ(none.size(), sim->tracked());
  // Find the root: the count word is the only one that differs.
  std::size_t diffs = 0, at = 0;
  for (std::size_t w = 0; w + 8 <= none.size(); w += 8)
    if (std::memcmp(none.data() + w, every.data() + w, 8) != 0) ++diffs, at = w;
  EXPECT_EQ(diffs, 1u) << "a reopen made an unfenced store durable, or lost it";
  std::uint64_t v_none, v_every;
  std::memcpy(&v_none, none.data() + at, 8);
  std::memcpy(&v_every, every.data() + at, 8);
  EXPECT_EQ(v_none, 1u);
  EXPECT_EQ(v_every, 42u);
}

TEST_F(Toolkit, CorrectEnginePassesAtEveryCrashPointAtByteGranularity) {
  pt::crash_options o;
  o.granularity = granularity::byte;
  const pt::crash_report rep = run(false, o);
  EXPECT_TRUE(rep.ok()) << rep.describe();
  EXPECT_GE(rep.fences, 8u) << "the same fences as at cache-line granularity";
}

TEST_F(Toolkit, AtByteGranularityAMissingFlushFailsOnlyWhereStoreOrderMatters) {
  // The buggy engine never persists a node before the count. Under eADR the count's persist (a
  // fence) makes the node durable too: every image with nothing or everything unfenced kept, and
  // the end image, pass. Only a random subset that keeps the count but drops the node (stores the
  // simulator cannot order) fails: the engine relies on the order of two unfenced stores.
  pt::crash_options o;
  o.granularity = granularity::byte;
  const pt::crash_report rep = run(true, o);
  for (const auto& f : rep.failed) EXPECT_TRUE(f.keep > 0 && f.keep < 1) << f.label();
  const pt::crash_report adr = run(true);
  bool end_failed = false;
  for (const auto& f : adr.failed) end_failed = end_failed || f.fence == 0;
  EXPECT_TRUE(end_failed) << "the cache-line model loses the unflushed node even after the operation";
}

TEST_F(Toolkit, ByteModelKeepsEveryStoreBeforeAFenceAndAnySubsetAfterIt) {
  auto sim = std::make_shared<pt::sim_pmem>(0, granularity::byte);
  pool::open_options oo;
  oo.backend = sim;
  pool p = pool::open(path_, oo);
  EXPECT_EQ(p.store_granularity(), granularity::byte) << "the pool follows the simulated device";
  EXPECT_EQ(sim->model(), granularity::byte);
  auto* r = static_cast<list_root*>(p.root());
  const std::size_t at = static_cast<char*>(p.root()) - static_cast<char*>(p.base()) + offsetof(list_root, count);
  auto word = [&](const std::vector<char>& img) {
    std::uint64_t v;
    std::memcpy(&v, img.data() + at, 8);
    return v;
  };
  r->count = 42;  // never flushed
  EXPECT_EQ(p.drain(), 0);
  EXPECT_EQ(word(sim->crash_image(0, 0.0)), 42u) << "visible at the fence: durable";
  r->count = 43;  // after the last fence: may or may not survive
  EXPECT_EQ(word(sim->crash_image(0, 0.0)), 42u);
  EXPECT_EQ(word(sim->crash_image(0, 1.0)), 43u);

  // The same under the cache-line model: the unflushed store is not durable at the fence.
  p.close();
  fresh();
  auto adr = std::make_shared<pt::sim_pmem>(0, granularity::cache_line);
  oo.backend = adr;
  pool q = pool::open(path_, oo);
  EXPECT_EQ(q.store_granularity(), granularity::cache_line);
  static_cast<list_root*>(q.root())->count = 42;
  EXPECT_EQ(q.drain(), 0);
  EXPECT_EQ(word(adr->crash_image(0, 0.0)), 1u);
}

}  // namespace

namespace {
TEST(ToolkitMisuse, AnOperationThatNeverUsesTheSimulatedDeviceFails) {
  // Found by review: an engine registration kept from an earlier run gave the op's pools the
  // old device; the test "passed" with 0 fences and one image. Nothing tested must not pass.
  const std::string path = "/dev/shm/pmpage-toolkit-unused-" + std::to_string(::getpid());
  fs::remove(path);
  {
    pool::options o;
    o.size = 16u << 20;
    pool p = pool::create(path, o);
  }
  int checks = 0;
  const pt::crash_report rep = pt::run_crash_test(
      path, {},
      [&](const std::shared_ptr<persistence>&) {
        pool p = pool::open(path);  // the default backend: the simulated device is ignored
        (void)p.alloc_pages(0);
      },
      [&](const fs::path&, const pt::crash_point&) {
        ++checks;
        return std::string();
      });
  EXPECT_FALSE(rep.ok());
  ASSERT_EQ(rep.failures.size(), 1u);
  EXPECT_NE(rep.failures[0].find("never opened a pool on the simulated device"), std::string::npos) << rep.failures[0];
  EXPECT_EQ(checks, 0);
  fs::remove(path);
}
}  // namespace
