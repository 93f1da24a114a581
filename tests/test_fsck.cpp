// The offline checker (pmpage/fsck.hpp): figures agree with the open pool's, every metadata
// structure's damage is found at its location, repairs keep every allocation, a read-only check
// never changes a byte, and the exit codes follow fsck's convention.
#include <gtest/gtest.h>
#include <sys/file.h>
#include <fcntl.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <iterator>
#include <functional>
#include <map>
#include <random>

#include "layout.hpp"
#include "pmpage/fsck.hpp"
#include "pmpage/pmpage.hpp"
#include "pool_image.hpp"
#include "registry.hpp"
#include "test_util.hpp"

namespace {

using namespace pmpage;
namespace fs = std::filesystem;
using detail::superblock;
using namespace pmtest::image;
using namespace pmtest;

fsck::options repairing() {
  fsck::options o;
  o.repair = true;
  return o;
}

/// The allocations of the pool at p: head pfn -> order.
std::map<pfn_t, unsigned> allocations_of(const fs::path& p) {
  pool pl = pool::open(p);
  std::map<pfn_t, unsigned> out;
  pl.for_each_allocated([&](page* h, unsigned order) { out[page_to_pfn(h)] = order; });
  return out;
}

std::map<pfn_t, unsigned> allocations_of_open(const pool& pl) {
  std::map<pfn_t, unsigned> out;
  pl.for_each_allocated([&](page* h, unsigned order) { out[page_to_pfn(h)] = order; });
  return out;
}

const fsck::problem* find_rule(const fsck::report& r, const std::string& rule, int recovery = -1) {
  for (const auto& p : r.problems)
    if (p.rule == rule && (recovery < 0 || p.recovery == bool(recovery))) return &p;
  return nullptr;
}

void write_copy(const fs::path& p, unsigned copy, const superblock& sb) {
  std::fstream f(p, std::ios::binary | std::ios::in | std::ios::out);
  f.seekp(std::streamoff(copy * detail::SUPERBLOCK_SIZE));
  f.write(reinterpret_cast<const char*>(&sb), sizeof sb);
}

std::string list(const fsck::report& r) {
  std::string s;
  for (const auto& p : r.problems) s += p.rule + " [" + p.structure + "] " + p.what + (p.repaired ? " (repaired)" : "") + "\n";
  return s;
}

// A pool with small pages (orders 0..8, one owned by a root slot), large pages (order 9 and 10,
// one owned) and holes from frees: what the damage tests start from.
class FsckTest : public TempPathTest {
 protected:
  void SetUp() override {
    path_ = new_path();
    pool p = create_pool(path_, 64 * MiB);
    start_ = p.start_pfn();
    std::vector<page*> small;
    for (unsigned i = 0; i < 64; ++i) small.push_back(p.alloc_pages(i % 9));
    for (unsigned i = 0; i < small.size(); i += 3) free_pages(small[i], i % 9);
    auto* slots = static_cast<pfn_t*>(p.root());
    ASSERT_NE(p.alloc_pages_to(2, &slots[0]), nullptr);
    ASSERT_NE(p.alloc_pages_to(9, &slots[1]), nullptr);
    ASSERT_NE(p.alloc_pages(10), nullptr);
    owned_small_ = slots[0];
    owned_large_ = slots[1];
    stats_ = p.stats();
    p.close();
    sb_ = read_sb(path_);
    before_ = allocations_of(path_);
  }
  std::uint64_t region_word_off(std::uint64_t r) const { return sb_.region_table_offset + 8 * r; }
  std::uint64_t map_word_off(std::uint64_t r, unsigned page) const { return sb_.page_map_offset + 256 * r + 8 * (page / 16); }
  std::uint64_t owner_off(std::uint64_t index) const { return sb_.owner_table_offset + 8 * index; }
  std::uint64_t index_of(pfn_t pfn) const { return pfn - start_; }

  /// check() must not change a byte; returns its report.
  fsck::report check_ro() {
    const std::string before = file_bytes(path_);
    fsck::report r = fsck::check(path_);
    EXPECT_EQ(file_bytes(path_), before) << "a read-only check changed the file";
    return r;
  }

