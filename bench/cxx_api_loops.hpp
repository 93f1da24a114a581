// cxx_api_loops.hpp — see cxx_api_loops.cpp.
#pragma once

#include <cstddef>
#include <cstdint>

#include <pmpage/pmpage.hpp>

namespace bench {
std::uintptr_t cxx_loop_pfn_to_page(const pmpage::pfn_t* pfns, std::size_t n);
std::uintptr_t cxx_loop_page_to_pfn(pmpage::page* const* pages, std::size_t n);
std::uintptr_t cxx_loop_page_address(pmpage::page* const* pages, std::size_t n);
std::uintptr_t cxx_loop_virt_to_page(const void* const* addrs, std::size_t n);
std::uintptr_t cxx_loop_get_put(pmpage::page* const* pages, std::size_t n);
std::uintptr_t cxx_loop_page_dirty(pmpage::page* const* pages, std::size_t n);
}  // namespace bench
