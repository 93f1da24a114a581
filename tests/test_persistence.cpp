// Persistence: every flush and fence goes through the backend seam, the fence budget of the hot
// operations, and crash consistency under SIGKILL (no close, no destructor, mid-operation).
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <random>
#include <algorithm>
#include <iterator>
#include <mutex>
#include <set>
#include <thread>

#include "test_util.hpp"

namespace {

using namespace pmtest;
using pmpage::HPAGE_PMD_NR;
using pmpage::page;
using pmpage::pfn_t;

// ---- the backend seam -------------------------------------------------------------------------

// Records what the pool tells its backend, and forwards to libpmem.
class recording_persistence final : public pmpage::persistence {
 public:
  pmpage::granularity attach(void* base, std::size_t length, pmpage::granularity g) override {
    ++attached;
    this->base = base;
    this->length = length;
    this->gran = g;
    return inner_->attach(base, length, g);
  }
  void detach() noexcept override {
    ++detached;
    inner_->detach();
  }
  void flush(const void* addr, std::size_t len) noexcept override {
    const auto a = reinterpret_cast<std::uintptr_t>(addr);
    const auto b = reinterpret_cast<std::uintptr_t>(base);
    if (a < b || a + len > b + length) ++flushes_outside_mapping;
    ++flushes;
    inner_->flush(addr, len);
  }
  void drain() noexcept override {
    ++fences;
    inner_->drain();
  }

  int attached = 0, detached = 0;
  void* base = nullptr;
  std::size_t length = 0;
  pmpage::granularity gran = pmpage::granularity::page;
  std::atomic<std::uint64_t> flushes{0}, fences{0}, flushes_outside_mapping{0};

 private:
  std::shared_ptr<pmpage::persistence> inner_ = pmpage::make_libpmem_persistence();
};

class Persistence : public TempPathTest {};

TEST_F(Persistence, BackendIsAttachedToTheMappingAndDetachedAtClose) {
  auto backend = std::make_shared<recording_persistence>();
  const auto path = new_path();
  {
    pmpage::pool p = create_pool(path, 64 * MiB, backend);
    EXPECT_EQ(backend->attached, 1);
    EXPECT_EQ(backend->base, p.base());
    EXPECT_EQ(backend->length, p.mapped_length());
    EXPECT_EQ(backend->gran, pmpage::granularity::cache_line) << "PMEM_IS_PMEM_FORCE=1 is set";
    EXPECT_EQ(backend->detached, 0);
    ASSERT_NE(p.alloc_pages(0), nullptr);
    EXPECT_GT(backend->fences.load(), 0u);
    EXPECT_EQ(backend->flushes_outside_mapping.load(), 0u);
  }
  EXPECT_EQ(backend->detached, 1);

  auto again = std::make_shared<recording_persistence>();
  pmpage::pool::open_options oo;
  oo.backend = again;
  pmpage::pool p = pmpage::pool::open(path, oo);
  EXPECT_EQ(again->attached, 1);
  EXPECT_EQ(again->base, p.base());
  ASSERT_NE(p.alloc_pages(9), nullptr);
  EXPECT_GT(again->fences.load(), 0u) << "open must use the backend it was given";
  EXPECT_EQ(again->flushes_outside_mapping.load(), 0u);
}

// ---- fence budget -----------------------------------------------------------------------------

using FenceBudget = CountingPoolTest;

TEST_F(FenceBudget, OrderZeroAllocAndFreeInASplitRegionCostOneFenceEach) {
  page* anchor = pool_.alloc_pages(0);  // splits a region and keeps it split
  ASSERT_NE(anchor, nullptr);
  std::vector<page*> pages;
  for (int i = 0; i < 200; ++i) {
    page* p = nullptr;
    const std::uint64_t f = fences_of([&] { p = pool_.alloc_pages(0); });
    ASSERT_NE(p, nullptr);
    ASSERT_EQ(f, 1u) << "order-0 alloc #" << i << ": must be durable (>= 1) within budget (<= 1)";
    pages.push_back(p);
  }
  ASSERT_EQ(pool_.stats().split_regions, 1u);
  for (std::size_t i = 0; i < pages.size(); ++i) {
    const std::uint64_t f = (i % 2) ? fences_of([&] { pmpage::put_page(pages[i]); })
                                    : fences_of([&] { pmpage::free_pages(pages[i], 0); });
    ASSERT_EQ(f, 1u) << "order-0 free #" << i;
  }
}

TEST_F(FenceBudget, SmallCompoundAllocAndFreeInASplitRegionCostOneFenceEach) {
  ASSERT_NE(pool_.alloc_pages(0), nullptr);
  for (unsigned order : {1u, 3u}) {
    page* p = nullptr;
    EXPECT_LE(fences_of([&] { p = pool_.alloc_pages(order); }), 1u) << "order " << order;
    ASSERT_NE(p, nullptr);
    EXPECT_LE(fences_of([&] { pmpage::put_page(p); }), 1u) << "order " << order;
  }
}

TEST_F(FenceBudget, WholeRegionAllocAndFreeCostOneFenceEach) {
  std::vector<page*> pages;
  for (int i = 0; i < 10; ++i) {
    page* p = nullptr;
    ASSERT_EQ(fences_of([&] { p = pool_.alloc_pages(9); }), 1u) << "order-9 alloc #" << i;
    ASSERT_NE(p, nullptr);
    pages.push_back(p);
  }
  for (std::size_t i = 0; i < pages.size(); ++i) {
    const std::uint64_t f = (i % 2) ? fences_of([&] { pmpage::put_page(pages[i]); })
                                    : fences_of([&] { pmpage::free_pages(pages[i], 9); });
    ASSERT_EQ(f, 1u) << "order-9 free #" << i;
  }
}

TEST_F(FenceBudget, SlotPairCostsThreeFences) {
  // The slot protocol (docs/format.md): alloc_pages_to records the page allocated and owned,
  // fences, publishes the slot, fences (2); free_pages_from clears the slot and fences (1). Exact
  // at orders 0 and 9 once the order-0 slots land in a published split region.
  ASSERT_NE(pool_.alloc_pages(0), nullptr);
  pfn_t* slots = root_slots(pool_);
  for (unsigned i = 0; i < 40; ++i) {
    const unsigned order = (i % 2) ? 9 : 0;
    page* p = nullptr;
    EXPECT_EQ(fences_of([&] { p = pool_.alloc_pages_to(order, &slots[i]); }), 2u) << "alloc_pages_to order " << order;
    ASSERT_NE(p, nullptr);
  }
  for (unsigned i = 0; i < 40; ++i) {
    int rc = -1;
    EXPECT_EQ(fences_of([&] { rc = pool_.free_pages_from(&slots[i]); }), 1u) << "free_pages_from of slot " << i;
    ASSERT_EQ(rc, 0);
  }
}

// The cache lines a call writes back (each flushed range's 64-byte lines, counted once per call).
class line_log_persistence final : public pmpage::persistence {
 public:
  pmpage::granularity attach(void* base, std::size_t length, pmpage::granularity g) override {
    return inner_->attach(base, length, g);
  }
  void detach() noexcept override { inner_->detach(); }
  void flush(const void* addr, std::size_t len) noexcept override {
    {
      std::lock_guard g(mu_);
      const auto a = reinterpret_cast<std::uintptr_t>(addr);
      for (std::uintptr_t l = a / 64; l <= (a + len - 1) / 64; ++l) lines_.insert(l);
    }
    inner_->flush(addr, len);
  }
  void drain() noexcept override { inner_->drain(); }
  void reset() {
    std::lock_guard g(mu_);
    lines_.clear();
  }
  std::set<std::uintptr_t> lines() {
    std::lock_guard g(mu_);
    return lines_;
  }

