#!/usr/bin/python3
"""Generate a DeepSeek-V3 checkpoint in the FP8 block-scaled layout and its exact BF16 twin.

  gen_fp8.py --family deepseek --out FP8DIR --bf16-out BF16DIR --calib CALIB.h5
             [--seed N] [--shards K] [--hidden H] [--shared-experts S]
             [--scheme block|tensor|channel] [--spelling fp8|compressed-tensors]

The model is gen_checkpoint.py's deepseek fixture (MLA, dense layer 0, MoE layers with shared
experts, MTP layer), built with a hidden size of 144 and 3 shared experts by default so that
weights span several 128x128 tiles in both directions, every edge tile partial
(rows/cols are multiples of 16, never of 128) and some weights 2x2 tiles.

Every 2-D linear weight under self_attn or mlp (all layers, the MTP layer included; not
embeddings, lm_head, routers, norms, eh_proj or shared_head) is converted the way DeepSeek's
FP8 release stores it:

  scale_inv[I][J] = fl32(amax of tile (I, J) / 448)              (F32 [ceil(r/128), ceil(c/128)])
  fp8[i][j]       = E4M3FN(fl32(w[i][j] / scale_inv[i/128][j/128])), nearest even, saturating

In every third converted weight the bottom-right tile gets a slightly larger scale whose
mantissa makes fl32(1.125 * 2^a * scale) land exactly on a BF16 midpoint that the exact product
does not: there, rounding the float32 product to BF16 (the rule) and rounding the exact product
once differ by one BF16 ulp, so the fixture tells the two apart.

FP8DIR gets X.weight (F8_E4M3) and X.weight_scale_inv; some scales sit in another shard than
their weight (one before, one after). config.json gains
quantization_config {quant_method fp8, activation_scheme dynamic, fmt e4m3,
weight_block_size [128, 128]}.

--scheme tensor|channel writes the per-tensor and per-channel FP8 releases instead (Llama-4
Maverick's FP8, llm-compressor's FP8): one scale per weight, or per output row, amax / 448,

  scale = fl32(amax / 448)          X.weight_scale: F32 [] (fp8 spelling) or [1]
                                    (compressed-tensors), per channel F32 [rows, 1]
  fp8   = E4M3FN(fl32(w / scale))

with the crafted double-rounding scale on every third weight (per tensor) or on the last row
(per channel). --spelling fp8 declares {quant_method fp8, activation_scheme dynamic} without
weight_block_size; --spelling compressed-tensors declares format float-quantized with static
FP8 input activations and gives every converted linear an X.input_scale (F32 []), which the
export must not carry over. The BF16 twin is the same for both spellings.

BF16DIR is what a user's FP8->BF16 conversion gives: the same tensors in the same shards, each
converted weight replaced by bf16_rne(fl32(fp8 * scale_inv)), no weight_scale_inv, config.json
without quantization_config; every other file is byte-identical to FP8DIR's.

CALIB.h5 is gen_checkpoint.py's calibration (same module names, same schema), computed from
the dequantized weights (the model a user would calibrate). Deterministic for a given seed.
"""

import argparse
import json
import os
import shutil
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gen_checkpoint as gc  # noqa: E402

BLOCK = 128
F32 = np.float32


# --------------------------------------------------------------------------------------
# E4M3FN (written here, independently of nvfp4_ref.py and of the C code)
# --------------------------------------------------------------------------------------

def _e4m3_values():
    """Value of every non-NaN code 0x00..0x7E, 0x80..0xFE."""
    table = {}
    for code in range(256):
        mag = code & 0x7F
        if mag == 0x7F:
            continue
        e, m = mag >> 3, mag & 7
        v = m * 2.0 ** -9 if e == 0 else (1 + m / 8.0) * 2.0 ** (e - 7)
        table[code] = -v if code & 0x80 else v
    return table


E4M3_VALUE = _e4m3_values()
E4M3_DECODE = np.array([E4M3_VALUE.get(c, np.nan) for c in range(256)], dtype=F32)
_MAG_TO_CODE = {v: c for c, v in E4M3_VALUE.items() if c < 0x80}


