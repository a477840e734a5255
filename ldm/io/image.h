// Image files: PNG/JPEG/BMP read through stb_image, PNG written with text
// chunks (generation parameters in the "parameters" key web UIs read), and
// torchvision-style grids.
#pragma once
#include <torch/types.h>

#include <map>
#include <string>

namespace ldm::io {

// [C, H, W] float32 in [0, 1] with `channels` channels (1 or 3); ldm::Error
// naming the file when it cannot be read or decoded.
torch::Tensor load_image(const std::string& path, int channels = 3);
// The same from encoded bytes (PNG, JPEG, BMP); `what` names them in errors.
// Refuses images larger than max_pixels before decoding them.
torch::Tensor decode_image(const std::string& bytes, int channels, const std::string& what,
                           int64_t max_pixels = 64ll << 20);

// Float in [0, 1] -> uint8 (rounded), as every PNG we write.
torch::Tensor to_uint8(const torch::Tensor& image);
// [C, H, W] (C = 1 or 3) float in [0, 1] or uint8 -> PNG bytes with tEXt chunks.
std::string encode_png(const torch::Tensor& image, const std::map<std::string, std::string>& text = {});
// The same, written atomically.
void save_png(const std::string& path, const torch::Tensor& image, const std::map<std::string, std::string>& text = {});
// The tEXt chunks of a PNG file.
std::map<std::string, std::string> read_png_text(const std::string& path);
// The text an image carries: a PNG's tEXt and uncompressed iTXt chunks, or a
// JPEG's first comment as "parameters" (what save_image writes); empty for
// other bytes and images without text. Throws for a truncated PNG.
std::map<std::string, std::string> image_text(const std::string& bytes, const std::string& what);

// [N, C, H, W] -> [C, H', W'] with `nrow` images per row and `pad` pixels of
// `pad_value` between them (torchvision.utils.make_grid).
torch::Tensor make_grid(const torch::Tensor& batch, int64_t nrow, int64_t pad = 2, double pad_value = 0.0);

// Model range [-1, 1] -> [0, 1].
torch::Tensor to_unit_range(const torch::Tensor& x);

}  // namespace ldm::io
