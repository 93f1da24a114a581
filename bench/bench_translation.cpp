// bench/bench_translation.cpp — translation and references: pmpage against the flat memmap model
// (the kernel's SPARSEMEM_VMEMMAP) and against a bare atomic.
//
//   translate/<fn>/{pmpage,flat}    1024 random pfns (or their pages/addresses) per iteration
//   refs/<kind>/pmpage              get_page + put_page on 64 pages of one kind, round robin:
//        head          heads of unsplit order-9 pages (state in the region descriptor)
//        split4k       order-0 pages of a split region (state in the 4 KiB descriptor)
//        tail_unsplit  tails of unsplit order-9 pages (head found by arithmetic)
//        tail_split    tails of order-2 pages inside a split region (compound_head pointer)
//        tail_multi    tails in the second region of order-10 pages (PG_region_tail)
//   refs/<kind>/flat                the kernel's get_page/put_page on the flat model
//   refs/atomic/floor               fetch_add + fetch_sub-and-test on 64 padded atomics
#include <atomic>
#include <vector>

#include "common.hpp"
#include "flat_model.hpp"

namespace bench {
namespace {

constexpr std::size_t kTranslate = 1024;  // inputs per iteration
constexpr std::size_t kRefs = 64;         // pages per set
// The flat model covers at most the first 4 GiB of the pool (64 MiB of memmap), so a large
// /dev/dax device does not cost 64 B per page of DRAM here; translation inputs come from that range.
constexpr std::uint64_t kFlatMaxPages = std::uint64_t{1} << 20;

std::uint64_t modelled_pages(pmpage::pool& pool) {
  const std::uint64_t n = pool.end_pfn() - pool.start_pfn();
  return n < kFlatMaxPages ? n : kFlatMaxPages;
}

/// The flat model of the workload pool: same pfns, same data mapping.
flat::model& flat_for(pmpage::pool& pool) {
  static flat::model m;
  static pmpage::pfn_t start = 0;
  static void* data = nullptr;
  const pmpage::pfn_t s = pool.start_pfn();
  void* d = pmpage::page_address(pmpage::pfn_to_page(s));
  const std::uint64_t n = modelled_pages(pool);
  if (m.nr_pages() != n || start != s || data != d) {
    if (!m.allocate(n)) throw std::runtime_error("flat model: mmap failed");
    m.init(s, d);
    start = s;
    data = d;
  }
  m.publish();  // open/flat_init/* may have pointed the globals at its own (released) model
  return m;
}

std::vector<pmpage::pfn_t> random_pfns(pmpage::pool& pool) {
  rng r(42);
  std::vector<pmpage::pfn_t> v(kTranslate);
  const std::uint64_t n = modelled_pages(pool);
  for (auto& x : v) x = pool.start_pfn() + r.below(n);
  return v;
}

// ---- translation ---------------------------------------------------------------------------------

enum class fn { pfn_to_page, page_to_pfn, page_address, virt_to_page };

template <fn F>
void bm_translate_pmpage(benchmark::State& state) {
  guarded(state, [&] {
    auto& pool = pmpage_pool();
    const auto pfns = random_pfns(pool);
    std::vector<pmpage::page*> pages;
    std::vector<const void*> addrs;
    rng r(7);
    for (auto pfn : pfns) {
      pages.push_back(pmpage::pfn_to_page(pfn));
      addrs.push_back(static_cast<const char*>(pmpage::page_address(pages.back())) + r.below(4096));
    }
    for (auto _ : state) {
      for (std::size_t i = 0; i < kTranslate; ++i) {
        if constexpr (F == fn::pfn_to_page) keep(pmpage::pfn_to_page(pfns[i]));
        if constexpr (F == fn::page_to_pfn) keep(pmpage::page_to_pfn(pages[i]));
        if constexpr (F == fn::page_address) keep(pmpage::page_address(pages[i]));
        if constexpr (F == fn::virt_to_page) keep(pmpage::virt_to_page(addrs[i]));
      }
    }
    state.SetItemsProcessed(state.iterations() * kTranslate);
    // Spot check: the two models agree on what they translate.
    if (pmpage::page_to_pfn(pmpage::virt_to_page(addrs[0])) != pfns[0]) fail(state, "translation mismatch");
  });
}

template <fn F>
void bm_translate_flat(benchmark::State& state) {
  guarded(state, [&] {
    auto& pool = pmpage_pool();
    flat_for(pool);
    const auto pfns = random_pfns(pool);
    std::vector<flat::page*> pages;
    std::vector<const void*> addrs;
    rng r(7);
    for (auto pfn : pfns) {
      pages.push_back(flat::pfn_to_page(pfn));
      addrs.push_back(static_cast<const char*>(flat::page_address(pages.back())) + r.below(4096));
    }
    for (auto _ : state) {
      for (std::size_t i = 0; i < kTranslate; ++i) {
        if constexpr (F == fn::pfn_to_page) keep(flat::pfn_to_page(pfns[i]));
        if constexpr (F == fn::page_to_pfn) keep(flat::page_to_pfn(pages[i]));
        if constexpr (F == fn::page_address) keep(flat::page_address(pages[i]));
        if constexpr (F == fn::virt_to_page) keep(flat::virt_to_page(addrs[i]));
      }
    }
    state.SetItemsProcessed(state.iterations() * kTranslate);
    if (flat::page_address(flat::pfn_to_page(pfns[0])) != pmpage::page_address(pmpage::pfn_to_page(pfns[0])))
      fail(state, "flat model maps a different address");
  });
}

// ---- references -----------------------------------------------------------------------------------

enum class kind { head, split4k, tail_unsplit, tail_split, tail_multi };

/// Allocates what a set needs; returns the 64 pages to get/put and the allocations to free.
struct ref_set {
  std::vector<pmpage::page*> pages;
  std::vector<std::pair<pmpage::page*, unsigned>> allocs;
  void release() {
    for (auto& [p, o] : allocs) pmpage::free_pages(p, o);
    allocs.clear();
  }
};

ref_set make_set(pmpage::pool& pool, kind k) {
  ref_set s;
  auto alloc = [&](unsigned order) {
    pmpage::page* p = pool.alloc_pages(order);
    if (!p) {
      s.release();
      throw std::runtime_error("alloc_pages(" + std::to_string(order) + ") failed");
    }
    s.allocs.emplace_back(p, order);
    return p;
  };
  for (std::size_t i = 0; i < kRefs; ++i) {
    switch (k) {
      case kind::head:
        s.pages.push_back(alloc(9));
        break;
      case kind::split4k:
        s.pages.push_back(alloc(0));
        break;
      case kind::tail_unsplit:
        s.pages.push_back(alloc(9) + 1 + (i * 7) % 511);
        break;
      case kind::tail_split:
        s.pages.push_back(alloc(2) + 1 + i % 3);
        break;
      case kind::tail_multi:
        // 8 order-10 pages, 8 tails each, all in the second region (PG_region_tail).
        if (i % 8 == 0) alloc(10);
        s.pages.push_back(s.allocs.back().first + 512 + (i % 8) * 61);
        break;
    }
  }
  return s;
}

template <kind K>
void bm_refs_pmpage(benchmark::State& state) {
  guarded(state, [&] {
    auto& pool = pmpage_pool();
    ref_set s = make_set(pool, K);
    pmpage::page* const* pg = s.pages.data();
    for (auto _ : state) {
      for (std::size_t i = 0; i < kRefs; ++i) {
        pmpage::get_page(pg[i]);
        pmpage::put_page(pg[i]);
      }
    }
    state.SetItemsProcessed(state.iterations() * kRefs);
    bool ok = true;
    for (auto* p : s.pages) ok &= pmpage::page_count(p) == 1;
    bool split = pmpage::PageSplit(s.pages[0]);
    s.release();
    state.counters["split"] = split;
    if (!ok) fail(state, "page_count != 1 after get/put");
  });
}

template <kind K>
void bm_refs_flat(benchmark::State& state) {
  guarded(state, [&] {
    auto& pool = pmpage_pool();
    auto& m = flat_for(pool);
    // The same pages, described by the flat model with the kernel's compound layout.
    ref_set s = make_set(pool, K);
    // The same page shapes at the same pfns (folded into the modelled range on a big device:
    // kFlatMaxPages is a multiple of every compound size, so alignment is kept).
    const pmpage::pfn_t base = pool.start_pfn();
    auto fold = [&](pmpage::pfn_t pfn) { return base + (pfn - base) % m.nr_pages(); };
    std::vector<flat::page*> pages;
    for (auto& [p, o] : s.allocs) {
      const auto pfn = fold(pmpage::page_to_pfn(p));
      if (o == 0)
        m.make_order0(pfn);
      else
        m.make_compound(pfn, o);
    }
    for (auto* p : s.pages) pages.push_back(flat::pfn_to_page(fold(pmpage::page_to_pfn(p))));
    flat::page* const* pg = pages.data();
    for (auto _ : state) {
      for (std::size_t i = 0; i < kRefs; ++i) {
        flat::get_page(pg[i]);
        flat::put_page(pg[i]);
      }
    }
    state.SetItemsProcessed(state.iterations() * kRefs);
    for (auto& [p, o] : s.allocs) {  // back to the state init() leaves
      const auto pfn = fold(pmpage::page_to_pfn(p));
      for (std::uint64_t i = 0; i < (std::uint64_t{1} << o); ++i) m.make_order0(pfn + i);
    }
    s.release();
  });
}

struct alignas(64) padded_atomic {
  std::atomic<int> v{1};
};

[[gnu::noinline]] void atomic_slow(std::atomic<int>& v) { v.store(1); }

void bm_refs_atomic(benchmark::State& state) {
  std::vector<padded_atomic> a(kRefs);
  padded_atomic* pa = a.data();
  for (auto _ : state) {
    for (std::size_t i = 0; i < kRefs; ++i) {
      pa[i].v.fetch_add(1, std::memory_order_relaxed);
      if (pa[i].v.fetch_sub(1, std::memory_order_acq_rel) == 1) atomic_slow(pa[i].v);
    }
  }
  state.SetItemsProcessed(state.iterations() * kRefs);
}

}  // namespace

void register_translation() {
  benchmark::RegisterBenchmark("translate/pfn_to_page/pmpage", bm_translate_pmpage<fn::pfn_to_page>);
  benchmark::RegisterBenchmark("translate/pfn_to_page/flat", bm_translate_flat<fn::pfn_to_page>);
  benchmark::RegisterBenchmark("translate/page_to_pfn/pmpage", bm_translate_pmpage<fn::page_to_pfn>);
  benchmark::RegisterBenchmark("translate/page_to_pfn/flat", bm_translate_flat<fn::page_to_pfn>);
  benchmark::RegisterBenchmark("translate/page_address/pmpage", bm_translate_pmpage<fn::page_address>);
  benchmark::RegisterBenchmark("translate/page_address/flat", bm_translate_flat<fn::page_address>);
  benchmark::RegisterBenchmark("translate/virt_to_page/pmpage", bm_translate_pmpage<fn::virt_to_page>);
  benchmark::RegisterBenchmark("translate/virt_to_page/flat", bm_translate_flat<fn::virt_to_page>);

  benchmark::RegisterBenchmark("refs/atomic/floor", bm_refs_atomic);
  benchmark::RegisterBenchmark("refs/head/pmpage", bm_refs_pmpage<kind::head>);
  benchmark::RegisterBenchmark("refs/head/flat", bm_refs_flat<kind::head>);
  benchmark::RegisterBenchmark("refs/split4k/pmpage", bm_refs_pmpage<kind::split4k>);
  benchmark::RegisterBenchmark("refs/split4k/flat", bm_refs_flat<kind::split4k>);
  benchmark::RegisterBenchmark("refs/tail_unsplit/pmpage", bm_refs_pmpage<kind::tail_unsplit>);
  benchmark::RegisterBenchmark("refs/tail_unsplit/flat", bm_refs_flat<kind::tail_unsplit>);
  benchmark::RegisterBenchmark("refs/tail_split/pmpage", bm_refs_pmpage<kind::tail_split>);
  benchmark::RegisterBenchmark("refs/tail_split/flat", bm_refs_flat<kind::tail_split>);
  benchmark::RegisterBenchmark("refs/tail_multi/pmpage", bm_refs_pmpage<kind::tail_multi>);
  benchmark::RegisterBenchmark("refs/tail_multi/flat", bm_refs_flat<kind::tail_multi>);
}

}  // namespace bench
