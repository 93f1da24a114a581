// Scaling (issue #8): per-CPU caches of split regions, frees from any thread (remote frees),
// merge hysteresis (at most EMPTY_SPLIT_KEPT empty split regions, each for at most
// EMPTY_SPLIT_KEEP_MS), idle caches drained after PCP_IDLE_MS, pool::trim(), and no false "out of
// memory" while caches or kept regions hold the free pages.
//
// Suites whose name holds "Thread" (ThreadCaches*) run under ThreadSanitizer (scripts/test.sh
// filters on 'Thread|Concurren|Stress'); ScalingHysteresis is single-threaded. Nothing here
// times anything: the one sleep (ThreadCaches.IdleCachesAndExpiredEmptyRegionsAreReleased) only
// lets the documented bounds pass before the calls that must enforce them.
//
// Reproduce a model-test failure with PMPAGE_SCALING_SEED=<seed> (every failure prints it);
// PMPAGE_SCALING_OPS=<n> scales the operations per thread.
#include <pthread.h>
#include <sys/wait.h>
#include <unistd.h>
#include <sched.h>

#include <algorithm>
#include <barrier>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <optional>
#include <random>
#include <set>
#include <sstream>
#include <thread>
#include <unordered_map>

#include "cpu_pinning.hpp"
#include "test_util.hpp"

using pmpage::testing::nth_cpu;
using pmpage::testing::pin_this_thread;
using pmpage::testing::run_on_cpu;

namespace {

using namespace pmtest;
using pmpage::EMPTY_SPLIT_KEEP_MS;
using pmpage::EMPTY_SPLIT_KEPT;
using pmpage::HPAGE_PMD_NR;
using pmpage::HPAGE_PMD_ORDER;
using pmpage::page;
using pmpage::PCP_IDLE_MS;
using pmpage::pfn_t;
using pmpage::pool_stats;

std::uint64_t env_or(const char* name, std::uint64_t fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::strtoull(v, nullptr, 0) : fallback;
}

// ---- stamps: a page handed to two owners at once shows up as a wrong stamp --------------------

std::uint64_t* first_word(pfn_t head) { return static_cast<std::uint64_t*>(pmpage::page_address(pmpage::pfn_to_page(head))); }
std::uint64_t* last_word(pfn_t head, unsigned order) {
  const pfn_t last = head + (pfn_t{1} << order) - 1;
  return static_cast<std::uint64_t*>(pmpage::page_address(pmpage::pfn_to_page(last))) + pmpage::PAGE_SIZE / 8 - 1;
}
void write_stamp(pfn_t head, unsigned order, std::uint64_t stamp) {
  *first_word(head) = stamp;
  *last_word(head, order) = ~stamp;
}
bool stamp_ok(pfn_t head, unsigned order, std::uint64_t stamp) {
  return *first_word(head) == stamp && *last_word(head, order) == ~stamp;
}

std::string describe(const pool_stats& s) {
  std::ostringstream o;
  o << "{total_pages " << s.total_pages << ", free_pages " << s.free_pages << ", total_regions " << s.total_regions
    << ", free_regions " << s.free_regions << ", split_regions " << s.split_regions << ", materialised_regions "
    << s.materialised_regions << ", descriptor_bytes " << s.descriptor_bytes << ", cpu_cached_regions "
    << s.cpu_cached_regions << ", cpu_cached_free_pages " << s.cpu_cached_free_pages << ", empty_split_regions "
    << s.empty_split_regions << "}";
  return o.str();
}

// ---- the fixture: what stats() must say about a known set of allocations ----------------------

class ScalingBase : public PoolTest {
 protected:
  // What a set of allocations (head pfn -> order) implies for the pool's counters.
  struct usage {
    std::uint64_t pages = 0;           // pages in use
    std::uint64_t split_needed = 0;    // regions holding an allocation of order < 9: split by necessity
    std::uint64_t unused_regions = 0;  // regions with no page in use (free, or split and empty)
  };

  usage usage_of(const std::map<pfn_t, unsigned>& allocs) const {
    usage u;
    std::vector<std::uint64_t> used(total_regions_, 0);
    std::vector<char> small(total_regions_, 0);
    for (const auto& [pfn, order] : allocs) {
      const std::uint64_t idx = pfn - start_, n = std::uint64_t{1} << order;
      u.pages += n;
      if (order < HPAGE_PMD_ORDER) {
        small[idx / HPAGE_PMD_NR] = 1;
        used[idx / HPAGE_PMD_NR] += n;
      } else {
        for (std::uint64_t r = idx / HPAGE_PMD_NR; r < (idx + n) / HPAGE_PMD_NR; ++r) used[r] += HPAGE_PMD_NR;
      }
    }
    for (std::uint64_t r = 0; r < total_regions_; ++r) {
      u.split_needed += small[r];
      u.unused_regions += used[r] == 0;
    }
    return u;
  }

  // Everything any stats() must satisfy, whatever the caches and the hysteresis hold: "" or the
  // first violation.
  std::string stats_problem(const pool_stats& s, const usage& u) const {
    std::ostringstream o;
    if (s.total_pages != total_pages_ || s.total_regions != total_regions_)
      o << "totals changed";
    else if (s.free_pages != total_pages_ - u.pages)
      o << "free_pages is " << s.free_pages << ", the allocations leave " << total_pages_ - u.pages;
    else if (s.split_regions < u.split_needed)
      o << "split_regions " << s.split_regions << " < " << u.split_needed << " regions holding small allocations";
    else if (s.empty_split_regions > s.split_regions - u.split_needed)
      o << "empty_split_regions " << s.empty_split_regions << " > the " << s.split_regions - u.split_needed
        << " split regions without an allocation";
    else if (s.split_regions - u.split_needed > s.empty_split_regions + s.cpu_cached_regions)
      o << s.split_regions - u.split_needed
        << " split regions hold no allocation, more than empty_split_regions + cpu_cached_regions";
    else if (s.free_regions + (s.split_regions - u.split_needed) != u.unused_regions)
      o << "free_regions " << s.free_regions << " + empty split regions " << s.split_regions - u.split_needed
        << " != " << u.unused_regions << " regions with no page in use";
    else if (s.empty_split_regions > EMPTY_SPLIT_KEPT)
      o << "empty_split_regions " << s.empty_split_regions << " > EMPTY_SPLIT_KEPT";
    else if (s.materialised_regions > s.split_regions)
      o << "materialised_regions > split_regions";
    else if (s.descriptor_bytes != s.total_regions * 64 + s.materialised_regions * 32768)
      o << "descriptor_bytes " << s.descriptor_bytes << ", want " << expected_descriptor_bytes(s.materialised_regions);
    else if (s.cpu_cached_regions > s.split_regions)
      o << "cpu_cached_regions > split_regions";
    else if (s.cpu_cached_free_pages > s.free_pages)
      o << "cpu_cached_free_pages > free_pages";
    else if (s.cpu_cached_free_pages > s.cpu_cached_regions * HPAGE_PMD_NR)
      o << "cpu_cached_free_pages > 512 x cpu_cached_regions";
    else
      return {};
    return o.str() + " " + describe(s);
  }

  // The state trim() leaves (nothing running concurrently, every split region loaded): no cache,
  // no empty split region, split == materialised == regions holding a small allocation.
  std::string trimmed_problem(const pool_stats& s, const usage& u) const {
    if (std::string why = stats_problem(s, u); !why.empty()) return why;
    std::ostringstream o;
    if (s.cpu_cached_regions != 0 || s.cpu_cached_free_pages != 0)
      o << "a cache still holds a region after trim()";
    else if (s.empty_split_regions != 0)
      o << "an empty split region survived trim()";
    else if (s.split_regions != u.split_needed)
      o << "split_regions " << s.split_regions << " after trim(), " << u.split_needed << " regions hold small allocations";
    else if (s.materialised_regions != s.split_regions)
      o << "materialised_regions != split_regions after trim() (every region was loaded)";
    else if (s.free_regions != u.unused_regions)
      o << "free_regions " << s.free_regions << " after trim(), " << u.unused_regions << " regions are unused";
    else
      return {};
    return o.str() + " " + describe(s);
  }

  // "" if the pool's allocations are exactly `expected` (head -> order), each reported once.
  std::string allocations_problem(const std::map<pfn_t, unsigned>& expected) const {
    const allocation_snapshot snap = allocations(pool_);
    std::ostringstream o;
    if (snap.visits != snap.by_pfn.size()) return "for_each_allocated reported an allocation twice";
    for (const auto& [pfn, order] : expected) {
      const auto it = snap.by_pfn.find(pfn);
      if (it == snap.by_pfn.end()) {
        o << "index " << pfn - start_ << " (order " << order << ") is held but not allocated";
        return o.str();
      }
      if (it->second != order) {
        o << "index " << pfn - start_ << " is held with order " << order << ", allocated with order " << it->second;
        return o.str();
      }
    }
    for (const auto& [pfn, order] : snap.by_pfn)
      if (!expected.count(pfn)) {
        o << "index " << pfn - start_ << " (order " << order << ") is allocated but nobody holds it";
        return o.str();
      }
    return {};
  }

  // Per-page use map of a set of allocations (for has_free_extent).
  std::vector<std::uint8_t> used_map(const std::map<pfn_t, unsigned>& allocs) const {
    std::vector<std::uint8_t> used(total_pages_, 0);
    for (const auto& [pfn, order] : allocs)
      for (std::uint64_t i = pfn - start_; i < pfn - start_ + (std::uint64_t{1} << order); ++i) used[i] = 1;
    return used;
  }

