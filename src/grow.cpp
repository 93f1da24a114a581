// grow.cpp — pool::grow: adds whole 2 MiB regions to a closed pool in place (docs/format.md,
// "Growing a pool").
//
// A pool's tables (region words, page maps, owner tables) are laid out at create for its capacity
// (options::max_size: superblock::max_regions with SB_GROWABLE; without it, whatever slack the
// tables' rounding left), and its data area starts after them. So growing never moves anything:
// region r's data stays at data_offset + r * 2 MiB and its pfn at pfn_base + r * 512, and the
// regions added are the next indexes. The regions' metadata needs no formatting: a FREE region
// word is 0 (create zeroed the whole region table), a FREE region's page map is ignored and its
// owner entries are zeroed when it is first split.
//
// Order, and why (a crash must leave the old size or the new one, never a pool whose superblock
// names regions that are not there):
//   1. extend the file and fsync     a valid superblock never names a size the file can lose
//   fence 1  the new regions' words set FREE (0): normally they are already; a word that a
//            damaged or hand-edited file left non-zero must not become an allocation
//   fence 2  superblock copy B with the new nr_regions and device_size
//   fence 3  superblock copy A, the same
// A crash before fence 2 completes leaves A old and B old or torn (open uses A, repairs B: the old
// size); after it, B new and A old or torn (open uses B, repairs A: the new size). Two valid
// copies that differ only by B's larger size are that crash (superblocks_differ_by_grow): open and
// check roll forward to B, as they do for the tagged-owners upgrade.
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <string>

#include "device.hpp"
#include "layout.hpp"
#include "pmpage/page.hpp"
#include "pmpage/pool.hpp"
#include "misuse.hpp"
#include "pool_impl.hpp"
#include "registry.hpp"

