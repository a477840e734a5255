// Textual-inversion embeddings as published: AUTOMATIC1111's .pt files
// (string_to_param: {"*": [n, width]}) and .safetensors (emb_params), or any
// file holding one 2-D tensor. The vectors replace a prompt word equal to the
// file's stem (TextEncoder::add_embedding).
#pragma once
#include <torch/types.h>

#include <string>
#include <vector>

namespace ldm {

// [n, width] float32; ldm::Error naming the file when it holds no such tensor.
torch::Tensor load_embedding(const std::string& file);

// The embedding files of a folder (.pt, .safetensors, .bin) in name order,
// each loaded; one that holds no embedding has `error` set instead.
struct EmbeddingFile {
  std::string name, path, error;  // name: the file's stem, the prompt word
  torch::Tensor vectors;          // [n, width]
};
std::vector<EmbeddingFile> scan_embeddings(const std::string& dir);

}  // namespace ldm