  fs::path path_;
  pfn_t start_ = 0, owned_small_ = 0, owned_large_ = 0;
  pool_stats stats_;
  superblock sb_{};
  std::map<pfn_t, unsigned> before_;
};

TEST_F(FsckTest, HealthyPoolIsCleanAndItsFiguresMatchTheOpenPool) {
  fsck::report r = check_ro();
  EXPECT_TRUE(r.readable);
  EXPECT_TRUE(r.problems.empty()) << list(r);
  EXPECT_EQ(r.exit_code(), 0);
  EXPECT_EQ(r.format_major, detail::FORMAT_MAJOR);
  EXPECT_EQ(r.total_pages, stats_.total_pages);
  EXPECT_EQ(r.free_pages, stats_.free_pages);
  EXPECT_EQ(r.split_regions, stats_.split_regions);
  EXPECT_EQ(r.nr_regions, stats_.total_regions);
  EXPECT_EQ(r.start_pfn, start_);
  EXPECT_EQ(r.end_pfn, start_ + stats_.total_pages);
  EXPECT_EQ(r.large_allocations, 2u);
  EXPECT_EQ(r.large_regions, 3u);  // order 9 + order 10
  EXPECT_EQ(r.owned_allocations, 2u);
  EXPECT_EQ(r.small_allocations + r.large_allocations, before_.size());
  EXPECT_EQ(r.pending_intents, 0u);
  EXPECT_EQ(r.descriptor_bytes_at_open, r.nr_regions * 64);
  EXPECT_EQ(r.descriptor_bytes_max, r.nr_regions * 64 + r.split_regions * 32768);
  EXPECT_GE(r.largest_free_order, 9);
  std::uint64_t fullness = 0;
  for (auto n : r.split_fullness) fullness += n;
  EXPECT_EQ(fullness, r.split_regions);
}

TEST_F(FsckTest, RegionsListEveryRegionByKind) {
  fsck::options o;
  o.regions = true;
  fsck::report r = fsck::check(path_, o);
  ASSERT_EQ(r.regions.size(), r.nr_regions);
  std::uint64_t heads = 0, tails = 0, split = 0, free = 0;
  for (const auto& g : r.regions) {
    heads += g.kind == fsck::region_kind::head;
    tails += g.kind == fsck::region_kind::tail;
    split += g.kind == fsck::region_kind::split;
    free += g.kind == fsck::region_kind::free;
  }
  EXPECT_EQ(heads, 2u);
  EXPECT_EQ(tails, 1u);
  EXPECT_EQ(split, r.split_regions);
  EXPECT_EQ(free, r.free_regions);
  const auto& big = r.regions[index_of(owned_large_) >> 9];
  EXPECT_EQ(big.kind, fsck::region_kind::head);
  EXPECT_EQ(big.order, 9);
}

TEST_F(FsckTest, ProgressReachesTheTotal) {
  std::uint64_t last_done = 0, last_total = 0, calls = 0;
  fsck::options o;
  o.progress = [&](std::uint64_t d, std::uint64_t t) {
    EXPECT_LE(d, t);
    last_done = d;
    last_total = t;
    ++calls;
  };
  fsck::check(path_, o);
  EXPECT_GT(calls, 0u);
  EXPECT_EQ(last_done, last_total);
}

TEST_F(FsckTest, EmptyAndFullPools) {
  const fs::path empty = new_path("empty");
  create_pool(empty, 16 * MiB).close();
  fsck::report e = fsck::check(empty);
  EXPECT_TRUE(e.problems.empty()) << list(e);
  EXPECT_EQ(e.free_pages, e.total_pages);
  EXPECT_EQ(e.free_regions, e.nr_regions);
  EXPECT_GE(e.largest_free_order, 9);

  const fs::path full = new_path("full");
  {
    pool p = create_pool(full, 16 * MiB);
    while (p.alloc_pages(0)) {
    }
  }
  fsck::report f = fsck::check(full);
  EXPECT_TRUE(f.problems.empty()) << list(f);
  EXPECT_EQ(f.free_pages, 0u);
  EXPECT_EQ(f.largest_free_order, -1);
  EXPECT_EQ(f.split_fullness[5], f.nr_regions);
}

TEST_F(FsckTest, DamagedSuperblockCopiesAreFoundAndRepaired) {
  for (std::uint64_t off : {std::uint64_t{100}, std::uint64_t{4096 + 40}}) {
    flip_bit(path_, off, 3);
    fsck::report r = check_ro();
    const fsck::problem* p = find_rule(r, "SB1");
    ASSERT_NE(p, nullptr) << list(r);
    EXPECT_EQ(p->structure, off < 4096 ? "superblock A" : "superblock B");
    EXPECT_EQ(p->offset, off < 4096 ? 0u : 4096u);
    EXPECT_FALSE(p->recovery);
    EXPECT_EQ(r.exit_code(), 4);
    fsck::report fixed = fsck::check(path_, repairing());
    EXPECT_EQ(fixed.exit_code(), 1) << list(fixed);
    EXPECT_EQ(fsck::check(path_).exit_code(), 0);
    EXPECT_EQ(read_word(path_, off & ~7ull), read_word(path_, (off & ~7ull) ^ 4096));
  }
  EXPECT_EQ(allocations_of(path_), before_);
}

// A power failure while pool::grow writes a superblock copy (4 KiB, failure-atomic only by
// 8-byte word) leaves that copy a mix of old and new words with a bad checksum beside a valid
// copy: recovery's leftover (open repairs it), not damage. Copy B torn (the commit write): the
// old size; copy A torn (B committed): the new size. A flip elsewhere in the copy stays damage.
TEST_F(FsckTest, SuperblockCopyTornMidWriteByGrowIsRecoverysLeftover) {
  const fs::path g = new_path("grow");
  {
    pool::options o;
    o.size = 16 * MiB;
    o.max_size = 64 * MiB;
    pool::create(g, o).close();
  }
  const superblock old = read_sb(g);
  pool::grow(g, 32 * MiB);
  const superblock grown = read_sb(g);
  ASSERT_GT(grown.nr_regions, old.nr_regions);
  // The first cache line (device_size, nr_regions) new, the rest (the checksum) old, or the
  // reverse: what a write cut short leaves, line by line.
  auto mix = [](const superblock& first_line, const superblock& rest) {
    superblock t = rest;
    std::memcpy(&t, &first_line, 64);
    return t;
  };
  struct tear {
    const char* name;
    unsigned torn_copy;
    superblock a, b;
    std::uint64_t regions_after;
  };
  std::vector<tear> tears = {
      {"copy B torn (old size kept)", 1, old, mix(grown, old), old.nr_regions},
      {"copy B torn, checksum new", 1, old, mix(old, grown), old.nr_regions},
      {"copy A torn (new size)", 0, mix(grown, old), grown, grown.nr_regions},
      {"copy A torn, checksum new", 0, mix(old, grown), grown, grown.nr_regions},
  };
  // And word by word (8 bytes: the unit of failure atomicity): each of device_size and
  // nr_regions old or new, the rest (the checksum) old or new. A copy A holding B's count beside
  // its own old size was called damage (a fresh-clone review found it).
  for (const bool rest_new : {false, true})
    for (const bool size_new : {false, true})
      for (const bool regions_new : {false, true}) {
        superblock t = rest_new ? grown : old;
        t.device_size = size_new ? grown.device_size : old.device_size;
        t.nr_regions = regions_new ? grown.nr_regions : old.nr_regions;
        if (std::memcmp(&t, &old, sizeof t) == 0 || std::memcmp(&t, &grown, sizeof t) == 0) continue;  // not torn
        tears.push_back({"copy A torn word by word", 0, t, grown, grown.nr_regions});
        tears.push_back({"copy B torn word by word", 1, old, t, old.nr_regions});
      }
  const fs::path work = new_path("work");
  for (const tear& t : tears) {
    SCOPED_TRACE(t.name);
    fs::copy_file(g, work, fs::copy_options::overwrite_existing);
    write_copy(work, 0, t.a);
    write_copy(work, 1, t.b);
    const fsck::report r = fsck::check(work);
    const fsck::problem* p = find_rule(r, "SB1");
    ASSERT_NE(p, nullptr) << list(r);
    EXPECT_EQ(p->structure, t.torn_copy ? "superblock B" : "superblock A");
    EXPECT_TRUE(p->recovery) << p->what;
    EXPECT_NE(p->what.find("interrupted by a crash"), std::string::npos) << p->what;
    EXPECT_EQ(r.uncorrected(), 0u) << list(r);
    EXPECT_EQ(r.exit_code(), 0) << list(r);
    EXPECT_EQ(r.nr_regions, t.regions_after);
    {
      pool pl = pool::open(work);
      EXPECT_EQ(pl.stats().total_regions, t.regions_after);
      EXPECT_EQ(pl.check(), "");
    }
    EXPECT_TRUE(fsck::check(work).problems.empty());
  }
  // Not a crash's mix: a torn-looking copy whose other words differ too (a flipped table
  // offset), or whose size moved the wrong way, is damage.
  superblock bad = mix(grown, old);
  bad.data_offset ^= 1ull << 30;
  fs::copy_file(g, work, fs::copy_options::overwrite_existing);
  write_copy(work, 1, bad);
  EXPECT_EQ(fsck::check(work).exit_code(), 4);
  superblock shrunk = old;
  shrunk.nr_regions -= 1;
  write_copy(work, 0, old);
  write_copy(work, 1, shrunk);
  EXPECT_EQ(fsck::check(work).exit_code(), 4) << "copy B with fewer regions than A is no grow";
}

TEST_F(FsckTest, RegionWordBitFlipIsCorrectedToTheOnlyWordThatFits) {
  const std::uint64_t r = index_of(owned_small_) >> 9;  // a SPLIT region
  flip_bit(path_, region_word_off(r) + 5, 2);            // bit 42
  fsck::report found = check_ro();
  const fsck::problem* p = find_rule(found, "R1");
  ASSERT_NE(p, nullptr) << list(found);
  EXPECT_EQ(p->region, std::int64_t(r));
  EXPECT_EQ(p->offset, region_word_off(r));
  EXPECT_TRUE(p->repairable());
  EXPECT_THROW(pool::open(path_), pmpage::error);  // what the tool is for: open refuses it
  fsck::report fixed = fsck::check(path_, repairing());
  EXPECT_EQ(fixed.exit_code(), 1) << list(fixed);
  EXPECT_EQ(read_word(path_, region_word_off(r)), detail::make_region_word(detail::region_state::split));
  EXPECT_EQ(allocations_of(path_), before_);
}

TEST_F(FsckTest, AmbiguousRegionWordIsLeftAndNothingIsWritten) {
  const std::uint64_t r = index_of(owned_small_) >> 9;
  write_word(path_, region_word_off(r), 0x0707070707070707ull);  // far from every valid word
  fsck::report found = check_ro();
  const fsck::problem* p = find_rule(found, "R1");
  ASSERT_NE(p, nullptr);
  EXPECT_FALSE(p->repairable());
  EXPECT_EQ(found.damaged_regions, 1u);
  const std::string before = file_bytes(path_);
  fsck::report after = fsck::check(path_, repairing());
  EXPECT_EQ(after.exit_code(), 4);
  EXPECT_EQ(file_bytes(path_), before) << "nothing was repairable, so nothing may change";
}

TEST_F(FsckTest, FlippedTailCodeIsRestoredAndTheAllocationKept) {
  const std::uint64_t index = index_of(owned_small_);  // order 2: head + 3 tails
  const std::uint64_t r = index >> 9;
  const unsigned pg = unsigned(index & 511) + 1;  // its first tail
  flip_bit(path_, map_word_off(r, pg) + (pg % 16) / 2, (pg % 2) * 4);  // 0xF -> 0xE
  fsck::report found = check_ro();
  const fsck::problem* p = find_rule(found, "P2", 0);
  ASSERT_NE(p, nullptr) << list(found);
  EXPECT_EQ(p->region, std::int64_t(r));
  EXPECT_EQ(p->page, std::int64_t(index & 511));
  EXPECT_TRUE(p->repairable());
  EXPECT_EQ(fsck::check(path_, repairing()).exit_code(), 1);
  EXPECT_EQ(fsck::check(path_).exit_code(), 0);
  EXPECT_EQ(allocations_of(path_), before_);
}

TEST_F(FsckTest, ImpossibleCodeOutsideAnyAllocationIsReportedNotGuessed) {
  // A free page's code becomes 0xC: no write produces it, and it might be a damaged head.
  fsck::options o;
  o.regions = true;
  const std::uint64_t r = index_of(owned_small_) >> 9;
  pool p = pool::open(path_);
  unsigned free_page = 512;
  for (unsigned i = 511; i > 0 && free_page == 512; --i)
    if (page_count(pfn_to_page(start_ + (r << 9) + i)) == 0 && !PageTail(pfn_to_page(start_ + (r << 9) + i))) free_page = i;
  p.close();
  ASSERT_LT(free_page, 512u);
  const std::uint64_t off = map_word_off(r, free_page);
  write_word(path_, off, read_word(path_, off) | (std::uint64_t{0xC} << (free_page % 16 * 4)));
  fsck::report found = check_ro();
  const fsck::problem* p2 = find_rule(found, "P2", 0);
  ASSERT_NE(p2, nullptr) << list(found);
  EXPECT_FALSE(p2->repairable());
  EXPECT_EQ(p2->offset, off);
  EXPECT_EQ(found.exit_code(), 4);
}

TEST_F(FsckTest, OwnerEntryNamingAnEmptySlotIsAnInterruptedSlotCallRecoveryFrees) {
  // The slot protocol's in-flight state (an alloc_pages_to before its publication, a
  // free_pages_from after clearing the slot): not damage; recovery frees the page.
  const std::uint64_t index = index_of(owned_small_);
  write_word(path_, owner_off(index), sb_.root_offset + 512);  // a root word that holds 0
  fsck::report found = check_ro();
  const fsck::problem* p = find_rule(found, "O1");
  ASSERT_NE(p, nullptr) << list(found);
  EXPECT_TRUE(p->recovery) << p->what;
  EXPECT_NE(p->what.find("interrupted"), std::string::npos) << p->what;
  EXPECT_EQ(found.exit_code(), 0) << list(found);
}

// Format flag lazy-owners: a free leaves its page's owner entry stale, and an entry counts only
// under the owned marker. Stale entries are no finding anywhere (check(), fsck, open's log and
// stats), even where the engine reused the freed slot's word for the same page allocated plain;
// an entry that is wrong under a marker still is.
TEST_F(FsckTest, StaleOwnerEntriesAreIgnoredButAWrongEntryUnderAMarkerIsNot) {
  static std::atomic<int> misuses{0};
  const auto previous = set_misuse_handler(+[](const char*) { misuses.fetch_add(1); });
  pfn_t plain = 0, freed = 0;
  {
    pool p = pool::open(path_);
    auto* slots = static_cast<pfn_t*>(p.root());
    ASSERT_NE(p.alloc_pages_to(0, &slots[5]), nullptr);
    plain = slots[5];
    ASSERT_EQ(p.free_pages_from(&slots[5]), 0);  // the page's entry names slot 5, stale
    page* q = p.alloc_pages(0);
    ASSERT_NE(q, nullptr);
    ASSERT_EQ(page_to_pfn(q), plain) << "the freed page comes back (plain)";
    slots[5] = plain;  // the engine's own use of the word: a plain reference, not a slot
    p.persist(&slots[5], sizeof(pfn_t));
    ASSERT_NE(p.alloc_pages_to(0, &slots[6]), nullptr);
    freed = slots[6];
    ASSERT_EQ(p.free_pages_from(&slots[6]), 0);  // a free page with a stale entry (slot 6 holds 0)
    EXPECT_EQ(p.check(), "");
    EXPECT_EQ(p.stats().orphaned_owners, 0u);
  }
  ASSERT_NE(read_word(path_, owner_off(index_of(plain))), 0u) << "the test needs the stale entry";
  ASSERT_NE(read_word(path_, owner_off(index_of(freed))), 0u);
  fsck::report clean = check_ro();
  EXPECT_TRUE(clean.problems.empty()) << list(clean);
  const fsck::region_dump d = fsck::dump_region(path_, index_of(plain) >> 9);
  EXPECT_EQ(d.owners[index_of(plain) & 511], 0u) << "a stale entry counts for nothing";
  {
    pool p = pool::open(path_);
    for (const std::string& line : p.recovery_log()) EXPECT_EQ(line.find("owner"), std::string::npos) << line;
    EXPECT_EQ(p.stats().orphaned_owners, 0u);
    EXPECT_EQ(p.check(), "");
    EXPECT_EQ(allocations_of_open(p).count(plain), 1u);
    misuses = 0;
    free_pages(pfn_to_page(plain), 0);  // a plain page: its last put frees it, no misuse
    EXPECT_EQ(misuses.load(), 0);
    EXPECT_EQ(allocations_of_open(p).count(plain), 0u);
    EXPECT_EQ(p.check(), "");
  }
  // A tagged, well-formed entry under the owned marker that names a slot not naming the page:
  // found (an interrupted slot call, which recovery frees).
  const std::uint64_t index = index_of(owned_small_);
  write_word(path_, owner_off(index), detail::encode_owner(index, sb_.root_offset + 8 * 6));
  fsck::report found = check_ro();
  const fsck::problem* o1 = find_rule(found, "O1");
  ASSERT_NE(o1, nullptr) << list(found);
  EXPECT_TRUE(o1->recovery) << o1->what;
  set_misuse_handler(previous);
}

// A pool written before lazy-owners (pmpage 0.3: tagged-owners alone) gets the flag at its first
// writable open, B then A; an upgrade torn between the copies is finished by open and is
// recovery's work to fsck. A read-only open changes nothing.
TEST_F(FsckTest, APoolWithoutLazyOwnersIsUpgradedAtItsFirstWritableOpen) {
  superblock old = read_sb(path_);
  ASSERT_EQ(old.flags, detail::SB_TAGGED_OWNERS | detail::SB_LAZY_OWNERS) << "create sets both";
  old.flags = detail::SB_TAGGED_OWNERS;
  detail::seal_superblock(old);
  write_copy(path_, 0, old);
  write_copy(path_, 1, old);
  EXPECT_TRUE(check_ro().problems.empty());
  {
    pool::open_options ro;
    ro.read_only = true;
    pool p = pool::open(path_, ro);
    EXPECT_EQ(p.check(), "");
  }
  EXPECT_EQ(read_sb(path_).flags, detail::SB_TAGGED_OWNERS) << "a read-only open writes nothing";
  // Torn: B upgraded, A not.
  superblock up = old;
  up.flags |= detail::SB_LAZY_OWNERS;
  detail::seal_superblock(up);
  write_copy(path_, 1, up);
  fsck::report torn = check_ro();
  ASSERT_FALSE(torn.problems.empty());
  EXPECT_TRUE(torn.problems[0].recovery) << list(torn);
  EXPECT_EQ(torn.exit_code(), 0) << list(torn);
  {
    pool p = pool::open(path_);
    EXPECT_EQ(p.check(), "");
  }
  superblock a{}, b{};
  {
    std::ifstream f(path_, std::ios::binary);
    f.read(reinterpret_cast<char*>(&a), sizeof a);
    f.read(reinterpret_cast<char*>(&b), sizeof b);
  }
  EXPECT_EQ(a.flags, detail::SB_TAGGED_OWNERS | detail::SB_LAZY_OWNERS);
  EXPECT_EQ(std::memcmp(&a, &b, sizeof a), 0);
  // Not torn: both copies without the flag; the open's log says what it did.
  write_copy(path_, 0, old);
  write_copy(path_, 1, old);
  {
    pool p = pool::open(path_);
    bool said = false;
    for (const std::string& line : p.recovery_log()) said |= line.find("lazy-owners") != std::string::npos;
    EXPECT_TRUE(said);
  }
  EXPECT_EQ(read_sb(path_).flags, detail::SB_TAGGED_OWNERS | detail::SB_LAZY_OWNERS);
  EXPECT_EQ(allocations_of(path_), before_);
}

TEST_F(FsckTest, DamagedOwnerEntryDropsTheOwnershipAndKeepsThePage) {
  // A flipped bit fails the entry's check: damage, never taken for a slot (which would free the
  // page as an interrupted slot call). The repair drops the record and keeps the page.
  const std::uint64_t index = index_of(owned_small_);
  flip_bit(path_, owner_off(index), 5);
  fsck::report found = check_ro();
  const fsck::problem* p = find_rule(found, "O1");
  ASSERT_NE(p, nullptr) << list(found);
  EXPECT_EQ(p->offset, owner_off(index));
  EXPECT_TRUE(p->repairable());
  EXPECT_EQ(found.exit_code(), 4);
  EXPECT_EQ(fsck::check(path_, repairing()).exit_code(), 1);
  EXPECT_EQ(read_word(path_, owner_off(index)), 0u);
  EXPECT_EQ(allocations_of(path_), before_);
}

TEST_F(FsckTest, LanesPendingTornAndOutOfRange) {
  detail::lane l{};
  l.seq = 7;
  l.kind = std::uint32_t(detail::intent_kind::alloc_to);
  l.order = 0;
  l.slot_offset = sb_.root_offset + 1024;  // holds 0: the alloc did not commit, recovery undoes it
  l.pfn = start_ + (std::uint64_t{20} << 9);
  l.checksum = detail::fletcher64(reinterpret_cast<const char*>(&l) + 8, sizeof l - 8);
  auto put_lane = [&](unsigned i, const detail::lane& x) {
    for (unsigned w = 0; w < 8; ++w) write_word(path_, sb_.lanes_offset + 64 * i + 8 * w, reinterpret_cast<const std::uint64_t*>(&x)[w]);
  };
  put_lane(3, l);
  detail::lane torn = l;
  torn.order = 1;  // checksum no longer matches
  put_lane(5, torn);
  detail::lane wild = l;
  wild.pfn = start_ + (std::uint64_t{1} << 40);
  wild.checksum = detail::fletcher64(reinterpret_cast<const char*>(&wild) + 8, sizeof wild - 8);
  put_lane(9, wild);
  fsck::report found = check_ro();
  EXPECT_EQ(found.pending_intents, 1u);
  const fsck::problem* l1 = find_rule(found, "L1");
  const fsck::problem* l2 = find_rule(found, "L3");  // torn
  const fsck::problem* l3 = find_rule(found, "L2");  // out of range
  ASSERT_TRUE(l1 && l2 && l3) << list(found);
  EXPECT_EQ(l1->word, 3);
  EXPECT_EQ(l1->offset, sb_.lanes_offset + 3 * 64);
  EXPECT_TRUE(l1->recovery);
  EXPECT_NE(l1->what.find("undoes"), std::string::npos) << l1->what;
  EXPECT_TRUE(l2->recovery);
  EXPECT_FALSE(l3->recovery);
  EXPECT_EQ(found.exit_code(), 4);  // the out-of-range lane is damage
  fsck::report fixed = fsck::check(path_, repairing());
  EXPECT_EQ(fixed.exit_code(), 1) << list(fixed);
  for (unsigned i : {3u, 5u, 9u}) EXPECT_EQ(read_word(path_, sb_.lanes_offset + 64 * i + 8), 0u);
  EXPECT_EQ(fsck::check(path_).exit_code(), 0);
  EXPECT_EQ(allocations_of(path_), before_);
}

TEST_F(FsckTest, TornPageMapIsRecoveryWorkNotDamage) {
  // An order-5 allocation in flight: its head and the first word of tails written, the second
  // word not (a crash keeps any subset of the words).
  const std::uint64_t r = index_of(owned_small_) >> 9;
  pool p = pool::open(path_);
  unsigned first = 512;
  for (unsigned s = 0; s < 512 && first == 512; s += 32) {
    bool all_free = true;
    for (unsigned i = s; i < s + 32 && all_free; ++i) {
      page* pg = pfn_to_page(start_ + (r << 9) + i);
      all_free = page_count(pg) == 0 && !PageTail(pg);
    }
    if (all_free) first = s;
  }
  p.close();
  ASSERT_LT(first, 512u);
  write_word(path_, map_word_off(r, first), 0xFFFFFFFFFFFFFFF6ull);  // head of order 5 + 15 tails
  fsck::report found = check_ro();
  const fsck::problem* p3 = find_rule(found, "P2", 1);
  ASSERT_NE(p3, nullptr) << list(found);
  EXPECT_TRUE(p3->recovery);
  EXPECT_EQ(found.exit_code(), 0);
  EXPECT_EQ(found.free_pages, stats_.free_pages);  // counted free, as recovery leaves it
  EXPECT_EQ(fsck::check(path_, repairing()).exit_code(), 1);
  EXPECT_TRUE(fsck::check(path_).problems.empty());
  EXPECT_EQ(allocations_of(path_), before_);
}

TEST_F(FsckTest, UnreadableFilesAreReportedNotThrown) {
  // Truncated.
  const fs::path cut = new_path("cut");
  fs::copy_file(path_, cut);
  fs::resize_file(cut, sb_.device_size - 4 * MiB);
  fsck::report t = fsck::check(cut);
  EXPECT_FALSE(t.readable);
  ASSERT_NE(find_rule(t, "F2"), nullptr) << list(t);
  EXPECT_EQ(t.exit_code(), 4);
  // Interrupted creation: the marker in both copies.
  const fs::path marker = new_path("marker");
  fs::copy_file(path_, marker);
  std::uint64_t m;
  std::memcpy(&m, detail::CREATING_MAGIC, 8);
  write_word(marker, 0, m);
  write_word(marker, 4096, m);
  fsck::report c = fsck::check(marker);
  ASSERT_NE(find_rule(c, "SB3"), nullptr);
  EXPECT_NE(find_rule(c, "SB3")->what.find("interrupted"), std::string::npos);
  // Not a pool.
  const fs::path junk = new_path("junk");
  {
    std::ofstream o(junk, std::ios::binary);
    o << std::string(1 << 20, 'x');
  }
  fsck::report j = fsck::check(junk);
  EXPECT_FALSE(j.readable);
  EXPECT_EQ(j.exit_code(), 4);
  // Too small.
  const fs::path tiny = new_path("tiny");
  std::ofstream(tiny) << "pmpage";
  EXPECT_NE(find_rule(fsck::check(tiny), "F1"), nullptr);
  // Missing: an operational error.
  EXPECT_THROW(fsck::check(new_path("missing")), pmpage::error);
}

TEST_F(FsckTest, APoolOpenForWritingIsRefusedAndReadersShare) {
  pool p = pool::open(path_);
  try {
    fsck::check(path_);
    FAIL() << "a check must refuse a pool open for writing";
  } catch (const pmpage::error& e) {
    EXPECT_EQ(e.code().value(), EBUSY);
    EXPECT_NE(std::string(e.what()).find("open for writing"), std::string::npos) << e.what();
  }
  p.close();
  // A shared lock held elsewhere (a reader) does not stop a check, but stops a repair.
  const int fd = ::open(path_.c_str(), O_RDONLY);
  ASSERT_EQ(::flock(fd, LOCK_SH), 0);
  EXPECT_EQ(fsck::check(path_).exit_code(), 0);
  EXPECT_THROW(fsck::check(path_, repairing()), pmpage::error);
  ::close(fd);
}

TEST_F(FsckTest, DumpDecodesOneRegion) {
  const std::uint64_t index = index_of(owned_small_);
  const std::uint64_t r = index >> 9;
  fsck::region_dump d = fsck::dump_region(path_, r);
  EXPECT_EQ(d.info.kind, fsck::region_kind::split);
  EXPECT_EQ(d.word, detail::make_region_word(detail::region_state::split));
  EXPECT_EQ(d.word_offset, region_word_off(r));
  const unsigned pg = unsigned(index & 511);
  EXPECT_EQ(d.codes[pg], detail::code_head(2));
  EXPECT_EQ(d.codes[pg + 1], detail::CODE_TAIL);
  EXPECT_EQ(d.owners[pg], sb_.root_offset);
  EXPECT_EQ(d.slot_values[pg], owned_small_);
  EXPECT_TRUE(d.problems.empty());
  fsck::region_dump big = fsck::dump_region(path_, index_of(owned_large_) >> 9);
  EXPECT_EQ(big.info.kind, fsck::region_kind::head);
  EXPECT_TRUE(big.owned);
  EXPECT_THROW(fsck::dump_region(path_, sb_.nr_regions), pmpage::error);
}

}  // namespace

