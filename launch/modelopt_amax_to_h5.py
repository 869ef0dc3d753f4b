#!/usr/bin/env python3
"""Write the amax statistics of a ModelOpt-quantized model into nvfp4x's calibration HDF5.

  modelopt_amax_to_h5.py STATE_DICT OUT.h5

STATE_DICT is a torch checkpoint (.pt/.pth: a state dict, or a dict holding one under
"model_state_dict"/"state_dict"/"model"), a .safetensors file, a directory of .safetensors
files, or the output directory of ModelOpt's DeepSeek-V4 calibration
(examples/deepseek/deepseek_v4/ptq.py: amax_dict_rank{r}-mp{MP}.pt, one per rank). Every key
ending in "._amax" or "._global_amax" becomes one float32 dataset, named by the key with '.'
replaced by '/' (README.md, "Calibration file").

.pt files are read without torch when they hold what amax dumps hold (tensors of float or
integer dtypes in plain or ordered dicts): torch.save's zip archive is unpickled with only those
types allowed. Anything else (a pickled module, a tensor subclass, the legacy pre-zip format)
needs torch, which is then used when installed.

DeepSeek-V4 dumps: the MP in the file names must be one value and every rank 0..MP-1 present;
the keys layers.L.ffn.experts.E.w{1,2,3}_{weight|input}_quantizer._amax (or mtp.N....) must not
repeat across ranks; any other key is refused, as ModelOpt's quantize_to_nvfp4.py refuses it.
They are written as <expert>/w1/input_quantizer/_amax etc., the module name of the checkpoint's
layers.L.ffn.experts.E.w1.weight.

Transformers 5 keeps a MoE layer's experts as one fused module (Qwen3.5-MoE stores them so on
disk too), so ModelOpt names their quantizers
  <experts>.gate_up_proj_weight_quantizers.<E>._amax   <experts>.gate_up_proj_input_quantizer._amax
  <experts>.down_proj_weight_quantizers.<E>._amax      <experts>.down_proj_input_quantizer._amax
(and the _global_amax variants). ModelOpt exports those experts one by one, so these are
rewritten to
  <experts>.<E>.gate_proj.weight_quantizer._amax and <experts>.<E>.up_proj.weight_quantizer._amax
  <experts>.<E>.down_proj.weight_quantizer._amax
and the shared input amax to every expert's gate_proj/up_proj (resp. down_proj)
input_quantizer. A static per-block _amax of gate_up is split as ModelOpt splits it: the first
half of its rows (values, row-major) to gate_proj, the second to up_proj. The experts of a
fused module are numbered 0..max(E) of its *_weight_quantizers.<E> entries.

Llama-4's and gpt-oss's experts ("BMM experts") have one quantizer per projection for all
experts, <experts>.gate_up_proj_weight_quantizer._amax and <experts>.gate_up_proj_input_quantizer
._amax (singular, no expert index), and ModelOpt exports them fused: those names are written
unchanged, as nvfp4x reads them (<experts>/gate_up_proj_weight_quantizer/_amax).

From Python: write_amax_h5(state_dict, path), values numpy arrays or torch tensors.
"""

import argparse
import collections
import io
import json
import os
import pickle
import re
import struct
import sys
import zipfile

import numpy as np

BUFFERS = ("_amax", "_global_amax")
FUSED_WEIGHT_RE = re.compile(
    r"^(?P<experts>.+)\.(?P<proj>gate_up_proj|down_proj)_weight_quantizers\.(?P<e>\d+)\."
    r"(?P<buf>_amax|_global_amax)$")
FUSED_INPUT_RE = re.compile(
    r"^(?P<experts>.+)\.(?P<proj>gate_up_proj|down_proj)_input_quantizer\."
    r"(?P<buf>_amax|_global_amax)$")
BMM_WEIGHT_RE = re.compile(
    r"^(?P<experts>.+)\.(?P<proj>gate_up_proj|down_proj)_weight_quantizer\."
    r"(?P<buf>_amax|_global_amax)$")
