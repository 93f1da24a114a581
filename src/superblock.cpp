// superblock.cpp — the rules a superblock copy must pass (docs/format.md, "Superblock"), shared
// by open (recovery.cpp) and the checker (fsck.cpp), so both judge a copy alike.
#include <algorithm>
#include <cstddef>
#include <cstring>
#include <string>

#include "layout.hpp"
#include "pmpage/page.hpp"

namespace pmpage::detail {

namespace {
std::uint64_t round_up(std::uint64_t v, std::uint64_t a) { return (v + a - 1) / a * a; }
}  // namespace

bool pfn_base_valid(std::uint64_t base) {
  return base >= MIN_PFN_BASE && base <= MAX_PFN_BASE && (base & SECTION_PAGES_MASK) == 0;
}

std::uint64_t superblock_pfn_base(const superblock& sb) {
  return sb.major == FORMAT_MAJOR_SECTION_ID ? std::uint64_t{sb.section_id} << 32 : sb.pfn_base;
}

void seal_superblock(superblock& sb) { sb.checksum = fletcher64(&sb, offsetof(superblock, checksum)); }

superblock make_superblock(const layout& lay, std::uint64_t pfn_base, std::uint64_t uuid0, std::uint64_t uuid1,
                           std::uint64_t create_time_ns) {
  superblock sb{};
  std::memcpy(sb.magic, POOL_MAGIC, sizeof sb.magic);
  sb.major = FORMAT_MAJOR;
  sb.minor = FORMAT_MINOR;
  sb.uuid[0] = uuid0;
  sb.uuid[1] = uuid1;
  sb.pfn_base = pfn_base;
  sb.flags = SB_TAGGED_OWNERS | SB_LAZY_OWNERS;
  sb.device_size = lay.device_size;
  sb.nr_regions = lay.nr_regions;
  sb.lanes_offset = lay.lanes_offset;
  sb.nr_lanes = NR_LANES;
  sb.root_offset = lay.root_offset;
  sb.root_size = lay.root_size;
  sb.region_table_offset = lay.region_table_offset;
  sb.page_map_offset = lay.page_map_offset;
  sb.owner_table_offset = lay.owner_table_offset;
  sb.data_offset = lay.data_offset;
  sb.create_time_ns = create_time_ns;
  if (lay.max_regions != 0) {  // created with a capacity (options::max_size above size)
    sb.flags |= SB_GROWABLE;
    sb.max_regions = lay.max_regions;
  }
  seal_superblock(sb);
  return sb;
}

/// A copy whose magic word is the creation marker (create() had not finished with it).
bool is_creating_marker(const superblock& sb) { return std::memcmp(sb.magic, CREATING_MAGIC, sizeof sb.magic) == 0; }

bool superblocks_differ_by_upgrade(const superblock& a, const superblock& b) {
  // b has every flag of a, and some upgrade flags more (the open below adds them all at once).
  if ((a.flags & ~b.flags) || !((b.flags & ~a.flags) & SB_UPGRADE_FLAGS) || ((b.flags & ~a.flags) & ~SB_UPGRADE_FLAGS))
    return false;
  superblock up = a;
  up.flags = b.flags;
  up.checksum = fletcher64(&up, offsetof(superblock, checksum));
  return std::memcmp(&up, &b, sizeof up) == 0;
}

bool superblocks_differ_by_grow(const superblock& a, const superblock& b) {
  if (b.nr_regions <= a.nr_regions || b.device_size < a.device_size) return false;
  superblock up = a;
  up.nr_regions = b.nr_regions;
  up.device_size = b.device_size;
  up.checksum = fletcher64(&up, offsetof(superblock, checksum));
  return std::memcmp(&up, &b, sizeof up) == 0;
}

bool superblock_torn_write(const superblock& torn, const superblock& valid, bool torn_is_b) {
  if (std::memcmp(torn.magic, POOL_MAGIC, sizeof torn.magic) != 0) return false;
  if (torn.checksum == fletcher64(&torn, offsetof(superblock, checksum))) return false;
  // grow and the upgrade write B first: a torn B is newer than A (more regions, a larger size,
  // more flags), a torn A older than B. A grown size has room for a region more than the old
  // count (grow adds whole regions), which a flipped low bit of device_size rarely has.
  const superblock& older = torn_is_b ? valid : torn;
  const superblock& newer = torn_is_b ? torn : valid;
  if (torn.nr_regions != valid.nr_regions &&
      (newer.nr_regions < older.nr_regions || newer.nr_regions > superblock_capacity(valid)))
    return false;
  if (torn.device_size != valid.device_size) {
    // Judged by the sizes alone: the torn copy's nr_regions word may already be the new one
    // (copy A torn with B's count and its own old size), so it cannot say the old count.
    if (newer.device_size < older.device_size || valid.data_offset > older.device_size ||
        (newer.device_size - valid.data_offset) / HPAGE_PMD_SIZE <= (older.device_size - valid.data_offset) / HPAGE_PMD_SIZE)
      return false;
  }
  if ((torn.flags ^ valid.flags) & (older.flags & ~newer.flags)) return false;
  // Compared by 8-byte word, the unit of failure atomicity: a torn copy is old and new words.
  auto word = [](const superblock& sb, std::size_t i) {
    std::uint64_t w;
    std::memcpy(&w, reinterpret_cast<const char*>(&sb) + i * 8, 8);
    return w;
  };
  for (std::size_t i = 0; i < offsetof(superblock, checksum) / 8; ++i) {
    const std::uint64_t t = word(torn, i), v = word(valid, i);
    if (t == v) continue;
    const std::size_t off = i * 8;
    if (off == offsetof(superblock, section_id)) {
      // section_id and flags share the word: an upgrade adds SB_UPGRADE_FLAGS bits.
      if (((torn.flags ^ valid.flags) & ~SB_UPGRADE_FLAGS) || torn.section_id != valid.section_id) return false;
      continue;
    }
    if (off == offsetof(superblock, reidentify_from)) {
      // reidentify's last write clears it: the torn copy may still hold the old base. Its first
      // write (new uuid, pfn base, version) is not accepted here: those words are the pool's
      // identity, a flipped bit there is no torn write to wave through, and the repair (the
      // other copy, the old identity) is the same either way.
      if (torn.reidentify_from != 0 && (!pfn_base_valid(torn.reidentify_from) || torn.reidentify_from == torn.pfn_base))
        return false;
      continue;
    }
    if (off == offsetof(superblock, device_size) || off == offsetof(superblock, nr_regions)) continue;
    return false;
  }
  return true;
}

std::uint64_t superblock_capacity(const superblock& sb) {
  constexpr std::uint64_t most = MAX_POOL_PAGES / HPAGE_PMD_NR;
  if (sb.flags & SB_GROWABLE) return sb.max_regions;
  // The tables' rules (superblock_problem) hold for every count from nr_regions up to the
  // smallest of these: each table's rounded size stays the same and the owner tables still end
  // before the data.
  std::uint64_t n = (sb.page_map_offset - sb.region_table_offset) / 8;
  n = std::min(n, (sb.owner_table_offset - sb.page_map_offset) / PAGE_MAP_BYTES);
  n = std::min(n, (sb.data_offset - sb.owner_table_offset) / OWNER_TABLE_BYTES);
  return std::max(sb.nr_regions, std::min(n, most));
}

/// Why a superblock copy cannot be used, or "" if it can.
std::string superblock_problem(const superblock& sb) {
  if (is_creating_marker(sb)) return "creation in progress (create was interrupted)";
  if (std::memcmp(sb.magic, POOL_MAGIC, sizeof sb.magic) != 0) return "bad magic (not a pmpage pool)";
  if (sb.checksum != fletcher64(&sb, offsetof(superblock, checksum))) return "bad checksum";
  if (sb.major != FORMAT_MAJOR && sb.major != FORMAT_MAJOR_SECTION_ID)
    return "format version " + std::to_string(sb.major) + "." + std::to_string(sb.minor) +
           " is not supported (this library reads " + std::to_string(FORMAT_MAJOR_SECTION_ID) + ".x and " +
           std::to_string(FORMAT_MAJOR) + ".x)";
  if (sb.flags & ~SB_KNOWN_FLAGS) return "unknown feature flags (written by a newer pmpage)";
  if (sb.major == FORMAT_MAJOR_SECTION_ID) {
    // 2.x: the 16-bit section id; the fields 3.x added were reserved (zero) then.
    if (sb.section_id == 0 || sb.section_id > 0xffff) return "section id out of range";
  } else {
    if (sb.section_id != 0) return "section id set in a 3.x superblock (must be 0)";
    if (!pfn_base_valid(sb.pfn_base)) return "pfn base out of range";
    if (sb.reidentify_from != 0 && (!pfn_base_valid(sb.reidentify_from) || sb.reidentify_from == sb.pfn_base))
      return "reidentify_from out of range";
  }
  if (sb.nr_lanes != NR_LANES) return "unexpected lane count";
  if (sb.nr_regions == 0 || sb.nr_regions > MAX_POOL_PAGES / HPAGE_PMD_NR) return "region count out of range";
  // The tables are laid out for `tables` regions: the capacity of a growable pool, else nr_regions.
  std::uint64_t tables = sb.nr_regions;
  if (sb.flags & SB_GROWABLE) {
    if (sb.max_regions < sb.nr_regions || sb.max_regions > MAX_POOL_PAGES / HPAGE_PMD_NR)
      return "capacity (max_regions) out of range";
    tables = sb.max_regions;
  } else if (sb.max_regions != 0) {
    return "max_regions set without the growable flag";
  }
  if (sb.lanes_offset != 2 * SUPERBLOCK_SIZE || sb.root_offset != sb.lanes_offset + round_up(NR_LANES * LANE_SIZE, 4096))
    return "metadata offsets inconsistent";
  if (sb.root_size < MIN_ROOT_SIZE || sb.root_size % 4096 || sb.root_size > MAX_ROOT_SIZE)
    return "root size out of range";
  if (sb.region_table_offset != sb.root_offset + sb.root_size ||
      sb.page_map_offset != sb.region_table_offset + round_up(tables * 8, 4096) ||
      sb.owner_table_offset != sb.page_map_offset + round_up(tables * PAGE_MAP_BYTES, 4096) ||
      sb.data_offset < sb.owner_table_offset + tables * OWNER_TABLE_BYTES ||
      sb.data_offset % HPAGE_PMD_SIZE != 0 || sb.data_offset > (std::uint64_t{1} << 40))
    return "metadata offsets inconsistent";
  if (sb.device_size < sb.data_offset + sb.nr_regions * HPAGE_PMD_SIZE) return "data area exceeds the device size";
  return {};
}

}  // namespace pmpage::detail
