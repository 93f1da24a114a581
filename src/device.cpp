// device.cpp — see device.hpp.
#include "device.hpp"

#include <fcntl.h>
#include <libpmem.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>

#include "pmpage/types.hpp"

#ifndef MAP_SYNC
#define MAP_SYNC 0x80000
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
  if (fd_ >= 0) ::close(fd_);
}

void device::open_existing(const std::string& path) {
  path_ = path;
  fd_ = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (fd_ < 0) {
    const int e = errno;
    if (e == EISDIR) fail(e, path, "is a directory, not a pool file or device");
    fail(e, path, sys_reason("cannot open read-write", e));
  }
  probe();
}

void device::create_file(const std::string& path, unsigned mode) {
  path_ = path;
  fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, mode);
  if (fd_ < 0) fail(errno, path, sys_reason("cannot create", errno));
  created_ = true;
  probe();
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
    kind_ = kind::device_dax;
    size_ = sz;
    return;
  }
  fail(ENODEV, path_, "is neither a regular file nor a device DAX character device");
}

void device::lock() {
  if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    const int e = errno;
    if (e == EWOULDBLOCK) fail(EBUSY, path_, "pool is already open (by another process or another handle)");
    fail(e, path_, sys_reason("flock", e));
  }
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

void device::reserve_blocks(std::uint64_t len) {
  if (kind_ != kind::regular_file) return;
  const int e = ::posix_fallocate(fd_, 0, off_t(len));
  if (e != 0 && e != EOPNOTSUPP && e != EINVAL)
    fail(e, path_, sys_reason("cannot reserve blocks for the pool metadata", e));
}

void device::read_at(void* buf, std::size_t len, std::uint64_t offset) const {
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

void device::map(std::uint64_t length, std::uint64_t data_offset) {
  constexpr std::uint64_t gib = 1ull << 30;
  const std::size_t res_len = std::size_t(length + gib);
  void* res = ::mmap(nullptr, res_len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (res == MAP_FAILED) fail(errno, path_, sys_reason("cannot reserve address space", errno));
  reservation_ = static_cast<char*>(res);
  reservation_len_ = res_len;
  const auto r = reinterpret_cast<std::uintptr_t>(res);
  const std::uintptr_t data = (r + data_offset + gib - 1) & ~std::uintptr_t(gib - 1);
  char* want = reinterpret_cast<char*>(data - data_offset);
  void* m = ::mmap(want, length, PROT_READ | PROT_WRITE, MAP_SHARED_VALIDATE | MAP_SYNC | MAP_FIXED, fd_, 0);
  bool sync = m != MAP_FAILED;
  if (!sync) m = ::mmap(want, length, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd_, 0);
  if (m == MAP_FAILED) {
    const int e = errno;
    unmap();
    fail(e, path_, sys_reason("cannot map", e));
  }
  base_ = static_cast<char*>(m);
  map_len_ = length;
  // MAP_SYNC means cache flushes reach the media; device DAX needs no page cache either.
  // pmem_is_pmem() answers the PMEM_IS_PMEM_FORCE override for everything else.
  is_pmem_ = sync || kind_ == kind::device_dax || pmem_is_pmem(base_, length);
}

void device::unmap() noexcept {
  if (reservation_) ::munmap(reservation_, reservation_len_);
  reservation_ = nullptr;
  base_ = nullptr;
}

void device::abandon() noexcept {
  unmap();
  if (created_ && !path_.empty()) ::unlink(path_.c_str());
  created_ = false;
}

void* reserve_aligned(std::size_t length, std::size_t align) noexcept {
  const std::size_t len = length + align;
  void* p = ::mmap(nullptr, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
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
