#include "ldm/io/pickle.h"

#include <cstring>
#include <unordered_map>

#include "ldm/error.h"

namespace ldm::io {

const PyObj* PyObj::get(const std::string& key) const {
  for (const auto& kv : dict)
    if (kv.first->kind == Str && kv.first->s == key) return kv.second;
  return nullptr;
}

namespace {

const char* kStorageTypes[] = {"FloatStorage", "DoubleStorage", "HalfStorage", "BFloat16Storage",
                               "LongStorage",  "IntStorage",    "ShortStorage", "CharStorage",
                               "ByteStorage",  "BoolStorage",   "UntypedStorage"};

// Inert globals: objects Lightning and numpy leave beside the state_dict.
// They are recorded by name and never constructed.
const char* kInertGlobals[] = {
    "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",
    "lightning_fabric.utilities.data.AttributeDict",
    "pytorch_lightning.utilities.parsing.AttributeDict",
    "numpy.core.multiarray.scalar",
    "numpy.dtype",
    "numpy.core.multiarray._reconstruct",
    "numpy.ndarray",
    "_codecs.encode",
    "builtins.set",
    "__builtin__.set",
    "torch.device",
    "torch._utils._rebuild_parameter",
    "torch._utils._rebuild_tensor_v2",
    "torch._tensor._rebuild_from_type_v2",
    "torch.Size",
    "collections.OrderedDict",
    "collections.defaultdict",
    "argparse.Namespace",
};

}  // namespace

bool pickle_global_allowed(const std::string& name) {
  for (const char* g : kInertGlobals)
    if (name == g) return true;
  for (const char* s : kStorageTypes)
    if (name == std::string("torch.") + s || name == std::string("torch.storage.") + s) return true;
  return false;
}

namespace {

class Unpickler {
 public:
  Unpickler(const uint8_t* d, size_t n, const std::string& f) : d_(d), n_(n), file_(f) {}

  Pickle run() {
    while (true) {
      uint8_t op = u8();
      if (op == '.') break;  // STOP
      step(op);
    }
    if (stack_.size() != 1 || !marks_.empty()) throw fail("stack not balanced at STOP");
    out_.root = stack_.back();
    return std::move(out_);
  }

 private:
  const uint8_t* d_;
  size_t n_, p_ = 0;
  const std::string& file_;
  Pickle out_;
  std::vector<PyObj*> stack_;
  std::vector<size_t> marks_;
  std::unordered_map<uint64_t, PyObj*> memo_;
  size_t entries_ = 0;  // all list/dict entries: bounded by the input size

  void grow(size_t k) {
    entries_ += k;
    if (entries_ > 4 * n_ + 1024) throw fail("containers grow beyond what the input can describe");
  }

