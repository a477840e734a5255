#include <filesystem>
#include <fstream>
#include <set>

#include "ldm/data/dataset.h"
#include "ldm/data/loader.h"
#include "ldm/data/transforms.h"
#include "ldm/error.h"
#include "ldm/train/metrics.h"
#include "tests/testing.h"

using namespace ldm;

namespace {
class Counting : public Dataset {
 public:
  explicit Counting(int64_t n) : n_(n) {}
  int64_t size() const override { return n_; }
  Example get(int64_t i) const override { return {torch::full({1, 2, 2}, static_cast<float>(i) / n_), i % 3, ""}; }
  std::string describe() const override { return "counting"; }

 private:
  int64_t n_;
};
}  // namespace

TEST(FashionMNIST, ReadsBothSplits) {
  if (!std::filesystem::exists(FashionMNIST::kDefaultRoot)) GTEST_SKIP() << "dataset-fashion-mnist not installed";
  FashionMNIST train("train"), test("test");
  EXPECT_EQ(train.size(), 60000);
  EXPECT_EQ(test.size(), 10000);
  EXPECT_EQ(train.images().sizes(), (std::vector<int64_t>{60000, 28, 28}));
  // balanced classes, 6000 each
  EXPECT_EQ(torch::bincount(train.labels()).eq(6000).all().item<bool>(), true);
  auto e = test.get(0);
  EXPECT_EQ(e.image.sizes(), (std::vector<int64_t>{1, 28, 28}));
  EXPECT_GE(e.image.min().item<float>(), 0.0f);
  EXPECT_LE(e.image.max().item<float>(), 1.0f);
}

TEST(FashionMNIST, BadFilesAreNamed) {
  auto dir = test::temp_dir();
  std::ofstream(dir + "/train-images-idx3-ubyte") << "garbage!";
  std::ofstream(dir + "/train-labels-idx1-ubyte") << "garbage!";
  try {
    FashionMNIST ds("train", dir);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("train-images-idx3-ubyte"), std::string::npos) << e.what();
  }
  EXPECT_THROW(FashionMNIST("valid", dir), Error);
}

TEST(Transforms, ResizeCropFlipPadRange) {
  auto img = torch::rand({3, 20, 30});
  TransformOptions o;
  o.size = 10;
  o.crop = "center";
  o.pad = 1;
  auto x = apply_transforms(img, o, 0);
  EXPECT_EQ(x.sizes(), (std::vector<int64_t>{3, 12, 12}));
  EXPECT_EQ(x[0][0][0].item<float>(), -1.0f);  // padding is black
  EXPECT_GE(x.min().item<float>(), -1.0f);
  o = TransformOptions{};
  o.flip_p = 1.0;
  EXPECT_TRUE(apply_transforms(img, o, 0).equal(img.flip({2}) * 2 - 1));
  o = TransformOptions{};
  o.crop = "random";
  o.crop_size = 8;
  EXPECT_TRUE(apply_transforms(img, o, 42).equal(apply_transforms(img, o, 42)));  // seeded
}

TEST(DataLoader, DeterministicShardedAndSeekable) {
  auto ds = std::make_shared<Counting>(50);
  LoaderOptions o;
  o.batch_size = 4;
  o.seed = 9;
  o.world = 2;
  std::set<int64_t> seen;
  for (int r = 0; r < 2; ++r) {
    o.rank = r;
    DataLoader l(ds, {}, o);
    for (auto i : l.epoch_order(0)) seen.insert(i);
  }
  EXPECT_EQ(seen.size(), 50u);  // the two shards cover the epoch
  o.rank = 0;
  DataLoader a(ds, {}, o), b(ds, {}, o);
  std::vector<torch::Tensor> first;
  for (int i = 0; i < 9; ++i) first.push_back(a.next().index);  // crosses into epoch 1 (6 batches per epoch)
  b.seek(5);
  for (int i = 5; i < 9; ++i) EXPECT_TRUE(b.next().index.equal(first[i])) << i;
  EXPECT_FALSE(first[0].equal(first[6])) << "epochs should be shuffled differently";
}

TEST(Metrics, TensorBoardFraming) {
  // CRC-32C check value (RFC 3720): "123456789" -> 0xE3069283
  EXPECT_EQ(crc32c("123456789", 9), 0xE3069283u);
  auto rec = tf_record("abc");
  ASSERT_EQ(rec.size(), 8u + 4 + 3 + 4);
  EXPECT_EQ(rec[0], 3);
  EXPECT_EQ(rec.substr(12, 3), "abc");
}
