#include "ldm/io/image.h"
#include "ldm/io/image_file.h"

#include <stb_image.h>
#include <stb_image_write.h>
#include <torch/torch.h>
#include <zlib.h>

#include <climits>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <cctype>
#include <fstream>
#include <iterator>

#include "ldm/error.h"
#include "ldm/io/atomic_file.h"

namespace ldm::io {

namespace {
// stb's pixels (freed here) as [C, H, W] float32 in [0, 1]; `fail` + stb's reason when there are none.
torch::Tensor from_stb(unsigned char* data, int w, int h, int channels, const std::string& fail) {
  if (!data) {
    const char* why = stbi_failure_reason();
    throw Error(fail + " (" + (why ? why : "unknown error") + ")");
  }
  auto t = torch::from_blob(data, {h, w, channels}, torch::kUInt8).permute({2, 0, 1}).to(torch::kFloat32).div_(255.0);
  stbi_image_free(data);
  return t.contiguous();
}
}  // namespace

torch::Tensor load_image(const std::string& path, int channels) {
  if (channels != 1 && channels != 3) throw Error("load_image: channels must be 1 or 3");
  int w = 0, h = 0, c = 0;
  unsigned char* data = stbi_load(path.c_str(), &w, &h, &c, channels);
  return from_stb(data, w, h, channels, path + ": cannot read image");
}

torch::Tensor decode_image(const std::string& bytes, int channels, const std::string& what, int64_t max_pixels) {
  if (channels != 1 && channels != 3) throw Error("decode_image: channels must be 1 or 3");
  const auto* p = reinterpret_cast<const stbi_uc*>(bytes.data());
  const int len = static_cast<int>(std::min<size_t>(bytes.size(), INT32_MAX));
  int w = 0, h = 0, c = 0;
  if (!stbi_info_from_memory(p, len, &w, &h, &c)) throw Error(what + ": not a PNG, JPEG or BMP image");
  if (static_cast<int64_t>(w) * h > max_pixels)
    throw Error(what + ": " + std::to_string(w) + "x" + std::to_string(h) + " is larger than " +
                std::to_string(max_pixels) + " pixels");
  unsigned char* data = stbi_load_from_memory(p, len, &w, &h, &c, channels);
  return from_stb(data, w, h, channels, what + ": cannot decode the image");
}

namespace {
void put_be32(std::string& s, uint32_t v) {
  for (int i = 3; i >= 0; --i) s.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
uint32_t get_be32(const std::string& s, size_t at) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v = (v << 8) | static_cast<unsigned char>(s[at + i]);
  return v;
}
std::string text_chunk(const std::string& key, const std::string& value) {
  std::string body = "tEXt" + key + std::string(1, '\0') + value;
  std::string chunk;
  put_be32(chunk, static_cast<uint32_t>(body.size() - 4));
  chunk += body;
  put_be32(chunk, static_cast<uint32_t>(crc32(0, reinterpret_cast<const Bytef*>(body.data()), body.size())));
  return chunk;
}
void append(void* ctx, void* data, int size) { static_cast<std::string*>(ctx)->append(static_cast<char*>(data), size); }
}  // namespace

torch::Tensor to_uint8(const torch::Tensor& image) {
  return image.scalar_type() == torch::kUInt8
             ? image
             : image.detach().to(torch::kFloat32).clamp(0, 1).mul(255).round().to(torch::kUInt8);
}

std::string encode_png(const torch::Tensor& image, const std::map<std::string, std::string>& text) {
  if (image.dim() != 3 || (image.size(0) != 1 && image.size(0) != 3))
    throw Error("PNG: expected an image [C, H, W] with C = 1 or 3, got " + c10::str(image.sizes()));
  auto u8 = to_uint8(image).cpu().permute({1, 2, 0}).contiguous();
  const int h = static_cast<int>(u8.size(0)), w = static_cast<int>(u8.size(1)), c = static_cast<int>(u8.size(2));
  std::string png;
  if (!stbi_write_png_to_func(append, &png, w, h, c, u8.data_ptr<uint8_t>(), w * c)) throw Error("PNG encoding failed");
  // text chunks go right after IHDR (8-byte signature + 25-byte IHDR chunk)
  std::string chunks;
  for (const auto& [k, v] : text) chunks += text_chunk(k, v);
  png.insert(33, chunks);
  return png;
}

void save_png(const std::string& path, const torch::Tensor& image, const std::map<std::string, std::string>& text) {
  if (image.dim() != 3 || (image.size(0) != 1 && image.size(0) != 3))
    throw Error(path + ": save_png expects [C, H, W] with C = 1 or 3, got " + c10::str(image.sizes()));
  auto png = encode_png(image, text);
  write_file_atomic(path, png.data(), png.size());
}

namespace {
std::string lower_extension(const std::string& path) {
  std::string e = std::filesystem::path(path).extension().string();
  for (auto& ch : e) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  return e;
}
}  // namespace

void check_image_extension(const std::string& path) {
  const auto e = lower_extension(path);
  if (e != ".png" && e != ".jpg" && e != ".jpeg")
    throw Error(path + ": unknown image type \"" + e + "\" (expected .png, .jpg or .jpeg)");
}

std::string encode_jpeg(const torch::Tensor& image, const std::string& comment, int quality) {
  if (image.dim() != 3 || (image.size(0) != 1 && image.size(0) != 3))
    throw Error("JPEG: expected an image [C, H, W] with C = 1 or 3, got " + c10::str(image.sizes()));
  auto u8 = to_uint8(image).cpu().permute({1, 2, 0}).contiguous();
  const int h = static_cast<int>(u8.size(0)), w = static_cast<int>(u8.size(1)), c = static_cast<int>(u8.size(2));
  std::string jpg;
  if (!stbi_write_jpg_to_func(append, &jpg, w, h, c, u8.data_ptr<uint8_t>(), quality)) throw Error("JPEG encoding failed");
  if (!comment.empty()) {  // a COM segment (FF FE, big-endian length incl. itself) right after SOI
    const std::string text = comment.substr(0, 65533);
    const size_t len = text.size() + 2;
    std::string seg = {'\xFF', '\xFE', static_cast<char>(len >> 8), static_cast<char>(len & 0xff)};
    jpg.insert(2, seg + text);
  }
  return jpg;
}

void save_image(const std::string& path, const torch::Tensor& image, const std::map<std::string, std::string>& text) {
  check_image_extension(path);
  const auto e = lower_extension(path);
  if (e == ".png") return save_png(path, image, text);
  auto it = text.find("parameters");
  auto jpg = encode_jpeg(image, it == text.end() ? "" : it->second);
  write_file_atomic(path, jpg.data(), jpg.size());
}

namespace {
bool is_png(const std::string& s) { return s.size() >= 8 && s.compare(0, 8, "\x89PNG\r\n\x1a\n") == 0; }

// iTXt: keyword \0, compression flag, method, language \0, translated keyword \0, text
bool itxt_entry(const std::string& body, std::map<std::string, std::string>& out) {
  const auto k = body.find('\0');
  if (k == std::string::npos || k + 3 > body.size() || body[k + 1] != 0) return false;  // compressed: skipped
  const auto lang = body.find('\0', k + 3);
  const auto tr = lang == std::string::npos ? lang : body.find('\0', lang + 1);
  if (tr == std::string::npos) return false;
  out[body.substr(0, k)] = body.substr(tr + 1);
  return true;
}

std::map<std::string, std::string> png_text(const std::string& s, const std::string& what) {
  std::map<std::string, std::string> out;
  for (size_t at = 8; at + 12 <= s.size();) {
    uint32_t len = get_be32(s, at);
    if (len > s.size() - at - 12) throw Error(what + ": truncated PNG chunk");
    std::string type = s.substr(at + 4, 4);
    if (type == "tEXt") {
      std::string body = s.substr(at + 8, len);
      auto nul = body.find('\0');
      if (nul != std::string::npos) out[body.substr(0, nul)] = body.substr(nul + 1);
    } else if (type == "iTXt") {
      itxt_entry(s.substr(at + 8, len), out);
    }
    if (type == "IEND") break;
    at += 12 + len;
  }
  return out;
}

// The first COM segment before the image data (encode_jpeg puts it after SOI).
std::map<std::string, std::string> jpeg_comment(const std::string& s) {
  for (size_t at = 2; at + 4 <= s.size() && static_cast<unsigned char>(s[at]) == 0xFF;) {
    const unsigned marker = static_cast<unsigned char>(s[at + 1]);
    const size_t len = (static_cast<unsigned char>(s[at + 2]) << 8) | static_cast<unsigned char>(s[at + 3]);
    if (len < 2 || at + 2 + len > s.size() || marker == 0xDA) break;  // bad length, or start of scan
    if (marker == 0xFE) return {{"parameters", s.substr(at + 4, len - 2)}};
    at += 2 + len;
  }
  return {};
}
}  // namespace

std::map<std::string, std::string> image_text(const std::string& bytes, const std::string& what) {
  if (is_png(bytes)) return png_text(bytes, what);
  if (bytes.size() >= 4 && bytes.compare(0, 2, "\xFF\xD8") == 0) return jpeg_comment(bytes);
  return {};
}

std::map<std::string, std::string> read_png_text(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw Error(path + ": cannot open");
  std::string s((std::istreambuf_iterator<char>(f)), {});
  if (!is_png(s)) throw Error(path + ": not a PNG file");
  return png_text(s, path);
}

torch::Tensor make_grid(const torch::Tensor& b, int64_t nrow, int64_t pad, double pad_value) {
  if (b.dim() != 4) throw Error("make_grid: expected [N, C, H, W], got " + c10::str(b.sizes()));
  const int64_t n = b.size(0), C = b.size(1), H = b.size(2), W = b.size(3);
  const int64_t cols = std::max<int64_t>(1, std::min(nrow, n)), rows = (n + cols - 1) / cols;
  auto grid = torch::full({C, rows * (H + pad) + pad, cols * (W + pad) + pad}, pad_value, b.options());
  for (int64_t i = 0; i < n; ++i) {
    const int64_t r = i / cols, c = i % cols;
    grid.narrow(1, r * (H + pad) + pad, H).narrow(2, c * (W + pad) + pad, W).copy_(b[i]);
  }
  return grid;
}

torch::Tensor to_unit_range(const torch::Tensor& x) { return ((x + 1) / 2).clamp(0, 1); }

}  // namespace ldm::io
