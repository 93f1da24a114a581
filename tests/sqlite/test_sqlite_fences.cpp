// test_sqlite_fences.cpp — the fences a commit costs on the pmpage VFS, as exact budgets (issue
// #19), counted through the VFS's backend option with a counting persistence backend. The
// journal's pages are reused from one transaction to the next (no allocation or free per commit)
// and each xSync is one fence, so with synchronous=FULL:
//   DELETE, TRUNCATE  4: journal sync, nRec + journal sync, database sync, the journal's
//                        delete or truncate (its commit point);
//   PERSIST           5: the same, the header cleared in two steps (first word, then the rest);
//   WAL               1: the WAL's sync (2 for the first commit after a checkpoint restarted the
//                        WAL: its header is synced before the frames).
// The commits change no page count (an UPDATE in place), so no database page is allocated, and the
// WAL is measured where it overwrites pages it had before a checkpoint (a WAL that grows takes a
// bulk allocation, 2 fences, every 4 to 16 pages, or per 2 MiB past its first MiB).
#include <gtest/gtest.h>

#include <memory>
#include <string>

#include <pmpage/pmpage.hpp>

#include "pmpage_sqlite.h"
#include "sqlite_util.hpp"

using pmpage::sqlite_test::connection;
using pmpage::sqlite_test::remove_db_files;
using pmpage::sqlite_test::scratch;

namespace {

struct budget_case {
  const char* mode;
  unsigned fences;  // per autocommit commit, synchronous=FULL
};
void PrintTo(const budget_case& b, std::ostream* os) { *os << b.mode; }

class SqliteFences : public ::testing::TestWithParam<budget_case> {};

/// A VFS name whose pools count their fences; unregistered when the test ends.
struct counting_vfs {
  std::shared_ptr<pmpage::counting_persistence> counter =
      std::make_shared<pmpage::counting_persistence>(pmpage::make_libpmem_persistence());
  std::string name = "pmpage-count";
  counting_vfs() {
    pmpage::sqlite::vfs_options o;
    o.name = name;
    o.backend = counter;
    EXPECT_EQ(pmpage::sqlite::register_vfs(o), SQLITE_OK);
  }
  ~counting_vfs() { EXPECT_EQ(pmpage::sqlite::unregister_vfs(name), SQLITE_OK); }
};

TEST_P(SqliteFences, AnAutocommitCommitTakesItsExactFenceBudget) {
  const budget_case b = GetParam();
  const std::string path = scratch(std::string("fences-") + b.mode + ".pool");
  remove_db_files(path);
  counting_vfs v;
  {
    connection c("file:" + path + "?vfs=" + v.name + "&pool_size=16M");
    c.exec(std::string("PRAGMA journal_mode=") + b.mode + "; PRAGMA synchronous=FULL;");
    c.exec("CREATE TABLE t(id INTEGER PRIMARY KEY, n INTEGER, pad BLOB);"
           "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r WHERE i < 200)"
           "  INSERT INTO t SELECT i, 0, zeroblob(200) FROM r;");
    // Commits first: the journal (or WAL) exists, or has a spare to reuse; the WAL grows over more
    // pages than the measured commits use, then restarts from its beginning.
    const bool wal = std::string(b.mode) == "WAL";
    const int warm = wal ? 60 : 2;
    for (int i = 0; i < warm; ++i) c.exec("UPDATE t SET n = n + 1 WHERE id = 1;");
    if (wal) {
      EXPECT_EQ(c.exec("PRAGMA wal_checkpoint(RESTART);").substr(0, 2), "0|") << "the checkpoint was busy";
      const std::uint64_t f0 = v.counter->fences();
      c.exec("UPDATE t SET n = n + 1 WHERE id = 1;");
      EXPECT_EQ(v.counter->fences() - f0, 2u) << "the first commit after the WAL restarted";
    }
    constexpr int COMMITS = 20;
    for (int i = 0; i < COMMITS; ++i) {
      const std::uint64_t f0 = v.counter->fences();
      c.exec("UPDATE t SET n = n + 1 WHERE id = " + std::to_string(1 + i * 37 % 200) + ";");
      EXPECT_EQ(v.counter->fences() - f0, b.fences) << b.mode << " commit " << i;
    }
    EXPECT_EQ(c.exec("PRAGMA integrity_check; SELECT sum(n) FROM t;"), "ok\n" + std::to_string(COMMITS + warm + wal) + "\n");
  }
  // The pages the journal kept went back with the last close.
  {
    pmpage::pool p = pmpage::pool::open(path);
    EXPECT_EQ(p.check(), "");
  }
  remove_db_files(path);
}

INSTANTIATE_TEST_SUITE_P(JournalModes, SqliteFences,
                         ::testing::Values(budget_case{"DELETE", 4}, budget_case{"TRUNCATE", 4},
                                           budget_case{"PERSIST", 5}, budget_case{"WAL", 1}),
                         [](const ::testing::TestParamInfo<budget_case>& i) { return std::string(i.param.mode); });

// A journal deleted (DELETE mode) or emptied (TRUNCATE mode) keeps its pages while the pool is
// open and gives them back when it closes: a pool closed after N transactions holds what the
// database holds, whatever the journals were.
TEST(SqliteFences, TheJournalsKeptPagesGoBackWhenThePoolCloses) {
  for (const char* mode : {"DELETE", "TRUNCATE"}) {
    const std::string path = scratch(std::string("kept-") + mode + ".pool");
    remove_db_files(path);
    {
      connection c("file:" + path + "?vfs=pmpage&pool_size=16M");
      c.exec(std::string("PRAGMA journal_mode=") + mode + "; CREATE TABLE t(a INTEGER PRIMARY KEY, b BLOB);");
    }
    std::uint64_t before;
    {
      pmpage::pool p = pmpage::pool::open(path);
      before = p.stats().free_pages;
    }
    {
      connection c("file:" + path + "?vfs=pmpage");
      c.exec(std::string("PRAGMA journal_mode=") + mode + ";");
      // A journal past 1 MiB (2 MiB pages, given back at once), then small ones reusing its pages.
      c.exec("WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r WHERE i < 600)"
             "  INSERT INTO t SELECT i, zeroblob(3000) FROM r;");
      c.exec("UPDATE t SET b = zeroblob(3001);");
      for (int i = 0; i < 5; ++i) c.exec("UPDATE t SET b = zeroblob(10) WHERE a = " + std::to_string(i + 1) + ";");
      c.exec("DELETE FROM t; VACUUM;");
    }
    pmpage::pool p = pmpage::pool::open(path);
    EXPECT_EQ(p.check(), "");
    p.trim();
    EXPECT_EQ(p.stats().free_pages, before) << mode << ": the closed pool holds pages no file needs";
    p.close();
    remove_db_files(path);
  }
}

}  // namespace
