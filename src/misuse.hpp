// misuse.hpp — internal: report a caller's mistake through the installed misuse handler.
#pragma once

#include <cstdint>

#include "pmpage/types.hpp"

namespace pmpage::detail {

/// printf-style; the handler may return, in which case the caller must leave all state untouched.
void report_misuse(const char* fmt, ...) noexcept __attribute__((format(printf, 1, 2)));

/// Misuse reports made on this thread so far, and the last one's message, whichever handler is
/// installed: the C API compares the count around a call to tell a misused call (its message is
/// the report) from any other failure (it writes its own).
std::uint64_t misuse_reports() noexcept;
const char* last_misuse() noexcept;

}  // namespace pmpage::detail
