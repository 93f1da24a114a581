// bench/bench_threads.cpp — scaling from 1 to 2 threads (items_per_second is the aggregate rate).
//
//   threads/order0_pair/pmpage   each thread: alloc_pages(0) + free_pages in the shared pool
//   threads/getput/pmpage        each thread: get_page + put_page on its own 64 split 4 KiB pages
//   threads/getput/atomic        each thread: the bare atomic pair on its own 64 counters (floor)
#include <libpmem.h>

#include <atomic>
#include <cstdio>
#include <vector>

#include "common.hpp"

namespace bench {
namespace {

constexpr std::size_t kPages = 64;
constexpr int kMaxThreads = 2;

pmpage::page* g_pin = nullptr;
std::vector<pmpage::page*> g_pages[kMaxThreads];
bool g_setup_ok = false;

void setup(const benchmark::State&) {
  g_setup_ok = false;
  try {
    auto& pool = pmpage_pool();
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

void teardown(const benchmark::State&) {
  for (auto& v : g_pages) {
    for (auto* p : v) pmpage::free_pages(p, 0);
    v.clear();
  }
  if (g_pin) pmpage::free_pages(g_pin, 0);
  g_pin = nullptr;
}

void bm_pair(benchmark::State& state) {
  if (!g_setup_ok) return fail(state, "setup failed");
  auto& pool = pmpage_pool();  // already open: Setup created it
  for (auto _ : state) {
    pmpage::page* p = pool.alloc_pages(0);
    if (!p) return fail(state, "alloc_pages(0) failed");
    pmpage::free_pages(p, 0);
  }
  state.SetItemsProcessed(state.iterations());
}

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

void register_threads() {
  benchmark::RegisterBenchmark("threads/persist/floor", bm_persist)
      ->Setup(persist_setup)->Teardown(persist_teardown)->Threads(1)->Threads(2)->UseRealTime();
  benchmark::RegisterBenchmark("threads/order0_pair/pmpage", bm_pair)
      ->Setup(setup)->Teardown(teardown)->Threads(1)->Threads(2)->UseRealTime();
  benchmark::RegisterBenchmark("threads/getput/pmpage", bm_getput)
      ->Setup(setup)->Teardown(teardown)->Threads(1)->Threads(2)->UseRealTime();
  benchmark::RegisterBenchmark("threads/getput/atomic", bm_atomic)->Threads(1)->Threads(2)->UseRealTime();
}

}  // namespace bench
