#!/usr/bin/python3
"""Independent numpy reference of NUMERICS.md and of a whole nvfp4x export.

  nvfp4_ref.py vectors PATH.json
      Reproduce every case of the ModelOpt vector file bit for bit.
  nvfp4_ref.py dsv4 --model SRC --calib F --output DST [--numerics cpu|gpu] [--cast]
      The whole export of a DeepSeek-V4 release (FRONTIER.md 1.4) computed as ModelOpt's
      quantize_to_nvfp4.py does, every file compared byte for byte.
  nvfp4_ref.py compare --model SRC --output DST [--calib F] [--numerics gpu|cpu]
                       [--quantize all|mlp|experts] [--exclude GLOB ...]
                       [--weight-only] [--kv-cache auto|fp8|none]
                       [--format modelopt|compressed-tensors]
      Compute every tensor an export of SRC (+ calibration) must contain and check that DST
      holds exactly those tensors, byte for byte, and the same exclude_modules list.
      --format compressed-tensors: llm-compressor's nvfp4-pack-quantized naming and values
      (weight_packed, weight_scale, weight_global_scale = 1/weight_scale_2, input_global_scale
      = 1/input_scale, <attn>.k_scale / v_scale), its quantization_config (exact ignore
      list) and no hf_quant_config.json.

Written from DESIGN.md / NUMERICS.md only (a cross-check of the C exporter). All arithmetic
is float32: numpy float32 arrays and scalars, each operation rounded once (RNE).
Exit status: 0 equal, 1 mismatch, 2 bad input or usage.
"""

import argparse
import fnmatch
import json
import os
import re
import struct
import sys

import numpy as np

F32 = np.float32


# --------------------------------------------------------------------------------------
# Numerics (NUMERICS.md)
# --------------------------------------------------------------------------------------

def f32_from_bits(bits):
    return np.array([bits], dtype="<u4").view("<f4")[0]


def f32_bits(x):
    return int(np.asarray(x, dtype="<f4").reshape(1).view("<u4")[0])


# PyTorch on CUDA computes tensor / python_constant as tensor * fl(1/constant).
RECIPROCAL = {
    2688: f32_from_bits(0x39C30C31),
    448: f32_from_bits(0x3B124925),
    6: f32_from_bits(0x3E2AAAAB),
}
TWO_M9 = F32(2.0 ** -9)
E4M3_MAX = F32(448.0)


def const_div(a, constant, numerics):
    """a / constant as ModelOpt computes it on GPU (reciprocal multiply) or CPU (division)."""
    a = np.asarray(a, dtype=F32)
    if numerics == "gpu":
        return np.asarray(a * RECIPROCAL[constant], dtype=F32)
    if numerics == "cpu":
        return np.asarray(a / F32(constant), dtype=F32)
    raise ValueError("numerics must be gpu or cpu, not %r" % (numerics,))


def _e4m3_magnitudes():
    """Magnitude of codes 0..0x7F; 0x7F (NaN in E4M3FN) is given 480, the value the
    rounding would reach with one more mantissa step, so that it only acts as a boundary."""
    vals = np.zeros(128, dtype=np.float64)
    for code in range(128):
        e, m = code >> 3, code & 7
        vals[code] = m * 2.0 ** -9 if e == 0 else (1.0 + m / 8.0) * 2.0 ** (e - 7)
    return vals


_E4M3_MAG = _e4m3_magnitudes()
_E4M3_MIDS = (_E4M3_MAG[:-1] + _E4M3_MAG[1:]) / 2.0  # 127 midpoints, exact in float64


def _e4m3_decode_table():
    t = np.zeros(256, dtype=F32)
    for code in range(256):
        mag = code & 0x7F
        v = np.nan if mag == 0x7F else _E4M3_MAG[mag]
        t[code] = -v if code & 0x80 else v
    return t


E4M3_DECODE = _e4m3_decode_table()
E2M1_DECODE = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6],
                       dtype=F32)


def e4m3_encode(x):
    """float32 -> OCP E4M3FN code, round to nearest even, subnormals k*2^-9.
    NaN -> 0x7F (with the sign bit); magnitudes that round past 448 -> 0x7F as torch does."""
    x = np.asarray(x, dtype=F32)
    a = np.abs(x.astype(np.float64))
    idx = np.searchsorted(_E4M3_MIDS, a, side="left")  # number of midpoints below a
    at = np.minimum(idx, len(_E4M3_MIDS) - 1)
    tie_to_odd = (idx < len(_E4M3_MIDS)) & (_E4M3_MIDS[at] == a) & (idx % 2 == 1)
    idx = idx + tie_to_odd  # a tie picks the even code (even mantissa)
    idx = np.where(np.isnan(a), 0x7F, idx)
    sign = np.where(np.signbit(x), 0x80, 0)
    return (idx | sign).astype(np.uint8)


def e2m1_encode(q):
    """float32 -> E2M1 code with NUMERICS.md's thresholds (ties to even, NaN -> 7)."""
    q = np.asarray(q, dtype=F32)
    a = np.abs(q)
    with np.errstate(invalid="ignore"):
        mag = np.select([a <= 0.25, a < 0.75, a <= 1.25, a < 1.75, a <= 2.5, a < 3.5, a <= 5.0],
                        [0, 1, 2, 3, 4, 5, 6], default=7)
        sign = np.where(q < 0, 8, 0)
    return (mag | sign).astype(np.uint8)


def _clamp_scale(s):
    """clamp(s, 2^-9, 448); NaN stays NaN (comparisons with NaN are false)."""
    with np.errstate(invalid="ignore"):
        s = np.where(s < TWO_M9, TWO_M9, s)
        s = np.where(s > E4M3_MAX, E4M3_MAX, s)
    return s.astype(F32)


