// The C API against the CLI: a C program (tests/capi/capi_c_test.c) and the
// Python ctypes example (examples/ctypes_generate.py) get the same pixels as
// `ldm txt2img` with the same settings.
#include <cstdio>
#include <fstream>
#include <iterator>

#include "ldm/io/image.h"
#include "tests/testing.h"

using namespace ldm;

namespace {
int run(const std::string& cmd, std::string* out = nullptr) {
  auto r = test::run_command(cmd);
  if (out) *out = r.out;
  return r.rc;
}

// [3, H, W] float in [0, 1] from a binary P6 PPM
torch::Tensor read_ppm(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::string magic;
  int w = 0, h = 0, maxv = 0;
  f >> magic >> w >> h >> maxv;
  f.get();
  EXPECT_EQ(magic, "P6");
  std::string data((std::istreambuf_iterator<char>(f)), {});
  EXPECT_EQ(data.size(), static_cast<size_t>(w * h * 3));
  auto t = torch::from_blob(data.data(), {h, w, 3}, torch::kUInt8).clone();
  return t.permute({2, 0, 1}).to(torch::kFloat32).div(255.0).contiguous();
}

struct Tiny {
  std::string model = test::fixture("tiny_sd_v1.ckpt"), config = test::fixture("tiny_sd_v1.yaml"),
              vocab = test::shared_dir() + "/data/bpe_simple_vocab_16e6.txt.gz";
};

// what ldm txt2img makes with the C API's defaults (euler_a, cfg 7, seed 42) and 4 steps
torch::Tensor cli_image(const Tiny& t, const std::string& dir) {
  auto cmd = std::string(LDM_BINARY) + " txt2img --config " + t.config + " -m " + t.model + " --vocab " + t.vocab +
             " -p \"a cat\" --steps 4 -o " + dir + "/cli.png";
  std::string out;
  EXPECT_EQ(run(cmd, &out), 0) << out;
  return io::load_image(dir + "/cli.png");
}
}  // namespace

TEST(CApi, CProgramGetsTheCliPixels) {
  LDM_REQUIRE_SHARED();
  Tiny t;
  auto dir = test::temp_dir();
  std::string out;
  ASSERT_EQ(run(std::string(LDM_CAPI_C_TEST) + " " + t.model + " " + t.config + " " + t.vocab + " " + dir + "/c.ppm", &out), 0)
      << out;
  EXPECT_TRUE(torch::equal(read_ppm(dir + "/c.ppm"), cli_image(t, dir)));
}

TEST(CApi, PythonCtypesExampleGetsTheCliPixels) {
  LDM_REQUIRE_SHARED();
  Tiny t;
  auto dir = test::temp_dir();
  std::string out;
  auto cmd = std::string("python3 ") + LDM_SOURCE_DIR + "/examples/ctypes_generate.py --lib " + LDM_SHARED_LIBRARY +
             " -m " + t.model + " --config " + t.config + " --vocab " + t.vocab + " -p \"a cat\" --steps 4 -o " + dir +
             "/py.ppm";
  ASSERT_EQ(run(cmd, &out), 0) << out;
  EXPECT_NE(out.find("step 4/4"), std::string::npos) << out;
  EXPECT_TRUE(torch::equal(read_ppm(dir + "/py.ppm"), cli_image(t, dir)));
  // a failure is the library's one-line message, not a crash
  ASSERT_NE(run("python3 " + std::string(LDM_SOURCE_DIR) + "/examples/ctypes_generate.py --lib " + LDM_SHARED_LIBRARY +
                    " -m " + dir + "/missing.ckpt",
                &out),
            0);
  EXPECT_NE(out.find("error: " + dir + "/missing.ckpt"), std::string::npos) << out;
}

// libldm.so exports the C API and nothing of the C++ inside it.
TEST(CApi, SharedLibraryExportsOnlyTheCApi) {
  std::string out;
  ASSERT_EQ(run("nm -D --defined-only " + std::string(LDM_SHARED_LIBRARY), &out), 0) << out;
  EXPECT_NE(out.find(" T ldm_generate"), std::string::npos) << out.substr(0, 2000);
  EXPECT_EQ(out.find("Pipeline"), std::string::npos) << "C++ symbols exported";
  EXPECT_EQ(out.find("_ZN3ldm"), std::string::npos) << "C++ symbols exported";
}
