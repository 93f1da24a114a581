// pool.cpp — the operations: each runs reserve (placement.cpp chooses pages) -> describe
// (memmap.cpp builds descriptors) -> record (media.cpp writes and flushes words) -> fence ->
// publish. See pool_impl.hpp for the invariants and the lock order.
//
// Durability recipe of every operation (each "fence" is one pmem_drain):
//   order 0..8 in a published split region   page map word(s)                          1 fence
//   order 0..8 needing a fresh region         zeroed map + codes | fence | SPLIT word   2 fences
//   order 9..18 alloc or free                 head region word                          1 fence
//   merge of a wholly free split region       FREE region word (placement.cpp, later)   1 fence per batch
//   alloc_pages_to      codes + owned marker (or owned region word) + owner entry | fence | slot    2 fences
//                       (a fresh region: codes | fence | SPLIT word | fence | slot: 3)
//   free_pages_from     slot = 0 | fence; then codes, owner entry (flushed, not fenced)         1 fence
//   alloc_pages_bulk_to / free_pages_bulk_from  the same for many slots      2 per <= 64 slots / 1 per list
//   adopt_pages         owner entry | fence | owned marker (or bit)                              2 fences
// DRAM is updated under the lock before an allocation's fence (nobody else can see the pages
// yet), and before a free's fence (a page freed in DRAM may be handed out again at once: its
// new owner's stores to the same words come later in coherence order, so what reaches the media
// is always a state some serial order of the operations produces).
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <new>

#include "misuse.hpp"
#include "futex.hpp"
#include "pool_impl.hpp"