TEST_F(FsckTest, SixteenTebibytePoolIsCheckedFromItsMetadataAlone) {
  // 2^23 regions: the region table (64 MiB, read whole) and the page maps of split regions only.
  const fs::path big = new_path("16t");
  const superblock sb = craft_image(big, (MAX_POOL_PAGES << PAGE_SHIFT) + 40 * GiB);
  ASSERT_EQ(sb.nr_regions, MAX_POOL_PAGES / 512);
  using detail::make_region_word;
  using detail::region_state;
  write_word(big, sb.region_table_offset, make_region_word(region_state::head, 18));        // regions 0..511
  write_word(big, sb.region_table_offset + 8 * 1000, make_region_word(region_state::split)); // one 4 KiB page
  write_word(big, sb.page_map_offset + 256 * 1000, 0x1);
  write_word(big, sb.region_table_offset + 8 * (sb.nr_regions - 1), 0xdead0000);           // damage at the end
  fsck::options o;
  o.regions = true;
  fsck::report r = fsck::check(big, o);
  EXPECT_TRUE(r.readable);
  ASSERT_EQ(r.regions.size(), sb.nr_regions);
  EXPECT_EQ(r.large_allocations, 1u);
  EXPECT_EQ(r.large_regions, 512u);
  EXPECT_EQ(r.split_regions, 1u);
  EXPECT_EQ(r.damaged_regions, 1u);
  EXPECT_EQ(r.regions[1000].kind, fsck::region_kind::split);
  EXPECT_EQ(r.regions[1000].used_pages, 1u);
  EXPECT_EQ(r.regions[511].kind, fsck::region_kind::tail);
  EXPECT_EQ(r.regions.back().kind, fsck::region_kind::damaged);
  EXPECT_EQ(r.free_pages, r.total_pages - 512 * 512 - 1 - 512);  // the damaged region is not counted free
  EXPECT_EQ(r.largest_free_order, 18);
  const fsck::problem* p = find_rule(r, "R1");
  ASSERT_NE(p, nullptr) << list(r);
  EXPECT_EQ(p->offset, sb.region_table_offset + 8 * (sb.nr_regions - 1));
  EXPECT_EQ(r.exit_code(), 4);
  // The smallest pool: 4 MiB.
  const fs::path small = new_path("4m");
  pool(create_pool(small, MIN_POOL_SIZE)).close();
  fsck::report s = fsck::check(small, o);
  EXPECT_TRUE(s.problems.empty()) << list(s);
  EXPECT_EQ(s.regions.size(), s.nr_regions);
  EXPECT_GE(s.nr_regions, 1u);
}

