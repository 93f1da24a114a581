// Misuse property test (issue #7: persistent references that cannot leak, dangle or be handed out
// twice). Random sequences of public calls, correct ones AND wrong ones, run against a reference
// model of the engine: its slots (the pool's root area, 2048 slots: 1024 general slots and two
// 512-slot tables for split_huge_page_to) and the unowned pages it holds (order, references).
//
// For every wrong call the test asserts exactly one misuse report (or the documented return code
// and no report, where the contract says so: free_pages_from of an empty slot is 0, split_huge_page
// of a slot-owned page -EBUSY; free_pages_from through a non-owner slot is misuse even while extra
// references are held, as ownership is checked first) and that nothing changed. Correct calls must make
// no report. After every step: pool.check() == "", the slots hold what the model says,
// check_slots over all 2048 slots finds no dangling, shared or misowned slot and its unreferenced
// list is exactly the model's unowned pages (pfn and order), and the free page count matches.
// Every 50 steps the engine drops its extra references and the pool is closed and reopened; then
// (every other time after a few operations on the still lazily loaded regions) for_each_allocated
// must list exactly the model's allocations with their orders and counts, and the above holds.
//
// Reproduce a failure with PMPAGE_PROPERTY_SEED=<base seed> (the trace prints the seed of the
// failing run: pass it and run only .../0); scale with PMPAGE_MISUSE_STEPS=<n> (default 3000).
#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <map>
#include <random>
#include <unordered_map>

#include "test_util.hpp"

namespace {

using namespace pmtest;
using pmpage::HPAGE_PMD_NR;
using pmpage::HPAGE_PMD_ORDER;
using pmpage::page;
using pmpage::pfn_t;

std::uint64_t env_or(const char* name, std::uint64_t fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::strtoull(v, nullptr, 0) : fallback;
}

// A set with O(1) insert, erase and uniform random pick.
template <class T>
class indexed_set {
 public:
  void insert(T v) {
    if (pos_.count(v)) return;
    pos_[v] = items_.size();
    items_.push_back(v);
  }
  void erase(T v) {
    auto it = pos_.find(v);
    if (it == pos_.end()) return;
    const std::size_t p = it->second;
    pos_[items_.back()] = p;
    items_[p] = items_.back();
    items_.pop_back();
    pos_.erase(v);
  }
  bool contains(T v) const { return pos_.count(v) != 0; }
  bool empty() const { return items_.empty(); }
  std::size_t size() const { return items_.size(); }
  T at(std::size_t i) const { return items_[i]; }

 private:
  std::vector<T> items_;
  std::unordered_map<T, std::size_t> pos_;
};

// Runs stmt and asserts that it made exactly n misuse reports.
#define EXPECT_REPORTS(n, what, stmt)                                                                 \
  do {                                                                                                \
    const int before_ = recorder_.count();                                                            \
    stmt;                                                                                             \
    ASSERT_EQ(recorder_.count() - before_, (n))                                                       \
        << (what) << (recorder_.count() > before_ ? "; last report: " + recorder_.last() : std::string()); \
  } while (0)

class MisuseProperty : public PoolTest {
 protected:
  static constexpr std::size_t kSlots = 2048;    // 16 KiB root
  static constexpr std::size_t kGeneral = 1024;  // slots 0..1023: alloc_pages_to and move targets
  static constexpr std::size_t kTables = 2;      // slots 1024..2047: two split_huge_page_to tables
  static constexpr int kReopenEvery = 50;

  std::uint64_t pool_size() const override { return 64 * MiB; }

  void SetUp() override {
    path_ = new_path();
    pool_ = make_pool(pool_size(), nullptr, kSlots * sizeof(pfn_t));
    ASSERT_GE(root_slot_count(pool_), kSlots);
    const pmpage::pool_stats s = pool_.stats();
    total_pages_ = s.total_pages;
    total_regions_ = s.total_regions;
    start_ = pool_.start_pfn();
    refresh_slot_list();
  }

  // ---- the reference model --------------------------------------------------------------------

  struct allocation {
    unsigned order = 0;
    int count = 1;  // references: an owned page's slot holds one of them
    int slot = -1;  // owning slot, or -1 (unowned: the engine holds it in memory)
  };
  std::unordered_map<pfn_t, allocation> model_;
  indexed_set<pfn_t> unowned_;           // heads of unowned allocations
  indexed_set<std::size_t> filled_;      // non-empty slots (each owns its page)
  indexed_set<pfn_t> owned9_, unowned9_;  // order-9 heads, for the splits
  std::vector<pfn_t> slot_model_;        // expected content of every slot
  std::size_t table_filled_[kTables] = {};
  std::vector<std::uint8_t> used_;  // per pool page index
  std::uint64_t used_pages_ = 0;
  std::vector<pfn_t*> slot_list_;   // &slot[i] for check_slots (re-made after reopen)
  std::vector<std::pair<pfn_t, unsigned>> unref_, expected_unref_;
  std::mt19937_64 rng_;
  misuse_recorder recorder_;

  std::map<std::string, std::uint64_t> counts_;  // outcomes, for the coverage summary
  void count(const std::string& what) { ++counts_[what]; }

  std::uint64_t rnd(std::uint64_t n) { return std::uniform_int_distribution<std::uint64_t>(0, n - 1)(rng_); }
  bool chance(unsigned percent) { return rnd(100) < percent; }

  pfn_t* slot(std::size_t i) { return root_slots(pool_) + i; }
  pfn_t* table(std::size_t t) { return slot(kGeneral + t * HPAGE_PMD_NR); }
  static int table_of(std::size_t i) { return i >= kGeneral ? int((i - kGeneral) / HPAGE_PMD_NR) : -1; }
  void refresh_slot_list() {
    slot_list_.clear();
    for (std::size_t i = 0; i < kSlots; ++i) slot_list_.push_back(slot(i));
  }

  void set_slot_model(std::size_t i, pfn_t v) {
    const bool was = slot_model_[i] != 0, is = v != 0;
    slot_model_[i] = v;
    if (was == is) return;
    if (is)
      filled_.insert(i);
    else
      filled_.erase(i);
    if (const int t = table_of(i); t >= 0) table_filled_[t] += is ? 1 : -1;
  }

