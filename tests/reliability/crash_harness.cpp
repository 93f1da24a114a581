// crash_harness.cpp — see crash_harness.hpp.
#include "crash_harness.hpp"

#include <pmpage/fsck.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <set>
#include <sstream>

#include <pmpage/testing.hpp>

namespace pmpage::testing {

namespace {

// The allocator's stores all land below the data area, which starts at 2 MiB for pools of up to
// a few GiB; the root slots are in there too.
constexpr std::size_t TRACKED = 2u << 20;
// scenario::every_subset enumerates all 2^n - 2 mixed subsets only up to this many words.
constexpr std::size_t MAX_EVERY_SUBSET_WORDS = 10;

struct image {
  std::string label;
  std::vector<char> bytes;
};

std::string scratch_path(const std::string& name, const char* what) {
  return "/dev/shm/pmpage-crash-" + name + "-" + what + "-" + std::to_string(::getpid());
}

void write_image(const std::string& path, std::uint64_t size, const std::vector<char>& bytes) {
  ::unlink(path.c_str());
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC, 0600);
  if (fd < 0) throw std::runtime_error("cannot create " + path);
  if (::ftruncate(fd, off_t(size)) != 0 || ::pwrite(fd, bytes.data(), bytes.size(), 0) != ssize_t(bytes.size())) {
    ::close(fd);
    throw std::runtime_error("cannot write " + path);
  }
  ::close(fd);
}

void capture_all(sim_pmem& sim, std::vector<image>& out, const std::string& where, std::uint64_t k, bool before,
                 unsigned seeds, bool every_subset = false) {
  const std::string label = where + " fence " + std::to_string(k) + (before ? " (before)" : " (after)");
  out.push_back({label + ", nothing unfenced kept", sim.crash_image(0, 0.0)});
  out.push_back({label + ", everything written kept", sim.crash_image(0, 1.0)});
  if (every_subset) {
    // Every mix of the words written since the last fence (each old or new), when they are few.
    const std::vector<char> none = out[out.size() - 2].bytes, all = out.back().bytes;
    std::vector<std::size_t> words;
    for (std::size_t w = 0; w + 8 <= none.size() && w + 8 <= all.size(); w += 8)
      if (std::memcmp(none.data() + w, all.data() + w, 8) != 0) words.push_back(w);
    if (words.size() <= MAX_EVERY_SUBSET_WORDS)
      for (std::uint64_t mask = 1; mask + 1 < (std::uint64_t{1} << words.size()); ++mask) {
        std::vector<char> img = none;
        std::string kept;
        for (std::size_t i = 0; i < words.size(); ++i)
          if (mask >> i & 1) {
            std::memcpy(img.data() + words[i], all.data() + words[i], 8);
            kept += (kept.empty() ? "" : ",") + std::to_string(words[i]);
          }
        out.push_back({label + ", words at offsets " + kept + " kept of " + std::to_string(words.size()), std::move(img)});
      }
  }
  for (unsigned s = 1; s <= seeds; ++s) {
    const std::uint64_t seed = k * 1000003 + s * 7919 + (before ? 1 : 0);
    out.push_back({label + ", random subset seed " + std::to_string(seed), sim.crash_image(seed, 0.5)});
  }
}

std::string describe(const pool_state& s) {
  std::ostringstream o;
  o << "{";
  for (auto& [pfn, order] : s.allocations) o << std::hex << pfn << std::dec << ":" << order << " ";
  o << "| slots";
  for (unsigned i = 0; i < s.slots.size(); ++i)
    if (s.slots[i]) o << " [" << i << "]=" << std::hex << s.slots[i] << std::dec << (!s.owns.empty() && s.owns[i] ? " (owner)" : "");
  o << "}";
  return o.str();
}

bool is_subset(const std::map<pfn_t, unsigned>& a, const std::map<pfn_t, unsigned>& b) {
  return std::all_of(a.begin(), a.end(), [&](auto& kv) {
    auto it = b.find(kv.first);
    return it != b.end() && it->second == kv.second;
  });
}

/// Recovers `path` and checks it; returns "" or the failure.
std::string recover_and_check(const std::string& path, const scenario& sc, const pool_state& pre,
                              const pool_state& post, bool must_be_post, const std::string& label) {
  try {
    // The offline checker must see only recovery's work in a crash image, never damage: what a
    // crash leaves is what it classifies as an interrupted operation (docs/format.md).
    const fsck::report f = fsck::check(path);
    if (f.exit_code() != 0)
      for (const fsck::problem& p : f.problems)
        if (!p.recovery && !(sc.setup_damage && sc.setup_damage(p.rule, p.what)))
          return "fsck calls a crash image damaged: [" + p.rule + "] " + p.what;
    pool q = pool::open(path);
    const pool_state got = read_state(q, sc.owners);
    if (std::string why = check_recovered(q, got, sc.slot_owned); !why.empty()) return why;
    if (must_be_post) {
      if (got != post) return "operation returned but its effects are not durable: got " + describe(got) + ", want " + describe(post);
      return {};
    }
    if (sc.bulk) {
      if (!is_subset(pre.allocations, got.allocations) || !is_subset(got.allocations, post.allocations) || got.slots != pre.slots)
        return "bulk allocation left a state outside [before, after]: " + describe(got);
      return {};
    }
    if (sc.per_slot) {
      for (std::size_t i = 0; i < got.slots.size(); ++i)
        if (got.slots[i] != pre.slots[i] && got.slots[i] != post.slots[i])
          return "slot " + std::to_string(i) + " is neither its value before nor after: " + describe(got);
      for (auto& [pfn, order] : got.allocations) {
        auto a = pre.allocations.find(pfn), b = post.allocations.find(pfn);
        if (!((a != pre.allocations.end() && a->second == order) || (b != post.allocations.end() && b->second == order)))
          return "allocation at pfn " + std::to_string(pfn) + " is in neither state: " + describe(got);
      }
      return {};
    }
    if (got != pre && got != post && !(sc.also_valid && sc.also_valid(got, pre, label)))
      return "not all-or-nothing: got " + describe(got) + "; before " + describe(pre) + "; after " + describe(post);
    return {};
  } catch (const std::exception& e) {
    return std::string("recovery failed: ") + e.what();
  }
}

}  // namespace

