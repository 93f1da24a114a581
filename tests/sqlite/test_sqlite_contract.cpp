// test_sqlite_contract.cpp — what the pmpage VFS promises at its edges (issue #18): a damaged
// directory or bytes changed under an open pool are SQLite errors and never abort the host; a
// read-only open never writes the pool, not even one a crashed writer left work in; a pool is
// known by its file (device and inode), not its name, and a moved database refuses writes as on
// unix (SQLITE_READONLY_DBMOVED); PRAGMA mmap_size, sqlite3_system_errno() and the message for a
// copy of an open pool are os_unix.c's.
//
// Every test here runs with the library's default misuse handler (print and abort): on the code
// before the fix, the damage tests end the test process instead of failing an assertion.
#include <gtest/gtest.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include <pmpage/pmpage.hpp>
#include <pmpage/testing.hpp>

#include "pmpage_sqlite.h"
#include "sqlite_util.hpp"

using pmpage::sqlite_test::connection;
using pmpage::sqlite_test::remove_db_files;
using pmpage::sqlite_test::scratch;

namespace {

// (The VFS "pmpage" is registered by test_sqlite_vfs.cpp's global environment.)

std::string uri(const std::string& path, const std::string& extra = "") {
  return "file:" + path + "?vfs=pmpage" + (extra.empty() ? "" : "&" + extra);
}

std::string name_of_test() {
  std::string n = ::testing::UnitTest::GetInstance()->current_test_info()->name();
  std::replace(n.begin(), n.end(), '/', '_');
  return n;
}

std::string file_bytes(const std::string& path) {
  std::string b(std::filesystem::file_size(path), '\0');
  const int fd = ::open(path.c_str(), O_RDONLY);
  EXPECT_GE(fd, 0) << path;
  EXPECT_EQ(::pread(fd, b.data(), b.size(), 0), ssize_t(b.size()));
  ::close(fd);
  return b;
}

/// Opens with sqlite3_open_v2; returns the result code and keeps the handle in *db (closed by the
/// caller, as SQLite requires even after a failed open).
int open_db(const std::string& u, int flags, sqlite3** db) {
  *db = nullptr;
  return sqlite3_open_v2(u.c_str(), db, flags | SQLITE_OPEN_URI, nullptr);
}

/// The VFS directory in the pool file (docs/sqlite.md): a 64-byte header starting with the magic
/// "pmSQLFS1", then 128-byte entries {state, size, table, reserved, direct[8], suffix[32]}.
std::size_t directory_offset(const std::string& path) {
  const std::string b = file_bytes(path);
  const std::size_t at = b.find("pmSQLFS1");
  if (at == std::string::npos) throw std::runtime_error("no VFS directory in " + path);
  return at;
}
constexpr std::size_t ENTRY0 = 64, ENTRY_SIZE = 128;
constexpr std::size_t W_STATE = 0, W_TABLE = 2, W_DIRECT = 4;  // words of an entry

std::uint64_t read_word(int fd, std::size_t off) {
  std::uint64_t w = 0;
  EXPECT_EQ(::pread(fd, &w, 8, off_t(off)), 8);
  return w;
}
void write_word(int fd, std::size_t off, std::uint64_t w) { EXPECT_EQ(::pwrite(fd, &w, 8, off_t(off)), 8); }

/// A small database: one table of one row (the database file is 2 pages: direct slots 0 and 1).
void make_small_db(const std::string& path, const std::string& mode = "DELETE") {
  remove_db_files(path);
  connection c(uri(path, "pool_size=8M"));
  c.exec("PRAGMA journal_mode=" + mode + "; CREATE TABLE t(a); INSERT INTO t VALUES (42);");
}

// ---- defect 2: a damaged directory is SQLITE_CORRUPT, never an abort ---------------------------

struct damage {
  const char* name;
  /// Damages the closed pool at `path` (dir = file offset of its directory), given another pool
  /// kept open meanwhile (`other`).
  std::function<void(const std::string& path, std::size_t dir, pmpage::pool& other)> apply;
};
void PrintTo(const damage& d, std::ostream* os) { *os << d.name; }

class SqliteDamagedDirectory : public ::testing::TestWithParam<damage> {};

TEST_P(SqliteDamagedDirectory, IsSqliteCorruptAndChangesNothingInsteadOfAbortingTheHost) {
  const std::string path = scratch(name_of_test() + ".pool");
  const std::string other_path = scratch(name_of_test() + "-other.pool");
  make_small_db(path);
  std::filesystem::remove(other_path);
  pmpage::pool::options oo;
  oo.size = 8 << 20;
  pmpage::pool other = pmpage::pool::create(other_path, oo);  // open during the damaged open
  const std::size_t dir = directory_offset(path);
  const std::string healthy = file_bytes(path);
  GetParam().apply(path, dir, other);
  const std::string damaged = file_bytes(path);
  ASSERT_NE(damaged, healthy);

  sqlite3* db = nullptr;
  const int rc = open_db(uri(path), SQLITE_OPEN_READWRITE, &db);
  // (A refused mount surfaces as SQLITE_CORRUPT or, when SQLite reports the open, CANTOPEN.)
  EXPECT_TRUE(rc == SQLITE_CORRUPT || rc == SQLITE_CANTOPEN) << rc << " " << pmpage_sqlite_errmsg();
  EXPECT_STRNE(pmpage_sqlite_errmsg(), "");
  sqlite3_close(db);
  EXPECT_EQ(file_bytes(path), damaged) << "a refused mount must not change the pool";

  // Put the healthy bytes back: the database opens and is whole (nothing was freed under it).
  {
    std::ofstream(path, std::ios::binary | std::ios::trunc) << healthy;
  }
  connection c(uri(path));
  EXPECT_EQ(c.exec("PRAGMA integrity_check; SELECT a FROM t;"), "ok\n42\n");
  c.close();
  other.close();
  std::filesystem::remove(other_path);
  remove_db_files(path);
}

/// Writes `w` into word `word` of directory entry `entry` through a read-write pool handle.
void poke(const std::string& path, std::size_t dir, unsigned entry, std::size_t word, std::uint64_t w) {
  const int fd = ::open(path.c_str(), O_RDWR);
  ASSERT_GE(fd, 0);
  write_word(fd, dir + ENTRY0 + entry * ENTRY_SIZE + word * 8, w);
  ::close(fd);
}
std::uint64_t peek(const std::string& path, std::size_t dir, unsigned entry, std::size_t word) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  const std::uint64_t w = read_word(fd, dir + ENTRY0 + entry * ENTRY_SIZE + word * 8);
  ::close(fd);
  return w;
}
/// Entry 1 becomes a copy of the database's entry 0 with `state` and suffix "-journal".
void copy_entry0(const std::string& path, std::size_t dir, std::uint64_t state) {
  const int fd = ::open(path.c_str(), O_RDWR);
  ASSERT_GE(fd, 0);
  char e[ENTRY_SIZE];
  ASSERT_EQ(::pread(fd, e, sizeof e, off_t(dir + ENTRY0)), off_t(sizeof e));
  std::memcpy(e, &state, 8);
  std::memset(e + 96, 0, 32);
  std::memcpy(e + 96, "-journal", 8);
  ASSERT_EQ(::pwrite(fd, e, sizeof e, off_t(dir + ENTRY0 + ENTRY_SIZE)), off_t(sizeof e));
  ::close(fd);
}