SPLIT = {"gate_up_proj": ("gate_proj", "up_proj"), "down_proj": ("down_proj",)}


def split_rows(arr, parts, index):
    """The index-th of `parts` equal row blocks of a per-block or per-channel amax (values in
    row-major order), as ModelOpt's _export_fused_experts slices gate_up; a scalar stays."""
    if arr.size <= 1 or parts == 1:
        return arr
    flat = arr.reshape(-1)
    if flat.size % parts:
        raise ValueError("%d amax values do not split into %d row blocks" % (flat.size, parts))
    n = flat.size // parts
    return flat[index * n:(index + 1) * n]


def to_float32(value):
    """numpy array, torch tensor (any float dtype, any device) or number -> float32 ndarray."""
    if isinstance(value, np.ndarray):
        return value.astype(np.float32)
    if hasattr(value, "detach"):
        value = value.detach()
    if hasattr(value, "float"):
        value = value.float()  # bf16/fp8 tensors have no numpy form
    if hasattr(value, "cpu"):
        value = value.cpu()
    if hasattr(value, "numpy"):
        value = value.numpy()
    return np.asarray(value, dtype=np.float32)


def amax_entries(state_dict):
    """{per-module ModelOpt key: float32 array} with fused expert quantizers split per expert."""
    out = {}

    def put(key, arr):
        if key in out and not np.array_equal(out[key], arr):
            raise ValueError("%s: given twice with different values" % key)
        out[key] = arr

    keys = [k for k in state_dict if k.endswith(tuple("." + b for b in BUFFERS))]
    n_experts, bmm = {}, set()
    for k in keys:
        m = FUSED_WEIGHT_RE.match(k)
        if m:
            n = n_experts.get(m.group("experts"), 0)
            n_experts[m.group("experts")] = max(n, int(m.group("e")) + 1)
        m = BMM_WEIGHT_RE.match(k)
        if m:
            bmm.add(m.group("experts"))
    for k in sorted(keys):
        arr = to_float32(state_dict[k])
        m = FUSED_WEIGHT_RE.match(k)
        if m:
            projs = SPLIT[m.group("proj")]
            for i, proj in enumerate(projs):
                part = arr if m.group("buf") == "_global_amax" else split_rows(arr, len(projs), i)
                put("%s.%s.%s.weight_quantizer.%s"
                    % (m.group("experts"), m.group("e"), proj, m.group("buf")), part)
            continue
        m = FUSED_INPUT_RE.match(k)
        if m and m.group("experts") in bmm and m.group("experts") not in n_experts:
            put(k, arr)  # BMM experts: one input quantizer, exported fused
            continue
        if m:
            experts = m.group("experts")
            if experts not in n_experts:
                raise ValueError("%s: no %s.*_weight_quantizers.<E> entries to count the experts"
                                 % (k, experts))
            for e in range(n_experts[experts]):
                for proj in SPLIT[m.group("proj")]:
                    put("%s.%d.%s.input_quantizer.%s" % (experts, e, proj, m.group("buf")), arr)
            continue
        put(k, arr)
    return out


def write_amax_h5(state_dict, path):
    """Writes every amax of state_dict to the HDF5 file path; returns the number of datasets."""
    import h5py
    entries = amax_entries(state_dict)
    with h5py.File(path, "w") as f:
        for key in sorted(entries):
            f.create_dataset(key.replace(".", "/"), data=entries[key])
    return len(entries)


def _read_safetensors_amax(path, into):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        base = 8 + n
        for name, info in header.items():
            if name == "__metadata__" or not name.endswith(tuple("." + b for b in BUFFERS)):
                continue
            begin, end = info["data_offsets"]
            f.seek(base + begin)
            raw = f.read(end - begin)
            dtype = info["dtype"]
            if dtype == "F32":
                arr = np.frombuffer(raw, "<f4")
            elif dtype == "F16":
                arr = np.frombuffer(raw, "<f2")
            elif dtype == "F64":
                arr = np.frombuffer(raw, "<f8")
            elif dtype == "BF16":
                arr = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
            else:
                raise ValueError("%s: %s has dtype %s, not a float" % (path, name, dtype))
            into[name] = arr.astype(np.float32).reshape(info["shape"])