  // No false "out of memory", at a quiescent point: for each order with a free naturally aligned
  // extent in the model, an allocation succeeds (and is freed again) even if caches or kept empty
  // regions hold the pages.
  std::string probe_no_false_oom(const std::map<pfn_t, unsigned>& allocs) {
    const std::vector<std::uint8_t> used = used_map(allocs);
    for (unsigned order : {0u, 3u, 8u, 9u, 10u}) {
      if (!has_free_extent(used, order)) continue;
      page* p = pool_.alloc_pages(order);
      if (!p) return "alloc_pages(" + std::to_string(order) + ") returned nullptr although a free aligned extent exists";
      const std::uint64_t idx = index_of(p);
      for (std::uint64_t i = idx; i < idx + (std::uint64_t{1} << order); ++i)
        if (i >= used.size() || used[i]) return "alloc_pages(" + std::to_string(order) + ") returned a page in use";
      pmpage::free_pages(p, order);
    }
    return {};
  }
};
class Scaling : public Kinds<ScalingBase> {};

// ---- 1. the multi-threaded model test ---------------------------------------------------------
//
// T threads each run a random sequence of alloc_pages / alloc_pages_bulk / free_pages / put_page /
// get_page / alloc_pages_to / free_pages_from on their own pages and slots, and hand pages to
// other threads, which free them (remote frees). Each thread keeps its own model; at every
// checkpoint (all threads stopped at a barrier) the union of the models plus the pages in transit
// must be exactly the pool's allocations, with the counts, slots and stamps the models say, and
// stats() and check() must agree. Halfway and at the end the pool is closed and reopened.

class ThreadCachesModel : public KindsAnd<ScalingBase, unsigned> {
 protected:
  std::uint64_t pool_size() const override { return 32 * MiB; }  // 15 regions: fills up often

  static constexpr std::size_t kSlotsPerThread = 16;
  static constexpr unsigned kRounds = 10;

  struct allocation {
    unsigned order = 0;
    int count = 1;
    int slot = -1;  // own slot index that owns it, or -1
    std::uint64_t stamp = 0;
  };
  struct handoff {
    pfn_t pfn;
    unsigned order;
    std::uint64_t stamp;
  };
  struct worker {
    std::unordered_map<pfn_t, allocation> held;
    std::vector<pfn_t> keys;
    std::unordered_map<pfn_t, std::size_t> pos;
    std::vector<pfn_t> slots;  // expected content of this thread's root slots
    std::mutex inbox_mu;
    std::deque<handoff> inbox;  // pages other threads handed to this one, to free
    std::mt19937_64 rng;
    std::uint64_t next_stamp = 0;
    struct {
      std::uint64_t alloc_ok = 0, alloc_null = 0, bulk = 0, freed = 0, put = 0, get = 0, alloc_to = 0, free_from = 0,
                    free_from_busy = 0, handed = 0, remote_freed = 0;
    } n;
  };

  unsigned threads_ = 0;
  std::uint64_t seed_ = 0;
  std::vector<std::unique_ptr<worker>> w_;
  std::atomic<bool> stop_{false};
  std::atomic<std::int64_t> used_{0};  // pages held, approximately (biases alloc vs free)
  std::mutex fail_mu_;
  std::string failure_;

  void fail(unsigned t, std::uint64_t op, const std::string& why) {
    std::lock_guard<std::mutex> g(fail_mu_);
    if (failure_.empty())
      failure_ = "thread " + std::to_string(t) + ", op " + std::to_string(op) + ": " + why;
    stop_.store(true);
  }

  pfn_t* slot_ptr(unsigned t, std::size_t i) { return root_slots(pool_) + t * kSlotsPerThread + i; }

  std::uint64_t rnd(worker& w, std::uint64_t n) { return std::uniform_int_distribution<std::uint64_t>(0, n - 1)(w.rng); }

  unsigned random_order(worker& w) {
    const std::uint64_t r = rnd(w, 100);
    if (r < 45) return 0;
    if (r < 70) return 1 + static_cast<unsigned>(rnd(w, 3));
    if (r < 85) return 4 + static_cast<unsigned>(rnd(w, 5));
    if (r < 95) return 9;
    return 10;
  }

  void model_add(unsigned t, worker& w, page* p, unsigned order, int slot, std::uint64_t op) {
    const pfn_t pfn = pmpage::page_to_pfn(p);
    if ((pfn - start_) % (std::uint64_t{1} << order) != 0) return fail(t, op, "misaligned order-" + std::to_string(order) + " page");
    if (pmpage::page_count(p) != 1 || pmpage::compound_order(p) != order)
      return fail(t, op, "new order-" + std::to_string(order) + " page has count " + std::to_string(pmpage::page_count(p)) +
                             ", order " + std::to_string(pmpage::compound_order(p)));
    if (w.held.count(pfn)) return fail(t, op, "allocated a page this thread already holds");
    const std::uint64_t stamp = (std::uint64_t{t + 1} << 48) | ++w.next_stamp;
    write_stamp(pfn, order, stamp);
    w.held[pfn] = allocation{order, 1, slot, stamp};
    w.pos[pfn] = w.keys.size();
    w.keys.push_back(pfn);
    used_.fetch_add(std::int64_t{1} << order, std::memory_order_relaxed);
  }

  void model_remove(worker& w, pfn_t pfn) {
    const std::size_t i = w.pos.at(pfn);
    w.pos[w.keys.back()] = i;
    w.keys[i] = w.keys.back();
    w.keys.pop_back();
    w.pos.erase(pfn);
    used_.fetch_sub(std::int64_t{1} << w.held.at(pfn).order, std::memory_order_relaxed);
    w.held.erase(pfn);
  }

  // Drops the last reference of a compound page through one of the three paths.
  void drop_last(worker& w, pfn_t head, unsigned order) {
    switch (rnd(w, 3)) {
      case 0: pmpage::put_page(pmpage::pfn_to_page(head)); break;
      case 1: pmpage::put_page(pmpage::pfn_to_page(head + rnd(w, std::uint64_t{1} << order))); break;
      default: pmpage::free_pages(pmpage::pfn_to_page(head), order); break;
    }
  }

  void one_op(unsigned t, worker& w, std::uint64_t op) {
    // Serve a page another thread handed over (a remote free) now and then.
    if (rnd(w, 4) == 0) {
      std::optional<handoff> h;
      {
        std::lock_guard<std::mutex> g(w.inbox_mu);
        if (!w.inbox.empty()) {
          h = w.inbox.front();
          w.inbox.pop_front();
        }
      }
      if (h) {
        page* hp = pmpage::pfn_to_page(h->pfn);
        if (!stamp_ok(h->pfn, h->order, h->stamp)) return fail(t, op, "a handed-over page was overwritten in transit");
        if (pmpage::page_count(hp) != 1 || pmpage::compound_order(hp) != h->order)
          return fail(t, op, "a handed-over page changed count or order in transit");
        drop_last(w, h->pfn, h->order);
        used_.fetch_sub(std::int64_t{1} << h->order, std::memory_order_relaxed);
        ++w.n.remote_freed;
        return;
      }
    }
    const bool full = used_.load(std::memory_order_relaxed) * 4 > static_cast<std::int64_t>(total_pages_) * 3;
    const std::uint64_t r = rnd(w, 1000);
    if (r < (full ? 200u : 330u)) {  // alloc_pages / alloc_pages_bulk
      const unsigned order = random_order(w);
      if (order <= 2 && rnd(w, 6) == 0) {
        page* out[8];
        const std::size_t want = 1 + rnd(w, 8);
        const std::size_t got = pool_.alloc_pages_bulk(order, want, out);
        for (std::size_t i = 0; i < got; ++i) model_add(t, w, out[i], order, -1, op);
        ++w.n.bulk;
        return;
      }
      page* p = pool_.alloc_pages(order);
      if (!p) {
        ++w.n.alloc_null;
        return;
      }
      ++w.n.alloc_ok;
      model_add(t, w, p, order, -1, op);
    } else if (r < 560) {  // put_page / free_pages of an own page
      if (w.keys.empty()) return;
      const pfn_t head = w.keys[rnd(w, w.keys.size())];
      allocation& a = w.held.at(head);
      if (a.slot >= 0 && a.count == 1) return;  // only free_pages_from frees it
      if (a.count == 1 && !stamp_ok(head, a.order, a.stamp)) return fail(t, op, "an own page was overwritten");
      if (a.count == 1) {
        drop_last(w, head, a.order);
        model_remove(w, head);
        ++w.n.freed;
      } else {
        pmpage::put_page(pmpage::pfn_to_page(head + rnd(w, std::uint64_t{1} << a.order)));
        --a.count;
        ++w.n.put;
      }
    } else if (r < 660) {  // get_page
      if (w.keys.empty()) return;
      const pfn_t head = w.keys[rnd(w, w.keys.size())];
      allocation& a = w.held.at(head);
      page* any = pmpage::pfn_to_page(head + rnd(w, std::uint64_t{1} << a.order));
      if (rnd(w, 2))
        pmpage::get_page(any);
      else if (!pmpage::get_page_unless_zero(any))
        return fail(t, op, "get_page_unless_zero failed on a held page");
      ++a.count;
      ++w.n.get;
      if (pmpage::page_count(pmpage::pfn_to_page(head)) != a.count || pmpage::compound_head(any) != pmpage::pfn_to_page(head))
        return fail(t, op, "count or head of a held page is wrong");
    } else if (r < 760) {  // alloc_pages_to into an own slot
      const std::size_t i = rnd(w, kSlotsPerThread);
      if (w.slots[i]) return;
      const unsigned order = random_order(w);
      pfn_t* slot = slot_ptr(t, i);
      page* p = pool_.alloc_pages_to(order, slot);
      if (!p) {
        if (*slot != 0) return fail(t, op, "failed alloc_pages_to wrote its slot");
        ++w.n.alloc_null;
        return;
      }
      if (*slot != pmpage::page_to_pfn(p)) return fail(t, op, "alloc_pages_to did not publish the pfn");
      w.slots[i] = *slot;
      ++w.n.alloc_to;
      model_add(t, w, p, order, static_cast<int>(i), op);
    } else if (r < 860) {  // free_pages_from an own slot
      const std::size_t i = rnd(w, kSlotsPerThread);
      if (!w.slots[i]) return;
      const pfn_t head = w.slots[i];
      allocation& a = w.held.at(head);
      if (a.count == 1 && !stamp_ok(head, a.order, a.stamp)) return fail(t, op, "a slot-owned page was overwritten");
      const int rc = pool_.free_pages_from(slot_ptr(t, i));
      if (a.count > 1) {
        if (rc != -EBUSY || *slot_ptr(t, i) != head) return fail(t, op, "free_pages_from of a referenced page did not return -EBUSY");
        ++w.n.free_from_busy;
        return;
      }
      if (rc != 0 || *slot_ptr(t, i) != 0) return fail(t, op, "free_pages_from returned " + std::to_string(rc));
      w.slots[i] = 0;
      model_remove(w, head);
      ++w.n.free_from;
    } else {  // hand an own page to another thread, which frees it
      if (w.keys.empty() || threads_ < 2) return;
      const pfn_t head = w.keys[rnd(w, w.keys.size())];
      const allocation a = w.held.at(head);
      if (a.slot >= 0 || a.count != 1) return;
      unsigned to = static_cast<unsigned>(rnd(w, threads_ - 1));
      if (to >= t) ++to;
      {
        // Still in use while in transit: keep it counted.
        used_.fetch_add(std::int64_t{1} << a.order, std::memory_order_relaxed);
        model_remove(w, head);
        std::lock_guard<std::mutex> g(w_[to]->inbox_mu);
        w_[to]->inbox.push_back({head, a.order, a.stamp});
      }
      ++w.n.handed;
    }
  }

