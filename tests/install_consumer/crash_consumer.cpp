// Built against the installed package by tests/install_test.sh: links pmpage_testing and runs a
// tiny crash test (a counter in the root, persisted once per increment).
#include <pmpage/pmpage.hpp>
#include <pmpage/testing.hpp>

#include <cstdio>
#include <filesystem>
#include <string>
#include <unistd.h>

int main() {
  const std::string path = "/dev/shm/pmpage-crash-consumer-" + std::to_string(::getpid());
  pmpage::pool::options opts;
  opts.size = 8ull << 20;
  pmpage::pool::create(path, opts).close();
  const auto rep = pmpage::testing::run_crash_test(
      path, {},
      [&](const std::shared_ptr<pmpage::persistence>& device) {
        pmpage::pool::open_options oo;
        oo.backend = device;
        auto pool = pmpage::pool::open(path, oo);
        auto* counter = static_cast<std::uint64_t*>(pool.root());
        for (int i = 0; i < 3; ++i) {
          *counter += 1;
          pool.persist(counter, sizeof *counter);
        }
      },
      [](const std::filesystem::path& image, const pmpage::testing::crash_point& at) -> std::string {
        auto pool = pmpage::pool::open(image);
        const auto n = *static_cast<const std::uint64_t*>(pool.root());
        if (n > 3 || (at.fence == 0 && n != 3)) return "counter is " + std::to_string(n);
        return {};
      });
  std::filesystem::remove(path);
  if (!rep.ok() || rep.images == 0) {
    std::fputs(rep.describe().c_str(), stderr);
    return 1;
  }
  std::printf("crash consumer ok: %zu images\n", rep.images);
  return 0;
}
