// pmpage_mp_child — a separate program the multi-process tests exec (test_multiprocess.cpp), so
// that each "process" is a real one with its own address space and nothing inherited but its
// arguments. It reports on stdout, one line per event, and waits on stdin: its parent ends it by
// closing the pipe (a normal exit: detach) or by SIGKILL.
//
//   pmpage_mp_child attach <name> <size> <mode>
//     mode hold       attach, print "slot=<n> initialised=<0|1> generation=<g> value=<v>", wait
//                     for EOF on stdin, detach, exit 0. An initialiser stores 42 at the first
//                     word after the header; value is that word as this process reads it.
//     mode init-hang  attach with an initialiser that prints "initialising" and never returns
//                     (the parent kills it there).
//     mode fork-hold  attach, fork a child that sleeps, print "slot=<n> child=<pid>", wait for EOF.
//   On an error: "error=<errno> <message>", exit 1.
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "pmpage/types.hpp"
#include "segment.hpp"

namespace {

void wait_for_eof() {
  char c;
  while (::read(0, &c, 1) > 0) {
  }
}

std::uint64_t* first_word(pmpage::detail::shared_segment& s) {
  return reinterpret_cast<std::uint64_t*>(static_cast<char*>(s.base()) + pmpage::detail::shared_segment::header_bytes());
}

}  // namespace

int main(int argc, char** argv) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  if (argc != 5 || std::string(argv[1]) != "attach") {
    std::fprintf(stderr, "usage: %s attach <name> <size> <hold|init-hang|fork-hold>\n", argv[0]);
    return 2;
  }
  const std::string name = argv[2], mode = argv[4];
  const std::uint64_t size = std::strtoull(argv[3], nullptr, 0);
  try {
    pmpage::detail::shared_segment seg(name, size, [&](pmpage::detail::shared_segment& s) {
      if (mode == "init-hang") {
        std::printf("initialising\n");
        for (;;) ::pause();
      }
      *first_word(s) = 42;
    });
    if (mode == "fork-hold") {
      // The report waits until the child runs: fork()'s child handlers (which drop the child's
      // copy of the segment's descriptor) have run when fork() returns in it.
      int ready[2];
      if (::pipe(ready) != 0) return 3;
      const pid_t child = ::fork();
      if (child == 0) {
        if (::write(ready[1], "r", 1) != 1) _exit(3);
        for (;;) ::pause();
      }
      char c;
      if (::read(ready[0], &c, 1) != 1) return 3;
      std::printf("slot=%u child=%d\n", seg.slot(), int(child));
    } else {
      std::printf("slot=%u initialised=%d generation=%llu value=%llu\n", seg.slot(), seg.initialised_here() ? 1 : 0,
                  static_cast<unsigned long long>(seg.generation()), static_cast<unsigned long long>(*first_word(seg)));
    }
    wait_for_eof();
  } catch (const pmpage::error& e) {
    std::printf("error=%d %s\n", e.code().value(), e.what());
    return 1;
  }
  return 0;
}
