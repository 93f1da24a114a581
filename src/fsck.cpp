// fsck.cpp — the offline checker (pmpage/fsck.hpp): judges every persistent structure of a pool
// from its bytes, names each problem by location, and repairs what can be repaired without
// losing an allocation.
//
// It shares the format (layout.hpp) and the superblock rules (superblock.cpp) with open, and
// nothing else: it builds no descriptors and runs no allocator code, so it is an independent
// second reading of the media, and it works on images open refuses.
//
// How problems are classified (docs/format.md names the rules):
//   recovery  the leftovers of an interrupted operation that pool::open completes or undoes by
//             itself: a live intent lane, a torn lane, a torn page-map update (a head whose
//             missing tails are FREE, tails with no head), an empty split region, a stale owner
//             entry on a page that is not a head. Not damage.
//   damage    a state no crash produces: a bit flip, a truncated file, an engine that wrote over
//             the metadata. Repaired only when the repair cannot lose an allocation (a region
//             word one bit away from exactly one consistent value, a flipped tail code inside an
//             intact extent, a damaged superblock copy); otherwise left, and the exit code says so.
//
// Repair order: damage first, by direct 8-byte stores on the mapped file; then, only if no
// unrepaired damage is left (recovery clears codes it cannot explain, which would lose an
// allocation hiding behind damage), pool::open runs recovery, every split region is loaded
// (lazy repairs) and the pool closes (merges); a final read-only check confirms.
#include "pmpage/fsck.hpp"

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>
#include <sstream>

#include "badblocks.hpp"
#include "device.hpp"
#include "layout.hpp"
#include "registry.hpp"
#include "pmpage/page.hpp"
#include "pmpage/persistence.hpp"
#include "pmpage/pool.hpp"

namespace pmpage::fsck {

using namespace pmpage::detail;

std::size_t report::uncorrected() const {
  return std::size_t(std::count_if(problems.begin(), problems.end(), [](const problem& p) { return !p.recovery && !p.repaired; }));
}
std::size_t report::corrected() const {
  return std::size_t(std::count_if(problems.begin(), problems.end(), [](const problem& p) { return p.repaired; }));
}
int report::exit_code() const {
  if (uncorrected()) return 4;
  return corrected() ? 1 : 0;
}

namespace {

std::string hex(std::uint64_t v) {
  char b[24];
  std::snprintf(b, sizeof b, "%#llx", (unsigned long long)v);
  return b;
}

/// A page's code as an allocation reads it (owned markers as plain codes; layout.hpp).
std::uint8_t code_at(const std::uint64_t* map, unsigned i) { return plain_code(raw_map_code(map, i)); }
void set_code(std::uint64_t* map, unsigned i, std::uint8_t c) {
  const unsigned sh = (i % PAGES_PER_MAP_WORD) * 4;
  map[i / PAGES_PER_MAP_WORD] = (map[i / PAGES_PER_MAP_WORD] & ~(std::uint64_t{0xF} << sh)) | (std::uint64_t(c) << sh);
}

std::uint64_t load(const void* p) {
  std::uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}

const char* region_word_name(std::uint64_t w) {
  switch (region_word_kind(w)) {
    case region_state::free: return "FREE";
    case region_state::head: return "HEAD";
    case region_state::split: return "SPLIT";
  }
  return "?";
}

std::string describe_word(std::uint64_t w) {
  if (!region_word_valid(w)) return "invalid word " + hex(w);
  std::string s = region_word_name(w);
  if (region_word_kind(w) == region_state::head)
    s += "(order " + std::to_string(region_word_order(w)) + (region_word_owned(w) ? ", owned)" : ")");
  return s;
}

/// A planned direct repair: an 8-byte store.
struct word_fix {
  std::uint64_t offset;
  std::uint64_t value;
};

/// One pass over a mapped image. Holds the effective region table (with planned repairs) and
/// produces the report's figures and problems.
class analyzer {
 public:
  using extents_fn = std::function<std::vector<std::pair<std::uint64_t, std::uint64_t>>(std::uint64_t, std::uint64_t)>;
  /// `extents(begin, end)` lists the byte ranges of [begin, end) that may hold data (the rest are
  /// holes, read as zeros without touching them: a sparse 16 TiB pool's metadata is mostly holes).
  analyzer(const char* base, const superblock& sb, report& out, std::vector<word_fix>& fixes, extents_fn extents)
      : base_(base), sb_(sb), out_(out), fixes_(fixes), extents_(std::move(extents)) {}

  void lanes();
  void region_table(const std::function<void(std::uint64_t, std::uint64_t)>& progress);
  void contents(bool want_regions, const std::function<void(std::uint64_t, std::uint64_t)>& progress);
  /// The page map of split region r as recovery would leave it (damage repairs applied), its
  /// problems added when `record` is set. Returns false if the region is not split.
  bool fixed_map(std::uint64_t r, std::uint64_t* map, bool record);
  void owners_of_split(std::uint64_t r, const std::uint64_t* map);
  /// Is data page `index` allocated (as recovery would leave it)? If so, its allocation's head
  /// index and order.
  bool allocation_of(std::uint64_t index, std::uint64_t& head, unsigned& order);
  std::uint64_t effective_word(std::uint64_t r) const { return words_[r]; }
  /// Every (page index, owner entry) of an allocated head whose owner entry is non-zero, valid
  /// or not, collected by contents() when set: what reidentify rewrites.
  std::vector<std::pair<std::uint64_t, std::uint64_t>>* owned = nullptr;
  bool valid_slot(std::uint64_t off) const { return slot_valid(off); }
  bool damaged(std::uint64_t r) const { return damaged_[r]; }

 private:
  std::uint64_t region_word_offset(std::uint64_t r) const { return sb_.region_table_offset + 8 * r; }
  std::uint64_t map_offset(std::uint64_t r) const { return sb_.page_map_offset + PAGE_MAP_BYTES * r; }
  std::uint64_t owner_offset(std::uint64_t index) const { return sb_.owner_table_offset + 8 * index; }
  pfn_t pfn_of(std::uint64_t index) const { return superblock_pfn_base(sb_) + index; }
  bool slot_valid(std::uint64_t off) const {
    if (off % 8) return false;
    const bool in_root = off >= sb_.root_offset && off - sb_.root_offset <= sb_.root_size - 8;
    const bool in_data = off >= sb_.data_offset && off - sb_.data_offset <= (sb_.nr_regions << (HPAGE_PMD_ORDER + PAGE_SHIFT)) - 8;
    return in_root || in_data;
  }
  pfn_t slot_value(std::uint64_t off) const { return load(base_ + off); }
  /// Does a live intent cover data page `index`? Its entry, codes and slot may then disagree:
  /// replaying the intent makes them agree (recovery's work, not damage).
  bool covered_by_intent(std::uint64_t index) const {
    return std::any_of(pending_.begin(), pending_.end(), [&](const auto& x) { return index >= x.first && index < x.second; });
  }
  /// Is data page `index` allocated (as recovery would leave it)? For the slot-in-free-page rule.
  bool page_allocated(std::uint64_t index);
  problem& add(std::string rule, std::string structure, std::string what) {
    problem p;
    p.rule = std::move(rule);
    p.structure = std::move(structure);
    p.what = std::move(what);
    out_.problems.push_back(std::move(p));
    return out_.problems.back();
  }
  void check_owned_slot(std::uint64_t index, std::uint64_t entry, std::int64_t region, std::int64_t page, bool large,
                        bool marked);

