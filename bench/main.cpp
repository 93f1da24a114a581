// bench/main.cpp — pmpage_bench: pmpage against the kernel's flat memmap, PMDK libpmemobj and the
// hardware floors, in one process, on one device.
//
//   pmpage_bench [--device=PATH] [--scratch=DIR] [--smoke] [Google Benchmark flags]
//
// --device (or PMPAGE_BENCH_DEVICE): a directory (e.g. an fsdax mount: pool files are created in
// it), a file, or /dev/daxX.Y (formatted in turn for pmpage and libpmemobj — its data is lost).
// Without one, pools are files in /dev/shm and libpmem is forced to flush with clwb/clflushopt +
// sfence (PMEM_IS_PMEM_FORCE=1), so a flush costs what it costs on pmem. Size sweeps always use
// sparse files in --scratch (default: the device directory, else /dev/shm).
// --smoke: tiny sizes and iteration counts (the ctest). Exit status is 1 if any benchmark failed.
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "common.hpp"

namespace {

bool starts_with(const char* s, const char* prefix) { return std::strncmp(s, prefix, std::strlen(prefix)) == 0; }

[[noreturn]] void usage_error(const std::string& msg) {
  std::fprintf(stderr, "pmpage_bench: %s\n", msg.c_str());
  std::exit(2);
}

}  // namespace

int main(int argc, char** argv) {
  using bench::cfg;
  std::string device, scratch;
  if (const char* e = std::getenv("PMPAGE_BENCH_DEVICE")) device = e;
  bool smoke = false;
  std::vector<char*> rest{argv[0]};
  for (int i = 1; i < argc; ++i) {
    if (starts_with(argv[i], "--device=")) {
      device = argv[i] + 9;
    } else if (starts_with(argv[i], "--scratch=")) {
      scratch = argv[i] + 10;
    } else if (std::strcmp(argv[i], "--smoke") == 0) {
      smoke = true;
    } else if (std::strcmp(argv[i], "--help") == 0 || std::strcmp(argv[i], "-h") == 0) {
      std::printf(
          "usage: pmpage_bench [--device=PATH] [--scratch=DIR] [--smoke] [benchmark flags]\n"
          "  --device=PATH  directory (fsdax mount), file or /dev/daxX.Y to benchmark on\n"
          "                 (env PMPAGE_BENCH_DEVICE); default: emulated pmem in /dev/shm\n"
          "  --scratch=DIR  where sparse pools of the size sweep go (default: device dir or /dev/shm)\n"
          "  --smoke        tiny sizes and iterations (used by ctest)\n");
      benchmark::PrintDefaultHelp();
      return 0;
    } else {
      rest.push_back(argv[i]);
    }
  }

  // Emulated pmem: libpmem decides how to flush when it initialises, so the variable must be in
  // the environment before the library is loaded — re-execute ourselves once with it set.
  if (device.empty() && !std::getenv("PMEM_IS_PMEM_FORCE")) {
    setenv("PMEM_IS_PMEM_FORCE", "1", 1);
    execv("/proc/self/exe", argv);
    std::perror("pmpage_bench: re-exec with PMEM_IS_PMEM_FORCE=1");
    return 2;
  }

  auto& c = cfg();
  c.smoke = smoke;
  if (smoke) c.workload_bytes = std::uint64_t{256} << 20;
  if (device.empty()) {
    c.emulated = true;
  } else {
    struct stat st {};
    if (stat(device.c_str(), &st) != 0) usage_error("cannot stat device " + device + ": " + std::strerror(errno));
    if (S_ISDIR(st.st_mode)) {
      c.dir = device;
    } else if (S_ISREG(st.st_mode) || S_ISCHR(st.st_mode)) {
      c.device = device;
      c.single_device = true;
    } else {
      usage_error(device + " is neither a directory, a regular file nor a character device");
    }
  }
  if (!scratch.empty()) c.dir = scratch;
  if (c.dir.empty()) {
    c.dir = "/dev/shm/pmpage-bench." + std::to_string(getpid());
    std::error_code ec;
    std::filesystem::create_directories(c.dir, ec);
    if (ec) usage_error("cannot create " + c.dir.string() + ": " + ec.message());
    c.own_dir = true;
  }

  int rargc = static_cast<int>(rest.size());
  rest.push_back(nullptr);
  benchmark::Initialize(&rargc, rest.data());
  if (benchmark::ReportUnrecognizedArguments(rargc, rest.data())) return 2;

  benchmark::AddCustomContext("pmpage.device", c.single_device ? c.device.string()
                                                : c.emulated ? std::string("emulated (/dev/shm, PMEM_IS_PMEM_FORCE=1)")
                                                             : c.dir.string());
  benchmark::AddCustomContext("pmpage.scratch", c.dir.string());
  benchmark::AddCustomContext("pmpage.smoke", smoke ? "1" : "0");
  // The volatile workload pool (anonymous memory: nothing is touched until pages are used) is
  // created here so that the JSON context says what memory it got.
  try {
    benchmark::AddCustomContext("pmpage.volatile_pool", bench::volatile_pool().memory_description());
  } catch (const std::exception& e) {
    benchmark::AddCustomContext("pmpage.volatile_pool", std::string("create_volatile failed: ") + e.what());
  }

  // Thread scaling first: it needs both CPUs free, which on a shared machine is likeliest at start.
  bench::register_threads();
  bench::register_translation();
  bench::register_c_api();
  bench::register_alloc();
  bench::register_pmemobj();
  bench::register_memory();

  int rc = 0;
  try {
    benchmark::RunSpecifiedBenchmarks();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "pmpage_bench: %s\n", e.what());
    rc = 1;
  }
  bench::cleanup();
  benchmark::Shutdown();
  if (bench::any_failed()) rc = 1;
  return rc;
}
