// A restricted unpickler for PyTorch checkpoints, without libtorch. It never
// calls anything from the file: globals are looked up in an allow-list of
// the names a tensor checkpoint needs and become inert values; any other
// global is refused with an error naming it.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace ldm::io {

struct PyObj {
  enum Kind { None, Bool, Int, Float, Str, Bytes, List, Tuple, Dict, Global, Storage, Tensor, Object };
  Kind kind = None;
  bool b = false;
  int64_t i = 0;
  double f = 0;
  std::string s;                 // Str, Bytes, Global "module.name", Storage key, Object class
  std::string dtype;             // Storage: storage type name ("FloatStorage")
  std::vector<PyObj*> items;     // List, Tuple, Object args; Tensor: {storage}
  std::vector<std::pair<PyObj*, PyObj*>> dict;  // Dict (insertion order)
  int64_t storage_offset = 0, numel = 0;        // Tensor / Storage
  std::vector<int64_t> size, stride;            // Tensor
  const PyObj* get(const std::string& key) const;  // Dict lookup by string key
};

struct Pickle {
  std::vector<std::unique_ptr<PyObj>> arena;  // owns every object (cycles are fine)
  PyObj* root = nullptr;
};

// Parses a pickle (protocols 0-5, the opcodes torch.save emits and more).
// Throws ldm::Error naming `filename` on malformed input or a refused global.
Pickle unpickle(const uint8_t* data, size_t size, const std::string& filename);

// The globals a tensor checkpoint may name, as "module.name".
bool pickle_global_allowed(const std::string& name);

}  // namespace ldm::io
