// bench/common.cpp — configuration, workload pools and measuring helpers (see common.hpp).
#include "common.hpp"

#include <fcntl.h>
#include <libpmem.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <optional>
#include <stdexcept>
#include <vector>

namespace bench {

config& cfg() {
  static config c;
  return c;
}

namespace {
std::atomic<bool> g_failed{false};

enum class workload_kind { none, pmpage, counting, pmpage_byte, pmemobj };
workload_kind g_kind = workload_kind::none;
std::optional<pmpage::pool> g_pool;
std::shared_ptr<pmpage::counting_persistence> g_counter;
pmemobj_ctx g_obj;
std::optional<pmpage::pool> g_vpool, g_vcount_pool;
std::shared_ptr<pmpage::counting_persistence> g_vcounter;
std::vector<std::filesystem::path> g_created;

std::filesystem::path workload_path() {
  if (cfg().single_device) return cfg().device;
  return cfg().dir / "workload.pool";
}

void note_created(const std::filesystem::path& p) {
  for (auto& q : g_created)
    if (q == p) return;
  g_created.push_back(p);
}

/// Zeroes the first 64 KiB of the device so libpmemobj accepts it (it refuses non-zero headers)
/// and a pmpage superblock left there is gone. Works on /dev/dax too (mapping, not pwrite).
void wipe_header(const std::filesystem::path& p) {
  size_t len = 0;
  int is_pmem = 0;
  void* a = pmem_map_file(p.c_str(), 0, 0, 0, &len, &is_pmem);
  if (!a) throw std::runtime_error("pmem_map_file " + p.string() + ": " + pmem_errormsg());
  const size_t n = len < (64u << 10) ? len : (64u << 10);
  std::memset(a, 0, n);
  if (is_pmem)
    pmem_persist(a, n);
  else
    pmem_msync(a, n);
  pmem_unmap(a, len);
}

void prepare_target() {
  close_workload();
  const auto p = workload_path();
  if (cfg().single_device) {
    wipe_header(p);
  } else {
    std::error_code ec;
    std::filesystem::remove(p, ec);
    note_created(p);
  }
}

pmpage::pool create_pmpage(std::shared_ptr<pmpage::persistence> backend) {
  pmpage::pool::options o;
  o.size = cfg().single_device ? 0 : cfg().workload_bytes;
  o.overwrite = true;
  o.root_size = 64 * 1024;
  o.backend = std::move(backend);
  return pmpage::pool::create(workload_path(), o);
}
}  // namespace

void fail(benchmark::State& state, const std::string& msg) {
  g_failed = true;
  std::fprintf(stderr, "pmpage_bench: benchmark failed: %s\n", msg.c_str());
  state.SkipWithError(msg.c_str());
}
bool any_failed() { return g_failed; }

pmpage::pool& pmpage_pool() {
  if (g_kind != workload_kind::pmpage) {
    prepare_target();
    g_pool.emplace(create_pmpage(nullptr));
    g_kind = workload_kind::pmpage;
  }
  return *g_pool;
}

pmpage::pool& counting_pool(pmpage::counting_persistence** counter) {
  if (g_kind != workload_kind::counting) {
    prepare_target();
    g_counter = std::make_shared<pmpage::counting_persistence>(pmpage::make_libpmem_persistence());
    g_pool.emplace(create_pmpage(g_counter));
    g_kind = workload_kind::counting;
  }
  *counter = g_counter.get();
  return *g_pool;
}

namespace {
/// The libpmem backend run at byte granularity whatever the platform is: what an eADR machine
/// gets (fences only), so its cost can be measured on any machine (issue 22: order-0 pair at
/// byte vs cache-line granularity).
class byte_persistence final : public pmpage::persistence {
 public:
  pmpage::granularity attach(void* b, std::size_t l, pmpage::granularity) override {
    return inner_->attach(b, l, pmpage::granularity::byte);
  }
  void detach() noexcept override { inner_->detach(); }
  void flush(const void* a, std::size_t l) noexcept override { inner_->flush(a, l); }
  void drain() noexcept override { inner_->drain(); }

