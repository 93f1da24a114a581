// cpu_pinning.hpp — test helpers that pin threads to the CPUs this process may use, so that a
// test can put two threads on the same per-CPU cache or on different ones. Shared by the unit
// tests and the reliability tests.
#pragma once

#include <pthread.h>
#include <sched.h>

#include <cstddef>
#include <functional>
#include <thread>
#include <vector>

namespace pmpage::testing {

// The CPUs this process may run on (its affinity mask), in order.
inline std::vector<int> allowed_cpus() {
  std::vector<int> cpus;
  cpu_set_t set;
  CPU_ZERO(&set);
  if (::sched_getaffinity(0, sizeof set, &set) == 0)
    for (int c = 0; c < CPU_SETSIZE; ++c)
      if (CPU_ISSET(c, &set)) cpus.push_back(c);
  if (cpus.empty()) cpus.push_back(0);
  return cpus;
}

// The i-th allowed CPU (wrapping: on a one-CPU machine every index is that CPU).
inline int nth_cpu(std::size_t i) {
  static const std::vector<int> cpus = allowed_cpus();
  return cpus[i % cpus.size()];
}

// Pins the calling thread to one CPU; false if the system refuses (the test then runs unpinned:
// everything it asserts must hold either way, pinning only makes the cache paths predictable).
inline bool pin_this_thread(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  return ::pthread_setaffinity_np(::pthread_self(), sizeof set, &set) == 0;
}

// Runs f on a new thread pinned to `cpu` and waits for it (the test's own thread keeps its mask).
inline void run_on_cpu(int cpu, const std::function<void()>& f) {
  std::thread t([&] {
    pin_this_thread(cpu);
    f();
  });
  t.join();
}

}  // namespace pmpage::testing
