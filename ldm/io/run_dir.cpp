#include "ldm/io/run_dir.h"

#include <filesystem>
#include <fstream>
#include <iterator>

#include "ldm/error.h"

namespace fs = std::filesystem;

namespace ldm {

namespace {
std::string read_text(const fs::path& p) {
  std::ifstream in(p);
  return std::string((std::istreambuf_iterator<char>(in)), {});
}
}  // namespace

std::string latest_checkpoint(const std::string& p) {
  fs::path path(p);
  if (fs::exists(path / "state.json")) return path.string();
  fs::path ck = fs::exists(path / "checkpoints") ? path / "checkpoints" : path;
  if (!fs::exists(ck / "latest")) throw Error(p + ": no checkpoint found (expected checkpoints/latest)");
  std::string name = read_text(ck / "latest");
  while (!name.empty() && (name.back() == '\n' || name.back() == '\r')) name.pop_back();
  fs::path dir = ck / name;
  if (!fs::exists(dir / "state.json")) throw Error((ck / "latest").string() + ": names " + name + ", which is incomplete");
  return dir.string();
}

std::string weights_file(const std::string& path) {
  return fs::is_directory(path) ? latest_checkpoint(path) + "/model.safetensors" : path;
}

std::string run_dir_of(const std::string& p) {
  fs::path path = fs::path(p).lexically_normal();
  if (path.filename().empty()) path = path.parent_path();  // trailing slash
  if (path.has_parent_path() && path.parent_path().filename() == "checkpoints") return path.parent_path().parent_path().string();
  return path.string();
}

std::string run_config_of(const std::string& p) {
  if (!fs::is_directory(p)) return "";
  for (const fs::path& c : {fs::path(p) / "config.yaml", fs::path(run_dir_of(p)) / "config.yaml"})
    if (fs::is_regular_file(c)) return c.string();
  return "";
}

bool is_run_dir(const std::string& dir) {
  return fs::exists(fs::path(dir) / "checkpoints") || fs::exists(fs::path(dir) / "metrics.csv");
}

}  // namespace ldm
