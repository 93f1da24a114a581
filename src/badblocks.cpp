// badblocks.cpp — see badblocks.hpp. First half: the sources (libpmem2) and the layout lookup;
// second half: what an open pool does about its bad blocks (pool_impl).
//
// The pool's reaction, and the invariants it keeps (checked by check(): Q1..Q3):
//   Q1  a region of kind RK_QUARANTINED is FREE on the media, holds a bad page, and is in no
//       buddy block, stash, cache or filler list: no allocation path can reach it. A region that
//       is wholly free (at open, or when a large allocation over it is freed) is held out whole:
//       splitting it would write its page map and SPLIT word, and an open must not write the
//       media for this (a read-only open cannot).
//   Q2  in a split region, a bad page is never set in free_bits: free on the media (quarantined)
//       or allocated. So the region never reaches 512 free pages and never merges, and no order
//       >= 1 block containing the page is ever found free (find_free_block reads free_bits).
//   Q3  an allocation's state holder carries PG_hwpoison iff one of its pages is bad.
// A bad page's state is fixed by the open's list: bad_bits_ and bad_pages_ never change while
// the pool is open, so they are read without a lock.
#include "badblocks.hpp"

#include <fcntl.h>
#include <libpmem2.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <mutex>

#include "pool_impl.hpp"

