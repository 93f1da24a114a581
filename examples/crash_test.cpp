// crash_test.cpp — crash-test a tiny storage engine with pmpage::testing (docs/testing-your-engine.md).
//
// The "engine" keeps a linked list of records in a pool. Its root holds the head slot and the
// number of committed records; append() links a new node page with alloc_pages_to (the slot is
// the previous node's `next` word), writes the record, persists it, then persists count + 1: the
// commit point. run_crash_test runs three appends on a simulated device, crashes at every fence
// they issue and checks that each crash image recovers to a list of 0..3 committed records.
//
//   ./pmpage_crash_test [/dev/shm/pmpage-crash-test.pool] [--bug]
//
// --bug skips the persist of the record before the commit: the test then reports failures, each
// with the crash point that reproduces it. Exit status: 0 when every image recovered, 1 if not.
#include <pmpage/pmpage.hpp>
#include <pmpage/testing.hpp>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>

namespace {

// ---- the engine ------------------------------------------------------------------------------

struct root_area {
  pmpage::pfn_t head;    // first node (owned by this slot)
  std::uint64_t count;   // committed records
};
struct node {
  char record[56];
  pmpage::pfn_t next;  // the next node (owned by this slot)
};

class tiny_list {
 public:
  /// `backend`: nullptr in production; the crash test passes its simulated device here.
  tiny_list(const std::filesystem::path& path, std::shared_ptr<pmpage::persistence> backend) {
    pmpage::pool::open_options oo;
    oo.backend = std::move(backend);
    pool_ = pmpage::pool::open(path, oo);
  }

  bool append(const char* record, bool bug = false) {
    auto* r = root();
    pmpage::pfn_t* link = &r->head;
    for (std::uint64_t i = 0; i < r->count; ++i) link = &at(*link)->next;
    // A crash between the link and the commit leaves an allocated node past the end: reuse it.
    pmpage::page* pg = *link ? pmpage::pfn_to_page(*link) : pool_.alloc_pages_to(0, link);
    if (!pg) return false;
    auto* n = static_cast<node*>(pmpage::page_address(pg));
    std::strncpy(n->record, record, sizeof n->record - 1);
    n->record[sizeof n->record - 1] = 0;
    n->next = 0;
    if (!bug) pool_.persist(n, sizeof *n);  // the record is durable before the commit names it
    r->count += 1;                            // the commit: one 8-byte word, failure-atomic
    pool_.persist(&r->count, sizeof r->count);
    return true;
  }

  /// "" when the list is well formed, else why.
  std::string verify(std::uint64_t min_count, std::uint64_t max_count) const {
    if (std::string why = pool_.check(); !why.empty()) return "pool invariant: " + why;
    const auto* r = root();
    if (r->count < min_count || r->count > max_count)
      return "count " + std::to_string(r->count) + ", want " + std::to_string(min_count) + ".." + std::to_string(max_count);
    pmpage::pfn_t cur = r->head;
    for (std::uint64_t i = 0; i < r->count; ++i) {
      if (cur < pool_.start_pfn() || cur >= pool_.end_pfn()) return "record " + std::to_string(i) + " is not linked";
      const std::string want = "record " + std::to_string(i);
      if (want != at(cur)->record) return "record " + std::to_string(i) + " reads \"" + at(cur)->record + "\"";
      cur = at(cur)->next;
    }
    return {};
  }
  std::uint64_t count() const { return root()->count; }

 private:
  root_area* root() const { return static_cast<root_area*>(pool_.root()); }
  static node* at(pmpage::pfn_t pfn) { return static_cast<node*>(pmpage::page_address(pmpage::pfn_to_page(pfn))); }
  pmpage::pool pool_;
};

}  // namespace

int main(int argc, char** argv) {
  std::filesystem::path path = "/dev/shm/pmpage-crash-test.pool";
  bool bug = false;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--bug") == 0)
      bug = true;
    else
      path = argv[i];
  }

  // The starting state: a pool with one committed record, made with the normal backend and closed.
  std::filesystem::remove(path);
  {
    pmpage::pool::options opts;
    opts.size = 8ull << 20;
    pmpage::pool::create(path, opts).close();
    tiny_list list(path, nullptr);
    list.append("record 0");
  }

  pmpage::testing::crash_options opts;  // defaults: 4 images per fence and side, the whole file modelled
  const pmpage::testing::crash_report rep = pmpage::testing::run_crash_test(
      path, opts,
      // The operation: three appends on the simulated device.
      [&](const std::shared_ptr<pmpage::persistence>& device) {
        tiny_list list(path, device);
        for (const char* rec : {"record 1", "record 2", "record 3"}) list.append(rec, bug);
      },
      // The check of one crash image: recover it as the engine would, and verify.
      [&](const std::filesystem::path& image, const pmpage::testing::crash_point& at) {
        tiny_list list(image, nullptr);
        // Before the appends returned any prefix of them may be committed; after, all of them.
        return list.verify(at.fence == 0 ? 4 : 1, 4);
      });
  std::filesystem::remove(path);

  std::fputs(rep.describe().c_str(), rep.ok() ? stdout : stderr);
  return rep.ok() ? 0 : 1;
}
