// cxx_api_loops.cpp — the C++ twins of c_api_loops.c: the same loops over <pmpage/mm.hpp>, in a
// translation unit of their own like the C ones (so the compiler can neither inline them into the
// benchmark nor hoist a pure one out of its timing loop).
#include "cxx_api_loops.hpp"

namespace bench {

std::uintptr_t cxx_loop_pfn_to_page(const pmpage::pfn_t* pfns, std::size_t n) {
  std::uintptr_t acc = 0;
  for (std::size_t i = 0; i < n; ++i) acc += reinterpret_cast<std::uintptr_t>(pmpage::pfn_to_page(pfns[i]));
  return acc;
}
std::uintptr_t cxx_loop_page_to_pfn(pmpage::page* const* pages, std::size_t n) {
  std::uintptr_t acc = 0;
  for (std::size_t i = 0; i < n; ++i) acc += pmpage::page_to_pfn(pages[i]);
  return acc;
}
std::uintptr_t cxx_loop_page_address(pmpage::page* const* pages, std::size_t n) {
  std::uintptr_t acc = 0;
  for (std::size_t i = 0; i < n; ++i) acc += reinterpret_cast<std::uintptr_t>(pmpage::page_address(pages[i]));
  return acc;
}
std::uintptr_t cxx_loop_virt_to_page(const void* const* addrs, std::size_t n) {
  std::uintptr_t acc = 0;
  for (std::size_t i = 0; i < n; ++i) acc += reinterpret_cast<std::uintptr_t>(pmpage::virt_to_page(addrs[i]));
  return acc;
}
std::uintptr_t cxx_loop_get_put(pmpage::page* const* pages, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) {
    pmpage::get_page(pages[i]);
    pmpage::put_page(pages[i]);
  }
  return n;
}
std::uintptr_t cxx_loop_page_dirty(pmpage::page* const* pages, std::size_t n) {
  std::uintptr_t acc = 0;
  for (std::size_t i = 0; i < n; ++i) acc += pmpage::PageDirty(pages[i]);
  return acc;
}

}  // namespace bench
