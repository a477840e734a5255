#include "ldm/modules/encoders/tokenizer.h"

#include <cctype>

#include <zlib.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "ldm/error.h"
#include "ldm/util/number.h"

namespace fs = std::filesystem;

namespace ldm {

namespace {
// GPT-2/CLIP bytes_to_unicode: printable bytes map to themselves, the rest
// to code points 256.. so every byte is a visible character.
const std::vector<std::string>& byte_encoder() {
  static const std::vector<std::string> table = [] {
    std::vector<int> cps(256, -1);
    for (int b = 0; b < 256; ++b)
      if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255)) cps[b] = b;
    int n = 0;
    for (int b = 0; b < 256; ++b)
      if (cps[b] < 0) cps[b] = 256 + n++;
    std::vector<std::string> out(256);
    for (int b = 0; b < 256; ++b) {
      int c = cps[b];
      std::string s;
      if (c < 0x80) s.push_back(static_cast<char>(c));
      else {
        s.push_back(static_cast<char>(0xC0 | (c >> 6)));
        s.push_back(static_cast<char>(0x80 | (c & 0x3F)));
      }
      out[b] = s;
    }
    return out;
  }();
  return table;
}

std::string read_maybe_gz(const std::string& path) {
  gzFile f = gzopen(path.c_str(), "rb");
  if (!f) throw Error(path + ": cannot open");
  std::string data;
  char buf[1 << 16];
  int n;
  while ((n = gzread(f, buf, sizeof buf)) > 0) data.append(buf, n);
  gzclose(f);
  if (n < 0) throw Error(path + ": read error");
  return data;
}

// UTF-8 decoding (invalid bytes become U+FFFD, one byte each)
std::vector<std::pair<uint32_t, size_t>> code_points(const std::string& s) {
  std::vector<std::pair<uint32_t, size_t>> out;  // (code point, byte length)
  for (size_t i = 0; i < s.size();) {
    unsigned char c = s[i];
    size_t len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (len == 0 || i + len > s.size()) {
      out.push_back({0xFFFD, 1});
      ++i;
      continue;
    }
    uint32_t cp = len == 1 ? c : c & (0x7F >> len);
    for (size_t k = 1; k < len; ++k) cp = (cp << 6) | (s[i + k] & 0x3F);
    out.push_back({cp, len});
    i += len;
  }
  return out;
}

// \p{L} and \p{N} for the scripts prompts use (an approximation of the full
// Unicode tables the reference's `regex` module has).
bool is_letter(uint32_t c) {
  if (c < 0x80) return (c | 0x20) >= 'a' && (c | 0x20) <= 'z';
  if (c == 0xAA || c == 0xB5 || c == 0xBA) return true;
  if (c >= 0xC0 && c <= 0x24F) return c != 0xD7 && c != 0xF7;
  return (c >= 0x250 && c <= 0x2AF) || (c >= 0x370 && c <= 0x3FF && c != 0x37E && c != 0x387) ||
         (c >= 0x400 && c <= 0x52F) || (c >= 0x531 && c <= 0x587) || (c >= 0x5D0 && c <= 0x5EA) ||
         (c >= 0x620 && c <= 0x64A) || (c >= 0x904 && c <= 0x939) || (c >= 0xE01 && c <= 0xE30) ||
         (c >= 0x1E00 && c <= 0x1FFF) || (c >= 0x3041 && c <= 0x30FF && c != 0x30FB) ||
         (c >= 0x3400 && c <= 0x4DBF) || (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0xAC00 && c <= 0xD7A3) ||
         (c >= 0xF900 && c <= 0xFAFF) || (c >= 0xFF21 && c <= 0xFF3A) || (c >= 0xFF41 && c <= 0xFF5A);
}
bool is_number(uint32_t c) {
  if (c < 0x80) return c >= '0' && c <= '9';
  return c == 0xB2 || c == 0xB3 || c == 0xB9 || (c >= 0xBC && c <= 0xBE) || (c >= 0x660 && c <= 0x669) ||
         (c >= 0x966 && c <= 0x96F) || (c >= 0x2150 && c <= 0x2189) || (c >= 0x2460 && c <= 0x249B) ||
         (c >= 0xFF10 && c <= 0xFF19);
}
bool is_space(uint32_t c) {
  return c == ' ' || (c >= 0x09 && c <= 0x0D) || c == 0x85 || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) ||
         c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

