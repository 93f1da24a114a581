// magazine.cpp — per-thread magazines of free order-0 pages for volatile pools: the lookup, the
// allocation and free fast paths, refill and flush, and the ways other threads reach them
// (drain, close, thread exit, fork, check). The design, the state of a page in a magazine and the
// lock order are in magazine.hpp.
#include <algorithm>
#include <mutex>
#include <new>

#include "pool_impl.hpp"

namespace pmpage::detail {

namespace {

/// Guards every pool's list of magazines (pool_impl::mags_), magazine::pool and the thread lists'
/// hand-over at exit. First in the lock order (magazine.hpp). Taken on slow paths only.
std::mutex g_mags;
/// Serials of pools with magazines: 1, 2, ... (0 means "no magazines" and never matches a lookup).
std::atomic<std::uint64_t> g_next_serial{0};

/// This thread's magazine lookup cache, direct-mapped by pool serial. Plain data with constant
/// initialisation (__thread): the fast path reads it with no guard and no constructor call. An
/// entry whose pool closed keeps a serial no open pool has, so it never matches again.
struct magazine_cache {
  static constexpr unsigned WAYS = 8;
  std::uint64_t serial[WAYS];
  magazine* mag[WAYS];
};
__thread magazine_cache t_cache;
__thread bool t_exiting;  // this thread's magazines are gone: no new ones (thread-exit destructors)

}  // namespace

/// This thread's magazines (all pools), and their return at thread exit. Constructed on the
/// thread's first magazine (the slow path), so its destructor is registered only then.
struct thread_magazines {
  magazine* head = nullptr;
  ~thread_magazines() {
    // From here on this thread frees and allocates the ordinary way (a later thread_local
    // destructor may still put a page).
    t_exiting = true;
    t_cache = magazine_cache{};
    std::lock_guard g(g_mags);
    for (magazine* m = head; m;) {
      magazine* next = m->thread_next;
      if (pool_impl* p = m->pool) {
        // The pool is open (close kills its magazines under g_mags first): its pages go back.
        m->lock();
        if (const unsigned n = m->count.load(std::memory_order_relaxed);
            n && g_fork_generation.load(std::memory_order_relaxed) == p->fork_generation_)
          p->mag_flush(*m, n);
        m->unlock();
        (m->pool_prev ? m->pool_prev->pool_next : p->mags_) = m->pool_next;
        if (m->pool_next) m->pool_next->pool_prev = m->pool_prev;
      }
      delete m;
      m = next;
    }
    head = nullptr;
  }
};

namespace {
thread_local thread_magazines t_list;
}  // namespace

void magazines_lock_for_fork() noexcept { g_mags.lock(); }
void magazines_unlock_after_fork() noexcept { g_mags.unlock(); }

void pool_impl::enable_magazines() noexcept {
  mag_serial_ = g_next_serial.fetch_add(1, std::memory_order_relaxed) + 1;
}

magazine* pool_impl::this_thread_magazine() noexcept {
  const std::uint64_t sn = mag_serial_;
  const unsigned w = unsigned(sn % magazine_cache::WAYS);
  if (PMPAGE_LIKELY(t_cache.serial[w] == sn)) return t_cache.mag[w];
  return magazine_slow();
}

magazine* pool_impl::magazine_slow() noexcept {
  if (t_exiting) return nullptr;
  thread_magazines& tl = t_list;  // registers its destructor on first use
  std::lock_guard g(g_mags);
  const std::uint64_t sn = mag_serial_;
  if (sn == 0) return nullptr;  // closing
  magazine* found = nullptr;
  // Free the magazines of pools closed since (their pages went back at close), so that a thread
  // that outlives many pools keeps one magazine per open pool only.
  for (magazine** pp = &tl.head; *pp;) {
    magazine* m = *pp;
    if (!m->pool) {
      *pp = m->thread_next;
      for (unsigned w = 0; w < magazine_cache::WAYS; ++w)
        if (t_cache.mag[w] == m) t_cache.serial[w] = 0, t_cache.mag[w] = nullptr;
      delete m;
      continue;
    }
    if (m->serial == sn) found = m;  // evicted from the cache by another pool's serial
    pp = &m->thread_next;
  }
  if (!found) {
    found = new (std::nothrow) magazine;
    if (!found) return nullptr;
    found->serial = sn;
    found->pool = this;
    found->pool_next = mags_;
    if (mags_) mags_->pool_prev = found;
    mags_ = found;
    found->thread_next = tl.head;
    tl.head = found;
  }
  const unsigned w = unsigned(sn % magazine_cache::WAYS);
  t_cache.serial[w] = sn;
  t_cache.mag[w] = found;
  return found;
}

page* pool_impl::mag_alloc() noexcept {
  magazine* m = this_thread_magazine();
  if (PMPAGE_UNLIKELY(!m)) return nullptr;
  m->lock();
  unsigned n = m->count.load(std::memory_order_relaxed);
  if (PMPAGE_UNLIKELY(n == 0) && (n = mag_refill(*m)) == 0) {
    m->unlock();
    return nullptr;
  }
  page* p = m->pages[--n];
  m->count.store(n, std::memory_order_relaxed);
  // Its descriptor is in the free state already (M1): the count is all that changes. Before the
  // unlock, so a check() holding every magazine lock never sees it in between.
  p->refcount_.store(1, std::memory_order_release);
  m->unlock();
  return p;
}

bool pool_impl::mag_free(page* h) noexcept {
  magazine* m = this_thread_magazine();
  if (PMPAGE_UNLIKELY(!m)) return false;
  // The free state (M1): count 0 already (the last put), order 0, no compound link; the
  // caller's flags (PG_dirty, ...) and private word go.
  h->private_.store(0, std::memory_order_relaxed);
  h->flags_.store(0, std::memory_order_relaxed);
  m->lock();
  unsigned n = m->count.load(std::memory_order_relaxed);
  if (PMPAGE_UNLIKELY(n == magazine::CAPACITY)) {
    mag_flush(*m, magazine::BATCH);
    n -= magazine::BATCH;
  }
  m->pages[n] = h;
  m->count.store(n + 1, std::memory_order_relaxed);
  m->unlock();
  return true;
}

unsigned pool_impl::mag_refill(magazine& m) noexcept {
  // This CPU's cache, the filler or a fresh region, as alloc_pages_bulk takes them (one pass over
  // the free bitmap, one page-map write per line), with the descriptors left in the free state.
  page* got[magazine::BATCH];
  alloc_plan plan;
  merge_batch mb;
  const std::size_t k = bulk_order0_held(magazine::BATCH, got, plan, mb, /*describe=*/false);
  finish_merges(mb);
  if (plan.nr_fresh) {  // a volatile pool's fence is a no-op: the SPLIT words are the bookkeeping
    write_fresh_split_words(plan);
    publish_fresh(plan);
  }
  for (std::size_t i = 0; i < k; ++i) {
    page* p = got[i];
    // Its owner entry may be stale (free_stores leaves it: O1); an allocation from the magazine
    // writes no marker, so nothing reads it.
    m.pages[k - 1 - i] = p;  // the lowest page on top: handed out first
  }
  m.count.store(unsigned(k), std::memory_order_relaxed);
  return unsigned(k);
}

void pool_impl::mag_flush(magazine& m, unsigned n) noexcept {
  // The oldest pages (the bottom of the stack) go back to their regions as ordinary frees do,
  // region by region (free_stores takes each page's region lock; finish_free re-files a region
  // no cache holds). A volatile pool's fence is a no-op, so there is none.
  for (unsigned i = 0; i < n; ++i) finish_free(free_stores(m.pages[i]));
  const unsigned left = m.count.load(std::memory_order_relaxed) - n;
  std::copy(m.pages + n, m.pages + n + left, m.pages);
  m.count.store(left, std::memory_order_relaxed);
}

void pool_impl::drain_magazines() noexcept {
  if (!mag_serial_ || g_fork_generation.load(std::memory_order_relaxed) != fork_generation_) return;
  std::lock_guard g(g_mags);
  for (magazine* m = mags_; m; m = m->pool_next) {
    m->lock();
    if (const unsigned n = m->count.load(std::memory_order_relaxed)) mag_flush(*m, n);
    m->unlock();
  }
}

void pool_impl::close_magazines() noexcept {
  if (!mag_serial_) return;
  // A fork() child never writes the pool: its copies of the parent's magazines are dropped.
  const bool may_write = g_fork_generation.load(std::memory_order_relaxed) == fork_generation_;
  std::lock_guard g(g_mags);
  for (magazine* m = mags_; m;) {
    magazine* next = m->pool_next;
    m->lock();
    if (const unsigned n = m->count.load(std::memory_order_relaxed); n && may_write) mag_flush(*m, n);
    // Dead: its thread frees it at its next lookup or at exit, and never touches this pool.
    m->pool = nullptr;
    m->pool_prev = m->pool_next = nullptr;
    m->unlock();
    m = next;
  }
  mags_ = nullptr;
  mag_serial_ = 0;  // no magazine is made for this pool any more
}

void pool_impl::lock_magazines() noexcept {
  if (!mag_serial_) return;
  g_mags.lock();
  for (magazine* m = mags_; m; m = m->pool_next) m->lock();
}

void pool_impl::unlock_magazines() noexcept {
  if (!mag_serial_) return;
  for (magazine* m = mags_; m; m = m->pool_next) m->unlock();
  g_mags.unlock();
}

std::vector<const page*> pool_impl::magazine_pages() const {
  std::vector<const page*> v;
  for (const magazine* m = mags_; m; m = m->pool_next)
    v.insert(v.end(), m->pages, m->pages + m->count.load(std::memory_order_relaxed));
  std::sort(v.begin(), v.end());
  return v;
}

}  // namespace pmpage::detail
