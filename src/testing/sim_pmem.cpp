// sim_pmem.cpp — the simulated device: see include/pmpage/testing.hpp and sim_impl.hpp.
#include <algorithm>
#include <cstring>
#include <random>

#include "sim_impl.hpp"

namespace pmpage::testing {

namespace {
constexpr std::size_t LINE = sim_pmem::impl::LINE;
// crash_words compares the mapping with the media a block at a time (memcmp is vectorised) and
// looks at single words only in blocks that differ: most of a device is unchanged between fences.
constexpr std::size_t BLOCK = 4096;
}  // namespace

template <class F>
void sim_pmem::impl::crash_words(std::uint64_t seed, double keep_probability, F&& f) const {
  if (keep_probability <= 0 || len == 0) return;
  std::mt19937_64 rng(seed);
  std::bernoulli_distribution keep(std::min(keep_probability, 1.0));
  // Candidate values for each word: the flushed-but-unfenced snapshots (any thread's) newer than
  // the line's durable copy, and the current value. Sorted so that the image does not depend on
  // the order of the per-thread tables.
  std::vector<std::pair<std::size_t, const snapshot*>> cand;
  for (auto& [tid, lines] : pending)
    for (auto& [line, snap] : lines)
      if (snap.seq > durable_seq[line]) cand.emplace_back(line, &snap);
  std::sort(cand.begin(), cand.end(), [](auto& a, auto& b) {
    return a.first != b.first ? a.first < b.first : a.second->seq < b.second->seq;
  });
  const char* cur = current();
  const char* img = durable.data();
  std::size_t ci = 0;  // first candidate of the current line or later
  std::vector<const char*> snaps;
  for (std::size_t blk = 0; blk < len; blk += BLOCK) {
    const std::size_t end = std::min(len, blk + BLOCK);
    while (ci < cand.size() && cand[ci].first * LINE < blk) ++ci;
    const bool has_cand = ci < cand.size() && cand[ci].first * LINE < end;
    if (!has_cand && std::memcmp(cur + blk, img + blk, end - blk) == 0) continue;
    for (std::size_t w = blk; w + 8 <= end; w += 8) {
      const std::size_t line = w / LINE;
      while (ci < cand.size() && cand[ci].first < line) ++ci;
      snaps.clear();
      bool differs = std::memcmp(cur + w, img + w, 8) != 0;
      for (std::size_t c = ci; c < cand.size() && cand[c].first == line; ++c) {
        snaps.push_back(cand[c].second->bytes.data() + (w % LINE));
        differs = differs || std::memcmp(snaps.back(), img + w, 8) != 0;
      }
      if (!differs || !keep(rng)) continue;
      // A newer value reached the media: one of the snapshots or the current one. (With one
      // snapshot, one coin flip.)
      const char* src = cur + w;
      if (snaps.size() == 1) {
        if (rng() & 1) src = snaps[0];
      } else if (!snaps.empty()) {
        const std::size_t pick = rng() % (snaps.size() + 1);
        if (pick < snaps.size()) src = snaps[pick];
      }
      f(w, src);
    }
  }
}

sim_pmem::impl::sparse_image sim_pmem::impl::capture(std::uint64_t seed, double keep_probability) const {
  std::lock_guard g(mu);
  sparse_image s;
  s.log_len = log.size();
  crash_words(seed, keep_probability, [&](std::size_t off, const char* v) {
    std::uint64_t word;
    std::memcpy(&word, v, 8);
    s.words.emplace_back(off, word);
  });
  return s;
}

sim_pmem::sim_pmem(std::size_t tracked) : impl_(std::make_unique<impl>(tracked)) {}
sim_pmem::sim_pmem(std::size_t tracked, pmpage::granularity model) : impl_(std::make_unique<impl>(tracked)) {
  impl_->fixed_model = model == pmpage::granularity::byte ? model : pmpage::granularity::cache_line;
  impl_->model = *impl_->fixed_model;
}

void sim_pmem::impl::make_visible_durable() {
  // A block at a time (memcmp is vectorised), then the lines of a block that differs.
  for (std::size_t blk = 0; blk < len; blk += BLOCK) {
    const std::size_t end = std::min(len, blk + BLOCK);
    if (std::memcmp(base + blk, durable.data() + blk, end - blk) == 0) continue;
    for (std::size_t at = blk; at < end; at += LINE) {
      const std::size_t n = std::min(LINE, end - at);
      if (std::memcmp(base + at, durable.data() + at, n) == 0) continue;
      std::memcpy(durable.data() + at, base + at, n);
      durable_seq[at / LINE] = ++flush_seq;  // newer than any pending snapshot of the line
      if (logging) {
        logged_line l{at / LINE, {}};
        std::memcpy(l.bytes.data(), base + at, n);
        log.push_back(l);
      }
    }
  }
}
sim_pmem::~sim_pmem() = default;

pmpage::granularity sim_pmem::attach(void* base, std::size_t length, pmpage::granularity platform) {
  impl& m = *impl_;
  std::lock_guard g(m.mu);
  m.model = m.fixed_model ? *m.fixed_model
            : platform == pmpage::granularity::byte ? pmpage::granularity::byte
                                                    : pmpage::granularity::cache_line;
  m.base = static_cast<char*>(base);
  const std::size_t n = m.tracked_req ? std::min(length, m.tracked_req) : length;
  m.detached.clear();
  m.detached.shrink_to_fit();
  if (!m.attached_once) {
    // The device's first mapping: the media holds the file as it is.
    m.attached_once = true;
    m.len = n;
    m.durable.assign(m.base, m.base + n);
    m.durable_seq.assign(n / LINE + 1, 0);
    if (m.logging) m.initial = m.durable;
    return m.model;
  }
  // A reopen of the same device: the media keeps what was fenced (a close does not make unfenced
  // stores durable). A longer mapping models the new bytes as they are on the media now.
  if (n > m.len) {
    m.durable.insert(m.durable.end(), m.base + m.len, m.base + n);
    if (m.logging) m.initial.insert(m.initial.end(), m.base + m.len, m.base + n);
  } else {
    m.durable.resize(n);
    for (auto& [tid, lines] : m.pending) std::erase_if(lines, [&](auto& kv) { return (kv.first + 1) * LINE > n; });
  }
  m.len = n;
  m.durable_seq.resize(n / LINE + 1, 0);
  return m.model;
}

void sim_pmem::detach() noexcept {
  impl& m = *impl_;
  std::lock_guard g(m.mu);
  if (!m.base) return;
  try {
    m.detached.assign(m.base, m.base + m.len);
  } catch (...) {
    // Out of memory: crash images after the close see the media plus the pending snapshots only.
    m.detached = m.durable;
  }
  m.base = nullptr;
}

void sim_pmem::flush(const void* addr, std::size_t len) noexcept {
  impl& m = *impl_;
  std::lock_guard g(m.mu);
  if (!m.base || m.model == pmpage::granularity::byte) return;  // byte: the fence makes it durable
  const auto* a = static_cast<const char*>(addr);
  if (a + len <= m.base || a >= m.base + m.len) return;
  const std::size_t lo = a < m.base ? 0 : std::size_t(a - m.base);
  const std::size_t hi = std::min(m.len, std::size_t(a + len - m.base));
  const auto me = std::this_thread::get_id();
  auto it = std::find_if(m.pending.begin(), m.pending.end(), [&](auto& p) { return p.first == me; });
  if (it == m.pending.end()) {
    m.pending.emplace_back(me, std::unordered_map<std::size_t, impl::snapshot>{});
    it = std::prev(m.pending.end());
  }
  for (std::size_t line = lo / LINE; line * LINE < hi; ++line) {
    impl::snapshot& snap = it->second[line];
    // A line at the end of the tracked range may be partial.
    const std::size_t n = std::min(LINE, m.len - line * LINE);
    std::memcpy(snap.bytes.data(), m.base + line * LINE, n);
    snap.seq = ++m.flush_seq;
  }
}

void sim_pmem::drain() noexcept {
  impl& m = *impl_;
  std::function<void(std::uint64_t, bool)> hook;
  std::uint64_t k;
  {
    std::lock_guard g(m.mu);
    k = ++m.fences;
    hook = on_fence;
  }
  // The hook runs outside the lock: it takes crash images, and a test's hook may act as another
  // caller of the pool (whose own fences come back here).
  if (hook) hook(k, true);
  {
    std::lock_guard g(m.mu);
    // Byte model: what is visible now left the store buffers, so it is durable (this thread's
    // stores before the fence among them).
    if (m.model == pmpage::granularity::byte && m.base) m.make_visible_durable();
    const auto me = std::this_thread::get_id();
    auto mine = std::find_if(m.pending.begin(), m.pending.end(), [&](auto& p) { return p.first == me; });
    if (mine != m.pending.end()) {
      for (auto& [line, snap] : mine->second) {
        if (snap.seq <= m.durable_seq[line]) continue;  // another thread fenced a newer copy
        const std::size_t n = std::min(LINE, m.len - line * LINE);
        std::memcpy(m.durable.data() + line * LINE, snap.bytes.data(), n);
        m.durable_seq[line] = snap.seq;
        if (m.logging) m.log.push_back({line, snap.bytes});
      }
      m.pending.erase(mine);
    }
  }
  if (hook) hook(k, false);
}

std::vector<char> sim_pmem::crash_image(std::uint64_t seed, double keep_probability) const {
  const impl& m = *impl_;
  std::lock_guard g(m.mu);
  std::vector<char> img = m.durable;
  m.crash_words(seed, keep_probability, [&](std::size_t off, const char* v) { std::memcpy(img.data() + off, v, 8); });
  return img;
}

std::uint64_t sim_pmem::fences() const {
  std::lock_guard g(impl_->mu);
  return impl_->fences;
}

std::size_t sim_pmem::tracked() const {
  std::lock_guard g(impl_->mu);
  return impl_->len;
}

pmpage::granularity sim_pmem::model() const {
  std::lock_guard g(impl_->mu);
  return impl_->model;
}

}  // namespace pmpage::testing
