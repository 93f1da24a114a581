// tests/tools/pools.hpp — pools in known states for the pmpage(1) tests and for the examples of
// docs/cli.md: built with the library (pool::create, allocations, frees), then closed.
#pragma once

#include <cstdint>
#include <string>

namespace pmtool {

/// "empty": created, nothing allocated.
/// "healthy": a few large allocations (order 9, 10; one owned by a root slot) and small ones of
///            orders 0..4 (some owned by root slots).
/// "full": every page allocated (large first, then 4 KiB pages).
/// "fragmented": a few large allocations, then 4 KiB pages over 70% of the rest, then every other
///               one freed, more in some regions and none in others: split regions of every
///               fullness.
/// Throws pmpage::error or std::runtime_error.
void make_pool(const std::string& kind, const std::string& path, std::uint64_t size);

}  // namespace pmtool
