// fuzz_open.cpp — libFuzzer target over the open/recover path.
//
// The input is the metadata prefix of a small pool (superblocks, intent lanes, root, region
// table, page maps); it is written over a 12 MiB sparse file, which is then opened, walked
// (every split region is loaded, validated and repaired) and checked. Any crash, sanitizer
// report, or a pool that opens but fails check() is a bug. Build: scripts/fuzz.sh.
#include <fcntl.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include <pmpage/fsck.hpp>
#include <pmpage/pmpage.hpp>

namespace {
constexpr std::size_t POOL_SIZE = 12u << 20;
constexpr std::size_t MAX_PREFIX = 2u << 20;  // the metadata of a 12 MiB pool ends below 2 MiB

const std::string& scratch() {
  static const std::string p = "/dev/shm/pmpage-fuzz-" + std::to_string(::getpid());
  return p;
}
}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  setenv("PMEM_IS_PMEM_FORCE", "1", 1);
  pmpage::set_misuse_handler([](const char* msg) {
    std::fprintf(stderr, "misuse during recovery: %s\n", msg);
    std::abort();
  });
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size > MAX_PREFIX) return 0;
  const int fd = ::open(scratch().c_str(), O_RDWR | O_CREAT | O_TRUNC, 0600);
  if (fd < 0) std::abort();
  if (::ftruncate(fd, POOL_SIZE) != 0 || ::pwrite(fd, data, size, 0) != ssize_t(size)) std::abort();
  ::close(fd);
  // The offline checker reads the same bytes first: it must never crash or throw on a readable
  // file (damage is a problem in its report), and a pool it finds clean must open.
  pmpage::fsck::report before;
  try {
    before = pmpage::fsck::check(scratch());
  } catch (const pmpage::error& e) {
    std::fprintf(stderr, "fsck threw on a readable file: %s\n", e.what());
    std::abort();
  }
  bool opened = false;
  try {
    pmpage::pool p = pmpage::pool::open(scratch());
    opened = true;
    std::size_t n = 0;
    p.for_each_allocated([&](pmpage::page* head, unsigned order) {
      if (pmpage::page_count(head) != 1 || pmpage::compound_order(head) != order) std::abort();
      ++n;
    });
    if (!p.check().empty()) {
      std::fprintf(stderr, "check failed after open: %s\n", p.check().c_str());
      std::abort();
    }
    // The recovered pool must be usable.
    if (pmpage::page* pg = p.alloc_pages(0)) pmpage::put_page(pg);
    if (!p.check().empty()) std::abort();
  } catch (const pmpage::error& e) {
    // Rejected with a message: fine, unless the checker called the pool clean.
    if (!opened && before.readable && before.problems.empty()) {
      std::fprintf(stderr, "fsck found nothing wrong but open refused: %s\n", e.what());
      std::abort();
    }
  }
  if (opened && !before.readable) {
    std::fprintf(stderr, "open accepted a pool the checker could not read\n");
    std::abort();
  }
  return 0;
}
