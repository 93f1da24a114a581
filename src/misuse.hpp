// misuse.hpp — internal: report a caller's mistake through the installed misuse handler.
#pragma once

#include "pmpage/types.hpp"

namespace pmpage::detail {

/// printf-style; the handler may return, in which case the caller must leave all state untouched.
void report_misuse(const char* fmt, ...) noexcept __attribute__((format(printf, 1, 2)));

}  // namespace pmpage::detail
