#!/usr/bin/python3
"""Independent numpy reference of ModelOpt's NVFP4 weight-MSE FP8-scale sweep (../shared/MSE.md).

  mse_ref.py calib --model SRC --calib IN.h5 --out OUT.h5 [--numerics gpu|cpu]
                   [--quantize all|mlp|experts] [--weight-only]
      Sweep every quantized weight of SRC and write a calibration file holding what ModelOpt's
      static recipe stores: per quantized module `weight_quantizer/_amax` (one float32 per
      16-block, fl32(g * c_k)) and `weight_quantizer/_global_amax` (g, the max |W| of the
      module's pre-sweep group). Input and KV amax are copied from IN.h5 (--weight-only: none,
      and IN.h5 may be omitted). Exporting SRC with OUT.h5 must give the same bytes as
      `nvfp4x export --weight-calib mse` with IN.h5.
  mse_ref.py vectors --out PATH.json [--seed N]
      Blocks that stress every E2M1 threshold, ties, zero blocks, subnormal scales and g = 0,
      with the candidate the sweep picks in each numerics mode (tests/data/sweep_vectors.json).
  mse_ref.py gain --model SRC --max DIR1 --mse DIR2 [--numerics gpu|cpu]
      Per block, the squared error of the swept export DIR2 is never above that of the
      max-calibrated export DIR1 of the same source (for every module whose exported global
      amax is the one it was swept against); prints the totals.

Written from MSE.md (sections 0-6 and 9), not from the C code: float32 arithmetic, each
operation rounded once; a correctly rounded float32 fma built from float64 (below). Which
modules are quantized and how they group comes from tests/nvfp4_ref.py (itself written from
DESIGN.md). The GPU's reciprocal is the measured table shipped in data/rcp_delta_sm90.i8.gz,
checked against the SHA-256 that MSE.md gives for it.
"""

import argparse
import gzip
import hashlib
import json
import os
import re
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import nvfp4_ref as ref  # noqa: E402

F32, F64, U32 = np.float32, np.float64, np.uint32
BLOCK = 16
N_CAND = 126
TABLE = os.path.join(HERE, "..", "data", "rcp_delta_sm90.i8.gz")
TABLE_SHA256 = "862bea101da795bf5fd46df9dfe5142a79c29edd831e2da30aa84385d885e8fe"
R448 = ref.f32_from_bits(0x3B124925)
R6 = ref.f32_from_bits(0x3E2AAAAB)

# ModelOpt's pre-sweep weight groups (SHARED_PATTERNS, MSE.md section 1): fullmatch on the
# module name; the captured parent and the pattern index form the key; groups of one count not.
SHARED_PATTERNS = [re.compile(r"(?:(.*)\.)?(?:q_proj|k_proj|v_proj)"),
                   re.compile(r"(?:(.*)\.)?(?:gate_proj|up_proj)"),
                   re.compile(r"(?:(.*)\.)?(?:w1|w3)")]


# --------------------------------------------------------------------------------------
# float32 primitives
# --------------------------------------------------------------------------------------

def bits(x):
    return np.asarray(x, F32).view(U32)


def from_bits(b):
    return np.asarray(b, U32).view(F32)


def fma32(a, b, c):
    """Correctly rounded float32 a*b + c, elementwise. The product of two float32 is exact in
    float64; the float64 sum is rounded once, and its exact error is known (two-sum). Rounding
    that sum to float32 is wrong only when it lands exactly halfway between two float32 while
    the error is not zero: then the error's sign decides."""
    a, b, c = (np.asarray(v, F32).astype(F64) for v in (a, b, c))
    p = a * b
    s = p + c
    v = s - p
    err = (p - (s - v)) + (c - v)
    r = s.astype(F32)
    lo = np.where(r.astype(F64) <= s, r, np.nextafter(r, F32(-np.inf)))
    hi = np.nextafter(lo, F32(np.inf))
    halfway = (lo.astype(F64) + hi.astype(F64)) / 2 == s
    fix = halfway & (err != 0)
    return np.where(fix, np.where(err > 0, hi, lo), r).astype(F32)


def e2m1_magnitude(r):
    """The E2M1 value |r| rounds to in the sweep (ties to the even code; NaN -> 6)."""
    out = np.full(r.shape, F32(6.0))
    for bound, inclusive, value in ((5.0, True, 4.0), (3.5, False, 3.0), (2.5, True, 2.0),
                                    (1.75, False, 1.5), (1.25, True, 1.0), (0.75, False, 0.5),
                                    (0.25, True, 0.0)):
        below = r <= bound if inclusive else r < bound
        out = np.where(below, F32(value), out)
    return out.astype(F32)


# --------------------------------------------------------------------------------------
# The reciprocal
# --------------------------------------------------------------------------------------

_DELTA = None


