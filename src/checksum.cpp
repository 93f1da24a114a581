// checksum.cpp — Fletcher-64 over 32-bit little-endian words (PMDK's util_checksum uses the same
// construction), and the layout arithmetic that depends on nothing else.
#include <cstring>

#include "layout.hpp"

namespace pmpage::detail {

std::uint64_t fletcher64(const void* data, std::size_t len) {
  const auto* p = static_cast<const unsigned char*>(data);
  std::uint64_t lo = 0, hi = 0;
  std::size_t i = 0;
  for (; i + 4 <= len; i += 4) {
    std::uint32_t w;
    std::memcpy(&w, p + i, 4);
    lo += w;
    hi += lo;
  }
  std::uint32_t tail = 0;
  if (i < len) std::memcpy(&tail, p + i, len - i);
  lo += tail;
  hi += lo;
  // Never 0, so an all-zero block never checksums as valid.
  return ((hi << 32) | (lo & 0xffffffffu)) ^ 0x9e3779b97f4a7c15ull;
}

static std::uint64_t round_up(std::uint64_t v, std::uint64_t a) { return (v + a - 1) / a * a; }

bool compute_layout(std::uint64_t size, std::uint64_t root_size, std::uint64_t data_align, layout& out) {
  layout l{};
  l.device_size = size;
  l.lanes_offset = 2 * SUPERBLOCK_SIZE;
  l.root_offset = l.lanes_offset + round_up(NR_LANES * LANE_SIZE, 4096);
  l.root_size = round_up(root_size < MIN_ROOT_SIZE ? MIN_ROOT_SIZE : root_size, 4096);
  l.region_table_offset = l.root_offset + l.root_size;
  // Start from an upper bound and shrink until the metadata and the regions fit.
  std::uint64_t regions = size / HPAGE_PMD_SIZE;
  if (regions > MAX_POOL_PAGES / HPAGE_PMD_NR) regions = MAX_POOL_PAGES / HPAGE_PMD_NR;
  while (regions > 0) {
    l.nr_regions = regions;
    l.page_map_offset = l.region_table_offset + round_up(regions * 8, 4096);
    l.owner_table_offset = l.page_map_offset + round_up(regions * PAGE_MAP_BYTES, 4096);
    l.data_offset = round_up(l.owner_table_offset + regions * OWNER_TABLE_BYTES, data_align);
    if (l.data_offset + regions * HPAGE_PMD_SIZE <= size) {
      out = l;
      return true;
    }
    const std::uint64_t over = l.data_offset + regions * HPAGE_PMD_SIZE - size;
    const std::uint64_t drop = (over + HPAGE_PMD_SIZE - 1) / HPAGE_PMD_SIZE;
    regions = drop >= regions ? 0 : regions - drop;
  }
  return false;
}

}  // namespace pmpage::detail
