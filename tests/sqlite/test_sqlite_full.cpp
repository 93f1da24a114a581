// test_sqlite_full.cpp — a database in a sparse pool on a file system that fills up (issue #18,
// defect 3): SQLite gets SQLITE_FULL, the host lives (it died of SIGBUS inside the library), and
// the database and the pool stay consistent.
#include <gtest/gtest.h>
#include <sched.h>
#include <sys/mount.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>

#include <pmpage/pmpage.hpp>

#include "pmpage_sqlite.h"
#include "sqlite_util.hpp"

using pmpage::sqlite_test::connection;

namespace {

/// An 8 MiB tmpfs on a fresh directory (root only; the test skips otherwise), mounted in a
/// private mount namespace when it can be, so a test that dies leaves no mount behind.
class small_tmpfs {
 public:
  small_tmpfs() {
    static const bool private_ns = ::geteuid() == 0 && ::unshare(CLONE_NEWNS) == 0 &&
                                   ::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) == 0;
    (void)private_ns;
    char tmpl[] = "/tmp/pmpage-sqlite-full-XXXXXX";
    if (!::mkdtemp(tmpl)) return;
    dir_ = tmpl;
    if (::geteuid() != 0)
      why_ = "not root: cannot mount a small tmpfs";
    else if (::mount("tmpfs", tmpl, "tmpfs", 0, "size=8m,mode=0700") != 0)
      why_ = std::string("mount -t tmpfs: ") + std::strerror(errno);
    else
      mounted_ = true;
  }
  ~small_tmpfs() {
    if (mounted_) ::umount2(dir_.c_str(), MNT_DETACH);
    if (!dir_.empty()) ::rmdir(dir_.c_str());
  }
  bool ok() const { return mounted_; }
  const std::string& why() const { return why_; }
  const std::string& dir() const { return dir_; }

 private:
  std::string dir_, why_ = "mkdtemp failed";
  bool mounted_ = false;
};

TEST(SqliteFullFileSystem, InsertsUntilTheFileSystemIsFullGetSqliteFullAndTheDatabaseStaysIntact) {
  ASSERT_EQ(pmpage_sqlite_register(0), SQLITE_OK);
  small_tmpfs fs;
  if (!fs.ok()) GTEST_SKIP() << fs.why();
  const std::string path = fs.dir() + "/app.db";
  const std::string uri = "file:" + path + "?vfs=pmpage&pool_size=64M";  // a sparse 64 MiB pool in 8 MiB
  std::int64_t rows = 0;
  {
    connection db(uri);
    db.exec("CREATE TABLE t(k INTEGER PRIMARY KEY, v BLOB);");
    std::string last;
    for (int i = 0; i < 100000; ++i) {
      last = db.run("INSERT INTO t(v) VALUES (randomblob(16384));");
      if (!last.empty()) break;
      ++rows;
    }
    EXPECT_EQ(last.rfind("ERROR 13:", 0), 0u) << "not SQLITE_FULL: " << last;  // 13 = SQLITE_FULL
    EXPECT_GT(rows, 10);
    EXPECT_NE(std::string(pmpage_sqlite_errmsg()).find("full"), std::string::npos) << pmpage_sqlite_errmsg();
    // The connection goes on: what was committed is there.
    EXPECT_EQ(db.exec("SELECT count(*) FROM t;"), std::to_string(rows) + "\n");
  }
  {
    connection db(uri);
    EXPECT_EQ(db.exec("PRAGMA integrity_check;"), "ok\n");
    EXPECT_EQ(db.exec("SELECT count(*) FROM t;"), std::to_string(rows) + "\n");
  }
  pmpage::pool p = pmpage::pool::open(path);
  EXPECT_EQ(p.check(), "");
}

}  // namespace