def e4m3_encode_saturating(x):
    """float32 array -> E4M3FN codes: round to nearest even on the E4M3 grid (quantum
    2^(max(e,-6)-3)), magnitudes past 448 saturate to 448; the sign is kept (-0 -> 0x80)."""
    x = np.asarray(x, dtype=F32)
    a = np.abs(x).astype(np.float64)
    if not np.all(np.isfinite(a)):
        raise ValueError("non-finite value to encode")
    with np.errstate(divide="ignore"):
        e = np.floor(np.log2(np.where(a > 0, a, 1.0)))
    quantum = np.exp2(np.maximum(e, -6.0) - 3.0)
    r = np.rint(a / quantum) * quantum            # exact: a is f32, quantum a power of two
    r = np.minimum(r, 448.0)
    mag = np.vectorize(_MAG_TO_CODE.__getitem__, otypes=[np.uint8])(r)
    return (mag | np.where(np.signbit(x), 0x80, 0)).astype(np.uint8)


def bf16_direct(p):
    """float64 -> bf16 value, rounded once (nearest even); for the double-rounding count."""
    m, e = np.frexp(p)
    return np.ldexp(np.rint(np.ldexp(m, 8)), e - 8)


def _double_rounding_mantissas():
    """float32 mantissas M in [1, 2) for which fl32(1.125 * M) lies on a BF16 midpoint that
    1.125 * M itself does not: bf16(fl32(x)) and a single rounding of x then differ by one
    BF16 ulp. A tile scaled by M * 2^e makes every code of mantissa 1 (1.125 * 2^a) such a
    case, so the fixture tells fl32-then-BF16 apart from one rounding."""
    found = []
    for j in range(256):
        mid = 1.125 + (2 * j + 1) * 2.0 ** -8
        m = F32(mid / 1.125)
        for _ in range(3):
            m = np.nextafter(m, F32(0))
        for _ in range(7):
            if F32(1) <= m < F32(2):
                p32 = F32(F32(1.125) * m)
                twice = float((gc.f32_to_bf16_bits(np.array([p32])).astype(np.uint32)
                               << 16).view(F32)[0])
                once = float(bf16_direct(np.array([1.125 * float(m)]))[0])
                if twice != once:
                    found.append(float(m))
            m = np.nextafter(m, F32(2))
    return sorted(set(found))


DOUBLE_ROUNDING_M = _double_rounding_mantissas()


def double_rounding_scale(natural):
    """The smallest float32 >= natural whose mantissa is in DOUBLE_ROUNDING_M (so the tile
    still fits in +-448 without saturating more than it would)."""
    m, e = np.frexp(np.float64(natural))        # natural = (2m) * 2^(e-1), 2m in [1, 2)
    m, e = 2 * m, e - 1
    for c in DOUBLE_ROUNDING_M:
        if c >= m:
            return F32(np.ldexp(c, e))
    return F32(np.ldexp(DOUBLE_ROUNDING_M[0], e + 1))


# --------------------------------------------------------------------------------------
# Conversion
# --------------------------------------------------------------------------------------

def fp8_target(name, shape):
    """2-D linear weights under self_attn/mlp, routers excluded."""
    if not name.endswith(".weight") or len(shape) != 2:
        return False
    module = name[:-len(".weight")]
    parts = module.split(".")
    if not {"self_attn", "mlp"}.intersection(parts):
        return False
    return not module.endswith(("mlp.gate", ".router", "shared_expert_gate"))


def tile_shape(scheme, shape):
    """Rows x columns that share one scale."""
    return {"block": (BLOCK, BLOCK), "tensor": tuple(shape), "channel": (1, shape[1])}[scheme]


