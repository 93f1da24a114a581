// bench/bench_threads.cpp — thread scaling (items_per_second is the aggregate rate over wall time)
// and the other measures of issue #8 that need several threads.
//
//   threads/persist/floor              each thread: store + pmem_persist of its own line (1, 2)
//   threads/order0_pair/pmpage         each thread: alloc_pages(0) + free_pages of its own page in
//                                      the shared pool (1, 2, 4, 8 threads; the machine has 2 CPUs)
//   threads/order0_pair/pmpage_volatile  the same on bench::volatile_pool() (issue #12; 1, 2 threads)
//   threads/order9_pair/pmpage         the same with order 9 (a whole region; 1, 2 threads)
//   threads/order10_pair/pmpage        the same with order 10 (two regions; 1, 2 threads)
//   threads/order0_to_pair/pmpage      each thread: alloc_pages_to(0, slot) + free_pages_from(slot),
//                                      its slot a root word on a cache line of its own (1, 2)
//   threads/remote_free/pmpage         2 threads: each allocates kBatch pages, hands them to the
//                                      other through a single-producer/single-consumer ring and
//                                      frees what the other handed it; items = pages allocated
//                                      and then freed by the other thread
//   threads/local_batch/pmpage         2 threads: the same batches freed by their own thread
//                                      (separates the cost of batching from that of remoteness)
//   threads/remote_handoff/floor       2 threads: the ring alone, passing dummy pointers (its cost
//                                      per page, to set against the ~500 ns of a pair)
//   threads/frag_random_50pct/pmpage   2 threads keep random sets of 4 KiB pages at 50 % occupancy
//                                      of a scratch pool; counters split_regions, live_pages,
//                                      min_regions, cpu_cached_regions, ratio
//   threads/getput/pmpage              each thread: get_page + put_page on its own 64 split 4 KiB pages
//   threads/getput/atomic              each thread: the bare atomic pair on its own 64 counters (floor)
#include <libpmem.h>

#include <atomic>
#include <cstdio>
#include <optional>
#include <thread>
#include <vector>

#include "adaptive_mutex.hpp"
#include "common.hpp"

