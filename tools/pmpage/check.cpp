// tools/pmpage/check.cpp — `pmpage check PATH [--repair] [--json]`: fsck for a pool. Read-only
// unless --repair (the library opens the file O_RDONLY then); the exit code is the report's,
// in fsck(8)'s convention, so `pmpage check` slots into the scripts that run fsck.
#include <iostream>

#include "tool.hpp"

namespace pmpage::tool {

namespace {

struct check_args {
  std::string path;
  bool repair = false;
  bool json = false;
  bad_block_args bad;
};

struct counts {
  std::size_t damage = 0, recovery = 0, repaired = 0, uncorrected = 0, repairable = 0;
};

counts count(const fsck::report& r) {
  counts c;
  for (const auto& p : r.problems) {
    if (p.recovery) {
      ++c.recovery;
    } else {
      ++c.damage;
      if (p.repairable() && !p.repaired) ++c.repairable;
    }
    c.repaired += p.repaired;
  }
  c.uncorrected = r.uncorrected();
  return c;
}

void print_problem(const fsck::problem& p, bool repair_mode) {
  std::cout << '[' << p.rule << "] " << describe_location(p) << '\n';
  std::cout << "    problem: " << p.what << '\n';
  if (p.recovery)
    std::cout << "    recovery's leftover of an interrupted operation: pool::open completes it by itself\n";
  if (p.repaired)
    std::cout << "    repaired: " << p.repair << '\n';
  else if (p.repairable() && repair_mode && p.recovery)
    std::cout << "    not done: recovery runs only once no damage is left; it will: " << p.repair << '\n';
  else if (p.repairable())
    std::cout << (repair_mode ? "    not repaired: " : "    repair: ") << p.repair << '\n';
  else if (!p.recovery && p.structure == "bad block")
    std::cout << "    a media error: check cannot repair it; what can be done is under the bad block below\n";
  else if (!p.recovery && p.structure == "file")
    std::cout << "    not repaired by check: left for a human\n";
  else if (!p.recovery)
    std::cout << "    cannot be repaired without losing an allocation: left for a human\n";
}

}  // namespace

command add_check(CLI::App& app) {
  auto a = std::make_shared<check_args>();
  CLI::App* sub = app.add_subcommand(
      "check", "Check every metadata structure of the pool at PATH against the format's rules. "
               "Read-only unless --repair.");
  add_path(*sub, a->path);
  sub->add_flag("--repair", a->repair,
                "repair what can be repaired without losing an allocation, then run recovery and "
                "check again (opens PATH read-write and locks it exclusively)");
  sub->add_flag("--json", a->json, "print one JSON object: problems, counts, bad_blocks, exit_code (docs/cli.md)");
  add_bad_block_options(*sub, a->bad);
  sub->footer("Exit status: 0 no damage (recovery's leftovers are not damage), 1 --repair changed the "
              "pool: all damage repaired, or only recovery's leftovers cleared, 4 damage left uncorrected, 8 operational error (cannot open, pool open "
              "in another process), 16 usage error.\nProgress goes to stderr when the check runs over "
              "a second and stderr is a terminal.");
  return {sub, [a] {
            fsck::options o;
            o.repair = a->repair;
            apply_bad_block_options(a->bad, o);
            const fsck::report r = run_check(a->path, o);
            const counts c = count(r);
            const int code = r.exit_code();
            if (a->json) {
              json problems = json::array();
              for (const auto& p : r.problems) problems.push_back(problem_json(p));
              json j = {
                  {"path", r.path},
                  {"readable", r.readable},
                  {"repair", a->repair},
                  {"problems", problems},
                  {"counts",
                   {{"problems", r.problems.size()},
                    {"damage", c.damage},
                    {"recovery", c.recovery},
                    {"repaired", c.repaired},
                    {"uncorrected", c.uncorrected}}},
                  {"bad_blocks", bad_blocks_json(r)},
                  {"exit_code", code},
              };
              std::cout << j.dump(2) << '\n';
              return code;
            }
            for (const auto& p : r.problems) {
              print_problem(p, a->repair);
              std::cout << '\n';
            }
            if (!r.bad_blocks.empty()) {
              print_bad_blocks(r);
              std::cout << '\n';
            }
            std::cout << "pmpage check: " << r.path << ": ";
            if (r.problems.empty()) {
              std::cout << "clean";
            } else {
              if (c.damage)
                std::cout << c.damage << " damaged structure" << (c.damage == 1 ? "" : "s");
              else
                std::cout << "no damage";
              if (c.repaired) std::cout << ", " << c.repaired << " repaired";
              if (c.uncorrected) std::cout << ", " << c.uncorrected << " left uncorrected";
              if (c.recovery)
                std::cout << "; " << c.recovery << " leftover" << (c.recovery == 1 ? "" : "s")
                          << " of an interrupted operation (recovery's work, not damage)";
            }
            if (!r.bad_blocks.empty()) {
              std::size_t quarantined = 0, poisoned = 0;
              for (const auto& f : r.bad_blocks) {
                quarantined += f.what == fsck::bad_block_finding::kind::free;
                poisoned += f.what == fsck::bad_block_finding::kind::allocated;
              }
              std::cout << "; " << r.bad_blocks.size() << " bad block finding" << (r.bad_blocks.size() == 1 ? "" : "s")
                        << " (" << poisoned << " allocated page" << (poisoned == 1 ? "" : "s") << " poisoned, "
                        << quarantined << " free page" << (quarantined == 1 ? "" : "s") << " quarantined at open)";
            }
            std::cout << " (exit " << code << ")\n";
            if (!a->repair && c.repairable)
              std::cout << "pmpage check: " << c.repairable << " of the problems can be repaired: run "
                        << "`pmpage check --repair " << r.path << "`\n";
            return code;
          }};
}

}  // namespace pmpage::tool
