// tools/pmpage/info.cpp — `pmpage info PATH [--json]`: what a pool is and holds, read-only. The
// figures are fsck::check's (read without opening the pool, so a damaged pool is described too);
// the JSON fields are documented in docs/cli.md and held to it by tests/tools.
#include <ctime>
#include <iomanip>
#include <iostream>

#include "tool.hpp"

namespace pmpage::tool {

namespace {

struct info_args {
  std::string path;
  bool json = false;
  bad_block_args bad;
};

// Labels of report::split_fullness, in its order.
constexpr const char* FULLNESS_KEYS[6] = {"empty", "1-127", "128-255", "256-383", "384-511", "full"};

std::string format_time(std::uint64_t ns) {
  if (ns == 0) return "unknown";
  const std::time_t t = std::time_t(ns / 1'000'000'000);
  std::tm tm{};
  ::gmtime_r(&t, &tm);
  char buf[40];
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S UTC", &tm);
  return buf;
}

std::string percent(std::uint64_t part, std::uint64_t whole) {
  if (whole == 0) return "";
  char buf[16];
  std::snprintf(buf, sizeof buf, " (%.1f%%)", 100.0 * double(part) / double(whole));
  return buf;
}

json info_json(const fsck::report& r) {
  json fullness = json::object();
  for (unsigned i = 0; i < 6; ++i) fullness[FULLNESS_KEYS[i]] = r.split_fullness[i];
  json problems = json::array();
  std::size_t recovery = 0;
  for (const auto& p : r.problems) {
    problems.push_back(problem_json(p));
    recovery += p.recovery;
  }
  return {
      {"path", r.path},
      {"file_size", r.file_size},
      {"is_device_dax", r.is_device_dax},
      {"readable", r.readable},
      {"format_version", std::to_string(r.format_major) + "." + std::to_string(r.format_minor)},
      {"format_major", r.format_major},
      {"format_minor", r.format_minor},
      {"uuid", r.uuid},
      {"create_time_ns", r.create_time_ns},
      {"section_id", r.section_id},
      {"start_pfn", r.start_pfn},
      {"end_pfn", r.end_pfn},
      {"device_size", r.device_size},
      {"nr_regions", r.nr_regions},
      {"max_regions", r.max_regions},
      {"root_size", r.root_size},
      {"data_offset", r.data_offset},
      {"metadata_bytes", r.metadata_bytes},
      {"total_pages", r.total_pages},
      {"free_pages", r.free_pages},
      {"free_regions", r.free_regions},
      {"split_regions", r.split_regions},
      {"split_fullness", fullness},
      {"large_allocations", r.large_allocations},
      {"large_regions", r.large_regions},
      {"small_allocations", r.small_allocations},
      {"owned_allocations", r.owned_allocations},
      {"damaged_regions", r.damaged_regions},
      {"largest_free_order", r.largest_free_order},
      {"pending_intents", r.pending_intents},
      {"descriptor_bytes_at_open", r.descriptor_bytes_at_open},
      {"descriptor_bytes_max", r.descriptor_bytes_max},
      {"problem_count", r.problems.size()},
      {"damage_count", r.problems.size() - recovery},
      {"problems", problems},
      {"bad_blocks", bad_blocks_json(r)},
  };
}

void print_table(const fsck::report& r) {
  auto row = [](const std::string& label, const std::string& value) {
    std::cout << "  " << std::left << std::setw(34) << label << value << '\n';
  };
  auto n = [](std::uint64_t v) { return std::to_string(v); };

  std::cout << "Pool " << r.path << '\n';
  row("file", human_bytes(r.file_size) + " (" + n(r.file_size) + " B), " +
                  (r.is_device_dax ? "device DAX" : "regular file"));
  if (!r.readable) {
    std::cout << "\nNo readable pool:\n";
    for (const auto& p : r.problems) std::cout << "  " << describe_location(p) << ": " << p.what << '\n';
    return;
  }
  row("format version", n(r.format_major) + "." + n(r.format_minor));
  row("uuid", r.uuid);
  row("created", format_time(r.create_time_ns));
  row("device size", human_bytes(r.device_size) + " (" + n(r.device_size) + " B)");
  row("can grow to", r.max_regions > r.nr_regions
                         ? n(r.max_regions) + " regions (" + human_bytes(r.data_offset + r.max_regions * (PAGE_SIZE << 9)) +
                               ": pmpage grow)"
                         : std::string("no (at its capacity: the --max-size given at create, or its tables' slack without it)"));
  if (r.format_major == 2) row("section id", n(r.section_id) + " (format 2.x: pfn bits 32..47)");
  row("pfn range", "[" + hex(r.start_pfn) + ", " + hex(r.end_pfn) + ") (pfn base " + hex(r.start_pfn) + ": the pool's identity)");
  row("root area", human_bytes(r.root_size));
  row("metadata", human_bytes(r.metadata_bytes) + ", data area at file offset " + hex(r.data_offset));

  std::cout << "Regions (2 MiB)\n";
  row("total", n(r.nr_regions));
  row("free", n(r.free_regions) + percent(r.free_regions, r.nr_regions));
  row("split into 4 KiB pages", n(r.split_regions) + percent(r.split_regions, r.nr_regions));
  row("in large allocations", n(r.large_regions) + percent(r.large_regions, r.nr_regions) + ", " +
                                  n(r.large_allocations) + " allocations of order 9..18");
  row("damaged", n(r.damaged_regions));

  std::cout << "Split regions by allocated pages\n";
  constexpr const char* labels[6] = {"empty (merged at open)", "1..127 of 512", "128..255", "256..383",
                                     "384..511", "full (512)"};
  for (unsigned i = 0; i < 6; ++i) row(labels[i], n(r.split_fullness[i]));

  std::cout << "Pages (4 KiB)\n";
  row("total", n(r.total_pages) + " (" + human_bytes(r.total_pages * PAGE_SIZE) + ")");
  row("free", n(r.free_pages) + percent(r.free_pages, r.total_pages) + ", " +
                  human_bytes(r.free_pages * PAGE_SIZE));
  row("small allocations (order 0..8)", n(r.small_allocations));
  row("owned by a slot", n(r.owned_allocations));
  row("largest free order", r.largest_free_order < 0
                                ? std::string("none (full)")
                                : n(std::uint64_t(r.largest_free_order)) + " (" +
                                      human_bytes(PAGE_SIZE << r.largest_free_order) + ")");

  std::cout << "Recovery and DRAM\n";
  row("pending intents", n(r.pending_intents) + (r.pending_intents ? " (replayed at the next open)" : ""));
  row("descriptor DRAM at open", human_bytes(r.descriptor_bytes_at_open));
  row("  with every split materialised", human_bytes(r.descriptor_bytes_max));

  std::size_t recovery = 0;
  for (const auto& p : r.problems) recovery += p.recovery;
  const std::size_t damage = r.problems.size() - recovery;
  std::cout << "Problems\n";
  row("damage", n(damage) + (damage ? " (see `pmpage check`)" : ""));
  row("recovery leftovers", n(recovery) + (recovery ? " (completed by the next open)" : ""));
  if (r.bad_blocks.empty()) return;
  std::size_t by_kind[4] = {};
  for (const auto& f : r.bad_blocks) ++by_kind[unsigned(f.what)];
  std::cout << "Bad blocks\n";
  row("in metadata", n(by_kind[0]) + (by_kind[0] ? " (pool::open refuses the pool: see `pmpage check`)" : ""));
  row("allocated pages (PG_hwpoison)", n(by_kind[1]));
  row("free pages (quarantined)", n(by_kind[2]));
  row("outside the pool's structures", n(by_kind[3]));
  for (const auto& f : r.bad_blocks)
    if (f.what == fsck::bad_block_finding::kind::allocated)
      row("  poisoned pfn " + hex(f.pfn), "order-" + n(f.order) + " allocation at pfn " + hex(f.head));
}

}  // namespace

command add_info(CLI::App& app) {
  auto a = std::make_shared<info_args>();
  CLI::App* sub = app.add_subcommand(
      "info", "Describe the pool at PATH: format, sizes, pfns, regions by state, split regions by "
              "fullness, free pages, largest free order, pending intents, descriptor DRAM. Read-only.");
  add_path(*sub, a->path);
  sub->add_flag("--json", a->json, "print one JSON object (fields: docs/cli.md)");
  add_bad_block_options(*sub, a->bad);
  sub->footer("Exit status: 0 described (damage, if any, is counted: see `pmpage check`), 4 no readable "
              "pool at PATH, 8 cannot open it, 16 usage error.");
  return {sub, [a] {
            fsck::options o;
            apply_bad_block_options(a->bad, o);
            const fsck::report r = run_check(a->path, o);
            if (a->json)
              std::cout << info_json(r).dump(2) << '\n';
            else
              print_table(r);
            return r.readable ? EXIT_CLEAN : EXIT_UNCORRECTED;
          }};
}

}  // namespace pmpage::tool
