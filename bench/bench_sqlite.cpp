// bench_sqlite.cpp — pmpage_sqlite_bench: one mixed SQL workload on seven configurations, in one
// process, interleaved (Google Benchmark's random interleaving of repetitions):
//   pmpage        the pmpage VFS, database + journal in a pool in /dev/shm (emulated pmem)
//   pmpage_mmap   the same with PRAGMA mmap_size (reads through xFetch: pointers into pool pages)
//   pmpage_wal    the pmpage VFS in WAL mode (database + WAL in the pool)
//   unix          SQLite's unix VFS on a /dev/shm file (tmpfs: fsync is cheap, no device latency)
//   unix_mmap     the same with mmap
//   unix_wal      the unix VFS in WAL mode
//   memory        SQLite's in-memory database (no VFS, no durability at all)
// Every configuration runs the same phases with synchronous=FULL, journal_mode=DELETE (SQLite's
// defaults) or WAL (the _wal ones); the in-memory database keeps its journal in memory in both.
// One benchmark iteration is the whole workload; each phase's time is a counter (ms), the manual
// time is the total. For the pmpage VFS the fences of the autocommit phase are counted (a counting
// persistence backend) and reported per commit. scripts/bench_summary.py prints the table
// (docs/sqlite.md explains it).
//
//   pmpage_sqlite_bench [--scratch=DIR] [--smoke] [Google Benchmark flags]
#include <benchmark/benchmark.h>
#include <sqlite3.h>
#include <unistd.h>

#include <cctype>
#include <chrono>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <pmpage/pmpage.hpp>

#include "pmpage_sqlite.h"
#include "../tests/sqlite/sqlite_util.hpp"

namespace {

using pmpage::sqlite_test::connection;

std::string g_scratch = "/dev/shm";
bool g_smoke = false;
bool g_failed = false;
std::shared_ptr<pmpage::counting_persistence> g_counter;

struct sizes {
  int bulk_tx, bulk_rows, autocommit, point, scans, scan_rows, update_tx, update_rows, delete_tx;
};
sizes workload() {
  if (g_smoke) return {2, 50, 20, 100, 10, 20, 2, 20, 2};
  return {20, 1000, 2000, 20000, 500, 100, 50, 100, 10};
}

enum phase { BULK, AUTOCOMMIT, POINT, RANGE, UPDATE, DELETE, VACUUM, NR_PHASES };
const char* const PHASE_NAMES[NR_PHASES] = {"bulk_insert", "autocommit_insert", "point_select", "range_scan",
                                            "update", "delete", "vacuum"};

struct config {
  const char* name;
  const char* vfs;  // nullptr: in-memory database
  bool mmap;
  const char* journal_mode = "DELETE";
};

std::string path_of(const config& c) { return g_scratch + "/pmpage-sqlite-bench-" + c.name + "-" + std::to_string(::getpid()); }

void remove_files(const std::string& p) {
  for (const char* s : {"", "-journal", "-wal", "-shm"}) ::unlink((p + s).c_str());
}

/// Runs one prepared statement to completion with the given integer parameters.
class stmt {
 public:
  stmt(sqlite3* db, const char* sql) {
    if (sqlite3_prepare_v2(db, sql, -1, &s_, nullptr) != SQLITE_OK) throw std::runtime_error(sqlite3_errmsg(db));
  }
  ~stmt() { sqlite3_finalize(s_); }
  /// Binds ints (and a text when `text` is set, as the last parameter) and steps; returns rows seen.
  int run(std::initializer_list<sqlite3_int64> ints, const std::string* text = nullptr) {
    int i = 1;
    for (auto v : ints) sqlite3_bind_int64(s_, i++, v);
    if (text) sqlite3_bind_text(s_, i, text->data(), int(text->size()), SQLITE_STATIC);
    int rows = 0, rc;
    while ((rc = sqlite3_step(s_)) == SQLITE_ROW) ++rows;
    sqlite3_reset(s_);
    if (rc != SQLITE_DONE) throw std::runtime_error(sqlite3_errmsg(sqlite3_db_handle(s_)));
    return rows;
  }

