#!/usr/bin/env python3
"""Writes a1111_embedding.pt: a textual-inversion embedding laid out exactly as
AUTOMATIC1111's torch.save writes one (zip archive, pickle protocol 2, storages
by persistent id, the vectors as a Parameter under string_to_param['*']), using
only the standard library: the globals torch.save references are stand-ins with
the same module and names, so the pickle's bytes name what torch's do.

Vectors: 2 x 64 (the tiny test model's text width), value[i][j] = (i + 1) * 0.01 * (j + 1).
"""
import collections
import io
import pickle
import struct
import sys
import types
import zipfile

# stand-ins for what torch.save's pickle references
torch_mod = types.ModuleType("torch")
utils_mod = types.ModuleType("torch._utils")


def _rebuild_tensor_v2(*args):
    raise NotImplementedError


def _rebuild_parameter(*args):
    raise NotImplementedError


class FloatStorage:
    pass


_rebuild_tensor_v2.__module__ = "torch._utils"
_rebuild_parameter.__module__ = "torch._utils"
FloatStorage.__module__ = "torch"
utils_mod._rebuild_tensor_v2 = _rebuild_tensor_v2
utils_mod._rebuild_parameter = _rebuild_parameter
torch_mod.FloatStorage = FloatStorage
torch_mod._utils = utils_mod
sys.modules["torch"] = torch_mod
sys.modules["torch._utils"] = utils_mod


class Storage:
    def __init__(self, key, values):
        self.key, self.values = key, values


class Reduce:
    """An object that pickles as fn(*args)."""

    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return (self.fn, self.args)


class Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, Storage):  # as torch.save: ('storage', type, key, location, numel)
            return ("storage", FloatStorage, obj.key, "cpu", len(obj.values))
        return None


def main(out):
    rows, width = 2, 64
    values = [(i + 1) * 0.01 * (j + 1) for i in range(rows) for j in range(width)]
    storage = Storage("0", values)
    tensor = Reduce(_rebuild_tensor_v2, (storage, 0, (rows, width), (width, 1), False, collections.OrderedDict()))
    param = Reduce(_rebuild_parameter, (tensor, True, collections.OrderedDict()))
    obj = {
        "string_to_token": {"*": 265},
        "string_to_param": {"*": param},
        "name": "a1111_embedding",
        "step": 3000,
        "sd_checkpoint": "8f3ae5b3",
        "sd_checkpoint_name": "tiny_sd_v1",
    }
    buf = io.BytesIO()
    Pickler(buf, protocol=2).dump(obj)
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", buf.getvalue())
        z.writestr("archive/data/0", struct.pack("<%df" % len(values), *values))
        z.writestr("archive/version", "3\n")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "a1111_embedding.pt")