TEST_F(FsckTest, RandomBitFlipsInEveryStructure) {
  // A small pool where every split region holds slot-owned allocations (the evidence R3 uses),
  // with a large owned page, a large unowned one, and holes.
  const fs::path base = new_path("base");
  std::map<pfn_t, unsigned> before;
  superblock sb;
  {
    pool::options o;
    o.size = 24 * MiB;
    o.root_size = 16384;
    pool p = pool::create(base, o);
    auto* slots = static_cast<pfn_t*>(p.root());
    for (unsigned i = 0; i < 300; ++i) ASSERT_NE(p.alloc_pages_to(i % 6, &slots[i]), nullptr);
    for (unsigned i = 0; i < 300; i += 4) ASSERT_EQ(p.free_pages_from(&slots[i]), 0);
    ASSERT_NE(p.alloc_pages_to(9, &slots[1000]), nullptr);
    ASSERT_NE(p.alloc_pages(10), nullptr);
    p.for_each_allocated([&](page* h, unsigned order) { before[page_to_pfn(h)] = order; });
  }
  sb = read_sb(base);
  ASSERT_TRUE(fsck::check(base).problems.empty());
  fsck::options o;
  o.regions = true;
  const fsck::report clean = fsck::check(base, o);
  std::vector<std::uint64_t> split_regions;
  for (std::uint64_t r = 0; r < clean.regions.size(); ++r)
    if (clean.regions[r].kind == fsck::region_kind::split) split_regions.push_back(r);
  ASSERT_FALSE(split_regions.empty());

  struct area {
    const char* name;
    std::function<std::uint64_t(std::mt19937_64&)> offset;
    bool may_lose;  // a flip here can be indistinguishable from a crash's leftovers
  };
  auto pick = [](std::mt19937_64& g, std::uint64_t n) { return std::uniform_int_distribution<std::uint64_t>(0, n - 1)(g); };
  const std::vector<area> areas = {
      {"superblock A", [&](auto& g) { return pick(g, 4096); }, false},
      {"superblock B", [&](auto& g) { return 4096 + pick(g, 4096); }, false},
      {"intent lanes", [&](auto& g) { return sb.lanes_offset + pick(g, 64 * 64); }, false},
      {"region table", [&](auto& g) { return sb.region_table_offset + pick(g, 8 * sb.nr_regions); }, false},
      {"owner table", [&](auto& g) { return sb.owner_table_offset + 4096 * split_regions[pick(g, split_regions.size())] + pick(g, 4096); }, false},
      // A flipped code can look exactly like a torn update (a head whose tails are missing),
      // which recovery clears: loss is possible there, never a broken pool.
      {"page map", [&](auto& g) { return sb.page_map_offset + 256 * split_regions[pick(g, split_regions.size())] + pick(g, 256); }, true},
  };
  // PMPAGE_FSCK_FLIPS / PMPAGE_FSCK_SEED: more flips, another sequence (docs/testing.md).
  const char* seed_env = std::getenv("PMPAGE_FSCK_SEED");
  std::mt19937_64 gen(seed_env ? std::strtoull(seed_env, nullptr, 0) : 20261129);
  const fs::path work = new_path("work");
  const char* flips_env = std::getenv("PMPAGE_FSCK_FLIPS");
  const unsigned flips = flips_env ? unsigned(std::atoi(flips_env)) : 10;
  for (const area& a : areas)
    for (unsigned k = 0; k < flips; ++k) {
      const std::uint64_t off = a.offset(gen);
      const unsigned bit = unsigned(pick(gen, 8));
      SCOPED_TRACE(std::string(a.name) + ": bit " + std::to_string(bit) + " of byte " + std::to_string(off));
      fs::copy_file(base, work, fs::copy_options::overwrite_existing);
      flip_bit(work, off, bit);
      const std::string damaged = file_bytes(work);
      fsck::report found;
      ASSERT_NO_THROW(found = fsck::check(work));
      ASSERT_EQ(file_bytes(work), damaged) << "a read-only check wrote";
      fsck::report fixed;
      ASSERT_NO_THROW(fixed = fsck::check(work, repairing())) << list(found);
      if (fixed.exit_code() == 4) {
        EXPECT_GT(fixed.uncorrected(), 0u);
        continue;
      }
      // Repaired (or nothing to do): the pool opens, passes its own checker, and a second
      // check finds nothing.
      EXPECT_TRUE(fsck::check(work).problems.empty()) << list(fsck::check(work)) << "first:\n" << list(fixed);
      std::map<pfn_t, unsigned> after;
      {
        pool p = pool::open(work);
        EXPECT_EQ(p.check(), "");
        p.for_each_allocated([&](page* h, unsigned order) { after[page_to_pfn(h)] = order; });
      }
      if (!a.may_lose)
        for (const auto& [pfn, order] : before) {
          auto it = after.find(pfn);
          EXPECT_TRUE(it != after.end() && it->second == order) << "allocation at pfn " << pfn << " lost\n" << list(fixed);
        }
    }
}

