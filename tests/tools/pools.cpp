// tests/tools/pools.cpp — the pools of pools.hpp.
#include "pools.hpp"

#include <stdexcept>
#include <vector>

#include <pmpage/pmpage.hpp>

namespace pmtool {

using namespace pmpage;

void make_pool(const std::string& kind, const std::string& path, std::uint64_t size) {
  pool::options o;
  o.size = size;
  o.overwrite = true;
  o.root_size = 64 * 1024;
  pool p = pool::create(path, o);
  auto* slots = static_cast<pfn_t*>(p.root());
  std::size_t next_slot = 0;
  const std::size_t nr_slots = p.root_size() / sizeof(pfn_t);

  if (kind == "empty") {
  } else if (kind == "healthy") {
    if (!p.alloc_pages(9) || !p.alloc_pages(10) || !p.alloc_pages_to(9, &slots[next_slot++]))
      throw std::runtime_error("healthy: no room for the large allocations (pool too small?)");
    for (unsigned i = 0; i < 100; ++i) {
      if (!p.alloc_pages(i % 5)) throw std::runtime_error("healthy: no room");
      if (i % 10 == 0 && !p.alloc_pages_to(0, &slots[next_slot++])) throw std::runtime_error("healthy: no room");
    }
  } else if (kind == "full") {
    while (p.alloc_pages(9)) {
    }
    while (p.alloc_pages(0)) {
    }
  } else if (kind == "fragmented") {
    p.alloc_pages(10);
    p.alloc_pages_to(9, &slots[next_slot++]);
    p.alloc_pages(9);
    const std::uint64_t target = p.stats().free_pages * 7 / 10;
    std::vector<page*> small;
    small.reserve(target);
    for (std::uint64_t i = 0; i < target; ++i) {
      page* pg = p.alloc_pages(0);
      if (!pg) break;
      small.push_back(pg);
    }
    // Every other page back, and regions that differ, picked by a hash of the region index so the
    // map does not look periodic: one in seven keeps all its pages (full), one loses them all
    // (merged back into a free region), two keep one page in eight, one keeps one in four, one keeps
    // seven in eight.
    for (std::size_t i = 0; i < small.size(); ++i) {
      const std::uint64_t region = (page_to_pfn(small[i]) - p.start_pfn()) / HPAGE_PMD_NR;
      const unsigned r7 = unsigned((region * 2654435761u) >> 8) % 7;
      bool free_it = i % 2 == 1;
      if (r7 == 5) free_it = false;
      if (r7 == 3) free_it = true;
      if (r7 == 1 || r7 == 6) free_it = i % 8 != 0;
      if (r7 == 2) free_it = i % 8 == 0;
      if (r7 == 4) free_it = i % 4 != 0;
      if (free_it) free_pages(small[i], 0);
    }
  } else {
    throw std::runtime_error("unknown pool kind " + kind);
  }
  (void)nr_slots;
  p.close();
}

}  // namespace pmtool
