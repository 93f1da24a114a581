// c_api.cpp — the out-of-line functions of the C API (<pmpage/pmpage.h>) over the C++ API.
//
// Every function is a boundary: no exception leaves it. Set-up errors (pmpage::error and any
// other exception) become NULL or a negative errno, errno, and the calling thread's message
// (pmpage_errormsg). Every call that fails sets errno and its own message (c_call): a misused
// call's is the misuse report, any other names the C function. The layout the header's inline
// functions read is pinned here against the C++ types.
#include "pmpage/pmpage.h"

#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdio>
#include <cstring>
#include <exception>
#include <mutex>
#include <new>
#include <string>
#include <system_error>
#include <type_traits>

#include "misuse.hpp"
#include "registry.hpp"
#include "pmpage/pmpage.hpp"

// ---- the shared layout --------------------------------------------------------------------------
namespace {
using pmpage::page;
using pmpage::detail::section;
using cdesc = pmpage_internal_desc;
using csec = pmpage_internal_section;

static_assert(sizeof(cdesc) == sizeof(page) && alignof(cdesc) <= alignof(page));
static_assert(offsetof(cdesc, flags_) == offsetof(page, flags_));
static_assert(offsetof(cdesc, refcount_) == offsetof(page, refcount_));
static_assert(offsetof(cdesc, order_) == offsetof(page, order_));
static_assert(offsetof(cdesc, kind_) == offsetof(page, kind_));
static_assert(offsetof(cdesc, alloc_aux_) == offsetof(page, alloc_aux_));
static_assert(offsetof(cdesc, head_index_) == offsetof(page, head_index_));
static_assert(offsetof(cdesc, compound_head_) == offsetof(page, compound_head_));
static_assert(offsetof(cdesc, private_) == offsetof(page, private_));
static_assert(offsetof(cdesc, alloc_state_) == offsetof(page, alloc_state_));
static_assert(offsetof(cdesc, list_next_) == offsetof(page, list_next_));
static_assert(offsetof(cdesc, reserved_) == offsetof(page, reserved_));
// The C side reads the atomics as plain words with __atomic builtins: same size, lock-free.
static_assert(sizeof(std::atomic<std::uint32_t>) == 4 && std::atomic<std::uint32_t>::is_always_lock_free);
static_assert(sizeof(std::atomic<std::int32_t>) == 4 && std::atomic<std::int32_t>::is_always_lock_free);
static_assert(sizeof(std::atomic<std::uintptr_t>) == 8 && std::atomic<std::uintptr_t>::is_always_lock_free);

static_assert(sizeof(csec) == sizeof(section));
static_assert(offsetof(csec, vmemmap) == offsetof(section, vmemmap));
static_assert(offsetof(csec, regions) == offsetof(section, regions));
static_assert(offsetof(csec, data) == offsetof(section, data));
static_assert(offsetof(csec, nr_pages) == offsetof(section, nr_pages));
static_assert(offsetof(csec, start_pfn) == offsetof(section, start_pfn));
static_assert(offsetof(csec, owner) == offsetof(section, owner));
static_assert(offsetof(csec, base_index) == offsetof(section, base_index));
static_assert(sizeof(pmpage_internal_sections) == sizeof(pmpage::detail::g_sections));
static_assert(sizeof(pmpage_internal_desc_sections) == sizeof(pmpage::detail::g_desc_sections));
static_assert(sizeof(pmpage_internal_data_sections) == sizeof(pmpage::detail::g_data_sections));

static_assert(unsigned(PMPAGE_INTERNAL_PG_LOCKED) == unsigned(pmpage::PG_locked) && unsigned(PMPAGE_INTERNAL_PG_WAITERS) == unsigned(pmpage::PG_waiters));
static_assert(unsigned(PMPAGE_INTERNAL_PG_DIRTY) == unsigned(pmpage::PG_dirty) && unsigned(PMPAGE_INTERNAL_PG_UPTODATE) == unsigned(pmpage::PG_uptodate));
static_assert(unsigned(PMPAGE_INTERNAL_PG_HEAD) == unsigned(pmpage::PG_head) && unsigned(PMPAGE_INTERNAL_PG_SPLIT) == unsigned(pmpage::PG_split));
static_assert(unsigned(PMPAGE_INTERNAL_PG_REGION_TAIL) == unsigned(pmpage::PG_region_tail));
static_assert(unsigned(PMPAGE_INTERNAL_PG_REGION_LAZY) == unsigned(pmpage::PG_region_lazy));
static_assert(unsigned(PMPAGE_INTERNAL_PG_SLOT_OWNED) == unsigned(pmpage::PG_slot_owned));
static_assert(unsigned(PMPAGE_INTERNAL_PG_HWPOISON) == unsigned(pmpage::PG_hwpoison));
static_assert(unsigned(PMPAGE_INTERNAL_PG_REGION_SPECIAL) == unsigned(pmpage::PG_region_special));
static_assert(PMPAGE_INTERNAL_SECTION_SHIFT == pmpage::detail::SECTION_SHIFT);
static_assert(PMPAGE_INTERNAL_SECTION_BITS == pmpage::detail::SECTION_BITS);
static_assert(PMPAGE_INTERNAL_DESC_GRANULE_SHIFT == pmpage::detail::DESC_GRANULE_SHIFT);
static_assert(PMPAGE_INTERNAL_DESC_GRANULES == pmpage::detail::DESC_GRANULES);
static_assert(PMPAGE_INTERNAL_DESC_GRANULE_NUMBER_MASK == pmpage::detail::DESC_GRANULE_NUMBER_MASK);
static_assert(PMPAGE_INTERNAL_DATA_GRANULE_SHIFT == pmpage::detail::DATA_GRANULE_SHIFT);
static_assert(PMPAGE_INTERNAL_DATA_GRANULES == pmpage::detail::DATA_GRANULES);

static_assert(PMPAGE_PAGE_SHIFT == pmpage::PAGE_SHIFT && PMPAGE_PAGE_SIZE == pmpage::PAGE_SIZE);
static_assert(PMPAGE_HPAGE_PMD_ORDER == pmpage::HPAGE_PMD_ORDER && PMPAGE_HPAGE_PMD_NR == pmpage::HPAGE_PMD_NR);
static_assert(PMPAGE_HPAGE_PMD_SIZE == pmpage::HPAGE_PMD_SIZE && PMPAGE_MAX_PAGE_ORDER == pmpage::MAX_PAGE_ORDER);
static_assert(PMPAGE_GFP_DEFAULT == pmpage::GFP_DEFAULT && PMPAGE_GFP_ZERO == pmpage::GFP_ZERO);
static_assert(PMPAGE_PAGE_REF_MAX == pmpage::PAGE_REF_MAX && PMPAGE_MAX_OPEN_POOLS == pmpage::MAX_OPEN_POOLS);
static_assert(PMPAGE_MIN_POOL_SIZE == pmpage::MIN_POOL_SIZE && PMPAGE_MAX_POOL_PAGES == pmpage::MAX_POOL_PAGES);
static_assert(PMPAGE_MAX_ROOT_SIZE == pmpage::MAX_ROOT_SIZE);
static_assert(PMPAGE_GRANULARITY_BYTE == int(pmpage::granularity::byte) &&
              PMPAGE_GRANULARITY_CACHE_LINE == int(pmpage::granularity::cache_line) &&
              PMPAGE_GRANULARITY_PAGE == int(pmpage::granularity::page));
static_assert(PMPAGE_ERR_CREATE_INTERRUPTED == pmpage::ERR_CREATE_INTERRUPTED);
static_assert(std::is_same_v<pmpage_pfn_t, pmpage::pfn_t> && std::is_same_v<pmpage_gfp_t, pmpage::gfp_t>);

page* cpp(struct pmpage_page* p) noexcept { return reinterpret_cast<page*>(p); }
const page* cpp(const struct pmpage_page* p) noexcept { return reinterpret_cast<const page*>(p); }
page* cpp(cdesc* p) noexcept { return reinterpret_cast<page*>(p); }
struct pmpage_page* c(page* p) noexcept { return reinterpret_cast<struct pmpage_page*>(p); }

// ---- errors ---------------------------------------------------------------------------------------
// A string, not a fixed buffer: check_slots puts every problem of a pool in it.
thread_local std::string t_errormsg;

void set_error_message(const char* msg) noexcept {
  try {
    t_errormsg.assign(msg);
  } catch (...) {  // out of memory: keep what fits in what is there
    t_errormsg.clear();
  }
}

// Records err (a positive errno value) and msg; returns -err.
int fail(int err, const char* msg) noexcept {
  set_error_message(msg);
  errno = err;
  return -err;
}

// "pmpage_fn: what" of an exception's message, which starts "pmpage: " (pmpage::error) or not.
std::string named(const char* fn, const char* what) {
  if (std::strncmp(what, "pmpage: ", 8) == 0) what += 8;
  return std::string(fn) + ": " + what;
}

// The current exception as -errno, with its message recorded. Called only from a catch block.
int fail_current(const char* fn) noexcept {
  try {
    throw;
  } catch (const std::system_error& e) {  // pmpage::error among them
    const int v = e.code().value();
    try {
      return fail(v > 0 ? v : EIO, named(fn, e.what()).c_str());
    } catch (...) {
      return fail(v > 0 ? v : EIO, e.what());
    }
  } catch (const std::bad_alloc&) {
    return fail(ENOMEM, "pmpage: out of memory");
  } catch (const std::exception& e) {
    try {
      return fail(EIO, named(fn, e.what()).c_str());
    } catch (...) {
      return fail(EIO, e.what());
    }
  } catch (...) {
    try {
      return fail(EIO, (std::string(fn) + ": unknown error").c_str());
    } catch (...) {
      return fail(EIO, "pmpage: unknown error");
    }
  }
}

// One C call that can fail. It notes the thread's misuse reports when it starts: a failure with
// a report since then is a misused call, whose message is that report (set whichever misuse
// handler is installed); any other failure writes the call's own message. Either way a failing
// call never leaves the message of an earlier failure in pmpage_errormsg().
class c_call {
 public:
  explicit c_call(const char* fn) noexcept
      : fn_(fn), reports_(pmpage::detail::misuse_reports()), backing_(pmpage::detail::backing_failures()) {}
  const char* fn() const noexcept { return fn_; }
  bool misused() const noexcept { return pmpage::detail::misuse_reports() != reports_; }