INSTANTIATE_TEST_SUITE_P(
    Kinds, SqliteDamagedDirectory,
    ::testing::Values(
        // A page's pfn moved to another slot of the file, its owning slot cleared: a read-write
        // open's region loads would drop the owner record (found by review: the file changed).
        damage{"APfnMovedToAnotherSlot",
               [](const std::string& p, std::size_t dir, pmpage::pool&) {
                 poke(p, dir, 0, W_DIRECT + 2, peek(p, dir, 0, W_DIRECT + 0));
                 poke(p, dir, 0, W_DIRECT + 0, 0);
               }},
        // A pfn copied over another page's owning slot (that page's owner record is then void).
        damage{"APfnCopiedOverAnOwningSlot",
               [](const std::string& p, std::size_t dir, pmpage::pool&) {
                 poke(p, dir, 0, W_DIRECT + 1, peek(p, dir, 0, W_DIRECT + 0));
               }},
        // A pfn copied into a slot past the file's size: the mount frees those slots.
        damage{"PfnCopiedPastTheFilesSize",
               [](const std::string& p, std::size_t dir, pmpage::pool&) {
                 poke(p, dir, 0, W_DIRECT + 6, peek(p, dir, 0, W_DIRECT + 0));
               }},
        // An allocation no slot owns (alloc_pages), named by a slot past the size.
        damage{"AnUnownedAllocation",
               [](const std::string& p, std::size_t dir, pmpage::pool&) {
                 pmpage::pool pool = pmpage::pool::open(p);
                 const pmpage::pfn_t pfn = pmpage::page_to_pfn(pool.alloc_pages(0));
                 pool.close();
                 poke(p, dir, 0, W_DIRECT + 6, pfn);
               }},
        // A page of another open pool (pfn_valid, but not this pool's).
        damage{"APageOfAnotherOpenPool",
               [](const std::string& p, std::size_t dir, pmpage::pool& other) {
                 auto* slot = static_cast<pmpage::pfn_t*>(other.root());
                 ASSERT_NE(other.alloc_pages_to(0, slot), nullptr);
                 poke(p, dir, 0, W_DIRECT + 6, *slot);
               }},
        // The database's slots in a second live entry: two owners of every page.
        damage{"TwoLiveEntriesSharingSlots",
               [](const std::string& p, std::size_t dir, pmpage::pool&) { copy_entry0(p, dir, 1); }},
        // ... or in an entry whose delete the mount would finish: it would free the database's pages.
        damage{"ADeletingEntrySharingSlots",
               [](const std::string& p, std::size_t dir, pmpage::pool&) { copy_entry0(p, dir, 2); }},
        // ... or in a spare journal (a deleted one whose pages are kept), which the mount frees too.
        damage{"ASpareJournalSharingSlots",
               [](const std::string& p, std::size_t dir, pmpage::pool&) { copy_entry0(p, dir, 3); }},
        // The page table slot naming a 4 KiB data page of the file (the wrong order).
        damage{"ATableSlotNamingADataPage",
               [](const std::string& p, std::size_t dir, pmpage::pool&) {
                 poke(p, dir, 0, W_TABLE, peek(p, dir, 0, W_DIRECT + 1));
               }}),
    [](const ::testing::TestParamInfo<damage>& i) { return std::string(i.param.name); });

