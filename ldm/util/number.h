// Numbers in user text (CLI flags, prompt weights, LoRA tags) and in error
// messages: one parser and one printer, so every message reads the same.
#pragma once
#include <optional>
#include <string>

namespace ldm {

// The whole string as a double ("1.5", " 2", "inf", "-2e3"; leading spaces
// allowed, as std::stod does); nullopt when it is empty, has trailing
// characters, is out of double's range or is not a number. Never throws.
std::optional<double> parse_double(const std::string& s);

// Shortest readable form (%g): 2, 0.5, inf, nan.
std::string format_number(double v);

}  // namespace ldm
