// tools/pmpage/map.cpp — `pmpage map PATH [--width N] [--color WHEN] [--png FILE]`: the region
// map as a picture. One cell per 2 MiB region, or per group of regions when the pool is larger
// than the picture (a 16 TiB pool has 8M regions: the picture stays at most --width x 64 cells).
// The terminal shows characters (optionally coloured); --png draws the same cells with gnuplot's
// pngcairo terminal, at a fixed pixel size (--png-width x --png-height) whatever the pool.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iomanip>
#include <iostream>
#include <sstream>

#include "tool.hpp"

namespace pmpage::tool {

namespace {

constexpr unsigned MAX_ROWS = 64;  // rows of cells, terminal and PNG

// What a cell shows, from least to most used; damaged last (it wins in a group), outside is the
// PNG's padding beyond the last region.
enum cat : unsigned { FREE, SPLIT_EMPTY, SPLIT1, SPLIT2, SPLIT3, SPLIT4, SPLIT_FULL, HEAD, TAIL, DAMAGED, OUTSIDE, NCAT };

struct cat_style {
  char ch;
  const char* ansi;   // SGR parameters
  const char* rgb;    // PNG colour
  const char* label;  // legend
};
constexpr cat_style STYLE[NCAT] = {
    {'.', "2", "#e6e6e6", "free"},
    {'0', "36", "#bfe6f2", "split, no page allocated"},
    {'1', "32", "#9ccf8f", "split, 1-127 of 512 pages allocated"},
    {'2', "33", "#f2d13c", "split, 128-255 pages"},
    {'3', "35", "#f08c21", "split, 256-383 pages"},
    {'4', "31", "#d93a2b", "split, 384-511 pages"},
    {'#', "1;31", "#7a0d0d", "split, full (512 pages)"},
    {'H', "1;34", "#1f4e9c", "large allocation (order 9-18), first region"},
    {'h', "34", "#6b93d6", "large allocation, later region"},
    {'X', "1;37;41", "#ff00ff", "damaged"},
    {' ', "0", "#ffffff", "beyond the pool"},
};

cat cat_of(const fsck::region_info& ri) {
  switch (ri.kind) {
    case fsck::region_kind::free: return FREE;
    case fsck::region_kind::head: return HEAD;
    case fsck::region_kind::tail: return TAIL;
    case fsck::region_kind::damaged: return DAMAGED;
    case fsck::region_kind::split:
      if (ri.used_pages == 0) return SPLIT_EMPTY;
      if (ri.used_pages >= 512) return SPLIT_FULL;
      return cat(SPLIT1 + ri.used_pages / 128);  // the buckets of report::split_fullness
  }
  return DAMAGED;
}

struct grid {
  std::uint64_t group = 1;  // regions per cell
  std::uint64_t cols = 0;   // cells per row
  std::uint64_t rows = 0;
  std::vector<cat> cells;
};

// A group's cell: damaged if any region is (damage must never be averaged away); otherwise the
// state covering most of its regions (ties go to the more used), with a large allocation's head
// and later regions counted together and drawn 'H' when the group holds a head.
cat group_cat(const std::uint64_t (&n)[NCAT]) {
  if (n[DAMAGED]) return DAMAGED;
  std::uint64_t best = 0;
  cat c = FREE;
  for (unsigned k = FREE; k <= HEAD; ++k) {
    const std::uint64_t v = k == HEAD ? n[HEAD] + n[TAIL] : n[k];
    if (v >= best && v > 0) {
      best = v;
      c = cat(k);
    }
  }
  if (c == HEAD && n[HEAD] == 0) c = TAIL;
  return c;
}

/// Cells of `group` regions each, `cols` to a row.
grid make_grid(const std::vector<fsck::region_info>& regions, std::uint64_t group, std::uint64_t cols) {
  grid g;
  const std::uint64_t n = regions.size();
  g.group = std::max<std::uint64_t>(1, group);
  const std::uint64_t ncells = (n + g.group - 1) / g.group;
  g.cols = std::max<std::uint64_t>(1, std::min(cols, ncells));
  g.rows = (ncells + g.cols - 1) / g.cols;
  g.cells.reserve(ncells);
  for (std::uint64_t c = 0; c < ncells; ++c) {
    std::uint64_t count[NCAT] = {};
    const std::uint64_t end = std::min(n, (c + 1) * g.group);
    for (std::uint64_t r = c * g.group; r < end; ++r) ++count[cat_of(regions[r])];
    g.cells.push_back(group_cat(count));
  }
  return g;
}

/// The terminal: `width` cells a row, at most MAX_ROWS rows.
grid terminal_grid(const std::vector<fsck::region_info>& regions, std::uint64_t width) {
  const std::uint64_t max_cells = width * MAX_ROWS;
  return make_grid(regions, (regions.size() + max_cells - 1) / max_cells, width);
}

// The PNG's plot area: the image less the title, the row labels and the key below (measured on
// gnuplot 5.4's pngcairo with the 10-point font).
constexpr unsigned PNG_MARGIN_X = 110, PNG_MARGIN_Y = 160;
constexpr unsigned PNG_MIN_CELL = 4;  // pixels: smaller cells are grouped

/// The PNG: cells of at least PNG_MIN_CELL pixels, as many regions a cell as that needs, and a
/// row length that makes the square cells fill the plot area's shape.
grid png_grid(const std::vector<fsck::region_info>& regions, unsigned width, unsigned height) {
  const double px = width - PNG_MARGIN_X, py = height - PNG_MARGIN_Y;
  const std::uint64_t max_cells = std::uint64_t(px / PNG_MIN_CELL) * std::uint64_t(py / PNG_MIN_CELL);
  const std::uint64_t n = std::max<std::size_t>(regions.size(), 1);
  const std::uint64_t group = (n + max_cells - 1) / max_cells;
  const std::uint64_t cells = (n + group - 1) / group;
  const auto cols = std::uint64_t(std::ceil(std::sqrt(double(cells) * px / py)));
  return make_grid(regions, group, std::min<std::uint64_t>(cols, std::uint64_t(px / PNG_MIN_CELL)));
}

std::string summary(const fsck::report& r, const grid& g) {
  std::ostringstream s;
  s << human_bytes(r.file_size) << ", " << r.nr_regions << " regions of 2 MiB, 1 cell = " << g.group
    << (g.group == 1 ? " region" : " regions (the most common state; damaged if any is)");
  return s.str();
}

void print_terminal(const fsck::report& r, const grid& g, bool colour) {
  std::cout << "pmpage map: " << r.path << ": " << summary(r, g) << '\n';
  const int label_width = int(std::to_string(r.nr_regions).size());
  for (std::uint64_t row = 0; row < g.rows; ++row) {
    std::cout << std::setw(label_width) << row * g.cols * g.group << ' ';
    std::string line;
    cat last = NCAT;
    for (std::uint64_t col = 0; col < g.cols; ++col) {
      const std::uint64_t i = row * g.cols + col;
      if (i >= g.cells.size()) break;
      const cat c = g.cells[i];
      if (colour && c != last) line += std::string("\033[") + STYLE[c].ansi + "m";
      last = c;
      line += STYLE[c].ch;
    }
    if (colour) line += "\033[0m";
    std::cout << line << '\n';
  }
  // Compact, in the order of increasing use; the characters coloured as in the map.
  auto key = [&](cat k) {
    return colour ? std::string("\033[") + STYLE[k].ansi + "m" + STYLE[k].ch + "\033[0m" : std::string(1, STYLE[k].ch);
  };
  std::cout << "legend: " << key(FREE) << " free   " << key(SPLIT_EMPTY) << ' ' << key(SPLIT1) << ' '
            << key(SPLIT2) << ' ' << key(SPLIT3) << ' ' << key(SPLIT4) << ' ' << key(SPLIT_FULL)
            << " split, by allocated 4 KiB pages: 0, 1-127, 128-255, 256-383, 384-511, all 512\n"
            << "        " << key(HEAD) << ' ' << key(TAIL) << " large allocation (order 9-18): first region, later "
            << "regions   " << key(DAMAGED) << " damaged";
  std::cout << "\n        row labels: the first region of the row\n";
}

// ---- PNG through gnuplot ----------------------------------------------------------------------

std::string find_gnuplot() {
  const char* path = std::getenv("PATH");
  std::istringstream dirs(path ? path : "/usr/bin:/bin");
  std::string dir;
  while (std::getline(dirs, dir, ':')) {
    const std::string p = (dir.empty() ? std::string(".") : dir) + "/gnuplot";
    if (::access(p.c_str(), X_OK) == 0) return p;
  }
  throw tool_error("map --png draws with gnuplot, which is not installed (Debian: apt-get install gnuplot-nox)");
}

// A gnuplot double-quoted string: backslash escapes, so quotes, backslashes and newlines in a
// path or title survive.
std::string gp_quote(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out + "\"";
}

std::string sh_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

unsigned hexbyte(const char* s) { return unsigned(std::strtoul(std::string(s, 2).c_str(), nullptr, 16)); }

void write_png(const fsck::report& r, const grid& g, const std::string& file, unsigned width, unsigned height) {
  const std::string gnuplot = find_gnuplot();
  // The image is drawn beside FILE and renamed over it when complete: a failure never leaves a
  // truncated PNG under the name the operator asked for.
  const std::string tmp = file + ".tmp";
  // gnuplot's image plots need a grid of at least 2 x 2: pad with "beyond the pool" cells.
  const std::uint64_t cols = std::max<std::uint64_t>(g.cols, 2), rows = std::max<std::uint64_t>(g.rows, 2);

  std::ostringstream gp;
  gp << "set terminal pngcairo size " << width << "," << height << " font 'sans,10'\n"
     << "set output " << gp_quote(tmp) << "\n"
     << "set title " << gp_quote("pmpage map: " + r.path + "\n" + summary(r, g) + ", " +
                                 std::to_string(g.cols) + " cells a row")
     << " noenhanced\n"
     << "set size ratio -1\n"
     << "set xrange [-0.5:" << cols - 0.5 << "]\n"
     << "set yrange [" << rows - 0.5 << ":-0.5]\n"
     << "unset xtics\n"
     << "set ylabel 'first region of the row'\n"
     << "set style fill solid 1.0 border lc rgb '#808080'\n"
     << "set key outside below center horizontal maxrows 4 noenhanced\n"
     << "set lmargin 10\n";
  // About eight row labels, naming the first region of their row.
  const std::uint64_t step = std::max<std::uint64_t>(1, (g.rows + 7) / 8);
  gp << "set ytics (";
  for (std::uint64_t row = 0; row < g.rows; row += step)
    gp << (row ? ", " : "") << "'" << row * g.cols * g.group << "' " << row;
  gp << ") nomirror\n";
  gp << "plot '-' using 1:2:3:4:5 with rgbimage notitle";
  for (unsigned k = FREE; k <= DAMAGED; ++k)
    gp << ", keyentry with boxes fc rgb '" << STYLE[k].rgb << "' title " << gp_quote(STYLE[k].label);
  gp << "\n";
  for (std::uint64_t y = 0; y < rows; ++y)
    for (std::uint64_t x = 0; x < cols; ++x) {
      const std::uint64_t i = y * g.cols + x;
      const cat c = (x < g.cols && i < g.cells.size()) ? g.cells[i] : OUTSIDE;
      const char* rgb = STYLE[c].rgb;
      gp << x << ' ' << y << ' ' << hexbyte(rgb + 1) << ' ' << hexbyte(rgb + 3) << ' ' << hexbyte(rgb + 5) << '\n';
    }
  gp << "e\nset output\n";

  std::error_code ec;
  std::filesystem::remove(tmp, ec);
  // Make sure the image can be written before gnuplot runs: when `set output` fails, gnuplot
  // draws to its standard output, which is ours.
  if (std::FILE* f = std::fopen(tmp.c_str(), "wb"))
    std::fclose(f);
  else
    throw tool_error("cannot write " + tmp + " (the PNG is drawn there, then renamed to " + file + "): " + std::strerror(errno));
  ::signal(SIGPIPE, SIG_IGN);  // a gnuplot that dies early must not kill us: its status says why
  FILE* p = ::popen(sh_quote(gnuplot).c_str(), "w");
  if (!p) throw tool_error("cannot run " + gnuplot);
  const std::string script = gp.str();
  const bool written = std::fwrite(script.data(), 1, script.size(), p) == script.size();
  const int status = ::pclose(p);
  if (!written || status == -1 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    std::filesystem::remove(tmp, ec);
    throw tool_error("gnuplot failed to write " + file + " (exit status " +
                     std::to_string(WIFEXITED(status) ? WEXITSTATUS(status) : status) + ")");
  }
  if (std::filesystem::file_size(tmp, ec) == 0 || ec) {
    std::filesystem::remove(tmp, ec);
    throw tool_error("gnuplot wrote no image to " + tmp);
  }
  std::filesystem::rename(tmp, file, ec);
  if (ec) {
    const std::string why = ec.message();
    std::filesystem::remove(tmp, ec);
    throw tool_error("cannot rename " + tmp + " to " + file + ": " + why);
  }
}

struct map_args {
  std::string path;
  unsigned width = 64;
  std::string color = "auto";
  std::string png;
  unsigned png_width = 1024, png_height = 768;
  bad_block_args bad;
};

}  // namespace

command add_map(CLI::App& app) {
  auto a = std::make_shared<map_args>();
  CLI::App* sub = app.add_subcommand(
      "map", "Draw the pool's regions: free, split (by fullness), large allocations, damaged. In "
             "the terminal, and as a PNG image with --png. Read-only.");
  add_path(*sub, a->path);
  sub->add_option("-w,--width", a->width,
                  "cells a row (a row label precedes them); at most 64 rows: larger pools show groups "
                  "of regions per cell")
      ->check(CLI::Range(8u, 1024u))
      ->capture_default_str();
  sub->add_option("--color", a->color, "colour the terminal map: auto (when stdout is a terminal), always, never")
      ->check(CLI::IsMember({"auto", "always", "never"}))
      ->capture_default_str();
  sub->add_option("--png", a->png,
                  "also write the map as a PNG image to FILE (drawn by gnuplot's pngcairo terminal)");
  sub->add_option("--png-width", a->png_width, "width of the PNG in pixels")
      ->check(CLI::Range(320u, 8192u))
      ->capture_default_str();
  sub->add_option("--png-height", a->png_height, "height of the PNG in pixels")
      ->check(CLI::Range(240u, 8192u))
      ->capture_default_str();
  add_bad_block_options(*sub, a->bad);
  sub->footer("Exit status: 0 drawn (damaged regions are drawn 'X'), 4 no readable pool at PATH, 8 "
              "cannot open it or gnuplot failed, 16 usage error.");
  return {sub, [a] {
            if (!a->png.empty()) find_gnuplot();  // before the check: fail fast
            fsck::options o;
            o.regions = true;
            apply_bad_block_options(a->bad, o);
            const fsck::report r = run_check(a->path, o);
            // A bad block in the metadata: nothing but the superblock was read (the regions are unknown).
            if (!r.readable || r.regions.size() != r.nr_regions) {
              std::cerr << "pmpage map: " << a->path << ": no readable pool";
              for (const auto& p : r.problems) std::cerr << "; " << describe_location(p) << ": " << p.what;
              std::cerr << '\n';
              return EXIT_UNCORRECTED;
            }
            const grid g = terminal_grid(r.regions, a->width);
            const bool colour = a->color == "always" || (a->color == "auto" && is_tty(STDOUT_FILENO));
            print_terminal(r, g, colour);
            // Bad blocks under the map: by region, what pool::open makes of each (docs/cli.md).
            for (const auto& f : r.bad_blocks) {
              std::cout << "bad block " << hex(f.offset) << '+' << hex(f.length) << ": ";
              if (f.what == fsck::bad_block_finding::kind::allocated)
                std::cout << "region " << ((f.pfn - r.start_pfn) >> HPAGE_PMD_ORDER) << ", allocated pfn " << hex(f.pfn)
                          << " (PG_hwpoison at open: order-" << f.order << " allocation at " << hex(f.head) << ")\n";
              else if (f.what == fsck::bad_block_finding::kind::free)
                std::cout << "region " << ((f.pfn - r.start_pfn) >> HPAGE_PMD_ORDER) << ", free pfn " << hex(f.pfn)
                          << " (quarantined at open)\n";
              else
                std::cout << bad_block_kind_name(f.what) << ": " << f.where << '\n';
            }
            if (!a->png.empty()) {
              write_png(r, png_grid(r.regions, a->png_width, a->png_height), a->png, a->png_width, a->png_height);
              std::cout << "pmpage map: wrote " << a->png << " (" << a->png_width << "x" << a->png_height
                        << " PNG)\n";
            }
            return EXIT_CLEAN;
          }};
}

}  // namespace pmpage::tool