def rcp_delta():
    """int8[2^23]: bits(MUFU.RCP(1.m)) - bits(RN(1/1.m)), measured on an H200 (MSE.md App. B)."""
    global _DELTA
    if _DELTA is None:
        with gzip.open(TABLE, "rb") as f:
            raw = f.read()
        if hashlib.sha256(raw).hexdigest() != TABLE_SHA256 or len(raw) != 1 << 23:
            raise SystemExit("mse_ref: %s is not the table MSE.md describes" % TABLE)
        _DELTA = np.frombuffer(raw, np.int8).astype(np.int64)
    return _DELTA


def reciprocal(s, numerics):
    """The reciprocal the sweep multiplies by, for a normal positive float32 s: the GPU's
    MUFU.RCP (RN(1/s) corrected by the table), or RN(1/s) in cpu mode."""
    rn = F32(F32(1.0) / F32(s))
    if numerics == "cpu":
        return rn
    mant = int(bits(s)) & 0x7FFFFF
    return from_bits(U32(int(bits(rn)) + int(rcp_delta()[mant])))[()]


def divide(a, s, numerics):
    """a / s as ptxas compiles div.full.f32 on sm_90: both operands scaled by 2^24 when s is
    subnormal and by 1/4 above 2^126, then a times the reciprocal (MSE.md 3a)."""
    s = F32(s)
    if s < F32(2.0 ** -126):
        a, s = (a * F32(2.0 ** 24)).astype(F32), F32(s * F32(2.0 ** 24))
    elif s > F32(2.0 ** 126):
        a, s = (a * F32(0.25)).astype(F32), F32(s * F32(0.25))
    return (a * reciprocal(s, numerics)).astype(F32)


# --------------------------------------------------------------------------------------
# The sweep
# --------------------------------------------------------------------------------------

def fp8_values():
    """Values of the E4M3FN codes 1..126, ascending (candidate k is code k + 1)."""
    codes = np.arange(1, 127)
    exp, man = codes >> 3, codes & 7
    return np.where(exp == 0, man * 2.0 ** -9, (8 + man) * 2.0 ** (exp - 10)).astype(F32)


def candidates(numerics):
    """c_k = fp8 / 448: a reciprocal multiply on CUDA (where ModelOpt builds them), a true
    division in cpu mode."""
    v = fp8_values()
    return (v * R448).astype(F32) if numerics == "gpu" else (v / F32(448.0)).astype(F32)


def scales(g, numerics):
    """s_k = fl32(fl32(c_k * g) / 6) (gpu: * fl32(1/6)), 0 replaced by 1."""
    t = (candidates(numerics) * F32(g)).astype(F32)
    s = (t * R6).astype(F32) if numerics == "gpu" else (t / F32(6.0)).astype(F32)
    return np.where(s == 0, F32(1.0), s).astype(F32)


def losses(w, g, numerics):
    """float32 loss[k, block] of every candidate, in the kernel's order: residual
    fma(-s, q, |w|); per four elements e0..e3 fma(e3,e3, fma(e2,e2, fma(e0,e0, e1*e1)));
    then (S0 + S2) + (S1 + S3)."""
    a = np.abs(np.asarray(w, F32).reshape(-1, BLOCK))
    out = np.empty((N_CAND, a.shape[0]), F32)
    for k, s in enumerate(scales(g, numerics)):
        q = e2m1_magnitude(divide(a, s, numerics))
        d = fma32(np.full(a.shape, -s, F32), q, a)
        lane = []
        for j in range(4):
            e = [d[:, 4 * j + i] for i in range(4)]
            acc = (e[1] * e[1]).astype(F32)
            for i in (0, 2, 3):
                acc = fma32(e[i], e[i], acc)
            lane.append(acc)
        out[k] = ((lane[0] + lane[2]).astype(F32) + (lane[1] + lane[3]).astype(F32)).astype(F32)
    return out


def sweep(w, g, numerics):
    """Chosen candidate per block: the first k of least loss (strict '<' from +inf, so a NaN
    loss never wins and all-NaN/inf blocks keep k = 0)."""
    with np.errstate(over="ignore", invalid="ignore"):
        L = losses(w, g, numerics)
    best = np.full(L.shape[1], np.inf, F32)
    kb = np.zeros(L.shape[1], np.int64)
    for k in range(N_CAND):
        better = L[k] < best
        best = np.where(better, L[k], best)
        kb = np.where(better, k, kb)
    return kb


def block_amax(kb, g, numerics):
    """What ModelOpt stores as _amax: fl32(g * c_k)."""
    return (F32(g) * candidates(numerics)[kb]).astype(F32)


# --------------------------------------------------------------------------------------
# Groups
# --------------------------------------------------------------------------------------

def pre_sweep_key(module):
    for i, pat in enumerate(SHARED_PATTERNS):
        m = pat.fullmatch(module)
        if m:
            return (i, m.group(1))
    return None


