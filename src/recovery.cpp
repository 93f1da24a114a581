// recovery.cpp — create and open: format a device, verify and repair superblocks, replay intents,
// rebuild the volatile state from the region table (O(regions); page maps are read lazily, when a
// split region is first touched), and register the pool's pfn range.
//
// Order of open, and why:
//   1. read both superblock copies with pread     nothing is mapped or written before the file is
//   2. validate the region table (read-only)      accepted: a rejected file is never modified
//   3. repair a damaged superblock copy from the good one
//   4. replay intent lanes (idempotent: a crash during recovery replays them again)
//   5. build descriptors and allocator indexes, register the section
//
// Order of create, and why (docs/crash-consistency.md, "Creating a pool"): a crash at any point
// must leave no pool at the path, the file as it was, a valid pool, or a file open() reports as
// an interrupted creation (ERR_CREATE_INTERRUPTED) — never something that looks foreign.
//   new path:       format a locked temporary file <path>.pmpage-creating, fsync, then rename it
//                   to the path (RENAME_NOREPLACE) and fsync the directory: the path never
//                   names a half-made file
//   existing path:  (a file or device DAX keeps its inode) refuse unless it is blank, an
//                   interrupted creation or options.overwrite; then format in place:
//     fence 1  CREATING_MAGIC into the magic word of copies A and B (one 8-byte word each)
//     fence 2  zero the rest of both copies, the lanes, the root and the region table
//     fence 3  superblock B (valid from here: everything it describes is durable)
//     fence 4  superblock A
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <new>
#include <random>
#include <vector>

#include "misuse.hpp"
#include "null_persistence.hpp"
#include "pool_impl.hpp"
#include "registry.hpp"