// ---- issue #19: directory version 2 (state SPARE) --------------------------------------------------

// A pool written before the spare journal existed (directory version 1) opens and is upgraded; a
// version this VFS does not know is refused with a message, and left as it was.
TEST(SqliteVfs, AVersion1DirectoryIsUpgradedAndAnUnknownVersionRefused) {
  const std::string path = scratch(name_of_test() + ".pool");
  make_small_db(path);
  const std::size_t dir = directory_offset(path);
  auto version = [&] {
    const int fd = ::open(path.c_str(), O_RDONLY);
    const std::uint64_t v = read_word(fd, dir + 8);
    ::close(fd);
    return v;
  };
  auto set_version = [&](std::uint64_t v) {
    const int fd = ::open(path.c_str(), O_RDWR);
    write_word(fd, dir + 8, v);
    ::close(fd);
  };
  EXPECT_EQ(version(), 2u);
  set_version(1);
  {
    connection c(uri(path));
    EXPECT_EQ(c.exec("SELECT a FROM t; INSERT INTO t VALUES (43);"), "42\n");
  }
  EXPECT_EQ(version(), 2u);
  set_version(3);
  const std::string before = file_bytes(path);
  sqlite3* db = nullptr;
  const int rc = open_db(uri(path), SQLITE_OPEN_READWRITE, &db);
  EXPECT_EQ(rc, SQLITE_CANTOPEN);
  EXPECT_NE(std::string(pmpage_sqlite_errmsg()).find("directory version 3"), std::string::npos) << pmpage_sqlite_errmsg();
  sqlite3_close(db);
  EXPECT_EQ(file_bytes(path), before);
  remove_db_files(path);
}

