// libFuzzer target: the restricted unpickler (and the zip directory reader
// for inputs that look like a zip) on arbitrary bytes.
#include <cstdint>

#include "ldm/error.h"
#include "ldm/io/pickle.h"
#include "ldm/io/zip.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    if (size >= 2 && data[0] == 'P' && data[1] == 'K') {
      ldm::io::ZipReader z(data, size, "fuzz");
      for (const auto& e : z.entries()) (void)z.read(e);
    } else {
      auto p = ldm::io::unpickle(data, size, "fuzz");
      (void)p;
    }
  } catch (const ldm::Error&) {
  }
  return 0;
}
