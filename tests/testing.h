// Shared test helpers: where the reference fixtures live, and comparisons.
#pragma once
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <sys/wait.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

#include "ldm/io/safetensors.h"

namespace ldm::test {

inline std::string shared_dir() {
  if (const char* e = std::getenv("LDM_SHARED_DIR")) return e;
  return std::string(LDM_SOURCE_DIR) + "/../shared";
}
inline std::string fixture(const std::string& name) { return shared_dir() + "/fixtures/" + name; }
inline bool have_shared() { return std::filesystem::exists(shared_dir() + "/fixtures/README.md"); }
inline bool in_ci() {
  const char* ci = std::getenv("CI");
  return ci && std::string(ci) == "true";
}

// A fresh temporary directory for one test.
inline std::string temp_dir() {
  std::string tmpl = (std::filesystem::temp_directory_path() / "ldm_test_XXXXXX").string();
  char* d = mkdtemp(tmpl.data());
  return d ? std::string(d) : std::string();
}

// A shell command's exit status and its stdout and stderr together.
struct CommandResult {
  int rc;
  std::string out;
};
inline CommandResult run_command(const std::string& cmd) {
  CommandResult r{-1, ""};
  FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  if (!p) return r;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, n);
  const int st = pclose(p);
  r.rc = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return r;
}

// max |a-b| - (atol + rtol |b|) <= 0 means within tolerance.
inline double max_abs_err(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kFloat64) - b.to(torch::kFloat64)).abs().max().item<double>();
}
inline void expect_close(const torch::Tensor& got, const torch::Tensor& ref, double atol, double rtol,
                         const std::string& what) {
  ASSERT_EQ(got.sizes(), ref.sizes()) << what;
  auto g = got.to(torch::kFloat64), r = ref.to(torch::kFloat64);
  auto excess = ((g - r).abs() - (atol + rtol * r.abs())).max().item<double>();
  EXPECT_LE(excess, 0.0) << what << ": max abs err " << max_abs_err(g, r) << " (atol " << atol << ", rtol " << rtol << ")";
}

}  // namespace ldm::test

// Parity tests need ../shared; a user's clone skips them with a reason, CI fails.
#define LDM_REQUIRE_SHARED()                                                              \
  do {                                                                                    \
    if (!ldm::test::have_shared()) {                                                   \
      if (ldm::test::in_ci()) FAIL() << "CI needs ../shared/fixtures, not found";      \
      GTEST_SKIP() << "../shared/fixtures not present (reference fixtures ship separately)"; \
    }                                                                                     \
  } while (0)