  void model_add(pfn_t pfn, unsigned order, int owner) {
    ASSERT_EQ(model_.count(pfn), 0u);
    model_[pfn] = allocation{order, 1, owner};
    const std::uint64_t idx = pfn - start_, n = std::uint64_t{1} << order;
    ASSERT_LE(idx + n, total_pages_);
    for (std::uint64_t i = idx; i < idx + n; ++i) {
      ASSERT_FALSE(used_[i]) << "order-" << order << " allocation at index " << idx << " overlaps one at index " << i;
      used_[i] = 1;
    }
    used_pages_ += n;
    if (owner >= 0) {
      set_slot_model(std::size_t(owner), pfn);
      if (order == HPAGE_PMD_ORDER) owned9_.insert(pfn);
    } else {
      unowned_.insert(pfn);
      if (order == HPAGE_PMD_ORDER) unowned9_.insert(pfn);
    }
  }

  void model_remove(pfn_t pfn) {
    const allocation a = model_.at(pfn);
    const std::uint64_t idx = pfn - start_, n = std::uint64_t{1} << a.order;
    for (std::uint64_t i = idx; i < idx + n; ++i) used_[i] = 0;
    used_pages_ -= n;
    if (a.slot >= 0)
      set_slot_model(std::size_t(a.slot), 0);
    else
      unowned_.erase(pfn);
    owned9_.erase(pfn);
    unowned9_.erase(pfn);
    model_.erase(pfn);
  }

  void model_move(std::size_t from, std::size_t to) {
    const pfn_t pfn = slot_model_[from];
    model_.at(pfn).slot = int(to);
    set_slot_model(from, 0);
    set_slot_model(to, pfn);
  }

  bool model_has_free_extent(unsigned order) const { return has_free_extent(used_, order); }

  unsigned random_order() {  // 0..10: mostly split-region orders, sometimes whole / multi-region
    const std::uint64_t r = rnd(100);
    if (r < 40) return 0;
    if (r < 65) return 1 + unsigned(rnd(3));
    if (r < 80) return 4 + unsigned(rnd(5));
    if (r < 93) return 9;
    return 10;
  }

  page* pg(pfn_t pfn) { return pmpage::pfn_to_page(pfn); }
  pfn_t any_pfn_of(pfn_t head) { return head + rnd(std::uint64_t{1} << model_.at(head).order); }
  pfn_t tail_of(pfn_t head) { return head + 1 + rnd((std::uint64_t{1} << model_.at(head).order) - 1); }

  // Random picks (0 / SIZE_MAX when there is none).
  pfn_t pick_unowned() { return unowned_.empty() ? 0 : unowned_.at(rnd(unowned_.size())); }
  std::size_t pick_filled() { return filled_.empty() ? SIZE_MAX : filled_.at(rnd(filled_.size())); }
  std::size_t pick_empty_general() {
    for (int tries = 0; tries < 16; ++tries) {
      const std::size_t i = rnd(kGeneral);
      if (!slot_model_[i]) return i;
    }
    return SIZE_MAX;
  }
  pfn_t pick_any_allocation() {  // owned or unowned, half and half when both exist
    const bool owned = unowned_.empty() || (!filled_.empty() && chance(50));
    if (owned) return filled_.empty() ? 0 : slot_model_[pick_filled()];
    return pick_unowned();
  }
  pfn_t pick_with_order_at_least(unsigned min_order) {
    for (int tries = 0; tries < 16; ++tries) {
      const pfn_t h = pick_any_allocation();
      if (h && model_.at(h).order >= min_order) return h;
    }
    return 0;
  }
  std::uint64_t pick_free_index() {
    if (used_pages_ == total_pages_) return UINT64_MAX;
    for (int tries = 0; tries < 32; ++tries) {
      const std::uint64_t i = rnd(total_pages_);
      if (!used_[i]) return i;
    }
    return UINT64_MAX;
  }

  // ---- checks ---------------------------------------------------------------------------------

  void expect_count(pfn_t head) {
    const allocation& a = model_.at(head);
    ASSERT_EQ(pmpage::page_count(pg(head)), a.count) << "count of the order-" << a.order << " page at index " << head - start_;
    ASSERT_EQ(pmpage::compound_order(pg(head)), a.order) << "order of the page at index " << head - start_;
  }

  void expect_consistent() {
    ASSERT_EQ(pool_.check(), "");
    const pfn_t* s = root_slots(pool_);
    for (std::size_t i = 0; i < kSlots; ++i) ASSERT_EQ(s[i], slot_model_[i]) << "slot " << i;
    const pmpage::pool::slot_check r = pool_.check_slots(slot_list_);
    ASSERT_TRUE(r.dangling.empty() && r.shared.empty() && r.misowned.empty()) << r.describe();
    // (Sorted vectors, not maps: this runs every step, with up to thousands of entries.)
    unref_.clear();
    expected_unref_.clear();
    for (const auto& e : r.unreferenced) unref_.emplace_back(e.pfn, e.order);
    for (std::size_t i = 0; i < unowned_.size(); ++i) expected_unref_.emplace_back(unowned_.at(i), model_.at(unowned_.at(i)).order);
    std::sort(unref_.begin(), unref_.end());
    std::sort(expected_unref_.begin(), expected_unref_.end());
    if (unref_ != expected_unref_) {
      std::map<pfn_t, unsigned> unref(unref_.begin(), unref_.end()), expected(expected_unref_.begin(), expected_unref_.end());
      ASSERT_EQ(unref_.size(), unref.size()) << "an allocation listed twice: " << r.describe();
      for (const auto& [pfn, order] : expected)
        EXPECT_TRUE(unref.count(pfn) && unref[pfn] == order)
            << "the engine's order-" << order << " page at index " << pfn - start_ << " is not listed as unreferenced";
      for (const auto& [pfn, order] : unref)
        EXPECT_TRUE(expected.count(pfn)) << "check_slots lists an order-" << order << " allocation at index "
                                         << pfn - start_ << " that is no unowned page of the engine";
      FAIL() << "check_slots' unreferenced allocations are not the engine's unowned pages";
    }
    ASSERT_EQ(pool_.stats().free_pages, total_pages_ - used_pages_);
  }

