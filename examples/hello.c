/* hello.c — examples/hello.cpp in C (<pmpage/pmpage.h>): create a pool, allocate a page into a
 * persistent slot, write and persist data, reopen, translate the stored pfn back to a page, and
 * free it.
 *
 *   ./pmpage_hello_c [/dev/shm/pmpage-hello-c.pool]
 *   cc -std=c11 hello.c $(pkg-config --cflags --libs pmpage)
 */
#include <pmpage/pmpage.h>

#include <stdio.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char** argv) {
  const char* path = argc > 1 ? argv[1] : "/dev/shm/pmpage-hello-c.pool";
  struct pmpage_pool_options opts;
  struct pmpage_pool_stats stats;
  pmpage_pool* pool;
  pmpage_pfn_t* slot;
  struct pmpage_page* page;
  char* data;
  unlink(path);

  pmpage_pool_options_init(&opts);
  opts.size = 64ull << 20; /* 64 MiB: room for 31 regions after the metadata */
  pool = pmpage_pool_create(path, &opts);
  if (!pool) {
    fprintf(stderr, "%s\n", pmpage_errormsg());
    return 1;
  }
  /* The root area is persistent; use its first word as the slot that owns our page. */
  slot = (pmpage_pfn_t*)pmpage_pool_root(pool, NULL);
  page = pmpage_alloc_pages_to(pool, 0, slot); /* allocated and stored atomically */
  if (!page) return 1;
  data = (char*)pmpage_page_address(page);
  strcpy(data, "hello, persistent page");
  pmpage_pool_persist(pool, data, strlen(data) + 1);
  printf("allocated pfn %#llx, wrote \"%s\"\n", (unsigned long long)*slot, data);
  pmpage_pool_close(pool);

  pool = pmpage_pool_open(path);
  if (!pool) {
    fprintf(stderr, "%s\n", pmpage_errormsg());
    return 1;
  }
  slot = (pmpage_pfn_t*)pmpage_pool_root(pool, NULL);
  page = pmpage_pfn_to_page(*slot); /* pfns are stable across reopen */
  data = (char*)pmpage_page_address(page);
  printf("after reopen: pfn %#llx holds \"%s\", count %d, split region: %s\n", (unsigned long long)*slot, data,
         pmpage_page_count(page), pmpage_PageSplit(page) ? "yes" : "no");
  if (pmpage_virt_to_page(data + 100) != page) return 2;

  if (pmpage_free_pages_from(pool, slot) != 0) return 3; /* frees the page and clears the slot */
  pmpage_pool_stats(pool, &stats);
  printf("freed; slot is now %llu, free pages %llu of %llu\n", (unsigned long long)*slot,
         (unsigned long long)stats.free_pages, (unsigned long long)stats.total_pages);
  pmpage_pool_close(pool);
  unlink(path);
  return 0;
}