 private:
  std::shared_ptr<pmpage::persistence> inner_ = pmpage::make_libpmem_persistence();
  std::mutex mu_;
  std::set<std::uintptr_t> lines_;
};

class WriteBackBudget : public PoolTest {
 protected:
  std::shared_ptr<pmpage::persistence> backend() override { return log_; }
  template <class F>
  std::set<std::uintptr_t> lines_of(F&& f) {
    log_->reset();
    f();
    return log_->lines();
  }
  std::shared_ptr<line_log_persistence> log_ = std::make_shared<line_log_persistence>();
};

TEST_F(WriteBackBudget, SlotPairWritesBackFiveLinesAndTheFreeNoOwnerEntry) {
  // alloc_pages_to writes back the page-map line (or region word), the owner entry and the slot;
  // free_pages_from the slot and the page-map line (or region word) only: it leaves the owner
  // entry stale (docs/format.md, "Owner table"), so the pair writes back 5 lines, not 6. Orders 0
  // and 9, each slot once (a slot reused keeps nothing that would hide a line in a set).
  ASSERT_NE(pool_.alloc_pages(0), nullptr);  // the order-0 slots land in a published split region
  pfn_t* slots = root_slots(pool_);
  const auto line_of = [](const void* a) { return reinterpret_cast<std::uintptr_t>(a) / 64; };
  for (unsigned i = 0; i < 24; ++i) {
    const unsigned order = (i % 3 == 2) ? 9 : 0;
    const auto alloc = lines_of([&] { ASSERT_NE(pool_.alloc_pages_to(order, &slots[8 * i]), nullptr); });
    EXPECT_EQ(alloc.size(), 3u) << "alloc_pages_to order " << order << " #" << i;
    EXPECT_EQ(alloc.count(line_of(&slots[8 * i])), 1u) << "the slot is one of them";
    const auto freed = lines_of([&] { ASSERT_EQ(pool_.free_pages_from(&slots[8 * i]), 0); });
    EXPECT_EQ(freed.size(), 2u) << "free_pages_from order " << order << " #" << i;
    EXPECT_EQ(freed.count(line_of(&slots[8 * i])), 1u);
    // The other line is the one that says free (page map or region word), which alloc_pages_to
    // wrote back too; the owner entry's line is the one alloc_pages_to wrote that the free does not.
    std::vector<std::uintptr_t> only_alloc;
    std::set_difference(alloc.begin(), alloc.end(), freed.begin(), freed.end(), std::back_inserter(only_alloc));
    EXPECT_EQ(only_alloc.size(), 1u) << "the owner entry's line";
  }
  EXPECT_EQ(pool_.check(), "") << "stale owner entries are ignored by check()";
}

TEST_F(WriteBackBudget, APageBackInTheSlotItWasFreedFromWritesBackNoOwnerEntry) {
  // The free left the page's entry naming the slot; allocated into the same slot again, the entry
  // already holds its value, durably: alloc_pages_to writes back the page-map line (or region
  // word) and the slot only, and the pair 4 lines. (A page that comes back into another slot
  // writes its entry: the test above.) Orders 0 and 9.
  ASSERT_NE(pool_.alloc_pages(0), nullptr);
  pfn_t* slots = root_slots(pool_);
  for (const unsigned order : {0u, 9u}) {
    ASSERT_NE(pool_.alloc_pages_to(order, &slots[0]), nullptr);
    pfn_t last = slots[0];
    ASSERT_EQ(pool_.free_pages_from(&slots[0]), 0);
    for (unsigned i = 0; i < 10; ++i) {
      const auto alloc = lines_of([&] { ASSERT_NE(pool_.alloc_pages_to(order, &slots[0]), nullptr); });
      if (slots[0] != last) {  // another page came back (its entry names another slot or none)
        last = slots[0];
        ASSERT_EQ(pool_.free_pages_from(&slots[0]), 0);
        continue;
      }
      EXPECT_EQ(alloc.size(), 2u) << "order " << order << " #" << i;
      EXPECT_EQ(lines_of([&] { ASSERT_EQ(pool_.free_pages_from(&slots[0]), 0); }).size(), 2u);
    }
    EXPECT_EQ(pool_.check(), "");
  }
}

TEST_F(FenceBudget, AllocPagesToFromAFreshRegionCostsOneMoreFence) {
  // A region split fresh for the allocation: its SPLIT word must be durable before a slot names a
  // page in it (3 fences, as a plain allocation's 2 from a fresh region); the next one costs 2.
  pfn_t* slots = root_slots(pool_);
  EXPECT_EQ(fences_of([&] { ASSERT_NE(pool_.alloc_pages_to(0, &slots[0]), nullptr); }), 3u);
  EXPECT_EQ(fences_of([&] { ASSERT_NE(pool_.alloc_pages_to(0, &slots[1]), nullptr); }), 2u);
}

TEST_F(FenceBudget, OwnershipRecordsCostNoExtraFenceAndOneMoreLine) {
  // The owner entry rides in alloc_pages_to's first epoch with the page-map line (and the zeroed
  // contents): 2 fences, and the flushed lines are the page-map line, the owner entry and the slot.
  ASSERT_NE(pool_.alloc_pages(0), nullptr);
  pfn_t* slots = root_slots(pool_);
  for (unsigned i = 0; i < 20; ++i) {
    page* p = nullptr;
    EXPECT_EQ(fences_of([&] { p = pool_.alloc_pages_to(0, &slots[i], pmpage::GFP_ZERO); }), 2u);
    ASSERT_NE(p, nullptr);
  }
  for (unsigned i = 20; i < 40; ++i) {
    const std::uint64_t flushes = flushes_of([&] { ASSERT_NE(pool_.alloc_pages_to(0, &slots[i]), nullptr); });
    EXPECT_LE(flushes, 3u) << "alloc_pages_to #" << i;
  }
  for (unsigned i = 0; i < 40; ++i) EXPECT_EQ(fences_of([&] { ASSERT_EQ(pool_.free_pages_from(&slots[i]), 0); }), 1u);
  EXPECT_EQ(fences_of([&] { ASSERT_NE(pool_.alloc_pages(0, pmpage::GFP_ZERO), nullptr); }), 1u) << "zeroing shares the fence";
  EXPECT_EQ(fences_of([&] { ASSERT_NE(pool_.alloc_pages_to(9, &slots[0]), nullptr); }), 2u);
  EXPECT_EQ(fences_of([&] { ASSERT_EQ(pool_.move_pages_owner(&slots[0], &slots[1]), 0); }), 2u);
  EXPECT_EQ(fences_of([&] { ASSERT_EQ(pool_.free_pages_from(&slots[0]), 0); }), 0u) << "an empty slot";
  EXPECT_EQ(fences_of([&] { ASSERT_EQ(pool_.free_pages_from(&slots[1]), 0); }), 1u);
  EXPECT_EQ(pool_.check(), "");
}

TEST_F(FenceBudget, BulkBatchThatFitsInASplitRegionSharesOneFence) {
  ASSERT_NE(pool_.alloc_pages(0), nullptr);
  std::vector<page*> out(64, nullptr);
  std::size_t got = 0;
  EXPECT_LE(fences_of([&] { got = pool_.alloc_pages_bulk(0, out.size(), out.data()); }), 1u);
  EXPECT_EQ(got, out.size());
}

TEST_F(FenceBudget, ReferencesFlagsAndTranslationNeverFlush) {
  page* p = pool_.alloc_pages(0);
  page* h = pool_.alloc_pages(9);
  ASSERT_TRUE(p && h);
  const std::uint64_t flushes = flushes_of([&] {
    for (page* x : {p, h}) {
      pmpage::get_page(x);
      pmpage::put_page(x);
      ASSERT_TRUE(pmpage::get_page_unless_zero(x));
      pmpage::put_page(x);
      pmpage::lock_page(x);
      pmpage::unlock_page(x);
      pmpage::SetPageDirty(x);
      pmpage::TestClearPageDirty(x);
      pmpage::set_page_private(x, 1);
      ASSERT_EQ(pmpage::virt_to_page(pmpage::page_address(x)), x);
      ASSERT_EQ(pmpage::pfn_to_page(pmpage::page_to_pfn(x)), x);
    }
    (void)pool_.stats();
  });
  EXPECT_EQ(flushes, 0u);
  EXPECT_EQ(counter_->fences(), 0u);
}

TEST_F(FenceBudget, PersistIsFlushPlusOneFence) {
  char* root = static_cast<char*>(pool_.root());
  EXPECT_EQ(fences_of([&] { pool_.persist(root, 256); }), 1u);
  EXPECT_GE(counter_->flushes(), 1u);
  EXPECT_EQ(fences_of([&] { pool_.flush(root, 64); }), 0u);
  EXPECT_GE(counter_->flushes(), 1u);
  EXPECT_EQ(fences_of([&] { pool_.drain(); }), 1u);
}

// ---- granularity ------------------------------------------------------------------------------

// Sets (or, with nullptr, unsets) an environment variable for the object's life.
class scoped_env {
 public:
  scoped_env(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old, had_ = true;
    if (value)
      ::setenv(name, value, 1);
    else
      ::unsetenv(name);
  }
  ~scoped_env() {
    if (had_)
      ::setenv(name_, old_.c_str(), 1);
    else
      ::unsetenv(name_);
  }

