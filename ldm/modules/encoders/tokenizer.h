// CLIP's byte-level BPE tokenizer (openai/CLIP simple_tokenizer, the one SD
// uses): the OpenAI vocabulary file (bpe_simple_vocab_16e6.txt.gz) or the
// Hugging Face pair vocab.json + merges.txt. Text is HTML-unescaped, stripped,
// whitespace-collapsed and lower-cased (ftfy is not applied: a no-op for
// ordinary text).
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <unordered_map>
#include <vector>

namespace ldm {

class ClipTokenizer {
 public:
  // `path`: a .txt(.gz) merges file (OpenAI), or a directory / vocab.json
  // with merges.txt beside it (Hugging Face).
  static ClipTokenizer load(const std::string& path);
  // BPE ids of the text, without start/end tokens.
  std::vector<int64_t> encode(const std::string& text) const;
  // [SOT, ids..., EOT] truncated to `length` (EOT kept last) and padded with
  // `pad` (SD 1.x: EOT; SD 2.x / clip.tokenize: 0).
  std::vector<int64_t> tokenize(const std::string& text, int64_t length = 77, int64_t pad = -1) const;
  // Long and weighted prompts: the weighted pieces' ids cut into windows of
  // length - 2 tokens, each window [SOT, ids..., EOT, pad...]; at least
  // `min_windows` windows. ids and per-token weights, window after window.
  struct Windows {
    std::vector<std::vector<int64_t>> ids;
    std::vector<std::vector<double>> weights;
  };
  Windows tokenize_windows(const std::string& prompt, int64_t length = 77, int64_t pad = -1, size_t min_windows = 1) const;
  // A word (a textual-inversion embedding's name) that tokenizes to `ids`
  // wherever it stands alone in a prompt, instead of its BPE pieces.
  void add_word(const std::string& word, std::vector<int64_t> ids);
  int64_t sot() const { return sot_; }
  int64_t eot() const { return eot_; }
  size_t vocab_size() const { return encoder_.size(); }

 private:
  std::vector<std::string> bpe(const std::string& token) const;
  std::vector<int64_t> encode_plain(const std::string& cleaned) const;
  std::map<std::string, std::vector<int64_t>> words_;
  std::unordered_map<std::string, int64_t> encoder_;
  std::map<std::pair<std::string, std::string>, int64_t> ranks_;
  mutable std::unordered_map<std::string, std::vector<std::string>> cache_;
  int64_t sot_ = 49406, eot_ = 49407;
};

// Prompt weighting as web UIs write it: (text:1.3) sets a weight, (text)
// multiplies by 1.1, [text] divides by 1.1, nesting multiplies, \( \) \[ \]
// are literal. Returns (text, weight) pieces in order.
std::vector<std::pair<std::string, double>> parse_prompt_weights(const std::string& prompt);

// The vocabulary to use: `given` when set, else one beside `near` (a
// checkpoint file or directory): bpe_simple_vocab_16e6.txt(.gz), vocab.json +
// merges.txt, or tokenizer/vocab.json. A clear error saying both ways otherwise.
std::string find_clip_vocab(const std::string& near, const std::string& given);

// The cleaned text the tokenizer splits (exposed for tests).
std::string clip_clean_text(const std::string& text);

}  // namespace ldm
