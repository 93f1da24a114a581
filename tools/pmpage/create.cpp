// tools/pmpage/create.cpp — `pmpage create PATH --size SIZE [--root-size SIZE] [--max-size SIZE]
// [--preallocate] [--force]`: pool::create, then close. With `check --repair`, `grow` and `reidentify`, the subcommands that write.
#include <cctype>
#include <filesystem>
#include <iostream>

#include "pmpage/pool.hpp"
#include "tool.hpp"

namespace pmpage::tool {

namespace {
struct create_args {
  std::string path;
  std::uint64_t size = 0;
  std::uint64_t root_size = 4096;
  bool preallocate = false;
  bool force = false;
  std::uint64_t max_size = 0;
};
}  // namespace

/// A size: digits with an optional binary suffix, never negative, at most 2^60 bytes (1 EiB).
/// AsSizeValue alone turns "-1" into 2^64 - 1 and lets an overflow through.
/// Added with transform() after AsSizeValue, so that it runs first (CLI11 runs transforms before
/// checks, the last added first): AsSizeValue would read "-5M" as 2^64 - 5 and report an overflow.
CLI::Validator size_bytes() {
  return CLI::Validator(
      [](std::string& s) -> std::string {
        if (!s.empty() && s[0] == '-') return "size must be positive (digits with an optional suffix: 64M, 1G)";
        if (s.empty() || !std::isdigit(static_cast<unsigned char>(s[0]))) return "a size is digits with an optional suffix (64M, 1G)";
        std::string digits = s.substr(0, s.find_first_not_of("0123456789"));
        if (digits.size() > 19) return "size too large";
        return {};
      },
      "SIZE");
}

command add_create(CLI::App& app) {
  auto a = std::make_shared<create_args>();
  CLI::App* sub = app.add_subcommand("create", "Format PATH as a new pool (it writes, as `check --repair` "
                                               "and `reidentify` do).");
  add_path(*sub, a->path);
  sub->add_option("-s,--size", a->size,
                  "bytes of the pool, with a suffix: 64M, 1G, 2T (1K = 1024). Required for a new file; "
                  "an existing file is grown to it (0 or absent: its current size); ignored for "
                  "/dev/dax (the whole device is used)")
      ->transform(CLI::AsSizeValue(false))
      ->transform(size_bytes())
      ->check(CLI::Range(std::uint64_t{0}, std::uint64_t{1} << 60, "at most 1 EiB"));
  sub->add_option("--root-size", a->root_size,
                  "bytes of the persistent root area, rounded up to 4 KiB (4K .. 1G)")
      ->transform(CLI::AsSizeValue(false))
      ->transform(size_bytes())
      ->check(CLI::Range(std::uint64_t{1}, std::uint64_t{1} << 30, "4K .. 1G"))
      ->capture_default_str();
  sub->add_option("--max-size", a->max_size,
                  "bytes the pool may later grow to with `pmpage grow` (its tables are laid out for it now; "
                  "a sparse file pays 264 B per 2 MiB of it, and pmpage before 0.3 cannot open the pool); "
                  "default: no room to grow")
      ->transform(CLI::AsSizeValue(false))
      ->transform(size_bytes())
      ->check(CLI::Range(std::uint64_t{0}, std::uint64_t{1} << 60, "at most 1 EiB"));
  sub->add_flag("--preallocate", a->preallocate,
                "reserve the file's blocks now (posix_fallocate), so a full file system fails here "
                "rather than on a later store");
  sub->add_flag("-f,--force", a->force,
                "format over an existing pool or other data (without it only a blank file or an "
                "interrupted creation is formatted)");
  sub->footer("Exit status: 0 created, 8 not created (the message says why), 16 usage error.");

  return {sub, [a] {
            // A new file has no size to keep: the command line is incomplete (16), not a failure of
            // the pool (8). An existing file (or device) keeps or grows its size, as documented.
            std::error_code ec;
            if (a->size == 0 && !std::filesystem::exists(a->path, ec) && !ec) {
              std::cerr << "pmpage create: --size is required for a new file (" << a->path << " does not exist)\n"
                        << "Run with --help for more information.\n";
              return EXIT_USAGE;
            }
            pool::options o;
            o.size = a->size;
            o.root_size = a->root_size;
            o.preallocate = a->preallocate;
            o.overwrite = a->force;
            o.max_size = a->max_size;
            pool p = with_option_names([&] { return pool::create(a->path, o); });
            const pool_stats s = p.stats();
            const pfn_t start = p.start_pfn(), end = p.end_pfn();
            const std::size_t root = p.root_size();
            p.close();
            // The file's size (what --size asked for; what info calls the device size), then what
            // of it holds pages: the mapped length (metadata plus whole regions) is neither.
            std::error_code fec;
            const std::uint64_t file = std::filesystem::file_size(a->path, fec);
            std::cout << "pmpage: created " << a->path << ": " << (fec ? std::string("") : human_bytes(file) + ", ")
                      << s.total_regions << " regions of 2 MiB (" << human_bytes(s.total_pages * PAGE_SIZE)
                      << " of pages), root area " << human_bytes(root) << ", pfns " << hex(start) << ".."
                      << hex(end - 1) << '\n';
            return EXIT_CLEAN;
          }};
}

}  // namespace pmpage::tool
