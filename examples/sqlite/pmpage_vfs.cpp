// pmpage_vfs.cpp — the SQLite VFS "pmpage": database files kept in pool pages.
//
// On the media (docs/sqlite.md has the picture):
//   root area (8 KiB)  = directory: a header line + 63 file entries of two cache lines each
//                        {state, size, table slot, 8 direct slots, suffix}; state FREE, LIVE,
//                        DELETING, or SPARE (a deleted rollback journal whose pages the next
//                        journal of that name reuses: no file); the suffix names the
//                        file relative to the pool's path: "" the database, "-journal", "-wal",
//                        "-mjXXXXXXXX" (a super-journal).
//   entry.direct[0..7] = slots owning 4 KiB pages: file bytes [0, 32 KiB) (a small journal needs
//                        no page table: two fences fewer to create, two to delete — ext2's direct
//                        blocks, for the same reason);
//   entry.table        = the slot owning the file's page table, an order-2 page (2048 pfn slots);
//   table[8..255]      = slots owning 4 KiB pages: file bytes [32 KiB, 1 MiB);
//   table[256..2047]   = slots owning order-9 (2 MiB) pages: bytes [1 MiB, 3585 MiB).
// Every page is published with alloc_pages_to and released with free_pages_from, so a crash never
// leaks a page nor leaves a slot naming a free one (the library's contract, not this file's).
//
// Durability (SQLite's contract: what xSync covered survives; unsynced writes may or may not):
//   xWrite   copies into the mapping and records the written cache lines (a 4 KiB page goes on
//            the file's dirty list by TestSetPageDirty and keeps its line mask in page_private;
//            a 4 KiB block of a 2 MiB page has a mask in DRAM); no flush yet. New pages come
//            zeroed (GFP_ZERO, durable with the allocation): see write_locked for why.
//   xSync    flushes every written line and the size word, then ONE fence (drain) — on the calling
//            thread, so a connection that moves between threads stays correct; none when nothing
//            was written since the last fence.
//   xTruncate persists the new size first (the commit point of TRUNCATE journal mode), then
//            frees the pages past it (bulk calls: 2 fences per 16 pages). A journal keeps its 4 KiB
//            pages (up to 1 MiB) for the next transaction, its first word zeroed with the size.
//   xDelete  persists state DELETING first (the commit point of DELETE journal mode), then frees
//            the pages, the table and the entry. Opening the pool finishes an interrupted delete.
//            A rollback journal instead becomes a SPARE in one fence (state, size 0, first word
//            0: any one of them is the commit point), keeping its pages up to 1 MiB; the next
//            journal of its name reuses the entry and the pages without a fence or an allocation.
//            Spares and kept pages go back when the pool closes, or at the mount after a crash.
//   create   writes the entry, fence, then state LIVE, made durable by the file's first sync: a
//            torn entry is never LIVE, a crash before that sync leaves no file or an empty one.
//   close    the last close of a file is a sync (a reopen sees what was written), then frees
//            the pages past its end (a journal keeps them, as at xTruncate).
// A rollback journal's commit therefore costs 4 fences in DELETE and TRUNCATE mode (SQLite's two
// journal syncs, the database sync, the delete or truncate), 5 in PERSIST mode; a WAL commit 1.
// A journal header cleared in place (PERSIST mode), or written over an old journal's bytes in a
// reused page, is ordered by pm_write: SQLite assumes linear sector writes, the media only 8-byte
// atomicity.
// When the pool is opened (the first database of it in this process), every slot of the directory
// is validated — it names an allocation of this pool of the right order that it owns, and no two
// slots name one page (pool::check_slots) — so a damaged pool is SQLITE_CORRUPT, never a misuse
// abort; then interrupted deletes are finished and pages past a file's durable size (written but
// never synced before a crash) freed. Bytes of an open pool can still change under the VFS (a
// program writing the file): every pfn read from the media is range-checked before it is
// dereferenced, and every VFS call runs under a misuse trap (below) that turns a report of the
// library into SQLITE_CORRUPT for that call instead of the host's abort.
//
// A read-only open (SQLITE_OPEN_READONLY, mode=ro, or a pool the process may only read) opens
// the pool with pool::open_options::read_only: recovery, if any, runs on a private copy, the
// mount changes nothing, and the file is never written.
//
// An open pool is known by its file's (st_dev, st_ino), as os_unix.c knows an inode: a path that
// now names another file (the pool was unlinked or renamed, and a new database created there) is
// another database; a connection whose pool was moved is refused writes (SQLITE_READONLY_DBMOVED).
//
// Locks, in the order they are taken: vfs_instance::mu (the open pools) -> pool_ctx::mu (the
// directory, the nodes) -> node::mu (one file's pages, size, dirty lists, lock state, shm).
// g_handler_mu (the misuse handler's installation) is taken under vfs_instance::mu or alone.
// SQLite's file locks (xLock) and WAL locks (xShmLock) are between connections of this process;
// another process cannot open the pool for writing (the pool's exclusive flock); read-only
// opens of several processes share it.
#include "pmpage_sqlite.h"

#include <sqlite3ext.h>
SQLITE_EXTENSION_INIT1

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include <sys/stat.h>
#include <unistd.h>

#include <pmpage/pmpage.hpp>

