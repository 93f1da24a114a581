// tools/pmpage/reidentify.cpp — `pmpage reidentify PATH [--pfn-base PFN] [--json]`: gives a closed
// pool a new identity (pfn base and uuid) and rewrites the slots that name its pages, so that it
// can be open beside a pool whose pfns it shares (a copy of it, or an independently created pool
// that drew an overlapping pfn base). fsck::reidentify does the work; this prints what an
// operator or the engine needs next: the two bases that translate any other stored pfn.
#include <iostream>

#include "tool.hpp"

namespace pmpage::tool {

namespace {
struct reidentify_args {
  std::string path;
  std::string base;  // empty: random
  bool json = false;
};
}  // namespace

command add_reidentify(CLI::App& app) {
  auto a = std::make_shared<reidentify_args>();
  CLI::App* sub = app.add_subcommand(
      "reidentify", "Give the closed pool at PATH a new pfn base and uuid, rewriting the slots that own its pages "
                    "(so a copy, or a pool whose pfns collide with another's, opens beside it). Writes.");
  add_path(*sub, a->path);
  sub->add_option("--pfn-base", a->base,
                  "the new pfn base (decimal or 0x hex: a multiple of 0x10000000 from 0x100000000 up); "
                  "default: a random one");
  sub->add_flag("--json", a->json, "print the result as one JSON object");
  sub->footer(
      "Only slots the library knows (those that own a page: alloc_pages_to, split_huge_page_to, "
      "move_pages_owner, adopt_pages) are rewritten; pfns the engine stored elsewhere keep their old values and "
      "must be translated by the engine: new = old - old_start_pfn + new_start_pfn.\n"
      "Exit status: 0 re-identified, 8 not (the message says why; nothing was changed unless it says to run it "
      "again), 16 usage error.");

  return {sub, [a] {
            fsck::reidentify_options o;
            if (!a->base.empty()) {
              std::size_t used = 0;
              try {
                o.new_start_pfn = std::stoull(a->base, &used, 0);
              } catch (const std::exception&) {
                used = 0;
              }
              if (used != a->base.size() || o.new_start_pfn == 0) {
                std::cerr << "pmpage reidentify: --pfn-base: not a number: " << a->base << '\n';
                return EXIT_USAGE;
              }
            }
            const fsck::reidentify_result r = fsck::reidentify(a->path, o);
            if (a->json) {
              json j;
              j["path"] = a->path;
              j["old_start_pfn"] = r.old_start_pfn;
              j["new_start_pfn"] = r.new_start_pfn;
              j["uuid"] = r.uuid;
              j["slots_rewritten"] = r.slots_rewritten;
              j["old_format_major"] = r.old_format_major;
              j["resumed"] = r.resumed;
              std::cout << j.dump(2) << '\n';
              return EXIT_CLEAN;
            }
            std::cout << "pmpage: " << (r.resumed ? "finished the interrupted re-identification of " : "re-identified ")
                      << a->path << ": pfn base " << hex(r.old_start_pfn) << " -> " << hex(r.new_start_pfn) << ", uuid "
                      << r.uuid << ", " << r.slots_rewritten << " slot" << (r.slots_rewritten == 1 ? "" : "s")
                      << " rewritten" << (r.old_format_major != 3 ? " (format 2.x -> 3.0: older libraries no longer open it)" : "")
                      << "\npmpage: pfns stored outside slots must be translated by the engine: new = old - "
                      << hex(r.old_start_pfn) << " + " << hex(r.new_start_pfn) << '\n';
            return EXIT_CLEAN;
          }};
}

}  // namespace pmpage::tool
