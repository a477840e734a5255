// Base64 (RFC 4648, standard alphabet with padding), for images in JSON.
#pragma once
#include <string>

namespace ldm::io {

std::string base64_encode(const std::string& bytes);
// Accepts an optional "data:...;base64," prefix and ignores whitespace;
// ldm::Error naming `what` on any other character or a bad length.
std::string base64_decode(const std::string& text, const std::string& what = "base64");

}  // namespace ldm::io