 private:
  const char* name_;
  std::string old_;
  bool had_ = false;
};

struct gran_case {
  const char* forced;  // PMEM2_FORCE_GRANULARITY
  pmpage::granularity want;
};

class Granularity : public TempPathTest, public ::testing::WithParamInterface<gran_case> {};

TEST_P(Granularity, ForcedGranularityDecidesFlushesAndKeepsTheFences) {
  const scoped_env env("PMEM2_FORCE_GRANULARITY", GetParam().forced);
  auto counter = std::make_shared<pmpage::counting_persistence>(pmpage::make_libpmem_persistence());
  pmpage::pool p = create_pool(new_path(), 64 * MiB, counter);
  const pmpage::granularity g = GetParam().want;
  ASSERT_EQ(p.store_granularity(), g);
  EXPECT_EQ(p.is_pmem(), g != pmpage::granularity::page);
  EXPECT_NE(p.memory_description().find(std::string(g == pmpage::granularity::byte ? "byte" : g == pmpage::granularity::cache_line ? "cache-line" : "page") + " granularity"), std::string::npos)
      << p.memory_description();
  ASSERT_NE(p.alloc_pages(0), nullptr);  // a split region
  const bool flushes = g != pmpage::granularity::byte;
  for (unsigned order : {0u, 9u}) {
    counter->reset();
    page* pg = p.alloc_pages(order, pmpage::GFP_ZERO);
    ASSERT_NE(pg, nullptr);
    EXPECT_EQ(counter->fences(), 1u) << "order " << order << ": one fence at every granularity";
    EXPECT_EQ(counter->flushes() > 0, flushes) << "order " << order << ": " << counter->flushes() << " flushes";
    counter->reset();
    pmpage::put_page(pg);
    EXPECT_EQ(counter->fences(), 1u);
    EXPECT_EQ(counter->flushes() > 0, flushes) << counter->flushes() << " flushes";
  }
  pfn_t* slots = root_slots(p);
  counter->reset();
  ASSERT_NE(p.alloc_pages_to(0, &slots[0]), nullptr);
  ASSERT_EQ(p.free_pages_from(&slots[0]), 0);
  EXPECT_EQ(counter->fences(), 3u) << "the slot pair: 2 + 1 at every granularity";
  EXPECT_EQ(counter->flushes() > 0, flushes) << "nothing is flushed at byte granularity";
  counter->reset();
  EXPECT_EQ(p.persist(p.root(), 64), 0);
  EXPECT_EQ(counter->fences(), 1u);
  EXPECT_EQ(counter->flushes() > 0, flushes);
  EXPECT_EQ(p.check(), "");
  EXPECT_EQ(p.close(), 0);
}

INSTANTIATE_TEST_SUITE_P(, Granularity,
                         ::testing::Values(gran_case{"BYTE", pmpage::granularity::byte},
                                           gran_case{"cache_line", pmpage::granularity::cache_line},
                                           gran_case{"PAGE", pmpage::granularity::page}),
                         [](const auto& info) { return std::string(pmpage::granularity_name(info.param.want)); });

TEST_F(Persistence, PmemIsPmemForceStillMeansCacheLineAndATmpfsFileIsPageOtherwise) {
  const scoped_env no_pmem2("PMEM2_FORCE_GRANULARITY", nullptr);
  {
    const scoped_env force("PMEM_IS_PMEM_FORCE", "1");
    pmpage::pool p = create_pool(new_path(), 64 * MiB);
    EXPECT_EQ(p.store_granularity(), pmpage::granularity::cache_line);
  }
  const scoped_env no_force("PMEM_IS_PMEM_FORCE", nullptr);
  const auto path = new_path();
  { pmpage::pool p = create_pool(path, 64 * MiB); }
  pmpage::pool p = pmpage::pool::open(path);
  EXPECT_EQ(p.store_granularity(), pmpage::granularity::page) << "/dev/shm is tmpfs: no MAP_SYNC, no DAX";
  EXPECT_FALSE(p.is_pmem());
  {
    const scoped_env both("PMEM_IS_PMEM_FORCE", "1");
    const scoped_env byte("PMEM2_FORCE_GRANULARITY", "byte");
    p.close();
    p = pmpage::pool::open(path);
    EXPECT_EQ(p.store_granularity(), pmpage::granularity::byte) << "PMEM2_FORCE_GRANULARITY wins";
  }
  pmpage::pool::open_options ro;
  ro.read_only = true;
  p.close();
  p = pmpage::pool::open(path, ro);
  EXPECT_EQ(p.store_granularity(), pmpage::granularity::page) << "a read-only pool flushes nothing";
}

TEST_F(Persistence, TheBackendsAnswerIsTheGranularityThePoolFollows) {
  // A backend (a simulated device) may model another granularity than the platform's.
  class byte_backend final : public pmpage::persistence {
   public:
    pmpage::granularity attach(void* b, std::size_t l, pmpage::granularity) override {
      inner_->attach(b, l, pmpage::granularity::byte);
      return pmpage::granularity::byte;
    }
    void flush(const void*, std::size_t) noexcept override { ++flushes; }
    void drain() noexcept override { inner_->drain(); }
    std::atomic<int> flushes{0};

   private:
    std::shared_ptr<pmpage::persistence> inner_ = pmpage::make_libpmem_persistence();
  };
  auto be = std::make_shared<byte_backend>();
  pmpage::pool p = create_pool(new_path(), 64 * MiB, be);
  EXPECT_EQ(p.store_granularity(), pmpage::granularity::byte);
  const int after_create = be->flushes.load();  // format() flushes through the seam: a no-op at byte
  for (int i = 0; i < 10; ++i) pmpage::put_page(p.alloc_pages(i % 2 ? 0 : 9));
  EXPECT_EQ(be->flushes.load(), after_create);
}

// ---- write-back errors ------------------------------------------------------------------------

// libpmem underneath, plus an injected write-back failure: the next fail_drains drains report err
// once each (as the kernel reports a failed write-back once), then the device is healthy again.
class failing_persistence final : public pmpage::persistence {
 public:
  pmpage::granularity attach(void* base, std::size_t length, pmpage::granularity g) override {
    return inner_->attach(base, length, g);
  }
  void detach() noexcept override { inner_->detach(); }
  void flush(const void* addr, std::size_t len) noexcept override { inner_->flush(addr, len); }
  void drain() noexcept override {
    inner_->drain();
    if (fail_drains.load() > 0) {
      fail_drains.fetch_sub(1);
      report_writeback_error(err);
    }
  }
  std::atomic<int> fail_drains{0};
  int err = EIO;

