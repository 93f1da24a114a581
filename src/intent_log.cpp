// intent_log.cpp — see intent_log.hpp.
#include "intent_log.hpp"

#include <bit>
#include <functional>
#include <new>
#include <thread>

namespace pmpage::detail {

namespace {
// The lane this thread last wrote an intent into, and the retirement pending on it then: the
// write flushed that whole line, so this thread's next fence covers the retirement without
// flushing the line again (other threads' fences still flush it: they do not cover our flush).
thread_local const intent_log* t_wrote_log = nullptr;
thread_local unsigned t_wrote_lane = 0;
thread_local std::uint64_t t_wrote_pending = 0;
}  // namespace

void intent_log::init(lane* lanes, persistence* pers, bool enabled, state* st) {
  lanes_ = lanes;
  pers_ = pers;
  enabled_ = enabled;
  if (st) {
    st->~state();
    new (st) state();
  }
  st_ = st ? st : &own_;
}

unsigned intent_log::acquire() noexcept {
  for (;;) {
    if (const unsigned i = try_acquire(); i < NR_LANES) return i;
    std::this_thread::yield();
  }
}

unsigned intent_log::try_acquire() noexcept {
  if (!enabled_) return 0;
  const unsigned start = unsigned(std::hash<std::thread::id>{}(std::this_thread::get_id()) % NR_LANES);
  for (unsigned k = 0; k < NR_LANES; ++k) {
    const unsigned i = (start + k) % NR_LANES;
    bool expected = false;
    if (!st_->mirrors[i].busy.load(std::memory_order_relaxed) &&
        st_->mirrors[i].busy.compare_exchange_strong(expected, true, std::memory_order_acquire)) {
      // Only the lane's holder retires into it, so once a fence has made its last retirement
      // durable (pending_seq 0) nobody can set it again while we hold the lane: the bit can go.
      const std::uint64_t bit = std::uint64_t{1} << i;
      if ((st_->pending.load(std::memory_order_relaxed) & bit) && st_->mirrors[i].pending_seq.load(std::memory_order_seq_cst) == 0)
        st_->pending.fetch_and(~bit, std::memory_order_seq_cst);
      return i;
    }
  }
  return NR_LANES;
}

void intent_log::release(unsigned i) noexcept {
  if (enabled_) st_->mirrors[i].busy.store(false, std::memory_order_release);
}

void intent_log::write(unsigned i, intent_kind kind, unsigned order, std::uint64_t slot_offset,
                       std::uint64_t pfn, std::uint64_t aux) noexcept {
  if (!enabled_) return;
  const std::uint64_t seq = st_->next_seq.fetch_add(1, std::memory_order_relaxed);
  lane l{};
  l.seq = seq;
  l.kind = std::uint32_t(kind);
  l.order = order;
  l.slot_offset = slot_offset;
  l.pfn = pfn;
  l.aux = aux;
  l.checksum = fletcher64(reinterpret_cast<const char*>(&l) + 8, sizeof(lane) - 8);
  // A retirement still pending on this lane stays pending: until a fence makes this line durable
  // the media may still hold the retired intent, and other threads' fences must keep flushing
  // it (the line then carries this intent, which retires the old one just as well).
  mirror& m = st_->mirrors[i];
  m.seq_written = seq;
  t_wrote_log = this;
  t_wrote_lane = i;
  t_wrote_pending = m.pending_seq.load(std::memory_order_seq_cst);
  // Word by word (8-byte atomic stores): a torn lane fails its checksum at recovery.
  const auto* src = reinterpret_cast<const std::uint64_t*>(&l);
  auto* dst = reinterpret_cast<std::uint64_t*>(&lanes_[i]);
  for (unsigned w = 0; w < sizeof(lane) / 8; ++w) std::atomic_ref<std::uint64_t>(dst[w]).store(src[w], std::memory_order_relaxed);
  pers_->flush(&lanes_[i], sizeof(lane));
}

void intent_log::retire_lazily(unsigned i) noexcept {
  if (!enabled_) return;
  std::atomic_ref<std::uint64_t>(lanes_[i].seq).store(0, std::memory_order_relaxed);
  // The caller issues the flush (seq_word) after this, outside its locks. Published first: the locked instructions would otherwise wait for the
  // flush (x86 orders CLWB before locked read-modify-writes), making "lazy" a fence. A fence of
  // another thread that sees the bit also sees seq == 0 and flushes the line itself.
  // The lane is held by the caller, so its seq is the one it wrote; 0 is never a seq.
  st_->mirrors[i].pending_seq.store(st_->mirrors[i].seq_written, std::memory_order_seq_cst);
  st_->pending.fetch_or(std::uint64_t{1} << i, std::memory_order_seq_cst);
}

void intent_log::before_fence(fence_token& t) noexcept {
  t.lanes = 0;
  std::uint64_t mask = st_->pending.load(std::memory_order_seq_cst);
  while (mask) {
    const unsigned i = unsigned(std::countr_zero(mask));
    mask &= mask - 1;
    const std::uint64_t seq = st_->mirrors[i].pending_seq.load(std::memory_order_seq_cst);
    if (!seq) continue;
    // seq is already 0 in memory (or a newer intent overwrote the line); flushing it from this
    // thread puts it under this thread's fence — unless this thread's intent write just did.
    if (!(t_wrote_log == this && t_wrote_lane == i && t_wrote_pending == seq)) pers_->flush(&lanes_[i].seq, 8);
    t.lanes |= std::uint64_t{1} << i;
    t.seq[i] = seq;
  }
  if (t_wrote_log == this) t_wrote_log = nullptr;  // the hint is for the fence right after the write
}

void intent_log::after_fence(const fence_token& t) noexcept {
  std::uint64_t mask = t.lanes;
  while (mask) {
    const unsigned i = unsigned(std::countr_zero(mask));
    mask &= mask - 1;
    // Only if the lane still holds the retirement we flushed (not a newer one). The mask bit
    // stays: only the lane's next holder clears it (acquire), so it never misses a retirement.
    std::uint64_t expected = t.seq[i];
    st_->mirrors[i].pending_seq.compare_exchange_strong(expected, 0, std::memory_order_seq_cst);
  }
}

}  // namespace pmpage::detail

namespace pmpage::detail {

std::string intent_log::check(const std::function<bool(const lane&)>& valid) {
  for (unsigned i = 0; i < NR_LANES; ++i) {
    const bool busy_before = st_->mirrors[i].busy.load(std::memory_order_acquire);
    lane l;
    for (unsigned w = 0; w < sizeof(lane) / 8; ++w)
      reinterpret_cast<std::uint64_t*>(&l)[w] =
          std::atomic_ref<std::uint64_t>(reinterpret_cast<std::uint64_t*>(&lanes_[i])[w]).load(std::memory_order_relaxed);
    if (l.seq == 0) continue;
    // An operation may start or end while we look: only a lane idle on both sides is an orphan.
    // (Exact at quiescent points, which is where tests and tools call check().)
    if (!busy_before && !st_->mirrors[i].busy.load(std::memory_order_acquire))
      return "L1: lane " + std::to_string(i) + " holds a live intent (seq " + std::to_string(l.seq) +
             ") that no operation owns";
    if (l.checksum != fletcher64(reinterpret_cast<const char*>(&l) + 8, sizeof(lane) - 8)) continue;  // being written
    if (!valid(l)) return "L2: lane " + std::to_string(i) + " holds an intent whose fields are out of range";
  }
  return {};
}

}  // namespace pmpage::detail