  // Every allocation, with its order and count, is the model's (after reopen: counts are all 1).
  void expect_allocations() {
    const allocation_snapshot snap = allocations(pool_);
    ASSERT_EQ(snap.visits, model_.size());
    ASSERT_EQ(snap.by_pfn.size(), model_.size());
    for (const auto& [pfn, order] : snap.by_pfn) {
      ASSERT_EQ(model_.count(pfn), 1u) << "allocated but not in the model: index " << pfn - start_;
      ASSERT_EQ(model_.at(pfn).order, order);
      ASSERT_NO_FATAL_FAILURE(expect_count(pfn));
    }
  }

  // ---- correct operations ---------------------------------------------------------------------

  void op_alloc_to() {
    const std::size_t i = pick_empty_general();
    if (i == SIZE_MAX) return;
    const unsigned order = random_order();
    page* p = nullptr;
    EXPECT_REPORTS(0, "alloc_pages_to into an empty slot", p = pool_.alloc_pages_to(order, slot(i)));
    if (!p) {
      ASSERT_EQ(*slot(i), 0u);
      ASSERT_FALSE(model_has_free_extent(order)) << "alloc_pages_to(" << order << ") failed with a free aligned extent";
      count("alloc_to null");
      return;
    }
    ASSERT_EQ(*slot(i), pmpage::page_to_pfn(p));
    ASSERT_EQ((*slot(i) - start_) % (std::uint64_t{1} << order), 0u) << "misaligned order-" << order << " page";
    ASSERT_NO_FATAL_FAILURE(model_add(*slot(i), order, int(i)));
    ASSERT_NO_FATAL_FAILURE(expect_count(*slot(i)));
    count("alloc_to");
  }

  void op_alloc() {
    const unsigned order = random_order();
    page* p = nullptr;
    EXPECT_REPORTS(0, "alloc_pages", p = pool_.alloc_pages(order));
    if (!p) {
      ASSERT_FALSE(model_has_free_extent(order)) << "alloc_pages(" << order << ") failed with a free aligned extent";
      count("alloc null");
      return;
    }
    const pfn_t pfn = pmpage::page_to_pfn(p);
    ASSERT_EQ((pfn - start_) % (std::uint64_t{1} << order), 0u) << "misaligned order-" << order << " page";
    ASSERT_NO_FATAL_FAILURE(model_add(pfn, order, -1));
    ASSERT_NO_FATAL_FAILURE(expect_count(pfn));
    count("alloc");
  }

  // free_pages_from on a filled slot: frees it, or -EBUSY (no report) while extra references exist.
  void free_from(std::size_t i) {
    const pfn_t head = slot_model_[i];
    const allocation a = model_.at(head);
    int rc = 0;
    EXPECT_REPORTS(0, "free_pages_from of the owner", rc = pool_.free_pages_from(slot(i)));
    if (a.count > 1) {
      ASSERT_EQ(rc, -EBUSY);
      ASSERT_EQ(*slot(i), head);
      ASSERT_NO_FATAL_FAILURE(expect_count(head));
      count("free_from busy");
      return;
    }
    ASSERT_EQ(rc, 0);
    ASSERT_EQ(*slot(i), 0u);
    model_remove(head);
    ASSERT_EQ(pmpage::page_count(pg(head)), 0);
    count("free_from");
  }

  void op_free_from() {
    const std::size_t i = pick_filled();
    if (i == SIZE_MAX) return;
    // At times with an extra reference held across the call (-EBUSY, no report): extra references
    // are otherwise rare on the few slots picked here.
    const pfn_t head = slot_model_[i];
    const bool extra = chance(10);
    if (extra) {
      EXPECT_REPORTS(0, "get_page", pmpage::get_page(pg(any_pfn_of(head))));
      ++model_.at(head).count;
    }
    ASSERT_NO_FATAL_FAILURE(free_from(i));
    if (extra) {
      EXPECT_REPORTS(0, "put_page", pmpage::put_page(pg(any_pfn_of(head))));
      --model_.at(head).count;
    }
  }

  // Drops one reference of an unowned page (the last one frees it): put_page on the head, put_page
  // on any page of it, or free_pages(head, order).
  void put_unowned(pfn_t head) {
    allocation& a = model_.at(head);
    EXPECT_REPORTS(0, "a balanced put of an unowned page", {
      switch (rnd(3)) {
        case 0: pmpage::put_page(pg(head)); break;
        case 1: pmpage::put_page(pg(any_pfn_of(head))); break;
        default: pmpage::free_pages(pg(head), a.order); break;
      }
    });
    if (--a.count == 0) {
      model_remove(head);
      ASSERT_EQ(pmpage::page_count(pg(head)), 0);
      count("put last");
    } else {
      ASSERT_NO_FATAL_FAILURE(expect_count(head));
      count("put");
    }
  }

  void op_put_unowned() {
    if (const pfn_t head = pick_unowned()) {
      ASSERT_NO_FATAL_FAILURE(put_unowned(head));
    }
  }

  // Many puts at once, so the unowned pages do not pile up.
  void op_put_unowned_batch() {
    for (int k = 0; k < 16; ++k)
      if (const pfn_t head = pick_unowned()) {
        ASSERT_NO_FATAL_FAILURE(put_unowned(head));
      }
  }

  void op_get() {
    const pfn_t head = pick_any_allocation();
    if (!head) return;
    if (model_.at(head).count >= 4) return;  // keep the extra references few
    if (chance(50)) {
      EXPECT_REPORTS(0, "get_page", pmpage::get_page(pg(any_pfn_of(head))));
    } else {
      bool ok = false;
      EXPECT_REPORTS(0, "get_page_unless_zero", ok = pmpage::get_page_unless_zero(pg(any_pfn_of(head))));
      ASSERT_TRUE(ok);
    }
    ++model_.at(head).count;
    ASSERT_NO_FATAL_FAILURE(expect_count(head));
    count("get");
  }

  // Drops an extra reference of a slot-owned page (count > 1): not the slot's, so allowed.
  void op_put_owned_extra() {
    for (int tries = 0; tries < 16; ++tries) {
      const std::size_t i = pick_filled();
      if (i == SIZE_MAX) return;
      const pfn_t head = slot_model_[i];
      allocation& a = model_.at(head);
      if (a.count < 2) continue;
      EXPECT_REPORTS(0, "put of an extra reference of an owned page", {
        if (chance(50))
          pmpage::put_page(pg(any_pfn_of(head)));
        else
          pmpage::free_pages(pg(head), a.order);
      });
      --a.count;
      ASSERT_NO_FATAL_FAILURE(expect_count(head));
      count("put owned extra");
      return;
    }
  }

