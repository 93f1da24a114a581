// check.cpp — introspection: stats, the allocation walk, and the invariant checker that tests
// (and the later fsck tool) use. Everything here takes the allocator lock; none of it is fast.
#include <algorithm>
#include <bit>
#include <cstdio>
#include <cstring>
#include <unordered_map>
#include <sstream>

#include "pool_impl.hpp"

namespace pmpage::detail {

pool_stats pool_impl::stats() noexcept {
  pool_stats s;
  merge_batch mb;
  {
    std::lock_guard g(core_->mu);
    sweep_locked(mb, false);  // the idle and hysteresis bounds hold whenever someone looks
  }
  finish_merges(mb);
  // One snapshot under every lock: the per-CPU counters change under their cache's lock (a remote
  // free adds to its own CPU's counter under the lock of the region it frees into), so with every
  // cache lock held their sum is the pool's free count, short only of frees into regions no cache
  // holds that are still running (they add after marking their pages free). Reading the counters
  // one by one while others ran (as this did before) could pair an allocation's decrement with
  // a miss of the free that came before it: free_pages above total_pages, cached above free.
  // The magazines' pages (volatile pools) are free: counted with every magazine lock held too,
  // so a refill or flush between a magazine and its region is seen on one side only (M1).
  lock_magazines();
  lock_all();
  std::uint64_t in_magazines = 0;
  for (const magazine* m = mags_; m; m = m->pool_next) in_magazines += m->count.load(std::memory_order_relaxed);
  std::uint64_t stashed_regions = 0;
  for (unsigned i = 0; i < core_->nr_caches; ++i) {
    const cpu_cache& c = core_->caches[i];
    for (unsigned k = 0; k < cpu_cache::STASH_ORDERS; ++k) stashed_regions += std::uint64_t(c.nr_stash[k]) << k;
    if (c.region == NIL) continue;
    ++s.cpu_cached_regions;
    s.cpu_cached_free_pages += sstate(c.region).nr_free;
  }
  const auto counted = std::int64_t(core_->free_pages + cached_free_delta() + in_magazines);
  if (PMPAGE_UNLIKELY(!bad_pages_.empty() || core_->quarantined_regions))
    count_bad_pages_locked(s.quarantined_pages, s.hwpoison_pages, nullptr);
  // The caches' figures are settled: only the pool lock is needed for the rest (lazy regions
  // and the pool's own counters change only under it).
  for (unsigned i = core_->nr_caches; i-- > 0;) core_->caches[i].mu.unlock();
  unlock_magazines();  // (g_mags and the magazine locks come before mu_, which stays held: fine to drop first)
  s.total_pages = nr_pages_;
  s.total_regions = nr_regions_;
  // The bounds pool.hpp promises hold by construction; the clamp only keeps a broken counter
  // (check() reports it as V3) from wrapping the caller's total - free.
  s.free_pages = std::uint64_t(std::clamp<std::int64_t>(counted, 0, std::int64_t(nr_pages_)));
  s.empty_split_regions = core_->nr_empty;
  s.writeback_errno = durability_failed();
  // Lazy regions are not loaded: count their free pages from the page map without loading them.
  for (std::uint32_t r : lazy_) {
    if (!(regions_[r].flags_.load(std::memory_order_relaxed) & PG_region_lazy)) continue;
    const std::uint64_t* map = page_map(r);
    for (unsigned i = 0; i < HPAGE_PMD_NR; ++i) s.free_pages += map_code(map, i) == CODE_FREE;
  }
  s.free_pages = std::min(s.free_pages, s.total_pages);
  s.free_regions = buddy_.free_regions() + stashed_regions;
  s.split_regions = core_->split_regions;
  s.materialised_regions = core_->materialised;
  s.descriptor_bytes = nr_regions_ * sizeof(page) + core_->materialised * HPAGE_PMD_NR * sizeof(page);
  s.allocator_bytes = core_->materialised * sizeof(split_state) + lazy_.capacity() * sizeof(std::uint32_t);
  s.repaired_at_open = core_->repaired;
  s.orphaned_owners = core_->orphaned;
  core_->mu.unlock();
  return s;
}

void pool_impl::collect_allocations(std::vector<std::pair<page*, unsigned>>& out) {
  lock_magazines();
  lock_all();
  struct unlocker {
    pool_impl* p;
    ~unlocker() {
      p->unlock_all();
      p->unlock_magazines();
    }
  } u{this};
  // Pages in a magazine are order-0 heads in the page map but free (M1): not listed.
  const std::vector<const page*> mag = magazine_pages();
  for (std::uint64_t r = 0; r < nr_regions_; ++r) {
    const auto ri = std::uint32_t(r);
    page& d = regions_[r];
    // Large pages change kind outside the locks held here (frees, per-CPU stashes): atomically.
    const std::uint8_t kind = load_kind(d);
    if (kind == RK_HEAD) {
      const unsigned order = load_order(&d);
      if (order >= HPAGE_PMD_ORDER) out.emplace_back(vpage(r << HPAGE_PMD_ORDER), order);
    } else if (kind == RK_SPLIT) {
      if (d.flags_.load(std::memory_order_relaxed) & PG_region_lazy) {
        // Load it (and repair torn work) so its allocations are the DRAM state's.
        materialise_locked(ri);
        if (load_kind(d) != RK_SPLIT) continue;
      }
      if (!d.alloc_state_) continue;
      split_state& s = sstate(ri);
      // Every cache lock is held; a region no cache holds is guarded by its own lock.
      std::unique_lock own(s.own_lock, std::defer_lock);
      if (s.cpu == NO_CPU) own.lock();
      // The page-map mirror, not the descriptors: it is what the media says (S5), and a page
      // being freed (its descriptors already torn down) or allocated (not yet recorded) is
      // simply not listed, instead of showing up as pieces.
      for (unsigned i = 0; i < HPAGE_PMD_NR;) {
        const std::uint8_t c = map_code(s.map, i);
        if (!code_is_head(c)) {
          ++i;
          continue;
        }
        page* p = vpage((r << HPAGE_PMD_ORDER) + i);
        if (code_order(c) != 0 || mag.empty() || !std::binary_search(mag.begin(), mag.end(), p))
          out.emplace_back(p, code_order(c));
        i += 1u << code_order(c);
      }
    }
  }
}

std::string pool_impl::check() {
  lock_magazines();
  lock_all();
  struct unlocker {
    pool_impl* p;
    ~unlocker() {
      p->unlock_all();
      p->unlock_magazines();
    }
  } u{this};
  // Load every split region first (their lazy repairs happen now), so the owner records of small
  // pages are checked right after open too.
  for (std::uint64_t r = 0; r < nr_regions_; ++r)
    if (regions_[r].flags_.load(std::memory_order_relaxed) & PG_region_lazy) materialise_locked(std::uint32_t(r));
  return check_locked(magazine_pages());
}

std::string pool_impl::check_locked(const std::vector<const page*>& mag) {
  std::ostringstream err;
  auto fail = [&](auto&&... parts) {
    (err << ... << parts);
    return err.str();
  };
  std::uint64_t free_pages = 0, split = 0, materialised = 0, buddy_free = 0, listed = 0, empty_listed = 0, quarantined = 0;
  // M1: the magazines' pages, each in one magazine, each met below in a split region.
  std::uint64_t in_magazines = 0;
  for (std::size_t k = 1; k < mag.size(); ++k)
    if (mag[k] == mag[k - 1]) return fail("M1: page ", static_cast<const void*>(mag[k]), " is in two magazines (or twice in one)");
  auto in_magazine = [&](const page* p) { return !mag.empty() && std::binary_search(mag.begin(), mag.end(), p); };
  for (std::uint64_t r = 0; r < nr_regions_;) {
    const auto ri = std::uint32_t(r);
    page& d = regions_[r];
    const std::uint64_t w = view_word(region_word(ri));
    const std::uint32_t f = d.flags_.load(std::memory_order_relaxed);
    switch (d.kind_) {
      case RK_FREE_BLOCK: {
        const std::uint64_t n = std::uint64_t{1} << (d.order_ - HPAGE_PMD_ORDER);
        if (r % n || r + n > nr_regions_) return fail("B1: free block at region ", r, " order ", int(d.order_), " misaligned");
        for (std::uint64_t t = r; t < r + n; ++t) {
          if (t > r && regions_[t].kind_ != RK_FREE_INNER) return fail("B1: region ", t, " inside free block ", r, " has kind ", int(regions_[t].kind_));
          if (view_word(region_word(std::uint32_t(t))) != make_region_word(region_state::free))
            return fail("V2: free region ", t, " is not FREE on the media");
          if (regions_[t].flags_.load(std::memory_order_relaxed) & (PG_region_special | PG_head))
            return fail("I1: free region ", t, " has allocator flags");
        }
        const std::uint32_t buddy = ri ^ std::uint32_t(n);
        if (d.order_ < MAX_PAGE_ORDER && buddy < nr_regions_ && regions_[buddy].kind_ == RK_FREE_BLOCK &&
            regions_[buddy].order_ == d.order_)
          return fail("B2: free buddies ", r, " and ", buddy, " of order ", int(d.order_), " not merged");
        buddy_free += n;
        free_pages += n << HPAGE_PMD_ORDER;
        r += n;
        break;
      }
      case RK_STASHED: {
        const std::uint64_t n = std::uint64_t{1} << (d.order_ - HPAGE_PMD_ORDER);
        bool held = false;
        for (unsigned i = 0; i < core_->nr_caches && !held; ++i) {
          const unsigned k = d.order_ - HPAGE_PMD_ORDER;
          for (unsigned j = 0; k < cpu_cache::STASH_ORDERS && j < core_->caches[i].nr_stash[k]; ++j) held |= core_->caches[i].stash[k][j] == ri;
        }
        if (!held || r % n || r + n > nr_regions_) return fail("C1: stashed block at region ", r, " order ", int(d.order_), " not in a stash or misaligned");
        if (!backing_.reserved(ri, std::uint32_t(n))) return fail("R1: stashed block at region ", r, " is not reserved in the file");
        for (std::uint64_t t = r; t < r + n; ++t) {
          if (t > r && regions_[t].kind_ != RK_FREE_INNER) return fail("C1: region ", t, " inside stashed block ", r, " has kind ", int(regions_[t].kind_));
          if (view_word(region_word(std::uint32_t(t))) != make_region_word(region_state::free))
            return fail("V2: stashed region ", t, " is not FREE on the media");
        }
        free_pages += n << HPAGE_PMD_ORDER;
        r += n;
        break;
      }
      case RK_QUARANTINED:
        if (w != make_region_word(region_state::free)) return fail("Q1: quarantined region ", r, " is not FREE on the media");
        if (!bad_bits_of(ri)) return fail("Q1: quarantined region ", r, " holds no bad page");
        if (f & (PG_region_special | PG_head | PG_hwpoison)) return fail("Q1: quarantined region ", r, " has flags ", f);
        ++quarantined;
        ++r;
        break;
      case RK_HEAD: {
        const std::uint64_t n = std::uint64_t{1} << (d.order_ - HPAGE_PMD_ORDER);
        if (bool(f & PG_hwpoison) != has_bad_region(ri, std::uint32_t(n)))
          return fail("Q3: head region ", r, " PG_hwpoison ", bool(f & PG_hwpoison), " but holds a bad page ", !bool(f & PG_hwpoison));
        if ((w & ~REGION_OWNED) != make_region_word(region_state::head, d.order_)) return fail("V2: head region ", r, " not HEAD(", int(d.order_), ") on the media");
        if (bool(f & PG_slot_owned) != region_word_owned(w)) return fail("O2: head region ", r, " slot-owned in DRAM ", bool(f & PG_slot_owned), ", on the media ", region_word_owned(w));
        // An unowned large page's owner entries are not read by anything (they may be stale: O1),
        // so only an owned one's entry is checked.
        if (region_word_owned(w))
          if (std::string why = owner_problem(r << HPAGE_PMD_ORDER, true); !why.empty()) return fail(why);
        if (!(f & PG_head) || (f & PG_region_special)) return fail("I2: head region ", r, " flags ", f);
        if (d.refcount_.load() <= 0) return fail("I4: allocated region ", r, " has count ", d.refcount_.load());
        for (std::uint64_t t = r + 1; t < r + n; ++t) {
          const page& td = regions_[t];
          if (td.kind_ != RK_TAIL || td.head_index_ != ri || !(td.flags_.load() & PG_region_tail))
            return fail("I2: region ", t, " should be a tail of ", r);
          if (view_word(region_word(std::uint32_t(t))) != make_region_word(region_state::free))
            return fail("P1: tail region ", t, " is not FREE on the media");
        }
        r += n;
        break;
      }
      case RK_SPLIT: {
        ++split;
        if (w != make_region_word(region_state::split)) return fail("V2: split region ", r, " not SPLIT on the media");
        if (f & PG_region_lazy) {
          ++r;
          break;
        }
        if (!(f & PG_split) || !d.alloc_state_) return fail("I1: split region ", r, " not materialised");
        ++materialised;
        split_state& s = sstate(ri);
        std::unique_lock own(s.own_lock, std::defer_lock);  // cache locks are all held already
        if (s.cpu == NO_CPU) own.lock();
        const bool cached = s.cpu != NO_CPU;
        if (cached ? (s.cpu >= core_->nr_caches || core_->caches[s.cpu].region != ri || s.lock_cpu.load() != s.cpu)
                   : s.lock_cpu.load() != NO_CPU)
          return fail("S6: region ", r, " held by cache ", s.cpu, " but its lock or its cache disagrees");
        if (!s.published) return fail("V1: region ", r, " is split but unpublished outside an operation");
        unsigned count = 0;
        for (auto b : s.free_bits) count += unsigned(std::popcount(b));
        if (count != s.nr_free) return fail("S1: region ", r, " free count ", s.nr_free, " != ", count);
        if (!cached && (s.nr_free == 0 ? s.longest != -1 : s.longest != longest_free_order(s)))
          return fail("S3: region ", r, " longest stale");
        if (s.on_empty != (!cached && s.nr_free == HPAGE_PMD_NR))
          return fail("H1: region ", r, (s.on_empty ? " is" : " is not"), " on the empty list with ", s.nr_free, " free pages",
                      cached ? " (held by a cache)" : "");
        empty_listed += s.on_empty;
        const unsigned target = filler::target_list(s);
        if (target != s.list) return fail("S4: region ", r, " is on filler list ", int(s.list), ", belongs on ", target);
        listed += s.list != 0xff;
        free_pages += s.nr_free;
        std::uint64_t map[PAGE_MAP_WORDS];  // the media's map as recovery leaves it (view_word)
        for (unsigned w = 0; w < PAGE_MAP_WORDS; ++w) map[w] = volatile_ ? s.map[w] : view_word(page_map(ri) + w);
        for (unsigned w = 0; w < PAGE_MAP_WORDS; ++w)
          if (s.map[w] != map[w]) return fail("S5: region ", r, " page map word ", w, " differs from its mirror");
        if (const std::uint64_t* bad = bad_bits_of(ri);
            bad ? !s.has_bad || std::memcmp(s.bad_bits, bad, sizeof s.bad_bits) != 0 : s.has_bad)
          return fail("Q2: region ", r, " does not know its bad pages");
        auto bad_in = [&](unsigned first, unsigned count) {
          for (unsigned j = first; s.has_bad && j < first + count; ++j)
            if (s.bad_bits[j / 64] >> (j % 64) & 1) return true;
          return false;
        };
        for (unsigned i = 0; i < HPAGE_PMD_NR;) {
          page* p = vpage((r << HPAGE_PMD_ORDER) + i);
          const bool is_free = s.free_bits[i / 64] & (std::uint64_t{1} << (i % 64));
          const std::uint8_t c = map_code(map, i);
          if (is_free && bad_in(i, 1)) return fail("Q2: bad page ", i, " of region ", r, " is free in DRAM");
          if (!is_free && c == CODE_FREE && bad_in(i, 1)) {  // held out (quarantined): free on the media
            if (p->refcount_.load() != 0 || (p->compound_head_ & 1)) return fail("I4: quarantined page ", i, " of region ", r, " has state");
            ++i;
            continue;
          }
          if (in_magazine(p)) {  // free, though allocated in the region's books (M1)
            if (is_free || c != code_head(0))
              return fail("M1: page ", i, " of region ", r, " is in a magazine but ",
                          is_free ? "free in the region's bitmap" : "not an order-0 head in the page map");
            if (bad_in(i, 1)) return fail("M1: bad page ", i, " of region ", r, " is in a magazine");
            if (p->refcount_.load() != 0 || p->flags_.load() != 0 || load_order(p) != 0 || load_compound_head(p) != 0 ||
                p->private_.load() != 0)
              return fail("M1: page ", i, " of region ", r, " is in a magazine but its descriptor is not free (count ",
                          p->refcount_.load(), ", flags ", p->flags_.load(), ")");
            // Its owner entry may be stale (O1): no marker, so nothing reads it.
            if (owner_entry_raw(view_word(owner_entry((r << HPAGE_PMD_ORDER) + i))))
              return fail("M1: page ", i, " of region ", r, " is in a magazine but has a raw owner entry");
            ++in_magazines;
            ++i;
            continue;
          }
          // A tagged entry off an owned head is stale and ignored (O1); a raw one would count.
          if (owner_entry_raw(view_word(owner_entry((r << HPAGE_PMD_ORDER) + i))) && (is_free || !code_is_head(c)))
            return fail("O1: page ", i, " of region ", r, " is not an allocated head but has a raw owner entry");
          if (is_free) {
            if (c != CODE_FREE) return fail("S2: page ", i, " of region ", r, " free in DRAM, code ", int(c), " on the media");
            if (p->refcount_.load() != 0 || (p->compound_head_ & 1)) return fail("I4: free page ", i, " of region ", r, " has state");
            ++i;
            continue;
          }
          const unsigned k = p->order_;
          if (c != code_head(k)) return fail("S2: page ", i, " of region ", r, " head of order ", k, " but code ", int(c));
          if (i % (1u << k)) return fail("I3: order-", k, " head at page ", i, " misaligned");
          if (p->refcount_.load() <= 0) return fail("I4: allocated page ", i, " of region ", r, " has count ", p->refcount_.load());
          if (bool(p->flags_.load() & PG_head) != (k > 0)) return fail("I3: PG_head wrong at page ", i, " of region ", r);
          if (bool(p->flags_.load() & PG_hwpoison) != bad_in(i, 1u << k))
            return fail("Q3: order-", k, " page ", i, " of region ", r, " PG_hwpoison disagrees with its bad pages");
          const bool owned = p->flags_.load() & PG_slot_owned;
          if (owned && view_word(owner_entry((r << HPAGE_PMD_ORDER) + i)) == 0)
            return fail("O2: page ", i, " of region ", r, " slot-owned in DRAM but its owner entry is 0");
          if (owned != map_owned(map, i, k))
            return fail("O2: page ", i, " of region ", r, " slot-owned in DRAM ", owned, " but its owned marker says ", !owned);
          if (std::string why = owner_problem((r << HPAGE_PMD_ORDER) + i, owned); !why.empty()) return fail(why);
          for (unsigned j = 1; j < (1u << k); ++j) {
            if (p[j].compound_head_ != tail_link(p + j, p)) return fail("I3: tail ", i + j, " of region ", r, " bad head link");
            if (map_code(map, i + j) != CODE_TAIL) return fail("S2: tail ", i + j, " of region ", r, " not a tail on the media");
            if (s.free_bits[(i + j) / 64] & (std::uint64_t{1} << ((i + j) % 64))) return fail("S2: tail ", i + j, " free in DRAM");
          }
          i += 1u << k;
        }
        ++r;
        break;
      }
      default:
        return fail("V1: region ", r, " in transit or unknown kind ", int(d.kind_), " outside an operation");
    }
  }
  if (in_magazines != mag.size())
    return fail("M1: ", mag.size() - in_magazines, " magazine pages are not pages of this pool's split regions");
  if (free_pages != core_->free_pages + cached_free_delta())
    return fail("V3: free pages ", core_->free_pages + cached_free_delta(), " recorded, ", free_pages, " counted");
  if (empty_listed != core_->nr_empty) return fail("H1: empty list holds ", core_->nr_empty, " regions, ", empty_listed, " are marked");
  std::uint64_t walked = 0;
  for (std::uint32_t e = core_->empty_head; e != NIL; e = sstate(e).empty_next)
    if (++walked > core_->nr_empty) return fail("H1: the empty list is longer than its count");
  if (walked != core_->nr_empty) return fail("H1: empty list walk found ", walked, " of ", core_->nr_empty);
  for (unsigned i = 0; i < core_->nr_caches; ++i)
    if (const std::uint32_t r = core_->caches[i].region; r != NIL &&
        (r >= nr_regions_ || regions_[r].kind_ != RK_SPLIT || !regions_[r].alloc_state_ || sstate(r).cpu != i))
      return fail("S6: cache ", i, " holds region ", r, ", which does not name it");
  for (unsigned i = 0; i < core_->nr_caches; ++i)
    if (const std::uint32_t r = core_->caches[i].region; r != NIL && !backing_.reserved(r))
      return fail("R1: cache ", i, " holds region ", r, ", whose blocks are not reserved in the file");
  if (buddy_free != buddy_.free_regions()) return fail("B3: buddy says ", buddy_.free_regions(), " free regions, ", buddy_free, " counted");
  if (split != core_->split_regions) return fail("split region count ", core_->split_regions, " recorded, ", split, " counted");
  if (quarantined != core_->quarantined_regions) return fail("Q1: ", core_->quarantined_regions, " quarantined regions recorded, ", quarantined, " counted");
  if (core_->regions_in_transit != 0) return fail("V1: ", core_->regions_in_transit, " regions counted in transit outside an operation");
  if (materialised != core_->materialised) return fail("materialised count ", core_->materialised, " recorded, ", materialised, " counted");
  if (listed != filler_.size()) return fail("S4: filler holds ", filler_.size(), " regions, ", listed, " are listed");
  return intents_.check([&](const lane& l) {
    return l.order <= MAX_PAGE_ORDER && l.pfn >= start_pfn() && l.pfn < end_pfn() && slot_offset_valid(l.slot_offset) &&
           l.kind >= std::uint32_t(intent_kind::alloc_to) && l.kind <= std::uint32_t(intent_kind::move_to);
  });
}

std::string pool_impl::owner_problem(std::uint64_t index, bool owned) const {
  const std::uint64_t e = read_owner(index);
  std::ostringstream err;
  if (!owned) {  // a tagged entry is stale and ignored there (O1); a raw one would count
    if (owner_entry_raw(view_word(owner_entry(index)))) err << "O1: unowned allocation at page " << index << " has raw owner entry " << e;
    return err.str();
  }
  if (!slot_offset_valid(e)) {
    err << "O1: owned allocation at page " << index << " has owner entry " << e << ", not a slot of the pool";
    return err.str();
  }
  const pfn_t v = std::atomic_ref<pfn_t>(*reinterpret_cast<pfn_t*>(dev_.base() + e)).load(std::memory_order_relaxed);
  if (v != pfn_of_index(index)) {
    err << "O1: the slot at offset " << e << " owns pfn " << std::hex << pfn_of_index(index) << " but holds " << v
        << " (the engine overwrote a slot without free_pages_from?)";
    return err.str();
  }
  if (e >= lay_.data_offset) {
    // The slot's own memory must be somebody's: a slot in a freed page is lost with it.
    const std::uint64_t in = (e - lay_.data_offset) >> PAGE_SHIFT;
    page* holder = state_holder(vpage(in));
    if (!holder || holder->refcount_.load(std::memory_order_relaxed) <= 0)
      err << "O1: the slot owning pfn " << std::hex << pfn_of_index(index) << " lies in pool page " << std::dec << in
          << ", which is free (the page holding the slot was freed while the slot still owned a page)";
  }
  return err.str();
}

std::uint64_t pool_impl::recorded_owner(std::uint64_t index) {
  page* h = state_holder(vpage(index));
  return h ? slot_owner(h, index) : 0;
}

pool::slot_check pool_impl::check_slots(std::span<pfn_t* const> slots) {
  std::vector<std::pair<page*, unsigned>> allocs;
  collect_allocations(allocs);
  struct info {
    unsigned order;
    const pfn_t* named_by = nullptr;  // the first listed slot naming it
    unsigned names = 0;               // how many listed slots name it
  };
  std::unordered_map<pfn_t, info> by_pfn;
  by_pfn.reserve(allocs.size());
  for (auto& [p, order] : allocs) by_pfn.emplace(pfn_of_index(std::uint64_t(p - vmemmap_)), info{order});
  pool::slot_check out;
  char buf[320];
  auto add = [&](std::vector<pool::slot_check::entry>& list, const pfn_t* slot, pfn_t pfn, unsigned order) {
    list.push_back({slot, pfn, order, buf});
  };
  const auto base = reinterpret_cast<std::uintptr_t>(dev_.base());
  // Two passes, so the verdicts do not depend on the list's order: first who names what, then
  // each slot judged against the page's recorded owner. The owner itself is never reported (an
  // engine that clears what is reported must never clear the one slot the media trusts).
  std::vector<std::pair<pfn_t*, pfn_t>> named;  // valid slots naming an allocated head, in list order
  for (pfn_t* const slot : slots) {
    if (!slot) continue;
    // A persistent reference lives in the pool: anything else is listed, never dereferenced
    // (an engine's bad pointer must not crash its fsck).
    const auto at = reinterpret_cast<std::uintptr_t>(slot);
    if (at < base || !slot_offset_valid(at - base)) {
      std::snprintf(buf, sizeof buf, "dangling: slot %p is not an 8-byte aligned word of this pool's root or data area",
                    static_cast<void*>(slot));
      add(out.dangling, slot, 0, 0);
      continue;
    }
    const pfn_t v = std::atomic_ref<pfn_t>(*slot).load(std::memory_order_relaxed);
    if (!v) continue;
    auto it = by_pfn.find(v);
    if (it == by_pfn.end()) {
      std::snprintf(buf, sizeof buf, "dangling: slot %p names pfn %#llx, which is %s", static_cast<void*>(slot),
                    (unsigned long long)v,
                    v < start_pfn() || v >= end_pfn() ? "not a page of this pool" : "not an allocated head (free or a tail)");
      add(out.dangling, slot, v, 0);
      continue;
    }
    info& a = it->second;
    if (!a.named_by) a.named_by = slot;
    ++a.names;
    named.emplace_back(slot, v);
  }
  for (auto [slot, v] : named) {
    const info& a = by_pfn.find(v)->second;
    const std::uint64_t owner = recorded_owner(v - start_pfn());
    if (owner != 0 && reinterpret_cast<std::uintptr_t>(slot) - base == owner) continue;  // the owner
    if (a.names > 1) {
      if (owner)
        std::snprintf(buf, sizeof buf, "shared: slot %p names pfn %#llx, which the slot at %p owns (and names too)",
                      static_cast<void*>(slot), (unsigned long long)v, static_cast<void*>(dev_.base() + owner));
      else
        std::snprintf(buf, sizeof buf, "shared: slot %p names pfn %#llx, which %u listed slots name and none owns",
                      static_cast<void*>(slot), (unsigned long long)v, a.names);
      add(out.shared, slot, v, a.order);
    }
    if (owner == 0)
      std::snprintf(buf, sizeof buf, "misowned: slot %p names pfn %#llx, which no slot owns (allocated with alloc_pages, or its owner record was dropped: adopt_pages makes the slot its owner)",
                    static_cast<void*>(slot), (unsigned long long)v);
    else
      std::snprintf(buf, sizeof buf, "misowned: slot %p names pfn %#llx, which the slot at %p owns",
                    static_cast<void*>(slot), (unsigned long long)v, static_cast<void*>(dev_.base() + owner));
    add(out.misowned, slot, v, a.order);
  }
  for (auto& [pfn, a] : by_pfn) {
    if (a.named_by) continue;
    const std::uint64_t owner = recorded_owner(pfn - start_pfn());
    if (owner)
      std::snprintf(buf, sizeof buf, "unreferenced: order-%u allocation at pfn %#llx is named by no listed slot (its owner on the media is the slot at %p)",
                    a.order, (unsigned long long)pfn, static_cast<void*>(dev_.base() + owner));
    else
      std::snprintf(buf, sizeof buf, "unreferenced: order-%u allocation at pfn %#llx (not slot-owned) is named by no listed slot",
                    a.order, (unsigned long long)pfn);
    add(out.unreferenced, nullptr, pfn, a.order);
  }
  std::sort(out.unreferenced.begin(), out.unreferenced.end(), [](const auto& x, const auto& y) { return x.pfn < y.pfn; });
  return out;
}

}  // namespace pmpage::detail
