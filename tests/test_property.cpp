// Property test: thousands of random operations (alloc of every size, free through each path,
// get/put, split_huge_page, alloc_pages_to/free_pages_from, close+reopen) checked step by step
// against a reference model of what must be allocated, with which order and which count.
//
// Reproduce a failure with PMPAGE_PROPERTY_SEED=<seed> (printed in the trace); scale the run with
// PMPAGE_PROPERTY_STEPS=<n>.
#include <random>
#include <unordered_map>

#include "test_util.hpp"

namespace {

using namespace pmtest;
using pmpage::HPAGE_PMD_NR;
using pmpage::page;
using pmpage::pfn_t;

std::uint64_t env_or(const char* name, std::uint64_t fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::strtoull(v, nullptr, 0) : fallback;
}

class Property : public PoolTest {
 protected:
  struct allocation {
    unsigned order = 0;
    int count = 1;
    int slot = -1;  // root slot that owns it (only free_pages_from may free it), or -1
  };

  // ---- the reference model --------------------------------------------------------------------

  std::unordered_map<pfn_t, allocation> model_;
  std::vector<pfn_t> keys_;                       // model_'s keys, for uniform random picks
  std::unordered_map<pfn_t, std::size_t> key_pos_;
  std::vector<std::uint8_t> used_;                // per pool page index
  std::vector<std::uint32_t> used_in_region_;     // pages in use per region
  std::vector<std::uint32_t> small_in_region_;    // allocations of order < 9 per region
  std::uint64_t used_pages_ = 0;
  std::vector<pfn_t> slots_model_;                // expected content of the root slots
  std::mt19937_64 rng_;

  // How often each outcome happened, so a run that silently stopped exercising a path (say,
  // every allocation failing) is noticed.
  struct counters {
    std::uint64_t alloc_ok = 0, alloc_null = 0, freed = 0, put_not_last = 0, get = 0, split = 0,
                  split_busy = 0, alloc_to = 0, free_from = 0, free_from_busy = 0, reopen = 0;
  } n_;

  std::uint64_t rnd(std::uint64_t n) { return std::uniform_int_distribution<std::uint64_t>(0, n - 1)(rng_); }

  void model_add(pfn_t pfn, unsigned order, int slot) {
    model_[pfn] = allocation{order, 1, slot};
    key_pos_[pfn] = keys_.size();
    keys_.push_back(pfn);
    const std::uint64_t idx = pfn - start_, n = std::uint64_t{1} << order;
    for (std::uint64_t i = idx; i < idx + n; ++i) {
      used_[i] = 1;
      ++used_in_region_[i / HPAGE_PMD_NR];
    }
    if (order < pmpage::HPAGE_PMD_ORDER) ++small_in_region_[idx / HPAGE_PMD_NR];
    used_pages_ += n;
  }

  void model_remove(pfn_t pfn) {
    const allocation a = model_.at(pfn);
    const std::uint64_t idx = pfn - start_, n = std::uint64_t{1} << a.order;
    for (std::uint64_t i = idx; i < idx + n; ++i) {
      used_[i] = 0;
      --used_in_region_[i / HPAGE_PMD_NR];
    }
    if (a.order < pmpage::HPAGE_PMD_ORDER) --small_in_region_[idx / HPAGE_PMD_NR];
    used_pages_ -= n;
    const std::size_t pos = key_pos_.at(pfn);
    key_pos_[keys_.back()] = pos;
    keys_[pos] = keys_.back();
    keys_.pop_back();
    key_pos_.erase(pfn);
    model_.erase(pfn);
  }

  bool model_has_free_extent(unsigned order) const { return has_free_extent(used_, order); }

  page* any_page_of(pfn_t head) { return pmpage::pfn_to_page(head + rnd(std::uint64_t{1} << model_.at(head).order)); }

  // Order distribution: mostly the split-region paths, sometimes whole and multi-region pages.
  unsigned random_order() {
    const std::uint64_t r = rnd(100);
    if (r < 40) return 0;
    if (r < 65) return 1 + static_cast<unsigned>(rnd(3));
    if (r < 80) return 4 + static_cast<unsigned>(rnd(5));
    if (r < 93) return 9;
    return 10 + static_cast<unsigned>(rnd(2));
  }

  // ---- checks ---------------------------------------------------------------------------------

