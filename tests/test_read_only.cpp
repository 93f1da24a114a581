// test_read_only.cpp — pool::open with open_options::read_only (docs/api.md "Read-only open"):
// the file's bytes never change (healthy or damaged images), recovery runs on the process's
// private view and recovery_log() says what it would do, every mutating call is reported misuse,
// the shared lock admits readers together and never a reader beside a writer, a 0444 file opens,
// and a stray store faults.
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>

#include "layout.hpp"  // src/: crafting damaged images needs the on-media structures
#include "test_util.hpp"

using namespace pmpage;
using namespace pmtest;
namespace fs = std::filesystem;

namespace {

std::vector<char> read_bytes(const fs::path& p) {
  std::vector<char> b(fs::file_size(p));
  std::ifstream in(p, std::ios::binary);
  in.read(b.data(), std::streamsize(b.size()));
  EXPECT_TRUE(in.good()) << p;
  return b;
}

/// Rewrites the file in place (same inode), as a tool damaging the media would.
void write_bytes(const fs::path& p, const std::vector<char>& bytes) {
  std::ofstream out(p, std::ios::binary | std::ios::in | std::ios::out);
  out.write(bytes.data(), std::streamsize(bytes.size()));
  ASSERT_TRUE(out.good());
}

template <class T>
T word_at(const std::vector<char>& b, std::uint64_t off) {
  T v;
  std::memcpy(&v, b.data() + off, sizeof v);
  return v;
}
template <class T>
void put_at(std::vector<char>& b, std::uint64_t off, T v) {
  std::memcpy(b.data() + off, &v, sizeof v);
}

detail::superblock superblock_of(const std::vector<char>& b) { return word_at<detail::superblock>(b, 0); }

/// The 4-bit page-map code of page `i` of region `r`, read from an image.
unsigned map_code_at(const std::vector<char>& b, const detail::superblock& sb, std::uint64_t r, unsigned i) {
  const auto w = word_at<std::uint64_t>(b, sb.page_map_offset + r * detail::PAGE_MAP_BYTES + i / 16 * 8);
  return unsigned(w >> (i % 16 * 4)) & 0xF;
}
std::uint64_t map_word_off(const detail::superblock& sb, std::uint64_t r, unsigned i) {
  return sb.page_map_offset + r * detail::PAGE_MAP_BYTES + i / 16 * 8;
}
std::uint64_t owner_off(const detail::superblock& sb, std::uint64_t index) { return sb.owner_table_offset + index * 8; }
std::uint64_t region_word_off(const detail::superblock& sb, std::uint64_t r) { return sb.region_table_offset + r * 8; }

bool contains_line(const std::vector<std::string>& log, const std::string& fragment) {
  return std::any_of(log.begin(), log.end(), [&](const std::string& l) { return l.find(fragment) != std::string::npos; });
}
std::string joined(const std::vector<std::string>& log) {
  std::string s;
  for (const auto& l : log) s += "  " + l + "\n";
  return s;
}

pool open_ro(const fs::path& p) {
  pool::open_options o;
  o.read_only = true;
  return pool::open(p, o);
}

/// Expects f() to throw pmpage::error with errno `err` and a message holding `fragment`.
template <class F>
void expect_error(F&& f, int err, const std::string& fragment) {
  try {
    f();
    ADD_FAILURE() << "no error (expected errno " << err << ", '" << fragment << "')";
  } catch (const pmpage::error& e) {
    EXPECT_EQ(e.code().value(), err) << e.what();
    EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
  }
}

class ReadOnlyTest : public TempPathTest {};

// ---- a healthy pool: every read works, every write is refused, the file never changes ----------

TEST_F(ReadOnlyTest, EveryReadWorksEveryWriteIsRefusedAndTheFileNeverChanges) {
  const fs::path path = new_path();
  allocation_snapshot before_allocs;
  std::vector<std::pair<pfn_t, unsigned char>> data;  // page -> the byte written in it
  pfn_t unowned_small = 0, unowned_huge = 0, owned_huge = 0;
  std::uint64_t free_pages_rw = 0;
  {
    pool::options o;
    o.size = 32 * MiB;
    o.root_size = 8192;  // 1024 slots: 512 of them for the split_huge_page_to attempt
    pool p = pool::create(path, o);
    pfn_t* slots = root_slots(p);
    std::vector<page*> keep;
    for (unsigned order = 0; order <= 10; ++order)
      for (int i = 0; i < 3; ++i) {
        page* pg = p.alloc_pages(order);
        ASSERT_NE(pg, nullptr) << order;
        if (i == 1) {
          free_pages(pg, order);  // freed again: leaves holes
          continue;
        }
        keep.push_back(pg);
        const auto byte = static_cast<unsigned char>(order * 16 + i + 1);
        std::memset(page_address(pg), byte, PAGE_SIZE);
        p.persist(page_address(pg), PAGE_SIZE);
        data.emplace_back(page_to_pfn(pg), byte);
      }
    unowned_small = page_to_pfn(keep.front());
    for (page* pg : keep)
      if (compound_order(pg) == 9) unowned_huge = page_to_pfn(pg);
    // Slot-owned pages in the root (orders 0, 3 and 9), one freed again.
    ASSERT_NE(p.alloc_pages_to(0, &slots[0]), nullptr);
    ASSERT_NE(p.alloc_pages_to(3, &slots[1]), nullptr);
    ASSERT_NE(p.alloc_pages_to(9, &slots[2]), nullptr);
    ASSERT_NE(p.alloc_pages_to(1, &slots[3]), nullptr);
    ASSERT_EQ(p.free_pages_from(&slots[3]), 0);
    owned_huge = slots[2];
    std::memcpy(static_cast<char*>(p.root()) + 4096, "root bytes", 11);
    p.persist(static_cast<char*>(p.root()) + 4096, 11);
    ASSERT_EQ(p.check(), "");
    before_allocs = allocations(p);
    free_pages_rw = p.stats().free_pages;
  }
  const std::vector<char> before = read_bytes(path);
  {
    pool p = open_ro(path);
    EXPECT_TRUE(p.is_read_only());
    EXPECT_FALSE(p.is_pmem());
    EXPECT_TRUE(p.recovery_log().empty()) << joined(p.recovery_log());
    pfn_t* slots = root_slots(p);
    // Reads.
    const pool_stats s = p.stats();
    EXPECT_EQ(s.free_pages, free_pages_rw);
    EXPECT_EQ(s.repaired_at_open, 0u);
    const allocation_snapshot now = allocations(p);
    EXPECT_EQ(now.by_pfn, before_allocs.by_pfn);
    EXPECT_EQ(p.check(), "");
    std::vector<pfn_t*> slot_list;
    for (std::size_t i = 0; i < 512; ++i) slot_list.push_back(&slots[i]);  // the root's second half holds bytes
    const pool::slot_check sc = p.check_slots(slot_list);
    EXPECT_TRUE(sc.dangling.empty() && sc.shared.empty() && sc.misowned.empty()) << sc.describe();
    EXPECT_EQ(sc.unreferenced.size(), before_allocs.by_pfn.size() - 3);  // all but the 3 owned pages
    for (auto [pfn, byte] : data) {
      const auto* b = static_cast<const unsigned char*>(page_address(pfn_to_page(pfn)));
      EXPECT_EQ(b[0], byte);
      EXPECT_EQ(b[PAGE_SIZE - 1], byte);
    }
    EXPECT_STREQ(static_cast<const char*>(p.root()) + 4096, "root bytes");
    // DRAM-only page calls are fine.
    page* small = pfn_to_page(unowned_small);
    get_page(small);
    EXPECT_EQ(page_count(small), 2);
    put_page(small);
    lock_page(small);
    unlock_page(small);
    EXPECT_FALSE(TestSetPageDirty(small));
    ClearPageDirty(small);

    // Every mutating call: reported, refused, nothing changes.
    {
      misuse_recorder rec;
      int expected = 0;
      auto refused = [&](const char* what) {
        ++expected;
        EXPECT_EQ(rec.count(), expected) << what << " was not reported";
        EXPECT_NE(rec.last().find("read-only"), std::string::npos) << what << ": " << rec.last();
      };
      EXPECT_EQ(p.alloc_pages(0), nullptr);
      refused("alloc_pages");
      page* out[4] = {};
      EXPECT_EQ(p.alloc_pages_bulk(0, 4, out), 0u);
      refused("alloc_pages_bulk");
      EXPECT_EQ(p.alloc_pages_to(0, &slots[10]), nullptr);
      refused("alloc_pages_to");
      pfn_t* empty_slots[] = {&slots[10], &slots[11]};
      EXPECT_EQ(p.alloc_pages_bulk_to(0, empty_slots), 0u);
      refused("alloc_pages_bulk_to");
      EXPECT_EQ(p.free_pages_from(&slots[0]), -EROFS);
      refused("free_pages_from");
      pfn_t* owned_slots[] = {&slots[0], &slots[1]};
      EXPECT_EQ(p.free_pages_bulk_from(owned_slots), -EROFS);
      refused("free_pages_bulk_from");
      EXPECT_EQ(p.move_pages_owner(&slots[0], &slots[10]), -EROFS);
      refused("move_pages_owner");
      p.persist(p.root(), 8);
      refused("persist");
      p.flush(p.root(), 8);
      refused("flush");
      p.drain();
      refused("drain");
      EXPECT_EQ(p.trim(), 0u);
      refused("trim");
      put_page(small);  // the last reference: would free it
      refused("put_page (last reference)");
      EXPECT_EQ(page_count(small), 1);
      free_pages(small, 0);
      refused("free_pages");
      EXPECT_EQ(page_count(small), 1);
      EXPECT_EQ(split_huge_page(pfn_to_page(unowned_huge)), -EROFS);
      refused("split_huge_page");
      EXPECT_EQ(split_huge_page_to(pfn_to_page(owned_huge), &slots[512]), -EROFS);
      refused("split_huge_page_to");
    }
    EXPECT_EQ(slots[0] != 0 && slots[1] != 0 && slots[2] != 0, true);
    EXPECT_EQ(slots[10], 0u);
    EXPECT_EQ(allocations(p).by_pfn, before_allocs.by_pfn);
    EXPECT_EQ(p.check(), "");
    EXPECT_EQ(p.stats().free_pages, free_pages_rw);
  }
  EXPECT_TRUE(read_bytes(path) == before) << "a read-only open changed the file";
  // And the pool is still a healthy pool for a writer.
  pool w = pool::open(path);
  EXPECT_FALSE(w.is_read_only());
  EXPECT_EQ(w.check(), "");
  EXPECT_EQ(allocations(w).by_pfn, before_allocs.by_pfn);
}

// ---- a damaged image: read-only recovery is a private view; read-write recovery does the same -----

TEST_F(ReadOnlyTest, DamagedImageOpensReadOnlyUnchangedAndReadWriteRepairsTheSame) {
  const fs::path path = new_path();
  pfn_t start = 0, owned_small = 0, owned_huge = 0;
  std::uint64_t root_off = 0, small_region = 0, empty_region = 0;
  std::vector<pfn_t> kept;
  {
    pool p = create_pool(path, 16 * MiB);
    start = p.start_pfn();
    root_off = std::uint64_t(static_cast<char*>(p.root()) - static_cast<char*>(p.base()));
    pfn_t* slots = root_slots(p);
    for (int i = 0; i < 3; ++i) kept.push_back(page_to_pfn(p.alloc_pages(0)));
    ASSERT_NE(p.alloc_pages_to(0, &slots[0]), nullptr);
    ASSERT_NE(p.alloc_pages_to(9, &slots[1]), nullptr);
    owned_small = slots[0];
    owned_huge = slots[1];
    small_region = (owned_small - start) >> HPAGE_PMD_ORDER;
    ASSERT_EQ((kept[0] - start) >> HPAGE_PMD_ORDER, small_region);
    // A region no allocation touches (the highest one).
    std::vector<bool> touched(p.stats().total_regions);
    for (auto [pfn, order] : allocations(p).by_pfn)
      for (std::uint64_t i = pfn - start; i < pfn - start + (std::uint64_t{1} << order); i += HPAGE_PMD_NR)
        touched[i >> HPAGE_PMD_ORDER] = true;
    empty_region = touched.size() - 1;
    while (touched[empty_region]) --empty_region;
  }
  // Damage, as crashes and a stray writer would leave it:
  std::vector<char> img = read_bytes(path);
  const detail::superblock sb = superblock_of(img);
  ASSERT_EQ(sb.root_offset, root_off);
  // 1. a live free_pages_from intent for the owned order-0 page (the crash came after its fence 1);
  detail::lane l{};
  l.seq = 1;
  l.kind = std::uint32_t(detail::intent_kind::free_from);
  l.order = 0;
  l.slot_offset = root_off;
  l.pfn = owned_small;
  l.checksum = detail::fletcher64(reinterpret_cast<const char*>(&l) + 8, sizeof l - 8);
  put_at(img, sb.lanes_offset + 5 * sizeof l, l);
  // 2. the owned order-9 page's owner entry damaged (a flipped bit fails its check: the record
  //    is dropped, the page kept; a slot that does not name its page would free it instead);
  const std::uint64_t huge_region = (owned_huge - start) >> HPAGE_PMD_ORDER;
  put_at<std::uint64_t>(img, owner_off(sb, huge_region << HPAGE_PMD_ORDER),
                        word_at<std::uint64_t>(img, owner_off(sb, huge_region << HPAGE_PMD_ORDER)) ^ 0x20);
  // 3. a torn page map: an orphan tail code on a free page of the split region;
  const unsigned torn_page = 500;
  ASSERT_EQ(map_code_at(img, sb, small_region, torn_page), 0u);
  put_at(img, map_word_off(sb, small_region, torn_page),
         word_at<std::uint64_t>(img, map_word_off(sb, small_region, torn_page)) | (std::uint64_t{0xF} << (torn_page % 16 * 4)));
  // 4. a raw owner entry on another free page of it (what an interrupted free of a 0.2 pool leaves;
  //    a tagged one would be stale and ignored: format flag lazy-owners);
  const std::uint64_t stale_index = (small_region << HPAGE_PMD_ORDER) + 400;
  ASSERT_EQ(map_code_at(img, sb, small_region, 400), 0u);
  put_at<std::uint64_t>(img, owner_off(sb, stale_index), root_off + 8 * 7);
  // 5. a split region with nothing allocated (a crash between the last free and the merge);
  ASSERT_EQ(word_at<std::uint64_t>(img, region_word_off(sb, empty_region)), detail::make_region_word(detail::region_state::free));
  put_at(img, region_word_off(sb, empty_region), detail::make_region_word(detail::region_state::split));
  for (unsigned w = 0; w < detail::PAGE_MAP_WORDS; ++w) put_at<std::uint64_t>(img, sb.page_map_offset + empty_region * detail::PAGE_MAP_BYTES + w * 8, 0);
  // 6. superblock copy A damaged (one byte of its uuid).
  img[offsetof(detail::superblock, uuid) + 3] ^= 0x40;
  write_bytes(path, img);

  // The damage is really there (the test cannot pass on a healthy image).
  const std::vector<char> damaged = read_bytes(path);
  ASSERT_TRUE(damaged == img);
  ASSERT_NE(std::memcmp(damaged.data(), damaged.data() + detail::SUPERBLOCK_SIZE, detail::SUPERBLOCK_SIZE), 0);
  ASSERT_NE(word_at<detail::lane>(damaged, sb.lanes_offset + 5 * sizeof l).seq, 0u);
  ASSERT_EQ(word_at<pfn_t>(damaged, root_off), owned_small);
  ASSERT_TRUE(detail::region_word_owned(word_at<std::uint64_t>(damaged, region_word_off(sb, huge_region))));
  ASSERT_EQ(map_code_at(damaged, sb, small_region, torn_page), 0xFu);
  ASSERT_NE(word_at<std::uint64_t>(damaged, owner_off(sb, stale_index)), 0u);

  // What recovery would do / did, named by these fragments.
  char buf[160];
  std::vector<std::string> expect;
  expect.push_back("superblock copy A repaired from copy B");
  std::snprintf(buf, sizeof buf, "intent lane 5: free_pages_from of pfn %#llx (order 0)", (unsigned long long)owned_small);
  expect.push_back(buf);
  std::snprintf(buf, sizeof buf, "region %llu: the owned order-9 page at pfn %#llx", (unsigned long long)huge_region,
                (unsigned long long)owned_huge);
  expect.push_back(buf);
  std::snprintf(buf, sizeof buf, "region %llu: torn page map", (unsigned long long)small_region);
  expect.push_back(buf);
  std::snprintf(buf, sizeof buf, "region %llu: 1 stale owner entries cleared", (unsigned long long)small_region);
  expect.push_back(buf);
  std::snprintf(buf, sizeof buf, "region %llu: split but wholly free", (unsigned long long)empty_region);
  expect.push_back(buf);

  // The same sequence of reads in both modes, so both logs list the lazy loads in one order.
  auto inspect = [&](pool& p, bool read_only) {
    EXPECT_EQ(p.is_read_only(), read_only);
    EXPECT_EQ(root_slots(p)[0], 0u) << "the replayed free_pages_from empties its slot";
    // First touch of the split region (after a read-only pool's mapping became PROT_READ): its
    // lazy repairs must not write the mapping.
    EXPECT_EQ(compound_head(pfn_to_page(kept[0])), pfn_to_page(kept[0]));
    EXPECT_EQ(p.check(), "");
    const auto allocs = allocations(p).by_pfn;
    EXPECT_EQ(allocs.count(owned_small), 0u);
    EXPECT_EQ(allocs.count(owned_huge), 1u);
    for (pfn_t k : kept) EXPECT_EQ(allocs.count(k), 1u);
    EXPECT_EQ(allocs.size(), kept.size() + 1);
    EXPECT_GE(p.stats().repaired_at_open, 4u);
    EXPECT_EQ(p.stats().orphaned_owners, 1u);
    const auto log = p.recovery_log();
    for (const auto& e : expect) EXPECT_TRUE(contains_line(log, e)) << "missing '" << e << "' in\n" << joined(log);
    EXPECT_EQ(log.size(), expect.size()) << joined(log);
    return log;
  };
  std::vector<std::string> ro_log;
  {
    pool p = open_ro(path);
    ro_log = inspect(p, true);
    misuse_recorder rec;
    EXPECT_EQ(p.alloc_pages(0), nullptr);
    EXPECT_EQ(rec.count(), 1);
  }
  EXPECT_TRUE(read_bytes(path) == damaged) << "a read-only open of a damaged pool changed the file";
  {  // A second read-only open sees the same (nothing was repaired on the media).
    pool p = open_ro(path);
    EXPECT_EQ(inspect(p, true), ro_log);
  }
  EXPECT_TRUE(read_bytes(path) == damaged);

  std::vector<std::string> rw_log;
  {
    pool p = pool::open(path);
    rw_log = inspect(p, false);
  }
  EXPECT_EQ(rw_log, ro_log) << "read-only:\n" << joined(ro_log) << "read-write:\n" << joined(rw_log);
  // The read-write open did repair the media.
  const std::vector<char> repaired = read_bytes(path);
  EXPECT_FALSE(repaired == damaged);
  EXPECT_EQ(std::memcmp(repaired.data(), repaired.data() + detail::SUPERBLOCK_SIZE, detail::SUPERBLOCK_SIZE), 0);
  EXPECT_EQ(word_at<detail::lane>(repaired, sb.lanes_offset + 5 * sizeof l).seq, 0u);
  EXPECT_EQ(word_at<pfn_t>(repaired, root_off), 0u);
  EXPECT_FALSE(detail::region_word_owned(word_at<std::uint64_t>(repaired, region_word_off(sb, huge_region))));
  EXPECT_EQ(map_code_at(repaired, sb, small_region, torn_page), 0u);
  EXPECT_EQ(word_at<std::uint64_t>(repaired, owner_off(sb, stale_index)), 0u);
  EXPECT_EQ(word_at<std::uint64_t>(repaired, region_word_off(sb, empty_region)), detail::make_region_word(detail::region_state::free));
  // Nothing is left to repair, in either mode.
  for (bool ro : {true, false}) {
    pool p = ro ? open_ro(path) : pool::open(path);
    EXPECT_EQ(p.check(), "");
    EXPECT_TRUE(p.recovery_log().empty()) << joined(p.recovery_log());
  }
}

// ---- locks ----------------------------------------------------------------------------------------

TEST_F(ReadOnlyTest, ReaderAndWriterExcludeEachOtherWithClearMessages) {
  const fs::path path = new_path();
  create_pool(path, 16 * MiB).close();
  {
    pool r = open_ro(path);
    expect_error([&] { pool::open(path); }, EBUSY, "open read-only");
    // One process maps a pool's pfn range once: a second open here is refused after the lock.
    expect_error([&] { open_ro(path); }, EBUSY, "used by another open pool");
    EXPECT_EQ(r.check(), "");
  }
  {
    pool w = pool::open(path);
    expect_error([&] { open_ro(path); }, EBUSY, "open for writing");
    expect_error([&] { pool::open(path); }, EBUSY, "already open for writing");
  }
  pool::open(path).close();
  open_ro(path).close();
}

TEST_F(ReadOnlyTest, ReadersInSeveralProcessesCoexistAndKeepWritersOut) {
  const fs::path path = new_path();
  create_pool(path, 16 * MiB).close();
  int to_child[2], to_parent[2];
  ASSERT_EQ(::pipe(to_child), 0);
  ASSERT_EQ(::pipe(to_parent), 0);
  const pid_t pid = ::fork();  // before any pool is open here: the child opens its own
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    char c;
    int rc = 0;
    if (::read(to_child[0], &c, 1) != 1) ::_exit(10);
    try {
      pool r = open_ro(path);  // the parent holds a read-only open
      if (!r.is_read_only() || r.check() != "") rc = 11;
      try {
        pool::open(path);
        rc = 12;
      } catch (const pmpage::error& e) {
        if (e.code().value() != EBUSY) rc = 13;
      }
      if (::write(to_parent[1], "k", 1) != 1) rc = 14;
      if (::read(to_child[0], &c, 1) != 1) rc = 15;  // the parent tried to write meanwhile
    } catch (...) {
      rc = 16;
    }
    ::_exit(rc);
  }
  {
    pool r = open_ro(path);
    ASSERT_EQ(::write(to_child[1], "g", 1), 1);
    char c = 0;
    ASSERT_EQ(::read(to_parent[0], &c, 1), 1);
    EXPECT_EQ(c, 'k');
    expect_error([&] { pool::open(path); }, EBUSY, "open read-only");
    ASSERT_EQ(::write(to_child[1], "g", 1), 1);
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFEXITED(status));
    EXPECT_EQ(WEXITSTATUS(status), 0) << "child failed at step " << WEXITSTATUS(status);
    EXPECT_EQ(r.check(), "");
  }
  for (int fd : {to_child[0], to_child[1], to_parent[0], to_parent[1]}) ::close(fd);
  pool::open(path).close();  // every reader gone: a writer may open
}

