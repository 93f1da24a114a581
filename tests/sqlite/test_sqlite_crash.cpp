// test_sqlite_crash.cpp — simulated power failure at every fence of SQLite commits on the pmpage
// VFS, in each journal mode, with the public crash-testing toolkit (pmpage/testing.hpp): every
// recovered database passes PRAGMA integrity_check, holds every transaction whose COMMIT had
// returned before the crash and no part of one that had not, and its pool passes check().
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <map>

#include <pmpage/pmpage.hpp>
#include <pmpage/testing.hpp>

#include "pmpage_sqlite.h"
#include "sqlite_util.hpp"

using pmpage::sqlite_test::connection;
using pmpage::sqlite_test::remove_db_files;
using pmpage::sqlite_test::scratch;

namespace {

// (The VFS "pmpage" is registered by test_sqlite_vfs.cpp's global environment.)
constexpr const char* SIM_VFS = "pmpage-sim";

// The transactions the crash test runs: the second grows the database past its direct pages
// (a page table and more pages) and the journal past 32 KiB; the third frees pages again.
const char* const TXS[] = {
    "BEGIN; INSERT INTO t VALUES (101, 'one hundred and one', zeroblob(300));"
    "UPDATE t SET v = v || '+' WHERE id % 4 = 0; DELETE FROM t WHERE id = 7; COMMIT;",
    "BEGIN; INSERT INTO t SELECT id + 1000, 'copy ' || v, zeroblob(1500) FROM t; COMMIT;",
    "DELETE FROM t WHERE id > 1040;",
};
constexpr int NR_TXS = 3;
const char* const STATE_SQL = "SELECT count(*), total(id), group_concat(length(v), ',') FROM t;";

std::string state_of(const std::string& uri) {
  connection c(uri);
  return c.exec(STATE_SQL);
}

/// What run_commits checks: transactions `txs` of one connection (journal `mode`, `pragmas` set
/// first) over a table t(id, v, b) of `rows` rows of `pad` bytes.
struct workload {
  const char* mode;
  std::string pragmas;
  int rows;
  int pad;
  std::vector<std::string> txs;
  unsigned subsets = 4;  // random subsets of the unfenced lines per fence (PMPAGE_CRASH_SEEDS overrides)
};

/// Simulated power failure at every fence of the workload's commits and the close (and random
/// subsets of the unfenced lines at each): every image recovers to the state after a whole number
/// of transactions, at least every one whose COMMIT had returned, with integrity_check ok and the
/// pool's check() clean. Returns how many images recovered to each state.
std::map<std::string, int> run_commits(const std::string& name, const workload& w) {
  const char* mode = w.mode;
  const int nr_txs = int(w.txs.size());
  const std::string base = scratch(name + "-" + mode);
  const std::string path = base + ".pool";
  const std::string ref = base + "-ref.pool";
  remove_db_files(path);
  remove_db_files(ref);
  {
    connection c("file:" + path + "?vfs=pmpage&pool_size=8M");
    c.exec(std::string("PRAGMA journal_mode=") + mode + ";");
    c.exec("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, b BLOB);"
           "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < " + std::to_string(w.rows) + ")"
           "  INSERT INTO t SELECT i, 'row ' || i, zeroblob(" + std::to_string(w.pad) + ") FROM c;");
  }
  // The states after 0, 1, 2, 3 transactions, from a copy run with the normal backend.
  std::filesystem::copy_file(path, ref);
  std::vector<std::string> states;
  {
    const std::string uri = "file:" + ref + "?vfs=pmpage";
    states.push_back(state_of(uri));
    for (const std::string& tx : w.txs) {
      {
        connection c(uri);
        c.exec(std::string("PRAGMA journal_mode=") + mode + ";" + w.pragmas);
        c.exec(tx);
      }
      states.push_back(state_of(uri));
    }
  }
  remove_db_files(ref);

  // The fence count at which each COMMIT had returned (from the op, read by the checker).
  std::vector<std::uint64_t> committed_at(nr_txs, ~0ull);
  pmpage::testing::crash_options opts;
  opts.random_subsets =
      std::getenv("PMPAGE_CRASH_SEEDS") ? unsigned(std::atoi(std::getenv("PMPAGE_CRASH_SEEDS"))) : w.subsets;
  auto op = [&](const std::shared_ptr<pmpage::persistence>& device) {
    pmpage::sqlite::vfs_options o;
    o.name = SIM_VFS;
    o.backend = device;
    ASSERT_EQ(pmpage::sqlite::register_vfs(o), SQLITE_OK);
    auto* sim = static_cast<pmpage::testing::sim_pmem*>(device.get());
    const std::uint64_t f0 = sim->fences();
    {
      connection c("file:" + path + "?vfs=" + SIM_VFS);
      c.exec(std::string("PRAGMA journal_mode=") + mode + "; PRAGMA synchronous=FULL;" + w.pragmas);
      for (int i = 0; i < nr_txs; ++i) {
        c.exec(w.txs[std::size_t(i)]);
        committed_at[std::size_t(i)] = sim->fences() - f0;
      }
    }
    EXPECT_EQ(pmpage::sqlite::unregister_vfs(SIM_VFS), SQLITE_OK);
  };
  std::map<std::string, int> seen;
  auto check = [&](const std::filesystem::path& image, const pmpage::testing::crash_point& at) -> std::string {
    // Transactions certainly committed at this crash point: COMMIT returned at or before it.
    int must = 0;
    for (int i = 0; i < nr_txs; ++i)
      if (at.fence == 0 || committed_at[std::size_t(i)] < at.fence ||
          (committed_at[std::size_t(i)] == at.fence && !at.before))
        must = i + 1;
    std::string got;
    {
      connection c("file:" + image.string() + "?vfs=pmpage");
      const std::string ic = c.run("PRAGMA integrity_check;");
      if (ic != "ok\n") return "integrity_check: " + ic;
      got = c.run(STATE_SQL);
    }
    int which = -1;
    for (int i = 0; i <= nr_txs; ++i)
      if (got == states[std::size_t(i)]) which = i;
    if (which < 0) return "a state no sequence of whole transactions makes: " + got;
    if (which < must)
      return "transaction " + std::to_string(must) + " had committed but the database is at " + std::to_string(which);
    ++seen[std::to_string(which)];
    pmpage::pool p = pmpage::pool::open(image);
    if (std::string why = p.check(); !why.empty()) return "pool check: " + why;
    return {};
  };
  const pmpage::testing::crash_report rep = pmpage::testing::run_crash_test(path, opts, op, check);
  EXPECT_TRUE(rep.ok()) << rep.describe();
  EXPECT_GT(rep.fences, 10u);
  EXPECT_GT(rep.images, 4 * rep.fences);
  std::printf("%s %s: %llu fences, %zu crash images; recovered states:", name.c_str(), mode,
              (unsigned long long)rep.fences, rep.images);
  for (auto& [k, v] : seen) std::printf(" after %s tx: %d", k.c_str(), v);
  std::printf("\n");
  remove_db_files(path);
  return seen;
}

class SqliteCrash : public ::testing::TestWithParam<const char*> {};

TEST_P(SqliteCrash, PowerFailureAtEveryFenceOfACommitKeepsEveryCommittedTransaction) {
  std::map<std::string, int> seen = run_commits("crash", {GetParam(), "", 40, 100, {TXS, TXS + NR_TXS}});
  // Crashes before, between and after the commits were all exercised.
  EXPECT_GT(seen["0"], 0);
  EXPECT_GT(seen[std::to_string(NR_TXS)], 0);
}

INSTANTIATE_TEST_SUITE_P(JournalModes, SqliteCrash, ::testing::Values("DELETE", "TRUNCATE", "PERSIST", "WAL"));

// A rollback journal's pages are reused by the next transaction's journal (DELETE mode: the
// deleted journal is a spare; TRUNCATE mode: the emptied journal keeps them), with its old bytes
// in them. A small page cache makes SQLite spill mid-transaction, so the journals carry journal
// headers past the first (at 512-byte boundaries); the third transaction repeats the first, so its
// headers fall where the first one's old headers still are. Power fails at every fence of the
// reuse, the writes over the old journal and its delete or truncate: a committed transaction is
// never lost, and a deleted or emptied journal (or an old header inside a new one) is never
// played back.
class SqliteRecycledJournalCrash : public ::testing::TestWithParam<const char*> {};

TEST_P(SqliteRecycledJournalCrash, PowerFailureWhileARecycledJournalIsReusedOrDeletedLosesNoCommit) {
  const workload w{GetParam(),
                   "PRAGMA cache_size=10;",
                   300,
                   400,
                   {"UPDATE t SET v = v || 'a' WHERE id % 3 = 0;",  // ~40 pages journaled, spilling
                    "UPDATE t SET v = v || 'b' WHERE id = 5;",      // one page, over the old journal
                    "UPDATE t SET v = v || 'c' WHERE id % 3 = 0;",  // the first one's shape again
                    "DELETE FROM t WHERE id > 250;"},
                   // (8: with 4, a VFS that let an old header show where the reused journal
                   // writes a new one failed in TRUNCATE mode only; with 8, in both)
                   8};
  std::map<std::string, int> seen = run_commits("recycled", w);
  EXPECT_GT(seen["0"], 0);
  EXPECT_GT(seen["2"], 0);
  EXPECT_GT(seen["4"], 0);
}

INSTANTIATE_TEST_SUITE_P(JournalModes, SqliteRecycledJournalCrash, ::testing::Values("DELETE", "TRUNCATE"));

}  // namespace
