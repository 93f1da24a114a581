// The C header compiled as C++ (with -Wall -Wextra -Wpedantic -Werror) next to the C++ API it
// mirrors: both name the same section tables and descriptors, so their answers agree.
#include <pmpage/pmpage.h>
#include <pmpage/pmpage.hpp>

extern "C" int cxx_header_agrees(struct pmpage_page* p) {
  auto* q = reinterpret_cast<pmpage::page*>(p);
  const bool same = pmpage_page_to_pfn(p) == pmpage::page_to_pfn(q) &&
                    pmpage_pfn_to_page(pmpage::page_to_pfn(q)) == p &&
                    pmpage_page_address(p) == pmpage::page_address(q) &&
                    pmpage_page_count(p) == pmpage::page_count(q) &&
                    pmpage_compound_head(p) == reinterpret_cast<struct pmpage_page*>(pmpage::compound_head(q)) &&
                    pmpage_PageSplit(p) == pmpage::PageSplit(q) && pmpage_compound_order(p) == pmpage::compound_order(q);
  pmpage_SetPageDirty(p);
  const bool dirty = pmpage::PageDirty(q);
  pmpage::ClearPageDirty(q);
  return same && dirty && !pmpage_PageDirty(p);
}

// A misuse report while a C++ handler is installed (not the C one): the C call's message is the
// report all the same. Restores the C test's handler (pmpage_set_misuse_handler) afterwards.
extern "C" int cxx_handler_misuse_sets_c_message(pmpage_pool* pool) {
  static int reports;
  reports = 0;
  const pmpage::misuse_handler previous = pmpage::set_misuse_handler([](const char*) { ++reports; });
  pmpage_pfn_t* root = static_cast<pmpage_pfn_t*>(pmpage_pool_root(pool, nullptr));
  const int r = pmpage_move_pages_owner(pool, &root[3], &root[4]);  // the source slot is empty
  pmpage::set_misuse_handler(previous);
  return r == -EINVAL && reports == 1;
}
