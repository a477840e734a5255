// Parameter counts of the original configs equal the reference's, counted on
// the meta device (no weights allocated).
#include "ldm/util/config.h"
#include "ldm/models/registry.h"
#include "tests/testing.h"

using namespace ldm;

namespace {
int64_t count(const std::string& file, const std::string& sub) {
  auto cfg = load_yaml(test::shared_dir() + "/data/configs/" + file);
  return count_parameters(cfg["model"]["params"][sub], file + ": model.params." + sub);
}
}  // namespace

TEST(ParamCount, ReferenceConfigs) {
  LDM_REQUIRE_SHARED();
  EXPECT_EQ(count("sd-v1-inference.yaml", "unet_config"), 859520964);
  EXPECT_EQ(count("sd-v2-inference.yaml", "unet_config"), 865910724);
  EXPECT_EQ(count("sd-v2-inference-v.yaml", "unet_config"), 865910724);
  EXPECT_EQ(count("sd-v2-inpainting-inference.yaml", "unet_config"), 865925124);
  EXPECT_EQ(count("sd-v1-inference.yaml", "first_stage_config"), 83653863);
  EXPECT_EQ(count("ldm-cin256-v2.yaml", "unet_config"), 400920579);
  EXPECT_EQ(count("ldm-lsun_churches-ldm-kl-8.yaml", "unet_config"), 294966916);
  EXPECT_EQ(count("ldm-txt2img-1p4B-eval.yaml", "unet_config"), 872300484);
}

// Text cond stages against the transformer's parameter formula: token and
// position embeddings, per block 4 w^2 + 4 w (attention), 8 w^2 + 5 w (MLP),
// 4 w (two layer norms), then the final norm; OpenCLIP adds text_projection
// (w^2) and logit_scale.
TEST(ParamCount, TextEncoders) {
  LDM_REQUIRE_SHARED();
  auto formula = [](int64_t w, int64_t layers, bool openclip) {
    int64_t n = 49408 * w + 77 * w + layers * (12 * w * w + 13 * w) + 2 * w;
    return openclip ? n + w * w + 1 : n;
  };
  EXPECT_EQ(count("sd-v1-inference.yaml", "cond_stage_config"), formula(768, 12, false));
  EXPECT_EQ(formula(768, 12, false), 123060480);  // CLIP ViT-L/14's text model
  EXPECT_EQ(count("sd-v2-inference.yaml", "cond_stage_config"), formula(1024, 24, true));
}
