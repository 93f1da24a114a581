// placement.cpp — which region a small allocation comes from, and when split regions change
// hands or merge: the per-CPU caches (cpu_cache.hpp), the shared filler of regions no cache
// holds, the list of wholly free split regions kept for a while (merge hysteresis), and the
// pressure paths that give cached and kept pages back before the pool reports no room.
//
// Lock order (pool_impl.hpp): cpu_cache::mu -> mu_ (pool lock) -> split_state::own_lock.
// The pool lock is taken once per refill (about once per 512 small allocations per CPU), by
// frees that change the list of a region no cache holds (at most ~18 times per region between
// two cache visits: its free count and longest block only grow meanwhile), by orders >= 9, and
// by stats/trim/check.
//
// Nothing here writes the media except a merge (FREE region word, fenced before the region is
// given to the region buddy) and materialise_locked's repairs: a page a cache holds is free on
// the media, so a crash loses nothing and leaks nothing. A read-only pool merges nothing (sweeps
// return at once) and keeps materialise_locked's repairs in DRAM (repair_word).
#include <sys/mman.h>
#include <time.h>

#include <cstring>
#include <thread>

#include "misuse.hpp"
#include "pool_impl.hpp"

namespace pmpage::detail {

std::uint64_t coarse_now_ms() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);  // vDSO: reads a word, no syscall
  return std::uint64_t(ts.tv_sec) * 1000 + std::uint64_t(ts.tv_nsec) / 1000000;
}

void pool_impl::init_caches() {
  core_->nr_caches = nr_cpu_caches();
  // The caches are pool_core's fixed array (it holds no pointer); nr_caches of them are used.
  for (unsigned i = 0; i < core_->nr_caches; ++i) core_->caches[i].index = i;
}

// ---- regions: fresh splits, lazy loads, large blocks ------------------------------------------------

void pool_impl::drop_sstate(std::uint32_t r) {
  states_[r].~split_state();
  regions_[r].alloc_state_ = 0;
  constexpr std::uint32_t per_page = 4096 / sizeof(split_state);
  static_assert(4096 % sizeof(split_state) == 0, "a page of the table serves whole states");
  const std::uint32_t first = r & ~(per_page - 1);
  for (std::uint32_t i = first; i < first + per_page && i < nr_regions_; ++i)
    if (regions_[i].alloc_state_) return;
  ::madvise(states_ + first, 4096, MADV_DONTNEED);
}

std::uint32_t pool_impl::take_fresh_region_locked(alloc_plan& plan, std::uint32_t r) {
  back_descriptors(r);
  split_state* s = make_sstate(r);
  std::memset(s->free_bits, 0xff, sizeof s->free_bits);
  s->nr_free = HPAGE_PMD_NR;
  s->longest = HPAGE_PMD_ORDER;
  s->published = false;  // only this operation uses it until its SPLIT word is durable
  page& d = regions_[r];
  store_kind(d, RK_SPLIT);
  ++core_->split_regions;
  // A FREE region's page map may hold leftovers (P3): clear it in the same epoch as the codes.
  // Its owner entries may be stale and stay (O1: no page has a marker now), except raw ones.
  write_map_locked(r, 0, PAGE_MAP_WORDS - 1);
  clear_owner_entries(r);
  d.flags_.store(PG_split, std::memory_order_release);
  plan.fresh[plan.nr_fresh++] = r;
  ++core_->regions_in_transit;  // until publish_fresh
  return r;
}

