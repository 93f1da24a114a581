// sim_pmem.hpp — a persistence backend that simulates power failure (x86 ADR model).
//
// The pool's mapping plays the CPU caches; `durable_` plays the media. A store is durable only
// once a flush covered it and a later fence (drain) *on the same thread* completed, as with
// clwb + sfence: flush() snapshots the line into the calling thread's pending set, and drain()
// copies that thread's snapshots to the media. At a crash the media holds the durable image plus
// any subset of the 8-byte words written since (x86 guarantees 8-byte failure atomicity, and a
// dirty line may be evicted at any time). crash_image() builds such an image from a seeded RNG.
//
// Only the first `tracked` bytes of the device are modelled (the metadata and root area: every
// store the allocator makes lands there); the data area is left to the live mapping.
//
// Hooks let a test observe every fence: on_fence(k, before) is called with before=true just
// before fence k makes its lines durable and with before=false just after.
//
// Several threads: every flush snapshot carries a sequence number, and a fence copies a snapshot
// to the media only if no newer snapshot of that line is there already (cache coherence: a line
// written back later holds every store an earlier write-back held, so an older write-back never
// overwrites a newer one on the media). Likewise a crash image never takes a word from a pending
// snapshot older than the line's durable one.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include <pmpage/persistence.hpp>

namespace pmpage::testing {

class sim_pmem final : public pmpage::persistence {
 public:
  explicit sim_pmem(std::size_t tracked) : tracked_(tracked) {}

  void attach(void* base, std::size_t length, bool) override {
    std::lock_guard g(mu_);
    base_ = static_cast<char*>(base);
    len_ = std::min(length, tracked_);
    durable_.assign(base_, base_ + len_);
    durable_seq_.assign(len_ / 64 + 1, 0);
    pending_.clear();
    flush_seq_ = 0;
    fences_ = 0;
  }
  void detach() noexcept override {
    std::lock_guard g(mu_);
    base_ = nullptr;
  }
  void flush(const void* addr, std::size_t len) noexcept override {
    std::lock_guard g(mu_);
    if (!base_) return;
    const auto* a = static_cast<const char*>(addr);
    if (a + len <= base_ || a >= base_ + len_) return;
    std::size_t lo = a < base_ ? 0 : std::size_t(a - base_);
    std::size_t hi = std::min(len_, std::size_t(a + len - base_));
    for (std::size_t line = lo / 64; line * 64 < hi; ++line) {
      snapshot snap;
      std::memcpy(snap.bytes.data(), base_ + line * 64, 64);
      snap.seq = ++flush_seq_;
      pending_[std::this_thread::get_id()][line] = snap;
    }
  }
  void drain() noexcept override {
    std::function<void(std::uint64_t, bool)> hook;
    std::uint64_t k;
    {
      std::lock_guard g(mu_);
      k = ++fences_;
      hook = on_fence;
    }
    if (hook) hook(k, true);
    {
      std::lock_guard g(mu_);
      auto mine = pending_.find(std::this_thread::get_id());
      if (mine != pending_.end()) {
        for (auto& [line, snap] : mine->second) {
          if (snap.seq <= durable_seq_[line]) continue;  // another thread fenced a newer copy
          std::memcpy(durable_.data() + line * 64, snap.bytes.data(), 64);
          durable_seq_[line] = snap.seq;
        }
        pending_.erase(mine);
      }
    }
    if (hook) hook(k, false);
  }

  /// The media after a power failure now: durable lines, plus a seeded random subset of the
  /// 8-byte words that differ (flushed-but-unfenced snapshots and plain dirty words alike).
  /// keep_probability 0 = only what was fenced; 1 = everything written.
  std::vector<char> crash_image(std::uint64_t seed, double keep_probability) const {
    std::lock_guard g(mu_);
    std::vector<char> img = durable_;
    std::mt19937_64 rng(seed);
    std::bernoulli_distribution keep(keep_probability);
    // Candidate values for each word: the flushed-but-unfenced snapshots (any thread's) newer
    // than the line's durable copy, and the current value.
    std::vector<const char*> snaps;
    for (std::size_t w = 0; w + 8 <= len_; w += 8) {
      const char* cur = base_ + w;
      snaps.clear();
      bool differs = std::memcmp(cur, img.data() + w, 8) != 0;
      for (auto& [tid, lines] : pending_) {
        const auto it = lines.find(w / 64);
        if (it == lines.end() || it->second.seq <= durable_seq_[w / 64]) continue;
        snaps.push_back(it->second.bytes.data() + (w % 64));
        differs = differs || std::memcmp(snaps.back(), img.data() + w, 8) != 0;
      }
      if (!differs) continue;
      if (!keep(rng)) continue;
      // A newer value reached the media: one of the snapshots or the current one. (With one
      // snapshot, one coin flip: the single-threaded images stay what they were.)
      const char* src = cur;
      if (snaps.size() == 1) {
        if (rng() & 1) src = snaps[0];
      } else if (!snaps.empty()) {
        const std::size_t pick = rng() % (snaps.size() + 1);
        if (pick < snaps.size()) src = snaps[pick];
      }
      std::memcpy(img.data() + w, src, 8);
    }
    return img;
  }

  std::uint64_t fences() const {
    std::lock_guard g(mu_);
    return fences_;
  }
  std::size_t tracked() const { return len_; }

  std::function<void(std::uint64_t fence, bool before)> on_fence;

 private:
  mutable std::mutex mu_;
  std::size_t tracked_;
  char* base_ = nullptr;
  std::size_t len_ = 0;
  struct snapshot {
    std::array<char, 64> bytes;
    std::uint64_t seq = 0;  // flush order across all threads
  };
  std::vector<char> durable_;
  std::vector<std::uint64_t> durable_seq_;  // per line: seq of the snapshot the media holds (0: attach)
  std::map<std::thread::id, std::map<std::size_t, snapshot>> pending_;
  std::uint64_t flush_seq_ = 0;
  std::uint64_t fences_ = 0;
};

}  // namespace pmpage::testing