namespace bench {
namespace {

constexpr std::size_t kPages = 64;
constexpr int kMaxThreads = 2;

pmpage::page* g_pin = nullptr;
std::vector<pmpage::page*> g_pages[kMaxThreads];
bool g_setup_ok = false;

void setup_on(pmpage::pool& (*get_pool)()) {
  g_setup_ok = false;
  try {
    auto& pool = get_pool();
    g_pin = pool.alloc_pages(0);
    if (!g_pin) return;
    for (auto& v : g_pages) {
      v.clear();
      for (std::size_t i = 0; i < kPages; ++i) {
        pmpage::page* p = pool.alloc_pages(0);
        if (!p) return;
        v.push_back(p);
      }
    }
    g_setup_ok = true;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "pmpage_bench: thread setup: %s\n", e.what());
  }
}

void setup(const benchmark::State&) { setup_on(pmpage_pool); }
void volatile_setup(const benchmark::State&) { setup_on(volatile_pool); }

void teardown(const benchmark::State&) {
  for (auto& v : g_pages) {
    for (auto* p : v) pmpage::free_pages(p, 0);
    v.clear();
  }
  if (g_pin) pmpage::free_pages(g_pin, 0);
  g_pin = nullptr;
}

void bm_pair(benchmark::State& state, unsigned order, bool vol) {
  if (!g_setup_ok) return fail(state, "setup failed");
  auto& pool = vol ? volatile_pool() : pmpage_pool();  // already open: Setup created it
  for (auto _ : state) {
    pmpage::page* p = pool.alloc_pages(order);
    if (!p) return fail(state, "alloc_pages(" + std::to_string(order) + ") failed");
    pmpage::free_pages(p, order);
  }
  state.SetItemsProcessed(state.iterations());
}

// ---- alloc_pages_to / free_pages_from -------------------------------------------------------------
// Each thread's slot is a root word on a cache line of its own, away from the words bench_alloc.cpp
// uses (0 and 64), so the threads share no line but the allocator's.
constexpr std::size_t kSlotWord = 1024;  // byte 8192 of the root area (64 KiB)

pmpage::pfn_t* thread_slot(pmpage::pool& pool, int thread) {
  return static_cast<pmpage::pfn_t*>(pool.root()) + kSlotWord + 8 * std::size_t(thread);
}

/// Empties the slots (a run that failed half-way may have left a page in one).
bool clear_slots() {
  auto& pool = pmpage_pool();
  if (pool.root_size() < (kSlotWord + 8 * kMaxThreads) * sizeof(pmpage::pfn_t)) return false;
  bool ok = true;
  for (int t = 0; t < kMaxThreads; ++t) ok &= pool.free_pages_from(thread_slot(pool, t)) == 0;
  return ok;
}

void to_setup(const benchmark::State& state) {
  setup(state);
  if (g_setup_ok) g_setup_ok = clear_slots();
}

void to_teardown(const benchmark::State& state) {
  clear_slots();
  teardown(state);
}

void bm_to_pair(benchmark::State& state) {
  if (!g_setup_ok) return fail(state, "setup failed");
  auto& pool = pmpage_pool();
  pmpage::pfn_t* slot = thread_slot(pool, state.thread_index());
  for (auto _ : state) {
    if (!pool.alloc_pages_to(0, slot)) return fail(state, "alloc_pages_to failed");
    if (pool.free_pages_from(slot) != 0) return fail(state, "free_pages_from failed");
  }
  state.SetItemsProcessed(state.iterations());
  if (*slot != 0) fail(state, "slot not cleared by free_pages_from");
}

// ---- remote free ----------------------------------------------------------------------------------
// Two threads, each allocating batches of kBatch pages and handing them to the other, which frees
// them: every page counted was freed by a thread other than the one that allocated it, and both
// threads allocate and free all the time. A thread pushes its batch, then frees whatever the other
// pushed. items = pages freed by the other thread (each one alloc + free, like a local pair).
//
// The handoff is a bounded single-producer/single-consumer ring per direction: a batch costs the
// producer kBatch plain stores and one release store, the consumer one acquire load and one
// release store, and a few cache lines move between the CPUs per batch — a few ns per page
// (threads/remote_handoff/floor measures it) against ~500 ns per alloc+free pair.
//
// A thread whose ring is full waits for the other to drain it, draining its own ring meanwhile
// (so two full rings cannot deadlock). Ending: both threads get the same number of iterations but
// a busy machine runs them unevenly, and after one has finished, the other could only free its own
// pages (a local pair, not a remote one). So the run ends for both when the first finishes: the
// other skips its remaining iterations (counter tail_iterations, summed over both threads), and
// the batch it may hold then is freed by itself and not counted (counter local_frees). Pages still
// in the rings at the end are freed after the loop, and the pool's free page count must then be
// what it was before the run (a leak or a double free fails the benchmark).
constexpr std::size_t kBatch = 16;

struct alignas(64) spsc_ring {
  static constexpr std::uint64_t kCap = 2048;  // power of two, a multiple of kBatch
  alignas(64) std::atomic<std::uint64_t> head{0};  // written by the producer
  std::uint64_t tail_seen = 0;                     // the producer's copy of tail
  alignas(64) std::atomic<std::uint64_t> tail{0};  // written by the consumer
  alignas(64) pmpage::page* slot[kCap] = {};

