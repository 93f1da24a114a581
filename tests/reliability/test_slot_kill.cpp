// test_slot_kill.cpp — SIGKILL while several threads legitimately use the same slots and pages.
//
// Issue #18's first two defects, as the bug hunt found them: a child process runs threads that
// publish pages into slots, free them through the slots the moment they appear, take the freed
// pages again, and race each other for the same slots (the losing call is reported as misuse and
// must give its page back); the parent kills it at a random moment, reopens the pool and checks
// every slot the child used: no slot names a free page, no two slots name one page, every
// allocation is named by its owning slot (nothing leaked), and the pool's invariants hold.
// A kill keeps every store made so far (the page cache keeps them), so this covers what power
// failure tests cannot: every instruction boundary, not only fences.
//
// PMPAGE_SLOT_KILLS (default 12) kills per scenario and order; PMPAGE_SLOT_KILL_SEED.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <pmpage/pmpage.hpp>

using namespace pmpage;

namespace {

std::uint64_t env_or(const char* name, std::uint64_t fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::strtoull(v, nullptr, 0) : fallback;
}

constexpr unsigned kSlots = 16;

enum class scenario {
  // Thread A publishes into slots 0..7 (single and bulk calls), thread X frees each as soon as it
  // is filled, thread B publishes into slots 8..15 and frees them (it receives X's pages).
  publish_free_realloc,
  // Two threads publish into overlapping slots (bulk 0..15 against single 8) and free them.
  slot_race,
};

[[noreturn]] void child_body(const std::string& path, scenario sc, unsigned order, int ready_fd) {
  set_misuse_handler(+[](const char*) {});  // the losers of slot races are reported; expected here
  pool p = pool::open(path);
  auto* slots = static_cast<pfn_t*>(p.root());
  std::vector<std::thread> threads;
  auto loop = [](auto body) {
    return [body] {
      for (std::uint64_t i = 0;; ++i) body(i);
    };
  };
  if (sc == scenario::publish_free_realloc) {
    threads.emplace_back(loop([&, order](std::uint64_t i) {
      if (i % 2) {
        pfn_t* list[8];
        for (unsigned k = 0; k < 8; ++k) list[k] = &slots[k];
        bool all_empty = true;
        for (unsigned k = 0; k < 8; ++k) all_empty &= std::atomic_ref<pfn_t>(slots[k]).load() == 0;
        if (all_empty) p.alloc_pages_bulk_to(order, list);
      } else {
        for (unsigned k = 0; k < 8; ++k)
          if (std::atomic_ref<pfn_t>(slots[k]).load() == 0) p.alloc_pages_to(order, &slots[k]);
      }
    }));
    threads.emplace_back(loop([&](std::uint64_t) {
      for (unsigned k = 0; k < 8; ++k)
        if (std::atomic_ref<pfn_t>(slots[k]).load() != 0) p.free_pages_from(&slots[k]);
    }));
    threads.emplace_back(loop([&, order](std::uint64_t i) {
      pfn_t* s = &slots[8 + i % 8];
      if (std::atomic_ref<pfn_t>(*s).load() == 0)
        p.alloc_pages_to(order, s);
      else if (i % 3 == 0)
        p.free_pages_from(s);
    }));
  } else {
    threads.emplace_back(loop([&, order](std::uint64_t) {
      pfn_t* list[kSlots];
      for (unsigned k = 0; k < kSlots; ++k) list[k] = &slots[k];
      p.alloc_pages_bulk_to(order, list);
      while (p.free_pages_bulk_from(list) == -EBUSY) {
      }
    }));
    threads.emplace_back(loop([&, order](std::uint64_t) {
      p.alloc_pages_to(order, &slots[8]);
      p.free_pages_from(&slots[8]);
    }));
  }
  char c = 1;
  (void)!::write(ready_fd, &c, 1);
  for (auto& t : threads) t.join();  // never: the parent kills us
  _exit(0);
}

class SlotKill : public ::testing::TestWithParam<scenario> {};

TEST_P(SlotKill, KilledAtRandomLeavesEverySlotNamingItsOwnAllocatedPageAndNoLeak) {
  const std::string path = "/dev/shm/pmpage-slot-kill-" + std::to_string(::getpid());
  const unsigned kills = unsigned(env_or("PMPAGE_SLOT_KILLS", 12));
  std::mt19937_64 rng(env_or("PMPAGE_SLOT_KILL_SEED", 20261207));
  std::uniform_int_distribution<int> delay_us(5'000, 40'000);
  for (const unsigned order : {0u, 1u, 9u}) {
    SCOPED_TRACE("order " + std::to_string(order));
    ::unlink(path.c_str());
    {
      pool::options o;
      o.size = 64ull << 20;
      pool::create(path, o);
    }
    for (unsigned k = 0; k < kills; ++k) {
      SCOPED_TRACE("kill " + std::to_string(k));
      int ready[2];
      ASSERT_EQ(::pipe(ready), 0);
      const pid_t child = ::fork();
      ASSERT_GE(child, 0);
      if (child == 0) {
        ::close(ready[0]);
        try {
          child_body(path, GetParam(), order, ready[1]);
        } catch (...) {
          _exit(3);
        }
      }
      ::close(ready[1]);
      char c;
      const bool started = ::read(ready[0], &c, 1) == 1;
      ::close(ready[0]);
      if (started) std::this_thread::sleep_for(std::chrono::microseconds(delay_us(rng)));
      ::kill(child, SIGKILL);
      int status = 0;
      ::waitpid(child, &status, 0);
      ASSERT_TRUE(started) << "the child did not start (status " << status << ")";
      ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << "the child ended by itself: " << status;

      pool p = pool::open(path);
      std::string log;
      for (const auto& l : p.recovery_log()) log += "\n  " + l;
      ASSERT_EQ(p.check(), "") << "recovery log:" << log;
      auto* slots = static_cast<pfn_t*>(p.root());
      std::vector<pfn_t*> list;
      for (unsigned s = 0; s < kSlots; ++s) list.push_back(&slots[s]);
      const auto found = p.check_slots(list);
      ASSERT_TRUE(found.clean()) << found.describe() << "\nrecovery log:" << log;
      // Empty the slots for the next child: then nothing may be left allocated.
      for (pfn_t* s : list) ASSERT_EQ(p.free_pages_from(s), 0);
      const pool_stats st = p.stats();
      ASSERT_EQ(st.free_pages, st.total_pages) << "pages allocated with every slot empty: leaked";
    }
  }
  ::unlink(path.c_str());
}

INSTANTIATE_TEST_SUITE_P(Scenarios, SlotKill, ::testing::Values(scenario::publish_free_realloc, scenario::slot_race),
                         [](const auto& info) {
                           return info.param == scenario::publish_free_realloc ? "PublishFreeAndReallocate"
                                                                               : "RaceForTheSameSlots";
                         });

}  // namespace