  // An order-9 page for the splits: an existing one, or (when there is none, or at times) a fresh
  // one from alloc_pages(9) / alloc_pages_to(9, empty slot). 0 when there is none and no room.
  void find_order9(bool owned, pfn_t& head) {
    indexed_set<pfn_t>& set = owned ? owned9_ : unowned9_;
    head = 0;
    if (set.empty() || chance(25)) {
      const std::size_t i = owned ? pick_empty_general() : 0;
      page* p = nullptr;
      if (!owned) {
        EXPECT_REPORTS(0, "alloc_pages(9)", p = pool_.alloc_pages(9));
      } else if (i != SIZE_MAX) {
        EXPECT_REPORTS(0, "alloc_pages_to(9)", p = pool_.alloc_pages_to(9, slot(i)));
      }
      if (p) {
        head = pmpage::page_to_pfn(p);
        ASSERT_NO_FATAL_FAILURE(model_add(head, HPAGE_PMD_ORDER, owned ? int(i) : -1));
        return;
      }
    }
    if (!set.empty()) head = set.at(rnd(set.size()));
  }

  // The conditions of one split attempt, drawn by `variant`: an extra reference for the split's
  // duration (0, 1), the compound page locked through lock_at (2), or neither. `refused`: the split
  // must return -EBUSY (referenced more than once, or locked).
  void prepare_split(pfn_t head, std::uint64_t variant, pfn_t lock_at, bool& refused) {
    if (variant < 2) {
      EXPECT_REPORTS(0, "get_page", pmpage::get_page(pg(any_pfn_of(head))));
      ++model_.at(head).count;
    }
    if (variant == 2) {
      ASSERT_TRUE(pmpage::trylock_page(pg(lock_at)));
    }
    refused = variant == 2 || model_.at(head).count != 1;
  }

  // After the split attempt of prepare_split: it was refused and changed nothing; the lock and the
  // extra reference are given back.
  void undo_refused_split(pfn_t head, std::uint64_t variant, int rc, const std::string& what) {
    if (variant == 2) {
      EXPECT_REPORTS(0, "unlock_page", pmpage::unlock_page(pg(head)));
    }
    ASSERT_EQ(rc, -EBUSY);
    ASSERT_FALSE(pmpage::PageSplit(pg(head)));
    ASSERT_NO_FATAL_FAILURE(expect_count(head));
    count(what + (variant == 2 ? " locked" : " busy"));
    if (variant < 2) {
      EXPECT_REPORTS(0, "put_page", pmpage::put_page(pg(any_pfn_of(head))));
      --model_.at(head).count;
    }
  }

  // split_huge_page of an unowned order-9 page: 0 with count 1, -EBUSY (no report) when referenced
  // more than once or locked.
  void op_split() {
    pfn_t head = 0;
    ASSERT_NO_FATAL_FAILURE(find_order9(false, head));
    if (!head) return;
    const std::uint64_t variant = rnd(10);
    bool refused = false;
    ASSERT_NO_FATAL_FAILURE(prepare_split(head, variant, head, refused));
    int rc = 0;
    EXPECT_REPORTS(0, "split_huge_page of an unowned page", rc = pmpage::split_huge_page(pg(head)));
    if (refused) {
      ASSERT_NO_FATAL_FAILURE(undo_refused_split(head, variant, rc, "split"));
      return;
    }
    ASSERT_EQ(rc, 0);
    model_remove(head);
    for (std::uint64_t i = 0; i < HPAGE_PMD_NR; ++i) ASSERT_NO_FATAL_FAILURE(model_add(head + i, 0, -1));
    ASSERT_NO_FATAL_FAILURE(expect_count(head));
    ASSERT_NO_FATAL_FAILURE(expect_count(head + 1 + rnd(HPAGE_PMD_NR - 1)));
    ASSERT_NO_FATAL_FAILURE(expect_consistent());
    count("split");
    // The engine keeps a few pieces and drops the rest (512 live pieces would slow every later
    // check down).
    for (std::uint64_t i = 0; i < HPAGE_PMD_NR; ++i)
      if (!chance(4)) {
        ASSERT_NO_FATAL_FAILURE(put_unowned(head + i));
      }
  }

  // Moves an owned order-9 page into table t's first slot (move_pages_owner), unless it is there.
  // ok = false when no table is free.
  void owned9_into_table(pfn_t head, std::size_t& t, bool& ok) {
    ok = false;
    const std::size_t s = std::size_t(model_.at(head).slot);
    if (table_of(s) >= 0 && (s - kGeneral) % HPAGE_PMD_NR == 0 && table_filled_[table_of(s)] == 1) {
      t = std::size_t(table_of(s));
      ok = true;
      return;
    }
    for (t = 0; t < kTables && table_filled_[t]; ++t) {
    }
    if (t == kTables) return;
    const std::size_t dest = kGeneral + t * HPAGE_PMD_NR;
    int rc = 0;
    EXPECT_REPORTS(0, "move_pages_owner into a table", rc = pool_.move_pages_owner(slot(s), slot(dest)));
    ASSERT_EQ(rc, 0);
    model_move(s, dest);
    ok = true;
  }

