#include "ldm/io/safetensors.h"

#include <fstream>

#include "ldm/error.h"
#include "ldm/io/safetensors_format.h"
#include "tests/testing.h"

using namespace ldm;
using namespace ldm::io;

namespace {
std::string make_file(const std::string& header, const std::string& data, int64_t declared = -1) {
  uint64_t n = declared >= 0 ? static_cast<uint64_t>(declared) : header.size();
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return s + header + data;
}
// Parses bytes; returns the error message ("" if it parsed).
std::string parse_err(const std::string& bytes) {
  try {
    parse_safetensors(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), "x.safetensors");
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}
const std::string k8(8, '\1');
}  // namespace

TEST(Safetensors, RoundTripAllDtypes) {
  auto dir = test::temp_dir();
  TensorMap m;
  m["f64"] = torch::randn({3, 2}, torch::kFloat64);
  m["f32"] = torch::randn({4});
  m["f16"] = torch::randn({2, 2}).to(torch::kFloat16);
  m["bf16"] = torch::randn({5}).to(torch::kBFloat16);
  m["i64"] = torch::arange(6, torch::kInt64).reshape({2, 3});
  m["i32"] = torch::arange(3, torch::kInt32);
  m["i16"] = torch::arange(3, torch::kInt16);
  m["i8"] = torch::arange(-3, 3, torch::kInt8);
  m["u8"] = torch::arange(7, torch::kUInt8);
  m["bool"] = torch::tensor({true, false, true});
  m["scalar"] = torch::tensor(3.5f);
  m["empty"] = torch::zeros({0, 4});
  std::string path = dir + "/a.safetensors";
  save_safetensors(path, m, {{"format", "pt"}, {"note", "hi"}});
  auto back = load_safetensors(path);
  ASSERT_EQ(back.size(), m.size());
  for (auto& [k, v] : m) {
    ASSERT_TRUE(back.count(k)) << k;
    EXPECT_EQ(back[k].scalar_type(), v.scalar_type()) << k;
    EXPECT_EQ(back[k].sizes(), v.sizes()) << k;
    EXPECT_TRUE(torch::equal(back[k], v)) << k;
  }
  auto md = safetensors_metadata(path);
  EXPECT_EQ(md["note"], "hi");
  // prefix + dtype conversion
  LoadOptions o;
  o.prefix = "f";
  o.strip_prefix = true;
  o.dtype = torch::kFloat32;
  auto sub = load_safetensors(path, o);
  EXPECT_EQ(sub.size(), 3u);
  EXPECT_EQ(sub["16"].scalar_type(), torch::kFloat32);
  EXPECT_TRUE(torch::allclose(sub["64"], m["f64"].to(torch::kFloat32)));
  // tensors alias a private mapping: writing them must not change the file
  auto again = load_safetensors(path);
  again["f32"].fill_(7);
  EXPECT_TRUE(torch::equal(load_safetensors(path)["f32"], m["f32"]));
}

TEST(Safetensors, AtomicWriteKeepsOldFileOnError) {
  auto dir = test::temp_dir();
  std::string path = dir + "/b.safetensors";
  save_safetensors(path, {{"a", torch::ones({2})}});
  TensorMap bad{{"c", torch::ones({2}, torch::kComplexFloat)}};
  EXPECT_THROW(save_safetensors(path, bad), Error);
  EXPECT_TRUE(torch::equal(load_safetensors(path)["a"], torch::ones({2})));
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(dir), {}), 1);
}

TEST(Safetensors, HostileHeaders) {
  const std::string ok = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  EXPECT_EQ(parse_err(make_file(ok, k8)), "");
  struct Case {
    const char* name;
    std::string bytes;
    const char* expect;
  } cases[] = {
      {"truncated", std::string("\x10\0\0", 3), "shorter than"},
      {"header beyond file", make_file(ok, k8, 1 << 20), "exceeds the file size"},
      {"huge header length", make_file(ok, k8, INT64_MAX), "exceeds the file size"},
      {"not json", make_file("{nope", ""), "not valid JSON"},
      {"not an object", make_file("[1,2]", ""), "not a JSON object"},
      {"offsets beyond data", make_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", "1234"), "beyond the data block"},
      {"reversed", make_file(R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}})", k8), "reversed"},
      {"overlap", make_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", k8), "overlap"},
      {"hole", make_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", k8), "hole"},
      {"dtype x shape mismatch", make_file(R"({"a":{"dtype":"F64","shape":[2],"data_offsets":[0,8]}})", k8), "needs 16"},
      {"unknown dtype", make_file(R"({"a":{"dtype":"F8","shape":[2],"data_offsets":[0,8]}})", k8), "unknown dtype"},
      {"negative shape", make_file(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", k8), "negative"},
      {"overflowing shape", make_file(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,8]}})", k8), "overflow"},
      {"metadata not string", make_file(R"({"__metadata__":{"k":1},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", k8), "not a string"},
      {"metadata not object", make_file(R"({"__metadata__":[1]})", ""), "not an object"},
      {"duplicate key", make_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", k8), "duplicate key"},
      {"entry not object", make_file(R"({"a":5})", ""), "not an object"},
      {"missing offsets", make_file(R"({"a":{"dtype":"F32","shape":[2]}})", k8), "data_offsets"},
      {"deep nesting", make_file(R"({"a":{"shape":[[[[1]]]]}})", ""), "nesting"},
      {"trailing data", make_file(ok, k8 + "xx"), "cover"},
  };
  for (const auto& c : cases) {
    std::string e = parse_err(c.bytes);
    EXPECT_NE(e.find(c.expect), std::string::npos) << c.name << ": got \"" << e << "\"";
    EXPECT_NE(e.find("x.safetensors"), std::string::npos) << c.name;
  }
  // The tensor is named in tensor-level errors.
  EXPECT_NE(parse_err(make_file(R"({"weird.name":{"dtype":"F8","shape":[2],"data_offsets":[0,8]}})", k8)).find("weird.name"),
            std::string::npos);
}

TEST(Safetensors, MissingFileIsClearError) {
  try {
    load_safetensors("/nonexistent/file.safetensors");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/file.safetensors"), std::string::npos);
  }
}

TEST(Safetensors, FuzzCorpusNeverCrashes) {
  // Regression corpus kept from the libFuzzer runs (tests/fuzz/corpus_safetensors).
  std::string dir = std::string(LDM_SOURCE_DIR) + "/tests/fuzz/corpus_safetensors";
  if (!std::filesystem::exists(dir)) GTEST_SKIP() << "no corpus";
  int n = 0;
  for (auto& f : std::filesystem::directory_iterator(dir)) {
    std::ifstream in(f.path(), std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), {});
    parse_err(bytes);  // must return or throw ldm::Error, nothing else
    ++n;
  }
  EXPECT_GT(n, 0);
}

TEST(Safetensors, ReadsFixtureFile) {
  LDM_REQUIRE_SHARED();
  auto m = load_safetensors(test::fixture("clip_text_tiny.safetensors"));
  auto& emb = m.at("cond_stage_model.transformer.text_model.embeddings.token_embedding.weight");
  EXPECT_EQ(emb.scalar_type(), torch::kFloat16);
  EXPECT_EQ(emb.sizes(), (std::vector<int64_t>{49408, 64}));
  EXPECT_EQ(m.at("input.ids").scalar_type(), torch::kInt64);
}
