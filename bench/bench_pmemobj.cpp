// bench/bench_pmemobj.cpp — the PMDK libpmemobj baselines, on the same device as pmpage.
//
// Every allocation stores its handle in pmem (the root object), as an engine would: the atomic
// API (pmemobj_alloc / pmemobj_xalloc / pmemobj_free on a PMEMoid in the pool) makes the
// allocation and the handle durable together, which is what pmpage's alloc_pages/free_pages pair
// is compared with.
//
//   alloc/order0_pair/pmemobj_default    pmemobj_alloc(4096) + pmemobj_free, default classes
//   alloc/order0_pair/pmemobj_class4k    the same from a 4 KiB-unit, 4 KiB-aligned, header-less class
//   alloc/order9_pair/pmemobj_default2m  pmemobj_alloc(2 MiB) + pmemobj_free, default (huge) class
//   alloc/order9_pair/pmemobj_class2m    the same from a 2 MiB-unit, 2 MiB-aligned, header-less class
//   bulk/alloc64_publish/pmemobj_class4k 64 x pmemobj_xreserve + 64 handle stores, one publish
//   bulk/alloc64_single/pmemobj_class4k  64 x pmemobj_xalloc into 64 handles (allocation time only)
//   fences/<order>/pmemobj_<class>       fences per pmemobj_xalloc / pmemobj_free (handle in pmem),
//                                        counted by interposing pmem_drain (fence_count.cpp)
#include <vector>

#include "common.hpp"
#include "fence_count.hpp"

namespace bench {
namespace {

constexpr std::size_t kBatch = 64;

enum class variant { default_cls, page_cls };

/// pmemobj_xalloc flags selecting the variant's allocation class; false if the class is missing.
template <class Pool>
bool class_flags(const Pool& o, std::size_t size, variant v, std::uint64_t& flags) {
  if (v != variant::page_cls) return true;
  if (!(size == 4096 ? o.have_4k : o.have_2m)) return false;
  flags = POBJ_CLASS_ID(size == 4096 ? o.class_4k : o.class_2m);
  return true;
}

void bm_pair(benchmark::State& state, std::size_t size, variant v) {
  guarded(state, [&] {
    auto& o = pmemobj_pool();
    std::uint64_t flags = 0;
    if (!class_flags(o, size, v, flags)) return fail(state, "libpmemobj refused the aligned allocation class");
    PMEMoid* h = &o.root->oid;
    for (auto _ : state) {
      if (pmemobj_xalloc(o.pop, h, size, 0, flags, nullptr, nullptr) != 0)
        return fail(state, std::string("pmemobj_xalloc: ") + pmemobj_errormsg());
      pmemobj_free(h);
    }
    state.SetItemsProcessed(state.iterations());
  });
}

void bm_batch(benchmark::State& state, bool publish) {
  guarded(state, [&] {
    auto& o = pmemobj_pool();
    if (!o.have_4k) return fail(state, "libpmemobj refused the 4 KiB allocation class");
    const std::uint64_t flags = POBJ_CLASS_ID(o.class_4k);
    std::vector<pobj_action> acts(2 * kBatch);
    PMEMoid* h = o.root->oids;
    for (std::size_t i = 0; i < kBatch; ++i) {  // handles point into this pool
      h[i].pool_uuid_lo = o.uuid_lo;
      h[i].off = 0;
    }
    pmemobj_persist(o.pop, h, sizeof(PMEMoid) * kBatch);
    for (auto _ : state) {
      const double t0 = now_s();
      if (publish) {
        for (std::size_t i = 0; i < kBatch; ++i) {
          PMEMoid oid = pmemobj_xreserve(o.pop, &acts[i], 4096, 0, flags);
          if (OID_IS_NULL(oid)) return fail(state, std::string("pmemobj_xreserve: ") + pmemobj_errormsg());
          pmemobj_set_value(o.pop, &acts[kBatch + i], &h[i].off, oid.off);
        }
        if (pmemobj_publish(o.pop, acts.data(), 2 * kBatch) != 0)
          return fail(state, std::string("pmemobj_publish: ") + pmemobj_errormsg());
      } else {
        for (std::size_t i = 0; i < kBatch; ++i)
          if (pmemobj_xalloc(o.pop, &h[i], 4096, 0, flags, nullptr, nullptr) != 0)
            return fail(state, std::string("pmemobj_xalloc: ") + pmemobj_errormsg());
      }
      const double t1 = now_s();
      state.SetIterationTime(t1 - t0);
      for (std::size_t i = 0; i < kBatch; ++i) {
        if (h[i].off == 0) return fail(state, "handle not stored");
        pmemobj_free(&h[i]);
        h[i].pool_uuid_lo = o.uuid_lo;
      }
    }
    state.SetItemsProcessed(state.iterations() * kBatch);
  });
}

void bm_fences(benchmark::State& state, std::size_t size, variant v) {
  guarded(state, [&] {
    auto& o = pmemobj_pool();
    std::uint64_t flags = 0;
    if (!class_flags(o, size, v, flags)) return fail(state, "libpmemobj refused the aligned allocation class");
    PMEMoid* h = &o.root->oid;
    std::uint64_t fa = 0, ff = 0, n = 0;
    fence_counter fc;
    for (auto _ : state) {
      fc.take();
      if (pmemobj_xalloc(o.pop, h, size, 0, flags, nullptr, nullptr) != 0)
        return fail(state, std::string("pmemobj_xalloc: ") + pmemobj_errormsg());
      fa += fc.take();
      pmemobj_free(h);
      ff += fc.take();
      ++n;
    }
    state.SetItemsProcessed(state.iterations());
    report_fences(state, fa, ff, n);
  });
}

}  // namespace

void register_pmemobj() {
  benchmark::RegisterBenchmark("alloc/order0_pair/pmemobj_default", bm_pair, std::size_t{4096}, variant::default_cls);
  benchmark::RegisterBenchmark("alloc/order0_pair/pmemobj_class4k", bm_pair, std::size_t{4096}, variant::page_cls);
  benchmark::RegisterBenchmark("alloc/order9_pair/pmemobj_default2m", bm_pair, std::size_t{2} << 20, variant::default_cls);
  benchmark::RegisterBenchmark("alloc/order9_pair/pmemobj_class2m", bm_pair, std::size_t{2} << 20, variant::page_cls);
  benchmark::RegisterBenchmark("fences/order0/pmemobj_default", bm_fences, std::size_t{4096}, variant::default_cls);
  benchmark::RegisterBenchmark("fences/order0/pmemobj_class4k", bm_fences, std::size_t{4096}, variant::page_cls);
  benchmark::RegisterBenchmark("fences/order9/pmemobj_default2m", bm_fences, std::size_t{2} << 20, variant::default_cls);
  benchmark::RegisterBenchmark("fences/order9/pmemobj_class2m", bm_fences, std::size_t{2} << 20, variant::page_cls);
  benchmark::RegisterBenchmark("bulk/alloc64_publish/pmemobj_class4k", bm_batch, true)->UseManualTime();
  benchmark::RegisterBenchmark("bulk/alloc64_single/pmemobj_class4k", bm_batch, false)->UseManualTime();
}

}  // namespace bench
