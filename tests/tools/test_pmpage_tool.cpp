// tests/tools/test_pmpage_tool.cpp — pmpage(1) from the outside: pools built with the library
// (pools.hpp), damaged byte by byte where docs/format.md puts each structure, then the `pmpage`
// binary run on them as an operator would. Checks the exit codes of docs/cli.md, the documented
// JSON fields and their values, that nothing but `create` and `check --repair` changes a byte,
// the PNG's signature and size, and the refusal of a pool another process holds open.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <spawn.h>
#include <sys/file.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <pmpage/pmpage.hpp>

#include "layout.hpp"      // src/: where each structure sits, to damage it
#include "pool_image.hpp"  // tests/: reading, damaging and crafting images
#include "pools.hpp"

extern char** environ;

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using namespace pmtest::image;
constexpr std::uint64_t MiB = 1ull << 20;

struct result {
  int code = -1;
  std::string out, err;
};

// ---- the fixture: a scratch directory per test, the tool run as a child process ---------------

class Tool : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::path("/dev/shm") / ("pmpage-tool-" + std::to_string(::getpid()) + "-" + info->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string path(const std::string& name) const { return (dir_ / name).string(); }

  std::string make(const std::string& kind, std::uint64_t size = 64 * MiB) {
    const std::string p = path(kind + ".pool");
    pmtool::make_pool(kind, p, size);
    return p;
  }

  /// Runs PMPAGE_TOOL with args; stdout and stderr through files (no pipe to deadlock on).
  result run(const std::vector<std::string>& args, const std::vector<std::string>& extra_env = {}) {
    std::vector<std::string> argv_s = {PMPAGE_TOOL};
    argv_s.insert(argv_s.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (auto& a : argv_s) argv.push_back(a.data());
    argv.push_back(nullptr);
    std::vector<std::string> env_s;
    for (char** e = environ; *e; ++e) {
      bool replaced = false;
      for (const auto& x : extra_env)
        if (std::strncmp(*e, x.c_str(), x.find('=') + 1) == 0) replaced = true;
      if (!replaced) env_s.emplace_back(*e);
    }
    env_s.insert(env_s.end(), extra_env.begin(), extra_env.end());
    std::vector<char*> envp;
    for (auto& e : env_s) envp.push_back(e.data());
    envp.push_back(nullptr);

    const std::string out = (dir_ / "stdout").string(), err = (dir_ / "stderr").string();
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 1, out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    posix_spawn_file_actions_addopen(&fa, 2, err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    pid_t pid;
    const int rc = posix_spawn(&pid, PMPAGE_TOOL, &fa, nullptr, argv.data(), envp.data());
    posix_spawn_file_actions_destroy(&fa);
    result r;
    if (rc != 0) {
      ADD_FAILURE() << "posix_spawn " << PMPAGE_TOOL << ": " << std::strerror(rc);
      return r;
    }
    int status = 0;
    ::waitpid(pid, &status, 0);
    r.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    r.out = file_bytes(out);
    r.err = file_bytes(err);
    return r;
  }

  json run_json(const std::vector<std::string>& args, int expected_code) {
    const result r = run(args);
    EXPECT_EQ(r.code, expected_code) << r.out << r.err;
    try {
      return json::parse(r.out);
    } catch (const std::exception& e) {
      ADD_FAILURE() << "not JSON (" << e.what() << "): " << r.out;
      return json::object();
    }
  }

  fs::path dir_;
};

std::size_t file_hash(const std::string& p) { return std::hash<std::string>{}(file_bytes(p)); }

unsigned code_of(const std::string& p, const pmpage::detail::superblock& sb, std::uint64_t r, unsigned page) {
  const auto w = read_word(p, sb.page_map_offset + 256 * r + 8 * (page / 16));
  return unsigned(w >> (4 * (page % 16))) & 0xf;
}

/// A split region with at least one free page and one owner entry that counts (under an owned
/// order-0 head's marker, code 0xA: elsewhere an entry may be stale and is ignored; the healthy
/// pool has one).
std::uint64_t split_region_with_owner(const std::string& p, const pmpage::detail::superblock& sb) {
  for (std::uint64_t r = 0; r < sb.nr_regions; ++r) {
    const auto w = read_word(p, sb.region_table_offset + 8 * r);
    if ((w & 0xff) != 2) continue;
    bool has_free = false, has_owner = false;
    for (unsigned i = 0; i < 512; ++i) {
      has_free |= code_of(p, sb, r, i) == 0;
      has_owner |= code_of(p, sb, r, i) == 0xa && read_word(p, sb.owner_table_offset + 4096 * r + 8 * i) != 0;
    }
    if (has_free && has_owner) return r;
  }
  ADD_FAILURE() << "no split region with a free page and an owner entry in " << p;
  return 0;
}

bool png_size(const std::string& p, std::uint32_t& w, std::uint32_t& h) {
  const std::string s = file_bytes(p);
  static const unsigned char sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  if (s.size() < 33 || std::memcmp(s.data(), sig, 8) != 0 || s.compare(12, 4, "IHDR") != 0) return false;
  auto be32 = [&](std::size_t o) {
    return std::uint32_t(std::uint8_t(s[o])) << 24 | std::uint32_t(std::uint8_t(s[o + 1])) << 16 |
           std::uint32_t(std::uint8_t(s[o + 2])) << 8 | std::uint32_t(std::uint8_t(s[o + 3]));
  };
  w = be32(16);
  h = be32(20);
  return true;
}

/// The cells of `pmpage map` output: the rows after the title, before the legend.
std::string map_cells(const std::string& out) {
  std::istringstream in(out);
  std::string line, cells;
  std::getline(in, line);  // title
  while (std::getline(in, line) && line.rfind("legend:", 0) != 0) {
    const auto sp = line.find_first_not_of(' ');
    const auto after_label = line.find(' ', sp);
    cells += line.substr(after_label + 1);
  }
  return cells;
}

// Every field docs/cli.md documents for `info --json`, with its JSON type.
const std::vector<std::pair<std::string, json::value_t>> INFO_FIELDS = {
    {"path", json::value_t::string},           {"file_size", json::value_t::number_unsigned},
    {"is_device_dax", json::value_t::boolean}, {"readable", json::value_t::boolean},
    {"format_version", json::value_t::string}, {"format_major", json::value_t::number_unsigned},
    {"format_minor", json::value_t::number_unsigned}, {"uuid", json::value_t::string},
    {"create_time_ns", json::value_t::number_unsigned}, {"section_id", json::value_t::number_unsigned},
    {"start_pfn", json::value_t::number_unsigned}, {"end_pfn", json::value_t::number_unsigned},
    {"device_size", json::value_t::number_unsigned}, {"nr_regions", json::value_t::number_unsigned},
    {"max_regions", json::value_t::number_unsigned},
    {"root_size", json::value_t::number_unsigned}, {"data_offset", json::value_t::number_unsigned},
    {"metadata_bytes", json::value_t::number_unsigned}, {"total_pages", json::value_t::number_unsigned},
    {"free_pages", json::value_t::number_unsigned}, {"free_regions", json::value_t::number_unsigned},
    {"split_regions", json::value_t::number_unsigned}, {"split_fullness", json::value_t::object},
    {"large_allocations", json::value_t::number_unsigned}, {"large_regions", json::value_t::number_unsigned},
    {"small_allocations", json::value_t::number_unsigned}, {"owned_allocations", json::value_t::number_unsigned},
    {"damaged_regions", json::value_t::number_unsigned}, {"largest_free_order", json::value_t::number_integer},
    {"pending_intents", json::value_t::number_unsigned}, {"descriptor_bytes_at_open", json::value_t::number_unsigned},
    {"descriptor_bytes_max", json::value_t::number_unsigned}, {"problem_count", json::value_t::number_unsigned},
    {"damage_count", json::value_t::number_unsigned}, {"problems", json::value_t::array},
    {"bad_blocks", json::value_t::array},
};
const std::vector<std::string> PROBLEM_FIELDS = {"rule", "structure", "region", "page", "word", "offset",
                                                 "length", "what", "repair", "repairable", "recovery", "repaired"};

void expect_info_schema(const json& j) {
  for (const auto& [name, type] : INFO_FIELDS) {
    ASSERT_TRUE(j.contains(name)) << "info --json lacks " << name;
    if (name == "largest_free_order")
      EXPECT_TRUE(j[name].is_number_integer()) << name;
    else if (type == json::value_t::number_unsigned)
      EXPECT_TRUE(j[name].is_number_unsigned()) << name << " = " << j[name];
    else
      EXPECT_EQ(j[name].type(), type) << name;
  }
  EXPECT_EQ(j.size(), INFO_FIELDS.size()) << "undocumented fields in " << j.dump();
  for (const char* k : {"empty", "1-127", "128-255", "256-383", "384-511", "full"})
    EXPECT_TRUE(j["split_fullness"].contains(k)) << k;
}

void expect_problem_schema(const json& p) {
  for (const auto& f : PROBLEM_FIELDS) EXPECT_TRUE(p.contains(f)) << "problem lacks " << f << ": " << p.dump();
  EXPECT_EQ(p.size(), PROBLEM_FIELDS.size()) << p.dump();
}

const std::vector<std::string> KINDS = {"empty", "healthy", "full", "fragmented"};

// ---- help and usage ---------------------------------------------------------------------------

TEST_F(Tool, HelpDocumentsEverySubcommandAndTheExitCodes) {
  const result r = run({"--help"});
  EXPECT_EQ(r.code, 0);
  for (const char* s : {"create", "info", "check", "map", "dump", "clear-bad-block", "grow", "Exit status", "16", "1K = 1024"})
    EXPECT_NE(r.out.find(s), std::string::npos) << s << " missing from --help:\n" << r.out;
  for (const char* sub : {"create", "info", "check", "map", "dump", "grow"}) {
    const result h = run({sub, "--help"});
    EXPECT_EQ(h.code, 0) << sub;
    EXPECT_NE(h.out.find("Exit status"), std::string::npos) << sub << ":\n" << h.out;
  }
  EXPECT_NE(run({"create", "--help"}).out.find("--size"), std::string::npos);
  EXPECT_NE(run({"check", "--help"}).out.find("--repair"), std::string::npos);
  EXPECT_NE(run({"map", "--help"}).out.find("--png"), std::string::npos);
  EXPECT_NE(run({"dump", "--help"}).out.find("--region"), std::string::npos);
  EXPECT_EQ(run({"--version"}).code, 0);
}

TEST_F(Tool, UsageErrorsExit16) {
  const std::string p = make("empty");
  const std::vector<std::vector<std::string>> bad = {
      {},
      {"bogus"},
      {"info"},
      {"info", p, "--bogus"},
      {"info", p, "extra"},
      {"check", p, "--repair=maybe"},
      {"map", p, "--width", "3"},
      {"map", p, "--color", "purple"},
      {"dump", p},
      {"dump", p, "--region", "minus-one"},
      {"create", path("n.pool"), "--size", "12Q"},
      {"create", path("n.pool"), "--size"},
      {"create", path("n.pool")},  // a new file without --size (issue #18: was exit 8)
  };
  for (const auto& args : bad) {
    const result r = run(args);
    std::string joined;
    for (const auto& a : args) joined += a + " ";
    EXPECT_EQ(r.code, 16) << joined << "\n" << r.out << r.err;
    EXPECT_FALSE(r.err.empty()) << joined;
  }
  EXPECT_FALSE(fs::exists(path("n.pool")));
}

TEST_F(Tool, MissingPathIsAnOperationalError) {
  for (const char* sub : {"info", "check", "map"}) {
    const result r = run({sub, path("nope.pool")});
    EXPECT_EQ(r.code, 8) << sub;
    EXPECT_NE(r.err.find("nope.pool"), std::string::npos) << r.err;
  }
  EXPECT_EQ(run({"dump", path("nope.pool"), "--region", "0"}).code, 8);
}

// ---- create -----------------------------------------------------------------------------------

TEST_F(Tool, CreateTakesSizeSuffixes) {
  const std::string p = path("new.pool");
  result r = run({"create", p, "--size", "64M", "--root-size", "1M"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(fs::file_size(p), 64 * MiB);
  json j = run_json({"info", p, "--json"}, 0);
  EXPECT_EQ(j["root_size"], 1 * MiB);
  EXPECT_EQ(j["file_size"], 64 * MiB);
  EXPECT_EQ(j["free_pages"], j["total_pages"]);

  const std::string q = path("lower.pool");
  ASSERT_EQ(run({"create", q, "--size", "49152k", "--preallocate"}).code, 0);
  EXPECT_EQ(fs::file_size(q), 48 * MiB);
  const std::string g = path("giga.pool");
  ASSERT_EQ(run({"create", g, "-s", "1GiB"}).code, 0);
  EXPECT_EQ(fs::file_size(g), 1024 * MiB);
}

TEST_F(Tool, CreateRefusesAnExistingPoolWithoutForce) {
  const std::string p = make("healthy");
  const std::size_t before = file_hash(p);
  const result r = run({"create", p, "--size", "64M"});
  EXPECT_EQ(r.code, 8);
  EXPECT_NE(r.err.find("--force"), std::string::npos) << r.err;
  EXPECT_EQ(file_hash(p), before);

  const std::string uuid = run_json({"info", p, "--json"}, 0)["uuid"];
  EXPECT_EQ(run({"create", p, "--size", "64M", "--force"}).code, 0);
  const json j = run_json({"info", p, "--json"}, 0);
  EXPECT_NE(j["uuid"], uuid);
  EXPECT_EQ(j["free_pages"], j["total_pages"]);
}

TEST_F(Tool, CreateTooSmallIsAnOperationalError) {
  const result r = run({"create", path("tiny.pool"), "--size", "1M"});
  EXPECT_EQ(r.code, 8);
  EXPECT_FALSE(r.err.empty());
}

// ---- info, check, map, dump on healthy pools --------------------------------------------------

TEST_F(Tool, InfoJsonHasTheDocumentedFieldsWithSaneValues) {
  for (const auto& kind : KINDS) {
    SCOPED_TRACE(kind);
    const std::string p = make(kind);
    const json j = run_json({"info", p, "--json"}, 0);
    expect_info_schema(j);
    EXPECT_TRUE(j["readable"]);
    EXPECT_EQ(j["format_version"], "3.0");
    EXPECT_EQ(j["nr_regions"].get<std::uint64_t>() * 512, j["total_pages"].get<std::uint64_t>());
    EXPECT_EQ(j["end_pfn"].get<std::uint64_t>() - j["start_pfn"].get<std::uint64_t>(), j["total_pages"]);
    // Format 3: the identity is the pfn base, a multiple of 2^28 from 2^32 up; no section id.
    EXPECT_EQ(j["start_pfn"].get<std::uint64_t>() % (std::uint64_t{1} << 28), 0u);
    EXPECT_GE(j["start_pfn"].get<std::uint64_t>(), std::uint64_t{1} << 32);
    EXPECT_EQ(j["section_id"], 0u);
    EXPECT_EQ(j["file_size"], 64 * MiB);
    EXPECT_EQ(j["problem_count"], 0u);
    EXPECT_EQ(j["damaged_regions"], 0u);
    EXPECT_EQ(j["pending_intents"], 0u);
    EXPECT_EQ(j["descriptor_bytes_at_open"], 64 * j["nr_regions"].get<std::uint64_t>());
    std::uint64_t split = 0;
    for (const auto& [k, v] : j["split_fullness"].items()) split += v.get<std::uint64_t>();
    EXPECT_EQ(split, j["split_regions"]);
    EXPECT_EQ(j["free_regions"].get<std::uint64_t>() + j["split_regions"].get<std::uint64_t>() +
                  j["large_regions"].get<std::uint64_t>(),
              j["nr_regions"]);
    if (kind == "empty") {
      EXPECT_EQ(j["free_pages"], j["total_pages"]);
      EXPECT_EQ(j["free_regions"], j["nr_regions"]);
      EXPECT_EQ(j["large_allocations"], 0u);
      EXPECT_EQ(j["small_allocations"], 0u);
      EXPECT_GE(j["largest_free_order"].get<int>(), 9);
    } else if (kind == "full") {
      EXPECT_EQ(j["free_pages"], 0u);
      EXPECT_EQ(j["largest_free_order"], -1);
      EXPECT_EQ(j["large_allocations"], j["nr_regions"]);
    } else if (kind == "healthy") {
      EXPECT_EQ(j["large_allocations"], 3u);  // orders 9, 10 and an owned 9
      EXPECT_EQ(j["large_regions"], 4u);
      EXPECT_EQ(j["small_allocations"], 110u);
      EXPECT_EQ(j["owned_allocations"], 11u);
    } else if (kind == "fragmented") {
      EXPECT_GT(j["split_regions"].get<std::uint64_t>(), 10u);
      EXPECT_GT(j["free_pages"].get<std::uint64_t>(), 0u);
      EXPECT_EQ(j["large_allocations"], 3u);
      EXPECT_GT(j["descriptor_bytes_max"].get<std::uint64_t>(), j["descriptor_bytes_at_open"].get<std::uint64_t>());
    }
    const result human = run({"info", p});
    EXPECT_EQ(human.code, 0);
    for (const char* s : {"format version", "pfn base", "pfn range", "largest free order", "pending intents",
                          "descriptor DRAM"})
      EXPECT_NE(human.out.find(s), std::string::npos) << s;
  }
}

TEST_F(Tool, ReadOnlyCommandsChangeNoByte) {
  for (const auto& kind : KINDS) {
    SCOPED_TRACE(kind);
    const std::string p = make(kind);
    const std::size_t before = file_hash(p);
    const auto mtime = fs::last_write_time(p);
    for (const auto& args : std::vector<std::vector<std::string>>{{"info", p},
                                                                  {"info", p, "--json"},
                                                                  {"check", p},
                                                                  {"check", p, "--json"},
                                                                  {"map", p},
                                                                  {"map", p, "--color", "always"},
                                                                  {"map", p, "--png", path("m.png")},
                                                                  {"dump", p, "--region", "0"},
                                                                  {"dump", p, "--region", "30", "--json"}}) {
      const result r = run(args);
      EXPECT_EQ(r.code, 0) << args[0] << " " << r.err;
    }
    EXPECT_EQ(file_hash(p), before);
    EXPECT_EQ(fs::last_write_time(p), mtime);
  }
}

TEST_F(Tool, CheckOfAHealthyPoolIsClean) {
  for (const auto& kind : KINDS) {
    SCOPED_TRACE(kind);
    const std::string p = make(kind);
    const json j = run_json({"check", p, "--json"}, 0);
    for (const char* f : {"path", "readable", "repair", "problems", "counts", "exit_code"})
      EXPECT_TRUE(j.contains(f)) << f;
    EXPECT_EQ(j["exit_code"], 0);
    EXPECT_EQ(j["repair"], false);
    EXPECT_TRUE(j["problems"].empty());
    for (const char* c : {"problems", "damage", "recovery", "repaired", "uncorrected"})
      EXPECT_EQ(j["counts"][c], 0u) << c;
    const result r = run({"check", p});
    EXPECT_EQ(r.code, 0);
    EXPECT_NE(r.out.find("clean"), std::string::npos) << r.out;
    EXPECT_EQ(run({"check", p, "--repair"}).code, 0);
    EXPECT_EQ(run({"check", p}).code, 0);
  }
}

TEST_F(Tool, MapDrawsOneCellPerRegionWithALegend) {
  for (const auto& kind : KINDS) {
    SCOPED_TRACE(kind);
    const std::string p = make(kind);
    const result r = run({"map", p});
    ASSERT_EQ(r.code, 0) << r.err;
    const std::string cells = map_cells(r.out);
    EXPECT_EQ(cells.size(), 31u) << r.out;  // 64 MiB: 31 regions, one cell each
    EXPECT_EQ(cells.find_first_not_of(".01234#HhX"), std::string::npos) << cells;
    EXPECT_NE(r.out.find("legend:"), std::string::npos);
    EXPECT_NE(r.out.find("1 cell = 1 region"), std::string::npos);
    EXPECT_EQ(r.out.find('\033'), std::string::npos) << "colour when stdout is not a terminal";
    if (kind == "empty") {
      EXPECT_EQ(cells, std::string(31, '.'));
    }
    if (kind == "full") {
      EXPECT_EQ(cells.find_first_of(".01234"), std::string::npos) << cells;
    }
    if (kind == "healthy") {
      EXPECT_NE(cells.find('H'), std::string::npos) << cells;
    }
    if (kind == "fragmented") {
      EXPECT_NE(cells.find_first_of("1234"), std::string::npos) << cells;
      EXPECT_NE(cells.find('H'), std::string::npos) << cells;
    }
  }
  EXPECT_NE(run({"map", make("fragmented"), "--color", "always"}).out.find("\033["), std::string::npos);
}

TEST_F(Tool, MapGroupsRegionsOfALargePool) {
  // 16 GiB: about 8170 regions; 64 x 64 cells at most, so 2 regions a cell.
  const std::string p = path("large.pool");
  ASSERT_EQ(run({"create", p, "--size", "16G"}).code, 0);
  const std::uint64_t nr = run_json({"info", p, "--json"}, 0)["nr_regions"];
  ASSERT_GT(nr, 4096u);
  const result r = run({"map", p});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("1 cell = 2 regions"), std::string::npos) << r.out.substr(0, 200);
  const std::string cells = map_cells(r.out);
  EXPECT_EQ(cells.size(), (nr + 1) / 2);
  EXPECT_LE(std::count(r.out.begin(), r.out.end(), '\n'), 64 + 5);
  const result narrow = run({"map", p, "--width", "16"});
  EXPECT_NE(narrow.out.find("1 cell = 8 regions"), std::string::npos) << narrow.out.substr(0, 200);

  ASSERT_EQ(run({"map", p, "--png", path("large.png")}).code, 0);
  std::uint32_t w = 0, h = 0;
  ASSERT_TRUE(png_size(path("large.png"), w, h));
  EXPECT_EQ(w, 1024u);
  EXPECT_EQ(h, 768u);
}

TEST_F(Tool, InfoAndMapOfTheLargestPool) {
  // 16 TiB of data (2^23 regions), crafted on a sparse file: two superblocks, one 1 GiB page at
  // the start and everything else free. create would reserve 34 GiB of metadata blocks.
  const std::string p = path("16t.pool");
  const auto sb = craft_image(p, (pmpage::MAX_POOL_PAGES << pmpage::PAGE_SHIFT) + 40 * (MiB << 10));
  write_word(p, sb.region_table_offset, pmpage::detail::make_region_word(pmpage::detail::region_state::head, 18));
  const json info = run_json({"info", p, "--json"}, 0);
  EXPECT_EQ(info["nr_regions"], std::uint64_t{1} << 23);
  EXPECT_EQ(info["largest_free_order"], 18);
  const result r = run({"map", p});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("1 cell = 2048 regions"), std::string::npos) << r.out.substr(0, 200);
  EXPECT_LE(std::count(r.out.begin(), r.out.end(), '\n'), 64 + 5);
  ASSERT_EQ(run({"map", p, "--png", path("16t.png")}).code, 0);
  std::uint32_t w = 0, h = 0;
  ASSERT_TRUE(png_size(path("16t.png"), w, h));
  EXPECT_EQ(w, 1024u);
  EXPECT_EQ(h, 768u);
}

TEST_F(Tool, MapPngIsAValidImageOfTheDocumentedSize) {
  const std::string p = make("fragmented");
  const std::string png = path("frag.png");
  result r = run({"map", p, "--png", png});
  ASSERT_EQ(r.code, 0) << r.err;
  std::uint32_t w = 0, h = 0;
  ASSERT_TRUE(png_size(png, w, h)) << "not a PNG";
  EXPECT_EQ(w, 1024u);
  EXPECT_EQ(h, 768u);
  EXPECT_FALSE(fs::exists(png + ".tmp"));

  r = run({"map", p, "--png", png, "--png-width", "800", "--png-height", "600"});
  ASSERT_EQ(r.code, 0) << r.err;
  ASSERT_TRUE(png_size(png, w, h));
  EXPECT_EQ(w, 800u);
  EXPECT_EQ(h, 600u);

  // The smallest pool: 4 MiB, one region.
  const std::string small = path("small.pool");
  ASSERT_EQ(run({"create", small, "--size", "4M"}).code, 0);
  ASSERT_EQ(run({"map", small, "--png", path("small.png")}).code, 0) << run({"map", small, "--png", path("small.png")}).err;
  ASSERT_TRUE(png_size(path("small.png"), w, h));
  EXPECT_EQ(w, 1024u);
}

TEST_F(Tool, MapPngWithoutGnuplotIsAnOperationalError) {
  const std::string p = make("empty");
  const result r = run({"map", p, "--png", path("x.png")}, {"PATH=/nonexistent"});
  EXPECT_EQ(r.code, 8);
  EXPECT_NE(r.err.find("gnuplot"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(path("x.png")));
}

TEST_F(Tool, DumpDecodesASplitRegion) {
  const std::string p = make("healthy");
  const auto sb = read_sb(p);
  const std::uint64_t r = split_region_with_owner(p, sb);
  const json j = run_json({"dump", p, "--region", std::to_string(r), "--json"}, 0);
  EXPECT_EQ(j["region"], r);
  EXPECT_EQ(j["kind"], "split");
  EXPECT_EQ(j["word"], 2u);
  EXPECT_EQ(j["word_offset"], sb.region_table_offset + 8 * r);
  EXPECT_EQ(j["first_pfn"], sb.pfn_base + 512 * r);
  unsigned next = 0, owned = 0;
  for (const auto& run : j["runs"]) {
    EXPECT_EQ(run["first"], next);
    next = run["last"].get<unsigned>() + 1;
    if (run["state"] == "allocation" && !run["owner"].is_null()) {
      ++owned;
      EXPECT_EQ(run["slot_value"], run["pfn"]);
    }
    EXPECT_NE(run["state"], "invalid");
  }
  EXPECT_EQ(next, 512u);
  EXPECT_GE(owned, 1u);
  EXPECT_TRUE(j["problems"].empty());

  const result human = run({"dump", p, "--region", std::to_string(r)});
  EXPECT_EQ(human.code, 0);
  EXPECT_NE(human.out.find("head order"), std::string::npos) << human.out;
  EXPECT_NE(human.out.find("owned by the slot at file offset"), std::string::npos) << human.out;

  EXPECT_EQ(run({"dump", p, "--region", std::to_string(sb.nr_regions)}).code, 8);
}

// ---- damage -----------------------------------------------------------------------------------

struct damage_case {
  const char* name;
  const char* structure;  // the problem's structure
  const char* rule;       // its rule
  int check_code;         // read-only check
  int repair_code;        // check --repair
  std::function<void(const std::string&, const pmpage::detail::superblock&)> damage;
};

const std::vector<damage_case> DAMAGES = {
    {"superblock A", "superblock A", "SB1", 4, 1,
     [](const std::string& p, const auto&) { flip_bit(p, 16, 0); }},
    {"superblock B", "superblock B", "SB1", 4, 1,
     [](const std::string& p, const auto&) { flip_bit(p, 4096 + 40, 5); }},
    {"region word one bit off", "region table", "R1", 4, 1,
     [](const std::string& p, const auto& sb) {
       flip_bit(p, sb.region_table_offset + 8 * split_region_with_owner(p, sb) + 2, 4);
     }},
    {"region word garbage", "region table", "R1", 4, 4,
     [](const std::string& p, const auto& sb) {
       write_word(p, sb.region_table_offset + 8 * 3, 0x00ff00ffull);
     }},
    {"page-map code", "page map", "P2", 4, 4,
     [](const std::string& p, const auto& sb) {
       const std::uint64_t r = split_region_with_owner(p, sb);
       unsigned page = 511;
       while (code_of(p, sb, r, page) != 0) --page;
       const std::uint64_t off = sb.page_map_offset + 256 * r + 8 * (page / 16);
       write_word(p, off, read_word(p, off) | (0xbull << (4 * (page % 16))));
     }},
    {"owner entry", "owner table", "O1", 4, 1,
     [](const std::string& p, const auto& sb) {
       const std::uint64_t r = split_region_with_owner(p, sb);
       for (unsigned i = 0; i < 512; ++i) {
         const std::uint64_t off = sb.owner_table_offset + 4096 * r + 8 * i;
         if (code_of(p, sb, r, i) == 0xa && read_word(p, off)) return flip_bit(p, off + 1, 3);
       }
     }},
    // A torn lane is recovery's leftover, not damage: clean to a read-only check; a repairing
    // check runs recovery, which clears it, and says so with 1.
    {"intent lane", "intent lanes", "L", 0, 1,
     [](const std::string& p, const auto& sb) { flip_bit(p, sb.lanes_offset + 64 * 5 + 8, 0); }},
};

TEST_F(Tool, DamageIsFoundLocatedAndRepairedWhenSafe) {
  for (const auto& d : DAMAGES) {
    SCOPED_TRACE(d.name);
    const std::string p = make("healthy");
    d.damage(p, read_sb(p));
    const std::size_t before = file_hash(p);

    const json j = run_json({"check", p, "--json"}, d.check_code);
    EXPECT_EQ(j["exit_code"], d.check_code);
    ASSERT_FALSE(j["problems"].empty()) << j.dump(2);
    bool found = false;
    for (const auto& pr : j["problems"]) {
      expect_problem_schema(pr);
      if (pr["structure"] == d.structure && pr["rule"].get<std::string>().rfind(d.rule, 0) == 0) {
        found = true;
        EXPECT_GT(pr["length"].get<std::uint64_t>(), 0u);
        EXPECT_FALSE(pr["what"].get<std::string>().empty());
        EXPECT_EQ(pr["repaired"], false);
      }
    }
    EXPECT_TRUE(found) << j.dump(2);
    const result human = run({"check", p});
    EXPECT_EQ(human.code, d.check_code);
    EXPECT_NE(human.out.find(d.structure), std::string::npos) << human.out;
    EXPECT_NE(human.out.find("file offset 0x"), std::string::npos) << human.out;
    EXPECT_NE(human.out.find("exit " + std::to_string(d.check_code)), std::string::npos) << human.out;

    // Described, drawn and dumped, without a byte changed.
    const json info = run_json({"info", p, "--json"}, 0);
    EXPECT_EQ(info["problem_count"], j["problems"].size());
    EXPECT_EQ(run({"map", p}).code, 0);
    EXPECT_EQ(run({"dump", p, "--region", "3"}).code, 0);
    EXPECT_EQ(file_hash(p), before) << "a read-only command wrote";

    const json rep = run_json({"check", p, "--repair", "--json"}, d.repair_code);
    EXPECT_EQ(rep["repair"], true);
    if (d.repair_code == 1) {
      EXPECT_GE(rep["counts"]["repaired"].get<std::uint64_t>(), 1u);
      EXPECT_EQ(rep["counts"]["uncorrected"], 0u);
      EXPECT_NE(file_hash(p), before);
    }
    if (d.repair_code <= 1) {
      const json again = run_json({"check", p, "--json"}, 0);
      EXPECT_TRUE(again["problems"].empty()) << again.dump(2);
    } else {
      EXPECT_EQ(run({"check", p}).code, 4);
    }
  }
}

TEST_F(Tool, AnUndecidableRegionIsDrawnDamaged) {
  const std::string p = make("empty");
  const auto sb = read_sb(p);
  write_word(p, sb.region_table_offset + 8 * 7, 0x00ff00ffull);
  const result r = run({"map", p});
  ASSERT_EQ(r.code, 0);
  const std::string cells = map_cells(r.out);
  ASSERT_EQ(cells.size(), 31u);
  EXPECT_EQ(cells[7], 'X') << cells;
  EXPECT_EQ(run_json({"info", p, "--json"}, 0)["damaged_regions"], 1u);
  const result dump = run({"dump", p, "--region", "7"});
  EXPECT_EQ(dump.code, 0);
  EXPECT_NE(dump.out.find("0x0000000000ff00ff"), std::string::npos) << dump.out;
}

TEST_F(Tool, ATruncatedPoolIsDamageNotACrash) {
  const std::string p = make("healthy");
  fs::resize_file(p, 40 * MiB);
  const std::size_t before = file_hash(p);
  const json j = run_json({"check", p, "--json"}, 4);
  EXPECT_EQ(j["exit_code"], 4);
  EXPECT_FALSE(j["problems"].empty());
  const result info = run({"info", p, "--json"});
  const json ij = json::parse(info.out);
  EXPECT_EQ(info.code, ij["readable"].get<bool>() ? 0 : 4);
  expect_info_schema(ij);
  const result map = run({"map", p});
  EXPECT_EQ(map.code, ij["readable"].get<bool>() ? 0 : 4);
  EXPECT_EQ(file_hash(p), before);
  EXPECT_EQ(run({"check", p, "--repair"}).code, 4);
  EXPECT_EQ(fs::file_size(p), 40 * MiB);
}

TEST_F(Tool, AnInterruptedCreationIsNotAPoolAndCreateRedoesIt) {
  const std::string p = path("interrupted.pool");
  {
    std::ofstream f(p, std::ios::binary);
    f.seekp(8 * MiB - 1);
    f.put(0);
  }
  std::uint64_t marker;
  std::memcpy(&marker, pmpage::detail::CREATING_MAGIC, sizeof marker);
  write_word(p, 0, marker);
  write_word(p, 4096, marker);
  const std::size_t before = file_hash(p);

  const json j = run_json({"check", p, "--json"}, 4);
  EXPECT_EQ(j["readable"], false);
  ASSERT_FALSE(j["problems"].empty());
  EXPECT_NE(j["problems"][0]["what"].get<std::string>().find("interrupted"), std::string::npos) << j.dump(2);
  const json info = run_json({"info", p, "--json"}, 4);
  expect_info_schema(info);
  EXPECT_EQ(info["readable"], false);
  EXPECT_EQ(info["nr_regions"], 0u);
  EXPECT_NE(run({"info", p}).out.find("No readable pool"), std::string::npos);
  EXPECT_EQ(run({"map", p}).code, 4);
  EXPECT_EQ(run({"map", p, "--png", path("i.png")}).code, 4);
  EXPECT_FALSE(fs::exists(path("i.png")));
  EXPECT_EQ(run({"dump", p, "--region", "0"}).code, 8);
  EXPECT_EQ(file_hash(p), before);

  const result c = run({"create", p});
  EXPECT_EQ(c.code, 0) << c.err;
  EXPECT_EQ(run({"check", p}).code, 0);
}

// ---- a pool held by another process -----------------------------------------------------------

/// A child process that holds the pool open (pool::open, for writing) until destroyed.
class holder {
 public:
  explicit holder(const std::string& path) {
    int ready[2], quit[2];
    EXPECT_EQ(::pipe(ready), 0);
    EXPECT_EQ(::pipe(quit), 0);
    pid_ = ::fork();
    if (pid_ == 0) {
      ::close(ready[0]);
      ::close(quit[1]);
      char c = 'n';
      try {
        pmpage::pool p = pmpage::pool::open(path);
        c = 'y';
        (void)!::write(ready[1], &c, 1);
        (void)!::read(quit[0], &c, 1);  // EOF when the parent lets go
        p.close();
      } catch (...) {
        (void)!::write(ready[1], &c, 1);
      }
      ::_exit(0);
    }
    ::close(ready[1]);
    ::close(quit[0]);
    quit_ = quit[1];
    char c = 0;
    EXPECT_EQ(::read(ready[0], &c, 1), 1);
    EXPECT_EQ(c, 'y') << "the child could not open " << path;
    ::close(ready[0]);
  }
  ~holder() {
    ::close(quit_);
    int status;
    ::waitpid(pid_, &status, 0);
  }

 private:
  pid_t pid_ = -1;
  int quit_ = -1;
};

TEST_F(Tool, APoolOpenInAnotherProcessIsRefused) {
  const std::string p = make("healthy");
  {
    holder h(p);
    for (const auto& args : std::vector<std::vector<std::string>>{{"info", p},
                                                                  {"info", p, "--json"},
                                                                  {"check", p},
                                                                  {"check", p, "--repair"},
                                                                  {"map", p},
                                                                  {"dump", p, "--region", "0"},
                                                                  {"create", p, "--force"}}) {
      const result r = run(args);
      EXPECT_EQ(r.code, 8) << args[0];
      EXPECT_NE(r.err.find("open"), std::string::npos) << args[0] << ": " << r.err;
      EXPECT_TRUE(r.out.empty() || args[0] == "map") << r.out;
    }
  }
  EXPECT_EQ(run({"check", p}).code, 0);
}

TEST_F(Tool, ReadOnlyHoldersDoNotBlockReaders) {
  const std::string p = make("fragmented");
  // A shared lock is what a read-only opener (another `pmpage info`, fsck) holds.
  const int fd = ::open(p.c_str(), O_RDONLY);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::flock(fd, LOCK_SH), 0);
  EXPECT_EQ(run({"info", p}).code, 0);
  EXPECT_EQ(run({"check", p}).code, 0);
  EXPECT_EQ(run({"map", p}).code, 0);
  const result r = run({"check", p, "--repair"});
  EXPECT_EQ(r.code, 8);
  EXPECT_NE(r.err.find("open"), std::string::npos) << r.err;
  ::close(fd);
  EXPECT_EQ(run({"check", p, "--repair"}).code, 0);
}

// ---- grow ---------------------------------------------------------------------------------------

// `pmpage grow`: 0 when grown (info then agrees: regions, pages, file size, pfns extended at the
// end), 8 for every refusal (not larger, no whole region, beyond the capacity, a pool created
// without --max-size, open in another process), 16 for a bad command line.
TEST_F(Tool, GrowExitCodesAndInfoAgrees) {
  const std::string p = path("grow.pool");
  ASSERT_EQ(run({"create", p, "--size", "16M", "--max-size", "128M"}).code, 0);
  const json before = run_json({"info", p, "--json"}, 0);
  EXPECT_GT(before["max_regions"].get<std::uint64_t>(), before["nr_regions"].get<std::uint64_t>());
  EXPECT_NE(run({"info", p}).out.find("can grow to"), std::string::npos);

  const json g = run_json({"grow", p, "--size", "64M", "--json"}, 0);
  EXPECT_EQ(g["old_regions"], before["nr_regions"]);
  EXPECT_EQ(g["max_regions"], before["max_regions"]);
  EXPECT_EQ(g["device_size"], 64 * MiB);
  const json after = run_json({"info", p, "--json"}, 0);
  EXPECT_EQ(after["nr_regions"], g["new_regions"]);
  EXPECT_EQ(after["file_size"], 64 * MiB);
  EXPECT_EQ(after["device_size"], 64 * MiB);
  EXPECT_EQ(after["total_pages"], g["new_regions"].get<std::uint64_t>() * 512);
  EXPECT_EQ(after["free_pages"], after["total_pages"]);
  EXPECT_EQ(after["start_pfn"], before["start_pfn"]);
  EXPECT_EQ(after["end_pfn"], before["start_pfn"].get<std::uint64_t>() + after["total_pages"].get<std::uint64_t>());
  EXPECT_EQ(after["data_offset"], before["data_offset"]);
  EXPECT_EQ(run({"check", p}).code, 0);

  const result same = run({"grow", p, "--size", "64M"});
  EXPECT_EQ(same.code, 8);
  EXPECT_NE(same.err.find("never shrinks"), std::string::npos) << same.err;
  EXPECT_EQ(run({"grow", p, "--size", "32M"}).code, 8);
  const result partial = run({"grow", p, "--size", std::to_string(64 * MiB + 4096)});
  EXPECT_EQ(partial.code, 8);
  EXPECT_NE(partial.err.find("no whole 2 MiB region"), std::string::npos) << partial.err;
  const result beyond = run({"grow", p, "--size", "1G"});
  EXPECT_EQ(beyond.code, 8);
  EXPECT_NE(beyond.err.find("capacity"), std::string::npos) << beyond.err;
  {
    holder h(p);
    const result open = run({"grow", p, "--size", "128M"});
    EXPECT_EQ(open.code, 8);
    EXPECT_NE(open.err.find("open"), std::string::npos) << open.err;
  }
  EXPECT_EQ(run({"grow", p, "--size", "128M"}).code, 0);
  EXPECT_EQ(run_json({"info", p, "--json"}, 0)["nr_regions"], before["max_regions"]);
  EXPECT_EQ(run({"grow", p, "--size", "130M"}).code, 8);  // at its capacity

  const std::string fixed = path("fixed.pool");
  ASSERT_EQ(run({"create", fixed, "--size", "16M"}).code, 0);
  const result no_room = run({"grow", fixed, "--size", "64M"});
  EXPECT_EQ(no_room.code, 8);
  EXPECT_NE(no_room.err.find("max-size"), std::string::npos) << no_room.err;

  EXPECT_EQ(run({"grow", p}).code, 16);
  EXPECT_EQ(run({"grow", p, "--size", "12Q"}).code, 16);
  EXPECT_EQ(run({"grow", path("nope.pool"), "--size", "64M"}).code, 8);
}

// The refusals say what the operator can do, in this tool's terms: at its capacity no size is
// suggested (the next region is beyond it), the create options are named as flags, info says the
// pool is at its capacity (it was created with --max-size), and the message has no stray ")".
TEST_F(Tool, GrowAndCreateRefusalsNameTheCapacityAndTheToolsOptions) {
  const std::string p = path("full.pool");
  ASSERT_EQ(run({"create", p, "--size", "16M", "--max-size", "64M"}).code, 0);
  const result beyond = run({"grow", p, "--size", "1G"});
  EXPECT_EQ(beyond.code, 8);
  EXPECT_EQ(beyond.err.find("))"), std::string::npos) << beyond.err;
  EXPECT_NE(beyond.err.find("--max-size"), std::string::npos) << beyond.err;
  EXPECT_EQ(beyond.err.find("options."), std::string::npos) << beyond.err;
  const json j = run_json({"info", p, "--json"}, 0);
  const std::uint64_t cap_bytes = j["data_offset"].get<std::uint64_t>() + j["max_regions"].get<std::uint64_t>() * 2 * MiB;
  ASSERT_EQ(run({"grow", p, "--size", std::to_string(cap_bytes)}).code, 0);
  const result at = run({"grow", p, "--size", std::to_string(cap_bytes + MiB)});
  EXPECT_EQ(at.code, 8);
  EXPECT_NE(at.err.find("at its capacity"), std::string::npos) << at.err;
  EXPECT_EQ(at.err.find("the next needs"), std::string::npos) << at.err;
  const std::string info = run({"info", p}).out;
  EXPECT_NE(info.find("no (at its capacity"), std::string::npos) << info;
  EXPECT_EQ(info.find("created without"), std::string::npos) << info;

  for (const std::vector<std::string>& args : std::vector<std::vector<std::string>>{
           {"create", path("below.pool"), "--size", "16M", "--max-size", "8M"},
           {"create", path("tables.pool"), "--size", "16M", "--max-size", "3T"}}) {
    const result r = run(args);
    EXPECT_EQ(r.code, 8) << r.err;
    EXPECT_NE(r.err.find("--max-size"), std::string::npos) << r.err;
    EXPECT_EQ(r.err.find("options.max_size"), std::string::npos) << r.err;
  }
}

// A negative size is a usage error that says so (CLI11's size parser alone reads "-5M" as
// 2^64 - 5 and reports an integer overflow).
TEST_F(Tool, ANegativeSizeIsAUsageErrorSayingSizeMustBePositive) {
  const std::string g = path("g.pool");
  ASSERT_EQ(run({"create", g, "--size", "16M", "--max-size", "64M"}).code, 0);
  for (const std::vector<std::string>& args : std::vector<std::vector<std::string>>{
           {"create", path("neg.pool"), "--size", "-5M"},
           {"create", path("neg.pool"), "--size=-5M"},
           {"create", path("neg.pool"), "--size", "16M", "--max-size", "-1G"},
           {"grow", g, "--size", "-5M"}}) {
    const result r = run(args);
    EXPECT_EQ(r.code, 16) << args[2] << " " << args[3] << "\n" << r.err;
    EXPECT_NE(r.err.find("must be positive"), std::string::npos) << r.err;
    EXPECT_EQ(r.err.find("overflow"), std::string::npos) << r.err;
  }
  EXPECT_FALSE(fs::exists(path("neg.pool")));
}

// create names the size it was given (the file's, info's "device size"), not the mapped length,
// which leaves out the tail that holds no whole region.
TEST_F(Tool, CreateReportsTheSizeItWasGiven) {
  const std::string p = path("odd.pool");
  const result r = run({"create", p, "--size", "17M"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find(": 17 MiB,"), std::string::npos) << r.out;
  EXPECT_NE(run({"info", p}).out.find("17 MiB"), std::string::npos);
}

// A power failure while grow writes a superblock copy (4 KiB, not atomic) leaves it torn beside a
// valid copy: `check` names it as recovery's leftover, exit 0, as open repairs it silently; copy
// B torn keeps the old size, copy A torn the new one.
TEST_F(Tool, ASuperblockCopyTornByAnInterruptedGrowIsRecoverysLeftoverExit0) {
  const std::string p = path("torn.pool");
  ASSERT_EQ(run({"create", p, "--size", "16M", "--max-size", "64M"}).code, 0);
  const superblock old = read_sb(p);
  ASSERT_EQ(run({"grow", p, "--size", "32M"}).code, 0);
  const superblock grown = read_sb(p);
  ASSERT_GT(grown.nr_regions, old.nr_regions);
  for (unsigned torn : {1u, 0u}) {
    SCOPED_TRACE(torn ? "copy B torn" : "copy A torn");
    const std::string w = path(torn ? "tornB.pool" : "tornA.pool");
    fs::copy_file(p, w, fs::copy_options::overwrite_existing);
    // The torn copy: its first cache line (device_size, nr_regions) new, the rest old.
    superblock t = old;
    std::memcpy(&t, &grown, 64);
    const superblock& a = torn ? old : t;
    const superblock& b = torn ? t : grown;
    {
      std::fstream f(w, std::ios::binary | std::ios::in | std::ios::out);
      f.write(reinterpret_cast<const char*>(&a), sizeof a);
      f.write(reinterpret_cast<const char*>(&b), sizeof b);
    }
    const result r = run({"check", w});
    EXPECT_EQ(r.code, 0) << r.out << r.err;
    EXPECT_NE(r.out.find("interrupted by a crash"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("recovery"), std::string::npos) << r.out;
    const json j = run_json({"info", w, "--json"}, 0);
    EXPECT_EQ(j["nr_regions"], torn ? old.nr_regions : grown.nr_regions);
    EXPECT_EQ(run({"check", w, "--repair"}).code, 1);
    EXPECT_EQ(run({"check", w}).code, 0);
  }
}

// ---- reidentify -------------------------------------------------------------------------------------

// `pmpage reidentify` on a copied pool file: a new pfn base and uuid, every owning slot rewritten,
// the copy clean; the original is untouched. Bad input is a usage error (16), a non-pool 8.
TEST_F(Tool, ReidentifyGivesACopyItsOwnPfnsAndLeavesTheOriginal) {
  const std::string p = make("healthy");
  const std::string copy = path("copy.pool");
  fs::copy_file(p, copy);
  const std::size_t original = file_hash(p);
  const json before = run_json({"info", p, "--json"}, 0);
  const json j = run_json({"reidentify", copy, "--json"}, 0);
  EXPECT_EQ(j["old_start_pfn"], before["start_pfn"]);
  EXPECT_NE(j["new_start_pfn"], before["start_pfn"]);
  EXPECT_EQ(j["slots_rewritten"], before["owned_allocations"]);
  EXPECT_GT(j["slots_rewritten"].get<std::uint64_t>(), 0u);
  EXPECT_EQ(j["resumed"], false);
  EXPECT_EQ(file_hash(p), original);
  const json after = run_json({"info", copy, "--json"}, 0);
  EXPECT_EQ(after["start_pfn"], j["new_start_pfn"]);
  EXPECT_EQ(after["uuid"], j["uuid"]);
  EXPECT_NE(after["uuid"], before["uuid"]);
  EXPECT_EQ(after["problem_count"], 0u);
  EXPECT_EQ(run({"check", copy}).code, 0);

  const result human = run({"reidentify", copy, "--pfn-base", "0x500000000"});
  EXPECT_EQ(human.code, 0) << human.err;
  EXPECT_NE(human.out.find("0x500000000"), std::string::npos) << human.out;
  EXPECT_NE(human.out.find("translated by the engine"), std::string::npos) << human.out;
  EXPECT_EQ(run_json({"info", copy, "--json"}, 0)["start_pfn"], 0x500000000u);

  EXPECT_EQ(run({"reidentify", copy, "--pfn-base", "12x"}).code, 16);
  const result odd = run({"reidentify", copy, "--pfn-base", "0x500000001"});
  EXPECT_EQ(odd.code, 8);
  EXPECT_NE(odd.err.find("multiple of 2^28"), std::string::npos) << odd.err;
  const std::string junk = path("junk");
  { std::ofstream(junk) << std::string(64 * 1024, 'x'); }
  EXPECT_EQ(run({"reidentify", junk}).code, 8);
}

}  // namespace

// ---- bad blocks (docs/cli.md "Bad blocks") -----------------------------------------------------

namespace {

/// The device offset of the first page of the first split region and of the first free region of
/// the "healthy" pool, and one of its allocated pages.
struct healthy_places {
  std::uint64_t free_page = 0, allocated_page = 0, free_region_page = 0;
  pmpage::pfn_t allocated_pfn = 0;
};

healthy_places places_of(const std::string& p) {
  const auto sb = read_sb(p);
  healthy_places h;
  for (std::uint64_t r = 0; r < sb.nr_regions; ++r) {
    const auto w = read_word(p, sb.region_table_offset + 8 * r);
    if (r == 0 && (w & 0xff) == 0) h.free_region_page = sb.data_offset;  // region 0 is never a tail
    if ((w & 0xff) != 2) continue;
    for (unsigned i = 0; i < 512; ++i) {
      const unsigned c = code_of(p, sb, r, i);
      if (c == 1 && !h.allocated_page) {  // an order-0 head
        h.allocated_page = sb.data_offset + (r << 21) + i * 4096ull;
        h.allocated_pfn = (pmpage::pfn_t{sb.section_id} << 32) + (r << 9) + i;
      }
      if (c == 0 && !h.free_page) h.free_page = sb.data_offset + (r << 21) + i * 4096ull;
    }
  }
  return h;
}

std::string range(std::uint64_t off, std::uint64_t len) {
  char b[64];
  std::snprintf(b, sizeof b, "0x%llx:%llu", (unsigned long long)off, (unsigned long long)len);
  return b;
}

}  // namespace

TEST_F(Tool, CheckInfoAndMapReportBadBlocksAndWhatOpenMakesOfThem) {
  const std::string p = make("healthy");
  const healthy_places h = places_of(p);
  ASSERT_TRUE(h.free_page && h.allocated_page && h.free_region_page);
  const std::size_t before = file_hash(p);
  const std::vector<std::string> bad = {"--bad-block", range(h.allocated_page + 512, 512), "--bad-block",
                                        range(h.free_page, 4096), "--bad-block", range(h.free_region_page, 512)};
  // An allocated page in a bad block is damage (its data is lost): exit 4, never repaired.
  std::vector<std::string> args = {"check", p, "--json"};
  args.insert(args.end(), bad.begin(), bad.end());
  const json j = run_json(args, 4);
  ASSERT_EQ(j["bad_blocks"].size(), 3u) << j.dump(2);
  std::map<std::string, json> by_kind;
  for (const auto& f : j["bad_blocks"]) by_kind[f["kind"].get<std::string>()] = f;
  ASSERT_TRUE(by_kind.count("allocated") && by_kind.count("free")) << j.dump(2);
  EXPECT_EQ(by_kind["allocated"]["pfn"], h.allocated_pfn);
  EXPECT_EQ(by_kind["allocated"]["head"], h.allocated_pfn);
  EXPECT_EQ(by_kind["allocated"]["order"], 0);
  EXPECT_NE(by_kind["allocated"]["advice"].get<std::string>().find("PG_hwpoison"), std::string::npos);
  EXPECT_NE(by_kind["free"]["advice"].get<std::string>().find("quarantines"), std::string::npos);
  ASSERT_EQ(j["problems"].size(), 1u) << j.dump(2);
  EXPECT_EQ(j["problems"][0]["rule"], "BB2");
  expect_problem_schema(j["problems"][0]);
  args = {"check", p, "--repair"};
  args.insert(args.end(), bad.begin(), bad.end());
  const result human = run(args);
  EXPECT_EQ(human.code, 4) << human.out << human.err;
  for (const char* s : {"[BB2]", "bad block", "(allocated)", "(free)", "quarantined at open", "1 allocated page poisoned"})
    EXPECT_NE(human.out.find(s), std::string::npos) << s << ":\n" << human.out;
  // info and map say the same; nothing was written by any of them (not even check --repair).
  std::vector<std::string> info = {"info", p, "--json"};
  info.insert(info.end(), bad.begin(), bad.end());
  const json ij = run_json(info, 0);
  expect_info_schema(ij);
  EXPECT_EQ(ij["bad_blocks"].size(), 3u);
  info = {"info", p};
  info.insert(info.end(), bad.begin(), bad.end());
  const result it = run(info);
  EXPECT_NE(it.out.find("Bad blocks"), std::string::npos) << it.out;
  EXPECT_NE(it.out.find("poisoned pfn"), std::string::npos) << it.out;
  std::vector<std::string> map = {"map", p};
  map.insert(map.end(), bad.begin(), bad.end());
  const result m = run(map);
  EXPECT_EQ(m.code, 0) << m.err;
  EXPECT_NE(m.out.find("(PG_hwpoison at open"), std::string::npos) << m.out;
  EXPECT_NE(m.out.find("(quarantined at open)"), std::string::npos) << m.out;
  EXPECT_EQ(file_hash(p), before);
  // Without the list the pool is clean.
  EXPECT_EQ(run({"check", p, "--no-device-bad-blocks"}).code, 0);
}

TEST_F(Tool, ABadBlockInTheMetadataIsNamedAndNothingElseIsRead) {
  const std::string p = make("healthy");
  const auto sb = read_sb(p);
  const json j = run_json({"check", p, "--json", "--bad-block", range(sb.page_map_offset + 256 * 2, 256)}, 4);
  ASSERT_EQ(j["bad_blocks"].size(), 1u) << j.dump(2);
  EXPECT_EQ(j["bad_blocks"][0]["kind"], "metadata");
  const std::string where = j["bad_blocks"][0]["where"];
  EXPECT_NE(where.find("the page maps"), std::string::npos) << where;
  EXPECT_NE(where.find("region 2"), std::string::npos) << where;
  EXPECT_NE(j["bad_blocks"][0]["advice"].get<std::string>().find("small allocations read as free"), std::string::npos);
  ASSERT_EQ(j["problems"].size(), 1u) << j.dump(2);
  EXPECT_EQ(j["problems"][0]["rule"], "BB1");
  // A superblock copy: the advice is that clearing loses nothing.
  const json s = run_json({"check", p, "--json", "--bad-block", "4096:512"}, 4);
  EXPECT_EQ(s["readable"], false);
  EXPECT_NE(s["bad_blocks"][0]["advice"].get<std::string>().find("rewrites the copy from the other one"), std::string::npos);
  // map cannot draw what it did not read.
  EXPECT_EQ(run({"map", p, "--bad-block", range(sb.page_map_offset, 8)}).code, 4);
  // A range outside the file, or malformed: operational error and usage... both refused.
  EXPECT_EQ(run({"check", p, "--bad-block", "0x7fffffffffff:512"}).code, 8);
  EXPECT_EQ(run({"check", p, "--bad-block", "12"}).code, 8);
}

TEST_F(Tool, ClearBadBlockRefusesARangeTheDeviceDoesNotReport) {
  // No NVDIMM here: libpmem2 reports nothing for a file, so nothing may be cleared.
  const std::string p = make("healthy");
  const std::size_t before = file_hash(p);
  const auto sb = read_sb(p);
  const result r = run({"clear-bad-block", p, range(sb.data_offset, 4096)});
  EXPECT_EQ(r.code, 8);
  EXPECT_NE(r.err.find("not inside a bad block the device reports"), std::string::npos) << r.err;
  EXPECT_EQ(file_hash(p), before);
}
