// Writing generated images by file extension: .png (text chunks) or
// .jpg/.jpeg (the text as a JPEG comment segment); anything else is refused
// before the work starts.
#pragma once
#include <torch/types.h>

#include <map>
#include <string>

namespace ldm::io {

// Throws "PATH: ... expected .png, .jpg or .jpeg" for other extensions.
void check_image_extension(const std::string& path);
std::string encode_jpeg(const torch::Tensor& image, const std::string& comment = "", int quality = 95);
// PNG or JPEG by extension, written atomically; JPEG keeps text["parameters"] as its comment.
void save_image(const std::string& path, const torch::Tensor& image, const std::map<std::string, std::string>& text = {});

}  // namespace ldm::io
