// test_crash_points.cpp — every operation, crashed at every fence with several subsets of the
// unfenced words, recovered, and checked (crash_harness.hpp says what "checked" means).
#include <cstring>
#include <atomic>
#include <gtest/gtest.h>

#include <cstdlib>
#include <memory>
#include <cstdio>
#include <filesystem>
#include <thread>
#include <unistd.h>

#include <pmpage/testing.hpp>

#include "crash_harness.hpp"

using namespace pmpage;
using pmpage::testing::scenario;

namespace {

constexpr std::uint64_t GiB = 1ull << 30, MiB = 1ull << 20;

struct shared_pages {
  page* a = nullptr;
  page* b = nullptr;
};

scenario alloc_in_split_region(unsigned order) {
  scenario s;
  s.name = "AllocOrder" + std::to_string(order) + "InSplitRegion";
  s.setup = [](pool& p, pfn_t*) { ASSERT_NE(p.alloc_pages(0), nullptr); };
  s.op = [order](pool& p, pfn_t*) { ASSERT_NE(p.alloc_pages(order), nullptr); };
  return s;
}

scenario alloc_large(unsigned order) {
  scenario s;
  s.name = "AllocOrder" + std::to_string(order);
  if (order == MAX_PAGE_ORDER) s.pool_size = GiB + 8 * MiB;
  s.op = [order](pool& p, pfn_t*) { ASSERT_NE(p.alloc_pages(order), nullptr); };
  return s;
}

scenario free_order(unsigned order) {
  scenario s;
  s.name = "FreeOrder" + std::to_string(order);
  if (order == MAX_PAGE_ORDER) s.pool_size = GiB + 8 * MiB;
  auto pages = std::make_shared<shared_pages>();
  s.setup = [order, pages](pool& p, pfn_t*) {
    if (order < HPAGE_PMD_ORDER) pages->a = p.alloc_pages(0);  // keeps the region split
    pages->b = p.alloc_pages(order);
    ASSERT_NE(pages->b, nullptr);
  };
  s.op = [order, pages](pool&, pfn_t*) { free_pages(pages->b, order); };
  return s;
}

std::vector<scenario> all_scenarios() {
  std::vector<scenario> v;
  for (unsigned o : {0u, 1u, 8u}) v.push_back(alloc_in_split_region(o));
  for (unsigned o : {9u, 10u, 18u}) v.push_back(alloc_large(o));
  for (unsigned o : {0u, 1u, 8u, 9u, 10u, 18u}) v.push_back(free_order(o));
  {
    scenario s;
    s.name = "FirstAllocationSplitsAFreshRegion";
    s.op = [](pool& p, pfn_t*) { ASSERT_NE(p.alloc_pages(0), nullptr); };
    v.push_back(s);
  }
  {
    scenario s;
    s.name = "FreeThatMergesARegionBack";
    auto pages = std::make_shared<shared_pages>();
    s.setup = [pages](pool& p, pfn_t*) { pages->a = p.alloc_pages(3); };
    // The free keeps the empty region split (merge hysteresis); trim() merges it: one more fence.
    s.op = [pages](pool& p, pfn_t*) {
      free_pages(pages->a, 3);
      ASSERT_EQ(p.trim(), 1u);
    };
    v.push_back(s);
  }
  {
    scenario s;
    s.name = "SplitHugePage";
    auto pages = std::make_shared<shared_pages>();
    s.setup = [pages](pool& p, pfn_t*) { pages->a = p.alloc_pages(9); };
    s.op = [pages](pool&, pfn_t*) { ASSERT_EQ(split_huge_page(pages->a), 0); };
    v.push_back(s);
  }
  {
    scenario s;
    s.name = "AllocPagesBulkAcrossFreshRegions";
    s.bulk = true;
    s.op = [](pool& p, pfn_t*) {
      std::vector<page*> out(700);
      ASSERT_EQ(p.alloc_pages_bulk(0, out.size(), out.data()), out.size());
    };
    v.push_back(s);
  }
  for (unsigned order : {0u, 5u, 9u, 10u}) {
    scenario s;
    s.name = "AllocPagesToOrder" + std::to_string(order);
    s.slot_owned = true;
    s.owners = true;
    s.every_subset = true;
    s.setup = [](pool& p, pfn_t* slots) { ASSERT_NE(p.alloc_pages_to(0, &slots[1]), nullptr); };
    s.op = [order](pool& p, pfn_t* slots) { ASSERT_NE(p.alloc_pages_to(order, &slots[0]), nullptr); };
    v.push_back(s);
  }
  {
    scenario s;
    s.name = "AllocPagesToSplitsAFreshRegion";
    s.slot_owned = true;
    s.owners = true;
    s.op = [](pool& p, pfn_t* slots) { ASSERT_NE(p.alloc_pages_to(2, &slots[0]), nullptr); };
    v.push_back(s);
  }
  for (unsigned order : {0u, 9u}) {
    scenario s;
    s.name = "FreePagesFromOrder" + std::to_string(order);
    s.slot_owned = true;
    s.owners = true;
    s.every_subset = true;
    s.setup = [order](pool& p, pfn_t* slots) {
      ASSERT_NE(p.alloc_pages_to(0, &slots[1]), nullptr);
      ASSERT_NE(p.alloc_pages_to(order, &slots[0]), nullptr);
    };
    s.op = [](pool& p, pfn_t* slots) { ASSERT_EQ(p.free_pages_from(&slots[0]), 0); };
    v.push_back(s);
  }
  {
    scenario s;
    s.name = "FreePagesFromMergesARegionBack";
    s.slot_owned = true;
    s.setup = [](pool& p, pfn_t* slots) { ASSERT_NE(p.alloc_pages_to(4, &slots[0]), nullptr); };
    s.op = [](pool& p, pfn_t* slots) {
      ASSERT_EQ(p.free_pages_from(&slots[0]), 0);
      ASSERT_EQ(p.trim(), 1u);
    };
    v.push_back(s);
  }
  for (unsigned order : {0u, 9u}) {
    scenario s;
    s.name = "MovePagesOwnerOrder" + std::to_string(order);
    s.slot_owned = true;
    s.setup = [order](pool& p, pfn_t* slots) { ASSERT_NE(p.alloc_pages_to(order, &slots[0]), nullptr); };
    s.op = [](pool& p, pfn_t* slots) { ASSERT_EQ(p.move_pages_owner(&slots[0], &slots[3]), 0); };
    v.push_back(s);
  }
  {
    // The 512 slots are the whole default root area; slots 64..511 are outside the harness's
    // snapshot, so check() (rule O1: every owned page's slot names it) is what covers them.
    scenario s;
    s.name = "SplitHugePageToOwnedPage";
    s.setup = [](pool& p, pfn_t* slots) { ASSERT_NE(p.alloc_pages_to(9, &slots[0]), nullptr); };
    s.op = [](pool&, pfn_t* slots) { ASSERT_EQ(split_huge_page_to(pfn_to_page(slots[0]), slots), 0); };
    v.push_back(s);
  }
  {
    // Another call publishes a page into slot 30 while the split's intent is being fenced (before
    // the split claims its slots), and its store is durable with that fence. The split must give
    // up and recovery must undo it: slot 30 keeps the other page, slots 1..29 and 31.. are empty.
    // Only images taken before that fence completed may lack the other store; there the split's
    // durable intent may legitimately roll forward instead.
    scenario s;
    s.name = "SplitHugePageToThatLosesASlotToAConcurrentCall";
    auto other = std::make_shared<pfn_t>(0);
    s.setup = [other](pool& p, pfn_t* slots) {
      ASSERT_NE(p.alloc_pages_to(9, &slots[0]), nullptr);
      page* q = p.alloc_pages(0);
      ASSERT_NE(q, nullptr);
      *other = page_to_pfn(q);
    };
    s.during_op = [other](pool& p, pfn_t* slots, std::uint64_t fence, bool before) {
      if (fence != 1 || !before) return;
      std::atomic_ref<pfn_t>(slots[30]).store(*other, std::memory_order_relaxed);
      p.flush(&slots[30], sizeof(pfn_t));  // made durable by the fence being taken
    };
    s.also_valid = [](const pmpage::testing::pool_state& got, const pmpage::testing::pool_state& pre,
                      const std::string& label) {
      if (label.find("fence 1 (before)") == std::string::npos) return false;
      const pfn_t head = pre.slots[0];
      if (got.allocations.size() != HPAGE_PMD_NR + 1) return false;
      for (pfn_t i = 0; i < HPAGE_PMD_NR; ++i) {
        auto it = got.allocations.find(head + i);
        if (it == got.allocations.end() || it->second != 0) return false;
      }
      for (std::size_t i = 0; i < got.slots.size(); ++i)
        if (got.slots[i] != head + i) return false;
      return true;
    };
    s.op = [other](pool&, pfn_t* slots) {
      const auto previous = set_misuse_handler(+[](const char*) {});
      const int rc = split_huge_page_to(pfn_to_page(slots[0]), slots);
      set_misuse_handler(previous);
      ASSERT_EQ(rc, -EINVAL);
      for (unsigned i = 1; i < HPAGE_PMD_NR; ++i) ASSERT_EQ(slots[i], i == 30 ? *other : 0u) << i;
    };
    v.push_back(s);
  }
  {
    scenario s;
    s.name = "FreePagesFromAPieceOfASplitOwnedPage";
    s.setup = [](pool& p, pfn_t* slots) {
      ASSERT_NE(p.alloc_pages_to(9, &slots[0]), nullptr);
      ASSERT_EQ(split_huge_page_to(pfn_to_page(slots[0]), slots), 0);
    };
    s.op = [](pool& p, pfn_t* slots) { ASSERT_EQ(p.free_pages_from(&slots[7]), 0); };
    v.push_back(s);
  }
  // Bulk slot calls: 20 slots are two batches (16 + 4); each slot recovers on its own.
  auto bulk_list = [](pfn_t* slots, unsigned first, unsigned n) {
    std::vector<pfn_t*> v;
    for (unsigned i = first; i < first + n; ++i) v.push_back(&slots[i]);
    return v;
  };
  for (unsigned order : {0u, 3u, 9u}) {
    // Order 0 and 3 split a fresh region: one batch carves several slots' pages from it, and its
    // SPLIT word shares the second epoch with their codes (recovery's two-pass replay).
    scenario s;
    s.name = "AllocPagesBulkToOrder" + std::to_string(order);
    s.slot_owned = true;
    s.per_slot = true;
    s.pool_size = order >= 9 ? 64ull << 20 : 32ull << 20;
    s.op = [order, bulk_list](pool& p, pfn_t* slots) { ASSERT_EQ(p.alloc_pages_bulk_to(order, bulk_list(slots, 0, 20)), 20u); };
    v.push_back(s);
  }
  {
    scenario s;
    s.name = "AllocPagesBulkToInASplitRegion";
    s.slot_owned = true;
    s.per_slot = true;
    s.setup = [](pool& p, pfn_t* slots) { ASSERT_NE(p.alloc_pages_to(0, &slots[40]), nullptr); };
    s.op = [bulk_list](pool& p, pfn_t* slots) { ASSERT_EQ(p.alloc_pages_bulk_to(1, bulk_list(slots, 0, 20)), 20u); };
    v.push_back(s);
  }
  for (unsigned order : {0u, 9u}) {
    scenario s;
    s.name = "FreePagesBulkFromOrder" + std::to_string(order);
    s.slot_owned = true;
    s.per_slot = true;
    s.pool_size = order >= 9 ? 64ull << 20 : 32ull << 20;
    s.setup = [order, bulk_list](pool& p, pfn_t* slots) {
      ASSERT_NE(p.alloc_pages_to(0, &slots[40]), nullptr);
      ASSERT_EQ(p.alloc_pages_bulk_to(order, bulk_list(slots, 0, 20)), 20u);
    };
    // Slots 20..23 are empty (skipped): 20 pages in two batches.
    s.op = [bulk_list](pool& p, pfn_t* slots) { ASSERT_EQ(p.free_pages_bulk_from(bulk_list(slots, 0, 24)), 0); };
    v.push_back(s);
  }
  for (unsigned order : {0u, 9u}) {
    // The engine overwrote the owning slot; the page's last put drops the void owner and frees
    // it (pool.cpp, "orphaned owned pages"): owner first, then the free, each behind a fence.
    scenario s;
    s.name = "LastPutOfAPageWhoseSlotWasOverwrittenOrder" + std::to_string(order);
    auto lost = std::make_shared<pfn_t>(0);
    s.setup = [order, lost](pool& p, pfn_t* slots) {
      ASSERT_NE(p.alloc_pages_to(0, &slots[1]), nullptr);  // keeps a small page's region split
      ASSERT_NE(p.alloc_pages_to(order, &slots[0]), nullptr);
      *lost = slots[0];
      slots[0] = 0;
      p.persist(&slots[0], sizeof(pfn_t));
    };
    s.op = [order, lost](pool&, pfn_t*) { free_pages(pfn_to_page(*lost), order); };
    // Until the owner entry is cleared, fsck rightly names the overwritten slot (the engine's
    // mistake, made by the setup); nothing else may look damaged.
    s.setup_damage = [](const std::string& rule, const std::string& what) {
      return rule == "O1" && what.find("which holds 0") != std::string::npos;
    };
    v.push_back(s);
  }
  for (unsigned order : {0u, 9u, 10u}) {
    // adopt_pages changes only ownership: before, slot 0 names an unowned allocation; after, it
    // owns it. Every crash subset must be one of the two (the owner entry, and for order >= 9 the
    // region word's owned bit behind its own fence), never a free page or an owner fsck calls
    // damage.
    scenario s;
    s.name = "AdoptPagesOrder" + std::to_string(order);
    s.slot_owned = true;
    s.owners = true;
    s.every_subset = true;  // a few words: every subset of them, not only random ones
    s.setup = [order](pool& p, pfn_t* slots) {
      ASSERT_NE(p.alloc_pages_to(0, &slots[1]), nullptr);  // a small page's region is published
      page* q = p.alloc_pages(order);
      ASSERT_NE(q, nullptr);
      slots[0] = page_to_pfn(q);
      p.persist(&slots[0], sizeof(pfn_t));  // the engine's slot is durable before the adoption
    };
    s.op = [](pool& p, pfn_t* slots) { ASSERT_EQ(p.adopt_pages(&slots[0]), 0); };
    v.push_back(s);
  }
  // The slot protocol's allocate-fill-publish and replacement: every subset of each epoch's
  // words leaves the slot empty (or naming the old page) with the new page free, or the slot
  // naming the new page; never both pages, never neither (docs/format.md, "The slot protocol").
  for (unsigned order : {0u, 9u}) {
    scenario s;
    s.name = "AllocPagesToWithInitOrder" + std::to_string(order);
    s.slot_owned = true;
    s.owners = true;
    s.every_subset = true;
    s.pool_size = 64ull << 20;
    s.setup = [](pool& p, pfn_t* slots) { ASSERT_NE(p.alloc_pages_to(0, &slots[1]), nullptr); };
    s.op = [order](pool& p, pfn_t* slots) {
      ASSERT_NE(p.alloc_pages_to(order, &slots[0], 0, [&p](page*, void* addr, std::size_t) {
        std::memset(addr, 0x7e, 4096);
        p.flush(addr, 4096);
        return 0;
      }), nullptr);
    };
    v.push_back(s);
  }
  for (unsigned order : {0u, 9u}) {
    scenario s;
    s.name = "ReplacePagesOrder" + std::to_string(order);
    s.slot_owned = true;
    s.owners = true;
    s.every_subset = true;
    s.pool_size = 64ull << 20;
    s.setup = [order](pool& p, pfn_t* slots) {
      ASSERT_NE(p.alloc_pages_to(0, &slots[1]), nullptr);  // a small page's region is published
      ASSERT_NE(p.alloc_pages_to(order, &slots[0]), nullptr);
    };
    s.op = [order](pool& p, pfn_t* slots) { ASSERT_NE(p.replace_pages(&slots[0], order), nullptr); };
    v.push_back(s);
  }
  {
    scenario s;
    s.name = "AllocPagesToAfterFreePagesFromOfTheSameSlot";  // a stale intent must not be replayed
    s.slot_owned = true;
    s.setup = [](pool& p, pfn_t* slots) {
      ASSERT_NE(p.alloc_pages_to(0, &slots[1]), nullptr);
      ASSERT_NE(p.alloc_pages_to(0, &slots[0]), nullptr);
      ASSERT_EQ(p.free_pages_from(&slots[0]), 0);
    };
    s.op = [](pool& p, pfn_t* slots) { ASSERT_NE(p.alloc_pages_to(0, &slots[0]), nullptr); };
    v.push_back(s);
  }
  // Stale owner entries (format flag lazy-owners): a free leaves its page's owner entry as it was,
  // and the entry counts only under the owned marker. Each scenario gives a page of the operation
  // a stale entry naming a slot first (allocated through it, freed from it), so that a crash whose
  // image keeps the new marker but not the new entry, or no marker at all, is judged by what the
  // stale entry says: the outcome must still be before or after.
  for (unsigned order : {0u, 9u}) {
    // The page comes back as a plain allocation: it must stay allocated and unowned (its stale
    // entry's slot is empty; a later hand store there is the engine's business).
    scenario s;
    s.name = "PlainAllocOfAPageFreedFromASlotOrder" + std::to_string(order);
    s.owners = true;
    s.every_subset = true;
    s.pool_size = 64ull << 20;
    auto old = std::make_shared<pfn_t>(0);
    s.setup = [order, old](pool& p, pfn_t* slots) {
      ASSERT_NE(p.alloc_pages_to(0, &slots[1]), nullptr);  // keeps the small page's region split
      ASSERT_NE(p.alloc_pages_to(order, &slots[0]), nullptr);
      *old = slots[0];
      ASSERT_EQ(p.free_pages_from(&slots[0]), 0);
    };
    s.op = [order, old](pool& p, pfn_t*) {
      page* q = p.alloc_pages(order);
      ASSERT_NE(q, nullptr);
      ASSERT_EQ(page_to_pfn(q), *old) << "the page with the stale entry comes back";
    };
    v.push_back(s);
  }
  for (unsigned order : {0u, 9u}) {
    // The page comes back owned by another slot: a crash that keeps its marker and not its new
    // entry finds the stale one, naming an empty slot: an interrupted call, freed (before).
    scenario s;
    s.name = "AllocPagesToAnotherSlotOfAPageFreedFromASlotOrder" + std::to_string(order);
    s.slot_owned = true;
    s.owners = true;
    s.every_subset = true;
    s.pool_size = 64ull << 20;
    auto old = std::make_shared<pfn_t>(0);
    s.setup = [order, old](pool& p, pfn_t* slots) {
      ASSERT_NE(p.alloc_pages_to(0, &slots[1]), nullptr);
      ASSERT_NE(p.alloc_pages_to(order, &slots[0]), nullptr);
      *old = slots[0];
      ASSERT_EQ(p.free_pages_from(&slots[0]), 0);
    };
    s.op = [order, old](pool& p, pfn_t* slots) {
      ASSERT_NE(p.alloc_pages_to(order, &slots[2]), nullptr);
      ASSERT_EQ(slots[2], *old) << "the page with the stale entry comes back";
    };
    v.push_back(s);
  }
  for (unsigned order : {0u, 9u}) {
    // The page comes back into the slot it was freed from: its stale entry already names the slot,
    // so alloc_pages_to neither stores nor writes it back (record_owner): the marker alone is the
    // first epoch's word, and every subset must still be before (slot empty, page free) or after.
    scenario s;
    s.name = "AllocPagesToOfAPageBackInTheSlotItWasFreedFromOrder" + std::to_string(order);
    s.slot_owned = true;
    s.owners = true;
    s.every_subset = true;
    s.pool_size = 64ull << 20;
    auto old = std::make_shared<pfn_t>(0);
    s.setup = [order, old](pool& p, pfn_t* slots) {
      ASSERT_NE(p.alloc_pages_to(0, &slots[1]), nullptr);
      ASSERT_NE(p.alloc_pages_to(order, &slots[0]), nullptr);
      *old = slots[0];
      ASSERT_EQ(p.free_pages_from(&slots[0]), 0);
    };
    s.op = [order, old](pool& p, pfn_t* slots) {
      ASSERT_NE(p.alloc_pages_to(order, &slots[0]), nullptr);
      ASSERT_EQ(slots[0], *old) << "the page comes back into its slot";
    };
    v.push_back(s);
  }
  {
    // The same, with the stale entry's slot naming another page meanwhile (reused by the engine
    // through alloc_pages_to): the stale entry names a slot that does not name this page.
    scenario s;
    s.name = "AllocPagesToOfAPageWhoseStaleEntrysSlotWasReused";
    s.slot_owned = true;
    s.owners = true;
    s.every_subset = true;
    auto old = std::make_shared<pfn_t>(0);
    s.setup = [old](pool& p, pfn_t* slots) {
      ASSERT_NE(p.alloc_pages_to(0, &slots[1]), nullptr);
      ASSERT_NE(p.alloc_pages_to(0, &slots[0]), nullptr);
      ASSERT_NE(p.alloc_pages_to(0, &slots[3]), nullptr);  // the page after slot 0's
      *old = slots[0];
      ASSERT_EQ(p.free_pages_from(&slots[0]), 0);
      ASSERT_EQ(p.move_pages_owner(&slots[3], &slots[0]), 0);  // slot 0 names another page now
    };
    s.op = [old](pool& p, pfn_t* slots) {
      ASSERT_NE(p.alloc_pages_to(0, &slots[2]), nullptr);
      ASSERT_EQ(slots[2], *old);
    };
    v.push_back(s);
  }
  {
    // A region whose pages all had owners is merged (FREE) and handed out whole: its entry 0 is
    // stale under a large page, owned (below) or not (PlainAllocOfAPageFreedFromASlotOrder9).
    scenario s;
    s.name = "AllocPagesToOrder9OfAMergedRegionWithStaleEntries";
    s.slot_owned = true;
    s.owners = true;
    s.every_subset = true;
    s.pool_size = 8ull << 20;  // 3 regions: the merged one is the only order-9 block left
    s.setup = [](pool& p, pfn_t* slots) {
      ASSERT_NE(p.alloc_pages_to(9, &slots[40]), nullptr);
      std::vector<pfn_t*> list;
      for (unsigned i = 0; i < 16; ++i) list.push_back(&slots[i + 10]);
      ASSERT_EQ(p.alloc_pages_bulk_to(0, list), list.size());
      ASSERT_EQ(p.free_pages_bulk_from(list), 0);
      ASSERT_EQ(p.trim(), 1u);  // merged: FREE, its owner entries stale
    };
    s.op = [](pool& p, pfn_t* slots) { ASSERT_NE(p.alloc_pages_to(9, &slots[0]), nullptr); };
    v.push_back(s);
  }
  {
    // split_huge_page_to of an order-9 page whose 512 entries hold stale values of an earlier
    // life (pages 0..63 owned by slots 100..163, then freed and merged): the tails' entries must
    // not be believed before the split writes them.
    scenario s;
    s.name = "SplitHugePageToOverStaleEntries";
    s.pool_size = 8ull << 20;
    s.setup = [](pool& p, pfn_t* slots) {
      ASSERT_NE(p.alloc_pages(9), nullptr);  // only one order-9 block is left free after the merge
      std::vector<pfn_t*> list;
      for (unsigned i = 0; i < 64; ++i) list.push_back(&slots[100 + i]);
      ASSERT_EQ(p.alloc_pages_bulk_to(0, list), list.size());
      const pfn_t first = slots[100];
      ASSERT_EQ(p.free_pages_bulk_from(list), 0);
      ASSERT_EQ(p.trim(), 1u);
      ASSERT_NE(p.alloc_pages_to(9, &slots[0]), nullptr);
      ASSERT_EQ(slots[0] >> HPAGE_PMD_ORDER, first >> HPAGE_PMD_ORDER) << "the region with the stale entries";
    };
    s.op = [](pool&, pfn_t* slots) { ASSERT_EQ(split_huge_page_to(pfn_to_page(slots[0]), slots), 0); };
    v.push_back(s);
  }
  {
    // adopt_pages of a plain page whose stale entry names the slot it freed from.
    scenario s;
    s.name = "AdoptPagesOfAPageWithAStaleEntry";
    s.owners = true;
    s.every_subset = true;
    s.setup = [](pool& p, pfn_t* slots) {
      ASSERT_NE(p.alloc_pages_to(0, &slots[1]), nullptr);
      ASSERT_NE(p.alloc_pages_to(0, &slots[0]), nullptr);
      const pfn_t old = slots[0];
      ASSERT_EQ(p.free_pages_from(&slots[0]), 0);
      page* q = p.alloc_pages(0);
      ASSERT_NE(q, nullptr);
      ASSERT_EQ(page_to_pfn(q), old);
      slots[2] = old;
      p.persist(&slots[2], sizeof(pfn_t));
    };
    s.op = [](pool& p, pfn_t* slots) { ASSERT_EQ(p.adopt_pages(&slots[2]), 0); };
    v.push_back(s);
  }
  return v;
}

class CrashPoints : public ::testing::TestWithParam<scenario> {};

TEST_P(CrashPoints, EveryCrashRecoversToBeforeOrAfterTheOperation) {
  const scenario& sc = GetParam();
  // PMPAGE_CRASH_SEEDS: random subsets per crash point (sanitizer runs use fewer).
  const char* env = std::getenv("PMPAGE_CRASH_SEEDS");
  const unsigned seeds = env ? unsigned(std::strtoul(env, nullptr, 10)) : 3u;
  const auto rep = pmpage::testing::run_crash_points(sc, seeds, /*crash_during_recovery=*/true);
  EXPECT_GT(rep.op_fences, 0u);
  EXPECT_GT(rep.images, rep.op_fences * 2);
  for (std::size_t i = 0; i < rep.failures.size() && i < 5; ++i) ADD_FAILURE() << rep.failures[i];
  EXPECT_TRUE(rep.failures.empty()) << rep.failures.size() << " of " << rep.images << " crash images failed";
  RecordProperty("images", int(rep.images));
}

INSTANTIATE_TEST_SUITE_P(Operations, CrashPoints, ::testing::ValuesIn(all_scenarios()),
                         [](const auto& info) { return info.param.name; });

}  // namespace