namespace pmpage::detail {

namespace {

std::uint64_t round_up(std::uint64_t v, std::uint64_t a) { return (v + a - 1) / a * a; }

}  // namespace

std::string too_many_pools() {
  return std::to_string(MAX_OPEN_POOLS) + " pools are already open in this process (MAX_OPEN_POOLS)";
}

int pool_impl::close_flush() noexcept {
  if (closed_flush_) return durability_failed();
  closed_flush_ = true;
  if (registered_) remove_open_pool(this);  // first: a fork from now on leaves this pool's locks alone
  // Then every thread's magazine of this pool gives its pages back and dies (magazine.hpp): no
  // thread reaches the pool through one afterwards, at its exit or ever.
  close_magazines();
  // At close the kept empty regions merge (so the next open finds them FREE, not split) and
  // lazily retired intents become durable; a fork() child and a read-only pool never write.
  if (registered_ && !read_only_ && g_fork_generation.load(std::memory_order_relaxed) == fork_generation_) {
    trim_now();
    fence();
  }
  return durability_failed();
}

pool_impl::~pool_impl() {
  close_flush();
  if (pers_) forget_deferred_flushes();
  if (registered_) unregister_section(pfn_base_);
  else if (picked_base_) release_picked_pfn_base(picked_base_);  // a create that failed before registering
  if (regions_) {
    for (std::uint64_t r = 0; r < nr_regions_; ++r)
      if (regions_[r].alloc_state_) drop_sstate(std::uint32_t(r));
    ::munmap(regions_, regions_bytes_);
  }
  if (states_) ::munmap(states_, states_bytes_);
  {
  }
  // A registered pool's descriptors may still be named by a stale page* (an I/O in flight, a
  // cache entry): their addresses go to the quarantine, not to the next pool (registry.hpp).
  if (registered_)
    quarantine_descriptors(vmemmap_, vmemmap_bytes_);
  else
    release_reservation(vmemmap_, vmemmap_bytes_);
  if (pers_) pers_->detach();
  // dev_ unmaps the device and closes it, which drops the single-opener lock.
}

void pool_impl::refuse_if_not_durable(const char* what) const {
  if (const int e = durability_failed(); e != 0)
    fail(e, path(), std::string(what) + " could not be written back to the media (" + std::strerror(e) +
                        "): the file system lost them; nothing is trusted");
}

void pool_impl::adopt_superblock(const superblock& sb) {
  pfn_base_ = superblock_pfn_base(sb);
  lay_.device_size = sb.device_size;
  lay_.nr_regions = sb.nr_regions;
  lay_.lanes_offset = sb.lanes_offset;
  lay_.root_offset = sb.root_offset;
  lay_.root_size = sb.root_size;
  lay_.region_table_offset = sb.region_table_offset;
  lay_.page_map_offset = sb.page_map_offset;
  lay_.owner_table_offset = sb.owner_table_offset;
  lay_.data_offset = sb.data_offset;
  nr_regions_ = sb.nr_regions;
  nr_pages_ = sb.nr_regions * HPAGE_PMD_NR;
  max_regions_ = sb.nr_regions;  // open and create raise it for a pool that can grow in place
}

std::uint64_t live_capacity(const superblock& sb, const device& d, bool read_only) {
  // Only a pool created with room to grow (SB_GROWABLE) reserves for it: its mapping, descriptor
  // windows and pfn registration then cover the capacity (pfn_valid is true there, docs/api.md).
  // Other pools keep them sized to the pool; the slack of their tables grows offline only.
  return !read_only && d.type() == device::kind::regular_file && (sb.flags & SB_GROWABLE) ? sb.max_regions
                                                                                          : sb.nr_regions;
}

void pool_impl::map_and_attach(std::shared_ptr<persistence> backend, device::map_mode mode) {
  // Device DAX only maps whole multiples of its alignment: map all of it. Files: just what we use.
  const std::uint64_t length = dev_.type() == device::kind::device_dax ? lay_.device_size
                                                                        : lay_.data_offset + nr_regions_ * HPAGE_PMD_SIZE;
  // A pool that can grow in place keeps the address space of its capacity after the mapping:
  // grow() maps more there, so the pool never moves (pointers into it stay valid).
  const std::uint64_t reserve = dev_.type() == device::kind::device_dax ? length
                                                                         : lay_.data_offset + max_regions_ * HPAGE_PMD_SIZE;
  dev_.map(length, lay_.data_offset, mode, reserve);
  pers_ = backend ? std::move(backend) : make_libpmem_persistence();
  wb_seen_ = pers_->writeback_errors();  // a reused backend's earlier failures are not this pool's
  gran_ = pers_->attach(dev_.base(), dev_.mapped_length(), dev_.store_granularity());
  no_flush_ = gran_ == granularity::byte;  // eADR: the fences alone (a volatile pool sets it too)
  numa_node_ = dev_.numa_node();  // device DAX: its memory's node; a file: unknown (-1)
  locate_metadata();
}

void pool_impl::locate_metadata() {
  region_table_ = reinterpret_cast<std::uint64_t*>(dev_.base() + lay_.region_table_offset);
  page_maps_ = reinterpret_cast<std::uint64_t*>(dev_.base() + lay_.page_map_offset);
  owner_table_ = reinterpret_cast<std::uint64_t*>(dev_.base() + lay_.owner_table_offset);
  lanes_ = reinterpret_cast<lane*>(dev_.base() + lay_.lanes_offset);
  // At byte granularity the intent log's flushes go nowhere (it only flushes; the pool fences).
  intents_.init(lanes_, gran_ == granularity::byte ? &no_flush_sink() : pers_.get(), /*enabled=*/!volatile_,
                &core_->intent_state);
}

std::string pool_impl::validate_region_table() const {
  for (std::uint64_t r = 0; r < nr_regions_;) {
    const std::uint64_t w = load_word(region_word(std::uint32_t(r)));
    char buf[160];
    if (!region_word_valid(w)) {
      std::snprintf(buf, sizeof buf, "region table corrupt: region %llu has invalid state word %#llx",
                    (unsigned long long)r, (unsigned long long)w);
      return buf;
    }
    if (region_word_kind(w) != region_state::head) {
      ++r;
      continue;
    }
    const std::uint64_t n = std::uint64_t{1} << (region_word_order(w) - HPAGE_PMD_ORDER);
    if (r % n != 0 || r + n > nr_regions_) {
      std::snprintf(buf, sizeof buf, "region table corrupt: region %llu heads an order-%u page that is misaligned or runs past the end",
                    (unsigned long long)r, region_word_order(w));
      return buf;
    }
    for (std::uint64_t t = r + 1; t < r + n; ++t)
      if (load_word(region_word(std::uint32_t(t))) != make_region_word(region_state::free)) {
        std::snprintf(buf, sizeof buf, "region table corrupt: region %llu lies inside the order-%u page at region %llu but is not free",
                      (unsigned long long)t, region_word_order(w), (unsigned long long)r);
        return buf;
      }
    r += n;
  }
  return {};
}

pool_impl::owner_verdict pool_impl::slot_verdict(std::uint64_t index, std::uint64_t e) const {
  // The slot protocol (pool.cpp, publish_to and free_pages_from; docs/format.md): an owned page
  // is recorded allocated, owned (marker) and with its entry in one epoch, before its slot can
  // name it, and its slot is cleared before the page is recorded free. So an owned page whose
  // slot does not hold its pfn was never published (an alloc_pages_to the crash stopped, the
  // loser of a slot race, the old page of a replacement) or was freed through its slot (a
  // free_pages_from the crash stopped), or its slot was overwritten by hand: it is freed. e is
  // decoded (decode_owner): 0 is an entry that did not reach the media with the marker.
  if (e == 0) return owner_verdict::interrupted;
  if (e == OWNER_INVALID || !slot_offset_valid(e)) return owner_verdict::damaged;
  const pfn_t v = std::atomic_ref<pfn_t>(*reinterpret_cast<pfn_t*>(dev_.base() + e)).load(std::memory_order_relaxed);
  return v == pfn_of_index(index) ? owner_verdict::owns : owner_verdict::interrupted;
}

bool pool_impl::covered_by_earlier_head(std::uint32_t r) const {
  for (unsigned n = HPAGE_PMD_ORDER + 1; n <= MAX_PAGE_ORDER; ++n) {
    const std::uint64_t span = std::uint64_t{1} << (n - HPAGE_PMD_ORDER);
    const std::uint64_t h = r & ~(span - 1);
    if (h != r && load_word(region_word(std::uint32_t(h))) == make_region_word(region_state::head, n)) return true;
  }
  return false;
}

// Replay helpers check that the intent fits what the media says before writing anything; an
// intent that does not (only corruption or a crafted lane produces one) is skipped. `owner` is the
// slot offset the allocation is (to be) owned by; the owner entry is made to agree (rule O1).

bool pool_impl::replay_ensure_allocated(std::uint64_t index, unsigned order, std::uint64_t owner) {
  const auto r = std::uint32_t(index >> HPAGE_PMD_ORDER);
  if (covered_by_earlier_head(r)) return false;
  const std::uint64_t w = load_word(region_word(r));
  if (order >= HPAGE_PMD_ORDER) {
    if ((w & ~REGION_OWNED) != make_region_word(region_state::head, order)) {
      if (w != make_region_word(region_state::free)) return false;
      const std::uint64_t n = std::uint64_t{1} << (order - HPAGE_PMD_ORDER);
      for (std::uint64_t t = r + 1; t < r + n; ++t)
        if (load_word(region_word(std::uint32_t(t))) != make_region_word(region_state::free)) return false;
    }
    write_owner(index, owner);
    persist_word(region_word(r), make_region_word(region_state::head, order, owner != 0));
    return true;
  }
  if (region_word_kind(w) == region_state::head) return false;
  std::uint64_t* map = page_map(r);
  const unsigned first = unsigned(index & (HPAGE_PMD_NR - 1));
  if (region_word_kind(w) == region_state::split) {
    // Every code of the extent is free or already this allocation's (a torn write of it).
    for (unsigned i = first; i < first + (1u << order); ++i) {
      const std::uint8_t c = map_code(map, i), want = i == first ? code_head(order) : CODE_TAIL;
      if (c != CODE_FREE && c != want) return false;
    }
  }
  // A FREE region was split fresh by this very allocation: its map and owner entries were zeroed
  // and the codes written before the intent's fence, so setting them again is idempotent.
  for_each_map_word(first, order, true, [&](unsigned wi, std::uint64_t mask, std::uint64_t bits) {
    persist_word(&map[wi], (load_word(&map[wi]) & ~mask) | bits);
  });
  if (owner) {
    std::uint64_t* mw = &map[owned_marker_at(first, order) / PAGES_PER_MAP_WORD];
    persist_word(mw, with_owned_marker(load_word(mw), first, order, true));
  }
  write_owner(index, owner);
  if (region_word_kind(w) == region_state::free) persist_word(region_word(r), make_region_word(region_state::split));
  return true;
}

bool pool_impl::replay_ensure_free(std::uint64_t index, unsigned order, std::uint64_t owner) {
  const auto r = std::uint32_t(index >> HPAGE_PMD_ORDER);
  if (covered_by_earlier_head(r)) return false;
  // The entry goes whatever the region's state: a FREE region may have become FREE in the same
  // torn epoch that should have cleared it.
  if (read_owner(index) == owner) persist_word(owner_entry(index), 0);
  const std::uint64_t w = load_word(region_word(r));
  if (order >= HPAGE_PMD_ORDER) {
    if ((w & ~REGION_OWNED) == make_region_word(region_state::head, order))
      persist_word(region_word(r), make_region_word(region_state::free));
    return true;
  }
  if (region_word_kind(w) != region_state::split) return true;  // FREE: map ignored
  std::uint64_t* map = page_map(r);
  const unsigned first = unsigned(index & (HPAGE_PMD_NR - 1));
  if (map_code(map, first) != code_head(order)) return true;  // not (or no longer) this allocation
  for_each_map_word(first, order, false, [&](unsigned wi, std::uint64_t mask, std::uint64_t) {
    persist_word(&map[wi], load_word(&map[wi]) & ~mask);
  });
  return true;
}

bool pool_impl::replay_split_to(std::uint64_t index, std::uint64_t slots_off, bool& undone) {
  // Rolled forward unless the split was failing: the caller's slots[1..511] were empty when the
  // intent was written and the split claims each (0 -> pfn + i) after it; a slot holding anything
  // else was filled by a concurrent call, the split gave up, and recovery finishes undoing it.
  // Nothing else touches the region's pages until a later operation's fence has made this
  // intent's retirement durable (intent_log.hpp), so SPLIT means it completed: roll forward.
  const auto r = std::uint32_t(index >> HPAGE_PMD_ORDER);
  if (index & (HPAGE_PMD_NR - 1) || covered_by_earlier_head(r)) return false;
  if (!slot_range_valid(slots_off, HPAGE_PMD_NR)) return false;
  const std::uint64_t w = load_word(region_word(r));
  if (w != make_region_word(region_state::head, HPAGE_PMD_ORDER, true) && w != make_region_word(region_state::split))
    return false;
  auto* slots = reinterpret_cast<pfn_t*>(dev_.base() + slots_off);
  const pfn_t pfn = pfn_of_index(index);
  if (std::atomic_ref<pfn_t>(slots[0]).load(std::memory_order_relaxed) != pfn) return false;
  if (w != make_region_word(region_state::split)) {
    bool failing = false;
    for (unsigned i = 1; i < HPAGE_PMD_NR && !failing; ++i) {
      const pfn_t v = std::atomic_ref<pfn_t>(slots[i]).load(std::memory_order_relaxed);
      failing = v != 0 && v != pfn + i;
    }
    if (failing) {
      undone = true;
      for (unsigned i = 1; i < HPAGE_PMD_NR; ++i)
        if (std::atomic_ref<pfn_t>(slots[i]).load(std::memory_order_relaxed) == pfn + i) {
          std::atomic_ref<pfn_t>(slots[i]).store(0, std::memory_order_relaxed);
          pers_->flush(&slots[i], sizeof(pfn_t));
        }
      return true;
    }
  }
  write_split_to_words(r, slots_off, /*store_slots=*/true);
  persist_word(region_word(r), make_region_word(region_state::split));
  return true;
}

bool pool_impl::replay_move_to(std::uint64_t index, std::uint64_t src_off, std::uint64_t dest_off) {
  // Rolled forward: the destination was empty when the intent was written, and the source stays
  // the owner until this intent's retirement is durable (any later operation fences first).
  if (!slot_offset_valid(dest_off) || dest_off == src_off) return false;
  const std::uint64_t e = read_owner(index);
  if (e != src_off && e != dest_off) return false;
  auto* src = reinterpret_cast<pfn_t*>(dev_.base() + src_off);
  auto* dest = reinterpret_cast<pfn_t*>(dev_.base() + dest_off);
  const pfn_t pfn = pfn_of_index(index);
  const pfn_t s = std::atomic_ref<pfn_t>(*src).load(std::memory_order_relaxed);
  const pfn_t d = std::atomic_ref<pfn_t>(*dest).load(std::memory_order_relaxed);
  // Both empty is the move in flight too (the source's clearing reached the media, the
  // destination's store did not): the intent still names the page.
  if ((s != pfn && s != 0) || (d != pfn && d != 0)) return false;
  write_owner(index, dest_off);
  std::atomic_ref<pfn_t>(*dest).store(pfn, std::memory_order_relaxed);
  pers_->flush(dest, sizeof *dest);
  std::atomic_ref<pfn_t>(*src).store(0, std::memory_order_relaxed);
  pers_->flush(src, sizeof *src);
  return true;
}

void pool_impl::replay_intents() {
  bool any = false;
  // Two passes: committed alloc_to intents (the slot names the page) roll forward first, every
  // other intent second. A batch of alloc_pages_bulk_to may carve several slots' pages from one
  // region it split fresh, whose SPLIT word shares the second epoch with their codes: rolling
  // one slot forward makes the region SPLIT, and only then can undoing another slot of the batch
  // clear that slot's codes (on a FREE region undo has nothing to clear, and a later roll-forward
  // would expose them as an allocation nobody owns). Lanes of different operations never share
  // an extent, so their order does not matter otherwise.
  for (int pass = 0; pass < 2; ++pass)
  for (unsigned i = 0; i < NR_LANES; ++i) {
    lane l;
    std::memcpy(&l, &lanes_[i], sizeof l);
    if (l.seq == 0) continue;
    any = true;
    char line[256];
    auto discard = [&](const char* why) {
      if (pass != 0) return;  // one line per lane
      std::snprintf(line, sizeof line, "intent lane %u: %s; the lane is cleared", i, why);
      note_repair(line);
    };
    if (l.checksum != fletcher64(reinterpret_cast<const char*>(&l) + 8, sizeof(lane) - 8)) {
      discard("torn intent (never committed) discarded");
      continue;
    }
    // Bounds-check everything before use: a crafted lane must not make us write outside the pool.
    const pfn_t start = start_pfn();
    const std::uint64_t index = l.pfn - start;
    if (l.order > MAX_PAGE_ORDER || l.pfn < start || l.pfn >= end_pfn() || index % (std::uint64_t{1} << l.order) ||
        index + (std::uint64_t{1} << l.order) > nr_pages_ || !slot_offset_valid(l.slot_offset)) {
      discard("intent with out-of-range fields ignored");
      continue;
    }
    auto* slot = reinterpret_cast<pfn_t*>(dev_.base() + l.slot_offset);
    const pfn_t cur = std::atomic_ref<pfn_t>(*slot).load(std::memory_order_relaxed);
    // The slot of a committed alloc_to is not touched by any other lane's replay (it names a
    // page whose extent only this lane covers), so both passes classify it alike.
    const bool roll_forward = l.kind == std::uint32_t(intent_kind::alloc_to) && cur == l.pfn;
    if (roll_forward != (pass == 0)) continue;
    const char* kind = "unknown intent";
    const char* outcome = nullptr;  // null: the intent did not fit the media and was skipped
    if (l.kind == std::uint32_t(intent_kind::alloc_to)) {
      kind = "alloc_pages_to";
      const bool ok = cur == l.pfn ? replay_ensure_allocated(index, l.order, l.slot_offset)  // committed
                                   : replay_ensure_free(index, l.order, l.slot_offset);      // not: undo
      if (ok) outcome = cur == l.pfn ? "rolled forward (the slot names the page: allocated, owned by the slot)"
                                     : "undone (the slot does not name the page: the page is free)";
    } else if (l.kind == std::uint32_t(intent_kind::free_from)) {
      kind = "free_pages_from";
      if (replay_ensure_free(index, l.order, l.slot_offset)) {  // the intent was durable: the free happens
        outcome = "rolled forward (the page is free, the slot empty)";
        if (cur == l.pfn) {
          std::atomic_ref<pfn_t>(*slot).store(0, std::memory_order_relaxed);
          pers_->flush(slot, sizeof *slot);
        }
      }
    } else if (l.kind == std::uint32_t(intent_kind::move_to)) {
      kind = "move_pages_owner";
      if (replay_move_to(index, l.slot_offset, l.aux)) outcome = "rolled forward (the destination slot owns the page)";
    } else if (l.kind == std::uint32_t(intent_kind::split_to)) {
      kind = "split_huge_page_to";
      bool undone = false;
      if (l.order == HPAGE_PMD_ORDER && replay_split_to(index, l.slot_offset, undone))
        outcome = undone ? "undone (a slot was taken by a concurrent call: the page stays whole)"
                         : "rolled forward (512 pages, each owned by its slot)";
    }
    if (!outcome) {
      std::snprintf(line, sizeof line, "intent lane %u: %s of pfn %#llx (order %u), slot at offset %#llx: does not fit "
                    "the media, nothing replayed; the lane is cleared", i, kind, (unsigned long long)l.pfn, l.order,
                    (unsigned long long)l.slot_offset);
      note_repair(line);
      continue;
    }
    std::snprintf(line, sizeof line, "intent lane %u: %s of pfn %#llx (order %u), slot at offset %#llx: %s", i, kind,
                  (unsigned long long)l.pfn, l.order, (unsigned long long)l.slot_offset, outcome);
    note_repair(line);
    ++core_->repaired;
  }
  if (!any) return;
  issue_deferred_flushes();
  pers_->drain();  // effects before retiring the intents
  for (unsigned i = 0; i < NR_LANES; ++i) persist_word(&lanes_[i].seq, 0);
  issue_deferred_flushes();
  pers_->drain();
}

void pool_impl::build_volatile() {
  bool repairs = false;  // an owned large page whose slot no longer names it (fenced at the end)
  regions_bytes_ = round_up(max_regions_ * sizeof(page), 4096);
  // Every region descriptor is written below: fault the array in with one call. The capacity's
  // part of a pool that can grow is only reserved (MAP_NORESERVE) until grow() takes it.
  void* r = max_regions_ == nr_regions_
                ? ::mmap(nullptr, regions_bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0)
                : ::mmap(nullptr, regions_bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (r == MAP_FAILED) fail(ENOMEM, path(), "cannot allocate region descriptors");
  regions_ = static_cast<page*>(r);
  states_bytes_ = round_up(max_regions_ * sizeof(split_state), 4096);
  void* st = ::mmap(nullptr, states_bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (st == MAP_FAILED) fail(ENOMEM, path(), "cannot reserve address space for split region states");
  states_ = static_cast<split_state*>(st);
  vmemmap_bytes_ = round_up(max_regions_ * HPAGE_PMD_NR * sizeof(page), 4096);
  vmemmap_ = static_cast<page*>(reserve_aligned(vmemmap_bytes_, std::size_t{1} << DESC_GRANULE_SHIFT));
  if (!vmemmap_) fail(ENOMEM, path(), "cannot reserve address space for 4 KiB descriptors");

  buddy_.init(regions_, nr_regions_, &core_->buddy_state);
  filler_.init(regions_, &core_->filler_state);
  init_caches();
  for (std::uint64_t i = 0; i < nr_regions_; ++i) regions_[i].list_next_ = regions_[i].list_prev_ = NIL;
  std::uint64_t run_start = 0, run_len = 0;  // current run of free regions
  auto end_run = [&] {
    if (run_len) buddy_.add_free_run(std::uint32_t(run_start), run_len);
    core_->free_pages += run_len * HPAGE_PMD_NR;
    run_len = 0;
  };
  for (std::uint64_t i = 0; i < nr_regions_;) {
    const auto ri = std::uint32_t(i);
    std::uint64_t w = load_word(region_word(ri));
    if (region_word_kind(w) == region_state::head && region_word_owned(w)) {
      // An owned large page whose slot does not name it: a slot call the crash interrupted
      // (slot_verdict; materialise_locked decides small pages the same way). Freed: its region
      // word FREE, like the words of the regions it covered (P1), its entry 0.
      const std::uint64_t e = read_owner(i << HPAGE_PMD_ORDER);
      if (slot_verdict(i << HPAGE_PMD_ORDER, e) == owner_verdict::interrupted) {
        const unsigned order = region_word_order(w);
        w = make_region_word(region_state::free);
        if (load_word(owner_entry(i << HPAGE_PMD_ORDER))) repair_word(owner_entry(i << HPAGE_PMD_ORDER), 0);
        repair_word(region_word(ri), w);
        char line[200];
        std::snprintf(line, sizeof line, "region %llu: the order-%u page at pfn %#llx of an interrupted slot call "
                      "freed (its owner slot, at offset %#llx, does not name it)",
                      (unsigned long long)i, order, (unsigned long long)pfn_of_index(i << HPAGE_PMD_ORDER),
                      (unsigned long long)e);
        note_repair(line);
        repairs = true;
        ++core_->repaired;
      }
    }
    page& d = regions_[i];
    if (region_word_kind(w) != region_state::free) end_run();
    switch (region_word_kind(w)) {
      case region_state::head: {
        const unsigned order = region_word_order(w);
        const std::uint64_t n = std::uint64_t{1} << (order - HPAGE_PMD_ORDER);
        d.kind_ = RK_HEAD;
        d.order_ = std::uint8_t(order);
        d.head_index_ = ri;
        d.refcount_.store(1, std::memory_order_relaxed);
        bool owned = region_word_owned(w);
        if (owned) {
          // O1 for an owned large page, as for small pages when their region loads
          // (materialise_locked): kept while its slot names it (freed above if not); a damaged
          // entry drops the record and keeps the page. Only owned heads are read (one entry each).
          const std::uint64_t e = read_owner(i << HPAGE_PMD_ORDER);
          owned = slot_verdict(i << HPAGE_PMD_ORDER, e) == owner_verdict::owns;
          if (!owned) {
            repair_word(owner_entry(i << HPAGE_PMD_ORDER), 0);
            repair_word(region_word(ri), make_region_word(region_state::head, order));
            char line[200];
            std::snprintf(line, sizeof line, "region %llu: the owned order-%u page at pfn %#llx has a damaged owner "
                          "entry (its check fails): owner record cleared, the page stays allocated, owned by nobody",
                          (unsigned long long)i, order, (unsigned long long)pfn_of_index(i << HPAGE_PMD_ORDER));
            note_repair(line);
            repairs = true;
            ++core_->orphaned;
            ++core_->repaired;
          }
        }
        d.flags_.store(PG_head | (owned ? PG_slot_owned : 0u), std::memory_order_relaxed);
        for (std::uint64_t t = 1; t < n; ++t) {
          page& td = regions_[i + t];
          td.kind_ = RK_TAIL;
          td.head_index_ = ri;
          td.flags_.store(PG_region_tail, std::memory_order_relaxed);
        }
        i += n;
        break;
      }
      case region_state::split:
        d.kind_ = RK_SPLIT;
        d.flags_.store(PG_region_lazy, std::memory_order_relaxed);
        lazy_.push_back(ri);
        ++core_->split_regions;
        ++i;
        break;
      case region_state::free:
        if (PMPAGE_UNLIKELY(bad_bits_of(ri) != nullptr)) {  // holds a bad page: held out whole (Q1)
          end_run();
          quarantine_region_locked(ri);
          ++i;
          break;
        }
        if (!run_len) run_start = i;
        ++run_len;
        ++i;
        break;
    }
  }
  end_run();
  if (repairs && media_writable_) {
    issue_deferred_flushes();
    pers_->drain();
  }
  // Lazy regions are loaded lowest first when the allocator needs one.
  std::reverse(lazy_.begin(), lazy_.end());
}

void pool_impl::note_repair(std::string line) {
  std::lock_guard g(log_mu_);
  log_.push_back(std::move(line));
}

std::vector<std::string> pool_impl::recovery_log() const {
  std::lock_guard g(log_mu_);
  return log_;
}

bool pool_impl::refuse_read_only(const char* caller) const noexcept {
  if (PMPAGE_LIKELY(!read_only_)) return false;
  report_misuse("%s: pool %s is open read-only (open_options::read_only): nothing was changed", caller,
                path().c_str());
  return true;
}

void pool_impl::register_pool() {
  section s{};
  s.vmemmap = vmemmap_;
  s.regions = regions_;
  s.data = dev_.base() + lay_.data_offset;
  s.nr_pages = nr_pages_.load(std::memory_order_relaxed);  // its pages now: pool.grow raises it (grow_section)
  s.start_pfn = start_pfn();
  s.owner = this;
  // The capacity's pfns and address granules are reserved to it, so that a grow never meets
  // another pool there.
  const std::string why = register_section(s, max_regions_ * HPAGE_PMD_NR, path());
  if (!why.empty()) fail(EBUSY, path(), "cannot open: " + why);
  registered_ = true;
  add_open_pool(this);
}

std::unique_ptr<pool_impl> pool_impl::open(const std::string& path, const pool::open_options& opts) {
  auto impl = std::make_unique<pool_impl>();
  if (!impl->slot_.acquire()) fail(EMFILE, path, "cannot open: " + too_many_pools());
  device& d = impl->dev_;
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) {
    const int e = errno;
    std::string why = std::string("cannot open: ") + std::strerror(e);
    if (e == ENOENT && ::access(device::temp_name(path).c_str(), F_OK) == 0)
      why += " (a pool::create of this path was interrupted before it finished; run create() again)";
    fail(e, path, why);
  }
  impl->read_only_ = opts.read_only;
  d.open_existing(path, opts.read_only ? device::access::read_only : device::access::read_write);
  d.lock(/*shared=*/opts.read_only);
  if (d.size() < 2 * SUPERBLOCK_SIZE)
    fail(EINVAL, path, "too small to be a pmpage pool (" + std::to_string(d.size()) + " bytes)");
  impl->gather_bad_blocks(opts);  // a bad superblock copy is refused before it is read
  superblock a, b;
  d.read_at(&a, sizeof a, 0);
  d.read_at(&b, sizeof b, SUPERBLOCK_SIZE);
  const std::string pa = superblock_problem(a), pb = superblock_problem(b);
  if (!pa.empty() && !pb.empty()) {
    // A copy keeps the marker until a valid copy has replaced it (B before A): no valid copy and
    // a marker is a create that did not finish. A valid B with the marker still in A opened above.
    if (is_creating_marker(a) || is_creating_marker(b))
      fail(ERR_CREATE_INTERRUPTED, path,
           "pool creation was interrupted (a crash or kill during pool::create): not a usable pool; "
           "run pool::create again, which formats it without options.overwrite");
    if (pa.rfind("bad magic", 0) == 0 && pb.rfind("bad magic", 0) == 0)
      fail(EINVAL, path, "not a pmpage pool (no superblock magic)");
    fail(EINVAL, path, "both superblock copies are unusable: copy A: " + pa + "; copy B: " + pb);
  }
  // Two valid copies that differ only by upgrade flags (SB_UPGRADE_FLAGS, below) or by B's larger
  // size (pool::grow): a two-copy update that wrote B, not A. B is the pool's.
  const superblock& good = pa.empty() && !(pb.empty() && superblocks_torn_update(a, b)) ? a : b;
  if ((pa.empty() && a.reidentify_from != 0) || (pb.empty() && b.reidentify_from != 0))
    fail(EINVAL, path,
         "a re-identification of this pool (pmpage reidentify) was interrupted: some of its slots may name its "
         "new pfns, others its old ones; run `pmpage reidentify " + path + "` again to finish it (not opened)");
  if (d.size() < good.device_size)
    fail(EINVAL, path, "truncated: the pool needs " + std::to_string(good.device_size) + " bytes but the file has " +
                           std::to_string(d.size()));
  impl->adopt_superblock(good);
  impl->max_regions_ = live_capacity(good, d, opts.read_only);
  if (!impl->bad_blocks_.empty()) {
    layout lay = impl->lay_;
    lay.nr_regions = impl->nr_regions_;
    impl->refuse_metadata_hits(lay);  // before anything but the superblocks is read
    impl->index_bad_pages();
  }
  // Read-only: a regular file is mapped private (recovery below writes this process's copy only,
  // with a backend that flushes nothing); device DAX refuses private mappings and is mapped
  // read-only, so it is opened only if recovery has nothing to write there (checked below).
  const bool shared_read = opts.read_only && d.type() == device::kind::device_dax;
  if (!opts.read_only)
    impl->map_and_attach(opts.backend);
  else
    impl->map_and_attach(std::make_shared<null_persistence>(),
                         shared_read ? device::map_mode::shared_read : device::map_mode::private_copy);
  impl->media_writable_ = !shared_read;
  if (std::string why = impl->validate_region_table(); !why.empty()) fail(EINVAL, path, why);
  if (std::string why = pfn_range_conflict(impl->pfn_base_, impl->max_regions_ * HPAGE_PMD_NR, path); !why.empty())
    fail(EBUSY, path, "cannot open: " + why);
  // Both copies are written once at create, identical, and never change: repair a damaged one.
  // Two valid copies that differ are no crash's doing (create writes the marker into both
  // first): which one is the pool's cannot be told, so nothing is guessed or overwritten.
  // The legitimate differences: an upgrade (SB_UPGRADE_FLAGS, below) or a pool::grow that
  // wrote B and not A (both write B first, and B is complete when they write A).
  const bool torn_upgrade = pa.empty() && pb.empty() && superblocks_torn_update(a, b);
  const bool torn_grow = torn_upgrade && superblocks_differ_by_grow(a, b);
  if (pa.empty() && pb.empty() && std::memcmp(&a, &b, sizeof a) != 0 && !torn_upgrade)
    fail(EINVAL, path, "superblock copies A and B are both valid but differ (damage, or a copy of another pool's "
                       "superblock written over one of them): not opened; run `pmpage check` on it");
  const bool repair_a = !pa.empty() || (torn_upgrade && !opts.read_only), repair_b = pa.empty() && !pb.empty();
  if (!opts.read_only && d.type() == device::kind::regular_file) {
    // Every metadata store from here on (repairs, replay, allocations) lands in reserved blocks,
    // never in a hole a full file system cannot fill (SIGBUS): create reserved them, but a copy
    // (cp, rsync -S) or an older pool may have holes there. A no-op when the blocks exist. The
    // owner tables (4 KiB per region) are reserved a region at a time (region_backing.hpp).
    const std::uint64_t meta_end = impl->lay_.owner_table_offset;
    if (const int e = reserve_file_holes(d.fd(), 0, meta_end); e != 0 && !cannot_reserve(e))
      fail(e, path, std::string("cannot reserve the blocks of the pool's metadata (") + std::to_string(meta_end) +
                        " bytes; fallocate: " + std::strerror(e) + "), whose stores would otherwise fault; nothing was written");
    impl->backing_.init(d.fd(), impl->lay_.data_offset, impl->max_regions_, impl->lay_.owner_table_offset);
    // Replay writes owner entries of the regions its intents name: their slices first.
    const std::uint64_t start = impl->start_pfn();
    for (unsigned i = 0; i < NR_LANES; ++i) {
      const std::uint64_t pfn = load_word(&impl->lanes_[i].pfn);
      if (load_word(&impl->lanes_[i].seq) == 0 || pfn < start || pfn >= impl->end_pfn()) continue;
      const auto r = std::uint32_t((pfn - start) >> HPAGE_PMD_ORDER);
      if (const int e = impl->backing_.reserve_owner_slice(r))
        fail(e, path, "cannot reserve the owner table of region " + std::to_string(r) + " for recovery (fallocate: " +
                          std::strerror(e) + "); nothing was written");
    }
  }
  if (shared_read) {
    std::string why;
    if (repair_a || repair_b) why = std::string("superblock copy ") + (repair_a ? "A" : "B") + " needs repair";
    for (unsigned i = 0; i < NR_LANES && why.empty(); ++i)
      if (load_word(&impl->lanes_[i].seq) != 0) why = "intent lane " + std::to_string(i) + " holds an unfinished operation";
    if (!why.empty())
      fail(EROFS, path, "needs recovery (" + why + ") and device DAX cannot be recovered privately for a read-only "
                        "open: open it read-write once, or run `pmpage check --repair`");
  }
  if (repair_a || repair_b) {
    char* dst = impl->dev_.base() + (repair_a ? 0 : SUPERBLOCK_SIZE);
    std::memcpy(dst, &good, sizeof good);
    impl->pers_->persist(dst, sizeof good);
    ++impl->core_->repaired;
    impl->note_repair(torn_grow ? "superblock copy A grown like copy B to " + std::to_string(b.nr_regions) +
                                      " regions (an interrupted pool::grow)"
                      : torn_upgrade ? std::string("superblock copy A upgraded like copy B (an interrupted format upgrade)")
                      : repair_a ? "superblock copy A repaired from copy B (copy A: " + pa + ")"
                               : "superblock copy B repaired from copy A (copy B: " +
                                     (pb.empty() ? std::string("differs from copy A") : pb) + ")");
  }
  if (!opts.read_only && (good.flags & SB_UPGRADE_FLAGS) != SB_UPGRADE_FLAGS) {
    // A pool written before 0.3 (or by a pre-release build of it). Before 0.3 its owner entries
    // are raw offsets (still read as such); tagged entries are written from now on, which a 0.2
    // library would misread as damage and drop. Frees leave entries stale from now on
    // (SB_LAZY_OWNERS), which a reader without the flag would take for owners where a slot
    // happens to name the page. Set the flags they refuse first, B then A (a crash in between
    // leaves the torn upgrade above).
    const std::uint32_t added = SB_UPGRADE_FLAGS & ~good.flags;
    superblock up = good;
    up.flags |= SB_UPGRADE_FLAGS;
    up.checksum = fletcher64(&up, offsetof(superblock, checksum));
    for (const std::size_t at : {SUPERBLOCK_SIZE, std::size_t{0}}) {
      std::memcpy(impl->dev_.base() + at, &up, sizeof up);
      impl->pers_->persist(impl->dev_.base() + at, sizeof up);
    }
    impl->note_repair(std::string("format upgraded: ") +
                      (added & SB_TAGGED_OWNERS ? "owner entries carry a check (feature flag tagged-owners) and " : "") +
                      "frees leave owner entries stale (feature flag lazy-owners) from now on; " +
                      (added & SB_TAGGED_OWNERS ? "pmpage 0.2 refuses" : "a pre-release 0.3 build refuses") +
                      " the pool from now on");
  }
  stamp_opener(impl->fork_generation_, impl->opener_pid_);
  impl->replay_intents();
  impl->build_volatile();
  if (!impl->bad_pages_.empty()) impl->apply_bad_pages_at_open();
  impl->refuse_if_not_durable("open: recovery's writes");
  impl->register_pool();
  if (opts.read_only && !shared_read) {
    // Recovery is done: from here a store into the mapping faults, and lazy loads keep their
    // repairs in DRAM (repair_word).
    impl->dev_.protect_read_only();
    impl->media_writable_ = false;
  }
  return impl;
}

namespace {

/// Without options.overwrite, create() formats an existing file only if nothing can be lost:
/// it is blank (0 bytes, or only holes and zeros), or its creation was interrupted. A file
/// holding a pool, or anything else, is refused (EEXIST) and left untouched. Device DAX cannot be
/// scanned cheaply and is formatted unless it holds a pool (see docs/api.md).
void refuse_unless_formattable(const device& d, const std::string& path) {
  if (d.size() >= 2 * SUPERBLOCK_SIZE) {
    superblock a, b;
    d.read_at(&a, sizeof a, 0);
    d.read_at(&b, sizeof b, SUPERBLOCK_SIZE);
    if (superblock_problem(a).empty() || superblock_problem(b).empty())
      fail(EEXIST, path, "already holds a pmpage pool; set options.overwrite to reformat it");
    if (is_creating_marker(a) || is_creating_marker(b)) return;  // an interrupted create: redo it
  }
  if (d.type() == device::kind::device_dax || d.is_blank()) return;
  fail(EEXIST, path,
       "exists and is not a pmpage pool (nor empty, nor an interrupted creation); "
       "set options.overwrite to format it anyway");
}

}  // namespace

void pool_impl::format(const layout& lay, const superblock& sb) {
  char* base = dev_.base();
  persistence& p = *pers_;
  // Fence 1: the marker. One 8-byte word per copy, so every crash image keeps each copy either
  // as it was or with the marker magic: never a torn old superblock that fails both ways.
  std::memcpy(base, CREATING_MAGIC, sizeof sb.magic);
  std::memcpy(base + SUPERBLOCK_SIZE, CREATING_MAGIC, sizeof sb.magic);
  p.flush(base, sizeof sb.magic);
  p.flush(base + SUPERBLOCK_SIZE, sizeof sb.magic);
  p.drain();
  // Fence 2: the rest of both copies (an old superblock body must not survive under a torn new
  // magic word), lanes, root and region table. Page maps are ignored for FREE regions.
  std::memset(base + sizeof sb.magic, 0, SUPERBLOCK_SIZE - sizeof sb.magic);
  std::memset(base + SUPERBLOCK_SIZE + sizeof sb.magic, 0, SUPERBLOCK_SIZE - sizeof sb.magic);
  p.flush(base, 2 * SUPERBLOCK_SIZE);
  const std::uint64_t meta_end = lay.page_map_offset;  // lanes, root, region table
  std::memset(base + lay.lanes_offset, 0, meta_end - lay.lanes_offset);
  p.flush(base + lay.lanes_offset, meta_end - lay.lanes_offset);
  p.drain();
  // Fences 3 and 4: B, then A. A valid B means everything else is durable, so open() accepts a
  // valid B beside the marker in A (and repairs A).
  std::memcpy(base + SUPERBLOCK_SIZE, &sb, sizeof sb);
  p.persist(base + SUPERBLOCK_SIZE, sizeof sb);
  std::memcpy(base, &sb, sizeof sb);
  p.persist(base, sizeof sb);
}

std::unique_ptr<pool_impl> pool_impl::create(const std::string& path, const pool::options& opts) {
  auto impl = std::make_unique<pool_impl>();
  if (!impl->slot_.acquire()) fail(EMFILE, path, "cannot create: " + too_many_pools());
  if (opts.root_size > MAX_ROOT_SIZE)
    fail(EINVAL, path, "options.root_size " + std::to_string(opts.root_size) + " is above MAX_ROOT_SIZE (" +
                           std::to_string(MAX_ROOT_SIZE) + " bytes)");
  if (opts.mode & ~0777u)
    fail(EINVAL, path, "options.mode has bits outside 0777 (setuid, setgid, sticky or unknown bits): a pool file needs none of them");
  device& d = impl->dev_;
  struct stat st;
  const bool exists = ::stat(path.c_str(), &st) == 0;
  if (!exists && errno != ENOENT) fail(errno, path, std::string("cannot create: ") + std::strerror(errno));
  if (!exists) {
    if (opts.size == 0) fail(EINVAL, path, "does not exist and options.size is 0");
    d.create_temp(path, opts.mode);  // published at `path` only once complete and durable
  } else {
    d.open_existing(path);
  }
  // An existing file keeps its bytes until format() writes the marker; a failure before that
  // gives it back its size too (ensure_size may have grown it): a refused create changes nothing.
  const std::uint64_t original_size = d.size();
  bool formatting = false;
  try {
    d.lock();
    if (exists && !opts.overwrite) refuse_unless_formattable(d, path);
    const std::uint64_t size =
        d.type() == device::kind::regular_file ? std::max<std::uint64_t>(d.size(), opts.size) : d.size();
    if (size == 0) fail(EINVAL, path, "is empty and options.size is 0");
    if (opts.max_size != 0 && opts.max_size < size)
      fail(EINVAL, path, "options.max_size " + std::to_string(opts.max_size) + " is below the pool's size " +
                             std::to_string(size) + " (0: no room to grow)");
    if (opts.max_size > size && d.type() == device::kind::device_dax)
      fail(EINVAL, path, "options.max_size: a device DAX namespace has a fixed size and cannot grow (leave it 0)");
    if (opts.max_size > MAX_GROWABLE_SIZE)
      fail(EINVAL, path, "options.max_size " + std::to_string(opts.max_size) + " is above the largest pool (" +
                             std::to_string(MAX_POOL_PAGES) + " pages of data plus their metadata)");
    layout lay;
    const std::uint64_t data_align = std::max<std::uint64_t>(d.alignment(), HPAGE_PMD_SIZE);
    if (layout cap; opts.max_size > size && compute_layout(opts.max_size, opts.root_size, data_align, cap) &&
                    !compute_growable_layout(size, opts.max_size, opts.root_size, data_align, lay)) {
      const layout need = layout_for_regions(cap.nr_regions, opts.root_size, data_align);
      fail(EINVAL, path, "too small for options.max_size " + std::to_string(opts.max_size) + ": its tables take " +
                             std::to_string(need.data_offset) + " bytes before the data, so the pool needs at least " +
                             std::to_string(need.data_offset + HPAGE_PMD_SIZE) + " bytes (size " + std::to_string(size) + ")");
    }
    if (!compute_growable_layout(size, opts.max_size, opts.root_size, data_align, lay))
      fail(EINVAL, path, "too small: " + std::to_string(size) + " bytes cannot hold the metadata and one 2 MiB region (MIN_POOL_SIZE is " +
                             std::to_string(MIN_POOL_SIZE) + " bytes; more with a larger root area or device alignment)");

    // A pool that can grow is placed where its capacity's pfns are free too (in this process).
    const pfn_t pfn_base = impl->picked_base_ =
        pick_pfn_base((lay.max_regions > lay.nr_regions ? lay.max_regions : lay.nr_regions) * HPAGE_PMD_NR);
    if (pfn_base == 0) fail(EBUSY, path, "cannot create: no free pfn range found (random source broken?)");
    std::random_device rd;
    const std::uint64_t uuid0 = (std::uint64_t(rd()) << 32) | rd(), uuid1 = (std::uint64_t(rd()) << 32) | rd();
    timespec ts;
    ::clock_gettime(CLOCK_REALTIME, &ts);
    const superblock sb = make_superblock(lay, pfn_base, uuid0, uuid1,
                                          std::uint64_t(ts.tv_sec) * 1000000000ull + std::uint64_t(ts.tv_nsec));

    // Everything that can fail for want of space happens before the first write to the device.
    // The new size is made durable first: a valid superblock must never name a size the file
    // loses in a power failure (open would call it truncated).
    d.ensure_size(size, opts.preallocate);
    // Only the metadata is ever written by the library: the padding up to the data alignment is
    // not reserved (it was 2 MiB per pool on a file, almost all of it never used).
    d.reserve_blocks(lay.owner_table_offset + lay.nr_regions * OWNER_TABLE_BYTES);
    d.sync();
    impl->adopt_superblock(sb);
    impl->max_regions_ = live_capacity(sb, d, false);
    impl->map_and_attach(opts.backend);
    // A sparse file's data blocks are reserved region by region as the allocator takes them
    // (region_backing.hpp); preallocated ones are all there.
    if (d.type() == device::kind::regular_file && !opts.preallocate)
      impl->backing_.init(d.fd(), lay.data_offset, impl->max_regions_, lay.owner_table_offset);
    formatting = true;
    impl->format(lay, sb);
    impl->refuse_if_not_durable("create: the new pool's metadata");
    d.sync();  // without MAP_SYNC: block allocations of the pages just written

    stamp_opener(impl->fork_generation_, impl->opener_pid_);
    impl->build_volatile();
    impl->register_pool();
    d.publish();  // new path: rename into place; existing path: nothing to do
  } catch (...) {
    // Detach before the mapping goes: a backend may read it then (a simulated device keeps a copy
    // of it). The destructor's second detach finds nothing attached.
    if (impl->pers_) impl->pers_->detach();
    if (exists && !formatting) d.restore_size(original_size);
    d.abandon();
    throw;
  }
  return impl;
}

}  // namespace pmpage::detail
