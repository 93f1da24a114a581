// misuse.hpp — internal: report a caller's mistake through the installed misuse handler.
#pragma once

#include <cstdint>
#include <mutex>

#include "pmpage/types.hpp"

namespace pmpage::detail {

/// printf-style; the handler may return, in which case the caller must leave all state untouched.
void report_misuse(const char* fmt, ...) noexcept __attribute__((format(printf, 1, 2)));

/// Misuse reports made on this thread so far, and the last one's message, whichever handler is
/// installed: the C API compares the count around a call to tell a misused call (its message is
/// the report) from any other failure (it writes its own).
std::uint64_t misuse_reports() noexcept;
const char* last_misuse() noexcept;

/// The lock of the C API's misuse handler and its context (c_api.cpp): a leaf, held only while
/// they are read or written. fork() takes it last (fork.cpp).
std::mutex& c_misuse_handler_lock() noexcept;

/// Sets the calling thread's pmpage_errormsg() (c_api.cpp) from inside the library: for the
/// failures a C caller sees only as NULL + errno, such as an allocation the file system could
/// not back (ENOSPC), so the message says why.
void set_c_error_message(const char* msg) noexcept;
/// An allocation found no room because the file system could not back it (ENOSPC, EDQUOT, EIO,
/// ...): sets errno and the C message, and counts it for the calling thread, so the C API keeps
/// that reason instead of calling it a plain lack of room (c_api.cpp, c_call).
void note_backing_failure(int err, const char* msg) noexcept;
/// Backing failures noted on this thread so far, and the last one's errno.
std::uint64_t backing_failures() noexcept;
int last_backing_errno() noexcept;

}  // namespace pmpage::detail