  // Everything held (models and transit) as head -> order; "" or the first problem.
  std::string collect(std::map<pfn_t, unsigned>& all, std::map<pfn_t, int>& counts, std::map<pfn_t, std::uint64_t>& stamps) {
    for (unsigned t = 0; t < threads_; ++t) {
      worker& w = *w_[t];
      for (const auto& [pfn, a] : w.held) {
        if (!all.emplace(pfn, a.order).second) return "index " + std::to_string(pfn - start_) + " is held twice";
        counts[pfn] = a.count;
        stamps[pfn] = a.stamp;
      }
      std::lock_guard<std::mutex> g(w.inbox_mu);
      for (const handoff& h : w.inbox) {
        if (!all.emplace(h.pfn, h.order).second) return "index " + std::to_string(h.pfn - start_) + " is held twice (in transit)";
        counts[h.pfn] = 1;
        stamps[h.pfn] = h.stamp;
      }
    }
    pfn_t end = 0;
    for (const auto& [pfn, order] : all) {
      if (pfn < end) return "index " + std::to_string(pfn - start_) + " overlaps the allocation before it";
      end = pfn + (pfn_t{1} << order);
    }
    return {};
  }

  // All threads are stopped: the pool must be exactly the union of the models.
  std::string checkpoint(bool probe) {
    std::map<pfn_t, unsigned> all;
    std::map<pfn_t, int> counts;
    std::map<pfn_t, std::uint64_t> stamps;
    if (std::string why = collect(all, counts, stamps); !why.empty()) return why;
    if (std::string why = allocations_problem(all); !why.empty()) return why;
    for (const auto& [pfn, order] : all) {
      page* h = pmpage::pfn_to_page(pfn);
      if (pmpage::page_count(h) != counts[pfn] || pmpage::compound_order(h) != order)
        return "index " + std::to_string(pfn - start_) + ": count " + std::to_string(pmpage::page_count(h)) + ", model " +
               std::to_string(counts[pfn]);
      if (!stamp_ok(pfn, order, stamps[pfn])) return "index " + std::to_string(pfn - start_) + ": its data was overwritten";
    }
    for (unsigned t = 0; t < threads_; ++t)
      for (std::size_t i = 0; i < kSlotsPerThread; ++i)
        if (*slot_ptr(t, i) != w_[t]->slots[i]) return "slot " + std::to_string(i) + " of thread " + std::to_string(t) + " differs";
    if (std::string why = stats_problem(pool_.stats(), usage_of(all)); !why.empty()) return "stats: " + why;
    if (std::string why = pool_.check(); !why.empty()) return "check(): " + why;
    if (probe) {
      // On a thread that exits: its allocations and frees leave no page in this thread's
      // magazine (a volatile pool's; test_util.hpp, free_on_exiting_thread) to pin a region
      // when the final stats are checked.
      std::string probed;
      free_on_exiting_thread([&] { probed = probe_no_false_oom(all); });
      if (std::string why = probed; !why.empty()) return why;
      if (std::string why = pool_.check(); !why.empty()) return "check() after the probe: " + why;
    }
    return {};
  }

  // A volatile pool has nothing to reopen: the extra references are dropped instead (what a
  // reopen does to a persistent pool's).
  void reopen_all() {
    if (!reopen_if_persistent())
      for (auto& w : w_)
        for (auto& [pfn, a] : w->held)
          for (int c = a.count; c > 1; --c) pmpage::put_page(pmpage::pfn_to_page(pfn));
    for (auto& w : w_)
      for (auto& [pfn, a] : w->held) a.count = 1;  // references are volatile
  }

  void run(unsigned threads, std::uint64_t seed, std::uint64_t ops_per_thread) {
    threads_ = threads;
    seed_ = seed;
    ASSERT_LE(threads * kSlotsPerThread, root_slot_count(pool_));
    for (unsigned t = 0; t < threads; ++t) {
      auto w = std::make_unique<worker>();
      w->rng.seed(seed * 1000003 + t);
      w->slots.assign(kSlotsPerThread, 0);
      w_.push_back(std::move(w));
    }
    const std::uint64_t per_round = std::max<std::uint64_t>(1, ops_per_thread / kRounds);
    std::barrier sync(static_cast<std::ptrdiff_t>(threads + 1));
    std::vector<std::thread> ts;
    for (unsigned t = 0; t < threads; ++t)
      ts.emplace_back([&, t] {
        worker& w = *w_[t];
        std::uint64_t op = 0;
        for (unsigned round = 0; round < kRounds; ++round) {
          for (std::uint64_t i = 0; i < per_round && !stop_.load(std::memory_order_relaxed); ++i) one_op(t, w, op++);
          sync.arrive_and_wait();  // the main thread checks
          sync.arrive_and_wait();  // and lets them go on
        }
      });
    for (unsigned round = 0; round < kRounds; ++round) {
      sync.arrive_and_wait();
      if (!stop_.load()) {
        SCOPED_TRACE("PMPAGE_SCALING_SEED=" + std::to_string(seed) + ", checkpoint after round " + std::to_string(round));
        std::string why = checkpoint(/*probe=*/true);
        if (why.empty() && round == kRounds / 2) {
          reopen_all();
          why = checkpoint(false);
          if (!why.empty()) why = "after a reopen: " + why;
        }
        if (!why.empty()) {
          ADD_FAILURE() << why;
          stop_.store(true);
        }
      }
      sync.arrive_and_wait();
    }
    for (auto& th : ts) th.join();
    ASSERT_TRUE(failure_.empty()) << "PMPAGE_SCALING_SEED=" << seed << ": " << failure_;
    ASSERT_FALSE(stop_.load()) << "PMPAGE_SCALING_SEED=" << seed;

    // Every path ran.
    decltype(worker::n) sum{};
    for (auto& w : w_) {
      sum.alloc_ok += w->n.alloc_ok;
      sum.alloc_null += w->n.alloc_null;
      sum.freed += w->n.freed;
      sum.get += w->n.get;
      sum.alloc_to += w->n.alloc_to;
      sum.free_from += w->n.free_from;
      sum.handed += w->n.handed;
      sum.remote_freed += w->n.remote_freed;
    }
    const std::string summary = "alloc ok " + std::to_string(sum.alloc_ok) + ", null " + std::to_string(sum.alloc_null) +
                                "; freed " + std::to_string(sum.freed) + "; get " + std::to_string(sum.get) +
                                "; alloc_to " + std::to_string(sum.alloc_to) + "; free_from " +
                                std::to_string(sum.free_from) + "; handed " + std::to_string(sum.handed) +
                                "; remote frees " + std::to_string(sum.remote_freed);
    RecordProperty("operations", summary);
    if (ops_per_thread >= 1000) {
      EXPECT_GT(sum.alloc_ok, ops_per_thread * threads / 20) << summary;
      EXPECT_GT(sum.alloc_null, 0u) << "the pool never filled up: " << summary;
      EXPECT_GT(sum.freed, ops_per_thread * threads / 20) << summary;
      EXPECT_GT(sum.alloc_to, 0u) << summary;
      EXPECT_GT(sum.free_from, 0u) << summary;
      EXPECT_GT(sum.remote_freed, 0u) << summary;
    }

    // The persistent state: close, reopen, the same allocations, slots and data.
    SCOPED_TRACE("PMPAGE_SCALING_SEED=" + std::to_string(seed) + ", end");
    ASSERT_EQ(checkpoint(true), "");
    reopen_all();
    ASSERT_EQ(checkpoint(false), "") << "after the final reopen";

    // Free everything (remote frees: none of these pages was allocated by this thread), trim, and
    // the pool is as new. On a thread that exits: a volatile pool's magazine goes back to the
    // regions then (test_util.hpp, free_on_exiting_thread).
    free_on_exiting_thread([&] {
    for (unsigned t = 0; t < threads; ++t) {
      worker& w = *w_[t];
      for (std::size_t i = 0; i < kSlotsPerThread; ++i)
        if (w.slots[i]) {
          ASSERT_EQ(pool_.free_pages_from(slot_ptr(t, i)), 0);
          model_remove(w, w.slots[i]);
          w.slots[i] = 0;
        }
      while (!w.keys.empty()) {
        const pfn_t head = w.keys.back();
        pmpage::put_page(pmpage::pfn_to_page(head));
        model_remove(w, head);
      }
      for (const handoff& h : w.inbox) pmpage::put_page(pmpage::pfn_to_page(h.pfn));
      w.inbox.clear();
    }
    });
    ASSERT_EQ(pool_.check(), "");
    ASSERT_EQ(stats_problem(pool_.stats(), usage_of({})), "");
    pool_.trim();
    ASSERT_EQ(trimmed_problem(pool_.stats(), usage_of({})), "");
    ASSERT_EQ(pool_.check(), "");
  }
};

TEST_P(ThreadCachesModel, RandomOperationsOfAllThreadsMatchTheUnionOfTheirModels) {
  const unsigned threads = param();
  // 8 threads on a 2-core machine: oversubscribed on purpose (threads migrate between CPUs and
  // are preempted inside the allocator).
  const std::uint64_t ops = env_or("PMPAGE_SCALING_OPS", threads <= 2 ? 15000 : 4000);
  const std::uint64_t seed = env_or("PMPAGE_SCALING_SEED", 0x5ca1e000) + threads;
  RecordProperty("seed", std::to_string(seed));
  run(threads, seed, ops);
}

INSTANTIATE_TEST_SUITE_P(Threads, ThreadCachesModel, ::testing::Combine(::testing::Values(2u, 8u), kKinds),
                         [](const auto& info) { return kind_and_name(info, std::to_string(std::get<0>(info.param))); });

// ---- 2-3, 6-7: focused concurrency tests --------------------------------------------------------

class ThreadCaches : public Kinds<ScalingBase> {};

// A queue of pages from one thread to another.
struct page_queue {
  struct item {
    pfn_t pfn;
    unsigned order;
    std::uint64_t stamp;
  };
  std::mutex mu;
  std::condition_variable cv;
  std::deque<std::vector<item>> batches;
  bool closed = false;

