// bench/bench_malloc.cpp — the general-purpose allocators that volatile pools are compared with
// (issue #12). Compiled twice, because both replace malloc for the whole process and cannot share
// one (and jemalloc cannot be dlopen'ed: it uses static TLS):
//
//   pmpage_bench_mimalloc   linked with Debian's libmimalloc (-DPMPAGE_BENCH_MIMALLOC)
//   pmpage_bench_jemalloc   linked with Debian's libjemalloc (-DPMPAGE_BENCH_JEMALLOC)
//
// Before running anything each program checks that its allocator really serves malloc and
// aligned_alloc (mimalloc: mi_is_in_heap_region on the pointers; jemalloc: its per-thread
// allocation counter moves) and exits 1 if not. The allocator's name and version are in the JSON
// context (malloc.allocator, malloc.version) and in the counter `version` of every row.
//
//   alloc/order0_pair/<allocator>     aligned_alloc(4096, 4096) + free: a 4 KiB-aligned 4 KiB block
//   alloc/order9_pair/<allocator>     aligned_alloc(2 MiB, 2 MiB) + free
//   threads/order0_pair/<allocator>   the order-0 pair on each thread (1, 2 threads; items/s over
//                                     wall time, summed over the threads)
//
// Like pmpage's pairs, nothing touches the memory handed out. None of these allocators gives a
// page descriptor (a refcount, flags, an owner, a pfn): they hand out bytes.
//
//   pmpage_bench_<allocator> [--smoke] [Google Benchmark flags]
#include <benchmark/benchmark.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#if defined(PMPAGE_BENCH_MIMALLOC)
#include <mimalloc.h>
#define ALLOCATOR "mimalloc"
#elif defined(PMPAGE_BENCH_JEMALLOC)
#include <jemalloc/jemalloc.h>
#define ALLOCATOR "jemalloc"
#else
#error "define PMPAGE_BENCH_MIMALLOC or PMPAGE_BENCH_JEMALLOC"
#endif

namespace {

constexpr std::size_t K4 = 4096;
constexpr std::size_t M2 = std::size_t{2} << 20;

double g_version = 0;
bool g_failed = false;

template <class T>
inline __attribute__((always_inline)) void keep(T v) {
  asm volatile("" : : "r"(v));
}

[[noreturn]] void die(const std::string& msg) {
  std::fprintf(stderr, "pmpage_bench_%s: %s\n", ALLOCATOR, msg.c_str());
  std::exit(1);
}

/// Checks that the allocator serves this process's malloc and aligned_alloc; returns its version.
std::string verify_allocator() {
#if defined(PMPAGE_BENCH_MIMALLOC)
  const int v = mi_version();
  void* a = std::malloc(64);
  void* b = std::aligned_alloc(K4, K4);
  void* c = std::aligned_alloc(M2, M2);
  const bool ok = a && b && c && mi_is_in_heap_region(a) && mi_is_in_heap_region(b) && mi_is_in_heap_region(c);
  std::free(a);
  std::free(b);
  std::free(c);
  if (!ok) die("malloc/aligned_alloc are not served by mimalloc (mi_is_in_heap_region is false)");
  g_version = v;
  // MI_MALLOC_VERSION: major * 100 + minor * 10 + patch (209 is 2.0.9).
  return std::to_string(v / 100) + "." + std::to_string(v % 100 / 10) + "." + std::to_string(v % 10) +
         " (mi_version() = " + std::to_string(v) + ")";
#else
  const char* ver = nullptr;
  std::size_t sz = sizeof(ver);
  if (mallctl("version", &ver, &sz, nullptr, 0) != 0 || !ver) die("mallctl(\"version\") failed: not jemalloc");
  // The thread's allocation counter must move when malloc and aligned_alloc allocate.
  std::uint64_t before = 0, after = 0;
  sz = sizeof(before);
  if (mallctl("thread.allocated", &before, &sz, nullptr, 0) == 0) {
    void* a = std::malloc(100000);
    void* c = std::aligned_alloc(M2, M2);
    keep(a);
    keep(c);
    sz = sizeof(after);
    mallctl("thread.allocated", &after, &sz, nullptr, 0);
    std::free(a);
    std::free(c);
    if (after < before + 100000 + M2) die("malloc/aligned_alloc are not served by jemalloc (thread.allocated did not move)");
  }
  unsigned maj = 0, min = 0, pat = 0;
  std::sscanf(ver, "%u.%u.%u", &maj, &min, &pat);
  g_version = maj * 10000.0 + min * 100.0 + pat;
  return ver;
#endif
}

void bm_pair(benchmark::State& state, std::size_t align_size) {
  for (auto _ : state) {
    void* p = std::aligned_alloc(align_size, align_size);
    if (!p) {
      g_failed = true;
      state.SkipWithError("aligned_alloc failed");
      return;
    }
    keep(p);
    std::free(p);
  }
  state.SetItemsProcessed(state.iterations());
  state.counters["version"] = benchmark::Counter(g_version, benchmark::Counter::kAvgThreads);
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<char*> rest{argv[0]};
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--smoke") == 0) continue;  // nothing is sized: the flag only keeps the ctest's form
    if (std::strcmp(argv[i], "--help") == 0 || std::strcmp(argv[i], "-h") == 0) {
      std::printf("usage: pmpage_bench_%s [--smoke] [benchmark flags]\n", ALLOCATOR);
      benchmark::PrintDefaultHelp();
      return 0;
    }
    rest.push_back(argv[i]);
  }
  const std::string version = verify_allocator();
  int rargc = static_cast<int>(rest.size());
  rest.push_back(nullptr);
  benchmark::Initialize(&rargc, rest.data());
  if (benchmark::ReportUnrecognizedArguments(rargc, rest.data())) return 2;
  benchmark::AddCustomContext("malloc.allocator", ALLOCATOR);
  benchmark::AddCustomContext("malloc.version", version);

  benchmark::RegisterBenchmark("threads/order0_pair/" ALLOCATOR, bm_pair, K4)->Threads(1)->Threads(2)->UseRealTime();
  benchmark::RegisterBenchmark("alloc/order0_pair/" ALLOCATOR, bm_pair, K4);
  benchmark::RegisterBenchmark("alloc/order9_pair/" ALLOCATOR, bm_pair, M2);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return g_failed ? 1 : 0;
}
