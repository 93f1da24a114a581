// numa.cpp — page_to_nid: which NUMA node a page's memory is on.
//
// The kernel keeps a page's node in page->flags (set when the memmap is initialised). A pool's
// pages share one node when the pool says so (a volatile pool bound with numa_node, device DAX
// with its sysfs node): then the answer is the pool's, found from the descriptor in O(1).
// Otherwise nothing was fixed at create, so the kernel is asked where the page is now
// (move_pages in query mode, through libnuma): one system call.
#include <numa.h>

#include "misuse.hpp"
#include "pool_impl.hpp"

namespace pmpage {

int page_to_nid(const page* p) noexcept {
  const pfn_t pfn = page_to_pfn(p);  // reports an invalid descriptor (misuse)
  if (pfn == 0) return -1;
  detail::pool_impl* pool = detail::owner_of(p);
  if (pool->numa_node() >= 0) return pool->numa_node();
  void* addr = page_address(p);
  int status = -1;
  // nodes == nullptr: query only; status is the node, or -ENOENT while the page is not backed.
  if (numa_move_pages(0, 1, &addr, nullptr, &status, 0) != 0 || status < 0) return -1;
  return status;
}

}  // namespace pmpage
