// tools/pmpage/grow.cpp — `pmpage grow PATH --size SIZE [--preallocate] [--json]`: pool::grow on a
// closed pool, then prints what it added.
#include <iostream>

#include "pmpage/pool.hpp"
#include "tool.hpp"

namespace pmpage::tool {

namespace {
struct grow_args {
  std::string path;
  std::uint64_t size = 0;
  bool preallocate = false;
  bool json = false;
};
}  // namespace

command add_grow(CLI::App& app) {
  auto a = std::make_shared<grow_args>();
  CLI::App* sub = app.add_subcommand(
      "grow", "Grow the closed pool at PATH in place to SIZE bytes: whole 2 MiB regions are added at the end, "
              "up to its capacity (--max-size at create; without it, the slack of its tables). Existing pages keep their pfns. Writes.");
  add_path(*sub, a->path);
  sub->add_option("-s,--size", a->size, "the new size in bytes, with a suffix: 64M, 1G (larger than the pool's)")
      ->required()
      ->transform(CLI::AsSizeValue(false))
      ->transform(size_bytes())
      ->check(CLI::Range(std::uint64_t{1}, std::uint64_t{1} << 60, "1 .. 1 EiB"));
  sub->add_flag("--preallocate", a->preallocate, "reserve the new part of the file's blocks now (posix_fallocate)");
  sub->add_flag("--json", a->json, "print the result as one JSON object");
  sub->footer(
      "Crash-atomic: an interrupted grow leaves the old size or the new one. The pool must be closed everywhere; "
      "device DAX cannot grow. `pmpage info` shows how far a pool can grow (\"can grow to\").\n"
      "Exit status: 0 grown, 8 not grown (the message says why: not larger, beyond the capacity or at it, "
      "open, device DAX), 16 usage error.");

  return {sub, [a] {
            pool::grow_options o;
            o.preallocate = a->preallocate;
            const pool::grow_result r = with_option_names([&] { return pool::grow(a->path, a->size, o); });
            if (a->json) {
              json j;
              j["path"] = a->path;
              j["old_regions"] = r.old_regions;
              j["new_regions"] = r.new_regions;
              j["max_regions"] = r.max_regions;
              j["device_size"] = r.device_size;
              std::cout << j.dump(2) << '\n';
              return EXIT_CLEAN;
            }
            std::cout << "pmpage: grew " << a->path << " to " << human_bytes(r.device_size) << ": " << r.old_regions
                      << " -> " << r.new_regions << " regions of 2 MiB (at most " << r.max_regions << ")\n";
            return EXIT_CLEAN;
          }};
}

}  // namespace pmpage::tool
