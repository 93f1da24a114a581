// null_persistence.hpp — the backend of a read-only pool: nothing is ever made durable.
//
// A read-only pool maps its file private (copy-on-write): recovery's stores land in this
// process's copy only, so there is nothing to flush and no fence to wait for. copy_nodrain and
// memset_nodrain keep the base class's stores (no read-only path calls them; a store into the
// protected mapping would fault, which is the point).
#pragma once

#include "pmpage/persistence.hpp"

namespace pmpage::detail {

class null_persistence final : public persistence {
 public:
  granularity attach(void*, std::size_t, granularity g) override { return g; }
  void flush(const void*, std::size_t) noexcept override {}
  void drain() noexcept override {}
};

}  // namespace pmpage::detail
