// hello.cpp — create a pool, allocate a page into a persistent slot, write and persist data,
// reopen, translate the stored pfn back to a page, and free it.
//
//   ./pmpage_hello [/dev/shm/pmpage-hello.pool]
#include <pmpage/pmpage.hpp>

#include <cstdio>
#include <cstring>
#include <filesystem>

int main(int argc, char** argv) {
  const std::filesystem::path path = argc > 1 ? argv[1] : "/dev/shm/pmpage-hello.pool";
  std::filesystem::remove(path);

  {
    pmpage::pool::options opts;
    opts.size = 64ull << 20;  // 64 MiB: room for 31 regions after the metadata
    pmpage::pool pool = pmpage::pool::create(path, opts);

    // The root area is persistent; use its first word as the slot that owns our page.
    auto* slot = static_cast<pmpage::pfn_t*>(pool.root());
    pmpage::page* page = pool.alloc_pages_to(0, slot);  // allocated and stored atomically
    if (!page) return 1;

    char* data = static_cast<char*>(pmpage::page_address(page));
    std::strcpy(data, "hello, persistent page");
    pool.persist(data, std::strlen(data) + 1);
    std::printf("allocated pfn %#llx, wrote \"%s\"\n", (unsigned long long)*slot, data);
  }  // closing the pool

  pmpage::pool pool = pmpage::pool::open(path);
  auto* slot = static_cast<pmpage::pfn_t*>(pool.root());
  pmpage::page* page = pmpage::pfn_to_page(*slot);  // pfns are stable across reopen
  const char* data = static_cast<const char*>(pmpage::page_address(page));
  std::printf("after reopen: pfn %#llx holds \"%s\", count %d, split region: %s\n", (unsigned long long)*slot,
              data, pmpage::page_count(page), pmpage::PageSplit(page) ? "yes" : "no");
  if (pmpage::virt_to_page(data + 100) != page) return 2;

  pool.free_pages_from(slot);  // frees the page and clears the slot, atomically
  std::printf("freed; slot is now %llu, free pages %llu of %llu\n", (unsigned long long)*slot,
              (unsigned long long)pool.stats().free_pages, (unsigned long long)pool.stats().total_pages);
  pool.close();
  std::filesystem::remove(path);
  return 0;
}
