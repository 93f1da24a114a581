// grow.cpp — create a pool with room to grow, grow it while it is open, and show that the pages
// allocated before keep their pfns (docs/api.md, "Growing a pool": the example there is this).
//
//   ./pmpage_grow [/dev/shm/pmpage-grow.pool]
#include <pmpage/pmpage.hpp>
#include <pmpage/pmpage.h>  // pmpage_errormsg(): the message of this thread's last failed call

#include <cstdio>
#include <filesystem>

int main(int argc, char** argv) {
  const std::filesystem::path path = argc > 1 ? argv[1] : "/dev/shm/pmpage-grow.pool";
  std::filesystem::remove(path);

  pmpage::pool::options o;
  o.size = 16ull << 20;      // 16 MiB now
  o.max_size = 64ull << 20;  // room to grow to 64 MiB
  pmpage::pool p = pmpage::pool::create(path, o);
  auto* slot = static_cast<pmpage::pfn_t*>(p.root());
  if (!p.alloc_pages_to(0, slot)) return 1;
  const pmpage::pfn_t before = *slot;

  if (p.grow(48ull << 20) != 0) {  // open: 16 MiB -> 48 MiB, in place; nothing moves
    std::fprintf(stderr, "%s\n", pmpage_errormsg());  // errno is set too
    return 1;
  }
  std::printf("%llu regions now, pfns up to %#llx; the page allocated before is still pfn %#llx (%s)\n",
              (unsigned long long)p.stats().total_regions, (unsigned long long)(p.end_pfn() - 1),
              (unsigned long long)*slot, *slot == before ? "unchanged" : "CHANGED");
  p.close();
  std::filesystem::remove(path);
  return 0;
}
