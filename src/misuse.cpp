// misuse.cpp — the misuse policy: format a message, hand it to the installed handler.
#include "misuse.hpp"

#include <atomic>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>

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

void report_misuse(const char* fmt, ...) noexcept {
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  g_handler.load(std::memory_order_acquire)(buf);
}

}  // namespace detail
}  // namespace pmpage
