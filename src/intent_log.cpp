// intent_log.cpp — see intent_log.hpp.
#include "intent_log.hpp"

#include <functional>
#include <thread>

namespace pmpage::detail {

namespace {
// The intent this thread retired last, until its next fence makes the retirement durable.
struct retired_intent {
  const void* log = nullptr;
  unsigned lane = 0;
  std::uint64_t seq = 0;
};
thread_local retired_intent tl_retired;

bool overlaps(std::uint64_t a, unsigned ao, std::uint64_t b, unsigned bo) {
  return a < b + (std::uint64_t{1} << bo) && b < a + (std::uint64_t{1} << ao);
}
}  // namespace

void intent_log::init(lane* lanes, persistence* pers) {
  lanes_ = lanes;
  pers_ = pers;
}

unsigned intent_log::acquire() noexcept {
  const unsigned start = unsigned(std::hash<std::thread::id>{}(std::this_thread::get_id()) % NR_LANES);
  for (;;) {
    for (unsigned k = 0; k < NR_LANES; ++k) {
      const unsigned i = (start + k) % NR_LANES;
      bool expected = false;
      if (!mirrors_[i].busy.load(std::memory_order_relaxed) &&
          mirrors_[i].busy.compare_exchange_strong(expected, true, std::memory_order_acquire))
        return i;
    }
    std::this_thread::yield();
  }
}

void intent_log::release(unsigned i) noexcept { mirrors_[i].busy.store(false, std::memory_order_release); }

void intent_log::write(unsigned i, intent_kind kind, unsigned order, std::uint64_t slot_offset,
                       std::uint64_t pfn) noexcept {
  const std::uint64_t seq = next_seq_.fetch_add(1, std::memory_order_relaxed);
  lane l{};
  l.seq = seq;
  l.kind = std::uint32_t(kind);
  l.order = order;
  l.slot_offset = slot_offset;
  l.pfn = pfn;
  l.checksum = fletcher64(reinterpret_cast<const char*>(&l) + 8, sizeof(lane) - 8);
  // Word by word (8-byte atomic stores): a torn lane fails its checksum at recovery.
  const auto* src = reinterpret_cast<const std::uint64_t*>(&l);
  auto* dst = reinterpret_cast<std::uint64_t*>(&lanes_[i]);
  for (unsigned w = 0; w < sizeof(lane) / 8; ++w) std::atomic_ref<std::uint64_t>(dst[w]).store(src[w], std::memory_order_relaxed);
  pers_->flush(&lanes_[i], sizeof(lane));
  std::lock_guard g(mu_);
  mirror& m = mirrors_[i];
  if (!m.pending) nr_pending_.fetch_add(1, std::memory_order_relaxed);
  m.pending = true;
  m.seq = seq;
  m.slot = slot_offset;
  m.pfn = pfn;
  m.order = order;
}

void intent_log::retire_lazily(unsigned i) noexcept {
  std::atomic_ref<std::uint64_t>(lanes_[i].seq).store(0, std::memory_order_relaxed);
  pers_->flush(&lanes_[i].seq, 8);
  tl_retired = retired_intent{this, i, mirrors_[i].seq};
}

void intent_log::after_fence() noexcept {
  if (tl_retired.log != this) return;
  std::lock_guard g(mu_);
  mirror& m = mirrors_[tl_retired.lane];
  if (m.pending && m.seq == tl_retired.seq) {
    m.pending = false;
    nr_pending_.fetch_sub(1, std::memory_order_relaxed);
  }
  tl_retired = retired_intent{};
}

void intent_log::resolve_conflicts(std::uint64_t pfn, unsigned order, std::uint64_t slot_offset) noexcept {
  if (nr_pending_.load(std::memory_order_acquire) == 0) return;
  for (;;) {
    bool must_wait = false;
    {
      std::lock_guard g(mu_);
      for (unsigned i = 0; i < NR_LANES; ++i) {
        mirror& m = mirrors_[i];
        if (!m.pending) continue;
        if (!(overlaps(pfn, order, m.pfn, m.order) || (slot_offset && m.slot == slot_offset))) continue;
        if (m.busy.load(std::memory_order_acquire)) {
          must_wait = true;  // its holder is about to overwrite it; wait for that to be fenced
          continue;
        }
        std::atomic_ref<std::uint64_t>(lanes_[i].seq).store(0, std::memory_order_relaxed);
        pers_->flush(&lanes_[i].seq, 8);
        m.pending = false;
        nr_pending_.fetch_sub(1, std::memory_order_relaxed);
      }
    }
    if (!must_wait) return;
    std::this_thread::yield();
  }
}

}  // namespace pmpage::detail
