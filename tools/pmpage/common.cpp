// tools/pmpage/common.cpp — the helpers the subcommands share (tool.hpp): units, locations of
// problems in words and in JSON, the path argument.
#include <unistd.h>

#include <chrono>
#include <cinttypes>
#include <iostream>
#include <cstdio>
#include <cstring>
#include <utility>

#include "pmpage/pool.hpp"
#include "tool.hpp"

namespace pmpage::tool {

std::string option_names(std::string m) {
  // The library names both where it can ("options.max_size, `pmpage create --max-size`"): keep one.
  static const std::pair<const char*, const char*> names[] = {
      {"options.max_size, `pmpage create --max-size`", "--max-size"},
      {"options.max_size (`pmpage create --max-size`)", "`pmpage create --max-size`"},
      {"options.max_size", "--max-size"},
      {"options.root_size", "--root-size"},
      {"options.size", "--size"},
      {"options.overwrite", "--force"},
  };
  for (const auto& [lib, cli] : names)
    for (std::size_t at = m.find(lib); at != std::string::npos; at = m.find(lib, at + std::strlen(cli)))
      m.replace(at, std::strlen(lib), cli);
  return m;
}

std::string human_bytes(std::uint64_t bytes) {
  static constexpr const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  unsigned u = 0;
  double v = double(bytes);
  while (v >= 1024 && u + 1 < std::size(units)) {
    v /= 1024;
    ++u;
  }
  char buf[32];
  // Whole numbers print without a decimal ("64 MiB"), others with one ("1.5 GiB").
  if (u == 0 || v == double(std::uint64_t(v)))
    std::snprintf(buf, sizeof buf, "%.0f %s", v, units[u]);
  else
    std::snprintf(buf, sizeof buf, "%.1f %s", v, units[u]);
  return buf;
}

std::string hex(std::uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "0x%" PRIx64, v);
  return buf;
}

std::string describe_location(const fsck::problem& p) {
  std::string s = p.structure.empty() ? "pool" : p.structure;
  if (p.region >= 0) s += ", region " + std::to_string(p.region);
  if (p.page >= 0) s += ", page " + std::to_string(p.page);
  if (p.word >= 0) s += (p.structure == "intent lanes" ? ", lane " : ", word ") + std::to_string(p.word);
  if (p.length > 0) s += ", file offset " + hex(p.offset) + " (" + std::to_string(p.length) + " B)";
  return s;
}

json problem_json(const fsck::problem& p) {
  auto loc = [](std::int64_t v) { return v < 0 ? json(nullptr) : json(v); };
  return {
      {"rule", p.rule},
      {"structure", p.structure},
      {"region", loc(p.region)},
      {"page", loc(p.page)},
      {"word", loc(p.word)},
      {"offset", p.length > 0 ? json(p.offset) : json(nullptr)},
      {"length", p.length},
      {"what", p.what},
      {"repair", p.repairable() ? json(p.repair) : json(nullptr)},
      {"repairable", p.repairable()},
      {"recovery", p.recovery},
      {"repaired", p.repaired},
  };
}

const char* kind_name(fsck::region_kind k) {
  switch (k) {
    case fsck::region_kind::free: return "free";
    case fsck::region_kind::split: return "split";
    case fsck::region_kind::head: return "head";
    case fsck::region_kind::tail: return "tail";
    case fsck::region_kind::damaged: return "damaged";
  }
  return "unknown";
}

CLI::Option* add_path(CLI::App& sub, std::string& path) {
  // Not CLI::ExistingPath: a missing path is an operational error (8) reported by the library,
  // as fsck does, not a usage error (16).
  return sub.add_option("PATH", path, "the pool: a regular file or a /dev/daxX.Y device")->required();
}

bool is_tty(int fd) { return ::isatty(fd) == 1; }

namespace {
std::int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}
}  // namespace

progress_meter::progress_meter(std::string path) : path_(std::move(path)), start_ns_(now_ns()) {}

progress_meter::~progress_meter() {
  if (shown_) std::cerr << "\r\033[K" << std::flush;
}