// ---- permissions and protection ---------------------------------------------------------------------

TEST_F(ReadOnlyTest, AFileTheCallerMayOnlyReadOpensReadOnly) {
  const fs::path path = new_path();
  pfn_t owned = 0;
  {
    pool p = create_pool(path, 16 * MiB);
    ASSERT_NE(p.alloc_pages_to(2, &root_slots(p)[0]), nullptr);
    owned = root_slots(p)[0];
  }
  ASSERT_EQ(::chmod(path.c_str(), 0444), 0);
  const auto before = read_bytes(path);
  {
    pool p = open_ro(path);
    EXPECT_EQ(root_slots(p)[0], owned);
    EXPECT_EQ(p.check(), "");
    EXPECT_EQ(allocations(p).by_pfn.size(), 1u);
  }
  // Root bypasses file modes: only an unprivileged run can see the read-write open refused.
  if (::geteuid() != 0) expect_error([&] { pool::open(path); }, EACCES, "cannot open read-write");
  EXPECT_TRUE(read_bytes(path) == before);
  ::chmod(path.c_str(), 0600);
}

TEST_F(ReadOnlyTest, AStrayStoreIntoAReadOnlyPoolFaults) {
  const fs::path path = new_path();
  pfn_t pfn = 0;
  {
    pool p = create_pool(path, 16 * MiB);
    page* pg = p.alloc_pages(0);
    ASSERT_NE(pg, nullptr);
    pfn = page_to_pfn(pg);
  }
  pool p = open_ro(path);
  auto* data = static_cast<volatile char*>(page_address(pfn_to_page(pfn)));
  auto* root = static_cast<volatile char*>(p.root());
  EXPECT_EQ(data[0], data[0]);  // loads are fine
  // The default ("fast") style forks: the child stores into this process's read-only mapping.
  EXPECT_DEATH(data[0] = 1, "");
  EXPECT_DEATH(root[0] = 1, "");
}

}  // namespace
