// tools/pmpage/dump.cpp — `pmpage dump PATH --region R [--json]`: one region decoded, for the
// human chasing a problem `check` reported. The region word raw and decoded, where its page map,
// owner table and data sit in the file, and the page map as runs: free pages, allocations (head,
// order, extent, owning slot and what that slot holds), and the codes that break the rules.
#include <iomanip>
#include <iostream>

#include "tool.hpp"

namespace pmpage::tool {

namespace {

struct dump_args {
  std::string path;
  std::uint64_t region = 0;
  bool json = false;
};

constexpr std::uint8_t CODE_FREE = 0x0, CODE_TAIL = 0xF;  // docs/format.md "Page map"
bool is_head(std::uint8_t c) { return c >= 1 && c <= 9; }

/// A run of pages with one meaning.
struct run {
  unsigned first = 0, last = 0;
  std::string state;  // "free", "allocation", "incomplete", "orphan tails", "invalid"
  std::uint8_t code = 0;
  int order = -1;             // allocations
  std::uint64_t owner = 0;    // owner entry of the head (file offset of the slot), 0 = unowned
  pfn_t slot_value = 0;       // what that slot holds
  std::string note;           // what breaks a rule, if anything
};

std::vector<run> decode(const fsck::region_dump& d) {
  std::vector<run> runs;
  unsigned i = 0;
  while (i < 512) {
    const std::uint8_t c = d.codes[i];
    run r;
    r.first = i;
    r.code = c;
    if (c == CODE_FREE || c == CODE_TAIL || !is_head(c)) {
      // A run of equal codes: free pages, tails with no head before them, or one invalid code.
      unsigned j = i;
      while (j + 1 < 512 && d.codes[j + 1] == c) ++j;
      r.last = j;
      if (c == CODE_FREE) {
        r.state = "free";
      } else if (c == CODE_TAIL) {
        r.state = "orphan tails";
        r.note = "tail codes with no head: in flight at a crash (recovery clears them)";
      } else {
        r.state = "invalid";
        r.note = "invalid page-map code " + hex(c) + " (rule P2)";
      }
      i = j + 1;
    } else {
      const unsigned order = c - 1, n = 1u << order;
      unsigned tails = 0;
      while (tails + 1 < n && i + 1 + tails < 512 && d.codes[i + 1 + tails] == CODE_TAIL) ++tails;
      r.order = int(order);
      r.owner = d.owners[i];
      r.slot_value = d.slot_values[i];
      r.last = i + tails;
      if (tails + 1 == n && i % n == 0) {
        r.state = "allocation";
      } else {
        r.state = "incomplete";
        r.note = i % n ? "head of order " + std::to_string(order) + " at a page that is not a multiple of " +
                             std::to_string(n)
                       : "head of order " + std::to_string(order) + " followed by " + std::to_string(tails) +
                             " of " + std::to_string(n - 1) + " tails: in flight at a crash (recovery clears it)";
      }
      if (r.owner && r.slot_value != d.first_pfn + i)
        r.note += std::string(r.note.empty() ? "" : "; ") + "the owning slot does not name this page (rule O1)";
      i = r.last + 1;
    }
    runs.push_back(r);
  }
  return runs;
}

std::string pages(const run& r) {
  return r.first == r.last ? "page " + std::to_string(r.first)
                           : "pages " + std::to_string(r.first) + "-" + std::to_string(r.last);
}

std::string word_meaning(const fsck::region_dump& d) {
  const auto& ri = d.info;
  switch (ri.kind) {
    case fsck::region_kind::free: return "FREE";
    case fsck::region_kind::split: return "SPLIT into 4 KiB pages, " + std::to_string(ri.used_pages) + " of 512 allocated";
    case fsck::region_kind::head:
      return "HEAD of an order-" + std::to_string(ri.order) + " allocation (regions " + std::to_string(d.region) +
             "-" + std::to_string(d.region + (1u << (ri.order - 9)) - 1) + ")" + (d.owned ? ", owned by a slot" : "");
    case fsck::region_kind::tail:
      return "FREE on the media: a later region of an order-" + std::to_string(ri.order) + " allocation";
    case fsck::region_kind::damaged: return "damaged (breaks the region-word rules)";
  }
  return "?";
}

void print(const fsck::region_dump& d, const std::vector<run>& runs, const std::string& path) {
  auto row = [](const std::string& label, const std::string& value) {
    std::cout << "  " << std::left << std::setw(14) << label << value << '\n';
  };
  std::cout << "Region " << d.region << " of " << path << '\n';
  char w[24];
  std::snprintf(w, sizeof w, "0x%016llx", static_cast<unsigned long long>(d.word));
  row("region word", std::string(w) + " at file offset " + hex(d.word_offset) + ": " + word_meaning(d));
  row("pfns", hex(d.first_pfn) + " .. " + hex(d.first_pfn + 511));
  row("page map", "file offset " + hex(d.page_map_offset) + " (256 B)");
  row("owner table", "file offset " + hex(d.owner_table_offset) + " (4 KiB)");
  row("data", "file offset " + hex(d.data_offset) + " (2 MiB)");
  if (d.info.kind == fsck::region_kind::head && d.owned) {
    row("owner", "slot at file offset " + hex(d.owners[0]) + ", which holds pfn " + hex(d.slot_values[0]) +
                     (d.slot_values[0] == d.first_pfn ? "" : " (does not name this allocation: rule O1)"));
  }
  const bool split = d.info.kind == fsck::region_kind::split ||
                     (d.info.kind == fsck::region_kind::damaged && runs.size() > 1);
  if (split) {
    std::cout << "Page map\n";
  } else if (runs.size() == 1 && runs[0].state == "free") {
    std::cout << "Page map: all free (not read for a region that is not split)\n";
  } else {
    std::cout << "Page map (not read for a region that is not split; leftovers shown for reference)\n";
  }
  if (split || !(runs.size() == 1 && runs[0].state == "free"))
    for (const run& r : runs) {
      std::cout << "  " << std::left << std::setw(16) << pages(r);
      if (r.state == "free") {
        std::cout << "free";
      } else if (r.order >= 0) {
        std::cout << (r.state == "allocation" ? "" : "INCOMPLETE ") << "head order " << r.order << ", pfn "
                  << hex(d.first_pfn + r.first);
        if (r.owner)
          std::cout << ", owned by the slot at file offset " << hex(r.owner) << ", which holds pfn "
                    << hex(r.slot_value);
      } else {
        std::cout << r.state;
      }
      if (!r.note.empty()) std::cout << "\n  " << std::setw(16) << "" << "! " << r.note;
      std::cout << '\n';
    }
  // Owner entries on pages that head nothing (docs/format.md rule O1).
  for (unsigned i = 0; i < 512; ++i) {
    if (!d.owners[i]) continue;
    const bool on_head = split ? is_head(d.codes[i]) : (i == 0 && d.owned);
    if (!on_head)
      std::cout << "  ! owner entry " << i << " (file offset " << hex(d.owner_table_offset + 8 * i)
                << ") = " << hex(d.owners[i]) << " on a page that heads no allocation (rule O1)\n";
  }
  if (!d.problems.empty()) {
    std::cout << "Problems\n";
    for (const auto& p : d.problems)
      std::cout << "  [" << p.rule << "] " << describe_location(p) << ": " << p.what << '\n';
  }
}

json to_json(const fsck::region_dump& d, const std::vector<run>& runs) {
  json jr = json::array();
  for (const run& r : runs) {
    json j = {{"first", r.first}, {"last", r.last}, {"state", r.state}, {"code", r.code}};
    if (r.order >= 0) {
      j["order"] = r.order;
      j["pfn"] = d.first_pfn + r.first;
      j["owner"] = r.owner ? json(r.owner) : json(nullptr);
      j["slot_value"] = r.owner ? json(r.slot_value) : json(nullptr);
    }
    if (!r.note.empty()) j["note"] = r.note;
    jr.push_back(j);
  }
  json problems = json::array();
  for (const auto& p : d.problems) problems.push_back(problem_json(p));
  return {
      {"region", d.region},
      {"word", d.word},
      {"word_offset", d.word_offset},
      {"kind", kind_name(d.info.kind)},
      {"order", d.info.order},
      {"owned", d.owned},
      {"used_pages", d.info.used_pages},
      {"first_pfn", d.first_pfn},
      {"page_map_offset", d.page_map_offset},
      {"owner_table_offset", d.owner_table_offset},
      {"data_offset", d.data_offset},
      {"runs", jr},
      {"problems", problems},
  };
}

}  // namespace

command add_dump(CLI::App& app) {
  auto a = std::make_shared<dump_args>();
  CLI::App* sub = app.add_subcommand("dump", "Decode one region: its region word, and its page map as "
                                             "runs of pages with their owners. Read-only.");
  add_path(*sub, a->path);
  sub->add_option("-r,--region", a->region, "the region's index (0 .. nr_regions-1, as `info` and `map` show)")
      ->required()
      ->check(CLI::Range(std::uint64_t{0}, (std::uint64_t{1} << 32) - 1, "a region index"));
  sub->add_flag("--json", a->json, "print one JSON object (docs/cli.md)");
  sub->footer("Exit status: 0 decoded, 8 cannot open PATH, no readable pool or region out of range, "
              "16 usage error.");
  return {sub, [a] {
            const fsck::region_dump d = fsck::dump_region(a->path, a->region);
            const std::vector<run> runs = decode(d);
            if (a->json)
              std::cout << to_json(d, runs).dump(2) << '\n';
            else
              print(d, runs, a->path);
            return EXIT_CLEAN;
          }};
}

}  // namespace pmpage::tool
