// segment.cpp — the shared segment's life cycle and process table (segment.hpp explains the
// protocol; this file only carries it out).
#include "segment.hpp"

#include <fcntl.h>
#include <pthread.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <mutex>
#include <string>

#include "device.hpp"

namespace pmpage::detail {

namespace {

/// Offset 0 of the object. Written by the initialiser under the life-cycle lock; read by
/// attachers under it.
struct segment_header {
  std::uint64_t magic;
  std::uint32_t abi;
  std::uint32_t ready;        // 1 once an initialiser finished (0: being built, or its builder died)
  std::uint64_t size;         // bytes of the object, header included
  std::uint64_t generation;   // contents built this many times since the object was created
};

/// One slot of the process table (256 B: room for the per-process records of issue #21).
struct process_record {
  std::uint32_t in_use;       // claimed by an attach, cleared by its detach (written under byte 0)
  std::int32_t pid;
  std::uint64_t start_time;
  std::uint8_t reserved[240];
};
static_assert(sizeof(process_record) == 256);

constexpr std::uint64_t TABLE_OFFSET = 4096;
constexpr std::uint64_t HEADER_BYTES = TABLE_OFFSET + shared_segment::MAX_PROCESSES * sizeof(process_record);
static_assert(HEADER_BYTES % 4096 == 0);

std::string reason(const char* what) { return std::string(what) + ": " + std::strerror(errno); }

/// An OFD lock request of `type` (F_WRLCK, F_UNLCK) over bytes [at, at + len).
struct flock byte_range(short type, off_t at, off_t len = 1) {
  struct flock fl{};
  fl.l_type = type;
  fl.l_whence = SEEK_SET;
  fl.l_start = at;
  fl.l_len = len;
  return fl;
}

/// OFD write lock on byte `at` (wait: F_OFD_SETLKW; else F_OFD_SETLK, false if it is held).
bool ofd_lock(int fd, off_t at, bool wait) {
  struct flock fl = byte_range(F_WRLCK, at);
  while (::fcntl(fd, wait ? F_OFD_SETLKW : F_OFD_SETLK, &fl) != 0)
    if (errno != EINTR) return false;
  return true;
}

void ofd_unlock(int fd, off_t at) {
  struct flock fl = byte_range(F_UNLCK, at);
  ::fcntl(fd, F_OFD_SETLK, &fl);
}

/// True if an open file description other than fd's holds a lock on a byte of [at, at + len)
/// (F_OFD_GETLK reports only locks that conflict with fd's own, so the caller's own slot reads
/// as free). A probe that fails says "held": a process is never called dead on doubt.
bool held_by_other(int fd, off_t at, off_t len = 1) {
  struct flock fl = byte_range(F_WRLCK, at, len);
  if (::fcntl(fd, F_OFD_GETLK, &fl) != 0) return true;
  return fl.l_type != F_UNLCK;
}

/// Any slot lock held by another open file description.
bool any_other_slot_alive(int fd) { return held_by_other(fd, 1, shared_segment::MAX_PROCESSES); }

std::uint64_t self_start_time() {
  std::ifstream f("/proc/self/stat");
  std::string line;
  std::getline(f, line);
  const auto close = line.rfind(')');
  if (close == std::string::npos) return 0;
  // Fields after the command: state is field 3; starttime is field 22.
  const char* p = line.c_str() + close + 2;
  for (int field = 3; field < 22 && *p; ++p)
    if (*p == ' ') ++field;
  return std::strtoull(p, nullptr, 10);
}

process_record* table(void* base) {
  return reinterpret_cast<process_record*>(static_cast<char*>(base) + TABLE_OFFSET);
}

// Attached segments of this process, for fork() (segments_after_fork_child).
std::mutex g_segments_mu;
std::vector<shared_segment*> g_segments;

/// The records of a table, each slot's liveness probed through fd.
std::vector<segment_process> read_table(int fd, const process_record* t) {
  std::vector<segment_process> out;
  for (unsigned i = 0; i < shared_segment::MAX_PROCESSES; ++i) {
    if (!std::atomic_ref<const std::uint32_t>(t[i].in_use).load(std::memory_order_acquire)) continue;
    segment_process p;
    p.slot = i;
    p.pid = t[i].pid;
    p.start_time = t[i].start_time;
    p.alive = held_by_other(fd, off_t(1 + i));
    out.push_back(p);
  }
  return out;
}

}  // namespace

std::string shared_segment::name_for(std::uint64_t uuid0, std::uint64_t uuid1, std::uint64_t device, std::uint64_t inode) {
  char buf[96];
  std::snprintf(buf, sizeof buf, "/pmpage.%016" PRIx64 "%016" PRIx64 ".%" PRIx64 ".%" PRIx64, uuid0, uuid1, device, inode);
  return buf;
}

std::uint64_t shared_segment::header_bytes() { return HEADER_BYTES; }

shared_segment::shared_segment(const std::string& name, std::uint64_t size,
                               const std::function<void(shared_segment&)>& initialise)
    : name_(name), size_(std::max(size, HEADER_BYTES)) {
  for (;;) {
    fd_ = ::shm_open(name.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd_ < 0) fail(errno, name, reason("cannot open the shared segment (shm_open)"));
    if (!ofd_lock(fd_, 0, true)) {
      const int e = errno;
      ::close(fd_);
      fail(e, name, reason("cannot take the shared segment's life-cycle lock"));
    }
    struct stat st;
    if (::fstat(fd_, &st) != 0) {
      const int e = errno;
      ::close(fd_);
      fail(e, name, reason("fstat of the shared segment"));
    }
    if (st.st_nlink > 0) break;
    // Its last process removed it between our shm_open and our lock: a new one is made by name.
    ::close(fd_);
  }
  auto give_up = [&](int e, const std::string& why) {
    if (base_) ::munmap(base_, size_);
    base_ = nullptr;
    ofd_unlock(fd_, 0);
    ::close(fd_);
    fd_ = -1;
    fail(e, name, why);
  };
  const bool fresh = !any_other_slot_alive(fd_);
  std::uint64_t generation = 0;  // builds of this object so far (read before zeroing it)
  if (fresh) {
    // New, or stale (everyone who used it died, or its builder did): build it from zero.
    segment_header old{};
    if (::pread(fd_, &old, sizeof old, 0) == ssize_t(sizeof old) && old.magic == SEGMENT_MAGIC) generation = old.generation;
    if (::ftruncate(fd_, 0) != 0 || ::ftruncate(fd_, off_t(size_)) != 0)
      give_up(errno, reason("cannot size the shared segment"));
  } else {
    struct stat st;
    if (::fstat(fd_, &st) != 0) give_up(errno, reason("fstat of the shared segment"));
    if (std::uint64_t(st.st_size) != size_)
      give_up(EINVAL, "the shared segment has " + std::to_string(st.st_size) + " bytes where this build expects " +
                          std::to_string(size_) + " (a different pmpage build, or another pool size, has it open)");
  }
  {
    // Mapped through an open file description of its own: a mapping holds its file open, and a
    // fork() child inherits the mapping, so mapping the locking description would keep a dead
    // parent's locks alive for as long as its child lives.
    const int map_fd = ::open(("/proc/self/fd/" + std::to_string(fd_)).c_str(), O_RDWR | O_CLOEXEC);
    if (map_fd < 0) give_up(errno, reason("cannot reopen the shared segment to map it"));
    base_ = ::mmap(nullptr, size_, PROT_READ | PROT_WRITE, MAP_SHARED, map_fd, 0);
    const int e = errno;
    ::close(map_fd);
    if (base_ == MAP_FAILED) {
      base_ = nullptr;
      give_up(e, std::string("cannot map the shared segment: ") + std::strerror(e));
    }
  }
  auto* h = static_cast<segment_header*>(base_);
  if (fresh) {
    h->magic = SEGMENT_MAGIC;
    h->abi = SEGMENT_ABI;
    h->size = size_;
    h->ready = 0;
    h->generation = generation + 1;
    try {
      initialise(*this);
    } catch (...) {
      ::munmap(base_, size_);
      base_ = nullptr;
      ofd_unlock(fd_, 0);
      ::close(fd_);
      fd_ = -1;
      throw;
    }
    std::atomic_ref<std::uint32_t>(h->ready).store(1, std::memory_order_release);
    initialised_here_ = true;
  } else if (h->magic != SEGMENT_MAGIC || h->abi != SEGMENT_ABI || h->size != size_ || !h->ready) {
    give_up(EINVAL, "the shared segment's header does not match this build (magic, layout version " +
                        std::to_string(h->abi) + " vs " + std::to_string(SEGMENT_ABI) + ", or size)");
  }
  // A slot: the first whose liveness lock is free and that nobody recorded, else one whose
  // process died (its record is reused: the pool's survivors rule has already run, or runs
  // on the record's absence being noticed at open).
  process_record* t = table(base_);
  unsigned slot = MAX_PROCESSES;
  for (unsigned pass = 0; pass < 2 && slot == MAX_PROCESSES; ++pass)
    for (unsigned i = 0; i < MAX_PROCESSES; ++i) {
      if (pass == 0 && t[i].in_use) continue;
      if (ofd_lock(fd_, off_t(1 + i), false)) {
        slot = i;
        break;
      }
    }
  if (slot == MAX_PROCESSES)
    give_up(EBUSY, "all " + std::to_string(MAX_PROCESSES) + " process slots of the shared segment are taken");
  slot_ = slot;
  t[slot].pid = ::getpid();
  t[slot].start_time = self_start_time();
  std::atomic_ref<std::uint32_t>(t[slot].in_use).store(1, std::memory_order_release);
  {
    std::lock_guard g(g_segments_mu);
    g_segments.push_back(this);
  }
  ofd_unlock(fd_, 0);
}

shared_segment::~shared_segment() { detach(); }

void shared_segment::detach() noexcept {
  {
    std::lock_guard g(g_segments_mu);
    g_segments.erase(std::remove(g_segments.begin(), g_segments.end(), this), g_segments.end());
  }
  if (fd_ < 0) {  // a fork() child: holds no lock, owns no slot
    if (base_) ::munmap(base_, size_);
    base_ = nullptr;
    return;
  }
  ofd_lock(fd_, 0, true);
  std::atomic_ref<std::uint32_t>(table(base_)[slot_].in_use).store(0, std::memory_order_release);
  ofd_unlock(fd_, off_t(1 + slot_));
  if (!any_other_slot_alive(fd_)) ::shm_unlink(name_.c_str());
  ::munmap(base_, size_);
  base_ = nullptr;
  ofd_unlock(fd_, 0);
  ::close(fd_);
  fd_ = -1;
}

std::uint64_t shared_segment::generation() const { return static_cast<const segment_header*>(base_)->generation; }

std::vector<segment_process> shared_segment::processes() const {
  std::vector<segment_process> v = read_table(fd_, table(base_));
  for (segment_process& p : v)
    if (p.slot == slot_) p.alive = true;  // our own lock does not conflict with our probe
  return v;
}

std::vector<unsigned> shared_segment::dead_slots() const {
  std::vector<unsigned> out;
  for (const segment_process& p : processes())
    if (!p.alive) out.push_back(p.slot);
  return out;
}

std::vector<segment_process> shared_segment::inspect(const std::string& name) {
  const int fd = ::shm_open(name.c_str(), O_RDONLY | O_CLOEXEC, 0);
  if (fd < 0) return {};
  struct stat st;
  std::vector<segment_process> out;
  if (::fstat(fd, &st) == 0 && std::uint64_t(st.st_size) >= HEADER_BYTES) {
    void* m = ::mmap(nullptr, HEADER_BYTES, PROT_READ, MAP_SHARED, fd, 0);
    if (m != MAP_FAILED) {
      if (static_cast<const segment_header*>(m)->magic == SEGMENT_MAGIC) out = read_table(fd, table(m));
      ::munmap(m, HEADER_BYTES);
    }
  }
  ::close(fd);
  return out;
}

namespace {
// Registered when the library is loaded, like fork.cpp's (a lazily registered handler's guard is
// a lock too). g_segments_mu is a leaf (attach and detach hold it only to edit the list), so these
// handlers need no place in fork.cpp's order.
void segments_prepare() { g_segments_mu.lock(); }
void segments_parent() { g_segments_mu.unlock(); }
void segments_child() {
  for (shared_segment* s : g_segments) s->forget_descriptor_in_child();
  g_segments_mu.unlock();
}
[[maybe_unused]] const int g_segment_fork_handlers = ::pthread_atfork(&segments_prepare, &segments_parent, &segments_child);
}  // namespace

}  // namespace pmpage::detail