  // Fails with err: the message is the misuse report if there was one, else "fn: why".
  int fail(int err, const char* why) const noexcept {
    if (misused()) return ::fail(err, pmpage::detail::last_misuse());
    char m[512];
    std::snprintf(m, sizeof m, "%s: %s", fn_, why);
    return ::fail(err, m);
  }
  // A caller's mistake the C layer finds itself (a NULL argument): reported as misuse, -EINVAL.
  int misuse(const char* what) const noexcept {
    pmpage::detail::report_misuse("%s: %s", fn_, what);
    return fail(EINVAL, what);
  }
  // A negative result of the C++ API, in C's convention: errno set, and the message saying why.
  int result(int r) const noexcept {
    if (r >= 0) return r;
    if (pmpage::detail::backing_failures() != backing_ && r == -pmpage::detail::last_backing_errno()) {
      // The library wrote the message (a write-back error: pool, call and errno named).
      errno = -r;
      return r;
    }
    if (r == -EINVAL && misused()) return fail(EINVAL, "");
    if (r == -EBUSY)
      return fail(EBUSY, "the page has other references, is locked, or is being published, moved or split by "
                         "another call: nothing changed");
    if (r == -EROFS) return fail(EROFS, "the pool is open read-only: nothing changed");
    if (r == -EINVAL) return fail(EINVAL, "invalid argument (reported as misuse): nothing changed");
    return fail(-r, std::strerror(-r));
  }
  // An allocation that got `got` of `wanted` extents of `order`: misused, or out of room (ENOMEM).
  void short_of_room(unsigned order, std::size_t got, std::size_t wanted) const noexcept {
    if (got >= wanted) return;
    if (misused()) {
      fail(EINVAL, "");
      return;
    }
    if (pmpage::detail::backing_failures() != backing_) {
      // The file system could not back it (ENOSPC, EDQUOT, EIO, ...): the library wrote the
      // message naming the region; errno is that error, whatever ran since.
      errno = pmpage::detail::last_backing_errno();
      return;
    }
    char why[160];
    if (wanted == 1)
      std::snprintf(why, sizeof why, "no free extent of order %u in the pool", order);
    else
      std::snprintf(why, sizeof why, "%zu of %zu extents of order %u allocated: no free extent of that order left "
                    "in the pool", got, wanted, order);
    fail(ENOMEM, why);
  }