  void expect_allocation(pfn_t head) {
    const allocation& a = model_.at(head);
    page* h = pmpage::pfn_to_page(head);
    ASSERT_EQ(pmpage::page_count(h), a.count) << "count of pfn index " << head - start_;
    ASSERT_EQ(pmpage::compound_order(h), a.order) << "order of pfn index " << head - start_;
    ASSERT_EQ(pmpage::PageHead(h), a.order > 0);
    page* some = any_page_of(head);
    ASSERT_EQ(pmpage::compound_head(some), h);
    ASSERT_EQ(pmpage::page_count(some), a.count);
    ASSERT_EQ(pmpage::PageSplit(some), a.order < pmpage::HPAGE_PMD_ORDER);
  }

  void expect_stats() {
    const pmpage::pool_stats s = pool_.stats();
    ASSERT_EQ(s.free_pages, total_pages_ - used_pages_);
    std::uint64_t split = 0, free_regions = 0;
    for (std::uint64_t r = 0; r < total_regions_; ++r) {
      split += small_in_region_[r] > 0;
      free_regions += used_in_region_[r] == 0;
    }
    // Split regions without a small allocation are kept a while (merge hysteresis): on the empty
    // list or in a per-CPU cache, and the empty list is bounded.
    ASSERT_GE(s.split_regions, split);
    ASSERT_LE(s.split_regions - split, s.empty_split_regions + s.cpu_cached_regions);
    ASSERT_LE(s.empty_split_regions, pmpage::EMPTY_SPLIT_KEPT);
    ASSERT_EQ(s.free_regions + (s.split_regions - split), free_regions);
    ASSERT_LE(s.materialised_regions, s.split_regions);
    ASSERT_EQ(s.descriptor_bytes, expected_descriptor_bytes(s.materialised_regions));
  }

  void expect_everything() {
    const allocation_snapshot snap = allocations(pool_);
    ASSERT_EQ(snap.visits, model_.size());
    ASSERT_EQ(snap.by_pfn.size(), model_.size());
    for (const auto& [pfn, order] : snap.by_pfn) {
      ASSERT_EQ(model_.count(pfn), 1u) << "allocated but not in the model: index " << pfn - start_;
      ASSERT_EQ(model_.at(pfn).order, order);
      ASSERT_NO_FATAL_FAILURE(expect_allocation(pfn));
    }
    const pfn_t* slots = root_slots(pool_);
    for (std::size_t i = 0; i < slots_model_.size(); ++i) ASSERT_EQ(slots[i], slots_model_[i]) << "slot " << i;
  }

  // ---- operations -----------------------------------------------------------------------------

  void op_alloc() {
    const unsigned order = random_order();
    page* p = pool_.alloc_pages(order);
    if (!p) {
      ASSERT_FALSE(model_has_free_extent(order)) << "alloc_pages(" << order << ") failed with a free aligned extent";
      ++n_.alloc_null;
      return;
    }
    const pfn_t pfn = pmpage::page_to_pfn(p);
    const std::uint64_t idx = pfn - start_;
    ASSERT_EQ(idx % (std::uint64_t{1} << order), 0u) << "misaligned order-" << order << " page";
    for (std::uint64_t i = idx; i < idx + (std::uint64_t{1} << order); ++i)
      ASSERT_FALSE(used_[i]) << "order-" << order << " page overlaps an allocation at index " << i;
    model_add(pfn, order, -1);
    ++n_.alloc_ok;
    ASSERT_NO_FATAL_FAILURE(expect_allocation(pfn));
  }

  // Frees (or drops one reference of) a random allocation not owned by a slot, through one of the
  // three paths: put_page on the head, put_page on any page, free_pages(head, order).
  void op_put() {
    if (keys_.empty()) return;
    const pfn_t head = keys_[rnd(keys_.size())];
    allocation& a = model_.at(head);
    if (a.slot >= 0 && a.count == 1) return;  // only free_pages_from may free it
    switch (rnd(3)) {
      case 0: pmpage::put_page(pmpage::pfn_to_page(head)); break;
      case 1: pmpage::put_page(any_page_of(head)); break;
      default: pmpage::free_pages(pmpage::pfn_to_page(head), a.order); break;
    }
    if (--a.count == 0) {
      ++n_.freed;
      model_remove(head);
      ASSERT_EQ(pmpage::page_count(pmpage::pfn_to_page(head)), 0);
    } else {
      ++n_.put_not_last;
      ASSERT_NO_FATAL_FAILURE(expect_allocation(head));
    }
  }