  Error fail(const std::string& w) const {
    return Error(file_ + ": unreadable pickle at byte " + std::to_string(p_) + ": " + w);
  }
  void need(size_t k) {
    if (n_ - p_ < k) throw fail("truncated");
  }
  uint8_t u8() {
    need(1);
    return d_[p_++];
  }
  uint64_t le(int k) {
    need(k);
    uint64_t v = 0;
    for (int i = k - 1; i >= 0; --i) v = (v << 8) | d_[p_ + i];
    p_ += k;
    return v;
  }
  std::string bytes(uint64_t k) {
    if (k > n_ - p_) throw fail("string length beyond the end of the data");
    std::string s(reinterpret_cast<const char*>(d_ + p_), k);
    p_ += k;
    return s;
  }
  std::string line() {
    const void* e = std::memchr(d_ + p_, '\n', n_ - p_);
    if (!e) throw fail("unterminated line");
    size_t len = static_cast<const uint8_t*>(e) - (d_ + p_);
    std::string s(reinterpret_cast<const char*>(d_ + p_), len);
    p_ += len + 1;
    return s;
  }
  PyObj* make(PyObj::Kind k) {
    if (out_.arena.size() > n_ + 16) throw fail("too many objects");
    out_.arena.push_back(std::make_unique<PyObj>());
    out_.arena.back()->kind = k;
    return out_.arena.back().get();
  }
  PyObj* pop() {
    if (stack_.empty() || (!marks_.empty() && stack_.size() <= marks_.back())) throw fail("stack underflow");
    PyObj* o = stack_.back();
    stack_.pop_back();
    return o;
  }
  PyObj* top() {
    if (stack_.empty() || (!marks_.empty() && stack_.size() <= marks_.back())) throw fail("stack underflow");
    return stack_.back();
  }
  std::vector<PyObj*> pop_mark() {
    if (marks_.empty()) throw fail("no MARK");
    size_t m = marks_.back();
    marks_.pop_back();
    std::vector<PyObj*> v(stack_.begin() + m, stack_.end());
    stack_.resize(m);
    return v;
  }
  void push(PyObj* o) { stack_.push_back(o); }
  PyObj* str(PyObj::Kind k, std::string s) {
    PyObj* o = make(k);
    o->s = std::move(s);
    return o;
  }
  PyObj* integer(int64_t v) {
    PyObj* o = make(PyObj::Int);
    o->i = v;
    return o;
  }
  PyObj* global(const std::string& mod, const std::string& name) {
    std::string full = mod + "." + name;
    if (!pickle_global_allowed(full))
      throw Error(file_ + ": refused to load: the pickle calls the global '" + full +
                  "', which a tensor checkpoint does not need (possible malicious file)");
    return str(PyObj::Global, full);
  }
  void memo_put(uint64_t k) {
    if (memo_.size() > n_) throw fail("memo too large");
    memo_[k] = top();
  }
  PyObj* memo_get(uint64_t k) {
    auto it = memo_.find(k);
    if (it == memo_.end()) throw fail("memo key " + std::to_string(k) + " undefined");
    return it->second;
  }
  static bool is_int(const PyObj* o) { return o->kind == PyObj::Int || o->kind == PyObj::Bool; }
  std::vector<int64_t> int_tuple(const PyObj* o, const char* what) {
    if (o->kind != PyObj::Tuple && o->kind != PyObj::List) throw fail(std::string(what) + " is not a tuple");
    std::vector<int64_t> v;
    for (auto* e : o->items) {
      if (!is_int(e)) throw fail(std::string(what) + " holds a non-integer");
      v.push_back(e->i);
    }
    return v;
  }

  // REDUCE: apply an allowed global to its argument tuple, never running code.
  PyObj* reduce(PyObj* fn, PyObj* args) {
    if (fn->kind != PyObj::Global) throw fail("REDUCE on a non-global");
    if (args->kind != PyObj::Tuple) throw fail("REDUCE arguments are not a tuple");
    const std::string& g = fn->s;
    const auto& a = args->items;
    if (g == "collections.OrderedDict" || g == "collections.defaultdict") return make(PyObj::Dict);
    if (g == "torch._utils._rebuild_tensor_v2") {
      if (a.size() < 4 || a[0]->kind != PyObj::Storage || !is_int(a[1]))
        throw fail("_rebuild_tensor_v2 with unexpected arguments");
      PyObj* t = make(PyObj::Tensor);
      t->items = {a[0]};
      t->storage_offset = a[1]->i;
      t->size = int_tuple(a[2], "tensor size");
      t->stride = int_tuple(a[3], "tensor stride");
      if (t->size.size() != t->stride.size()) throw fail("tensor size and stride differ in length");
      return t;
    }
    if (g == "torch._utils._rebuild_parameter" || g == "torch._tensor._rebuild_from_type_v2") {
      // (data, requires_grad, hooks) / (func, type, args, state): the tensor is inside.
      if (g == "torch._utils._rebuild_parameter" && !a.empty() && a[0]->kind == PyObj::Tensor) return a[0];
      if (a.size() >= 3 && a[2]->kind == PyObj::Tuple && !a[2]->items.empty() &&
          a[2]->items[0]->kind == PyObj::Tensor)
        return a[2]->items[0];
      throw fail(g + " with unexpected arguments");
    }
    PyObj* o = make(PyObj::Object);  // inert record of an allowed helper
    o->s = g;
    o->items = a;
    return o;
  }

  PyObj* persistent_load(PyObj* pid) {
    // ('storage', storage_type, key, location, numel)
    if (pid->kind != PyObj::Tuple || pid->items.size() < 5 || pid->items[0]->kind != PyObj::Str ||
        pid->items[0]->s != "storage" || pid->items[1]->kind != PyObj::Global || pid->items[2]->kind != PyObj::Str ||
        !is_int(pid->items[4]))
      throw fail("unsupported persistent id");
    std::string t = pid->items[1]->s;
    bool ok = false;
    for (const char* s : kStorageTypes)
      if (t == std::string("torch.") + s || t == std::string("torch.storage.") + s) {
        t = s;
        ok = true;
      }
    if (!ok) throw fail("persistent id names a non-storage type '" + t + "'");
    PyObj* st = make(PyObj::Storage);
    st->dtype = t;
    st->s = pid->items[2]->s;
    st->numel = pid->items[4]->i;
    return st;
  }

