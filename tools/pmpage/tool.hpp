// tools/pmpage/tool.hpp — what the subcommands of pmpage(1) share: the exit codes, the way a
// subcommand plugs into the CLI11 app, and small formatting helpers. One subcommand per file
// (create.cpp, info.cpp, check.cpp, map.cpp, dump.cpp, reidentify.cpp, grow.cpp); main.cpp parses and maps errors to exit
// codes. The tool holds no knowledge of the media format: everything it shows comes from
// pmpage::fsck (include/pmpage/fsck.hpp) or pmpage::pool.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "pmpage/fsck.hpp"
#include "pmpage/types.hpp"

namespace pmpage::tool {

/// JSON objects keep their fields in the documented order (docs/cli.md), not sorted.
using json = nlohmann::ordered_json;

// fsck(8)'s convention, so scripts and operators read them the way they read a file system's.
inline constexpr int EXIT_CLEAN = 0;        // no damage (or the command succeeded)
inline constexpr int EXIT_CORRECTED = 1;    // damage found and all of it repaired
inline constexpr int EXIT_UNCORRECTED = 4;  // damage left (or no readable pool to describe)
inline constexpr int EXIT_OPERATIONAL = 8;  // cannot open, locked, I/O error, gnuplot missing
inline constexpr int EXIT_USAGE = 16;       // bad command line

/// An operational failure of the tool itself (not of the library): exit 8 with the message.
struct tool_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// A subcommand: registered on the app before parsing; run() after parsing when it was chosen.
/// Its options live in the closure, so each file keeps them private.
struct command {
  CLI::App* app = nullptr;
  std::function<int()> run;
};

command add_create(CLI::App& app);
command add_info(CLI::App& app);
command add_check(CLI::App& app);
command add_map(CLI::App& app);
command add_dump(CLI::App& app);
command add_reidentify(CLI::App& app);
command add_grow(CLI::App& app);

// ---- shared helpers -----------------------------------------------------------------------------

/// A size: digits with an optional binary suffix, never negative, at most 2^60 bytes (create.cpp).
CLI::Validator size_bytes();
/// The library's message with its option names (options.max_size, options.size,
/// options.root_size) given as this tool's (--max-size, --size, --root-size).
std::string option_names(std::string message);
/// f(), a pmpage::error from it rethrown with option_names() applied to its message.
template <class F>
auto with_option_names(F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const pmpage::error& e) {
    throw pmpage::error(e.code(), option_names(e.what()));
  }
}
/// "64 MiB", "1.5 GiB", "4 KiB", "123 B": binary units, at most one decimal.
std::string human_bytes(std::uint64_t bytes);
/// "0x1f000"
std::string hex(std::uint64_t v);
/// Where a problem is: "superblock B, word 3, file offset 0x1018 (8 B)".
std::string describe_location(const fsck::problem& p);
/// A problem as JSON (the schema of docs/cli.md: locations that do not apply are null).
json problem_json(const fsck::problem& p);
/// region_kind as the JSON and the dump name it: "free", "split", "head", "tail", "damaged".
const char* kind_name(fsck::region_kind k);
/// The path option every subcommand takes first.
CLI::Option* add_path(CLI::App& sub, std::string& path);
/// True when fd is a terminal (colour, progress).
bool is_tty(int fd);

/// Progress of a long check on stderr: nothing during the first second (most pools are checked
/// in milliseconds), then "checking PATH: 42% (3523215/8388608 regions)" rewritten in place, and
/// the line erased when done. Only when stderr is a terminal: logs and pipes stay clean.
class progress_meter {
 public:
  explicit progress_meter(std::string path);
  ~progress_meter();
  progress_meter(const progress_meter&) = delete;
  progress_meter& operator=(const progress_meter&) = delete;
  /// For fsck::options::progress; empty when stderr is not a terminal.
  std::function<void(std::uint64_t, std::uint64_t)> callback();

 private:
  std::string path_;
  std::int64_t start_ns_;
  std::int64_t last_ns_ = 0;
  bool shown_ = false;
};

/// fsck::check with the progress meter.
fsck::report run_check(const std::string& path, fsck::options opts);

// ---- bad blocks (docs/cli.md "Bad blocks") ------------------------------------------------------

/// The bad-block options of check, info and map: `--bad-block OFFSET:LENGTH` (repeatable; numbers
/// in decimal or 0x hex, or with size suffixes) and `--no-device-bad-blocks`.
struct bad_block_args {
  std::vector<std::string> ranges;
  bool no_device = false;
};
void add_bad_block_options(CLI::App& sub, bad_block_args& a);
/// Parses them into `o` (a bad range is a tool_error: exit 8).
void apply_bad_block_options(const bad_block_args& a, fsck::options& o);
/// "OFFSET:LENGTH" -> range; throws tool_error naming the text.
bad_block parse_bad_block(const std::string& text);
/// The report's bad-block findings, one block each (check), or as JSON.
void print_bad_blocks(const fsck::report& r);
json bad_blocks_json(const fsck::report& r);
const char* bad_block_kind_name(fsck::bad_block_finding::kind k);

command add_clear_bad_block(CLI::App& app);

}  // namespace pmpage::tool