// ---- defect 14: bytes of an open pool changed from outside --------------------------------------

TEST(SqliteVfs, BytesOfAnOpenPoolOverwrittenFromOutsideFailTheCallNotTheHost) {
  const std::string path = scratch(name_of_test() + ".pool");
  make_small_db(path);
  const std::size_t dir = directory_offset(path);
  connection holder(uri(path));  // keeps the pool mounted while its bytes change
  EXPECT_EQ(holder.exec("SELECT a FROM t;"), "42\n");
  const int fd = ::open(path.c_str(), O_RDWR);
  ASSERT_GE(fd, 0);
  const std::size_t e0 = dir + ENTRY0;
  // The database's first page now "lives" at a pfn of no pool, and a slot past its end names its
  // second page (which the VFS frees when the file shrinks or closes).
  write_word(fd, e0 + (W_DIRECT + 0) * 8, 0xdeadbeef);
  write_word(fd, e0 + (W_DIRECT + 6) * 8, read_word(fd, e0 + (W_DIRECT + 1) * 8));
  ::close(fd);

  {
    // A new connection reads page 1 at once (the header): the open fails, the host lives on.
    sqlite3* db = nullptr;
    const int rc = open_db(uri(path), SQLITE_OPEN_READWRITE, &db);
    EXPECT_EQ(rc & 0xff, SQLITE_CORRUPT) << pmpage_sqlite_errmsg();
    EXPECT_NE(std::string(pmpage_sqlite_errmsg()).find("0xdeadbeef"), std::string::npos) << pmpage_sqlite_errmsg();
    sqlite3_close(db);
  }
  // The holder's cache has page 1; a write makes it read page 2 and free the pages past its end
  // when the file closes: the pool refuses the copied slot, and the VFS reports it (xClose's
  // result is not returned by sqlite3_close: the message says it).
  holder.run("INSERT INTO t VALUES (1);");
  EXPECT_EQ(holder.close(), SQLITE_OK);
  EXPECT_NE(std::string(pmpage_sqlite_errmsg()).find("damaged"), std::string::npos) << pmpage_sqlite_errmsg();
  EXPECT_NE(std::string(pmpage_sqlite_errmsg()).find("does not own"), std::string::npos) << pmpage_sqlite_errmsg();
  remove_db_files(path);
}

int g_host_reports = 0;
void host_handler(const char*) { ++g_host_reports; }

TEST(SqliteVfs, TheHostsMisuseHandlerStaysInChargeOfItsOwnReports) {
  // The VFS traps reports during its own calls only; the host's handler gets the others while a
  // database is open, and is the installed handler again once the last one is closed.
  const std::string path = scratch(name_of_test() + ".pool");
  make_small_db(path);
  const pmpage::misuse_handler before = pmpage::set_misuse_handler(&host_handler);
  g_host_reports = 0;
  {
    connection c(uri(path));
    EXPECT_EQ(c.exec("SELECT a FROM t;"), "42\n");
    EXPECT_EQ(pmpage::pfn_to_page(0xdeadbeef), nullptr);  // misuse of the host's own
    EXPECT_EQ(g_host_reports, 1);
  }
  EXPECT_EQ(pmpage::set_misuse_handler(before), &host_handler) << "the host's handler was not put back";
  remove_db_files(path);
}

// ---- defect 5: a read-only open never writes --------------------------------------------------