pool_state read_state(const pool& p, bool with_owners) {
  pool_state s;
  p.for_each_allocated([&](page* head, unsigned order) { s.allocations[page_to_pfn(head)] = order; });
  auto* slots = static_cast<pfn_t*>(p.root());
  s.slots.assign(slots, slots + NR_SLOTS);
  if (with_owners) {
    std::vector<pfn_t*> list;
    for (unsigned i = 0; i < NR_SLOTS; ++i) list.push_back(&slots[i]);
    const pool::slot_check r = p.check_slots(list);
    s.owns.assign(NR_SLOTS, 0);
    for (unsigned i = 0; i < NR_SLOTS; ++i) s.owns[i] = slots[i] != 0;
    for (const auto* bad : {&r.misowned, &r.shared, &r.dangling})
      for (const auto& e : *bad) s.owns[std::size_t(e.slot - slots)] = 0;
  }
  return s;
}

std::string check_recovered(const pool& p, const pool_state& s, bool slot_owned) {
  if (std::string why = p.check(); !why.empty()) return "invariant: " + why;
  std::uint64_t used = 0;
  for (auto& [pfn, order] : s.allocations) {
    used += std::uint64_t{1} << order;
    if (page_count(pfn_to_page(pfn)) != 1) return "allocation at pfn " + std::to_string(pfn) + " does not have count 1 after open";
  }
  const pool_stats st = p.stats();
  if (st.free_pages != st.total_pages - used)
    return "free space does not add up: " + std::to_string(st.free_pages) + " free, " + std::to_string(st.total_pages - used) + " expected";
  std::set<pfn_t> named;
  for (unsigned i = 0; i < s.slots.size(); ++i) {
    const pfn_t v = s.slots[i];
    if (!v) continue;
    if (!s.allocations.count(v)) return "slot " + std::to_string(i) + " names pfn " + std::to_string(v) + ", which is not an allocated head";
    if (!named.insert(v).second) return "two slots name pfn " + std::to_string(v);
  }
  if (slot_owned)
    for (auto& [pfn, order] : s.allocations)
      if (!named.count(pfn)) return "pfn " + std::to_string(pfn) + " (order " + std::to_string(order) + ") is allocated but no slot names it: leaked";
  return {};
}