  // split_huge_page_to of an owned order-9 page into an empty table: 0 with count 1, -EBUSY (no
  // report) when referenced more than once or locked.
  void op_split_to() {
    pfn_t head = 0;
    ASSERT_NO_FATAL_FAILURE(find_order9(true, head));
    if (!head) return;
    std::size_t t = 0;
    bool ok = false;
    ASSERT_NO_FATAL_FAILURE(owned9_into_table(head, t, ok));
    if (!ok) return;
    const std::uint64_t variant = rnd(10);
    bool refused = false;
    ASSERT_NO_FATAL_FAILURE(prepare_split(head, variant, head + rnd(HPAGE_PMD_NR), refused));
    int rc = 0;
    EXPECT_REPORTS(0, "split_huge_page_to", rc = pmpage::split_huge_page_to(pg(head), table(t)));
    if (refused) {
      ASSERT_NO_FATAL_FAILURE(undo_refused_split(head, variant, rc, "split_to"));
      // Out of the table again, so it is free for the next split.
      if (const std::size_t to = pick_empty_general(); to != SIZE_MAX) {
        EXPECT_REPORTS(0, "move_pages_owner out of a table", rc = pool_.move_pages_owner(table(t), slot(to)));
        ASSERT_EQ(rc, 0);
        model_move(kGeneral + t * HPAGE_PMD_NR, to);
      }
      return;
    }
    ASSERT_EQ(rc, 0);
    model_remove(head);
    for (std::uint64_t i = 0; i < HPAGE_PMD_NR; ++i) {
      ASSERT_EQ(table(t)[i], head + i) << "table slot " << i;
      ASSERT_NO_FATAL_FAILURE(model_add(head + i, 0, int(kGeneral + t * HPAGE_PMD_NR + i)));
    }
    ASSERT_NO_FATAL_FAILURE(expect_count(head + rnd(HPAGE_PMD_NR)));
    ASSERT_NO_FATAL_FAILURE(expect_consistent());
    count("split_to");
    // The engine moves a few pieces to slots of its own and frees the rest, emptying the table.
    for (std::size_t i = kGeneral + t * HPAGE_PMD_NR; i < kGeneral + (t + 1) * HPAGE_PMD_NR; ++i) {
      const std::size_t to = chance(4) ? pick_empty_general() : SIZE_MAX;
      if (to == SIZE_MAX) {
        ASSERT_NO_FATAL_FAILURE(free_from(i));
        continue;
      }
      EXPECT_REPORTS(0, "move_pages_owner of a piece", rc = pool_.move_pages_owner(slot(i), slot(to)));
      ASSERT_EQ(rc, 0);
      model_move(i, to);
    }
    ASSERT_EQ(table_filled_[t], 0u);
  }

  void op_move() {
    const std::size_t from = pick_filled(), to = pick_empty_general();
    if (from == SIZE_MAX || to == SIZE_MAX) return;
    const pfn_t head = slot_model_[from];
    int rc = 0;
    EXPECT_REPORTS(0, "move_pages_owner", rc = pool_.move_pages_owner(slot(from), slot(to)));
    ASSERT_EQ(rc, 0);
    model_move(from, to);
    ASSERT_NO_FATAL_FAILURE(expect_count(head));
    count("move");
  }

  // ---- wrong operations -----------------------------------------------------------------------

  void w_alloc_to_full() {
    const std::size_t i = pick_filled();
    if (i == SIZE_MAX) return;
    page* p = nullptr;
    EXPECT_REPORTS(1, "alloc_pages_to into a full slot", p = pool_.alloc_pages_to(random_order(), slot(i)));
    ASSERT_EQ(p, nullptr);
    ASSERT_NO_FATAL_FAILURE(expect_count(slot_model_[i]));
    count("W alloc_to full");
  }

  // The slot's own reference dropped by put_page / free_pages: refused, the count stays 1.
  void w_put_owned() {
    for (int tries = 0; tries < 16; ++tries) {
      const std::size_t i = pick_filled();
      if (i == SIZE_MAX) return;
      const pfn_t head = slot_model_[i];
      const allocation& a = model_.at(head);
      if (a.count != 1) continue;
      EXPECT_REPORTS(1, "put_page/free_pages of a slot's reference", {
        switch (rnd(3)) {
          case 0: pmpage::put_page(pg(head)); break;
          case 1: pmpage::put_page(pg(any_pfn_of(head))); break;
          default: pmpage::free_pages(pg(head), a.order); break;
        }
      });
      ASSERT_NO_FATAL_FAILURE(expect_count(head));
      count("W put owned");
      return;
    }
  }

  // free_pages_from through a slot that does not own what it names: a copy of an owner slot, the
  // pfn of an unowned page, of a free page, of a tail, of no page of the pool. -EINVAL and one
  // report, also while extra references are held (ownership is checked before the count).
  void w_free_from_not_owner() {
    const std::size_t c = pick_empty_general();
    if (c == SIZE_MAX) return;
    pfn_t v = 0, head = 0;
    const char* what = nullptr;
    switch (rnd(5)) {
      case 0:
        if (filled_.empty()) return;
        head = v = slot_model_[pick_filled()];
        what = "free_pages_from through a copied pfn";
        break;
      case 1:
        head = v = pick_unowned();
        what = "free_pages_from of an unowned page";
        break;
      case 2: {
        const std::uint64_t i = pick_free_index();
        if (i == UINT64_MAX) return;
        v = start_ + i;
        what = "free_pages_from of a free page";
        break;
      }
      case 3:
        head = pick_with_order_at_least(1);
        if (head) v = tail_of(head);
        what = "free_pages_from of a tail";
        break;
      default:
        v = chance(50) ? pool_.end_pfn() + rnd(1000) : 1 + rnd(4096);
        what = "free_pages_from of a pfn outside the pool";
        break;
    }
    if (!v) return;
    const bool extra = head && chance(30);  // an extra reference for the call's duration
    if (extra) {
      EXPECT_REPORTS(0, "get_page", pmpage::get_page(pg(any_pfn_of(head))));
      ++model_.at(head).count;
    }
    const bool busy = head == v && model_.at(head).count > 1;
    *slot(c) = v;
    int rc = 0;
    EXPECT_REPORTS(1, what, rc = pool_.free_pages_from(slot(c)));
    ASSERT_EQ(rc, -EINVAL) << what;
    ASSERT_EQ(*slot(c), v) << what << ": the slot changed";
    *slot(c) = 0;
    if (head) {
      ASSERT_NO_FATAL_FAILURE(expect_count(head));
    }
    if (extra) {
      EXPECT_REPORTS(0, "put_page", pmpage::put_page(pg(any_pfn_of(head))));
      --model_.at(head).count;
    }
    count(busy ? "W free_from copy busy" : what);
  }

  void w_free_from_empty() {
    const std::size_t i = rnd(kSlots);
    if (slot_model_[i]) return;
    int rc = -1;
    EXPECT_REPORTS(0, "free_pages_from of an empty slot", rc = pool_.free_pages_from(slot(i)));
    ASSERT_EQ(rc, 0);
    ASSERT_EQ(*slot(i), 0u);
    count("W free_from empty");
  }

