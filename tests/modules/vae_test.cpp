#include "ldm/models/autoencoder.h"

#include "ldm/io/safetensors.h"
#include "ldm/util/config.h"
#include "ldm/models/registry.h"
#include "ldm/io/state_dict.h"
#include "ldm/modules/diffusionmodules/model.h"
#include "ldm/modules/group_norm_fused.h"
#include "tests/testing.h"

using namespace ldm;

TEST(VaeParity, KlTiny) {
  LDM_REQUIRE_SHARED();
  auto path = test::fixture("vae_kl_tiny.safetensors");
  auto t = io::load_safetensors(path);
  auto md = io::safetensors_metadata(path);
  std::shared_ptr<AutoencoderKL> vae;
  {
    nn::InitScope empty(nn::Init::Empty);
    vae = instantiate_as<AutoencoderKL>(parse_yaml(md.at("config"), "config"), "vae");
  }
  ASSERT_TRUE(vae);
  load_state_dict(*vae, strip_prefix(t, "first_stage_model."), true, path);
  torch::NoGradGuard ng;
  auto x = t.at("input.image");
  auto enc = vae->encoder->forward(x);
  auto moments = vae->quant_conv->forward(enc);
  DiagonalGaussianDistribution post(moments);
  auto dec = vae->decode(post.mode());
  std::map<std::string, std::pair<torch::Tensor, std::pair<double, double>>> outs = {
      {"encoder_out", {enc, {2e-4, 1e-4}}}, {"moments", {moments, {2e-4, 1e-4}}},
      {"mean", {post.mean, {2e-4, 1e-4}}},  {"logvar", {post.logvar, {2e-4, 1e-4}}},
      {"std", {post.std, {2e-4, 1e-5}}},     {"decoded", {dec, {2e-4, 1e-4}}},
      {"kl", {post.kl(), {0.0, 1e-5}}}};
  for (auto& [name, v] : outs) {
    test::expect_close(v.first, t.at("output." + name), v.second.first, v.second.second, name);
    std::cout << "vae_kl_tiny " << name << " max err " << test::max_abs_err(v.first, t.at("output." + name)) << "\n";
  }
}

TEST(Distributions, KlAndNllAgainstFormulas) {
  auto p = torch::randn({2, 4, 3, 3}, torch::kFloat64);
  DiagonalGaussianDistribution d(p);
  auto mean = p.slice(1, 0, 2), logvar = p.slice(1, 2, 4);
  // KL(N(m, s^2) || N(0,1)) = 0.5 (m^2 + s^2 - 1 - log s^2), summed
  auto kl = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).sum({1, 2, 3});
  EXPECT_TRUE(torch::allclose(d.kl(), kl));
  auto x = torch::randn_like(mean);
  auto nll = 0.5 * (std::log(2 * M_PI) + logvar + (x - mean).pow(2) / logvar.exp()).sum({1, 2, 3});
  EXPECT_TRUE(torch::allclose(d.nll(x), nll));
  auto g = torch::Generator(at::detail::createCPUGenerator(7));
  auto s1 = d.sample(g);
  auto g2 = torch::Generator(at::detail::createCPUGenerator(7));
  EXPECT_TRUE(torch::equal(s1, d.sample(g2)));
  // logvar clamp
  auto big = torch::full({1, 2, 1, 1}, 100.0);
  EXPECT_DOUBLE_EQ(DiagonalGaussianDistribution(big).logvar.max().item<double>(), 20.0);
}

// CPU training runs the encoder and decoder channels-last (float32 with grad);
// the same layers in float64 run NCHW. Outputs and every parameter's gradient
// agree, and the outputs come back NCHW. Attention, down- and upsampling included.
TEST(Vae, ChannelsLastTrainingMatchesFloat64) {
  if (!group_norm_fused_applies(torch::zeros({1, 1}))) GTEST_SKIP() << "this CPU lacks AVX2/FMA";
  DDConfig c;
  c.ch = 32, c.ch_mult = {1, 2}, c.num_res_blocks = 1, c.attn_resolutions = {8};
  c.in_channels = 1, c.out_ch = 1, c.resolution = 16;
  auto make = [&] {  // the same weights each time
    torch::manual_seed(4);
    return std::make_pair(std::make_shared<Encoder>(c), std::make_shared<Decoder>(c));
  };
  auto [enc, dec] = make();
  auto [enc64, dec64] = make();
  enc64->to(torch::kFloat64), dec64->to(torch::kFloat64);
  auto x = torch::randn({2, 1, 16, 16});
  auto z = enc->forward(x), z64 = enc64->forward(x.to(torch::kFloat64));
  auto y = dec->forward(z.narrow(1, 0, 4)), y64 = dec64->forward(z64.narrow(1, 0, 4));
  EXPECT_TRUE(z.is_contiguous() && y.is_contiguous());
  test::expect_close(z, z64, 1e-4, 1e-4, "latents");
  test::expect_close(y, y64, 1e-4, 1e-4, "decoded");
  y.pow(2).sum().backward();
  y64.pow(2).sum().backward();
  for (auto [m, m64] : {std::make_pair<torch::nn::Module*, torch::nn::Module*>(enc.get(), enc64.get()),
                        std::make_pair<torch::nn::Module*, torch::nn::Module*>(dec.get(), dec64.get())}) {
    auto p64 = m64->named_parameters();
    double scale = 0;
    for (const auto& p : p64) scale = std::max(scale, p.value().grad().abs().max().item<double>());
    for (const auto& p : m->named_parameters())
      test::expect_close(p.value().grad(), p64[p.key()].grad(), 1e-5 * scale, 1e-3, p.key());
  }
}