 private:
  std::shared_ptr<pmpage::persistence> inner_ = pmpage::make_libpmem_persistence();
};
}  // namespace

pmpage::pool& byte_pool() {
  if (g_kind != workload_kind::pmpage_byte) {
    prepare_target();
    g_pool.emplace(create_pmpage(std::make_shared<byte_persistence>()));
    g_kind = workload_kind::pmpage_byte;
  }
  return *g_pool;
}

pmemobj_ctx& pmemobj_pool() {
  if (g_kind == workload_kind::pmemobj) return g_obj;
  prepare_target();
  const auto p = workload_path();
  PMEMobjpool* pop = pmemobj_create(p.c_str(), "pmpage-bench", cfg().single_device ? 0 : cfg().workload_bytes, 0600);
  if (!pop) throw std::runtime_error("pmemobj_create " + p.string() + ": " + pmemobj_errormsg());
  g_obj = pmemobj_ctx{};
  g_obj.pop = pop;
  PMEMoid r = pmemobj_root(pop, sizeof(obj_root));
  g_obj.root = static_cast<obj_root*>(pmemobj_direct(r));
  g_obj.uuid_lo = r.pool_uuid_lo;
  // The fastest page-shaped classes the library offers: no header, naturally aligned units.
  // Try the largest blocks first (fewer trips to the global heap), fall back when refused.
  for (unsigned upb : {1024u, 256u, 64u}) {
    pobj_alloc_class_desc d{4096, 4096, upb, POBJ_HEADER_NONE, 0};
    if (pmemobj_ctl_set(pop, "heap.alloc_class.new.desc", &d) == 0) {
      PMEMoid o;
      if (pmemobj_xalloc(pop, &o, 4096, 0, POBJ_CLASS_ID(d.class_id), nullptr, nullptr) == 0) {
        pmemobj_free(&o);
        g_obj.class_4k = d.class_id;
        g_obj.have_4k = true;
        break;
      }
    }
  }
  for (unsigned upb : {16u, 8u, 4u, 2u, 1u}) {
    pobj_alloc_class_desc d{2u << 20, 2u << 20, upb, POBJ_HEADER_NONE, 0};
    if (pmemobj_ctl_set(pop, "heap.alloc_class.new.desc", &d) == 0) {
      PMEMoid o;
      if (pmemobj_xalloc(pop, &o, 2u << 20, 0, POBJ_CLASS_ID(d.class_id), nullptr, nullptr) == 0) {
        const bool aligned = (reinterpret_cast<std::uintptr_t>(pmemobj_direct(o)) & ((2u << 20) - 1)) == 0;
        pmemobj_free(&o);
        if (aligned) {
          g_obj.class_2m = d.class_id;
          g_obj.have_2m = true;
          break;
        }
      }
    }
  }
  g_kind = workload_kind::pmemobj;
  return g_obj;
}

void close_workload() noexcept {
  if (g_kind == workload_kind::pmemobj && g_obj.pop) pmemobj_close(g_obj.pop);
  g_obj = pmemobj_ctx{};
  if (g_pool) g_pool->close();
  g_pool.reset();
  g_counter.reset();
  g_kind = workload_kind::none;
}

pmpage::pool& volatile_pool() {
  if (!g_vpool) {
    pmpage::pool::volatile_options o;
    o.size = cfg().workload_bytes;
    o.root_size = 64 * 1024;
    g_vpool.emplace(pmpage::pool::create_volatile(o));
  }
  return *g_vpool;
}

pmpage::pool& volatile_counting_pool(pmpage::counting_persistence** counter) {
  if (!g_vcount_pool) {
    g_vcounter = std::make_shared<pmpage::counting_persistence>(pmpage::make_libpmem_persistence());
    pmpage::pool::volatile_options o;
    o.size = std::uint64_t{256} << 20;
    o.root_size = 64 * 1024;
    o.backend = g_vcounter;
    g_vcount_pool.emplace(pmpage::pool::create_volatile(o));
  }
  *counter = g_vcounter.get();
  return *g_vcount_pool;
}

void close_volatile() noexcept {
  if (g_vpool) g_vpool->close();
  g_vpool.reset();
  if (g_vcount_pool) g_vcount_pool->close();
  g_vcount_pool.reset();
  g_vcounter.reset();
}

std::filesystem::path scratch_path(const std::string& name) {
  auto p = cfg().dir / name;
  std::error_code ec;
  std::filesystem::remove(p, ec);
  note_created(p);
  return p;
}

void remove_scratch(const std::filesystem::path& p) noexcept {
  std::error_code ec;
  std::filesystem::remove(p, ec);
}

void cleanup() noexcept {
  close_workload();
  close_volatile();
  for (auto& p : g_created) remove_scratch(p);
  g_created.clear();
  if (cfg().own_dir) {
    std::error_code ec;
    std::filesystem::remove_all(cfg().dir, ec);
  }
}

std::uint64_t rss_anon_bytes() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("RssAnon:", 0) == 0) return std::stoull(line.substr(8)) * 1024;
  }
  return 0;
}

}  // namespace bench