  // The last put of an unowned page, then one more (put_page on the head or on any of its pages,
  // or free_pages): the second is a double free.
  void w_double_free() {
    for (int tries = 0; tries < 16; ++tries) {
      const pfn_t head = pick_unowned();
      if (!head) return;
      allocation& a = model_.at(head);
      if (a.count != 1) continue;
      const unsigned order = a.order;
      const pfn_t some = any_pfn_of(head);
      ASSERT_NO_FATAL_FAILURE(put_unowned(head));  // frees it
      EXPECT_REPORTS(1, "double free", {
        switch (rnd(3)) {
          case 0: pmpage::put_page(pg(head)); break;
          case 1: pmpage::put_page(pg(some)); break;
          default: pmpage::free_pages(pg(head), order); break;
        }
      });
      ASSERT_EQ(pmpage::page_count(pg(head)), 0);
      ASSERT_EQ(pmpage::page_count(pg(some)), 0);
      count("W double free");
      return;
    }
  }

  void w_free_pages_wrong_order() {
    const pfn_t head = pick_any_allocation();
    if (!head) return;
    const unsigned order = model_.at(head).order;
    unsigned wrong = unsigned(rnd(12));
    if (wrong == order) wrong = order + 1 + unsigned(rnd(3));
    EXPECT_REPORTS(1, "free_pages with the wrong order", pmpage::free_pages(pg(head), wrong));
    ASSERT_NO_FATAL_FAILURE(expect_count(head));
    count("W free_pages wrong order");
  }

  void w_free_pages_tail() {
    const pfn_t head = pick_with_order_at_least(1);
    if (!head) return;
    const unsigned order = model_.at(head).order;
    EXPECT_REPORTS(1, "free_pages on a tail", pmpage::free_pages(pg(tail_of(head)), chance(50) ? order : 0));
    ASSERT_NO_FATAL_FAILURE(expect_count(head));
    count("W free_pages tail");
  }

  // split_huge_page of a slot-owned page: -EBUSY (documented; no report), nothing changes.
  void w_split_owned() {
    if (owned9_.empty()) return;
    const pfn_t head = owned9_.at(rnd(owned9_.size()));
    int rc = 0;
    EXPECT_REPORTS(0, "split_huge_page of an owned page", rc = pmpage::split_huge_page(pg(head)));
    ASSERT_EQ(rc, -EBUSY);
    ASSERT_FALSE(pmpage::PageSplit(pg(head)));
    ASSERT_NO_FATAL_FAILURE(expect_count(head));
    count("W split owned");
  }

  // split_huge_page of a page that is not an order-9 head: -EINVAL (mm.hpp does not call it misuse,
  // so a report is not required either way).
  void w_split_not_huge() {
    const pfn_t head = pick_any_allocation();
    if (!head || model_.at(head).order == HPAGE_PMD_ORDER) return;
    const int before = recorder_.count();
    const int rc = pmpage::split_huge_page(pg(head));
    const int reports = recorder_.count() - before;
    ASSERT_LE(reports, 1);
    ASSERT_EQ(rc, -EINVAL);
    ASSERT_NO_FATAL_FAILURE(expect_count(head));
    count("W split not order 9");
  }

  // split_huge_page_to with a full slot among 1..511, slots[0] not the owner (empty, or a copy), an
  // unowned page, a page that is not order 9, or an array that runs past the root area.
  void w_split_to_bad() {
    int rc = 0;
    const std::uint64_t kind = rnd(5);
    if (kind == 0) {  // a full slot among 1..511
      pfn_t head = 0;
      ASSERT_NO_FATAL_FAILURE(find_order9(true, head));
      if (!head) return;
      std::size_t t = 0;
      bool ok = false;
      ASSERT_NO_FATAL_FAILURE(owned9_into_table(head, t, ok));
      if (!ok) return;
      const std::size_t k = 1 + rnd(HPAGE_PMD_NR - 1);
      const pfn_t junk = chance(50) ? head + k : 1 + rnd(1u << 20);
      table(t)[k] = junk;
      EXPECT_REPORTS(1, "split_huge_page_to with a full slot in 1..511",
                     rc = pmpage::split_huge_page_to(pg(head), table(t)));
      ASSERT_EQ(rc, -EINVAL);
      ASSERT_EQ(table(t)[k], junk);
      table(t)[k] = 0;
      ASSERT_FALSE(pmpage::PageSplit(pg(head)));
      ASSERT_NO_FATAL_FAILURE(expect_count(head));
      count("W split_to full slot");
      return;
    }
    std::size_t t = 0;
    for (; t < kTables && table_filled_[t]; ++t) {
    }
    pfn_t head = 0;
    const char* what = nullptr;
    if (kind == 1 || kind == 2) {  // slots[0] empty or a copy of the owner's pfn
      if (t == kTables) return;
      ASSERT_NO_FATAL_FAILURE(find_order9(true, head));
      if (!head) return;
      what = kind == 1 ? "split_huge_page_to with slots[0] empty" : "split_huge_page_to with slots[0] a copy";
    } else if (kind == 3) {  // unowned order-9 page (slots[0] empty or a copy)
      if (t == kTables) return;
      ASSERT_NO_FATAL_FAILURE(find_order9(false, head));
      if (!head) return;
      what = "split_huge_page_to of an unowned page";
    } else {  // not order 9, or slots past the end of the root area
      head = pick_any_allocation();
      if (!head) return;
      if (model_.at(head).order == HPAGE_PMD_ORDER) {
        if (model_.at(head).slot < 0) return;
        EXPECT_REPORTS(1, "split_huge_page_to with slots past the root area",
                       rc = pmpage::split_huge_page_to(pg(head), slot(kSlots - 1 - rnd(HPAGE_PMD_NR - 1))));
      } else {
        if (t == kTables) return;
        if (chance(50)) table(t)[0] = head;
        EXPECT_REPORTS(1, "split_huge_page_to of a page that is not order 9",
                       rc = pmpage::split_huge_page_to(pg(head), table(t)));
        table(t)[0] = 0;
      }
      ASSERT_EQ(rc, -EINVAL);
      ASSERT_NO_FATAL_FAILURE(expect_count(head));
      count("W split_to not order 9 / past the end");
      return;
    }
    if (kind == 2 || (kind == 3 && chance(50))) table(t)[0] = head;
    EXPECT_REPORTS(1, what, rc = pmpage::split_huge_page_to(pg(head), table(t)));
    ASSERT_EQ(rc, -EINVAL);
    table(t)[0] = 0;
    ASSERT_FALSE(pmpage::PageSplit(pg(head)));
    ASSERT_NO_FATAL_FAILURE(expect_count(head));
    count(what);
  }

