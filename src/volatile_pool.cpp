// volatile_pool.cpp — pools whose contents need not survive: CXL memory, DRAM tiers, caches.
//
// A volatile pool is a persistent pool with the persistence taken out, not a second allocator:
// the same layout (region table, page maps, owner tables, root) lives in private anonymous DRAM,
// the data area is mapped right after it (so every offset, slot check and translation is the
// same code), and the pool runs with volatile_ set: fence() and flush_later() return at once, the
// intent log is disabled, GFP_ZERO is a plain memset. Every invariant (pool_impl.hpp) holds as
// for a persistent pool and check() verifies the same things.
//
// What backs the pages (device::map_volatile):
//   no backing        private anonymous memory; base pages, THP (madvise) or hugetlb (MAP_HUGETLB)
//   tmpfs / memfd     the file's pages, shared (THP when shmem_enabled allows it)
//   hugetlbfs file    huge pages by construction
//   device DAX        the device (e.g. a CXL expander in devdax mode), its own alignment
//   other files       the page cache (works; rarely what anyone wants)
// A backing is locked exclusively (flock) for the pool's life, like a persistent pool's file, so
// two pools never hand out the same memory; a backing that holds a persistent pool is refused.
//
// NUMA (numa_node): mbind(MPOL_BIND) of the data area through libnuma, before any page is
// touched; the pool remembers the node, which is what page_to_nid answers for its pages
// (numa.cpp). Placement can be set only where the kernel allocates the memory at fault time:
// anonymous memory and shmem (tmpfs, memfd, hugetlbfs). Device DAX is where it is.
#include <fcntl.h>
#include <linux/magic.h>
#include <numa.h>
#include <numaif.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "null_persistence.hpp"
#include "badblocks.hpp"
#include "pool_impl.hpp"