 private:
  std::shared_ptr<pmpage::persistence> inner_ = pmpage::make_libpmem_persistence();
};

class WritebackError : public TempPathTest {
 protected:
  void SetUp() override {
    path_ = new_path();
    pool_ = create_pool(path_, 64 * MiB, backend_);
    anchor_ = pool_.alloc_pages(0);  // a split region, so order-0 calls take one fence
    ASSERT_NE(anchor_, nullptr);
  }
  // Every later durable call fails with the latched error; the DRAM state stays whole.
  void expect_latched(int err) {
    EXPECT_EQ(pool_.writeback_error(), -err);
    EXPECT_EQ(pool_.stats().writeback_errno, err);
    errno = 0;
    EXPECT_EQ(pool_.alloc_pages(0), nullptr) << "latched: nothing is handed out any more";
    EXPECT_EQ(errno, err);
    errno = 0;
    EXPECT_EQ(pool_.alloc_pages(9), nullptr);
    EXPECT_EQ(errno, err);
    page* out[4];
    EXPECT_EQ(pool_.alloc_pages_bulk(0, 4, out), 0u);
    EXPECT_EQ(pool_.persist(pool_.root(), 8), -err);
    EXPECT_EQ(pool_.drain(), -err);
    EXPECT_EQ(pool_.check(), "");
  }
  std::shared_ptr<failing_persistence> backend_ = std::make_shared<failing_persistence>();
  std::filesystem::path path_;
  pmpage::pool pool_;
  page* anchor_ = nullptr;
};

TEST_F(WritebackError, AllocationWhoseFenceFailsIsNotHandedOutAndTheErrorIsLatched) {
  const std::uint64_t free_before = pool_.stats().free_pages;
  backend_->fail_drains = 1;
  errno = 0;
  EXPECT_EQ(pool_.alloc_pages(0), nullptr);
  EXPECT_EQ(errno, EIO);
  EXPECT_EQ(pool_.stats().free_pages, free_before) << "the allocation is undone in DRAM";
  EXPECT_EQ(backend_->fail_drains.load(), 0) << "the backend is healthy again: only the latch reports now";
  expect_latched(EIO);
  EXPECT_EQ(pool_.stats().free_pages, free_before);
  EXPECT_EQ(pool_.close(), -EIO) << "close reports it too";
  EXPECT_EQ(pool_.close(), 0) << "a closed pool";

  // Reopened (the same backend object: its earlier failure is not the new pool's): healthy.
  pmpage::pool::open_options oo;
  oo.backend = backend_;
  pmpage::pool p = pmpage::pool::open(path_, oo);
  EXPECT_EQ(p.writeback_error(), 0);
  page* q = p.alloc_pages(0);
  EXPECT_NE(q, nullptr);
  EXPECT_EQ(p.persist(p.root(), 8), 0);
  EXPECT_EQ(p.check(), "");
  EXPECT_EQ(p.close(), 0);
}

TEST_F(WritebackError, FreshRegionAndLargeAllocationsAreUndone) {
  const std::uint64_t free_before = pool_.stats().free_pages;
  const std::uint64_t split_before = pool_.stats().split_regions;
  backend_->fail_drains = 1;
  errno = 0;
  EXPECT_EQ(pool_.alloc_pages(9), nullptr);
  EXPECT_EQ(errno, EIO);
  EXPECT_EQ(pool_.stats().free_pages, free_before);
  EXPECT_EQ(pool_.check(), "");
  expect_latched(EIO);
  EXPECT_EQ(pool_.stats().free_pages, free_before);
  EXPECT_LE(pool_.stats().split_regions, split_before + 1);
}

TEST_F(WritebackError, FreeCompletesInMemoryAndReportsTheError) {
  page* p = pool_.alloc_pages(0);
  page* big = pool_.alloc_pages(9);
  ASSERT_NE(p, nullptr);
  ASSERT_NE(big, nullptr);
  const std::uint64_t free_before = pool_.stats().free_pages;
  backend_->fail_drains = 1;
  errno = 0;
  pmpage::put_page(p);
  EXPECT_EQ(errno, EIO) << "put_page returns nothing: errno and writeback_error() say it";
  EXPECT_EQ(pool_.stats().free_pages, free_before + 1) << "the page is free in DRAM";
  errno = 0;
  pmpage::free_pages(big, 9);
  EXPECT_EQ(errno, EIO) << "latched: the next free reports it too";
  EXPECT_EQ(pool_.stats().free_pages, free_before + 1 + HPAGE_PMD_NR);
  expect_latched(EIO);
}

TEST_F(WritebackError, BulkAllocationHandsOutNothingOfTheFailedRound) {
  const std::uint64_t free_before = pool_.stats().free_pages;
  backend_->fail_drains = 1;
  page* out[32];
  errno = 0;
  EXPECT_EQ(pool_.alloc_pages_bulk(0, 32, out), 0u);
  EXPECT_EQ(errno, EIO);
  EXPECT_EQ(pool_.stats().free_pages, free_before);
  expect_latched(EIO);
}

TEST_F(WritebackError, SplitAndAdoptionAreUndone) {
  page* big = pool_.alloc_pages(9);
  page* small = pool_.alloc_pages(0);
  ASSERT_NE(big, nullptr);
  ASSERT_NE(small, nullptr);
  pfn_t* slots = root_slots(pool_);
  slots[0] = pmpage::page_to_pfn(small);
  backend_->fail_drains = 1;
  EXPECT_EQ(pool_.adopt_pages(&slots[0]), -EIO);
  EXPECT_EQ(pmpage::page_count(small), 1) << "the caller's reference is back";
  EXPECT_EQ(pmpage::split_huge_page(big), -EIO) << "latched: the split is refused";
  EXPECT_EQ(pmpage::compound_order(big), 9u) << "the page stays whole";
  EXPECT_EQ(pmpage::page_count(big), 1);
  expect_latched(EIO);
  pmpage::put_page(small);  // unowned: the caller's reference frees it (error reported, freed in DRAM)
  pmpage::put_page(big);
  EXPECT_EQ(pool_.check(), "");
}

TEST_F(WritebackError, TheOriginalErrnoIsReported) {
  backend_->err = ENOSPC;
  backend_->fail_drains = 1;
  EXPECT_EQ(pool_.persist(pool_.root(), 8), -ENOSPC);
  expect_latched(ENOSPC);
}

TEST_F(WritebackError, CountingWrapperForwardsTheInnerBackendsErrors) {
  auto inner = std::make_shared<failing_persistence>();
  auto counter = std::make_shared<pmpage::counting_persistence>(inner);
  pmpage::pool p = create_pool(new_path("counted"), 64 * MiB, counter);
  inner->fail_drains = 1;
  EXPECT_EQ(p.drain(), -EIO);
  EXPECT_EQ(p.writeback_error(), -EIO);
  EXPECT_EQ(p.close(), -EIO);
}

TEST_F(WritebackError, CreateAndOpenFailWhenTheirWritesCannotBeWrittenBack) {
  auto be = std::make_shared<failing_persistence>();
  be->fail_drains = 1;
  const auto path = new_path("create");
  try {
    create_pool(path, 64 * MiB, be);
    ADD_FAILURE() << "create succeeded although its metadata was not written back";
  } catch (const pmpage::error& e) {
    EXPECT_EQ(e.code().value(), EIO);
    EXPECT_NE(std::string(e.what()).find("written back"), std::string::npos) << e.what();
  }
}

// ---- write-back errors on a real file system (root) --------------------------------------------

// Forces msync (the recipe of a pool file that is not DAX) whatever PMEM_IS_PMEM_FORCE says.
class msync_persistence final : public pmpage::persistence {
 public:
  pmpage::granularity attach(void* base, std::size_t length, pmpage::granularity) override {
    return inner_->attach(base, length, pmpage::granularity::page);
  }
  void detach() noexcept override { inner_->detach(); }
  void flush(const void* addr, std::size_t len) noexcept override { inner_->flush(addr, len); }
  void drain() noexcept override {
    inner_->drain();
    forward_writeback_errors(*inner_);
  }
  void memset_nodrain(void* dst, int c, std::size_t len) noexcept override { inner_->memset_nodrain(dst, c, len); }

