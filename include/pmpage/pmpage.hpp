// pmpage/pmpage.hpp — umbrella header. Include this.
//
// Layer order (a header may include only those above it):
//   types.hpp         units, constants, error, misuse handler
//   page.hpp          struct page, flag bits, the process-wide section tables
//   mm.hpp            kernel page API: translation, references, compound pages, flags (inline)
//   persistence.hpp   the flush/fence seam
//   pool.hpp          pools: create/open, allocation, root area, stats
#pragma once

#include "pmpage/types.hpp"
#include "pmpage/page.hpp"
#include "pmpage/mm.hpp"
#include "pmpage/persistence.hpp"
#include "pmpage/pool.hpp"