namespace pmpage::detail {

namespace {
std::string mib(std::uint64_t bytes) { return std::to_string(bytes >> 20) + " MiB"; }

// A grow that fails before its first fence changes nothing (docs/api.md): until disarmed, the
// file gets back the size it had (an extension or a preallocation that failed half-way, ENOSPC,
// would otherwise leave it larger than its superblock says).
struct file_size_guard {
  device& d;
  std::uint64_t size;
  bool armed = true;
  ~file_size_guard() {
    if (armed) d.restore_size(size);
  }
};
}  // namespace

std::string growth_refused_for(device::kind k) {
  return k == device::kind::device_dax ? "a device DAX namespace has a fixed size (the pool already uses all of it)" : "";
}

/// The superblock of `cur` grown to new_size (sealed), and what the grow does in res; throws
/// pmpage::error (EINVAL) for every refusal, naming the reason. capacity: the most regions this
/// grow may reach (superblock_capacity, or what an open pool reserved).
superblock plan_growth(const superblock& cur, std::uint64_t new_size, std::uint64_t capacity, const std::string& path,
                       pool::grow_result& res) {
  res = {};
  res.old_regions = cur.nr_regions;
  res.max_regions = capacity;
  const std::uint64_t cur_size = cur.data_offset + cur.nr_regions * HPAGE_PMD_SIZE;  // what the regions use
  if (new_size <= cur.device_size)
    fail(EINVAL, path, "cannot grow to " + std::to_string(new_size) + " bytes: the pool is " +
                           std::to_string(cur.device_size) + " bytes already (a pool never shrinks)");
  const std::uint64_t fit = (new_size - cur.data_offset) / HPAGE_PMD_SIZE;  // regions new_size holds
  const std::uint64_t max_bytes = cur.data_offset + res.max_regions * HPAGE_PMD_SIZE;
  if (res.max_regions == cur.nr_regions && !(cur.flags & SB_GROWABLE))
    fail(EINVAL, path, "cannot grow: the pool was created without room to grow (its tables hold " +
                           std::to_string(cur.nr_regions) + " regions, all in use); create the pool with "
                           "options.max_size (`pmpage create --max-size`) to be able to grow it");
  const std::string capacity_is =
      "capacity of " + std::to_string(res.max_regions) + " regions (" + std::to_string(max_bytes) + " bytes: " +
      ((cur.flags & SB_GROWABLE) ? std::string("options.max_size at create")
                                 : std::string("the slack of its tables, as it was created without options.max_size, "
                                               "`pmpage create --max-size`")) +
      "); a larger pool must be created anew";
  if (fit > res.max_regions)
    fail(EINVAL, path, "cannot grow to " + std::to_string(new_size) + " bytes: beyond the pool's " + capacity_is);
  // At its capacity no size adds a region: saying what the next one needs would suggest one.
  if (fit <= cur.nr_regions && cur.nr_regions >= res.max_regions)
    fail(EINVAL, path, "cannot grow to " + std::to_string(new_size) + " bytes: the pool is at its " + capacity_is);
  if (fit <= cur.nr_regions)
    fail(EINVAL, path, "cannot grow to " + std::to_string(new_size) + " bytes: that adds no whole 2 MiB region (the "
                           "regions end at " + std::to_string(cur_size) + "; the next needs " +
                           std::to_string(cur_size + HPAGE_PMD_SIZE) + " bytes)");
  res.new_regions = fit;
  res.device_size = new_size;
  superblock next = cur;
  next.nr_regions = fit;
  next.device_size = new_size;
  seal_superblock(next);
  if (!superblock_problem(next).empty())
    fail(EINVAL, path, "cannot grow: the grown superblock would be invalid (" + superblock_problem(next) + ")");
  return next;
}

pool::grow_result grow_pool(const std::string& path, std::uint64_t new_size, const pool::grow_options& opts) {
  device d;
  d.open_existing(path);
  if (std::string why = growth_refused_for(d.type()); !why.empty()) fail(ENOTSUP, path, "cannot grow: " + why);
  d.lock();  // exclusive: EBUSY while the pool is open anywhere
  if (d.size() < 2 * SUPERBLOCK_SIZE) fail(EINVAL, path, "too small to be a pmpage pool");
  superblock a, b;
  d.read_at(&a, sizeof a, 0);
  d.read_at(&b, sizeof b, SUPERBLOCK_SIZE);
  const std::string pa = superblock_problem(a), pb = superblock_problem(b);
  // The copy open() would use; states open refuses are refused here too (nothing is written).
  if (!pa.empty() && !pb.empty())
    fail(EINVAL, path, "cannot grow: no usable superblock copy (A: " + pa + "; B: " + pb + ")");
  const bool torn = pa.empty() && pb.empty() && superblocks_torn_update(a, b);
  if (pa.empty() && pb.empty() && !torn && std::memcmp(&a, &b, sizeof a) != 0)
    fail(EINVAL, path, "cannot grow: superblock copies A and B both pass every rule but differ; run `pmpage check` on it");
  const superblock cur = pa.empty() && !torn ? a : b;
  if (cur.reidentify_from != 0)
    fail(EINVAL, path, "cannot grow: a re-identification (pmpage reidentify) was interrupted; run it again first");
  if (d.size() < cur.device_size)
    fail(EINVAL, path, "cannot grow: the file is truncated (" + std::to_string(d.size()) + " of " +
                           std::to_string(cur.device_size) + " bytes)");

  pool::grow_result res;
  const superblock next = plan_growth(cur, new_size, superblock_capacity(cur), path, res);
  const pfn_t base = superblock_pfn_base(cur);
  // Another pool open in this process whose pfns the grown range would overlap: the pool could
  // not be opened beside it afterwards (open refuses overlapping ranges, registry.cpp). Bases are
  // 2^28 pages apart, so only growth past a multiple of 2^28 pages can meet one.
  if (std::string why = pfn_range_conflict(base, res.new_regions * HPAGE_PMD_NR, path); !why.empty())
    fail(EBUSY, path, "cannot grow to " + mib(new_size) + ": its new pfns would overlap " + why);
  const std::uint64_t fit = res.new_regions;

  // 1. The file first, durably (a superblock must never name bytes a power failure can take).
  file_size_guard old_size{d, d.size()};
  d.ensure_size(new_size, opts.preallocate);
  // The words written below lie in the region table create reserved; a copied file may have
  // holes there (a store into a hole on a full file system is a SIGBUS, not an error).
  const std::uint64_t words_off = cur.region_table_offset + cur.nr_regions * 8, words_len = (fit - cur.nr_regions) * 8;
  for (const auto& [off, len] : {std::pair{std::uint64_t{0}, std::uint64_t{2 * SUPERBLOCK_SIZE}}, std::pair{words_off, words_len}})
    if (const int e = reserve_file_holes(d.fd(), off, len); e != 0 && !cannot_reserve(e))
      fail(e, path, std::string("cannot grow: cannot reserve the blocks of the pool's metadata (fallocate: ") +
                        std::strerror(e) + "); nothing was written");
  d.sync();

  const std::uint64_t length = next.data_offset + fit * HPAGE_PMD_SIZE;
  d.map(length, next.data_offset);
  auto pers = opts.backend ? opts.backend : make_libpmem_persistence();
  char* const m = d.base();
  pers->attach(m, d.mapped_length(), d.store_granularity());
  const std::uint64_t wb_seen = pers->writeback_errors();  // a reused backend's earlier failures are not ours
  old_size.armed = false;  // from here the file is the grown pool's (a crash may leave it so anyway)
  // fence 1: the new regions' words FREE.
  auto* words = reinterpret_cast<std::uint64_t*>(m + words_off);
  for (std::uint64_t i = 0; i < fit - cur.nr_regions; ++i)
    if (words[i] != 0) {
      words[i] = 0;
      pers->flush(&words[i], 8);
    }
  pers->drain();
  // fences 2 and 3: B, then A.
  for (const std::size_t at : {SUPERBLOCK_SIZE, std::size_t{0}}) {
    std::memcpy(m + at, &next, sizeof next);
    pers->persist(m + at, sizeof next);
  }
  const bool failed = pers->writeback_errors() != wb_seen;
  const int err = failed ? pers->last_writeback_error() : 0;
  pers->detach();
  d.unmap();
  if (failed)
    fail(err, path, std::string("grow could not be written back to the media (") + std::strerror(err) +
                        "): the pool has its old size or the new one; run grow again");
  d.sync();
  return res;
}

}  // namespace pmpage::detail

