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

}  // namespace ldm