std::function<void(std::uint64_t, std::uint64_t)> progress_meter::callback() {
  if (!is_tty(STDERR_FILENO)) return {};
  return [this](std::uint64_t done, std::uint64_t total) {
    const std::int64_t t = now_ns();
    // After the first second, at most ten updates a second.
    if (t - start_ns_ < 1'000'000'000 || t - last_ns_ < 100'000'000 || total == 0) return;
    last_ns_ = t;
    shown_ = true;
    std::cerr << "\rchecking " << path_ << ": " << (done * 100 / total) << "% (" << done << '/' << total
              << " regions)\033[K" << std::flush;
  };
}

fsck::report run_check(const std::string& path, fsck::options opts) {
  progress_meter meter(path);
  opts.progress = meter.callback();
  return fsck::check(path, opts);
}

// ---- bad blocks -------------------------------------------------------------------------------

namespace {
std::uint64_t parse_number(const std::string& text, const std::string& whole) {
  // 0x hex or decimal, with the size suffixes every other option takes (4K, 1M).
  if (text.rfind("0x", 0) == 0 || text.rfind("0X", 0) == 0) {
    std::size_t used = 0;
    std::uint64_t v = 0;
    try {
      v = std::stoull(text, &used, 16);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == text.size() && used > 2) return v;
  } else {
    std::uint64_t v = 0;
    if (!CLI::detail::lexical_cast(text, v)) {
      CLI::AsSizeValue conv(false);
      std::string t = text;
      try {
        conv(t);
        if (CLI::detail::lexical_cast(t, v)) return v;
      } catch (const std::exception&) {
      }
    } else {
      return v;
    }
  }
  throw tool_error("--bad-block " + whole + ": '" + text + "' is not a number (decimal, 0x hex, or with K/M/G)");
}
}  // namespace

bad_block parse_bad_block(const std::string& text) {
  const auto colon = text.find(':');
  if (colon == std::string::npos) throw tool_error("--bad-block " + text + ": expected OFFSET:LENGTH");
  return {parse_number(text.substr(0, colon), text), parse_number(text.substr(colon + 1), text)};
}

void add_bad_block_options(CLI::App& sub, bad_block_args& a) {
  sub.add_option("--bad-block", a.ranges,
                 "a bad block (media error) of the file or device, OFFSET:LENGTH in bytes (decimal, 0x hex, or "
                 "K/M/G); repeatable. Added to those libpmem2 reports for an NVDIMM (a CXL device's poison list, "
                 "translated to device offsets)")
      ->type_name("OFFSET:LENGTH");
  sub.add_flag("--no-device-bad-blocks", a.no_device, "do not ask libpmem2 for the device's bad blocks");
}

void apply_bad_block_options(const bad_block_args& a, fsck::options& o) {
  for (const std::string& t : a.ranges) o.bad_blocks.push_back(parse_bad_block(t));
  o.device_bad_blocks = !a.no_device;
}

const char* bad_block_kind_name(fsck::bad_block_finding::kind k) {
  switch (k) {
    case fsck::bad_block_finding::kind::metadata: return "metadata";
    case fsck::bad_block_finding::kind::allocated: return "allocated";
    case fsck::bad_block_finding::kind::free: return "free";
    case fsck::bad_block_finding::kind::outside: return "outside";
  }
  return "?";
}

void print_bad_blocks(const fsck::report& r) {
  for (const auto& f : r.bad_blocks) {
    std::cout << "bad block " << hex(f.offset) << '+' << hex(f.length) << " (" << bad_block_kind_name(f.what) << "): "
              << f.where << '\n';
    std::cout << "    " << f.advice << '\n';
  }
}

json bad_blocks_json(const fsck::report& r) {
  json a = json::array();
  for (const auto& f : r.bad_blocks) {
    const bool page = f.what == fsck::bad_block_finding::kind::allocated || f.what == fsck::bad_block_finding::kind::free;
    a.push_back({{"kind", bad_block_kind_name(f.what)},
                 {"offset", f.offset},
                 {"length", f.length},
                 {"where", f.where},
                 {"pfn", page ? json(f.pfn) : json(nullptr)},
                 {"head", f.what == fsck::bad_block_finding::kind::allocated ? json(f.head) : json(nullptr)},
                 {"order", f.what == fsck::bad_block_finding::kind::allocated ? json(f.order) : json(nullptr)},
                 {"advice", f.advice}});
  }
  return a;
}

command add_clear_bad_block(CLI::App& app) {
  struct args {
    std::string path, range;
  };
  auto a = std::make_shared<args>();
  CLI::App* sub = app.add_subcommand(
      "clear-bad-block",
      "Clear the bad block OFFSET:LENGTH of the pool at PATH through libpmem2, which ZEROES it. Only a range "
      "inside a bad block the device reports is cleared; the pool must not be open. Writes.");
  add_path(*sub, a->path);
  sub->add_option("RANGE", a->range, "OFFSET:LENGTH in bytes (decimal, 0x hex, or K/M/G)")->required();
  sub->footer("Exit status: 0 cleared, 8 refused (not a reported bad block, the pool is open) or failed, 16 usage "
              "error. Run `pmpage check` afterwards: what the zeroed bytes held is gone.");
  return {sub, [a] {
            const bad_block b = parse_bad_block(a->range);
            pool::clear_bad_block(a->path, b);
            std::cout << "pmpage: cleared bad block " << hex(b.offset) << '+' << hex(b.length) << " of " << a->path
                      << " (the range now reads as zeros)\n";
            return EXIT_CLEAN;
          }};
}

}  // namespace pmpage::tool
