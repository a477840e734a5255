#include "ldm/modules/diffusionmodules/openaimodel.h"

#include "ldm/error.h"
#include "ldm/io/safetensors.h"
#include "ldm/util/config.h"
#include "ldm/models/registry.h"
#include "ldm/io/state_dict.h"
#include "ldm/modules/group_norm_fused.h"
#include "tests/testing.h"

using namespace ldm;

namespace {
struct Fixture {
  io::TensorMap t;
  std::map<std::string, std::string> md;
  std::shared_ptr<UNetModel> unet;
};
Fixture load_unet(const std::string& name) {
  Fixture f;
  auto path = test::fixture(name);
  f.t = io::load_safetensors(path);
  f.md = io::safetensors_metadata(path);
  {
    nn::InitScope empty(nn::Init::Empty);
    f.unet = instantiate_as<UNetModel>(parse_yaml(f.md.at("config"), "config"), name);
  }
  load_state_dict(*f.unet, strip_prefix(f.t, "model.diffusion_model."), true, name);
  f.unet->eval();
  return f;
}
}  // namespace

TEST(UNetParity, Sd1TinyForward) {
  LDM_REQUIRE_SHARED();
  auto f = load_unet("unet_sd1_tiny.safetensors");
  torch::NoGradGuard ng;
  auto eps = f.unet->forward(f.t.at("input.x"), f.t.at("input.timesteps"), f.t.at("input.context"));
  test::expect_close(eps, f.t.at("output.eps"), 4e-5, 1e-4, "eps");
  std::cout << "unet_sd1_tiny eps max err " << test::max_abs_err(eps, f.t.at("output.eps")) << "\n";
}

TEST(UNetParity, Sd1TinyGradients) {
  LDM_REQUIRE_SHARED();
  auto f = load_unet("unet_sd1_tiny.safetensors");
  auto eps = f.unet->forward(f.t.at("input.x"), f.t.at("input.timesteps"), f.t.at("input.context"));
  auto loss = eps.pow(2).mean();
  test::expect_close(loss, f.t.at("output.loss"), 4e-5, 1e-4, "loss");
  loss.backward();
  auto params = f.unet->named_parameters();
  auto keys = nlohmann::json::parse(f.md.at("grad_keys"));
  double grad_atol = std::stod(f.md.at("grad_atol"));
  ASSERT_EQ(keys.size(), 7u);
  for (const auto& k : keys) {
    std::string key = k.get<std::string>();
    auto g = params[key.substr(std::string("model.diffusion_model.").size())].grad();
    ASSERT_TRUE(g.defined()) << key;
    test::expect_close(g, f.t.at("grad." + key), grad_atol, 1e-4, key);
    std::cout << key << " grad max err " << test::max_abs_err(g, f.t.at("grad." + key)) << "\n";
  }
}

TEST(UNetParity, CheckpointingGivesIdenticalGradients) {
  LDM_REQUIRE_SHARED();
  auto f = load_unet("unet_sd1_tiny.safetensors");  // use_checkpoint: true in this config
  ASSERT_TRUE(f.unet->options().use_checkpoint);
  auto run = [&](bool ckpt) {
    auto o = f.unet->options();
    o.use_checkpoint = ckpt;
    std::shared_ptr<UNetModel> u;
    {
      nn::InitScope empty(nn::Init::Empty);
      u = std::make_shared<UNetModel>(o);
    }
    load_state_dict(*u, strip_prefix(f.t, "model.diffusion_model."), true, "unet");
    auto eps = u->forward(f.t.at("input.x"), f.t.at("input.timesteps"), f.t.at("input.context"));
    eps.pow(2).mean().backward();
    std::vector<torch::Tensor> g;
    for (auto& p : u->parameters()) g.push_back(p.grad().clone());
    return g;
  };
  auto a = run(true), b = run(false);
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(torch::allclose(a[i], b[i], 0, 1e-6)) << i;
}

TEST(UNetParity, CinTinyForward) {
  LDM_REQUIRE_SHARED();
  auto f = load_unet("unet_cin_tiny.safetensors");
  torch::NoGradGuard ng;
  auto eps = f.unet->forward(f.t.at("input.x"), f.t.at("input.timesteps"), {}, f.t.at("input.y"));
  test::expect_close(eps, f.t.at("output.eps"), 4e-5, 1e-4, "eps");
  std::cout << "unet_cin_tiny eps max err " << test::max_abs_err(eps, f.t.at("output.eps")) << "\n";
}

TEST(UNet, ConfigErrorsNameTheKey) {
  auto cfg = parse_yaml(
      "target: ldm.modules.diffusionmodules.openaimodel.UNetModel\n"
      "params: {image_size: 8, in_channels: 3, out_channels: 3, model_channels: 32, attention_resolutions: [2],"
      " num_res_blocks: 1, num_heads: 2, bogus_key: 1}",
      "t");
  try {
    instantiate_from_config(cfg, "model");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("bogus_key"), std::string::npos) << e.what();
  }
  auto bad_type = parse_yaml(
      "target: ldm.modules.diffusionmodules.openaimodel.UNetModel\n"
      "params: {image_size: 8, in_channels: three, out_channels: 3, model_channels: 32, attention_resolutions: [2],"
      " num_res_blocks: 1, num_heads: 2}",
      "t");
  try {
    instantiate_from_config(bad_type, "model");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("in_channels"), std::string::npos) << e.what();
  }
  EXPECT_THROW(instantiate_from_config(parse_yaml("target: ldm.Nope\nparams: {}", "t"), "model"), Error);
}

