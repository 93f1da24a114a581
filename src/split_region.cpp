// split_region.cpp — see split_region.hpp.
#include "split_region.hpp"

#include <bit>

namespace pmpage::detail {

namespace {
// Bits of w that start a free naturally aligned run of 2^order (order <= 6) pages.
std::uint64_t aligned_runs(std::uint64_t w, unsigned order) {
  std::uint64_t m = w;
  for (unsigned s = 1; s < (1u << order); s <<= 1) m &= m >> s;
  // Keep only naturally aligned starting positions.
  static constexpr std::uint64_t align_mask[7] = {
      ~std::uint64_t{0},     0x5555555555555555ull, 0x1111111111111111ull, 0x0101010101010101ull,
      0x0001000100010001ull, 0x0000000100000001ull, 0x0000000000000001ull};
  return m & align_mask[order];
}
}  // namespace

int find_free_block(const split_state& s, unsigned order) {
  if (order <= 6) {
    for (unsigned w = 0; w < 8; ++w) {
      if (!s.free_bits[w]) continue;
      const std::uint64_t runs = order == 0 ? s.free_bits[w] : aligned_runs(s.free_bits[w], order);
      if (runs) return int(w * 64 + unsigned(std::countr_zero(runs)));
    }
    return -1;
  }
  const unsigned words = 1u << (order - 6);
  for (unsigned w = 0; w < 8; w += words) {
    bool all = true;
    for (unsigned j = 0; j < words; ++j) all = all && s.free_bits[w + j] == ~std::uint64_t{0};
    if (all) return int(w * 64);
  }
  return -1;
}

int longest_free_order(const split_state& s) {
  for (int k = HPAGE_PMD_ORDER; k >= 0; --k)
    if (find_free_block(s, unsigned(k)) >= 0) return k;
  return -1;
}

void mark_used(split_state& s, unsigned first, unsigned count) {
  for (unsigned i = first; i < first + count; ++i) s.free_bits[i / 64] &= ~(std::uint64_t{1} << (i % 64));
  s.nr_free = std::uint16_t(s.nr_free - count);
}

void mark_free(split_state& s, unsigned first, unsigned count) {
  for (unsigned i = first; i < first + count; ++i) s.free_bits[i / 64] |= std::uint64_t{1} << (i % 64);
  s.nr_free = std::uint16_t(s.nr_free + count);
}

void filler::remove(std::uint32_t r, split_state& s) {
  if (s.list == 0xff) return;
  page& d = regions_[r];
  if (d.list_prev_ != NIL)
    regions_[d.list_prev_].list_next_ = d.list_next_;
  else
    st_->heads[s.list] = d.list_next_;
  if (d.list_next_ != NIL) regions_[d.list_next_].list_prev_ = d.list_prev_;
  if (st_->heads[s.list] == NIL) st_->nonempty &= ~(list_mask{1} << s.list);
  d.list_next_ = d.list_prev_ = NIL;
  s.list = 0xff;
  --st_->count;
}

void filler::refresh_longest(split_state& s, change c) {
  // Allocating can only shorten the longest free block, freeing only lengthen it: search from
  // the old value instead of from order 9.
  int longest = -1;
  if (c == change::allocated) {
    for (int k = s.longest; k >= 0 && longest < 0; --k)
      if (find_free_block(s, unsigned(k)) >= 0) longest = k;
  } else if (c == change::freed) {
    longest = s.longest;
    for (int k = HPAGE_PMD_ORDER; k > s.longest; --k)
      if (find_free_block(s, unsigned(k)) >= 0) {
        longest = k;
        break;
      }
  } else {
    longest = longest_free_order(s);
  }
  s.longest = std::int8_t(longest);
}

void filler::update(std::uint32_t r, split_state& s, change c) {
  refresh_longest(s, c);
  const unsigned target = target_list(s);
  if (target == s.list) return;
  remove(r, s);
  if (target == 0xff) return;
  page& d = regions_[r];
  d.list_prev_ = NIL;
  d.list_next_ = st_->heads[target];
  if (d.list_next_ != NIL) regions_[d.list_next_].list_prev_ = r;
  st_->heads[target] = r;
  st_->nonempty |= list_mask{1} << target;
  s.list = std::uint8_t(target);
  ++st_->count;
}

std::uint32_t filler::find(unsigned order, unsigned min_bucket) const {
  if (!st_->nonempty) return NIL;
  const unsigned wanted = (1u << ORDERS) - (1u << order);  // lists with longest >= order
  for (unsigned fb = min_bucket; fb < FULLNESS_BUCKETS; ++fb) {
    const auto group = unsigned(st_->nonempty >> (fb * ORDERS)) & wanted;
    if (group) return st_->heads[fb * ORDERS + unsigned(std::countr_zero(group))];
  }
  return NIL;
}

}  // namespace pmpage::detail
