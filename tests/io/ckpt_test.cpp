#include "ldm/io/ckpt.h"

#include <fstream>

#include "ldm/error.h"
#include "ldm/io/pickle.h"
#include "tests/testing.h"

using namespace ldm;
using namespace ldm::io;

TEST(Ckpt, TinySdMatchesModuleFixtures) {
  LDM_REQUIRE_SHARED();
  auto ck = load_ckpt(test::fixture("tiny_sd_v1.ckpt"));
  EXPECT_EQ(ck.global_step, 1234);
  EXPECT_EQ(ck.epoch, 3);
  size_t compared = 0;
  for (const char* f : {"unet_sd1_tiny.safetensors", "vae_kl_tiny.safetensors", "clip_text_tiny.safetensors"}) {
    auto ref = load_safetensors(test::fixture(f));
    for (auto& [k, v] : ref) {
      if (k.rfind("input.", 0) == 0 || k.rfind("output.", 0) == 0 || k.rfind("grad.", 0) == 0) continue;
      ASSERT_TRUE(ck.tensors.count(k)) << k;
      auto got = ck.tensors[k];
      EXPECT_EQ(got.scalar_type(), v.scalar_type() == torch::kFloat16 ? torch::kFloat32 : v.scalar_type()) << k;
      EXPECT_TRUE(torch::equal(got, v.to(got.scalar_type()))) << k;
      ++compared;
    }
  }
  EXPECT_GT(compared, 600u);
  EXPECT_FLOAT_EQ(ck.tensors.at("scale_factor").item<float>(), 0.18215f);
  // EMA copies are 0.5 x the raw weights.
  auto w = ck.tensors.at("model.diffusion_model.input_blocks.0.0.weight");
  auto e = ck.tensors.at("model_ema.diffusion_modelinput_blocks00weight");
  EXPECT_TRUE(torch::allclose(e, 0.5 * w, 0, 0));
  EXPECT_EQ(ck.tensors.at("model_ema.num_updates").item<int64_t>(), 1234);
}

TEST(Ckpt, Fp16LoadsAsFp16) {
  LDM_REQUIRE_SHARED();
  auto ck = load_weights(test::fixture("tiny_sd_v1_fp16.ckpt"));
  auto w = ck.tensors.at("model.diffusion_model.input_blocks.0.0.weight");
  EXPECT_EQ(w.scalar_type(), torch::kFloat16);
  EXPECT_EQ(ck.tensors.at("betas").scalar_type(), torch::kFloat32);
  auto ref = load_ckpt(test::fixture("tiny_sd_v1.ckpt")).tensors.at("model.diffusion_model.input_blocks.0.0.weight");
  EXPECT_TRUE(torch::equal(w, ref.to(torch::kFloat16)));
  LoadOptions o;
  o.dtype = torch::kFloat32;
  EXPECT_EQ(load_weights(test::fixture("tiny_sd_v1_fp16.ckpt"), o).tensors.at("betas").scalar_type(), torch::kFloat32);
}

TEST(Ckpt, MaliciousIsRefusedAndRunsNothing) {
  LDM_REQUIRE_SHARED();
  auto dir = test::temp_dir();
  auto cwd = std::filesystem::current_path();
  std::filesystem::current_path(dir);
  try {
    load_weights(test::fixture("malicious.ckpt"));
    ADD_FAILURE() << "malicious.ckpt loaded";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("posix.system"), std::string::npos) << e.what();
  }
  std::filesystem::current_path(cwd);
  EXPECT_FALSE(std::filesystem::exists(dir + "/ldm_pwned_marker"));
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(dir), {}), 0);
}

TEST(Pickle, RefusesUnknownGlobalsAndBadInput) {
  auto up = [](const std::string& s) {
    return unpickle(reinterpret_cast<const uint8_t*>(s.data()), s.size(), "t.pkl");
  };
  EXPECT_THROW(up("cos\nsystem\n."), Error);
  EXPECT_THROW(up("cbuiltins\neval\n."), Error);
  EXPECT_THROW(up(""), Error);
  EXPECT_THROW(up("\x80\x02}q\x01"), Error);           // no STOP
  EXPECT_THROW(up("h\x05."), Error);                   // undefined memo
  EXPECT_THROW(up("X\xff\xff\xff\x7f."), Error);       // length beyond data
  auto ok = up(std::string("\x80\x02}q\x00(X\x01\x00\x00\x00" "aK\x05u.", 17));
  ASSERT_EQ(ok.root->kind, PyObj::Dict);
  EXPECT_EQ(ok.root->get("a")->i, 5);
}

TEST(Pickle, FuzzCorpusNeverCrashes) {
  std::string dir = std::string(LDM_SOURCE_DIR) + "/tests/fuzz/corpus_pickle";
  if (!std::filesystem::exists(dir)) GTEST_SKIP() << "no corpus";
  int n = 0;
  for (auto& f : std::filesystem::directory_iterator(dir)) {
    std::ifstream in(f.path(), std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), {});
    try {
      unpickle(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), "corpus");
    } catch (const Error&) {
    }
    ++n;
  }
  EXPECT_GT(n, 0);
}
