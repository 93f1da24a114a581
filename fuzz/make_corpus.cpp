// make_corpus.cpp — writes seed inputs for fuzz_open: the metadata prefix of pools in various
// states (fresh, split regions, multi-region pages, a live intent, slot-owned pages). Run by scripts/fuzz.sh when
// the corpus directory is empty; the committed corpus came from it.
#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include <pmpage/pmpage.hpp>

namespace {
void dump(const std::string& pool_path, const std::string& out, std::size_t prefix) {
  std::vector<char> buf(prefix);
  const int fd = ::open(pool_path.c_str(), O_RDONLY);
  if (fd < 0 || ::pread(fd, buf.data(), prefix, 0) != ssize_t(prefix)) std::exit(1);
  ::close(fd);
  // Trailing zeros carry no information; keep inputs small.
  std::size_t n = prefix;
  while (n > 0 && buf[n - 1] == 0) --n;
  FILE* f = std::fopen(out.c_str(), "wb");
  std::fwrite(buf.data(), 1, n, f);
  std::fclose(f);
}
}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) return 2;
  const std::string dir = argv[1];
  const std::string path = "/dev/shm/pmpage-corpus-" + std::to_string(::getpid());
  setenv("PMEM_IS_PMEM_FORCE", "1", 1);
  for (int variant = 0; variant < 6; ++variant) {
    ::unlink(path.c_str());
    pmpage::pool::options o;
    o.size = 12u << 20;
    {
      auto p = pmpage::pool::create(path, o);
      auto* slots = static_cast<pmpage::pfn_t*>(p.root());
      if (variant >= 1) {
        p.alloc_pages(0);
        p.alloc_pages(3);
        p.alloc_pages_to(5, &slots[0]);
      }
      if (variant >= 2) {
        p.alloc_pages(9);
        p.alloc_pages(10);
      }
      if (variant == 3) {
        auto* h = p.alloc_pages(9);
        if (h) pmpage::split_huge_page(h);
      }
      if (variant == 4) {  // slot ownership: an owned huge page split into 512 owned pages
        p.free_pages_from(&slots[0]);
        auto* h = p.alloc_pages_to(9, &slots[0]);
        if (h) pmpage::split_huge_page_to(h, slots);
      }
      if (variant == 5) {  // owned pages of several orders, one moved to another slot
        p.alloc_pages_to(0, &slots[1]);
        p.alloc_pages_to(10, &slots[2]);
        p.move_pages_owner(&slots[1], &slots[7]);
      }
    }
    dump(path, dir + "/seed-" + std::to_string(variant), 64 << 10);
  }
  ::unlink(path.c_str());
  return 0;
}