  void push(std::vector<item> b) {
    {
      std::lock_guard<std::mutex> g(mu);
      batches.push_back(std::move(b));
    }
    cv.notify_one();
  }
  void close() {
    {
      std::lock_guard<std::mutex> g(mu);
      closed = true;
    }
    cv.notify_one();
  }
  std::size_t size() {
    std::lock_guard<std::mutex> g(mu);
    return batches.size();
  }
  // A batch if one is there (wait: until one comes or the queue is closed).
  bool pop(std::vector<item>& out, bool wait) {
    std::unique_lock<std::mutex> g(mu);
    if (wait) cv.wait(g, [&] { return !batches.empty() || closed; });
    if (batches.empty()) return false;
    out = std::move(batches.front());
    batches.pop_front();
    return true;
  }
};

TEST_P(ThreadCaches, RemoteFreesOfPagesAllocatedOnAnotherThread) {
  // Two threads on two CPUs (when there are two): each allocates batches, stamps them and sends
  // them to the other, which checks and frees them while its peer goes on allocating from the
  // same cached regions. Every 32nd page stays with its allocator until the end. A thread waits
  // (freeing what it receives) while two of its batches are still unread, so little is in flight.
  constexpr unsigned kRoundsPerThread = 150, kBatch = 48;
  page_queue q[2];
  std::vector<page_queue::item> kept[2];
  std::atomic<int> bad{0};
  std::atomic<std::uint64_t> allocated{0}, null_allocs{0}, remote_freed{0};
  auto worker = [&](unsigned me) {
    pin_this_thread(nth_cpu(me));
    std::mt19937_64 rng(0x7e307e + me);
    std::uint64_t stamp = std::uint64_t{me + 1} << 48;
    auto free_batch = [&](const std::vector<page_queue::item>& b) {
      for (const auto& it : b) {
        page* p = pmpage::pfn_to_page(it.pfn);
        if (!stamp_ok(it.pfn, it.order, it.stamp) || pmpage::page_count(p) != 1 || pmpage::compound_order(p) != it.order)
          bad.fetch_add(1);
        if (rng() & 1)
          pmpage::free_pages(p, it.order);
        else
          pmpage::put_page(pmpage::pfn_to_page(it.pfn + (rng() % (pfn_t{1} << it.order))));
        remote_freed.fetch_add(1);
      }
    };
    std::vector<page_queue::item> in;
    for (unsigned round = 0; round < kRoundsPerThread; ++round) {
      std::vector<page_queue::item> batch;
      for (unsigned i = 0; i < kBatch; ++i) {
        const unsigned order = rng() % 32 == 0 ? 4 + unsigned(rng() % 5) : rng() % 3 == 0 ? unsigned(rng() % 4) : 0u;
        page* p = pool_.alloc_pages(order);
        if (!p) {
          null_allocs.fetch_add(1);
          continue;
        }
        allocated.fetch_add(1);
        const pfn_t pfn = pmpage::page_to_pfn(p);
        write_stamp(pfn, order, ++stamp);
        if (i % 32 == 31)
          kept[me].push_back({pfn, order, stamp});
        else
          batch.push_back({pfn, order, stamp});
      }
      q[1 - me].push(std::move(batch));
      while (q[me].pop(in, false)) free_batch(in);
      while (q[1 - me].size() > 2) {
        while (q[me].pop(in, false)) free_batch(in);
        std::this_thread::yield();
      }
    }
    q[1 - me].close();
    while (q[me].pop(in, true)) free_batch(in);
  };
  std::thread a(worker, 0u), b(worker, 1u);
  a.join();
  b.join();
  EXPECT_EQ(bad.load(), 0) << "a page changed hands while in transit (stamp, count or order)";
  EXPECT_EQ(remote_freed.load() + kept[0].size() + kept[1].size(), allocated.load())
      << "every page sent was freed by the other thread";
  EXPECT_GT(remote_freed.load(), 0u);
  RecordProperty("null_allocations", static_cast<int>(null_allocs.load()));

  // Exactly the kept pages are allocated, also after a reopen.
  std::map<pfn_t, unsigned> expected;
  for (const auto& v : kept)
    for (const auto& it : v) ASSERT_TRUE(expected.emplace(it.pfn, it.order).second) << "a page was handed out twice";
  EXPECT_EQ(allocations_problem(expected), "");
  EXPECT_EQ(stats_problem(pool_.stats(), usage_of(expected)), "");
  ASSERT_EQ(pool_.check(), "");
  reopen_if_persistent();
  EXPECT_EQ(allocations_problem(expected), "") << "after reopen";
  EXPECT_EQ(stats_problem(pool_.stats(), usage_of(expected)), "") << "after reopen";
  ASSERT_EQ(pool_.check(), "") << "after reopen";

  // Each thread frees the other's kept pages (remote frees into regions loaded after the reopen).
  std::thread fa([&] {
    pin_this_thread(nth_cpu(0));
    for (const auto& it : kept[1]) {
      if (!stamp_ok(it.pfn, it.order, it.stamp)) bad.fetch_add(1);
      pmpage::free_pages(pmpage::pfn_to_page(it.pfn), it.order);
    }
  });
  std::thread fb([&] {
    pin_this_thread(nth_cpu(1));
    for (const auto& it : kept[0]) {
      if (!stamp_ok(it.pfn, it.order, it.stamp)) bad.fetch_add(1);
      pmpage::free_pages(pmpage::pfn_to_page(it.pfn), it.order);
    }
  });
  fa.join();
  fb.join();
  EXPECT_EQ(bad.load(), 0) << "a kept page's data changed";
  EXPECT_EQ(allocations_problem({}), "");
  EXPECT_EQ(stats_problem(pool_.stats(), usage_of({})), "");
  ASSERT_EQ(pool_.check(), "");
  pool_.trim();
  EXPECT_EQ(trimmed_problem(pool_.stats(), usage_of({})), "");
  reopen_if_persistent();
  EXPECT_EQ(allocations_problem({}), "") << "after the second reopen";
  EXPECT_EQ(free_pages(), total_pages_);
  EXPECT_EQ(pool_.check(), "");
}

TEST_P(ThreadCaches, TrimAfterThreadsExitDrainsEveryCacheAndMergesEveryEmptyRegion) {
  EXPECT_EQ(pool_.trim(), 0u) << "a new pool has nothing to merge";
  // Four threads allocate and free on whatever CPUs they run on, keep a few pages, and exit.
  constexpr unsigned kThreads = 4;
  std::vector<std::map<pfn_t, unsigned>> kept(kThreads);
  std::vector<std::thread> ts;
  for (unsigned t = 0; t < kThreads; ++t)
    ts.emplace_back([&, t] {
      std::mt19937 rng(4242 + t);
      std::vector<std::pair<pfn_t, unsigned>> mine;
      for (int i = 0; i < 1200; ++i) {
        const unsigned order = rng() % 4 == 0 ? unsigned(rng() % 4) : 0u;
        if (page* p = pool_.alloc_pages(order)) mine.emplace_back(pmpage::page_to_pfn(p), order);
        if (mine.size() > 64 && rng() % 2) {
          const std::size_t k = rng() % mine.size();
          pmpage::free_pages(pmpage::pfn_to_page(mine[k].first), mine[k].second);
          mine[k] = mine.back();
          mine.pop_back();
        }
      }
      // Keep a few, spread over the regions this thread used; free the rest.
      for (std::size_t k = 0; k < mine.size(); ++k)
        if (k % 97 == 0)
          kept[t].emplace(mine[k].first, mine[k].second);
        else
          pmpage::free_pages(pmpage::pfn_to_page(mine[k].first), mine[k].second);
    });
  for (auto& th : ts) th.join();

  std::map<pfn_t, unsigned> all;
  for (const auto& m : kept) all.insert(m.begin(), m.end());
  ASSERT_FALSE(all.empty());
  const usage u = usage_of(all);
  ASSERT_EQ(allocations_problem(all), "");
  ASSERT_EQ(pool_.check(), "");  // also loads every split region
  const pool_stats before = pool_.stats();
  ASSERT_EQ(stats_problem(before, u), "");
  const std::size_t merged = pool_.trim();
  const pool_stats after = pool_.stats();
  EXPECT_EQ(trimmed_problem(after, u), "");
  EXPECT_EQ(merged, before.split_regions - after.split_regions) << "trim() returns the number of regions it merged";
  EXPECT_EQ(after.descriptor_bytes, expected_descriptor_bytes(u.split_needed));
  EXPECT_EQ(pool_.trim(), 0u) << "a second trim() has nothing left to merge";
  EXPECT_EQ(trimmed_problem(pool_.stats(), u), "");
  EXPECT_EQ(allocations_problem(all), "");
  ASSERT_EQ(pool_.check(), "");

  // The last pages go (freed by this thread, not the ones that allocated them), and trim()
  // leaves a pool whose descriptors are back to the unsplit figure.
  for (const auto& [pfn, order] : all) pmpage::free_pages(pmpage::pfn_to_page(pfn), order);
  const std::uint64_t split_now = pool_.stats().split_regions;
  EXPECT_EQ(pool_.trim(), split_now) << "every split region is empty now";
  const pool_stats empty = pool_.stats();
  EXPECT_EQ(trimmed_problem(empty, usage_of({})), "");
  EXPECT_EQ(empty.split_regions, 0u);
  EXPECT_EQ(empty.materialised_regions, 0u);
  EXPECT_EQ(empty.free_regions, total_regions_);
  EXPECT_EQ(empty.descriptor_bytes, expected_descriptor_bytes(0));
  EXPECT_EQ(pool_.check(), "");
}

TEST_P(ThreadCaches, IdleCachesAndExpiredEmptyRegionsAreReleasedByTheNextLockedCall) {
  // Three pools, one sleep. In each, threads allocate and free and exit; then nobody touches the
  // pool for longer than PCP_IDLE_MS and EMPTY_SPLIT_KEEP_MS. The next call that takes the pool
  // lock must drain the idle caches and merge the expired empty regions:
  //   idle:  nothing allocated       -> stats(): no cache, no empty split region, nothing split;
  //   one:   one order-0 page left   -> stats(): no cache, no empty split region, one split region;
  //   large: nothing allocated       -> alloc_pages(9) (a large allocation) merges them: the
  //          regions the threads used are no longer split, before any stats() call.
  pmpage::pool idle = std::move(pool_);
  pmpage::pool one = make_another_pool(pool_size(), "one");
  pmpage::pool large = make_another_pool(pool_size(), "large");

  auto churn = [](pmpage::pool& p, unsigned threads, std::vector<pfn_t>& touched, pfn_t* left) {
    std::vector<std::vector<pfn_t>> got(threads);
    std::vector<std::thread> ts;
    for (unsigned t = 0; t < threads; ++t)
      ts.emplace_back([&, t] {
        pin_this_thread(nth_cpu(t));
        std::vector<page*> mine;
        for (int i = 0; i < 700; ++i)
          if (page* pg = p.alloc_pages(i % 5 == 4 ? 1u : 0u)) mine.push_back(pg);
        for (page* pg : mine) got[t].push_back(pmpage::page_to_pfn(pg));
        for (std::size_t i = (left && t == 0) ? 1 : 0; i < mine.size(); ++i) pmpage::put_page(mine[i]);
      });
    for (auto& th : ts) th.join();
    if (left) *left = got[0].front();
    for (const auto& v : got) touched.insert(touched.end(), v.begin(), v.end());
  };
  std::vector<pfn_t> touched_idle, touched_one, touched_large;
  pfn_t left = 0;
  churn(idle, 2, touched_idle, nullptr);
  churn(one, 2, touched_one, &left);
  churn(large, 2, touched_large, nullptr);
  ASSERT_NE(left, 0u);
  // A region the threads used, other than the one that keeps a page.
  bool some_split = false;
  for (pfn_t pfn : touched_large) some_split = some_split || pmpage::PageSplit(pmpage::pfn_to_page(pfn));
  RecordProperty("large_pool_split_before_sleep", some_split ? 1 : 0);

  std::this_thread::sleep_for(std::chrono::milliseconds(std::max(PCP_IDLE_MS, EMPTY_SPLIT_KEEP_MS) + 250));

  // `large`: the first call is a large allocation.
  page* huge = large.alloc_pages(9);
  ASSERT_NE(huge, nullptr);
  std::set<std::uint64_t> still_split;
  for (pfn_t pfn : touched_large)
    if (pmpage::compound_head(pmpage::pfn_to_page(pfn)) != huge && pmpage::PageSplit(pmpage::pfn_to_page(pfn)))
      still_split.insert((pfn - large.start_pfn()) / HPAGE_PMD_NR);
  EXPECT_TRUE(still_split.empty()) << still_split.size()
                                   << " region(s) emptied more than EMPTY_SPLIT_KEEP_MS ago are still split after a "
                                      "large allocation: "
                                   << describe(large.stats());
  pmpage::put_page(huge);

  const pool_stats si = idle.stats();
  EXPECT_EQ(si.cpu_cached_regions, 0u) << "an idle cache survived stats(): " << describe(si);
  EXPECT_EQ(si.cpu_cached_free_pages, 0u) << describe(si);
  EXPECT_EQ(si.empty_split_regions, 0u) << describe(si);
  EXPECT_EQ(si.split_regions, 0u) << describe(si);
  EXPECT_EQ(si.materialised_regions, 0u) << describe(si);
  EXPECT_EQ(si.free_regions, si.total_regions) << describe(si);
  EXPECT_EQ(si.descriptor_bytes, si.total_regions * 64) << describe(si);

  const pool_stats so = one.stats();
  EXPECT_EQ(so.cpu_cached_regions, 0u) << "an idle cache survived stats(): " << describe(so);
  EXPECT_EQ(so.empty_split_regions, 0u) << describe(so);
  EXPECT_EQ(so.split_regions, 1u) << describe(so);
  EXPECT_EQ(so.materialised_regions, 1u) << describe(so);
  EXPECT_EQ(so.free_pages, so.total_pages - 1) << describe(so);
  EXPECT_TRUE(pmpage::PageSplit(pmpage::pfn_to_page(left)));

  const pool_stats sl = large.stats();
  EXPECT_EQ(sl.cpu_cached_regions, 0u) << describe(sl);
  EXPECT_EQ(sl.free_pages, sl.total_pages) << describe(sl);

  EXPECT_EQ(idle.check(), "");
  EXPECT_EQ(one.check(), "");
  EXPECT_EQ(large.check(), "");
  pmpage::put_page(pmpage::pfn_to_page(left));
  one.trim();
  EXPECT_EQ(one.stats().split_regions, 0u);
  large.close();
  one.close();
  pool_ = std::move(idle);  // TearDown closes it
}

TEST_P(ThreadCaches, NoFalseOutOfMemoryWhileOtherCachesHoldThePages) {
  // A small pool filled from two threads on two CPUs, emptied from one of them: every free page
  // now sits in a region some cache holds or the hysteresis keeps. An allocation must take them:
  // an order-k allocation fails only if no free naturally aligned extent of order k exists.
  pool_.close();
  const auto path = new_path("small");
  pool_ = create_pool(path, 16 * MiB);
  path_ = path;
  const pool_stats s0 = pool_.stats();
  total_pages_ = s0.total_pages;
  total_regions_ = s0.total_regions;
  start_ = pool_.start_pfn();
  ASSERT_GE(total_regions_, 4u);

  for (int pass = 0; pass < 2; ++pass) {
    SCOPED_TRACE(pass == 0 ? "order-0 fill" : "mixed-order fill");
    // Fill from two threads at once until an order-0 allocation fails in each: an order-0
    // failure means no free page was left anywhere, so afterwards nothing is free.
    std::vector<std::pair<pfn_t, unsigned>> got[2];
    std::barrier start(2);
    auto fill = [&](unsigned me) {
      pin_this_thread(nth_cpu(me));
      std::mt19937 rng(77 + me + 10 * pass);
      start.arrive_and_wait();
      for (;;) {
        const unsigned order = pass == 0 ? 0u : (rng() % 3 == 0 ? unsigned(rng() % 10) : 0u);
        page* p = pool_.alloc_pages(order);
        if (p) {
          got[me].emplace_back(pmpage::page_to_pfn(p), order);
        } else if (order == 0) {
          break;
        }
      }
    };
    std::thread a(fill, 0u), b(fill, 1u);
    a.join();
    b.join();
    std::uint64_t pages = 0;
    for (const auto& v : got)
      for (const auto& [pfn, order] : v) pages += std::uint64_t{1} << order;
    ASSERT_EQ(pages, total_pages_) << "an order-0 allocation failed while free pages remained";
    const pool_stats full = pool_.stats();
    EXPECT_EQ(full.free_pages, 0u) << describe(full);
    EXPECT_EQ(full.cpu_cached_free_pages, 0u) << describe(full);
    ASSERT_EQ(pool_.check(), "");

    // One thread frees everything, both threads' pages.
    run_on_cpu(nth_cpu(0), [&] {
      for (const auto& v : got)
        for (const auto& [pfn, order] : v) pmpage::free_pages(pmpage::pfn_to_page(pfn), order);
    });
    ASSERT_EQ(free_pages(), total_pages_);
    ASSERT_EQ(pool_.check(), "");

    // Every region as an order-9 page, from the other thread.
    std::vector<page*> huge;
    run_on_cpu(nth_cpu(1), [&] {
      for (std::uint64_t r = 0; r < total_regions_; ++r) {
        page* p = pool_.alloc_pages(9);
        if (!p) {
          ADD_FAILURE() << "alloc_pages(9) number " << r << " of " << total_regions_
                        << " failed on an empty pool: " << describe(pool_.stats());
          return;
        }
        huge.push_back(p);
      }
      EXPECT_EQ(pool_.alloc_pages(0), nullptr) << "the pool is full";
    });
    ASSERT_EQ(huge.size(), total_regions_);
    EXPECT_EQ(free_pages(), 0u);
    ASSERT_EQ(pool_.check(), "");
    run_on_cpu(nth_cpu(0), [&] {
      for (page* p : huge) pmpage::free_pages(p, 9);
    });

    // The largest naturally aligned extent of the empty pool, from the first thread.
    unsigned kmax = HPAGE_PMD_ORDER;
    while (kmax < pmpage::MAX_PAGE_ORDER && (std::uint64_t{2} << kmax) <= total_pages_) ++kmax;
    run_on_cpu(nth_cpu(0), [&] {
      page* p = pool_.alloc_pages(kmax);
      ASSERT_NE(p, nullptr) << "alloc_pages(" << kmax << ") on an empty pool: " << describe(pool_.stats());
      pmpage::free_pages(p, kmax);
    });

    // Order-0 allocations until exhaustion, from the second thread: exactly total_pages.
    std::vector<page*> small;
    small.reserve(total_pages_);
    run_on_cpu(nth_cpu(1), [&] {
      while (page* p = pool_.alloc_pages(0)) small.push_back(p);
    });
    EXPECT_EQ(small.size(), total_pages_) << describe(pool_.stats());
    ASSERT_EQ(pool_.check(), "");
    run_on_cpu(nth_cpu(0), [&] {
      for (page* p : small) pmpage::put_page(p);
    });
    ASSERT_EQ(free_pages(), total_pages_);
    ASSERT_EQ(pool_.check(), "");
  }
}

TEST_P(ThreadCaches, OversubscribedThreadsOnANearlyFullPoolStayConsistent) {
  // 8 threads (on 2 cores: preempted inside the allocator, migrating between CPUs) churn a small
  // pool that is nearly always full, so allocations keep reaching into other caches and kept
  // regions; a shared exchange makes a third of the frees remote.
  pool_.close();
  const auto path = new_path("small");
  pool_ = create_pool(path, 16 * MiB);
  path_ = path;
  const pool_stats s0 = pool_.stats();
  total_pages_ = s0.total_pages;
  total_regions_ = s0.total_regions;
  start_ = pool_.start_pfn();

  constexpr unsigned kThreads = 8, kOps = 2500;
  struct held {
    pfn_t pfn;
    unsigned order;
    std::uint64_t stamp;
  };
  std::vector<std::vector<held>> mine(kThreads);
  std::mutex exchange_mu;
  std::vector<held> exchange;
  std::atomic<std::uint64_t> allocs{0}, frees{0}, nulls{0}, bad{0};
  std::vector<std::thread> ts;
  for (unsigned t = 0; t < kThreads; ++t)
    ts.emplace_back([&, t] {
      std::mt19937_64 rng(0x0c0ffee + t);
      std::uint64_t stamp = std::uint64_t{t + 1} << 48;
      auto release = [&](const held& h) {
        page* p = pmpage::pfn_to_page(h.pfn);
        if (!stamp_ok(h.pfn, h.order, h.stamp) || pmpage::page_count(p) != 1) bad.fetch_add(1);
        pmpage::free_pages(p, h.order);
        frees.fetch_add(1);
      };
      for (unsigned i = 0; i < kOps; ++i) {
        const unsigned r = unsigned(rng() % 100);
        if (r < 50) {
          const unsigned order = rng() % 10 == 0 ? unsigned(rng() % 10) : unsigned(rng() % 3);
          page* p = pool_.alloc_pages(order);
          if (!p) {
            nulls.fetch_add(1);
            continue;
          }
          allocs.fetch_add(1);
          const pfn_t pfn = pmpage::page_to_pfn(p);
          write_stamp(pfn, order, ++stamp);
          mine[t].push_back({pfn, order, stamp});
        } else if (r < 80) {
          if (mine[t].empty()) continue;
          const std::size_t k = rng() % mine[t].size();
          const held h = mine[t][k];
          mine[t][k] = mine[t].back();
          mine[t].pop_back();
          if (rng() % 2) {
            release(h);
          } else {
            std::lock_guard<std::mutex> g(exchange_mu);
            exchange.push_back(h);
          }
        } else if (r < 97) {
          std::optional<held> h;
          {
            std::lock_guard<std::mutex> g(exchange_mu);
            if (!exchange.empty()) {
              h = exchange.back();
              exchange.pop_back();
            }
          }
          if (h) release(*h);
        } else {
          std::this_thread::yield();
        }
      }
    });
  for (auto& th : ts) th.join();
  EXPECT_EQ(bad.load(), 0u) << "a page was handed to two owners at once";
  EXPECT_GT(nulls.load(), 0u) << "the pool never filled up";

  std::map<pfn_t, unsigned> all;
  for (const auto& v : mine)
    for (const held& h : v) ASSERT_TRUE(all.emplace(h.pfn, h.order).second) << "a page is held twice";
  for (const held& h : exchange) ASSERT_TRUE(all.emplace(h.pfn, h.order).second) << "a page is held twice";
  EXPECT_EQ(allocs.load() - frees.load(), all.size()) << "allocations minus frees";
  EXPECT_EQ(allocations_problem(all), "");
  EXPECT_EQ(stats_problem(pool_.stats(), usage_of(all)), "");
  ASSERT_EQ(pool_.check(), "");
  EXPECT_EQ(probe_no_false_oom(all), "");

  for (const auto& [pfn, order] : all) pmpage::free_pages(pmpage::pfn_to_page(pfn), order);
  EXPECT_EQ(stats_problem(pool_.stats(), usage_of({})), "");
  ASSERT_EQ(pool_.check(), "");
  pool_.trim();
  EXPECT_EQ(trimmed_problem(pool_.stats(), usage_of({})), "");
  EXPECT_EQ(pool_.check(), "");
}

// Issue #18, defect 6: two threads on two CPUs allocate and free pages of one order in a pool
// whose free extents all fit in one cache: the region (order < 9) or the free blocks (orders 9
// and 10: per-CPU stashes) passed between the two CPUs' caches, and a thread that found nothing
// drained every cache and looked once more, by which time the other CPU had taken them back:
// 0.3-1 % of alloc_pages returned nullptr with most of the pool free. Each thread holds at most
// `limit` pages (it reserves its place before it allocates), so a free extent of the order always
// exists: every allocation must succeed, however the threads interleave (nothing here depends on
// timing to pass). With remote frees, a thread frees the other thread's pages.
struct ping_pong_case {
  unsigned order;
  unsigned limit;    // pages of that order each thread holds at most
  unsigned regions;  // of the pool
  bool remote;       // free the other thread's pages instead of one's own
};

class ThreadCachesNoRoom : public KindsAnd<ScalingBase, ping_pong_case> {};

TEST_P(ThreadCachesNoRoom, AllocationNeverFailsWhileAFreeExtentOfItsOrderExists) {
  const ping_pong_case pc = param();
  pool_.close();
  // The smallest pool with pc.regions regions (a persistent pool's metadata takes part of its first 2 MiB).
  std::uint64_t size = pc.regions * 2 * MiB;
  if (!is_volatile_kind()) size = std::max(size, pmpage::MIN_POOL_SIZE);
  for (;; size += 2 * MiB) {
    std::filesystem::remove(path_);
    pool_ = make_pool(size, nullptr);
    if (pool_.stats().total_regions >= pc.regions) break;
    pool_.close();
  }
  ASSERT_EQ(pool_.stats().total_regions, pc.regions);
  const std::uint64_t total_pages = pool_.stats().total_pages;
  ASSERT_LT(std::uint64_t{2 * pc.limit} << pc.order, total_pages) << "the case must leave an extent free";

  const unsigned ops = unsigned(env_or("PMPAGE_NO_ROOM_OPS", 100000));  // per thread
  std::mutex held_mu;
  std::vector<page*> held[2];  // by the thread that allocated them
  std::atomic<unsigned> nr_held[2] = {0, 0};
  std::atomic<std::uint64_t> allocs{0}, nulls{0};
  std::barrier start(2);
  auto worker = [&](unsigned me) {
    pin_this_thread(nth_cpu(me));
    std::mt19937 rng(0x6006 + me);
    const unsigned from = pc.remote ? 1 - me : me;  // whose pages this thread frees
    start.arrive_and_wait();
    for (unsigned i = 0; i < ops; ++i) {
      if (rng() % 2) {
        if (nr_held[me].load() >= pc.limit) continue;  // only this thread adds to it
        nr_held[me].fetch_add(1);
        page* p = pool_.alloc_pages(pc.order);
        if (!p) {
          nulls.fetch_add(1, std::memory_order_relaxed);
          nr_held[me].fetch_sub(1);
          continue;
        }
        allocs.fetch_add(1, std::memory_order_relaxed);
        std::lock_guard g(held_mu);
        held[me].push_back(p);
      } else {
        page* p = nullptr;
        {
          std::lock_guard g(held_mu);
          std::vector<page*>& v = held[from];
          if (v.empty()) continue;
          const std::size_t k = rng() % v.size();
          p = v[k];
          v[k] = v.back();
          v.pop_back();
        }
        pmpage::free_pages(p, pc.order);
        nr_held[from].fetch_sub(1);
      }
    }
  };
  std::thread a(worker, 0u), b(worker, 1u);
  a.join();
  b.join();
  for (const auto& v : held)
    for (page* p : v) pmpage::free_pages(p, pc.order);
  EXPECT_EQ(nulls.load(), 0u) << "alloc_pages(" << pc.order << ") returned nullptr " << nulls.load() << " times (of "
                              << allocs.load() + nulls.load() << ") while each thread held at most " << pc.limit
                              << " pages of that order, in a pool of " << total_pages << " pages";
  EXPECT_GT(allocs.load(), 0u);
  EXPECT_EQ(pool_.stats().free_pages, total_pages);
  EXPECT_EQ(pool_.check(), "");
}

INSTANTIATE_TEST_SUITE_P(
    , ThreadCachesNoRoom,
    ::testing::Combine(::testing::Values(ping_pong_case{0, 96, 1, false}, ping_pong_case{0, 96, 1, true},
                                         ping_pong_case{3, 12, 1, false}, ping_pong_case{9, 2, 5, true},
                                         ping_pong_case{10, 2, 10, true}),
                       kKinds),
    [](const ::testing::TestParamInfo<std::tuple<ping_pong_case, pool_kind>>& info) {
      const ping_pong_case pc = std::get<0>(info.param);
      return kind_and_name(info, "Order" + std::to_string(pc.order) + "Hold" + std::to_string(pc.limit) + "Of" +
                                     std::to_string(pc.regions) + "Regions" + (pc.remote ? "RemoteFrees" : ""));
    });

// Issue #18, defect 9: stats() sampled while other threads allocate and free remotely used to add
// per-CPU counters read at different moments: free_pages exceeded total_pages (total - free
// wrapped) and cpu_cached_free_pages exceeded free_pages. Every figure now comes from one
// snapshot under the allocator's locks, so the bounds pool.hpp documents hold in every sample.
TEST_P(ThreadCaches, StatsSampledWhileThreadsAllocateAndFreeRemotelyStayWithinTheirTotals) {
  pool_.close();
  std::filesystem::remove(path_);
  pool_ = make_pool(16 * MiB, nullptr);
  const pool_stats s0 = pool_.stats();
  std::mutex held_mu;
  std::vector<std::pair<page*, unsigned>> held;  // either thread frees any of them: half the frees are remote
  std::atomic<bool> stop{false};
  std::barrier start(3);
  auto worker = [&](unsigned me) {
    pin_this_thread(nth_cpu(me));
    std::mt19937 rng(0x57a75 + me);
    start.arrive_and_wait();
    while (!stop.load(std::memory_order_relaxed)) {
      std::pair<page*, unsigned> victim{nullptr, 0};
      {
        std::lock_guard g(held_mu);
        if (!held.empty() && (held.size() > 400 || rng() % 2)) {
          const std::size_t k = rng() % held.size();
          victim = held[k];
          held[k] = held.back();
          held.pop_back();
        }
      }
      if (victim.first) {
        pmpage::free_pages(victim.first, victim.second);
        continue;
      }
      const unsigned order = rng() % 50 == 0 ? 9u : rng() % 4 == 0 ? 1 + unsigned(rng() % 3) : 0u;
      if (page* p = pool_.alloc_pages(order)) {
        std::lock_guard g(held_mu);
        held.emplace_back(p, order);
      }
    }
  };
  std::thread a(worker, 0u), b(worker, 1u);
  start.arrive_and_wait();
  const unsigned samples = unsigned(env_or("PMPAGE_STATS_SAMPLES", 3000));
  std::string first_problem;
  unsigned problems = 0;
  for (unsigned i = 0; i < samples; ++i) {
    const pool_stats s = pool_.stats();
    std::ostringstream o;
    if (s.total_pages != s0.total_pages || s.total_regions != s0.total_regions)
      o << "totals changed";
    else if (s.free_pages > s.total_pages)
      o << "free_pages > total_pages";
    else if (s.cpu_cached_free_pages > s.free_pages)
      o << "cpu_cached_free_pages > free_pages";
    else if (s.cpu_cached_free_pages > s.cpu_cached_regions * HPAGE_PMD_NR)
      o << "cpu_cached_free_pages > 512 x cpu_cached_regions";
    else if (s.free_regions * HPAGE_PMD_NR + s.cpu_cached_free_pages > s.free_pages)
      o << "512 x free_regions + cpu_cached_free_pages > free_pages";
    else if (s.free_regions + s.split_regions > s.total_regions)
      o << "free_regions + split_regions > total_regions";
    else if (s.cpu_cached_regions > s.split_regions || s.empty_split_regions > s.split_regions ||
             s.materialised_regions > s.split_regions)
      o << "cpu_cached, empty or materialised regions > split_regions";
    else if (s.descriptor_bytes != s.total_regions * 64 + s.materialised_regions * 32768)
      o << "descriptor_bytes disagrees with materialised_regions";
    else
      continue;
    if (problems++ == 0) first_problem = o.str() + " " + describe(s);
  }
  stop.store(true);
  a.join();
  b.join();
  EXPECT_EQ(problems, 0u) << "of " << samples << " samples; the first: " << first_problem;
  for (const auto& [p, order] : held) pmpage::free_pages(p, order);
  EXPECT_EQ(pool_.stats().free_pages, s0.total_pages);
  EXPECT_EQ(pool_.check(), "");
}

// ---- 4. merge hysteresis (one thread, pinned to one CPU so it uses one cache) -------------------

class ScalingHysteresis : public Kinds<ScalingBase> {
 protected:
  std::shared_ptr<pmpage::persistence> backend() override { return counter_; }
  std::shared_ptr<pmpage::counting_persistence> counter_ =
      std::make_shared<pmpage::counting_persistence>(pmpage::make_libpmem_persistence());
};

TEST_P(ScalingHysteresis, FreeingTheLastPageOfARegionKeepsItSplitUntilTrim) {
  run_on_cpu(nth_cpu(0), [&] {
    page* p = pool_.alloc_pages(0);
    ASSERT_NE(p, nullptr);
    pmpage::put_page(p);
    const pool_stats s = pool_.stats();
    EXPECT_EQ(s.free_pages, total_pages_);
    EXPECT_EQ(s.split_regions, 1u) << "the emptied region was merged at once: " << describe(s);
    EXPECT_EQ(s.materialised_regions, 1u) << describe(s);
    EXPECT_GE(s.empty_split_regions + s.cpu_cached_regions, 1u) << "an empty split region is kept or cached: " << describe(s);
    EXPECT_TRUE(pmpage::PageSplit(p));
    EXPECT_EQ(stats_problem(s, usage_of({})), "");
    EXPECT_EQ(pool_.check(), "");

    counter_->reset();
    EXPECT_EQ(pool_.trim(), 1u);
    EXPECT_EQ(counter_->fences(), per_kind(1)) << "trim() costs one fence when it merges (none: volatile)";
    EXPECT_FALSE(pmpage::PageSplit(p));
    EXPECT_EQ(trimmed_problem(pool_.stats(), usage_of({})), "");
    EXPECT_EQ(pool_.stats().descriptor_bytes, expected_descriptor_bytes(0));
    counter_->reset();
    EXPECT_EQ(pool_.trim(), 0u);
    EXPECT_EQ(counter_->fences(), 0u) << "a trim() with nothing to merge costs no fence";
    EXPECT_EQ(pool_.check(), "");
  });
}

TEST_P(ScalingHysteresis, RepeatedAllocAndFreeInOneRegionKeepsItsDescriptorsAndCostsOneFenceEach) {
  run_on_cpu(nth_cpu(0), [&] {
    page* p = pool_.alloc_pages(0);
    ASSERT_NE(p, nullptr);
    pmpage::put_page(p);
    const pool_stats s1 = pool_.stats();
    ASSERT_EQ(s1.materialised_regions, 1u) << describe(s1);
    constexpr int kCycles = 300;
    counter_->reset();
    std::set<std::uint64_t> regions;
    for (int i = 0; i < kCycles; ++i) {
      const unsigned order = static_cast<unsigned>(i % 4);
      page* q = pool_.alloc_pages(order);
      ASSERT_NE(q, nullptr);
      regions.insert(index_of(q) / HPAGE_PMD_NR);
      pmpage::free_pages(q, order);
    }
    EXPECT_EQ(counter_->fences(), per_kind(2u * kCycles)) << "one fence per alloc and one per free: no split or merge in between";
    const pool_stats s2 = pool_.stats();
    EXPECT_EQ(s2.materialised_regions, s1.materialised_regions) << describe(s2);
    EXPECT_EQ(s2.split_regions, s1.split_regions) << describe(s2);
    EXPECT_EQ(regions.size(), 1u) << "one CPU's cache served every allocation from its region";
    EXPECT_EQ(stats_problem(s2, usage_of({})), "");
    EXPECT_EQ(pool_.check(), "");
  });
}

TEST_P(ScalingHysteresis, AtMostEmptySplitKeptEmptyRegionsAreKeptAndTheOldestMergeFirst) {
  // 24 regions each hold one order-0 page (fill them, free all but one page of each); then the
  // last pages go, in a random order. Each free empties a region: at most EMPTY_SPLIT_KEPT of
  // them stay split (plus what the cache holds), and those are the most recently emptied.
  constexpr std::uint64_t kRegions = 24;
  static_assert(kRegions > EMPTY_SPLIT_KEPT);
  ASSERT_GE(total_regions_, kRegions);
  run_on_cpu(nth_cpu(0), [&] {
    std::vector<page*> pages;
    pages.reserve(kRegions * HPAGE_PMD_NR);
    for (std::uint64_t i = 0; i < kRegions * HPAGE_PMD_NR; ++i) {
      page* p = pool_.alloc_pages(0);
      ASSERT_NE(p, nullptr);
      pages.push_back(p);
    }
    std::map<std::uint64_t, page*> last_of_region;  // region -> the page it keeps
    for (page* p : pages) {
      const std::uint64_t r = index_of(p) / HPAGE_PMD_NR;
      if (!last_of_region.emplace(r, p).second) pmpage::put_page(p);
    }
    ASSERT_GE(last_of_region.size(), std::uint64_t{EMPTY_SPLIT_KEPT} + 1);
    std::map<pfn_t, unsigned> kept;
    for (const auto& [r, p] : last_of_region) kept.emplace(pmpage::page_to_pfn(p), 0);
    EXPECT_EQ(stats_problem(pool_.stats(), usage_of(kept)), "");

    std::vector<std::uint64_t> order;
    for (const auto& [r, p] : last_of_region) order.push_back(r);
    std::shuffle(order.begin(), order.end(), std::mt19937(2024));
    // On a thread of this CPU that exits: a volatile pool's magazine goes back to the regions in
    // the order the pages were freed (test_util.hpp, free_on_exiting_thread).
    run_on_cpu(nth_cpu(0), [&] {
      for (std::uint64_t r : order) pmpage::put_page(last_of_region[r]);
    });

    const pool_stats s = pool_.stats();
    EXPECT_EQ(stats_problem(s, usage_of({})), "");
    EXPECT_LE(s.empty_split_regions, EMPTY_SPLIT_KEPT) << describe(s);
    EXPECT_LE(s.split_regions, EMPTY_SPLIT_KEPT + s.cpu_cached_regions) << describe(s);
    EXPECT_LE(s.materialised_regions, EMPTY_SPLIT_KEPT + s.cpu_cached_regions) << describe(s);
    // PageSplit tells which regions are still split: the oldest-emptied ones must have merged
    // first. Only a region a cache holds may be kept out of that order.
    std::uint64_t still_split = 0, kept_out_of_order = 0;
    for (std::size_t i = 0; i < order.size(); ++i) {
      const bool split = pmpage::PageSplit(last_of_region[order[i]]);
      still_split += split;
      if (split && i + EMPTY_SPLIT_KEPT < order.size()) ++kept_out_of_order;
    }
    EXPECT_LE(kept_out_of_order, s.cpu_cached_regions)
        << "a region emptied before the last EMPTY_SPLIT_KEPT is still split: " << describe(s);
    EXPECT_GE(still_split, 1u) << "nothing was kept: " << describe(s);
    std::uint64_t split_anywhere = 0;
    for (std::uint64_t r = 0; r < total_regions_; ++r) split_anywhere += pmpage::PageSplit(page_at(r * HPAGE_PMD_NR));
    EXPECT_EQ(split_anywhere, s.materialised_regions) << describe(s);
    EXPECT_EQ(pool_.check(), "");

    const std::uint64_t split_before = s.split_regions;
    EXPECT_EQ(pool_.trim(), split_before);
    EXPECT_EQ(trimmed_problem(pool_.stats(), usage_of({})), "");
    for (const auto& [r, p] : last_of_region) EXPECT_FALSE(pmpage::PageSplit(p)) << "region " << r;
    EXPECT_EQ(pool_.check(), "");
  });
}

}  // namespace

