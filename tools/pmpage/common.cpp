// tools/pmpage/common.cpp — the helpers the subcommands share (tool.hpp): units, locations of
// problems in words and in JSON, the path argument.
#include <unistd.h>

#include <chrono>
#include <cinttypes>
#include <iostream>
#include <cstdio>

#include "tool.hpp"

namespace pmpage::tool {

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

}  // namespace pmpage::tool