  void op_get() {
    if (keys_.empty()) return;
    const pfn_t head = keys_[rnd(keys_.size())];
    if (rnd(2))
      pmpage::get_page(any_page_of(head));
    else
      ASSERT_TRUE(pmpage::get_page_unless_zero(any_page_of(head)));
    ++model_.at(head).count;
    ++n_.get;
    ASSERT_NO_FATAL_FAILURE(expect_allocation(head));
  }

  void op_split() {
    // Look for an order-9 page among a few random picks.
    for (int tries = 0; tries < 8 && !keys_.empty(); ++tries) {
      const pfn_t head = keys_[rnd(keys_.size())];
      const allocation a = model_.at(head);
      if (a.order != 9) continue;
      const int rc = pmpage::split_huge_page(pmpage::pfn_to_page(head));
      if (a.count != 1 || a.slot >= 0) {  // referenced, or a slot owns it (split_huge_page_to)
        ASSERT_EQ(rc, -EBUSY);
        ++n_.split_busy;
        ASSERT_NO_FATAL_FAILURE(expect_allocation(head));
        return;
      }
      ASSERT_EQ(rc, 0);
      ++n_.split;
      model_remove(head);
      for (std::uint64_t i = 0; i < HPAGE_PMD_NR; ++i) model_add(head + i, 0, -1);
      ASSERT_NO_FATAL_FAILURE(expect_allocation(head));
      ASSERT_NO_FATAL_FAILURE(expect_allocation(head + 1 + rnd(HPAGE_PMD_NR - 1)));
      return;
    }
  }

  void op_alloc_to() {
    const std::size_t i = rnd(slots_model_.size());
    if (slots_model_[i] != 0) return;
    pfn_t* slot = &root_slots(pool_)[i];
    const unsigned order = random_order();
    page* p = pool_.alloc_pages_to(order, slot);
    if (!p) {
      ASSERT_EQ(*slot, 0u);
      ASSERT_FALSE(model_has_free_extent(order)) << "alloc_pages_to(" << order << ") failed with a free aligned extent";
      return;
    }
    ASSERT_EQ(*slot, pmpage::page_to_pfn(p));
    for (std::uint64_t k = *slot - start_; k < *slot - start_ + (std::uint64_t{1} << order); ++k)
      ASSERT_FALSE(used_[k]) << "overlap at index " << k;
    slots_model_[i] = *slot;
    model_add(*slot, order, static_cast<int>(i));
    ++n_.alloc_to;
    ASSERT_NO_FATAL_FAILURE(expect_allocation(*slot));
  }

  void op_free_from() {
    const std::size_t i = rnd(slots_model_.size());
    if (slots_model_[i] == 0) return;
    pfn_t* slot = &root_slots(pool_)[i];
    const pfn_t head = slots_model_[i];
    const int rc = pool_.free_pages_from(slot);
    if (model_.at(head).count > 1) {
      ASSERT_EQ(rc, -EBUSY);
      ++n_.free_from_busy;
      ASSERT_EQ(*slot, head);
      ASSERT_NO_FATAL_FAILURE(expect_allocation(head));
      return;
    }
    ASSERT_EQ(rc, 0);
    ASSERT_EQ(*slot, 0u);
    slots_model_[i] = 0;
    model_remove(head);
    ++n_.free_from;
  }

  // A volatile pool has nothing to reopen: the engine drops its extra references instead (what
  // a reopen does to a persistent pool's), then everything is checked.
  void op_reopen() {
    ++n_.reopen;
    if (reopen_if_persistent()) {
      ASSERT_EQ(pool_.start_pfn(), start_);
    } else {
      for (auto& [pfn, a] : model_)
        for (int c = a.count; c > 1; --c) pmpage::put_page(pmpage::pfn_to_page(pfn));
    }
    for (auto& [pfn, a] : model_) a.count = 1;  // references are volatile
    ASSERT_NO_FATAL_FAILURE(expect_everything());
  }