  void w_move_full() {
    const std::size_t from = pick_filled(), to = pick_filled();
    if (from == SIZE_MAX) return;
    int rc = 0;
    EXPECT_REPORTS(1, from == to ? "move_pages_owner onto its own slot" : "move_pages_owner onto a full slot",
                   rc = pool_.move_pages_owner(slot(from), slot(to)));
    ASSERT_EQ(rc, -EINVAL);
    ASSERT_NO_FATAL_FAILURE(expect_count(slot_model_[from]));
    count("W move onto full");
  }

  // move_pages_owner from a slot that owns nothing: empty, a copy of an owner, an unowned page, a
  // free page.
  void w_move_not_owner() {
    const std::size_t c = pick_empty_general(), to = pick_empty_general();
    if (c == SIZE_MAX || to == SIZE_MAX || c == to) return;
    pfn_t v = 0, head = 0;
    switch (rnd(4)) {
      case 0: break;  // empty
      case 1:
        if (filled_.empty()) return;
        head = v = slot_model_[pick_filled()];
        break;
      case 2:
        head = v = pick_unowned();
        if (!v) return;
        break;
      default: {
        const std::uint64_t i = pick_free_index();
        if (i == UINT64_MAX) return;
        v = start_ + i;
        break;
      }
    }
    *slot(c) = v;
    int rc = 0;
    EXPECT_REPORTS(1, "move_pages_owner from a slot that owns nothing", rc = pool_.move_pages_owner(slot(c), slot(to)));
    ASSERT_EQ(rc, -EINVAL);
    ASSERT_EQ(*slot(c), v);
    ASSERT_EQ(*slot(to), 0u);
    *slot(c) = 0;
    if (head) {
      ASSERT_NO_FATAL_FAILURE(expect_count(head));
    }
    count("W move not owner");
  }

  void w_get_free() {
    const std::uint64_t i = pick_free_index();
    if (i == UINT64_MAX) return;
    page* p = pg(start_ + i);
    if (chance(70)) {
      EXPECT_REPORTS(1, "get_page on a free page", pmpage::get_page(p));
    } else {
      bool ok = true;
      EXPECT_REPORTS(0, "get_page_unless_zero on a free page", ok = pmpage::get_page_unless_zero(p));
      ASSERT_FALSE(ok);
    }
    ASSERT_EQ(pmpage::page_count(p), 0);
    count("W get free");
  }

  void w_alloc_bad_order() {
    const unsigned order = pmpage::MAX_PAGE_ORDER + 1 + unsigned(rnd(4));
    page* p = nullptr;
    if (chance(50)) {
      EXPECT_REPORTS(1, "alloc_pages with order > MAX_PAGE_ORDER", p = pool_.alloc_pages(order));
    } else {
      const std::size_t i = pick_empty_general();
      if (i == SIZE_MAX) return;
      EXPECT_REPORTS(1, "alloc_pages_to with order > MAX_PAGE_ORDER", p = pool_.alloc_pages_to(order, slot(i)));
      ASSERT_EQ(*slot(i), 0u);
    }
    ASSERT_EQ(p, nullptr);
    count("W alloc bad order");
  }

  // ---- reopen ---------------------------------------------------------------------------------

  void op_reopen() {
    // References are volatile: the engine drops its extra ones first.
    for (auto& [pfn, a] : model_)
      for (; a.count > 1; --a.count) EXPECT_REPORTS(0, "balancing put", pmpage::put_page(pg(pfn)));
    if (reopen_if_persistent()) {  // volatile: nothing to reopen
      ASSERT_EQ(pool_.start_pfn(), start_);
    }
    refresh_slot_list();
    count("reopen");
  }

  // ---- the run --------------------------------------------------------------------------------

  struct weighted {
    const char* name;
    unsigned weight;
    void (MisuseProperty::*op)();
  };

