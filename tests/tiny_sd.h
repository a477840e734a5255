// The tiny SD checkpoint of the fixtures as a pipeline load.
#pragma once
#include "ldm/pipeline/pipeline.h"
#include "tests/testing.h"

namespace ldm::test {

inline std::string clip_vocab() { return shared_dir() + "/data/bpe_simple_vocab_16e6.txt.gz"; }

inline pipeline::LoadOptions tiny_sd_options() {
  pipeline::LoadOptions o;
  o.model = fixture("tiny_sd_v1.ckpt");
  o.config = fixture("tiny_sd_v1.yaml");
  o.vocab = clip_vocab();
  o.quiet = true;
  return o;
}

}  // namespace ldm::test
