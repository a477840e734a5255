// ldm tokenize "text": the 77 CLIP token ids, as SD 1.x (end-token padding)
// or SD 2.x (--pad zero) feeds its text encoder.
#include <iostream>

#include "ldm/error.h"
#include "ldm/modules/encoders/tokenizer.h"
#include "tools/ldm/commands.h"

namespace ldm::cli {

void add_tokenize(CLI::App& app) {
  struct Opts {
    std::string text, vocab, pad = "eot";
    int64_t length = 77;
  };
  auto o = std::make_shared<Opts>();
  auto* sub = app.add_subcommand(
      "tokenize", "print the CLIP token ids of a prompt (weighted or long prompts: the windows and weights the encoder sees)");
  sub->add_option("text", o->text, "the prompt")->required();
  sub->add_option("--vocab", o->vocab, "bpe_simple_vocab_16e6.txt.gz, or vocab.json with merges.txt beside it")->required();
  sub->add_option("--pad", o->pad, "padding: eot (SD 1.x, Hugging Face) or zero (SD 2.x, clip.tokenize)")->capture_default_str();
  sub->add_option("--length", o->length, "context length")->capture_default_str();
  sub->callback([o] {
    if (o->pad != "eot" && o->pad != "zero") throw Error("--pad: expected eot or zero, got \"" + o->pad + "\"");
    auto tok = ClipTokenizer::load(find_clip_vocab("", o->vocab));
    const int64_t pad = o->pad == "zero" ? 0 : -1;
    auto pieces = parse_prompt_weights(o->text);
    const bool weighted = pieces.size() != 1 || pieces[0].second != 1.0;
    auto w = tok.tokenize_windows(o->text, o->length, pad);
    if (!weighted && w.ids.size() == 1) {  // the reference's ids, as one line
      auto ids = tok.tokenize(o->text, o->length, pad);
      for (size_t i = 0; i < ids.size(); ++i) std::cout << (i ? " " : "") << ids[i];
      std::cout << "\n";
      return;
    }
    // what txt2img encodes: weights applied, windows of length - 2 tokens each
    std::cout << "weighted pieces:";
    for (auto& [text, weight] : pieces) std::cout << " \"" << text << "\":" << weight;
    std::cout << "\n";
    for (size_t k = 0; k < w.ids.size(); ++k) {
      std::cout << "window " << k + 1 << " of " << w.ids.size() << " ids:";
      for (auto id : w.ids[k]) std::cout << " " << id;
      std::cout << "\nwindow " << k + 1 << " of " << w.ids.size() << " weights:";
      for (auto x : w.weights[k]) std::cout << " " << x;
      std::cout << "\n";
    }
  });
}

}  // namespace ldm::cli