// ---- regressions found by review ------------------------------------------------------------------

namespace {

class ScalingRegressions : public Kinds<ScalingBase> {};

// alloc_pages_bulk used to stop at the first empty refill while another CPU's cache held free pages.
TEST_P(ScalingRegressions, BulkAllocationTakesPagesOtherCachesHold) {
  std::vector<page*> got(total_pages_);
  page* held = nullptr;
  std::thread a([&] {
    pin_this_thread(nth_cpu(0));
    held = pool_.alloc_pages(0);  // CPU 0's cache now holds a region with 511 free pages
  });
  a.join();
  ASSERT_NE(held, nullptr);
  std::size_t n = 0;
  std::thread b([&] {
    pin_this_thread(nth_cpu(1));
    n = pool_.alloc_pages_bulk(0, total_pages_, got.data());
  });
  b.join();
  EXPECT_EQ(n, total_pages_ - 1) << "a short count while free pages sat in another CPU's cache";
  EXPECT_EQ(pool_.stats().free_pages, 0u);
  for (std::size_t i = 0; i < n; ++i) pmpage::put_page(got[i]);
  pmpage::put_page(held);
  EXPECT_EQ(pool_.check(), "");
}

// for_each_allocated may run concurrently (api.md): it used to report the tails of a page being
// freed as separate order-0 allocations.
TEST_P(ScalingRegressions, ConcurrentWalkSeesOnlyWholeAllocations) {
  std::atomic<bool> stop{false};
  std::vector<std::thread> churn;
  for (int t = 0; t < 2; ++t)
    churn.emplace_back([&] {
      while (!stop.load()) {
        page* p = pool_.alloc_pages(3);
        if (p) pmpage::free_pages(p, 3);
      }
    });
  std::uint64_t walked = 0, wrong = 0;
  for (int i = 0; i < 200; ++i)
    pool_.for_each_allocated([&](page*, unsigned order) {
      ++walked;
      wrong += order != 3;
    });
  stop.store(true);
  for (auto& t : churn) t.join();
  EXPECT_EQ(wrong, 0u) << "of " << walked << " walked allocations";
  EXPECT_EQ(pool_.check(), "");
}

INSTANTIATE_TEST_SUITE_P(, ThreadCaches, kKinds, kind_name);
INSTANTIATE_TEST_SUITE_P(, ScalingHysteresis, kKinds, kind_name);
INSTANTIATE_TEST_SUITE_P(, ScalingRegressions, kKinds, kind_name);

}  // namespace