namespace pmpage::sqlite {
namespace {

// ---- on-media layout -------------------------------------------------------------------------

constexpr std::uint64_t DIR_MAGIC = 0x3153464c51536d70ull;  // "pmSQLFS1"
// Version 2 added state F_SPARE; a version-1 directory is upgraded at a read-write mount (it
// holds no spare), and version-1 code refuses a version-2 pool instead of misreading a spare.
constexpr std::uint64_t DIR_VERSION = 2;
constexpr unsigned NR_FILES = 63;
constexpr std::size_t SUFFIX_MAX = 32;  // bytes, with the NUL

constexpr unsigned NR_DIRECT = 8;
constexpr unsigned TABLE_ORDER = 2;
constexpr unsigned NR_SLOTS = (PAGE_SIZE << TABLE_ORDER) / sizeof(pfn_t);  // 2048
constexpr unsigned NR_SMALL = 256;
constexpr std::uint64_t SMALL_BYTES = std::uint64_t{NR_SMALL} * PAGE_SIZE;  // 1 MiB
constexpr unsigned HUGE_ORDER = HPAGE_PMD_ORDER;  // the library's 2 MiB order
constexpr std::uint64_t HUGE_BYTES = PAGE_SIZE << HUGE_ORDER;  // 2 MiB
constexpr std::uint64_t MAX_FILE = SMALL_BYTES + (NR_SLOTS - NR_SMALL) * HUGE_BYTES;
constexpr unsigned BLOCKS_PER_HUGE = HUGE_BYTES / PAGE_SIZE;
// A write that needs a new 4 KiB page takes the next empty slots too, in one bulk call (the fences
// of one page): up to SMALL_BATCH in the direct slots (a small journal: zeroing pages it will not
// use costs more than fences), up to LARGE_BATCH beyond them (a growing database).
constexpr unsigned SMALL_BATCH = 4;
constexpr unsigned LARGE_BATCH = 16;
// A rollback journal keeps the 4 KiB pages of its first KEEP_CHUNKS chunks (up to 1 MiB, and its
// page table) when it is truncated, closed or deleted, for the next transaction's journal: no
// allocation or free per commit. They go back when the pool closes (or at the mount after a crash).
constexpr unsigned KEEP_CHUNKS = NR_SMALL;
constexpr const char* JOURNAL_SUFFIX = "-journal";

// F_SPARE: a deleted rollback journal whose pages are kept for the next journal of its name. Not a
// file (find_entry never returns it); its size is 0 and the first word of its first page is 0,
// both durable with the state (delete_entry), so reusing it (create_entry) can never show the old
// journal as a hot one.
enum : std::uint64_t { F_FREE = 0, F_LIVE = 1, F_DELETING = 2, F_SPARE = 3 };

struct alignas(64) dir_entry {
  std::uint64_t state;  // F_*; the 8-byte word whose store commits a create or a delete
  std::uint64_t size;   // bytes, as of the last xSync / xTruncate
  pfn_t table;          // slot owning the page table (0 = no page yet)
  std::uint64_t reserved;
  pfn_t direct[NR_DIRECT];  // slots owning the 4 KiB pages of bytes [0, 32 KiB)
  char suffix[SUFFIX_MAX];
};
struct alignas(64) dir_header {
  std::uint64_t magic;
  std::uint64_t version;
  std::uint64_t nr_files;
  std::uint64_t reserved[5];
};
struct directory {
  dir_header hdr;
  dir_entry files[NR_FILES];
};
static_assert(sizeof(dir_entry) == 128 && sizeof(directory) <= 8192);
constexpr std::size_t ROOT_SIZE = 8192;

/// Where file byte `off` lives: slot `idx` of the table, a page of `order` covering [base, base+len).
struct chunk {
  unsigned idx;
  unsigned order;
  std::uint64_t base;
  std::uint64_t len;
};
chunk chunk_at(std::uint64_t off) {
  if (off < SMALL_BYTES) {
    const auto i = unsigned(off / PAGE_SIZE);
    return {i, 0, std::uint64_t{i} * PAGE_SIZE, PAGE_SIZE};
  }
  const auto j = unsigned((off - SMALL_BYTES) / HUGE_BYTES);
  return {NR_SMALL + j, HUGE_ORDER, SMALL_BYTES + std::uint64_t{j} * HUGE_BYTES, HUGE_BYTES};
}

// ---- errors ----------------------------------------------------------------------------------

thread_local std::string t_error;
thread_local int t_errno = 0;  // the errno behind the last failure (xGetLastError, sqlite3_system_errno)

int vfail(int rc, const char* fmt, va_list ap) {
  char buf[512];
  std::vsnprintf(buf, sizeof buf, fmt, ap);
  t_error = buf;
  sqlite3_log(rc, "pmpage VFS: %s", buf);
  return rc;
}
int fail(int rc, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
int fail(int rc, const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vfail(rc, fmt, ap);
  va_end(ap);
  return rc;
}
/// fail() for a failure with an operating-system cause: SQLite reads `err` through xGetLastError
/// (sqlite3_system_errno) after a failed open, as from os_unix.c.
int fail_errno(int rc, int err, const char* fmt, ...) __attribute__((format(printf, 3, 4)));
int fail_errno(int rc, int err, const char* fmt, ...) {
  t_errno = err;
  va_list ap;
  va_start(ap, fmt);
  vfail(rc, fmt, ap);
  va_end(ap);
  return rc;
}

// ---- misuse reports on data read from the media -------------------------------------------------
//
// The library reports misuse through one process-wide handler, which by default aborts. The VFS
// hands the library pfns and slots it read from the pool; the mount validates them, but the bytes
// of an open pool can still be changed by someone else, and no VFS call may then abort its host.
// So every VFS call that reaches the library runs inside a misuse_trap: while one is active on a
// thread, a report on that thread is recorded there (the call then fails with SQLITE_CORRUPT);
// reports on other threads, or outside a trap, go to the handler the host had installed.
// trap_handler is installed while this process has a pool of any pmpage VFS open (or is opening
// one), and the previous handler is put back when the last one closes — unless the host
// installed another meanwhile, which then stays (the traps cannot work while the host's handler
// is installed over the VFS's: say so in docs/sqlite.md).

struct misuse_trap {
  misuse_trap* outer;
  bool tripped = false;
  std::string first;  // the first report
  misuse_trap();
  ~misuse_trap();
  misuse_trap(const misuse_trap&) = delete;
  misuse_trap& operator=(const misuse_trap&) = delete;
};
thread_local misuse_trap* t_trap = nullptr;
misuse_trap::misuse_trap() : outer(t_trap) { t_trap = this; }
misuse_trap::~misuse_trap() { t_trap = outer; }

/// Marks the calling thread's trap: damage the VFS itself found in the media (a pfn outside the
/// pool) fails the call the same way as a report of the library.
void note_damage(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
void note_damage(const char* fmt, ...) {
  misuse_trap* t = t_trap;
  if (!t || t->tripped) return;
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  t->tripped = true;
  t->first = buf;
}

std::mutex g_handler_mu;
int g_handler_users = 0;                       // pools open or being opened; g_handler_mu
std::atomic<misuse_handler> g_host_handler{};  // what trap_handler forwards to

void trap_handler(const char* msg) {
  if (misuse_trap* t = t_trap) {
    if (!t->tripped) {
      t->tripped = true;
      t->first = msg;
    }
    return;
  }
  const misuse_handler h = g_host_handler.load(std::memory_order_acquire);
  if (h && h != &trap_handler) {
    h(msg);
    return;
  }
  // (Only if the host re-installed trap_handler itself after the VFS had put its own back: do
  // what the library's default handler does.)
  std::fprintf(stderr, "pmpage: misuse: %s\n", msg);
  std::abort();
}

void hold_trap_handler() {
  std::lock_guard g(g_handler_mu);
  if (g_handler_users++ == 0) {
    const misuse_handler prev = set_misuse_handler(&trap_handler);
    if (prev != &trap_handler) g_host_handler.store(prev, std::memory_order_release);
  }
}
void release_trap_handler() {
  std::lock_guard g(g_handler_mu);
  if (--g_handler_users > 0) return;
  const misuse_handler cur = set_misuse_handler(g_host_handler.load(std::memory_order_acquire));
  if (cur != &trap_handler) set_misuse_handler(cur);  // the host installed its own meanwhile: keep it
}

/// hold_trap_handler for a scope, unless keep() hands the hold to an open pool.
struct trap_handler_hold {
  bool held = true;
  trap_handler_hold() { hold_trap_handler(); }
  ~trap_handler_hold() {
    if (held) release_trap_handler();
  }
  void keep() { held = false; }
};

// ---- DRAM state ------------------------------------------------------------------------------

struct pm_file;
struct pool_ctx;

/// One file of a pool, shared by the handles that have it open (the VFS's inode).
struct node {
  pool_ctx* ctx;
  unsigned index;  // directory entry
  std::mutex mu;
  int refs = 0;
  std::uint64_t size = 0;        // logical size (xFileSize)
  std::uint64_t media_size = 0;  // what entry.size says
  bool entry_dirty = false;      // the entry's state line is not known durable yet (created, reused)
  dir_entry* e = nullptr;        // its directory entry
  pfn_t* table = nullptr;        // the page table in the mapping, once allocated
  /// The slot owning the page of chunk idx; nullptr when it lies in a table not allocated yet.
  pfn_t* slot(unsigned idx) const { return idx < NR_DIRECT ? &e->direct[idx] : table ? &table[idx] : nullptr; }
  pfn_t pfn_at(unsigned idx) const {
    const pfn_t* s = slot(idx);
    return s ? *s : 0;
  }
  std::vector<std::pair<unsigned, page*>> dirty_small;  // (chunk, 4 KiB page with PG_dirty set)
  std::vector<std::uint32_t> dirty_blocks;  // written 4 KiB blocks of 2 MiB pages (index past SMALL_BYTES)
  std::vector<std::uint64_t> huge_lines;    // per such block: its written cache lines (0 = clean)
  std::set<unsigned> stale;  // chunks past `size` still holding a page a reader pinned (freed later)
  int fetch_out = 0;         // xFetch references not yet xUnfetch'ed
  bool delete_on_close = false;
  bool journal = false;  // a rollback journal or super-journal (see pm_write); keeps its pages
  // SQLite file locks between this process's connections.
  int nshared = 0;
  pm_file* reserved = nullptr;
  pm_file* pending = nullptr;
  pm_file* exclusive = nullptr;
  // WAL index (DRAM only: rebuilt from the WAL after a restart, as SQLite expects).
  std::vector<char*> shm;
  int shm_refs = 0;
  int shm_shared[SQLITE_SHM_NLOCK] = {};
  pm_file* shm_excl[SQLITE_SHM_NLOCK] = {};
};

struct vfs_instance;

/// What a file is, whatever its name: os_unix.c's inode key.
struct file_id {
  dev_t dev = 0;
  ino_t ino = 0;
  auto operator<=>(const file_id&) const = default;
};
bool stat_id(const std::string& path, file_id* id) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return false;
  *id = {st.st_dev, st.st_ino};
  return true;
}

/// One open pool and its directory.
struct pool_ctx {
  vfs_instance* vfs;
  std::string path;  // the name it was opened by (it may since have been unlinked or renamed)
  file_id id;        // the file it is
  pmpage::pool pool;
  bool read_only = false;  // opened with open_options::read_only: nothing is ever written
  pfn_t start_pfn = 0, end_pfn = 0;
  directory* dir = nullptr;
  std::mutex mu;
  std::map<unsigned, node*> nodes;
  int refs = 0;  // open files
  pid_t pid = ::getpid();  // a fork() child must not use its parent's pool
};

/// True when `path` no longer names the pool's file (deleted, renamed, or replaced): os_unix.c's
/// fileHasMoved, behind SQLITE_FCNTL_HAS_MOVED (the pager then refuses writes:
/// SQLITE_READONLY_DBMOVED).
bool has_moved(const pool_ctx* c) {
  file_id now;
  return !stat_id(c->path, &now) || now != c->id;
}

struct vfs_instance {
  sqlite3_vfs vfs{};
  vfs_options opts;
  sqlite3_vfs* base = nullptr;  // SQLite's default VFS: temporary files, time, randomness
  // SQLite's mmap limits (sqlite3_config(SQLITE_CONFIG_MMAP_SIZE): a default and a maximum),
  // fixed once SQLite is initialised; read from the base VFS at registration (probe_mmap_limits).
  sqlite3_int64 mmap_default = 0;
  sqlite3_int64 mmap_max = 0x7fff0000;  // SQLite's SQLITE_MAX_MMAP_SIZE on Linux
  std::mutex mu;
  std::map<file_id, pool_ctx*> pools;
  int open_files = 0;
};

struct pm_file {
  sqlite3_file base;  // pMethods = &pm_io_methods
  node* n;
  int lock;  // SQLITE_LOCK_*
  std::uint16_t shm_shared;
  std::uint16_t shm_excl;
  bool shm_mapped;
  bool read_only;            // this handle may not write (SQLITE_OPEN_READONLY, or a read-only pool)
  int fetch_out;             // this handle's xFetch references not yet xUnfetch'ed
  sqlite3_int64 mmap_limit;  // SQLITE_FCNTL_MMAP_SIZE (what PRAGMA mmap_size reports)
};

vfs_instance* instance_of(sqlite3_vfs* v) { return static_cast<vfs_instance*>(v->pAppData); }

// ---- the directory -----------------------------------------------------------------------------

void persist_entry(pool_ctx* c, dir_entry& e) { c->pool.persist(&e, sizeof e); }

dir_entry* find_entry(pool_ctx* c, const std::string& suffix) {
  for (auto& e : c->dir->files)
    if (e.state == F_LIVE && suffix == e.suffix) return &e;
  return nullptr;
}
dir_entry* find_spare(pool_ctx* c, const std::string& suffix) {
  for (auto& e : c->dir->files)
    if (e.state == F_SPARE && suffix == e.suffix) return &e;
  return nullptr;
}

/// Frees the pages of a file's chunks [from, NR_SLOTS) (direct slots, then the table's), in bulk
/// calls (2 fences per 16 pages). Chunks whose page a reader still pins (-EBUSY) are left and
/// returned in `busy`. Returns false if the pool refused a free as misuse (a bug: reported).
bool free_slots(pool_ctx* c, dir_entry& e, pfn_t* table, unsigned from, std::set<unsigned>* busy) {
  std::vector<pfn_t*> slots;
  std::vector<unsigned> idx;
  for (unsigned i = from, end = table ? NR_SLOTS : NR_DIRECT; i < end; ++i) {
    pfn_t* s = i < NR_DIRECT ? &e.direct[i] : &table[i];
    if (s && *s) {
      slots.push_back(s);
      idx.push_back(i);
    }
  }
  if (slots.empty()) return true;
  const int rc = c->pool.free_pages_bulk_from(slots);
  if (rc == 0) return true;
  if (rc != -EBUSY) return false;
  // Some page is pinned: one at a time, keeping the pinned ones.
  bool ok = true;
  for (std::size_t k = 0; k < slots.size(); ++k) {
    const int r = c->pool.free_pages_from(slots[k]);
    if (r == -EBUSY && busy) busy->insert(idx[k]);
    else if (r != 0 && r != -EBUSY) ok = false;
  }
  return ok;
}

/// The bytes of the page of `order` that `pfn` (read from the media) names, or nullptr when pfn
/// does not lie in this pool with room for such a page, aligned: a slot changed from outside the
/// VFS then fails the call (note_damage) instead of sending a copy elsewhere or making
/// pfn_to_page report misuse. A few compares on the read and write paths.
char* page_bytes(const pool_ctx* c, pfn_t pfn, unsigned order) {
  const pfn_t nr = pfn_t{1} << order;
  if (pfn < c->start_pfn || pfn >= c->end_pfn || c->end_pfn - pfn < nr || ((pfn - c->start_pfn) & (nr - 1)) != 0) {
    note_damage("a slot names pfn %#llx, not a %u KiB page of this pool", (unsigned long long)pfn,
                unsigned((PAGE_SIZE << order) >> 10));
    return nullptr;
  }
  return static_cast<char*>(page_address(pfn_to_page(pfn)));
}

pfn_t* table_of(const pool_ctx* c, const dir_entry& e) {
  return e.table ? reinterpret_cast<pfn_t*>(page_bytes(c, e.table, TABLE_ORDER)) : nullptr;
}

/// Finishes a delete whose DELETING (or SPARE) state is durable: pages, table, entry. The entry's last
/// store needs no ordering of its own: a FREE entry's other words are never read (create rewrites
/// them all), so state FREE and the cleared words share one fence.
/// Returns false, with the entry left DELETING, if the pool refused a free (damaged media).
bool finish_delete(pool_ctx* c, dir_entry& e) {
  pfn_t* t = table_of(c, e);
  if (e.table && !t) return false;
  if (!free_slots(c, e, t, 0, nullptr)) return false;
  if (t && c->pool.free_pages_from(&e.table) != 0) return false;
  e.size = 0;
  std::memset(e.suffix, 0, sizeof e.suffix);
  e.state = F_FREE;
  persist_entry(c, e);
  return true;
}

/// The first slot whose page lies wholly at or past `size`.
unsigned first_slot_past(std::uint64_t size) {
  if (size == 0) return 0;
  const chunk last = chunk_at(size - 1);
  return last.idx + 1;
}

/// Zeroes [size, end of its page) so that a later extension reads zeros there (POSIX semantics).
void zero_tail(pool_ctx* c, dir_entry& e, pfn_t* table, std::uint64_t size) {
  if (size == 0 || size >= MAX_FILE) return;
  const chunk ck = chunk_at(size);
  const pfn_t pfn = ck.idx < NR_DIRECT ? e.direct[ck.idx] : table ? table[ck.idx] : 0;
  if (ck.base == size || !pfn) return;
  char* a = page_bytes(c, pfn, ck.order);
  if (!a) return;
  std::memset(a + (size - ck.base), 0, ck.len - (size - ck.base));
  c->pool.flush(a + (size - ck.base), ck.len - (size - ck.base));
}

/// True when pfn is the head of an allocated compound page of `order` of this pool (what a slot
/// must name; pfn_valid alone would accept a page of another open pool).
bool names_allocation(const pool_ctx* c, pfn_t pfn, unsigned order) {
  if (pfn < c->start_pfn || pfn >= c->end_pfn) return false;
  page* p = pfn_to_page(pfn);
  return compound_head(p) == p && page_count(p) >= 1 && compound_order(p) == order;
}

/// The structure of one live or deleting entry: its size, its name, and every slot naming an
/// allocation of this pool of the right order; its slots are appended to `slots` (with their
/// entry in `owner`) for the ownership check that follows.
int validate_entry(pool_ctx* c, dir_entry& e, std::vector<pfn_t*>& slots, std::vector<long>& owner) {
  const auto* d = c->dir;
  const long index = &e - d->files;
  if (e.size > MAX_FILE)
    return fail(SQLITE_CORRUPT, "%s: directory entry %ld has size %llu, past the largest file", c->path.c_str(), index,
                (unsigned long long)e.size);
  if (std::memchr(e.suffix, 0, sizeof e.suffix) == nullptr)
    return fail(SQLITE_CORRUPT, "%s: directory entry %ld has an unterminated name", c->path.c_str(), index);
  auto add = [&](pfn_t* s) {
    slots.push_back(s);
    owner.push_back(index);
  };
  for (unsigned i = 0; i < NR_DIRECT; ++i) {
    if (!e.direct[i]) continue;
    if (!names_allocation(c, e.direct[i], 0))
      return fail(SQLITE_CORRUPT, "%s: file '%s' (entry %ld): direct slot %u names pfn %#llx, not an allocated 4 KiB page",
                  c->path.c_str(), e.suffix, index, i, (unsigned long long)e.direct[i]);
    add(&e.direct[i]);
  }
  if (!e.table) return SQLITE_OK;
  if (!names_allocation(c, e.table, TABLE_ORDER))
    return fail(SQLITE_CORRUPT, "%s: file '%s' (entry %ld): its page table slot names pfn %#llx, not an allocated 16 KiB page",
                c->path.c_str(), e.suffix, index, (unsigned long long)e.table);
  add(&e.table);
  pfn_t* t = table_of(c, e);
  for (unsigned i = NR_DIRECT; i < NR_SLOTS; ++i) {
    if (!t[i]) continue;
    if (!names_allocation(c, t[i], i < NR_SMALL ? 0 : HUGE_ORDER))
      return fail(SQLITE_CORRUPT, "%s: file '%s' (entry %ld): page table slot %u names pfn %#llx, not an allocated %s page",
                  c->path.c_str(), e.suffix, index, i, (unsigned long long)t[i], i < NR_SMALL ? "4 KiB" : "2 MiB");
    add(&t[i]);
  }
  return SQLITE_OK;
}

/// The whole directory before anything of it is handed to the pool: each entry's structure
/// (validate_entry), no two live files of one name, and — pool::check_slots over every slot of
/// every file, the complete list of the pool's owners — each slot is the recorded owner of the
/// page it names and no page has two. A slot that merely names an allocated page of the right
/// order (a pfn copied from elsewhere, past a file's size or into another file) would otherwise
/// reach free_pages_bulk_from at the mount, as misuse. Allocations no slot names are leaks
/// (logged, left alone: `pmpage check` reports them).
int validate_directory(pool_ctx* c) {
  std::vector<pfn_t*> slots;
  std::vector<long> owner;
  std::set<std::string> names;
  for (auto& e : c->dir->files) {
    if (e.state == F_FREE) continue;
    if (e.state != F_LIVE && e.state != F_DELETING && e.state != F_SPARE)
      return fail(SQLITE_CORRUPT, "%s: directory entry %td has state %llu", c->path.c_str(), &e - c->dir->files,
                  (unsigned long long)e.state);
    if (int rc = validate_entry(c, e, slots, owner); rc != SQLITE_OK) return rc;
    if (e.state == F_LIVE && !names.insert(e.suffix).second)
      return fail(SQLITE_CORRUPT, "%s: two live directory entries name the file '%s' (entry %td is the second)",
                  c->path.c_str(), e.suffix, &e - c->dir->files);
  }
  const pool::slot_check r = c->pool.check_slots(slots);
  for (const auto* list : {&r.dangling, &r.shared, &r.misowned}) {
    if (list->empty()) continue;
    const pool::slot_check::entry& bad = list->front();
    const auto k = std::size_t(std::find(slots.begin(), slots.end(), bad.slot) - slots.begin());
    const long index = k < owner.size() ? owner[k] : -1;
    return fail(SQLITE_CORRUPT, "%s: file '%s' (entry %ld): %s%s", c->path.c_str(),
                index >= 0 ? c->dir->files[index].suffix : "?", index, bad.problem.c_str(),
                list->size() > 1 ? " (and more)" : "");
  }
  if (!r.unreferenced.empty())
    sqlite3_log(SQLITE_NOTICE, "pmpage VFS: %s: %zu allocations no file of the directory names (leaked; `pmpage check` "
                "lists them)", c->path.c_str(), r.unreferenced.size());
  return SQLITE_OK;
}

/// Opening a pool: format an empty directory, validate it, finish interrupted deletes, drop pages
/// past each file's durable size (writes a crash cut off before their xSync). A read-only pool is
/// validated and left as it is (an empty root area reads as an empty directory): its files are
/// read up to their durable sizes, an interrupted delete is no file.
int mount(pool_ctx* c) {
  if (c->pool.root_size() < ROOT_SIZE)
    return fail(SQLITE_CANTOPEN, "%s: the pool's root area (%zu bytes) is too small for a directory", c->path.c_str(),
                c->pool.root_size());
  c->dir = static_cast<directory*>(c->pool.root());
  directory* d = c->dir;
  if (d->hdr.magic != DIR_MAGIC) {
    const auto* bytes = reinterpret_cast<const unsigned char*>(d);
    if (std::any_of(bytes, bytes + sizeof *d, [](unsigned char b) { return b != 0; }))
      return fail(SQLITE_CANTOPEN, "%s: the pool's root area holds something other than a pmpage SQLite directory",
                  c->path.c_str());
    if (c->read_only) return SQLITE_OK;  // every entry is F_FREE: no file
    d->hdr.version = DIR_VERSION;
    d->hdr.nr_files = NR_FILES;
    c->pool.flush(&d->hdr, sizeof d->hdr);
    c->pool.drain();
    d->hdr.magic = DIR_MAGIC;
    c->pool.persist(&d->hdr, sizeof d->hdr);
  } else if ((d->hdr.version != DIR_VERSION && d->hdr.version != 1) || d->hdr.nr_files != NR_FILES) {
    return fail(SQLITE_CANTOPEN, "%s: directory version %llu with %llu files is not supported", c->path.c_str(),
                (unsigned long long)d->hdr.version, (unsigned long long)d->hdr.nr_files);
  }
  if (int rc = validate_directory(c); rc != SQLITE_OK) return rc;
  if (c->read_only) return SQLITE_OK;
  if (d->hdr.version != DIR_VERSION) {  // version 1: the same layout, no spare journal in it
    d->hdr.version = DIR_VERSION;
    c->pool.persist(&d->hdr.version, sizeof d->hdr.version);
  }
  for (auto& e : d->files) {
    bool ok = true;
    // A spare journal is freed: a crash in its delete's fence may have kept the state without the
    // zeroed size and first word that make reusing it safe.
    if (e.state == F_DELETING || e.state == F_SPARE) {
      ok = finish_delete(c, e);
    } else if (e.state == F_LIVE) {
      pfn_t* t = table_of(c, e);
      ok = free_slots(c, e, t, first_slot_past(e.size), nullptr);
      zero_tail(c, e, t, e.size);
    }
    if (!ok)
      return fail(SQLITE_CORRUPT, "%s: file '%s' (entry %td): the pool refused to free its pages", c->path.c_str(),
                  e.suffix, &e - d->files);
  }
  c->pool.drain();
  return SQLITE_OK;
}

std::uint64_t parse_size(const char* s, bool* ok) {
  char* end = nullptr;
  errno = 0;
  unsigned long long v = std::strtoull(s, &end, 10);
  *ok = errno == 0 && end != s;
  unsigned shift = 0;
  if (*ok && *end) {
    switch (*end | 0x20) {
      case 'k': shift = 10; break;
      case 'm': shift = 20; break;
      case 'g': shift = 30; break;
      case 't': shift = 40; break;
      default: *ok = false;
    }
    if (*ok && end[1] && !((end[1] | 0x20) == 'b' || ((end[1] | 0x20) == 'i' && (end[2] | 0x20) == 'b'))) *ok = false;
  }
  if (*ok && shift && v > (~0ull >> shift)) *ok = false;
  return v << shift;
}

/// An open or create of the pool failed with the library's error e.
int open_failed(const char* zName, const pmpage::error& e, const char* what) {
  const int err = e.code().value();
  // EBUSY: another process holds the pool, another handle of this process does (a pool::open
  // of the application's, another VFS name), or an open pool of this process has its pfn range (a
  // copy of it): the library's message says which.
  if (err == EBUSY || err == EAGAIN) return fail_errno(SQLITE_BUSY, err, "%s: %s%s", zName, what, e.what());
  return fail_errno(SQLITE_CANTOPEN, err, "%s: %s%s", zName, what, e.what());
}

/// The pool for a main database path: already open (the same file: device and inode, whatever
/// its name), opened, or created. *read_only: the connection may only read (it asked to, or the
/// pool is open read-only). Called with vfs->mu held.
int get_pool(vfs_instance* v, const char* zName, int flags, pool_ctx** out, bool* read_only) {
  const std::string path = zName;
  const bool want_ro = (flags & SQLITE_OPEN_READONLY) != 0;
  if (file_id id; stat_id(path, &id)) {
    if (auto it = v->pools.find(id); it != v->pools.end()) {
      if (it->second->pid != ::getpid())  // inherited across fork(): the parent's, not ours
        return fail(SQLITE_BUSY, "%s: the pool is held by another process (the parent, which opened it before fork())",
                    zName);
      *out = it->second;
      // A read-write open of a pool held read-only gets a read-only connection, as the unix VFS
      // gives one for a file it may only read (SQLITE_OPEN_READWRITE means "if possible").
      *read_only = want_ro || it->second->read_only;
      return SQLITE_OK;
    }
  }
  trap_handler_hold hold;  // the mount hands media data to the pool: trap its misuse reports
  auto c = std::make_unique<pool_ctx>();
  c->vfs = v;
  c->path = path;
  c->read_only = want_ro;
  auto open_as = [&](bool ro) {
    pool::open_options oo;
    oo.backend = v->opts.backend;
    oo.read_only = ro;
    c->pool = pool::open(path, oo);
    c->read_only = ro;
  };
  // A read-write open validates the directory on a read-only view first. Loading a pool's
  // regions read-write applies recovery's lazy repairs (an owner record whose slot no longer
  // names its page is dropped, docs/api.md), so a damaged directory checked only after a
  // read-write open would be refused with those records already gone from the file; on the
  // private view they are not written. (The cost: a second open and check_slots of the
  // directory, once per pool per process.)
  if (!want_ro) {
    pool_ctx probe;
    probe.vfs = v;
    probe.path = path;
    probe.read_only = true;
    bool opened = false;
    try {
      pool::open_options oo;  // no backend: nothing is written, and a test's device stays out of it
      oo.read_only = true;
      probe.pool = pool::open(path, oo);
      opened = true;
    } catch (const pmpage::error&) {
      // Missing, empty, locked by a writer, not readable: the read-write open below says why.
    }
    if (opened) {
      probe.start_pfn = probe.pool.start_pfn();
      probe.end_pfn = probe.pool.end_pfn();
      misuse_trap trap;
      int rc = mount(&probe);
      if (trap.tripped)
        rc = fail(SQLITE_CORRUPT, "%s: the pool refused the directory's data (damaged): %s", zName, trap.first.c_str());
      probe.pool.close();
      if (rc != SQLITE_OK) return rc;
    }
  }
  try {
    open_as(want_ro);
  } catch (const pmpage::error& e) {
    const int err = e.code().value();
    std::error_code ec;
    const bool exists = std::filesystem::exists(path, ec);
    // A missing file, or an empty one (what the unix VFS treats as an empty database): create.
    const bool missing = err == ENOENT || (exists && std::filesystem::file_size(path, ec) == 0 && !ec);
    if (!want_ro && exists && (err == EACCES || err == EPERM || err == EROFS)) {
      // A pool this process may only read opens read-only, as the unix VFS opens such a file.
      try {
        open_as(true);
      } catch (const pmpage::error& e2) {
        return open_failed(zName, e2, "");
      }
    } else if (!missing || !(flags & SQLITE_OPEN_CREATE) || want_ro) {
      return open_failed(zName, e, "");
    } else {
      pool::options o;
      o.size = v->opts.default_pool_size;
      if (const char* s = sqlite3_uri_parameter(zName, "pool_size")) {
        bool ok;
        o.size = parse_size(s, &ok);
        if (!ok || o.size == 0)
          return fail(SQLITE_CANTOPEN, "%s: pool_size=%s is not a size (bytes, or K/M/G/T)", zName, s);
      }
      o.backend = v->opts.backend;
      o.root_size = ROOT_SIZE;
      o.mode = 0644;  // SQLite's default file permissions (before the umask)
      try {
        c->pool = pool::create(path, o);
      } catch (const pmpage::error& e2) {
        return open_failed(zName, e2, "cannot create the pool: ");
      }
    }
  }
  c->start_pfn = c->pool.start_pfn();
  c->end_pfn = c->pool.end_pfn();
  {
    misuse_trap trap;
    int rc = mount(c.get());
    if (trap.tripped)
      rc = fail(SQLITE_CORRUPT, "%s: the pool refused the directory's data (damaged): %s", zName, trap.first.c_str());
    if (rc != SQLITE_OK) return rc;
  }
  // (Stat again: the open above may have created the file, or met another one than the first stat.)
  if (!stat_id(path, &c->id))
    return fail_errno(SQLITE_CANTOPEN, errno, "%s: the pool was removed while it was being opened", zName);
  *read_only = c->read_only;
  *out = c.release();
  v->pools.emplace((*out)->id, *out);
  hold.keep();  // released by release_pool
  return SQLITE_OK;
}

/// The open pool whose path is a prefix of zName with a suffix SQLite uses for a database's
/// companion files. Among pools opened under the same name (one since unlinked or renamed, one
/// created there since), the one that name reaches now. Called with vfs->mu held.
pool_ctx* pool_for_companion(vfs_instance* v, const std::string& name, std::string* suffix) {
  pool_ctx* best = nullptr;
  int same_name = 0;  // pools with best's path
  for (auto& [id, c] : v->pools) {
    const std::string& path = c->path;
    if (name.size() <= path.size() || name.compare(0, path.size(), path) != 0) continue;
    const std::string s = name.substr(path.size());
    if (s.size() >= SUFFIX_MAX || s[0] != '-') continue;
    if (!best || path.size() > best->path.size()) {
      best = c;
      *suffix = s;
      same_name = 1;
    } else if (path == best->path) {
      ++same_name;
    }
  }
  if (same_name > 1) {
    if (file_id now; stat_id(best->path, &now))
      if (auto it = v->pools.find(now); it != v->pools.end() && it->second->path == best->path) best = it->second;
  }
  return best;
}

/// Gives back the pages journals kept for the next transaction (spare journals, pages past a
/// journal's size): a closed pool holds only what its files hold. Called with no file open.
void free_kept_pages(pool_ctx* c) {
  std::lock_guard gc(c->mu);
  for (auto& e : c->dir->files) {
    if (e.state == F_SPARE) {
      finish_delete(c, e);
    } else if (e.state == F_LIVE) {
      const unsigned from = first_slot_past(e.size);
      pfn_t* t = table_of(c, e);
      // (No fence when there is nothing to free.) Then a table no byte of the file needs.
      if (free_slots(c, e, t, from, nullptr) && t && from <= NR_DIRECT) c->pool.free_pages_from(&e.table);
    }
  }
}

void release_pool(vfs_instance* v, pool_ctx* c) {
  // vfs->mu held.
  if (--c->refs > 0) return;
  if (!c->read_only && c->dir && c->pid == ::getpid()) free_kept_pages(c);
  v->pools.erase(c->id);
  c->pool.close();
  delete c;
  release_trap_handler();
}

// ---- file I/O --------------------------------------------------------------------------------

pm_file* F(sqlite3_file* f) { return reinterpret_cast<pm_file*>(f); }

/// The cache lines of a 4 KiB block that [from, from + len) touches (from, len within the block).
std::uint64_t line_mask(std::uint64_t from, std::uint64_t len) {
  const unsigned lo = unsigned(from / 64), hi = unsigned((from + len - 1) / 64);
  return (hi == 63 ? ~0ull : (1ull << (hi + 1)) - 1) & ~((1ull << lo) - 1);
}

/// Records that [from, from + len) of chunk ck (page pg) was written. A 4 KiB page goes on the
/// file's dirty list once (TestSetPageDirty: the dirty list's test-and-set) and keeps the mask of
/// its written cache lines in page_private; a 4 KiB block of a 2 MiB page keeps its mask in
/// n->huge_lines. xSync flushes the written lines only (a journal header update is one line).
void mark_dirty(node* n, const chunk& ck, page* pg, std::uint64_t from, std::uint64_t len) {
  if (len == 0) return;
  if (ck.order == 0) {
    const std::uint64_t m = line_mask(from, len);
    if (!TestSetPageDirty(pg)) {
      n->dirty_small.push_back({ck.idx, pg});
      set_page_private(pg, m);
    } else {
      set_page_private(pg, page_private(pg) | m);
    }
    return;
  }
  std::uint64_t off = ck.base - SMALL_BYTES + from;
  const std::uint64_t end = off + len;
  if (n->huge_lines.size() <= (end - 1) / PAGE_SIZE) n->huge_lines.resize((end - 1) / PAGE_SIZE + 1 + 512, 0);
  while (off < end) {
    const std::uint64_t b = off / PAGE_SIZE, in = off % PAGE_SIZE;
    const std::uint64_t k = std::min(end - off, PAGE_SIZE - in);
    std::uint64_t& w = n->huge_lines[b];
    if (!w) n->dirty_blocks.push_back(std::uint32_t(b));
    w |= line_mask(in, k);
    off += k;
  }
}

/// Flushes the lines of `mask` in the 4 KiB block at `base`, one call per run of lines.
void flush_lines(pool& p, const char* base, std::uint64_t mask) {
  while (mask) {
    const int lo = __builtin_ctzll(mask);
    const std::uint64_t from_lo = mask >> lo;
    const int n = from_lo == ~0ull >> lo ? 64 - lo : __builtin_ctzll(~from_lo);
    p.flush(base + lo * 64, std::size_t(n) * 64);
    mask &= n + lo >= 64 ? 0 : ~0ull << (n + lo);
  }
}

/// Starts writing back every written line (no fence). Returns false when there was none.
bool flush_dirty(node* n) {
  pool& p = n->ctx->pool;
  const bool any = !n->dirty_small.empty() || !n->dirty_blocks.empty();
  for (auto& [idx, pg] : n->dirty_small) {
    flush_lines(p, static_cast<const char*>(page_address(pg)), page_private(pg));
    set_page_private(pg, 0);
    ClearPageDirty(pg);
  }
  n->dirty_small.clear();
  for (std::uint32_t b : n->dirty_blocks) {
    const std::uint64_t off = SMALL_BYTES + std::uint64_t{b} * PAGE_SIZE;
    const chunk ck = chunk_at(off);
    if (const char* a = n->table && n->table[ck.idx] ? page_bytes(n->ctx, n->table[ck.idx], ck.order) : nullptr)
      flush_lines(p, a + (off - ck.base), n->huge_lines[b]);
    n->huge_lines[b] = 0;
  }
  n->dirty_blocks.clear();
  return any;
}

/// Starts writing back the entry's size and state words if the media may differ (no fence).
/// Returns false when it had nothing to write.
bool flush_entry(node* n) {
  if (n->media_size == n->size && !n->entry_dirty) return false;
  dir_entry& e = *n->e;
  e.size = n->size;
  n->ctx->pool.flush(&e, 2 * sizeof(std::uint64_t));  // state and size: one line
  n->media_size = n->size;
  n->entry_dirty = false;
  return true;
}

/// Drops the dirty marks of chunks [from, ...) before their pages are freed.
void forget_dirty_from(node* n, unsigned from) {
  std::erase_if(n->dirty_small, [&](const std::pair<unsigned, page*>& d) {
    if (d.first < from) return false;
    set_page_private(d.second, 0);
    ClearPageDirty(d.second);
    return true;
  });
  const std::uint64_t first_block = from <= NR_SMALL ? 0 : std::uint64_t{from - NR_SMALL} * BLOCKS_PER_HUGE;
  std::erase_if(n->dirty_blocks, [&](std::uint32_t b) {
    if (b < first_block) return false;
    n->huge_lines[b] = 0;
    return true;
  });
}

int pm_close(sqlite3_file* f);
int do_read(sqlite3_file* f, void* buf, int amt, sqlite3_int64 off) {
  node* n = F(f)->n;
  std::lock_guard g(n->mu);
  char* out = static_cast<char*>(buf);
  std::uint64_t pos = std::uint64_t(off);
  const std::uint64_t end = pos + std::uint64_t(amt);
  const std::uint64_t avail_end = std::min(end, n->size);
  while (pos < avail_end) {
    const chunk ck = chunk_at(pos);
    const std::uint64_t k = std::min(avail_end, ck.base + ck.len) - pos;
    const pfn_t pfn = n->pfn_at(ck.idx);
    if (!pfn) {
      std::memset(out, 0, k);  // a hole
    } else {
      const char* a = page_bytes(n->ctx, pfn, ck.order);
      if (!a) return SQLITE_IOERR_READ;
      std::memcpy(out, a + (pos - ck.base), k);
    }
    out += k;
    pos += k;
  }
  if (pos < end) {
    std::memset(out, 0, end - pos);
    return SQLITE_IOERR_SHORT_READ;
  }
  return SQLITE_OK;
}

/// Pages kept past a truncate because a reader pinned them (n->stale) hold the old bytes: before
/// the file grows over them again, they are zeroed (a hole reads as zeros) and written back.
/// (Pages allocated ahead are zero already: GFP_ZERO.)
void unstale_below(node* n, std::uint64_t new_size) {
  for (auto it = n->stale.begin(); it != n->stale.end();) {
    const unsigned i = *it;
    const chunk ck = i < NR_SMALL ? chunk_at(std::uint64_t{i} * PAGE_SIZE)
                                  : chunk_at(SMALL_BYTES + std::uint64_t{i - NR_SMALL} * HUGE_BYTES);
    if (ck.base >= new_size) {
      ++it;
      continue;
    }
    if (char* a = page_bytes(n->ctx, n->pfn_at(i), ck.order)) {
      std::memset(a, 0, ck.len);
      mark_dirty(n, ck, virt_to_page(a), 0, ck.len);
    }
    it = n->stale.erase(it);
  }
}

/// Zeroes the bytes [from, to) past a journal's size that its kept pages hold (old bytes of an
/// earlier transaction's journal), before the file grows over them without writing them: a hole
/// reads as zeros. (Other files' pages past the size are zero already: GFP_ZERO, zero_tail.)
/// SQLite writes journals sequentially, so this is for completeness, not a path it takes.
void zero_gap(node* n, std::uint64_t from, std::uint64_t to) {
  if (!n->journal) return;
  to = std::min(to, SMALL_BYTES);  // (kept pages: the 4 KiB area)
  while (from < to) {
    const chunk ck = chunk_at(from);
    const std::uint64_t k = std::min(to, ck.base + ck.len) - from;
    if (const pfn_t pfn = n->pfn_at(ck.idx))
      if (char* a = page_bytes(n->ctx, pfn, ck.order)) {
        std::memset(a + (from - ck.base), 0, k);
        mark_dirty(n, ck, virt_to_page(a), from - ck.base, k);
      }
    from += k;
  }
}

int ensure_table(node* n) {
  if (n->table) return SQLITE_OK;
  pool_ctx* c = n->ctx;
  page* t = c->pool.alloc_pages_to(TABLE_ORDER, &n->e->table, GFP_ZERO);
  if (!t) return fail(SQLITE_FULL, "%s: the pool is full (no 16 KiB page for a file's page table)", c->path.c_str());
  n->table = static_cast<pfn_t*>(page_address(t));
  return SQLITE_OK;
}

/// xWrite's body; n->mu held.
int write_locked(node* n, const void* buf, std::uint64_t amt, std::uint64_t off) {
  pool_ctx* c = n->ctx;
  std::uint64_t pos = off;
  const std::uint64_t end = pos + amt;
  if (end > MAX_FILE)
    return fail(SQLITE_FULL, "%s: a file of the pmpage VFS holds at most %llu bytes", c->path.c_str(),
                (unsigned long long)MAX_FILE);
  if (end > NR_DIRECT * PAGE_SIZE)
    if (int rc = ensure_table(n); rc != SQLITE_OK) return rc;
  if (!n->stale.empty()) unstale_below(n, end);
  if (pos > n->size) zero_gap(n, n->size, pos);
  const char* in = static_cast<const char*>(buf);
  while (pos < end) {
    const chunk ck = chunk_at(pos);
    const std::uint64_t k = std::min(end, ck.base + ck.len) - pos;
    pfn_t& slot = *n->slot(ck.idx);
    page* pg;
    if (!slot) {
      // Always zeroed, the zeros durable with the allocation (GFP_ZERO): the size word and the
      // data share xSync's fence, so after a crash in that sync the new size may be on the media
      // while some data words are not; what shows through then must be zeros, never the page's
      // previous bytes (an old journal header there once made a hot journal out of nothing: the
      // power-failure test found it). A 4 KiB page brings the next empty ones along in one bulk
      // call (a journal grows sequentially); pages past the size when the file closes or
      // shrinks go back then.
      pfn_t* batch[LARGE_BATCH];
      unsigned nb = 0;
      const unsigned want = ck.order != 0 ? 1 : ck.idx < NR_DIRECT ? SMALL_BATCH : LARGE_BATCH;
      for (unsigned i = ck.idx; nb < want && i < (ck.order == 0 ? NR_SMALL : NR_SLOTS); ++i) {
        pfn_t* s = n->slot(i);
        if (!s || *s) break;
        batch[nb++] = s;
      }
      pg = c->pool.alloc_pages_bulk_to(ck.order, std::span<pfn_t* const>(batch, nb), GFP_ZERO) > 0 ? pfn_to_page(slot)
                                                                                                  : nullptr;
      if (!pg)
        return fail(SQLITE_FULL, "%s: the pool is full (no %s page for file bytes at %llu)", c->path.c_str(),
                    ck.order ? "2 MiB" : "4 KiB", (unsigned long long)pos);
    } else {
      char* a = page_bytes(c, slot, ck.order);
      if (!a) return SQLITE_IOERR_WRITE;
      pg = virt_to_page(a);
    }
    std::memcpy(static_cast<char*>(page_address(pg)) + (pos - ck.base), in, k);
    mark_dirty(n, ck, pg, pos - ck.base, k);
    in += k;
    pos += k;
  }
  n->size = std::max(n->size, end);
  return SQLITE_OK;
}

/// The first word of a journal sector at `off`: what its page holds there, also past the size (a
/// kept page's old bytes: an old journal header there must not survive a crash under the new
/// header); 0 where there is no page (new pages are zeroed durably with their allocation).
std::uint64_t first_word(node* n, std::uint64_t off) {
  if (off + 8 > MAX_FILE) return 0;
  const chunk ck = chunk_at(off);
  const pfn_t pfn = n->pfn_at(ck.idx);
  std::uint64_t w = 0;
  if (const char* a = pfn ? page_bytes(n->ctx, pfn, ck.order) : nullptr) std::memcpy(&w, a + (off - ck.base), 8);
  return w;
}

int do_write(sqlite3_file* f, const void* buf, int amt, sqlite3_int64 off) {
  node* n = F(f)->n;
  if (F(f)->read_only) return SQLITE_READONLY;
  std::lock_guard g(n->mu);
  // SQLite assumes a torn sector write is linear: if any byte of the sector changed, its first or
  // last bytes did. The media only promises 8-byte failure atomicity (any subset of the words
  // written since the last fence may survive). That matters where a journal header is cleared
  // (PERSIST mode's commit): a surviving magic with nRec already zero would be a valid header
  // saying "roll back nothing, then truncate the database to its old size" — after the
  // transaction had been written. It matters as much where a reused journal page holds an old
  // journal's bytes and SQLite writes a journal header (first word 0 until its records are
  // synced) over them: a crash that kept the new size but not that word would show an old header
  // there, and a rollback would go on into the old journal's records. So a write that clears the
  // first word of a journal sector makes that word durable first (one fence: only where the
  // page's word was not 0 — a spilling transaction's later headers), then writes the rest.
  const auto o = std::uint64_t(off);
  if (n->journal && o % 512 == 0 && amt > 8) {
    std::uint64_t w;
    std::memcpy(&w, buf, 8);
    if (w == 0 && first_word(n, o) != 0) {
      if (int rc = write_locked(n, buf, 8, o); rc != SQLITE_OK) return rc;
      const chunk ck = chunk_at(o);
      const char* a = page_bytes(n->ctx, n->pfn_at(ck.idx), ck.order);
      if (!a) return SQLITE_IOERR_WRITE;
      n->ctx->pool.persist(a + (o - ck.base), 8);
      return write_locked(n, static_cast<const char*>(buf) + 8, std::uint64_t(amt) - 8, o + 8);
    }
  }
  return write_locked(n, buf, std::uint64_t(amt), o);
}

/// Frees the pages wholly past n->size (readers' pins stay: those slots go to n->stale). A
/// journal keeps its first KEEP_CHUNKS chunks' pages for the next transaction (their old bytes
/// past the size are never read: do_read stops at the size, a write past it zeroes the gap).
void free_past_size(node* n) {
  const unsigned from = first_slot_past(n->size);
  forget_dirty_from(n, from);
  std::set<unsigned> busy;
  free_slots(n->ctx, *n->e, n->table, n->journal ? std::max(from, KEEP_CHUNKS) : from, &busy);
  n->stale = std::move(busy);
}

int do_truncate(sqlite3_file* f, sqlite3_int64 size) {
  node* n = F(f)->n;
  pool_ctx* c = n->ctx;
  if (F(f)->read_only) return SQLITE_READONLY;
  std::lock_guard g(n->mu);
  const auto want = std::uint64_t(size);
  if (want > MAX_FILE) return fail(SQLITE_FULL, "%s: truncate to %lld is past the largest file", c->path.c_str(), size);
  dir_entry& e = c->dir->files[n->index];
  if (want >= n->size) {
    unstale_below(n, want);  // the new bytes are holes: zeros, never a kept page's old bytes
    zero_gap(n, n->size, want);
    n->size = want;
  } else {
    flush_dirty(n);  // the bytes that stay are written back with the size's fence
    n->size = want;
    // A journal emptied (TRUNCATE mode's commit) keeps its pages: its first word goes to 0 in the
    // same fence as the size, so that either store alone makes it "not hot", and the next header,
    // written over a zero word, needs no fence of its own (do_write).
    if (want == 0 && n->journal && e.direct[0])
      if (char* a = page_bytes(c, e.direct[0], 0)) {
        std::atomic_ref<std::uint64_t>(*reinterpret_cast<std::uint64_t*>(a)).store(0, std::memory_order_relaxed);
        c->pool.flush(a, 8);
      }
  }
  // The commit point: the new size is durable before any page goes.
  e.size = n->size;
  c->pool.flush(&e, 2 * sizeof(std::uint64_t));
  c->pool.drain();
  n->media_size = n->size;
  n->entry_dirty = false;
  zero_tail(c, *n->e, n->table, n->size);
  free_past_size(n);
  return SQLITE_OK;
}

int do_sync(sqlite3_file* f, int) {
  node* n = F(f)->n;
  pool_ctx* c = n->ctx;
  if (c->read_only || !n->e) return SQLITE_OK;  // nothing was written
  std::lock_guard g(n->mu);
  // The one fence of a commit's sync, and none when nothing was written since the last one (every
  // store of the VFS to a file is on its dirty lists or in its entry until a fence covers it:
  // TRUNCATE mode's sync after the truncate, a journal's close).
  const bool data = flush_dirty(n);
  if (flush_entry(n) || data) c->pool.drain();
  if (!n->stale.empty() && n->fetch_out == 0) free_past_size(n);
  return SQLITE_OK;
}

int pm_file_size(sqlite3_file* f, sqlite3_int64* size) {
  node* n = F(f)->n;
  std::lock_guard g(n->mu);
  *size = sqlite3_int64(n->size);
  return SQLITE_OK;
}

// SQLite's five lock levels between connections of this process (as os_unix.c's inode locks).
int pm_lock(sqlite3_file* f, int level) {
  pm_file* pf = F(f);
  node* n = pf->n;
  std::lock_guard g(n->mu);
  if (pf->lock >= level) return SQLITE_OK;
  if (level == SQLITE_LOCK_SHARED) {
    if ((n->exclusive && n->exclusive != pf) || (n->pending && n->pending != pf)) return SQLITE_BUSY;
    ++n->nshared;
    pf->lock = SQLITE_LOCK_SHARED;
    return SQLITE_OK;
  }
  if (level == SQLITE_LOCK_RESERVED) {
    if (n->reserved && n->reserved != pf) return SQLITE_BUSY;
    n->reserved = pf;
    pf->lock = SQLITE_LOCK_RESERVED;
    return SQLITE_OK;
  }
  // PENDING or EXCLUSIVE: PENDING keeps new readers out while the existing ones finish.
  if (n->pending && n->pending != pf) return SQLITE_BUSY;
  if (n->reserved && n->reserved != pf) return SQLITE_BUSY;
  n->pending = pf;
  if (pf->lock < SQLITE_LOCK_PENDING) pf->lock = SQLITE_LOCK_PENDING;
  if (level == SQLITE_LOCK_EXCLUSIVE) {
    if (n->nshared > 1) return SQLITE_BUSY;  // other readers: stay PENDING
    n->exclusive = pf;
    pf->lock = SQLITE_LOCK_EXCLUSIVE;
  }
  return SQLITE_OK;
}

void unlock_locked(pm_file* pf, int level) {
  node* n = pf->n;
  if (pf->lock <= level) return;
  if (level <= SQLITE_LOCK_SHARED) {
    if (n->exclusive == pf) n->exclusive = nullptr;
    if (n->pending == pf) n->pending = nullptr;
    if (n->reserved == pf) n->reserved = nullptr;
  }
  if (level == SQLITE_LOCK_NONE && pf->lock >= SQLITE_LOCK_SHARED) --n->nshared;
  pf->lock = level;
}

int pm_unlock(sqlite3_file* f, int level) {
  node* n = F(f)->n;
  std::lock_guard g(n->mu);
  unlock_locked(F(f), level);
  return SQLITE_OK;
}

int pm_check_reserved(sqlite3_file* f, int* out) {
  node* n = F(f)->n;
  std::lock_guard g(n->mu);
  *out = n->reserved || n->pending || n->exclusive;
  return SQLITE_OK;
}

int pm_file_control(sqlite3_file* f, int op, void* arg) {
  pm_file* pf = F(f);
  if (op == SQLITE_FCNTL_VFSNAME) {
    *static_cast<char**>(arg) = sqlite3_mprintf("%s", pf->n->ctx->vfs->opts.name.c_str());
    return SQLITE_OK;
  }
  if (op == SQLITE_FCNTL_MMAP_SIZE) {
    // As os_unix.c: report the current limit, take a new one (>= 0) clamped to SQLite's
    // configured maximum, and keep the old one while this handle has pages fetched. xFetch hands
    // out nothing past the limit; the VFS needs no mapping of its own (pool pages are mapped).
    auto* v = static_cast<sqlite3_int64*>(arg);
    const sqlite3_int64 want = std::min(*v, pf->n->ctx->vfs->mmap_max);
    *v = pf->mmap_limit;
    std::lock_guard g(pf->n->mu);  // fetch_out is changed by xFetch under it
    if (want >= 0 && pf->fetch_out == 0) pf->mmap_limit = want;
    return SQLITE_OK;
  }
  if (op == SQLITE_FCNTL_HAS_MOVED) {
    // The pager asks before it opens a rollback journal (and before a checkpoint on close):
    // a database whose file was deleted or renamed gets SQLITE_READONLY_DBMOVED, as on unix.
    *static_cast<int*>(arg) = has_moved(pf->n->ctx);
    return SQLITE_OK;
  }
  return SQLITE_NOTFOUND;
}

int pm_sector_size(sqlite3_file*) { return int(PAGE_SIZE); }
// A write changes only the bytes it names, even across a power failure (the media is written in
// 8-byte words, and nothing is written back that SQLite did not write): POWERSAFE_OVERWRITE.
// Not SAFE_APPEND: the size and the appended bytes share one fence, so a crash may keep either.
int pm_device_characteristics(sqlite3_file*) { return SQLITE_IOCAP_POWERSAFE_OVERWRITE; }

// ---- WAL index (shared memory) -----------------------------------------------------------------

int pm_shm_map(sqlite3_file* f, int region, int size, int extend, void volatile** pp) {
  pm_file* pf = F(f);
  node* n = pf->n;
  std::lock_guard g(n->mu);
  if (!pf->shm_mapped) {
    pf->shm_mapped = true;
    ++n->shm_refs;
  }
  *pp = nullptr;
  if (std::size_t(region) >= n->shm.size()) {
    if (!extend) return SQLITE_OK;
    while (n->shm.size() <= std::size_t(region)) {
      char* r = static_cast<char*>(sqlite3_malloc(size));
      if (!r) return SQLITE_NOMEM;
      std::memset(r, 0, std::size_t(size));
      n->shm.push_back(r);
    }
  }
  *pp = n->shm[std::size_t(region)];
  return SQLITE_OK;
}

int pm_shm_lock(sqlite3_file* f, int ofst, int cnt, int flags) {
  pm_file* pf = F(f);
  node* n = pf->n;
  std::lock_guard g(n->mu);
  const auto mask = std::uint16_t(((1u << cnt) - 1) << ofst);
  if (flags & SQLITE_SHM_UNLOCK) {
    for (int i = ofst; i < ofst + cnt; ++i) {
      if (pf->shm_excl & (1u << i)) n->shm_excl[i] = nullptr;
      if (pf->shm_shared & (1u << i)) --n->shm_shared[i];
    }
    pf->shm_excl &= std::uint16_t(~mask);
    pf->shm_shared &= std::uint16_t(~mask);
    return SQLITE_OK;
  }
  if (flags & SQLITE_SHM_SHARED) {
    if ((pf->shm_shared | pf->shm_excl) & mask) return SQLITE_OK;
    if (n->shm_excl[ofst]) return SQLITE_BUSY;
    ++n->shm_shared[ofst];
    pf->shm_shared |= mask;
    return SQLITE_OK;
  }
  for (int i = ofst; i < ofst + cnt; ++i) {
    if (n->shm_excl[i] && n->shm_excl[i] != pf) return SQLITE_BUSY;
    if (n->shm_shared[i] - ((pf->shm_shared >> i) & 1) > 0) return SQLITE_BUSY;
  }
  for (int i = ofst; i < ofst + cnt; ++i) {
    if (pf->shm_shared & (1u << i)) --n->shm_shared[i];
    n->shm_excl[i] = pf;
  }
  pf->shm_shared &= std::uint16_t(~mask);
  pf->shm_excl |= mask;
  return SQLITE_OK;
}

void pm_shm_barrier(sqlite3_file* f) {
  std::atomic_thread_fence(std::memory_order_seq_cst);
  std::lock_guard g(F(f)->n->mu);  // also orders with the other connections' shm calls
}

void shm_release_locked(pm_file* pf) {
  node* n = pf->n;
  for (int i = 0; i < SQLITE_SHM_NLOCK; ++i) {
    if (pf->shm_excl & (1u << i)) n->shm_excl[i] = nullptr;
    if (pf->shm_shared & (1u << i)) --n->shm_shared[i];
  }
  pf->shm_excl = pf->shm_shared = 0;
  if (pf->shm_mapped) {
    pf->shm_mapped = false;
    if (--n->shm_refs == 0) {
      for (char* r : n->shm) sqlite3_free(r);
      n->shm.clear();
    }
  }
}

int pm_shm_unmap(sqlite3_file* f, int) {
  std::lock_guard g(F(f)->n->mu);
  shm_release_locked(F(f));
  return SQLITE_OK;
}

// ---- memory-mapped reads -------------------------------------------------------------------------

int do_fetch(sqlite3_file* f, sqlite3_int64 off, int amt, void** pp) {
  pm_file* pf = F(f);
  node* n = pf->n;
  std::lock_guard g(n->mu);
  *pp = nullptr;
  const auto pos = std::uint64_t(off);
  // As os_unix.c, nothing past the handle's mmap limit (PRAGMA mmap_size) is handed out: xRead.
  if (pos + std::uint64_t(amt) > std::uint64_t(pf->mmap_limit)) return SQLITE_OK;
  if (pos + std::uint64_t(amt) > n->size) return SQLITE_OK;
  const chunk ck = chunk_at(pos);
  if (pos + std::uint64_t(amt) > ck.base + ck.len) return SQLITE_OK;  // spans two pages: xRead
  const pfn_t pfn = n->pfn_at(ck.idx);
  if (!pfn) return SQLITE_OK;  // a hole
  char* a = page_bytes(n->ctx, pfn, ck.order);
  if (!a) return SQLITE_IOERR_READ;
  // Pinned: a truncate cannot free it under the reader. (A page that is free is no page of the
  // file — its slot was changed from outside: SQLite reads it with xRead, which reports it.)
  if (!get_page_unless_zero(virt_to_page(a))) return SQLITE_OK;
  ++n->fetch_out;
  ++pf->fetch_out;
  *pp = a + (pos - ck.base);
  return SQLITE_OK;
}

int do_unfetch(sqlite3_file* f, sqlite3_int64 off, void* p) {
  if (!p) return SQLITE_OK;  // "the mapping may be stale": ours never is
  node* n = F(f)->n;
  std::lock_guard g(n->mu);
  put_page(virt_to_page(p));
  --n->fetch_out;
  --F(f)->fetch_out;
  (void)off;
  return SQLITE_OK;
}

/// Ends a VFS call that ran under `trap`: a misuse report of the pool on this thread, or damage the
/// VFS found in the media, fails the call with SQLITE_CORRUPT, whatever it had returned.
int trapped(const misuse_trap& trap, const pool_ctx* c, int rc) {
  if (!trap.tripped) return rc;
  return fail(SQLITE_CORRUPT, "%s: the pool is damaged (changed from outside the VFS?): %s", c->path.c_str(),
              trap.first.c_str());
}
int pm_read(sqlite3_file* f, void* buf, int amt, sqlite3_int64 off) {
  misuse_trap t;
  return trapped(t, F(f)->n->ctx, do_read(f, buf, amt, off));
}
int pm_write(sqlite3_file* f, const void* buf, int amt, sqlite3_int64 off) {
  misuse_trap t;
  return trapped(t, F(f)->n->ctx, do_write(f, buf, amt, off));
}
int pm_truncate(sqlite3_file* f, sqlite3_int64 size) {
  misuse_trap t;
  return trapped(t, F(f)->n->ctx, do_truncate(f, size));
}
int pm_sync(sqlite3_file* f, int flags) {
  misuse_trap t;
  return trapped(t, F(f)->n->ctx, do_sync(f, flags));
}
int pm_fetch(sqlite3_file* f, sqlite3_int64 off, int amt, void** pp) {
  misuse_trap t;
  const int rc = trapped(t, F(f)->n->ctx, do_fetch(f, off, amt, pp));
  if (rc != SQLITE_OK) *pp = nullptr;
  return rc;
}
int pm_unfetch(sqlite3_file* f, sqlite3_int64 off, void* p) {
  misuse_trap t;
  return trapped(t, F(f)->n->ctx, do_unfetch(f, off, p));
}

const sqlite3_io_methods pm_io_methods = {
    3,
    pm_close,
    pm_read,
    pm_write,
    pm_truncate,
    pm_sync,
    pm_file_size,
    pm_lock,
    pm_unlock,
    pm_check_reserved,
    pm_file_control,
    pm_sector_size,
    pm_device_characteristics,
    pm_shm_map,
    pm_shm_lock,
    pm_shm_barrier,
    pm_shm_unmap,
    pm_fetch,
    pm_unfetch,
};

// ---- the VFS -----------------------------------------------------------------------------------

/// Deletes a file of an open pool; called with vfs->mu and c->mu held. SQLITE_IOERR_DELETE_NOENT
/// if it does not exist.
int delete_entry(pool_ctx* c, const std::string& suffix) {
  dir_entry* e = find_entry(c, suffix);
  if (!e) return SQLITE_IOERR_DELETE_NOENT;
  const unsigned index = unsigned(e - c->dir->files);
  if (auto it = c->nodes.find(index); it != c->nodes.end()) {
    // Open elsewhere (SQLite deletes a journal only when no handle is open, but be safe):
    // delete when the last handle closes.
    it->second->delete_on_close = true;
    return SQLITE_OK;
  }
  if (suffix == JOURNAL_SUFFIX && !find_spare(c, suffix)) {
    // A rollback journal becomes the spare the next one reuses, pages and all: state SPARE, size 0
    // and its first word 0 in one fence — the commit point of DELETE journal mode, reached by any
    // one of the three stores (no file; an empty file; a journal whose first byte is 0, which
    // SQLite never calls hot). Pages past KEEP_CHUNKS go after it.
    if (e->direct[0])
      if (char* a = page_bytes(c, e->direct[0], 0)) {
        std::atomic_ref<std::uint64_t>(*reinterpret_cast<std::uint64_t*>(a)).store(0, std::memory_order_relaxed);
        c->pool.flush(a, 8);
      }
    e->size = 0;
    e->state = F_SPARE;
    c->pool.flush(e, 2 * sizeof(std::uint64_t));
    c->pool.drain();
    if (!free_slots(c, *e, table_of(c, *e), KEEP_CHUNKS, nullptr)) return SQLITE_IOERR_DELETE;
    return SQLITE_OK;
  }
  e->state = F_DELETING;  // the commit point of DELETE journal mode
  persist_entry(c, *e);
  if (!finish_delete(c, *e)) return SQLITE_IOERR_DELETE;  // (the trap says why)
  return SQLITE_OK;
}

int do_close(sqlite3_file* f) {
  pm_file* pf = F(f);
  node* n = pf->n;
  pool_ctx* c = n->ctx;
  vfs_instance* v = c->vfs;
  std::lock_guard gv(v->mu);
  int rc = SQLITE_OK;
  {
    std::lock_guard gc(c->mu);
    {
      std::lock_guard g(n->mu);
      unlock_locked(pf, SQLITE_LOCK_NONE);
      shm_release_locked(pf);
      n->fetch_out -= pf->fetch_out;  // (SQLite unfetches everything first; be safe)
    }
    if (--n->refs == 0) {
      if (!n->e) {
        delete n;  // a read-only pool's empty companion (pm_open): nothing on the media
      } else if (c->read_only) {
        c->nodes.erase(n->index);
        delete n;  // nothing was written
      } else {
        c->nodes.erase(n->index);
        dir_entry& e = c->dir->files[n->index];
        // The last close makes what was written durable (a reopen in this process must see the
        // file as it was left, synced or not, as on any file system) — no fence if nothing was
        // written since the last sync — then frees pages past its end (the bulk allocation's
        // spares; a journal keeps its 4 KiB pages for the next transaction).
        const bool data = flush_dirty(n);
        if (flush_entry(n) || data) c->pool.drain();
        if (n->fetch_out == 0) free_past_size(n);
        const bool del = n->delete_on_close;
        delete n;
        if (del) {
          e.state = F_DELETING;
          persist_entry(c, e);
          if (!finish_delete(c, e)) rc = SQLITE_IOERR_DELETE;
        }
      }
    }
  }
  --v->open_files;
  pf->base.pMethods = nullptr;
  release_pool(v, c);  // (may close the pool: c is gone after it)
  return rc;
}

int pm_close(sqlite3_file* f) {
  misuse_trap t;
  const std::string path = F(f)->n->ctx->path;
  const int rc = do_close(f);
  if (!t.tripped) return rc;
  return fail(SQLITE_CORRUPT, "%s: the pool is damaged (changed from outside the VFS?): %s", path.c_str(),
              t.first.c_str());
}

/// Creates a file: the spare journal of that name if there is one (its pages reused, no fence),
/// else a free entry (one fence). Either way the LIVE state is written back but not fenced: the
/// file's first xSync or close makes it durable (node::entry_dirty); a crash before that leaves
/// no file or an empty one, never a torn entry — a new entry is whole on the media before its
/// state can be, and a spare's size and first word are 0 there already (delete_entry).
int create_entry(pool_ctx* c, const std::string& suffix, dir_entry** out) {
  if (dir_entry* e = find_spare(c, suffix)) {
    e->state = F_LIVE;
    c->pool.flush(e, 2 * sizeof(std::uint64_t));
    *out = e;
    return SQLITE_OK;
  }
  for (auto& e : c->dir->files) {
    if (e.state != F_FREE) continue;
    std::memset(&e, 0, sizeof e);
    std::memcpy(e.suffix, suffix.data(), suffix.size());
    c->pool.flush(&e, sizeof e);
    c->pool.drain();  // the whole entry before the state that makes it live
    e.state = F_LIVE;
    c->pool.flush(&e, 2 * sizeof(std::uint64_t));
    *out = &e;
    return SQLITE_OK;
  }
  return fail(SQLITE_FULL, "%s: the pool's directory is full (%u files)", c->path.c_str(), NR_FILES);
}

int do_open(vfs_instance* v, sqlite3_filename zName, sqlite3_file* file, int flags, int* out_flags) {
  std::lock_guard gv(v->mu);
  pool_ctx* c = nullptr;
  std::string suffix;
  bool read_only = (flags & SQLITE_OPEN_READONLY) != 0;
  if (flags & SQLITE_OPEN_MAIN_DB) {
    if (int rc = get_pool(v, zName, flags, &c, &read_only); rc != SQLITE_OK) return rc;
  } else {
    c = pool_for_companion(v, zName, &suffix);
    if (!c) return fail(SQLITE_CANTOPEN, "%s: no database of this VFS is open for this file", zName);
    read_only = read_only || c->read_only;
  }
  ++c->refs;
  int rc = SQLITE_OK;
  {
    std::lock_guard gc(c->mu);
    dir_entry* e = find_entry(c, suffix);
    node* n = nullptr;
    bool created = false;
    if (e && (flags & SQLITE_OPEN_EXCLUSIVE)) {
      rc = fail(SQLITE_CANTOPEN, "%s exists", zName);
    } else if (!e && !(flags & SQLITE_OPEN_CREATE)) {
      rc = fail(SQLITE_CANTOPEN, "%s does not exist in its pool", zName);
    } else if (!e && c->read_only && !(flags & SQLITE_OPEN_MAIN_DB)) {
      // SQLite opens a WAL with SQLITE_OPEN_CREATE even for a read-only database: a read-only
      // pool, which is never written, gives it an empty file of its own that lives in DRAM.
      n = new node;
      n->ctx = c;
      n->index = ~0u;
    } else if (!e && c->read_only) {
      rc = fail(SQLITE_CANTOPEN, "%s does not exist in its pool, which is open read-only", zName);
    } else if (!e) {
      rc = create_entry(c, suffix, &e);
      created = rc == SQLITE_OK;
    }
    if (rc == SQLITE_OK && !n) {
      const auto index = unsigned(e - c->dir->files);
      node*& slot = c->nodes[index];
      if (!slot) {
        slot = new node;
        slot->ctx = c;
        slot->index = index;
        slot->size = slot->media_size = e->size;
        slot->e = e;
        slot->table = table_of(c, *e);
        slot->entry_dirty = created;
      }
      n = slot;
    }
    if (rc == SQLITE_OK) {
      ++n->refs;
      if (flags & SQLITE_OPEN_DELETEONCLOSE && !c->read_only) n->delete_on_close = true;
      if (flags & (SQLITE_OPEN_MAIN_JOURNAL | SQLITE_OPEN_SUPER_JOURNAL)) n->journal = true;
      auto* pf = F(file);
      pf->n = n;
      pf->lock = SQLITE_LOCK_NONE;
      pf->shm_shared = pf->shm_excl = 0;
      pf->shm_mapped = false;
      pf->read_only = read_only;
      pf->fetch_out = 0;
      pf->mmap_limit = v->mmap_default;  // as os_unix.c: SQLite's configured default
      pf->base.pMethods = &pm_io_methods;
      ++v->open_files;
      if (out_flags)
        *out_flags = read_only ? (flags & ~(SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE)) | SQLITE_OPEN_READONLY : flags;
    }
  }
  if (rc != SQLITE_OK) release_pool(v, c);
  return rc;
}

int pm_open(sqlite3_vfs* vfs, sqlite3_filename zName, sqlite3_file* file, int flags, int* out_flags) {
  vfs_instance* v = instance_of(vfs);
  file->pMethods = nullptr;
  const int kind = flags & (SQLITE_OPEN_MAIN_DB | SQLITE_OPEN_MAIN_JOURNAL | SQLITE_OPEN_WAL | SQLITE_OPEN_SUPER_JOURNAL);
  if (!zName || !kind) return v->base->xOpen(v->base, zName, file, flags, out_flags);  // temporary files
  t_error.clear();
  t_errno = 0;
  misuse_trap t;
  int rc = do_open(v, zName, file, flags, out_flags);
  if (!t.tripped) return rc;
  if (rc == SQLITE_OK) do_close(file);  // (SQLite calls no xClose after a failed xOpen)
  return fail(SQLITE_CORRUPT, "%s: the pool is damaged (changed from outside the VFS?): %s", zName, t.first.c_str());
}

int pm_delete(sqlite3_vfs* vfs, const char* zName, int sync_dir) {
  vfs_instance* v = instance_of(vfs);
  {
    std::lock_guard gv(v->mu);
    std::string suffix;
    if (pool_ctx* c = pool_for_companion(v, zName, &suffix)) {
      std::lock_guard gc(c->mu);
      if (c->read_only) {
        if (!find_entry(c, suffix)) return SQLITE_IOERR_DELETE_NOENT;
        return fail(SQLITE_IOERR_DELETE, "%s: the pool is open read-only", zName);
      }
      misuse_trap t;
      return trapped(t, c, delete_entry(c, suffix));
    }
  }
  return v->base->xDelete(v->base, zName, sync_dir);  // not a file of an open pool
}

int pm_access(sqlite3_vfs* vfs, const char* zName, int flags, int* out) {
  vfs_instance* v = instance_of(vfs);
  {
    std::lock_guard gv(v->mu);
    std::string suffix;
    pool_ctx* c = pool_for_companion(v, zName, &suffix);
    if (!c) {
      file_id id;
      if (stat_id(zName, &id))
        if (auto it = v->pools.find(id); it != v->pools.end()) c = it->second;
    }
    if (c) {
      std::lock_guard gc(c->mu);
      *out = find_entry(c, suffix) != nullptr && !(flags == SQLITE_ACCESS_READWRITE && c->read_only);
      return SQLITE_OK;
    }
  }
  return v->base->xAccess(v->base, zName, flags, out);
}

int pm_full_pathname(sqlite3_vfs* vfs, const char* zName, int n, char* out) {
  vfs_instance* v = instance_of(vfs);
  return v->base->xFullPathname(v->base, zName, n, out);
}

int pm_randomness(sqlite3_vfs* vfs, int n, char* out) {
  vfs_instance* v = instance_of(vfs);
  return v->base->xRandomness(v->base, n, out);
}
int pm_sleep(sqlite3_vfs* vfs, int us) {
  vfs_instance* v = instance_of(vfs);
  return v->base->xSleep(v->base, us);
}
int pm_current_time(sqlite3_vfs* vfs, double* t) {
  vfs_instance* v = instance_of(vfs);
  return v->base->xCurrentTime(v->base, t);
}
int pm_current_time64(sqlite3_vfs* vfs, sqlite3_int64* t) {
  vfs_instance* v = instance_of(vfs);
  return v->base->xCurrentTimeInt64(v->base, t);
}
/// SQLite asks after a failed open (sqlite3_system_errno): the errno behind this thread's last
/// failure, as os_unix.c returns errno; the message too when it gives room for one.
int pm_last_error(sqlite3_vfs*, int n, char* out) {
  if (n > 0 && out) std::snprintf(out, std::size_t(n), "%s", t_error.c_str());
  return t_errno;
}

/// SQLite's mmap default and maximum (sqlite3_config(SQLITE_CONFIG_MMAP_SIZE), not readable
/// through the API): the base VFS applies them to a file it opens, so ask a temporary file of it.
/// SQLite is initialised by now (sqlite3_vfs_find), so they cannot change later.
void probe_mmap_limits(vfs_instance* v) {
  sqlite3_vfs* b = v->base;
  std::vector<sqlite3_int64> mem(std::size_t(b->szOsFile) / sizeof(sqlite3_int64) + 1, 0);
  auto* f = reinterpret_cast<sqlite3_file*>(mem.data());
  int out = 0;
  const int flags = SQLITE_OPEN_TEMP_DB | SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_EXCLUSIVE |
                    SQLITE_OPEN_DELETEONCLOSE;
  if (b->xOpen(b, nullptr, f, flags, &out) != SQLITE_OK || !f->pMethods) return;
  sqlite3_int64 dflt = -1;
  if (f->pMethods->xFileControl(f, SQLITE_FCNTL_MMAP_SIZE, &dflt) == SQLITE_OK && dflt >= 0) {
    sqlite3_int64 big = INT64_MAX, max = -1;
    f->pMethods->xFileControl(f, SQLITE_FCNTL_MMAP_SIZE, &big);
    if (f->pMethods->xFileControl(f, SQLITE_FCNTL_MMAP_SIZE, &max) == SQLITE_OK && max >= 0) {
      v->mmap_default = dflt;
      v->mmap_max = max;
    }
  }
  f->pMethods->xClose(f);
}

std::mutex g_registry_mu;
std::map<std::string, std::unique_ptr<vfs_instance>> g_registry;

}  // namespace

int register_vfs(const vfs_options& opts) {
#ifndef SQLITE_CORE
  if (!sqlite3_api) return SQLITE_MISUSE;  // the extension build is registered by its entry point
#endif
  std::lock_guard g(g_registry_mu);
  if (auto it = g_registry.find(opts.name); it != g_registry.end()) {
    const vfs_options& o = it->second->opts;
    if (o.make_default == opts.make_default && o.default_pool_size == opts.default_pool_size &&
        o.backend == opts.backend)
      return SQLITE_OK;  // the same registration again
    // A different backend under a registered name would be silently ignored (a crash test whose
    // pools never see its simulated device): refuse it.
    return fail(SQLITE_MISUSE, "VFS '%s' is registered already with other options (backend, default size); "
                "unregister_vfs it first", opts.name.c_str());
  }
  auto v = std::make_unique<vfs_instance>();
  v->opts = opts;
  v->base = sqlite3_vfs_find(nullptr);
  if (!v->base) return SQLITE_ERROR;
  probe_mmap_limits(v.get());
  sqlite3_vfs& s = v->vfs;
  s.iVersion = 2;
  s.szOsFile = std::max<int>(int(sizeof(pm_file)), v->base->szOsFile);
  s.mxPathname = v->base->mxPathname;
  s.zName = v->opts.name.c_str();
  s.pAppData = v.get();
  s.xOpen = pm_open;
  s.xDelete = pm_delete;
  s.xAccess = pm_access;
  s.xFullPathname = pm_full_pathname;
  s.xRandomness = pm_randomness;
  s.xSleep = pm_sleep;
  s.xCurrentTime = pm_current_time;
  s.xGetLastError = pm_last_error;
  s.xCurrentTimeInt64 = pm_current_time64;
  if (int rc = sqlite3_vfs_register(&s, opts.make_default ? 1 : 0); rc != SQLITE_OK) return rc;
  g_registry.emplace(opts.name, std::move(v));
  return SQLITE_OK;
}

int unregister_vfs(const std::string& name) {
  std::lock_guard g(g_registry_mu);
  auto it = g_registry.find(name);
  if (it == g_registry.end()) return SQLITE_NOTFOUND;
  {
    std::lock_guard gv(it->second->mu);
    if (it->second->open_files > 0) return SQLITE_BUSY;
  }
  sqlite3_vfs_unregister(&it->second->vfs);
  g_registry.erase(it);
  return SQLITE_OK;
}

}  // namespace pmpage::sqlite

extern "C" {

int pmpage_sqlite_register(int make_default) {
  pmpage::sqlite::vfs_options o;
  o.make_default = make_default != 0;
  return pmpage::sqlite::register_vfs(o);
}

const char* pmpage_sqlite_errmsg(void) { return pmpage::sqlite::t_error.c_str(); }

/// The loadable extension's entry point (`.load libpmpage_sqlite`): registers "pmpage" and stays
/// loaded after the connection that loaded it closes (the VFS outlives connections).
#ifdef _WIN32
__declspec(dllexport)
#endif
int sqlite3_pmpagesqlite_init(sqlite3* db, char** err, const sqlite3_api_routines* api) {
  SQLITE_EXTENSION_INIT2(api);
  (void)db;
  const int rc = pmpage_sqlite_register(0);
  if (rc != SQLITE_OK) {
    if (err) *err = sqlite3_mprintf("pmpage VFS: registration failed (%d)", rc);
    return rc;
  }
  return SQLITE_OK_LOAD_PERMANENTLY;
}

}  // extern "C"