 private:
  const char* fn_;
  std::uint64_t reports_;
  std::uint64_t backing_;  // backing_failures() when the call started
};

// The slow paths of the header's inline functions report misuse and return: the report is the
// thread's message too, whichever misuse handler is installed.
void note_misuse() noexcept {
  fail(EINVAL, pmpage::detail::last_misuse());
}

// ---- the C misuse handler ----------------------------------------------------------------------------
std::mutex g_c_handler_lock;  // taken around fork() (fork.cpp): c_misuse_handler_lock
pmpage_misuse_handler g_c_handler = nullptr;
void* g_c_handler_ctx = nullptr;

void c_trampoline(const char* message) {
  pmpage_misuse_handler h;
  void* ctx;
  {
    std::lock_guard g(g_c_handler_lock);
    h = g_c_handler;
    ctx = g_c_handler_ctx;
  }
  set_error_message(message);
  errno = EINVAL;
  if (h) h(message, ctx);
}

// A NULL pool is the C form of a closed pool: misuse.
bool null_pool(const pmpage_pool* pool, const c_call& call) noexcept {
  if (pool) return false;
  call.misuse("pool is NULL");
  return true;
}

}  // namespace

namespace pmpage::detail {
std::mutex& c_misuse_handler_lock() noexcept { return g_c_handler_lock; }
}  // namespace pmpage::detail

void pmpage::detail::set_c_error_message(const char* msg) noexcept { set_error_message(msg); }

namespace {
thread_local std::uint64_t t_backing_failures = 0;
thread_local int t_backing_errno = 0;
}  // namespace

void pmpage::detail::note_backing_failure(int err, const char* msg) noexcept {
  set_error_message(msg);
  ++t_backing_failures;
  t_backing_errno = err;
  errno = err;
}
std::uint64_t pmpage::detail::backing_failures() noexcept { return t_backing_failures; }
int pmpage::detail::last_backing_errno() noexcept { return t_backing_errno; }

struct pmpage_pool {
  pmpage_pool(pmpage::pool p, std::string where)
      : pool(std::move(p)), path(std::move(where)), memory(pool.memory_description()) {}
  pmpage::pool pool;
  std::string path;
  std::string memory;  // pmpage_pool_memory_description's storage, filled once (no lazy write: thread-safe)
};

