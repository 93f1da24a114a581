// bench/bench_memory.cpp — what pmpage costs in DRAM and at open, and how it behaves over time.
// All pools here are sparse files in the scratch directory (tmpfs by default: sparse is free).
//
//   open/pmpage/<N>GiB       create a sparse N GiB pool once, then time pool::open (close is not
//                            timed). Counters: descriptor_bytes, allocator_bytes, rss_anon_delta
//                            (RssAnon while open minus before), flat_bytes (64 B x pages), regions
//   open/flat_init/<N>GiB    the flat model's memmap_init for N GiB (every 64-byte descriptor
//                            written; its memory is mapped and faulted in beforehand, untimed,
//                            as the kernel's memblock memmap is). Counter dram_bytes, alloc_s
//   splitmerge/order0_cycle/pmpage  alloc_pages(0) + free + trim() in an empty pool: splits a region
//                            and merges it back every time (trim() forces the merge the
//                            hysteresis would delay; alloc/order0_lonely_pair measures without it)
//   splitmerge/huge_cycle/pmpage    alloc_pages(9) + split_huge_page + 512 x free_pages(.., 0) + trim();
//                            then 64 regions split at once, freed and trimmed: RssAnon before, while
//                            split and after (counters rss_*_kib, desc_*_bytes)
//   frag/random_50pct/pmpage fill a pool to 50 % with 4 KiB pages, then free a random live page
//                            and allocate one, 4 x live times. Counters split_regions,
//                            min_regions = ceil(live / 512), ratio
//   dram/descriptors/pmpage_volatile  create_volatile of an unsplit pool of the workload size
//                            (anonymous memory; 2 GiB, 256 MiB in smoke mode), timed (manual time);
//                            counters descriptor_bytes, regions, per_region (descriptor_bytes /
//                            total_regions), and persistent_per_region: the same for a
//                            persistent pool of the same size created in the scratch directory
//                            (issue #12: 64 B per unsplit 2 MiB region, as for persistent pools)
//   first_touch/insert/pmpage_volatile/populate:{0,1}  a cache tier's first inserts: a fresh
//                            anonymous volatile pool (256 MiB, base pages; 16 MiB in smoke mode),
//                            created untimed with volatile_options::populate off or on, then timed:
//                            alloc_pages(0) + a 4 KiB memcpy into the page until the pool is full.
//                            items/s = inserts/s; counters faults_per_insert (minor page faults
//                            of the timed loop, getrusage), create_ms (create_volatile's time)
#include <sys/resource.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "common.hpp"
#include "flat_model.hpp"

