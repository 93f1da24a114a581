// tools/pmpage/main.cpp — pmpage(1): the command line of the pool tool (docs/cli.md, the man
// page docs/man/pmpage.1). Parses with CLI11, runs the chosen subcommand and turns every way of
// failing into fsck(8)'s exit codes, so a script can tell damage (4) from a pool it could not
// even open (8) from its own mistake (16).
#include <cstdio>
#include <exception>
#include <iostream>
#include <vector>

#include "tool.hpp"

namespace {

constexpr const char* FOOTER = R"(Exit status (fsck's convention):
  0   success; check: no damage (recovery's leftovers of an interrupted operation are not damage)
  1   check --repair changed the pool: all damage repaired (or only recovery's leftovers cleared)
  4   damage left uncorrected (check), or no readable pool (info, map)
  8   operational error: cannot open the path, the pool is open for writing in another process,
      the path exists (create without --force), no readable pool (dump), region out of
      range (dump), I/O error, gnuplot missing for map --png
  16  usage error: bad command line

Sizes take binary suffixes, case-insensitive: K, M, G, T, P (and KiB, MiB... ; 1K = 1024).
Nothing but `create`, `check --repair`, `clear-bad-block`, `grow` and `reidentify` ever writes to a pool.
See pmpage(1) and docs/cli.md.)";

}  // namespace

int main(int argc, char** argv) {
  using namespace pmpage::tool;
  CLI::App app{"pmpage: create, describe, check, repair and draw persistent-memory page pools\n"
               "(regular files or /dev/dax devices).",
               "pmpage"};
  app.set_version_flag("--version", std::string("pmpage ") + PMPAGE_VERSION);
  app.require_subcommand(1, 1);
  app.footer(FOOTER);
  app.fallthrough(false);

  const std::vector<command> commands = {add_create(app), add_info(app), add_check(app),
                                         add_map(app), add_dump(app), add_clear_bad_block(app), add_reidentify(app),
                                         add_grow(app)};
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // --help and --version are "errors" with exit code 0; everything else is a usage error.
    const int printed = app.exit(e);
    return printed == 0 ? EXIT_CLEAN : EXIT_USAGE;
  }

  try {
    for (const command& c : commands)
      if (c.app->parsed()) return c.run();
    return EXIT_USAGE;  // unreachable: require_subcommand(1)
  } catch (const pmpage::error& e) {
    // The library's messages name the path and the reason ("pool is already open for writing
    // (by another process or another handle)"); add what an operator does about the common ones.
    std::cerr << e.what() << '\n';
    if (e.code().value() == EEXIST) std::cerr << "pmpage: use --force to format over it\n";
    return EXIT_OPERATIONAL;
  } catch (const tool_error& e) {
    std::cerr << "pmpage: " << e.what() << '\n';
    return EXIT_OPERATIONAL;
  } catch (const std::exception& e) {
    std::cerr << "pmpage: " << e.what() << '\n';
    return EXIT_OPERATIONAL;
  }
}
