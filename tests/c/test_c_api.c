/* test_c_api.c — the C API (<pmpage/pmpage.h>) from C11, every function of the header: pools and
 * each set-up failure, allocation of every order, bulk and slot calls, ownership, translation,
 * references, compound pages, flags, the page lock, private data, root, persistence, stats,
 * checks, the walk, and misuse through a C handler. Compiled with -std=c11 -Wall -Wextra -Werror
 * -pedantic. Exit status 0 when every check holds; each failure is printed with its line.
 *
 *   test_c_api [scratch-dir]     (default /dev/shm)
 */
#define _POSIX_C_SOURCE 200809L
#include <pmpage/pmpage.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/wait.h>
#include <unistd.h>

static int g_checks, g_failures;
#define CHECK(cond)                                                        \
  do {                                                                     \
    ++g_checks;                                                            \
    if (!(cond)) {                                                         \
      ++g_failures;                                                        \
      fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
    }                                                                      \
  } while (0)
#define CHECK_EQ_U(a, b)                                                                                   \
  do {                                                                                                     \
    unsigned long long a_ = (unsigned long long)(a), b_ = (unsigned long long)(b);                         \
    ++g_checks;                                                                                            \
    if (a_ != b_) {                                                                                        \
      ++g_failures;                                                                                        \
      fprintf(stderr, "%s:%d: CHECK failed: %s == %s (%llu vs %llu)\n", __FILE__, __LINE__, #a, #b, a_, b_); \
    }                                                                                                      \
  } while (0)

static char g_dir[256] = "/dev/shm";
static char g_path[512];

static const char* scratch(const char* name) {
  snprintf(g_path, sizeof g_path, "%s/pmpage-c-%ld-%s.pool", g_dir, (long)getpid(), name);
  return g_path;
}

/* ---- the misuse handler under test ---------------------------------------------------------- */
struct misuse_log {
  int count;
  char last[512];
};
static struct misuse_log g_log;

static void record_misuse(const char* message, void* ctx) {
  struct misuse_log* log = (struct misuse_log*)ctx;
  ++log->count;
  snprintf(log->last, sizeof log->last, "%s", message);
}

/* Runs stmt; true when it reported exactly one misuse whose message contains needle. */
#define EXPECT_MISUSE(stmt, needle)                                                               \
  do {                                                                                            \
    const int before_ = g_log.count;                                                              \
    stmt;                                                                                         \
    ++g_checks;                                                                                   \
    if (g_log.count != before_ + 1 || !strstr(g_log.last, needle)) {                               \
      ++g_failures;                                                                               \
      fprintf(stderr, "%s:%d: expected one misuse containing \"%s\" from %s; got %d, last \"%s\"\n", \
              __FILE__, __LINE__, needle, #stmt, g_log.count - before_, g_log.last);               \
    }                                                                                             \
  } while (0)

static pmpage_pool* make_pool(const char* name, uint64_t size, uint64_t root_size) {
  struct pmpage_pool_options o;
  pmpage_pool* p;
  pmpage_pool_options_init(&o);
  o.size = size;
  o.root_size = root_size;
  o.overwrite = 1;
  p = pmpage_pool_create(scratch(name), &o);
  if (!p) fprintf(stderr, "create %s: %s\n", g_path, pmpage_errormsg());
  return p;
}

/* ---- set-up: options, create, open, close, and every failure -------------------------------- */
static void test_setup(void) {
  struct pmpage_pool_options o;
  pmpage_pool *p, *q;
  char path[512];
  int fd;
  unsigned i;

  memset(&o, 0xab, sizeof o);
  pmpage_pool_options_init(&o);
  CHECK_EQ_U(o.size, 0);
  CHECK_EQ_U(o.root_size, 4096);
  CHECK_EQ_U(o.overwrite, 0);
  CHECK_EQ_U(o.preallocate, 0);
  CHECK_EQ_U(o.mode, 0600);
  CHECK_EQ_U(o.max_size, 0);
  CHECK_EQ_U(o.reserved0_, 0);
  for (i = 0; i < sizeof o.reserved_ / sizeof o.reserved_[0]; ++i) CHECK_EQ_U(o.reserved_[i], 0);
  pmpage_pool_options_init(NULL); /* harmless */
  pmpage_pool_close(NULL);        /* no-op */

  /* ENOENT: open of a path that does not exist. */
  snprintf(path, sizeof path, "%s", scratch("missing"));
  unlink(path);
  errno = 0;
  CHECK(pmpage_pool_open(path) == NULL);
  CHECK_EQ_U(errno, ENOENT);
  CHECK(strstr(pmpage_errormsg(), path) != NULL);

  /* ENOENT: create in a directory that does not exist. */
  errno = 0;
  pmpage_pool_options_init(&o);
  o.size = 8u << 20;
  CHECK(pmpage_pool_create("/nonexistent-dir-pmpage/x.pool", &o) == NULL);
  CHECK(errno != 0);
  CHECK(strstr(pmpage_errormsg(), "/nonexistent-dir-pmpage/x.pool") != NULL);

  /* EINVAL: too small. */
  snprintf(path, sizeof path, "%s", scratch("small"));
  unlink(path);
  pmpage_pool_options_init(&o);
  o.size = 1u << 20;
  errno = 0;
  CHECK(pmpage_pool_create(path, &o) == NULL);
  CHECK_EQ_U(errno, EINVAL);
  CHECK(strlen(pmpage_errormsg()) > 0);
  unlink(path);

  /* EINVAL: root area above PMPAGE_MAX_ROOT_SIZE. */
  pmpage_pool_options_init(&o);
  o.size = 8u << 20;
  o.root_size = PMPAGE_MAX_ROOT_SIZE + 4096;
  errno = 0;
  CHECK(pmpage_pool_create(path, &o) == NULL);
  CHECK_EQ_U(errno, EINVAL);
  unlink(path);

  /* EINVAL: options not filled by pmpage_pool_options_init (a reserved word is set). */
  pmpage_pool_options_init(&o);
  o.size = 8u << 20;
  o.reserved_[3] = 7;
  errno = 0;
  CHECK(pmpage_pool_create(path, &o) == NULL);
  CHECK_EQ_U(errno, EINVAL);
  CHECK(strstr(pmpage_errormsg(), "reserved") != NULL);
  CHECK(access(path, F_OK) != 0); /* nothing created */

  /* EINVAL: NULL path. */
  errno = 0;
  CHECK(pmpage_pool_create(NULL, NULL) == NULL);
  CHECK_EQ_U(errno, EINVAL);
  CHECK(pmpage_pool_open(NULL) == NULL);
  CHECK_EQ_U(errno, EINVAL);

  /* EINVAL: open of a file that is no pool. */
  snprintf(path, sizeof path, "%s", scratch("foreign"));
  fd = open(path, O_CREAT | O_TRUNC | O_WRONLY, 0600);
  CHECK(fd >= 0);
  if (fd >= 0) {
    static const char junk[8192] = "not a pmpage pool";
    CHECK(write(fd, junk, sizeof junk) == (ssize_t)sizeof junk);
    close(fd);
  }
  errno = 0;
  CHECK(pmpage_pool_open(path) == NULL);
  CHECK_EQ_U(errno, EINVAL);
  CHECK(strstr(pmpage_errormsg(), path) != NULL);
  /* EEXIST: create over a foreign file without overwrite. */
  pmpage_pool_options_init(&o);
  o.size = 8u << 20;
  errno = 0;
  CHECK(pmpage_pool_create(path, &o) == NULL);
  CHECK_EQ_U(errno, EEXIST);
  unlink(path);

  /* A pool: create with defaults but a size, reopen, EEXIST and EBUSY. */
  snprintf(path, sizeof path, "%s", scratch("setup"));
  unlink(path);
  pmpage_pool_options_init(&o);
  o.size = 8u << 20;
  p = pmpage_pool_create(path, &o);
  CHECK(p != NULL);
  if (!p) return;
  CHECK(strcmp(pmpage_pool_path(p), path) == 0);
  /* EBUSY: the pool is open. */
  errno = 0;
  CHECK(pmpage_pool_open(path) == NULL);
  CHECK_EQ_U(errno, EBUSY);
  CHECK(strstr(pmpage_errormsg(), path) != NULL);
  o.overwrite = 1;
  errno = 0;
  CHECK(pmpage_pool_create(path, &o) == NULL);
  CHECK_EQ_U(errno, EBUSY);
  pmpage_pool_close(p);
  /* EEXIST: a valid pool without overwrite. */
  o.overwrite = 0;
  errno = 0;
  CHECK(pmpage_pool_create(path, &o) == NULL);
  CHECK_EQ_U(errno, EEXIST);
  CHECK(strstr(pmpage_errormsg(), path) != NULL);
  /* The refused calls changed nothing: it opens, and overwrite formats it. */
  q = pmpage_pool_open(path);
  CHECK(q != NULL);
  pmpage_pool_close(q);
  o.overwrite = 1;
  q = pmpage_pool_create(path, &o);
  CHECK(q != NULL);
  pmpage_pool_close(q);
  unlink(path);
}

/* ---- pool queries, root, persistence, stats, check ------------------------------------------ */
static void test_pool_queries(void) {
  pmpage_pool* p = make_pool("queries", 64u << 20, 16384);
  size_t root_size = 0, len = 0;
  char* root;
  char* base;
  struct pmpage_pool_stats st;
  if (!p) return;
  CHECK(pmpage_pool_start_pfn(p) != 0);
  CHECK(pmpage_pool_end_pfn(p) > pmpage_pool_start_pfn(p));
  CHECK_EQ_U((pmpage_pool_end_pfn(p) - pmpage_pool_start_pfn(p)) % PMPAGE_HPAGE_PMD_NR, 0);
  root = (char*)pmpage_pool_root(p, &root_size);
  CHECK(root != NULL);
  CHECK_EQ_U(root_size, 16384);
  CHECK(pmpage_pool_root(p, NULL) == root);
  base = (char*)pmpage_pool_base(p, &len);
  CHECK(base != NULL && root > base && root < base + len);
  CHECK(pmpage_pool_base(p, NULL) == base);
  CHECK_EQ_U(pmpage_pool_is_pmem(p), 1); /* PMEM_IS_PMEM_FORCE=1 */
  strcpy(root, "root data");
  CHECK_EQ_U(pmpage_pool_granularity(p), PMPAGE_GRANULARITY_CACHE_LINE); /* PMEM_IS_PMEM_FORCE=1 */
  CHECK_EQ_U(pmpage_pool_persist(p, root, 10), 0);
  pmpage_pool_flush(p, root, 10);
  CHECK_EQ_U(pmpage_pool_drain(p), 0);
  CHECK_EQ_U(pmpage_pool_writeback_error(p), 0);

  memset(&st, 0xff, sizeof st);
  CHECK_EQ_U(pmpage_pool_stats(p, &st), 0);
  CHECK_EQ_U(st.total_pages, pmpage_pool_end_pfn(p) - pmpage_pool_start_pfn(p));
  CHECK_EQ_U(st.free_pages, st.total_pages);
  CHECK_EQ_U(st.total_regions * PMPAGE_HPAGE_PMD_NR, st.total_pages);
  CHECK(st.descriptor_bytes >= st.total_regions * 64);
  CHECK_EQ_U(st.writeback_errno, 0);
  CHECK_EQ_U(st.reserved_[0], 0);
  CHECK_EQ_U(st.reserved_[7], 0);
  CHECK_EQ_U(st.writeback_errno, 0);
  CHECK_EQ_U(st.quarantined_pages, 0);
  CHECK_EQ_U(st.hwpoison_pages, 0);
  CHECK_EQ_U(pmpage_pool_check(p), 0);
  CHECK_EQ_U(pmpage_pool_close(p), 0);
  CHECK_EQ_U(pmpage_pool_close(NULL), 0);

  /* Reopen: root data kept. */
  p = pmpage_pool_open(scratch("queries"));
  CHECK(p != NULL);
  if (!p) return;
  CHECK(strcmp((char*)pmpage_pool_root(p, NULL), "root data") == 0);
  CHECK_EQ_U(pmpage_pool_is_read_only(p), 0);
  pmpage_pool_close(p);

  /* Read-only: readable, translatable, every mutation refused as misuse. */
  p = pmpage_pool_open_read_only(scratch("queries"));
  CHECK(p != NULL);
  if (!p) return;
  CHECK_EQ_U(pmpage_pool_is_read_only(p), 1);
  CHECK(strcmp((char*)pmpage_pool_root(p, NULL), "root data") == 0);
  CHECK(pmpage_pfn_valid(pmpage_pool_start_pfn(p)));
  EXPECT_MISUSE(CHECK(pmpage_alloc_pages(p, 0) == NULL), "read-only");
  {
    pmpage_pfn_t* slot = (pmpage_pfn_t*)pmpage_pool_root(p, NULL) + 8;
    EXPECT_MISUSE(CHECK(pmpage_alloc_pages_to(p, 0, slot) == NULL), "read-only");
  }
  CHECK_EQ_U(pmpage_pool_check(p), 0);
  /* A writer is refused while a reader has it open. */
  errno = 0;
  CHECK(pmpage_pool_open(scratch("queries")) == NULL);
  CHECK_EQ_U(errno, EBUSY);
  pmpage_pool_close(p);
  CHECK(pmpage_pool_open_read_only(NULL) == NULL);
  CHECK_EQ_U(errno, EINVAL);
  unlink(scratch("queries"));
}

/* ---- allocation of every order, gfp, bulk ---------------------------------------------------- */
static void test_orders(void) {
  /* A sparse file slightly over 1 GiB: one naturally aligned free GiB for order 18. */
  pmpage_pool* p = make_pool("orders", (1ull << 30) + (64u << 20), 4096);
  unsigned order;
  struct pmpage_pool_stats st;
  uint64_t free_before;
  if (!p) return;
  pmpage_pool_stats(p, &st);
  free_before = st.free_pages;
  for (order = 0; order <= PMPAGE_MAX_PAGE_ORDER; ++order) {
    struct pmpage_page* pg = pmpage_alloc_pages(p, order);
    pmpage_pfn_t pfn;
    CHECK(pg != NULL);
    if (!pg) continue;
    pfn = pmpage_page_to_pfn(pg);
    CHECK_EQ_U((pfn - pmpage_pool_start_pfn(p)) % (1ull << order), 0); /* naturally aligned */
    CHECK_EQ_U(pmpage_page_count(pg), 1);
    CHECK_EQ_U(pmpage_compound_order(pg), order);
    CHECK(pmpage_PageHead(pg) == (order > 0));
    CHECK(pmpage_PageCompound(pg) == (order > 0));
    CHECK(!pmpage_PageTail(pg));
    CHECK(pmpage_compound_head(pg) == pg);
    if (order > 0) {
      struct pmpage_page* last = pmpage_pfn_to_page(pfn + (1ull << order) - 1);
      CHECK(pmpage_PageTail(last));
      CHECK(!pmpage_PageHead(last));
      CHECK(pmpage_PageCompound(last));
      CHECK(pmpage_compound_head(last) == pg);
      CHECK_EQ_U(pmpage_compound_order(last), 0); /* as in the kernel: tails answer 0 */
      CHECK_EQ_U(pmpage_page_count(last), 1);     /* the head's count */
    }
    pmpage_free_pages(pg, order);
  }
  pmpage_pool_stats(p, &st);
  CHECK_EQ_U(st.free_pages, free_before);
  /* The GiB is the only one: a second order-18 page does not fit (NULL, not misuse). */
  {
    struct pmpage_page* gib = pmpage_alloc_pages(p, PMPAGE_MAX_PAGE_ORDER);
    const int before = g_log.count;
    CHECK(gib != NULL);
    CHECK(pmpage_alloc_pages(p, PMPAGE_MAX_PAGE_ORDER) == NULL);
    CHECK_EQ_U(g_log.count, before);
    if (gib) pmpage_put_page(gib);
  }
  /* GFP_ZERO: dirty a page, free it, get it back zeroed. */
  {
    struct pmpage_page* a = pmpage_alloc_pages(p, 0);
    struct pmpage_page* b;
    char* d = (char*)pmpage_page_address(a);
    memset(d, 0x5a, PMPAGE_PAGE_SIZE);
    pmpage_put_page(a);
    b = pmpage_alloc_pages_gfp(p, 0, PMPAGE_GFP_ZERO);
    CHECK(b != NULL);
    if (b) {
      const char* z = (const char*)pmpage_page_address(b);
      size_t i, nonzero = 0;
      for (i = 0; i < PMPAGE_PAGE_SIZE; ++i) nonzero += z[i] != 0;
      CHECK_EQ_U(nonzero, 0);
      pmpage_put_page(b);
    }
  }
  /* Bulk. */
  {
    struct pmpage_page* pages[40];
    size_t n = pmpage_alloc_pages_bulk(p, 0, 40, pages), i;
    CHECK_EQ_U(n, 40);
    for (i = 0; i < n; ++i) CHECK_EQ_U(pmpage_page_count(pages[i]), 1);
    for (i = 1; i < n; ++i) CHECK(pages[i] != pages[0]);
    for (i = 0; i < n; ++i) pmpage_put_page(pages[i]);
    n = pmpage_alloc_pages_bulk_gfp(p, 9, 3, pages, PMPAGE_GFP_DEFAULT);
    CHECK_EQ_U(n, 3);
    for (i = 0; i < n; ++i) {
      CHECK_EQ_U(pmpage_compound_order(pages[i]), 9);
      pmpage_free_pages(pages[i], 9);
    }
  }
  CHECK_EQ_U(pmpage_pool_check(p), 0);
  pmpage_pool_close(p);
  unlink(scratch("orders"));
}

/* ---- slots: _to, _from, bulk, move, split_huge_page_to, check_slots -------------------------- */
struct walk_ctx {
  int allocations;
  unsigned long long pages;
  int saw_order9;
};
static void walk(struct pmpage_page* head, unsigned order, void* ctx) {
  struct walk_ctx* w = (struct walk_ctx*)ctx;
  ++w->allocations;
  w->pages += 1ull << order;
  if (order == 9) w->saw_order9 = 1;
  (void)head;
}

static void test_slots(void) {
  pmpage_pool* p = make_pool("slots", 64u << 20, 16384);
  pmpage_pfn_t* root;
  pmpage_pfn_t* split_slots;
  struct pmpage_page* pg;
  if (!p) return;
  root = (pmpage_pfn_t*)pmpage_pool_root(p, NULL);
  split_slots = root + 1024; /* 512 consecutive slots at 8 KiB */

  pg = pmpage_alloc_pages_to(p, 0, &root[0]);
  CHECK(pg != NULL);
  CHECK_EQ_U(root[0], pmpage_page_to_pfn(pg));
  CHECK_EQ_U(pmpage_page_count(pg), 1);
  pg = pmpage_alloc_pages_to_gfp(p, 2, &root[1], PMPAGE_GFP_ZERO);
  CHECK(pg != NULL && root[1] == pmpage_page_to_pfn(pg));

  /* A reference besides the slot's: free_pages_from refuses with -EBUSY. */
  pmpage_get_page(pg);
  errno = 0;
  CHECK_EQ_U(pmpage_free_pages_from(p, &root[1]), -EBUSY);
  CHECK_EQ_U(errno, EBUSY); /* C's convention holds for every negative result */
  CHECK(strstr(pmpage_errormsg(), "free_pages_from") != NULL && strstr(pmpage_errormsg(), "other references") != NULL);
  CHECK(root[1] != 0);
  pmpage_put_page(pg);

  /* move_pages_owner. */
  CHECK_EQ_U(pmpage_move_pages_owner(p, &root[1], &root[2]), 0);
  CHECK_EQ_U(root[1], 0);
  CHECK_EQ_U(root[2], pmpage_page_to_pfn(pg));

  /* Bulk slot calls. */
  {
    pmpage_pfn_t* slots[20];
    size_t i;
    for (i = 0; i < 20; ++i) slots[i] = &root[100 + i];
    CHECK_EQ_U(pmpage_alloc_pages_bulk_to(p, 0, slots, 16), 16);
    CHECK_EQ_U(pmpage_alloc_pages_bulk_to_gfp(p, 1, slots + 16, 4, PMPAGE_GFP_ZERO), 4);
    for (i = 0; i < 20; ++i) CHECK(pmpage_pfn_valid(root[100 + i]));
    CHECK_EQ_U(pmpage_compound_order(pmpage_pfn_to_page(root[117])), 1);

    /* check_slots: the complete list is clean; leaving one out is a leak it names. */
    {
      pmpage_pfn_t* all[23];
      for (i = 0; i < 20; ++i) all[i] = slots[i];
      all[20] = &root[0];
      all[21] = &root[1]; /* empty: ignored */
      all[22] = &root[2];
      CHECK_EQ_U(pmpage_pool_check_slots(p, all, 23), 0);
      errno = 0;
      CHECK_EQ_U(pmpage_pool_check_slots(p, all, 22), -EUCLEAN);
      CHECK_EQ_U(errno, EUCLEAN);
      CHECK(strstr(pmpage_errormsg(), "unreferenced") != NULL || strstr(pmpage_errormsg(), "names") != NULL);
    }
    CHECK_EQ_U(pmpage_free_pages_bulk_from(p, slots, 20), 0);
    for (i = 0; i < 20; ++i) CHECK_EQ_U(root[100 + i], 0);
    CHECK_EQ_U(pmpage_free_pages_bulk_from(p, slots, 20), 0); /* idempotent on empty slots */
  }

  /* split_huge_page_to: a slot-owned order-9 page, one slot per piece. */
  pg = pmpage_alloc_pages_to(p, 9, &split_slots[0]);
  CHECK(pg != NULL);
  if (pg) {
    unsigned i;
    CHECK(!pmpage_PageSplit(pg));
    CHECK_EQ_U(pmpage_split_huge_page(pg), -EBUSY); /* slot-owned: needs split_huge_page_to */
    CHECK_EQ_U(pmpage_split_huge_page_to(pg, split_slots), 0);
    CHECK(pmpage_PageSplit(pg));
    CHECK_EQ_U(pmpage_compound_order(pg), 0);
    for (i = 0; i < 512; ++i) CHECK_EQ_U(split_slots[i], split_slots[0] + i);
    for (i = 0; i < 512; ++i) CHECK_EQ_U(pmpage_free_pages_from(p, &split_slots[i]), 0);
  }
  /* split_huge_page of an unowned order-9 page. */
  pg = pmpage_alloc_pages(p, 9);
  CHECK(pg != NULL);
  if (pg) {
    pmpage_pfn_t pfn = pmpage_page_to_pfn(pg);
    unsigned i;
    CHECK_EQ_U(pmpage_split_huge_page(pg), 0);
    for (i = 0; i < 512; ++i) {
      struct pmpage_page* sub = pmpage_pfn_to_page(pfn + i);
      CHECK_EQ_U(pmpage_page_count(sub), 1);
      pmpage_put_page(sub);
    }
  }

  /* The walk: the two slot-owned allocations, with the context. */
  {
    struct walk_ctx w = {0, 0, 0};
    struct pmpage_page* big = pmpage_alloc_pages(p, 9);
    CHECK_EQ_U(pmpage_pool_for_each_allocated(p, walk, &w), 0);
    CHECK_EQ_U(w.allocations, 3);
    CHECK_EQ_U(w.pages, 1 + 4 + 512);
    CHECK(w.saw_order9);
    pmpage_free_pages(big, 9);
  }
  CHECK_EQ_U(pmpage_pool_check(p), 0);

  /* Ownership survives reopen; the slot frees it. */
  {
    pmpage_pfn_t pfn0 = root[0];
    pmpage_pool_close(p);
    CHECK(!pmpage_pfn_valid(pfn0)); /* closed: its pfns are invalid */
    p = pmpage_pool_open(scratch("slots"));
    CHECK(p != NULL);
    if (!p) return;
    root = (pmpage_pfn_t*)pmpage_pool_root(p, NULL);
    CHECK_EQ_U(root[0], pfn0);
    CHECK_EQ_U(pmpage_page_count(pmpage_pfn_to_page(root[0])), 1);
    CHECK_EQ_U(pmpage_free_pages_from(p, &root[0]), 0);
    CHECK_EQ_U(root[0], 0);
    CHECK_EQ_U(pmpage_free_pages_from(p, &root[0]), 0); /* empty slot: no-op */
    CHECK_EQ_U(pmpage_free_pages_from(p, &root[2]), 0);
  }
  {
    struct pmpage_pool_stats st;
    pmpage_pool_stats(p, &st);
    CHECK_EQ_U(st.free_pages, st.total_pages);
    (void)pmpage_pool_trim(p);
    pmpage_pool_stats(p, &st);
    CHECK_EQ_U(st.split_regions, 0);
  }
  pmpage_pool_close(p);
  unlink(scratch("slots"));
}

/* ---- translation, references, flags, lock, private ------------------------------------------ */
struct lock_arg {
  struct pmpage_page* page;
  volatile int got;
};
static void* locker(void* a) {
  struct lock_arg* arg = (struct lock_arg*)a;
  pmpage_lock_page(arg->page); /* sleeps until the main thread unlocks */
  __atomic_store_n(&arg->got, 1, __ATOMIC_SEQ_CST);
  pmpage_unlock_page(arg->page);
  return NULL;
}

static void test_page_api(void) {
  pmpage_pool* p = make_pool("page", 64u << 20, 4096);
  struct pmpage_page *a, *big, *tail;
  pmpage_pfn_t pfn;
  char* data;
  int stack_var = 0;
  if (!p) return;
  a = pmpage_alloc_pages(p, 0);
  big = pmpage_alloc_pages(p, 10); /* two regions: a multi-region compound */
  CHECK(a != NULL && big != NULL);
  if (!a || !big) return;

  /* Translation round trips. */
  pfn = pmpage_page_to_pfn(a);
  CHECK(pmpage_pfn_valid(pfn));
  CHECK(pmpage_pfn_to_page(pfn) == a);
  data = (char*)pmpage_page_address(a);
  CHECK(data != NULL);
  CHECK_EQ_U((uintptr_t)data % PMPAGE_PAGE_SIZE, 0);
  CHECK(pmpage_virt_to_page(data) == a);
  CHECK(pmpage_virt_to_page(data + 100) == a);
  CHECK(pmpage_virt_to_page(data + PMPAGE_PAGE_SIZE) != a);
  CHECK(pmpage_virt_addr_valid(data + 4095));
  CHECK(pmpage_virt_to_page(&stack_var) == NULL); /* not pool memory: NULL, not misuse */
  CHECK(!pmpage_virt_addr_valid(&stack_var));
  CHECK(pmpage_pfn_valid(pmpage_pool_start_pfn(p)));
  CHECK(!pmpage_pfn_valid(pmpage_pool_end_pfn(p)));
  CHECK(!pmpage_pfn_valid(0));
  CHECK(pmpage_PageSplit(a)); /* order 0 lives in a split region */
  {
    pmpage_pfn_t bp = pmpage_page_to_pfn(big);
    tail = pmpage_pfn_to_page(bp + 700); /* in the second region */
    CHECK(pmpage_page_address(tail) == (char*)pmpage_page_address(big) + 700 * PMPAGE_PAGE_SIZE);
    CHECK(pmpage_compound_head(tail) == big);
    CHECK(pmpage_PageTail(tail) && !pmpage_PageHead(tail));
    CHECK(!pmpage_PageSplit(tail));
    CHECK_EQ_U(pmpage_compound_order(big), 10);
  }

  /* References act on the head. */
  pmpage_get_page(tail);
  CHECK_EQ_U(pmpage_page_count(big), 2);
  CHECK(pmpage_get_page_unless_zero(big));
  CHECK_EQ_U(pmpage_page_count(tail), 3);
  pmpage_put_page(tail);
  pmpage_put_page(big);
  CHECK_EQ_U(pmpage_page_count(big), 1);

  /* Flags: on the head, through tails. */
  CHECK(!pmpage_PageDirty(big));
  pmpage_SetPageDirty(tail);
  CHECK(pmpage_PageDirty(big));
  pmpage_ClearPageDirty(big);
  CHECK(!pmpage_PageDirty(tail));
  CHECK(!pmpage_TestSetPageDirty(a));
  CHECK(pmpage_TestSetPageDirty(a));
  CHECK(pmpage_TestClearPageDirty(a));
  CHECK(!pmpage_TestClearPageDirty(a));
  CHECK(!pmpage_PageUptodate(a));
  pmpage_SetPageUptodate(a);
  CHECK(pmpage_PageUptodate(a));
  pmpage_ClearPageUptodate(a);
  CHECK(!pmpage_PageUptodate(a));

  /* Private data. */
  CHECK_EQ_U(pmpage_page_private(a), 0);
  pmpage_set_page_private(tail, (uintptr_t)0xfeedu);
  CHECK_EQ_U(pmpage_page_private(big), 0xfeed);

  /* The page lock, with a waiter. */
  CHECK(pmpage_trylock_page(a));
  CHECK(pmpage_PageLocked(a));
  CHECK(!pmpage_trylock_page(a));
  {
    struct lock_arg arg;
    pthread_t t;
    struct timespec ms = {0, 20 * 1000 * 1000};
    arg.page = a;
    arg.got = 0;
    CHECK(pthread_create(&t, NULL, locker, &arg) == 0);
    nanosleep(&ms, NULL);
    CHECK_EQ_U(__atomic_load_n(&arg.got, __ATOMIC_SEQ_CST), 0); /* still waiting */
    pmpage_unlock_page(a);
    pthread_join(t, NULL);
    CHECK_EQ_U(arg.got, 1);
  }
  CHECK(!pmpage_PageLocked(a));
  pmpage_lock_page(big);
  CHECK(pmpage_PageLocked(tail));
  pmpage_unlock_page(tail);
  CHECK(!pmpage_PageLocked(big));

  /* put_page of the last reference frees. */
  pmpage_put_page(a);
  CHECK_EQ_U(pmpage_page_count(a), 0);
  pmpage_free_pages(big, 10);
  CHECK_EQ_U(pmpage_page_count(big), 0);
  CHECK_EQ_U(pmpage_pool_check(p), 0);
  pmpage_pool_close(p);
  unlink(scratch("page"));
}

/* ---- misuse through the C API ---------------------------------------------------------------- */
static void test_misuse(void) {
  pmpage_pool* p = make_pool("misuse", 64u << 20, 4096);
  pmpage_pfn_t* root;
  struct pmpage_page *a, *owned, *big;
  struct pmpage_page* bogus = (struct pmpage_page*)(uintptr_t)0x1000;
  int local = 0;
  if (!p) return;
  root = (pmpage_pfn_t*)pmpage_pool_root(p, NULL);
  a = pmpage_alloc_pages(p, 0);
  big = pmpage_alloc_pages(p, 2);
  owned = pmpage_alloc_pages_to(p, 0, &root[0]);
  CHECK(a && big && owned);
  if (!a || !big || !owned) return;

  /* Translation of things that are no pages. */
  EXPECT_MISUSE(CHECK(pmpage_pfn_to_page(pmpage_pool_end_pfn(p) + 5) == NULL), "is not a page of any open pool");
  EXPECT_MISUSE(CHECK(pmpage_pfn_to_page(0) == NULL), "pfn");
  EXPECT_MISUSE(CHECK(pmpage_page_to_pfn(bogus) == 0), "not a page descriptor");
  EXPECT_MISUSE(CHECK(pmpage_page_address(bogus) == NULL), "not a page descriptor");
  /* The message is the thread's last error too. */
  CHECK(strstr(pmpage_errormsg(), "not a page descriptor") != NULL);
  EXPECT_MISUSE(CHECK(pmpage_page_count(bogus) == 0), "not a page descriptor");
  EXPECT_MISUSE(CHECK(pmpage_compound_head(bogus) == NULL), "not a page descriptor");
  EXPECT_MISUSE(CHECK(!pmpage_PageHead(bogus)), "not a page descriptor");
  EXPECT_MISUSE(CHECK(!pmpage_PageTail(bogus)), "not a page descriptor");
  EXPECT_MISUSE(CHECK(!pmpage_PageSplit(bogus)), "not a page descriptor");
  EXPECT_MISUSE(pmpage_get_page(bogus), "not a page descriptor");
  EXPECT_MISUSE(pmpage_put_page(bogus), "not a page descriptor");
  EXPECT_MISUSE(CHECK(!pmpage_get_page_unless_zero(bogus)), "not a page descriptor");
  EXPECT_MISUSE(CHECK(!pmpage_trylock_page(bogus)), "not a page descriptor");
  EXPECT_MISUSE(pmpage_lock_page(bogus), "not a page descriptor");
  EXPECT_MISUSE(pmpage_unlock_page(bogus), "not a page descriptor");
  EXPECT_MISUSE(CHECK(!pmpage_PageDirty(bogus)), "not a page descriptor");
  EXPECT_MISUSE(CHECK(pmpage_TestSetPageDirty(bogus)), "not a page descriptor"); /* "already dirty" */
  EXPECT_MISUSE(pmpage_set_page_private(bogus, 1), "not a page descriptor");
  EXPECT_MISUSE(CHECK(pmpage_page_private(bogus) == 0), "not a page descriptor");
  EXPECT_MISUSE(pmpage_free_pages(bogus, 0), "not a page descriptor");
  EXPECT_MISUSE(CHECK(pmpage_split_huge_page(bogus) == -EINVAL), "not a page descriptor");
  EXPECT_MISUSE(CHECK(pmpage_split_huge_page_to(bogus, root) == -EINVAL), "not a page descriptor");

  /* References and frees. */
  EXPECT_MISUSE(pmpage_free_pages(big, 3), "order");
  CHECK_EQ_U(pmpage_page_count(big), 1);
  EXPECT_MISUSE(pmpage_free_pages(pmpage_pfn_to_page(pmpage_page_to_pfn(big) + 1), 0), "tail");
  EXPECT_MISUSE(pmpage_put_page(owned), "slot");
  CHECK_EQ_U(pmpage_page_count(owned), 1);
  EXPECT_MISUSE(pmpage_free_pages(owned, 0), "slot");
  EXPECT_MISUSE(pmpage_unlock_page(a), "not locked");
  pmpage_put_page(a); /* frees it */
  EXPECT_MISUSE(pmpage_get_page(a), "reference count is 0");
  CHECK_EQ_U(pmpage_page_count(a), 0);
  EXPECT_MISUSE(pmpage_put_page(a), "reference count is 0");
  CHECK_EQ_U(pmpage_page_count(a), 0);
  EXPECT_MISUSE(pmpage_free_pages(a, 0), "not allocated");
  CHECK(!pmpage_get_page_unless_zero(a)); /* not misuse: false */

  /* Allocation. */
  EXPECT_MISUSE(CHECK(pmpage_alloc_pages(p, PMPAGE_MAX_PAGE_ORDER + 1) == NULL), "order");
  EXPECT_MISUSE(CHECK(pmpage_alloc_pages_gfp(p, 0, 0x1u) == NULL), "gfp");
  EXPECT_MISUSE(CHECK(pmpage_alloc_pages_to(p, 0, &root[0]) == NULL), "");      /* slot not empty */
  EXPECT_MISUSE(CHECK(pmpage_alloc_pages_to(p, 0, (pmpage_pfn_t*)&local) == NULL), ""); /* not in the pool */
  {
    pmpage_pfn_t copy_holder;
    root[5] = root[0]; /* a copied pfn: not the owner */
    EXPECT_MISUSE(CHECK_EQ_U(pmpage_free_pages_from(p, &root[5]), -EINVAL), "");
    root[5] = 0;
    copy_holder = 0;
    EXPECT_MISUSE(CHECK_EQ_U(pmpage_free_pages_from(p, &copy_holder), -EINVAL), "");
    EXPECT_MISUSE(CHECK_EQ_U(pmpage_move_pages_owner(p, &root[1], &root[2]), -EINVAL), ""); /* src empty */
  }
  {
    pmpage_pfn_t* twice[2];
    twice[0] = &root[8];
    twice[1] = &root[8];
    EXPECT_MISUSE(CHECK_EQ_U(pmpage_alloc_pages_bulk_to(p, 0, twice, 2), 0), "");
    twice[0] = &root[0];
    twice[1] = &root[0];
    EXPECT_MISUSE(CHECK_EQ_U(pmpage_free_pages_bulk_from(p, twice, 2), -EINVAL), "");
    CHECK(root[0] != 0); /* nothing changed */
  }

  /* A NULL pool is misuse too. */
  EXPECT_MISUSE(CHECK(pmpage_alloc_pages(NULL, 0) == NULL), "pool is NULL");
  EXPECT_MISUSE(CHECK(pmpage_alloc_pages_bulk(NULL, 0, 0, NULL) == 0), "pool is NULL");
  EXPECT_MISUSE(CHECK(pmpage_alloc_pages_to(NULL, 0, root) == NULL), "pool is NULL");
  EXPECT_MISUSE(CHECK_EQ_U(pmpage_free_pages_from(NULL, root), -EINVAL), "pool is NULL");
  EXPECT_MISUSE(CHECK_EQ_U(pmpage_alloc_pages_bulk_to(NULL, 0, NULL, 0), 0), "pool is NULL");
  EXPECT_MISUSE(CHECK_EQ_U(pmpage_free_pages_bulk_from(NULL, NULL, 0), -EINVAL), "pool is NULL");
  EXPECT_MISUSE(CHECK_EQ_U(pmpage_move_pages_owner(NULL, root, root + 1), -EINVAL), "pool is NULL");
  EXPECT_MISUSE(CHECK(pmpage_pool_root(NULL, NULL) == NULL), "pool is NULL");
  EXPECT_MISUSE(CHECK_EQ_U(pmpage_pool_start_pfn(NULL), 0), "pool is NULL");
  EXPECT_MISUSE(CHECK_EQ_U(pmpage_pool_end_pfn(NULL), 0), "pool is NULL");
  EXPECT_MISUSE(CHECK(pmpage_pool_path(NULL) == NULL), "pool is NULL");
  EXPECT_MISUSE(CHECK(pmpage_pool_base(NULL, NULL) == NULL), "pool is NULL");
  EXPECT_MISUSE(CHECK_EQ_U(pmpage_pool_is_pmem(NULL), -EINVAL), "pool is NULL");
  EXPECT_MISUSE(CHECK_EQ_U(pmpage_pool_is_read_only(NULL), -EINVAL), "pool is NULL");
  EXPECT_MISUSE(CHECK_EQ_U(pmpage_pool_persist(NULL, root, 8), -EINVAL), "pool is NULL");
  EXPECT_MISUSE(pmpage_pool_flush(NULL, root, 8), "pool is NULL");
  EXPECT_MISUSE(CHECK_EQ_U(pmpage_pool_drain(NULL), -EINVAL), "pool is NULL");
  EXPECT_MISUSE(CHECK_EQ_U(pmpage_pool_writeback_error(NULL), -EINVAL), "pool is NULL");
  EXPECT_MISUSE(CHECK_EQ_U(pmpage_pool_granularity(NULL), -EINVAL), "pool is NULL");
  EXPECT_MISUSE(CHECK_EQ_U(pmpage_pool_stats(NULL, NULL), -EINVAL), "pool is NULL");
  EXPECT_MISUSE(CHECK_EQ_U(pmpage_pool_stats(p, NULL), -EINVAL), "out is NULL");
  EXPECT_MISUSE(CHECK_EQ_U(pmpage_pool_trim(NULL), 0), "pool is NULL");
  EXPECT_MISUSE(CHECK_EQ_U(pmpage_pool_check(NULL), -EINVAL), "pool is NULL");
  EXPECT_MISUSE(CHECK_EQ_U(pmpage_pool_check_slots(NULL, NULL, 0), -EINVAL), "pool is NULL");
  EXPECT_MISUSE(CHECK_EQ_U(pmpage_pool_for_each_allocated(NULL, walk, NULL), -EINVAL), "pool is NULL");
  EXPECT_MISUSE(CHECK_EQ_U(pmpage_pool_for_each_allocated(p, NULL, NULL), -EINVAL), "fn is NULL");

  /* None of it changed the pool. */
  CHECK_EQ_U(pmpage_pool_check(p), 0);
  CHECK_EQ_U(pmpage_page_count(owned), 1);
  CHECK_EQ_U(pmpage_free_pages_from(p, &root[0]), 0);
  pmpage_free_pages(big, 2);

  /* pfns of a closed pool are misuse. */
  {
    pmpage_pfn_t start = pmpage_pool_start_pfn(p);
    pmpage_pool_close(p);
    EXPECT_MISUSE(CHECK(pmpage_pfn_to_page(start) == NULL), "pfn");
  }
  unlink(scratch("misuse"));
}

/* ---- every failing call sets its own message (issue #18, defect 10) ------------------------------
 * pmpage_split_huge_page of a page that is no order-9 head used to return -EINVAL with no message,
 * so pmpage_errormsg() still described an earlier, unrelated failure; so did every allocation that
 * found no room. Each failing call below runs right after an unrelated failure: its errno and its
 * message must be its own. */
#define STALE "stale-unrelated-failure"
static void plant_stale_message(void) {
  CHECK(pmpage_pool_open("/nonexistent-" STALE "/x.pool") == NULL);
  CHECK(strstr(pmpage_errormsg(), STALE) != NULL);
  errno = 0;
}
#define EXPECT_OWN_FAILURE(err, needle)                                                                   \
  do {                                                                                                    \
    const int errno_ = errno;                                                                             \
    ++g_checks;                                                                                           \
    if (errno_ != (err) || !strstr(pmpage_errormsg(), needle) || strstr(pmpage_errormsg(), STALE)) {      \
      ++g_failures;                                                                                       \
      fprintf(stderr, "%s:%d: expected errno %d and a message containing \"%s\"; got errno %d, \"%s\"\n", \
              __FILE__, __LINE__, (int)(err), needle, errno_, pmpage_errormsg());                        \
    }                                                                                                     \
  } while (0)

int cxx_handler_misuse_sets_c_message(pmpage_pool* pool); /* header_cxx.cpp */

static void test_every_failure_sets_its_own_message(void) {
  pmpage_pool* p = make_pool("own-message", 4u << 20, 4096); /* one 2 MiB region */
  pmpage_pfn_t* root;
  struct pmpage_page *small, *big, *huge, *extra;
  struct pmpage_page* bogus = (struct pmpage_page*)(uintptr_t)0x1000;
  struct pmpage_page* got[4];
  pmpage_pfn_t* slots[2];
  struct pmpage_pool_stats st;
  if (!p) return;
  root = (pmpage_pfn_t*)pmpage_pool_root(p, NULL);
  CHECK_EQ_U(pmpage_pool_stats(p, &st), 0);
  CHECK_EQ_U(st.total_regions, 1);

  /* split_huge_page of pages that are no order-9 head: not misuse, -EINVAL. */
  small = pmpage_alloc_pages(p, 0);
  big = pmpage_alloc_pages(p, 3);
  CHECK(small && big);
  if (!small || !big) return;
  plant_stale_message();
  CHECK_EQ_U(pmpage_split_huge_page(small), -EINVAL);
  EXPECT_OWN_FAILURE(EINVAL, "pmpage_split_huge_page");
  plant_stale_message();
  CHECK_EQ_U(pmpage_split_huge_page(big), -EINVAL);
  EXPECT_OWN_FAILURE(EINVAL, "not the head of an order-9 page");
  plant_stale_message();
  CHECK_EQ_U(pmpage_split_huge_page(pmpage_pfn_to_page(pmpage_page_to_pfn(big) + 1)), -EINVAL); /* a tail */
  EXPECT_OWN_FAILURE(EINVAL, "pmpage_split_huge_page");
  pmpage_free_pages(big, 3);
  pmpage_free_pages(small, 0);
  CHECK_EQ_U(pmpage_pool_trim(p), 1); /* the region is whole again */

  /* An order-9 page with a second reference: -EBUSY. */
  huge = pmpage_alloc_pages(p, 9);
  CHECK(huge != NULL);
  if (!huge) return;
  pmpage_get_page(huge);
  plant_stale_message();
  CHECK_EQ_U(pmpage_split_huge_page(huge), -EBUSY);
  EXPECT_OWN_FAILURE(EBUSY, "pmpage_split_huge_page");
  pmpage_put_page(huge);

  /* No room (the one region is taken): NULL or a short count, ENOMEM. */
  plant_stale_message();
  CHECK(pmpage_alloc_pages(p, 0) == NULL);
  EXPECT_OWN_FAILURE(ENOMEM, "pmpage_alloc_pages");
  plant_stale_message();
  CHECK(pmpage_alloc_pages_gfp(p, 2, PMPAGE_GFP_ZERO) == NULL);
  EXPECT_OWN_FAILURE(ENOMEM, "order 2");
  plant_stale_message();
  CHECK(pmpage_alloc_pages(p, 10) == NULL);
  EXPECT_OWN_FAILURE(ENOMEM, "no free extent");
  plant_stale_message();
  CHECK_EQ_U(pmpage_alloc_pages_bulk(p, 0, 4, got), 0);
  EXPECT_OWN_FAILURE(ENOMEM, "pmpage_alloc_pages_bulk");
  plant_stale_message();
  CHECK(pmpage_alloc_pages_to(p, 0, &root[0]) == NULL);
  EXPECT_OWN_FAILURE(ENOMEM, "pmpage_alloc_pages_to");
  CHECK_EQ_U(root[0], 0);
  slots[0] = &root[1];
  slots[1] = &root[2];
  plant_stale_message();
  CHECK_EQ_U(pmpage_alloc_pages_bulk_to(p, 0, slots, 2), 0);
  EXPECT_OWN_FAILURE(ENOMEM, "pmpage_alloc_pages_bulk_to");
  pmpage_free_pages(huge, 9);

  /* Slot calls refused with -EBUSY: a reference besides the slot's. */
  extra = pmpage_alloc_pages_to(p, 0, &root[0]);
  CHECK(extra != NULL);
  if (!extra) return;
  pmpage_get_page(extra);
  plant_stale_message();
  CHECK_EQ_U(pmpage_free_pages_from(p, &root[0]), -EBUSY);
  EXPECT_OWN_FAILURE(EBUSY, "pmpage_free_pages_from");
  slots[0] = &root[0];
  plant_stale_message();
  CHECK_EQ_U(pmpage_free_pages_bulk_from(p, slots, 1), -EBUSY);
  EXPECT_OWN_FAILURE(EBUSY, "pmpage_free_pages_bulk_from");
  pmpage_put_page(extra);

  /* Misuse: the report is the message (and errno EINVAL). */
  plant_stale_message();
  EXPECT_MISUSE(CHECK_EQ_U(pmpage_move_pages_owner(p, &root[3], &root[4]), -EINVAL), "move_pages_owner");
  EXPECT_OWN_FAILURE(EINVAL, "move_pages_owner");
  huge = pmpage_alloc_pages(NULL, 9); /* misuse: NULL pool */
  EXPECT_OWN_FAILURE(EINVAL, "pmpage_alloc_pages: pool is NULL");
  plant_stale_message();
  EXPECT_MISUSE(CHECK_EQ_U(pmpage_free_pages_bulk_from(p, NULL, 1), -EINVAL), "slots is NULL");
  EXPECT_OWN_FAILURE(EINVAL, "pmpage_free_pages_bulk_from");
  plant_stale_message();
  EXPECT_MISUSE(CHECK_EQ_U(pmpage_alloc_pages_bulk_to(p, 0, NULL, 1), 0), "slots is NULL");
  EXPECT_OWN_FAILURE(EINVAL, "pmpage_alloc_pages_bulk_to");
  plant_stale_message();
  EXPECT_MISUSE(CHECK_EQ_U(pmpage_pool_stats(p, NULL), -EINVAL), "out is NULL");
  EXPECT_OWN_FAILURE(EINVAL, "pmpage_pool_stats");
  plant_stale_message();
  EXPECT_MISUSE(CHECK(pmpage_alloc_pages(p, PMPAGE_MAX_PAGE_ORDER + 1) == NULL), "order");
  EXPECT_OWN_FAILURE(EINVAL, "alloc_pages: order");
  plant_stale_message();
  EXPECT_MISUSE(pmpage_free_pages(extra, 1), "order");
  EXPECT_OWN_FAILURE(EINVAL, "free_pages");
  plant_stale_message();
  EXPECT_MISUSE(CHECK(pmpage_page_address(bogus) == NULL), "not a page descriptor"); /* inline */
  EXPECT_OWN_FAILURE(EINVAL, "not a page descriptor");
  plant_stale_message();
  EXPECT_MISUSE(CHECK(pmpage_pfn_to_page(pmpage_pool_end_pfn(p) + 1) == NULL), "pfn"); /* inline */
  EXPECT_OWN_FAILURE(EINVAL, "not a page of any open pool");
  plant_stale_message();
  EXPECT_MISUSE(CHECK_EQ_U(pmpage_split_huge_page(bogus), -EINVAL), "not a page descriptor");
  EXPECT_OWN_FAILURE(EINVAL, "not a page descriptor");
  plant_stale_message();
  EXPECT_MISUSE(CHECK_EQ_U(pmpage_split_huge_page_to(extra, root + 512), -EINVAL), "split_huge_page_to");
  EXPECT_OWN_FAILURE(EINVAL, "split_huge_page_to");
  CHECK_EQ_U(pmpage_free_pages_from(p, &root[0]), 0);

  /* Set-up failures name their call. */
  plant_stale_message();
  CHECK(pmpage_pool_create(NULL, NULL) == NULL);
  EXPECT_OWN_FAILURE(EINVAL, "pmpage_pool_create");
  plant_stale_message();
  CHECK(pmpage_pool_open(NULL) == NULL);
  EXPECT_OWN_FAILURE(EINVAL, "pmpage_pool_open");
  plant_stale_message();
  CHECK(pmpage_pool_open(scratch("own-message-missing")) == NULL);
  EXPECT_OWN_FAILURE(ENOENT, "pmpage_pool_open");
  plant_stale_message();
  CHECK(pmpage_pool_open(scratch("own-message")) == NULL); /* open already */
  EXPECT_OWN_FAILURE(EBUSY, "pmpage_pool_open");
  plant_stale_message();
  CHECK(pmpage_pool_create_volatile(NULL) == NULL);
  EXPECT_OWN_FAILURE(EINVAL, "pmpage_pool_create_volatile");

  /* A misuse handler installed from C++ (not pmpage_set_misuse_handler): the C call still takes
   * the report as its message. */
  plant_stale_message();
  CHECK(cxx_handler_misuse_sets_c_message(p));
  EXPECT_OWN_FAILURE(EINVAL, "move_pages_owner");

  CHECK_EQ_U(pmpage_pool_check(p), 0);
  pmpage_pool_close(p);
  unlink(scratch("own-message"));
}

/* The slot protocol's allocate-fill-publish and replacement from C. */
static int fill_with(struct pmpage_page* head, void* addr, size_t bytes, void* arg) {
  pmpage_pool* p = (pmpage_pool*)arg;
  (void)head;
  memset(addr, 0x42, bytes);
  pmpage_pool_flush(p, addr, bytes);
  return 0;
}
static int refuse_with_enodata(struct pmpage_page* head, void* addr, size_t bytes, void* arg) {
  (void)head;
  (void)addr;
  (void)bytes;
  (void)arg;
  return -ENODATA;
}
static void test_init_and_replace(void) {
  pmpage_pool* p = make_pool("init-replace", 16u << 20, 4096);
  pmpage_pfn_t* root;
  struct pmpage_page *a, *b;
  pmpage_pfn_t old;
  if (!p) return;
  root = (pmpage_pfn_t*)pmpage_pool_root(p, NULL);
  a = pmpage_alloc_pages_init_to(p, 0, &root[0], PMPAGE_GFP_DEFAULT, fill_with, p);
  CHECK(a != NULL);
  if (!a) return;
  CHECK_EQ_U(root[0], pmpage_page_to_pfn(a));
  CHECK_EQ_U(((unsigned char*)pmpage_page_address(a))[4095], 0x42);
  /* Refused by the initialiser: NULL, errno from it, the library's message, nothing published. */
  plant_stale_message();
  CHECK(pmpage_alloc_pages_init_to(p, 0, &root[1], PMPAGE_GFP_DEFAULT, refuse_with_enodata, NULL) == NULL);
  EXPECT_OWN_FAILURE(ENODATA, "initialiser refused");
  CHECK_EQ_U(root[1], 0);
  /* Replacement: the slot names the new page, the old one is free. */
  old = root[0];
  b = pmpage_replace_pages(p, &root[0], 1, PMPAGE_GFP_ZERO, NULL, NULL);
  CHECK(b != NULL);
  CHECK_EQ_U(root[0], pmpage_page_to_pfn(b));
  CHECK(root[0] != old);
  /* Other references on the old page: EBUSY, nothing changed. */
  pmpage_get_page(b);
  plant_stale_message();
  CHECK(pmpage_replace_pages(p, &root[0], 0, PMPAGE_GFP_DEFAULT, NULL, NULL) == NULL);
  EXPECT_OWN_FAILURE(EBUSY, "pmpage_replace_pages");
  CHECK_EQ_U(root[0], pmpage_page_to_pfn(b));
  pmpage_put_page(b);
  CHECK_EQ_U(pmpage_free_pages_from(p, &root[0]), 0);
  CHECK_EQ_U(pmpage_pool_check(p), 0);
  pmpage_pool_close(p);
  unlink(scratch("init-replace"));
}

/* pmpage_adopt_pages: a repair tool makes a slot the owner of an unowned allocation it names. Every
 * failure sets errno and its own message; -EROFS on a read-only pool. */
static void test_adopt_pages(void) {
  pmpage_pool* p = make_pool("adopt", 16u << 20, 4096);
  pmpage_pfn_t* root;
  pmpage_pfn_t* list[2];
  struct pmpage_page *plain, *owned;
  unsigned order;
  if (!p) return;
  root = (pmpage_pfn_t*)pmpage_pool_root(p, NULL);
  list[0] = &root[0];
  list[1] = &root[1];
  for (order = 0; order <= 9; order += 9) {
    plain = pmpage_alloc_pages(p, order);
    CHECK(plain != NULL);
    if (!plain) return;
    root[0] = pmpage_page_to_pfn(plain);
    pmpage_pool_persist(p, &root[0], sizeof root[0]);
    plant_stale_message();
    CHECK_EQ_U(pmpage_pool_check_slots(p, list, 1), -EUCLEAN); /* named, owned by nobody */
    /* Another reference: -EBUSY, nothing changed. */
    pmpage_get_page(plain);
    plant_stale_message();
    CHECK_EQ_U(pmpage_adopt_pages(p, &root[0]), -EBUSY);
    EXPECT_OWN_FAILURE(EBUSY, "pmpage_adopt_pages");
    pmpage_put_page(plain);
    CHECK_EQ_U(pmpage_adopt_pages(p, &root[0]), 0);
    CHECK_EQ_U(pmpage_page_count(plain), 1); /* the allocation's reference is the slot's */
    CHECK_EQ_U(pmpage_pool_check_slots(p, list, 1), 0);
    plant_stale_message();
    EXPECT_MISUSE(CHECK_EQ_U(pmpage_adopt_pages(p, &root[0]), -EINVAL), "already");
    EXPECT_OWN_FAILURE(EINVAL, "adopt_pages");
    CHECK_EQ_U(pmpage_free_pages_from(p, &root[0]), 0);
  }
  /* Misuse: an empty slot, a slot outside the pool, a NULL pool, a page another slot owns. */
  plant_stale_message();
  EXPECT_MISUSE(CHECK_EQ_U(pmpage_adopt_pages(p, &root[0]), -EINVAL), "empty");
  EXPECT_OWN_FAILURE(EINVAL, "adopt_pages");
  plant_stale_message();
  EXPECT_MISUSE(CHECK_EQ_U(pmpage_adopt_pages(p, (pmpage_pfn_t*)list), -EINVAL), "root or data area");
  EXPECT_OWN_FAILURE(EINVAL, "adopt_pages");
  plant_stale_message();
  EXPECT_MISUSE(CHECK_EQ_U(pmpage_adopt_pages(NULL, &root[0]), -EINVAL), "pool is NULL");
  EXPECT_OWN_FAILURE(EINVAL, "pmpage_adopt_pages: pool is NULL");
  owned = pmpage_alloc_pages_to(p, 0, &root[1]);
  CHECK(owned != NULL);
  root[0] = root[1];
  plant_stale_message();
  EXPECT_MISUSE(CHECK_EQ_U(pmpage_adopt_pages(p, &root[0]), -EINVAL), "owned by the slot at");
  EXPECT_OWN_FAILURE(EINVAL, "adopt_pages");
  root[0] = 0;
  /* A read-only pool: -EROFS (misuse), the slot stays unowned. */
  plain = pmpage_alloc_pages(p, 0);
  CHECK(plain != NULL);
  root[0] = pmpage_page_to_pfn(plain);
  pmpage_pool_persist(p, &root[0], sizeof root[0]);
  pmpage_pool_close(p);
  p = pmpage_pool_open_read_only(scratch("adopt"));
  CHECK(p != NULL);
  if (!p) return;
  root = (pmpage_pfn_t*)pmpage_pool_root(p, NULL);
  plant_stale_message();
  EXPECT_MISUSE(CHECK_EQ_U(pmpage_adopt_pages(p, &root[0]), -EROFS), "read-only");
  EXPECT_OWN_FAILURE(EROFS, "read-only");
  pmpage_pool_close(p);
  unlink(scratch("adopt"));
}

/* errormsg is per thread. */
static void* errormsg_thread(void* arg) {
  (void)arg;
  return (void*)(uintptr_t)(strlen(pmpage_errormsg()) == 0);
}

int cxx_header_agrees(struct pmpage_page* p); /* header_cxx.cpp */

static void test_cxx_agrees(void) {
  pmpage_pool* p = make_pool("cxx", 64u << 20, 4096);
  struct pmpage_page *a, *big;
  if (!p) return;
  a = pmpage_alloc_pages(p, 0);
  big = pmpage_alloc_pages(p, 9);
  CHECK(a && big);
  if (a && big) {
    CHECK(cxx_header_agrees(a));
    CHECK(cxx_header_agrees(big));
    CHECK(cxx_header_agrees(pmpage_pfn_to_page(pmpage_page_to_pfn(big) + 3)));
    pmpage_put_page(a);
    pmpage_put_page(big);
  }
  pmpage_pool_close(p);
  unlink(scratch("cxx"));
}

/* With the default handler restored, a misuse prints and aborts: in a child process. */
static void test_default_handler_aborts(void) {
  pid_t pid = fork();
  int status = 0;
  CHECK(pid >= 0);
  if (pid == 0) {
    int devnull = open("/dev/null", O_WRONLY);
    if (devnull >= 0) dup2(devnull, 2); /* the message goes to stderr */
    pmpage_set_misuse_handler(NULL, NULL);
    pmpage_put_page(pmpage_pfn_to_page((pmpage_pfn_t)1 << 32)); /* no pool here has pfn base 2^32 */
    _exit(0);                                                /* not reached */
  }
  CHECK(waitpid(pid, &status, 0) == pid);
  CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT);
}

static void test_volatile(void) {
  struct pmpage_volatile_options o;
  struct pmpage_pool_stats st;
  struct pmpage_page *a, *big;
  pmpage_pfn_t* root;
  pmpage_pool* p;
  size_t root_size = 0;

  pmpage_volatile_options_init(&o);
  CHECK(o.numa_node == -1 && o.huge == PMPAGE_HUGE_NONE && o.backing == NULL && o.root_size == 4096);
  errno = 0;
  CHECK(pmpage_pool_create_volatile(NULL) == NULL && errno == EINVAL);
  CHECK(pmpage_pool_create_volatile(&o) == NULL && errno == EINVAL); /* anonymous memory needs a size */
  CHECK(strstr(pmpage_errormsg(), "size") != NULL);
  o.size = (3u << 20);
  CHECK(pmpage_pool_create_volatile(&o) == NULL && errno == EINVAL); /* not a multiple of 2 MiB */
  o.size = 64u << 20;
  o.numa_node = 4095;
  CHECK(pmpage_pool_create_volatile(&o) == NULL && errno == EINVAL);
  CHECK(strstr(pmpage_errormsg(), "4095") != NULL);
  o.numa_node = -1;
  o.huge = 7;
  CHECK(pmpage_pool_create_volatile(&o) == NULL && errno == EINVAL);
  o.huge = PMPAGE_HUGE_NONE;
  o.reserved_[3] = 1;
  CHECK(pmpage_pool_create_volatile(&o) == NULL && errno == EINVAL);
  o.reserved_[3] = 0;
  o.numa_node = 0; /* every Linux machine has node 0 */
  p = pmpage_pool_create_volatile(&o);
  CHECK(p != NULL);
  if (!p) return;
  CHECK(pmpage_pool_is_volatile(p) == 1);
  CHECK(pmpage_pool_is_pmem(p) == 0);
  CHECK(pmpage_pool_numa_node(p) == 0);
  CHECK(strstr(pmpage_pool_memory_description(p), "volatile") != NULL);
  CHECK(strstr(pmpage_pool_memory_description(p), "node 0") != NULL);
  a = pmpage_alloc_pages_gfp(p, 0, PMPAGE_GFP_ZERO);
  big = pmpage_alloc_pages(p, 9);
  CHECK(a && big);
  CHECK(pmpage_page_to_nid(a) == 0);
  CHECK(((const char*)pmpage_page_address(a))[100] == 0);
  root = (pmpage_pfn_t*)pmpage_pool_root(p, &root_size);
  CHECK(root && root_size == 4096);
  CHECK(pmpage_alloc_pages_to(p, 0, &root[0]) != NULL);
  CHECK(pmpage_free_pages_from(p, &root[0]) == 0 && root[0] == 0);
  pmpage_free_pages(a, 0);
  pmpage_free_pages(big, 9);
  CHECK(pmpage_pool_stats(p, &st) == 0);
  CHECK_EQ_U(st.free_pages, st.total_pages);
  CHECK(pmpage_pool_check(p) == 0);
  pmpage_pool_close(p);
  CHECK(pmpage_pool_is_volatile(NULL) == -EINVAL);
  /* populate (volatile_options::populate) reaches the pool: it says so. */
  pmpage_volatile_options_init(&o);
  CHECK(o.populate == 0);
  o.size = 4u << 20;
  o.populate = 1;
  p = pmpage_pool_create_volatile(&o);
  CHECK(p != NULL);
  if (!p) return;
  CHECK(strstr(pmpage_pool_memory_description(p), "populated") != NULL);
  pmpage_pool_close(p);
}

/* ---- bad blocks: the open with a list, PageHWPoison, the stats and the list, clearing ---------- */
/* pmpage_pool_options.max_size and pmpage_pool_grow (docs/api.md "Growing a pool"). */
static void test_grow(void) {
  struct pmpage_pool_options o;
  struct pmpage_pool_stats st;
  pmpage_pool* p;
  char path[512];
  uint64_t before;

  snprintf(path, sizeof path, "%s", scratch("grow"));
  unlink(path);
  pmpage_pool_options_init(&o);
  o.size = 16u << 20;
  o.max_size = 64u << 20;
  p = pmpage_pool_create(path, &o);
  CHECK(p != NULL);
  if (!p) return;
  CHECK_EQ_U(pmpage_pool_stats(p, &st), 0);
  before = st.total_regions;
  errno = 0;
  CHECK_EQ_U(pmpage_pool_grow_closed(path, 32u << 20), -EBUSY); /* open */
  CHECK_EQ_U(errno, EBUSY);
  CHECK(strstr(pmpage_errormsg(), "pmpage_pool_grow_closed") != NULL);
  /* The open pool grows in place. */
  CHECK_EQ_U(pmpage_pool_grow(p, 20u << 20), 0);
  CHECK_EQ_U(pmpage_pool_stats(p, &st), 0);
  CHECK_EQ_U(st.total_regions, before + 2);
  CHECK_EQ_U(pmpage_pool_grow(p, 8u << 20), -EINVAL);
  CHECK(strstr(pmpage_errormsg(), "never shrinks") != NULL);
  before = st.total_regions;
  pmpage_pool_close(p);
  CHECK_EQ_U(pmpage_pool_grow_closed(path, 8u << 20), -EINVAL); /* shrink */
  CHECK(strstr(pmpage_errormsg(), "never shrinks") != NULL);
  CHECK_EQ_U(pmpage_pool_grow_closed(path, 1u << 30), -EINVAL); /* beyond the capacity */
  CHECK(strstr(pmpage_errormsg(), "capacity") != NULL);
  CHECK_EQ_U(pmpage_pool_grow_closed(NULL, 32u << 20), -EINVAL);
  CHECK_EQ_U(pmpage_pool_grow_closed(path, 32u << 20), 0);
  p = pmpage_pool_open(path);
  CHECK(p != NULL);
  if (!p) return;
  CHECK_EQ_U(pmpage_pool_stats(p, &st), 0);
  CHECK_EQ_U(st.total_regions, before + 6);
  CHECK_EQ_U(pmpage_pool_end_pfn(p) - pmpage_pool_start_pfn(p), st.total_pages);
  /* Up to the capacity, then at it: every failure sets errno and its own message. */
  CHECK_EQ_U(pmpage_pool_grow(p, 64u << 20), 0);
  pmpage_pool_grow_closed(NULL, 1); /* an older message */
  errno = 0;
  CHECK_EQ_U(pmpage_pool_grow(p, 65u << 20), -EINVAL);
  CHECK_EQ_U(errno, EINVAL);
  CHECK(strstr(pmpage_errormsg(), "at its capacity") != NULL);
  pmpage_pool_close(p);
  /* A non-zero reserved word is refused, as for every options struct. */
  pmpage_pool_options_init(&o);
  o.size = 16u << 20;
  o.overwrite = 1;
  o.reserved0_ = 1;
  errno = 0;
  CHECK(pmpage_pool_create(path, &o) == NULL);
  CHECK_EQ_U(errno, EINVAL);
  unlink(path);
}

static void test_bad_blocks(void) {
  pmpage_pool* p = make_pool("badblocks", 64ull << 20, 4096);
  struct pmpage_page* pg;
  pmpage_pfn_t pfn;
  struct pmpage_bad_block bad[2];
  struct pmpage_hwpoison_page hw[4];
  struct pmpage_pool_stats st;
  uint64_t off;
  CHECK(p != NULL);
  if (!p) return;
  pg = pmpage_alloc_pages(p, 2);
  CHECK(pg != NULL);
  if (!pg) return;
  pfn = pmpage_page_to_pfn(pg);
  off = (uint64_t)((char*)pmpage_page_address(pmpage_pfn_to_page(pfn + 3)) - (char*)pmpage_pool_base(p, NULL));
  pmpage_pool_close(p);

  bad[0].offset = off + 512; /* page 3 of the order-2 allocation */
  bad[0].length = 512;
  p = pmpage_pool_open_bad_blocks(scratch("badblocks"), bad, 1, PMPAGE_OPEN_NO_DEVICE_BAD_BLOCKS);
  CHECK(p != NULL);
  if (!p) return;
  CHECK(pmpage_PageHWPoison(pmpage_pfn_to_page(pfn)));
  CHECK(pmpage_PageHWPoison(pmpage_pfn_to_page(pfn + 3)));
  CHECK_EQ_U(pmpage_pool_stats(p, &st), 0);
  CHECK_EQ_U(st.hwpoison_pages, 1);
  CHECK_EQ_U(st.quarantined_pages, 0);
  CHECK_EQ_U(pmpage_pool_hwpoison_pages(p, hw, 4), 1);
  CHECK_EQ_U(hw[0].pfn, pfn + 3);
  CHECK_EQ_U(hw[0].head, pfn);
  CHECK_EQ_U(hw[0].order, 2);
  CHECK_EQ_U(pmpage_pool_hwpoison_pages(p, NULL, 0), 1);
  pmpage_free_pages(pmpage_pfn_to_page(pfn), 2);
  CHECK_EQ_U(pmpage_pool_stats(p, &st), 0);
  CHECK_EQ_U(st.hwpoison_pages, 0);
  CHECK_EQ_U(st.quarantined_pages, 1);
  CHECK_EQ_U(pmpage_pool_check(p), 0);
  pmpage_pool_close(p);

  /* A range over the metadata (superblock copy B) refuses the open with EIO, naming it. */
  bad[1].offset = 4096;
  bad[1].length = 512;
  errno = 0;
  CHECK(pmpage_pool_open_bad_blocks(scratch("badblocks"), bad, 2, 0) == NULL);
  CHECK_EQ_U(errno, EIO);
  CHECK(strstr(pmpage_errormsg(), "superblock copy B") != NULL);
  CHECK(pmpage_pool_open_bad_blocks(scratch("badblocks"), NULL, 1, 0) == NULL);
  CHECK_EQ_U(errno, EINVAL);
  CHECK(pmpage_pool_open_bad_blocks(scratch("badblocks"), NULL, 0, 4) == NULL);
  CHECK_EQ_U(errno, EINVAL);
  /* Nothing reports a bad block on a plain file: clearing is refused, nothing zeroed. */
  CHECK_EQ_U(pmpage_clear_bad_block(scratch("badblocks"), off, 4096), -EINVAL);
  CHECK(strstr(pmpage_errormsg(), "not inside a bad block") != NULL);
  unlink(scratch("badblocks"));
}

int main(int argc, char** argv) {
  pthread_t t;
  void* fresh = NULL;
  if (argc > 1) snprintf(g_dir, sizeof g_dir, "%s", argv[1]);
  pmpage_set_misuse_handler(record_misuse, &g_log);

  test_setup();
  test_pool_queries();
  test_orders();
  test_slots();
  test_page_api();
  test_misuse();
  test_every_failure_sets_its_own_message();
  test_adopt_pages();
  test_init_and_replace();
  test_cxx_agrees();
  test_volatile();
  test_bad_blocks();
  test_grow();
  test_default_handler_aborts();

  CHECK(strlen(pmpage_errormsg()) > 0);
  CHECK(pthread_create(&t, NULL, errormsg_thread, NULL) == 0);
  pthread_join(t, &fresh);
  CHECK(fresh == (void*)1); /* another thread has no last error */

  pmpage_set_misuse_handler(NULL, NULL); /* default restored */
  printf("test_c_api: %d checks, %d failed\n", g_checks, g_failures);
  return g_failures ? 1 : 0;
}
