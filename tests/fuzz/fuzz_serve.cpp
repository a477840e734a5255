// libFuzzer target: the server's request parsing on arbitrary bytes. The
// first byte picks the parser: A1111 txt2img / img2img JSON, OpenAI JSON, a
// base64 image (its text as png-info reads it, then base64 and PNG/JPEG/BMP
// decoding), or an extra-single-image body (upscaled: the limits keep it small). Only HttpError may come out. Built by tests/fuzz/build_serve_fuzzer.sh.
#include <cstdint>
#include <string>

#include "tools/ldm/serve/api.h"

namespace {
// png-info on the same bytes, answered as the server answers (invalid UTF-8
// replaced): its own HttpError does not stop the image decoding after it.
void png_info_of(const std::string& b64) {
  const auto replace = ldm::serve::json::error_handler_t::replace;
  try {
    ldm::serve::png_info(ldm::serve::json{{"image", b64}}.dump(-1, ' ', false, replace)).dump(-1, ' ', false, replace);
  } catch (const ldm::serve::HttpError&) {
  }
  ldm::serve::parse_infotext(b64).dump(-1, ' ', false, replace);
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string body(reinterpret_cast<const char*>(data) + 1, size - 1);
  ldm::serve::Limits lim;
  lim.max_pixels = 1 << 16;  // keeps decoded images small
  try {
    switch (data[0] % 5) {
      case 0: ldm::serve::parse_a1111(body, false, lim); break;
      case 1: ldm::serve::parse_a1111(body, true, lim); break;
      case 2: ldm::serve::parse_openai(body, lim); break;
      case 4: ldm::serve::extra_single_image(body, lim); break;
      default:
        png_info_of(body);
        ldm::serve::decode_b64_image(body, 3, "fuzz", lim);
        break;
    }
  } catch (const ldm::serve::HttpError&) {
  }
  return 0;
}
