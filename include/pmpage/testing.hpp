/// \file
/// pmpage/testing.hpp — power-failure testing for code that keeps its data in a pmpage pool.
///
/// Layer: over pool.hpp; a separate library (libpmpage_testing, CMake target
/// pmpage::pmpage_testing, pkg-config pmpage-testing). Nothing in libpmpage depends on it.
///
/// sim_pmem is a persistence backend (persistence.hpp) that models which stores survive a power
/// failure; run_crash_test runs an operation on it, takes a crash image at every fence the
/// operation issues, and hands each image to a checker. docs/testing-your-engine.md shows how an
/// engine plugs in and how to read and reproduce a failure.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <pmpage/persistence.hpp>

/// Power-failure testing for engines (testing.hpp; libpmpage_testing).
namespace pmpage::testing {

/// A simulated device, in one of two models (pmpage::granularity, docs/testing-your-engine.md):
///  * cache_line, the x86 ADR model: a store to the mapping is durable only once a flush covered
///    it and a later drain() *on the same thread* completed (clwb + sfence).
///  * byte, the eADR model (CPU caches in the persistence domain, CXL GPF): a store is durable once
///    it left the store buffer, flushed or not; a drain() makes every store visible in the mapping
///    at that moment durable (the fencing thread's earlier stores among them). Flushes do nothing.
/// At a power failure the media holds the durable image plus any subset of the 8-byte words
/// written since (8-byte failure atomicity: a word is old or new, never torn; a dirty line may be
/// evicted at any time, so an unfenced store may or may not survive). At byte granularity real
/// hardware loses only a suffix, in program order, of each thread's stores since its last fence;
/// the simulator does not know program order and keeps any subset, which includes every such
/// suffix: an engine that passes is safe, one that relies on the order of its unfenced stores
/// (no fence between two stores that must reach the media in order) may be reported.
///
/// The pool follows the model: attach() returns it (persistence.hpp), so a pool on a byte model
/// issues no flush. The default model follows the platform's granularity given to attach()
/// (byte stays byte; cache_line and page are modelled as cache_line: the pool flushes and fences
/// at both), so PMEM2_FORCE_GRANULARITY=BYTE selects the byte model for a whole test run.
///
/// One object is one device: pass it as the backend of every pool opened on one file, one after
/// the other (never two files). The first attach() takes the durable image from the mapping (the
/// file as it is); later attaches keep the modelled image, so a close and reopen inside a test
/// does not make unfenced stores durable.
///
/// Thread-safety: flush/drain/crash_image may be called from any threads at once (one internal
/// mutex). Assign on_fence only while no other thread can fence (drain() copies it).
/// Cost: one copy of the tracked bytes for the media (and one more at detach); crash_image
/// compares the tracked bytes with the media (~10 ms for 32 MiB); flush copies 64 bytes a line.
class sim_pmem final : public pmpage::persistence {
 public:
  /// `tracked`: bytes from the device start that are modelled; 0 = the whole device. Stores
  /// beyond it are not modelled (they are not in crash images; use it to leave out a data area
  /// the checker does not read).
  explicit sim_pmem(std::size_t tracked = 0);
  /// The same with a fixed model (granularity::byte or cache_line; page is taken as cache_line),
  /// whatever the platform says.
  sim_pmem(std::size_t tracked, pmpage::granularity model);
  ~sim_pmem() override;
  sim_pmem(const sim_pmem&) = delete;
  sim_pmem& operator=(const sim_pmem&) = delete;

  /// Returns the model (see above): the granularity the pool then follows.
  pmpage::granularity attach(void* base, std::size_t length, pmpage::granularity g) override;
  /// Keeps a copy of the tracked mapping: crash_image() works on it after the pool closed.
  void detach() noexcept override;
  void flush(const void* addr, std::size_t len) noexcept override;
  /// The fence. Calls on_fence(k, true) before this thread's flushed lines become durable and
  /// on_fence(k, false) after, outside the device's lock (the hook may call crash_image, or even
  /// the pool: fences it issues are numbered and hooked too).
  void drain() noexcept override;

  /// The tracked bytes of the media after a power failure now: what was fenced, plus a random
  /// subset (seeded: the same state and seed give the same image) of the 8-byte words that differ
  /// from it — flushed-but-unfenced copies and plain dirty words alike. keep_probability 0 = only
  /// what was fenced; 1 = everything written. Works after detach() (on the copy taken then).
  /// Before the first attach(): empty.
  std::vector<char> crash_image(std::uint64_t seed, double keep_probability) const;
  /// Fences (drain() calls) since construction, over every attach.
  std::uint64_t fences() const;
  /// Bytes modelled: min(tracked, device length) once attached.
  std::size_t tracked() const;
  /// The model in use: byte or cache_line (before the first attach: the fixed model, or
  /// cache_line).
  pmpage::granularity model() const;

