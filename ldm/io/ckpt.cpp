#include "ldm/io/ckpt.h"

#include "ldm/error.h"
#include "ldm/io/mapped_file.h"
#include "ldm/io/pickle.h"
#include "ldm/io/safetensors_format.h"
#include "ldm/io/tensor_util.h"
#include "ldm/io/zip.h"

namespace ldm::io {

namespace {

torch::ScalarType storage_dtype(const std::string& t, const std::string& file) {
  static const std::map<std::string, torch::ScalarType> m = {
      {"FloatStorage", torch::kFloat32}, {"DoubleStorage", torch::kFloat64}, {"HalfStorage", torch::kFloat16},
      {"BFloat16Storage", torch::kBFloat16}, {"LongStorage", torch::kInt64}, {"IntStorage", torch::kInt32},
      {"ShortStorage", torch::kInt16}, {"CharStorage", torch::kInt8}, {"ByteStorage", torch::kUInt8},
      {"BoolStorage", torch::kBool}, {"UntypedStorage", torch::kUInt8}};
  auto it = m.find(t);
  if (it == m.end()) throw Error(file + ": unsupported storage type " + t);
  return it->second;
}

void collect(const PyObj* dict, const std::string& prefix, const ZipReader& zip,
             const std::shared_ptr<MappedFile>& file, const LoadOptions& opt, TensorMap& out, int depth) {
  if (depth > 8) return;
  for (const auto& [k, v] : dict->dict) {
    if (k->kind != PyObj::Str) continue;
    std::string name = prefix + k->s;
    if (v->kind == PyObj::Dict) {
      collect(v, name + ".", zip, file, opt, out, depth + 1);
      continue;
    }
    if (v->kind != PyObj::Tensor) continue;
    if (name.compare(0, opt.prefix.size(), opt.prefix) != 0) continue;
    const PyObj* st = v->items[0];
    auto dtype = storage_dtype(st->dtype, zip.filename());
    const ZipEntry* e = zip.find_suffix("data/" + st->s);
    if (!e) throw Error(zip.filename() + ": tensor \"" + name + "\": storage data/" + st->s + " missing from the archive");
    size_t isz = c10::elementSize(dtype);
    uint64_t avail = e->size / isz;
    // Check the view stays inside its storage before aliasing it.
    int64_t extent = 1;
    bool empty = false;
    for (size_t i = 0; i < v->size.size(); ++i) {
      if (v->size[i] < 0 || v->stride[i] < 0) throw Error(zip.filename() + ": tensor \"" + name + "\": negative size or stride");
      if (v->size[i] == 0) empty = true;
      if (v->size[i] > 0 && v->stride[i] > 0 &&
          (v->size[i] - 1) > (INT64_MAX / 2 - extent) / v->stride[i])
        throw Error(zip.filename() + ": tensor \"" + name + "\": size overflows");
      extent += (v->size[i] - 1) * v->stride[i];
    }
    if (!empty && (v->storage_offset < 0 || static_cast<uint64_t>(v->storage_offset) > avail ||
                   static_cast<uint64_t>(extent) > avail - v->storage_offset))
      throw Error(zip.filename() + ": tensor \"" + name + "\": view exceeds its storage of " +
                  std::to_string(avail) + " elements");
    std::string key = opt.strip_prefix ? name.substr(opt.prefix.size()) : name;
    torch::Tensor t;
    if (empty) {
      t = torch::empty(v->size, torch::TensorOptions().dtype(dtype));
      if (opt.dtype && torch::isFloatingType(dtype)) t = t.to(*opt.dtype);
    } else {
      uint8_t* base = file->mutable_data() + (zip.stored_data(*e) - file->data()) + v->storage_offset * isz;
      t = tensor_from_mapping(file, base, v->size, dtype, opt.dtype, opt.device, &v->stride);
    }
    out[key] = t;
  }
}

}  // namespace

Checkpoint load_ckpt(const std::string& path, const LoadOptions& opt) {
  auto file = MappedFile::open(path);
  ZipReader zip(file->data(), file->size(), path);
  const ZipEntry* pkl = zip.find_suffix("data.pkl");
  if (!pkl) throw Error(path + ": no data.pkl in the archive (not a torch.save checkpoint?)");
  std::string bytes = zip.read(*pkl);
  Pickle p = unpickle(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), path);
  if (p.root->kind != PyObj::Dict) throw Error(path + ": checkpoint root is not a dict");
  Checkpoint ck;
  const PyObj* sd = p.root->get("state_dict");
  if (sd && sd->kind == PyObj::Dict)
    collect(sd, "", zip, file, opt, ck.tensors, 0);
  else
    collect(p.root, "", zip, file, opt, ck.tensors, 0);
  if (auto* g = p.root->get("global_step"); g && g->kind == PyObj::Int) ck.global_step = g->i;
  if (auto* g = p.root->get("epoch"); g && g->kind == PyObj::Int) ck.epoch = g->i;
  return ck;
}

Checkpoint load_weights(const std::string& path, const LoadOptions& opt) {
  auto file = MappedFile::open(path);
  bool zip = file->size() >= 4 && file->data()[0] == 'P' && file->data()[1] == 'K';
  if (zip) return load_ckpt(path, opt);
  Checkpoint ck;
  ck.tensors = load_safetensors(path, opt);
  ck.metadata = safetensors_metadata(path);
  if (auto it = ck.metadata.find("global_step"); it != ck.metadata.end()) {
    try { ck.global_step = std::stoll(it->second); } catch (...) {}
  }
  return ck;
}

}  // namespace ldm::io
