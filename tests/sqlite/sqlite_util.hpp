// sqlite_util.hpp — small helpers shared by the SQLite VFS tests and benchmark.
#pragma once

#include <sqlite3.h>
#include <unistd.h>

#include <stdexcept>
#include <string>

namespace pmpage::sqlite_test {

/// A connection; throws with SQLite's message when the open fails.
class connection {
 public:
  connection() = default;
  explicit connection(const std::string& uri, int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_URI) {
    if (int rc = sqlite3_open_v2(uri.c_str(), &db_, flags, nullptr); rc != SQLITE_OK) {
      std::string msg = db_ ? sqlite3_errmsg(db_) : "out of memory";
      sqlite3_close(db_);
      db_ = nullptr;
      throw std::runtime_error("open " + uri + ": " + msg + " (" + std::to_string(rc) + ")");
    }
    sqlite3_busy_timeout(db_, 10000);
  }
  connection(connection&& o) noexcept : db_(o.db_) { o.db_ = nullptr; }
  connection& operator=(connection&& o) noexcept {
    std::swap(db_, o.db_);
    return *this;
  }
  ~connection() { close(); }
  int close() {
    const int rc = db_ ? sqlite3_close(db_) : SQLITE_OK;
    db_ = nullptr;
    return rc;
  }
  sqlite3* get() const { return db_; }

  /// Runs every statement of `sql`; returns their rows as "a|b\n" lines, and an error as a line
  /// "ERROR <code>: <message>" (execution stops there).
  std::string run(const std::string& sql) const {
    std::string out;
    const char* tail = sql.c_str();
    while (*tail) {
      sqlite3_stmt* st = nullptr;
      const char* next = nullptr;
      int rc = sqlite3_prepare_v2(db_, tail, -1, &st, &next);
      if (rc != SQLITE_OK) return out + "ERROR " + std::to_string(rc) + ": " + sqlite3_errmsg(db_) + "\n";
      tail = next;
      if (!st) continue;  // whitespace or a comment
      while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        for (int i = 0; i < sqlite3_column_count(st); ++i) {
          if (i) out += '|';
          const auto* t = sqlite3_column_text(st, i);
          out += t ? reinterpret_cast<const char*>(t) : "NULL";
        }
        out += '\n';
      }
      if (rc != SQLITE_DONE) {
        out += "ERROR " + std::to_string(rc) + ": " + sqlite3_errmsg(db_) + "\n";
        sqlite3_finalize(st);
        return out;
      }
      sqlite3_finalize(st);
    }
    return out;
  }
  /// Runs and requires success.
  std::string exec(const std::string& sql) const {
    std::string r = run(sql);
    if (r.find("ERROR ") != std::string::npos) throw std::runtime_error(sql.substr(0, 80) + "... -> " + r);
    return r;
  }

 private:
  sqlite3* db_ = nullptr;
};

inline std::string scratch(const std::string& what) {
  return "/dev/shm/pmpage-sqlite-" + what + "-" + std::to_string(::getpid());
}

inline void remove_db_files(const std::string& path) {
  for (const char* s : {"", "-journal", "-wal", "-shm"}) ::unlink((path + s).c_str());
}

}  // namespace pmpage::sqlite_test
