/// \file
/// pmpage/pmpage.hpp — umbrella header. Include this.
///
/// Layer order (a header may include only those above it):
/// ```
///   types.hpp         units, constants, error, misuse handler
///   page.hpp          struct page, flag bits, the process-wide section tables
///   mm.hpp            kernel page API: translation, references, compound pages, flags (inline)
///   persistence.hpp   the flush/fence seam
///   pool.hpp          pools: create/open, allocation, root area, stats
/// ```
///
/// \mainpage pmpage API reference
///
/// Every public name of pmpage with its signature, generated from the headers' own comments
/// (the `pmpage_docs` target; a public name without a comment fails the build). The guide is
/// docs/api.md: what to call when, with examples; docs/format.md is the on-media format.
///
/// Where to start:
/// - pmpage::pool: create, open, close; alloc_pages, alloc_pages_to (slot ownership),
///   persist; stats, check. The C API: pmpage.h.
/// - mm.hpp: the kernel's page API on a pool's descriptors: pfn_to_page, page_address,
///   get_page / put_page, compound pages, flags, the page lock.
/// - types.hpp: pfn_t, the limits, pmpage::error, the misuse handler.
/// - persistence.hpp: the flush/fence seam; testing.hpp: the power-failure simulator
///   (libpmpage_testing); fsck.hpp: checking closed pools (the pmpage tool's library).
#pragma once

#include "pmpage/types.hpp"
#include "pmpage/page.hpp"
#include "pmpage/mm.hpp"
#include "pmpage/persistence.hpp"
#include "pmpage/pool.hpp"
