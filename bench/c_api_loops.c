/* c_api_loops.c — see c_api_loops.h: the loops over <pmpage/pmpage.h>, compiled as C11. */
#include "c_api_loops.h"

uintptr_t c_loop_pfn_to_page(const pmpage_pfn_t* pfns, size_t n) {
  uintptr_t acc = 0;
  size_t i;
  for (i = 0; i < n; ++i) acc += (uintptr_t)pmpage_pfn_to_page(pfns[i]);
  return acc;
}
uintptr_t c_loop_page_to_pfn(struct pmpage_page* const* pages, size_t n) {
  uintptr_t acc = 0;
  size_t i;
  for (i = 0; i < n; ++i) acc += pmpage_page_to_pfn(pages[i]);
  return acc;
}
uintptr_t c_loop_page_address(struct pmpage_page* const* pages, size_t n) {
  uintptr_t acc = 0;
  size_t i;
  for (i = 0; i < n; ++i) acc += (uintptr_t)pmpage_page_address(pages[i]);
  return acc;
}
uintptr_t c_loop_virt_to_page(const void* const* addrs, size_t n) {
  uintptr_t acc = 0;
  size_t i;
  for (i = 0; i < n; ++i) acc += (uintptr_t)pmpage_virt_to_page(addrs[i]);
  return acc;
}
uintptr_t c_loop_get_put(struct pmpage_page* const* pages, size_t n) {
  size_t i;
  for (i = 0; i < n; ++i) {
    pmpage_get_page(pages[i]);
    pmpage_put_page(pages[i]);
  }
  return n;
}
uintptr_t c_loop_page_dirty(struct pmpage_page* const* pages, size_t n) {
  uintptr_t acc = 0;
  size_t i;
  for (i = 0; i < n; ++i) acc += pmpage_PageDirty(pages[i]);
  return acc;
}