def sweep_globals(quantized, own):
    """g per module: the max over its SHARED_PATTERNS group (of 2 or more), else its own."""
    groups = {}
    for mod in quantized:
        key = pre_sweep_key(mod)
        if key is not None:
            groups.setdefault(key, []).append(mod)
    g = {}
    for mod in quantized:
        key = pre_sweep_key(mod)
        members = groups.get(key, [mod]) if key is not None else [mod]
        g[mod] = F32(max(own[m] for m in members)) if len(members) > 1 else F32(own[mod])
    return g


# --------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------

def load_model(model_dir, policy):
    with open(os.path.join(model_dir, "config.json")) as f:
        config = json.load(f)
    tensors = ref.load_checkpoint(model_dir)
    plan = ref.classify(config, tensors, policy)
    return tensors, plan


def cmd_calib(args):
    import h5py
    tensors, plan = load_model(args.model, args.quantize)
    quantized = sorted(plan.quantized)
    weights = {m: tensors[m + ".weight"].to_f32(m) for m in quantized}
    own = {m: F32(np.abs(w).max()) for m, w in weights.items()}
    g = sweep_globals(quantized, own)
    with h5py.File(args.out, "w") as out:
        if args.calib:
            with h5py.File(args.calib, "r") as src:
                def copy(name, obj):
                    if isinstance(obj, h5py.Dataset) and "/weight_quantizer/" not in "/" + name:
                        out.create_dataset(name, data=obj[()], track_times=False)
                src.visititems(copy)
        for m in quantized:
            kb = sweep(weights[m], g[m], args.numerics)
            path = m.replace(".", "/") + "/weight_quantizer/"
            out.create_dataset(path + "_amax", data=block_amax(kb, g[m], args.numerics),
                               track_times=False)
            out.create_dataset(path + "_global_amax", data=np.array(g[m], F32),
                               track_times=False)
    print("mse_ref: %d modules swept (%s) -> %s" % (len(quantized), args.numerics, args.out))
    return 0


def _stress_blocks(rng, g):
    """Blocks with elements exactly at s_k * t for the E2M1 thresholds t of some candidate,
    one ulp either side, mixed with noise; equal-magnitude blocks (ties); sparse blocks."""
    s = scales(g, "gpu")
    out = []
    for _ in range(16):
        k = rng.integers(0, N_CAND)
        t = rng.choice([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0], size=BLOCK).astype(F32)
        x = (t * s[k]).astype(F32)
        nudge = rng.integers(-1, 2, size=BLOCK)
        x = from_bits(bits(x).astype(np.int64) + nudge).astype(F32)
        noise = rng.random(BLOCK) < 0.3
        x = np.where(noise, (rng.standard_normal(BLOCK) * s[k] * 2).astype(F32), x)
        out.append(np.minimum(np.abs(x), F32(g)) * rng.choice([-1, 1], size=BLOCK))
    for _ in range(4):
        v = F32(g) * F32(rng.uniform(0.01, 1.0))
        out.append(np.full(BLOCK, v, F32) * rng.choice([-1, 1], size=BLOCK))
    for _ in range(8):
        x = np.zeros(BLOCK, F32)
        idx = rng.choice(BLOCK, size=rng.integers(1, 4), replace=False)
        x[idx] = (rng.standard_normal(idx.size) * g / 3).astype(F32)
        out.append(np.clip(x, -g, g))
    out.append(np.zeros(BLOCK, F32))
    out.append(np.full(BLOCK, F32(1e-9) * F32(g), F32))
    return np.array(out, F32)


def _case(numerics, g, block, k):
    return "%s %08x %d %s" % (numerics, int(bits(g)), int(k),
                              " ".join("%08x" % int(x) for x in bits(block)))


def cmd_vectors(args):
    rng = np.random.default_rng(args.seed)
    gs = [F32(0.0898), F32(0.0731), F32(1.0), F32(3.0e-3), F32(448.0), F32(2.0 ** -100),
          F32(1e-38), F32(3e-41), F32(2.0 ** 120), F32(3.0e38)]
    gs += [F32(x) for x in 10.0 ** rng.uniform(-6, 4, size=2)]
    cases = []
    for g in gs:
        blocks = _stress_blocks(rng, g) if g > 1e-30 and g < 1e30 else \
            np.clip(rng.standard_normal((8, BLOCK)) * F64(g) / 3, -F64(g), F64(g)).astype(F32)
        for numerics in ("gpu", "cpu"):
            kb = sweep(blocks, g, numerics)
            cases += [_case(numerics, g, b, k) for b, k in zip(blocks, kb)]
    zero_g = (rng.standard_normal((4, BLOCK)) * 0.01).astype(F32)
    for numerics in ("gpu", "cpu"):
        cases += [_case(numerics, F32(0.0), b, k)
                  for b, k in zip(zero_g, sweep(zero_g, F32(0.0), numerics))]
    doc = {"description": "ModelOpt NVFP4 MSE FP8-scale sweep: the candidate k (FP8 code k+1) "
                          "chosen for a 16-element block, from tests/mse_ref.py (MSE.md). Each "
                          "case: numerics, g, k, then the 16 weights; g and the weights are "
                          "float32 bit patterns in hex.",
           "rcp_table_sha256": TABLE_SHA256, "seed": args.seed, "cases": cases}
    with open(args.out, "w") as f:
        json.dump(doc, f, indent=0, separators=(",", ":"))
        f.write("\n")
    del doc
    print("mse_ref: %d cases -> %s" % (len(cases), args.out))
    return 0


