/* pmpage/sqlite.h — a SQLite VFS that keeps database files in pmpage pool pages.
 *
 * Installed as <prefix>/include/pmpage/sqlite.h. Two ways to use it:
 *   - the loadable extension <prefix>/lib/libpmpage_sqlite.so: `.load libpmpage_sqlite` in the
 *     sqlite3 shell, or sqlite3_load_extension(); entry point sqlite3_pmpagesqlite_init registers
 *     the VFS "pmpage" (not as the default);
 *   - programs that link SQLite themselves link libpmpage_sqlite_vfs (CMake target
 *     pmpage::pmpage_sqlite_vfs, pkg-config pmpage-sqlite) and call pmpage_sqlite_register().
 *
 * A database path names a pool: 'file:/dev/shm/app.pool?vfs=pmpage' creates the pool if it does not
 * exist (pool_size=BYTES in the URI, K/M/G suffixes allowed; default PMPAGE_SQLITE_DEFAULT_POOL_SIZE)
 * and keeps the database, its rollback journal, its WAL and super-journals inside that one pool.
 * docs/sqlite.md has the on-media layout, the crash-consistency argument and the measured figures.
 *
 * Thread-safety: registration is not thread-safe against concurrent opens on the same VFS name;
 * everything else follows SQLite's threading modes (the VFS itself is thread-safe).
 */
#ifndef PMPAGE_SQLITE_H
#define PMPAGE_SQLITE_H

#ifdef __cplusplus
extern "C" {
#endif

/* 256 MiB, sparse: only the pages a database uses are backed by memory. */
#define PMPAGE_SQLITE_DEFAULT_POOL_SIZE (256ull << 20)

/* Registers the VFS "pmpage" with the libpmem backend (make_default != 0 makes it SQLite's default
 * VFS). Returns SQLITE_OK or an SQLite error code. Registering again is a no-op returning SQLITE_OK. */
int pmpage_sqlite_register(int make_default);

/* The last error the VFS met on the calling thread (why an open failed: "pool is open in another
 * process", "not a pmpage pool", "pool is full"...), or "" if none. Also sent to sqlite3_log(). */
const char* pmpage_sqlite_errmsg(void);

#ifdef __cplusplus
} /* extern "C" */

#include <cstdint>
#include <memory>
#include <string>

#include <pmpage/persistence.hpp>

namespace pmpage::sqlite {

struct vfs_options {
  /// The name SQLite knows the VFS by (the `vfs=` URI parameter). Each name is its own instance
  /// with its own open pools. Registering a name again with the same options returns SQLITE_OK;
  /// with other options (another backend) it is SQLITE_MISUSE — unregister_vfs first. A crash
  /// test registers, runs, closes its connections and unregisters inside its op (docs/sqlite.md).
  std::string name = "pmpage";
  bool make_default = false;
  /// Size of a pool the VFS creates when the URI has no pool_size parameter.
  std::uint64_t default_pool_size = PMPAGE_SQLITE_DEFAULT_POOL_SIZE;
  /// The persistence backend of every pool this VFS opens; nullptr = libpmem. The crash-testing
  /// toolkit (pmpage/testing.hpp) passes its simulated device here; benchmarks pass a counter.
  std::shared_ptr<persistence> backend;
};

/// Registers a VFS instance. Returns SQLITE_OK or an SQLite error code.
int register_vfs(const vfs_options& opts);
/// Unregisters and frees a VFS instance registered by register_vfs. Every database opened through
/// it must be closed first (SQLITE_BUSY otherwise; nothing changes). SQLITE_NOTFOUND if unknown.
int unregister_vfs(const std::string& name);

}  // namespace pmpage::sqlite
#endif

#endif /* PMPAGE_SQLITE_H */