namespace pmpage::detail {

// ---- sources -------------------------------------------------------------------------------------

namespace {

/// libpmem2's messages can be empty (docs: pmem2_errormsg() in a fresh process): ours first.
std::string pmem2_reason(const char* call, int rc) {
  const char* m = pmem2_errormsg();
  std::string s = std::string(call) + " failed (" + std::to_string(rc) + ")";
  if (m && *m) s += ": " + std::string(m);
  return s;
}

/// One libpmem2 bad-block context over fd, deleted with its source.
struct pmem2_context {
  pmem2_source* src = nullptr;
  pmem2_badblock_context* ctx = nullptr;
  pmem2_context(int fd, const std::string& path) {
    if (const int rc = pmem2_source_from_fd(&src, fd); rc != 0)
      fail(EIO, path, "cannot read the device's bad blocks: " + pmem2_reason("pmem2_source_from_fd", rc));
    if (const int rc = pmem2_badblock_context_new(&ctx, src); rc != 0) {
      pmem2_source_delete(&src);
      fail(EIO, path, "cannot read the device's bad blocks: " + pmem2_reason("pmem2_badblock_context_new", rc));
    }
  }
  ~pmem2_context() {
    pmem2_badblock_context_delete(&ctx);
    pmem2_source_delete(&src);
  }
  pmem2_context(const pmem2_context&) = delete;
  pmem2_context& operator=(const pmem2_context&) = delete;
};

class libpmem2_source final : public badblock_source {
 public:
  std::vector<bad_block> list(int fd, const std::string& path, bool device_dax) override {
    if (!device_dax && !file_is_dax(fd)) return {};
    pmem2_context c(fd, path);
    std::vector<bad_block> out;
    for (;;) {
      pmem2_badblock bb{};
      const int rc = pmem2_badblock_next(c.ctx, &bb);
      // NO_BAD_BLOCK_FOUND ends the list (also "no matching NVDIMM namespace": nothing to find).
      if (rc == PMEM2_E_NO_BAD_BLOCK_FOUND) break;
      if (rc != 0) fail(EIO, path, "cannot read the device's bad blocks: " + pmem2_reason("pmem2_badblock_next", rc));
      out.push_back({bb.offset, bb.length});
    }
    return out;
  }
  void clear(int fd, const std::string& path, bool, const bad_block& range) override {
    pmem2_context c(fd, path);
    const pmem2_badblock bb{range.offset, range.length};
    if (const int rc = pmem2_badblock_clear(c.ctx, &bb); rc != 0)
      fail(EIO, path, "cannot clear bad block " + describe_range(range) + ": " + pmem2_reason("pmem2_badblock_clear", rc));
  }
};

libpmem2_source g_libpmem2;
std::atomic<badblock_source*> g_source{nullptr};

}  // namespace

badblock_source& libpmem2_badblocks() { return g_libpmem2; }
badblock_source& current_badblock_source() {
  badblock_source* s = g_source.load(std::memory_order_acquire);
  return s ? *s : g_libpmem2;
}
void set_badblock_source(badblock_source* s) { g_source.store(s, std::memory_order_release); }

bool file_is_dax(int fd) {
#ifdef STATX_ATTR_DAX
  struct statx stx;
  if (::statx(fd, "", AT_EMPTY_PATH, STATX_BASIC_STATS, &stx) != 0) return false;
  return (stx.stx_attributes_mask & STATX_ATTR_DAX) && (stx.stx_attributes & STATX_ATTR_DAX);
#else
  (void)fd;
  return false;
#endif
}

std::vector<bad_block> normalise_bad_blocks(std::vector<bad_block> v) {
  std::sort(v.begin(), v.end(), [](const bad_block& a, const bad_block& b) { return a.offset < b.offset; });
  std::vector<bad_block> out;
  for (const bad_block& b : v) {
    if (!out.empty() && b.offset <= out.back().offset + out.back().length)
      out.back().length = std::max(out.back().offset + out.back().length, b.offset + b.length) - out.back().offset;
    else
      out.push_back(b);
  }
  return out;
}

std::string describe_range(const bad_block& b) {
  char buf[96];
  std::snprintf(buf, sizeof buf, "%#" PRIx64 "+%#" PRIx64 " (bytes %" PRIu64 "..%" PRIu64 ")", b.offset, b.length,
                b.offset, b.offset + b.length - 1);
  return buf;
}

std::string metadata_hit(const layout& lay, std::uint64_t offset, std::uint64_t length) {
  const std::uint64_t end = offset + length;
  std::string out;
  auto add = [&](const std::string& s) { out += (out.empty() ? "" : "; ") + s; };
  auto overlap = [&](std::uint64_t b, std::uint64_t e) { return offset < e && b < end; };
  auto range = [](std::uint64_t b, std::uint64_t e) {
    char buf[64];
    std::snprintf(buf, sizeof buf, " [%#" PRIx64 ", %#" PRIx64 ")", b, e);
    return std::string(buf);
  };
  // Per-region tables: which regions' entries the range covers (entry_bytes per region).
  auto per_region = [&](const char* name, std::uint64_t base, std::uint64_t entry_bytes) {
    const std::uint64_t e = base + lay.nr_regions * entry_bytes;
    if (!overlap(base, e)) return;
    const std::uint64_t lo = (std::max(offset, base) - base) / entry_bytes;
    const std::uint64_t hi = (std::min(end, e) - 1 - base) / entry_bytes;
    add(std::string(name) + range(base, e) + ", the entries of region" +
        (lo == hi ? " " + std::to_string(lo) : "s " + std::to_string(lo) + ".." + std::to_string(hi)));
  };
  if (overlap(0, SUPERBLOCK_SIZE)) add("superblock copy A" + range(0, SUPERBLOCK_SIZE));
  if (overlap(SUPERBLOCK_SIZE, 2 * SUPERBLOCK_SIZE)) add("superblock copy B" + range(SUPERBLOCK_SIZE, 2 * SUPERBLOCK_SIZE));
  if (overlap(lay.lanes_offset, lay.lanes_offset + NR_LANES * LANE_SIZE))
    add("the intent lanes" + range(lay.lanes_offset, lay.lanes_offset + NR_LANES * LANE_SIZE));
  if (overlap(lay.root_offset, lay.root_offset + lay.root_size))
    add("the root area" + range(lay.root_offset, lay.root_offset + lay.root_size));
  per_region("the region table", lay.region_table_offset, 8);
  per_region("the page maps", lay.page_map_offset, PAGE_MAP_BYTES);
  per_region("the owner tables", lay.owner_table_offset, OWNER_TABLE_BYTES);
  return out;
}

// ---- the pool ------------------------------------------------------------------------------------

void pool_impl::gather_bad_blocks(const pool::open_options& opts) {
  std::vector<bad_block> all;
  for (const bad_block& b : opts.bad_blocks) {
    if (b.length == 0 || b.offset >= dev_.size() || b.length > dev_.size() - b.offset)
      fail(EINVAL, path(), "open_options::bad_blocks: range " + std::to_string(b.offset) + "+" + std::to_string(b.length) +
                               (b.length == 0 ? " is empty" : " runs past the end of the file or device (" +
                                                                  std::to_string(dev_.size()) + " bytes)"));
    all.push_back(b);
  }
  if (opts.device_bad_blocks)
    for (const bad_block& b : current_badblock_source().list(dev_.fd(), path(), dev_.type() == device::kind::device_dax))
      if (b.length && b.offset < dev_.size()) all.push_back({b.offset, std::min(b.length, dev_.size() - b.offset)});
  bad_blocks_ = normalise_bad_blocks(std::move(all));
  // The superblock copies are read before anything else is known: refuse before reading them.
  layout head{};
  head.lanes_offset = head.root_offset = head.region_table_offset = head.page_map_offset = head.owner_table_offset =
      2 * SUPERBLOCK_SIZE;
  refuse_metadata_hits(head);
}

void pool_impl::refuse_metadata_hits(const layout& lay) const {
  for (const bad_block& b : bad_blocks_)
    if (std::string hit = metadata_hit(lay, b.offset, b.length); !hit.empty())
      fail(EIO, path(), "cannot open: bad block " + describe_range(b) + " lies in the pool's metadata: " + hit +
                            ". Reading it would kill the process (SIGBUS); nothing was read or written there. "
                            "`pmpage check` with the same bad blocks says what can be done");
}

void pool_impl::index_bad_pages() {
  const std::uint64_t data_end = lay_.data_offset + nr_regions_ * HPAGE_PMD_SIZE;
  for (const bad_block& b : bad_blocks_) {
    const std::uint64_t lo = std::max(b.offset, lay_.data_offset), hi = std::min(b.offset + b.length, data_end);
    if (lo >= hi) continue;  // padding before the data area, or past the last region
    for (std::uint64_t i = (lo - lay_.data_offset) >> PAGE_SHIFT; i <= (hi - 1 - lay_.data_offset) >> PAGE_SHIFT; ++i) {
      if (!bad_pages_.empty() && bad_pages_.back() == i) continue;  // two ranges in one page
      bad_pages_.push_back(i);
      auto& bits = bad_bits_[std::uint32_t(i >> HPAGE_PMD_ORDER)];
      bits[(i & (HPAGE_PMD_NR - 1)) / 64] |= std::uint64_t{1} << (i % 64);
    }
  }
}

const std::uint64_t* pool_impl::bad_bits_of(std::uint32_t r) const {
  if (PMPAGE_LIKELY(bad_bits_.empty())) return nullptr;
  const auto it = bad_bits_.find(r);
  return it == bad_bits_.end() ? nullptr : it->second.data();
}

bool pool_impl::has_bad_region(std::uint32_t first, std::uint32_t n) const {
  if (PMPAGE_LIKELY(bad_bits_.empty())) return false;
  for (std::uint32_t r = first; r < first + n; ++r)
    if (bad_bits_.count(r)) return true;
  return false;
}

void pool_impl::quarantine_region_locked(std::uint32_t r) {
  page& d = regions_[r];
  d.flags_.store(0, std::memory_order_relaxed);
  d.list_next_ = d.list_prev_ = NIL;
  store_order(&d, 0);
  store_kind(d, RK_QUARANTINED);  // never RK_FREE_BLOCK: the buddy does not merge across it
  ++core_->quarantined_regions;
}

void pool_impl::apply_bad_pages_at_open() {
  std::lock_guard g(core_->mu);
  for (const auto& [r, bits] : bad_bits_) {
    page& d = regions_[r];
    switch (load_kind(d)) {
      case RK_HEAD:  // an allocation of order >= 9 over the bad page (Q3)
        d.flags_.fetch_or(PG_hwpoison, std::memory_order_relaxed);
        break;
      case RK_TAIL:
        regions_[load_head_index(&d)].flags_.fetch_or(PG_hwpoison, std::memory_order_relaxed);
        break;
      case RK_SPLIT:  // loaded now, so that its bad pages are held out or marked (materialise_locked)
        materialise_locked(r);
        break;
      default:  // RK_QUARANTINED (build_volatile held it out)
        break;
    }
  }
}

unsigned pool_impl::hold_bad_pages(split_state& s, unsigned first, unsigned count) {
  unsigned held = 0;
  for (unsigned i = first; i < first + count; ++i) {
    const std::uint64_t bit = std::uint64_t{1} << (i % 64);
    if ((s.bad_bits[i / 64] & bit) && (s.free_bits[i / 64] & bit)) {
      s.free_bits[i / 64] &= ~bit;
      ++held;
    }
  }
  s.nr_free = std::uint16_t(s.nr_free - held);
  return held;
}

void pool_impl::mark_hwpoison_small(std::uint32_t r, split_state& s) {
  const std::uint64_t base = std::uint64_t(r) << HPAGE_PMD_ORDER;
  for (unsigned i = 0; i < HPAGE_PMD_NR; ++i) {
    if (!(s.bad_bits[i / 64] >> (i % 64) & 1) || (s.free_bits[i / 64] >> (i % 64) & 1)) continue;
    if (map_code(s.map, i) == CODE_FREE) continue;  // held out (hold_bad_pages), not allocated
    page* p = vpage(base + i);
    page* holder = linked_head(p, load_compound_head(p));
    holder->flags_.fetch_or(PG_hwpoison, std::memory_order_relaxed);
  }
}

pool_impl::bad_page_state pool_impl::classify_bad_page(std::uint64_t index) const {
  bad_page_state st;
  const auto r = std::uint32_t(index >> HPAGE_PMD_ORDER);
  const page& d = regions_[r];
  switch (load_kind(d)) {
    case RK_QUARANTINED:
      st.kind = bad_page_state::quarantined;
      return st;
    case RK_HEAD:
    case RK_TAIL: {
      const std::uint32_t h = load_kind(d) == RK_HEAD ? r : load_head_index(const_cast<page*>(&d));
      st.kind = bad_page_state::poisoned;
      st.head = std::uint64_t(h) << HPAGE_PMD_ORDER;
      st.order = load_order(region_desc(h));
      return st;
    }
    case RK_SPLIT: {
      if (!d.alloc_state_) return st;  // lazy: cannot be (apply_bad_pages_at_open loaded it)
      split_state& s = sstate(r);
      const unsigned i = unsigned(index & (HPAGE_PMD_NR - 1));
      const std::uint8_t c = map_code(s.map, i);
      if (c == CODE_FREE) {
        st.kind = bad_page_state::quarantined;
        return st;
      }
      unsigned j = i;
      while (j > 0 && map_code(s.map, j) == CODE_TAIL) --j;
      if (!code_is_head(map_code(s.map, j))) return st;
      st.kind = bad_page_state::poisoned;
      st.head = (std::uint64_t(r) << HPAGE_PMD_ORDER) + j;
      st.order = code_order(map_code(s.map, j));
      return st;
    }
    default:
      return st;  // in transit inside an operation (a large free about to quarantine it)
  }
}

void pool_impl::count_bad_pages_locked(std::uint64_t& quarantined, std::uint64_t& poisoned,
                                       std::vector<hwpoison_page>* list) {
  quarantined = std::uint64_t(core_->quarantined_regions) * HPAGE_PMD_NR;
  poisoned = 0;
  for (const std::uint64_t index : bad_pages_) {
    const auto r = std::uint32_t(index >> HPAGE_PMD_ORDER);
    // Every cache lock and the pool lock are held (lock_all); a split region no cache holds is
    // guarded by its own lock (S6), as check() reads it.
    std::unique_lock<adaptive_mutex> own;
    if (load_kind(regions_[r]) == RK_SPLIT && regions_[r].alloc_state_ && sstate(r).cpu == NO_CPU)
      own = std::unique_lock<adaptive_mutex>(sstate(r).own_lock);
    const bad_page_state st = classify_bad_page(index);
    if (st.kind == bad_page_state::quarantined && load_kind(regions_[r]) == RK_SPLIT) ++quarantined;
    if (st.kind != bad_page_state::poisoned) continue;
    ++poisoned;
    if (list) list->push_back({pfn_of_index(index), pfn_of_index(st.head), st.order});
  }
}

std::vector<hwpoison_page> pool_impl::hwpoison_list() {
  std::vector<hwpoison_page> out;
  if (bad_pages_.empty()) return out;
  lock_all();
  std::uint64_t q, p;
  count_bad_pages_locked(q, p, &out);
  unlock_all();
  return out;
}

}  // namespace pmpage::detail

