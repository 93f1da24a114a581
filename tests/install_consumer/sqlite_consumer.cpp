// A program that links SQLite and the installed pmpage VFS library: registers the VFS, keeps a
// database in a pool, reads it back after reopening. Exit status 0 on success.
#include <pmpage/sqlite.h>
#include <sqlite3.h>
#include <unistd.h>

#include <cstdio>
#include <string>

int main() {
  if (pmpage_sqlite_register(0) != SQLITE_OK) return 1;
  const std::string path = "/dev/shm/pmpage-sqlite-consumer-" + std::to_string(::getpid()) + ".pool";
  const std::string uri = "file:" + path + "?vfs=pmpage&pool_size=16M";
  int rc = 1;
  for (int round = 0; round < 2; ++round) {
    sqlite3* db = nullptr;
    if (sqlite3_open_v2(uri.c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_URI, nullptr) !=
        SQLITE_OK) {
      std::fprintf(stderr, "open: %s (%s)\n", sqlite3_errmsg(db), pmpage_sqlite_errmsg());
      break;
    }
    const char* sql = round == 0 ? "CREATE TABLE t(a); INSERT INTO t VALUES (42);" : "SELECT a FROM t;";
    int value = 0;
    char* err = nullptr;
    const int r = sqlite3_exec(
        db, sql,
        [](void* v, int, char** cols, char**) {
          *static_cast<int*>(v) = std::atoi(cols[0]);
          return 0;
        },
        &value, &err);
    sqlite3_close(db);
    if (r != SQLITE_OK) {
      std::fprintf(stderr, "%s: %s\n", sql, err);
      break;
    }
    if (round == 1) rc = value == 42 ? 0 : 1;
  }
  ::unlink(path.c_str());
  if (rc == 0) std::printf("pmpage SQLite VFS: a database in a pool, read back after reopening\n");
  return rc;
}
