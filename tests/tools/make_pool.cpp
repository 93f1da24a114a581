// tests/tools/make_pool.cpp — `pmpage_make_pool KIND PATH SIZE_MIB`: a pool in a known state
// (pools.hpp), for trying the tool by hand and for the examples of docs/cli.md.
#include <cstdio>
#include <cstdlib>
#include <exception>

#include "pools.hpp"

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: %s empty|healthy|full|fragmented PATH SIZE_MIB\n", argv[0]);
    return 16;
  }
  try {
    pmtool::make_pool(argv[1], argv[2], std::strtoull(argv[3], nullptr, 10) << 20);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 8;
  }
  return 0;
}
