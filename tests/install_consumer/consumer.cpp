// Built against the installed package by tests/install_test.sh.
#include <pmpage/pmpage.hpp>

#include <cstdio>
#include <string>
#include <unistd.h>

int main() {
  const std::string path = "/dev/shm/pmpage-consumer-" + std::to_string(::getpid());
  pmpage::pool::options opts;
  opts.size = 16ull << 20;
  {
    auto pool = pmpage::pool::create(path, opts);
    pmpage::page* p = pool.alloc_pages(0);
    if (!p || pmpage::page_to_pfn(p) < pool.start_pfn()) return 1;
    pmpage::put_page(p);
  }
  ::unlink(path.c_str());
  std::puts("consumer ok");
  return 0;
}