bool pool_impl::materialise_locked(std::uint32_t r) {
  page& d = regions_[r];
  if (!(d.flags_.load(std::memory_order_relaxed) & PG_region_lazy)) return false;
  std::uint64_t* map = page_map(r);
  // Validate the page map (P2); broken heads and orphan tails are in-flight work: clear them.
  std::uint64_t fixed[PAGE_MAP_WORDS];
  for (unsigned w = 0; w < PAGE_MAP_WORDS; ++w) fixed[w] = load_word(&map[w]);
  auto clear = [&](unsigned i) { fixed[i / PAGES_PER_MAP_WORD] &= ~(std::uint64_t{0xF} << ((i % PAGES_PER_MAP_WORD) * 4)); };
  bool repaired = false;
  for (unsigned i = 0; i < HPAGE_PMD_NR;) {
    const std::uint8_t c = map_code(fixed, i);
    if (c == CODE_FREE) {
      ++i;
      continue;
    }
    if (code_is_head(c)) {
      const unsigned n = 1u << code_order(c);
      bool ok = i % n == 0 && i + n <= HPAGE_PMD_NR;
      for (unsigned j = i + 1; ok && j < i + n; ++j) ok = map_code(fixed, j) == CODE_TAIL;
      if (ok) {
        i += n;
        continue;
      }
      clear(i);
      unsigned j = i + 1;
      while (j < HPAGE_PMD_NR && map_code(fixed, j) == CODE_TAIL) clear(j++);
      repaired = true;
      i = j;
      continue;
    }
    clear(i);  // orphan tail or an invalid code
    repaired = true;
    ++i;
  }
  // Owner entries (O1). An allocation with the owned marker is owned by the slot its entry
  // names while that slot holds its pfn. A slot that does not (0, another page, anything else),
  // or an entry of 0, is a slot call the crash interrupted — an alloc_pages_to before its slot's
  // store was durable, a free_pages_from after it, the loser of a slot race — or an engine that
  // overwrote its slot by hand: the page is freed. An entry whose check fails is damage: the
  // record is dropped and the page kept. A tagged entry anywhere else (a free page, a tail, a
  // plain allocation) is stale and ignored: frees leave it (SB_LAZY_OWNERS). A raw entry (bit 63
  // clear) without a marker is an owned allocation of a pool written before the markers (its
  // slot names it: marked now) or a leftover (cleared).
  const std::uint64_t base_index = std::uint64_t(r) << HPAGE_PMD_ORDER;
  std::uint64_t owned[HPAGE_PMD_NR / 64] = {};
  std::uint64_t* stale[HPAGE_PMD_NR];
  unsigned nr_stale = 0, nr_undone = 0, undone_codes = 0, nr_dropped = 0, nr_marked = 0, nr_leftover = 0;
  const bool torn_codes = repaired;
  for (unsigned i = 0; i < HPAGE_PMD_NR; ++i) {
    const std::uint8_t c = map_code(fixed, i);
    const bool head = code_is_head(c);
    const bool marked = head && map_owned(fixed, i, code_order(c));
    const std::uint64_t raw = load_word(owner_entry(base_index + i));
    if (!marked && !owner_entry_raw(raw)) continue;  // 0, or stale: ignored (O1)
    if (!head) {
      stale[nr_stale++] = owner_entry(base_index + i);  // a raw leftover (a 0.2 pool's interrupted free)
      ++nr_leftover;
      continue;
    }
    const unsigned k = code_order(c);
    const owner_verdict v = slot_verdict(base_index + i, decode_owner(base_index + i, raw));
    if (!marked) {  // a raw entry
      if (v == owner_verdict::owns) {  // a 0.2 pool's owned allocation
        set_map_owned(fixed, i, k, true);
        owned[i / 64] |= std::uint64_t{1} << (i % 64);
        ++nr_marked;
      } else {
        stale[nr_stale++] = owner_entry(base_index + i);
        ++nr_leftover;
        ++core_->orphaned;  // an allocation lost its owner (a 0.2 pool's overwritten slot)
      }
      continue;
    }
    switch (v) {
      case owner_verdict::owns:
        owned[i / 64] |= std::uint64_t{1} << (i % 64);
        break;
      case owner_verdict::interrupted:
        for (unsigned j = i; j < i + (1u << k); ++j) clear(j);
        if (owner_entry_raw(raw)) stale[nr_stale++] = owner_entry(base_index + i);  // a tagged one may stay
        ++nr_undone;
        undone_codes += 1u << k;
        break;
      case owner_verdict::damaged:
        set_map_owned(fixed, i, k, false);  // the entry fails its check: ignored without the marker
        stale[nr_stale++] = owner_entry(base_index + i);
        ++nr_dropped;
        ++core_->orphaned;
        break;
    }
  }
  repaired = repaired || nr_undone || nr_dropped || nr_marked;
  // A fork() child reads the pool but never writes it: it only builds its own view. A read-only
  // pool repairs as recovery would, but into overlay_ (repair_word): its mapping is PROT_READ.
  const bool may_write = g_fork_generation.load(std::memory_order_relaxed) == fork_generation_;
  if ((repaired || nr_stale) && may_write) {
    unsigned cleared = 0;
    for (unsigned w = 0; w < PAGE_MAP_WORDS; ++w)
      if (const std::uint64_t old = load_word(&map[w]); fixed[w] != old) {
        for (unsigned j = 0; j < PAGES_PER_MAP_WORD; ++j) cleared += ((old ^ fixed[w]) >> (4 * j) & 0xF) != 0;
        repair_word(&map[w], fixed[w]);
      }
    for (unsigned k = 0; k < nr_stale; ++k) repair_word(stale[k], 0);
    if (media_writable_) fence();
    ++core_->repaired;
    char line[256];
    if (nr_undone) {
      std::snprintf(line, sizeof line, "region %u: %u pages of interrupted slot calls freed (allocated and owned by a "
                    "slot that does not name them: alloc_pages_to before its publication, free_pages_from after it)",
                    r, nr_undone);
      note_repair(line);
    }
    if (torn_codes) {
      std::snprintf(line, sizeof line, "region %u: torn page map (%u codes of interrupted work: broken heads, orphan "
                    "tails, invalid codes) cleared", r, cleared - undone_codes);
      note_repair(line);
    }
    if (nr_dropped) {
      std::snprintf(line, sizeof line, "region %u: %u owner records dropped (damaged owner entry: its check fails); "
                    "the pages stay allocated, owned by nobody", r, nr_dropped);
      note_repair(line);
    }
    if (nr_marked) {
      std::snprintf(line, sizeof line, "region %u: %u owned allocations of a pool written before pmpage 0.3 marked "
                    "owned in the page map", r, nr_marked);
      note_repair(line);
    }
    if (const unsigned left = nr_leftover; left) {
      std::snprintf(line, sizeof line, "region %u: %u stale owner entries cleared (raw entries of a pool written "
                    "before pmpage 0.3: left by an interrupted free, or by a slot the engine overwrote)", r, left);
      note_repair(line);
    }
  }

  back_descriptors(r);
  split_state* s = make_sstate(r);
  regions_[r].alloc_state_ = 0;  // published below, once built
  std::memcpy(s->map, fixed, sizeof s->map);
  std::memset(s->free_bits, 0xff, sizeof s->free_bits);
  s->nr_free = HPAGE_PMD_NR;
  s->list = 0xff;
  s->published = true;
  for (unsigned i = 0; i < HPAGE_PMD_NR;) {
    const std::uint8_t c = map_code(fixed, i);
    if (c == CODE_FREE) {
      ++i;
      continue;
    }
    const unsigned k = code_order(c);
    mark_used(*s, i, 1u << k);
    init_compound_small(r, i, k);
    if (owned[i / 64] >> (i % 64) & 1) vpage(base_index + i)->flags_.fetch_or(PG_slot_owned, std::memory_order_relaxed);
    i += 1u << k;
  }
  if (const std::uint64_t* bad = bad_bits_of(r)) {
    // Bad pages (badblocks.cpp): a free one is held out (Q2: so the region never looks wholly
    // free and never merges), an allocated one marks its allocation (Q3).
    s->has_bad = true;
    std::memcpy(s->bad_bits, bad, sizeof s->bad_bits);
    hold_bad_pages(*s, 0, HPAGE_PMD_NR);
    mark_hwpoison_small(r, *s);
  }
  d.alloc_state_ = 1;
  store_kind(d, RK_SPLIT);
  core_->free_pages += s->nr_free;
  if (s->nr_free == HPAGE_PMD_NR && may_write) {
    // Split on the media but empty (a crash between the last free and the merge): merge now.
    drop_sstate(r);
    store_kind(d, RK_FREE_INNER);
    --core_->split_regions;
    repair_word(region_word(r), make_region_word(region_state::free));
    if (media_writable_) fence();
    char line[120];
    std::snprintf(line, sizeof line, "region %u: split but wholly free (a crash before its merge): merged", r);
    note_repair(line);
    release_descriptors(r);
    --core_->materialised;
    d.flags_.store(0, std::memory_order_release);
    buddy_.free(r, HPAGE_PMD_ORDER);
    return true;
  }
  filler_.update(r, *s);  // before PG_split makes its pages reachable (and freeable under its own lock)
  d.flags_.store(PG_split, std::memory_order_release);
  return true;
}