TEST_F(FsckTest, AFreedCodeUnderAnOwnedSlotIsDamageNotRecovery) {
  // The owned order-2 allocation's head code cleared (0x3 -> 0x0 is two bits, 0x1 -> 0x0 one):
  // its slot still names the page and no intent covers it, so no crash did this. Recovery would
  // free the page under the slot: the check must call it damage and the repair must not run.
  // (Its owner entry, now on a page that heads nothing, counts for nothing: a free leaves entries
  // stale, format flag lazy-owners. The extent's torn word is what gives the damage away.)
  const std::uint64_t index = index_of(owned_small_);
  const std::uint64_t r = index >> 9;
  const unsigned pg = unsigned(index & 511);
  const std::uint64_t off = map_word_off(r, pg);
  write_word(path_, off, read_word(path_, off) & ~(std::uint64_t{0xF} << (pg % 16 * 4)));
  fsck::report found = check_ro();
  EXPECT_EQ(find_rule(found, "O1"), nullptr) << list(found);
  // Its three tails, alone inside one word, are damage: a crash keeps a word whole.
  const fsck::problem* p2 = find_rule(found, "P2", 0);
  ASSERT_NE(p2, nullptr) << list(found);
  EXPECT_EQ(found.exit_code(), 4);
  const std::string before = file_bytes(path_);
  EXPECT_EQ(fsck::check(path_, repairing()).exit_code(), 4);
  EXPECT_EQ(file_bytes(path_), before) << "recovery must not run over damage that may hide an allocation";
}

