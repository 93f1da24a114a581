// pool_image.hpp — reading, damaging and crafting pool files byte by byte, for the tests of
// the offline checker and the pmpage tool. Uses the on-media format (src/layout.hpp).
#pragma once

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>

#include "layout.hpp"

namespace pmtest::image {

namespace fs = std::filesystem;
namespace detail = pmpage::detail;
using pmpage::detail::superblock;

inline std::string file_bytes(const fs::path& p) {
  std::string s(fs::file_size(p), '\0');
  std::ifstream in(p, std::ios::binary);
  in.read(s.data(), std::streamsize(s.size()));
  return s;
}

inline superblock read_sb(const fs::path& p) {
  superblock sb;
  std::ifstream in(p, std::ios::binary);
  in.read(reinterpret_cast<char*>(&sb), sizeof sb);
  return sb;
}

inline std::uint64_t read_word(const fs::path& p, std::uint64_t off) {
  std::uint64_t v = 0;
  std::ifstream in(p, std::ios::binary);
  in.seekg(std::streamoff(off));
  in.read(reinterpret_cast<char*>(&v), 8);
  return v;
}

inline void write_word(const fs::path& p, std::uint64_t off, std::uint64_t v) {
  std::fstream f(p, std::ios::binary | std::ios::in | std::ios::out);
  f.seekp(std::streamoff(off));
  f.write(reinterpret_cast<const char*>(&v), 8);
}

inline void flip_bit(const fs::path& p, std::uint64_t off, unsigned bit) {
  write_word(p, off & ~std::uint64_t{7}, read_word(p, off & ~std::uint64_t{7}) ^ (std::uint64_t{1} << (bit + 8 * (off & 7))));
}

/// A pool image of `bytes` made by hand on a sparse file: both superblock copies and nothing
/// else (every region FREE). What create would write, without reserving 34 GiB of metadata
/// blocks for a 16 TiB pool: the checker reads only what it needs.
inline superblock craft_image(const fs::path& path, std::uint64_t bytes) {
  detail::layout lay;
  if (!detail::compute_layout(bytes, 4096, std::uint64_t{2} << 20, lay)) throw std::runtime_error("layout");
  const superblock sb = detail::make_superblock(lay, std::uint64_t{4321} << 32, 0x1234, 0, 0);
  {
    std::ofstream o(path, std::ios::binary);
    o.write(reinterpret_cast<const char*>(&sb), sizeof sb);
    o.write(reinterpret_cast<const char*>(&sb), sizeof sb);
  }
  fs::resize_file(path, bytes);
  return sb;
}

}  // namespace pmtest::image
