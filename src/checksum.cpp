// checksum.cpp — Fletcher-64 over 32-bit little-endian words (PMDK's util_checksum uses the same
// construction), and the layout arithmetic that depends on nothing else.
#include <algorithm>
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

namespace {
/// The header part of a layout: superblocks, lanes, root; then the tables for `regions`.
void place_header(layout& l, std::uint64_t root_size) {
  l.lanes_offset = 2 * SUPERBLOCK_SIZE;
  l.root_offset = l.lanes_offset + round_up(NR_LANES * LANE_SIZE, 4096);
  l.root_size = round_up(root_size < MIN_ROOT_SIZE ? MIN_ROOT_SIZE : root_size, 4096);
  l.region_table_offset = l.root_offset + l.root_size;
}
void place_regions(layout& l, std::uint64_t regions, std::uint64_t data_align) {
  l.nr_regions = regions;
  l.page_map_offset = l.region_table_offset + round_up(regions * 8, 4096);
  l.owner_table_offset = l.page_map_offset + round_up(regions * PAGE_MAP_BYTES, 4096);
  l.data_offset = round_up(l.owner_table_offset + regions * OWNER_TABLE_BYTES, data_align);
}
}  // namespace

bool compute_layout(std::uint64_t size, std::uint64_t root_size, std::uint64_t data_align, layout& out) {
  layout l{};
  l.device_size = size;
  place_header(l, root_size);
  // The largest region count whose metadata and data fit: fits(n) is monotone, so binary search
  // (an estimate-and-shrink loop overshoots when the data-offset rounding changes).
  std::uint64_t hi = size / HPAGE_PMD_SIZE;
  if (hi > MAX_POOL_PAGES / HPAGE_PMD_NR) hi = MAX_POOL_PAGES / HPAGE_PMD_NR;
  auto fit = [&](std::uint64_t regions) {
    place_regions(l, regions, data_align);
    return l.data_offset + regions * HPAGE_PMD_SIZE <= size;
  };
  std::uint64_t lo = 0;  // fit(lo) holds or lo == 0
  while (lo < hi) {
    const std::uint64_t mid = lo + (hi - lo + 1) / 2;
    if (fit(mid))
      lo = mid;
    else
      hi = mid - 1;
  }
  if (lo > 0 && fit(lo)) {
    out = l;
    return true;
  }
  return false;
}

bool compute_growable_layout(std::uint64_t size, std::uint64_t max_size, std::uint64_t root_size,
                             std::uint64_t data_align, layout& out) {
  layout cap{};
  if (max_size <= size || !compute_layout(max_size, root_size, data_align, cap)) return compute_layout(size, root_size, data_align, out);
  // The tables of cap.nr_regions regions; the data offset they give is fixed for the pool's life.
  layout l{};
  l.device_size = size;
  place_header(l, root_size);
  place_regions(l, cap.nr_regions, data_align);
  if (l.data_offset + HPAGE_PMD_SIZE > size) return false;
  const std::uint64_t regions = std::min(cap.nr_regions, (size - l.data_offset) / HPAGE_PMD_SIZE);
  // max_size adds no whole region: still a capacity (SB_GROWABLE with max_regions ==
  // nr_regions), so that the pool never grows past what was asked into its tables' slack.
  l.nr_regions = regions;
  l.max_regions = cap.nr_regions;
  out = l;
  return true;
}

layout layout_for_regions(std::uint64_t regions, std::uint64_t root_size, std::uint64_t data_align) {
  layout l{};
  place_header(l, root_size);
  place_regions(l, regions, data_align);
  l.device_size = l.data_offset + regions * HPAGE_PMD_SIZE;
  return l;
}

}  // namespace pmpage::detail