// ---- the public calls ------------------------------------------------------------------------------

namespace pmpage {

using detail::pool_impl;

std::vector<bad_block> pool::bad_blocks() const { return impl_ ? impl_->bad_block_list() : std::vector<bad_block>{}; }

std::vector<hwpoison_page> pool::hwpoison_pages() const {
  return impl_ ? impl_->hwpoison_list() : std::vector<hwpoison_page>{};
}

std::vector<bad_block> pool::device_bad_blocks(const std::filesystem::path& path) {
  detail::device d;
  d.open_existing(path.string(), detail::device::access::read_only);
  return detail::normalise_bad_blocks(
      detail::current_badblock_source().list(d.fd(), d.path(), d.type() == detail::device::kind::device_dax));
}

void pool::clear_bad_block(const std::filesystem::path& path, const bad_block& range) {
  detail::device d;
  d.open_existing(path.string(), detail::device::access::read_write);
  d.lock();  // exclusive: no pool is open on it (EBUSY), and none opens while we clear
  const bool dax = d.type() == detail::device::kind::device_dax;
  const auto listed = detail::normalise_bad_blocks(detail::current_badblock_source().list(d.fd(), d.path(), dax));
  const bool reported = range.length > 0 && std::any_of(listed.begin(), listed.end(), [&](const bad_block& b) {
                          return range.offset >= b.offset && range.offset + range.length <= b.offset + b.length;
                        });
  if (!reported) {
    std::string known;
    for (const bad_block& b : listed) known += (known.empty() ? "" : ", ") + detail::describe_range(b);
    detail::fail(EINVAL, d.path(),
                 "clear_bad_block: " + (range.length ? detail::describe_range(range) : std::string("an empty range")) +
                     " is not inside a bad block the device reports (" + (known.empty() ? "it reports none" : known) +
                     "): nothing was cleared (clearing zeroes the range, so only reported bad blocks are cleared)");
  }
  detail::current_badblock_source().clear(d.fd(), d.path(), dax, range);
}

}  // namespace pmpage