TEST_F(FsckTest, AShrunkHeadInsideOneWordIsDamage) {
  // Order-2 head -> order-1 head: the head's word holds two orphan tails, which an 8-byte store
  // cannot leave half-written.
  const std::uint64_t index = index_of(owned_small_);
  const std::uint64_t r = index >> 9;
  const unsigned pg = unsigned(index & 511);
  const std::uint64_t off = map_word_off(r, pg);
  write_word(path_, off, (read_word(path_, off) & ~(std::uint64_t{0xF} << (pg % 16 * 4))) | (std::uint64_t{2} << (pg % 16 * 4)));
  fsck::report found = check_ro();
  EXPECT_EQ(find_rule(found, "P2", 1), nullptr) << list(found);
  ASSERT_NE(find_rule(found, "P2", 0), nullptr) << list(found);
  EXPECT_EQ(found.exit_code(), 4);
}

TEST_F(FsckTest, TwoValidButDifferentSuperblocksAreNotGuessed) {
  // Copy A replaced by another pool's (valid) superblock: open refuses, check reports SB2 and a
  // repair writes nothing.
  const fs::path other = new_path("other");
  create_pool(other, 64 * MiB).close();
  {
    const std::string a = file_bytes(other).substr(0, 4096);
    std::fstream f(path_, std::ios::binary | std::ios::in | std::ios::out);
    f.write(a.data(), std::streamsize(a.size()));
  }
  try {
    pool::open(path_);
    FAIL() << "open must refuse two valid, different superblock copies";
  } catch (const pmpage::error& e) {
    EXPECT_NE(std::string(e.what()).find("both valid but differ"), std::string::npos) << e.what();
  }
  fsck::report found = check_ro();
  const fsck::problem* p = find_rule(found, "SB2");
  ASSERT_NE(p, nullptr) << list(found);
  EXPECT_FALSE(p->repairable());
  const std::string before = file_bytes(path_);
  EXPECT_EQ(fsck::check(path_, repairing()).exit_code(), 4);
  EXPECT_EQ(file_bytes(path_), before);
}