void pool_impl::materialise(std::uint32_t r) noexcept {
  std::lock_guard g(core_->mu);
  materialise_locked(r);
}

std::uint32_t pool_impl::take_large_locked(unsigned order) {
  const std::uint32_t r = buddy_.alloc(order);
  if (r != NIL) core_->free_pages -= std::uint64_t{1} << order;
  return r;
}

std::uint32_t pool_impl::take_reserved_block_locked(unsigned order) {
  // Blocks taken and put back in the order they came: the buddy ends as it was but for the one
  // returned. Bounded: this runs under the pool lock, and only after the file system said no.
  constexpr unsigned MAX_LOOK = 64;
  std::uint32_t looked[MAX_LOOK], found = NIL;
  unsigned n = 0;
  while (n < MAX_LOOK) {
    const std::uint32_t r = buddy_.alloc(order);
    if (r == NIL) break;
    if (backing_.reserved(r, 1u << (order - HPAGE_PMD_ORDER))) {
      found = r;
      break;
    }
    looked[n++] = r;
  }
  while (n) buddy_.free(looked[--n], order);
  return found;
}

bool pool_impl::reserve_backing(std::uint32_t r, std::uint32_t n) noexcept {
  const int e = backing_.reserve(r, n);
  if (PMPAGE_LIKELY(e == 0)) return true;
  char m[320];
  std::snprintf(m, sizeof m, "pmpage: %s: no room: the file system cannot reserve the blocks of regions %u..%u (%u x 2 MiB "
                "at file offset %llu; fallocate: %s): the allocation fails rather than a store into the page later",
                path().c_str(), r, r + n - 1, n, (unsigned long long)backing_.offset_of(r), std::strerror(e));
  note_backing_failure(e, m);
  return false;
}