namespace pmpage::detail {

namespace {

using vopts = pool::volatile_options;

std::string read_line(const char* file) {
  std::ifstream in(file);
  std::string s;
  std::getline(in, s);
  return s;
}

/// The selected word of a sysfs choice list ("always [madvise] never" -> "madvise"); "" if none.
std::string selected(const std::string& choices) {
  const auto a = choices.find('['), b = choices.find(']');
  return a == std::string::npos || b == std::string::npos || b < a ? std::string() : choices.substr(a + 1, b - a - 1);
}

std::string size_text(std::uint64_t bytes) {
  char buf[48];
  if (bytes % (1ull << 30) == 0)
    std::snprintf(buf, sizeof buf, "%llu GiB", (unsigned long long)(bytes >> 30));
  else
    std::snprintf(buf, sizeof buf, "%llu MiB", (unsigned long long)(bytes >> 20));
  return buf;
}

/// "HugePages_Free: 3" from /proc/meminfo, for the hugetlb fallback message.
std::string meminfo_field(const char* key) {
  std::ifstream in("/proc/meminfo");
  for (std::string line; std::getline(in, line);)
    if (line.rfind(key, 0) == 0) {
      std::istringstream rest(line.substr(std::strlen(key)));
      std::string v;
      rest >> v;
      return v;
    }
  return "?";
}

enum class backing_kind { anonymous, shmem, hugetlbfs, device_dax, other_file };

const char* kind_text(backing_kind k) {
  switch (k) {
    case backing_kind::anonymous: return "anonymous memory";
    case backing_kind::shmem: return "tmpfs/memfd file";
    case backing_kind::hugetlbfs: return "hugetlbfs file";
    case backing_kind::device_dax: return "device DAX";
    case backing_kind::other_file: return "file (page cache)";
  }
  return "?";
}

/// Checks numa_node before anything is mapped: it exists and has memory this process may use.
void check_node(const std::string& name, int node) {
  if (node == -1) return;
  if (numa_available() < 0)
    fail(EINVAL, name, "numa_node " + std::to_string(node) + ": this kernel has no NUMA support (numa_available() < 0)");
  std::string with_memory;
  for (int n = 0; n <= numa_max_node(); ++n)
    if (numa_bitmask_isbitset(numa_all_nodes_ptr, unsigned(n)) && numa_node_size64(n, nullptr) > 0)
      with_memory += (with_memory.empty() ? "" : ",") + std::to_string(n);
  if (node < 0 || node > numa_max_node() || !numa_bitmask_isbitset(numa_nodes_ptr, unsigned(node)))
    fail(EINVAL, name, "NUMA node " + std::to_string(node) + " does not exist (nodes with memory here: " + with_memory +
                           "; -1 = no binding)");
  if (!numa_bitmask_isbitset(numa_all_nodes_ptr, unsigned(node)) || numa_node_size64(node, nullptr) <= 0)
    fail(EINVAL, name, "NUMA node " + std::to_string(node) +
                           " has no memory this process may use (a CPU-only node, or outside its cpuset; nodes with "
                           "memory here: " + with_memory + ")");
}

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23  // Linux 5.14 (older C libraries lack the constant)
#endif

/// Pre-faults [addr, addr + len) for writing: every page allocated and mapped writable, nothing
/// written. madvise(MADV_POPULATE_WRITE) reports a page the kernel cannot supply as an error
/// (EFAULT where a touch would be SIGBUS: the huge pages, the bound node or the file system ran
/// out; ENOMEM: out of memory) instead of killing the process. A kernel without it (before 5.14)
/// answers EINVAL: then each 4 KiB page is read and the byte written back, which faults it in
/// without changing it (nothing else can touch the pool's memory yet). Returns 0 or an errno.
int populate_write(char* addr, std::size_t len) {
  if (::madvise(addr, len, MADV_POPULATE_WRITE) == 0) return 0;
  if (errno != EINVAL) return errno;
  for (std::size_t off = 0; off < len; off += PAGE_SIZE) {
    volatile char* c = addr + off;
    *c = *c;
  }
  return 0;
}

/// mbind(MPOL_BIND) of [addr, addr + len) to `node` (libnuma's wrapper of the system call).
void bind_to_node(const std::string& name, void* addr, std::size_t len, int node) {
  struct bitmask* mask = numa_allocate_nodemask();
  numa_bitmask_setbit(mask, unsigned(node));
  // MPOL_MF_MOVE | MPOL_MF_STRICT: pages a backing file already holds elsewhere move, or the
  // call fails, so "bound" always means every page.
  const long r = mbind(addr, len, MPOL_BIND, mask->maskp, mask->size + 1, MPOL_MF_MOVE | MPOL_MF_STRICT);
  const int e = errno;
  numa_free_nodemask(mask);
  if (r != 0)
    fail(e, name, "cannot bind the pool's pages to NUMA node " + std::to_string(node) + ": mbind: " + std::strerror(e));
}

}  // namespace

std::unique_ptr<pool_impl> pool_impl::create_volatile(const pool::volatile_options& opts) {
  auto impl = std::make_unique<pool_impl>();
  device& d = impl->dev_;
  const bool anonymous = opts.backing.empty();
  const std::string name = anonymous ? std::string("volatile pool (anonymous memory)") : opts.backing.string();
  if (!impl->slot_.acquire()) fail(EMFILE, name, "cannot create: " + too_many_pools());
  if (opts.root_size > MAX_ROOT_SIZE)
    fail(EINVAL, name, "volatile_options.root_size " + std::to_string(opts.root_size) + " is above MAX_ROOT_SIZE (" +
                           std::to_string(MAX_ROOT_SIZE) + " bytes)");
  if (opts.size % HPAGE_PMD_SIZE != 0)
    fail(EINVAL, name, "volatile_options.size " + std::to_string(opts.size) +
                           " is not a multiple of 2 MiB (a pool hands out whole 2 MiB regions)");
  if (opts.huge != vopts::huge_pages::none && opts.huge != vopts::huge_pages::thp &&
      opts.huge != vopts::huge_pages::hugetlb)
    fail(EINVAL, name, "volatile_options.huge is not none, thp or hugetlb");
  check_node(name, opts.numa_node);

  // ---- the backing: what it is, how much of it the pool uses ----------------------------------------
  backing_kind kind = backing_kind::anonymous;
  std::uint64_t data_len = opts.size;
  if (anonymous) {
    d.name_memory(name);
    if (opts.size == 0) fail(EINVAL, name, "volatile_options.size is 0 (anonymous memory needs a size)");
  } else {
    d.open_existing(name);  // a regular file or device DAX; refuses the rest, naming it
    try {
      d.lock();  // exclusive: EBUSY while another pool, of either kind, uses it
    } catch (const pmpage::error& e) {
      if (e.code().value() != EBUSY) throw;
      fail(EBUSY, name, "is in use by another pool (a volatile pool using it as memory, or a persistent pool open "
                        "on it, in this or another process)");
    }
    if (d.size() >= 2 * SUPERBLOCK_SIZE && !opts.overwrite) {
      superblock a, b;
      d.read_at(&a, sizeof a, 0);
      d.read_at(&b, sizeof b, SUPERBLOCK_SIZE);
      if (superblock_problem(a).empty() || superblock_problem(b).empty())
        fail(EEXIST, name, "holds a persistent pmpage pool, which a volatile pool would overwrite; set "
                           "volatile_options.overwrite to use it anyway");
    }
    if (d.type() == device::kind::device_dax) {
      kind = backing_kind::device_dax;
      const std::uint64_t usable = d.size() / d.alignment() * d.alignment();
      if (data_len == 0) data_len = usable / HPAGE_PMD_SIZE * HPAGE_PMD_SIZE;
      if (data_len > usable || data_len % d.alignment() != 0)
        fail(EINVAL, name, "volatile_options.size " + std::to_string(data_len) + " does not fit device DAX of " +
                               std::to_string(usable) + " usable bytes in whole " + std::to_string(d.alignment()) +
                               "-byte pages");
    } else {
      struct statfs fs;
      if (::fstatfs(d.fd(), &fs) != 0) fail(errno, name, std::string("fstatfs: ") + std::strerror(errno));
      kind = fs.f_type == HUGETLBFS_MAGIC ? backing_kind::hugetlbfs
             : fs.f_type == TMPFS_MAGIC   ? backing_kind::shmem
                                          : backing_kind::other_file;
      if (data_len == 0) data_len = d.size() / HPAGE_PMD_SIZE * HPAGE_PMD_SIZE;
      if (data_len == 0)
        fail(EINVAL, name, "holds " + std::to_string(d.size()) +
                               " bytes, less than one 2 MiB region, and volatile_options.size is 0");
    }
  }
  // Every check before the first change to the backing: a refused create leaves it as it was.
  if (data_len / HPAGE_PMD_SIZE > MAX_POOL_PAGES / HPAGE_PMD_NR)
    fail(EINVAL, name, "volatile_options.size " + std::to_string(data_len) + " is above the largest pool (" +
                           std::to_string(MAX_POOL_PAGES * PAGE_SIZE) + " bytes)");
  if (opts.numa_node != -1) {
    if (kind == backing_kind::device_dax && d.numa_node() != opts.numa_node)
      fail(EINVAL, name, "numa_node " + std::to_string(opts.numa_node) + ": device DAX memory is where the device is (node " +
                             std::to_string(d.numa_node()) + "); it cannot be bound elsewhere");
    if (kind == backing_kind::other_file)
      fail(EINVAL, name, "numa_node " + std::to_string(opts.numa_node) +
                             ": the kernel places a regular file's page cache by the task's policy, not the mapping's; "
                             "use anonymous memory, tmpfs, a memfd or hugetlbfs to bind a pool to a node");
  }
  // From here on the backing may change: mapping a hugetlbfs file writable grows it, and a short
  // file is grown below. Every failure gives the file its size back (nothing before the pool is
  // made writes a byte of it), so a refused create leaves it as it was. The growth itself comes
  // after the last check that can refuse (the huge pages, the NUMA binding, a pfn section): a
  // shared mapping may reach past the end of the file as long as nothing touches it.
  // A NUMA binding of a tmpfs or hugetlbfs file's mapping is the inode's shared policy, which
  // outlives the mapping: a failure after bind_to_node drops it again.
  struct restore_on_failure {
    device& d;
    std::uint64_t size;
    bool armed;
    void* bound = nullptr;
    std::size_t bound_len = 0;
    ~restore_on_failure() {
      if (!armed) return;
      if (bound) ::mbind(bound, bound_len, MPOL_DEFAULT, nullptr, 0, 0);
      d.restore_size(size);
    }
  } restore{d, d.size(), kind != backing_kind::anonymous && kind != backing_kind::device_dax};

  // ---- map it, with the huge pages asked for or the best fallback ---------------------------------
  const layout lay = layout_for_regions(data_len / HPAGE_PMD_SIZE, opts.root_size, HPAGE_PMD_SIZE);
  std::string huge_text, fallback;  // what the pool got; why it got less than asked
  auto fall_back = [&](const std::string& why) {
    if (opts.require_huge_pages) fail(ENOMEM, name, why + " (volatile_options.require_huge_pages is set)");
    fallback += (fallback.empty() ? "" : "; ") + why;
  };
  vopts::huge_pages want = opts.huge;
  if (want == vopts::huge_pages::hugetlb && kind != backing_kind::anonymous && kind != backing_kind::hugetlbfs) {
    fall_back(std::string("hugetlb pages need anonymous memory or a hugetlbfs file, not a ") + kind_text(kind));
    want = vopts::huge_pages::thp;
  }
  bool mapped = false;
  if (want == vopts::huge_pages::hugetlb && kind == backing_kind::anonymous) {
    mapped = d.map_volatile(lay.data_offset, data_len, /*hugetlb=*/true);
    if (mapped) {
      huge_text = "hugetlb 2 MiB pages";
    } else {
      fall_back("no " + std::to_string(data_len / HPAGE_PMD_SIZE) + " free 2 MiB huge pages (mmap MAP_HUGETLB: " +
                std::strerror(errno) + "; HugePages_Free " + meminfo_field("HugePages_Free:") + " of HugePages_Total " +
                meminfo_field("HugePages_Total:") + " in /proc/meminfo; reserve them with sysctl vm.nr_hugepages)");
      want = vopts::huge_pages::thp;
    }
  }
  if (!mapped) d.map_volatile(lay.data_offset, data_len, /*hugetlb=*/false);
  char* data = d.base() + lay.data_offset;
  if (kind == backing_kind::hugetlbfs) {
    huge_text = "hugetlbfs huge pages";
  } else if (kind == backing_kind::device_dax) {
    huge_text = std::to_string(d.alignment() >> 10) + " KiB device pages";
  } else if (want == vopts::huge_pages::thp) {
    // THP for anonymous memory follows "enabled"; for tmpfs and memfd, "shmem_enabled".
    const bool shmem = kind == backing_kind::shmem;
    const char* knob = shmem ? "/sys/kernel/mm/transparent_hugepage/shmem_enabled"
                             : "/sys/kernel/mm/transparent_hugepage/enabled";
    const std::string mode = selected(read_line(knob));
    if (kind == backing_kind::other_file)
      fall_back("transparent huge pages are for anonymous memory, tmpfs and memfd, not a file (page cache)");
    else if (mode.empty())
      fall_back(std::string("transparent huge pages are not available (no ") + knob + ")");
    else if (mode == "never" || mode == "deny")
      fall_back(std::string("transparent huge pages are disabled (") + knob + " is " + mode + ")");
    else if (::madvise(data, data_len, MADV_HUGEPAGE) != 0)
      fall_back(std::string("madvise(MADV_HUGEPAGE): ") + std::strerror(errno));
    else
      huge_text = "transparent huge pages";
  }
  if (huge_text.empty()) huge_text = "base pages";
  if (opts.numa_node != -1 && kind != backing_kind::device_dax) {
    bind_to_node(name, data, data_len, opts.numa_node);
    if (kind == backing_kind::shmem || kind == backing_kind::hugetlbfs) {
      restore.bound = data;
      restore.bound_len = data_len;
    }
  }

  // ---- the pool: DRAM metadata (all zero: every region FREE), no persistence ----------------------
  impl->volatile_ = true;
  impl->no_flush_ = true;
  impl->lay_ = lay;
  impl->nr_regions_ = lay.nr_regions;
  impl->nr_pages_ = lay.nr_regions * HPAGE_PMD_NR;
  impl->max_regions_ = lay.nr_regions;
  impl->pfn_base_ = impl->picked_base_ = pick_pfn_base(impl->nr_pages_);
  if (impl->pfn_base_ == 0) fail(EBUSY, name, "cannot create: no free pfn range found (random source broken?)");
  if (restore.armed) d.ensure_size(data_len, false);  // grows a short file, never shrinks one
  // A tmpfs or disk file may be sparse: its blocks are reserved region by region as the allocator
  // takes them (region_backing.hpp). A hugetlbfs file's huge pages were reserved by the mapping.
  if (kind == backing_kind::shmem || kind == backing_kind::other_file) impl->backing_.init(d.fd(), 0, lay.nr_regions);
  impl->pers_ = opts.backend ? opts.backend : std::make_shared<null_persistence>();
  impl->pers_->attach(d.base(), d.mapped_length(), granularity::page);  // nothing is ever flushed
  impl->locate_metadata();  // the intent log disabled (volatile_)
  impl->numa_node_ = opts.numa_node != -1 ? opts.numa_node : kind == backing_kind::device_dax ? d.numa_node() : -1;
  impl->memory_desc_ = "volatile, " + std::string(kind_text(kind)) + (anonymous ? "" : " " + name) + ", " +
                       size_text(data_len) + ", " + huge_text +
                       (opts.numa_node != -1 ? ", bound to node " + std::to_string(opts.numa_node)
                        : impl->numa_node_ >= 0 ? ", on node " + std::to_string(impl->numa_node_)
                                                : std::string()) +
                       (opts.populate ? ", populated" : "") +
                       (fallback.empty() ? "" : " (fallback: " + fallback + ")");
  stamp_opener(impl->fork_generation_, impl->opener_pid_);
  if (!opts.bad_blocks.empty()) {
    // Offsets in the backing are offsets of the pages: shifted by the (DRAM) metadata's length
    // to the layout's offsets, which is what the pool keeps (badblocks.cpp).
    std::vector<bad_block> bad;
    for (const bad_block& b : opts.bad_blocks) {
      if (b.length == 0 || b.offset >= data_len || b.length > data_len - b.offset)
        fail(EINVAL, name, "volatile_options::bad_blocks: range " + std::to_string(b.offset) + "+" +
                               std::to_string(b.length) + (b.length == 0 ? " is empty" : " lies outside the pool's " +
                                                                                              std::to_string(data_len) + " bytes"));
      bad.push_back({b.offset + lay.data_offset, b.length});
    }
    impl->bad_blocks_ = normalise_bad_blocks(std::move(bad));
    impl->index_bad_pages();
  }
  if (opts.populate) {
    // After the huge-page advice and the NUMA binding (so the pages are faulted in the size and
    // on the node asked for) and after a short file was grown (a fault past its end is SIGBUS):
    // why not MAP_POPULATE at mmap, which would also swallow the errors. A region that holds a
    // bad block is left alone (a store to poisoned memory is a machine check); with a backing
    // file each run of regions is reserved first (fallocate), so a full file system is ENOSPC
    // here, and the allocator finds those regions reserved (region_backing.hpp).
    std::vector<bool> bad_region(lay.nr_regions, false);
    for (const bad_block& b : opts.bad_blocks)
      for (std::uint64_t r = b.offset / HPAGE_PMD_SIZE; r <= (b.offset + b.length - 1) / HPAGE_PMD_SIZE; ++r)
        bad_region[r] = true;
    for (std::uint64_t r = 0; r < lay.nr_regions;) {
      if (bad_region[r]) {
        ++r;
        continue;
      }
      std::uint64_t end = r;
      while (end < lay.nr_regions && !bad_region[end]) ++end;
      if (kind == backing_kind::shmem || kind == backing_kind::other_file)
        if (const int e = impl->backing_.reserve(std::uint32_t(r), std::uint32_t(end - r)))
          fail(e, name, "volatile_options.populate: cannot reserve " + size_text((end - r) * HPAGE_PMD_SIZE) +
                            " of the backing at offset " + std::to_string(r * HPAGE_PMD_SIZE) + ": fallocate: " +
                            std::strerror(e));
      if (const int e = populate_write(data + r * HPAGE_PMD_SIZE, std::size_t((end - r) * HPAGE_PMD_SIZE)))
        fail(e == EFAULT ? ENOMEM : e, name,
             "volatile_options.populate: cannot fault in " + size_text((end - r) * HPAGE_PMD_SIZE) + " at offset " +
                 std::to_string(r * HPAGE_PMD_SIZE) + ": madvise(MADV_POPULATE_WRITE): " + std::strerror(e) +
                 (e == EFAULT ? " (the memory could not be had: the huge pages, the bound NUMA node or the backing's "
                                "file system is full)"
                              : ""));
      r = end;
    }
  }
  impl->build_volatile();
  if (!impl->bad_pages_.empty()) impl->apply_bad_pages_at_open();
  // Before register_pool: from there on another thread's fork() reads the pool's magazine state.
  impl->enable_magazines();
  impl->register_pool();
  restore.armed = false;
  return impl;
}

}  // namespace pmpage::detail
