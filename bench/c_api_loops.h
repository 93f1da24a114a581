/* c_api_loops.h — the hot-path loops of bench_c_api.cpp, once over the C API's inline functions
 * (c_api_loops.c, compiled as C11) and once over the C++ API's (bench_c_api.cpp): same loop, same
 * inputs, same optimisation level, each out of line, so the two differ only in the header. */
#ifndef PMPAGE_BENCH_C_API_LOOPS_H
#define PMPAGE_BENCH_C_API_LOOPS_H
#include <pmpage/pmpage.h>
#ifdef __cplusplus
extern "C" {
#endif
uintptr_t c_loop_pfn_to_page(const pmpage_pfn_t* pfns, size_t n);
uintptr_t c_loop_page_to_pfn(struct pmpage_page* const* pages, size_t n);
uintptr_t c_loop_page_address(struct pmpage_page* const* pages, size_t n);
uintptr_t c_loop_virt_to_page(const void* const* addrs, size_t n);
uintptr_t c_loop_get_put(struct pmpage_page* const* pages, size_t n);
uintptr_t c_loop_page_dirty(struct pmpage_page* const* pages, size_t n);
#ifdef __cplusplus
}
#endif
#endif
