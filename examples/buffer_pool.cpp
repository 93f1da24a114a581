// buffer_pool.cpp — a storage engine's buffer pool on a volatile pool: the frames of cached blocks
// are 4 KiB pages of memory that need not survive (DRAM here; a CXL node or device in production,
// docs/api.md "Volatile pools"). The page descriptors do the bookkeeping an engine would otherwise
// build itself: page_count pins a frame while a reader uses it, PG_dirty marks it for write-back,
// the page lock serialises its I/O, page_private holds the block number. One thread, to stay
// short: a real buffer pool also guards its block map with a lock, publishes a frame before its
// read completes, and has readers wait for the I/O with lock_page (or check PageUptodate).
//
//   ./pmpage_buffer_pool [numa-node]     (default: no binding)
#include <pmpage/pmpage.hpp>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <unordered_map>

namespace {

struct buffer_pool {
  pmpage::pool pool;
  std::unordered_map<std::uint64_t, pmpage::page*> frames;  // block number -> frame

  /// The frame of `block`, read in on a miss; pinned (one more reference) until unpin().
  pmpage::page* pin(std::uint64_t block) {
    if (auto it = frames.find(block); it != frames.end()) {
      pmpage::get_page(it->second);
      return it->second;
    }
    pmpage::page* p = pool.alloc_pages(0);  // the cache's own reference: count 1
    if (!p && !(p = evict_one())) return nullptr;
    pmpage::lock_page(p);  // "I/O in progress" (a concurrent pinner would wait in lock_page)
    std::snprintf(static_cast<char*>(pmpage::page_address(p)), pmpage::PAGE_SIZE, "block %llu",
                  (unsigned long long)block);  // stands for the read from storage
    pmpage::set_page_private(p, block);
    pmpage::SetPageUptodate(p);
    pmpage::unlock_page(p);
    frames.emplace(block, p);
    pmpage::get_page(p);
    return p;
  }
  void unpin(pmpage::page* p) { pmpage::put_page(p); }

  /// Frees a frame nobody pins (count 1: only the cache's reference), writing it back if dirty.
  pmpage::page* evict_one() {
    for (auto it = frames.begin(); it != frames.end(); ++it) {
      pmpage::page* p = it->second;
      if (pmpage::page_count(p) != 1 || !pmpage::trylock_page(p)) continue;
      if (pmpage::TestClearPageDirty(p)) std::printf("  write back block %llu\n", (unsigned long long)pmpage::page_private(p));
      pmpage::unlock_page(p);
      frames.erase(it);
      pmpage::put_page(p);  // the last reference: the frame goes back to the pool
      return pool.alloc_pages(0);
    }
    return nullptr;
  }
};

}  // namespace

int main(int argc, char** argv) {
  pmpage::pool::volatile_options opts;
  opts.size = 4ull << 20;  // two 2 MiB regions: 1024 frames
  opts.huge = pmpage::pool::volatile_options::huge_pages::thp;
  if (argc > 1) opts.numa_node = std::atoi(argv[1]);
  pmpage::pool pool;
  try {
    pool = pmpage::pool::create_volatile(opts);
  } catch (const pmpage::error& e) {  // e.g. a node that does not exist: the message names it
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
  buffer_pool bp{std::move(pool), {}};
  std::printf("%s\n", bp.pool.memory_description().c_str());

  for (std::uint64_t block = 0; block < 1500; ++block) {  // more blocks than frames: evictions
    pmpage::page* p = bp.pin(block);
    if (!p) return 1;
    if (block % 3 == 0) pmpage::SetPageDirty(p);  // an update to the cached block
    bp.unpin(p);
  }
  pmpage::page* p = bp.pin(1499);
  std::printf("block 1499: \"%s\", pfn %#llx, node %d, pinned count %d\n", static_cast<char*>(pmpage::page_address(p)),
              (unsigned long long)pmpage::page_to_pfn(p), pmpage::page_to_nid(p), pmpage::page_count(p));
  bp.unpin(p);
  const pmpage::pool_stats st = bp.pool.stats();
  std::printf("%zu frames cached, %llu of %llu pages free, %llu B of descriptors, check: %s\n", bp.frames.size(),
              (unsigned long long)st.free_pages, (unsigned long long)st.total_pages,
              (unsigned long long)st.descriptor_bytes, bp.pool.check().empty() ? "ok" : bp.pool.check().c_str());
  for (auto& [block, frame] : bp.frames) pmpage::put_page(frame);
  return 0;
}
