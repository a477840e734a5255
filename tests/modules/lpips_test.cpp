#include "ldm/modules/losses/lpips.h"

#include "ldm/error.h"
#include "ldm/io/safetensors.h"
#include "ldm/io/state_dict.h"
#include "tests/testing.h"

using namespace ldm;

namespace {
std::string random_weights(const std::string& dir, const std::string& prefix) {
  LPIPS net;
  io::TensorMap w;
  for (auto& [k, v] : state_dict(net)) w[prefix + k] = v.contiguous();
  io::save_safetensors(dir + "/lpips.safetensors", w);
  return dir + "/lpips.safetensors";
}
}  // namespace

// A distance: zero on equal inputs, positive otherwise, symmetric; frozen.
TEST(LPIPS, DistanceProperties) {
  auto dir = test::temp_dir();
  auto m = LPIPS::from_file(random_weights(dir, "loss.perceptual_loss."));
  auto a = torch::rand({2, 3, 32, 32}) * 2 - 1, b = torch::rand({2, 3, 32, 32}) * 2 - 1;
  torch::NoGradGuard ng;
  EXPECT_EQ(m->forward(a, a).abs().max().item<double>(), 0.0);
  auto d = m->forward(a, b);
  EXPECT_EQ(d.sizes(), (std::vector<int64_t>{2, 1, 1, 1}));
  EXPECT_TRUE((d.abs() > 0).all().item<bool>());
  EXPECT_LE(test::max_abs_err(d, m->forward(b, a)), 1e-6);
  EXPECT_EQ(m->forward(a.narrow(1, 0, 1), b.narrow(1, 0, 1)).sizes(), d.sizes());  // grayscale input
  for (auto& p : m->parameters()) EXPECT_FALSE(p.requires_grad());
}

TEST(LPIPS, IncompleteWeightsAreNamed) {
  auto dir = test::temp_dir();
  io::save_safetensors(dir + "/bad.safetensors", {{"lin0.model.1.weight", torch::zeros({1, 64, 1, 1})}});
  try {
    LPIPS::from_file(dir + "/bad.safetensors");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("net.slice1.0.weight"), std::string::npos) << e.what();
  }
}