// ---- the list of wholly free split regions (merge hysteresis) ---------------------------------------

void pool_impl::empty_add_locked(std::uint32_t r, split_state& s, std::uint64_t since_ms) {
  if (s.on_empty) return;
  s.on_empty = true;
  s.empty_since_ms = since_ms;
  s.empty_next = NIL;
  s.empty_prev = core_->empty_tail;
  if (core_->empty_tail != NIL)
    sstate(core_->empty_tail).empty_next = r;
  else
    core_->empty_head = r;
  core_->empty_tail = r;
  ++core_->nr_empty;
}

void pool_impl::empty_remove_locked(std::uint32_t r, split_state& s) {
  if (!s.on_empty) return;
  if (s.empty_prev != NIL)
    sstate(s.empty_prev).empty_next = s.empty_next;
  else
    core_->empty_head = s.empty_next;
  if (s.empty_next != NIL)
    sstate(s.empty_next).empty_prev = s.empty_prev;
  else
    core_->empty_tail = s.empty_prev;
  s.on_empty = false;
  s.empty_prev = s.empty_next = NIL;
  (void)r;
  --core_->nr_empty;
}

void pool_impl::take_empty_locked(std::uint32_t r, merge_batch& mb) {
  split_state& s = sstate(r);
  s.own_lock.lock();  // no cache holds r (S6): its lock is its own
  filler_.remove(r, s);
  empty_remove_locked(r, s);
  s.own_lock.unlock();
  // Nobody can reach s any more: it has no allocation (so no free is under way in it), no cache
  // holds it, and the filler no longer lists it.
  drop_sstate(r);
  page& d = regions_[r];
  store_kind(d, RK_FREE_INNER);  // in transit until finish_merges gives it to the buddy
  d.flags_.store(0, std::memory_order_release);
  persist_word(region_word(r), make_region_word(region_state::free));
  mb.regions[mb.n++] = r;
  ++core_->regions_in_transit;  // still counted as split and materialised (stats), until merged_locked
}

void pool_impl::finish_merges(const merge_batch& mb) {
  if (!mb.n) return;
  // FREE is durable before the region can be handed out again: its next owner's words then
  // always come after it on the media.
  fence();
  for (unsigned i = 0; i < mb.n; ++i) release_descriptors(mb.regions[i]);  // syscalls: outside the lock
  std::lock_guard g(core_->mu);
  merged_locked(mb);
}

void pool_impl::merged_locked(const merge_batch& mb) {
  for (unsigned i = 0; i < mb.n; ++i) {
    --core_->split_regions;
    --core_->materialised;
    --core_->regions_in_transit;
    buddy_.free(mb.regions[i], HPAGE_PMD_ORDER);
  }
}

void pool_impl::sweep_locked(merge_batch& mb, bool all) {
  if (g_fork_generation.load(std::memory_order_relaxed) != fork_generation_) return;  // a child never writes
  if (read_only_) return;  // nor does a read-only pool (stats() sweeps)
  const std::uint64_t now = coarse_now_ms();
  // Idle caches give their region back (at most every PCP_IDLE_MS / 4: this runs on every refill).
  if (all || now - core_->last_idle_sweep_ms >= PCP_IDLE_MS / 4) {
    core_->last_idle_sweep_ms = now;
    for (unsigned i = 0; i < core_->nr_caches; ++i) {
      cpu_cache& c = core_->caches[i];
      const std::uint64_t last = c.last_use_ms.load(std::memory_order_relaxed);
      if (!all && (last >= now || now - last < PCP_IDLE_MS)) continue;  // (another CPU's clock may be ahead)
      if (!c.mu.try_lock()) continue;  // busy (or ours): not idle. Never wait: the lock order is c.mu first.
      drain_locked(c, /*idle=*/!all);
      c.mu.unlock();
    }
  }
  while (core_->empty_head != NIL && mb.n < merge_batch::MAX &&
         (all || core_->nr_empty > EMPTY_SPLIT_KEPT || now - sstate(core_->empty_head).empty_since_ms >= EMPTY_SPLIT_KEEP_MS))
    take_empty_locked(core_->empty_head, mb);
}

// ---- cache hand-over ------------------------------------------------------------------------------

void pool_impl::drain_locked(cpu_cache& c, bool idle) {
  for (unsigned k = 0; k < cpu_cache::STASH_ORDERS; ++k)
    while (c.nr_stash[k]) buddy_.free(c.stash[k][--c.nr_stash[k]], HPAGE_PMD_ORDER + k);  // free pages unchanged
  // An idle cache's empty region has waited PCP_IDLE_MS already: it counts as empty since the
  // cache's last use (a remote free may have emptied it later; merging early is only slower).
  detach_locked(c, idle ? c.last_use_ms.load(std::memory_order_relaxed) : coarse_now_ms());
}