 private:
  std::shared_ptr<pmpage::persistence> inner_ = pmpage::make_libpmem_persistence();
};

TEST(WritebackErrorOnExt4, FullDeviceFailsTheCallAndEveryLaterDurableCall) {
  // ext4 of 64 MiB whose blocks live on a 12 MiB tmpfs: mkfs takes a few MiB, the pool's zeroed
  // pages the rest; then write-back fails (the loop device cannot grow its file) and msync
  // reports it once.
  pmtest::failing_ext4 fs(12 * MiB, 64 * MiB);
  if (!fs.ok()) GTEST_SKIP() << "needs a failing file system (ext4 on a loop device on a small tmpfs): " << fs.why();
  pmpage::pool::options o;
  o.size = 48 * MiB;
  o.backend = std::make_shared<msync_persistence>();
  pmpage::pool p = pmpage::pool::create(fs.dir() / "pool", o);
  int failed_with = 0;
  unsigned handed_out = 0;
  for (unsigned i = 0; i < 700 && !failed_with; ++i) {
    errno = 0;
    page* pg = p.alloc_pages(4, pmpage::GFP_ZERO);  // 64 KiB of zeros written back per call
    if (!pg) {
      failed_with = errno;
      break;
    }
    ++handed_out;
    std::memset(pmpage::page_address(pg), 0x5a, 4096);
    if (const int e = p.persist(pmpage::page_address(pg), 4096); e != 0) failed_with = -e;
  }
  ASSERT_NE(failed_with, 0) << "no write-back failed after " << handed_out << " allocations of 64 KiB";
  EXPECT_TRUE(failed_with == ENOSPC || failed_with == EIO) << std::strerror(failed_with);
  EXPECT_EQ(p.writeback_error(), -failed_with);
  // msync itself now returns 0 for these pages; the pool keeps saying they are not durable.
  errno = 0;
  EXPECT_EQ(p.alloc_pages(0), nullptr);
  EXPECT_EQ(errno, failed_with);
  EXPECT_EQ(p.persist(p.root(), 8), -failed_with);
  EXPECT_EQ(p.drain(), -failed_with);
  EXPECT_EQ(p.stats().writeback_errno, failed_with);
  EXPECT_EQ(p.check(), "");
  EXPECT_EQ(p.close(), -failed_with);
}

// ---- crashes ----------------------------------------------------------------------------------

class Crash : public PoolTest {
 protected:
  std::uint64_t pool_size() const override { return 128 * MiB; }

