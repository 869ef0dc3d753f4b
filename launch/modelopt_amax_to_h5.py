#!/usr/bin/env python3
"""Write the amax statistics of a ModelOpt-quantized model into nvfp4x's calibration HDF5.

  modelopt_amax_to_h5.py STATE_DICT OUT.h5

STATE_DICT is a torch checkpoint (.pt/.pth: a state dict, or a dict holding one under
"model_state_dict"/"state_dict"/"model"), a .safetensors file, or a directory of .safetensors
files. Every key ending in "._amax" or "._global_amax" becomes one float32 dataset, named by the
key with '.' replaced by '/' (README.md, "Calibration file"). Torch is needed only for .pt/.pth.

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
import json
import os
import re
import struct
import sys

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


def load_state_dict(path):
    """Reads the amax entries of a .pt/.pth file, a .safetensors file or a directory of them."""
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
    import torch  # only .pt/.pth need it
    obj = torch.load(path, map_location="cpu", weights_only=False)
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
                    help=".pt/.pth file, .safetensors file or directory of .safetensors")
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
