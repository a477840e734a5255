#include "ldm/io/base64.h"

#include <cstdint>

#include "ldm/error.h"

namespace ldm::io {

namespace {
const char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
int value(unsigned char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+' || c == '-') return 62;  // '-' and '_': the URL-safe alphabet
  if (c == '/' || c == '_') return 63;
  return -1;
}
}  // namespace

std::string base64_encode(const std::string& in) {
  std::string out;
  out.reserve((in.size() + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 2 < in.size(); i += 3) {
    const uint32_t v = (uint8_t(in[i]) << 16) | (uint8_t(in[i + 1]) << 8) | uint8_t(in[i + 2]);
    for (int s : {18, 12, 6, 0}) out.push_back(kAlphabet[(v >> s) & 63]);
  }
  if (i < in.size()) {
    uint32_t v = uint8_t(in[i]) << 16;
    if (i + 1 < in.size()) v |= uint8_t(in[i + 1]) << 8;
    out.push_back(kAlphabet[(v >> 18) & 63]);
    out.push_back(kAlphabet[(v >> 12) & 63]);
    out.push_back(i + 1 < in.size() ? kAlphabet[(v >> 6) & 63] : '=');
    out.push_back('=');
  }
  return out;
}

std::string base64_decode(const std::string& text, const std::string& what) {
  size_t start = 0;
  if (text.rfind("data:", 0) == 0) {
    auto comma = text.find(',');
    if (comma == std::string::npos || text.find(";base64", 0) > comma)
      throw Error(what + ": a data: URL must be base64 (data:<type>;base64,<data>)");
    start = comma + 1;
  }
  std::string out;
  out.reserve(text.size() * 3 / 4);
  uint32_t acc = 0;
  int bits = 0, pad = 0;
  size_t n = 0;
  for (size_t i = start; i < text.size(); ++i) {
    const unsigned char c = text[i];
    if (c == ' ' || c == '\n' || c == '\r' || c == '\t') continue;
    if (c == '=') {
      ++pad;
      ++n;
      continue;
    }
    const int v = value(c);
    if (v < 0 || pad) throw Error(what + ": not base64 (character " + std::to_string(i) + ")");
    acc = (acc << 6) | uint32_t(v);
    bits += 6;
    ++n;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(static_cast<char>((acc >> bits) & 0xff));
    }
  }
  if (pad > 2 || (pad && n % 4) || n % 4 == 1) throw Error(what + ": not base64 (bad length or padding)");
  return out;
}

}  // namespace ldm::io
