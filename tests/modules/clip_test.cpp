// CLIP tokenizer and text encoder against the reference fixtures, and the
// whole tiny SD v1 checkpoint loading with its text cond stage.
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "ldm/io/safetensors.h"
#include "ldm/models/diffusion/load.h"
#include "ldm/models/diffusion/samplers/sampler.h"
#include "ldm/modules/encoders/clip_text.h"
#include "ldm/modules/encoders/tokenizer.h"
#include "ldm/util/config.h"
#include "ldm/models/registry.h"
#include "ldm/io/state_dict.h"
#include "tests/testing.h"

using namespace ldm;

namespace {
std::string vocab_file() { return test::shared_dir() + "/data/bpe_simple_vocab_16e6.txt.gz"; }
}

TEST(ClipTokenizer, MatchesReferenceIds) {
  LDM_REQUIRE_SHARED();
  auto path = test::fixture("clip_tokenizer.safetensors");
  auto t = io::load_safetensors(path);
  auto texts = nlohmann::json::parse(io::safetensors_metadata(path).at("texts")).get<std::vector<std::string>>();
  auto tok = ClipTokenizer::load(vocab_file());
  EXPECT_EQ(tok.vocab_size(), 49408u);
  EXPECT_EQ(tok.sot(), 49406);
  EXPECT_EQ(tok.eot(), 49407);
  auto hf = t.at("output.ids_hf"), oa = t.at("output.ids_openai"), nb = t.at("output.num_bpe_tokens");
  for (size_t i = 0; i < texts.size(); ++i) {
    auto ids = tok.encode(texts[i]);
    EXPECT_EQ(static_cast<int64_t>(ids.size()), nb[i].item<int64_t>()) << i << ": " << texts[i];
    EXPECT_TRUE(torch::tensor(tok.tokenize(texts[i], 77), torch::kInt64).equal(hf[i])) << i << ": " << texts[i];
    EXPECT_TRUE(torch::tensor(tok.tokenize(texts[i], 77, 0), torch::kInt64).equal(oa[i])) << i << ": " << texts[i];
  }
}

// The Hugging Face layout (vocab.json + merges.txt) on a hand-made vocabulary.
TEST(ClipTokenizer, HuggingFaceFiles) {
  auto dir = test::temp_dir();
  std::ofstream(dir + "/vocab.json") << R"({"c":0,"a":1,"t":2,"ca":3,"cat</w>":4,"t</w>":5,"a</w>":6,"!</w>":7,
    "<|startoftext|>":8,"<|endoftext|>":9})";
  std::ofstream(dir + "/merges.txt") << "#version: 0.2\nc a\nca t</w>\n";
  auto tok = ClipTokenizer::load(dir);
  EXPECT_EQ(tok.encode("CAT!"), (std::vector<int64_t>{4, 7}));
  EXPECT_EQ(tok.tokenize("cat", 5), (std::vector<int64_t>{8, 4, 9, 9, 9}));
  EXPECT_EQ(tok.tokenize("cat cat cat cat", 4, 0), (std::vector<int64_t>{8, 4, 4, 9}));  // truncated, end token kept
  EXPECT_EQ(clip_clean_text("  A&amp;amp;B \t\n c  "), "a&b c");
}

TEST(ClipTextEncoder, MatchesReferenceHiddenStates) {
  LDM_REQUIRE_SHARED();
  auto path = test::fixture("clip_text_tiny.safetensors");
  auto t = io::load_safetensors(path);
  auto md = io::safetensors_metadata(path);
  std::shared_ptr<FrozenCLIPEmbedder> m;
  {
    nn::InitScope empty(nn::Init::Empty);
    m = instantiate_as<FrozenCLIPEmbedder>(parse_yaml(md.at("config"), "config"), "config");
  }
  std::map<std::string, torch::Tensor> w;
  for (auto& [k, v] : strip_prefix(t, md.at("weights_prefix"))) w[k] = v;
  load_state_dict(*m, w, true, path);
  torch::NoGradGuard ng;
  auto out = m->run(t.at("input.ids"));
  double atol = std::stod(md.at("atol")), rtol = std::stod(md.at("rtol"));
  test::expect_close(out.last_hidden_state, t.at("output.last_hidden_state"), atol, rtol, "last_hidden_state");
  test::expect_close(out.pooled, t.at("output.pooled"), atol, rtol, "pooled");
  std::cout << "clip_text_tiny max err: last_hidden_state "
            << test::max_abs_err(out.last_hidden_state, t.at("output.last_hidden_state")) << ", pooled "
            << test::max_abs_err(out.pooled, t.at("output.pooled")) << "\n";
}

