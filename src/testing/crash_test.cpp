// crash_test.cpp — run_crash_test and the crash-point types: see include/pmpage/testing.hpp.
//
// Two phases. While op runs, the fence hook only copies bytes: each image is stored sparsely
// (sim_impl.hpp: a position in the log of lines fences made durable, plus the unfenced words the
// image keeps). After op returned, the images are rebuilt in capture order on one running copy
// of the media, written to one scratch file each in turn, and checked.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <system_error>

#include "sim_impl.hpp"

namespace pmpage::testing {

namespace {

std::uint64_t splitmix64(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

/// The seed of one image: from the base seed, the crash point and the subset index, so that
/// adding a fence to an operation does not change the images of the fences before it.
std::uint64_t image_seed(std::uint64_t base, std::uint64_t fence, bool before, unsigned subset) {
  return splitmix64(splitmix64(splitmix64(base) ^ fence) ^ (std::uint64_t(subset) << 1 | (before ? 1 : 0)));
}

std::string keep_text(double keep) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.17g", keep);
  // The shortest form that reads back the same ("0.5", not "0.50000000000000000").
  for (int prec = 1; prec <= 17; ++prec) {
    char b[32];
    std::snprintf(b, sizeof b, "%.*g", prec, keep);
    if (std::strtod(b, nullptr) == keep) return b;
  }
  return buf;
}

crash_point parse_only(const char* s) {
  crash_point p;
  unsigned long long fence = 0, seed = 0;
  int before = 0;
  char keep[64] = {};
  int used = 0;
  if (std::sscanf(s, "%llu:%d:%llu:%63[0-9.eE+-]%n", &fence, &before, &seed, keep, &used) != 4 || s[used] != '\0' ||
      (before != 0 && before != 1))
    throw std::invalid_argument(std::string("PMPAGE_CRASH_ONLY=") + s + ": want fence:before(0/1):seed:keep, e.g. 3:1:1234:0.5");
  char* end = nullptr;
  p.keep = std::strtod(keep, &end);
  if (*end != '\0' || p.keep < 0 || p.keep > 1)
    throw std::invalid_argument(std::string("PMPAGE_CRASH_ONLY=") + s + ": keep must be a number in [0, 1]");
  p.fence = fence;
  p.before = before == 1;
  p.seed = seed;
  return p;
}

std::vector<char> read_whole(const std::filesystem::path& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw std::system_error(errno, std::generic_category(), "run_crash_test: cannot open " + path.string());
  std::vector<char> bytes;
  char buf[1 << 16];
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int e = errno;
      ::close(fd);
      throw std::system_error(e, std::generic_category(), "run_crash_test: cannot read " + path.string());
    }
    if (n == 0) break;
    bytes.insert(bytes.end(), buf, buf + n);
  }
  ::close(fd);
  return bytes;
}

/// Writes `head` followed by tail[head.size()..] as the whole file `path`. All-zero blocks are
/// left as holes, so a mostly empty pool costs little scratch space.
void write_image(const std::filesystem::path& path, const std::vector<char>& head, const std::vector<char>& tail) {
  const std::size_t size = std::max(head.size(), tail.size());
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) throw std::system_error(errno, std::generic_category(), "run_crash_test: cannot create " + path.string());
  auto fail = [&](int e) {
    ::close(fd);
    throw std::system_error(e, std::generic_category(), "run_crash_test: cannot write " + path.string());
  };
  if (::ftruncate(fd, off_t(size)) != 0) fail(errno);
  static const char zeros[4096] = {};
  for (std::size_t off = 0; off < size; off += sizeof zeros) {
    const std::size_t n = std::min(sizeof zeros, size - off);
    const char* src = off < head.size() ? head.data() + off : tail.data() + off;
    // The boundary block may straddle head and tail: copy it.
    char mixed[sizeof zeros];
    if (off < head.size() && off + n > head.size()) {
      std::memcpy(mixed, head.data() + off, head.size() - off);
      std::memcpy(mixed + (head.size() - off), tail.data() + head.size(), off + n - head.size());
      src = mixed;
    }
    if (std::memcmp(src, zeros, n) == 0) continue;
    for (std::size_t done = 0; done < n;) {
      const ssize_t w = ::pwrite(fd, src + done, n - done, off_t(off + done));
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) fail(w < 0 ? errno : EIO);
      done += std::size_t(w);
    }
  }
  ::close(fd);
}

}  // namespace

std::string crash_point::label() const {
  std::string s = fence ? "fence " + std::to_string(fence) + (before ? " (before)" : " (after)") : "after the operation returned";
  if (keep <= 0) return s + ", nothing unfenced kept";
  if (keep >= 1) return s + ", everything written kept (seed " + std::to_string(seed) + ")";
  return s + ", random subset seed " + std::to_string(seed) + " (keep " + keep_text(keep) + ")";
}

std::string crash_report::describe() const {
  std::ostringstream o;
  if (failures.empty()) {
    o << "all " << images << " crash images recovered acceptably (" << fences << " fences)\n";
    return o.str();
  }
  o << failures.size() << " of " << images << " crash images failed (the operation issued " << fences << " fences):\n";
  for (const std::string& f : failures) o << "  " << f << "\n";
  if (!failed.empty()) {
    const crash_point& p = failed.front();
    o << "to rerun only the first: crash_options::only = crash_point{" << p.fence << ", " << (p.before ? "true" : "false")
      << ", " << p.seed << "ull, " << keep_text(p.keep) << "}, or the environment variable PMPAGE_CRASH_ONLY=" << p.fence << ":"
      << (p.before ? 1 : 0) << ":" << p.seed << ":" << keep_text(p.keep) << "\n";
  }
  return o.str();
}