namespace {

// A thread's intent (a bulk slot call's; alloc_pages_to has none since 0.3) is retired lazily; if
// that thread never fences again, the next fence of ANY thread (here: the move's) must make the
// retirement durable, or a crash would replay the stale intent and free a page that moved.
TEST(IntentRetirement, AnyThreadsFenceRetiresAnotherThreadsIntent) {
  const std::string path = "/dev/shm/pmpage-retire-" + std::to_string(::getpid());
  ::unlink(path.c_str());
  auto sim = std::make_shared<pmpage::testing::sim_pmem>(2u << 20);
  std::vector<char> image;
  pfn_t moved = 0;
  constexpr std::uint64_t size = 16ull << 20;
  {
    pool::options o;
    o.size = size;
    o.backend = sim;
    pool p = pool::create(path, o);
    auto* slots = static_cast<pfn_t*>(p.root());
    std::thread([&] {
      pfn_t* one[] = {&slots[0]};
      ASSERT_EQ(p.alloc_pages_bulk_to(0, one), 1u);
    }).join();  // exits: never fences again
    moved = slots[0];
    ASSERT_EQ(p.move_pages_owner(&slots[0], &slots[1]), 0);  // the slot at 0 is empty now
    image = sim->crash_image(0, 0.0);  // power fails: only what was fenced survives
  }
  const std::string img = path + ".img";
  {
    std::FILE* f = std::fopen(img.c_str(), "wb");
    ASSERT_NE(f, nullptr);
    std::fwrite(image.data(), 1, image.size(), f);
    std::fclose(f);
    std::filesystem::resize_file(img, size);
  }
  {
    pool q = pool::open(img);
    const auto st = pmpage::testing::read_state(q);
    EXPECT_EQ(st.slots[1], moved);
    EXPECT_EQ(st.allocations.count(moved), 1u) << "the stale intent freed a page the application still names";
    EXPECT_EQ(q.check(), "");
  }
  ::unlink(path.c_str());
  ::unlink(img.c_str());
}

}  // namespace
