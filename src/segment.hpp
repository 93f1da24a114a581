// segment.hpp — the shared DRAM segment of a pool opened by several processes (issue #20): its
// name, its life cycle, and the table of the processes attached to it.
//
// What it is. One POSIX shared-memory object per pool (/dev/shm/pmpage.<uuid>.<dev>.<ino>),
// mapped MAP_SHARED by every process that has the pool open shared, each at an address of its
// own. It begins with a header and the process table (this file); the pool's shared state
// (descriptors, allocator) follows at header_bytes(), laid out by the pool. Nothing in it is
// an address. The name carries the device identity (st_dev and st_ino of a file, st_rdev of a
// device) as well as the pool's uuid, so a copied pool file gets a segment of its own.
//
// Life cycle, and why it survives any opener dying at any instruction. Byte 0 of the object is
// the life-cycle lock, byte 1 + i the liveness lock of process slot i: open-file-description
// (OFD) write locks, which the kernel drops when the last descriptor of the open file
// description goes (a process that dies, however it dies), which are keyed by open file
// description rather than by pid (no pid-reuse or pid-namespace confusion), and which
// conflict between two opens in one process too (tests can play several processes).
//   attach   shm_open (create if missing) -> OFD lock byte 0, waiting -> if the object was
//            unlinked meanwhile (st_nlink == 0: its last process detached), start again -> if no
//            slot lock is held, the segment is new or stale (every process that used it died):
//            zero it and let the caller initialise it (from the media) -> claim a free slot by
//            locking its byte -> record pid and start time -> unlock byte 0.
//   detach   lock byte 0 -> clear the slot record, unlock its byte -> if no other slot lock is
//            held, unlink the object -> unlock byte 0 and close.
// An initialiser that dies releases byte 0 with its slot unclaimed, so the next attacher finds
// no live slot and initialises again. A process that dies attached leaves its record with no
// lock behind it: dead_slots() names it (what the survivors do about it is the pool's rule).
//
// fork(): a child inherits the descriptor, and with it the parent's OFD locks, which would keep a
// dead parent's slot looking alive. The mapping is made through a second open file description
// (a mapping holds its file open, and the child inherits mappings too), so only the descriptor
// carries the locks. The child closes its copies (segment.cpp's own
// pthread_atfork child handler): closing one descriptor of an open file description releases no lock
// while the parent's remains, so the parent keeps its slot, and the child holds nothing.
//
// Thread-safety: attach and detach may run in any threads (the life cycle is serialised by the
// byte-0 lock, across processes and within one); the queries are read-only probes.
#pragma once

#include <sys/types.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace pmpage::detail {

/// A process attached to a segment, as the process table and its liveness lock say.
struct segment_process {
  unsigned slot = 0;
  pid_t pid = 0;                // as recorded at attach, in the attacher's pid namespace
  std::uint64_t start_time = 0; // its start time (/proc/<pid>/stat field 22, clock ticks)
  bool alive = false;           // its liveness lock is held (false: it died without detaching)
};

class shared_segment {
 public:
  static constexpr unsigned MAX_PROCESSES = 256;
  static constexpr std::uint64_t SEGMENT_MAGIC = 0x31474553'47504d50ull;  // "PMPGSEG1"
  static constexpr std::uint32_t SEGMENT_ABI = 1;  // the layout of what follows the header

  /// The shm_open name of a pool's segment: "/pmpage.<uuid hex>.<device>.<inode>".
  static std::string name_for(std::uint64_t uuid0, std::uint64_t uuid1, std::uint64_t device, std::uint64_t inode);
  /// Bytes of the header and process table: the pool's state starts there (4 KiB aligned).
  static std::uint64_t header_bytes();

  /// Attaches to segment `name`, of `size` bytes (header included), creating it if needed.
  /// `initialise` runs when this attacher must build the segment's contents (new, or stale: no
  /// process attached is alive), with the object zeroed, sized and mapped (base()), before any
  /// other process can attach. Throws pmpage::error: EBUSY when all MAX_PROCESSES slots are
  /// taken by live processes, EINVAL when an existing segment's header does not match (another
  /// SEGMENT_ABI or size: a different pmpage build has the pool open), the errno of a failed
  /// system call otherwise. If `initialise` throws, nothing stays claimed and the exception
  /// propagates; the next attacher initialises.
  shared_segment(const std::string& name, std::uint64_t size, const std::function<void(shared_segment&)>& initialise);
  /// detach(): the last process to leave removes the object.
  ~shared_segment();
  shared_segment(const shared_segment&) = delete;
  shared_segment& operator=(const shared_segment&) = delete;

  void* base() const { return base_; }
  std::uint64_t size() const { return size_; }
  int fd() const { return fd_; }
  const std::string& name() const { return name_; }
  unsigned slot() const { return slot_; }
  /// This attach built the segment's contents (it was new or stale).
  bool initialised_here() const { return initialised_here_; }
  /// How many times the segment's contents were built since the object was created.
  std::uint64_t generation() const;

  /// Every slot with a record (a process attached, alive or not), probing each one's lock.
  std::vector<segment_process> processes() const;
  /// The slots whose process died attached (record present, liveness lock free).
  std::vector<unsigned> dead_slots() const;

  /// Reads the process table of `name` without attaching (pmpage info): empty if no such
  /// segment exists. Takes no lock the life cycle waits for (probes only).
  static std::vector<segment_process> inspect(const std::string& name);

  /// The fork() child handler only (segment.cpp): closes this process's copy of the descriptor (the parent's
  /// locks stay the parent's) and keeps the mapping; detach then only unmaps.
  void forget_descriptor_in_child() noexcept {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  void detach() noexcept;
  std::string name_;
  int fd_ = -1;
  void* base_ = nullptr;
  std::uint64_t size_ = 0;
  unsigned slot_ = 0;
  bool initialised_here_ = false;
};


}  // namespace pmpage::detail
