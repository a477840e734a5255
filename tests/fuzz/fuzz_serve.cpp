// libFuzzer target: the server's request parsing on arbitrary bytes. The
// first byte picks the parser: A1111 txt2img / img2img JSON, OpenAI JSON, or
// a base64 image (base64 decoding, then PNG/JPEG/BMP decoding). Only
// HttpError may come out. Built by tests/fuzz/build_serve_fuzzer.sh.
#include <cstdint>
#include <string>

#include "tools/ldm/serve/api.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string body(reinterpret_cast<const char*>(data) + 1, size - 1);
  ldm::serve::Limits lim;
  lim.max_pixels = 1 << 16;  // keeps decoded images small
  try {
    switch (data[0] % 4) {
      case 0: ldm::serve::parse_a1111(body, false, lim); break;
      case 1: ldm::serve::parse_a1111(body, true, lim); break;
      case 2: ldm::serve::parse_openai(body, lim); break;
      default: ldm::serve::decode_b64_image(body, 3, "fuzz", lim); break;
    }
  } catch (const ldm::serve::HttpError&) {
  }
  return 0;
}