namespace bench {
namespace {

constexpr std::uint64_t GiB = std::uint64_t{1} << 30;

pmpage::pool create_scratch(const std::filesystem::path& p, std::uint64_t bytes) {
  pmpage::pool::options o;
  o.size = bytes;
  o.overwrite = true;
  return pmpage::pool::create(p, o);
}

void bm_open_pmpage(benchmark::State& state, std::uint64_t gib) {
  guarded(state, [&] {
    const auto path = scratch_path("open-" + std::to_string(gib) + "g.pool");
    const double c0 = now_s();
    create_scratch(path, gib * GiB).close();
    const double create_s = now_s() - c0;
    pmpage::pool_stats st{};
    std::uint64_t rss_delta = 0;
    for (auto _ : state) {
      const std::uint64_t r0 = rss_anon_bytes();
      const double t0 = now_s();
      pmpage::pool pool = pmpage::pool::open(path);
      const double t1 = now_s();
      state.SetIterationTime(t1 - t0);
      rss_delta = rss_anon_bytes() - r0;
      st = pool.stats();
      pool.close();
    }
    remove_scratch(path);
    state.counters["create_s"] = create_s;
    state.counters["descriptor_bytes"] = double(st.descriptor_bytes);
    state.counters["allocator_bytes"] = double(st.allocator_bytes);
    state.counters["rss_anon_delta"] = double(rss_delta);
    state.counters["regions"] = double(st.total_regions);
    state.counters["pages"] = double(st.total_pages);
    state.counters["split_regions"] = double(st.split_regions);
    state.counters["flat_bytes"] = double(st.total_pages * sizeof(flat::page));
  });
}

void bm_flat_init(benchmark::State& state, std::uint64_t gib) {
  guarded(state, [&] {
    const std::uint64_t pages = gib * GiB / 4096;
    flat::model m;
    double alloc_s = 0;
    for (auto _ : state) {
      const double a0 = now_s();
      if (!m.allocate(pages)) return fail(state, "mmap of the flat memmap failed");
      alloc_s = now_s() - a0;
      static char data_stub[4096];
      const double t0 = now_s();
      m.init(pmpage::pfn_t{1} << 32, data_stub);
      const double t1 = now_s();
      state.SetIterationTime(t1 - t0);
      benchmark::DoNotOptimize(flat::pfn_to_page((pmpage::pfn_t{1} << 32) + pages - 1)->refcount.load());
      m.release();
    }
    state.counters["dram_bytes"] = double(pages * sizeof(flat::page));
    state.counters["alloc_s"] = alloc_s;
    state.counters["pages"] = double(pages);
  });
}

// ---- split and merge ------------------------------------------------------------------------------

void bm_order0_cycle(benchmark::State& state) {
  guarded(state, [&] {
    const auto path = scratch_path("cycle0.pool");
    pmpage::pool pool = create_scratch(path, 64 << 20);
    const std::uint64_t r0 = rss_anon_bytes();
    for (auto _ : state) {
      pmpage::page* p = pool.alloc_pages(0);
      if (!p) return fail(state, "alloc_pages(0) failed");
      pmpage::free_pages(p, 0);
      pool.trim();  // merge now: the hysteresis would keep the region (alloc/order0_lonely_pair)
    }
    const auto st = pool.stats();
    state.counters["split_regions_after"] = double(st.split_regions);
    state.counters["descriptor_bytes_after"] = double(st.descriptor_bytes);
    state.counters["rss_anon_delta"] = double(rss_anon_bytes()) - double(r0);
    state.SetItemsProcessed(state.iterations());
    pool.close();
    remove_scratch(path);
  });
}

void bm_huge_cycle(benchmark::State& state) {
  guarded(state, [&] {
    const std::size_t regions = cfg().smoke ? 16 : 64;
    const auto path = scratch_path("cycle9.pool");
    pmpage::pool pool = create_scratch(path, (regions + 16) * pmpage::HPAGE_PMD_SIZE);
    auto split_one = [&]() -> pmpage::page* {
      pmpage::page* p = pool.alloc_pages(9);
      if (!p) throw std::runtime_error("alloc_pages(9) failed");
      if (int rc = pmpage::split_huge_page(p); rc != 0)
        throw std::runtime_error("split_huge_page returned " + std::to_string(rc));
      return p;
    };
    auto free_split = [&](pmpage::page* p) {
      for (std::size_t i = 0; i < pmpage::HPAGE_PMD_NR; ++i) pmpage::free_pages(p + i, 0);
    };
    for (auto _ : state) {
      free_split(split_one());
      pool.trim();  // the merge itself (the hysteresis would keep the region split)
    }
    state.SetItemsProcessed(state.iterations());

    // RSS: many regions split at once, then all merged back.
    const std::uint64_t r0 = rss_anon_bytes();
    const auto s0 = pool.stats();
    std::vector<pmpage::page*> heads;
    for (std::size_t i = 0; i < regions; ++i) heads.push_back(split_one());
    const std::uint64_t r1 = rss_anon_bytes();
    const auto s1 = pool.stats();
    for (auto* h : heads) free_split(h);
    pool.trim();  // at most EMPTY_SPLIT_KEPT regions wait for the hysteresis; trim returns them
    const std::uint64_t r2 = rss_anon_bytes();
    const auto s2 = pool.stats();
    state.counters["regions_split"] = double(regions);
    state.counters["rss_before_kib"] = double(r0) / 1024;
    state.counters["rss_split_kib"] = double(r1) / 1024;
    state.counters["rss_after_kib"] = double(r2) / 1024;
    state.counters["desc_before_bytes"] = double(s0.descriptor_bytes);
    state.counters["desc_split_bytes"] = double(s1.descriptor_bytes);
    state.counters["desc_after_bytes"] = double(s2.descriptor_bytes);
    state.counters["split_regions_after"] = double(s2.split_regions);
    pool.close();
    remove_scratch(path);
  });
}

// ---- fragmentation --------------------------------------------------------------------------------

void bm_fragmentation(benchmark::State& state) {
  guarded(state, [&] {
    const std::uint64_t bytes = cfg().smoke ? (64ull << 20) : GiB;
    const auto path = scratch_path("frag.pool");
    pmpage::pool pool = create_scratch(path, bytes);
    const std::uint64_t total = pool.stats().total_pages;
    const std::uint64_t target = total / 2;
    std::vector<pmpage::page*> live;
    live.reserve(target);
    rng r(1234);
    pmpage::pool_stats st{};
    std::uint64_t steps = 0;
    for (auto _ : state) {
      while (live.size() < target) {
        pmpage::page* p = pool.alloc_pages(0);
        if (!p) return fail(state, "alloc_pages(0) failed while filling");
        live.push_back(p);
      }
      steps = 4 * target;
      for (std::uint64_t i = 0; i < steps; ++i) {
        const std::size_t k = r.below(live.size());
        pmpage::free_pages(live[k], 0);
        pmpage::page* p = pool.alloc_pages(0);
        if (!p) return fail(state, "alloc_pages(0) failed during churn");
        live[k] = p;
      }
      st = pool.stats();
      state.PauseTiming();
      for (auto* p : live) pmpage::free_pages(p, 0);
      live.clear();
      state.ResumeTiming();
    }
    const std::uint64_t min_regions = (target + pmpage::HPAGE_PMD_NR - 1) / pmpage::HPAGE_PMD_NR;
    state.counters["live_pages"] = double(target);
    state.counters["split_regions"] = double(st.split_regions);
    state.counters["materialised_regions"] = double(st.materialised_regions);
    state.counters["min_regions"] = double(min_regions);
    state.counters["ratio"] = double(st.split_regions) / double(min_regions);
    state.counters["descriptor_bytes"] = double(st.descriptor_bytes);
    state.counters["churn_ops"] = double(steps);
    pool.close();
    remove_scratch(path);
  });
}

void bm_volatile_descriptors(benchmark::State& state) {
  guarded(state, [&] {
    const std::uint64_t bytes = cfg().workload_bytes;
    pmpage::pool_stats st{};
    std::uint64_t rss_delta = 0;
    for (auto _ : state) {
      pmpage::pool::volatile_options o;
      o.size = bytes;
      const std::uint64_t r0 = rss_anon_bytes();
      const double t0 = now_s();
      pmpage::pool pool = pmpage::pool::create_volatile(o);
      const double t1 = now_s();
      state.SetIterationTime(t1 - t0);
      rss_delta = rss_anon_bytes() - r0;
      st = pool.stats();
      pool.close();
    }
    const auto path = scratch_path("descriptors-persistent.pool");
    pmpage::pool_stats ps{};
    {
      pmpage::pool p = create_scratch(path, bytes);
      ps = p.stats();
    }
    remove_scratch(path);
    state.counters["descriptor_bytes"] = double(st.descriptor_bytes);
    state.counters["regions"] = double(st.total_regions);
    state.counters["split_regions"] = double(st.split_regions);
    state.counters["per_region"] = st.total_regions ? double(st.descriptor_bytes) / double(st.total_regions) : 0.0;
    state.counters["rss_anon_delta"] = double(rss_delta);
    state.counters["persistent_descriptor_bytes"] = double(ps.descriptor_bytes);
    state.counters["persistent_regions"] = double(ps.total_regions);
    state.counters["persistent_per_region"] =
        ps.total_regions ? double(ps.descriptor_bytes) / double(ps.total_regions) : 0.0;
  });
}

long minor_faults() {
  struct rusage ru {};
  ::getrusage(RUSAGE_SELF, &ru);
  return ru.ru_minflt;
}

void bm_first_touch_insert(benchmark::State& state, bool populate) {
  guarded(state, [&] {
    const std::uint64_t bytes = cfg().smoke ? std::uint64_t{16} << 20 : std::uint64_t{256} << 20;
    std::vector<char> value(pmpage::PAGE_SIZE, 'v');
    std::vector<pmpage::page*> got;
    got.reserve(bytes / pmpage::PAGE_SIZE);
    double create_s = 0;
    long faults = 0;
    std::uint64_t inserts = 0;
    for (auto _ : state) {
      pmpage::pool::volatile_options o;
      o.size = bytes;
      o.populate = populate;
      const double c0 = now_s();
      pmpage::pool pool = pmpage::pool::create_volatile(o);
      create_s = now_s() - c0;
      got.clear();
      const long f0 = minor_faults();
      const double t0 = now_s();
      while (pmpage::page* p = pool.alloc_pages(0)) {
        std::memcpy(pmpage::page_address(p), value.data(), value.size());
        got.push_back(p);
      }
      const double t1 = now_s();
      faults += minor_faults() - f0;
      state.SetIterationTime(t1 - t0);
      inserts += got.size();
      for (pmpage::page* p : got) pmpage::put_page(p);
      pool.close();
    }
    state.SetItemsProcessed(std::int64_t(inserts));
    state.counters["faults_per_insert"] = inserts ? double(faults) / double(inserts) : 0.0;
    state.counters["create_ms"] = create_s * 1e3;
    state.counters["pool_mib"] = double(bytes >> 20);
  });
}

}  // namespace

void register_memory() {
  const bool smoke = cfg().smoke;
  // Each repetition (--benchmark_repetitions) creates its own pool; the summary keeps the best.
  const int iters = smoke ? 1 : 3;
  std::vector<std::uint64_t> sweep = smoke ? std::vector<std::uint64_t>{1, 4}
                                           : std::vector<std::uint64_t>{1, 4, 16, 64, 256, 1024};
  std::vector<std::uint64_t> flat_sweep = smoke ? std::vector<std::uint64_t>{1}
                                                : std::vector<std::uint64_t>{1, 4, 16, 64};
  for (auto g : sweep)
    benchmark::RegisterBenchmark(("open/pmpage/" + std::to_string(g) + "GiB").c_str(), bm_open_pmpage, g)
        ->UseManualTime()
        ->Iterations(iters + 2)
        ->Unit(benchmark::kMillisecond);
  for (auto g : flat_sweep)
    benchmark::RegisterBenchmark(("open/flat_init/" + std::to_string(g) + "GiB").c_str(), bm_flat_init, g)
        ->UseManualTime()
        ->Iterations(iters - (iters > 1))
        ->Unit(benchmark::kMillisecond);
  benchmark::RegisterBenchmark("dram/descriptors/pmpage_volatile", bm_volatile_descriptors)
      ->UseManualTime()
      ->Iterations(iters + 2)
      ->Unit(benchmark::kMicrosecond);
  for (bool populate : {false, true})
    benchmark::RegisterBenchmark(
        ("first_touch/insert/pmpage_volatile/populate:" + std::to_string(int(populate))).c_str(), bm_first_touch_insert,
        populate)
        ->UseManualTime()
        ->Iterations(iters)
        ->Unit(benchmark::kMillisecond);
  benchmark::RegisterBenchmark("splitmerge/order0_cycle/pmpage", bm_order0_cycle);
  benchmark::RegisterBenchmark("splitmerge/huge_cycle/pmpage", bm_huge_cycle)->Unit(benchmark::kMicrosecond);
  benchmark::RegisterBenchmark("frag/random_50pct/pmpage", bm_fragmentation)
      ->Iterations(1)
      ->Repetitions(1)
      ->Unit(benchmark::kMillisecond);
}

}  // namespace bench