 private:
  sqlite3_stmt* s_ = nullptr;
};

using clock_type = std::chrono::steady_clock;

/// The workload; returns seconds per phase. Fences of the autocommit phase go to *fences.
std::vector<double> run_workload(const config& cfg, std::uint64_t* fences) {
  const sizes z = workload();
  const std::string path = path_of(cfg);
  remove_files(path);
  const std::string uri = cfg.vfs ? "file:" + path + "?vfs=" + cfg.vfs + (std::strcmp(cfg.vfs, "unix") ? "&pool_size=256M" : "")
                                  : std::string("file:bench-") + cfg.name + "?mode=memory";
  std::vector<double> t(NR_PHASES);
  {
    connection c(uri);
    std::string mode = c.exec(std::string("PRAGMA journal_mode=") + cfg.journal_mode + "; PRAGMA synchronous=FULL;");
    for (char& ch : mode) ch = char(std::toupper(static_cast<unsigned char>(ch)));
    if (cfg.vfs && mode != std::string(cfg.journal_mode) + "\n")  // (a refused mode would measure another)
      throw std::runtime_error("journal_mode=" + std::string(cfg.journal_mode) + " gave " + mode);
    if (cfg.mmap) c.exec("PRAGMA mmap_size=1073741824;");
    c.exec("CREATE TABLE items(id INTEGER PRIMARY KEY, k INTEGER, name TEXT, qty INTEGER);"
           "CREATE INDEX items_k ON items(k);");
    std::mt19937_64 rng(7);
    const std::string text(100, 'n');
    sqlite3* db = c.get();
    auto phase = [&](int p, auto&& body) {
      const auto t0 = clock_type::now();
      body();
      t[p] = std::chrono::duration<double>(clock_type::now() - t0).count();
    };
    stmt ins(db, "INSERT INTO items(k, name) VALUES (?, ?)");
    const std::int64_t keyspace = std::int64_t(z.bulk_tx) * z.bulk_rows * 4;
    phase(BULK, [&] {
      for (int tx = 0; tx < z.bulk_tx; ++tx) {
        c.exec("BEGIN");
        for (int r = 0; r < z.bulk_rows; ++r) ins.run({std::int64_t(rng() % std::uint64_t(keyspace))}, &text);
        c.exec("COMMIT");
      }
    });
    const std::uint64_t f0 = g_counter ? g_counter->fences() : 0;
    phase(AUTOCOMMIT, [&] {
      for (int r = 0; r < z.autocommit; ++r) ins.run({std::int64_t(rng() % std::uint64_t(keyspace))}, &text);
    });
    if (fences) *fences = g_counter ? g_counter->fences() - f0 : 0;
    stmt point(db, "SELECT name, qty FROM items WHERE k = ?");
    phase(POINT, [&] {
      for (int i = 0; i < z.point; ++i) point.run({std::int64_t(rng() % std::uint64_t(keyspace))});
    });
    stmt range(db, "SELECT sum(length(name)) FROM (SELECT name FROM items WHERE k >= ? ORDER BY k LIMIT ?)");
    phase(RANGE, [&] {
      for (int i = 0; i < z.scans; ++i) range.run({std::int64_t(rng() % std::uint64_t(keyspace)), z.scan_rows});
    });
    stmt upd(db, "UPDATE items SET qty = coalesce(qty, 0) + 1 WHERE id = ?");
    const std::int64_t rows = std::int64_t(z.bulk_tx) * z.bulk_rows + z.autocommit;
    phase(UPDATE, [&] {
      for (int tx = 0; tx < z.update_tx; ++tx) {
        c.exec("BEGIN");
        for (int r = 0; r < z.update_rows; ++r) upd.run({1 + std::int64_t(rng() % std::uint64_t(rows))});
        c.exec("COMMIT");
      }
    });
    phase(DELETE, [&] {
      for (int tx = 0; tx < z.delete_tx; ++tx)
        c.exec("DELETE FROM items WHERE id % " + std::to_string(z.delete_tx + 1) + " = " + std::to_string(tx) + ";");
    });
    phase(VACUUM, [&] { c.exec("VACUUM;"); });
    if (c.exec("PRAGMA integrity_check;") != "ok\n") throw std::runtime_error("integrity_check failed");
  }
  remove_files(path);
  return t;
}

void BM_sqlite(benchmark::State& state, config cfg) {
  std::vector<double> sum(NR_PHASES, 0.0);
  std::uint64_t fences = 0, commits = 0;
  for (auto _ : state) {
    std::uint64_t f = 0;
    std::vector<double> t;
    try {
      t = run_workload(cfg, &f);
    } catch (const std::exception& e) {
      g_failed = true;
      state.SkipWithError(e.what());
      return;
    }
    double total = 0;
    for (int p = 0; p < NR_PHASES; ++p) {
      sum[p] += t[p];
      total += t[p];
    }
    state.SetIterationTime(total);
    fences += f;
    commits += std::uint64_t(workload().autocommit);
  }
  const double n = double(state.iterations());
  for (int p = 0; p < NR_PHASES; ++p) state.counters[std::string(PHASE_NAMES[p]) + "_ms"] = sum[p] / n * 1e3;
  if (cfg.vfs && std::strcmp(cfg.vfs, "pmpage-bench") == 0 && commits)
    state.counters["fences_per_commit"] = double(fences) / double(commits);
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<char*> rest{argv[0]};
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--scratch=", 10) == 0) g_scratch = argv[i] + 10;
    else if (std::strcmp(argv[i], "--smoke") == 0) g_smoke = true;
    else rest.push_back(argv[i]);
  }
  // Without real pmem the pools are /dev/shm files; flush them as pmem would be (clwb + sfence).
  ::setenv("PMEM_IS_PMEM_FORCE", "1", 0);
  g_counter = std::make_shared<pmpage::counting_persistence>(pmpage::make_libpmem_persistence());
  pmpage::sqlite::vfs_options o;
  o.name = "pmpage-bench";
  o.backend = g_counter;
  if (pmpage::sqlite::register_vfs(o) != SQLITE_OK) {
    std::fprintf(stderr, "pmpage_sqlite_bench: cannot register the VFS\n");
    return 1;
  }
  static const config configs[] = {{"pmpage", "pmpage-bench", false},
                                   {"pmpage_mmap", "pmpage-bench", true},
                                   {"pmpage_wal", "pmpage-bench", false, "WAL"},
                                   {"unix", "unix", false},
                                   {"unix_mmap", "unix", true},
                                   {"unix_wal", "unix", false, "WAL"},
                                   {"memory", nullptr, false}};
  for (const config& c : configs)
    benchmark::RegisterBenchmark((std::string("sqlite/") + c.name).c_str(), BM_sqlite, c)
        ->UseManualTime()
        ->Unit(benchmark::kMillisecond)
        ->Iterations(g_smoke ? 1 : 3);
  int n = int(rest.size());
  benchmark::Initialize(&n, rest.data());
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return g_failed ? 1 : 0;
}