// fork() while other threads allocate: the child may walk the pool and load regions (api.md); it
// used to hang on a lock a parent thread held at the fork. Not in the TSan run (fork with threads).
TEST_P(Scaling, ForkWhileAllocatingLeavesTheChildAbleToWalkAndLoad) {
  // Some allocations, then reopen: their regions are lazy (loaded on first touch).
  std::vector<pfn_t> kept;
  for (int i = 0; i < 64; ++i) kept.push_back(pmpage::page_to_pfn(pool_.alloc_pages(i % 4)));
  reopen_if_persistent();
  std::atomic<bool> stop{false};
  std::vector<std::thread> churn;
  for (int t = 0; t < 2; ++t)
    churn.emplace_back([&] {
      while (!stop.load()) {
        page* p = pool_.alloc_pages(0);
        if (p) pmpage::put_page(p);
        pool_.stats();
      }
    });
  int hung = 0, failed = 0;
  for (int i = 0; i < 20; ++i) {
    const pid_t pid = ::fork();
    if (pid == 0) {
      ::alarm(5);  // a hang kills the child
      std::uint64_t n = 0;
      pool_.for_each_allocated([&](page*, unsigned) { ++n; });
      page* p = pmpage::pfn_to_page(kept[std::size_t(i) % kept.size()]);
      pmpage::get_page(p);
      pmpage::put_page(p);
      (void)pool_.stats();
      ::_exit(n >= kept.size() ? 0 : 3);
    }
    ASSERT_GT(pid, 0);
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    if (WIFSIGNALED(status)) ++hung;
    else if (WEXITSTATUS(status) != 0) ++failed;
  }
  stop.store(true);
  for (auto& t : churn) t.join();
  EXPECT_EQ(hung, 0) << "children killed by their 5 s alarm (a lock held across fork)";
  EXPECT_EQ(failed, 0);
  for (pfn_t pfn : kept) pmpage::put_page(pmpage::pfn_to_page(pfn));
  EXPECT_EQ(pool_.check(), "");
}

INSTANTIATE_TEST_SUITE_P(, Scaling, kKinds, kind_name);