crash_report run_crash_test(const std::filesystem::path& path, const crash_options& opts,
                            const std::function<void(const std::shared_ptr<pmpage::persistence>& device)>& op,
                            const std::function<std::string(const std::filesystem::path& image, const crash_point& at)>& check) {
  std::optional<crash_point> only = opts.only;
  if (const char* env = std::getenv("PMPAGE_CRASH_ONLY"); env && *env) only = parse_only(env);

  auto sim = opts.granularity ? std::make_shared<sim_pmem>(opts.tracked, *opts.granularity)
                              : std::make_shared<sim_pmem>(opts.tracked);
  sim_pmem::impl& model = sim_access::of(*sim);
  {
    std::lock_guard g(model.mu);
    model.logging = true;
  }

  struct captured {
    crash_point at;
    sim_pmem::impl::sparse_image img;
  };
  std::vector<captured> caps;
  std::mutex caps_mu;  // op may fence on several threads
  // Taken and recorded under caps_mu, so caps is in log order (the rebuild below relies on it).
  auto capture = [&](const crash_point& at) {
    std::lock_guard g(caps_mu);
    caps.push_back({at, model.capture(at.seed, at.keep)});
  };
  sim->on_fence = [&](std::uint64_t k, bool before) {
    // Only bytes are copied here: the hook runs inside the pool's drain, perhaps under its locks.
    if (only) {
      if (only->fence == k && only->before == before) capture(*only);
      return;
    }
    capture({k, before, image_seed(opts.seed, k, before, 0), 0.0});
    capture({k, before, image_seed(opts.seed, k, before, 1), 1.0});
    for (unsigned s = 0; s < opts.random_subsets; ++s)
      capture({k, before, image_seed(opts.seed, k, before, 2 + s), opts.keep_probability});
  };
  try {
    op(sim);
  } catch (...) {
    sim->on_fence = nullptr;
    throw;
  }
  sim->on_fence = nullptr;

  crash_report rep;
  rep.fences = sim->fences();
  // The operation returned: with nothing unfenced kept, all of its effects must be there.
  if (!only)
    capture({0, false, image_seed(opts.seed, 0, false, 0), 0.0});
  else if (only->fence == 0)
    capture(*only);
  bool attached;
  {
    std::lock_guard g(model.mu);
    attached = model.attached_once;
  }
  if (!attached) {
    // Nothing was tested: op never opened a pool with the simulated device (it used another
    // backend, or an engine kept a registration made with an earlier device). A pass here would
    // be a lie.
    rep.failures.push_back("the operation never opened a pool on the simulated device: pass `device` as the backend of "
                           "every pool it opens on " + path.string() + " (an engine registered with an earlier device "
                           "must be re-registered)");
    rep.failed.push_back(crash_point{});
    return rep;
  }
  if (only && caps.empty()) {
    rep.failures.push_back(only->label() + ": not reached: the operation issued only " + std::to_string(rep.fences) + " fences");
    rep.failed.push_back(*only);
  }

  // Rebuild and check. Bytes beyond the tracked range are the file as op left it.
  const std::vector<char> end_file = read_whole(path);
  std::vector<char> media;
  std::size_t applied = 0;
  {
    std::lock_guard g(model.mu);
    media = model.initial;  // empty if op never opened a pool on the device
  }
  const std::filesystem::path scratch =
      opts.scratch_dir / ("pmpage-crash-test-" + std::to_string(::getpid()) + "-" + path.filename().string());
  std::vector<std::pair<std::size_t, std::uint64_t>> saved;
  try {
    for (const captured& c : caps) {
      {
        std::lock_guard g(model.mu);  // op has returned; the lock only keeps the model's rules
        for (; applied < c.img.log_len; ++applied) {
          const auto& e = model.log[applied];
          const std::size_t at = e.line * sim_pmem::impl::LINE;
          if (at >= media.size()) continue;
          std::memcpy(media.data() + at, e.bytes.data(), std::min(sim_pmem::impl::LINE, media.size() - at));
        }
      }
      saved.clear();
      for (auto [off, word] : c.img.words) {
        std::uint64_t old;
        std::memcpy(&old, media.data() + off, 8);
        saved.emplace_back(off, old);
        std::memcpy(media.data() + off, &word, 8);
      }
      write_image(scratch, media, end_file);
      for (auto [off, old] : saved) std::memcpy(media.data() + off, &old, 8);
      ++rep.images;
      std::string why;
      try {
        why = check(scratch, c.at);
      } catch (const std::exception& e) {
        why = std::string("the check threw: ") + e.what();
      } catch (...) {
        why = "the check threw";
      }
      if (!why.empty()) {
        rep.failures.push_back(c.at.label() + ": " + why);
        rep.failed.push_back(c.at);
      }
    }
  } catch (...) {
    ::unlink(scratch.c_str());
    throw;
  }
  ::unlink(scratch.c_str());
  return rep;
}

}  // namespace pmpage::testing
