// libFuzzer target: the safetensors header/offset parser must return or throw
// ldm::Error on any input, never crash or over-read.
#include <cstdint>

#include "ldm/error.h"
#include "ldm/io/safetensors_format.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    ldm::io::parse_safetensors(data, size, "fuzz");
  } catch (const ldm::Error&) {
  }
  return 0;
}