std::string html_unescape(const std::string& s) {
  static const std::map<std::string, std::string> named = {{"amp", "&"}, {"lt", "<"}, {"gt", ">"}, {"quot", "\""},
                                                           {"apos", "'"}, {"nbsp", "\xC2\xA0"}};
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '&') {
      size_t semi = s.find(';', i);
      if (semi != std::string::npos && semi - i <= 10) {
        std::string ent = s.substr(i + 1, semi - i - 1);
        uint32_t cp = 0;
        bool ok = false;
        if (!ent.empty() && ent[0] == '#') {
          try {
            cp = static_cast<uint32_t>(ent.size() > 1 && (ent[1] == 'x' || ent[1] == 'X') ? std::stoul(ent.substr(2), nullptr, 16)
                                                                                           : std::stoul(ent.substr(1)));
            ok = cp > 0 && cp < 0x110000;
          } catch (const std::exception&) {
          }
          if (ok) {
            append_utf8(out, cp);
            i = semi;
            continue;
          }
        } else if (auto it = named.find(ent); it != named.end()) {
          out += it->second;
          i = semi;
          continue;
        }
      }
    }
    out.push_back(s[i]);
  }
  return out;
}
}  // namespace

std::string clip_clean_text(const std::string& text) {
  std::string t = html_unescape(html_unescape(text));
  std::string out;
  bool pending_space = false;
  for (auto [cp, len] : code_points(t)) {
    (void)len;
    if (is_space(cp)) {
      pending_space = !out.empty();
      continue;
    }
    if (pending_space) out.push_back(' ');
    pending_space = false;
    uint32_t c = cp;
    if (c < 0x80) {
      out.push_back(static_cast<char>(c >= 'A' && c <= 'Z' ? c + 32 : c));
      continue;
    }
    // lower-case the Latin-1/Greek/Cyrillic capitals prompts meet
    if ((c >= 0xC0 && c <= 0xDE && c != 0xD7) || (c >= 0x391 && c <= 0x3AB) || (c >= 0x410 && c <= 0x42F)) c += 0x20;
    else if (c >= 0x400 && c <= 0x40F) c += 0x50;
    append_utf8(out, c);
  }
  return out;
}

ClipTokenizer ClipTokenizer::load(const std::string& path) {
  ClipTokenizer t;
  std::vector<std::pair<std::string, std::string>> merges;
  auto parse_merges = [&](const std::string& text, size_t max_merges, const std::string& where) {
    std::istringstream in(text);
    std::string line;
    std::getline(in, line);  // header ("#version: ..." / the OpenAI file's first line)
    while (std::getline(in, line) && merges.size() < max_merges) {
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (line.empty()) continue;
      auto sp = line.find(' ');
      if (sp == std::string::npos) throw Error(where + ": bad merge line \"" + line + "\"");
      merges.push_back({line.substr(0, sp), line.substr(sp + 1)});
    }
  };
  fs::path p(path);
  if (fs::is_directory(p)) p = p / "vocab.json";
  if (p.extension() == ".json") {
    fs::path mp = p.parent_path() / "merges.txt";
    if (!fs::exists(mp)) throw Error(p.string() + ": merges.txt expected beside it (Hugging Face tokenizer)");
    std::ifstream vf(p);
    try {
      auto j = nlohmann::json::parse(vf);
      for (auto& [k, v] : j.items()) t.encoder_[k] = v.get<int64_t>();
    } catch (const nlohmann::json::exception& e) {
      throw Error(p.string() + ": " + e.what());
    }
    parse_merges(read_maybe_gz(mp.string()), SIZE_MAX, mp.string());
  } else {
    // OpenAI: the merges, of which CLIP uses the first 49152 - 256 - 2
    parse_merges(read_maybe_gz(p.string()), 49152 - 256 - 2, p.string());
    // vocabulary order of bytes_to_unicode().values(): printable bytes first
    std::vector<std::string> vocab;
    std::vector<int> order;
    for (int b = 0; b < 256; ++b)
      if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255)) order.push_back(b);
    for (int b = 0; b < 256; ++b)
      if (!((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255))) order.push_back(b);
    for (int b : order) vocab.push_back(byte_encoder()[b]);
    for (size_t i = 0; i < 256; ++i) vocab.push_back(vocab[i] + "</w>");
    for (auto& [a, b] : merges) vocab.push_back(a + b);
    vocab.push_back("<|startoftext|>");
    vocab.push_back("<|endoftext|>");
    for (size_t i = 0; i < vocab.size(); ++i) t.encoder_[vocab[i]] = static_cast<int64_t>(i);
  }
  for (size_t i = 0; i < merges.size(); ++i) t.ranks_[merges[i]] = static_cast<int64_t>(i);
  auto sot = t.encoder_.find("<|startoftext|>"), eot = t.encoder_.find("<|endoftext|>");
  if (sot == t.encoder_.end() || eot == t.encoder_.end()) throw Error(path + ": vocabulary lacks <|startoftext|>/<|endoftext|>");
  t.sot_ = sot->second;
  t.eot_ = eot->second;
  return t;
}

