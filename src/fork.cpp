// fork.cpp — the library across fork(): the list of open pools, the process generation, and the
// pthread_atfork handlers.
//
// A fork() child gets a copy of every lock as the parent's threads held it at that instant, and
// only the forking thread. A lock some other parent thread held is held for ever in the child. So
// every lock the library owns is either taken by the forking thread around fork() (prepare), and
// released in both processes after it, as glibc does for malloc's arenas, or is never held where
// another thread may fork.
//
// Fork lock order (prepare takes them top to bottom; it is also the order in which any code path
// nests them, so prepare cannot deadlock with a running thread):
//   1. g_open_mu                              the open-pools list (this file)
//   1a. g_mags                                every pool's list of per-thread magazines
//                                             (magazine.cpp; volatile pools)
//   2. per open pool, in list order:          pool_impl::lock_for_fork
//        magazine::busy of each of its magazines (volatile pools)
//        cpu_cache::mu of each cache, in index order
//        pool_impl::core_->mu (the pool lock)
//        pool_impl::log_mu_ (the recovery log; a leaf, taken under core_->mu by lazy loads)
//   3. registry_lock                          the section tables, section ids, the quarantine
//                                             (registry.cpp; taken under pool locks only by the
//                                             misuse slow path, report_bad_page)
//   4. the C misuse handler's lock            c_api.cpp; a leaf: held only to copy two words,
//                                             taken by any misuse report, under any lock above
// Parent: released bottom to top. Child: the same, then every split region's own lock is made
// anew (pool_impl::unlock_after_fork; a parent thread may have held one: they are not taken in
// prepare, there are too many, and only the pool and cache locks guard who may take them).
//
// Locks the library owns and does not take around fork, and why that is safe:
//   split_state::own_lock (region locks)   re-made in the child (above).
//   the pool object being closed           ~pool_impl removes it from the list first (under
//                                          g_open_mu): a child only sees the pools still in it.
//   intent lanes (intent_log, spin-wait)   a child never writes the media, so never takes one.
//   page locks (PG_locked, lock_page)      the application's locks on its pages: like a mutex
//                                          of its own, a page lock a parent thread held stays
//                                          held in the child.
//   atomics only: the open-pool counter (open_slot), the misuse handler pointer, the fork
//   generation, the per-thread flush queue (thread_local), the C error message (thread_local).
//   The handlers are registered when the library is loaded (a namespace-scope initialiser), not
//   lazily: a function-local static's guard is a lock too, and a fork while another thread ran
//   the first open would have left it taken in the child.
// Not the library's: libpmem2 keeps a lock of its own around its tree of registered mappings
// (pmem2_map_new / pmem2_map_delete, called when a persistent pool on a regular file is mapped,
// to learn its granularity) and registers no fork handler; a child that opens a persistent pool
// while a parent thread was inside that call can wait on it.
#include <pthread.h>
#include <unistd.h>

#include <algorithm>
#include <mutex>
#include <vector>

#include "misuse.hpp"
#include "pool_impl.hpp"
#include "registry.hpp"

namespace pmpage::detail {

std::atomic<std::uint64_t> g_fork_generation{0};

namespace {

std::mutex g_open_mu;
std::vector<pool_impl*> g_open;  // pools open in this process

void fork_prepare() {
  g_open_mu.lock();
  magazines_lock_for_fork();
  for (pool_impl* p : g_open) p->lock_for_fork();
  registry_lock_for_fork();
  c_misuse_handler_lock().lock();
}
void fork_parent() {
  c_misuse_handler_lock().unlock();
  registry_unlock_after_fork();
  for (pool_impl* p : g_open) p->unlock_after_fork(false);
  magazines_unlock_after_fork();
  g_open_mu.unlock();
}
void fork_child() {
  g_fork_generation.fetch_add(1, std::memory_order_relaxed);
  c_misuse_handler_lock().unlock();
  registry_unlock_after_fork();
  for (pool_impl* p : g_open) p->unlock_after_fork(true);
  magazines_unlock_after_fork();
  g_open_mu.unlock();
}

[[maybe_unused]] const int g_fork_handlers = ::pthread_atfork(&fork_prepare, &fork_parent, &fork_child);

}  // namespace

void stamp_opener(std::uint64_t& generation, int& pid) {
  generation = g_fork_generation.load(std::memory_order_relaxed);
  pid = int(::getpid());
}

void add_open_pool(pool_impl* p) {
  std::lock_guard g(g_open_mu);
  g_open.push_back(p);
}

void remove_open_pool(pool_impl* p) {
  std::lock_guard g(g_open_mu);
  g_open.erase(std::find(g_open.begin(), g_open.end(), p));
}

void pool_impl::lock_for_fork() {
  // g_mags is held (fork_prepare): this pool's magazines, then its caches and pool lock.
  if (mag_serial_)
    for (magazine* m = mags_; m; m = m->pool_next) m->lock();
  lock_all();
  log_mu_.lock();
}

void pool_impl::unlock_after_fork(bool child) {
  log_mu_.unlock();
  unlock_all();
  if (mag_serial_)
    for (magazine* m = mags_; m; m = m->pool_next) m->unlock();
  if (!child) return;
  // A parent thread may have been inside a region lock at the fork: make them anew.
  for (std::uint64_t r = 0; r < nr_regions_; ++r)
    if (load_kind(regions_[r]) == RK_SPLIT && regions_[r].alloc_state_) {
      split_state& s = sstate(std::uint32_t(r));
      s.own_lock.~adaptive_mutex();
      new (&s.own_lock) adaptive_mutex();
    }
}

}  // namespace pmpage::detail
