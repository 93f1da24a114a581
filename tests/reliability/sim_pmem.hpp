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
    pending_.clear();
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
      std::array<char, 64> snap;
      std::memcpy(snap.data(), base_ + line * 64, 64);
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
        for (auto& [line, snap] : mine->second) std::memcpy(durable_.data() + line * 64, snap.data(), 64);
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
    // Candidate values for each word: a flushed-but-unfenced snapshot (any thread's) and the
    // current value.
    for (std::size_t w = 0; w + 8 <= len_; w += 8) {
      const char* cur = base_ + w;
      const char* snap = nullptr;
      for (auto& [tid, lines] : pending_) {
        const auto it = lines.find(w / 64);
        if (it != lines.end()) snap = it->second.data() + (w % 64);
      }
      if (std::memcmp(cur, img.data() + w, 8) == 0 && (!snap || std::memcmp(snap, img.data() + w, 8) == 0)) continue;
      if (!keep(rng)) continue;
      // Either a newer value reached the media: the snapshot or the current one.
      const char* src = snap && (rng() & 1) ? snap : cur;
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
  std::vector<char> durable_;
  std::map<std::thread::id, std::map<std::size_t, std::array<char, 64>>> pending_;
  std::uint64_t fences_ = 0;
};

}  // namespace pmpage::testing