// ---- reidentify ----------------------------------------------------------------------------------

// A copied pool file has its original's pfns, so the two cannot be open together; reidentify
// gives the copy a new pfn base and rewrites every slot the owner tables name (root slots and a
// slot inside an allocated page), after which the copy is clean, opens beside the original and
// frees through its slots. A pfn the engine stored itself (not a slot) keeps its old value: the
// documented limit.
TEST_F(FsckTest, ReidentifyLetsACopiedPoolFileOpenBesideItsOriginal) {
  pfn_t data_slot_holder, in_page_owned;
  {
    pool p = pool::open(path_);
    page* holder = p.alloc_pages(0);
    ASSERT_NE(holder, nullptr);
    auto* in_page = static_cast<pfn_t*>(page_address(holder));
    ASSERT_NE(p.alloc_pages_to(1, &in_page[3]), nullptr);
    data_slot_holder = page_to_pfn(holder);
    in_page_owned = in_page[3];
    static_cast<pfn_t*>(p.root())[5] = data_slot_holder;  // the engine's own reference: no slot
  }
  const fs::path copy = new_path("copy");
  fs::copy_file(path_, copy);
  const std::string original_bytes = file_bytes(path_);
  {
    pool a = pool::open(path_);
    const std::string what = expect_error(EBUSY, [&] { pool::open(copy); });
    EXPECT_NE(what.find("one is a copy of the other"), std::string::npos) << what;
    expect_error(EBUSY, [&] { fsck::reidentify(path_); });  // an open pool is locked: refused
  }

  const fsck::reidentify_result r = fsck::reidentify(copy);
  EXPECT_EQ(file_bytes(path_), original_bytes) << "the original is not touched";
  EXPECT_EQ(r.old_start_pfn, start_);
  EXPECT_NE(r.new_start_pfn, start_);
  EXPECT_EQ(r.slots_rewritten, 3u);
  EXPECT_EQ(r.old_format_major, 3u);
  EXPECT_FALSE(r.resumed);
  EXPECT_NE(r.uuid, fsck::check(path_).uuid) << "the copy is a pool of its own";
  const fsck::report checked = fsck::check(copy);
  EXPECT_EQ(checked.exit_code(), 0) << list(checked);
  EXPECT_TRUE(checked.problems.empty()) << list(checked);
  EXPECT_EQ(checked.start_pfn, r.new_start_pfn);

  pool a = pool::open(path_);
  pool b = pool::open(copy);  // together, at last
  const pfn_t delta = r.new_start_pfn - r.old_start_pfn;
  EXPECT_EQ(b.start_pfn(), r.new_start_pfn);
  auto* as = static_cast<pfn_t*>(a.root());
  auto* bs = static_cast<pfn_t*>(b.root());
  EXPECT_EQ(as[0], owned_small_);
  EXPECT_EQ(bs[0], owned_small_ + delta);
  EXPECT_EQ(bs[1], owned_large_ + delta);
  EXPECT_EQ(static_cast<pfn_t*>(page_address(pfn_to_page(data_slot_holder + delta)))[3], in_page_owned + delta);
  EXPECT_EQ(bs[5], data_slot_holder) << "a pfn stored outside a slot is the engine's to translate";
  EXPECT_EQ(compound_order(pfn_to_page(bs[1])), 9u);
  EXPECT_EQ(a.check(), "");
  EXPECT_EQ(b.check(), "");
  std::map<pfn_t, unsigned> shifted;
  for (const auto& [pfn, order] : allocations_of_open(a)) shifted[pfn + delta] = order;
  EXPECT_EQ(allocations_of_open(b), shifted);
  EXPECT_EQ(b.free_pages_from(&bs[0]), 0) << "the copy's slots own its pages";
  EXPECT_EQ(bs[0], 0u);
  EXPECT_EQ(b.check(), "");
}