# --------------------------------------------------------------------------------------
# torch.save files without torch
# --------------------------------------------------------------------------------------

class UnsupportedPickle(ValueError):
    """A .pt file holding more than tensors in dicts: it needs torch to load."""


# torch's storage classes by name -> numpy dtype of their elements (little-endian).
STORAGE_DTYPES = {"FloatStorage": "<f4", "DoubleStorage": "<f8", "HalfStorage": "<f2",
                  "BFloat16Storage": "bf16", "LongStorage": "<i8", "IntStorage": "<i4",
                  "ShortStorage": "<i2", "CharStorage": "i1", "ByteStorage": "u1",
                  "BoolStorage": "?"}


class _StorageType:
    def __init__(self, name):
        self.name = name


def _rebuild_tensor(storage, offset, size, stride, *_ignored):
    """torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad,
    backward_hooks[, metadata]) as a numpy array (a copy)."""
    item = storage.itemsize
    if len(size) and (offset + sum((n - 1) * st for n, st in zip(size, stride)) >= storage.size):
        raise UnsupportedPickle("tensor view past the end of its storage")
    view = np.lib.stride_tricks.as_strided(storage[offset:], shape=tuple(size),
                                           strides=tuple(st * item for st in stride))
    return np.array(view)


class _Unpickler(pickle.Unpickler):
    """Unpickles data.pkl of a torch.save archive, allowing only tensors, dicts and numbers."""

    def __init__(self, data, read_record):
        super().__init__(io.BytesIO(data))
        self.read_record, self.storages = read_record, {}

    def find_class(self, module, name):
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        raise UnsupportedPickle("holds %s.%s, which only torch can load" % (module, name))

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage" and
                isinstance(pid[1], _StorageType)):
            raise UnsupportedPickle("unknown persistent id %r" % (pid,))
        key = str(pid[2])
        if key not in self.storages:
            raw = self.read_record("data/" + key)
            dt = STORAGE_DTYPES[pid[1].name]
            if dt == "bf16":
                arr = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
            else:
                arr = np.frombuffer(raw, dt)
            self.storages[key] = arr
        return self.storages[key]


