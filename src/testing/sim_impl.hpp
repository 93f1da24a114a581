// sim_impl.hpp — the model behind pmpage::testing::sim_pmem (internal to libpmpage_testing).
//
// The pool's mapping plays the CPU caches; `durable` plays the media. flush() snapshots each
// covered line into the calling thread's pending set; drain() copies that thread's snapshots to
// the media. A crash image is the media plus any subset of the 8-byte words that differ from it.
//
// Several threads: every flush snapshot carries a sequence number, and a fence copies a snapshot
// to the media only if no newer snapshot of that line is there already (cache coherence: a line
// written back later holds every store an earlier write-back held, so an older write-back never
// overwrites a newer one on the media). Likewise a crash image never takes a word from a pending
// snapshot older than the line's durable one.
//
// For run_crash_test the media's history can be logged (every line a fence made durable, in
// order) so that a crash image is stored as (log position, the unfenced words kept): dozens of
// images of a 32 MiB device then cost what the operation wrote, not 32 MiB each.
#pragma once

#include <array>
#include <cstdint>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include <pmpage/testing.hpp>

namespace pmpage::testing {

struct sim_pmem::impl {
  static constexpr std::size_t LINE = 64;

  struct snapshot {
    std::array<char, LINE> bytes;
    std::uint64_t seq = 0;  // flush order across all threads
  };
  struct logged_line {
    std::size_t line;
    std::array<char, LINE> bytes;
  };
  /// A crash image relative to the log: the media after the first log_len log entries, with
  /// these words (byte offset, value) on top.
  struct sparse_image {
    std::size_t log_len = 0;
    std::vector<std::pair<std::size_t, std::uint64_t>> words;
  };

  explicit impl(std::size_t t) : tracked_req(t) {}

  /// The byte model's fence: every line of the mapping that differs from the media becomes
  /// durable (logged when logging); mu held.
  void make_visible_durable();

  mutable std::mutex mu;
  std::size_t tracked_req;
  bool attached_once = false;
  char* base = nullptr;  // the live mapping, or nullptr when detached
  std::size_t len = 0;   // bytes modelled
  std::vector<char> durable;
  std::vector<std::uint64_t> durable_seq;  // per line: seq of the snapshot the media holds (0: attach)
  std::vector<char> detached;              // the mapping's tracked bytes at detach
  std::vector<std::pair<std::thread::id, std::unordered_map<std::size_t, snapshot>>> pending;
  std::uint64_t flush_seq = 0;
  std::uint64_t fences = 0;
  std::optional<pmpage::granularity> fixed_model;  // sim_pmem(tracked, model)
  pmpage::granularity model = pmpage::granularity::cache_line;

  bool logging = false;
  std::vector<char> initial;  // the media at the first attach (when logging)
  std::vector<logged_line> log;

  const char* current() const { return base ? base : detached.data(); }

  /// Calls f(offset, const char* value8) for each word a crash now keeps beyond the media, in
  /// ascending order; mu held. Deterministic for a given state and seed.
  template <class F>
  void crash_words(std::uint64_t seed, double keep_probability, F&& f) const;

  sparse_image capture(std::uint64_t seed, double keep_probability) const;
};

/// run_crash_test's access to the model behind a sim_pmem.
struct sim_access {
  static sim_pmem::impl& of(sim_pmem& s) { return *s.impl_; }
};

}  // namespace pmpage::testing