// tiny_sd_v1.ckpt with its config: every weight of every sub-model in place,
// prompts through the tokenizer and text encoder into a guided sample.
TEST(TinySD, WholeCheckpointLoadsAndSamplesFromText) {
  LDM_REQUIRE_SHARED();
  auto m = load_latent_diffusion(test::fixture("tiny_sd_v1.yaml"), test::fixture("tiny_sd_v1.ckpt"), {true});
  auto unet_ref = io::load_safetensors(test::fixture("unet_sd1_tiny.safetensors"));
  auto sd = state_dict(*m);
  EXPECT_TRUE(sd.at("model.diffusion_model.out.2.weight").equal(unet_ref.at("model.diffusion_model.out.2.weight")));
  auto clip = io::load_safetensors(test::fixture("clip_text_tiny.safetensors"));
  const std::string k = "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight";
  EXPECT_TRUE(sd.at(k).equal(clip.at(k).to(torch::kFloat32)));
  EXPECT_NEAR(m->scale_factor.item<double>(), 0.18215, 1e-7);
  auto te = std::dynamic_pointer_cast<TextEncoder>(m->cond_stage());
  ASSERT_TRUE(te);
  te->set_tokenizer(std::make_shared<ClipTokenizer>(ClipTokenizer::load(vocab_file())));
  torch::NoGradGuard ng;
  auto c = m->text_conditioning({"a photograph of an astronaut riding a horse"});
  auto u = m->text_conditioning({""});
  ASSERT_EQ(c.sizes(), (std::vector<int64_t>{1, 77, 64}));
  // the encoder equals the fixture's on the same ids (row 0 of clip_text_tiny's input)
  test::expect_close(c[0], clip.at("output.last_hidden_state")[0], 2e-5, 1e-4, "text conditioning");
  GuidedDenoiser d(*m, m->make_cond(c), m->make_cond(u), 7.5);
  SampleOptions so;
  so.sampler = "euler_a";
  so.steps = 4;
  auto img = m->decode_first_stage(sample(d, torch::randn({1, 4, 16, 16}), so));
  EXPECT_EQ(img.sizes(), (std::vector<int64_t>{1, 3, 64, 64}));
  EXPECT_TRUE(torch::isfinite(img).all().item<bool>());
}

TEST(PromptWeights, WebUiSyntax) {
  auto p = parse_prompt_weights("a (cat:1.5) [dog] ((bird)) \\(x\\)");
  std::vector<std::pair<std::string, double>> want = {
      {"a ", 1.0}, {"cat", 1.5}, {" ", 1.0}, {"dog", 1 / 1.1}, {" ", 1.0}, {"bird", 1.1 * 1.1}, {" (x)", 1.0}};
  ASSERT_EQ(p.size(), want.size());
  for (size_t i = 0; i < p.size(); ++i) {
    EXPECT_EQ(p[i].first, want[i].first) << i;
    EXPECT_NEAR(p[i].second, want[i].second, 1e-12) << i;
  }
}

// Long prompts: 75-token windows; short unweighted prompts encode exactly as
// before, weights change the states, windows concatenate.
TEST(PromptWeights, WindowsAndEmphasisOnTinySD) {
  LDM_REQUIRE_SHARED();
  auto path = test::fixture("clip_tokenizer.safetensors");
  auto texts = nlohmann::json::parse(io::safetensors_metadata(path).at("texts")).get<std::vector<std::string>>();
  auto tok = std::make_shared<ClipTokenizer>(ClipTokenizer::load(vocab_file()));
  auto w = tok->tokenize_windows(texts[12]);
  ASSERT_EQ(w.ids.size(), 3u);  // 185 BPE tokens
  auto all = tok->encode(texts[12]);
  EXPECT_EQ(std::vector<int64_t>(w.ids[0].begin() + 1, w.ids[0].begin() + 76), std::vector<int64_t>(all.begin(), all.begin() + 75));
  EXPECT_EQ(w.ids[1][1], all[75]);

  auto m = load_latent_diffusion(test::fixture("tiny_sd_v1.yaml"), test::fixture("tiny_sd_v1.ckpt"), {true});
  auto te = std::dynamic_pointer_cast<TextEncoder>(m->cond_stage());
  te->set_tokenizer(tok);
  torch::NoGradGuard ng;
  auto plain = te->encode({"a red cube"});
  EXPECT_TRUE(plain.equal(te->encode_ids(te->tokenize({"a red cube"}))));
  EXPECT_FALSE(te->encode({"a (red:1.4) cube"}).equal(plain));
  EXPECT_EQ(te->encode({texts[12]}).sizes(), (std::vector<int64_t>{1, 3 * 77, 64}));
  EXPECT_EQ(te->encode({"short"}, 2).sizes(), (std::vector<int64_t>{1, 154, 64}));
}

// An fp16 release (emaonly-fp16 style) loads into the float32 model: weights
// equal the fp32 checkpoint's to fp16 precision.
TEST(TinySD, Fp16CheckpointLoads) {
  LDM_REQUIRE_SHARED();
  auto m16 = load_latent_diffusion(test::fixture("tiny_sd_v1.yaml"), test::fixture("tiny_sd_v1_fp16.ckpt"), {true});
  auto m32 = load_latent_diffusion(test::fixture("tiny_sd_v1.yaml"), test::fixture("tiny_sd_v1.ckpt"), {true});
  auto a = state_dict(*m16), b = state_dict(*m32);
  for (const char* k : {"model.diffusion_model.out.2.weight", "first_stage_model.decoder.conv_out.weight",
                        "cond_stage_model.transformer.text_model.final_layer_norm.weight"}) {
    EXPECT_EQ(a.at(k).scalar_type(), torch::kFloat32) << k;
    EXPECT_LE(test::max_abs_err(a.at(k), b.at(k)), 1e-3 * b.at(k).abs().max().item<double>() + 1e-6) << k;
  }
}
