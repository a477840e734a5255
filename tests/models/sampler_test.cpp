#include "ldm/models/diffusion/samplers/sampler.h"

#include "ldm/io/safetensors.h"
#include "ldm/util/config.h"
#include "ldm/models/registry.h"
#include "ldm/io/state_dict.h"
#include "tests/models/tiny_ldm.h"
#include "tests/testing.h"

using namespace ldm;

namespace {
std::shared_ptr<LatentDiffusion> load_model(const std::string& cfg_yaml, const std::string& weights) {
  std::shared_ptr<LatentDiffusion> m;
  {
    nn::InitScope empty(nn::Init::Empty);
    m = instantiate_as<LatentDiffusion>(parse_yaml(cfg_yaml, "config"), "config");
  }
  auto w = io::load_safetensors(test::fixture(weights));
  load_state_dict(*m->unet(), strip_prefix(w, "model.diffusion_model."), true, weights);
  m->eval();
  return m;
}

void sampler_parity(const std::string& file, bool plms) {
  auto path = test::fixture(file);
  auto t = io::load_safetensors(path);
  auto md = io::safetensors_metadata(path);
  auto m = load_model(md.at("config"), md.at("weights_file"));
  torch::NoGradGuard ng;
  GuidedDenoiser d(*m, Cond{t.at("input.cond")}, Cond{t.at("input.uncond")}, std::stod(md.at("guidance_scale")));
  SampleOptions o;
  o.steps = std::stoi(md.at("steps"));
  std::vector<torch::Tensor> xs{t.at("input.x_T")}, x0s{t.at("input.x_T")};
  o.callback = [&](int64_t, int64_t, const torch::Tensor& x, const torch::Tensor& p0) {
    xs.push_back(x);
    x0s.push_back(p0);
  };
  auto x = plms ? plms_sample(d, t.at("input.x_T"), o) : ddim_sample(d, t.at("input.x_T"), o);
  EXPECT_EQ(d.calls, plms ? 11 : 10);
  test::expect_close(xs[1], t.at("output.x_after_step1"), 2e-3, 1e-4, file + " x_after_step1");
  std::cout << file << " x_after_step1 max err " << test::max_abs_err(xs[1], t.at("output.x_after_step1"))
            << ", x_final max err " << test::max_abs_err(x, t.at("output.x_final")) << "\n";
  test::expect_close(x, t.at("output.x_final"), 2e-3, 1e-4, file + " x_final");
  test::expect_close(torch::stack(xs), t.at("output.x_inter"), 2e-3, 1e-4, file + " x_inter");
  test::expect_close(torch::stack(x0s), t.at("output.pred_x0"), 2e-3, 1e-4, file + " pred_x0");
}
}  // namespace

TEST(SamplerParity, DdimCfg) { LDM_REQUIRE_SHARED(); sampler_parity("sample_ddim_cfg.safetensors", false); }
TEST(SamplerParity, PlmsCfg) { LDM_REQUIRE_SHARED(); sampler_parity("sample_plms_cfg.safetensors", true); }

TEST(TrainingLossParity, EpsAndV) {
  LDM_REQUIRE_SHARED();
  auto path = test::fixture("training_loss.safetensors");
  auto t = io::load_safetensors(path);
  auto cfg = parse_yaml(io::safetensors_metadata(path).at("config"), "config");
  for (const char* p : {"eps", "v"}) {
    YAML::Node c = YAML::Clone(cfg[p]);
    c.remove("code");  // the fixture's note of which upstream code ran
    auto m = load_model(YAML::Dump(c), "unet_sd1_tiny.safetensors");
    // the file's schedule buffers equal ours
    for (auto& [name, buf] : m->schedule().buffers()) EXPECT_TRUE(torch::equal(*buf, t.at(name))) << name;
    torch::NoGradGuard ng;
    auto L = m->p_losses(t.at("input.x_start"), Cond{t.at("input.cond")}, t.at("input.t"), t.at("input.noise"));
    std::string pre = std::string("output.") + p + ".";
    std::map<std::string, torch::Tensor> got = {{"x_noisy", L.x_noisy}, {"model_output", L.model_output},
                                                {"target", L.target},   {"loss_simple", L.loss_simple},
                                                {"loss_vlb", L.loss_vlb}, {"loss", L.loss}};
    for (auto& [k, v] : got) {
      test::expect_close(v, t.at(pre + k), 3e-5, 1e-4, pre + k);
      std::cout << pre << k << " max err " << test::max_abs_err(v, t.at(pre + k)) << "\n";
    }
  }
}

// The 9-channel inpainting UNet (SD inpainting checkpoints): latents,
// mask and masked-image latents concatenated (hybrid conditioning), guided.
TEST(Sampler, NineChannelInpaintingUNet) {
  auto m = instantiate_as<LatentDiffusion>(parse_yaml(test::tiny_ldm_yaml("", "hybrid", 9), "inpaint"), "inpaint");
  m->eval();
  torch::NoGradGuard ng;
  auto mask = torch::zeros({2, 1, 8, 8});
  mask.narrow(2, 0, 4).fill_(1);  // 1 = to be painted, as the SD inpainting scripts
  auto x0 = torch::randn({2, 4, 8, 8});
  auto concat = torch::cat({mask, x0 * (1 - mask)}, 1);
  GuidedDenoiser d(*m, Cond{torch::randn({2, 3, 16}), concat}, Cond{torch::zeros({2, 3, 16})}, 4.0);
  for (const char* s : {"ddim", "dpm++2m"}) {
    SampleOptions so;
    so.sampler = s;
    so.steps = 4;
    auto x = sample(d, torch::randn({2, 4, 8, 8}), so);
    EXPECT_EQ(x.sizes(), x0.sizes()) << s;
    EXPECT_TRUE(torch::isfinite(x).all().item<bool>()) << s;
  }
  EXPECT_EQ(d.calls, 8);
}
