#include "ldm/modules/ema.h"

#include "ldm/io/ckpt.h"
#include "ldm/modules/diffusionmodules/openaimodel.h"
#include "ldm/util/config.h"
#include "ldm/models/registry.h"
#include "ldm/io/state_dict.h"
#include "tests/testing.h"

using namespace ldm;

TEST(LitEma, UpdateRuleAndWarmup) {
  nn::Holder m;
  auto lin = m.add("lin", std::make_shared<nn::Linear>(3, 2));
  LitEma ema(m, 0.9);
  auto w0 = lin->weight.detach().clone();
  torch::NoGradGuard ng;
  lin->weight.add_(1.0);
  ema.update(m);  // n = 1: decay = min(0.9, 2/11)
  double d = 2.0 / 11.0;
  auto shadow = ema.named_buffers()["linweight"];
  EXPECT_TRUE(torch::allclose(shadow, w0 - (1 - d) * (w0 - (w0 + 1)), 1e-6, 1e-6));
  EXPECT_EQ(ema.num_updates.item<int>(), 1);
  // store / copy_to / restore through a scope
  auto live = lin->weight.detach().clone();
  {
    EmaScope s(&ema, m);
    EXPECT_TRUE(torch::equal(lin->weight, shadow));
  }
  EXPECT_TRUE(torch::equal(lin->weight, live));
}

TEST(LitEma, LoadsCompVisEmaBuffers) {
  LDM_REQUIRE_SHARED();
  auto ck = io::load_ckpt(test::fixture("tiny_sd_v1.ckpt")).tensors;
  auto cfg = parse_yaml(io::safetensors_metadata(test::fixture("unet_sd1_tiny.safetensors")).at("config"), "c");
  std::shared_ptr<UNetModel> unet;
  {
    nn::InitScope e(nn::Init::Empty);
    unet = instantiate_as<UNetModel>(cfg, "unet");
  }
  nn::Holder wrapper;  // DiffusionWrapper: model.diffusion_model
  wrapper.add("diffusion_model", unet);
  load_state_dict(wrapper, strip_prefix(ck, "model."), false, "ckpt");
  LitEma ema(wrapper);
  load_state_dict(ema, strip_prefix(ck, "model_ema."), true, "ckpt");  // every name matches
  EXPECT_EQ(ema.num_updates.item<int>(), 1234);
  ema.copy_to(wrapper);
  EXPECT_TRUE(torch::allclose(unet->named_parameters()["input_blocks.0.0.weight"],
                              0.5 * ck.at("model.diffusion_model.input_blocks.0.0.weight")));
}