  void setitems(PyObj* d, const std::vector<PyObj*>& kv) {
    if (kv.size() % 2) throw fail("odd SETITEMS");
    if (d->kind == PyObj::Object) return;  // state of an inert object: dropped
    if (d->kind != PyObj::Dict) throw fail("SETITEMS on a non-dict");
    grow(kv.size() / 2);
    for (size_t i = 0; i < kv.size(); i += 2) d->dict.emplace_back(kv[i], kv[i + 1]);
  }
  void appends(PyObj* l, const std::vector<PyObj*>& v) {
    if (l->kind == PyObj::Object) return;
    if (l->kind != PyObj::List) throw fail("APPENDS on a non-list");
    grow(v.size());
    l->items.insert(l->items.end(), v.begin(), v.end());
  }

  void step(uint8_t op) {
    switch (op) {
      case 0x80: u8(); break;                 // PROTO
      case 0x95: le(8); break;                // FRAME
      case '(': marks_.push_back(stack_.size()); break;  // MARK
      case '0': pop(); break;                 // POP
      case '1': pop_mark(); break;            // POP_MARK
      case '2': push(top()); break;           // DUP
      case 'N': push(make(PyObj::None)); break;
      case 0x88: case 0x89: {                 // NEWTRUE / NEWFALSE
        PyObj* o = make(PyObj::Bool);
        o->b = op == 0x88;
        o->i = o->b;
        push(o);
        break;
      }
      case 'J': push(integer(static_cast<int32_t>(le(4)))); break;  // BININT
      case 'K': push(integer(static_cast<int64_t>(le(1)))); break;  // BININT1
      case 'M': push(integer(static_cast<int64_t>(le(2)))); break;  // BININT2
      case 0x8a: case 0x8b: {                 // LONG1 / LONG4
        uint64_t k = op == 0x8a ? le(1) : le(4);
        if (k > 8) throw fail("integer wider than 64 bits");
        need(k);
        uint64_t v = 0;
        for (int i = static_cast<int>(k) - 1; i >= 0; --i) v = (v << 8) | d_[p_ + i];
        if (k > 0 && k < 8 && (d_[p_ + k - 1] & 0x80)) v |= ~0ull << (8 * k);  // sign-extend
        p_ += k;
        push(integer(static_cast<int64_t>(v)));
        break;
      }
      case 'I': case 'L': {                   // INT / LONG (text)
        std::string s = line();
        if (!s.empty() && s.back() == 'L') s.pop_back();
        if (s == "00" || s == "01") {
          PyObj* o = make(PyObj::Bool);
          o->b = s == "01";
          o->i = o->b;
          push(o);
          break;
        }
        try {
          push(integer(std::stoll(s)));
        } catch (...) {
          throw fail("bad integer literal");
        }
        break;
      }
      case 'G': {                             // BINFLOAT (big-endian)
        need(8);
        uint64_t v = 0;
        for (int i = 0; i < 8; ++i) v = (v << 8) | d_[p_ + i];
        p_ += 8;
        PyObj* o = make(PyObj::Float);
        std::memcpy(&o->f, &v, 8);
        push(o);
        break;
      }
      case 'X': push(str(PyObj::Str, bytes(le(4)))); break;     // BINUNICODE
      case 0x8c: push(str(PyObj::Str, bytes(le(1)))); break;    // SHORT_BINUNICODE
      case 0x8d: push(str(PyObj::Str, bytes(le(8)))); break;    // BINUNICODE8
      case 'T': push(str(PyObj::Bytes, bytes(le(4)))); break;   // BINSTRING
      case 'U': push(str(PyObj::Bytes, bytes(le(1)))); break;   // SHORT_BINSTRING
      case 'B': push(str(PyObj::Bytes, bytes(le(4)))); break;   // BINBYTES
      case 'C': push(str(PyObj::Bytes, bytes(le(1)))); break;   // SHORT_BINBYTES
      case 0x8e: push(str(PyObj::Bytes, bytes(le(8)))); break;  // BINBYTES8
      case 0x96: push(str(PyObj::Bytes, bytes(le(8)))); break;  // BYTEARRAY8
      case ')': push(make(PyObj::Tuple)); break;                // EMPTY_TUPLE
      case 0x85: case 0x86: case 0x87: {                        // TUPLE1/2/3
        size_t k = op - 0x84;
        std::vector<PyObj*> v(k);
        for (size_t i = k; i-- > 0;) v[i] = pop();
        PyObj* t = make(PyObj::Tuple);
        t->items = std::move(v);
        push(t);
        break;
      }
      case 't': {                                               // TUPLE
        PyObj* t = make(PyObj::Tuple);
        t->items = pop_mark();
        push(t);
        break;
      }
      case ']': push(make(PyObj::List)); break;                 // EMPTY_LIST
      case 'l': {                                               // LIST
        PyObj* l = make(PyObj::List);
        l->items = pop_mark();
        push(l);
        break;
      }
      case 'a': { PyObj* v = pop(); appends(top(), {v}); break; }   // APPEND
      case 'e': { auto v = pop_mark(); appends(top(), v); break; }  // APPENDS
      case '}': push(make(PyObj::Dict)); break;                 // EMPTY_DICT
      case 'd': {                                               // DICT
        PyObj* dd = make(PyObj::Dict);
        setitems(dd, pop_mark());
        push(dd);
        break;
      }
      case 's': { PyObj* v = pop(); PyObj* k = pop(); setitems(top(), {k, v}); break; }  // SETITEM
      case 'u': { auto v = pop_mark(); setitems(top(), v); break; }                      // SETITEMS
      case 0x8f: push(make(PyObj::List)); break;                // EMPTY_SET (as a list)
      case 0x90: { auto v = pop_mark(); appends(top(), v); break; }  // ADDITEMS
      case 0x91: { PyObj* l = make(PyObj::List); l->items = pop_mark(); push(l); break; }  // FROZENSET
      case 'c': {                                               // GLOBAL
        std::string mod = line();
        std::string name = line();
        push(global(mod, name));
        break;
      }
      case 0x93: {                                              // STACK_GLOBAL
        PyObj* name = pop();
        PyObj* mod = pop();
        if (mod->kind != PyObj::Str || name->kind != PyObj::Str) throw fail("STACK_GLOBAL needs strings");
        push(global(mod->s, name->s));
        break;
      }
      case 'R': { PyObj* args = pop(); PyObj* fn = pop(); push(reduce(fn, args)); break; }  // REDUCE
      case 0x81: {                                              // NEWOBJ
        PyObj* args = pop();
        PyObj* cls = pop();
        push(reduce(cls, args));
        break;
      }
      case 'b': {                                               // BUILD: state of an object
        PyObj* state = pop();
        PyObj* o = top();
        if (o->kind == PyObj::Dict && state->kind == PyObj::Dict && o != state) setitems(o, [&] {
            std::vector<PyObj*> kv;
            for (auto& e : state->dict) { kv.push_back(e.first); kv.push_back(e.second); }
            return kv;
          }());
        break;  // tensors/objects: state (hooks, attributes) is not needed
      }
      case 'Q': push(persistent_load(pop())); break;            // BINPERSID
      case 'P': throw fail("text persistent ids are not supported");
      case 'q': memo_put(le(1)); break;                         // BINPUT
      case 'r': memo_put(le(4)); break;                         // LONG_BINPUT
      case 0x94: memo_put(memo_.size()); break;                 // MEMOIZE
      case 'h': push(memo_get(le(1))); break;                   // BINGET
      case 'j': push(memo_get(le(4))); break;                   // LONG_BINGET
      case 'p': { std::string s = line(); uint64_t k; try { k = std::stoull(s); } catch (...) { throw fail("bad PUT"); } memo_put(k); break; }
      case 'g': { std::string s = line(); uint64_t k; try { k = std::stoull(s); } catch (...) { throw fail("bad GET"); } push(memo_get(k)); break; }
      default: {
        char buf[8];
        std::snprintf(buf, sizeof buf, "0x%02x", op);
        throw fail(std::string("unsupported opcode ") + buf);
      }
    }
  }
};

}  // namespace

Pickle unpickle(const uint8_t* data, size_t size, const std::string& filename) {
  return Unpickler(data, size, filename).run();
}

}  // namespace ldm::io