namespace pmpage::detail {

// pool.grow(new_size): the same media steps as grow_pool, on the pool's own mapping and backend,
// then the new regions join the live allocator. What makes it possible without moving anything:
// an open of a pool created with room to grow (SB_GROWABLE, live_capacity) reserved the address
// space of its capacity after the mapping, sized its descriptor arrays (region descriptors,
// vmemmap: anonymous, MAP_NORESERVE) and its backing bitmap for it, and reserved the capacity's
// pfn range and address granules in the registry (which translates only the pages it has). So a
// grow maps the new part of the file in place, commits the new size on the media (region words,
// B, A: the crash rules of grow_pool), raises the registry's entries to the new size
// (grow_section: the new pages translate), and then, under the pool lock, raises nr_regions_ and
// frees the new regions into the buddy: every thread can take them from then on. Allocations
// racing it see the old regions until then.
int pool_impl::grow(std::uint64_t new_size) noexcept {
  deferred_flush_scope flushes{this};
  constexpr const char* caller = "pool::grow";
  auto refuse = [&](int e, const std::string& why) {
    const std::string m = "pmpage: " + path() + ": " + why;
    set_c_error_message(m.c_str());
    errno = e;
    return -e;
  };
  if (refuse_read_only(caller)) return refuse(EROFS, "cannot grow: the pool is open read-only");
  if (forked(caller)) {  // the misuse report is the message (the C layer's convention)
    set_c_error_message(last_misuse());
    errno = EINVAL;
    return -EINVAL;
  }
  if (volatile_)
    return refuse(ENOTSUP, "cannot grow: a volatile pool has a fixed size (create a larger one; its contents do "
                           "not survive close anyway)");
  if (std::string why = growth_refused_for(dev_.type()); !why.empty()) return refuse(ENOTSUP, "cannot grow: " + why);
  if (const int e = durability_failed(); e != 0) {
    note_writeback_failure(caller, e);
    return -e;
  }
  std::lock_guard g(grow_mu_);
  try {
    superblock cur;
    std::memcpy(&cur, dev_.base(), sizeof cur);  // copy A: open repaired it, and only grow writes it
    // A pool without SB_GROWABLE reserved nothing at open; the slack of its tables, if any,
    // grows offline (plan_growth below says "created without room to grow" when there is none).
    if (max_regions_ == cur.nr_regions && superblock_capacity(cur) > cur.nr_regions && new_size > cur.device_size)
      return refuse(EINVAL, "cannot grow an open pool created without options.max_size: its tables have room for " +
                                std::to_string(superblock_capacity(cur)) + " regions, which pool::grow(path, size) adds "
                                "to the closed pool");
    pool::grow_result res;
    const superblock next = plan_growth(cur, new_size, max_regions_, path(), res);
    const std::uint64_t old_regions = cur.nr_regions, fit = res.new_regions;
    // 1. The file, durably; the region words' blocks (a copied file may have holes there). A
    // pool preallocated at create reserves no region as it takes it (region_backing): its new
    // part is reserved now, so that a full file system fails here and not as a SIGBUS later.
    file_size_guard old_size{dev_, dev_.size()};
    dev_.ensure_size(new_size, false);
    if (!backing_.tracking())
      if (const int e = reserve_file_range(dev_.fd(), cur.device_size, new_size - cur.device_size); e != 0 && !cannot_reserve(e))
        return refuse(e, std::string("cannot grow: cannot reserve the new part of the preallocated pool file (fallocate: ") +
                             std::strerror(e) + "); nothing was written");
    const std::uint64_t words_off = cur.region_table_offset + old_regions * 8;
    if (const int e = reserve_file_holes(dev_.fd(), words_off, (fit - old_regions) * 8); e != 0 && !cannot_reserve(e))
      return refuse(e, std::string("cannot grow: cannot reserve the blocks of the region table (fallocate: ") +
                           std::strerror(e) + "); nothing was written");
    dev_.sync();
    dev_.extend_map(cur.data_offset + fit * HPAGE_PMD_SIZE);
    old_size.armed = false;  // mapped: the file stays at least this long while the pool is open
    // fence 1: the new regions' words FREE (mu_ not needed: no thread touches a region >= old).
    for (std::uint64_t r = old_regions; r < fit; ++r)
      if (load_word(region_word(std::uint32_t(r))) != 0) persist_word(region_word(std::uint32_t(r)), 0);
    if (const int e = fence(); e != 0) {
      note_writeback_failure(caller, e);
      return -e;
    }
    // fences 2 and 3: copy B, then copy A. A crash between them opens as the new size.
    for (const std::size_t at : {SUPERBLOCK_SIZE, std::size_t{0}}) {
      std::memcpy(dev_.base() + at, &next, sizeof next);
      flush_later(dev_.base() + at, sizeof next);
      if (const int e = fence(); e != 0) {
        note_writeback_failure(caller, e);
        return -e;
      }
    }
    // The new pages translate (before any thread can be handed one: the buddy below).
    grow_section(pfn_base_, fit * HPAGE_PMD_NR);
    // The new regions join the allocator: free, in the buddy, counted (V3).
    std::lock_guard l(core_->mu);
    for (std::uint64_t r = old_regions; r < fit; ++r) regions_[r].list_next_ = regions_[r].list_prev_ = NIL;
    lay_.nr_regions = fit;
    lay_.device_size = new_size;
    nr_pages_.store(fit * HPAGE_PMD_NR, std::memory_order_release);
    nr_regions_.store(fit, std::memory_order_release);
    buddy_.grow_to(fit);
    for (std::uint64_t r = old_regions; r < fit; ++r) buddy_.free(std::uint32_t(r), HPAGE_PMD_ORDER);
    core_->free_pages += (fit - old_regions) * HPAGE_PMD_NR;
    return 0;
  } catch (const std::system_error& e) {  // plan_growth's refusals, the file's errors (pmpage::error names the path)
    const int err = e.code().value() > 0 ? e.code().value() : EIO;
    if (dynamic_cast<const pmpage::error*>(&e)) {
      set_c_error_message(e.what());
      errno = err;
      return -err;
    }
    return refuse(err, std::string("cannot grow: ") + e.what());
  } catch (const std::bad_alloc&) {
    return refuse(ENOMEM, "cannot grow: out of memory");
  } catch (const std::exception& e) {
    return refuse(EIO, std::string("cannot grow: ") + e.what());
  }
}

}  // namespace pmpage::detail
