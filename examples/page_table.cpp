// page_table.cpp — how an engine keeps its own persistent references with slot ownership.
//
// A "file" is a table of 512 pfn slots that lives in an allocated pool page (not in the root
// area): each slot owns one 4 KiB block. The program grows the file block by block with
// alloc_pages_to (each block allocated and published in one crash-atomic step), relocates its
// table into a new page with move_pages_owner (an engine reorganising its index), turns a
// slot-owned 2 MiB extent into 512 individually owned blocks with split_huge_page_to, checks its
// references with check_slots, and truncates the file with free_pages_from.
//
//   ./pmpage_page_table [/dev/shm/pmpage-page-table.pool]
#include <pmpage/pmpage.hpp>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <vector>

namespace {

// The table of a file: 512 slots in one pool page, so it is itself persistent memory.
pmpage::pfn_t* table_of(pmpage::pfn_t table_pfn) {
  return static_cast<pmpage::pfn_t*>(pmpage::page_address(pmpage::pfn_to_page(table_pfn)));
}

std::vector<pmpage::pfn_t*> all_slots(pmpage::pfn_t* root, pmpage::pfn_t* table) {
  std::vector<pmpage::pfn_t*> v{&root[0], &root[1]};
  for (unsigned i = 0; i < pmpage::HPAGE_PMD_NR; ++i) v.push_back(&table[i]);
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  const std::filesystem::path path = argc > 1 ? argv[1] : "/dev/shm/pmpage-page-table.pool";
  std::filesystem::remove(path);
  pmpage::pool::options opts;
  opts.size = 64ull << 20;
  pmpage::pool pool = pmpage::pool::create(path, opts);
  auto* root = static_cast<pmpage::pfn_t*>(pool.root());

  // root[0] owns the file's table page (zeroed: every slot of a new table is empty).
  if (!pool.alloc_pages_to(0, &root[0], pmpage::GFP_ZERO)) return 1;
  pmpage::pfn_t* table = table_of(root[0]);

  // Grow the file by 8 blocks: each block is allocated and its slot filled atomically.
  for (unsigned i = 0; i < 8; ++i) {
    pmpage::page* block = pool.alloc_pages_to(0, &table[i]);
    if (!block) return 2;
    std::snprintf(static_cast<char*>(pmpage::page_address(block)), 64, "block %u", i);
    pool.persist(pmpage::page_address(block), 64);
  }

  // Reorganise: copy the table into a new page and move every reference into it. Copying a pfn
  // by hand would leave the old slot the owner; move_pages_owner moves the ownership with it.
  if (!pool.alloc_pages_to(0, &root[1], pmpage::GFP_ZERO)) return 3;
  pmpage::pfn_t* moved = table_of(root[1]);
  for (unsigned i = 0; i < 8; ++i)
    if (pool.move_pages_owner(&table[i], &moved[i]) != 0) return 4;
  if (pool.free_pages_from(&root[0]) != 0) return 5;  // the old table page
  if (pool.move_pages_owner(&root[1], &root[0]) != 0) return 6;
  table = moved;

  // A 2 MiB extent owned by one slot, then split so each 4 KiB block has its own slot: the
  // file's blocks 8..519 would not fit, so use a second table for the extent's pieces.
  if (!pool.alloc_pages_to(0, &root[1], pmpage::GFP_ZERO)) return 7;
  pmpage::pfn_t* extent_table = table_of(root[1]);
  pmpage::page* huge = pool.alloc_pages_to(pmpage::HPAGE_PMD_ORDER, &extent_table[0]);
  if (!huge) return 8;
  if (pmpage::split_huge_page(huge) != -EBUSY) return 9;  // 511 pieces would have no owner
  if (pmpage::split_huge_page_to(huge, extent_table) != 0) return 10;

  // An fsck of the engine's own references: every allocation named once, by its owner.
  std::vector<pmpage::pfn_t*> slots = all_slots(root, table);
  for (unsigned i = 0; i < pmpage::HPAGE_PMD_NR; ++i) slots.push_back(&extent_table[i]);
  const auto report = pool.check_slots(slots);
  std::printf("check_slots: %s", report.clean() ? "clean\n" : report.describe().c_str());
  if (!report.clean() || !pool.check().empty()) return 11;

  // Truncate everything: free_pages_from of an empty slot is a no-op, so no guard is needed.
  for (unsigned i = 0; i < pmpage::HPAGE_PMD_NR; ++i) pool.free_pages_from(&extent_table[i]);
  for (unsigned i = 0; i < pmpage::HPAGE_PMD_NR; ++i) pool.free_pages_from(&table[i]);
  pool.free_pages_from(&root[1]);
  pool.free_pages_from(&root[0]);
  const pmpage::pool_stats s = pool.stats();
  std::printf("after truncate: %llu of %llu pages free\n", (unsigned long long)s.free_pages,
              (unsigned long long)s.total_pages);
  pool.close();
  std::filesystem::remove(path);
  return s.free_pages == s.total_pages ? 0 : 12;
}