TEST(SqliteVfs, AReadOnlyOpenReadsAndNeverWritesThePool) {
  for (const std::string mode : {"DELETE", "WAL"}) {
    const std::string path = scratch(name_of_test() + "-" + mode + ".pool");
    make_small_db(path, mode);
    const std::string before = file_bytes(path);
    for (const bool by_uri : {true, false}) {
      sqlite3* db = nullptr;
      const int rc = by_uri ? open_db(uri(path, "mode=ro"), SQLITE_OPEN_READWRITE, &db)
                            : open_db(uri(path), SQLITE_OPEN_READONLY, &db);
      ASSERT_EQ(rc, SQLITE_OK) << mode << " " << pmpage_sqlite_errmsg();
      EXPECT_EQ(sqlite3_db_readonly(db, "main"), 1);
      sqlite3_stmt* st = nullptr;
      ASSERT_EQ(sqlite3_prepare_v2(db, "SELECT a FROM t;", -1, &st, nullptr), SQLITE_OK);
      ASSERT_EQ(sqlite3_step(st), SQLITE_ROW) << mode << " " << sqlite3_errmsg(db);
      EXPECT_EQ(sqlite3_column_int(st, 0), 42);
      sqlite3_finalize(st);
      EXPECT_EQ(sqlite3_exec(db, "INSERT INTO t VALUES (1);", nullptr, nullptr, nullptr) & 0xff, SQLITE_READONLY);
      EXPECT_EQ(sqlite3_close(db), SQLITE_OK);
      EXPECT_EQ(file_bytes(path), before) << mode << (by_uri ? " mode=ro" : " SQLITE_OPEN_READONLY") << " wrote the pool";
    }
    // A read-write connection while a read-only one holds the pool is read-only too (as unix
    // opens a file it may only read), and the pool is still not written.
    {
      sqlite3* ro = nullptr;
      ASSERT_EQ(open_db(uri(path, "mode=ro"), SQLITE_OPEN_READONLY, &ro), SQLITE_OK);
      ASSERT_EQ(sqlite3_exec(ro, "SELECT * FROM t;", nullptr, nullptr, nullptr), SQLITE_OK);
      sqlite3* rw = nullptr;
      ASSERT_EQ(open_db(uri(path), SQLITE_OPEN_READWRITE, &rw), SQLITE_OK) << pmpage_sqlite_errmsg();
      EXPECT_EQ(sqlite3_db_readonly(rw, "main"), 1);
      EXPECT_EQ(sqlite3_exec(rw, "INSERT INTO t VALUES (1);", nullptr, nullptr, nullptr) & 0xff, SQLITE_READONLY);
      sqlite3_close(rw);
      sqlite3_close(ro);
      EXPECT_EQ(file_bytes(path), before);
    }
    connection c(uri(path));
    c.exec("INSERT INTO t VALUES (7);");
    EXPECT_EQ(c.exec("SELECT count(*) FROM t;"), "2\n");
    c.close();
    remove_db_files(path);
  }
}

TEST(SqliteVfs, AReadOnlyOpenAfterACrashedWriterLeavesThePoolAsItWas) {
  // A writer killed in the middle of a transaction leaves a hot journal and pages past the
  // database's durable size: the read-write mount would free those and SQLite would roll back.
  const std::string path = scratch(name_of_test() + ".pool");
  make_small_db(path);
  const pid_t child = ::fork();
  if (child == 0) {
    try {
      connection c(uri(path));
      c.exec("PRAGMA cache_size=1; BEGIN;"
             "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000)"
             "  INSERT INTO t SELECT zeroblob(500) FROM n;");
      ::kill(::getpid(), SIGKILL);  // no commit, no close
    } catch (...) {
    }
    _exit(2);
  }
  int status = 0;
  ::waitpid(child, &status, 0);
  ASSERT_TRUE(WIFSIGNALED(status)) << "the writer failed on its own";
  const std::string before = file_bytes(path);
  for (int i = 0; i < 2; ++i) {
    sqlite3* db = nullptr;
    ASSERT_EQ(open_db(uri(path, "mode=ro"), SQLITE_OPEN_READONLY, &db), SQLITE_OK) << pmpage_sqlite_errmsg();
    // A hot journal cannot be rolled back by a reader: SQLite says so.
    const int rc = sqlite3_exec(db, "SELECT count(*) FROM t;", nullptr, nullptr, nullptr);
    EXPECT_TRUE(rc == SQLITE_OK || sqlite3_extended_errcode(db) == SQLITE_READONLY_ROLLBACK) << rc;
    sqlite3_close(db);
    EXPECT_EQ(file_bytes(path), before) << "a read-only open changed the pool";
  }
  connection c(uri(path));
  EXPECT_EQ(c.exec("PRAGMA integrity_check; SELECT a FROM t;"), "ok\n42\n");
  c.close();
  remove_db_files(path);
}

