#include "ldm/modules/encoders/embeddings.h"

#include <torch/torch.h>

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

}  // namespace ldm