std::vector<std::string> ClipTokenizer::bpe(const std::string& token) const {
  if (auto it = cache_.find(token); it != cache_.end()) return it->second;
  std::vector<std::string> word;
  for (auto [cp, len] : code_points(token)) (void)cp, word.push_back("");
  {
    size_t at = 0, i = 0;
    for (auto [cp, len] : code_points(token)) {
      (void)cp;
      word[i++] = token.substr(at, len);
      at += len;
    }
  }
  word.back() += "</w>";
  while (word.size() > 1) {
    int64_t best = INT64_MAX;
    size_t best_i = 0;
    for (size_t i = 0; i + 1 < word.size(); ++i) {
      auto it = ranks_.find({word[i], word[i + 1]});
      if (it != ranks_.end() && it->second < best) {
        best = it->second;
        best_i = i;
      }
    }
    if (best == INT64_MAX) break;
    const std::string a = word[best_i], b = word[best_i + 1];
    std::vector<std::string> merged;
    for (size_t i = 0; i < word.size();) {
      if (i + 1 < word.size() && word[i] == a && word[i + 1] == b) {
        merged.push_back(a + b);
        i += 2;
      } else {
        merged.push_back(word[i++]);
      }
    }
    word.swap(merged);
  }
  if (cache_.size() < 100000) cache_[token] = word;
  return word;
}

void ClipTokenizer::add_word(const std::string& word, std::vector<int64_t> ids) {
  words_[clip_clean_text(word)] = std::move(ids);
  cache_.clear();
}

std::vector<int64_t> ClipTokenizer::encode(const std::string& text) const {
  const std::string t = clip_clean_text(text);
  // the first custom word standing alone (between spaces, punctuation or the ends)
  size_t best = std::string::npos;
  const std::pair<const std::string, std::vector<int64_t>>* hit = nullptr;
  auto boundary = [&](size_t at) { return at >= t.size() || !std::isalnum(static_cast<unsigned char>(t[at])); };
  for (const auto& w : words_)
    for (size_t at = t.find(w.first); at != std::string::npos; at = t.find(w.first, at + 1))
      if ((at == 0 || boundary(at - 1)) && boundary(at + w.first.size())) {
        if (at < best) best = at, hit = &w;
        break;
      }
  if (!hit) return encode_plain(t);
  auto ids = encode_plain(t.substr(0, best));
  ids.insert(ids.end(), hit->second.begin(), hit->second.end());
  auto rest = encode(t.substr(best + hit->first.size()));
  ids.insert(ids.end(), rest.begin(), rest.end());
  return ids;
}

std::vector<int64_t> ClipTokenizer::encode_plain(const std::string& t) const {
  std::vector<int64_t> ids;
  auto cps = code_points(t);
  std::vector<size_t> offs(cps.size() + 1, 0);
  for (size_t i = 0; i < cps.size(); ++i) offs[i + 1] = offs[i] + cps[i].second;
  auto emit = [&](size_t from, size_t to) {  // a pre-token: code points [from, to)
    std::string piece = t.substr(offs[from], offs[to] - offs[from]);
    if (piece == "<|startoftext|>") return ids.push_back(sot_);
    if (piece == "<|endoftext|>") return ids.push_back(eot_);
    std::string mapped;
    for (unsigned char c : piece) mapped += byte_encoder()[c];
    for (auto& w : bpe(mapped)) {
      auto it = encoder_.find(w);
      if (it == encoder_.end()) throw Error("tokenizer: BPE piece \"" + w + "\" missing from the vocabulary");
      ids.push_back(it->second);
    }
  };
  // The reference's pattern, in order: special tokens, 's 't 're 've 'm 'll 'd,
  // letter runs, single digits, runs of other non-space characters.
  const size_t n = cps.size();
  for (size_t i = 0; i < n;) {
    auto starts = [&](const char* lit) { return t.compare(offs[i], std::strlen(lit), lit) == 0; };
    bool matched = false;
    for (const char* sp : {"<|startoftext|>", "<|endoftext|>"})
      if (starts(sp)) {
        emit(i, i + std::strlen(sp));
        i += std::strlen(sp);
        matched = true;
        break;
      }
    if (matched) continue;
    for (const char* c : {"'s", "'t", "'re", "'ve", "'m", "'ll", "'d"})
      if (starts(c)) {
        emit(i, i + std::strlen(c));
        i += std::strlen(c);
        matched = true;
        break;
      }
    if (matched) continue;
    uint32_t c = cps[i].first;
    size_t j = i + 1;
    if (is_space(c)) {
      ++i;
      continue;
    }
    if (is_letter(c)) {
      while (j < n && is_letter(cps[j].first)) ++j;
    } else if (!is_number(c)) {
      while (j < n && !is_space(cps[j].first) && !is_letter(cps[j].first) && !is_number(cps[j].first)) ++j;
    }
    emit(i, j);
    i = j;
  }
  return ids;
}