  void run(std::uint64_t seed, std::uint64_t steps) {
    rng_.seed(seed);
    used_.assign(total_pages_, 0);
    slot_model_.assign(kSlots, 0);
    // Weights per 1000 (printed in the summary); wrong calls are 35% of the steps.
    const std::vector<weighted> correct = {
        {"alloc_pages_to", 120, &MisuseProperty::op_alloc_to},
        {"free_pages_from", 120, &MisuseProperty::op_free_from},
        {"alloc_pages", 85, &MisuseProperty::op_alloc},
        {"put_page/free_pages (unowned)", 90, &MisuseProperty::op_put_unowned},
        {"put_page x16 (unowned)", 15, &MisuseProperty::op_put_unowned_batch},
        {"get_page", 60, &MisuseProperty::op_get},
        {"put_page/free_pages (owned, extra ref)", 50, &MisuseProperty::op_put_owned_extra},
        {"split_huge_page (unowned)", 40, &MisuseProperty::op_split},
        {"split_huge_page_to", 30, &MisuseProperty::op_split_to},
        {"move_pages_owner", 40, &MisuseProperty::op_move},
    };
    const std::vector<weighted> wrong = {
        {"W alloc_pages_to into a full slot", 30, &MisuseProperty::w_alloc_to_full},
        {"W put_page/free_pages of the slot's reference", 40, &MisuseProperty::w_put_owned},
        {"W free_pages_from via a non-owner slot", 50, &MisuseProperty::w_free_from_not_owner},
        {"W free_pages_from of an empty slot", 20, &MisuseProperty::w_free_from_empty},
        {"W double free", 35, &MisuseProperty::w_double_free},
        {"W free_pages with a wrong order", 20, &MisuseProperty::w_free_pages_wrong_order},
        {"W free_pages on a tail", 20, &MisuseProperty::w_free_pages_tail},
        {"W split_huge_page of an owned page", 15, &MisuseProperty::w_split_owned},
        {"W split_huge_page of a non-order-9 page", 5, &MisuseProperty::w_split_not_huge},
        {"W split_huge_page_to misuse", 35, &MisuseProperty::w_split_to_bad},
        {"W move_pages_owner onto a full slot", 20, &MisuseProperty::w_move_full},
        {"W move_pages_owner from a non-owner", 25, &MisuseProperty::w_move_not_owner},
        {"W get_page on a free page", 30, &MisuseProperty::w_get_free},
        {"W alloc with order > 18", 5, &MisuseProperty::w_alloc_bad_order},
    };
    std::vector<weighted> ops = correct;
    ops.insert(ops.end(), wrong.begin(), wrong.end());
    unsigned total_weight = 0;
    for (const auto& o : ops) total_weight += o.weight;
    ASSERT_EQ(total_weight, 1000u);

    ASSERT_NO_FATAL_FAILURE(expect_consistent());
    auto pick_op = [&]() -> const weighted* {
      // When the pool is mostly full, allocations are skipped half the time.
      const bool full = used_pages_ * 4 > total_pages_ * 3;
      std::uint64_t r = rnd(total_weight);
      const weighted* op = &ops.front();
      for (const auto& o : ops) {
        if (r < o.weight) {
          op = &o;
          break;
        }
        r -= o.weight;
      }
      if (full && (op->op == &MisuseProperty::op_alloc || op->op == &MisuseProperty::op_alloc_to) && chance(50))
        op = &ops[1];  // free_pages_from instead
      return op;
    };
    for (std::uint64_t step = 0; step < steps; ++step) {
      const weighted* op = pick_op();
      SCOPED_TRACE("seed " + std::to_string(seed) + ", step " + std::to_string(step) + ": " + op->name);
      ASSERT_NO_FATAL_FAILURE((this->*op->op)());
      ASSERT_NO_FATAL_FAILURE(expect_consistent());
      if (step % kReopenEvery == kReopenEvery - 1) {
        // Every other time, a few operations run on the reopened pool before anything is checked:
        // the checks load every region, and these operations should also meet regions that are
        // still lazily loaded (their first touch after open).
        const bool lazy = (step / kReopenEvery) % 2;
        SCOPED_TRACE(lazy ? "reopen, then operations on lazily loaded regions" : "reopen");
        ASSERT_NO_FATAL_FAILURE(op_reopen());
        for (int k = 0; lazy && k < 4; ++k) {
          const weighted* o = pick_op();
          SCOPED_TRACE(std::string("after reopen: ") + o->name);
          ASSERT_NO_FATAL_FAILURE((this->*o->op)());
        }
        ASSERT_NO_FATAL_FAILURE(expect_allocations());
        ASSERT_NO_FATAL_FAILURE(expect_consistent());
      }
    }
    std::string summary;
    for (const auto& [what, n] : counts_) summary += std::string(summary.empty() ? "" : "; ") + what + " " + std::to_string(n);
    RecordProperty("operations", summary);
    std::printf("[  seed %llu ] %s\n", (unsigned long long)seed, summary.c_str());
    // With the default step count every path must have been taken.
    if (steps >= 3000) {
      // Each group must have happened at least once (the rarer outcomes are grouped).
      const std::vector<std::vector<const char*>> groups = {
          {"alloc_to"}, {"alloc_to null", "alloc null"}, {"alloc"}, {"free_from"}, {"free_from busy"}, {"put"},
          {"put last"}, {"get"}, {"put owned extra"}, {"split"}, {"split_to"}, {"move"}, {"reopen"},
          {"split busy", "split locked", "split_to busy", "split_to locked"},
          {"W alloc_to full"}, {"W put owned"}, {"free_pages_from through a copied pfn"}, {"W free_from copy busy"},
          {"free_pages_from of an unowned page"}, {"free_pages_from of a free page"}, {"free_pages_from of a tail"},
          {"free_pages_from of a pfn outside the pool"}, {"W free_from empty"}, {"W double free"},
          {"W free_pages wrong order"}, {"W free_pages tail"}, {"W split owned"},
          {"W split_to full slot", "split_huge_page_to with slots[0] empty", "split_huge_page_to with slots[0] a copy",
           "split_huge_page_to of an unowned page"},
          {"W split_to not order 9 / past the end"}, {"W move onto full"}, {"W move not owner"}, {"W get free"},
          {"W alloc bad order"}};
      for (const auto& group : groups) {
        std::uint64_t n = 0;
        for (const char* what : group) n += counts_[what];
        EXPECT_GT(n, 0u) << group.front() << (group.size() > 1 ? " (or its group)" : "") << " never happened: " << summary;
      }
    }
    // Drain: the pool must return to empty with every region merged.
    ASSERT_NO_FATAL_FAILURE(op_reopen());
    ASSERT_NO_FATAL_FAILURE(expect_allocations());
    ASSERT_NO_FATAL_FAILURE(expect_consistent());
    for (std::size_t i = 0; i < kSlots; ++i)
      if (slot_model_[i]) {
        ASSERT_NO_FATAL_FAILURE(free_from(i));
      }
    while (!unowned_.empty()) ASSERT_NO_FATAL_FAILURE(put_unowned(unowned_.at(0)));
    ASSERT_NO_FATAL_FAILURE(expect_consistent());
    pool_.trim();
    const pmpage::pool_stats s = pool_.stats();
    EXPECT_EQ(s.free_pages, total_pages_);
    EXPECT_EQ(s.split_regions, 0u);
    EXPECT_EQ(s.free_regions, total_regions_);
  }
};

class MisusePropertySeed : public KindsAnd<MisuseProperty, std::uint64_t> {};

TEST_P(MisusePropertySeed, WrongCallsAreReportedAndChangeNothing) {
  const std::uint64_t steps = env_or("PMPAGE_MISUSE_STEPS", 3000);
  const std::uint64_t seed = env_or("PMPAGE_PROPERTY_SEED", 0x7a5e0007) + param();
  RecordProperty("seed", std::to_string(seed));
  run(seed, steps);
}

// The instantiation name makes the tests match --gtest_filter='MisuseProperty*'.
INSTANTIATE_TEST_SUITE_P(MisuseProperty, MisusePropertySeed,
                         ::testing::Combine(::testing::Values(std::uint64_t{0}, std::uint64_t{1}, std::uint64_t{2}), kKinds),
                         [](const auto& info) { return kind_and_name(info, std::to_string(std::get<0>(info.param))); });

}  // namespace