std::vector<char> read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::vector<char> bytes(std::filesystem::file_size(path));
  in.read(bytes.data(), std::streamsize(bytes.size()));
  return bytes;
}

void write_file(const std::string& path, const std::vector<char>& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), std::streamsize(bytes.size()));
}

crash_points_report run_crash_points(const scenario& sc, unsigned seeds, bool crash_during_recovery) {
  crash_points_report rep;
  const std::string live = scratch_path(sc.name, "live");
  const std::string img_path = scratch_path(sc.name, "img");
  const std::string rec_path = scratch_path(sc.name, "rec");
  ::unlink(live.c_str());

  auto sim = std::make_shared<sim_pmem>(TRACKED);
  std::vector<image> images;
  std::size_t post_images = 0;  // images from here on were taken after the operation returned
  pool_state pre, post;
  {
    pool::options o;
    o.size = sc.pool_size;
    o.backend = sim;
    pool p = pool::create(live, o);
    auto* slots = static_cast<pfn_t*>(p.root());
    if (sc.setup) sc.setup(p, slots);
    pre = read_state(p, sc.owners);
    const std::uint64_t f0 = sim->fences();
    sim->on_fence = [&](std::uint64_t k, bool before) {
      if (sc.during_op) sc.during_op(p, slots, k - f0, before);
      capture_all(*sim, images, "op", k - f0, before, seeds, sc.every_subset);
    };
    sc.op(p, slots);
    sim->on_fence = nullptr;
    rep.op_fences = sim->fences() - f0;
    // The operation returned: its effects must all be there, whatever of the stores it left
    // unfenced (free_pages_from's FREE code, a replacement's old page) reaches the media.
    post_images = images.size();
    capture_all(*sim, images, "after the operation returned", rep.op_fences, false, seeds, sc.every_subset);
    post = read_state(p, sc.owners);
  }
  ::unlink(live.c_str());

  for (std::size_t i = 0; i < images.size(); ++i) {
    const image& im = images[i];
    const bool final_image = i >= post_images;
    write_image(img_path, sc.pool_size, im.bytes);
    ++rep.images;
    if (std::string why = recover_and_check(img_path, sc, pre, post, final_image, im.label); !why.empty()) {
      rep.failures.push_back(sc.name + ": crash " + im.label + ": " + why);
      continue;
    }
    if (!crash_during_recovery) continue;
    // Crash during the recovery of this image, then recover again.
    write_image(img_path, sc.pool_size, im.bytes);
    auto sim2 = std::make_shared<sim_pmem>(TRACKED);
    std::vector<image> rec_images;
    sim2->on_fence = [&](std::uint64_t k, bool before) { capture_all(*sim2, rec_images, "recovery", k, before, 1); };
    try {
      pool::open_options oo;
      oo.backend = sim2;
      pool q = pool::open(img_path, oo);
      (void)read_state(q);  // loads every split region: the lazy repairs happen here
    } catch (const std::exception& e) {
      rep.failures.push_back(sc.name + ": crash " + im.label + ": recovery on the simulated device failed: " + e.what());
      continue;
    }
    for (const image& ri : rec_images) {
      write_image(rec_path, sc.pool_size, ri.bytes);
      ++rep.images;
      ++rep.recovery_images;
      if (std::string why = recover_and_check(rec_path, sc, pre, post, false, im.label); !why.empty())
        rep.failures.push_back(sc.name + ": crash " + im.label + ", then crash during recovery at " + ri.label + ": " + why);
    }
  }
  ::unlink(img_path.c_str());
  ::unlink(rec_path.c_str());
  return rep;
}

}  // namespace pmpage::testing
