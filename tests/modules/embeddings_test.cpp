// Textual-inversion embeddings: a word standing alone becomes the file's
// vectors. Property: an embedding made of the token vectors of "red cube"
// gives the same image as writing "red cube".
#include <filesystem>
#include <fstream>

#include "ldm/error.h"
#include "ldm/io/ckpt.h"
#include "ldm/io/safetensors.h"
#include "ldm/modules/encoders/embeddings.h"
#include "ldm/modules/encoders/tokenizer.h"
#include "tests/testing.h"
#include "tests/tiny_sd.h"

using namespace ldm;

TEST(Embeddings, TokenizerReplacesTheWordStandingAlone) {
  LDM_REQUIRE_SHARED();
  auto tok = ClipTokenizer::load(test::clip_vocab());
  auto plain = tok;
  tok.add_word("MyStyle", {49408, 49409});
  auto ids = tok.encode("a photo in mystyle, sharp");
  auto want = plain.encode("a photo in");
  want.insert(want.end(), {49408, 49409});
  for (auto id : plain.encode(", sharp")) want.push_back(id);
  EXPECT_EQ(ids, want);
  EXPECT_EQ(tok.encode("mystyles everywhere"), plain.encode("mystyles everywhere"));  // not a whole word
  EXPECT_EQ(tok.encode("(mystyle:1.2)").size(), plain.encode("(").size() + 2 + plain.encode(":1.2)").size());
}

TEST(Embeddings, VectorsOfRedCubeGiveRedCubesImage) {
  LDM_REQUIRE_SHARED();
  auto dir = test::temp_dir();
  auto tok = ClipTokenizer::load(test::clip_vocab());
  auto W = io::load_weights(test::fixture("tiny_sd_v1.ckpt"))
               .tensors.at("cond_stage_model.transformer.text_model.embeddings.token_embedding.weight");
  auto ids = tok.encode("red cube");
  auto v = W.index_select(0, torch::tensor(ids, torch::kInt64)).to(torch::kFloat32).contiguous();
  io::save_safetensors(dir + "/cubey.safetensors", {{"emb_params", v}});
  // A1111's key layout, and a file of another width (skipped)
  io::save_safetensors(dir + "/other.safetensors", {{"string_to_param.*", torch::ones({3, 1024})}});
  EXPECT_EQ(load_embedding(dir + "/other.safetensors").sizes(), (std::vector<int64_t>{3, 1024}));
  std::ofstream(dir + "/broken.pt") << "not a pickle";  // skipped with a note, as A1111 skips it
  auto o = test::tiny_sd_options();
  o.embd_dir = dir;
  auto p = pipeline::Pipeline::load(o);
  pipeline::GenerateRequest r;
  r.steps = 3;
  r.prompt = "a cubey on a table";
  auto first = p->generate(r);
  ASSERT_EQ(first.notes.size(), 1u);
  EXPECT_EQ(first.notes[0].rfind("embedding skipped: " + dir + "/broken.pt", 0), 0u) << first.notes[0];
  EXPECT_TRUE(p->generate(r).notes.empty());  // said once
  auto with = first.images_u8;
  r.prompt = "a red cube on a table";
  EXPECT_TRUE(torch::equal(with, p->generate(r).images_u8));
  r.prompt = "a blue cube on a table";
  EXPECT_FALSE(torch::equal(with, p->generate(r).images_u8));
  io::save_safetensors(dir + "/bad.safetensors", {{"a", torch::ones({2})}, {"b", torch::ones({2})}});
  try {
    load_embedding(dir + "/bad.safetensors");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("bad.safetensors: not a textual-inversion embedding"), std::string::npos);
  }
}

// An embedding as AUTOMATIC1111 saves it: torch.save's zip + pickle with the
// vectors as a Parameter under string_to_param['*'] (tests/data/a1111_embedding.pt,
// written by tests/data/make_a1111_embedding.py with the standard library).
TEST(Embeddings, A1111TorchSaveFile) {
  const std::string file = std::string(LDM_SOURCE_DIR) + "/tests/data/a1111_embedding.pt";
  auto v = load_embedding(file);
  ASSERT_EQ(v.sizes(), (std::vector<int64_t>{2, 64}));
  auto want = torch::empty({2, 64});
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 64; ++j) want[i][j] = (i + 1) * 0.01 * (j + 1);
  EXPECT_TRUE(torch::allclose(v, want, 0, 1e-7));
  LDM_REQUIRE_SHARED();
  auto dir = test::temp_dir();
  std::filesystem::copy_file(file, dir + "/a1111_embedding.pt");
  auto o = test::tiny_sd_options();
  o.embd_dir = dir;
  auto p = pipeline::Pipeline::load(o);
  pipeline::GenerateRequest r;
  r.steps = 2;
  r.prompt = "a photo in a1111_embedding style";
  auto with = p->generate(r).images_u8;
  auto without = pipeline::Pipeline::load(test::tiny_sd_options())->generate(r).images_u8;
  EXPECT_FALSE(torch::equal(with, without));  // the word became the file's vectors
}
