// misuse.cpp — the misuse policy: format a message, hand it to the installed handler.
#include "misuse.hpp"

#include <atomic>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace pmpage {

namespace {
void default_handler(const char* message) {
  std::fprintf(stderr, "pmpage: misuse: %s\n", message);
  std::abort();
}
std::atomic<misuse_handler> g_handler{&default_handler};
}  // namespace

misuse_handler set_misuse_handler(misuse_handler handler) noexcept {
  return g_handler.exchange(handler ? handler : &default_handler);
}

namespace detail {

namespace {
thread_local std::uint64_t t_reports = 0;
thread_local char t_last[512];
}  // namespace

void report_misuse(const char* fmt, ...) noexcept {
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(t_last, sizeof t_last, fmt, ap);
  va_end(ap);
  ++t_reports;
  char buf[sizeof t_last];  // the handler's copy: it may report again (its own misuse) and overwrite t_last
  std::memcpy(buf, t_last, sizeof buf);
  g_handler.load(std::memory_order_acquire)(buf);
}

std::uint64_t misuse_reports() noexcept { return t_reports; }
const char* last_misuse() noexcept { return t_last; }

}  // namespace detail
}  // namespace pmpage
