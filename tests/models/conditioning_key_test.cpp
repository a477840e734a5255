// conditioning_key crossattn-adm (ours): the cond stage's output is the UNet's
// cross-attention context and, flattened, its y (a `sequential` label_emb), so
// a class embedding reaches every ResBlock through the timestep embedding.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <string>

#include "ldm/error.h"
#include "ldm/models/diffusion/ddpm.h"
#include "ldm/models/registry.h"
#include "ldm/util/config.h"
#include "tests/models/tiny_ldm.h"
#include "tests/testing.h"

using namespace ldm;

namespace {
// scale-shift norm: a plain emb bias would be normalised away by the 32-group
// GroupNorm of the tiny UNet's 32 channels (one channel a group)
std::string with_label_emb(std::string yaml) {
  const std::string tail = "legacy: false}";
  yaml.replace(yaml.find(tail), tail.size(), "legacy: false, num_classes: sequential, adm_in_channels: 16, use_scale_shift_norm: true}");
  return yaml;
}
}  // namespace

TEST(ConditioningKey, CrossattnAdmRoutesTheEmbeddingToContextAndY) {
  torch::manual_seed(6);
  auto m = instantiate_as<LatentDiffusion>(parse_yaml(with_label_emb(test::tiny_ldm_yaml("", "crossattn-adm")), "adm"), "adm");
  m->eval();
  torch::NoGradGuard ng;
  for (auto& p : m->unet()->parameters()) p.copy_(torch::randn_like(p) * 0.2);
  auto c = torch::randn({2, 1, 16}), x = torch::randn({2, 4, 8, 8});
  auto t = torch::full({2}, 300, torch::kInt64);
  auto cond = m->make_cond(c);
  ASSERT_TRUE(cond.crossattn.defined() && cond.y.defined());
  auto got = m->apply_model(x, t, cond);
  test::expect_close(got, m->unet()->forward(x, t, c, c.flatten(1)), 0, 0, "apply_model");
  // y is used: another y with the same context moves the output
  auto other = m->unet()->forward(x, t, c, torch::randn({2, 16}));
  EXPECT_GT((other - got).abs().max().item<double>(), 1e-3);
}

TEST(ConditioningKey, UnknownKeyNamesTheKnownOnes) {
  try {
    instantiate_as<LatentDiffusion>(parse_yaml(test::tiny_ldm_yaml("", "crossattn-film"), "bad"), "bad");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("expected concat, crossattn, hybrid, adm or crossattn-adm, got \"crossattn-film\""),
              std::string::npos)
        << e.what();
  }
}