  static constexpr std::size_t kSlots = 256;
  // Root layout used by the children: kSlots pfn slots, then an operation counter (plain data,
  // just to show the child made progress before it was killed).
  static std::uint64_t* op_counter(const pmpage::pool& p) {
    return reinterpret_cast<std::uint64_t*>(root_slots(p) + kSlots);
  }

  // What every reopen after a crash must show: the slots and the allocations are the same set,
  // every allocation has count 1, and the free page count adds up.
  void expect_slots_match_allocations() {
    ASSERT_EQ(pool_.check(), "");
    const allocation_snapshot snap = allocations(pool_);
    EXPECT_EQ(snap.visits, snap.by_pfn.size()) << "an allocation was reported twice";
    std::set<pfn_t> in_slots;
    const pfn_t* slots = root_slots(pool_);
    for (std::size_t i = 0; i < kSlots; ++i) {
      if (slots[i] == 0) continue;
      EXPECT_TRUE(in_slots.insert(slots[i]).second) << "pfn " << slots[i] << " in two slots";
      ASSERT_TRUE(pmpage::pfn_valid(slots[i])) << "slot " << i << " holds a bad pfn " << slots[i];
      page* p = pmpage::pfn_to_page(slots[i]);
      EXPECT_EQ(pmpage::page_count(p), 1) << "slot " << i;
      EXPECT_EQ(pmpage::compound_head(p), p) << "slot " << i << " does not name a head";
      EXPECT_EQ(snap.by_pfn.count(slots[i]), 1u) << "slot " << i << " names a page that is not allocated (lost)";
    }
    for (const auto& [pfn, order] : snap.by_pfn)
      EXPECT_EQ(in_slots.count(pfn), 1u) << "pfn " << pfn << " (order " << order << ") allocated but in no slot (leaked)";
    EXPECT_EQ(free_pages(), total_pages_ - pages_in(snap.by_pfn));
  }
};

// The child: open the pool and churn slots until killed. Only the library runs here; the process
// was single-threaded when it forked.
[[noreturn]] void churn_until_killed(const std::filesystem::path& path, std::uint32_t seed, std::size_t slots_n) {
  try {
    pmpage::pool p = pmpage::pool::open(path);
    pfn_t* slots = root_slots(p);
    auto* ops = reinterpret_cast<volatile std::uint64_t*>(slots + slots_n);
    std::minstd_rand rng(seed);
    for (;;) {
      pfn_t* slot = &slots[rng() % slots_n];
      if (*slot == 0) {
        // Mostly small pages (split-region paths), sometimes whole and multi-region ones.
        const unsigned order = (rng() % 4 == 0) ? static_cast<unsigned>(rng() % 11) : static_cast<unsigned>(rng() % 3);
        p.alloc_pages_to(order, slot);
      } else if (p.free_pages_from(slot) != 0) {
        ::_exit(4);  // nobody else holds references: a failure here is a bug
      }
      *ops = *ops + 1;
    }
  } catch (...) {
    ::_exit(3);
  }
}

TEST_F(Crash, SigkillDuringAllocPagesToLosesAndLeaksNothing) {
  pool_.close();
  std::mt19937 rng(20261121);
  std::uint64_t total_ops = 0, repaired = 0;
  for (int round = 0; round < 6; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    const pid_t child = ::fork();
    ASSERT_GE(child, 0);
    if (child == 0) churn_until_killed(path_, 1000 + round, kSlots);

    std::this_thread::sleep_for(std::chrono::milliseconds(100 + rng() % 200));
    ASSERT_EQ(::kill(child, SIGKILL), 0);
    int status = 0;
    ASSERT_EQ(::waitpid(child, &status, 0), child);
    ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)
        << "child exited early with status " << (WIFEXITED(status) ? WEXITSTATUS(status) : -1)
        << " (3: open threw, 4: free_pages_from failed)";

    pool_ = pmpage::pool::open(path_);  // the dead child's lock must be gone
    ASSERT_EQ(pool_.start_pfn(), start_);
    repaired += pool_.stats().repaired_at_open;
    total_ops += *op_counter(pool_);
    *op_counter(pool_) = 0;
    ASSERT_NO_FATAL_FAILURE(expect_slots_match_allocations());
    pool_.close();
  }
  RecordProperty("child_operations", static_cast<int>(total_ops));
  RecordProperty("repaired_at_open", static_cast<int>(repaired));
  EXPECT_GT(total_ops, 100u) << "the children made too little progress for the test to mean much";
}

