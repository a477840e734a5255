#include "ldm/io/image.h"

#include <filesystem>
#include <fstream>

#include "ldm/error.h"
#include "tests/testing.h"

using namespace ldm;

TEST(Image, PngRoundTripWithTextChunks) {
  auto dir = test::temp_dir();
  auto img = torch::rand({3, 5, 7});
  io::save_png(dir + "/a.png", img, {{"parameters", "a cat\nSteps: 20"}, {"Software", "ldm"}});
  auto back = io::load_image(dir + "/a.png", 3);
  ASSERT_EQ(back.sizes(), img.sizes());
  EXPECT_LE(test::max_abs_err(back, img), 0.5 / 255 + 1e-6);
  auto text = io::read_png_text(dir + "/a.png");
  EXPECT_EQ(text.at("parameters"), "a cat\nSteps: 20");
  EXPECT_EQ(text.at("Software"), "ldm");
  auto gray = torch::rand({1, 4, 4});
  io::save_png(dir + "/g.png", gray);
  EXPECT_LE(test::max_abs_err(io::load_image(dir + "/g.png", 1), gray), 0.5 / 255 + 1e-6);
}

TEST(Image, CorruptFileNamesTheFile) {
  auto dir = test::temp_dir();
  std::ofstream(dir + "/bad.png") << "\x89PNG\r\n\x1a\n garbage";
  try {
    io::load_image(dir + "/bad.png");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("bad.png"), std::string::npos) << e.what();
  }
}

TEST(Image, GridLayout) {
  auto b = torch::arange(5).to(torch::kFloat32).view({5, 1, 1, 1}).expand({5, 1, 2, 2}).contiguous();
  auto g = io::make_grid(b, 3, 1, -1.0);
  ASSERT_EQ(g.sizes(), (std::vector<int64_t>{1, 2 * 3 + 1, 3 * 3 + 1}));
  EXPECT_EQ(g[0][1][1].item<float>(), 0.0f);  // image 0 at the top left
  EXPECT_EQ(g[0][4][4].item<float>(), 4.0f);  // image 4: row 1, column 1
  EXPECT_EQ(g[0][4][7].item<float>(), -1.0f); // empty slot keeps the pad value
  EXPECT_EQ(g[0][0][0].item<float>(), -1.0f);
}

// libtorch's CPU generator is PyTorch's: torch.manual_seed(0); torch.randn(3)
// gives [1.5410, -0.2934, -2.1788] (values from PyTorch itself).
TEST(Noise, MatchesTorchManualSeed) {
  auto g = torch::make_generator<at::CPUGeneratorImpl>(0);
  auto x = torch::randn({3}, g);
  EXPECT_NEAR(x[0].item<float>(), 1.5410f, 1e-4);
  EXPECT_NEAR(x[1].item<float>(), -0.2934f, 1e-4);
  EXPECT_NEAR(x[2].item<float>(), -2.1788f, 1e-4);
}