namespace pmpage::detail {

// ---- public allocation entry points ------------------------------------------------------------------

bool pool_impl::forked(const char* caller) const noexcept {
  if (PMPAGE_LIKELY(g_fork_generation.load(std::memory_order_relaxed) == fork_generation_)) return false;
  report_misuse("%s: pool %s was opened by process %d and this process (%d) is a fork() child of it: a child "
                "may read the pool's memory but must not allocate, free or split (its allocator state is a "
                "stale copy of the parent's; open the pool in one process only)",
                caller, path().c_str(), opener_pid_, int(::getpid()));
  return true;
}

bool pool_impl::check_gfp(const char* caller, gfp_t gfp) const noexcept {
  if (PMPAGE_LIKELY(!(gfp & ~GFP_ZERO))) return true;
  report_misuse("%s: unknown gfp flags %#x (only GFP_ZERO is defined)", caller, gfp & ~GFP_ZERO);
  return false;
}

page* pool_impl::reserve(const char* caller, unsigned order, alloc_plan& plan, bool apply) {
  if (order > MAX_PAGE_ORDER) {
    report_misuse("%s: order %u > MAX_PAGE_ORDER (%u)", caller, order, MAX_PAGE_ORDER);
    return nullptr;
  }
  if (forked(caller)) return nullptr;
  return order < HPAGE_PMD_ORDER ? alloc_small(order, plan, apply) : alloc_large(order, apply);
}

page* pool_impl::alloc_pages(unsigned order, gfp_t gfp) noexcept {
  if (refuse_read_only("alloc_pages") || !check_gfp("alloc_pages", gfp)) return nullptr;
  if (order == 0 && mag_serial_) {  // a volatile pool: this thread's magazine (magazine.hpp)
    if (forked("alloc_pages")) return nullptr;
    if (page* p = mag_alloc()) {
      if (gfp & GFP_ZERO) zero_pages(p, 0);
      return p;
    }
    // No magazine (the thread is exiting) or no room to refill one: the ordinary path, which
    // also drains every magazine before it reports no room.
  }
  alloc_plan plan;
  page* p = reserve("alloc_pages", order, plan, /*apply=*/true);
  if (!p) return nullptr;
  if (gfp & GFP_ZERO) zero_pages(p, order);
  int e = fence();
  if (plan.nr_fresh) {
    // After a failed fence the page map under the SPLIT word may not be on the media: the word
    // stays FREE there; in DRAM the regions are published either way (they are split).
    if (PMPAGE_LIKELY(!e)) {
      write_fresh_split_words(plan);
      e = fence();
    }
    publish_fresh(plan);
  }
  if (PMPAGE_UNLIKELY(e)) return fail_alloc(p, "alloc_pages", e);
  return p;
}

page* pool_impl::fail_alloc(page* p, const char* caller, int e) noexcept {
  // Its only reference: the put frees it in DRAM and writes the free to the media (best effort:
  // that fence fails too). A reopen finds it free or allocated and named by nobody, never both.
  pmpage::put_page(p);
  note_writeback_failure(caller, e);
  return nullptr;
}

std::size_t pool_impl::alloc_pages_bulk(unsigned order, std::size_t n, page** out, gfp_t gfp) noexcept {
  if (refuse_read_only("alloc_pages_bulk")) return 0;
  if (order > MAX_PAGE_ORDER) {
    report_misuse("alloc_pages_bulk: order %u > MAX_PAGE_ORDER (%u)", order, MAX_PAGE_ORDER);
    return 0;
  }
  if (n && !out) {
    report_misuse("alloc_pages_bulk: out is null");
    return 0;
  }
  if (!check_gfp("alloc_pages_bulk", gfp) || forked("alloc_pages_bulk")) return 0;
  std::size_t done = 0;
  bool no_room = false;
  while (done < n && !no_room) {
    alloc_plan plan;
    const std::size_t first = done;
    if (order == 0) {
      done += bulk_order0(n - done, out + done, plan);
      // bulk_order0 looks in this CPU's cache, the filler and the buddy; alloc_small also takes
      // what other CPUs' caches hold (and leaves this CPU's cache holding it for the next round).
      if (done < n && !plan.fresh_full) {
        if (page* p = alloc_small(0, plan, true))
          out[done++] = p;
        else
          no_room = !plan.fresh_full;
      }
    }
    while (done < n && order > 0 && !plan.fresh_full) {
      page* p = order < HPAGE_PMD_ORDER ? alloc_small(order, plan, true) : alloc_large(order, true);
      if (!p) {
        no_room = !plan.fresh_full;  // alloc_small/alloc_large looked everywhere
        break;
      }
      out[done++] = p;
    }
    if (done > first) {
      if (gfp & GFP_ZERO)
        for (std::size_t i = first; i < done; ++i) zero_pages(out[i], order);
      int e = fence();
      if (plan.nr_fresh) {
        if (PMPAGE_LIKELY(!e)) {  // as alloc_pages
          write_fresh_split_words(plan);
          e = fence();
        }
        publish_fresh(plan);
      }
      if (PMPAGE_UNLIKELY(e)) {
        // This round's pages are not handed out; earlier rounds' fences succeeded.
        for (std::size_t i = first; i < done; ++i) pmpage::put_page(out[i]);
        done = first;
        note_writeback_failure("alloc_pages_bulk", e);
        break;
      }
    }
    // Stopped for lack of room in the plan (plan.fresh_full): the next round goes on.
  }
  return done;
}

bool pool_impl::slot_offset_valid(std::uint64_t off) const {
  if (off % 8 != 0) return false;
  const bool in_root = off >= lay_.root_offset && off - lay_.root_offset <= lay_.root_size - 8;
  const bool in_data = off >= lay_.data_offset && off - lay_.data_offset <= (nr_pages_ << PAGE_SHIFT) - 8;
  return in_root || in_data;
}

bool pool_impl::slot_range_valid(std::uint64_t off, std::uint64_t n) const {
  if (n == 0 || off % 8 != 0) return false;
  const std::uint64_t len = n * 8;
  const bool in_root = off >= lay_.root_offset && off - lay_.root_offset <= lay_.root_size - len &&
                       len <= lay_.root_size;
  const std::uint64_t data_len = nr_pages_ << PAGE_SHIFT;
  const bool in_data = off >= lay_.data_offset && len <= data_len && off - lay_.data_offset <= data_len - len;
  return in_root || in_data;
}

bool pool_impl::dest_offset(const void* slot, std::uint64_t& off) const {
  const auto a = reinterpret_cast<std::uintptr_t>(slot);
  const auto b = reinterpret_cast<std::uintptr_t>(dev_.base());
  if (a < b) return false;
  off = a - b;
  return slot_offset_valid(off);
}

bool pool_impl::slots_in_free_page(std::uint64_t off, std::uint64_t n) {
  if (off < lay_.data_offset) return false;  // the root area: always the application's
  const std::uint64_t first = (off - lay_.data_offset) >> PAGE_SHIFT, last = (off + n * 8 - 1 - lay_.data_offset) >> PAGE_SHIFT;
  for (std::uint64_t i = first; i <= last; ++i)
    if (page_count(vpage(i)) <= 0) return true;
  return false;
}

bool pool_impl::usable_slot(const char* caller, const pfn_t* p, std::uint64_t& off) noexcept {
  // The checks every single-slot call makes of its slot argument, before anything changes.
  if (!dest_offset(p, off)) {
    report_misuse("%s: slot %p is not an 8-byte aligned word of pool %s's root or data area", caller,
                  static_cast<const void*>(p), path().c_str());
    return false;
  }
  if (forked(caller)) return false;
  if (slots_in_free_page(off, 1)) {
    report_misuse("%s: slot %p lies in a free page of pool %s (memory nobody owns: the page could be handed out and "
                  "overwritten)", caller, static_cast<const void*>(p), path().c_str());
    return false;
  }
  return true;
}

page* pool_impl::alloc_pages_to(unsigned order, pfn_t* dest, gfp_t gfp, const pool::page_init* init) noexcept {
  const deferred_flush_scope flush_on_return{this};
  if (refuse_read_only("alloc_pages_to")) return nullptr;
  std::uint64_t slot = 0;
  if (!usable_slot("alloc_pages_to", dest, slot) || !check_gfp("alloc_pages_to", gfp)) return nullptr;
  if (const pfn_t old = std::atomic_ref<pfn_t>(*dest).load(std::memory_order_relaxed); old != 0) {
    report_misuse("alloc_pages_to: slot %p already holds pfn %#llx; overwriting it would leak that page "
                  "(free it with free_pages_from first, or replace it with replace_pages)",
                  static_cast<void*>(dest), (unsigned long long)old);
    return nullptr;
  }
  alloc_plan plan;
  page* p = reserve("alloc_pages_to", order, plan, /*apply=*/false);
  if (!p) return nullptr;
  page* h = holder_of_reserved(p, order);
  // Nobody else holds it yet. Owned from now, so an unbalanced put_page in the initialiser is
  // reported instead of freeing the page under us; PG_publishing follows in publish_to.
  h->flags_.fetch_or(PG_slot_owned, std::memory_order_relaxed);
  if (!fill_reserved(p, h, order, plan, gfp, init, "alloc_pages_to")) return nullptr;
  return publish_to(p, h, order, plan, dest, slot, 0, "alloc_pages_to");
}

bool pool_impl::fill_reserved(page* p, page* h, unsigned order, alloc_plan& plan, gfp_t gfp, const pool::page_init* init,
                              const char* caller) noexcept {
  if (gfp & GFP_ZERO) zero_pages(p, order);
  if (!init || !*init) return true;
  // The engine's initialiser, on a page nobody else can reach (its media words still say free),
  // with no lock held. What it writes and flushes rides in the allocation's first fence.
  int rc;
  try {
    rc = (*init)(p, page_address(p), PAGE_SIZE << order);
  } catch (...) {
    rc = -ECANCELED;  // an exception must not cross the noexcept API: treated as a refusal
  }
  if (rc == 0) return true;
  h->flags_.fetch_and(~std::uint32_t{PG_slot_owned | PG_publishing}, std::memory_order_relaxed);
  give_back_unpublished(h, plan);
  char m[256];
  std::snprintf(m, sizeof m, "pmpage: %s: %s: the initialiser refused the page (returned %d): nothing was allocated",
                path().c_str(), caller, rc);
  note_backing_failure(rc < 0 ? -rc : ECANCELED, m);  // sets errno and the C API's message
  return false;
}

// ---- replacement -----------------------------------------------------------------------------------
// replace_pages publishes a new page into a slot that owns a page and frees the old one, crash
// atomically and in alloc_pages_to's two fences: the new page is recorded allocated and owned by
// the slot (epoch 1), the slot is switched from the old pfn to the new one (epoch 2), and the old
// page is freed after that fence without one of its own. Recovery keeps whichever page the slot
// names and frees the other (both are owned by the slot: O1), so a crash leaves the old page or
// the new one, never both, never neither. The old page is claimed first, as free_pages_from
// claims it, so no other call can free, move or split it meanwhile.

page* pool_impl::replace_pages(pfn_t* dest, unsigned order, gfp_t gfp, const pool::page_init* init) noexcept {
  const deferred_flush_scope flush_on_return{this};
  if (refuse_read_only("replace_pages")) return nullptr;
  std::uint64_t slot = 0;
  if (!usable_slot("replace_pages", dest, slot) || !check_gfp("replace_pages", gfp)) return nullptr;
  const pfn_t old = std::atomic_ref<pfn_t>(*dest).load(std::memory_order_acquire);
  if (old == 0) return alloc_pages_to(order, dest, gfp, init);  // nothing to replace
  page* oh = head_named_by("replace_pages", dest, old);
  if (!oh) return nullptr;
  const std::uint64_t oindex = old - start_pfn();
  if (slot >= lay_.data_offset && ((slot - lay_.data_offset) >> PAGE_SHIFT) - oindex < (std::uint64_t{1} << load_order(oh))) {
    report_misuse("replace_pages: slot %p lies inside the page it owns (pfn %#llx): replacing would free the slot's own "
                  "memory; move the slot first", static_cast<void*>(dest), (unsigned long long)old);
    return nullptr;
  }
  wait_published(oh);  // an alloc_pages_to still publishing it finishes first (P5)
  auto refuse = [&](int err) -> page* {
    if (err == EINVAL) report_not_owner("replace_pages", dest, old, oh, oindex);
    errno = err;
    return nullptr;
  };
  if (slot_owner(oh, oindex) != slot) return refuse(EINVAL);
  // Claim the old page (count 1 -> 0), as free_pages_from does: its owner cannot change now.
  int one = 1;
  if (!oh->refcount_.compare_exchange_strong(one, 0, std::memory_order_acq_rel)) return refuse(one > 0 ? EBUSY : EINVAL);
  wait_published(oh);
  auto unclaim = [&] { oh->refcount_.fetch_add(1, std::memory_order_release); };
  if (slot_owner(oh, oindex) != slot) {
    unclaim();
    return refuse(EINVAL);
  }
  alloc_plan plan;
  page* p = reserve("replace_pages", order, plan, /*apply=*/false);
  if (!p) {
    unclaim();
    return nullptr;
  }
  page* h = holder_of_reserved(p, order);
  h->flags_.fetch_or(PG_slot_owned, std::memory_order_relaxed);  // PG_publishing: publish_to
  if (!fill_reserved(p, h, order, plan, gfp, init, "replace_pages")) {
    unclaim();
    return nullptr;
  }
  page* got = publish_to(p, h, order, plan, dest, slot, old, "replace_pages");
  if (!got) {  // the slot was rewritten behind our claim (misuse, reported), or a write-back failed
    unclaim();
    return nullptr;
  }
  // The slot durably names the new page: the old one is freed (its FREE code and cleared entry
  // flushed when this call returns; until they are durable recovery frees it: O1).
  finish_free(free_stores(oh));
  return got;
}

page* pool_impl::publish_to(page* p, page* h, unsigned order, alloc_plan& plan, pfn_t* dest, std::uint64_t slot,
                            pfn_t old, const char* caller) noexcept {
  // PG_publishing is visible to anyone who sees the pfn in the slot (the compare-and-swap below
  // releases it): P5. Set only now, after the initialiser: a put_page of its own in there would
  // wait for a publication that cannot come.
  h->flags_.fetch_or(PG_publishing, std::memory_order_relaxed);
  // Epoch 1: the page allocated and owned by the slot (page map or region word, owner entry),
  // with whatever the caller wrote into it, durable before the slot can name it. A crash from
  // here until the slot's store is durable finds an allocated page whose owner slot does not
  // name it: recovery frees it (O1).
  apply_alloc(p, order, slot);
  int e = fence();  // 1
  if (plan.nr_fresh) {
    // A region this call split fresh: its SPLIT word is durable before any slot names a page in
    // it (a slot naming a page of a FREE region would dangle). Others may use it from now on.
    // After a failed fence the word stays FREE on the media (alloc_pages does the same).
    if (PMPAGE_LIKELY(!e)) {
      write_fresh_split_words(plan);
      e = fence();
    }
    publish_fresh(plan);
  }
  if (PMPAGE_UNLIKELY(e)) {  // never published: given back like a lost race's page
    give_back_lost(h);
    note_writeback_failure(caller, e);
    return nullptr;
  }
  // Publishing claims the slot atomically: of two calls racing for one empty slot, one wins and
  // the other gives its page back (give_back_lost). A replacement expects the page it replaces.
  const pfn_t pfn = pfn_of_index(std::uint64_t(p - vmemmap_));
  pfn_t expected = old;
  if (!std::atomic_ref<pfn_t>(*dest).compare_exchange_strong(expected, pfn, std::memory_order_acq_rel)) {
    give_back_lost(h);
    report_misuse("%s: slot %p was filled (pfn %#llx) by a concurrent call; the page this call allocated was "
                  "freed again", caller, static_cast<void*>(dest), (unsigned long long)expected);
    return nullptr;
  }
  flush_now(dest, sizeof *dest);
  e = fence();  // 2: the slot names the page
  if (PMPAGE_UNLIKELY(e)) {
    // The slot's store may not be durable: the allocation is not handed out. Others who read the
    // slot meanwhile wait for PG_publishing (P5), so the slot is restored before they act; the
    // media keep whichever state reached them (recovery frees the page the slot does not name).
    std::atomic_ref<pfn_t>(*dest).store(old, std::memory_order_release);
    flush_now(dest, sizeof *dest);
    give_back_lost(h);
    note_writeback_failure(caller, e);
    return nullptr;
  }
  end_publication(h);
  return p;
}

page* pool_impl::holder_of_reserved(page* p, unsigned order) const {
  const std::uint64_t index = std::uint64_t(p - vmemmap_);
  return order >= HPAGE_PMD_ORDER ? region_desc(std::uint32_t(index >> HPAGE_PMD_ORDER)) : p;
}

void pool_impl::give_back_lost(page* h) {
  // The slot went to a concurrent call. This page is recorded allocated and owned by that slot
  // on the media, but was never published: nobody else can reach it. It is freed like a page its
  // slot freed, with no fence of its own: until its FREE code is durable, a crash finds it owned
  // by a slot that names another page (or 0), and recovery frees it (O1).
  // Claim it as free_pages_from does (count 1 -> 0); a speculative get_page_unless_zero may hold
  // another reference, and then its put_page frees it (release): its owned state must go first
  // (a put of an owned page is refused), so its media record goes with it now.
  // The claim comes before the publication mark goes: a call that saw the page in its slot
  // (publish_to's failed second fence restores the slot) and waits for the mark must then find
  // the page claimed, never claim it and clear a slot that names another page again.
  auto end_mark = [h] {
    const std::uint32_t was = h->flags_.fetch_and(~(PG_publishing | PG_publish_waiters), std::memory_order_release);
    if (was & PG_publish_waiters) futex_wake_all(&h->flags_);
  };
  int one = 1;
  if (h->refcount_.compare_exchange_strong(one, 0, std::memory_order_acq_rel)) {
    end_mark();
    finish_free(free_stores(h));
    return;
  }
  drop_owner_record(h);
  h->flags_.fetch_and(~std::uint32_t{PG_slot_owned}, std::memory_order_relaxed);
  end_mark();
  if (h->refcount_.fetch_sub(1, std::memory_order_acq_rel) == 1) release(h);
}

void pool_impl::drop_owner_record(page* h) {
  if (is_region_desc(h)) {
    const auto r = std::uint32_t(h - regions_);
    persist_word(region_word(r), make_region_word(region_state::head, load_order(h)));
    persist_word(owner_entry(std::uint64_t(r) << HPAGE_PMD_ORDER), 0);
    return;
  }
  const auto index = std::uint64_t(h - vmemmap_);
  const auto r = std::uint32_t(index >> HPAGE_PMD_ORDER);
  const unsigned first = unsigned(index & (HPAGE_PMD_NR - 1)), order = load_order(h);
  split_state& s = sstate(r);
  adaptive_mutex& m = lock_region(s);
  set_map_owned(s.map, first, order, false);
  write_map_locked(r, owned_marker_at(first, order) / PAGES_PER_MAP_WORD, owned_marker_at(first, order) / PAGES_PER_MAP_WORD);
  m.unlock();
  persist_word(owner_entry(index), 0);
}

// ---- publication ---------------------------------------------------------------------------------------
// A page a slot call publishes is reachable the moment the compare-and-swap fills the slot, one
// fence before the call returns. It carries PG_publishing until then, and every operation that
// can act on a slot-owned page waits for the mark to clear before it acts. For a bulk call the
// mark covers its live intent: recovery replays an intent from what the media says of its slot
// and page, which is right only while no other operation has touched them since, so the other
// operation's first fence must come after the retirement is pending (issue #18, defect 0). For
// alloc_pages_to and replace_pages (no intent) it keeps the others from acting on a publication
// whose slot store may not be durable yet: move_pages_owner and split_huge_page_to write intents
// that name the slot. The wait is the publisher's last fence at most; the publisher waits for
// nobody.

void pool_impl::end_publication(page* h) noexcept {
  // Release: whoever sees the mark clear also sees the retirement pending (intent_log.hpp).
  const std::uint32_t was = h->flags_.fetch_and(~(PG_publishing | PG_publish_waiters), std::memory_order_release);
  if (was & PG_publish_waiters) futex_wake_all(&h->flags_);
}

void pool_impl::wait_published(page* h) const noexcept {
  if (PMPAGE_LIKELY(!(h->flags_.load(std::memory_order_acquire) & PG_publishing))) return;
  if (g_fork_generation.load(std::memory_order_relaxed) != fork_generation_) return;
  // Spin briefly (the publisher is one fence away), then sleep on the flags word: a waiter that
  // only yielded would compete for the CPU with a preempted publisher (adaptive_mutex.hpp).
  for (unsigned spins = 0;; ++spins) {
    std::uint32_t f = h->flags_.load(std::memory_order_acquire);
    if (!(f & PG_publishing)) return;
    if (spins < 128) {
#if defined(__x86_64__) || defined(__i386__)
      __builtin_ia32_pause();
#endif
      continue;
    }
    if (!(f & PG_publish_waiters)) {
      if (!h->flags_.compare_exchange_weak(f, f | PG_publish_waiters, std::memory_order_acquire)) continue;
      f |= PG_publish_waiters;
    }
    futex_wait(&h->flags_, f);  // shared futex (futex.hpp); the loop re-reads with acquire
  }
}

void pool_impl::give_back_unpublished(page* h, alloc_plan& plan) {
  // A reserved page its caller never recorded on the media (its words still say free) and never
  // published. Claim it as free_pages_from does (count 1 -> 0); a speculative
  // get_page_unless_zero may hold another reference, and then its put_page frees it (release):
  // the media says free either way, so that free writes nothing that matters and nothing leaks.
  int one = 1;
  const bool claimed = h->refcount_.compare_exchange_strong(one, 0, std::memory_order_acq_rel);
  const free_result stored = claimed ? free_stores(h, /*release_now=*/false) : free_result{};
  // A region this call split fresh is published like any other: its zeroed map durable, then its
  // SPLIT word behind a fence of its own (alloc_pages); others may allocate from it from then on.
  if (plan.nr_fresh) {
    fence();
    write_fresh_split_words(plan);
    fence();
    publish_fresh(plan);
  }
  if (claimed)
    finish_free(release_freed(stored));
  else if (h->refcount_.fetch_sub(1, std::memory_order_acq_rel) == 1)
    release(h);
}

// ---- freeing -------------------------------------------------------------------------------------------

free_result pool_impl::free_stores(page* holder, bool release_now) {
  free_result fr;
  const bool owned = holder->flags_.load(std::memory_order_relaxed) & PG_slot_owned;
  if (is_region_desc(holder)) {
    const auto r = std::uint32_t(holder - regions_);
    const unsigned order = load_order(holder);
    // The entry counts only under the owned bit (O1): it stays, stale (a raw one is cleared).
    if (owned) forget_owner(std::uint64_t(r) << HPAGE_PMD_ORDER);
    persist_word(region_word(r), make_region_word(region_state::free));
    fr.region = r;
    fr.order = order;
    fr.large = true;
    if (!release_now) {
      fr.kind = free_result::deferred;
      return fr;
    }
    return release_freed(fr);
  }
  const auto index = std::uint64_t(holder - vmemmap_);
  const auto r = std::uint32_t(index >> HPAGE_PMD_ORDER);
  const unsigned first = unsigned(index & (HPAGE_PMD_NR - 1));
  const unsigned order = load_order(holder);
  const unsigned n = 1u << order;
  // The page is ours alone until it is marked free: its descriptors first. Its owner entry stays
  // as it is (O1): it counts only under the owned marker, which the FREE codes clear, so the
  // free writes back no owner-table line (a raw entry is cleared: it would count without one).
  if (owned) forget_owner(index);
  for (unsigned j = 1; j < n; ++j) store_compound_head(holder + j, 0);
  store_order(holder, 0);
  holder->private_.store(0, std::memory_order_relaxed);
  holder->flags_.store(0, std::memory_order_release);
  fr.region = r;
  fr.order = order;
  fr.first = first;
  split_state& s = sstate(r);  // stays: the region holds our page, so it cannot merge
  adaptive_mutex& m = lock_region(s);
  // The media (and its mirror, S5) say free now; the bitmap still says used, so no allocation
  // can take the page until release_freed: a deferred release keeps it ours across a fence.
  for_each_map_word(first, order, false, [&](unsigned w, std::uint64_t mask, std::uint64_t) { s.map[w] &= ~mask; });
  write_map_locked(r, first / PAGES_PER_MAP_WORD, (first + n - 1) / PAGES_PER_MAP_WORD);
  if (!release_now) {
    m.unlock();
    fr.kind = free_result::deferred;
    return fr;
  }
  release_small_held(s, fr);
  m.unlock();
  return fr;
}

void pool_impl::release_small_held(split_state& s, free_result& fr) {
  mark_free(s, fr.first, 1u << fr.order);
  // A poisoned allocation's bad pages stay out of the allocator (badblocks.cpp, Q2).
  const std::int64_t freed = (std::int64_t{1} << fr.order) -
                             (PMPAGE_UNLIKELY(s.has_bad) ? hold_bad_pages(s, fr.first, 1u << fr.order) : 0);
  // A free into this CPU's own cached region holds that cache's mu (the region lock, S6): a plain
  // add. Any other free (a remote free, a region no cache holds): this CPU's atomic counter.
  cpu_cache& mine = this_cpu_cache();
  if (s.cpu == mine.index)
    mine.add_free_delta(freed);
  else
    mine.remote_delta.fetch_add(freed, std::memory_order_relaxed);
  fr.kind = free_result::done;
  if (s.cpu == NO_CPU) {
    // No cache holds it: its filler list, or the empty list, may need it (pool lock, after the
    // fence). Its room only grows until a cache takes it, so that is rare.
    filler::refresh_longest(s, filler::change::freed);
    if (filler::target_list(s) != s.list || s.nr_free == HPAGE_PMD_NR) fr.kind = free_result::refile;
  }
}

free_result pool_impl::release_freed(free_result fr) {
  if (!fr.large) {
    split_state& s = sstate(fr.region);
    adaptive_mutex& m = lock_region(s);
    release_small_held(s, fr);
    m.unlock();
    return fr;
  }
  {
    const std::uint32_t r = fr.region, n = 1u << (fr.order - HPAGE_PMD_ORDER);
    // The regions are ours alone until finish_free hands them to a stash or the buddy.
    for (std::uint32_t i = 0; i < n; ++i) {
      page& d = regions_[r + i];
      d.flags_.store(0, std::memory_order_release);
      d.refcount_.store(0, std::memory_order_relaxed);
      d.private_.store(0, std::memory_order_relaxed);
      store_kind(d, RK_FREE_INNER);
      store_order(&d, 0);
      store_head_index(&d, 0);
    }
    fr.kind = free_result::return_large;
    return fr;
  }
}

void pool_impl::finish_free(const free_result& fr) {
  if (fr.kind == free_result::refile) {
    refile(fr.region);
  } else if (fr.kind == free_result::return_large) {
    const std::uint32_t n = 1u << (fr.order - HPAGE_PMD_ORDER);
    if (PMPAGE_UNLIKELY(has_bad_region(fr.region, n))) {
      // A poisoned large page: its bad regions are held out whole (Q1), the others go to the
      // buddy one by one (merging among themselves and with free neighbours, never across a
      // quarantined region), never to a stash, which would hand the block out whole.
      std::lock_guard g(core_->mu);
      for (std::uint32_t t = fr.region; t < fr.region + n; ++t) {
        if (bad_bits_of(t)) {
          quarantine_region_locked(t);
          continue;
        }
        buddy_.free(t, HPAGE_PMD_ORDER);
        core_->free_pages += HPAGE_PMD_NR;
      }
      return;
    }
    // R1: a stash hands its blocks out without a reservation check, so it takes only reserved
    // ones (an allocation loaded at open is not known to be; the buddy path reserves it).
    if (fr.order - HPAGE_PMD_ORDER < cpu_cache::STASH_ORDERS &&
        backing_.reserved(fr.region, 1u << (fr.order - HPAGE_PMD_ORDER))) {
      cpu_cache& c = this_cpu_cache();
      std::lock_guard gc(c.mu);
      unsigned& nr = c.nr_stash[fr.order - HPAGE_PMD_ORDER];
      if (nr < cpu_cache::STASH_MAX) {
        page& d = regions_[fr.region];
        store_order(&d, fr.order);
        store_kind(d, RK_STASHED);
        c.stash[fr.order - HPAGE_PMD_ORDER][nr++] = fr.region;
        c.add_free_delta(std::int64_t{1} << fr.order);
        return;
      }
    }
    merge_batch mb;
    {
      std::lock_guard g(core_->mu);
      buddy_.free(fr.region, fr.order);
      core_->free_pages += std::uint64_t{1} << fr.order;
      sweep_locked(mb, false);
    }
    finish_merges(mb);
  }
}

void pool_impl::prefetch_map_line(const page* holder) const {
  // The previous operation's flush may have evicted the page-map line this free will store to;
  // start fetching it before taking the lock, so the lock is not held across that miss.
  if (is_region_desc(holder)) return;
  const auto index = std::uint64_t(holder - vmemmap_);
  __builtin_prefetch(page_map(std::uint32_t(index >> HPAGE_PMD_ORDER)) +
                         (index & (HPAGE_PMD_NR - 1)) / PAGES_PER_MAP_WORD, 1);
}

// ---- orphaned owned pages -----------------------------------------------------------------------
// A slot-owned page's last reference is its slot's, dropped only by free_pages_from on that slot.
// But the slot may be gone: the engine freed the page that held it (a page-table page freed with
// live entries) or overwrote it by hand. Then nothing can free the page through its slot, and a
// persistent pool drops such owners at its next open (recovery.cpp, stats().orphaned_owners).
// A volatile pool is never reopened, and a persistent one should not need to be: so put_page /
// free_pages of the last reference of a page whose owning slot is void drops the ownership the
// same way, now, and frees the page. A void slot: outside the root and data areas, in a free
// page, or not naming the page.

std::uint64_t pool_impl::head_index(page* holder) const {
  return is_region_desc(holder) ? std::uint64_t(holder - regions_) << HPAGE_PMD_ORDER : std::uint64_t(holder - vmemmap_);
}

bool pool_impl::owner_is_void(page* holder, std::uint64_t index) {
  const std::uint64_t off = slot_owner(holder, index);
  if (off == 0) return false;  // not owned (any more): nothing to drop
  if (!slot_offset_valid(off)) return true;
  const pfn_t named = std::atomic_ref<pfn_t>(*reinterpret_cast<pfn_t*>(dev_.base() + off)).load(std::memory_order_acquire);
  return named != pfn_of_index(index) || slots_in_free_page(off, 1);
}

void pool_impl::release_orphan(page* holder, std::uint64_t index) noexcept {
  // The count is 0 and ours (claimed): the owner cannot change under us (pool_impl.hpp, O3).
  if (refuse_read_only("put_page/free_pages (the last reference: the page would be freed)") ||
      forked("put_page (last reference)")) {
    holder->refcount_.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  const std::uint64_t slot = slot_owner(holder, index);
  // Drop the owner, then free, each behind its fence. A crash in between leaves an allocated
  // page owned by nobody, which open keeps and check_slots lists as unreferenced (what open makes
  // of a void owner anyway); the other order could leave a free page that a stale slot in freed
  // memory still names beside its owner entry, which the offline checker must call damage. A
  // large page's ownership is its region word's owned bit (its entry counts only under it), so
  // that bit goes first. The page stays ours (count 0, bitmap used) until release_freed.
  if (is_region_desc(holder)) {
    const auto r = std::uint32_t(index >> HPAGE_PMD_ORDER);
    persist_word(region_word(r), make_region_word(region_state::head, load_order(holder)));
    fence();
    persist_word(owner_entry(index), 0);  // meaningless now: cleared with the free's epoch
  } else {
    persist_word(owner_entry(index), 0);
    fence();
  }
  holder->flags_.fetch_and(~std::uint32_t{PG_slot_owned}, std::memory_order_relaxed);
  free_result fr = free_stores(holder, /*release_now=*/false);
  fence();
  {
    std::lock_guard g(core_->mu);
    ++core_->orphaned;
  }
  char line[200];
  std::snprintf(line, sizeof line,
                "owner record of pfn %#llx dropped at its last put: its slot at device offset %#llx was void (in "
                "freed memory or overwritten); the page was freed",
                (unsigned long long)pfn_of_index(index), (unsigned long long)slot);
  note_repair(line);
  finish_free(release_freed(fr));
}

void pool_impl::report_owned_release(page* p, page* holder) noexcept {
  // The count reached 0 (a put raced past the inline check): the page is claimed.
  wait_published(holder);  // its owner is recorded and its intent retiring before we judge it (P5)
  const std::uint64_t index = head_index(holder);
  if (owner_is_void(holder, index)) return release_orphan(holder, index);
  holder->refcount_.fetch_add(1, std::memory_order_relaxed);  // the slot's reference stays
  report_owned(p, holder);
}

void pool_impl::report_owned(page* p, page* holder) noexcept {
  wait_published(holder);  // as report_owned_release (P5)
  const std::uint64_t index = head_index(holder);
  if (owner_is_void(holder, index)) {
    // Claim the page as free_pages_from does (count 1 -> 0), then look again: the slot may have
    // been written meanwhile. Until the claim the count is untouched, so nobody sees a 0 here.
    int one = 1;
    if (!holder->refcount_.compare_exchange_strong(one, 0, std::memory_order_acq_rel)) {
      pmpage::put_page(p);  // the count moved (a reference taken or dropped): put it again
      return;
    }
    if (owner_is_void(holder, index)) return release_orphan(holder, index);
    holder->refcount_.fetch_add(1, std::memory_order_relaxed);
  }
  const std::uint64_t owner = slot_owner(holder, index);
  report_misuse("put_page/free_pages would free pfn %#llx, which the slot at %p owns (alloc_pages_to): a slot's "
                "reference is dropped only by free_pages_from on that slot (unbalanced put_page?)",
                (unsigned long long)page_to_pfn(p), static_cast<void*>(dev_.base() + owner));
}

void pool_impl::release(page* holder) noexcept {
  if (refuse_read_only("put_page/free_pages (the last reference: the page would be freed)") ||
      forked("put_page (last reference)")) {
    holder->refcount_.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  // A volatile pool's order-0 page goes to this thread's magazine (magazine.hpp); a poisoned one
  // goes back to its region, which holds its bad page out (Q2).
  if (mag_serial_ && !is_region_desc(holder) && load_order(holder) == 0 &&
      !(holder->flags_.load(std::memory_order_relaxed) & PG_hwpoison) && mag_free(holder))
    return;
  prefetch_map_line(holder);
  const free_result fr = free_stores(holder);
  const int e = fence();
  // A failed fence still completes the free in DRAM (the page is unreachable to the caller, who
  // dropped its last reference); the error is reported and latched (put_page returns nothing).
  finish_free(fr);
  if (PMPAGE_UNLIKELY(e)) note_writeback_failure("put_page/free_pages", e);
}

std::uint64_t pool_impl::slot_owner(page* h, std::uint64_t index) const {
  // The owner entry counts only on an owned head (a large page's entry is stale unless owned).
  return (h->flags_.load(std::memory_order_relaxed) & PG_slot_owned) ? decode_owner(index, load_word(owner_entry(index))) : 0;
}

int pool_impl::report_not_owner(const char* caller, const pfn_t* slot, pfn_t pfn, page* h, std::uint64_t index) {
  const std::uint64_t owner = slot_owner(h, index);
  if (h->refcount_.load(std::memory_order_relaxed) <= 0)
    report_misuse("%s: slot %p holds pfn %#llx, which is not allocated (dangling slot)", caller,
                  static_cast<const void*>(slot), (unsigned long long)pfn);
  else if (owner == 0)
    report_misuse("%s: slot %p does not own pfn %#llx, which no slot owns (allocated with alloc_pages or split "
                  "from an unowned page): drop it with put_page/free_pages, or make the slot its owner with "
                  "adopt_pages", caller, static_cast<const void*>(slot), (unsigned long long)pfn);
  else
    report_misuse("%s: slot %p does not own pfn %#llx: the slot at %p owns that page (a copy of a pfn must not "
                  "free or move it)", caller, static_cast<const void*>(slot), (unsigned long long)pfn,
                  static_cast<void*>(dev_.base() + owner));
  return -EINVAL;
}

page* pool_impl::head_named_by(const char* caller, const pfn_t* slot, pfn_t pfn) {
  if (pfn < start_pfn() || pfn >= end_pfn()) {
    report_misuse("%s: slot %p holds pfn %#llx, not a page of pool %s", caller, static_cast<const void*>(slot),
                  (unsigned long long)pfn, path().c_str());
    return nullptr;
  }
  page* p = vpage(pfn - start_pfn());
  page* h = state_holder(p);  // reports a page it cannot resolve itself
  if (h && compound_head(p) != p) {
    report_misuse("%s: slot %p holds pfn %#llx, a tail page, not the head of an allocation", caller,
                  static_cast<const void*>(slot), (unsigned long long)pfn);
    return nullptr;
  }
  return h;
}

int pool_impl::free_pages_from(pfn_t* src) noexcept {
  const deferred_flush_scope flush_on_return{this};  // the lazy retirement's flush, after our locks
  if (refuse_read_only("free_pages_from")) return -EROFS;
  std::uint64_t slot = 0;
  if (!usable_slot("free_pages_from", src, slot)) return -EINVAL;
  // Acquire: a page published there is seen with its PG_publishing mark (P5).
  const pfn_t pfn = std::atomic_ref<pfn_t>(*src).load(std::memory_order_acquire);
  if (pfn == 0) return 0;  // an empty slot: the kernel's kfree(NULL) / free_pages(0, order)
  page* h = head_named_by("free_pages_from", src, pfn);
  if (!h) return -EINVAL;
  // An alloc_pages_to that published this page finishes first (P5): then its owner entry is
  // recorded, and its intent's retirement is pending, so our first fence makes it durable.
  wait_published(h);
  // Ownership first, so a wrong slot is reported even while other references make the free
  // -EBUSY; checked again once the page is claimed (it cannot change after that).
  const std::uint64_t index = pfn - start_pfn();
  if (const std::uint64_t owner = slot_owner(h, index); owner != slot) {
    // Owned but no owner recorded yet: an alloc_pages_to republished the page into this slot
    // since our wait (freed and allocated again meanwhile). Not a misuse; retry once it returns.
    if (owner == 0 && (h->flags_.load(std::memory_order_acquire) & PG_slot_owned)) return -EBUSY;
    return report_not_owner("free_pages_from", src, pfn, h, index);
  }
  // Claim the page: from here no other free can reach it, so its ownership cannot change under us.
  int expected = 1;
  if (!h->refcount_.compare_exchange_strong(expected, 0, std::memory_order_acq_rel)) {
    if (expected > 0) return -EBUSY;
    return report_not_owner("free_pages_from", src, pfn, h, index);  // freed meanwhile: dangling
  }
  wait_published(h);  // republished between the wait above and the claim (rare; P5)
  if (slot_owner(h, index) != slot) {  // changed between the check and the claim: a race
    h->refcount_.fetch_add(1, std::memory_order_relaxed);
    return report_not_owner("free_pages_from", src, pfn, h, index);
  }
  prefetch_map_line(h);
  // The one epoch: the slot cleared, durable before the page map (or region word) can say free,
  // so no crash ever finds the slot naming a free page. Until the FREE code is durable (this
  // thread's next fence, or never), recovery finds an allocated page owned by a slot that holds
  // 0 and frees it (O1 rule 2): the free is complete from the fence on. The slot is cleared
  // before the page is freed in DRAM: it may lie inside the page (a table page that owns itself).
  std::atomic_ref<pfn_t>(*src).store(0, std::memory_order_relaxed);
  flush_now(src, sizeof *src);
  const int e = fence();
  // The FREE code and the cleared owner entry: flushed when this call returns, made durable by
  // this thread's next fence (or by recovery, which frees an owned page its slot does not name).
  finish_free(free_stores(h));
  if (PMPAGE_UNLIKELY(e)) {  // freed in DRAM as the kernel's free would; the caller learns it
    note_writeback_failure("free_pages_from", e);
    return -e;
  }
  return 0;
}

// ---- bulk slot calls -----------------------------------------------------------------------------------
// alloc_pages_bulk_to / free_pages_bulk_from are alloc_pages_to / free_pages_from for many slots
// at once, sharing the fences: the same slot protocol (publish_to, free_pages_from), one epoch
// for all the slots of a batch. Each page's own words and its slot decide its crash outcome, so
// a crash leaves every slot before or after, independently. alloc_pages_bulk_to: every page
// recorded allocated and owned | fence | every slot | fence, per batch of up to BULK_BATCH slots
// (the stack arrays); free_pages_bulk_from: every slot 0 | fence, for the whole list.

namespace {
/// A slot listed twice, or nullptr. Sorted copy for long lists (pairwise when that cannot be had).
pfn_t* first_duplicate(std::span<pfn_t* const> slots) noexcept {
  const std::size_t n = slots.size();
  if (n > 32) {
    std::unique_ptr<pfn_t*[]> sorted(new (std::nothrow) pfn_t*[n]);
    if (sorted) {
      std::copy(slots.begin(), slots.end(), sorted.get());
      std::sort(sorted.get(), sorted.get() + n, std::less<pfn_t*>());
      pfn_t** it = std::adjacent_find(sorted.get(), sorted.get() + n);
      return it == sorted.get() + n ? nullptr : *it;
    }
  }
  for (std::size_t i = 1; i < n; ++i)
    for (std::size_t j = 0; j < i; ++j)
      if (slots[i] == slots[j]) return slots[i];
  return nullptr;
}
}  // namespace

std::size_t pool_impl::alloc_pages_bulk_to(unsigned order, std::span<pfn_t* const> dests, gfp_t gfp) noexcept {
  const deferred_flush_scope flush_on_return{this};  // the given-back pages' flushes, after our locks
  if (refuse_read_only("alloc_pages_bulk_to")) return 0;
  if (order > MAX_PAGE_ORDER) {
    report_misuse("alloc_pages_bulk_to: order %u > MAX_PAGE_ORDER (%u)", order, MAX_PAGE_ORDER);
    return 0;
  }
  if (!check_gfp("alloc_pages_bulk_to", gfp) || forked("alloc_pages_bulk_to")) return 0;
  // Every slot is checked before anything changes: a misused list is refused whole.
  for (std::size_t i = 0; i < dests.size(); ++i) {
    pfn_t* dest = dests[i];
    std::uint64_t slot = 0;
    if (!dest_offset(dest, slot)) {
      report_misuse("alloc_pages_bulk_to: dests[%zu] (%p) is not an 8-byte aligned word of pool %s's root or data "
                    "area; nothing was allocated", i, static_cast<void*>(dest), path().c_str());
      return 0;
    }
    if (slots_in_free_page(slot, 1)) {
      report_misuse("alloc_pages_bulk_to: dests[%zu] (%p) lies in a free page of pool %s; nothing was allocated", i,
                    static_cast<void*>(dest), path().c_str());
      return 0;
    }
    if (const pfn_t old = std::atomic_ref<pfn_t>(*dest).load(std::memory_order_relaxed); old != 0) {
      report_misuse("alloc_pages_bulk_to: dests[%zu] (%p) already holds pfn %#llx; overwriting it would leak that "
                    "page; nothing was allocated", i, static_cast<void*>(dest), (unsigned long long)old);
      return 0;
    }
  }
  if (pfn_t* dup = first_duplicate(dests)) {
    report_misuse("alloc_pages_bulk_to: slot %p is listed twice; nothing was allocated", static_cast<void*>(dup));
    return 0;
  }
  std::size_t done = 0;
  while (done < dests.size()) {
    bool stop = false;
    done += alloc_to_batch(order, dests.subspan(done), gfp, stop);
    if (stop) break;
  }
  return done;
}

std::size_t pool_impl::alloc_to_batch(unsigned order, std::span<pfn_t* const> dests, gfp_t gfp, bool& stop) noexcept {
  const unsigned want = unsigned(std::min<std::size_t>(dests.size(), BULK_BATCH));
  alloc_plan plan;
  page* pages[BULK_BATCH];
  unsigned n = 0;
  while (n < want) {
    page* p = reserve("alloc_pages_bulk_to", order, plan, /*apply=*/false);
    if (!p) break;
    pages[n++] = p;
  }
  // Short for lack of room in the plan (MAX_FRESH fresh regions): the next batch goes on.
  // Short for lack of room in the pool: the call ends with what it has.
  if (n < want && (!plan.fresh_full || n == 0)) stop = true;
  if (n == 0) return 0;
  std::uint64_t slots[BULK_BATCH];
  page* holders[BULK_BATCH];
  for (unsigned i = 0; i < n; ++i) {
    dest_offset(dests[i], slots[i]);  // checked by our caller
    holders[i] = holder_of_reserved(pages[i], order);
    holders[i]->flags_.fetch_or(PG_slot_owned | PG_publishing, std::memory_order_relaxed);  // nobody else holds it yet
    if (gfp & GFP_ZERO) zero_pages(pages[i], order);
    apply_alloc(pages[i], order, slots[i]);
  }
  // 1: every page recorded allocated and owned before its slot can name it (publish_to).
  int e = fence();
  if (plan.nr_fresh) {
    if (PMPAGE_LIKELY(!e)) {
      write_fresh_split_words(plan);
      e = fence();
    }
    publish_fresh(plan);
  }
  if (PMPAGE_UNLIKELY(e)) {
    for (unsigned i = 0; i < n; ++i) give_back_lost(holders[i]);
    note_writeback_failure("alloc_pages_bulk_to", e);
    stop = true;
    return 0;
  }
  // Claim the slots in list order; the first one a concurrent call filled since our check ends
  // the call there, so the slots filled are always a prefix of the list (the pages reserved for
  // it and the slots after it are given back, as publish_to's loser does).
  unsigned published = 0;
  pfn_t lost_to = 0;
  for (; published < n; ++published) {
    pfn_t expected = 0;
    const pfn_t pfn = pfn_of_index(std::uint64_t(pages[published] - vmemmap_));
    if (!std::atomic_ref<pfn_t>(*dests[published]).compare_exchange_strong(expected, pfn, std::memory_order_acq_rel)) {
      lost_to = expected;
      break;
    }
    flush_now(dests[published], sizeof(pfn_t));
  }
  e = fence();  // 2: each claimed slot names its page
  if (PMPAGE_UNLIKELY(e)) {
    for (unsigned i = 0; i < published; ++i) {
      std::atomic_ref<pfn_t>(*dests[i]).store(0, std::memory_order_release);
      flush_now(dests[i], sizeof(pfn_t));
    }
    for (unsigned i = 0; i < n; ++i) give_back_lost(holders[i]);
    note_writeback_failure("alloc_pages_bulk_to", e);
    stop = true;
    return 0;
  }
  for (unsigned i = 0; i < published; ++i) end_publication(holders[i]);  // P5
  if (published < n) {
    for (unsigned i = published; i < n; ++i) give_back_lost(holders[i]);
    report_misuse("alloc_pages_bulk_to: slot %p was filled (pfn %#llx) by a concurrent call; the slots before it "
                  "were filled, it and the rest were not", static_cast<void*>(dests[published]),
                  (unsigned long long)lost_to);
    stop = true;
  }
  return published;
}

int pool_impl::free_pages_bulk_from(std::span<pfn_t* const> srcs) noexcept {
  const deferred_flush_scope flush_on_return{this};  // the frees' flushes, after our locks
  if (refuse_read_only("free_pages_bulk_from")) return -EROFS;
  if (forked("free_pages_bulk_from")) return -EINVAL;
  // What each slot named when it was checked (0: empty, skipped). Everything after the check
  // works from this copy, never from the slots again: a concurrent alloc_pages_to may fill a slot
  // that was empty, and that page is not ours to claim or free (it is the call after ours).
  std::unique_ptr<pfn_t[]> seen(new (std::nothrow) pfn_t[srcs.size()]);
  if (!seen && !srcs.empty()) return -ENOMEM;
  // 1. Every slot is checked as free_pages_from checks it, before anything changes: a misused
  //    list is refused whole (-EINVAL), and a busy page makes the whole call -EBUSY.
  bool busy = false;
  for (std::size_t i = 0; i < srcs.size(); ++i) {
    pfn_t* src = srcs[i];
    seen[i] = 0;
    std::uint64_t slot = 0;
    if (!dest_offset(src, slot)) {
      report_misuse("free_pages_bulk_from: srcs[%zu] (%p) is not an 8-byte aligned word of pool %s's root or data "
                    "area; nothing was freed", i, static_cast<void*>(src), path().c_str());
      return -EINVAL;
    }
    if (slots_in_free_page(slot, 1)) {
      report_misuse("free_pages_bulk_from: srcs[%zu] (%p) lies in a free page of pool %s; nothing was freed", i,
                    static_cast<void*>(src), path().c_str());
      return -EINVAL;
    }
    const pfn_t pfn = std::atomic_ref<pfn_t>(*src).load(std::memory_order_acquire);  // with PG_publishing (P5)
    if (pfn == 0) continue;  // empty: skipped
    if (pfn < start_pfn() || pfn >= end_pfn()) {
      report_misuse("free_pages_bulk_from: srcs[%zu] (%p) holds pfn %#llx, not a page of pool %s; nothing was freed",
                    i, static_cast<void*>(src), (unsigned long long)pfn, path().c_str());
      return -EINVAL;
    }
    page* p = vpage(pfn - start_pfn());
    page* h = state_holder(p);
    if (!h) return -EINVAL;
    if (compound_head(p) != p) {
      report_misuse("free_pages_bulk_from: srcs[%zu] (%p) holds pfn %#llx, a tail page, not the head of an "
                    "allocation; nothing was freed", i, static_cast<void*>(src), (unsigned long long)pfn);
      return -EINVAL;
    }
    wait_published(h);  // as free_pages_from (P5)
    const std::uint64_t index = pfn - start_pfn();
    if (const std::uint64_t owner = slot_owner(h, index); owner != slot) {
      // An alloc_pages_to into this slot still publishing (free_pages_from): not a misuse.
      if (owner == 0 && (h->flags_.load(std::memory_order_acquire) & PG_slot_owned)) {
        busy = true;
        continue;
      }
      return report_not_owner("free_pages_bulk_from", src, pfn, h, index);
    }
    const int count = h->refcount_.load(std::memory_order_relaxed);
    if (count <= 0) return report_not_owner("free_pages_bulk_from", src, pfn, h, index);
    if (count > 1) busy = true;
    seen[i] = pfn;
  }
  if (pfn_t* dup = first_duplicate(srcs)) {
    report_misuse("free_pages_bulk_from: slot %p is listed twice; nothing was freed", static_cast<void*>(dup));
    return -EINVAL;
  }
  if (busy) return -EBUSY;
  auto holder = [&](std::size_t i) { return state_holder(vpage(seen[i] - start_pfn())); };
  // 2. Claim every page (count 1 -> 0, as free_pages_from does): from here no other free, move or
  //    split can reach them, so their owners cannot change, and the slots keep naming them. Any
  //    failure gives back exactly the claims made.
  auto unclaim = [&](std::size_t upto) {
    for (std::size_t j = 0; j < upto; ++j)
      if (seen[j]) holder(j)->refcount_.fetch_add(1, std::memory_order_relaxed);
  };
  for (std::size_t i = 0; i < srcs.size(); ++i) {
    if (!seen[i]) continue;
    page* h = holder(i);
    const std::uint64_t index = seen[i] - start_pfn();
    std::uint64_t slot = 0;
    dest_offset(srcs[i], slot);
    int expected = 1;
    if (!h->refcount_.compare_exchange_strong(expected, 0, std::memory_order_acq_rel)) {
      unclaim(i);
      if (expected > 0) return -EBUSY;
      return report_not_owner("free_pages_bulk_from", srcs[i], seen[i], h, index);  // freed meanwhile
    }
    wait_published(h);  // republished since the check (P5)
    if (slot_owner(h, index) != slot ||
        std::atomic_ref<pfn_t>(*srcs[i]).load(std::memory_order_acquire) != seen[i]) {  // a race since the check
      unclaim(i + 1);
      return report_not_owner("free_pages_bulk_from", srcs[i], seen[i], h, index);
    }
  }
  // 3. No listed slot may lie in a page this call frees: once an earlier batch frees that page
  //    it may be handed out, and a later batch would then write into its new owner's bytes.
  //    Every page this call frees has count 0 now, so the free-page test finds them all (a page
  //    a concurrent call is freeing too: misuse either way).
  for (std::size_t i = 0; i < srcs.size(); ++i) {
    std::uint64_t slot = 0;
    dest_offset(srcs[i], slot);
    if (slots_in_free_page(slot, 1)) {
      unclaim(srcs.size());
      report_misuse("free_pages_bulk_from: srcs[%zu] (%p) lies in a page this call (or a concurrent one) frees; free "
                    "a table page in a later call than the slots inside it; nothing was freed",
                    i, static_cast<void*>(srcs[i]));
      return -EINVAL;
    }
  }
  // 4. Every claimed slot 0, one fence, then every page freed with no fence of its own
  //    (free_pages_from's protocol). The slots first: a slot may lie in a page another thread is
  //    handed once it is free (not one of ours: step 3).
  bool any = false;
  for (std::size_t i = 0; i < srcs.size(); ++i) {
    if (!seen[i]) continue;
    prefetch_map_line(holder(i));
    std::atomic_ref<pfn_t>(*srcs[i]).store(0, std::memory_order_relaxed);
    flush_later(srcs[i], sizeof(pfn_t));
    any = true;
  }
  if (!any) return 0;
  const int e = fence();
  for (std::size_t i = 0; i < srcs.size(); ++i)
    if (seen[i]) finish_free(free_stores(holder(i)));
  if (PMPAGE_UNLIKELY(e)) {  // freed in DRAM as the kernel's free would; the caller learns it
    note_writeback_failure("free_pages_bulk_from", e);
    return -e;
  }
  return 0;
}

int pool_impl::split_prepare(page* h) {
  // The split's own page lock. A locked page is in use, and a lock must never move under the
  // thread holding it (it would unlock a different descriptor): refuse instead.
  if (h->flags_.fetch_or(PG_locked, std::memory_order_acquire) & PG_locked) return -EBUSY;
  int expected = 1;  // freeze: a racing get_page_unless_zero sees 0 and fails
  if (!h->refcount_.compare_exchange_strong(expected, 0, std::memory_order_acq_rel)) {
    split_unlock(h);
    return -EBUSY;
  }
  return 0;
}

void pool_impl::split_unlock(page* h) {
  if (h->flags_.fetch_and(~(PG_locked | PG_waiters), std::memory_order_release) & PG_waiters) futex_wake_all(&h->flags_);
}

namespace {
/// An order-9 head in an unsplit region: what both splits accept.
bool splittable(const page_location& loc) {
  return !(loc.rflags & (PG_split | PG_region_tail)) && (loc.rflags & PG_head) &&
         !(loc.index & (HPAGE_PMD_NR - 1)) && load_order(loc.region) == HPAGE_PMD_ORDER;
}
}  // namespace

int pool_impl::move_pages_owner(pfn_t* src, pfn_t* dest) noexcept {
  const deferred_flush_scope flush_on_return{this};  // the lazy retirement's flush, after our locks
  if (refuse_read_only("move_pages_owner")) return -EROFS;
  std::uint64_t from, to;
  if (!dest_offset(src, from) || !dest_offset(dest, to)) {
    report_misuse("move_pages_owner: slots %p and %p must both be 8-byte aligned words of pool %s's root or data area",
                  static_cast<void*>(src), static_cast<void*>(dest), path().c_str());
    return -EINVAL;
  }
  if (forked("move_pages_owner")) return -EINVAL;
  const pfn_t pfn = std::atomic_ref<pfn_t>(*src).load(std::memory_order_acquire);  // with PG_publishing (P5)
  if (from == to) {
    report_misuse("move_pages_owner: source and destination are the same slot %p", static_cast<void*>(src));
    return -EINVAL;
  }
  if (slots_in_free_page(to, 1) || slots_in_free_page(from, 1)) {
    report_misuse("move_pages_owner: slot %p or %p lies in a free page of pool %s", static_cast<void*>(src),
                  static_cast<void*>(dest), path().c_str());
    return -EINVAL;
  }
  if (const pfn_t d = std::atomic_ref<pfn_t>(*dest).load(std::memory_order_relaxed)) {
    report_misuse("move_pages_owner: destination slot %p already holds pfn %#llx (overwriting it would leak that page)",
                  static_cast<void*>(dest), (unsigned long long)d);
    return -EINVAL;
  }
  if (pfn == 0) {
    report_misuse("move_pages_owner: source slot %p is empty: there is nothing to move", static_cast<void*>(src));
    return -EINVAL;
  }
  if (pfn < start_pfn() || pfn >= end_pfn()) {
    report_misuse("move_pages_owner: source slot %p holds %#llx, not a page of pool %s", static_cast<void*>(src),
                  (unsigned long long)pfn, path().c_str());
    return -EINVAL;
  }
  page* h = state_holder(vpage(pfn - start_pfn()));
  if (!h) return -EINVAL;
  // Hold a reference while moving, so a racing free of the same slot cannot free the page under us.
  if (!get_page_unless_zero(vpage(pfn - start_pfn()))) {
    report_misuse("move_pages_owner: source slot %p holds pfn %#llx, which is not allocated", static_cast<void*>(src),
                  (unsigned long long)pfn);
    return -EINVAL;
  }
  const std::uint64_t index = pfn - start_pfn();
  // Our reference keeps frees and splits away (they need the count at 1); PG_owner_busy keeps a
  // second move away. Only then is the owner checked: it cannot change until we clear the bit.
  if (h->flags_.fetch_or(PG_owner_busy, std::memory_order_acquire) & PG_owner_busy) {
    put_page(vpage(index));
    report_misuse("move_pages_owner: pfn %#llx is being moved by a concurrent call (slot %p)", (unsigned long long)pfn,
                  static_cast<void*>(src));
    return -EINVAL;
  }
  auto done = [&] {
    h->flags_.fetch_and(~std::uint32_t{PG_owner_busy}, std::memory_order_release);
    put_page(vpage(index));  // never the last reference: the slot holds one
  };
  wait_published(h);  // an alloc_pages_to still publishing it records its owner first (P5)
  if (slot_owner(h, index) != from || std::atomic_ref<pfn_t>(*src).load(std::memory_order_relaxed) != pfn) {
    report_not_owner("move_pages_owner", src, pfn, h, index);
    done();
    return -EINVAL;
  }
  const unsigned lane = intents_.acquire();
  intents_.write(lane, intent_kind::move_to, load_order(h), from, pfn, to);
  fence();  // 1: the intent (recovery rolls the move forward from here)
  pfn_t expected = 0;
  if (!std::atomic_ref<pfn_t>(*dest).compare_exchange_strong(expected, pfn, std::memory_order_acq_rel)) {
    // Filled by a concurrent call after our check: the intent must not roll forward.
    intents_.retire_lazily(lane);
    flush_later(intents_.seq_word(lane), 8);
    fence();
    intents_.release(lane);
    done();
    report_misuse("move_pages_owner: destination slot %p was filled by a concurrent call", static_cast<void*>(dest));
    return -EINVAL;
  }
  write_owner(index, to);
  flush_now(dest, sizeof *dest);
  std::atomic_ref<pfn_t>(*src).store(0, std::memory_order_relaxed);
  flush_now(src, sizeof *src);
  fence();  // 2: the new slot owns the page, the old one is empty
  retire_intent(lane);
  done();
  return 0;
}

// ---- adoption ------------------------------------------------------------------------------------------
// adopt_pages makes a slot the owner of an allocated page that no slot owns: what an engine's repair
// tool needs once open has dropped an owner record (the engine overwrote the slot, then restored
// it), or to hand a page allocated with alloc_pages to a slot. No intent lane: the ownership is one
// owner-table word for a small page and two ordered words for a large one, and every subset of
// them that a crash can keep reads as unowned-allocated (before) or owned (after):
//   order < 9    owner entry 0 -> slot (+ the slot's line) | fence                        1 fence
//                An unowned small page's entry is 0 (O1), and one aligned 8-byte store is
//                failure-atomic: the entry is 0 or the slot.
//   order >= 9   owner entry of the head (+ the slot's line) | fence | owned bit | fence  2 fences
//                The entry means something only under the region word's owned bit (layout.hpp):
//                until the bit is durable it is an unowned page's entry, which neither open nor
//                fsck reads; the bit can reach the media only after the entry has (the fence
//                between), so an owned bit never names a stale entry. One fence would let the bit
//                land first: open would drop the ownership again (safe) but fsck would rightly
//                call that image damage, as no crash of an intent-covered operation leaves it.
// The slot must already be durable (it names the page: the engine persisted it): open and fsck
// judge the entry against the slot's value on the media. The page is not moved, zeroed or freed,
// so nothing else changes, and no crash can leave it free.
// Concurrency: the page is claimed as free_pages_from claims it (count 1 -> 0), so no put, free,
// split, move or second adoption reaches it while the owner changes (O3). It becomes owned only
// while unlocked (split_huge_page checks for an owner under the page lock). PG_publishing from
// then to the end makes every slot call that sees the page owned wait until the ownership is
// durable and the count is back (P5's mark; there is no intent to retire).

int pool_impl::adopt_pages(pfn_t* slot) noexcept {
  const deferred_flush_scope flush_on_return{this};
  if (refuse_read_only("adopt_pages")) return -EROFS;
  std::uint64_t off = 0;
  if (!usable_slot("adopt_pages", slot, off)) return -EINVAL;
  const pfn_t pfn = std::atomic_ref<pfn_t>(*slot).load(std::memory_order_acquire);
  if (pfn == 0) {
    report_misuse("adopt_pages: slot %p is empty: it names no page to adopt", static_cast<void*>(slot));
    return -EINVAL;
  }
  page* h = head_named_by("adopt_pages", slot, pfn);
  if (!h) return -EINVAL;
  const std::uint64_t index = pfn - start_pfn();
  auto report_owned_already = [&] {
    wait_published(h);  // an alloc_pages_to or adoption still publishing it records its owner first
    const std::uint64_t owner = slot_owner(h, index);
    if (owner == off)
      report_misuse("adopt_pages: slot %p owns pfn %#llx already", static_cast<void*>(slot), (unsigned long long)pfn);
    else if (owner)
      report_misuse("adopt_pages: pfn %#llx is owned by the slot at %p: only an unowned page can be adopted "
                    "(move_pages_owner moves a page between slots)", (unsigned long long)pfn,
                    static_cast<void*>(dev_.base() + owner));
    else  // republished by a concurrent alloc_pages_to since the wait (the slot named a freed page)
      report_misuse("adopt_pages: pfn %#llx is being published into a slot by a concurrent call: only an unowned "
                    "page can be adopted", (unsigned long long)pfn);
    return -EINVAL;
  };
  if (h->flags_.load(std::memory_order_acquire) & PG_slot_owned) return report_owned_already();
  // Claim it: the allocation's reference (count 1) is held by nobody while the owner changes.
  int expected = 1;
  if (!h->refcount_.compare_exchange_strong(expected, 0, std::memory_order_acq_rel)) {
    if (expected > 1) return -EBUSY;  // other references: nothing changed
    if (h->flags_.load(std::memory_order_acquire) & (PG_slot_owned | PG_publishing)) return report_owned_already();
    report_misuse("adopt_pages: slot %p holds pfn %#llx, which is not allocated (free, or being freed, split or "
                  "adopted by a concurrent call)", static_cast<void*>(slot), (unsigned long long)pfn);
    return -EINVAL;
  }
  auto unclaim = [&] { h->refcount_.fetch_add(1, std::memory_order_release); };
  if (std::atomic_ref<pfn_t>(*slot).load(std::memory_order_acquire) != pfn) {
    unclaim();
    report_misuse("adopt_pages: slot %p was rewritten by a concurrent call (it held pfn %#llx); nothing was adopted",
                  static_cast<void*>(slot), (unsigned long long)pfn);
    return -EINVAL;
  }
  // The page may come from a region this open never took: its owner-table slice may be a hole of
  // a sparse copy (region_backing.hpp). Reserve it before the store that would fault there.
  if (const int e = backing_.reserve_owner_slice(std::uint32_t(index >> HPAGE_PMD_ORDER))) {
    unclaim();
    char m[256];
    std::snprintf(m, sizeof m, "pmpage: %s: adopt_pages: cannot reserve the owner table of region %llu (%s): nothing "
                  "was adopted", path().c_str(), (unsigned long long)(index >> HPAGE_PMD_ORDER), std::strerror(e));
    note_backing_failure(e, m);
    return -e;
  }
  // Owned from here, unless the page is locked: split_huge_page checks for an owner under the page
  // lock and then freezes, so ownership must not appear in between (it would split an owned page,
  // or freeze one: O3). One compare-and-swap orders the two on the flags word. Owned already: freed
  // and republished by alloc_pages_to between the check and the claim (misuse, given back).
  for (std::uint32_t f = h->flags_.load(std::memory_order_relaxed);;) {
    if (f & PG_slot_owned) {
      unclaim();
      return report_owned_already();
    }
    if (f & PG_locked) {  // a split under way, or the engine's lock_page
      unclaim();
      return -EBUSY;
    }
    if (h->flags_.compare_exchange_weak(f, f | PG_slot_owned | PG_publishing, std::memory_order_acq_rel,
                                        std::memory_order_relaxed))
      break;
  }
  write_owner(index, off);
  flush_now(slot, sizeof *slot);  // a no-op write-back if the engine persisted it, as it must have
  // The entry is durable before the owned marker (bit) that gives it meaning: a marker whose
  // entry did not reach the media reads as an interrupted slot call, whose page recovery frees.
  const auto set_owned_record = [&](bool owned) {
    if (is_region_desc(h)) {
      persist_word(region_word(std::uint32_t(index >> HPAGE_PMD_ORDER)),
                   make_region_word(region_state::head, load_order(h), owned));
      return;
    }
    const auto r = std::uint32_t(index >> HPAGE_PMD_ORDER);
    const unsigned first = unsigned(index & (HPAGE_PMD_NR - 1)), order = load_order(h);
    split_state& s = sstate(r);
    adaptive_mutex& m = lock_region(s);
    set_map_owned(s.map, first, order, owned);
    const unsigned w = owned_marker_at(first, order) / PAGES_PER_MAP_WORD;
    write_map_locked(r, w, w);
    m.unlock();
  };
  int e = fence();
  if (PMPAGE_LIKELY(!e)) {
    set_owned_record(true);
    e = fence();
  }
  if (PMPAGE_UNLIKELY(e)) {
    // Not adopted: unowned again on the media (best effort: the marker first, then the entry, the
    // reverse of the order above) and in DRAM, the allocation's reference back to the caller.
    set_owned_record(false);
    persist_word(owner_entry(index), 0);
    fence();
    h->flags_.fetch_and(~PG_slot_owned, std::memory_order_release);
    unclaim();
    end_publication(h);
    note_writeback_failure("adopt_pages", e);
    return -e;
  }
  // The allocation's reference is the slot's now (fetch_add, not a store: a put_page racing the
  // claim saw 0 and undoes its own decrement, report_refcount_misuse).
  unclaim();
  end_publication(h);
  return 0;
}

int pool_impl::split_huge_page(page* p) noexcept {
  page_location loc;
  if (!locate(p, loc)) return -EINVAL;
  if (refuse_read_only("split_huge_page")) return -EROFS;
  if (!splittable(loc)) return -EINVAL;
  if (forked("split_huge_page")) return -EINVAL;
  page* h = loc.region;
  // A slot owns the whole page; 511 pieces without a slot would leak (split_huge_page_to).
  if (h->flags_.load(std::memory_order_relaxed) & PG_slot_owned) return -EBUSY;
  // split_prepare with the owner checked again between the page lock and the freeze: adopt_pages
  // makes a page owned only while it is unlocked, so from our lock on the owner cannot change, and
  // an owned page is never frozen (O3: its count reaches 0 only in its slot's free).
  if (h->flags_.fetch_or(PG_locked, std::memory_order_acquire) & PG_locked) return -EBUSY;
  if (h->flags_.load(std::memory_order_acquire) & PG_slot_owned) {
    split_unlock(h);
    return -EBUSY;
  }
  int expected = 1;  // freeze: a racing get_page_unless_zero sees 0 and fails
  if (!h->refcount_.compare_exchange_strong(expected, 0, std::memory_order_acq_rel)) {
    split_unlock(h);
    return -EBUSY;
  }
  const auto r = std::uint32_t(h - regions_);
  // Media first (HEAD(9) until the SPLIT word lands, so a crash leaves the whole page): every page
  // an order-0 head and no owner, fence, then the region word.
  write_split_map(r);
  clear_owner_entries(r);
  int e = fence();
  if (PMPAGE_LIKELY(!e)) {
    persist_word(region_word(r), make_region_word(region_state::split));
    e = fence();
    if (PMPAGE_UNLIKELY(e)) {
      // Back to HEAD(9) on the media (best effort); either word reads as a consistent pool: the
      // whole page, or 512 order-0 pages the engine holds no reference to.
      persist_word(region_word(r), make_region_word(region_state::head, HPAGE_PMD_ORDER));
      fence();
    }
  }
  if (PMPAGE_UNLIKELY(e)) {
    // The split did not happen in DRAM: the page stays whole, unfrozen and unlocked.
    h->refcount_.store(1, std::memory_order_release);
    split_unlock(h);
    note_writeback_failure("split_huge_page", e);
    return -e;
  }
  split_descriptors(h, r, /*owned=*/false);
  return 0;
}

int pool_impl::split_huge_page_to(page* p, pfn_t* slots) noexcept {
  const deferred_flush_scope flush_on_return{this};  // the lazy retirement's flush, after our locks
  page_location loc;
  if (!locate(p, loc)) return -EINVAL;
  if (refuse_read_only("split_huge_page_to")) return -EROFS;
  if (!splittable(loc)) {
    report_misuse("split_huge_page_to: pfn %#llx is not the head of an order-9 page", (unsigned long long)page_to_pfn(p));
    return -EINVAL;
  }
  if (forked("split_huge_page_to")) return -EINVAL;
  std::uint64_t off;
  if (!dest_offset(slots, off) || !slot_range_valid(off, HPAGE_PMD_NR)) {
    report_misuse("split_huge_page_to: slots %p is not an array of 512 8-byte aligned slots inside pool %s's root "
                  "or data area", static_cast<void*>(slots), path().c_str());
    return -EINVAL;
  }
  if (slots_in_free_page(off, HPAGE_PMD_NR)) {
    report_misuse("split_huge_page_to: the slot array %p lies (partly) in a free page of pool %s",
                  static_cast<void*>(slots), path().c_str());
    return -EINVAL;
  }
  page* h = loc.region;
  const auto r = std::uint32_t(h - regions_);
  const pfn_t pfn = pfn_of_index(loc.index);
  // An unowned page never becomes owned while it is allocated (only alloc_pages_to sets the
  // owner), so that misuse is reported before the freeze, whatever the count.
  if (!(h->flags_.load(std::memory_order_relaxed) & PG_slot_owned)) {
    report_misuse("split_huge_page_to: pfn %#llx is not slot-owned: use split_huge_page", (unsigned long long)pfn);
    return -EINVAL;
  }
  // Freeze first (count 1 -> 0, and the page lock): no free, move or second split can change the
  // owner between the checks below and the split.
  if (const int e = split_prepare(h)) return e;
  wait_published(h);  // an alloc_pages_to still publishing it records its owner first (P5)
  auto unfreeze = [&] {
    h->refcount_.store(1, std::memory_order_release);
    split_unlock(h);
  };
  const std::uint64_t owner = slot_owner(h, loc.index);
  if (owner != off ||
      std::atomic_ref<pfn_t>(slots[0]).load(std::memory_order_relaxed) != pfn) {
    unfreeze();
    report_misuse("split_huge_page_to: slots[0] (%p) must be the slot that owns pfn %#llx%s",
                  static_cast<void*>(slots), (unsigned long long)pfn,
                  owner ? "" : " (the page is not slot-owned: use split_huge_page)");
    return -EINVAL;
  }
  for (unsigned i = 1; i < HPAGE_PMD_NR; ++i)
    if (const pfn_t v = std::atomic_ref<pfn_t>(slots[i]).load(std::memory_order_relaxed)) {
      unfreeze();
      report_misuse("split_huge_page_to: slots[%u] (%p) holds pfn %#llx; slots 1..511 must be empty", i,
                    static_cast<void*>(slots + i), (unsigned long long)v);
      return -EINVAL;
    }
  const unsigned lane = intents_.acquire();
  intents_.write(lane, intent_kind::split_to, HPAGE_PMD_ORDER, off, pfn);
  fence();  // 1: the intent (recovery rolls the split forward from here, or back: see replay)
  // Claim slots 1..511 one compare-and-swap each, as alloc_pages_to claims its slot: a slot that a
  // concurrent call filled since the check above makes the split fail, undone, instead of being
  // overwritten (which would leak that call's page).
  unsigned claimed = 1;
  for (; claimed < HPAGE_PMD_NR; ++claimed) {
    pfn_t expected = 0;
    if (!std::atomic_ref<pfn_t>(slots[claimed]).compare_exchange_strong(expected, pfn + claimed, std::memory_order_acq_rel))
      break;
  }
  if (claimed < HPAGE_PMD_NR) {
    for (unsigned i = 1; i < claimed; ++i) std::atomic_ref<pfn_t>(slots[i]).store(0, std::memory_order_relaxed);
    flush_now(slots + 1, (claimed - 1) * sizeof(pfn_t));
    fence();  // the slots are empty again before the intent can go (replay undoes until then)
    retire_intent(lane);
    unfreeze();
    report_misuse("split_huge_page_to: slots[%u] (%p) was filled by a concurrent call; nothing was split", claimed,
                  static_cast<void*>(slots + claimed));
    return -EINVAL;
  }
  write_split_to_words(r, off, /*store_slots=*/false);  // claimed above
  persist_word(region_word(r), make_region_word(region_state::split));
  fence();  // 2: 512 owned pages, each in its slot
  retire_intent(lane);
  split_descriptors(h, r, /*owned=*/true);
  return 0;
}

}  // namespace pmpage::detail

// ---- the public handle ---------------------------------------------------------------------------------

namespace pmpage {

using detail::pool_impl;

pool::pool() noexcept = default;
pool::pool(std::unique_ptr<pool_impl> impl) noexcept : impl_(std::move(impl)) {}
pool::pool(pool&&) noexcept = default;
pool& pool::operator=(pool&& o) noexcept {
  if (this != &o) {
    close();
    impl_ = std::move(o.impl_);
  }
  return *this;
}
pool::~pool() { close(); }
int pool::close() noexcept {
  if (!impl_) return 0;
  const int e = impl_->close_flush();
  impl_.reset();
  return -e;
}
int pool::writeback_error() const noexcept { return impl_ ? -impl_->durability_failed() : 0; }

pool pool::create_volatile(const volatile_options& opts) {
  auto impl = pool_impl::create_volatile(opts);
  impl->fs_path = opts.backing;
  return pool(std::move(impl));
}

pool pool::create(const std::filesystem::path& path, const options& opts) {
  auto impl = pool_impl::create(path.string(), opts);
  impl->fs_path = path;
  return pool(std::move(impl));
}

pool::grow_result pool::grow(const std::filesystem::path& path, std::uint64_t new_size, const grow_options& opts) {
  return detail::grow_pool(path.string(), new_size, opts);
}

pool pool::open(const std::filesystem::path& path, const open_options& opts) {
  auto impl = pool_impl::open(path.string(), opts);
  impl->fs_path = path;
  return pool(std::move(impl));
}

namespace {
const std::filesystem::path empty_path;
}

pfn_t pool::start_pfn() const noexcept { return impl_ ? impl_->start_pfn() : 0; }
pfn_t pool::end_pfn() const noexcept { return impl_ ? impl_->end_pfn() : 0; }
namespace detail {
std::string pool_impl::memory_description() const {
  if (volatile_) return memory_desc_;
  const std::uint64_t data = nr_regions_ * HPAGE_PMD_SIZE;
  std::string s = std::string(read_only_ ? "persistent (read-only), " : "persistent, ") +
                  (dev_.type() == device::kind::device_dax ? "device DAX " : "file ") + path() + ", " +
                  std::to_string(data >> 20) + " MiB of pages, " +
                  (gran_ == granularity::byte         ? "byte granularity (eADR: fences only)"
                   : gran_ == granularity::cache_line ? "cache-line granularity (CPU cache write-back, pmem)"
                                                      : "page granularity (msync, not pmem)");
  if (numa_node_ >= 0) s += ", on node " + std::to_string(numa_node_);
  return s;
}
}  // namespace detail

namespace {
/// An allocation call on a closed pool (or a moved-from one) is misuse: reported, so that it is
/// not mistaken for "no room" (nullptr) or for a silent no-op.
void report_closed(const char* fn) noexcept {
  detail::report_misuse("%s: the pool is closed (closed, moved from, or never opened)", fn);
}
}  // namespace

int pool::grow(std::uint64_t new_size) noexcept {
  if (!impl_) {
    report_closed("pool::grow");
    detail::set_c_error_message(detail::last_misuse());  // documented: errno and pmpage_errormsg() set
    errno = EINVAL;
    return -EINVAL;
  }
  return impl_->grow(new_size);
}

page* pool::alloc_pages(unsigned order, gfp_t gfp) noexcept {
  if (impl_) return impl_->alloc_pages(order, gfp);
  report_closed("alloc_pages");
  return nullptr;
}
std::size_t pool::alloc_pages_bulk(unsigned order, std::size_t n, page** out, gfp_t gfp) noexcept {
  if (impl_) return impl_->alloc_pages_bulk(order, n, out, gfp);
  report_closed("alloc_pages_bulk");
  return 0;
}
namespace {
/// The slot calls that return a page set errno = EINVAL when they refused a misuse (a C++ caller
/// with a misuse handler that returns learns it as a C caller does); other failures set their
/// own errno (no room, EBUSY, the initialiser's refusal, a write-back error).
template <class F>
page* errno_on_misuse(F&& call) noexcept {
  const std::uint64_t before = detail::misuse_reports();
  page* p = call();
  if (!p && detail::misuse_reports() != before) errno = EINVAL;
  return p;
}
}  // namespace

page* pool::alloc_pages_to(unsigned order, pfn_t* dest, gfp_t gfp) noexcept {
  return errno_on_misuse([&]() -> page* {
    if (impl_) return impl_->alloc_pages_to(order, dest, gfp);
    report_closed("alloc_pages_to");
    return nullptr;
  });
}

page* pool::alloc_pages_to(unsigned order, pfn_t* dest, gfp_t gfp, const page_init& init) noexcept {
  return errno_on_misuse([&]() -> page* {
    if (impl_) return impl_->alloc_pages_to(order, dest, gfp, &init);
    report_closed("alloc_pages_to");
    return nullptr;
  });
}

page* pool::replace_pages(pfn_t* slot, unsigned order, gfp_t gfp, const page_init& init) noexcept {
  return errno_on_misuse([&]() -> page* {
    if (impl_) return impl_->replace_pages(slot, order, gfp, &init);
    report_closed("replace_pages");
    return nullptr;
  });
}
int pool::free_pages_from(pfn_t* src) noexcept {
  if (impl_) return impl_->free_pages_from(src);
  report_closed("free_pages_from");
  return -EINVAL;
}
std::size_t pool::alloc_pages_bulk_to(unsigned order, std::span<pfn_t* const> dests, gfp_t gfp) noexcept {
  if (impl_) return impl_->alloc_pages_bulk_to(order, dests, gfp);
  report_closed("alloc_pages_bulk_to");
  return 0;
}
int pool::free_pages_bulk_from(std::span<pfn_t* const> srcs) noexcept {
  if (impl_) return impl_->free_pages_bulk_from(srcs);
  report_closed("free_pages_bulk_from");
  return -EINVAL;
}
int pool::move_pages_owner(pfn_t* src, pfn_t* dest) noexcept {
  if (impl_) return impl_->move_pages_owner(src, dest);
  report_closed("move_pages_owner");
  return -EINVAL;
}
int pool::adopt_pages(pfn_t* slot) noexcept {
  if (impl_) return impl_->adopt_pages(slot);
  report_closed("adopt_pages");
  return -EINVAL;
}
void* pool::root() const noexcept { return impl_ ? impl_->root() : nullptr; }
std::size_t pool::root_size() const noexcept { return impl_ ? impl_->root_size() : 0; }
// Persisting through a closed pool would silently make nothing durable, and checking one would
// answer "healthy": both are reported like the allocation calls.
namespace {
/// persist/flush of a range outside the pool's mapping: a flush of memory that is not the
/// pool's makes nothing durable (and a cache-line flush of an unmapped address faults).
bool outside_mapping(const pool& p, const char* caller, const void* addr, std::size_t len) noexcept {
  const auto a = reinterpret_cast<std::uintptr_t>(addr), b = reinterpret_cast<std::uintptr_t>(p.base());
  if (a >= b && len <= p.mapped_length() && a - b <= p.mapped_length() - len) return false;
  detail::report_misuse("%s: [%p, +%zu) is not inside pool %s's mapping: nothing is flushed", caller, addr, len,
                        p.path().c_str());
  return true;
}
}  // namespace

int pool::persist(const void* addr, std::size_t len) const noexcept {
  if (!impl_) {
    report_closed("persist");
    return -EINVAL;
  }
  if (impl_->refuse_read_only("persist")) return -EROFS;
  if (outside_mapping(*this, "persist", addr, len)) return -EINVAL;
  impl_->flush_now(addr, len);
  if (const int e = impl_->fence(); PMPAGE_UNLIKELY(e)) {
    impl_->note_writeback_failure("persist", e);
    return -e;
  }
  return 0;
}
void pool::flush(const void* addr, std::size_t len) const noexcept {
  if (!impl_) return report_closed("flush");
  if (impl_->refuse_read_only("flush") || outside_mapping(*this, "flush", addr, len)) return;
  impl_->flush_now(addr, len);
}
int pool::drain() const noexcept {
  if (!impl_) {
    report_closed("drain");
    return -EINVAL;
  }
  if (impl_->refuse_read_only("drain")) return -EROFS;
  if (const int e = impl_->fence(); PMPAGE_UNLIKELY(e)) {
    impl_->note_writeback_failure("drain", e);
    return -e;
  }
  return 0;
}
pool_stats pool::stats() const noexcept { return impl_ ? impl_->stats() : pool_stats{}; }
std::size_t pool::trim() noexcept { return impl_ ? impl_->trim() : 0; }
void pool::for_each_allocated(const std::function<void(page*, unsigned)>& f) const {
  if (!impl_) return report_closed("for_each_allocated");
  std::vector<std::pair<page*, unsigned>> all;
  impl_->collect_allocations(all);
  for (auto& [p, order] : all) f(p, order);  // outside the lock: f may take references
}
std::string pool::check() const {
  if (impl_) return impl_->check();
  report_closed("check");
  return "the pool is closed: nothing was checked";
}
pool::slot_check pool::check_slots(std::span<pfn_t* const> slots) const {
  if (impl_) return impl_->check_slots(slots);
  report_closed("check_slots");
  return slot_check{};
}
std::string pool::slot_check::describe() const {
  std::string out;
  for (const auto* list : {&dangling, &shared, &misowned, &unreferenced})
    for (const entry& e : *list) out += e.problem + "\n";
  return out;
}
const std::filesystem::path& pool::path() const noexcept { return impl_ ? impl_->fs_path : empty_path; }
bool pool::is_pmem() const noexcept { return impl_ && impl_->is_pmem(); }
granularity pool::store_granularity() const noexcept {
  return impl_ ? impl_->store_granularity() : granularity::page;
}
bool pool::is_read_only() const noexcept { return impl_ && impl_->read_only(); }
bool pool::is_volatile() const noexcept { return impl_ && impl_->is_volatile(); }
int pool::numa_node() const noexcept { return impl_ ? impl_->numa_node() : -1; }
std::string pool::memory_description() const { return impl_ ? impl_->memory_description() : std::string(); }
std::vector<std::string> pool::recovery_log() const { return impl_ ? impl_->recovery_log() : std::vector<std::string>{}; }
void* pool::base() const noexcept { return impl_ ? impl_->base() : nullptr; }
std::size_t pool::mapped_length() const noexcept { return impl_ ? impl_->mapped_length() : 0; }

}  // namespace pmpage
