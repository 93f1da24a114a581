// region_buddy.cpp — see region_buddy.hpp.
#include "region_buddy.hpp"

#include "split_region.hpp"  // NIL

namespace pmpage::detail {

void region_buddy::init(page* regions, std::uint64_t nr_regions, state* st) {
  regions_ = regions;
  st_ = st ? st : &own_;
  st_->nr_regions = nr_regions;
  for (auto& h : st_->heads) h = NIL;
  st_->free_regions = 0;
}

void region_buddy::push(std::uint32_t r, unsigned order) {
  page& d = regions_[r];
  store_kind(d, RK_FREE_BLOCK);
  store_order(&d, order);  // read lock-free (compound_order, splits) while the buddy writes it
  d.list_prev_ = NIL;
  d.list_next_ = st_->heads[order - HPAGE_PMD_ORDER];
  if (d.list_next_ != NIL) regions_[d.list_next_].list_prev_ = r;
  st_->heads[order - HPAGE_PMD_ORDER] = r;
}

void region_buddy::unlink(std::uint32_t r, unsigned order) {
  page& d = regions_[r];
  if (d.list_prev_ != NIL)
    regions_[d.list_prev_].list_next_ = d.list_next_;
  else
    st_->heads[order - HPAGE_PMD_ORDER] = d.list_next_;
  if (d.list_next_ != NIL) regions_[d.list_next_].list_prev_ = d.list_prev_;
  d.list_next_ = d.list_prev_ = NIL;
  store_kind(d, RK_FREE_INNER);
  store_order(&d, 0);
}

std::uint32_t region_buddy::alloc(unsigned order) {
  unsigned m = order;
  while (m <= MAX_PAGE_ORDER && st_->heads[m - HPAGE_PMD_ORDER] == NIL) ++m;
  if (m > MAX_PAGE_ORDER) return NIL;
  const std::uint32_t r = st_->heads[m - HPAGE_PMD_ORDER];
  unlink(r, m);
  // Give back the upper halves until the block has the requested size.
  while (m > order) {
    --m;
    push(r + (1u << (m - HPAGE_PMD_ORDER)), m);
  }
  st_->free_regions -= std::uint64_t{1} << (order - HPAGE_PMD_ORDER);
  return r;
}

void region_buddy::free(std::uint32_t first, unsigned order) {
  st_->free_regions += std::uint64_t{1} << (order - HPAGE_PMD_ORDER);
  std::uint32_t r = first;
  while (order < MAX_PAGE_ORDER) {
    const std::uint32_t buddy = r ^ (1u << (order - HPAGE_PMD_ORDER));
    if (buddy >= st_->nr_regions) break;
    const page& b = regions_[buddy];
    if (load_kind(b) != RK_FREE_BLOCK || load_order(const_cast<page*>(&b)) != order) break;
    unlink(buddy, order);
    if (buddy < r) {
      store_kind(regions_[r], RK_FREE_INNER);
      r = buddy;
    }
    ++order;
  }
  push(r, order);
}

void region_buddy::add_free_run(std::uint32_t first, std::uint64_t count) {
  st_->free_regions += count;
  while (count > 0) {
    unsigned k = 0;  // block of 2^k regions: as large as both the alignment and the run allow
    while (k < MAX_PAGE_ORDER - HPAGE_PMD_ORDER && (first & ((2u << k) - 1)) == 0 && (std::uint64_t{2} << k) <= count) ++k;
    push(first, HPAGE_PMD_ORDER + k);
    first += 1u << k;
    count -= std::uint64_t{1} << k;
  }
}

}  // namespace pmpage::detail
