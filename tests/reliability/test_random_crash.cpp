// test_random_crash.cpp — a random workload crashed at a random fence, recovered and checked,
// many times. CI runs PMPAGE_CRASH_ITERATIONS (default 300) iterations; the long run sets it to
// tens of thousands (docs/testing.md). Every failure prints the seed that reproduces it.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <random>

#include "crash_harness.hpp"
#include <pmpage/testing.hpp>

using namespace pmpage;
using pmpage::testing::pool_state;

namespace {

unsigned iterations() {
  const char* s = std::getenv("PMPAGE_CRASH_ITERATIONS");
  return s ? unsigned(std::strtoul(s, nullptr, 10)) : 300u;
}

struct model {
  pool_state st;  // allocations and slots as the completed operations left them
  bool bulk_in_flight = false;
};

/// One random operation on pool p, mirrored into m. Returns false if nothing was done.
void random_op(std::mt19937_64& rng, pool& p, pfn_t* slots, model& m) {
  const unsigned kind = unsigned(rng() % 100);
  auto random_order = [&] { return rng() % 4 == 0 ? unsigned(rng() % 11) : unsigned(rng() % 3); };
  auto random_live = [&]() -> std::pair<pfn_t, unsigned> {
    if (m.st.allocations.empty()) return {0, 0};
    auto it = m.st.allocations.begin();
    std::advance(it, rng() % m.st.allocations.size());
    return *it;
  };
  auto in_slot = [&](pfn_t pfn) {
    for (pfn_t s : m.st.slots)
      if (s == pfn) return true;
    return false;
  };
  if (kind < 30) {
    const unsigned order = random_order();
    if (page* pg = p.alloc_pages(order)) m.st.allocations[page_to_pfn(pg)] = order;
  } else if (kind < 55) {
    auto [pfn, order] = random_live();
    if (!pfn || in_slot(pfn)) return;
    free_pages(pfn_to_page(pfn), order);
    m.st.allocations.erase(pfn);
  } else if (kind < 70) {
    const unsigned i = unsigned(rng() % pmpage::testing::NR_SLOTS);
    if (slots[i]) return;
    const unsigned order = random_order();
    if (page* pg = p.alloc_pages_to(order, &slots[i])) {
      m.st.allocations[page_to_pfn(pg)] = order;
      m.st.slots[i] = page_to_pfn(pg);
    }
  } else if (kind < 80) {
    const unsigned i = unsigned(rng() % pmpage::testing::NR_SLOTS);
    const pfn_t pfn = slots[i];
    ASSERT_EQ(p.free_pages_from(&slots[i]), 0);  // an empty slot is a no-op
    if (!pfn) return;
    m.st.allocations.erase(pfn);
    m.st.slots[i] = 0;
  } else if (kind < 85) {
    const unsigned i = unsigned(rng() % pmpage::testing::NR_SLOTS), j = unsigned(rng() % pmpage::testing::NR_SLOTS);
    if (!slots[i] || slots[j] || i == j) return;
    ASSERT_EQ(p.move_pages_owner(&slots[i], &slots[j]), 0);
    m.st.slots[j] = m.st.slots[i];
    m.st.slots[i] = 0;
  } else if (kind < 92) {
    auto [pfn, order] = random_live();
    if (!pfn || order != HPAGE_PMD_ORDER || in_slot(pfn)) return;
    ASSERT_EQ(split_huge_page(pfn_to_page(pfn)), 0);
    m.st.allocations.erase(pfn);
    for (pfn_t i = 0; i < HPAGE_PMD_NR; ++i) m.st.allocations[pfn + i] = 0;
  } else {
    std::vector<page*> out(1 + rng() % 40);
    const unsigned order = unsigned(rng() % 2);
    m.bulk_in_flight = true;
    const std::size_t n = p.alloc_pages_bulk(order, out.size(), out.data());
    for (std::size_t i = 0; i < n; ++i) m.st.allocations[page_to_pfn(out[i])] = order;
  }
}

bool is_subset(const std::map<pfn_t, unsigned>& a, const std::map<pfn_t, unsigned>& b) {
  for (auto& [k, v] : a) {
    auto it = b.find(k);
    if (it == b.end() || it->second != v) return false;
  }
  return true;
}

TEST(RandomCrash, RandomWorkloadCrashedAtARandomFenceRecoversConsistently) {
  const unsigned n = iterations();
  const std::uint64_t base_seed = std::getenv("PMPAGE_CRASH_SEED") ? std::strtoull(std::getenv("PMPAGE_CRASH_SEED"), nullptr, 0) : 20261121;
  const std::string path = "/dev/shm/pmpage-random-crash-" + std::to_string(::getpid());
  const std::string img = path + ".img";
  constexpr std::uint64_t size = 24ull << 20;  // 11 regions: small enough to run out of space often
  unsigned failures = 0, checked = 0;
  for (unsigned it = 0; it < n && failures < 3; ++it) {
    const std::uint64_t seed = base_seed + it;
    SCOPED_TRACE("PMPAGE_CRASH_SEED=" + std::to_string(seed) + " PMPAGE_CRASH_ITERATIONS=1 reproduces this");
    std::mt19937_64 rng(seed);
    ::unlink(path.c_str());
    auto sim = std::make_shared<pmpage::testing::sim_pmem>(2u << 20);
    model m;
    m.st.slots.assign(pmpage::testing::NR_SLOTS, 0);
    pool_state pre, post;
    bool bulk = false;
    std::vector<char> image;
    bool captured = false;
    {
      pool::options o;
      o.size = size;
      o.backend = sim;
      pool p = pool::create(path, o);
      auto* slots = static_cast<pfn_t*>(p.root());
      const std::uint64_t crash_fence = sim->fences() + 1 + rng() % 150;
      const bool before = rng() & 1;
      const double keep = double(rng() % 5) / 4.0;  // 0, .25, .5, .75, 1
      const std::uint64_t subset_seed = rng();
      sim->on_fence = [&](std::uint64_t k, bool b) {
        if (!captured && k == crash_fence && b == before) {
          image = sim->crash_image(subset_seed, keep);
          captured = true;
        }
      };
      for (unsigned op = 0; op < 200 && !captured; ++op) {
        pre = m.st;
        m.bulk_in_flight = false;
        random_op(rng, p, slots, m);
        if (::testing::Test::HasFatalFailure()) return;
        post = m.st;
        bulk = m.bulk_in_flight;
      }
      sim->on_fence = nullptr;
      if (!captured) continue;  // the workload issued fewer fences
    }
    // Recover the crash image.
    const int fd = ::open(img.c_str(), O_RDWR | O_CREAT | O_TRUNC, 0600);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::ftruncate(fd, off_t(size)), 0);
    ASSERT_EQ(::pwrite(fd, image.data(), image.size(), 0), ssize_t(image.size()));
    ::close(fd);
    ++checked;
    try {
      pool q = pool::open(img);
      const pool_state got = pmpage::testing::read_state(q);
      const std::string why = pmpage::testing::check_recovered(q, got, false);
      const bool outcome_ok = bulk ? (is_subset(pre.allocations, got.allocations) && is_subset(got.allocations, post.allocations) &&
                                      got.slots == pre.slots)
                                   : (got == pre || got == post);
      if (!why.empty() || !outcome_ok) {
        ++failures;
        ADD_FAILURE() << (why.empty() ? "state is neither before nor after the interrupted operation" : why)
                      << " (allocations: got " << got.allocations.size() << ", before " << pre.allocations.size()
                      << ", after " << post.allocations.size() << ")";
      }
    } catch (const std::exception& e) {
      ++failures;
      ADD_FAILURE() << "recovery failed: " << e.what();
    }
  }
  ::unlink(path.c_str());
  ::unlink(img.c_str());
  // Most workloads reach their crash fence; a test that skipped them all would prove nothing.
  EXPECT_GE(checked, n / 2) << "only " << checked << " of " << n << " iterations reached their crash point";
  RecordProperty("checked", int(checked));
}

}  // namespace