void pool_impl::detach_locked(cpu_cache& c, std::uint64_t empty_since_ms) {
  const std::uint32_t r = c.region;
  if (r == NIL) return;
  split_state& s = sstate(r);
  // S6: the lock changes while both the old one (c.mu, held by our caller) and the new one are
  // held, so a free waiting on c.mu re-reads lock_cpu and moves to own_lock.
  s.own_lock.lock();
  s.cpu = NO_CPU;
  s.lock_cpu.store(NO_CPU, std::memory_order_release);
  c.region = NIL;
  filler_.update(r, s);  // its longest block went stale while the cache held it
  if (s.nr_free == HPAGE_PMD_NR) empty_add_locked(r, s, empty_since_ms);
  s.own_lock.unlock();
}

bool pool_impl::attach_locked(cpu_cache& c, std::uint32_t r, unsigned order, int& pos) {
  split_state& s = sstate(r);
  s.own_lock.lock();
  pos = find_free_block(s, order);
  if (pos < 0) {  // its list was stale (cannot happen: frees only add room) — re-file it
    filler_.update(r, s);
    s.own_lock.unlock();
    return false;
  }
  filler_.remove(r, s);
  empty_remove_locked(r, s);
  s.cpu = std::uint16_t(c.index);
  s.lock_cpu.store(std::uint16_t(c.index), std::memory_order_release);  // c.mu is held by our caller (S6)
  s.own_lock.unlock();
  c.region = r;
  return true;
}

std::uint32_t pool_impl::refill(cpu_cache& c, unsigned order, alloc_plan& plan, int& pos, merge_batch& mb) {
  // R1: a region whose blocks are not known to be reserved is reserved with the pool lock
  // dropped (the call may allocate and zero 2 MiB), and the search starts over. Once the file
  // system said no, only regions reserved already are taken (refill_locked's fs_full).
  bool fs_full = false;
  for (;;) {
    std::uint32_t r, unreserved;
    bool fresh;
    {
      std::lock_guard g(core_->mu);
      sweep_locked(mb, false);
      r = refill_locked(c, order, plan, pos, unreserved, fresh, fs_full);
    }
    if (unreserved == NIL) return r;  // the caller runs finish_merges(mb) once c.mu is dropped (it fences)
    if (!reserve_region_unlocked(unreserved, fresh)) fs_full = true;
  }
}

std::uint32_t pool_impl::refill_locked(cpu_cache& c, unsigned order, alloc_plan& plan, int& pos,
                                       std::uint32_t& unreserved, bool& fresh, bool fs_full) {
  unreserved = NIL;
  fresh = false;
  // Regions this operation split come first: no one else can see them yet.
  for (unsigned i = 0; i < plan.nr_fresh; ++i)
    if ((pos = find_free_block(sstate(plan.fresh[i]), order)) >= 0) return plan.fresh[i];
  detach_locked(c, coarse_now_ms());
  // A cache takes a region with at least ~64 free pages when one exists (the kernel's pcp
  // batch plays the same role): a nearly full region would send it back here after a few
  // allocations, and on a heap of long-lived pages the pool lock would be taken on most
  // of them (docs/scaling.md, "refill threshold"). Nearly full regions still drain: they
  // are taken when nothing else has room, and frees fill them back up.
  for (unsigned min_bucket = 1;;) {
    if (const std::uint32_t f = filler_.find(order, min_bucket); f != NIL) {
      if (!backing_.reserved(f)) {
        // Not reserved yet (R1): the caller reserves it and searches again. A filler region
        // never leaves the filler meanwhile. On a full file system: no room.
        if (!fs_full) unreserved = f;
        return NIL;
      }
      if (attach_locked(c, f, order, pos)) return f;
      continue;
    }
    if (lazy_.empty()) {
      if (min_bucket) {
        min_bucket = 0;
        continue;
      }
      if (plan.nr_fresh == alloc_plan::MAX_FRESH) {
        plan.fresh_full = true;
        return NIL;
      }
      // A region used and freed since open is reserved; after the file system said no, only
      // such a region will do.
      const std::uint32_t b = fs_full ? take_reserved_block_locked(HPAGE_PMD_ORDER) : buddy_.alloc(HPAGE_PMD_ORDER);
      if (b == NIL) return NIL;
      if (!backing_.reserved(b)) {  // taken from the buddy: ours until reserve_region_unlocked
        unreserved = b;
        fresh = true;
        return NIL;
      }
      pos = 0;
      return take_fresh_region_locked(plan, b);
    }
    // Split regions from before the last open: load them before splitting more.
    const std::uint32_t l = lazy_.back();
    lazy_.pop_back();
    materialise_locked(l);
  }
}

