// misuse.hpp — internal: report a caller's mistake through the installed misuse handler.
#pragma once

#include "pmpage/types.hpp"

namespace pmpage::detail {

/// printf-style; the handler may return, in which case the caller must leave all state untouched.
void report_misuse(const char* fmt, ...) noexcept __attribute__((format(printf, 1, 2)));

/// Sets the calling thread's pmpage_errormsg() (c_api.cpp) from inside the library: for the
/// failures a C caller sees only as NULL + errno, such as an allocation the file system could
/// not back (ENOSPC), so the message says why.
void set_c_error_message(const char* msg) noexcept;

}  // namespace pmpage::detail
