// layout.hpp — the on-media format. Everything a pool stores on its device is declared here.
//
//   offset 0            superblock copy A            (4 KiB)
//   offset 4 KiB        superblock copy B            (4 KiB)
//   lanes_offset        intent lanes: NR_LANES x 64 B (4 KiB)
//   root_offset         root area                    (root_size, multiple of 4 KiB, zeroed at create)
//   region_table_offset region state words: 8 B x nr_regions (rounded up to 4 KiB)
//   page_map_offset     page maps: 256 B x nr_regions  (rounded up to 4 KiB)
//   owner_table_offset  owner tables: 4 KiB x nr_regions (8 B per page: the slot that owns it)
//   data_offset         data area: nr_regions x 2 MiB  (2 MiB aligned, or the device's alignment)
//
// Fixed-width little-endian fields, natural alignment, reserved space for growth; see
// docs/format.md for the rules each field obeys. Every persistent update is one aligned 8-byte
// word store (x86 guarantees 8-byte failure atomicity) unless an intent lane covers it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "pmpage/types.hpp"

namespace pmpage::detail {

inline constexpr char POOL_MAGIC[8] = {'P', 'M', 'P', 'A', 'G', 'E', '\0', '\1'};
/// "Creation in progress": the first durable write of create() puts this in the magic word of
/// both superblock copies; the valid superblocks replace it last. Differs from POOL_MAGIC only in
/// its last byte. A device whose copies hold it (and neither is valid) is an interrupted create.
inline constexpr char CREATING_MAGIC[8] = {'P', 'M', 'P', 'A', 'G', 'E', '\0', 'C'};
// Incompatible changes: 2 owner tables; 3 the 64-bit pfn base (pfn_base) in place of the 16-bit
// section id. This library creates 3.0 pools and opens 2.x ones as well, with their pfns
// unchanged (pfn base = section_id << 32); a 2.x pool stays 2.x (libraries before 3 open it)
// until `pmpage reidentify` gives it a new identity, which makes it 3.0. A library that reads
// only 2.x refuses a 3.x pool by its major ("format version 3.0 is not supported").
inline constexpr std::uint32_t FORMAT_MAJOR = 3;
inline constexpr std::uint32_t FORMAT_MAJOR_SECTION_ID = 2;  // the oldest major still opened
inline constexpr std::uint32_t FORMAT_MINOR = 0;             // compatible additions

/// Feature flags (superblock::flags). A library refuses a pool with a flag it does not know, so a
/// flag marks an incompatible change that needs no new major version for older pools to open.
/// SB_TAGGED_OWNERS (0.3): owner entries carry a check (owner table, below). Set at create; set
/// by the first writable open of an older pool before any entry is written.
inline constexpr std::uint32_t SB_TAGGED_OWNERS = 1u << 0;
/// SB_LAZY_OWNERS (0.3): a free leaves its page's owner entry as it was (stale): an entry counts
/// only under an owned marker (owner table, below). A reader without the flag would take a tagged
/// entry without a marker whose slot names the page for an owned allocation, so it must refuse
/// such a pool. Set at create; set with SB_TAGGED_OWNERS by the first writable open of an older pool.
inline constexpr std::uint32_t SB_LAZY_OWNERS = 1u << 1;
/// The flags a writable open adds to an older pool (B, fence, A, fence: superblocks_differ_by_upgrade).
inline constexpr std::uint32_t SB_UPGRADE_FLAGS = SB_TAGGED_OWNERS | SB_LAZY_OWNERS;
/// SB_GROWABLE (0.3): the metadata tables are laid out for superblock::max_regions regions (the
/// capacity chosen at create, pool::options::max_size), of which nr_regions exist; pool::grow
/// adds regions up to it. Set at create only when the capacity exceeds the size; a library that
/// does not know it refuses the pool (its table-offset rules would misjudge it).
inline constexpr std::uint32_t SB_GROWABLE = 1u << 2;
inline constexpr std::uint32_t SB_KNOWN_FLAGS = SB_TAGGED_OWNERS | SB_LAZY_OWNERS | SB_GROWABLE;

inline constexpr std::size_t SUPERBLOCK_SIZE = 4096;
inline constexpr std::size_t NR_LANES = 64;
inline constexpr std::size_t LANE_SIZE = 64;
inline constexpr std::size_t PAGE_MAP_BYTES = 256;  // 512 pages x 4-bit codes
inline constexpr std::size_t PAGE_MAP_WORDS = PAGE_MAP_BYTES / 8;
inline constexpr unsigned PAGES_PER_MAP_WORD = 16;
inline constexpr std::size_t OWNER_TABLE_BYTES = 8 * 512;  // one owner entry per page of a region
inline constexpr std::size_t MIN_ROOT_SIZE = 4096;
/// The largest options::max_size: MAX_POOL_PAGES of data plus the most metadata before it
/// (superblock_problem bounds data_offset by 2^40).
inline constexpr std::uint64_t MAX_GROWABLE_SIZE = (MAX_POOL_PAGES << PAGE_SHIFT) + (std::uint64_t{1} << 40);

struct superblock {
  char magic[8];                    // POOL_MAGIC
  std::uint32_t major;              // FORMAT_MAJOR
  std::uint32_t minor;              // FORMAT_MINOR
  std::uint64_t uuid[2];            // random at create; identifies the pool
  std::uint32_t section_id;         // 2.x: 1..65535, pfns = section_id << 32 | page index; 3.x: 0
  std::uint32_t flags;              // feature flags (SB_*); a reader refuses any it does not know
  std::uint64_t device_size;        // bytes of the device the pool was created on
  std::uint64_t nr_regions;         // 2 MiB regions in the data area
  std::uint64_t lanes_offset;
  std::uint64_t nr_lanes;
  std::uint64_t root_offset;
  std::uint64_t root_size;
  std::uint64_t region_table_offset;
  std::uint64_t page_map_offset;
  std::uint64_t data_offset;
  std::uint64_t create_time_ns;     // CLOCK_REALTIME at create, informational
  std::uint64_t owner_table_offset;
  std::uint64_t pfn_base;           // 3.x: the pool's pfns are pfn_base + page index; 2.x: 0
  std::uint64_t reidentify_from;    // 3.x: 0, or the old pfn base while a reidentify runs; 2.x: 0
  std::uint64_t max_regions;        // SB_GROWABLE: the regions the tables are laid out for; else 0
  std::uint8_t reserved[SUPERBLOCK_SIZE - 160];
  std::uint64_t checksum;           // fletcher64 of the bytes before it
};
static_assert(sizeof(superblock) == SUPERBLOCK_SIZE);
static_assert(offsetof(superblock, owner_table_offset) == 120);
static_assert(offsetof(superblock, pfn_base) == 128);
static_assert(offsetof(superblock, reidentify_from) == 136);
static_assert(offsetof(superblock, max_regions) == 144);

// ---- region state word ------------------------------------------------------------------------
// bits 0..7 kind, bits 8..15 order (heads only), bit 16 owned (heads only: the allocation is
// owned by the slot its owner entry names), bits 17..63 zero. A region that is covered by a
// multi-region allocation but is not its head is stored as FREE: tails are derived from the head.
enum class region_state : std::uint8_t { free = 0, head = 1, split = 2 };
inline constexpr std::uint64_t REGION_OWNED = std::uint64_t{1} << 16;

inline constexpr std::uint64_t make_region_word(region_state s, unsigned order = 0, bool owned = false) {
  return std::uint64_t(s) | (std::uint64_t(order) << 8) | (owned ? REGION_OWNED : 0);
}
inline constexpr region_state region_word_kind(std::uint64_t w) { return region_state(w & 0xff); }
inline constexpr unsigned region_word_order(std::uint64_t w) { return unsigned((w >> 8) & 0xff); }
inline constexpr bool region_word_owned(std::uint64_t w) { return w & REGION_OWNED; }
inline constexpr bool region_word_valid(std::uint64_t w) {
  const auto k = w & 0xff;
  if (w >> 17) return false;
  if (k == std::uint64_t(region_state::head))
    return region_word_order(w) >= HPAGE_PMD_ORDER && region_word_order(w) <= MAX_PAGE_ORDER;
  return (k == std::uint64_t(region_state::free) || k == std::uint64_t(region_state::split)) &&
         region_word_order(w) == 0 && !region_word_owned(w);
}

// ---- owner table: 8 bytes per page -------------------------------------------------------------
// Entry i of region r is 0, or names the pfn slot that owns the allocation whose head is page i
// (for an order >= 9 allocation: entry 0 of its head region, meaningful only when the region
// word's owned bit is set). Encoding (format flag SB_TAGGED_OWNERS): bit 63 set, bits 48..62 a
// check of (page index, slot offset), bits 0..47 the slot's device offset. Recovery frees a page
// whose owner slot holds 0 (the slot protocol, pool_impl.hpp O1), so an entry must never come to
// name another slot by damage: a flipped bit fails the check, and the entry reads as invalid
// (the record is dropped, the page kept). A pool written before the flag holds raw offsets (bit
// 63 clear), still read as such.
// An entry counts only under the allocation's owned marker (page-map codes CODE_OWNED_HEAD0 /
// CODE_OWNED_TAIL, or the region word's owned bit); anywhere else it is ignored, and may be stale
// (SB_LAZY_OWNERS): a free leaves it as it was, so that the slot pair writes back no owner-table
// line in its free. Written in epoch 1 of alloc_pages_to (with the page's codes and marker,
// before its slot can name it), by split_huge_page_to and move_pages_owner under an intent lane,
// by adopt_pages (entry, fence, marker) on a page its durable slot already names. Only a raw
// entry (a 0.2 pool's, bit 63 clear) counts without a marker (an owned allocation of that pool
// not yet marked): a free clears a raw entry, and so does a split or a region load where it
// heads nothing, so that no raw entry goes stale.
inline constexpr std::uint64_t OWNER_TAG = std::uint64_t{1} << 63;
inline constexpr std::uint64_t OWNER_OFFSET_MASK = (std::uint64_t{1} << 48) - 1;
inline constexpr std::uint64_t OWNER_INVALID = ~std::uint64_t{0};  // decode_owner: a damaged entry
inline constexpr std::uint64_t owner_check(std::uint64_t index, std::uint64_t off) {
  std::uint64_t h = (index + 1) * 0x9E3779B97F4A7C15ull ^ (off + 0x632BE59BD9B4E019ull) * 0xC2B2AE3D27D4EB4Full;
  h ^= h >> 29;
  return (h * 0xBF58476D1CE4E5B9ull) >> 49;  // 15 bits
}
/// The entry naming the slot at device offset `off` (< 2^48, non-zero) as page `index`'s owner.
inline constexpr std::uint64_t encode_owner(std::uint64_t index, std::uint64_t off) {
  return off == 0 ? 0 : OWNER_TAG | owner_check(index, off) << 48 | off;
}
/// The slot offset an entry names: 0 for none, OWNER_INVALID for a damaged tagged entry.
/// A raw entry (written before SB_TAGGED_OWNERS): counts without a marker (a 0.2 pool's owner).
inline constexpr bool owner_entry_raw(std::uint64_t e) { return e != 0 && !(e & OWNER_TAG); }
inline constexpr std::uint64_t decode_owner(std::uint64_t index, std::uint64_t e) {
  if (!(e & OWNER_TAG)) return e;  // 0, or a raw offset written before SB_TAGGED_OWNERS
  const std::uint64_t off = e & OWNER_OFFSET_MASK;
  return off != 0 && (e >> 48 & 0x7fff) == owner_check(index, off) ? off : OWNER_INVALID;
}
/// The entry page `index` is owned under, or 0: a tagged entry only with the owned marker set
/// (elsewhere it is stale and ignored), a raw one always.
inline constexpr std::uint64_t counted_owner(std::uint64_t index, std::uint64_t e, bool marked) {
  return marked || owner_entry_raw(e) ? decode_owner(index, e) : 0;
}

// ---- page map: 4-bit code per page of a split region -------------------------------------------
//   0x0        free
//   0x1..0x9   head of an allocation of order code-1 (0..8)
//   0xF        tail (inside the allocation whose head precedes it)
//   others     invalid
// Order-0..4 allocations touch one 8-byte word (16 pages); larger ones touch 2..32 words and rely
// on the recovery rule: a head whose tails are incomplete, or tails without a head, were in flight.
inline constexpr std::uint8_t CODE_FREE = 0x0;
inline constexpr std::uint8_t CODE_TAIL = 0xF;
// Slot ownership markers (feature flag SB_TAGGED_OWNERS): an allocation owned by a slot says so
// in the same 8-byte word as its head code, so that recovery can tell an owned allocation whose
// owner entry did not reach the media from a plain one. Each is two bit flips away from FREE
// and TAIL, the codes found where they are written.
inline constexpr std::uint8_t CODE_OWNED_HEAD0 = 0xA;  // the head of an owned order-0 allocation
inline constexpr std::uint8_t CODE_OWNED_TAIL = 0xC;   // the first tail of an owned order >= 1 allocation
/// A split region's page map word when every page is an order-0 head (split_huge_page), plain or
/// owned (split_huge_page_to).
inline constexpr std::uint64_t SPLIT_MAP_WORD = 0x1111111111111111ull;
inline constexpr std::uint64_t SPLIT_MAP_OWNED_WORD = 0xAAAAAAAAAAAAAAAAull;
/// A code as an allocation reads it: the owned markers as their plain codes.
inline constexpr std::uint8_t plain_code(std::uint8_t c) {
  return c == CODE_OWNED_HEAD0 ? std::uint8_t{0x1} : c == CODE_OWNED_TAIL ? CODE_TAIL : c;
}
inline std::uint8_t raw_map_code(const std::uint64_t* map, unsigned i) {
  return std::uint8_t((map[i / 16] >> ((i % 16) * 4)) & 0xF);
}
/// The map position and code that mark the allocation of `order` at page `head` owned.
inline constexpr unsigned owned_marker_at(unsigned head, unsigned order) { return order == 0 ? head : head + 1; }
inline constexpr std::uint8_t owned_marker(unsigned order) { return order == 0 ? CODE_OWNED_HEAD0 : CODE_OWNED_TAIL; }
/// True if the allocation of `order` at page `head` carries the owned marker. A damaged map may
/// hold a head whose marker position lies past the region (a head code at page 511 of order >= 1):
/// not owned, and nothing outside the map is read.
inline bool map_owned(const std::uint64_t* map, unsigned head, unsigned order) {
  const unsigned at = owned_marker_at(head, order);
  return at < PAGE_MAP_WORDS * PAGES_PER_MAP_WORD && raw_map_code(map, at) == owned_marker(order);
}
/// `word` (the map word holding the marker position, owned_marker_at / 16) with the owned marker
/// of the allocation of `order` at page `head` set or cleared.
inline constexpr std::uint64_t with_owned_marker(std::uint64_t word, unsigned head, unsigned order, bool owned) {
  const unsigned sh = (owned_marker_at(head, order) % 16) * 4;
  const std::uint64_t c = owned ? owned_marker(order) : (order == 0 ? 0x1 : CODE_TAIL);
  return (word & ~(std::uint64_t{0xF} << sh)) | (c << sh);
}
/// Sets or clears the owned marker of the allocation of `order` at page `head` in map words.
inline void set_map_owned(std::uint64_t* map, unsigned head, unsigned order, bool owned) {
  const unsigned w = owned_marker_at(head, order) / 16;
  map[w] = with_owned_marker(map[w], head, order, owned);
}
inline constexpr std::uint8_t code_head(unsigned order) { return std::uint8_t(order + 1); }
inline constexpr bool code_is_head(std::uint8_t c) { return c >= 1 && c <= 9; }
inline constexpr unsigned code_order(std::uint8_t c) { return unsigned(c) - 1; }

// ---- intent lanes -------------------------------------------------------------------------------
// A lane holds one intent of alloc_pages_to / free_pages_from. Valid iff seq != 0 and the
// checksum matches; clearing seq (one word) retires it. Words:
enum class intent_kind : std::uint32_t { alloc_to = 1, free_from = 2, split_to = 3, move_to = 4 };

struct lane {
  std::uint64_t checksum;     // fletcher64 of words 1..7
  std::uint64_t seq;          // nonzero while the intent is live
  std::uint32_t kind;         // intent_kind
  std::uint32_t order;
  std::uint64_t slot_offset;  // byte offset of the pfn slot from the start of the device
  std::uint64_t pfn;          // head pfn of the extent
  std::uint64_t aux;          // move_to: byte offset of the destination slot; else 0
  std::uint64_t reserved[2];
};
static_assert(sizeof(lane) == LANE_SIZE);

struct layout {
  std::uint64_t device_size, nr_regions, lanes_offset, root_offset, root_size,
      region_table_offset, page_map_offset, owner_table_offset, data_offset;
  /// The regions the tables are laid out for when more than nr_regions (a growable pool,
  /// SB_GROWABLE); 0 otherwise.
  std::uint64_t max_regions = 0;
};

/// Computes the layout for a device of `size` bytes. data_align is 2 MiB or the device's alignment.
/// Returns false when not even one region fits.
bool compute_layout(std::uint64_t size, std::uint64_t root_size, std::uint64_t data_align, layout& out);
/// compute_layout for a pool that can grow to `max_size` bytes (>= size): the tables are laid out
/// for the regions a pool of max_size would have, and nr_regions is what fits in `size` after
/// them. When that is all of them (max_size gives no more), the plain layout of `size`. False
/// when not one region fits in `size`.
bool compute_growable_layout(std::uint64_t size, std::uint64_t max_size, std::uint64_t root_size,
                             std::uint64_t data_align, layout& out);
/// The layout of exactly `regions` regions (a volatile pool: its metadata and data are mapped
/// separately, so the size follows from the region count rather than the other way round).
layout layout_for_regions(std::uint64_t regions, std::uint64_t root_size, std::uint64_t data_align);

std::uint64_t fletcher64(const void* data, std::size_t len);

/// A copy whose magic word is the creation marker (create() had not finished with it).
bool is_creating_marker(const superblock& sb);
/// The superblock of a pool laid out as `lay` (checksummed): what create writes into both copies
/// (and what tests use to craft images).
superblock make_superblock(const layout& lay, std::uint64_t pfn_base, std::uint64_t uuid0, std::uint64_t uuid1,
                           std::uint64_t create_time_ns);
/// Why a superblock copy cannot be used (one phrase), or "" if it passes every rule.
std::string superblock_problem(const superblock& sb);
/// True if valid copies a and b differ only in that b has upgrade flags (SB_UPGRADE_FLAGS) a lacks: an upgrade
/// that wrote B and not A yet (recovery.cpp, open).
bool superblocks_differ_by_upgrade(const superblock& a, const superblock& b);
/// True if valid copies a and b differ only in that b has more regions (nr_regions, device_size):
/// a pool::grow that wrote B and not A yet (grow writes B, then A).
bool superblocks_differ_by_grow(const superblock& a, const superblock& b);
/// a and b are both valid and b is what an interrupted two-copy update (B first) left beside a:
/// an upgrade or a grow. open and check roll forward to b.
inline bool superblocks_torn_update(const superblock& a, const superblock& b) {
  return superblocks_differ_by_upgrade(a, b) || superblocks_differ_by_grow(a, b);
}
/// True if `torn` (copy B if torn_is_b, else A) fails its checksum only as a superblock rewrite
/// cut short by a crash leaves it beside the valid copy `valid`: its magic intact, and each
/// 8-byte word before the checksum either equal to valid's or one a rewrite changes, in the
/// direction it changes it (grow, B first: nr_regions within the capacity, a device_size with
/// room for another region; the format upgrade, B first: SB_UPGRADE_FLAGS bits; reidentify's
/// last write: reidentify_from). A power failure during a copy's 4 KiB
/// write leaves such a mix of old and new 8-byte words (docs/format.md, "Growing a pool"). Any
/// other difference is damage. Open repairs the copy from `valid` either way.
bool superblock_torn_write(const superblock& torn, const superblock& valid, bool torn_is_b);
/// The most regions a pool with superblock sb (valid) can have without moving its tables: its
/// max_regions when SB_GROWABLE, else what the slack of its tables and the data offset allow
/// (up to the next multiple of 16 regions: a 4 KiB block of page maps holds 16). Never above
/// MAX_POOL_PAGES / 512.
std::uint64_t superblock_capacity(const superblock& sb);
/// The pfn of data page 0 of a pool whose superblock passes superblock_problem (2.x or 3.x).
std::uint64_t superblock_pfn_base(const superblock& sb);
/// A valid pfn base of a 3.x pool: a multiple of 2^28 in [2^32, 2^64 - 2^33] (page.hpp).
bool pfn_base_valid(std::uint64_t base);
/// Recomputes sb.checksum after a field changed.
void seal_superblock(superblock& sb);

}  // namespace pmpage::detail