def to_fp8(w, tile, craft_last_tile=False):
    """w: float32 [rows, cols] -> (codes uint8 [rows, cols], scale float32 [R, C]) with one
    scale per tile. craft_last_tile: the bottom-right (partial) tile gets a
    double_rounding_scale."""
    rows, cols = w.shape
    tr, tc = tile
    nr, nc = -(-rows // tr), -(-cols // tc)
    scale = np.zeros((nr, nc), dtype=F32)
    codes = np.zeros((rows, cols), dtype=np.uint8)
    for i in range(nr):
        for j in range(nc):
            part = w[i * tr:(i + 1) * tr, j * tc:(j + 1) * tc]
            amax = F32(np.abs(part).max())
            s = F32(amax / F32(448.0)) if amax > 0 else F32(1.0)
            if craft_last_tile and (i, j) == (nr - 1, nc - 1):
                s = double_rounding_scale(s)
            scale[i, j] = s
            q = (part / s).astype(F32)
            codes[i * tr:(i + 1) * tr, j * tc:(j + 1) * tc] = e4m3_encode_saturating(q)
    return codes, scale


def dequantize(codes, scale, tile):
    """fl32(fp8 * scale[i/tr][j/tc]) -> (bf16 bits, float32 values), RNE."""
    rows, cols = codes.shape
    s = np.repeat(np.repeat(scale, tile[0], axis=0), tile[1], axis=1)[:rows, :cols]
    prod = (E4M3_DECODE[codes] * s).astype(F32)   # one float32 rounding
    bits = gc.f32_to_bf16_bits(prod)
    values = (bits.astype(np.uint32) << 16).view(F32).reshape(rows, cols)
    exact = E4M3_DECODE[codes].astype(np.float64) * s.astype(np.float64)  # exact product
    double_rounded = int(np.count_nonzero(bf16_direct(exact) != values.astype(np.float64)))
    return bits.reshape(rows, cols), values, double_rounded


# --------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------

def shard_map(bf16_dir):
    with open(os.path.join(bf16_dir, "model.safetensors.index.json")) as f:
        return json.load(f)["weight_map"]


def displaced_scales(converted, wmap, nshards):
    """{weight name: shard index for its weight_scale_inv} for the scales put elsewhere: a
    multi-tile attention weight's scale after its weight, the last MTP weight's before it."""
    files = sorted(set(wmap.values()))
    idx = {f: i for i, f in enumerate(files)}
    out = {}
    first = "model.layers.1.self_attn.q_b_proj.weight"
    if first in converted:
        out[first] = (idx[wmap[first]] + 1) % nshards
    last = converted[-1]
    k = idx[wmap[last]]
    out[last] = 0 if k != 0 else 1
    return out


def scale_name_shape(args, weight, scale):
    """The scale tensor's name and shape in the chosen release layout."""
    if args.scheme == "block":
        return weight + "_scale_inv", list(scale.shape)
    if args.scheme == "channel":
        return weight + "_scale", [scale.shape[0], 1]
    return weight + "_scale", [] if args.spelling == "fp8" else [1]


def quantization_config(args, m, converted):
    if args.scheme == "block":
        return {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                "weight_block_size": [BLOCK, BLOCK]}
    if args.spelling == "fp8":
        return {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8"}
    fp8 = {"num_bits": 8, "type": "float", "symmetric": True, "dynamic": False}
    ignore = sorted(n[:-len(".weight")] for n, _, shape, _ in m.tensors
                    if n.endswith(".weight") and len(shape) == 2 and n not in set(converted))
    return {"quant_method": "compressed-tensors", "format": "float-quantized",
            "quantization_status": "compressed", "ignore": ignore, "kv_cache_scheme": None,
            "config_groups": {"group_0": {
                "targets": ["Linear"], "weights": dict(fp8, strategy=args.scheme),
                "input_activations": dict(fp8, strategy="tensor")}}}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--family", required=True, choices=["deepseek"])
    ap.add_argument("--out", required=True, help="FP8 model directory to write")
    ap.add_argument("--bf16-out", required=True, help="its BF16 dequantization, to write")
    ap.add_argument("--calib", required=True, help="calibration HDF5 file to write")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shards", type=int, default=3)
    ap.add_argument("--hidden", type=int, default=144,
                    help="hidden size (multiple of 16; default 144: two column tiles)")
    ap.add_argument("--shared-experts", type=int, default=3,
                    help="shared experts per MoE layer (default 3: 144-row shared MLP)")
    ap.add_argument("--scheme", choices=["block", "tensor", "channel"], default="block",
                    help="scales per 128x128 tile (default), per tensor or per output row")
    ap.add_argument("--spelling", choices=["fp8", "compressed-tensors"], default="fp8",
                    help="quantization_config of transformers' fp8 or of compressed-tensors "
                         "(tensor and channel schemes)")
    args = ap.parse_args(argv)
    if args.scheme == "block" and args.spelling != "fp8":
        raise SystemExit("gen_fp8: the block scheme is spelled fp8 only")
    if args.shards < 2:
        raise SystemExit("gen_fp8: --shards must be at least 2 (a scale goes to another shard)")
    if args.hidden % 16:
        raise SystemExit("gen_fp8: --hidden must be a multiple of 16")

    # gen_checkpoint's deepseek builder with a wider hidden size and more shared experts.
    gc.HIDDEN = args.hidden
    moe = gc._deepseek_moe
    gc._deepseek_moe = lambda m, p, E, inter, n_shared: moe(m, p, E, inter, args.shared_experts)
    rng = np.random.default_rng(args.seed)
    try:
        cfg, m, static_attention, nlayers = gc.FAMILIES[args.family](rng)
    finally:
        gc._deepseek_moe = moe
    cfg["n_shared_experts"] = args.shared_experts

    # FP8-encode the linear weights; the BF16 model holds their dequantization.
    fp8 = {}          # weight name -> (codes, scale_inv)
    converted = []
    tiles = partial = multi = double_rounded = neg_zero = saturated = 0
    for k, (name, dtype, shape, _) in enumerate(m.tensors):
        if not fp8_target(name, shape):
            continue
        tile = tile_shape(args.scheme, shape)
        craft = len(converted) % 3 == 0 or args.scheme == "channel"
        codes, scale = to_fp8(m.values[name], tile, craft_last_tile=craft)
        bits, values, dr = dequantize(codes, scale, tile)
        fp8[name] = (codes, scale)
        converted.append(name)
        m.tensors[k] = (name, "BF16", shape, bits.tobytes())
        m.values[name] = values
        tiles += scale.size
        partial += scale.size - (shape[0] // tile[0]) * (shape[1] // tile[1])
        multi += int(scale.size > 1)
        double_rounded += dr
        neg_zero += int(np.count_nonzero(codes == 0x80))
        saturated += int(np.count_nonzero((codes & 0x7F) == 0x7E))
    data = gc.calibration(rng, m, static_attention, nlayers)

    # BF16 twin first: gen_checkpoint's writer decides the shards (by BF16 bytes).
    bf16_dir, fp8_dir = args.bf16_out, args.out
    for d in (bf16_dir, fp8_dir):
        if os.path.exists(d) and os.listdir(d):
            raise SystemExit("gen_fp8: %s exists and is not empty; remove it first" % d)
    gc.write_model(bf16_dir, args.family, cfg, m, args.shards)
    gc.write_calibration(args.calib, data)

    # FP8 model: same files, same tensor-to-shard assignment, scales beside their weights
    # except the displaced ones.
    wmap = shard_map(bf16_dir)
    files = sorted(set(wmap.values()))
    moved = displaced_scales(converted, wmap, len(files))
    os.makedirs(fp8_dir, exist_ok=True)
    for entry in sorted(os.listdir(bf16_dir)):
        if entry.endswith(".safetensors") or entry in ("config.json",
                                                        "model.safetensors.index.json"):
            continue
        shutil.copyfile(os.path.join(bf16_dir, entry), os.path.join(fp8_dir, entry))
    parts = {f: {} for f in files}
    fp8_map = {}
    for name, dtype, shape, data_bytes in m.tensors:
        f = wmap[name]
        if name in fp8:
            codes, scale = fp8[name]
            parts[f][name] = ("F8_E4M3", shape, codes.tobytes())
            sname, sshape = scale_name_shape(args, name, scale)
            sf = files[moved[name]] if name in moved else f
            parts[sf][sname] = ("F32", sshape, scale.astype("<f4").tobytes())
            fp8_map[sname] = sf
            if args.spelling == "compressed-tensors":   # static FP8 activations
                iname = name[:-len(".weight")] + ".input_scale"
                parts[f][iname] = ("F32", [], np.array([0.02], dtype="<f4").tobytes())
                fp8_map[iname] = f
        else:
            parts[f][name] = (dtype, shape, data_bytes)
        fp8_map[name] = f
    total = 0
    for f in files:
        gc.write_safetensors(os.path.join(fp8_dir, f), parts[f])
        total += sum(len(t[2]) for t in parts[f].values())
    gc._json(os.path.join(fp8_dir, "model.safetensors.index.json"),
             {"metadata": {"total_size": total}, "weight_map": fp8_map})
    fp8_cfg = dict(cfg)
    fp8_cfg["quantization_config"] = quantization_config(args, m, converted)
    gc._json(os.path.join(fp8_dir, "config.json"), fp8_cfg)

    print("gen_fp8: %s: %d FP8 weights, %d tiles (%d partial), %d weights of several tiles, "
          "%d codes at +-448, %d negative zeros, %d elements where fl32-then-bf16 differs "
          "from one rounding; scales moved: %s; %s: its BF16 twin; %s: %d datasets"
          % (fp8_dir, len(converted), tiles, partial, multi, saturated, neg_zero,
             double_rounded, ", ".join("%s -> %s (weight in %s)" % (
                                       n + ("_scale_inv" if args.scheme == "block" else "_scale"),
                                       files[k], wmap[n]) for n, k in sorted(moved.items())),
             bf16_dir, args.calib, len(data)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
