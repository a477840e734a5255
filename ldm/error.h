// ldm::Error: the one exception type library code throws. Messages are one
// line and name the file, key or option and what was expected.
#pragma once
#include <stdexcept>
#include <string>

namespace ldm {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& msg) : std::runtime_error(msg) {}
};

}  // namespace ldm
