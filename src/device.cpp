// device.cpp — see device.hpp.
#include "device.hpp"

#include <fcntl.h>
#include <libpmem2.h>
#include <strings.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <vector>

#include "pmpage/types.hpp"
#include "registry.hpp"

#ifndef MAP_SYNC
#define MAP_SYNC 0x80000
#endif
#ifndef RENAME_NOREPLACE
#define RENAME_NOREPLACE (1 << 0)
#endif
#ifndef MAP_HUGE_2MB
#define MAP_HUGE_2MB (21 << MAP_HUGE_SHIFT)
#endif
#ifndef MAP_SHARED_VALIDATE
#define MAP_SHARED_VALIDATE 0x03
#endif

namespace pmpage::detail {

void fail(int err, const std::string& path, const std::string& reason) {
  throw pmpage::error(err, "pmpage: " + path + ": " + reason);
}

namespace {
std::string sys_reason(const char* what, int err) { return std::string(what) + ": " + std::strerror(err); }

/// mmap of `len` bytes of reserved address space (PROT_NONE); when there is none left, the
/// quarantined descriptor windows of closed pools (registry.hpp) are given back and it is retried.
void* reserve_address_space(std::size_t len) noexcept {
  void* p = ::mmap(nullptr, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED && errno == ENOMEM && release_quarantine())
    p = ::mmap(nullptr, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  return p;
}

bool read_sysfs_u64(const std::string& file, std::uint64_t& out) {
  std::ifstream in(file);
  if (!in) return false;
  std::string s;
  in >> s;
  if (s.empty()) return false;
  out = std::strtoull(s.c_str(), nullptr, 0);
  return true;
}
}  // namespace

device::~device() {
  unmap();
  if (fd_ < 0) return;
  // A flock belongs to the open file description, which fork() children share: closing only our
  // descriptor would leave the lock held for as long as any child keeps its copy (issue #18).
  // So the process that took it unlocks it explicitly; a fork child closing its inherited copy
  // only closes its descriptor, and the lock stays with the opener.
  if (lock_pid_ != 0 && lock_pid_ == int(::getpid())) ::flock(fd_, LOCK_UN);
  ::close(fd_);
}

void device::open_existing(const std::string& path, access a) {
  path_ = path;
  // O_NONBLOCK: a FIFO is refused by probe() instead of blocking the open until a writer comes.
  fd_ = ::open(path.c_str(), (a == access::read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC | O_NONBLOCK);
  if (fd_ < 0) {
    const int e = errno;
    if (e == EISDIR) fail(e, path, "is a directory, not a pool file or device");
    fail(e, path, sys_reason(a == access::read_only ? "cannot open read-only" : "cannot open read-write", e));
  }
  probe();
}

std::string device::temp_name(const std::string& path) { return path + ".pmpage-creating"; }

namespace {
/// True if `name` still names the file open as `fd` (a racing create may have replaced it).
bool names_fd(const std::string& name, int fd) {
  struct stat a, b;
  return ::fstat(fd, &a) == 0 && ::lstat(name.c_str(), &b) == 0 && a.st_dev == b.st_dev && a.st_ino == b.st_ino;
}

int fsync_parent_dir(const std::string& path) {
  std::string dir = std::filesystem::path(path).parent_path().string();
  if (dir.empty()) dir = ".";
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) return errno;
  const int r = ::fsync(dfd) == 0 ? 0 : errno;
  ::close(dfd);
  return r;
}
}  // namespace

void device::create_temp(const std::string& path, unsigned mode) {
  path_ = path;
  const std::string tmp = temp_name(path);
  // The lock on the temporary file is what makes two creates of one path conflict. A new file is
  // locked only after it is created, so a racing create may take it first or replace its name:
  // check after locking that the name is still ours, and start over if not.
  for (int attempt = 0; attempt < 8; ++attempt) {
    const int fd = ::open(tmp.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, mode);
    if (fd < 0 && errno != EEXIST) fail(errno, path, sys_reason(("cannot create " + tmp).c_str(), errno));
    if (fd < 0) {
      // Left by an interrupted create (nobody holds its lock): remove it. Held: a create is running.
      const int old = ::open(tmp.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
      if (old < 0) {
        if (errno == ENOENT) continue;
        fail(errno, path, sys_reason(("cannot open the stale temporary file " + tmp).c_str(), errno));
      }
      if (::flock(old, LOCK_EX | LOCK_NB) != 0) {
        const int e = errno;
        ::close(old);
        if (e == EWOULDBLOCK) fail(EBUSY, path, "another pool::create of this path is running (it holds " + tmp + ")");
        fail(e, path, sys_reason("flock", e));
      }
      if (names_fd(tmp, old) && ::unlink(tmp.c_str()) != 0 && errno != ENOENT) {
        const int e = errno;
        ::flock(old, LOCK_UN);
        ::close(old);
        fail(e, path, sys_reason(("cannot remove the stale temporary file " + tmp).c_str(), e));
      }
      ::flock(old, LOCK_UN);  // as everywhere: a fork() child's copy of `old` must not keep it locked
      ::close(old);
      continue;
    }
    if (::flock(fd, LOCK_EX | LOCK_NB) == 0 && names_fd(tmp, fd)) {
      fd_ = fd;
      lock_pid_ = int(::getpid());
      temp_path_ = tmp;
      created_ = true;
      probe();
      return;
    }
    ::flock(fd, LOCK_UN);  // if it was ours (names_fd failed); another create's lock is on its own description
    ::close(fd);           // lost a race with another create: not ours to remove
  }
  fail(EBUSY, path, "another pool::create of this path keeps replacing " + tmp);
}

void device::publish() {
  if (temp_path_.empty()) return;
  sync();
  // RENAME_NOREPLACE: a file that appeared at the path while we formatted is never replaced.
  long r = ::syscall(SYS_renameat2, AT_FDCWD, temp_path_.c_str(), AT_FDCWD, path_.c_str(), RENAME_NOREPLACE);
  if (r != 0 && (errno == EINVAL || errno == ENOSYS)) {
    // The file system (or kernel) lacks RENAME_NOREPLACE: link() does not replace either.
    r = ::link(temp_path_.c_str(), path_.c_str());
    if (r == 0) ::unlink(temp_path_.c_str());
  }
  if (r != 0) {
    const int e = errno;
    if (e == EEXIST) fail(EEXIST, path_, "was created by someone else while pool::create ran; it was left alone");
    fail(e, path_, sys_reason("cannot rename the new pool into place", e));
  }
  temp_path_.clear();
  created_ = false;  // published: from here on a failure leaves the (complete) pool in place
  if (const int e = fsync_parent_dir(path_); e != 0)
    fail(e, path_, sys_reason("the pool was created, but syncing its directory failed", e));
}

void device::probe() {
  struct stat st;
  if (::fstat(fd_, &st) != 0) fail(errno, path_, sys_reason("fstat", errno));
  if (S_ISREG(st.st_mode)) {
    kind_ = kind::regular_file;
    size_ = std::uint64_t(st.st_size);
    return;
  }
  if (S_ISDIR(st.st_mode)) fail(EISDIR, path_, "is a directory, not a pool file or device");
  if (S_ISCHR(st.st_mode)) {
    const std::string sys = "/sys/dev/char/" + std::to_string(major(st.st_rdev)) + ":" +
                            std::to_string(minor(st.st_rdev));
    char link[256];
    const ssize_t n = ::readlink((sys + "/subsystem").c_str(), link, sizeof link - 1);
    const std::string subsystem = n > 0 ? std::string(link, std::size_t(n)) : std::string();
    if (subsystem.find("/dax") == std::string::npos)
      fail(ENODEV, path_, "is a character device but not device DAX (/dev/daxX.Y)");
    std::uint64_t sz = 0, al = 0;
    if (!read_sysfs_u64(sys + "/size", sz) || sz == 0) fail(ENODEV, path_, "cannot read device DAX size from " + sys);
    if (read_sysfs_u64(sys + "/device/align", al) && al > align_) align_ = al;
    std::uint64_t node = 0;  // the memory's node; numa_node is the device's own proximity
    if (read_sysfs_u64(sys + "/device/target_node", node) || read_sysfs_u64(sys + "/device/numa_node", node))
      numa_node_ = int(std::int64_t(node));  // "-1" reads as 2^64-1: -1 again
    kind_ = kind::device_dax;
    size_ = sz;
    return;
  }
  fail(ENODEV, path_, "is neither a regular file nor a device DAX character device");
}

void device::lock(bool shared) {
  if (::flock(fd_, (shared ? LOCK_SH : LOCK_EX) | LOCK_NB) != 0) {
    const int e = errno;
    if (e != EWOULDBLOCK) fail(e, path_, sys_reason("flock", e));
    if (shared)
      fail(EBUSY, path_, "pool is open for writing (by another process or another handle); "
                         "a read-only open needs every writer to close it first");
    // Held shared (read-only openers) or exclusively (a writer): ask which, without waiting.
    const int probe = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
    const bool readers_only = probe >= 0 && ::flock(probe, LOCK_SH | LOCK_NB) == 0;
    // Unlocked before the close: a fork() meanwhile must not leave a child holding it.
    if (readers_only) ::flock(probe, LOCK_UN);
    if (probe >= 0) ::close(probe);
    fail(EBUSY, path_, readers_only ? "pool is open read-only (by another process or another handle); "
                                      "writing needs every reader to close it first"
                                    : "pool is already open for writing (by another process or another handle)");
  }
  lock_pid_ = int(::getpid());
}

void device::ensure_size(std::uint64_t size, bool preallocate) {
  if (kind_ != kind::regular_file) return;
  if (size > size_) {
    if (::ftruncate(fd_, off_t(size)) != 0) fail(errno, path_, sys_reason("cannot grow file", errno));
    size_ = size;
  }
  if (preallocate) {
    const int e = ::posix_fallocate(fd_, 0, off_t(size_));
    if (e != 0) fail(e, path_, sys_reason("cannot reserve the file's blocks (posix_fallocate)", e));
  }
}

void device::restore_size(std::uint64_t size) noexcept {
  if (kind_ != kind::regular_file || fd_ < 0) return;
  // Asks the file, not size_: a writable mapping of a hugetlbfs file grows it too.
  struct stat st;
  if (::fstat(fd_, &st) != 0 || std::uint64_t(st.st_size) == size) return;
  if (::ftruncate(fd_, off_t(size)) == 0) size_ = size;
}

void device::reserve_blocks(std::uint64_t len) {
  if (kind_ != kind::regular_file) return;
  const int e = ::posix_fallocate(fd_, 0, off_t(len));
  if (e != 0 && e != EOPNOTSUPP && e != EINVAL)
    fail(e, path_, sys_reason("cannot reserve blocks for the pool metadata", e));
}

void device::read_at(void* buf, std::size_t len, std::uint64_t offset) const {
  if (kind_ == kind::device_dax) {
    // Device DAX files implement mmap but not read(2): map the covering aligned window read-only
    // (mappings of device DAX must be multiples of its alignment), copy, unmap.
    const std::uint64_t start = offset / align_ * align_;
    const std::uint64_t end = (offset + len + align_ - 1) / align_ * align_;
    if (offset + len > size_) fail(EIO, path_, "read past the end of the device");
    void* m = ::mmap(nullptr, end - start, PROT_READ, MAP_SHARED, fd_, off_t(start));
    if (m == MAP_FAILED) fail(errno, path_, sys_reason("mmap (to read the superblocks)", errno));
    std::memcpy(buf, static_cast<const char*>(m) + (offset - start), len);
    ::munmap(m, end - start);
    return;
  }
  auto* p = static_cast<char*>(buf);
  while (len > 0) {
    const ssize_t n = ::pread(fd_, p, len, off_t(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      fail(errno, path_, sys_reason("read", errno));
    }
    if (n == 0) fail(EIO, path_, "unexpected end of file");
    p += n;
    len -= std::size_t(n);
    offset += std::uint64_t(n);
  }
}

bool device::is_blank() const {
  if (kind_ != kind::regular_file) return false;
  std::vector<char> buf(1u << 20);
  std::uint64_t pos = 0;
  while (pos < size_) {
    // Skip holes: a sparse file of any size is checked in no time.
    off_t data = ::lseek(fd_, off_t(pos), SEEK_DATA);
    if (data < 0) {
      if (errno == ENXIO) return true;  // only holes from here on
      data = off_t(pos);                // no SEEK_DATA here: read everything
    }
    off_t hole = ::lseek(fd_, data, SEEK_HOLE);
    if (hole < 0) hole = off_t(size_);
    for (std::uint64_t o = std::uint64_t(data); o < std::uint64_t(hole) && o < size_;) {
      const std::size_t n = std::size_t(std::min<std::uint64_t>(buf.size(), std::min<std::uint64_t>(std::uint64_t(hole), size_) - o));
      read_at(buf.data(), n, o);
      if (buf[0] != 0 || std::memcmp(buf.data(), buf.data() + 1, n - 1) != 0) return false;
      o += n;
    }
    pos = std::uint64_t(hole);
  }
  return true;
}

std::vector<std::pair<std::uint64_t, std::uint64_t>> device::data_extents(std::uint64_t begin, std::uint64_t end) const {
  std::vector<std::pair<std::uint64_t, std::uint64_t>> out;
  if (kind_ != kind::regular_file) {
    out.emplace_back(begin, end);
    return out;
  }
  for (std::uint64_t pos = begin; pos < end;) {
    const off_t data = ::lseek(fd_, off_t(pos), SEEK_DATA);
    if (data < 0) {
      if (errno != ENXIO) out.emplace_back(pos, end);  // no SEEK_DATA here: assume data
      break;                                          // ENXIO: only holes from pos on
    }
    if (std::uint64_t(data) >= end) break;
    off_t hole = ::lseek(fd_, data, SEEK_HOLE);
    const std::uint64_t stop = hole < 0 ? end : std::min<std::uint64_t>(std::uint64_t(hole), end);
    out.emplace_back(std::uint64_t(data), stop);
    pos = stop;
  }
  return out;
}

void device::sync() {
  if (kind_ != kind::regular_file) return;
  if (::fsync(fd_) != 0) fail(errno, path_, sys_reason("fsync", errno));
}

void device::map(std::uint64_t length, std::uint64_t data_offset, map_mode mode, std::uint64_t reserve_length) {
  constexpr std::uint64_t gib = 1ull << 30;
  if (reserve_length < length) reserve_length = length;
  const std::size_t res_len = std::size_t(reserve_length + gib);
  void* res = reserve_address_space(res_len);
  if (res == MAP_FAILED) fail(errno, path_, sys_reason("cannot reserve address space", errno));
  reservation_ = static_cast<char*>(res);
  reservation_len_ = res_len;
  const auto r = reinterpret_cast<std::uintptr_t>(res);
  const std::uintptr_t data = (r + data_offset + gib - 1) & ~std::uintptr_t(gib - 1);
  char* want = reinterpret_cast<char*>(data - data_offset);
  void* m = MAP_FAILED;
  bool sync = false;
  if (mode == map_mode::shared_write) {
    m = ::mmap(want, length, PROT_READ | PROT_WRITE, MAP_SHARED_VALIDATE | MAP_SYNC | MAP_FIXED, fd_, 0);
    sync = m != MAP_FAILED;
    if (!sync) m = ::mmap(want, length, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd_, 0);
  } else if (mode == map_mode::shared_read) {
    m = ::mmap(want, length, PROT_READ, MAP_SHARED | MAP_FIXED, fd_, 0);
  } else {
    // Device DAX refuses private mappings (EINVAL): the caller falls back to shared_read.
    m = ::mmap(want, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_FIXED, fd_, 0);
  }
  if (m == MAP_FAILED) {
    const int e = errno;
    unmap();
    fail(e, path_, sys_reason("cannot map", e));
  }
  base_ = static_cast<char*>(m);
  map_len_.store(length, std::memory_order_release);
  map_limit_ = reserve_length;
  mode_ = mode;
  map_sync_ = sync;
  // MAP_SYNC means cache flushes reach the media; device DAX needs no page cache either. Only a
  // shared writable mapping is ever flushed (read-only modes: page, nothing is written).
  gran_ = mode == map_mode::shared_write ? detect_granularity(sync) : granularity::page;
}

void device::extend_map(std::uint64_t new_length) {
  const std::uint64_t old = map_len_.load(std::memory_order_relaxed);
  if (new_length <= old) return;
  if (!base_ || new_length > map_limit_)
    fail(EINVAL, path_, "cannot map " + std::to_string(new_length) + " bytes: beyond the address space reserved at open (" +
                            std::to_string(map_limit_) + ")");
  char* at = base_ + old;
  const std::size_t len = std::size_t(new_length - old);
  void* m = MAP_FAILED;
  if (mode_ == map_mode::shared_write)
    m = map_sync_ ? ::mmap(at, len, PROT_READ | PROT_WRITE, MAP_SHARED_VALIDATE | MAP_SYNC | MAP_FIXED, fd_, off_t(old))
                  : ::mmap(at, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd_, off_t(old));
  else if (mode_ == map_mode::shared_read)
    m = ::mmap(at, len, PROT_READ, MAP_SHARED | MAP_FIXED, fd_, off_t(old));
  else
    m = ::mmap(at, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_FIXED, fd_, off_t(old));
  if (m == MAP_FAILED) {
    const int e = errno;
    // MAP_FIXED failed: the range may have lost its reservation. Reserve it again (PROT_NONE), so
    // that nothing else is ever mapped inside the pool's window.
    ::mmap(at, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0);
    fail(e, path_, sys_reason("cannot map the grown part of the pool", e));
  }
  map_len_.store(new_length, std::memory_order_release);
}

namespace {

/// PMEM2_FORCE_GRANULARITY as libpmem2 reads it (case-insensitive; CACHELINE and CL accepted).
bool forced_granularity(granularity& g) {
  const char* v = std::getenv("PMEM2_FORCE_GRANULARITY");
  if (!v) return false;
  if (!strcasecmp(v, "BYTE")) {
    g = granularity::byte;
  } else if (!strcasecmp(v, "CACHE_LINE") || !strcasecmp(v, "CACHELINE") || !strcasecmp(v, "CL")) {
    g = granularity::cache_line;
  } else if (!strcasecmp(v, "PAGE")) {
    g = granularity::page;
  } else {
    return false;  // libpmem2 ignores an unknown value too
  }
  return true;
}

/// eADR, as libpmem2 decides it (auto_flush_linux.c): some NVDIMM region exists and every one
/// says its persistence domain is the CPU cache.
bool platform_has_eadr() {
  std::error_code ec;
  std::filesystem::directory_iterator it("/sys/bus/nd/devices", ec), end;
  bool any = false;
  for (; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name.rfind("region", 0) != 0) continue;
    std::ifstream in(it->path() / "persistence_domain");
    std::string domain;
    if (!(in >> domain) || domain != "cpu_cache") return false;
    any = true;
  }
  return any;
}

/// libpmem2's answer for a regular file: a one-page map (the first page, never written) and its
/// store granularity; false if libpmem2 refused (its message is not needed: the caller falls back).
bool libpmem2_granularity(int fd, granularity& g) {
  pmem2_source* src = nullptr;
  if (pmem2_source_from_fd(&src, fd) != 0) return false;
  pmem2_config* cfg = nullptr;
  bool ok = false;
  if (pmem2_config_new(&cfg) == 0) {
    pmem2_map* map = nullptr;
    // PAGE is the coarsest: libpmem2 then maps and reports the finest granularity it can get.
    if (pmem2_config_set_required_store_granularity(cfg, PMEM2_GRANULARITY_PAGE) == 0 &&
        pmem2_config_set_length(cfg, 4096) == 0 && pmem2_map_new(&map, cfg, src) == 0) {
      const pmem2_granularity pg = pmem2_map_get_store_granularity(map);
      g = pg == PMEM2_GRANULARITY_BYTE ? granularity::byte
          : pg == PMEM2_GRANULARITY_CACHE_LINE ? granularity::cache_line
                                               : granularity::page;
      pmem2_map_delete(&map);
      ok = true;
    }
    pmem2_config_delete(&cfg);
  }
  pmem2_source_delete(&src);
  return ok;
}

}  // namespace

granularity device::detect_granularity(bool map_sync) const noexcept {
  granularity g = granularity::page;
  try {
    if (kind_ == kind::device_dax || !libpmem2_granularity(fd_, g))
      g = !map_sync && kind_ != kind::device_dax ? granularity::page
          : platform_has_eadr()                  ? granularity::byte
                                                 : granularity::cache_line;
    if (forced_granularity(g)) return g;
  } catch (...) {  // out of memory in the sysfs walk: the safe answer
    return map_sync || kind_ == kind::device_dax ? granularity::cache_line : granularity::page;
  }
  if (g == granularity::page) {
    const char* f = std::getenv("PMEM_IS_PMEM_FORCE");
    if (f && std::strcmp(f, "1") == 0) g = granularity::cache_line;
  }
  return g;
}

bool device::map_volatile(std::uint64_t meta_len, std::uint64_t data_len, bool hugetlb) {
  constexpr std::uint64_t gib = 1ull << 30;
  const std::size_t res_len = std::size_t(meta_len + data_len + gib);
  void* res = reserve_address_space(res_len);
  if (res == MAP_FAILED) fail(errno, path_, sys_reason("cannot reserve address space", errno));
  reservation_ = static_cast<char*>(res);
  reservation_len_ = res_len;
  const auto r = reinterpret_cast<std::uintptr_t>(res);
  char* data = reinterpret_cast<char*>((r + meta_len + gib - 1) & ~std::uintptr_t(gib - 1));
  char* meta = data - meta_len;
  // The metadata is only ever touched where it is used (MAP_NORESERVE, zero-fill on demand):
  // an unsplit region costs its 8-byte region word.
  if (::mmap(meta, meta_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0) ==
      MAP_FAILED) {
    const int e = errno;
    unmap();
    fail(e, path_, sys_reason("cannot map the pool's metadata", e));
  }
  void* m;
  if (fd_ >= 0) {
    m = ::mmap(data, data_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd_, 0);
  } else if (hugetlb) {
    // No MAP_NORESERVE: the huge pages are reserved now or the mapping fails (ENOMEM), instead of
    // a SIGBUS at the first touch of a page the pool handed out.
    m = ::mmap(data, data_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | MAP_HUGE_2MB | MAP_FIXED,
               -1, 0);
    if (m == MAP_FAILED) {
      const int e = errno;
      unmap();
      errno = e;
      return false;
    }
  } else {
    // Not MAP_NORESERVE: a size the kernel's overcommit policy refuses is ENOMEM here, at create,
    // rather than the OOM killer later.
    m = ::mmap(data, data_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
  }
  if (m == MAP_FAILED) {
    const int e = errno;
    unmap();
    fail(e, path_, sys_reason("cannot map the pool's pages", e));
  }
  base_ = meta;
  map_len_.store(meta_len + data_len, std::memory_order_release);
  map_limit_ = meta_len + data_len;
  gran_ = granularity::page;
  return true;
}

void device::protect_read_only() {
  if (::mprotect(base_, mapped_length(), PROT_READ) != 0) fail(errno, path_, sys_reason("mprotect", errno));
}

void device::unmap() noexcept {
  if (reservation_) ::munmap(reservation_, reservation_len_);
  reservation_ = nullptr;
  base_ = nullptr;
}

void device::abandon() noexcept {
  unmap();
  if (created_) ::unlink((temp_path_.empty() ? path_ : temp_path_).c_str());
  created_ = false;
}

int reserve_file_range(int fd, std::uint64_t offset, std::uint64_t len) noexcept {
  int rc;
  do rc = ::fallocate(fd, 0, off_t(offset), off_t(len));
  while (rc != 0 && errno == EINTR);
  return rc == 0 ? 0 : errno;
}

int reserve_file_holes(int fd, std::uint64_t offset, std::uint64_t len) noexcept {
  // No SEEK_HOLE (an old file system): the answer is the end of the file, so this falls through to
  // fallocate only past it; an error from lseek: reserve, to be safe.
  const off_t hole = ::lseek(fd, off_t(offset), SEEK_HOLE);
  if (hole >= 0 && std::uint64_t(hole) >= offset + len) return 0;
  return reserve_file_range(fd, offset, len);
}

void* reserve_aligned(std::size_t length, std::size_t align) noexcept {
  const std::size_t len = length + align;
  void* p = reserve_address_space(len);
  if (p == MAP_FAILED) return nullptr;
  const auto a = reinterpret_cast<std::uintptr_t>(p);
  const std::uintptr_t start = (a + align - 1) & ~std::uintptr_t(align - 1);
  if (start > a) ::munmap(p, start - a);
  const std::uintptr_t end = start + length;
  if (a + len > end) ::munmap(reinterpret_cast<void*>(end), a + len - end);
  void* m = ::mmap(reinterpret_cast<void*>(start), length, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0);
  if (m == MAP_FAILED) {
    ::munmap(reinterpret_cast<void*>(start), length);
    return nullptr;
  }
  return m;
}

void release_reservation(void* addr, std::size_t length) noexcept {
  if (addr) ::munmap(addr, length);
}

}  // namespace pmpage::detail