bool pool_impl::reserve_region_unlocked(std::uint32_t r, bool fresh) {
  const bool ok = reserve_backing(r, 1);
  // A region taken from the buddy goes back either way: reserved now, the next search takes it
  // (or another CPU does: it is reserved for whoever takes it).
  if (fresh) {
    std::lock_guard g(core_->mu);
    buddy_.free(r, HPAGE_PMD_ORDER);
  }
  return ok;
}

page* pool_impl::carve(cpu_cache& c, std::uint32_t r, unsigned pos, unsigned order) {
  split_state& s = sstate(r);
  const unsigned n = 1u << order;
  mark_used(s, pos, n);
  init_compound_small(r, pos, order);
  c.last_use_ms.store(coarse_now_ms(), std::memory_order_relaxed);
  c.add_free_delta(-std::int64_t(n));
  return vpage((std::uint64_t(r) << HPAGE_PMD_ORDER) + pos);
}

page* pool_impl::alloc_small(unsigned order, alloc_plan& plan, bool apply) {
  merge_batch mb;  // merges a refill's sweep chose: finished outside the cache lock
  page* p = nullptr;
  {
    cpu_cache& c = this_cpu_cache();
    std::lock_guard g(c.mu);
    std::uint32_t r = c.region;
    int pos = r != NIL ? find_free_block(sstate(r), order) : -1;
    if (pos < 0) r = refill(c, order, plan, pos, mb);
    if (r != NIL) {
      p = carve(c, r, unsigned(pos), order);
      if (apply) apply_small_held(r, p, order, 0);
    }
  }
  finish_merges(mb);
  if (p || plan.fresh_full) return p;
  // No room in the filler or the region buddy: other CPUs' caches and stashes may hold some.
  return alloc_small_anywhere(order, plan, apply);
}

// How long a last-resort search waits for regions another operation holds between its locks (a
// fresh region until its SPLIT word is durable, a merge on its way to the buddy): one or two
// fences normally. The bound only keeps a caller from waiting forever on an operation that
// waits for it in turn (alloc_pages_to takes its intent lane after reserving its pages, and a
// bulk slot call waiting here may hold every lane).
constexpr std::uint64_t TRANSIT_WAIT_MS = 1000;

// The last resort of a small allocation: every cache gives back what it holds and the allocation
// searches the pool, all under every lock. Taking the caches back and then searching again under
// the pool lock alone (as this did before) let another CPU take the region back in between:
// with two CPUs sharing one region, ~1 % of allocations failed with most of the pool free.
// Holding every lock makes the answer exact: nullptr means no free extent of this order, apart
// from frees still running (they count as after this call). Pages another operation holds
// between its locks are free but not reachable yet: wait for that operation (TRANSIT_WAIT_MS).
page* pool_impl::alloc_small_anywhere(unsigned order, alloc_plan& plan, bool apply) {
  const std::uint64_t give_up_ms = coarse_now_ms() + TRANSIT_WAIT_MS;
  bool fs_full = false;
  drain_magazines();  // other threads' magazines hold free pages too (before lock_all: lock order)
  for (;;) {
    lock_all();
    cpu_cache& c = this_cpu_cache();
    for (unsigned i = 0; i < core_->nr_caches; ++i) drain_locked(core_->caches[i], /*idle=*/false);
    int pos = -1;
    std::uint32_t unreserved;
    bool fresh;
    const std::uint32_t r = refill_locked(c, order, plan, pos, unreserved, fresh, fs_full);
    page* p = nullptr;
    if (r != NIL) {
      p = carve(c, r, unsigned(pos), order);
      if (apply) apply_small_held(r, p, order, 0);
    }
    const bool wait = !p && unreserved == NIL && !plan.fresh_full && core_->regions_in_transit > plan.nr_fresh &&
                      coarse_now_ms() < give_up_ms;
    unlock_all();
    if (unreserved != NIL) {  // R1, with no lock held (refill); then search again
      if (!reserve_region_unlocked(unreserved, fresh)) fs_full = true;
      continue;
    }
    if (!wait) {
      // errno names why the file system could not back it, whatever ran since the refusal.
      if (!p && fs_full) errno = last_backing_errno();
      return p;
    }
    std::this_thread::yield();
  }
}

std::size_t pool_impl::bulk_order0(std::size_t n, page** out, alloc_plan& plan) {
  merge_batch mb;
  const std::size_t done = bulk_order0_held(n, out, plan, mb);
  finish_merges(mb);  // outside the cache lock
  return done;
}