def read_torch_file(path):
    """What torch.load(path) returns for dicts of tensors, without torch: tensors become numpy
    arrays (bfloat16 as float32). Raises UnsupportedPickle for anything else."""
    if not zipfile.is_zipfile(path):
        raise UnsupportedPickle("%s: not torch.save's zip format (the legacy format needs torch)"
                                % path)
    with zipfile.ZipFile(path) as z:
        pkl = [n for n in z.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
        if len(pkl) != 1:
            raise UnsupportedPickle("%s: %d data.pkl records, expected one" % (path, len(pkl)))
        prefix = pkl[0][:-len("data.pkl")]
        names = set(z.namelist())
        if prefix + "byteorder" in names and z.read(prefix + "byteorder") != b"little":
            raise UnsupportedPickle("%s: big-endian storages" % path)

        def read_record(rel):
            if prefix + rel not in names:
                raise ValueError("%s: record %s missing" % (path, prefix + rel))
            return z.read(prefix + rel)

        try:
            return _Unpickler(z.read(pkl[0]), read_record).load()
        except (pickle.UnpicklingError, EOFError, TypeError, AttributeError) as exc:
            raise UnsupportedPickle("%s: %s" % (path, exc))


def load_torch(path):
    """A .pt file: read without torch when possible, else with torch when it is installed."""
    try:
        return read_torch_file(path)
    except UnsupportedPickle as exc:
        try:
            import torch
        except ImportError:
            raise ValueError("%s (torch is not installed)" % exc)
        return torch.load(path, map_location="cpu", weights_only=False)


# --------------------------------------------------------------------------------------
# ModelOpt's DeepSeek-V4 calibration dumps (ptq.py)
# --------------------------------------------------------------------------------------

DSV4_FILE_RE = re.compile(r"^amax_dict_rank(\d+)-mp(\d+)\.pt$")
DSV4_KEY_RE = re.compile(r"^(?P<expert>(?:mtp\.\d+|layers\.\d+)\.ffn\.experts\.\d+)\."
                         r"(?P<proj>w[123])_(?P<which>weight|input)_quantizer\._amax$")


def is_dsv4_dump_dir(path):
    return os.path.isdir(path) and any(DSV4_FILE_RE.match(f) for f in os.listdir(path))


def load_dsv4_dumps(path):
    """Merges the rank dumps of ptq.py into one state dict in the checkpoint's module names."""
    files = sorted(f for f in os.listdir(path) if f.startswith("amax_dict_rank"))
    found = {}
    for f in files:
        m = DSV4_FILE_RE.match(f)
        if m is None:
            raise ValueError("%s: unexpected file name %s (amax_dict_rank<r>-mp<MP>.pt)"
                             % (path, f))
        found.setdefault(int(m.group(2)), set()).add(int(m.group(1)))
    if len(found) != 1:
        raise ValueError("%s: dumps of several runs (MP %s): keep one" % (
            path, ", ".join(str(mp) for mp in sorted(found))))
    mp, ranks = next(iter(found.items()))
    missing = sorted(set(range(mp)) - ranks)
    if missing or max(ranks) >= mp:
        raise ValueError("%s: MP %d needs amax_dict_rank0..%d-mp%d.pt; %s" % (
            path, mp, mp - 1, mp, "missing rank %s" % ", ".join(map(str, missing)) if missing
            else "rank %d is out of range" % max(ranks)))
    merged, origin = {}, {}
    for r in range(mp):
        fname = "amax_dict_rank%d-mp%d.pt" % (r, mp)
        state = load_torch(os.path.join(path, fname))
        if not isinstance(state, dict):
            raise ValueError("%s: not a dict of tensors" % fname)
        for key, value in state.items():
            m = DSV4_KEY_RE.match(key)
            if m is None:
                raise ValueError("%s: unexpected key %r (layers.L.ffn.experts.E.wX_{weight|input}"
                                 "_quantizer._amax)" % (fname, key))
            if key in origin:
                raise ValueError("%s: key %s also in %s (amax collision across ranks)"
                                 % (fname, key, origin[key]))
            origin[key] = fname
            merged["%s.%s.%s_quantizer._amax" % (m.group("expert"), m.group("proj"),
                                                 m.group("which"))] = value
    return merged, mp


def load_state_dict(path):
    """Reads the amax entries of a .pt/.pth file, a .safetensors file or a directory of them."""
    if is_dsv4_dump_dir(path):
        return load_dsv4_dumps(path)[0]
    if os.path.isdir(path):
        sd = {}
        files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
        if not files:
            raise ValueError("%s: no .safetensors files" % path)
        for f in files:
            _read_safetensors_amax(os.path.join(path, f), sd)
        return sd
    if path.endswith(".safetensors"):
        sd = {}
        _read_safetensors_amax(path, sd)
        return sd
    obj = load_torch(path)
    for key in ("model_state_dict", "state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict):
        raise ValueError("%s: not a state dict" % path)
    return obj


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("state_dict", metavar="STATE_DICT",
                    help=".pt/.pth file, .safetensors file, directory of .safetensors, or "
                         "directory of DeepSeek-V4 amax_dict_rank<r>-mp<MP>.pt dumps")
    ap.add_argument("out", metavar="OUT.h5", help="calibration HDF5 file to write")
    args = ap.parse_args(argv)
    try:
        n = write_amax_h5(load_state_dict(args.state_dict), args.out)
    except (OSError, ValueError) as exc:
        print("modelopt_amax_to_h5: error: %s" % exc, file=sys.stderr)
        return 2
    print("modelopt_amax_to_h5: %d datasets written to %s" % (n, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
