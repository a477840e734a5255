#include "ldm/io/safetensors_format.h"

#include <algorithm>
#include <cstring>
#include <nlohmann/json.hpp>
#include <set>

#include "ldm/error.h"

namespace ldm::io {

namespace {
struct DTypeRow {
  StDType t;
  const char* name;
  size_t size;
};
const DTypeRow kDTypes[] = {
    {StDType::F64, "F64", 8}, {StDType::F32, "F32", 4}, {StDType::F16, "F16", 2},
    {StDType::BF16, "BF16", 2}, {StDType::I64, "I64", 8}, {StDType::I32, "I32", 4},
    {StDType::I16, "I16", 2}, {StDType::I8, "I8", 1}, {StDType::U8, "U8", 1},
    {StDType::BOOL, "BOOL", 1},
};
constexpr uint64_t kMaxHeader = 100ull << 20;  // as the reference implementation
}  // namespace

size_t st_itemsize(StDType t) { return kDTypes[static_cast<int>(t)].size; }
const char* st_name(StDType t) { return kDTypes[static_cast<int>(t)].name; }
bool st_from_name(const std::string& s, StDType* out) {
  for (const auto& r : kDTypes)
    if (s == r.name) {
      *out = r.t;
      return true;
    }
  return false;
}

int64_t StTensorInfo::numel() const {
  int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

StHeader parse_safetensors(const uint8_t* data, size_t size, const std::string& filename) {
  auto fail = [&](const std::string& what) -> Error {
    return Error(filename + ": invalid safetensors file: " + what);
  };
  if (size < 8) throw fail("file is " + std::to_string(size) + " bytes, shorter than the 8-byte header length");
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | data[i];
  if (n > size - 8) throw fail("header length " + std::to_string(n) + " exceeds the file size " + std::to_string(size));
  if (n > kMaxHeader) throw fail("header length " + std::to_string(n) + " exceeds the 100 MiB limit");
  if (n < 2) throw fail("header of " + std::to_string(n) + " bytes is not a JSON object");

  // Parse with a callback that rejects duplicate keys and nesting deeper
  // than {name: {shape: [..]}} (nlohmann would silently keep the last key).
  std::vector<std::set<std::string>> keys;
  std::string dup;
  auto cb = [&](int depth, nlohmann::json::parse_event_t ev, nlohmann::json& parsed) {
    using E = nlohmann::json::parse_event_t;
    if (depth > 3 && dup.empty()) dup = "nesting deeper than 3 levels";
    if (ev == E::object_start) keys.emplace_back();
    if (ev == E::object_end && !keys.empty()) keys.pop_back();
    if (ev == E::key && !keys.empty()) {
      const std::string& k = parsed.get_ref<const std::string&>();
      if (!keys.back().insert(k).second && dup.empty()) dup = "duplicate key \"" + k + "\"";
    }
    return dup.empty();
  };
  const char* hb = reinterpret_cast<const char*>(data + 8);
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(hb, hb + n, cb, /*allow_exceptions=*/true);
  } catch (const std::exception& e) {
    if (!dup.empty()) throw fail(dup);
    throw fail(std::string("header is not valid JSON (") + e.what() + ")");
  }
  if (!dup.empty()) throw fail(dup);
  if (!j.is_object()) throw fail("header is not a JSON object");

  StHeader h;
  h.data_start = 8 + n;
  const uint64_t data_size = size - h.data_start;
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& name = it.key();
    const auto& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object()) throw fail("__metadata__ is not an object");
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string()) throw fail("__metadata__[\"" + m.key() + "\"] is not a string");
        h.metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    auto tfail = [&](const std::string& what) { return fail("tensor \"" + name + "\": " + what); };
    if (!v.is_object()) throw tfail("entry is not an object");
    if (!v.contains("dtype") || !v["dtype"].is_string()) throw tfail("missing string \"dtype\"");
    if (!v.contains("shape") || !v["shape"].is_array()) throw tfail("missing array \"shape\"");
    if (!v.contains("data_offsets") || !v["data_offsets"].is_array() || v["data_offsets"].size() != 2)
      throw tfail("missing \"data_offsets\" [begin, end]");
    for (auto f = v.begin(); f != v.end(); ++f)
      if (f.key() != "dtype" && f.key() != "shape" && f.key() != "data_offsets")
        throw tfail("unknown field \"" + f.key() + "\"");
    StTensorInfo t;
    t.name = name;
    std::string dt = v["dtype"].get<std::string>();
    if (!st_from_name(dt, &t.dtype)) throw tfail("unknown dtype \"" + dt + "\"");
    uint64_t elems = 1;
    bool overflow = false;
    for (const auto& d : v["shape"]) {
      if (!d.is_number_integer()) throw tfail("shape entry is not an integer");
      if (d.is_number_unsigned() ? d.get<uint64_t>() > (1ull << 62) : d.get<int64_t>() < 0)
        throw tfail("shape entry " + d.dump() + " is negative or too large");
      uint64_t dim = d.get<uint64_t>();
      if (dim != 0 && elems > UINT64_MAX / dim) overflow = true;
      elems *= dim;
      t.shape.push_back(static_cast<int64_t>(dim));
    }
    size_t isz = st_itemsize(t.dtype);
    if (overflow || (elems != 0 && elems > UINT64_MAX / isz) || elems > (1ull << 62))
      throw tfail("shape element count overflows");
    for (const auto& o : v["data_offsets"])
      if (!o.is_number_unsigned() && !(o.is_number_integer() && o.get<int64_t>() >= 0))
        throw tfail("data_offsets entries must be non-negative integers");
    t.begin = v["data_offsets"][0].get<uint64_t>();
    t.end = v["data_offsets"][1].get<uint64_t>();
    if (t.begin > t.end) throw tfail("data_offsets reversed (" + std::to_string(t.begin) + " > " + std::to_string(t.end) + ")");
    if (t.end > data_size)
      throw tfail("data_offsets end " + std::to_string(t.end) + " beyond the data block of " + std::to_string(data_size) + " bytes");
    if (t.end - t.begin != elems * isz)
      throw tfail("data_offsets span " + std::to_string(t.end - t.begin) + " bytes but " + dt + " shape needs " +
                  std::to_string(elems * isz));
    h.tensors.push_back(std::move(t));
  }
  std::sort(h.tensors.begin(), h.tensors.end(), [](const StTensorInfo& a, const StTensorInfo& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  // The data block is covered exactly, without holes or overlaps.
  uint64_t pos = 0;
  for (const auto& t : h.tensors) {
    if (t.begin < pos) throw fail("tensor \"" + t.name + "\": data_offsets overlap the previous tensor");
    if (t.begin > pos) throw fail("tensor \"" + t.name + "\": hole in the data block before it");
    pos = t.end;
  }
  if (pos != data_size)
    throw fail("data block is " + std::to_string(data_size) + " bytes but tensors cover " + std::to_string(pos));
  return h;
}

std::string build_safetensors_header(std::vector<StTensorInfo>& tensors,
                                     const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json j = nlohmann::ordered_json::object();
  if (!metadata.empty()) j["__metadata__"] = metadata;
  uint64_t pos = 0;
  for (auto& t : tensors) {
    t.begin = pos;
    t.end = pos + static_cast<uint64_t>(t.numel()) * st_itemsize(t.dtype);
    pos = t.end;
    j[t.name] = {{"dtype", st_name(t.dtype)}, {"shape", t.shape}, {"data_offsets", {t.begin, t.end}}};
  }
  std::string s = j.dump();
  while (s.size() % 8 != 0) s.push_back(' ');
  std::string out(8, '\0');
  uint64_t n = s.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + s;
}

}  // namespace ldm::io