TEST(SqliteVfs, AReadOnlyOpenOfAPoolThatNeedsRecoveryRecoversPrivately) {
  // Power failure at every fence of a commit (the crash toolkit): images with an intent of the
  // library to replay and files past their durable sizes. A read-only open of each reads it and
  // leaves every byte of the image as it was.
  const std::string path = scratch(name_of_test() + ".pool");
  remove_db_files(path);
  {
    connection c(uri(path, "pool_size=4M"));
    c.exec("CREATE TABLE t(a); INSERT INTO t VALUES (42);");
  }
  std::size_t needed_recovery = 0, images = 0;
  pmpage::testing::crash_options opts;
  opts.random_subsets = 0;  // "nothing unfenced kept" and "everything kept" at every fence
  auto op = [&](const std::shared_ptr<pmpage::persistence>& device) {
    pmpage::sqlite::vfs_options o;
    o.name = "pmpage-ro-sim";
    o.backend = device;
    ASSERT_EQ(pmpage::sqlite::register_vfs(o), SQLITE_OK);
    {
      connection c("file:" + path + "?vfs=pmpage-ro-sim");
      c.exec("BEGIN; WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 40)"
             "  INSERT INTO t SELECT zeroblob(1000) FROM n; COMMIT;");
    }
    EXPECT_EQ(pmpage::sqlite::unregister_vfs("pmpage-ro-sim"), SQLITE_OK);
  };
  auto check = [&](const std::filesystem::path& image, const pmpage::testing::crash_point&) -> std::string {
    ++images;
    const std::string before = file_bytes(image);
    {
      pmpage::pool::open_options ro;
      ro.read_only = true;
      pmpage::pool p = pmpage::pool::open(image, ro);
      // Loads every region: the slot protocol's repairs (an interrupted allocation or free of
      // the VFS's pages) happen when a region loads, not at open.
      (void)p.check();
      if (!p.recovery_log().empty()) ++needed_recovery;
    }
    sqlite3* db = nullptr;
    const int rc = open_db("file:" + image.string() + "?vfs=pmpage&mode=ro", SQLITE_OPEN_READONLY, &db);
    std::string why;
    if (rc != SQLITE_OK) {
      why = std::string("read-only open failed: ") + pmpage_sqlite_errmsg();
    } else {
      const int r = sqlite3_exec(db, "SELECT count(*) FROM t;", nullptr, nullptr, nullptr);
      if (r != SQLITE_OK && sqlite3_extended_errcode(db) != SQLITE_READONLY_ROLLBACK)
        why = std::string("read failed: ") + sqlite3_errmsg(db);
    }
    sqlite3_close(db);
    if (file_bytes(image) != before) return "a read-only open changed the image";
    return why;
  };
  const pmpage::testing::crash_report rep = pmpage::testing::run_crash_test(path, opts, op, check);
  EXPECT_TRUE(rep.ok()) << rep.describe();
  EXPECT_GT(needed_recovery, 0u) << "no image needed the library's recovery: the test tested nothing";
  EXPECT_GT(images, needed_recovery);
  remove_db_files(path);
}

// ---- defects 12 and 13: a pool is its file, not its name ----------------------------------------

class SqliteMoved : public ::testing::TestWithParam<bool> {};  // true: renamed, false: unlinked

TEST_P(SqliteMoved, ANewDatabaseAtTheOldNameIsANewPool) {
  const bool renamed = GetParam();
  const std::string path = scratch(name_of_test() + ".pool");
  const std::string moved = path + ".moved";
  make_small_db(path);
  remove_db_files(moved);
  connection a(uri(path));
  EXPECT_EQ(a.exec("SELECT a FROM t;"), "42\n");
  if (renamed) ASSERT_EQ(::rename(path.c_str(), moved.c_str()), 0);
  else ASSERT_EQ(::unlink(path.c_str()), 0);
  {
    // As on unix: a new, empty database at the name; its commits are its own and stay.
    connection b(uri(path, "pool_size=16M"));
    EXPECT_EQ(b.exec("SELECT count(*) FROM sqlite_master;"), "0\n");
    b.exec("CREATE TABLE u(x); INSERT INTO u VALUES ('new');");
  }
  EXPECT_EQ(a.exec("SELECT a FROM t;"), "42\n") << "the old connection still reads its database";
  a.close();
  connection c(uri(path));
  EXPECT_EQ(c.exec("SELECT x FROM u;"), "new\n");
  EXPECT_EQ(c.run("SELECT a FROM t;").rfind("ERROR", 0), 0u) << "the old database's table at the new one";
  c.close();
  if (renamed) {
    connection d(uri(moved));
    EXPECT_EQ(d.exec("SELECT a FROM t;"), "42\n");
  }
  remove_db_files(path);
  remove_db_files(moved);
}