def _blocks_err(w, codes, scales_, ws2):
    """Per-block sum of squared errors of a dequantized NVFP4 weight (NUMERICS.md)."""
    rows, cols = w.shape
    lo, hi = codes & 0xF, codes >> 4
    c = np.stack([lo, hi], axis=-1).reshape(rows, cols)
    mag = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6], F32)[c & 7]
    val = np.where(c & 8, -mag, mag).astype(F32)
    s = np.repeat(_e4m3_values(scales_), BLOCK, axis=1)
    what = ((val * s).astype(F32) * F32(ws2)).astype(F32)
    d = (w.astype(F64) - what.astype(F64)) ** 2
    return d.reshape(rows, cols // BLOCK, BLOCK).sum(axis=2)


def _e4m3_values(codes):
    c = codes.astype(np.int64)
    exp, man = (c >> 3) & 0xF, c & 7
    return np.where(exp == 0, man * 2.0 ** -9, (8 + man) * 2.0 ** (exp - 7 - 3)).astype(F32)


def cmd_gain(args):
    tensors, plan = load_model(args.model, args.quantize)
    a, b = ref.load_checkpoint(args.max), ref.load_checkpoint(args.mse)
    worse, blocks, sum_max, sum_mse, skipped, skipped_worse = 0, 0, 0.0, 0.0, 0, 0
    own = {n: F32(np.abs(tensors[n + ".weight"].to_f32(n)).max()) for n in plan.quantized}
    g_sweeps = sweep_globals(sorted(plan.quantized), own)
    for m in sorted(plan.quantized):
        w = tensors[m + ".weight"].to_f32(m)
        rows, cols = w.shape

        def err(ck):
            codes = np.frombuffer(ck[m + ".weight"].data, np.uint8).reshape(rows, cols // 2)
            sc = np.frombuffer(ck[m + ".weight_scale"].data, np.uint8).reshape(rows, -1)
            ws2 = np.frombuffer(ck[m + ".weight_scale_2"].data, "<f4")[0]
            return _blocks_err(w, codes, sc, ws2), ws2
        e_max, ws2_max = err(a)
        e_mse, ws2_mse = err(b)
        group = [n for n in plan.groups[m] if n in plan.quantized]
        g_export, g_sweep = F32(max(own[n] for n in group)), g_sweeps[m]
        sum_max += e_max.sum()
        sum_mse += e_mse.sum()
        if g_export != g_sweep:
            skipped += 1   # re-encoded against another global amax after the sweep (MLA)
            skipped_worse += int((e_mse > e_max).sum())
            continue
        bad = e_mse > e_max
        blocks += bad.size
        if bad.any():
            worse += int(bad.sum())
            r, c = np.argwhere(bad)[0]
            print("gain: %s block (%d, %d): swept %.9g > max %.9g"
                  % (m, r, c, e_mse[r, c], e_max[r, c]))
    print("gain: %d blocks compared, %d worse; squared error max %.6g, mse %.6g (%.2f%% lower); "
          "%d modules re-encoded after the sweep not compared (%d of their blocks worse)"
          % (blocks, worse, sum_max, sum_mse, 100.0 * (1 - sum_mse / sum_max), skipped,
             skipped_worse))
    return 1 if worse else 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("calib")
    c.add_argument("--model", required=True)
    c.add_argument("--calib")
    c.add_argument("--out", required=True)
    c.add_argument("--numerics", choices=("gpu", "cpu"), default="gpu")
    c.add_argument("--quantize", choices=("all", "mlp", "experts"), default="all")
    v = sub.add_parser("vectors")
    v.add_argument("--out", required=True)
    v.add_argument("--seed", type=int, default=12)
    g = sub.add_parser("gain")
    g.add_argument("--model", required=True)
    g.add_argument("--max", required=True)
    g.add_argument("--mse", required=True)
    g.add_argument("--quantize", choices=("all", "mlp", "experts"), default="all")
    args = ap.parse_args(argv)
    return {"calib": cmd_calib, "vectors": cmd_vectors, "gain": cmd_gain}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