def _blocks(w):
    rows, cols = w.shape
    if cols % 16:
        raise ValueError("columns %d not a multiple of 16" % cols)
    return w.reshape(rows, cols // 16, 16)


def encode_elements(w, scale_codes, ws2):
    """E2M1 codes of W / fl(float(S) * ws2), packed two per byte (element 2j low nibble)."""
    rows, cols = w.shape
    den = (E4M3_DECODE[scale_codes] * F32(ws2)).astype(F32)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        q = (_blocks(w) / den[:, :, None]).astype(F32)
    codes = e2m1_encode(q).reshape(rows, cols)
    return (codes[:, 0::2] | (codes[:, 1::2] << 4)).astype(np.uint8)


def quantize_dynamic(w, amax, numerics):
    """Returns (weight_scale_2 float32, weight_scale codes [rows, cols/16], packed [rows, cols/2])."""
    w = np.asarray(w, dtype=F32)
    ws2 = const_div(F32(amax), 2688, numerics)
    d = np.asarray(F32(6) * ws2, dtype=F32)
    m = np.abs(_blocks(w)).max(axis=2)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = (m / d).astype(F32)
    s = np.where(s == 0, F32(1), s).astype(F32)
    codes = e4m3_encode(_clamp_scale(s))
    return F32(ws2), codes, encode_elements(w, codes, ws2)


def quantize_static(w, block_amax, global_amax, numerics):
    """Static NVFP4: per-block amax p [rows, cols/16] and global amax g from calibration."""
    w = np.asarray(w, dtype=F32)
    rows, cols = w.shape
    p = np.asarray(block_amax, dtype=F32).reshape(rows, cols // 16)
    ws2 = const_div(F32(global_amax), 2688, numerics)
    big_m = const_div(F32(global_amax), 6, numerics)
    a = const_div(p, 6, numerics)
    a = np.where(a == 0, F32(1), a).astype(F32)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        s = ((a * F32(448)).astype(F32) / big_m).astype(F32)
    codes = e4m3_encode(_clamp_scale(s))
    return F32(ws2), codes, encode_elements(w, codes, ws2)


def input_scale(amax, numerics):
    return F32(const_div(F32(amax), 2688, numerics))


def kv_scale(amax, numerics):
    return F32(const_div(F32(amax), 448, numerics))


def dequantize(packed, scale_codes, ws2):
    rows = packed.shape[0]
    codes = np.empty((rows, packed.shape[1] * 2), dtype=np.uint8)
    codes[:, 0::2] = packed & 0xF
    codes[:, 1::2] = packed >> 4
    vals = E2M1_DECODE[codes].reshape(rows, -1, 16)
    return (vals * (E4M3_DECODE[scale_codes] * F32(ws2))[:, :, None]).reshape(rows, -1)


# --------------------------------------------------------------------------------------
# Vector file
# --------------------------------------------------------------------------------------

def _hex_f32(h):
    return np.frombuffer(bytes.fromhex(h), dtype="<f4").astype(F32)


def bf16_bits_to_f32(bits):
    return (np.asarray(bits, dtype=np.uint32) << 16).view(F32)


def check_vectors(path):
    """Returns (number of cases, list of mismatch descriptions)."""
    with open(path) as f:
        doc = json.load(f)
    failures = []
    for case in doc["cases"]:
        name, numerics = case["name"], case["numerics"]
        rows, cols = case["rows"], case["cols"]
        w = bf16_bits_to_f32(np.frombuffer(bytes.fromhex(case["weight_bf16_le_hex"]), "<u2"))
        w = w.reshape(rows, cols)
        if case["variant"] == "static":
            ws2, codes, packed = quantize_static(w, _hex_f32(case["block_amax_f32_hex"]),
                                                 _hex_f32(case["global_amax_f32_hex"])[0], numerics)
        elif case["variant"] == "dynamic":
            ws2, codes, packed = quantize_dynamic(w, _hex_f32(case["weight_amax_f32_hex"])[0],
                                                  numerics)
        else:
            failures.append("%s: unknown variant %r" % (name, case["variant"]))
            continue
        got = {
            "expect_weight_scale_2_f32_hex": np.asarray(ws2, "<f4").tobytes().hex(),
            "expect_weight_scale_e4m3_hex": codes.tobytes().hex(),
            "expect_weight_u8_hex": packed.tobytes().hex(),
            "expect_input_scale_f32_hex": np.asarray(
                input_scale(_hex_f32(case["input_amax_f32_hex"])[0], numerics), "<f4").tobytes().hex(),
        }
        for key, value in got.items():
            if case[key].lower() != value:
                failures.append("%s: %s expected %s got %s" % (name, key, case[key], value))
    return len(doc["cases"]), failures


# --------------------------------------------------------------------------------------
# safetensors
# --------------------------------------------------------------------------------------

DTYPE_SIZE = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1,
              "I16": 2, "U16": 2, "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "F64": 8, "I64": 8, "U64": 8}


class RefError(Exception):
    """Bad input: a one-line message naming the file, tensor or dataset."""


class Tensor:
    __slots__ = ("dtype", "shape", "data")

    def __init__(self, dtype, shape, data):
        self.dtype, self.shape, self.data = dtype, list(shape), bytes(data)

    def to_f32(self, name="tensor"):
        if self.dtype == "BF16":
            a = bf16_bits_to_f32(np.frombuffer(self.data, "<u2"))
        elif self.dtype == "F16":
            a = np.frombuffer(self.data, "<f2").astype(F32)
        elif self.dtype == "F32":
            a = np.frombuffer(self.data, "<f4").astype(F32)
        else:
            raise RefError("%s: dtype %s cannot be quantized" % (name, self.dtype))
        return a.reshape(self.shape)


def read_safetensors(path):
    """Strictly parses one safetensors file: {name: Tensor}, __metadata__ (or None)."""
    fname = os.path.basename(path)
    try:
        with open(path, "rb") as f:
            buf = f.read()
    except OSError as exc:
        raise RefError("%s: cannot read: %s" % (path, exc.strerror))
    if len(buf) < 8:
        raise RefError("%s: shorter than the 8-byte header length" % fname)
    n = struct.unpack("<Q", buf[:8])[0]
    if 8 + n > len(buf):
        raise RefError("%s: header length %d past end of file (%d bytes)" % (fname, n, len(buf)))
    try:
        header = json.loads(buf[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise RefError("%s: header is not valid JSON: %s" % (fname, exc))
    if not isinstance(header, dict):
        raise RefError("%s: header is not a JSON object" % fname)
    meta = header.pop("__metadata__", None)
    data = memoryview(buf)[8 + n:]
    tensors, spans = {}, []
    for name, info in header.items():
        try:
            dtype, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise RefError("%s: tensor %s: malformed entry" % (fname, name))
        if dtype not in DTYPE_SIZE:
            raise RefError("%s: tensor %s: unknown dtype %r" % (fname, name, dtype))
        nbytes = int(np.prod(shape, dtype=np.int64)) * DTYPE_SIZE[dtype]
        if end - begin != nbytes or begin < 0 or end > len(data):
            raise RefError("%s: tensor %s: data_offsets [%d, %d] do not fit %s %s in %d bytes"
                           % (fname, name, begin, end, dtype, shape, len(data)))
        tensors[name] = Tensor(dtype, shape, data[begin:end])
        spans.append((begin, end, name))
    pos = 0
    for begin, end, name in sorted(spans):
        if begin != pos:
            raise RefError("%s: tensor %s starts at %d, expected %d (overlap or hole)"
                           % (fname, name, begin, pos))
        pos = end
    if pos != len(data):
        raise RefError("%s: data section has %d bytes, tensors cover %d" % (fname, len(data), pos))
    return tensors, meta


def load_checkpoint(model_dir):
    """All tensors of a model directory (through the index, or model.safetensors)."""
    index_path = os.path.join(model_dir, "model.safetensors.index.json")
    single = os.path.join(model_dir, "model.safetensors")
    tensors = {}
    if os.path.exists(index_path):
        try:
            with open(index_path) as f:
                weight_map = json.load(f)["weight_map"]
        except (OSError, ValueError, KeyError) as exc:
            raise RefError("%s: %s" % (index_path, exc))
        for shard in sorted(set(weight_map.values())):
            shard_tensors, _ = read_safetensors(os.path.join(model_dir, shard))
            for name, t in shard_tensors.items():
                if weight_map.get(name) != shard:
                    raise RefError("%s: tensor %s not mapped to this shard by the index"
                                   % (shard, name))
                tensors[name] = t
        for name, shard in weight_map.items():
            if name not in tensors:
                raise RefError("model.safetensors.index.json: %s listed in %s but not there"
                               % (name, shard))
    elif os.path.exists(single):
        tensors, _ = read_safetensors(single)
    else:
        raise RefError("%s: neither model.safetensors.index.json nor model.safetensors" % model_dir)
    return tensors


# --------------------------------------------------------------------------------------
# Calibration
# --------------------------------------------------------------------------------------

class Calib:
    def __init__(self, path):
        self.path, self.f = path, None
        if path:
            import h5py
            if not os.path.exists(path):
                raise RefError("%s: calibration file not found" % path)
            self.f = h5py.File(path, "r")

    @staticmethod
    def dataset_path(module, quantizer, buf):
        return "%s/%s/%s" % (module.replace(".", "/"), quantizer, buf)

    def get(self, module, quantizer, buf):
        """float32 values of a dataset (flattened), or None when absent."""
        path = self.dataset_path(module, quantizer, buf)
        if self.f is None or path not in self.f:
            return None
        import h5py
        obj = self.f[path]
        if not isinstance(obj, h5py.Dataset):
            raise RefError("%s: %s is not a dataset" % (self.path, path))
        raw = np.asarray(obj[()])
        if raw.dtype.kind != "f":
            raise RefError("%s: %s has non-float type %s" % (self.path, path, raw.dtype))
        vals = raw.astype(F32).reshape(-1)
        if not np.all(np.isfinite(vals)) or np.any(vals < 0):
            raise RefError("%s: %s has a NaN, Inf or negative value" % (self.path, path))
        return vals


# --------------------------------------------------------------------------------------
# Fused experts (FAMILIES.md 1, 2, 4): Llama-4, gpt-oss (MXFP4), Qwen3.5
# --------------------------------------------------------------------------------------

FUSED_RE = re.compile(r"^(.*\bexperts)\.(gate_up_proj|down_proj)(_blocks)?$")


def mxfp4_values(packed, e8m0):
    """MXFP4 as both releases store it: uint8 [..., n, 16] (element 2j of a block in the low
    nibble of byte j) and E8M0 bytes [..., n] -> (float32 [..., 32 n], each value
    E2M1(code) * 2^(byte - 127), exact, as transformers and ModelOpt decode it; the codes
    [..., 32 n])."""
    codes = np.empty(packed.shape[:-1] + (32,), dtype=np.uint8)
    codes[..., 0::2] = packed & 0xF
    codes[..., 1::2] = packed >> 4
    pow2 = np.exp2(e8m0.astype(np.float64) - 127.0)
    vals = (E2M1_DECODE[codes].astype(np.float64) * pow2[..., None]).astype(F32)
    return vals.reshape(packed.shape[:-2] + (-1,)), codes.reshape(packed.shape[:-2] + (-1,))


def mxfp4_kmax(e8m0):
    """The largest byte - 127 over the non-zero E8M0 bytes, -127 when all are zero."""
    nonzero = e8m0 > 0
    return int(e8m0[nonzero].max()) - 127 if nonzero.any() else -127


def mxfp4_block_amax(top, k, k_window):
    """ModelOpt's closed-form amax of MXFP4 blocks with exponents k and largest code magnitudes
    (low three bits) top: 6 * 2^k when k - (k_window - 8) is in [-9, 8], else E2M1(top) * 2^k."""
    pow2 = np.exp2(k.astype(np.float64))
    mag = np.array([0, .5, 1, 1.5, 2, 3, 4, 6], np.float64)[top]
    delta = k - (k_window - 8)
    return np.where((delta >= -9) & (delta <= 8), 6.0 * pow2, mag * pow2).astype(F32)


def mxfp4_decode_blocks(blocks, scales):
    """OpenAI's MXFP4 release: U8 [E, rows, n, 16] and E8M0 bytes [E, rows, n] -> float32
    [E, rows, 32 n] (transformers' convert_moe_packed_tensors)."""
    return mxfp4_values(blocks, scales)[0]


def mxfp4_cast(blocks, scales):
    """ModelOpt's closed-form MXFP4 -> NVFP4 cast (numeric_utils.py) as its static export
    applies it: (global amax, per-16-block amax [E, rows, 2 n], lossless block count, block
    count)."""
    k = scales.astype(np.int64) - 127
    k_own = mxfp4_kmax(scales)
    kmax = k_own if k_own != -127 else 0
    g = F32(6.0 * 448.0 * 2.0 ** (kmax - 8))
    lossless = int(((k >= kmax - 17) | (scales == 0)).sum())
    top = np.maximum(blocks & 7, (blocks >> 4) & 7).max(axis=-1)
    amax = mxfp4_block_amax(top, k, k_own)
    return g, np.repeat(amax, 2, axis=-1), lossless, scales.size


class FusedProj:
    """One [E, in, out] projection exported fused: <module>.<attr> U8 [E, in/2, out], ..."""

    def __init__(self, module, attr, w, sources, mx=None):
        self.module, self.attr, self.w, self.sources, self.mx = module, attr, w, sources, mx
        self.name = module + "." + attr


def _bf16_tensor(w):
    u = np.ascontiguousarray(w, dtype=F32).view(np.uint32).astype(np.uint64)
    bits = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype("<u2")
    return Tensor("BF16", list(w.shape), bits.tobytes())


def fused_view(config, tensors):
    """Finds fused experts. Returns (tensors with Qwen3.5's per-expert views added, {name:
    FusedProj} of BMM projections, set of source tensors never written as such)."""
    tensors = dict(tensors)
    fused, consumed = {}, set()
    pairs = {}
    for name in tensors:
        m = FUSED_RE.match(name)
        if m:
            pairs.setdefault((m.group(1), bool(m.group(3))), {})[m.group(2)] = name
    for (module, mx), names in sorted(pairs.items()):
        if set(names) != {"gate_up_proj", "down_proj"}:
            raise RefError("%s: fused experts without both projections" % module)
        gu, dn = tensors[names["gate_up_proj"]], tensors[names["down_proj"]]
        if mx:
            for attr, src in names.items():
                blocks = np.frombuffer(tensors[src].data, np.uint8).reshape(tensors[src].shape)
                sname = src[:-len("_blocks")] + "_scales"
                scales = np.frombuffer(tensors[sname].data, np.uint8).reshape(tensors[sname].shape)
                w = mxfp4_decode_blocks(blocks, scales).transpose(0, 2, 1)  # [E, in, out]
                fused[module + "." + attr] = FusedProj(module, attr, w, (src, sname),
                                                       (blocks, scales))
                consumed |= {src, sname}
            continue
        if gu.shape[1] == dn.shape[2] and gu.shape[2] == 2 * dn.shape[1]:  # [E, in, out]
            for attr, src in names.items():
                fused[src] = FusedProj(module, attr, tensors[src].to_f32(src), (src,))
            continue
        # [E, out, in] (Qwen3.5): per expert gate = rows [:I], up = rows [I:], and down
        g, d = gu.to_f32(names["gate_up_proj"]), dn.to_f32(names["down_proj"])
        inter = d.shape[2]
        for e in range(g.shape[0]):
            for proj, w in (("gate_proj", g[e, :inter]), ("up_proj", g[e, inter:]),
                            ("down_proj", d[e])):
                tensors["%s.%d.%s.weight" % (module, e, proj)] = _bf16_tensor(w)
        consumed |= set(names.values())
    return tensors, fused, consumed


def fused_quantize(fp, amax, static_blocks, numerics):
    """Each expert's weight transposed (blocks of 16 along the input dim), one amax for all;
    codes and scales transposed back: ([E, in/2, out], [E, in/16, out], ws2)."""
    e, fin, fout = fp.w.shape
    wt = fp.w.transpose(0, 2, 1).reshape(e * fout, fin)
    if static_blocks is not None:
        ws2, codes, packed = quantize_static(wt, static_blocks.reshape(e * fout, fin // 16), amax,
                                             numerics)
    else:
        ws2, codes, packed = quantize_dynamic(wt, amax, numerics)
    packed = packed.reshape(e, fout, fin // 2).transpose(0, 2, 1)
    codes = codes.reshape(e, fout, fin // 16).transpose(0, 2, 1)
    return np.ascontiguousarray(packed), np.ascontiguousarray(codes), ws2


# --------------------------------------------------------------------------------------
# Source decoding (README "Source encodings", FAMILIES.md 3)
# --------------------------------------------------------------------------------------

def _bf16_rne_tensor(values, shape):
    """float32 array -> BF16 Tensor, round to nearest even (finite values)."""
    u = np.ascontiguousarray(values, dtype=F32).view(np.uint32).astype(np.uint64)
    bits = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype("<u2")
    return Tensor("BF16", shape, bits.tobytes())


def _scale_f32(t, name):
    if t.dtype not in ("BF16", "F16", "F32"):
        raise RefError("%s: scale dtype %s" % (name, t.dtype))
    return t.to_f32(name)


def decode_fp8(codes_t, scale_t, block, name):
    """F8_E4M3 [r, c] times one scale per tile -> BF16 RNE of the float32 product. block:
    weight_block_size, or None for a per-tensor ([] / [1]) or per-row ([r, 1]) scale."""
    rows, cols = codes_t.shape
    codes = np.frombuffer(codes_t.data, np.uint8).reshape(rows, cols)
    s = _scale_f32(scale_t, name).reshape(-1)
    if block:
        s = s.reshape(-(-rows // block[0]), -(-cols // block[1]))
        s = np.repeat(np.repeat(s, block[0], axis=0), block[1], axis=1)[:rows, :cols]
    elif s.size == rows and s.size != 1:
        s = s.reshape(rows, 1)
    return _bf16_rne_tensor((E4M3_DECODE[codes] * s).astype(F32), [rows, cols])


def decode_int4(packed_t, scale_t, shape_t, name):
    """compressed-tensors pack-quantized: value 8j+t of a row is bits 4t..4t+3 of I32 word j
    minus 8; times its group's scale in float32, rounded to BF16."""
    out, inp = (int(v) for v in np.frombuffer(shape_t.data,
                                              "<i8" if shape_t.dtype == "I64" else "<i4"))
    words = np.frombuffer(packed_t.data, "<u4").reshape(out, inp // 8)
    q = np.empty((out, inp), dtype=np.int32)
    for t in range(8):
        q[:, t::8] = ((words >> np.uint32(4 * t)) & 0xF).astype(np.int32) - 8
    scale = _scale_f32(scale_t, name).reshape(out, -1)
    s = np.repeat(scale, inp // scale.shape[1], axis=1)
    return _bf16_rne_tensor((q.astype(F32) * s).astype(F32), [out, inp])


def _quantization_config(config):
    qc = config.get("quantization_config")
    if qc is None and isinstance(config.get("text_config"), dict):
        qc = config["text_config"].get("quantization_config")
    return qc


def decode_source(config, tensors):
    """The tensors an export works from: encoded weights (FP8, INT4) replaced by their BF16
    decoding under the linear's name X.weight; their scales, weight shapes and static
    activation scales gone."""
    qc = _quantization_config(config)
    if not qc:
        return tensors
    method, fmt = qc.get("quant_method"), qc.get("format")
    out = dict(tensors)
    if method == "compressed-tensors" and fmt == "pack-quantized":
        for name in [n for n in tensors if n.endswith(".weight_packed")]:
            base = name[:-len(".weight_packed")]
            out[base + ".weight"] = decode_int4(out.pop(name), out.pop(base + ".weight_scale"),
                                                out.pop(base + ".weight_shape"), name)
        return out
    if method == "fp8" or (method == "compressed-tensors" and fmt == "float-quantized"):
        block = qc.get("weight_block_size") if method == "fp8" else None
        suffix = "_scale_inv" if block else "_scale"
        for name in [n for n, t in tensors.items() if t.dtype == "F8_E4M3"]:
            out[name] = decode_fp8(out[name], out.pop(name + suffix), block, name)
        for name in [n for n in out if n.endswith((".input_scale", ".k_scale", ".v_scale"))]:
            del out[name]
        return out
    if method == "mxfp4":
        return tensors  # gpt-oss: fused_view decodes its experts
    raise RefError("config.json: quantization_config %s/%s is not a source the reference "
                   "decodes" % (method, fmt))


# --------------------------------------------------------------------------------------
# Selection (FAMILIES.md 5.1: ModelOpt's recipes, applied to quantizer names)
# --------------------------------------------------------------------------------------

# Disabled quantizers: ModelOpt's defaults (its *block_sparse_moe.gate* taken for the router
# only, as README says), then the indexer and Kimi-K2.5 projector decisions.
NEVER_PATTERNS = [
    "*block_sparse_moe.gate.*", "*linear_attn.conv1d*", "*linear_attn.in_proj_a*",
    "*linear_attn.in_proj_b*", "*lm_head*", "*mixer.conv1d*", "*mlp.gate.*",
    "*mlp.shared_expert_gate.*", "*output_layer*", "*proj_out.*", "*router*", "mtp.*",
    "output.*", "*embed_vision*", "*vision_tower*", "*visual*", "*vision_model*",
    "*multi_modal_projector*", "*indexer*", "*mm_projector*",
]
POLICY_PATTERNS = {
    "all": ["*"],
    "mlp": ["*mlp*", "*block_sparse_moe*", "*.experts.*", "*.mixer.up_proj.*",
            "*.mixer.down_proj.*"],
    "experts": ["*mlp.experts*", "*block_sparse_moe*", "*.experts.*"],
}
# Modules with a 2-D weight that are no linear: vocabulary tables (and convolutions, 3-D).
NOT_LINEAR_SUFFIXES = ("embed_tokens", "word_embeddings", "tok_embeddings", "wte", "conv1d")
# Last name components the reference takes for linears; anything else 2-D is left out.
LINEAR_LEAVES = {
    "q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj", "q_a_proj", "q_b_proj",
    "kv_a_proj_with_mqa", "kv_b_proj", "wq_b", "wk", "weights_proj", "query_key_value", "dense",
    "in_proj_qkvz", "in_proj_ba", "in_proj_qkv", "in_proj_z", "in_proj_a", "in_proj_b",
    "out_proj", "gate_proj", "up_proj", "down_proj", "gate_up_proj", "w1", "w2", "w3", "gate",
    "router", "shared_expert_gate", "lm_head", "eh_proj", "head", "fc",
}


def never(quantizer):
    """Whether a never-quantized pattern disables this quantizer."""
    return any(fnmatch.fnmatchcase(quantizer, p) for p in NEVER_PATTERNS)


def selected(module, policy, quantizer=None):
    """Whether the recipe quantizes this linear (MTP aside). quantizer: its weight quantizer's
    name, "<module>.weight_quantizer" unless a fused-expert projection's
    "<experts>.<attr>_weight_quantizer"."""
    quantizer = quantizer or module + ".weight_quantizer"
    if never(quantizer):
        return False
    if module.rpartition(".")[2] in NOT_LINEAR_SUFFIXES or module.endswith(NOT_LINEAR_SUFFIXES):
        return False
    if module.rpartition(".")[2] not in LINEAR_LEAVES:
        return False
    return any(fnmatch.fnmatchcase(quantizer, p) for p in POLICY_PATTERNS[policy])


# --------------------------------------------------------------------------------------
# Classification (DESIGN.md "Rules")
# --------------------------------------------------------------------------------------

LAYER_RE = re.compile(r"(?:^|\.)layers\.(\d+)\.")
EXPERT_RE = re.compile(r"^(.*)\.experts\.(\d+)\.([^.]+)$")
ATTN_RE = re.compile(r"^(.*\.self_attn)\.")
# Projections of one routed expert that share an input-amax slot.
INPUT_SLOT = {"gate_proj": "gate_up", "up_proj": "gate_up", "w1": "w1_w3", "w3": "w1_w3"}


def expert_key(module):
    """(MoE layer prefix, expert index, projection) for a routed expert, else None."""
    m = EXPERT_RE.match(module)
    return (m.group(1), int(m.group(2)), m.group(3)) if m else None


def fused_groups(modules):
    """{module: frozenset of its fused group} over all modules with a 2-D weight."""
    parent = {m: m for m in modules}

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(names):
        names = [n for n in names if n in parent]
        for n in names[1:]:
            parent[find(n)] = find(names[0])

    by_parent = {}
    for m in modules:
        head, _, leaf = m.rpartition(".")
        by_parent.setdefault(head, set()).add(leaf)
    for head, leaves in by_parent.items():
        p = (head + ".") if head else ""
        union([p + "q_proj", p + "k_proj", p + "v_proj"])
        union([p + "gate_proj", p + "up_proj"])
        union([p + "w1", p + "w3"])
        union([p + "in_proj_qkv", p + "in_proj_z"])
        if "kv_a_proj_with_mqa" in leaves:
            q = "q_a_proj" if "q_a_proj" in leaves else "q_proj"
            union([p + q, p + "kv_a_proj_with_mqa"])
    members = {}
    for m in modules:
        members.setdefault(find(m), set()).add(m)
    return {m: frozenset(members[find(m)]) for m in modules}


def summarize_excludes(excluded, quantized):
    """ModelOpt-style prefix-wildcard summary that never matches a quantized module."""
    quantized = sorted(quantized)

    def matches_none(pattern):
        return not any(fnmatch.fnmatchcase(q, pattern) for q in quantized)

    out = set()
    for name in excluded:
        chosen = None
        for i, ch in enumerate(name):
            if ch != ".":
                continue
            prefix = name[:i]
            for pattern in (prefix + "*", prefix + ".*"):
                if matches_none(pattern):
                    chosen = pattern
                    break
            if chosen:
                break
        out.add(chosen or name)
    return sorted(out)


class Plan:
    """Everything the reference decides before computing bytes."""


def classify(config, tensors, policy="all", excludes=(), fused=None, consumed=()):
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    nlayers = int(text["num_hidden_layers"])
    fused = fused or {}
    modules = {}
    for name, t in tensors.items():
        if name.endswith(".weight") and name not in consumed and (
                len(t.shape) == 2 or (len(t.shape) == 3 and name.endswith(".conv1d.weight"))):
            modules[name[:-len(".weight")]] = [t.shape[0], t.shape[1]]
    for fp in fused.values():  # listed and matched by their experts module
        modules[fp.name] = [fp.w.shape[0] * fp.w.shape[2], fp.w.shape[1]]
    shapes = {n[:-len(".weight")]: t.shape for n, t in tensors.items() if n.endswith(".weight")}

    def is_mtp(name):
        m = LAYER_RE.search(name + ".")
        return (bool(m) and int(m.group(1)) >= nlayers) or name.startswith("mtp.")

    def in_scope(module):
        if module in fused:
            return not is_mtp(module) and selected(module, policy, fused[module].module + "." +
                                                   fused[module].attr + "_weight_quantizer")
        return len(shapes[module]) == 2 and not is_mtp(module) and selected(module, policy)

    def listed(m):
        return fused[m].module if m in fused else m

    groups = fused_groups(modules)
    experts_of_layer = {}
    for m in modules:
        k = expert_key(m)
        if k:
            experts_of_layer.setdefault(k[0], set()).add(m)
        if m in fused:
            experts_of_layer.setdefault(fused[m].module, set()).add(m)

    base = {m for m in modules if in_scope(m)}
    seeds = {m for m in base if modules[m][1] % 16 != 0 or
             any(fnmatch.fnmatchcase(n, g) for g in excludes for n in {m, listed(m)})}
    dropped, stack = set(seeds), list(seeds)
    while stack:
        m = stack.pop()
        spread = set(groups[m])
        k = expert_key(m)
        if k:
            spread |= experts_of_layer[k[0]]
        if m in fused:
            spread |= experts_of_layer[fused[m].module]
        for n in spread:
            if n in base and n not in dropped:
                dropped.add(n)
                stack.append(n)

    plan = Plan()
    plan.nlayers = nlayers
    plan.modules = modules
    plan.groups = groups
    plan.quantized = base - dropped
    plan.excluded = {listed(m) for m in set(modules) - plan.quantized}
    plan.exclude_modules = summarize_excludes({listed(m) for m in plan.excluded},
                                              {listed(m) for m in plan.quantized})
    plan.attentions = sorted({m.group(1) for m in map(ATTN_RE.match, tensors)
                              if m and not is_mtp(m.group(1)) and not never(m.group(1) +
                                                                            ".k_bmm_quantizer")})
    plan.fused = fused
    return plan


# --------------------------------------------------------------------------------------
# Whole export
# --------------------------------------------------------------------------------------

def _scalar_f32(x):
    return Tensor("F32", [], np.asarray(x, dtype="<f4").reshape(()).tobytes())


def _positive(value, what):
    if not (np.isfinite(value) and value > 0):
        raise RefError("%s: resolved amax %r is not finite and > 0" % (what, float(value)))


def fused_export(plan, calib, numerics, weight_only, cast_mxfp4, out):
    """Outputs of the BMM projections (FAMILIES.md 1.4, 2.2): fused and transposed when
    quantized; an MXFP4 one left unquantized as its BF16 decode [E, in, out]. Returns the
    (lossless, total) MXFP4 block counts of the cast."""
    counts = [0, 0]
    for name, fp in sorted(plan.fused.items()):
        if name not in plan.quantized:
            if fp.mx is not None:
                out[name] = _bf16_tensor(fp.w)
            continue
        e, fin, fout = fp.w.shape
        wq, iq = fp.attr + "_weight_quantizer", fp.attr + "_input_quantizer"
        static = None
        if cast_mxfp4 and fp.mx is not None:
            amax, static, lossless, total = mxfp4_cast(*fp.mx)
            counts[0] += lossless
            counts[1] += total
        else:
            ga, wa = calib.get(fp.module, wq, "_global_amax"), calib.get(fp.module, wq, "_amax")
            if ga is not None:
                if wa is None or wa.size != e * fout * fin // 16:
                    raise RefError("%s: static block amax of the wrong size"
                                   % Calib.dataset_path(fp.module, wq, "_amax"))
                amax, static = ga[0], wa
            elif wa is not None:
                amax = wa[0]
            else:
                if not np.all(np.isfinite(fp.w)):
                    raise RefError("%s: weight contains NaN or Inf" % name)
                amax = F32(np.abs(fp.w).max())
        _positive(amax, name + " weight")
        packed, codes, ws2 = fused_quantize(fp, F32(amax), static, numerics)
        out[name] = Tensor("U8", [e, fin // 2, fout], packed.tobytes())
        out[name + "_weight_scale"] = Tensor("F8_E4M3", [e, fin // 16, fout], codes.tobytes())
        out[name + "_weight_scale_2"] = _scalar_f32(ws2)
        if not weight_only:
            v = calib.get(fp.module, iq, "_amax")
            if v is None:
                raise RefError("no input amax for %s" % Calib.dataset_path(fp.module, iq, "_amax"))
            _positive(v[0], name + " input")
            out[name + "_input_scale"] = _scalar_f32(input_scale(v[0], numerics))
    return counts


def reference_export(model_dir, calib_path=None, numerics="gpu", policy="all", excludes=(),
                     weight_only=False, kv_cache="auto", cast_mxfp4=False):
    """Returns (expected tensors {name: Tensor}, plan, hf_quant_config dict)."""
    cfg_path = os.path.join(model_dir, "config.json")
    try:
        with open(cfg_path) as f:
            config = json.load(f)
    except (OSError, ValueError) as exc:
        raise RefError("%s: %s" % (cfg_path, exc))
    tensors = decode_source(config, load_checkpoint(model_dir))
    tensors, fused, consumed = fused_view(config, tensors)
    calib = Calib(calib_path)
    plan = classify(config, tensors, policy, excludes, fused, consumed)
    quantized = sorted(q for q in plan.quantized if q not in fused)

    weights, own_amax, static = {}, {}, {}
    for m in quantized:
        rows, cols = plan.modules[m]
        w = tensors[m + ".weight"].to_f32(m + ".weight")
        if not np.all(np.isfinite(w)):
            raise RefError("%s.weight: weight contains NaN or Inf" % m)
        weights[m] = w
        ga = calib.get(m, "weight_quantizer", "_global_amax")
        wa = calib.get(m, "weight_quantizer", "_amax")
        wpath = Calib.dataset_path(m, "weight_quantizer", "_amax")
        if ga is not None:
            if ga.size != 1:
                raise RefError("%s: %d values, expected 1"
                               % (Calib.dataset_path(m, "weight_quantizer", "_global_amax"), ga.size))
            if wa is None or wa.size != rows * cols // 16:
                raise RefError("%s: %s values, expected %d block amax (static NVFP4)"
                               % (wpath, "no" if wa is None else wa.size, rows * cols // 16))
            static[m] = wa.reshape(rows, cols // 16)
            own_amax[m] = ga[0]
        elif wa is not None:
            if wa.size != 1:
                raise RefError("%s: %d values, expected 1 (or block amax with _global_amax)"
                               % (wpath, wa.size))
            own_amax[m] = wa[0]
        else:
            own_amax[m] = F32(np.abs(w).max())

    weight_amax = {}
    for m in quantized:
        weight_amax[m] = F32(max(own_amax[n] for n in plan.groups[m] if n in plan.quantized))
        _positive(weight_amax[m], m + " weight")

    in_amax = {}
    if not weight_only:
        own_in, slots, missing = {}, {}, []
        for m in quantized:
            v = calib.get(m, "input_quantizer", "_amax")
            if v is not None:
                if v.size != 1:
                    raise RefError("%s: %d values, expected 1"
                                   % (Calib.dataset_path(m, "input_quantizer", "_amax"), v.size))
                own_in[m] = v[0]
        for m in quantized:
            k = expert_key(m)
            if k and m in own_in:
                slot = (k[0], INPUT_SLOT.get(k[2], k[2]))
                slots[slot] = max(slots.get(slot, own_in[m]), own_in[m])
        missing_slots = []
        for m in quantized:
            k = expert_key(m)
            if k:
                slot = (k[0], INPUT_SLOT.get(k[2], k[2]))
                if slot in slots:
                    own_in[m] = slots[slot]
                elif slot not in missing_slots:
                    missing_slots.append(slot)
            elif m not in own_in:
                missing.append(m)
        if missing:
            raise RefError("no input amax for %s" % ", ".join(missing))
        if missing_slots:
            raise RefError("no input amax for any expert of %s"
                           % ", ".join("%s (%s)" % s for s in missing_slots))
        for m in quantized:
            in_amax[m] = F32(max(own_in[n] for n in plan.groups[m] if n in plan.quantized))
            _positive(in_amax[m], m + " input")

    kv = {}
    if kv_cache != "none":
        have = calib.f is not None and all(
            calib.get(a, q, "_amax") is not None
            for a in plan.attentions for q in ("k_bmm_quantizer", "v_bmm_quantizer"))
        if kv_cache == "fp8" and not have:
            lacking = [Calib.dataset_path(a, q, "_amax") for a in plan.attentions
                       for q in ("k_bmm_quantizer", "v_bmm_quantizer")
                       if calib.get(a, q, "_amax") is None]
            raise RefError("--kv-cache fp8: no KV amax %s" % ", ".join(lacking))
        if have and plan.attentions:
            for a in plan.attentions:
                for q, proj, scale in (("k_bmm_quantizer", "k_proj", "k_scale"),
                                       ("v_bmm_quantizer", "v_proj", "v_scale")):
                    v = calib.get(a, q, "_amax")
                    if v.size != 1:
                        raise RefError("%s: %d values, expected 1"
                                       % (Calib.dataset_path(a, q, "_amax"), v.size))
                    _positive(v[0], Calib.dataset_path(a, q, "_amax"))
                    kv["%s.%s.%s" % (a, proj, scale)] = kv_scale(v[0], numerics)

    out = {}
    replaced = {m + ".weight" for m in quantized} | set(consumed)
    replaced |= {n for name, fp in fused.items() for n in fp.sources
                 if name in plan.quantized or fp.mx is not None}
    for name, t in tensors.items():
        if name not in replaced:
            out[name] = t
    plan.cast_counts = fused_export(plan, calib, numerics, weight_only, cast_mxfp4, out)
    for m in quantized:
        rows, cols = plan.modules[m]
        if m in static:
            ws2, codes, packed = quantize_static(weights[m], static[m], weight_amax[m], numerics)
        else:
            ws2, codes, packed = quantize_dynamic(weights[m], weight_amax[m], numerics)
        out[m + ".weight"] = Tensor("U8", [rows, cols // 2], packed.tobytes())
        out[m + ".weight_scale"] = Tensor("F8_E4M3", [rows, cols // 16], codes.tobytes())
        out[m + ".weight_scale_2"] = _scalar_f32(ws2)
        if not weight_only:
            out[m + ".input_scale"] = _scalar_f32(input_scale(in_amax[m], numerics))
    for name, value in kv.items():
        out[name] = _scalar_f32(value)

    hf_quant = {"quantization": {
        "quant_algo": "W4A16_NVFP4" if weight_only else "NVFP4",
        "kv_cache_quant_algo": "FP8" if kv else None,
        "group_size": 16,
        "exclude_modules": plan.exclude_modules,
    }}
    plan.config = config
    plan.static = set(static)
    return out, plan, hf_quant


# --------------------------------------------------------------------------------------
# compressed-tensors (llm-compressor nvfp4-pack-quantized)
# --------------------------------------------------------------------------------------

def _reciprocal(t, name):
    """F32 [] scale -> F32 [1] holding fl32(1 / scale)."""
    if t.dtype != "F32" or t.shape != []:
        raise RefError("%s: expected F32 [], got %s %s" % (name, t.dtype, t.shape))
    x = np.frombuffer(t.data, "<f4")[0]
    with np.errstate(divide="ignore", over="ignore"):
        r = np.asarray(F32(1.0) / F32(x), dtype="<f4").reshape(1)
    return Tensor("F32", [1], r.tobytes())


def compressed_tensors_view(expected, plan):
    """The tensors of a compressed-tensors export, from those of the ModelOpt-layout one:
    per quantized module P, P.weight -> P.weight_packed (same bytes), P.weight_scale (same),
    P.weight_scale_2 -> P.weight_global_scale = fl32(1 / ws2), P.input_scale ->
    P.input_global_scale = fl32(1 / input_scale), scalars F32 [1]; the KV scales go on the
    attention module: <attn>.k_scale / <attn>.v_scale, F32 [1], same value."""
    out = dict(expected)
    for m in sorted(q for q in plan.quantized if q not in plan.fused):
        out[m + ".weight_packed"] = out.pop(m + ".weight")
        out[m + ".weight_global_scale"] = _reciprocal(out.pop(m + ".weight_scale_2"),
                                                      m + ".weight_scale_2")
        if m + ".input_scale" in out:
            out[m + ".input_global_scale"] = _reciprocal(out.pop(m + ".input_scale"),
                                                         m + ".input_scale")
    for a in plan.attentions:
        for proj, scale in (("k_proj", "k_scale"), ("v_proj", "v_scale")):
            name = "%s.%s.%s" % (a, proj, scale)
            if name in out:
                t = out.pop(name)
                out["%s.%s" % (a, scale)] = Tensor("F32", [1], t.data)
    return out


CT_WEIGHTS = {"num_bits": 4, "type": "float", "strategy": "tensor_group", "group_size": 16,
              "symmetric": True, "dynamic": False}
CT_INPUTS = dict(CT_WEIGHTS, dynamic="local")
CT_KV = {"num_bits": 8, "type": "float", "strategy": "tensor", "dynamic": False,
         "symmetric": True}


def _fields(problems, where, got, want):
    """Every key of want present in got with the same value (and the same JSON type)."""
    if not isinstance(got, dict):
        problems.append("config.json: %s is %s, expected an object" % (where, json.dumps(got)))
        return
    for key, value in want.items():
        if key not in got:
            problems.append("config.json: %s.%s missing" % (where, key))
        elif json.dumps(got[key]) != json.dumps(value):
            problems.append("config.json: %s.%s is %s, expected %s"
                            % (where, key, json.dumps(got[key]), json.dumps(value)))


def check_compressed_tensors_config(qc, plan, weight_only, kv, problems):
    """quantization_config of llm-compressor's nvfp4-pack-quantized format."""
    if not isinstance(qc, dict):
        problems.append("config.json: no quantization_config")
        return
    _fields(problems, "quantization_config", qc,
            {"quant_method": "compressed-tensors", "format": "nvfp4-pack-quantized",
             "quantization_status": "compressed"})
    groups = qc.get("config_groups")
    if not isinstance(groups, dict) or list(groups) != ["group_0"]:
        problems.append("config.json: quantization_config.config_groups is %s, expected one "
                        "group_0" % json.dumps(groups))
    else:
        g0 = groups["group_0"]
        where = "quantization_config.config_groups.group_0"
        _fields(problems, where, g0, {"targets": ["Linear"]})
        if isinstance(g0, dict):
            _fields(problems, where + ".weights", g0.get("weights"), CT_WEIGHTS)
            if weight_only:
                if g0.get("input_activations") is not None:
                    problems.append("config.json: %s.input_activations is %s in a weight-only "
                                    "export, expected null" % (where,
                                                             json.dumps(g0["input_activations"])))
            else:
                _fields(problems, where + ".input_activations", g0.get("input_activations"),
                        CT_INPUTS)
    want_ignore = sorted(plan.excluded)
    got_ignore = qc.get("ignore")
    if not isinstance(got_ignore, list):
        problems.append("config.json: quantization_config.ignore is %s, expected a list"
                        % json.dumps(got_ignore))
    elif got_ignore != want_ignore:
        missing = sorted(set(want_ignore) - set(got_ignore))
        extra = sorted(set(got_ignore) - set(want_ignore))
        if missing or extra:
            problems.append("config.json: quantization_config.ignore lacks %s, has extra %s"
                            % (json.dumps(missing[:5]), json.dumps(extra[:5])))
        else:
            problems.append("config.json: quantization_config.ignore holds the right %d module "
                            "names but not sorted (first out of place: %s)"
                            % (len(want_ignore), next(g for g, w in zip(got_ignore, want_ignore)
                                                      if g != w)))
    if kv:
        _fields(problems, "quantization_config.kv_cache_scheme", qc.get("kv_cache_scheme"), CT_KV)
    elif qc.get("kv_cache_scheme") is not None:
        problems.append("config.json: quantization_config.kv_cache_scheme is %s without KV "
                        "scales, expected null" % json.dumps(qc["kv_cache_scheme"]))


# --------------------------------------------------------------------------------------
# compare
# --------------------------------------------------------------------------------------

NON_WEIGHT_SKIP = {"config.json", "model.safetensors.index.json", "hf_quant_config.json"}


def _describe_diff(want, got):
    a = np.frombuffer(want.data, np.uint8)
    b = np.frombuffer(got.data, np.uint8)
    diff = np.nonzero(a != b)[0]
    return "%d of %d bytes differ, first at byte %d (want %02x got %02x)" % (
        diff.size, a.size, diff[0], a[diff[0]], b[diff[0]])


def compare(args):
    expected, plan, hf_quant = reference_export(
        args.model, args.calib, args.numerics, args.quantize, args.exclude or (),
        args.weight_only, args.kv_cache, args.cast_mxfp4)
    compressed = args.format == "compressed-tensors"
    if compressed:
        expected = compressed_tensors_view(expected, plan)
    problems = []
    try:
        actual = load_checkpoint(args.output)
    except RefError as exc:
        problems.append("output: %s" % exc)
        actual = {}
    for name in sorted(set(expected) | set(actual)):
        want, got = expected.get(name), actual.get(name)
        if got is None:
            problems.append("%s: missing from output" % name)
        elif want is None:
            problems.append("%s: unexpected tensor in output (%s %s)" % (name, got.dtype, got.shape))
        elif want.dtype != got.dtype or want.shape != got.shape:
            problems.append("%s: expected %s %s, got %s %s"
                            % (name, want.dtype, want.shape, got.dtype, got.shape))
        elif want.data != got.data:
            problems.append("%s: %s" % (name, _describe_diff(want, got)))

    want_q = hf_quant["quantization"]
    if compressed:
        if os.path.exists(os.path.join(args.output, "hf_quant_config.json")):
            problems.append("hf_quant_config.json: present in a compressed-tensors export")
    else:
        _check_hf_quant_config(args.output, want_q, problems)

    try:
        with open(os.path.join(args.output, "config.json")) as f:
            got_cfg = json.load(f)
        for key, value in plan.config.items():
            if key != "quantization_config" and got_cfg.get(key) != value:
                problems.append("config.json: %s changed" % key)
        qc = got_cfg.get("quantization_config")
        if compressed:
            check_compressed_tensors_config(qc, plan, args.weight_only,
                                            want_q["kv_cache_quant_algo"] is not None, problems)
        elif not isinstance(qc, dict):
            problems.append("config.json: no quantization_config")
        else:
            if qc.get("quant_algo") != want_q["quant_algo"]:
                problems.append("config.json: quantization_config.quant_algo is %r, expected %r"
                                % (qc.get("quant_algo"), want_q["quant_algo"]))
            if sorted(qc.get("ignore") or []) != want_q["exclude_modules"]:
                problems.append("config.json: quantization_config.ignore differs from the "
                                "reference exclude list")
    except (OSError, ValueError) as exc:
        problems.append("config.json: %s" % exc)
    _check_other_files(args, problems)

    if problems:
        for p in problems[:20]:
            print("compare: MISMATCH %s" % p)
        if len(problems) > 20:
            print("compare: ... %d more mismatches" % (len(problems) - 20))
        return 1
    print("compare: %d tensors equal, %d quantized modules%s"
          % (len(expected), len(plan.quantized), " (compressed-tensors)" if compressed else ""))
    return 0


def _check_hf_quant_config(output, want_q, problems):
    try:
        with open(os.path.join(output, "hf_quant_config.json")) as f:
            got_q = json.load(f)["quantization"]
        for key in ("quant_algo", "kv_cache_quant_algo", "group_size", "exclude_modules"):
            if key not in got_q:
                problems.append("hf_quant_config.json: quantization.%s missing" % key)
            elif got_q[key] != want_q[key]:
                problems.append("hf_quant_config.json: quantization.%s is %s, expected %s"
                                % (key, json.dumps(got_q[key]), json.dumps(want_q[key])))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        problems.append("hf_quant_config.json: %s" % exc)


def _check_other_files(args, problems):
    for entry in sorted(os.listdir(args.model)):
        src = os.path.join(args.model, entry)
        if (entry in NON_WEIGHT_SKIP or entry.endswith(".safetensors") or entry.startswith(".")
                or not os.path.isfile(src)):
            continue
        dst = os.path.join(args.output, entry)
        if not os.path.isfile(dst):
            problems.append("%s: non-weight file not copied" % entry)
        else:
            with open(src, "rb") as a, open(dst, "rb") as b:
                if a.read() != b.read():
                    problems.append("%s: differs from the source" % entry)


# --------------------------------------------------------------------------------------
# DeepSeek-V4 as released, exported as ModelOpt's quantize_to_nvfp4.py does (FRONTIER.md 1.4)
# --------------------------------------------------------------------------------------

DSV4_EXPERT_RE = re.compile(r"^layers\.\d+\.ffn\.experts\.\d+\.w[123]\.weight$")
DSV4_SHARD_RE = re.compile(r"^model-\d+-of-\d+\.safetensors$")
DSV4_EXCLUDE = ["*.attn.*", "*.ffn.shared_experts.*", "head", "mtp.*"]
DSV4_PRODUCER = {"name": "modelopt", "version": "dsv4-nvfp4-experts"}
DTYPE_RANK = {d: i for i, d in enumerate(
    ["BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "F8_E8M0", "I16", "U16", "F16", "BF16", "I32",
     "U32", "F32", "F64", "I64", "U64"])}


def mxfp4_decode(packed, e8m0):
    """DeepSeek-V4: I8/U8 [rows, cols/2] and E8M0 [rows, cols/32] -> (float32 [rows, cols],
    codes [rows, cols], exponent bytes [rows, cols/32]) (mxfp4_values)."""
    p = np.frombuffer(packed.data, np.uint8).reshape(packed.shape)
    e = np.frombuffer(e8m0.data, np.uint8).reshape(e8m0.shape).astype(np.int64)
    out, codes = mxfp4_values(p.reshape(p.shape[0], e.shape[1], 16), e)
    if not np.all(np.isfinite(out)):
        raise RefError("MXFP4 weight with a NaN scale or values beyond float32")
    return out, codes, e


def cast_mxfp4(packed, e8m0, k_max):
    """--cast_mxfp4_to_nvfp4 as the script applies it: ws2 = 2^(k_max - 8); per 32-block the
    closed-form amax (mxfp4_block_amax) against this tensor's own k_max;
    S = e4m3(clamp(amax / fl(6 ws2), 2^-9, 448)) for both 16-halves; codes re-encoded from the
    values with fl(S * ws2). Returns (ws2, scale codes, packed codes, blocks, lossless blocks)."""
    w, codes, e = mxfp4_decode(packed, e8m0)
    k = e - 127
    ws2 = F32(2.0 ** (k_max - 8))
    top = (codes & 7).reshape(w.shape[0], e.shape[1], 32).max(axis=2)
    amax = mxfp4_block_amax(top, k, mxfp4_kmax(e))
    s = (amax / F32(F32(6) * ws2)).astype(F32)
    s = np.minimum(np.maximum(s, TWO_M9), E4M3_MAX).astype(F32)
    scodes = np.repeat(e4m3_encode(s), 2, axis=1)
    lossless = int(np.count_nonzero((k >= k_max - 17) | (e == 0)))
    return ws2, scodes, encode_elements(w, scodes, ws2), e.size, lossless


def _dsv4_calib(path):
    """The calibration file back in ModelOpt's V4 key form: {key: float32}."""
    import h5py
    out = {}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset) and name.endswith("_quantizer/_amax"):
                parts = name.split("/")
                key = "%s_%s._amax" % (".".join(parts[:-2]), parts[-2])
                out[key] = F32(np.asarray(obj[()], np.float32).reshape(-1)[0])
        f.visititems(visit)
    return out


def _dsv4_amax(calib):
    """The script's _load_merged_amax: w1/w3 fused (max) when both exist, then the input
    fallback per projection over the calibrated experts outside MTP."""
    merged = dict(calib)
    for which in ("input", "weight"):
        for key in list(merged):
            if key.endswith("w1_%s_quantizer._amax" % which):
                k3 = key.replace("w1_" + which, "w3_" + which)
                if k3 in merged:
                    merged[key] = merged[k3] = max(merged[key], merged[k3])
    fallback = {}
    for key, v in merged.items():
        m = re.match(r"^(layers\.\d+|mtp\.\d+)\.ffn\.experts\.\d+\.(w[123])_input_quantizer", key)
        if m and not m.group(1).startswith("mtp."):
            fallback[m.group(2)] = max(fallback.get(m.group(2), v), v)
    return merged, fallback


def _dsv4_shard(tensors, amax, fallback, numerics, cast, stats):
    """One shard as convert_shard writes it: (out tensors in insertion order, added, removed)."""
    keys = sorted(tensors)
    experts = [k for k in keys if DSV4_EXPERT_RE.match(k)]
    pairs = {}
    for k in experts:
        base, proj = k[:-len(".weight")].rsplit(".", 1)
        pairs.setdefault(base, {})[proj] = k[:-len(".weight")]
    shared = {}  # expert path -> k_max (cast) or weight amax (default), w1/w3 pairs only
    for paths in pairs.values():
        if "w1" not in paths or "w3" not in paths:
            continue
        vals = []
        for proj in ("w1", "w3"):
            p = paths[proj]
            if cast:
                e = np.frombuffer(tensors[p + ".scale"].data, np.uint8)
                vals.append(int(e[e > 0].max()) - 127 if (e > 0).any() else 0)
            else:
                a = amax.get(p + "_weight_quantizer._amax")
                if a is None:
                    values = mxfp4_decode(tensors[p + ".weight"], tensors[p + ".scale"])[0]
                    a = F32(np.abs(values).max())
                vals.append(a)
        shared[paths["w1"]] = shared[paths["w3"]] = max(vals)
    scales = {k[:-len(".weight")] + ".scale" for k in experts} & set(keys)
    out, added, removed = {}, [], []
    for key in keys:
        if key in scales:
            removed.append(key)
            continue
        if key not in experts:
            out[key] = tensors[key]
            continue
        path = key[:-len(".weight")]
        proj = path.rsplit(".", 1)[1]
        in_amax = amax.get(path + "_input_quantizer._amax", fallback.get(proj))
        if in_amax is None:
            raise RefError("missing input amax for %s and no calibrated fallback" % path)
        w, s = tensors[key], tensors[path + ".scale"]
        rows, cols = w.shape[0], 2 * w.shape[1]
        if cast:
            e = np.frombuffer(s.data, np.uint8)
            k_max = shared.get(path, int(e[e > 0].max()) - 127 if (e > 0).any() else 0)
            ws2, scodes, packed, n, lossless = cast_mxfp4(w, s, k_max)
            stats[0] += n
            stats[1] += lossless
        else:
            values = mxfp4_decode(w, s)[0]
            a = shared.get(path, amax.get(path + "_weight_quantizer._amax"))
            if a is None:
                a = F32(np.abs(values).max())
            ws2, scodes, packed = quantize_dynamic(values, a, numerics)
        out[key] = Tensor("U8", [rows, cols // 2], packed.tobytes())
        out[path + ".weight_scale"] = Tensor("F8_E4M3", [rows, cols // 16], scodes.tobytes())
        out[path + ".weight_scale_2"] = _scalar_f32(ws2)
        out[path + ".input_scale"] = _scalar_f32(input_scale(in_amax, "cpu"))
        added += [path + ".weight_scale", path + ".weight_scale_2", path + ".input_scale"]
    return out, added, removed


def safetensors_file(tensors):
    """safetensors.torch.save_file(tensors) without metadata, as bytes."""
    items = sorted(tensors.items(), key=lambda kv: (-DTYPE_RANK[kv[1].dtype], kv[0]))
    header, off = {}, 0
    for name, t in items:
        header[name] = {"dtype": t.dtype, "shape": t.shape,
                        "data_offsets": [off, off + len(t.data)]}
        off += len(t.data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(t.data for _, t in items)


def _dsv4_aux(src, files):
    """The script's _hard_link_aux: every other top-level file and directory; below it no
    __pycache__, index or shard. nvfp4x also leaves out a top-level hf_quant_config.json and
    any other .safetensors file."""
    for item in sorted(os.listdir(src)):
        full = os.path.join(src, item)
        if item in ("model.safetensors.index.json", "config.json", ".cache",
                    "hf_quant_config.json") or item.endswith(".safetensors"):
            continue
        if os.path.isfile(full):
            files[item] = open(full, "rb").read()
        elif os.path.isdir(full):
            files[item + "/"] = None
            for root, dirs, names in os.walk(full):
                dirs[:] = [d for d in dirs if d != "__pycache__"]
                rel = os.path.relpath(root, src)
                files[rel + "/"] = None
                for n in names:
                    if n == "model.safetensors.index.json" or DSV4_SHARD_RE.match(n):
                        continue
                    files[os.path.join(rel, n)] = open(os.path.join(root, n), "rb").read()


def dsv4_expected(src, calib_path, numerics, cast):
    """{relative path: bytes (None for a directory)} of the whole export, and the cast counts."""
    with open(os.path.join(src, "model.safetensors.index.json")) as f:
        index = json.load(f)
    amax, fallback = _dsv4_amax(_dsv4_calib(calib_path))
    files, updates, stats = {}, {}, [0, 0]
    for shard in sorted(n for n in os.listdir(src) if DSV4_SHARD_RE.match(n)):
        tensors, _ = read_safetensors(os.path.join(src, shard))
        out, added, removed = _dsv4_shard(tensors, amax, fallback, numerics, cast, stats)
        files[shard] = safetensors_file(out)
        updates[shard] = (added, removed)
    weight_map = dict(index["weight_map"])
    for shard, (added, removed) in updates.items():
        for k in removed:
            weight_map.pop(k, None)
        for k in added:
            weight_map[k] = shard
    files["model.safetensors.index.json"] = json.dumps(
        {"metadata": index.get("metadata", {}), "weight_map": weight_map}, indent=2).encode()
    layers = sorted({k.rsplit(".", 3)[0] for _, (added, _) in updates.items() for k in added})
    quant = {"quant_algo": "MIXED_PRECISION", "kv_cache_quant_algo": None, "group_size": 16,
             "quantized_layers": {n: {"quant_algo": "NVFP4", "group_size": 16} for n in layers},
             "exclude_modules": list(DSV4_EXCLUDE)}
    files["hf_quant_config.json"] = json.dumps(
        {"producer": dict(DSV4_PRODUCER), "quantization": quant}, indent=2).encode()
    with open(os.path.join(src, "config.json")) as f:
        cfg = json.load(f)
    qc = cfg.get("quantization_config")
    qc = qc if isinstance(qc, dict) else {}
    fp4 = {"dynamic": False, "num_bits": 4, "type": "float", "group_size": 16}
    qc.setdefault("activation_scheme", "dynamic")
    qc["quant_method"] = "fp8"
    qc.setdefault("weight_block_size", [128, 128])
    qc.update(moe_quant_algo="NVFP4", producer=dict(DSV4_PRODUCER), quant_algo="MIXED_PRECISION",
              kv_cache_quant_algo=None, group_size=16,
              config_groups={"group_0": {"input_activations": dict(fp4), "weights": dict(fp4),
                                         "targets": ["Linear"]}},
              quantized_layers=quant["quantized_layers"])
    qc.pop("exclude_modules", None)
    qc["ignore"] = list(DSV4_EXCLUDE)
    cfg["quantization_config"] = qc
    files["config.json"] = (json.dumps(cfg, indent=2, sort_keys=True) + "\n").encode()
    _dsv4_aux(src, files)
    return files, stats


def _tree(root):
    out = {}
    for dirpath, dirs, names in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        if rel != ".":
            out[rel + "/"] = None
        for n in names:
            out[os.path.normpath(os.path.join(rel, n))] = open(os.path.join(dirpath, n), "rb").read()
    return out


def compare_dsv4(args):
    want, stats = dsv4_expected(args.model, args.calib, args.numerics, args.cast)
    got = _tree(args.output)
    problems = []
    for name in sorted(set(want) | set(got)):
        if name not in got:
            problems.append("%s: missing from the output" % name)
        elif name not in want:
            problems.append("%s: not expected in the output" % name)
        elif want[name] != got[name]:
            problems.append("%s: %d bytes differ from the expected %d"
                            % (name, len(got[name] or b""), len(want[name] or b"")))
    for p in problems[:20]:
        print("dsv4: MISMATCH %s" % p)
    if problems:
        return 1
    print("dsv4: %d files equal byte for byte%s" % (len(want), (
        "; lossless MXFP4->NVFP4 blocks: %d/%d" % (stats[1], stats[0])) if args.cast else ""))
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("vectors", help="check the ModelOpt NVFP4 vector file bit for bit")
    v.add_argument("path", help="tests/data/nvfp4_vectors.json")
    c = sub.add_parser("compare", help="check an export directory against the reference")
    c.add_argument("--model", required=True, help="source HF model directory")
    c.add_argument("--output", required=True, help="exporter output directory")
    c.add_argument("--calib", help="calibration HDF5 file")
    c.add_argument("--numerics", choices=("gpu", "cpu"), default="gpu")
    c.add_argument("--quantize", choices=("all", "mlp", "experts"), default="all")
    c.add_argument("--exclude", action="append", metavar="GLOB",
                   help="exclude modules matching GLOB (fnmatch, repeatable)")
    c.add_argument("--weight-only", action="store_true", help="W4A16_NVFP4: no input_scale")
    c.add_argument("--kv-cache", choices=("auto", "fp8", "none"), default="auto")
    c.add_argument("--format", choices=("modelopt", "compressed-tensors"), default="modelopt",
                   help="output layout to expect (default modelopt)")
    c.add_argument("--cast-mxfp4", action="store_true",
                   help="MXFP4 experts cast in closed form (ModelOpt's --cast_mxfp4_to_nvfp4)")
    d = sub.add_parser("dsv4", help="check a DeepSeek-V4 export, every file byte for byte")
    d.add_argument("--model", required=True, help="the release-format source")
    d.add_argument("--calib", required=True, help="calibration HDF5 file")
    d.add_argument("--output", required=True, help="exporter output directory")
    d.add_argument("--numerics", choices=("gpu", "cpu"), default="cpu")
    d.add_argument("--cast", action="store_true", help="--cast-mxfp4")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "dsv4":
            return compare_dsv4(args)
        if args.cmd == "vectors":
            n, failures = check_vectors(args.path)
            for f in failures:
                print("vectors: MISMATCH %s" % f)
            print("vectors: %d cases, %d mismatches" % (n, len(failures)))
            return 1 if failures else 0
        return compare(args)
    except RefError as exc:
        print("nvfp4_ref: error: %s" % exc, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