std::size_t pool_impl::bulk_order0_held(std::size_t n, page** out, alloc_plan& plan, merge_batch& mb,
                                        bool describe) {
  cpu_cache& c = this_cpu_cache();
  std::lock_guard g(c.mu);
  std::size_t done = 0;
  while (done < n) {
    int pos = -1;
    std::uint32_t r = c.region;
    if (r == NIL || sstate(r).nr_free == 0) {
      if (mb.n == merge_batch::MAX) {  // let the caller finish these merges, then go on
        plan.fresh_full = true;          // (read by alloc_pages_bulk as "stopped for room in the plan")
        break;
      }
      r = refill(c, 0, plan, pos, mb);
    }
    if (r == NIL) break;
    // Take free pages a 64-bit word of the free bitmap at a time; write each map line once.
    split_state& s = sstate(r);
    page* base = vpage(std::uint64_t(r) << HPAGE_PMD_ORDER);
    unsigned lo = HPAGE_PMD_NR, hi = 0, got = 0;
    for (unsigned w = 0; w < 8 && done < n; ++w) {
      std::uint64_t bits = s.free_bits[w];
      while (bits && done < n) {
        const unsigned i = w * 64 + unsigned(std::countr_zero(bits));
        bits &= bits - 1;
        s.map[i / PAGES_PER_MAP_WORD] |= std::uint64_t(code_head(0)) << ((i % PAGES_PER_MAP_WORD) * 4);
        if (describe) init_compound_small(r, i, 0);
        out[done++] = base + i;
        ++got;
        lo = std::min(lo, i);
        hi = i;
      }
      s.free_bits[w] = bits;
    }
    s.nr_free = std::uint16_t(s.nr_free - got);
    c.last_use_ms.store(coarse_now_ms(), std::memory_order_relaxed);
    c.add_free_delta(-std::int64_t(got));
    write_map_locked(r, lo / PAGES_PER_MAP_WORD, hi / PAGES_PER_MAP_WORD);
  }
  return done;
}

page* pool_impl::alloc_large(unsigned order, bool apply) {
  if (order - HPAGE_PMD_ORDER < cpu_cache::STASH_ORDERS) {
    cpu_cache& c = this_cpu_cache();
    std::uint32_t r = NIL;
    {
      std::lock_guard gc(c.mu);
      if (unsigned& nr = c.nr_stash[order - HPAGE_PMD_ORDER]) r = c.stash[order - HPAGE_PMD_ORDER][--nr];
      if (r != NIL) {
        c.last_use_ms.store(coarse_now_ms(), std::memory_order_relaxed);
        c.add_free_delta(-(std::int64_t{1} << order));
      }
    }
    if (r != NIL) {
      page* p = setup_large(r, order);
      if (apply) apply_alloc(p, order, 0);
      return p;
    }
  }
  merge_batch mb;
  std::uint32_t r;
  {
    std::lock_guard g(core_->mu);
    sweep_locked(mb, false);
    r = take_large_locked(order);
  }
  finish_merges(mb);
  bool fs_full = false;
  if (r != NIL) {
    r = reserve_large_unlocked(r, order);
    fs_full = r == NIL;  // errno set; other CPUs' stashes may still hold reserved blocks
  }
  page* p = r != NIL ? setup_large(r, order) : alloc_large_anywhere(order, fs_full);
  if (p && apply) apply_alloc(p, order, 0);
  return p;
}

std::uint32_t pool_impl::reserve_large_unlocked(std::uint32_t r, unsigned order) {
  // R1, outside the pool lock: the block is ours (taken from the buddy) until set up or given back.
  if (reserve_backing(r, 1u << (order - HPAGE_PMD_ORDER))) return r;
  // No room in the file system (errno set): the block goes back; one used and freed since is
  // reserved, if the buddy has one.
  std::lock_guard g(core_->mu);
  buddy_.free(r, order);
  r = take_reserved_block_locked(order);
  if (r == NIL) core_->free_pages += std::uint64_t{1} << order;  // take_large_locked counted it taken
  return r;
}

// alloc_small_anywhere's counterpart: other CPUs' stashes hold free blocks, and wholly free split
// regions (kept, cached or not loaded yet) are free 2 MiB regions in all but name. All of them
// are taken back and merged, and the buddy searched, under every lock (the merge fences there:
// this runs only when the pool has no other room).
page* pool_impl::alloc_large_anywhere(unsigned order, bool fs_full) {
  const std::uint64_t give_up_ms = coarse_now_ms() + TRANSIT_WAIT_MS;
  // Once the file system said no, only blocks reserved already will do (R1): stashed blocks
  // are, and so are regions used and freed since open.
  drain_magazines();  // a page in a magazine keeps its region split (before lock_all: lock order)
  auto take = [&] {
    if (!fs_full) return take_large_locked(order);
    const std::uint32_t b = take_reserved_block_locked(order);
    if (b != NIL) core_->free_pages -= std::uint64_t{1} << order;
    return b;
  };
  for (;;) {
    lock_all();
    for (unsigned i = 0; i < core_->nr_caches; ++i) drain_locked(core_->caches[i], /*idle=*/false);
    std::uint32_t r = take();
    // Regions split on the media before the last open may be wholly free (kept empty at close
    // or crash): loading one merges it.
    while (r == NIL && !lazy_.empty()) {
      const std::uint32_t l = lazy_.back();
      lazy_.pop_back();
      materialise_locked(l);
      r = take();
    }
    while (r == NIL && core_->empty_head != NIL) {
      merge_batch mb;
      while (core_->empty_head != NIL && mb.n < merge_batch::MAX) take_empty_locked(core_->empty_head, mb);
      fence();
      for (unsigned i = 0; i < mb.n; ++i) release_descriptors(mb.regions[i]);
      merged_locked(mb);
      r = take();
    }
    const bool wait = r == NIL && core_->regions_in_transit > 0 && coarse_now_ms() < give_up_ms;
    unlock_all();
    if (r != NIL) {
      if (backing_.reserved(r, 1u << (order - HPAGE_PMD_ORDER))) return setup_large(r, order);
      r = reserve_large_unlocked(r, order);  // R1, with no lock held
      if (r != NIL) return setup_large(r, order);
      fs_full = true;  // given back (errno set): look again for a reserved block
      continue;
    }
    if (!wait) {
      if (fs_full) errno = last_backing_errno();  // as alloc_small_anywhere
      return nullptr;
    }
    std::this_thread::yield();
  }
}