// A pool of format 2 (16-bit section id) opens with its pfns unchanged; reidentify makes it 3.0.
TEST_F(FsckTest, AFormat2PoolKeepsItsPfnsAndReidentifyMakesIt3) {
  // The same pool, as a format-2 library would have written it: section id 0x4242, base 0x4242 << 32.
  const pfn_t v2_base = pfn_t{0x4242} << 32;
  const fs::path old = new_path("v2");
  pfn_t owned;
  {
    pmpage::detail::set_pfn_base_source_for_testing([&] { return v2_base; });
    pool p = create_pool(old, 16 * MiB);
    pmpage::detail::set_pfn_base_source_for_testing({});
    ASSERT_NE(p.alloc_pages_to(0, static_cast<pfn_t*>(p.root())), nullptr);
    owned = static_cast<pfn_t*>(p.root())[0];
  }
  superblock sb = read_sb(old);
  sb.major = 2;
  sb.section_id = 0x4242;
  sb.pfn_base = 0;
  detail::seal_superblock(sb);
  write_copy(old, 0, sb);
  write_copy(old, 1, sb);
  const fsck::report r2 = fsck::check(old);
  EXPECT_EQ(r2.exit_code(), 0) << list(r2);
  EXPECT_EQ(r2.format_major, 2u);
  EXPECT_EQ(r2.section_id, 0x4242u);
  EXPECT_EQ(r2.start_pfn, v2_base);
  {
    pool p = pool::open(old);
    EXPECT_EQ(p.start_pfn(), v2_base);
    EXPECT_EQ(page_to_pfn(pfn_to_page(owned)), owned);
    EXPECT_EQ(p.check(), "");
  }
  EXPECT_EQ(read_sb(old).major, 2u) << "opening a 2.x pool leaves it 2.x";

  const fsck::reidentify_result r = fsck::reidentify(old);
  EXPECT_EQ(r.old_format_major, 2u);
  EXPECT_EQ(r.old_start_pfn, v2_base);
  EXPECT_EQ(r.slots_rewritten, 1u);
  const superblock now = read_sb(old);
  EXPECT_EQ(now.major, detail::FORMAT_MAJOR);
  EXPECT_EQ(now.section_id, 0u);
  EXPECT_EQ(now.pfn_base, r.new_start_pfn);
  pool p = pool::open(old);
  EXPECT_EQ(static_cast<pfn_t*>(p.root())[0], owned - v2_base + r.new_start_pfn);
  EXPECT_EQ(p.check(), "");
}

// A re-identification cut short (a crash after the first superblock copy, or among the slots)
// leaves a pool open refuses with a message saying what to run, check reports it (SB4, not
// repaired by guessing), and running reidentify again finishes it with the base it had chosen.
TEST_F(FsckTest, AnInterruptedReidentifyIsRefusedByOpenAndFinishedByRunningItAgain) {
  const pfn_t new_base = pfn_t{0xabcde} << 28;
  superblock next = read_sb(path_);
  next.pfn_base = new_base;
  next.reidentify_from = start_;
  detail::seal_superblock(next);
  write_copy(path_, 0, next);  // copy A written, B still the old superblock
  std::string what = expect_error(EINVAL, [&] { pool::open(path_); });
  EXPECT_NE(what.find("re-identification"), std::string::npos) << what;
  EXPECT_NE(what.find("pmpage reidentify"), std::string::npos) << what;
  fsck::report found = check_ro();
  const fsck::problem* p = find_rule(found, "SB4");
  ASSERT_NE(p, nullptr) << list(found);
  EXPECT_FALSE(p->repairable());
  EXPECT_EQ(found.exit_code(), 4);
  EXPECT_EQ(find_rule(found, "SB2"), nullptr) << "the differing copies are the re-identification's: " << list(found);

  // Further on: both copies written and one of the two slots rewritten.
  write_copy(path_, 1, next);
  write_word(path_, sb_.root_offset, owned_small_ - start_ + new_base);
  EXPECT_EQ(expect_error(EINVAL, [&] { pool::open(path_); }).find("interrupted") != std::string::npos, true);

  const fsck::reidentify_result r = fsck::reidentify(path_);
  EXPECT_TRUE(r.resumed);
  EXPECT_EQ(r.old_start_pfn, start_);
  EXPECT_EQ(r.new_start_pfn, new_base);
  EXPECT_EQ(r.slots_rewritten, 2u);
  const fsck::report after = check_ro();
  EXPECT_EQ(after.exit_code(), 0) << list(after);
  pool pl = pool::open(path_);
  auto* slots = static_cast<pfn_t*>(pl.root());
  EXPECT_EQ(slots[0], owned_small_ - start_ + new_base);
  EXPECT_EQ(slots[1], owned_large_ - start_ + new_base);
  EXPECT_EQ(pl.check(), "");
}

// reidentify works only from a clean pool: damage (or a crash's leftovers) is check --repair's to
// deal with first, and it says so without writing a byte.
TEST_F(FsckTest, ReidentifyRefusesAPoolThatNeedsRecoveryAndChangesNothing) {
  // A region word one bit away from valid: damage, found by check.
  flip_bit(path_, region_word_off(0), 40);
  const std::string before = file_bytes(path_);
  const std::string what = expect_error(EINVAL, [&] { fsck::reidentify(path_); });
  EXPECT_NE(what.find("pmpage check --repair"), std::string::npos) << what;
  EXPECT_EQ(file_bytes(path_), before);
}
