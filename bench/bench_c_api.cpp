// bench/bench_c_api.cpp — the C API's inline hot paths (<pmpage/pmpage.h>, compiled as C in
// c_api_loops.c) against the C++ API's (<pmpage/mm.hpp>, the twin loops below), on the same
// inputs: the C header must cost what the C++ one does (issue #11: <= 1.1x).
//
//   capi/<fn>/c     the loop over the C inline functions
//   capi/<fn>/cxx   the same loop over the C++ inline functions
//   fn: pfn_to_page, page_to_pfn, page_address, virt_to_page (1024 random inputs per iteration),
//       get_put (get_page + put_page), page_dirty (PageDirty), on 1024 pages: order-0 pages of split
//       regions and heads and tails of unsplit order-9 pages, interleaved.
#include <vector>

#include "c_api_loops.h"
#include "common.hpp"
#include "cxx_api_loops.hpp"

namespace bench {
namespace {

constexpr std::size_t kN = 1024;

/// The inputs: random pfns, their pages and addresses; and a set of allocated pages.
struct inputs {
  std::vector<pmpage::pfn_t> pfns;
  std::vector<pmpage::page*> pages;
  std::vector<const void*> addrs;
  std::vector<pmpage::page*> refs;  // allocated: get/put and flags
  std::vector<std::pair<pmpage::page*, unsigned>> allocs;
  ~inputs() {
    for (auto& [p, o] : allocs) pmpage::free_pages(p, o);
  }
};

void make_inputs(pmpage::pool& pool, inputs& in) {
  rng r(42);
  const std::uint64_t n = pool.end_pfn() - pool.start_pfn();
  for (std::size_t i = 0; i < kN; ++i) {
    in.pfns.push_back(pool.start_pfn() + r.below(n));
    in.pages.push_back(pmpage::pfn_to_page(in.pfns.back()));
    in.addrs.push_back(static_cast<const char*>(pmpage::page_address(in.pages.back())) + r.below(4096));
  }
  // Half order-0 pages (split regions), half heads and tails of unsplit order-9 pages.
  std::vector<pmpage::page*> small, huge;
  for (std::size_t i = 0; i < kN / 2; ++i) {
    pmpage::page* p = pool.alloc_pages(0);
    if (!p) throw std::runtime_error("alloc_pages(0) failed");
    in.allocs.emplace_back(p, 0);
    small.push_back(p);
  }
  for (std::size_t i = 0; i < 4; ++i) {
    pmpage::page* p = pool.alloc_pages(9);
    if (!p) throw std::runtime_error("alloc_pages(9) failed");
    in.allocs.emplace_back(p, 9);
    const pmpage::pfn_t head = pmpage::page_to_pfn(p);
    for (std::size_t j = 0; j < kN / 8; ++j) huge.push_back(pmpage::pfn_to_page(head + r.below(512)));
  }
  for (std::size_t i = 0; i < kN / 2; ++i) {
    in.refs.push_back(small[i]);
    in.refs.push_back(huge[i]);
  }
}

enum class fn { pfn_to_page, page_to_pfn, page_address, virt_to_page, get_put, page_dirty };

template <fn F, bool C>
void bm_capi(benchmark::State& state) {
  guarded(state, [&] {
    auto& pool = pmpage_pool();
    inputs in;
    make_inputs(pool, in);
    auto* cpages = reinterpret_cast<struct pmpage_page* const*>(in.pages.data());
    auto* crefs = reinterpret_cast<struct pmpage_page* const*>(in.refs.data());
    std::uintptr_t acc = 0;
    for (auto _ : state) {
      if constexpr (F == fn::pfn_to_page) acc += C ? c_loop_pfn_to_page(in.pfns.data(), kN) : cxx_loop_pfn_to_page(in.pfns.data(), kN);
      if constexpr (F == fn::page_to_pfn) acc += C ? c_loop_page_to_pfn(cpages, kN) : cxx_loop_page_to_pfn(in.pages.data(), kN);
      if constexpr (F == fn::page_address) acc += C ? c_loop_page_address(cpages, kN) : cxx_loop_page_address(in.pages.data(), kN);
      if constexpr (F == fn::virt_to_page) acc += C ? c_loop_virt_to_page(in.addrs.data(), kN) : cxx_loop_virt_to_page(in.addrs.data(), kN);
      if constexpr (F == fn::get_put) acc += C ? c_loop_get_put(crefs, kN) : cxx_loop_get_put(in.refs.data(), kN);
      if constexpr (F == fn::page_dirty) acc += C ? c_loop_page_dirty(crefs, kN) : cxx_loop_page_dirty(in.refs.data(), kN);
    }
    keep(acc);
    state.SetItemsProcessed(state.iterations() * kN);
    // The two headers agree on what they compute.
    if (c_loop_pfn_to_page(in.pfns.data(), kN) != cxx_loop_pfn_to_page(in.pfns.data(), kN) ||
        c_loop_virt_to_page(in.addrs.data(), kN) != cxx_loop_virt_to_page(in.addrs.data(), kN) ||
        c_loop_page_address(cpages, kN) != cxx_loop_page_address(in.pages.data(), kN))
      fail(state, "the C and C++ inline functions disagree");
  });
}

template <fn F>
void reg(const char* name) {
  benchmark::RegisterBenchmark((std::string("capi/") + name + "/c").c_str(), bm_capi<F, true>);
  benchmark::RegisterBenchmark((std::string("capi/") + name + "/cxx").c_str(), bm_capi<F, false>);
}

}  // namespace

void register_c_api() {
  reg<fn::pfn_to_page>("pfn_to_page");
  reg<fn::page_to_pfn>("page_to_pfn");
  reg<fn::page_address>("page_address");
  reg<fn::virt_to_page>("virt_to_page");
  reg<fn::get_put>("get_put");
  reg<fn::page_dirty>("page_dirty");
}

}  // namespace bench