  void reset() {
    head.store(0, std::memory_order_relaxed);
    tail.store(0, std::memory_order_relaxed);
    tail_seen = 0;
  }
  /// Producer: all n or nothing.
  bool try_push(pmpage::page* const* p, std::size_t n) {
    const std::uint64_t h = head.load(std::memory_order_relaxed);
    if (h + n - tail_seen > kCap) {
      tail_seen = tail.load(std::memory_order_acquire);  // the consumer is done with those slots
      if (h + n - tail_seen > kCap) return false;
    }
    for (std::size_t i = 0; i < n; ++i) slot[(h + i) & (kCap - 1)] = p[i];
    head.store(h + n, std::memory_order_release);
    return true;
  }
  /// Consumer: calls f on everything pushed so far; returns how many.
  template <class F>
  std::uint64_t drain(F&& f) {
    const std::uint64_t t = tail.load(std::memory_order_relaxed);
    const std::uint64_t h = head.load(std::memory_order_acquire);
    for (std::uint64_t i = t; i != h; ++i) f(slot[i & (kCap - 1)]);
    if (h != t) tail.store(h, std::memory_order_release);
    return h - t;
  }
};
static_assert(spsc_ring::kCap % kBatch == 0);

spsc_ring g_rings[kMaxThreads];  // g_rings[i]: pushed by thread i, drained by thread 1 - i
struct alignas(64) padded_flag {
  std::atomic<bool> v{false};
};
padded_flag g_done[kMaxThreads];  // thread i has stopped: last iteration done, or failed
bool g_rings_hold_pages = false;  // false for the floor, whose rings carry dummy pointers
std::uint64_t g_free_before = 0;  // the pool's free pages when the threads start

void rings_reset() {
  for (auto& r : g_rings) r.reset();
  for (auto& d : g_done) d.v.store(false);
}

void remote_setup(const benchmark::State& state) {
  rings_reset();
  g_rings_hold_pages = true;
  setup(state);  // the pin keeps a region split, as for the local pair
  if (g_setup_ok) g_free_before = pmpage_pool().stats().free_pages;
}

void drain_rings_freeing() {
  for (auto& r : g_rings) r.drain([](pmpage::page* p) { pmpage::free_pages(p, 0); });
}

void remote_teardown(const benchmark::State& state) {
  if (g_rings_hold_pages) drain_rings_freeing();  // when a thread failed before its own check
  rings_reset();
  g_rings_hold_pages = false;
  teardown(state);
}

void handoff_setup(const benchmark::State&) {
  rings_reset();
  g_rings_hold_pages = false;
}

void handoff_teardown(const benchmark::State&) { rings_reset(); }

enum class handoff { remote, local, floor };

template <handoff H>
void bm_remote(benchmark::State& state) {
  if (state.threads() != 2) return fail(state, "runs with exactly 2 threads");
  const int me = state.thread_index();
  const int peer = 1 - me;
  // Whatever way this thread leaves, the other must not wait for it any more.
  struct done_on_exit {
    int t;
    ~done_on_exit() { g_done[t].v.store(true, std::memory_order_release); }
  } guard{me};
  pmpage::pool* pool = nullptr;
  if constexpr (H != handoff::floor) {
    if (!g_setup_ok) return fail(state, "setup failed");
    pool = &pmpage_pool();
  }
  spsc_ring& out = g_rings[me];
  spsc_ring& in = g_rings[peer];
  auto drain_in = [&] {
    if constexpr (H == handoff::floor)
      return in.drain([](pmpage::page* p) { keep(p); });
    else
      return in.drain([](pmpage::page* p) { pmpage::free_pages(p, 0); });
  };
  auto peer_done = [&] { return g_done[peer].v.load(std::memory_order_acquire); };

  pmpage::page* batch[kBatch];
  std::uint64_t pages = 0, local_frees = 0, tail_iterations = 0, it = 0, spins = 0;
  const auto last = std::uint64_t(state.max_iterations);
  bool stopped = false;
  for (auto _ : state) {
    const bool last_one = ++it == last;
    if (H != handoff::local && (stopped || (stopped = peer_done()))) {
      ++tail_iterations;
      continue;
    }
    for (std::size_t i = 0; i < kBatch; ++i) {
      if constexpr (H == handoff::floor) {
        batch[i] = reinterpret_cast<pmpage::page*>(std::uintptr_t(64) * (it * kBatch + i + 1));
      } else {
        batch[i] = pool->alloc_pages(0);
        if (!batch[i]) {
          for (std::size_t j = 0; j < i; ++j) pmpage::free_pages(batch[j], 0);
          return fail(state, "alloc_pages(0) failed");
        }
      }
    }
    if constexpr (H == handoff::local) {
      for (auto* p : batch) pmpage::free_pages(p, 0);
      pages += kBatch;
    } else {
      while (!out.try_push(batch, kBatch)) {
        pages += drain_in();
        if (peer_done()) {  // nobody drains `out` any more
          if constexpr (H != handoff::floor)
            for (auto* p : batch) pmpage::free_pages(p, 0);
          local_frees += kBatch;
          break;
        }
        // On a shared machine both threads may be on one CPU: spinning out the time slice would
        // stall the very thread that drains `out`, so give the CPU up after a short spin.
        if (++spins % 64 == 0)
          std::this_thread::yield();
        else
          __builtin_ia32_pause();
      }
      pages += drain_in();
    }
    if (last_one) g_done[me].v.store(true, std::memory_order_release);
  }
  state.SetItemsProcessed(pages);
  if constexpr (H != handoff::floor) {
    // Past the loop both threads have passed the stop barrier (or left): thread 0 frees what is
    // still in flight (pushed after the other's last drain) and checks that no page leaked.
    if (me == 0) {
      drain_rings_freeing();
      const std::uint64_t now = pool->stats().free_pages;
      if (now != g_free_before)
        return fail(state, "free pages " + std::to_string(now) + " after the run, " + std::to_string(g_free_before) +
                               " before: pages leaked or freed twice");
    }
  }
  if (H != handoff::local) {
    state.counters["tail_iterations"] = double(tail_iterations);
    state.counters["local_frees"] = double(local_frees);
  }
}

// ---- fragmentation with two threads ------------------------------------------------------------
// Occupancy: the benchmark has a scratch pool of its own (1 GiB; 64 MiB in smoke mode), which no
// other work touches, and each of the 2 threads keeps total_pages / 4 live 4 KiB pages, so live
// pages are 50 % of the pool's data pages. Each thread first allocates its share, then 4 x its
// share times frees a random one of its own live pages and allocates a replacement (4 x live
// steps in all, as frag/random_50pct/pmpage does on one thread). Once both threads have stopped,
// thread 0 reads stats(): the target is
// split_regions <= 1.25 x ceil(live / 512) + cpu_cached_regions, reported as
// ratio = (split_regions - cpu_cached_regions) / min_regions (<= 1.25). Pages are freed in
// Teardown, so the snapshot is the steady state.
std::optional<pmpage::pool> g_frag_pool;
std::filesystem::path g_frag_path;
std::vector<pmpage::page*> g_frag_live[kMaxThreads];
std::uint64_t g_frag_share = 0;

void frag_setup(const benchmark::State&) {
  try {
    g_frag_path = scratch_path("frag-threads.pool");
    pmpage::pool::options o;
    o.size = cfg().smoke ? (std::uint64_t{64} << 20) : (std::uint64_t{1} << 30);
    o.overwrite = true;
    g_frag_pool.emplace(pmpage::pool::create(g_frag_path, o));
    g_frag_share = g_frag_pool->stats().total_pages / 4;
    for (auto& v : g_frag_live) {
      v.clear();
      v.reserve(g_frag_share);
    }
  } catch (const std::exception& e) {
    g_frag_pool.reset();
    std::fprintf(stderr, "pmpage_bench: fragmentation setup: %s\n", e.what());
  }
}

void frag_teardown(const benchmark::State&) {
  for (auto& v : g_frag_live) {
    for (auto* p : v) pmpage::free_pages(p, 0);
    v.clear();
  }
  if (g_frag_pool) g_frag_pool->close();
  g_frag_pool.reset();
  if (!g_frag_path.empty()) remove_scratch(g_frag_path);
}

void bm_frag(benchmark::State& state) {
  if (!g_frag_pool) return fail(state, "setup failed");
  auto& pool = *g_frag_pool;
  const int me = state.thread_index();
  auto& live = g_frag_live[me];
  rng r(1234 + std::uint64_t(me));
  std::uint64_t steps = 0;
  for (auto _ : state) {
    while (live.size() < g_frag_share) {
      pmpage::page* p = pool.alloc_pages(0);
      if (!p) return fail(state, "alloc_pages(0) failed while filling");
      live.push_back(p);
    }
    for (std::uint64_t i = 0; i < 4 * g_frag_share; ++i, ++steps) {
      const std::size_t k = r.below(live.size());
      pmpage::free_pages(live[k], 0);
      pmpage::page* p = pool.alloc_pages(0);
      if (!p) return fail(state, "alloc_pages(0) failed during churn");
      live[k] = p;
    }
  }
  state.SetItemsProcessed(steps);
  // Past the loop every thread has passed Google Benchmark's stop barrier: both have finished
  // churning and nobody frees before Teardown. Counters of all threads are summed, so only
  // thread 0 reports them.
  if (me != 0) return;
  const auto st = pool.stats();
  std::uint64_t live_pages = 0;
  for (auto& v : g_frag_live) live_pages += v.size();
  const std::uint64_t min_regions = (live_pages + pmpage::HPAGE_PMD_NR - 1) / pmpage::HPAGE_PMD_NR;
  state.counters["live_pages"] = double(live_pages);
  state.counters["total_pages"] = double(st.total_pages);
  state.counters["split_regions"] = double(st.split_regions);
  state.counters["min_regions"] = double(min_regions);
  state.counters["cpu_cached_regions"] = double(st.cpu_cached_regions);
  state.counters["empty_split_regions"] = double(st.empty_split_regions);
  state.counters["ratio"] = (double(st.split_regions) - double(st.cpu_cached_regions)) / double(min_regions);
}

// ---- get/put and the floors -----------------------------------------------------------------------

void bm_getput(benchmark::State& state) {
  if (!g_setup_ok) return fail(state, "setup failed");
  pmpage::page* const* pg = g_pages[state.thread_index() % kMaxThreads].data();
  for (auto _ : state) {
    for (std::size_t i = 0; i < kPages; ++i) {
      pmpage::get_page(pg[i]);
      pmpage::put_page(pg[i]);
    }
  }
  state.SetItemsProcessed(state.iterations() * kPages);
}

struct alignas(64) padded_atomic {
  std::atomic<int> v{1};
};
padded_atomic g_atomics[kMaxThreads][kPages];

[[gnu::noinline]] void atomic_slow(std::atomic<int>& v) { v.store(1); }

void bm_atomic(benchmark::State& state) {
  padded_atomic* pa = g_atomics[state.thread_index() % kMaxThreads];
  for (auto _ : state) {
    for (std::size_t i = 0; i < kPages; ++i) {
      pa[i].v.fetch_add(1, std::memory_order_relaxed);
      if (pa[i].v.fetch_sub(1, std::memory_order_acq_rel) == 1) atomic_slow(pa[i].v);
    }
  }
  state.SetItemsProcessed(state.iterations() * kPages);
}

// One pmem_persist of a private line per operation: how far durable work itself scales on this
// machine (the ceiling for alloc/free, which is two of these per pair plus DRAM work).
char* g_persist_lines = nullptr;  // two 4 KiB pages of the pool's data area (one per thread)
pmpage::page* g_persist_page = nullptr;

void bm_persist(benchmark::State& state) {
  if (!g_persist_lines) return fail(state, "setup failed");
  char* line = g_persist_lines + std::size_t(state.thread_index()) * 4096;
  int i = 0;
  for (auto _ : state) {
    line[0] = char(++i);
    pmem_persist(line, 64);
  }
  state.SetItemsProcessed(state.iterations());
}

// Per run, like the others: the pool may be re-created between benchmarks.
void persist_setup(const benchmark::State&) {
  g_persist_page = pmpage_pool().alloc_pages(1);
  g_persist_lines = g_persist_page ? static_cast<char*>(pmpage::page_address(g_persist_page)) : nullptr;
}

void persist_teardown(const benchmark::State&) {
  if (g_persist_page) pmpage::free_pages(g_persist_page, 1);
  g_persist_page = nullptr;
  g_persist_lines = nullptr;
}

}  // namespace