void pool_impl::publish_fresh(const alloc_plan& plan) {
  if (!plan.nr_fresh) return;
  cpu_cache& c = this_cpu_cache();
  std::lock_guard gc(c.mu);
  std::lock_guard g(core_->mu);
  for (unsigned i = 0; i < plan.nr_fresh; ++i) {
    const std::uint32_t r = plan.fresh[i];
    split_state& s = sstate(r);
    s.own_lock.lock();
    s.published = true;  // its SPLIT word is durable: anyone may allocate from it now
    --core_->regions_in_transit;
    if (c.region == NIL && s.nr_free) {
      s.cpu = std::uint16_t(c.index);
      s.lock_cpu.store(std::uint16_t(c.index), std::memory_order_release);
      c.region = r;
    } else {
      filler_.update(r, s);
      // Its pages may all have been freed already (through a slot published before we got
      // here): then it is an empty region like any other (H1).
      if (s.nr_free == HPAGE_PMD_NR) empty_add_locked(r, s, coarse_now_ms());
    }
    s.own_lock.unlock();
  }
}

// ---- frees ------------------------------------------------------------------------------------

void pool_impl::refile(std::uint32_t r) {
  merge_batch mb;
  {
    std::lock_guard g(core_->mu);
    page& d = regions_[r];
    // Re-read under the pool lock: the region may have been taken by a cache, or merged and
    // split again, since our free let go of its lock.
    if (load_kind(d) == RK_SPLIT && d.alloc_state_ && !(d.flags_.load(std::memory_order_relaxed) & PG_region_lazy)) {
      split_state& s = sstate(r);
      if (s.cpu == NO_CPU && s.published) {
        s.own_lock.lock();  // S6: no cache holds it, and only the pool lock's holder could change that
        filler_.update(r, s, filler::change::freed);
        if (s.nr_free == HPAGE_PMD_NR) empty_add_locked(r, s, coarse_now_ms());
        s.own_lock.unlock();
      }
    }
    sweep_locked(mb, false);
  }
  finish_merges(mb);
}

bool pool_impl::drain_caches() {
  bool any = false;
  for (unsigned i = 0; i < core_->nr_caches; ++i) {
    cpu_cache& c = core_->caches[i];
    std::lock_guard gc(c.mu);
    if (!c.holds_anything()) continue;
    std::lock_guard g(core_->mu);
    drain_locked(c, false);
    any = true;
  }
  return any;
}

std::size_t pool_impl::trim() noexcept {
  if (refuse_read_only("trim") || forked("trim")) return 0;
  return trim_now();
}

std::size_t pool_impl::trim_now() noexcept {
  drain_magazines();  // their pages keep their regions from merging
  drain_caches();
  return merge_empty_regions();
}

std::size_t pool_impl::merge_empty_regions() noexcept {
  std::size_t merged = 0;
  for (;;) {
    merge_batch mb;
    {
      std::lock_guard g(core_->mu);
      sweep_locked(mb, true);
    }
    if (!mb.n) return merged;
    merged += mb.n;
    finish_merges(mb);
  }
}

std::uint64_t pool_impl::cached_free_delta() const {
  std::int64_t d = 0;
  for (unsigned i = 0; i < core_->nr_caches; ++i)
    d += core_->caches[i].free_delta.load(std::memory_order_relaxed) + core_->caches[i].remote_delta.load(std::memory_order_relaxed);
  return std::uint64_t(d);
}

void pool_impl::lock_all() {
  for (unsigned i = 0; i < core_->nr_caches; ++i) core_->caches[i].mu.lock();
  core_->mu.lock();
}

void pool_impl::unlock_all() {
  core_->mu.unlock();
  for (unsigned i = core_->nr_caches; i-- > 0;) core_->caches[i].mu.unlock();
}

}  // namespace pmpage::detail
