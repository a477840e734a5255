// Parameter counts of the original configs equal the reference's, counted on
// the meta device (no weights allocated).
#include "ldm/util/config.h"
#include "ldm/util/instantiate.h"
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
