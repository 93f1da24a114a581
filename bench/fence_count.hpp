// bench/fence_count.hpp — fences (pmem_drain calls, direct or inside libpmem) counted process-wide.
#pragma once
#include <atomic>
#include <cstdint>

namespace bench {
extern std::atomic<bool> g_count_fences;
extern std::atomic<std::uint64_t> g_fences;

/// Counts fences while alive (single-threaded use).
struct fence_counter {
  fence_counter() { g_fences.store(0); g_count_fences.store(true); }
  ~fence_counter() { g_count_fences.store(false); }
  std::uint64_t take() { return g_fences.exchange(0); }
};
}  // namespace bench