/// The extended result codes of a write through a connection whose database file was deleted or
/// renamed after it was opened, with `vfs`, in journal mode `mode`.
std::string write_after_move(const std::string& vfs, const std::string& mode, bool renamed) {
  const std::string path = scratch(name_of_test() + "-" + vfs + "-" + mode + (vfs == "unix" ? ".db" : ".pool"));
  remove_db_files(path);
  remove_db_files(path + ".moved");
  std::string out;
  {
    connection c("file:" + path + "?vfs=" + vfs);
    c.exec("PRAGMA journal_mode=" + mode + "; CREATE TABLE t(a); INSERT INTO t VALUES (1);");
    if (renamed) ::rename(path.c_str(), (path + ".moved").c_str());
    else ::unlink(path.c_str());
    for (const char* sql : {"INSERT INTO t VALUES (2);", "SELECT count(*) FROM t;"}) {
      const int rc = sqlite3_exec(c.get(), sql, nullptr, nullptr, nullptr);
      out += std::to_string(rc == SQLITE_OK ? 0 : sqlite3_extended_errcode(c.get())) + " ";
    }
  }
  remove_db_files(path);
  remove_db_files(path + ".moved");
  return out;
}

TEST_P(SqliteMoved, AMovedDatabaseRefusesWritesWithDbMovedAsOnUnix) {
  const bool renamed = GetParam();
  // The pager asks the VFS (SQLITE_FCNTL_HAS_MOVED) before it opens a rollback journal: the
  // write is refused, reads go on.
  const std::string dbmoved = std::to_string(SQLITE_READONLY_DBMOVED) + " 0 ";
  for (const char* mode : {"DELETE", "TRUNCATE"}) {
    EXPECT_EQ(write_after_move("pmpage", mode, renamed), dbmoved) << mode;
    EXPECT_EQ(write_after_move("unix", mode, renamed), dbmoved) << mode << ": SQLite's own behaviour changed";
  }
  // PERSIST: the same for pmpage; unix refuses the write too, but earlier, with its own error
  // (SQLITE_IOERR_FSTAT: it stats the database to give the journal its permissions).
  EXPECT_EQ(write_after_move("pmpage", "PERSIST", renamed), dbmoved);
  EXPECT_NE(write_after_move("unix", "PERSIST", renamed).rfind("0 ", 0), 0u);
  // WAL: no journal is opened, and SQLite does not ask; on both VFSes the connection goes on
  // committing into the file it has open (as a process that keeps an unlinked file open does).
  EXPECT_EQ(write_after_move("pmpage", "WAL", renamed), write_after_move("unix", "WAL", renamed));
}

INSTANTIATE_TEST_SUITE_P(UnlinkedOrRenamed, SqliteMoved, ::testing::Values(false, true),
                         [](const ::testing::TestParamInfo<bool>& i) { return i.param ? "Renamed" : "Unlinked"; });

// ---- defect 15 ------------------------------------------------------------------------------------

TEST(SqliteVfs, MmapSizeIsClampedToSqlitesMaximumAsOnUnix) {
  const std::string path = scratch(name_of_test() + ".pool");
  const std::string ux = scratch(name_of_test() + ".db");
  remove_db_files(path);
  remove_db_files(ux);
  connection p(uri(path, "pool_size=16M"));
  connection u("file:" + ux + "?vfs=unix");
  for (const char* sql : {"PRAGMA mmap_size;", "PRAGMA mmap_size=1000000000000000;", "PRAGMA mmap_size;",
                          "PRAGMA mmap_size=4096;", "PRAGMA mmap_size;", "PRAGMA mmap_size=0;"})
    EXPECT_EQ(p.exec(sql), u.exec(sql)) << sql;
  p.close();
  u.close();
  remove_db_files(path);
  remove_db_files(ux);
}