ClipTokenizer::Windows ClipTokenizer::tokenize_windows(const std::string& prompt, int64_t length, int64_t pad,
                                                      size_t min_windows) const {
  std::vector<int64_t> ids;
  std::vector<double> ws;
  for (auto& [text, w] : parse_prompt_weights(prompt)) {
    auto t = encode(text);
    ids.insert(ids.end(), t.begin(), t.end());
    ws.insert(ws.end(), t.size(), w);
  }
  const size_t per = static_cast<size_t>(length - 2);
  Windows out;
  for (size_t at = 0; at < ids.size() || out.ids.size() < min_windows; at += per) {
    std::vector<int64_t> win{sot_};
    std::vector<double> wwin{1.0};
    for (size_t i = at; i < std::min(ids.size(), at + per); ++i) {
      win.push_back(ids[i]);
      wwin.push_back(ws[i]);
    }
    win.push_back(eot_);
    wwin.push_back(1.0);
    win.resize(length, pad < 0 ? eot_ : pad);
    wwin.resize(length, 1.0);
    out.ids.push_back(win);
    out.weights.push_back(wwin);
    if (at + per >= ids.size() && out.ids.size() >= min_windows) break;
  }
  return out;
}

std::vector<int64_t> ClipTokenizer::tokenize(const std::string& text, int64_t length, int64_t pad) const {
  auto ids = encode(text);
  std::vector<int64_t> out{sot_};
  out.insert(out.end(), ids.begin(), ids.end());
  out.push_back(eot_);
  if (static_cast<int64_t>(out.size()) > length) {
    out.resize(length);
    out.back() = eot_;
  }
  out.resize(length, pad < 0 ? eot_ : pad);
  return out;
}

std::vector<std::pair<std::string, double>> parse_prompt_weights(const std::string& prompt) {
  std::vector<std::pair<std::string, double>> out;
  struct Open {
    char kind;       // '(' or '['
    size_t start;    // index in `out` where the group's pieces begin
  };
  std::vector<Open> stack;
  std::string cur;
  auto flush = [&] {
    if (!cur.empty()) out.push_back({cur, 1.0});
    cur.clear();
  };
  auto scale = [&](size_t from, double f) {
    for (size_t i = from; i < out.size(); ++i) out[i].second *= f;
  };
  for (size_t i = 0; i < prompt.size(); ++i) {
    char c = prompt[i];
    if (c == '\\' && i + 1 < prompt.size() && std::strchr("()[]\\", prompt[i + 1])) {
      cur.push_back(prompt[++i]);
    } else if (c == '(' || c == '[') {
      flush();
      stack.push_back({c, out.size()});
    } else if (c == ')' && !stack.empty() && stack.back().kind == '(') {
      // (text:1.3): an explicit weight after the last colon
      double w = 1.1;
      auto colon = cur.rfind(':');
      if (colon != std::string::npos) {
        if (auto v = parse_double(cur.substr(colon + 1))) {
          w = *v;
          cur.resize(colon);
        }
      }
      flush();
      scale(stack.back().start, w);
      stack.pop_back();
    } else if (c == ']' && !stack.empty() && stack.back().kind == '[') {
      flush();
      scale(stack.back().start, 1 / 1.1);
      stack.pop_back();
    } else {
      cur.push_back(c);
    }
  }
  flush();
  for (auto it = stack.rbegin(); it != stack.rend(); ++it) scale(it->start, it->kind == '(' ? 1.1 : 1 / 1.1);  // unclosed
  return out;
}

std::string find_clip_vocab(const std::string& near, const std::string& given) {
  if (!given.empty()) {
    if (!fs::exists(given)) throw Error("--vocab " + given + ": no such file");
    return given;
  }
  fs::path dir = fs::is_directory(near) ? fs::path(near) : fs::path(near).parent_path();
  if (dir.empty()) dir = ".";
  for (const char* name : {"bpe_simple_vocab_16e6.txt.gz", "bpe_simple_vocab_16e6.txt", "vocab.json", "tokenizer/vocab.json"})
    if (fs::exists(dir / name)) return (dir / name).string();
  throw Error("no CLIP vocabulary for " + near + ": give --vocab FILE (bpe_simple_vocab_16e6.txt.gz, or vocab.json with "
              "merges.txt beside it), or put one of them beside the checkpoint");
}

}  // namespace ldm
