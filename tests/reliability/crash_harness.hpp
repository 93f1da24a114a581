// crash_harness.hpp — crash-point enumeration and the invariant checker for recovered pools.
//
// run_crash_points(scenario) creates a pool on a simulated device, runs the scenario's set-up,
// then runs its operation while capturing crash images at every fence (just before the fence
// completes and just after), with several random subsets of the unfenced words each. Every
// image is then recovered by pool::open and checked:
//   * pool::check() holds (allocations well formed, never overlapping, DRAM == media, counts);
//   * the state is the one before the operation or the one after it (all-or-nothing), or for a
//     bulk allocation any subset of its pages, or for a bulk slot call any per-slot mix;
//   * every non-zero slot names an allocated head, and (for the slots the scenario uses) the
//     allocation and its slot agree: no leaked page, no slot pointing at a free page;
//   * free space adds up: stats().free_pages == total - pages of all allocations.
// Some images are recovered on a second simulated device, crashing during recovery itself, and
// those images are recovered and checked again.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <ostream>
#include <string>
#include <vector>

#include <pmpage/pmpage.hpp>

namespace pmpage::testing {

inline constexpr unsigned NR_SLOTS = 64;  // pfn slots at the start of the root area

struct pool_state {
  std::map<pfn_t, unsigned> allocations;  // head pfn -> order
  std::vector<pfn_t> slots;               // root slots 0..NR_SLOTS-1
  /// With read_state(p, true): per root slot, 1 if it names a page whose recorded owner it is
  /// (check_slots finds it neither misowned, shared nor dangling); empty otherwise.
  std::vector<std::uint8_t> owns;
  bool operator==(const pool_state&) const = default;
};

/// Reads the allocations and slots of an open pool (loads every split region); with_owners also
/// which root slots own their page (operations that change only ownership: adopt_pages).
pool_state read_state(const pool& p, bool with_owners = false);

/// The reusable invariant checker: "" if the recovered pool is consistent on its own, else why.
/// `slot_owned`: allocations must all be named by a slot (scenarios that allocate only with
/// alloc_pages_to) — then a page without a slot is a leak.
std::string check_recovered(const pool& p, const pool_state& s, bool slot_owned);

struct scenario {
  std::string name;
  std::uint64_t pool_size = 32ull << 20;
  std::function<void(pool&, pfn_t* slots)> setup;
  std::function<void(pool&, pfn_t* slots)> op;
  /// Called at every fence of the operation, before the crash images of that point are taken:
  /// lets a scenario act as a concurrent caller would, between two fences.
  std::function<void(pool&, pfn_t* slots, std::uint64_t fence, bool before)> during_op;
  /// A third acceptable recovered state besides before and after, for the crash image `label`
  /// (an operation racing a concurrent caller whose own effect a crash may or may not keep).
  std::function<bool(const pool_state& got, const pool_state& before, const std::string& label)> also_valid;
  bool bulk = false;        // outcome may be any subset of the new allocations
  /// Outcome per slot (alloc_pages_bulk_to / free_pages_bulk_from): each root slot holds its
  /// value from before or its value from after, independently of the others, and every
  /// allocation is one of before or after (with slot_owned: no leak, no slot naming a free page).
  bool per_slot = false;
  bool slot_owned = false;  // every allocation lives in a slot (alloc_pages_to scenarios)
  /// The states compared include which root slots own their page (pool_state::owns): for an
  /// operation whose only effect is ownership (adopt_pages), before and after differ only there.
  bool owners = false;
  /// Besides the random subsets: every subset of the words written since the previous fence,
  /// at every crash point where they are at most 10 (a few-word protocol, proven exhaustively).
  bool every_subset = false;
  /// What fsck may call damage in a crash image because the scenario's setup made that mistake on
  /// purpose (an engine's broken slot, which the operation then settles): true for such a
  /// problem (its rule and text). Any other damage still fails the image.
  std::function<bool(const std::string& rule, const std::string& what)> setup_damage;
};

/// gtest prints a parameter with this (instead of its bytes).
inline void PrintTo(const scenario& s, std::ostream* os) { *os << s.name; }

struct crash_points_report {
  std::size_t images = 0;           // crash images recovered and checked
  std::size_t recovery_images = 0;  // of which taken during a recovery
  std::uint64_t op_fences = 0;      // fences the operation issued
  std::vector<std::string> failures;
};

/// A whole file's bytes, and a file made of exactly these bytes (crafting and comparing images).
std::vector<char> read_file(const std::string& path);
void write_file(const std::string& path, const std::vector<char>& bytes);

/// seeds: random subsets per crash point (plus the all-kept and none-kept extremes).
crash_points_report run_crash_points(const scenario& sc, unsigned seeds, bool crash_during_recovery);

}  // namespace pmpage::testing