// ---- the allocator's lock, private vs shared between processes (robust) ------------------------
// An uncontended lock + unlock pair, the price every allocator critical section pays: what making
// the pool's locks process-shared and robust (for pools several processes open) would add.
template <pmpage::detail::adaptive_mutex::sharing S>
void bm_lock_pair(benchmark::State& state) {
  pmpage::detail::adaptive_mutex m(S);
  for (auto _ : state) {
    m.lock();
    benchmark::ClobberMemory();
    m.unlock();
  }
  state.SetItemsProcessed(state.iterations());
}

void register_threads() {
  using sharing = pmpage::detail::adaptive_mutex::sharing;
  benchmark::RegisterBenchmark("locks/adaptive_mutex/private", bm_lock_pair<sharing::process_private>);
  benchmark::RegisterBenchmark("locks/adaptive_mutex/shared_robust", bm_lock_pair<sharing::process_shared>);
  benchmark::RegisterBenchmark("threads/persist/floor", bm_persist)
      ->Setup(persist_setup)->Teardown(persist_teardown)->Threads(1)->Threads(2)->UseRealTime();
  // 4 and 8 threads on a 2-CPU machine: more threads than CPUs, as a server has; a lock holder
  // preempted while others spin shows here.
  benchmark::RegisterBenchmark("threads/order0_pair/pmpage", bm_pair, 0u, false)
      ->Setup(setup)->Teardown(teardown)->Threads(1)->Threads(2)->Threads(4)->Threads(8)->UseRealTime();
  // Volatile pools (issue #12): the same loop, each thread its own pages, on the volatile pool.
  benchmark::RegisterBenchmark("threads/order0_pair/pmpage_volatile", bm_pair, 0u, true)
      ->Setup(volatile_setup)->Teardown(teardown)->Threads(1)->Threads(2)->UseRealTime();
  benchmark::RegisterBenchmark("threads/order9_pair/pmpage", bm_pair, 9u, false)
      ->Setup(setup)->Teardown(teardown)->Threads(1)->Threads(2)->UseRealTime();
  benchmark::RegisterBenchmark("threads/order10_pair/pmpage", bm_pair, 10u, false)
      ->Setup(setup)->Teardown(teardown)->Threads(1)->Threads(2)->UseRealTime();
  benchmark::RegisterBenchmark("threads/order0_to_pair/pmpage", bm_to_pair)
      ->Setup(to_setup)->Teardown(to_teardown)->Threads(1)->Threads(2)->UseRealTime();
  benchmark::RegisterBenchmark("threads/remote_free/pmpage", bm_remote<handoff::remote>)
      ->Setup(remote_setup)->Teardown(remote_teardown)->Threads(2)->UseRealTime();
  benchmark::RegisterBenchmark("threads/local_batch/pmpage", bm_remote<handoff::local>)
      ->Setup(remote_setup)->Teardown(remote_teardown)->Threads(2)->UseRealTime();
  benchmark::RegisterBenchmark("threads/remote_handoff/floor", bm_remote<handoff::floor>)
      ->Setup(handoff_setup)->Teardown(handoff_teardown)->Threads(2)->UseRealTime();
  benchmark::RegisterBenchmark("threads/frag_random_50pct/pmpage", bm_frag)
      ->Setup(frag_setup)->Teardown(frag_teardown)->Threads(2)->Iterations(1)->Repetitions(1)
      ->UseRealTime()->Unit(benchmark::kMillisecond);
  benchmark::RegisterBenchmark("threads/getput/pmpage", bm_getput)
      ->Setup(setup)->Teardown(teardown)->Threads(1)->Threads(2)->UseRealTime();
  benchmark::RegisterBenchmark("threads/getput/atomic", bm_atomic)->Threads(1)->Threads(2)->UseRealTime();
}

}  // namespace bench