TEST(SqliteVfs, TheMmapLimitStaysWhilePagesAreFetched) {
  const std::string path = scratch(name_of_test() + ".pool");
  remove_db_files(path);
  sqlite3_vfs* vfs = sqlite3_vfs_find("pmpage");
  ASSERT_NE(vfs, nullptr);
  std::vector<char> name(path.begin(), path.end());
  name.resize(name.size() + 4, '\0');
  std::vector<sqlite3_int64> mem(std::size_t(vfs->szOsFile) / 8 + 1);
  auto* f = reinterpret_cast<sqlite3_file*>(mem.data());
  int out = 0;
  ASSERT_EQ(vfs->xOpen(vfs, name.data(), f, SQLITE_OPEN_MAIN_DB | SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, &out),
            SQLITE_OK);
  std::vector<char> data(64 << 10, 'x');
  ASSERT_EQ(f->pMethods->xWrite(f, data.data(), int(data.size()), 0), SQLITE_OK);
  auto limit = [&](sqlite3_int64 want) {
    EXPECT_EQ(f->pMethods->xFileControl(f, SQLITE_FCNTL_MMAP_SIZE, &want), SQLITE_OK);
    return want;  // the limit before the call
  };
  limit(16384);
  void* p = nullptr;
  ASSERT_EQ(f->pMethods->xFetch(f, 16384, 4096, &p), SQLITE_OK);
  EXPECT_EQ(p, nullptr) << "past the limit: SQLite must read it with xRead";
  ASSERT_EQ(f->pMethods->xFetch(f, 8192, 4096, &p), SQLITE_OK);
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(limit(1 << 20), 16384);
  EXPECT_EQ(limit(-1), 16384) << "changed while a page was fetched";
  ASSERT_EQ(f->pMethods->xUnfetch(f, 8192, p), SQLITE_OK);
  EXPECT_EQ(limit(1 << 20), 16384);
  EXPECT_EQ(limit(-1), 1 << 20);
  ASSERT_EQ(f->pMethods->xClose(f), SQLITE_OK);
  remove_db_files(path);
}

TEST(SqliteVfs, SystemErrnoIsSetAfterAFailedOpenAsOnUnix) {
  const std::string path = scratch(name_of_test() + "-missing.pool");
  remove_db_files(path);
  for (const char* vfs : {"pmpage", "unix"}) {
    sqlite3* db = nullptr;
    EXPECT_EQ(open_db("file:" + path + "?vfs=" + vfs, SQLITE_OPEN_READWRITE, &db), SQLITE_CANTOPEN) << vfs;
    EXPECT_EQ(sqlite3_system_errno(db), ENOENT) << vfs;
    sqlite3_close(db);
  }
}

TEST(SqliteVfs, ACopyOfAPoolOpenInThisProcessIsNotCalledOpenInAnotherProcess) {
  const std::string path = scratch(name_of_test() + ".pool");
  const std::string copy = scratch(name_of_test() + "-copy.pool");
  make_small_db(path);
  remove_db_files(copy);
  std::filesystem::copy_file(path, copy);
  connection c(uri(path));
  EXPECT_EQ(c.exec("SELECT a FROM t;"), "42\n");
  sqlite3* db = nullptr;
  EXPECT_NE(open_db(uri(copy), SQLITE_OPEN_READWRITE, &db), SQLITE_OK);
  sqlite3_close(db);
  const std::string msg = pmpage_sqlite_errmsg();
  EXPECT_EQ(msg.find("another process"), std::string::npos) << msg;
  EXPECT_NE(msg.find("copy"), std::string::npos) << msg;
  c.close();
  // Alone, the copy opens.
  connection d(uri(copy));
  EXPECT_EQ(d.exec("SELECT a FROM t;"), "42\n");
  d.close();
  remove_db_files(path);
  remove_db_files(copy);
}

}  // namespace
