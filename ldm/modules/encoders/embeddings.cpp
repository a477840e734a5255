#include "ldm/modules/encoders/embeddings.h"

#include <torch/torch.h>

#include <algorithm>
#include <filesystem>

#include "ldm/error.h"
#include "ldm/io/ckpt.h"

namespace ldm {

torch::Tensor load_embedding(const std::string& file) {
  auto t = io::load_weights(file).tensors;
  torch::Tensor v;
  for (const auto& [k, x] : t)
    if (k.rfind("string_to_param.", 0) == 0 || k == "emb_params") v = x;
  if (!v.defined() && t.size() == 1) v = t.begin()->second;
  if (!v.defined())
    throw Error(file + ": not a textual-inversion embedding (expected string_to_param, emb_params or one tensor)");
  if (v.dim() == 1) v = v.unsqueeze(0);
  if (v.dim() != 2) throw Error(file + ": embedding vectors must be [n, width], got " + c10::str(v.sizes()));
  return v.to(torch::kFloat32).contiguous();
}

std::vector<EmbeddingFile> scan_embeddings(const std::string& dir) {
  namespace fs = std::filesystem;
  if (!fs::is_directory(dir)) throw Error("embeddings: " + dir + " is not a directory");
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(dir)) {
    const auto ext = e.path().extension().string();
    if (e.is_regular_file() && (ext == ".pt" || ext == ".safetensors" || ext == ".bin")) files.push_back(e.path());
  }
  std::sort(files.begin(), files.end());  // ids in a fixed order
  std::vector<EmbeddingFile> out;
  for (const auto& f : files) {
    EmbeddingFile e{f.stem().string(), f.string(), "", {}};
    try {
      e.vectors = load_embedding(f.string());
    } catch (const Error& err) {
      e.error = err.what();
    }
    out.push_back(std::move(e));
  }
  return out;
}

}  // namespace ldm