  const char* base_;
  const superblock& sb_;
  report& out_;
  std::vector<word_fix>& fixes_;
  extents_fn extents_;
  std::vector<std::pair<std::uint64_t, std::uint64_t>> pending_;  // page ranges live intents cover
  std::vector<std::uint64_t> words_;  // effective region words (FREE for damaged regions)
  std::vector<bool> damaged_;
  std::vector<std::uint8_t> covered_;  // inside a large allocation (not its head): its order, else 0
  std::uint64_t cached_region_ = ~std::uint64_t{0};
  std::uint64_t cached_map_[PAGE_MAP_WORDS]{};
  bool cached_split_ = false;
};

void analyzer::lanes() {
  const pfn_t start = pfn_of(0), end = pfn_of(sb_.nr_regions * HPAGE_PMD_NR);
  for (unsigned i = 0; i < NR_LANES; ++i) {
    lane l;
    const std::uint64_t off = sb_.lanes_offset + i * LANE_SIZE;
    std::memcpy(&l, base_ + off, sizeof l);
    if (l.seq == 0) continue;
    auto locate = [&](problem& p) {
      p.word = i;
      p.offset = off;
      p.length = LANE_SIZE;
    };
    if (l.checksum != fletcher64(reinterpret_cast<const char*>(&l) + 8, sizeof(lane) - 8)) {
      problem& p = add("L3", "intent lanes", "lane " + std::to_string(i) + " holds a torn intent (checksum mismatch): it was never committed");
      locate(p);
      p.repair = "recovery discards it (clears its seq word)";
      p.recovery = true;
      continue;
    }
    const bool in_range = l.order <= MAX_PAGE_ORDER && l.pfn >= start && l.pfn < end &&
                          (l.pfn - start) % (std::uint64_t{1} << l.order) == 0 &&
                          l.pfn - start + (std::uint64_t{1} << l.order) <= sb_.nr_regions * HPAGE_PMD_NR &&
                          slot_valid(l.slot_offset) && l.kind >= std::uint32_t(intent_kind::alloc_to) &&
                          l.kind <= std::uint32_t(intent_kind::move_to) &&
                          (l.kind != std::uint32_t(intent_kind::move_to) || slot_valid(l.aux)) &&
                          (l.kind != std::uint32_t(intent_kind::split_to) || l.order == HPAGE_PMD_ORDER);
    if (!in_range) {
      problem& p = add("L2", "intent lanes",
                       "lane " + std::to_string(i) + " holds a checksummed intent whose fields are out of range (kind " +
                           std::to_string(l.kind) + ", order " + std::to_string(l.order) + ", pfn " + hex(l.pfn) +
                           ", slot offset " + hex(l.slot_offset) + "): damage or a crafted lane");
      locate(p);
      p.repair = "discard it (recovery skips such a lane and clears its seq word)";
      continue;
    }
    ++out_.pending_intents;
    pending_.emplace_back(l.pfn - start, l.pfn - start + (std::uint64_t{1} << l.order));
    const pfn_t cur = slot_value(l.slot_offset);
    std::string what = "lane " + std::to_string(i) + ": pending ";
    switch (intent_kind(l.kind)) {
      case intent_kind::alloc_to:
        what += "alloc_pages_to of order " + std::to_string(l.order) + " at pfn " + hex(l.pfn) + " into the slot at " +
                hex(l.slot_offset) + (cur == l.pfn ? ": the slot names the page, recovery rolls it forward"
                                                   : ": the slot does not name the page, recovery undoes it");
        break;
      case intent_kind::free_from:
        what += "free_pages_from of order " + std::to_string(l.order) + " at pfn " + hex(l.pfn) + " from the slot at " +
                hex(l.slot_offset) + ": recovery completes the free";
        break;
      case intent_kind::split_to:
        what += "split_huge_page_to at pfn " + hex(l.pfn) + " into 512 slots at " + hex(l.slot_offset) +
                ": recovery completes it if the first slot names the page";
        break;
      case intent_kind::move_to:
        what += "move_pages_owner of pfn " + hex(l.pfn) + " from the slot at " + hex(l.slot_offset) + " to the slot at " +
                hex(l.aux) + ": recovery completes the move";
        break;
    }
    problem& p = add("L1", "intent lanes", what);
    locate(p);
    p.repair = "recovery replays it";
    p.recovery = true;
  }
}

void analyzer::region_table(const std::function<void(std::uint64_t, std::uint64_t)>& progress) {
  const std::uint64_t n = sb_.nr_regions;
  words_.resize(n);
  damaged_.assign(n, false);
  covered_.assign(n, 0);
  // Words in holes are 0 (FREE): read only the table's data extents.
  for (const auto& [a, b] : extents_(sb_.region_table_offset, sb_.region_table_offset + 8 * n))
    for (std::uint64_t off = a / 8 * 8; off < b; off += 8) words_[(off - sb_.region_table_offset) / 8] = load(base_ + off);
  // R1: invalid words. A word one bit away from exactly one valid word that fits the table
  // (alignment, extent, and the neighbours it would cover) is corrected; otherwise damaged.
  auto head_fits = [&](std::uint64_t r, std::uint64_t w) {
    const std::uint64_t span = std::uint64_t{1} << (region_word_order(w) - HPAGE_PMD_ORDER);
    if (r % span || r + span > n) return false;
    for (std::uint64_t t = r + 1; t < r + span; ++t)
      if (words_[t] != make_region_word(region_state::free)) return false;
    return true;
  };
  for (std::uint64_t r = 0; r < n; ++r) {
    if (progress && r % 65536 == 0) progress(r / 4, n);  // the table is a quarter of the work
    const std::uint64_t w = words_[r];
    if (region_word_valid(w)) continue;
    std::vector<std::uint64_t> candidates;
    for (unsigned b = 0; b < 64; ++b) {
      const std::uint64_t c = w ^ (std::uint64_t{1} << b);
      if (!region_word_valid(c)) continue;
      if (region_word_kind(c) == region_state::head && !head_fits(r, c)) continue;
      candidates.push_back(c);
    }
    problem& p = add("R1", "region table", "region " + std::to_string(r) + " has an invalid state word " + hex(w));
    p.region = std::int64_t(r);
    p.word = std::int64_t(r);
    p.offset = region_word_offset(r);
    p.length = 8;
    if (candidates.size() == 1) {
      p.what += " (one bit away from " + describe_word(candidates[0]) + ", the only valid word that fits)";
      p.repair = "set it to " + describe_word(candidates[0]) + " (" + hex(candidates[0]) + ")";
      fixes_.push_back({p.offset, candidates[0]});
      words_[r] = candidates[0];
    } else {
      p.what += candidates.empty() ? " (no valid word is one bit away)"
                                   : " (" + std::to_string(candidates.size()) + " valid words are one bit away: ambiguous)";
      damaged_[r] = true;
      words_[r] = make_region_word(region_state::free);
    }
  }
  // P1: large allocations: aligned, inside the pool, the regions they cover FREE.
  for (std::uint64_t r = 0; r < n;) {
    const std::uint64_t w = words_[r];
    if (damaged_[r] || region_word_kind(w) != region_state::head) {
      ++r;
      continue;
    }
    const unsigned order = region_word_order(w);
    const std::uint64_t span = std::uint64_t{1} << (order - HPAGE_PMD_ORDER);
    if (r % span || r + span > n) {
      problem& p = add("P1", "region table",
                       "region " + std::to_string(r) + " heads an order-" + std::to_string(order) + " page that is " +
                           (r % span ? "misaligned" : "running past the end of the pool"));
      p.region = p.word = std::int64_t(r);
      p.offset = region_word_offset(r);
      p.length = 8;
      damaged_[r] = true;
      ++r;
      continue;
    }
    for (std::uint64_t t = r + 1; t < r + span; ++t) {
      if (words_[t] == make_region_word(region_state::free) && !damaged_[t]) {
        covered_[t] = std::uint8_t(order);
        continue;
      }
      problem& p = add("P1", "region table",
                       "region " + std::to_string(t) + " lies inside the order-" + std::to_string(order) + " page at region " +
                           std::to_string(r) + " but is " + describe_word(load(base_ + region_word_offset(t))));
      p.region = p.word = std::int64_t(t);
      p.offset = region_word_offset(t);
      p.length = 8;
      // An empty SPLIT inside a large page is a flipped FREE word (FREE and SPLIT differ in one
      // bit): making it FREE again loses nothing. Anything else: two claims on the same memory.
      std::uint64_t map[PAGE_MAP_WORDS];
      bool empty_split = false;
      if (!damaged_[t] && region_word_kind(words_[t]) == region_state::split) {
        const std::size_t before = out_.problems.size();
        fixed_map(t, map, false);
        out_.problems.resize(before);
        empty_split = std::all_of(map, map + PAGE_MAP_WORDS, [](std::uint64_t x) { return x == 0; });
      }
      if (empty_split) {
        p.repair = "set it to FREE (a SPLIT region with no allocation: one bit away from FREE)";
        fixes_.push_back({p.offset, make_region_word(region_state::free)});
        words_[t] = make_region_word(region_state::free);
        covered_[t] = std::uint8_t(order);
      } else {
        damaged_[t] = true;
        damaged_[r] = true;
      }
    }
    r += span;
  }
  // R3: a FREE region's page map is ignored, and may hold a crash's leftovers; but an
  // allocation there that a slot names as its owner was SPLIT (a crash cannot leave a slot
  // naming a page whose region word is not durable: the intent undoes it). SPLIT and FREE
  // differ in one bit: restore SPLIT, keeping every allocation.
  std::vector<std::uint64_t> candidates;  // FREE regions whose page map is not a hole
  for (const auto& [a, b] : extents_(sb_.page_map_offset, sb_.page_map_offset + PAGE_MAP_BYTES * n))
    for (std::uint64_t r = (a - sb_.page_map_offset) / PAGE_MAP_BYTES; r < n && map_offset(r) < b; ++r)
      if (candidates.empty() || candidates.back() != r) candidates.push_back(r);
  for (const std::uint64_t r : candidates) {
    if (words_[r] != make_region_word(region_state::free) || covered_[r] || damaged_[r]) continue;
    const char* m = base_ + map_offset(r);
    bool any = false;
    for (unsigned w = 0; w < PAGE_MAP_WORDS && !any; ++w) any = load(m + 8 * w) != 0;
    if (!any) continue;
    std::uint64_t map[PAGE_MAP_WORDS];
    std::memcpy(map, m, PAGE_MAP_BYTES);
    unsigned named = 0;
    for (unsigned i = 0; i < HPAGE_PMD_NR; ++i) {
      if (!code_is_head(code_at(map, i))) continue;
      // Only an entry that counts: under the owned marker (a tagged entry elsewhere is stale), or raw.
      const std::uint64_t e = counted_owner((r << HPAGE_PMD_ORDER) + i, load(base_ + owner_offset((r << HPAGE_PMD_ORDER) + i)),
                                            map_owned(map, i, code_order(code_at(map, i))));
      named += e && slot_valid(e) && slot_value(e) == pfn_of((r << HPAGE_PMD_ORDER) + i);
    }
    if (!named) continue;
    problem& p = add("R3", "region table",
                     "region " + std::to_string(r) + " is FREE but its page map lists allocations, " + std::to_string(named) +
                         " of them owned by slots that name them: its SPLIT word lost a bit");
    p.region = p.word = std::int64_t(r);
    p.offset = region_word_offset(r);
    p.length = 8;
    p.repair = "set it to SPLIT (keeps the allocations the slots name)";
    fixes_.push_back({p.offset, make_region_word(region_state::split)});
    words_[r] = make_region_word(region_state::split);
  }
}

bool analyzer::fixed_map(std::uint64_t r, std::uint64_t* map, bool record) {
  if (damaged_[r] || region_word_kind(words_[r]) != region_state::split) return false;
  std::memcpy(map, base_ + map_offset(r), PAGE_MAP_BYTES);
  auto locate = [&](problem& p, unsigned first, unsigned count) {
    p.region = std::int64_t(r);
    p.page = first;
    p.word = first / PAGES_PER_MAP_WORD;
    p.offset = map_offset(r) + 8 * (first / PAGES_PER_MAP_WORD);
    p.length = 8 * ((first + count - 1) / PAGES_PER_MAP_WORD - first / PAGES_PER_MAP_WORD + 1);
  };
  const std::string where = "region " + std::to_string(r) + " page ";
  for (unsigned i = 0; i < HPAGE_PMD_NR;) {
    const std::uint8_t c = code_at(map, i);
    if (c == CODE_FREE) {
      ++i;
      continue;
    }
    if (code_is_head(c)) {
      const unsigned k = code_order(c), n = 1u << k;
      const bool fits = i % n == 0 && i + n <= HPAGE_PMD_NR;
      unsigned tails = 0, frees = 0, invalid = 0;
      for (unsigned j = i + 1; fits && j < i + n; ++j) {
        const std::uint8_t t = code_at(map, j);
        tails += t == CODE_TAIL;
        frees += t == CODE_FREE;
        invalid += !code_is_head(t) && t != CODE_TAIL && t != CODE_FREE;
      }
      if (fits && tails == n - 1) {
        i += n;
        continue;
      }
      if (fits && invalid && tails + invalid == n - 1) {
        // Every position of the extent is a tail or a code no write produces: flipped tails.
        if (record) {
          problem& p = add("P2", "page map", where + std::to_string(i) + ": the order-" + std::to_string(k) + " allocation has " +
                                                   std::to_string(invalid) + " invalid code(s) where its tails belong");
          locate(p, i, n);
          p.repair = "restore the tail codes (keeps the allocation)";
        }
        // The store restores only the tail codes, word by word, from what the media holds.
        for (unsigned w = i / PAGES_PER_MAP_WORD; w <= (i + n - 1) / PAGES_PER_MAP_WORD; ++w) {
          const std::uint64_t off = map_offset(r) + 8 * w;
          std::uint64_t media = load(base_ + off);
          for (unsigned j = std::max(i + 1, w * PAGES_PER_MAP_WORD); j < std::min(i + n, (w + 1) * PAGES_PER_MAP_WORD); ++j)
            media |= std::uint64_t{CODE_TAIL} << ((j % PAGES_PER_MAP_WORD) * 4);
          if (record && media != load(base_ + off)) fixes_.push_back({off, media});
        }
        for (unsigned j = i + 1; j < i + n; ++j) set_code(map, j, CODE_TAIL);
        i += n;
        continue;
      }
      // Recovery clears the head and the run of tails right after it.
      unsigned j = i + 1;
      while (j < HPAGE_PMD_NR && code_at(map, j) == CODE_TAIL) ++j;
      if (record) {
        // A crash keeps or loses each 8-byte word of a multi-word update whole: torn means every
        // word of the extent holds either all of its new codes or only FREE ones, and the head's
        // word its new codes. Anything else (a gap inside one word) is damage.
        bool torn = fits && invalid == 0 && frees > 0 && tails + frees == n - 1;
        for (unsigned w = i / PAGES_PER_MAP_WORD; torn && w <= (i + n - 1) / PAGES_PER_MAP_WORD; ++w) {
          unsigned expected = 0, free = 0, total = 0;
          for (unsigned x = std::max(i, w * PAGES_PER_MAP_WORD); x < std::min(i + n, (w + 1) * PAGES_PER_MAP_WORD); ++x, ++total) {
            free += code_at(map, x) == CODE_FREE;
            expected += x == i ? code_at(map, x) == c : code_at(map, x) == CODE_TAIL;
          }
          torn = expected == total || (free == total && w != i / PAGES_PER_MAP_WORD);
        }
        problem& p = add("P2", "page map",
                         where + std::to_string(i) + ": head of order " + std::to_string(k) +
                             (torn ? " with " + std::to_string(frees) + " of its tails missing: an allocation or free in flight"
                                   : !fits ? " is misaligned or runs past the region"
                                           : " with other allocations or invalid codes inside its extent"));
        locate(p, i, j - i);
        if (torn) {
          p.repair = "recovery clears it (the operation did not finish)";
          p.recovery = true;
        }
      }
      for (unsigned x = i; x < j; ++x) set_code(map, x, CODE_FREE);
      i = j;
      continue;
    }
    unsigned j = i;
    const bool tail_run = c == CODE_TAIL;
    while (j < HPAGE_PMD_NR && (tail_run ? code_at(map, j) == CODE_TAIL : !code_is_head(code_at(map, j)) && code_at(map, j) != CODE_TAIL &&
                                                                              code_at(map, j) != CODE_FREE))
      ++j;
    if (record) {
      // Torn tails are whole words of TAIL codes after a word that is all FREE (the head's word,
      // or a lost word of the same extent): a crash cannot split a word.
      bool torn = tail_run && i % PAGES_PER_MAP_WORD == 0 && (j - i) % PAGES_PER_MAP_WORD == 0 && i > 0;
      for (unsigned x = i - PAGES_PER_MAP_WORD; torn && x < i; ++x) torn = code_at(map, x) == CODE_FREE;
      problem& p = add("P2", "page map",
                       where + std::to_string(i) + (j - i > 1 ? "-" + std::to_string(j - 1) : std::string()) +
                           (torn       ? ": tail codes with no head before them: an allocation or free in flight"
                            : tail_run ? ": tail codes with no head, not in whole words (a crash keeps or loses each word whole): damage"
                                       : ": invalid code(s) " + hex(c) + " (no write produces them)"));
      locate(p, i, j - i);
      if (torn) {
        p.repair = "recovery clears them (the operation did not finish)";
        p.recovery = true;
      }
    }
    for (unsigned x = i; x < j; ++x) set_code(map, x, CODE_FREE);
    i = j;
  }
  return true;
}

bool analyzer::page_allocated(std::uint64_t index) {
  const std::uint64_t r = index >> HPAGE_PMD_ORDER;
  if (r >= sb_.nr_regions) return false;
  if (covered_[r]) return true;
  const std::uint64_t w = words_[r];
  if (!damaged_[r] && region_word_kind(w) == region_state::head) return true;
  if (r != cached_region_) {
    const std::size_t before = out_.problems.size();
    const auto nfix = fixes_.size();
    cached_split_ = fixed_map(r, cached_map_, false);
    out_.problems.resize(before);
    fixes_.resize(nfix);
    cached_region_ = r;
  }
  return cached_split_ && code_at(cached_map_, unsigned(index & (HPAGE_PMD_NR - 1))) != CODE_FREE;
}

bool analyzer::allocation_of(std::uint64_t index, std::uint64_t& head, unsigned& order) {
  if (!page_allocated(index)) return false;
  std::uint64_t r = index >> HPAGE_PMD_ORDER;
  if (covered_[r] || region_word_kind(words_[r]) == region_state::head) {
    // A large allocation: its head region is the aligned one of its order (P1).
    order = covered_[r] ? covered_[r] : region_word_order(words_[r]);
    r &= ~((std::uint64_t{1} << (order - HPAGE_PMD_ORDER)) - 1);
    head = r << HPAGE_PMD_ORDER;
    return true;
  }
  unsigned i = unsigned(index & (HPAGE_PMD_NR - 1));  // page_allocated cached the region's map
  while (i > 0 && code_at(cached_map_, i) == CODE_TAIL) --i;
  order = code_is_head(code_at(cached_map_, i)) ? code_order(code_at(cached_map_, i)) : 0;
  head = (r << HPAGE_PMD_ORDER) + i;
  return true;
}

void analyzer::check_owned_slot(std::uint64_t index, std::uint64_t entry, std::int64_t region, std::int64_t page, bool large,
                                bool marked) {
  if (owned) owned->emplace_back(index, entry);
  auto locate = [&](problem& p) {
    p.region = region;
    p.page = page;
    p.word = std::int64_t(index);
    p.offset = owner_offset(index);
    p.length = 8;
  };
  const std::string alloc = "the " + std::string(large ? "large page" : "allocation") + " at pfn " + hex(pfn_of(index));
  if (entry == OWNER_INVALID) {
    problem& p = add("O1", "owner table", alloc + " has a damaged owner entry (its check fails)");
    locate(p);
    p.repair = "drop the ownership record; the page stays allocated, owned by nobody (pool::open does the same)";
    return;
  }
  const bool names = slot_valid(entry) && slot_value(entry) == pfn_of(index);
  if (marked && !names && (entry == 0 || slot_valid(entry)) && !covered_by_intent(index)) {
    // The slot protocol's in-flight states (docs/format.md, "The slot protocol"): an owned page
    // is recorded with its marker and entry before its slot can name it, and its slot is cleared
    // before it is recorded free. Its slot not naming it is an interrupted alloc_pages_to or
    // free_pages_from, the loser of a slot race, or a slot the engine overwrote by hand.
    problem& p = add("O1", "owner table",
                     alloc + " is owned by " +
                         (entry == 0 ? std::string("a slot its owner entry does not record (the entry did not reach the media)")
                                     : "the slot at " + hex(entry) + ", which holds " + hex(slot_value(entry))) +
                         ": a slot call the crash interrupted (alloc_pages_to before its publication, free_pages_from after "
                         "clearing the slot, the loser of a slot race) or a slot overwritten by hand");
    locate(p);
    p.repair = "recovery frees the page";
    p.recovery = true;
    return;
  }
  if (!names) {
    problem& p = add("O1", "owner table",
                     alloc + " is recorded as owned by the slot at " + hex(entry) +
                         (slot_valid(entry) ? ", which holds " + hex(slot_value(entry)) + " (the engine overwrote the slot without free_pages_from?)"
                                            : ", which is not a slot of the pool"));
    locate(p);
    if (covered_by_intent(index)) {
      p.what += "; a live intent covers it";
      p.repair = "recovery replays the intent, which makes the owner record and the slot agree";
      p.recovery = true;
      return;
    }
    p.repair = "drop the ownership record; the page stays allocated, owned by nobody (pool::open does the same)";
    return;
  }
  if (entry >= sb_.data_offset && !page_allocated((entry - sb_.data_offset) >> PAGE_SHIFT)) {
    problem& p = add("O1", "owner table",
                     alloc + " is owned by the slot at " + hex(entry) + ", which lies in pool page " +
                         std::to_string((entry - sb_.data_offset) >> PAGE_SHIFT) +
                         ", a free page (the page holding the slot was freed while the slot still owned a page)");
    locate(p);
    if (covered_by_intent(index) || covered_by_intent((entry - sb_.data_offset) >> PAGE_SHIFT)) {
      p.what += "; a live intent covers it";
      p.repair = "recovery replays the intent";
      p.recovery = true;
    }
  }
}

void analyzer::owners_of_split(std::uint64_t r, const std::uint64_t* map) {
  const std::uint64_t first = r << HPAGE_PMD_ORDER;
  for (unsigned i = 0; i < HPAGE_PMD_NR; ++i) {
    const std::uint8_t c = code_at(map, i);
    const bool marked = code_is_head(c) && map_owned(map, i, code_order(c));
    const std::uint64_t raw = load(base_ + owner_offset(first + i));
    // A tagged entry counts only under the owned marker: anywhere else a free left it (stale) and
    // it is ignored, whatever its slot holds: the word may be the engine's own since, even naming
    // the same page, allocated plain and freed again (so a head code lost by damage under a slot
    // that still names it is no longer told from that by its entry; P2 finds a torn extent). A
    // raw entry (a 0.2 pool's) counts without a marker, as before.
    if (!marked && !owner_entry_raw(raw)) continue;
    const std::uint64_t e = decode_owner(first + i, raw);
    if (!code_is_head(c)) {
      // A raw entry there is a crash's leftover (an interrupted free of a 0.2 pool clears it after
      // the slot) only if its slot no longer names the page, or an intent still covers it. A slot
      // that names a page the map calls free is a reference to lost memory.
      const bool named = e != OWNER_INVALID && slot_valid(e) && slot_value(e) == pfn_of(first + i);
      const bool in_flight = covered_by_intent(first + i);
      problem& p = add("O1", "owner table",
                       "region " + std::to_string(r) + " page " + std::to_string(i) + " is not an allocated head but its owner entry names the slot at " +
                           hex(e) + (named && !in_flight ? ", which still holds its pfn: the page map lost an allocation a slot references" : ""));
      p.region = std::int64_t(r);
      p.page = i;
      p.word = std::int64_t(first + i);
      p.offset = owner_offset(first + i);
      p.length = 8;
      if (!named || in_flight) {
        p.repair = "recovery clears the stale entry when it loads the region";
        p.recovery = true;
      }
      continue;
    }
    ++out_.owned_allocations;
    check_owned_slot(first + i, e, std::int64_t(r), i, false, marked);
  }
}

void analyzer::contents(bool want_regions, const std::function<void(std::uint64_t, std::uint64_t)>& progress) {
  const std::uint64_t n = sb_.nr_regions;
  if (want_regions) out_.regions.assign(n, region_info{});
  std::vector<std::uint8_t> free_region(n, 0);
  int largest_small = -1;
  for (std::uint64_t r = 0; r < n; ++r) {
    if (progress && r % 4096 == 0) progress(n / 4 + r * 3 / 4, n);
    region_info info;
    const std::uint64_t w = words_[r];
    if (damaged_[r]) {
      info.kind = region_kind::damaged;
      ++out_.damaged_regions;
    } else if (covered_[r]) {
      info.kind = region_kind::tail;
      info.order = covered_[r];
      ++out_.large_regions;
    } else if (region_word_kind(w) == region_state::head) {
      info.kind = region_kind::head;
      info.order = std::uint8_t(region_word_order(w));
      ++out_.large_allocations;
      ++out_.large_regions;
      if (region_word_owned(w)) {
        ++out_.owned_allocations;
        check_owned_slot(r << HPAGE_PMD_ORDER, decode_owner(r << HPAGE_PMD_ORDER, load(base_ + owner_offset(r << HPAGE_PMD_ORDER))), std::int64_t(r), 0, true,
                         true);
      }
    } else if (region_word_kind(w) == region_state::split) {
      info.kind = region_kind::split;
      std::uint64_t map[PAGE_MAP_WORDS];
      fixed_map(r, map, true);
      ++out_.split_regions;
      unsigned used = 0;
      std::uint64_t free_bits[HPAGE_PMD_NR / 64] = {};
      for (unsigned i = 0; i < HPAGE_PMD_NR;) {
        const std::uint8_t c = code_at(map, i);
        if (c == CODE_FREE) {
          free_bits[i / 64] |= std::uint64_t{1} << (i % 64);
          ++i;
          continue;
        }
        ++out_.small_allocations;
        used += 1u << code_order(c);
        i += 1u << code_order(c);
      }
      info.used_pages = std::uint16_t(used);
      out_.free_pages += HPAGE_PMD_NR - used;
      out_.split_fullness[used == 0 ? 0 : used == HPAGE_PMD_NR ? 5 : 1 + used / 128]++;
      if (used == 0) {
        problem& p = add("R2", "region table", "region " + std::to_string(r) + " is SPLIT but holds no allocation (a crash between the last free and the merge)");
        p.region = p.word = std::int64_t(r);
        p.offset = region_word_offset(r);
        p.length = 8;
        p.repair = "recovery merges it into a free region when it loads it";
        p.recovery = true;
      }
      // The longest naturally aligned free block of the region.
      for (int k = int(HPAGE_PMD_ORDER) - 1; k > largest_small; --k) {
        const unsigned len = 1u << k;
        bool found = false;
        for (unsigned s = 0; s < HPAGE_PMD_NR && !found; s += len) {
          bool all = true;
          for (unsigned x = s; x < s + len && all; ++x) all = free_bits[x / 64] >> (x % 64) & 1;
          found = all;
        }
        if (found) {
          largest_small = k;
          break;
        }
      }
      owners_of_split(r, map);
    } else {
      info.kind = region_kind::free;
      free_region[r] = 1;
      ++out_.free_regions;
      out_.free_pages += HPAGE_PMD_NR;
    }
    if (want_regions) out_.regions[r] = info;
  }
  // The largest free order: an aligned block of 2^(k-9) free regions, else a split region's
  // longest aligned free run. Prefix sums make each block test O(1).
  std::vector<std::uint64_t> prefix(n + 1, 0);
  for (std::uint64_t r = 0; r < n; ++r) prefix[r + 1] = prefix[r] + free_region[r];
  out_.largest_free_order = largest_small;
  for (unsigned k = MAX_PAGE_ORDER; k >= HPAGE_PMD_ORDER && out_.largest_free_order < int(k); --k) {
    const std::uint64_t span = std::uint64_t{1} << (k - HPAGE_PMD_ORDER);
    for (std::uint64_t s = 0; s + span <= n; s += span)
      if (prefix[s + span] - prefix[s] == span) {
        out_.largest_free_order = int(k);
        break;
      }
  }
  out_.total_pages = n * HPAGE_PMD_NR;
  out_.descriptor_bytes_at_open = n * sizeof(page);
  out_.descriptor_bytes_max = out_.descriptor_bytes_at_open + out_.split_regions * HPAGE_PMD_NR * sizeof(page);
  if (progress) progress(n, n);
}

std::string uuid_string(const std::uint64_t u[2]) {
  char b[40];
  std::snprintf(b, sizeof b, "%016llx%016llx", (unsigned long long)u[0], (unsigned long long)u[1]);
  return b;
}

/// The open device and the superblock copy recovery would use.
struct image {
  device dev;
  superblock a{}, b{}, good{};
  std::string pa, pb;
  std::vector<bad_block> bad;  // options' and libpmem2's, normalised
};

/// What can be done about a bad block in a pool structure (docs/cli.md, "Bad blocks").
std::string metadata_advice(const std::string& hit) {
  auto has = [&](const char* s) { return hit.find(s) != std::string::npos; };
  std::string a = "pool::open refuses the pool while the block is bad. Clearing it (`pmpage clear-bad-block`, only "
                  "for a block libpmem2 reports; a CXL device's poison through its driver) zeroes it: ";
  if (has("superblock copy") && !(has("copy A") && has("copy B")))
    return a + "the next pool::open rewrites the copy from the other one; nothing is lost";
  std::string lost;
  if (has("superblock copy A") && has("superblock copy B")) lost += "both superblock copies are lost (the pool cannot be opened); ";
  if (has("intent lanes")) lost += "an operation in flight in those lanes is forgotten (run `pmpage check` after); ";
  if (has("root area")) lost += "that part of the root area reads as zeros (the engine's root data and slots there); ";
  if (has("region table")) lost += "those regions read as free and their allocations are lost; ";
  if (has("page maps")) lost += "those regions' small allocations read as free and are lost; ";
  if (has("owner tables")) lost += "those pages stay allocated but owned by no slot (adopt_pages restores it); ";
  if (!lost.empty()) lost.resize(lost.size() - 2);
  return a + lost + ". Restoring the pool from a replica or backup loses nothing";
}

/// The bad blocks of the open device to check against; EINVAL for an option range outside it.
std::vector<bad_block> gather_bad_blocks(const device& d, const std::filesystem::path& path, const options& opts) {
  std::vector<bad_block> all;
  for (const bad_block& b : opts.bad_blocks) {
    if (b.length == 0 || b.offset >= d.size() || b.length > d.size() - b.offset)
      throw pmpage::error(EINVAL, "pmpage: " + path.string() + ": bad block " + std::to_string(b.offset) + "+" +
                                      std::to_string(b.length) + (b.length == 0 ? " is empty" : " runs past the end of the file"));
    all.push_back(b);
  }
  if (opts.device_bad_blocks)
    for (const bad_block& b : detail::current_badblock_source().list(d.fd(), d.path(), d.type() == device::kind::device_dax))
      if (b.length && b.offset < d.size()) all.push_back({b.offset, std::min(b.length, d.size() - b.offset)});
  return detail::normalise_bad_blocks(std::move(all));
}

/// Records the bad blocks that touch the metadata of `lay` (findings and BB1 problems); true if any.
bool metadata_bad_blocks(const std::vector<bad_block>& bad, const layout& lay, report& out) {
  bool any = false;
  for (const bad_block& b : bad) {
    const std::string hit = metadata_hit(lay, b.offset, b.length);
    if (hit.empty()) continue;
    any = true;
    bad_block_finding f;
    f.what = bad_block_finding::kind::metadata;
    f.offset = b.offset;
    f.length = b.length;
    f.where = hit;
    f.advice = metadata_advice(hit);
    out.bad_blocks.push_back(f);
    problem p;
    p.rule = "BB1";
    p.structure = "bad block";
    p.offset = b.offset;
    p.length = b.length;
    p.what = "bad block " + describe_range(b) + " (a media error) lies in " + hit;
    out.problems.push_back(std::move(p));
  }
  return any;
}

/// Opens and judges the superblocks; fills the identity part of the report. Returns false when
/// the rest cannot be read (the reasons are problems in `out`).
bool open_image(image& img, const std::filesystem::path& path, bool write, report& out, std::vector<word_fix>& fixes,
                const options* opts = nullptr) {
  device& d = img.dev;
  d.open_existing(path.string(), write ? device::access::read_write : device::access::read_only);
  d.lock(!write);
  if (opts) {
    img.bad = gather_bad_blocks(d, path, *opts);
    // Nothing is read from a bad superblock copy (on pmem the read faults or fails): stop here.
    layout head{};
    head.lanes_offset = head.root_offset = head.region_table_offset = head.page_map_offset = head.owner_table_offset =
        2 * SUPERBLOCK_SIZE;
    if (metadata_bad_blocks(img.bad, head, out)) {
      out.path = path.string();
      out.file_size = d.size();
      out.is_device_dax = d.type() == device::kind::device_dax;
      return false;
    }
  }
  out.path = path.string();
  out.file_size = d.size();
  out.is_device_dax = d.type() == device::kind::device_dax;
  auto file_problem = [&](std::string rule, std::string what) {
    problem p;
    p.rule = std::move(rule);
    p.structure = "file";
    p.what = std::move(what);
    out.problems.push_back(std::move(p));
    return false;
  };
  if (d.size() < 2 * SUPERBLOCK_SIZE)
    return file_problem("F1", "too small to be a pmpage pool (" + std::to_string(d.size()) + " bytes)");
  d.read_at(&img.a, sizeof img.a, 0);
  d.read_at(&img.b, sizeof img.b, SUPERBLOCK_SIZE);
  img.pa = superblock_problem(img.a);
  img.pb = superblock_problem(img.b);
  auto sb_problem = [&](int copy, const std::string& why) {
    problem p;
    p.rule = "SB1";
    p.structure = copy == 0 ? "superblock A" : "superblock B";
    p.offset = copy == 0 ? 0 : SUPERBLOCK_SIZE;
    p.length = SUPERBLOCK_SIZE;
    p.what = "copy " + std::string(copy == 0 ? "A" : "B") + " is unusable: " + why;
    out.problems.push_back(std::move(p));
    return &out.problems.back();
  };
  if (!img.pa.empty() && !img.pb.empty()) {
    if (is_creating_marker(img.a) || is_creating_marker(img.b))
      return file_problem("SB3", "pool creation was interrupted (a crash or kill during create): not a usable pool; "
                                 "`pmpage create` formats it again without --force");
    if (img.pa.rfind("bad magic", 0) == 0 && img.pb.rfind("bad magic", 0) == 0)
      return file_problem("SB3", "not a pmpage pool (no superblock magic in either copy)");
    sb_problem(0, img.pa);
    sb_problem(1, img.pb);
    return file_problem("SB3", "both superblock copies are unusable: nothing can be read or repaired safely");
  }
  // An upgrade or a pool::grow interrupted between its two copies (B written first): B is the pool's.
  const bool torn_upgrade = img.pa.empty() && img.pb.empty() && superblocks_torn_update(img.a, img.b);
  img.good = img.pa.empty() && !torn_upgrade ? img.a : img.b;
  // An interrupted re-identification: its copy (written first) is the one that knows both pfn
  // bases; the other may still hold the old superblock, which is no damage of its own.
  const bool reid_a = img.pa.empty() && img.a.reidentify_from != 0, reid_b = img.pb.empty() && img.b.reidentify_from != 0;
  if (reid_a || reid_b) {
    img.good = reid_a ? img.a : img.b;
    problem p;
    p.rule = "SB4";
    p.structure = reid_a ? "superblock A" : "superblock B";
    p.offset = reid_a ? 0 : SUPERBLOCK_SIZE;
    p.length = SUPERBLOCK_SIZE;
    p.what = "a re-identification (pmpage reidentify) from pfn base " + hex(img.good.reidentify_from) + " to " +
             hex(img.good.pfn_base) + " was interrupted: slots may name either; pool::open refuses the pool";
    p.repair = "";  // `pmpage reidentify` finishes it; a repairing check does not guess
    out.problems.push_back(std::move(p));
  }
  const superblock& sb = img.good;
  // A copy that fails its checksum beside a valid one, differing from it only in words a
  // superblock rewrite changes, is that rewrite (grow, the format upgrade, reidentify) cut short
  // mid-copy by a power failure: recovery's, as open repairs it. Any other bad copy is damage.
  const char* torn_write = ": a superblock write (pool::grow, a format upgrade or reidentify) interrupted by a crash; "
                           "it differs from the other copy only in fields such a write changes";
  if (!img.pa.empty()) {
    problem* p = sb_problem(0, img.pa);
    p->repair = "rewrite copy A from copy B (pool::open does the same)";
    // The marker in A beside a valid B is a create interrupted between its last two fences.
    p->recovery = is_creating_marker(img.a);
    if (superblock_torn_write(img.a, img.b, false)) {
      p->what += torn_write;
      p->recovery = true;
    }
    fixes.push_back({0, 0});  // whole-copy fix, applied specially
  } else if (!img.pb.empty()) {
    problem* p = sb_problem(1, img.pb);
    p->repair = "rewrite copy B from copy A (pool::open does the same)";
    p->recovery = is_creating_marker(img.b);
    if (superblock_torn_write(img.b, img.a, true)) {
      p->what += torn_write;
      p->recovery = true;
    }
    fixes.push_back({SUPERBLOCK_SIZE, 0});
  } else if (torn_upgrade) {
    problem* p = sb_problem(0, "");
    p->what = superblocks_differ_by_grow(img.a, img.b)
                  ? "copy A has " + std::to_string(img.a.nr_regions) + " regions and copy B " +
                        std::to_string(img.b.nr_regions) + ": a pool::grow interrupted between its two writes"
                  : "copy A lacks feature flags copy B has (tagged-owners, lazy-owners): a format upgrade interrupted between its two writes";
    p->repair = "rewrite copy A from copy B (pool::open does the same)";
    p->recovery = true;
    fixes.push_back({0, 0});
  } else if (!reid_a && !reid_b && std::memcmp(&img.a, &img.b, sizeof img.a) != 0) {
    // Both valid, different: no crash leaves that (both are written once, identical, behind the
    // creation marker). Which one is the pool's cannot be told from the superblocks; the figures
    // below read copy A. pool::open refuses such a pool too.
    problem* p = sb_problem(1, "");
    p->rule = "SB2";
    p->structure = "superblock B";
    p->what = std::string("copies A and B both pass every rule but differ") +
              (superblock_pfn_base(img.a) != superblock_pfn_base(img.b) || std::memcmp(img.a.uuid, img.b.uuid, sizeof img.a.uuid) != 0
                   ? " (they name different pools: uuid or pfn base)"
                   : " (same pool, different fields)") +
              ": a crash never leaves that, and which copy is right cannot be told";
  }
  out.format_major = sb.major;
  out.format_minor = sb.minor;
  out.uuid = uuid_string(sb.uuid);
  out.create_time_ns = sb.create_time_ns;
  out.section_id = sb.major == FORMAT_MAJOR_SECTION_ID ? sb.section_id : 0;
  out.start_pfn = superblock_pfn_base(sb);
  out.end_pfn = out.start_pfn + sb.nr_regions * HPAGE_PMD_NR;
  out.device_size = sb.device_size;
  out.nr_regions = sb.nr_regions;
  out.max_regions = superblock_capacity(sb);
  out.root_size = sb.root_size;
  out.data_offset = sb.data_offset;
  out.metadata_bytes = sb.owner_table_offset + sb.nr_regions * OWNER_TABLE_BYTES;
  if (d.size() < sb.device_size) {
    file_problem("F2", "truncated: the pool needs " + std::to_string(sb.device_size) + " bytes but the file has " +
                           std::to_string(d.size()) + " (its end, and the pages there, are gone)");
    out.problems.back().offset = d.size();
    out.problems.back().length = sb.device_size - d.size();
    return false;
  }
  const std::uint64_t length = d.type() == device::kind::device_dax ? sb.device_size
                                                                     : sb.data_offset + sb.nr_regions * HPAGE_PMD_SIZE;
  d.map(length, sb.data_offset, write ? device::map_mode::shared_write : device::map_mode::shared_read);
  out.readable = true;
  return true;
}

/// Judges an image; `fixes` receives the direct repairs the damage allows.
bool analyze(image& img, const std::filesystem::path& path, bool write, const options& opts, report& out,
             std::vector<word_fix>& fixes) {
  if (!open_image(img, path, write, out, fixes, &opts)) return false;
  const superblock& sb = img.good;
  layout lay{sb.device_size, sb.nr_regions, sb.lanes_offset, sb.root_offset, sb.root_size, sb.region_table_offset,
             sb.page_map_offset, sb.owner_table_offset, sb.data_offset};
  // Reading a bad block kills the reader (SIGBUS): with one in the metadata nothing else is read.
  if (metadata_bad_blocks(img.bad, lay, out)) return true;
  analyzer a(img.dev.base(), img.good, out, fixes, [&](std::uint64_t b, std::uint64_t e) { return img.dev.data_extents(b, e); });
  a.lanes();
  a.region_table(opts.progress);
  a.contents(opts.regions, opts.progress);
  // Bad data pages: what pool::open will make of each (docs/api.md "Bad blocks").
  const std::uint64_t data_end = sb.data_offset + sb.nr_regions * HPAGE_PMD_SIZE;
  const pfn_t start = pfn_t{sb.section_id} << SECTION_SHIFT;
  for (const bad_block& b : img.bad) {
    const std::uint64_t lo = std::max(b.offset, sb.data_offset), hi = std::min(b.offset + b.length, data_end);
    if (lo >= hi) {
      bad_block_finding f;
      f.offset = b.offset;
      f.length = b.length;
      f.where = "outside the pool's structures (padding, or past the data area)";
      f.advice = "nothing uses it";
      out.bad_blocks.push_back(f);
      continue;
    }
    for (std::uint64_t i = (lo - sb.data_offset) >> PAGE_SHIFT; i <= (hi - 1 - sb.data_offset) >> PAGE_SHIFT; ++i) {
      if (!out.bad_blocks.empty() && out.bad_blocks.back().what != bad_block_finding::kind::outside &&
          out.bad_blocks.back().what != bad_block_finding::kind::metadata && out.bad_blocks.back().pfn == start + i)
        continue;  // two ranges in one page
      bad_block_finding f;
      const std::uint64_t page_off = sb.data_offset + (i << PAGE_SHIFT);
      f.offset = std::max(b.offset, page_off);
      f.length = std::min(b.offset + b.length, page_off + PAGE_SIZE) - f.offset;
      f.pfn = start + i;
      const std::uint64_t r = i >> HPAGE_PMD_ORDER;
      char where[160];
      std::snprintf(where, sizeof where, "pfn %#llx (page %llu of region %llu, file offset %#llx)", (unsigned long long)f.pfn,
                    (unsigned long long)(i & (HPAGE_PMD_NR - 1)), (unsigned long long)r, (unsigned long long)page_off);
      f.where = where;
      std::uint64_t head = 0;
      unsigned order = 0;
      if (a.allocation_of(i, head, order)) {
        f.what = bad_block_finding::kind::allocated;
        f.head = start + head;
        f.order = order;
        char adv[400];
        std::snprintf(adv, sizeof adv, "its data is lost. pool::open marks the order-%u allocation at pfn %#llx "
                      "PG_hwpoison (PageHWPoison) and lists the page in hwpoison_pages(): the engine must not read it, "
                      "restores its contents from elsewhere and frees the allocation, whose bad page then stays out of use",
                      order, (unsigned long long)f.head);
        f.advice = adv;
        problem p;
        p.rule = "BB2";
        p.structure = "bad block";
        p.region = std::int64_t(r);
        p.page = std::int64_t(i & (HPAGE_PMD_NR - 1));
        p.offset = f.offset;
        p.length = f.length;
        p.what = "bad block " + describe_range({f.offset, f.length}) + " (a media error) lies in allocated " + f.where +
                 ", part of the order-" + std::to_string(order) + " allocation at pfn " + hex(f.head);
        out.problems.push_back(std::move(p));
      } else {
        f.what = bad_block_finding::kind::free;
        f.advice = region_word_kind(a.effective_word(r)) == region_state::split
                       ? "free: pool::open quarantines the page (never handed out while the pool is open)"
                       : "free: pool::open quarantines its whole free 2 MiB region (never handed out while the pool is open)";
      }
      out.bad_blocks.push_back(std::move(f));
    }
  }
  return true;
}

bool same_problem(const problem& x, const problem& y) {
  return x.rule == y.rule && x.structure == y.structure && x.region == y.region && x.page == y.page && x.word == y.word;
}

}  // namespace

report check(const std::filesystem::path& path, const options& opts) {
  report first;
  std::vector<word_fix> fixes;
  bool damage_left = false;
  {
    image img;
    if (!analyze(img, path, opts.repair, opts, first, fixes) || !opts.repair || first.problems.empty()) return first;
    damage_left = std::any_of(first.problems.begin(), first.problems.end(),
                              [](const problem& p) { return !p.recovery && !p.repairable(); });
    // 1. Damage, by direct stores (8-byte words; a superblock copy whole), made durable. They
    // land in the metadata, whose blocks a copy may have turned into holes: reserved first, or a
    // store on a full file system would be a SIGBUS instead of an error.
    if (img.dev.type() == device::kind::regular_file) {
      const std::uint64_t meta = std::min<std::uint64_t>(first.metadata_bytes, img.dev.size());
      if (const int e = reserve_file_holes(img.dev.fd(), 0, meta); e != 0 && !cannot_reserve(e))
        throw pmpage::error(e, "pmpage: " + path.string() + ": cannot reserve the blocks of the pool's metadata (" +
                                   std::to_string(meta) + " bytes; fallocate: " + std::strerror(e) +
                                   ") to repair it; nothing was repaired");
    }
    auto pers = make_libpmem_persistence();
    char* base = img.dev.base();
    pers->attach(base, img.dev.mapped_length(), img.dev.store_granularity());
    for (const word_fix& f : fixes) {
      if (f.offset < 2 * SUPERBLOCK_SIZE) {
        std::memcpy(base + f.offset, &img.good, sizeof img.good);
        pers->flush(base + f.offset, sizeof img.good);
      } else {
        std::memcpy(base + f.offset, &f.value, 8);
        pers->flush(base + f.offset, 8);
      }
    }
    pers->drain();
    pers->detach();
    if (pers->writeback_errors() != 0)
      throw pmpage::error(pers->last_writeback_error(),
                          "pmpage: " + path.string() + ": the repairs could not be written back to the media (" +
                              std::strerror(pers->last_writeback_error()) + "): not repaired");
  }  // unlocks: pool::open below takes its own lock
  // 2. Recovery, unless damage is left: recovery clears what it cannot explain, and an
  //    allocation may hide behind that damage. Open replays intents, repairs the superblock
  //    copy and owned large pages; check() loads every split region (torn maps, stale owners,
  //    empty regions); close merges.
  if (!damage_left) {
    pool p = pool::open(path);
    (void)p.check();
    p.close();
  }
  // 3. Confirm with a read-only check; a problem it no longer finds was repaired.
  report after;
  std::vector<word_fix> unused;
  image again;
  options again_opts;
  again_opts.regions = opts.regions;
  again_opts.bad_blocks = opts.bad_blocks;
  again_opts.device_bad_blocks = opts.device_bad_blocks;
  analyze(again, path, false, again_opts, after, unused);
  for (problem& p : first.problems)
    p.repaired = p.repairable() &&
                 std::none_of(after.problems.begin(), after.problems.end(), [&](const problem& q) { return same_problem(p, q); });
  for (problem& q : after.problems)
    if (std::none_of(first.problems.begin(), first.problems.end(), [&](const problem& p) { return same_problem(p, q); }))
      first.problems.push_back(q);
  after.problems = std::move(first.problems);
  return after;
}

region_dump dump_region(const std::filesystem::path& path, std::uint64_t region) {
  report rep;
  std::vector<word_fix> fixes;
  image img;
  if (!open_image(img, path, false, rep, fixes)) {
    std::string why;
    for (const problem& p : rep.problems) why += (why.empty() ? "" : "; ") + p.what;
    throw pmpage::error(EINVAL, "pmpage: " + path.string() + ": cannot read the pool: " + why);
  }
  const superblock& sb = img.good;
  if (region >= sb.nr_regions)
    throw pmpage::error(EINVAL, "pmpage: " + path.string() + ": region " + std::to_string(region) + " is out of range (the pool has " +
                                    std::to_string(sb.nr_regions) + " regions, 0.." + std::to_string(sb.nr_regions - 1) + ")");
  region_dump out;
  const char* base = img.dev.base();
  out.region = region;
  out.word_offset = sb.region_table_offset + 8 * region;
  out.word = load(base + out.word_offset);
  out.page_map_offset = sb.page_map_offset + PAGE_MAP_BYTES * region;
  out.owner_table_offset = sb.owner_table_offset + OWNER_TABLE_BYTES * region;
  out.data_offset = sb.data_offset + (region << (HPAGE_PMD_ORDER + PAGE_SHIFT));
  out.first_pfn = superblock_pfn_base(sb) + (region << HPAGE_PMD_ORDER);
  out.owned = region_word_valid(out.word) && region_word_owned(out.word);
  std::uint64_t map[PAGE_MAP_WORDS];
  std::memcpy(map, base + out.page_map_offset, PAGE_MAP_BYTES);
  const std::uint64_t root_end = sb.root_offset + sb.root_size;
  const std::uint64_t data_end = sb.data_offset + (sb.nr_regions << (HPAGE_PMD_ORDER + PAGE_SHIFT));
  for (unsigned i = 0; i < HPAGE_PMD_NR; ++i) {
    out.codes[i] = code_at(map, i);
    // The entry that counts (O1): under the page's owned marker (the region word's owned bit for
    // entry 0 of a large page), or a raw one; a stale tagged entry reads as none.
    const bool marked = region_word_kind(out.word) == region_state::head
                            ? i == 0 && out.owned
                            : region_word_kind(out.word) == region_state::split && code_is_head(code_at(map, i)) &&
                                  map_owned(map, i, code_order(code_at(map, i)));
    out.owners[i] = counted_owner((std::uint64_t(region) << HPAGE_PMD_ORDER) + i, load(base + out.owner_table_offset + 8 * i), marked);
    const std::uint64_t e = out.owners[i];
    if (e && e % 8 == 0 && ((e >= sb.root_offset && e + 8 <= root_end) || (e >= sb.data_offset && e + 8 <= data_end)))
      out.slot_values[i] = load(base + e);
  }
  // The region's kind and problems, from a whole check (the region table decides tails and
  // damage); problems of other regions are dropped.
  analyzer a(base, sb, rep, fixes, [&](std::uint64_t b, std::uint64_t e) { return img.dev.data_extents(b, e); });
  a.region_table({});
  rep.regions.clear();
  a.contents(true, {});
  out.info = rep.regions[region];
  for (problem& p : rep.problems)
    if (p.region == std::int64_t(region)) out.problems.push_back(std::move(p));
  return out;
}

// ---- reidentify ----------------------------------------------------------------------------------
// Crash order (docs/format.md, "Re-identification"): both superblock copies first name the new
// base with reidentify_from = the old one (A, then B; open refuses such a pool), then the slots
// are rewritten, then both copies drop reidentify_from. A crash anywhere leaves either the old
// pool untouched (A torn: open repairs it from B) or a pool open refuses until reidentify runs
// again; that run finds the new base in the copy that has reidentify_from and finishes: a slot
// named by an owner entry holds the page's old pfn (rewritten) or its new one (done already).

reidentify_result reidentify(const std::filesystem::path& path, const reidentify_options& opts) {
  const std::string where = "pmpage: " + path.string() + ": ";
  report rep;
  std::vector<word_fix> unused;
  image img;
  if (!open_image(img, path, /*write=*/true, rep, unused)) {
    std::string why;
    for (const problem& p : rep.problems) why += (why.empty() ? "" : "; ") + p.what;
    throw pmpage::error(EINVAL, where + "cannot re-identify: no readable pool: " + why);
  }
  const superblock cur = img.good;  // the in-progress copy, if a re-identification was interrupted
  const bool resume = cur.reidentify_from != 0;
  std::vector<std::pair<std::uint64_t, std::uint64_t>> owned;
  analyzer a(img.dev.base(), cur, rep, unused, [&](std::uint64_t b, std::uint64_t e) { return img.dev.data_extents(b, e); });
  a.owned = &owned;
  a.lanes();
  a.region_table({});
  a.contents(false, {});
  if (!resume) {
    // Damage or a crash's leftovers: recovery (check --repair) first, so the owner tables name
    // exactly the slots that hold the pool's pfns and no intent holds an old pfn.
    std::string why;
    for (const problem& p : rep.problems) why += (why.empty() ? "" : "; ") + p.rule + ": " + p.what;
    if (!why.empty())
      throw pmpage::error(EINVAL, where + "cannot re-identify a pool that is not clean (" + why +
                                      "); run `pmpage check --repair` on it first; nothing was changed");
  }
  const std::uint64_t nr_pages = cur.nr_regions * HPAGE_PMD_NR;
  reidentify_result res;
  res.resumed = resume;
  res.old_format_major = cur.major;
  superblock next = cur;
  if (resume) {
    res.old_start_pfn = cur.reidentify_from;
    res.new_start_pfn = cur.pfn_base;
  } else {
    res.old_start_pfn = superblock_pfn_base(cur);
    pfn_t nb = opts.new_start_pfn;
    const auto overlaps_old = [&](pfn_t b) { return b < res.old_start_pfn + nr_pages && res.old_start_pfn < b + nr_pages; };
    if (nb != 0) {
      if (!pfn_base_valid(nb) || overlaps_old(nb))
        throw pmpage::error(EINVAL, where + "cannot re-identify: new pfn base " + hex(nb) +
                                        " is not a multiple of 2^28 in [2^32, 2^64 - 2^33] apart from the old pfns");
      if (std::string why = detail::pfn_range_conflict(nb, nr_pages); !why.empty())
        throw pmpage::error(EBUSY, where + "cannot re-identify to pfn base " + hex(nb) + ": in this process " + why);
    } else {
      // A fresh random base that no pool open in this process has (its original, for a copy).
      for (int i = 0; i < 16 && nb == 0; ++i) {
        nb = detail::pick_pfn_base(nr_pages);
        if (nb != 0) detail::release_picked_pfn_base(nb);
        if (nb != 0 && overlaps_old(nb)) nb = 0;
      }
      if (nb == 0) throw pmpage::error(EBUSY, where + "cannot re-identify: no free pfn range found");
    }
    res.new_start_pfn = nb;
    next.major = FORMAT_MAJOR;
    next.minor = FORMAT_MINOR;
    next.section_id = 0;
    next.pfn_base = nb;
    next.reidentify_from = res.old_start_pfn;
    // The copy is a pool of its own now: a new uuid too (the uuid is informational).
    std::random_device rd;
    next.uuid[0] = (std::uint64_t(rd()) << 32) | rd();
    next.uuid[1] = (std::uint64_t(rd()) << 32) | rd();
    seal_superblock(next);
  }
  res.uuid = uuid_string(next.uuid);

  char* base = img.dev.base();
  // Every store below lands in blocks that exist (a copied file may have holes: a store there
  // on a full file system would be a SIGBUS, not an error).
  if (img.dev.type() == device::kind::regular_file) {
    auto reserve = [&](std::uint64_t off, std::uint64_t len) {
      if (const int e = reserve_file_holes(img.dev.fd(), off, len); e != 0 && !cannot_reserve(e))
        throw pmpage::error(e, where + "cannot reserve the blocks the re-identification writes (fallocate: " +
                                   std::strerror(e) + "); nothing was changed");
    };
    reserve(0, 2 * SUPERBLOCK_SIZE);
    for (const auto& [index, slot] : owned)
      if (a.valid_slot(slot)) reserve(slot & ~std::uint64_t{PAGE_SIZE - 1}, PAGE_SIZE);
  }
  auto pers = make_libpmem_persistence();
  pers->attach(base, img.dev.mapped_length(), img.dev.store_granularity());
  auto write_copies = [&](const superblock& sb) {
    for (const std::uint64_t off : {std::uint64_t{0}, std::uint64_t{SUPERBLOCK_SIZE}}) {
      std::memcpy(base + off, &sb, sizeof sb);
      pers->persist(base + off, sizeof sb);
    }
  };
  write_copies(next);
  for (const auto& [index, slot] : owned) {
    if (!a.valid_slot(slot)) continue;
    std::uint64_t v;
    std::memcpy(&v, base + slot, 8);
    if (v == res.old_start_pfn + index) {
      const std::uint64_t nv = res.new_start_pfn + index;
      std::memcpy(base + slot, &nv, 8);
      pers->flush(base + slot, 8);
      ++res.slots_rewritten;
    } else if (v == res.new_start_pfn + index) {
      ++res.slots_rewritten;  // an interrupted run did it
    }
  }
  pers->drain();
  // A write-back failure (an msync that failed, on a pool that is not DAX): the slots may not be
  // durable, so the old base stays recorded (the pool stays refused until a run completes).
  auto refuse_if_failed = [&] {
    if (pers->writeback_errors() != 0)
      throw pmpage::error(pers->last_writeback_error(),
                          where + "the re-identification could not be written back to the media (" +
                              std::strerror(pers->last_writeback_error()) + "); run it again");
  };
  refuse_if_failed();
  next.reidentify_from = 0;
  seal_superblock(next);
  write_copies(next);
  pers->detach();
  refuse_if_failed();
  if (img.dev.type() == device::kind::regular_file) img.dev.sync();
  return res;
}

}  // namespace pmpage::fsck