TEST_F(Crash, CompletedOperationsSurviveSigkillWithoutClose) {
  page* before = pool_.alloc_pages(0);  // freed by the child
  ASSERT_NE(before, nullptr);
  const pfn_t before_pfn = pmpage::page_to_pfn(before);
  pool_.close();

  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    try {
      pmpage::pool p = pmpage::pool::open(path_);
      pfn_t* slots = root_slots(p);
      if (!p.alloc_pages_to(3, &slots[0])) ::_exit(2);
      page* huge = p.alloc_pages(9);
      if (!huge) ::_exit(2);
      slots[1] = pmpage::page_to_pfn(huge);  // not crash-atomic, but the alloc completed
      p.persist(&slots[1], sizeof(pfn_t));
      page* split = p.alloc_pages(9);
      if (!split || pmpage::split_huge_page(split) != 0) ::_exit(2);
      slots[2] = pmpage::page_to_pfn(split);
      p.persist(&slots[2], sizeof(pfn_t));
      pmpage::put_page(pmpage::pfn_to_page(before_pfn));
      pmpage::put_page(pmpage::pfn_to_page(slots[2] + 5));
    } catch (...) {
      ::_exit(3);
    }
    ::kill(::getpid(), SIGKILL);
    ::_exit(5);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFSIGNALED(status)) << "child exit status " << WEXITSTATUS(status);

  pool_ = pmpage::pool::open(path_);
  EXPECT_EQ(pool_.check(), "");
  const pfn_t* slots = root_slots(pool_);
  ASSERT_NE(slots[0], 0u);
  ASSERT_NE(slots[1], 0u);
  ASSERT_NE(slots[2], 0u);
  std::map<pfn_t, unsigned> expected{{slots[0], 3}, {slots[1], 9}};
  for (pfn_t q = slots[2]; q < slots[2] + HPAGE_PMD_NR; ++q)
    if (q != slots[2] + 5) expected[q] = 0;
  EXPECT_EQ(allocations(pool_).by_pfn, expected);
  EXPECT_EQ(pmpage::page_count(pmpage::pfn_to_page(before_pfn)), 0);
  EXPECT_EQ(pmpage::page_count(pmpage::pfn_to_page(slots[0])), 1);
  EXPECT_EQ(free_pages(), total_pages_ - pages_in(expected));
}

}  // namespace