  /// Called at every fence: k is fences() counting this one; before = true just before the
  /// fence makes its lines durable, false just after. Runs on the fencing thread, inside a pool
  /// call that may hold allocator locks: copy what you need (crash_image), check afterwards.
  std::function<void(std::uint64_t fence, bool before)> on_fence;

  struct impl;  ///< the model (src/testing/sim_pmem.cpp); run_crash_test uses its sparse capture

 private:
  std::unique_ptr<impl> impl_;
  friend struct sim_access;
};

/// One crash: where in the operation, and which unfenced words survive.
struct crash_point {
  std::uint64_t fence = 0;  ///< 1-based fence of the operation; 0 = after the operation returned
  bool before = false;      ///< image taken just before that fence completes (else just after)
  std::uint64_t seed = 0;   ///< RNG seed of the surviving subset of unfenced words
  double keep = 0;          ///< 0 = nothing unfenced survives, 1 = everything written survives, else per-word probability
  /// e.g. "fence 3 (before), random subset seed 1234 (keep 0.5)".
  std::string label() const;
};

/// run_crash_test's options: which crash images, and where they are written.
struct crash_options {
  unsigned random_subsets = 2;    ///< random subsets per crash point, besides "none kept" and "all kept"
  double keep_probability = 0.5;  ///< of each unfenced word in a random subset
  std::uint64_t seed = 1;         ///< base seed; each image's seed derives from it, the fence and the subset index
  std::size_t tracked = 0;        ///< bytes modelled (0 = whole file); beyond them images hold the file as op left it
  std::filesystem::path scratch_dir = "/dev/shm";  ///< where images are written for the checker
  /// The simulator's model (sim_pmem): byte (eADR) or cache_line (ADR); unset = the platform's
  /// (PMEM2_FORCE_GRANULARITY=BYTE selects byte). An engine's crash test should run under both.
  std::optional<pmpage::granularity> granularity;
  /// Reproduce one failure: run only this point. The environment variable
  /// PMPAGE_CRASH_ONLY=fence:before(0/1):seed:keep overrides it.
  std::optional<crash_point> only;
};

/// What run_crash_test found.
struct crash_report {
  std::size_t images = 0;              ///< images checked
  std::uint64_t fences = 0;            ///< fences the operation issued
  std::vector<std::string> failures;   ///< each names the crash point (its label, with seed) and the checker's message
  std::vector<crash_point> failed;     ///< the crash point of each failure, in the same order (for only = ...)
  /// No failure.
  bool ok() const { return failures.empty(); }
  /// All failures, plus how to reproduce one (crash_options::only = {...}, or env PMPAGE_CRASH_ONLY).
  std::string describe() const;
};

/// Runs `op` once on a simulated device over the existing file `path` (typically a pool the
/// caller created with the normal backend and closed), capturing crash images at every fence
/// the op issues (just before and just after it completes: "nothing unfenced kept", "everything
/// written kept" and opts.random_subsets random subsets each) and once after `op` returns
/// (nothing unfenced kept); then writes each image to a scratch file in opts.scratch_dir (the
/// file's size, holding the image over the tracked bytes) and calls `check` on it.
///
/// `op` receives the simulated device and must pass it as pool::options::backend or pool::open_options::backend to
/// every pool it opens on `path` (an engine exposes a backend option for this), and must close
/// them before it returns. `check` returns "" when the recovered state is acceptable, else why;
/// it may open (and must close) a pool on the image, and may modify the image. An image taken
/// after op returned with nothing unfenced kept must contain all of op's effects — the check gets
/// crash_point.fence == 0 to know that. An exception from check counts as a failure; one from op
/// propagates. Images are kept in memory as sparse diffs until op returns.
///
/// If op never opened a pool on the simulated device (it passed another backend, or an engine
/// kept a registration made with an earlier device), the report has one failure saying so and no
/// image is checked: a run that tested nothing never passes.
///
/// Not thread-safe w.r.t. itself; op may use several threads. Errors: std::system_error when
/// `path` cannot be read or a scratch file written; std::invalid_argument for a malformed
/// PMPAGE_CRASH_ONLY.
crash_report run_crash_test(const std::filesystem::path& path, const crash_options& opts,
                            const std::function<void(const std::shared_ptr<pmpage::persistence>& device)>& op,
                            const std::function<std::string(const std::filesystem::path& image, const crash_point& at)>& check);

}  // namespace pmpage::testing
