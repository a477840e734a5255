// The shared-memory gradient mean (shm_mean.h): ranks as threads of this
// process, each with its own mapping of the segment, as processes have.
#include "ldm/train/shm_mean.h"

#include <gtest/gtest.h>

#include <dirent.h>

#include <future>
#include <mutex>
#include <thread>
#include <vector>

#include "ldm/error.h"

using namespace ldm;

namespace {
// What the job's store does for the ranks: the segment's name and the agreement.
struct FakeStore {
  std::promise<std::string> name;
  std::shared_future<std::string> got = name.get_future().share();
  std::mutex mu;
  std::condition_variable cv;
  int votes = 0, yes = 0, world;
  explicit FakeStore(int w) : world(w) {}
  bool agree(bool mine) {
    std::unique_lock<std::mutex> lock(mu);
    ++votes, yes += mine;
    cv.notify_all();
    cv.wait(lock, [&] { return votes == world; });
    return yes == world;
  }
};

std::unique_ptr<ShmMean> make(FakeStore& s, int rank, size_t n, std::chrono::milliseconds timeout,
                              std::function<void()> check = {}) {
  return std::make_unique<ShmMean>(
      rank, s.world, n, [&](const std::string& v) { s.name.set_value(v); }, [&] { return s.got.get(); },
      [&](bool m) { return s.agree(m); }, std::move(check), timeout);
}

int ldm_segments() {
  int n = 0;
  if (DIR* d = opendir("/dev/shm")) {
    while (auto* e = readdir(d)) n += std::string(e->d_name).rfind("ldm-grads-", 0) == 0;
    closedir(d);
  }
  return n;
}
}  // namespace

TEST(ShmMean, EveryRankGetsTheMeanCallAfterCall) {
  const int world = 3;
  const size_t n = 1001;  // shares of 333 and 334 values
  const int before = ldm_segments();
  FakeStore store(world);
  std::vector<std::unique_ptr<ShmMean>> ranks(world);
  std::vector<std::thread> t;
  for (int r = 0; r < world; ++r) t.emplace_back([&, r] { ranks[r] = make(store, r, n, std::chrono::seconds(20)); });
  for (auto& th : t) th.join();
  t.clear();
  for (auto& m : ranks) ASSERT_TRUE(m->ok());
  EXPECT_EQ(ldm_segments(), before);  // the name is gone once all have it mapped
  std::vector<std::vector<float>> got(world, std::vector<float>(n));
  for (int call = 0; call < 3; ++call) {
    for (int r = 0; r < world; ++r)
      t.emplace_back([&, r] {
        for (size_t i = 0; i < n; ++i) ranks[r]->slot()[i] = float(r * 1000 + i) + 0.25f * call;
        ranks[r]->mean();
        std::copy(ranks[r]->slot(), ranks[r]->slot() + n, got[r].begin());
      });
    for (auto& th : t) th.join();
    t.clear();
    for (int r = 0; r < world; ++r)
      for (size_t i = 0; i < n; ++i) {
        // the same sum in rank order, then / world, as the implementation promises
        const float want = ((float(i) + 0.25f * call) + (float(1000 + i) + 0.25f * call) +
                            (float(2000 + i) + 0.25f * call)) / 3.0f;
        ASSERT_EQ(got[r][i], want) << "rank " << r << " value " << i << " call " << call;
      }
  }
}

TEST(ShmMean, ALoneRankTimesOutOrHearsItsPeerIsGone) {
  FakeStore store(2);
  std::unique_ptr<ShmMean> a, b;
  std::thread t([&] { b = make(store, 1, 16, std::chrono::seconds(20)); });
  int checks = 0;
  a = make(store, 0, 16, std::chrono::seconds(5), [&] {
    if (++checks == 3) throw Error("rank 1 exited");
  });
  t.join();
  ASSERT_TRUE(a->ok() && b->ok());
  try {  // rank 1 never calls: the check names the peer
    a->mean();
    FAIL() << "mean() returned alone";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("rank 1 exited"), std::string::npos) << e.what();
  }
  FakeStore store2(2);
  std::unique_ptr<ShmMean> c, d;
  std::thread t2([&] { d = make(store2, 1, 16, std::chrono::seconds(20)); });
  c = make(store2, 0, 16, std::chrono::milliseconds(300));
  t2.join();
  const auto t0 = std::chrono::steady_clock::now();
  try {
    c->mean();
    FAIL() << "mean() returned alone";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("barrier"), std::string::npos) << e.what();
  }
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(5));
}

TEST(ShmMean, NoRankUsesItWhereOneCouldNotMapIt) {
  FakeStore store(2);
  std::unique_ptr<ShmMean> a;
  std::thread t([&] { a = make(store, 0, 16, std::chrono::seconds(20)); });
  EXPECT_FALSE(store.agree(false));  // rank 1 could not map it
  t.join();
  EXPECT_FALSE(a->ok());
}