// SD 2's per-level lists: a level's disabled self-attention attends to the
// context instead (its to_k reads context_dim); a list of the wrong length is
// named rather than read past its end.
TEST(UNet, PerLevelAttentionLists) {
  auto unet = [](const std::string& extra) {
    return parse_yaml(
        "target: ldm.modules.diffusionmodules.openaimodel.UNetModel\n"
        "params: {image_size: 8, in_channels: 4, out_channels: 4, model_channels: 32, attention_resolutions: [1, 2],"
        " num_res_blocks: 1, channel_mult: [1, 2], num_head_channels: 16, use_spatial_transformer: true,"
        " context_dim: 24, " + extra + "}",
        "t");
  };
  auto m = instantiate_from_config(unet("disable_self_attentions: [true, false]"), "model");
  auto sd = state_dict(*m);
  EXPECT_EQ(sd.at("input_blocks.1.1.transformer_blocks.0.attn1.to_k.weight").sizes(), torch::IntArrayRef({32, 24}));
  EXPECT_EQ(sd.at("input_blocks.3.1.transformer_blocks.0.attn1.to_k.weight").sizes(), torch::IntArrayRef({64, 64}));
  const std::pair<const char*, const char*> bad[] = {
      {"disable_self_attentions: [true]", "disable_self_attentions: expected one entry per level of channel_mult (2), got 1"},
      {"disable_self_attentions: [yes, maybe]", "disable_self_attentions: expected a list of true/false"},
      {"num_attention_blocks: [1, 1, 1]", "num_attention_blocks: expected one entry per level of channel_mult (2), got 3"},
  };
  for (const auto& [extra, want] : bad) {
    try {
      instantiate_from_config(unet(extra), "model");
      ADD_FAILURE() << extra;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(want), std::string::npos) << e.what();
    }
  }
}

namespace {
// two levels of 32 and 64 channels, one block each, attention at the second
UNetOptions two_level_unet() {
  UNetOptions o;
  o.model_channels = 32;
  o.channel_mult = {1, 2};
  o.num_res_blocks = {1};
  o.attention_resolutions = {2};
  return o;
}
}  // namespace

TEST(UNet, Dims1And3AndNewAttentionOrder) {
  for (int dims : {1, 3}) {
    UNetOptions o = two_level_unet();
    o.in_channels = 2;
    o.out_channels = 2;
    o.num_heads = 2;
    o.dims = dims;
    o.use_new_attention_order = true;
    o.resblock_updown = dims == 1;
    UNetModel u(o);
    auto x = dims == 1 ? torch::randn({2, 2, 8}) : torch::randn({2, 2, 4, 8, 8});
    auto y = u.forward(x, torch::tensor({1, 500}));
    EXPECT_EQ(y.sizes(), x.sizes());
  }
}

// CPU training runs the UNet channels-last (float32 and bf16, with grad); the
// same model in float64 runs it NCHW. Output and every parameter's gradient
// agree, and the output comes back in the input's layout. A fashion-shaped
// UNet: scale-shift norms, cross-attention, skip concatenations, up/down.
TEST(UNet, ChannelsLastTrainingMatchesFloat64) {
  if (!group_norm_fused_applies(torch::zeros({1, 1}))) GTEST_SKIP() << "this CPU lacks AVX2/FMA";
  UNetOptions o = two_level_unet();
  o.num_head_channels = 16;
  o.use_spatial_transformer = true;
  o.context_dim = {24};
  o.use_scale_shift_norm = true;
  auto make = [&] {  // the same weights each time
    torch::manual_seed(3);
    auto m = std::make_shared<UNetModel>(o);
    torch::NoGradGuard ng;  // zero-initialised output layers would hide their inputs' gradients
    for (auto& p : m->parameters()) p.add_(torch::randn_like(p) * 0.05);
    return m;
  };
  auto u = make(), u64 = make();
  u64->to(torch::kFloat64);
  auto x = torch::randn({3, 4, 8, 8}), t = torch::tensor({3, 400, 999}), c = torch::randn({3, 5, 24});
  auto y = u->forward(x, t, c);
  auto y64 = u64->forward(x.to(torch::kFloat64), t, c.to(torch::kFloat64));
  EXPECT_TRUE(y.is_contiguous());
  test::expect_close(y, y64, 1e-4, 1e-4, "output");
  y.pow(2).sum().backward();
  y64.pow(2).sum().backward();
  // float32 rounding against the largest gradient (some, a conv bias before a norm, are ~0 exactly)
  auto p64 = u64->named_parameters();
  double scale = 0;
  for (const auto& p : p64) scale = std::max(scale, p.value().grad().abs().max().item<double>());
  for (const auto& p : u->named_parameters())
    test::expect_close(p.value().grad(), p64[p.key()].grad(), 1e-5 * scale, 1e-3, p.key());
}