extern "C" {

// ---- slow paths of the inline functions ---------------------------------------------------------------
// Each reports misuse and returns: the report becomes the thread's message whichever handler is installed.
struct pmpage_page* pmpage_internal_report_bad_pfn(pmpage_pfn_t pfn) {
  // The miss path of pmpage_pfn_to_page: a pool in the overflow table is no misuse.
  if (pmpage::page* p = pmpage::detail::pfn_to_page_slow(pfn)) return c(p);
  pmpage::detail::report_bad_pfn(pfn);
  note_misuse();
  return nullptr;
}
bool pmpage_internal_pfn_valid_slow(pmpage_pfn_t pfn) { return pmpage::detail::pfn_valid_slow(pfn); }
pmpage_pfn_t pmpage_internal_report_bad_page(const struct pmpage_page* p) {
  pmpage::detail::report_bad_page(cpp(p));
  note_misuse();
  return 0;
}
void pmpage_internal_report_refcount_misuse(struct pmpage_page* p, cdesc* holder, int old, int is_get) {
  pmpage::detail::report_refcount_misuse(cpp(p), cpp(holder), old, is_get != 0);
  note_misuse();
}
void pmpage_internal_release_compound(struct pmpage_page* p, cdesc* holder) {
  const c_call call("pmpage_put_page");
  pmpage::detail::release_compound(cpp(p), cpp(holder));
  if (call.misused()) note_misuse();  // the last put of a slot-owned page
}
void pmpage_internal_report_owned_put(struct pmpage_page* p, cdesc* holder) {
  const c_call call("pmpage_put_page");
  pmpage::detail::report_owned_put(cpp(p), cpp(holder));
  if (call.misused()) note_misuse();  // (an orphaned page is freed instead, without a report)
}
void pmpage_internal_materialise_lazy_region(const csec* s, uint64_t region) {
  pmpage::detail::materialise_lazy_region(*reinterpret_cast<const section*>(s), region);
}
void pmpage_internal_lock_page_slow(struct pmpage_page* p) { pmpage::detail::lock_page_slow(cpp(p)); }
void pmpage_internal_wake_page_waiters(cdesc* holder) { pmpage::detail::wake_page_waiters(cpp(holder)); }
void pmpage_internal_report_unlock_misuse(struct pmpage_page* p) {
  pmpage::detail::report_unlock_misuse(cpp(p));
  note_misuse();
}

// ---- errors and misuse ----------------------------------------------------------------------------------
const char* pmpage_errormsg(void) { return t_errormsg.c_str(); }

void pmpage_set_misuse_handler(pmpage_misuse_handler handler, void* ctx) {
  {
    std::lock_guard g(g_c_handler_lock);
    g_c_handler = handler;
    g_c_handler_ctx = handler ? ctx : nullptr;
  }
  pmpage::set_misuse_handler(handler ? &c_trampoline : nullptr);
}

// ---- pools ----------------------------------------------------------------------------------------------
void pmpage_pool_options_init(struct pmpage_pool_options* opts) {
  if (!opts) return;
  std::memset(opts, 0, sizeof *opts);
  const pmpage::pool::options d;
  opts->size = d.size;
  opts->root_size = d.root_size;
  opts->overwrite = d.overwrite;
  opts->preallocate = d.preallocate;
  opts->mode = d.mode;
  opts->max_size = d.max_size;
}

pmpage_pool* pmpage_pool_create(const char* path, const struct pmpage_pool_options* opts) {
  const c_call call("pmpage_pool_create");
  if (!path) {
    call.fail(EINVAL, "path is NULL");
    return nullptr;
  }
  try {
    pmpage::pool::options o;
    if (opts) {
      for (unsigned r : opts->reserved_)
        if (r != 0 || opts->reserved0_ != 0) {
          const std::string m = std::string(path) +
                                ": pmpage_pool_options has non-zero reserved fields (fill it with pmpage_pool_options_init)";
          call.fail(EINVAL, m.c_str());
          return nullptr;
        }
      o.size = opts->size;
      o.root_size = opts->root_size;
      o.overwrite = opts->overwrite != 0;
      o.preallocate = opts->preallocate != 0;
      o.mode = opts->mode;
      o.max_size = opts->max_size;
    }
    return new pmpage_pool{pmpage::pool::create(path, o), path};
  } catch (...) {
    fail_current(call.fn());
    return nullptr;
  }
}

pmpage_pool* pmpage_pool_open(const char* path) {
  const c_call call("pmpage_pool_open");
  if (!path) {
    call.fail(EINVAL, "path is NULL");
    return nullptr;
  }
  try {
    return new pmpage_pool{pmpage::pool::open(path), path};
  } catch (...) {
    fail_current(call.fn());
    return nullptr;
  }
}

pmpage_pool* pmpage_pool_open_read_only(const char* path) {
  const c_call call("pmpage_pool_open_read_only");
  if (!path) {
    call.fail(EINVAL, "path is NULL");
    return nullptr;
  }
  try {
    pmpage::pool::open_options o;
    o.read_only = true;
    return new pmpage_pool{pmpage::pool::open(path, o), path};
  } catch (...) {
    fail_current(call.fn());
    return nullptr;
  }
}

pmpage_pool* pmpage_pool_open_bad_blocks(const char* path, const struct pmpage_bad_block* bad, size_t n,
                                         unsigned flags) {
  const c_call call("pmpage_pool_open_bad_blocks");
  if (!path || (n && !bad) || (flags & ~unsigned(PMPAGE_OPEN_READ_ONLY | PMPAGE_OPEN_NO_DEVICE_BAD_BLOCKS))) {
    call.fail(EINVAL, !path ? "path is NULL" : (n && !bad) ? "bad is NULL with n > 0" : "unknown flags");
    return nullptr;
  }
  try {
    pmpage::pool::open_options o;
    o.read_only = flags & PMPAGE_OPEN_READ_ONLY;
    o.device_bad_blocks = !(flags & PMPAGE_OPEN_NO_DEVICE_BAD_BLOCKS);
    for (size_t i = 0; i < n; ++i) o.bad_blocks.push_back({bad[i].offset, bad[i].length});
    return new pmpage_pool{pmpage::pool::open(path, o), path};
  } catch (...) {
    fail_current(call.fn());
    return nullptr;
  }
}

size_t pmpage_pool_hwpoison_pages(const pmpage_pool* pool, struct pmpage_hwpoison_page* out, size_t n) {
  const c_call call("pmpage_pool_hwpoison_pages");
  if (null_pool(pool, call)) return 0;
  if (n && !out) {
    call.misuse("out is NULL with n > 0");
    return 0;
  }
  try {
    const auto v = pool->pool.hwpoison_pages();
    for (size_t i = 0; i < n && i < v.size(); ++i) out[i] = {v[i].pfn, v[i].head, v[i].order, 0};
    return v.size();
  } catch (...) {  // std::bad_alloc
    fail_current(call.fn());
    return 0;
  }
}

int pmpage_clear_bad_block(const char* path, uint64_t offset, uint64_t length) {
  const c_call call("pmpage_clear_bad_block");
  if (!path) {
    call.fail(EINVAL, "path is NULL");
    return -EINVAL;
  }
  try {
    pmpage::pool::clear_bad_block(path, {offset, length});
    return 0;
  } catch (...) {
    return fail_current(call.fn());
  }
}

int pmpage_pool_grow_closed(const char* path, uint64_t new_size) {
  const c_call call("pmpage_pool_grow_closed");
  if (!path) {
    call.fail(EINVAL, "path is NULL");
    return -EINVAL;
  }
  try {
    pmpage::pool::grow(path, new_size);
    return 0;
  } catch (...) {
    return fail_current(call.fn());
  }
}

int pmpage_pool_grow(pmpage_pool* pool, uint64_t new_size) {
  const c_call call("pmpage_pool_grow");
  if (null_pool(pool, call)) return -EINVAL;
  const int r = pool->pool.grow(new_size);
  if (r < 0 && call.misused()) return call.result(r);  // read-only, fork() child: the misuse message
  if (r < 0) errno = -r;  // the library wrote the message (path and reason)
  return r;
}

void pmpage_volatile_options_init(struct pmpage_volatile_options* opts) {
  if (!opts) return;
  std::memset(opts, 0, sizeof *opts);
  const pmpage::pool::volatile_options d;
  opts->size = d.size;
  opts->root_size = d.root_size;
  opts->backing = nullptr;
  opts->huge = PMPAGE_HUGE_NONE;
  opts->require_huge_pages = d.require_huge_pages;
  opts->numa_node = d.numa_node;
  opts->overwrite = d.overwrite;
  opts->populate = d.populate;
}

pmpage_pool* pmpage_pool_create_volatile(const struct pmpage_volatile_options* opts) {
  const c_call call("pmpage_pool_create_volatile");
  if (!opts) {
    call.fail(EINVAL, "opts is NULL (fill one with pmpage_volatile_options_init)");
    return nullptr;
  }
  for (unsigned r : opts->reserved_)
    if (r != 0) {
      call.fail(EINVAL, "pmpage_volatile_options has non-zero reserved fields (fill it with pmpage_volatile_options_init)");
      return nullptr;
    }
  using huge = pmpage::pool::volatile_options::huge_pages;
  if (opts->huge != PMPAGE_HUGE_NONE && opts->huge != PMPAGE_HUGE_THP && opts->huge != PMPAGE_HUGE_HUGETLB) {
    char m[128];
    std::snprintf(m, sizeof m, "huge is %d, not PMPAGE_HUGE_NONE, PMPAGE_HUGE_THP or PMPAGE_HUGE_HUGETLB", opts->huge);
    call.fail(EINVAL, m);
    return nullptr;
  }
  try {
    pmpage::pool::volatile_options o;
    o.size = opts->size;
    o.root_size = opts->root_size;
    if (opts->backing) o.backing = opts->backing;
    o.huge = opts->huge == PMPAGE_HUGE_THP ? huge::thp : opts->huge == PMPAGE_HUGE_HUGETLB ? huge::hugetlb : huge::none;
    o.require_huge_pages = opts->require_huge_pages != 0;
    o.numa_node = opts->numa_node;
    o.overwrite = opts->overwrite != 0;
    o.populate = opts->populate != 0;
    return new pmpage_pool{pmpage::pool::create_volatile(o), opts->backing ? opts->backing : ""};
  } catch (...) {
    fail_current(call.fn());
    return nullptr;
  }
}

int pmpage_pool_is_volatile(const pmpage_pool* pool) {
  return null_pool(pool, c_call("pmpage_pool_is_volatile")) ? -EINVAL : pool->pool.is_volatile() ? 1 : 0;
}
int pmpage_pool_numa_node(const pmpage_pool* pool) {
  return null_pool(pool, c_call("pmpage_pool_numa_node")) ? -1 : pool->pool.numa_node();
}
const char* pmpage_pool_memory_description(const pmpage_pool* pool) {
  if (null_pool(pool, c_call("pmpage_pool_memory_description"))) return nullptr;
  return pool->memory.c_str();
}
int pmpage_page_to_nid(const struct pmpage_page* page) {
  const c_call call("pmpage_page_to_nid");
  const int nid = pmpage::page_to_nid(cpp(page));
  if (call.misused()) note_misuse();  // -1 for a page of no node is an answer, not a failure
  return nid;
}

int pmpage_pool_is_read_only(const pmpage_pool* pool) {
  return null_pool(pool, c_call("pmpage_pool_is_read_only")) ? -EINVAL : pool->pool.is_read_only() ? 1 : 0;
}

int pmpage_pool_close(pmpage_pool* pool) {
  if (!pool) return 0;
  const c_call call("pmpage_pool_close");
  const int r = pool->pool.close();
  delete pool;
  return call.result(r);
}

pmpage_pfn_t pmpage_pool_start_pfn(const pmpage_pool* pool) {
  return null_pool(pool, c_call("pmpage_pool_start_pfn")) ? 0 : pool->pool.start_pfn();
}
pmpage_pfn_t pmpage_pool_end_pfn(const pmpage_pool* pool) {
  return null_pool(pool, c_call("pmpage_pool_end_pfn")) ? 0 : pool->pool.end_pfn();
}
void* pmpage_pool_root(const pmpage_pool* pool, size_t* size) {
  if (null_pool(pool, c_call("pmpage_pool_root"))) {
    if (size) *size = 0;
    return nullptr;
  }
  if (size) *size = pool->pool.root_size();
  return pool->pool.root();
}
const char* pmpage_pool_path(const pmpage_pool* pool) {
  return null_pool(pool, c_call("pmpage_pool_path")) ? nullptr : pool->path.c_str();
}
int pmpage_pool_is_pmem(const pmpage_pool* pool) {
  return null_pool(pool, c_call("pmpage_pool_is_pmem")) ? -EINVAL : pool->pool.is_pmem() ? 1 : 0;
}
int pmpage_pool_granularity(const pmpage_pool* pool) {
  return null_pool(pool, c_call("pmpage_pool_granularity")) ? -EINVAL : int(pool->pool.store_granularity());
}
void* pmpage_pool_base(const pmpage_pool* pool, size_t* length) {
  if (null_pool(pool, c_call("pmpage_pool_base"))) {
    if (length) *length = 0;
    return nullptr;
  }
  if (length) *length = pool->pool.mapped_length();
  return pool->pool.base();
}

// persist/flush/drain return nothing; a misused one (a range outside the pool, a read-only
// pool) leaves its report as the message.
int pmpage_pool_persist(const pmpage_pool* pool, const void* addr, size_t len) {
  const c_call call("pmpage_pool_persist");
  if (null_pool(pool, call)) return -EINVAL;
  return call.result(pool->pool.persist(addr, len));
}
void pmpage_pool_flush(const pmpage_pool* pool, const void* addr, size_t len) {
  const c_call call("pmpage_pool_flush");
  if (!null_pool(pool, call)) pool->pool.flush(addr, len);
  if (call.misused()) note_misuse();
}
int pmpage_pool_drain(const pmpage_pool* pool) {
  const c_call call("pmpage_pool_drain");
  if (null_pool(pool, call)) return -EINVAL;
  return call.result(pool->pool.drain());
}
int pmpage_pool_writeback_error(const pmpage_pool* pool) {
  const c_call call("pmpage_pool_writeback_error");
  return null_pool(pool, call) ? -EINVAL : pool->pool.writeback_error();
}

int pmpage_pool_stats(const pmpage_pool* pool, struct pmpage_pool_stats* out) {
  const c_call call("pmpage_pool_stats");
  if (null_pool(pool, call)) return -EINVAL;
  if (!out) return call.misuse("out is NULL");
  const pmpage::pool_stats s = pool->pool.stats();
  std::memset(out, 0, sizeof *out);
  out->total_pages = s.total_pages;
  out->free_pages = s.free_pages;
  out->total_regions = s.total_regions;
  out->free_regions = s.free_regions;
  out->split_regions = s.split_regions;
  out->materialised_regions = s.materialised_regions;
  out->descriptor_bytes = s.descriptor_bytes;
  out->allocator_bytes = s.allocator_bytes;
  out->repaired_at_open = s.repaired_at_open;
  out->orphaned_owners = s.orphaned_owners;
  out->cpu_cached_regions = s.cpu_cached_regions;
  out->cpu_cached_free_pages = s.cpu_cached_free_pages;
  out->empty_split_regions = s.empty_split_regions;
  out->quarantined_pages = s.quarantined_pages;
  out->hwpoison_pages = s.hwpoison_pages;
  out->writeback_errno = std::uint64_t(s.writeback_errno);
  return 0;
}

size_t pmpage_pool_trim(pmpage_pool* pool) {
  const c_call call("pmpage_pool_trim");
  if (null_pool(pool, call)) return 0;
  const std::size_t merged = pool->pool.trim();
  if (call.misused()) note_misuse();  // a read-only pool, a fork() child: 0, nothing merged
  return merged;
}

int pmpage_pool_check(const pmpage_pool* pool) {
  const c_call call("pmpage_pool_check");
  if (null_pool(pool, call)) return -EINVAL;
  try {
    const std::string r = pool->pool.check();
    return r.empty() ? 0 : fail(EUCLEAN, r.c_str());  // the violation, as check() words it
  } catch (...) {
    return fail_current(call.fn());
  }
}

int pmpage_pool_check_slots(const pmpage_pool* pool, pmpage_pfn_t* const* slots, size_t n) {
  const c_call call("pmpage_pool_check_slots");
  if (null_pool(pool, call)) return -EINVAL;
  if (!slots && n) return call.misuse("slots is NULL");
  try {
    const auto r = pool->pool.check_slots(std::span<pmpage::pfn_t* const>(slots, n));
    return r.clean() ? 0 : fail(EUCLEAN, r.describe().c_str());  // one problem per line
  } catch (...) {
    return fail_current(call.fn());
  }
}

int pmpage_pool_for_each_allocated(const pmpage_pool* pool, pmpage_walk_fn fn, void* ctx) {
  const c_call call("pmpage_pool_for_each_allocated");
  if (null_pool(pool, call)) return -EINVAL;
  if (!fn) return call.misuse("fn is NULL");
  try {
    pool->pool.for_each_allocated([fn, ctx](page* p, unsigned order) { fn(c(p), order, ctx); });
    return 0;
  } catch (...) {
    return fail_current(call.fn());
  }
}

// ---- allocation and slot ownership -------------------------------------------------------------------------
// A NULL or short result is misuse (the report is the message) or no room (ENOMEM, its own message).
struct pmpage_page* pmpage_alloc_pages_gfp(pmpage_pool* pool, unsigned order, pmpage_gfp_t gfp) {
  const c_call call("pmpage_alloc_pages");
  if (null_pool(pool, call)) return nullptr;
  page* p = pool->pool.alloc_pages(order, gfp);
  if (PMPAGE_UNLIKELY(!p)) call.short_of_room(order, 0, 1);
  return c(p);
}
struct pmpage_page* pmpage_alloc_pages(pmpage_pool* pool, unsigned order) {
  return pmpage_alloc_pages_gfp(pool, order, PMPAGE_GFP_DEFAULT);
}
size_t pmpage_alloc_pages_bulk_gfp(pmpage_pool* pool, unsigned order, size_t n, struct pmpage_page** out,
                                   pmpage_gfp_t gfp) {
  const c_call call("pmpage_alloc_pages_bulk");
  if (null_pool(pool, call)) return 0;
  const std::size_t got = pool->pool.alloc_pages_bulk(order, n, reinterpret_cast<page**>(out), gfp);
  call.short_of_room(order, got, n);
  return got;
}
size_t pmpage_alloc_pages_bulk(pmpage_pool* pool, unsigned order, size_t n, struct pmpage_page** out) {
  return pmpage_alloc_pages_bulk_gfp(pool, order, n, out, PMPAGE_GFP_DEFAULT);
}
struct pmpage_page* pmpage_alloc_pages_to_gfp(pmpage_pool* pool, unsigned order, pmpage_pfn_t* slot, pmpage_gfp_t gfp) {
  const c_call call("pmpage_alloc_pages_to");
  if (null_pool(pool, call)) return nullptr;
  page* p = pool->pool.alloc_pages_to(order, slot, gfp);
  if (PMPAGE_UNLIKELY(!p)) call.short_of_room(order, 0, 1);
  return c(p);
}
struct pmpage_page* pmpage_alloc_pages_to(pmpage_pool* pool, unsigned order, pmpage_pfn_t* slot) {
  return pmpage_alloc_pages_to_gfp(pool, order, slot, PMPAGE_GFP_DEFAULT);
}
namespace {
pmpage::pool::page_init c_init(pmpage_page_init_fn init, void* arg) {
  if (!init) return {};
  return [init, arg](page* head, void* addr, std::size_t bytes) { return init(c(head), addr, bytes, arg); };
}
}  // namespace
struct pmpage_page* pmpage_alloc_pages_init_to(pmpage_pool* pool, unsigned order, pmpage_pfn_t* slot, pmpage_gfp_t gfp,
                                               pmpage_page_init_fn init, void* arg) {
  const c_call call("pmpage_alloc_pages_init_to");
  if (null_pool(pool, call)) return nullptr;
  page* p = pool->pool.alloc_pages_to(order, slot, gfp, c_init(init, arg));
  if (PMPAGE_UNLIKELY(!p)) call.short_of_room(order, 0, 1);
  return c(p);
}
struct pmpage_page* pmpage_replace_pages(pmpage_pool* pool, pmpage_pfn_t* slot, unsigned order, pmpage_gfp_t gfp,
                                         pmpage_page_init_fn init, void* arg) {
  const c_call call("pmpage_replace_pages");
  if (null_pool(pool, call)) return nullptr;
  errno = 0;
  page* p = pool->pool.replace_pages(slot, order, gfp, c_init(init, arg));
  if (PMPAGE_UNLIKELY(!p)) {
    if (errno == EBUSY && !call.misused())
      call.result(-EBUSY);
    else
      call.short_of_room(order, 0, 1);
  }
  return c(p);
}
int pmpage_free_pages_from(pmpage_pool* pool, pmpage_pfn_t* slot) {
  const c_call call("pmpage_free_pages_from");
  return null_pool(pool, call) ? -EINVAL : call.result(pool->pool.free_pages_from(slot));
}
size_t pmpage_alloc_pages_bulk_to_gfp(pmpage_pool* pool, unsigned order, pmpage_pfn_t* const* slots, size_t n,
                                      pmpage_gfp_t gfp) {
  const c_call call("pmpage_alloc_pages_bulk_to");
  if (null_pool(pool, call)) return 0;
  if (!slots && n) {
    call.misuse("slots is NULL");
    return 0;
  }
  const std::size_t got = pool->pool.alloc_pages_bulk_to(order, std::span<pmpage::pfn_t* const>(slots, n), gfp);
  call.short_of_room(order, got, n);
  return got;
}
size_t pmpage_alloc_pages_bulk_to(pmpage_pool* pool, unsigned order, pmpage_pfn_t* const* slots, size_t n) {
  return pmpage_alloc_pages_bulk_to_gfp(pool, order, slots, n, PMPAGE_GFP_DEFAULT);
}
int pmpage_free_pages_bulk_from(pmpage_pool* pool, pmpage_pfn_t* const* slots, size_t n) {
  const c_call call("pmpage_free_pages_bulk_from");
  if (null_pool(pool, call)) return -EINVAL;
  if (!slots && n) return call.misuse("slots is NULL");
  return call.result(pool->pool.free_pages_bulk_from(std::span<pmpage::pfn_t* const>(slots, n)));
}
int pmpage_move_pages_owner(pmpage_pool* pool, pmpage_pfn_t* src, pmpage_pfn_t* dest) {
  const c_call call("pmpage_move_pages_owner");
  return null_pool(pool, call) ? -EINVAL : call.result(pool->pool.move_pages_owner(src, dest));
}
int pmpage_adopt_pages(pmpage_pool* pool, pmpage_pfn_t* slot) {
  const c_call call("pmpage_adopt_pages");
  return null_pool(pool, call) ? -EINVAL : call.result(pool->pool.adopt_pages(slot));
}

void pmpage_free_pages(struct pmpage_page* p, unsigned order) {
  const c_call call("pmpage_free_pages");
  pmpage::free_pages(cpp(p), order);
  if (call.misused()) note_misuse();
}
int pmpage_split_huge_page(struct pmpage_page* p) {
  const c_call call("pmpage_split_huge_page");
  const int r = pmpage::split_huge_page(cpp(p));
  if (r == -EINVAL && !call.misused()) {
    // Not misuse (the kernel's split_huge_page answers -EINVAL too): the page is no order-9 head.
    char why[160];
    std::snprintf(why, sizeof why, "pfn %#llx is not the head of an order-9 page (an order-0 page, a tail, a free "
                  "page or a larger compound page): nothing changed", (unsigned long long)pmpage::page_to_pfn(cpp(p)));
    return call.fail(EINVAL, why);
  }
  if (r == -EBUSY)
    return call.fail(EBUSY, "the page has other references, is locked or being split by another call, or a slot owns "
                            "it (split it with pmpage_split_huge_page_to): nothing changed");
  return call.result(r);
}
int pmpage_split_huge_page_to(struct pmpage_page* p, pmpage_pfn_t* slots) {
  const c_call call("pmpage_split_huge_page_to");
  return call.result(pmpage::split_huge_page_to(cpp(p), slots));
}

}  // extern "C"