  void run(std::uint64_t seed, std::uint64_t steps) {
    rng_.seed(seed);
    used_.assign(total_pages_, 0);
    used_in_region_.assign(total_regions_, 0);
    small_in_region_.assign(total_regions_, 0);
    slots_model_.assign(64, 0);
    for (std::uint64_t step = 0; step < steps; ++step) {
      SCOPED_TRACE("seed " + std::to_string(seed) + ", step " + std::to_string(step));
      // Allocate more while the pool is mostly free, free more when it is mostly full.
      const bool full = used_pages_ * 4 > total_pages_ * 3;
      const std::uint64_t r = rnd(1000);
      if (r < (full ? 200u : 350u))
        ASSERT_NO_FATAL_FAILURE(op_alloc());
      else if (r < 600)
        ASSERT_NO_FATAL_FAILURE(op_put());
      else if (r < 720)
        ASSERT_NO_FATAL_FAILURE(op_get());
      else if (r < 780)
        ASSERT_NO_FATAL_FAILURE(op_split());
      else if (r < 880)
        ASSERT_NO_FATAL_FAILURE(op_alloc_to());
      else if (r < 997)
        ASSERT_NO_FATAL_FAILURE(op_free_from());
      else
        ASSERT_NO_FATAL_FAILURE(op_reopen());

      ASSERT_NO_FATAL_FAILURE(expect_stats());
      ASSERT_EQ(pool_.check(), "");
      if (step % 500 == 499) {
        ASSERT_NO_FATAL_FAILURE(expect_everything());
      }
    }
    SCOPED_TRACE("seed " + std::to_string(seed) + ", end");
    const std::string summary =
        "alloc ok " + std::to_string(n_.alloc_ok) + ", null " + std::to_string(n_.alloc_null) +
        "; freed " + std::to_string(n_.freed) + "; put " + std::to_string(n_.put_not_last) +
        "; get " + std::to_string(n_.get) + "; split " + std::to_string(n_.split) + ", busy " +
        std::to_string(n_.split_busy) + "; alloc_to " + std::to_string(n_.alloc_to) +
        "; free_from " + std::to_string(n_.free_from) + ", busy " + std::to_string(n_.free_from_busy) +
        "; reopen " + std::to_string(n_.reopen);
    RecordProperty("operations", summary);
    // With the default step count every path must have been taken.
    if (steps >= 4000) {
      EXPECT_GT(n_.alloc_ok, steps / 10) << summary;
      EXPECT_GT(n_.alloc_null, 0u) << "the pool never filled up: " << summary;
      EXPECT_GT(n_.freed, steps / 10) << summary;
      EXPECT_GT(n_.split, 0u) << summary;
      EXPECT_GT(n_.alloc_to, steps / 50) << summary;
      EXPECT_GT(n_.free_from, steps / 50) << summary;
      EXPECT_GT(n_.free_from_busy + n_.split_busy, 0u) << summary;
      EXPECT_GT(n_.reopen, 2u) << summary;
    }
    ASSERT_NO_FATAL_FAILURE(expect_everything());
    ASSERT_NO_FATAL_FAILURE(op_reopen());
    // Drain everything: the pool must return to empty with every region merged.
    pfn_t* slots = root_slots(pool_);
    for (std::size_t i = 0; i < slots_model_.size(); ++i)
      if (slots_model_[i]) {
        ASSERT_EQ(pool_.free_pages_from(&slots[i]), 0);
        model_remove(slots_model_[i]);
        slots_model_[i] = 0;
      }
    while (!keys_.empty()) {
      const pfn_t head = keys_.back();
      pmpage::put_page(pmpage::pfn_to_page(head));
      model_remove(head);
    }
    pool_.trim();
    const pmpage::pool_stats s = pool_.stats();
    EXPECT_EQ(s.free_pages, total_pages_);
    EXPECT_EQ(s.split_regions, 0u);
    EXPECT_EQ(s.materialised_regions, 0u);
    EXPECT_EQ(s.free_regions, total_regions_);
    EXPECT_EQ(pool_.check(), "");
  }
};

// Two seeds by default; PMPAGE_PROPERTY_SEED replaces the base seed.
class PropertySeed : public KindsAnd<Property, std::uint64_t> {};

TEST_P(PropertySeed, RandomOperationsMatchTheReferenceModel) {
  const std::uint64_t steps = env_or("PMPAGE_PROPERTY_STEPS", 10000);
  const std::uint64_t seed = env_or("PMPAGE_PROPERTY_SEED", 0x5eed0001) + param();
  RecordProperty("seed", std::to_string(seed));
  run(seed, steps);
}

INSTANTIATE_TEST_SUITE_P(Seeds, PropertySeed, ::testing::Combine(::testing::Values(std::uint64_t{0}, std::uint64_t{1}), kKinds),
                         [](const auto& info) { return kind_and_name(info, std::to_string(std::get<0>(info.param))); });

}  // namespace
