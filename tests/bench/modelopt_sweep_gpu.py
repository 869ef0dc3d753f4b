#!/usr/bin/env python3
"""Time ModelOpt's Triton MSE FP8-scale sweep on this machine's GPU, on the blocks that
bench_sweep --dump wrote, and compare its choices with nvfp4x's (gpu numerics).

  MODELOPT_SRC=/path/to/Model-Optimizer modelopt_sweep_gpu.py --dump FILE [--out RESULT.json]
                                                             [--reps 20]

MODELOPT_SRC is a checkout of ModelOpt (or its modelopt/ package directory). Only three files
of it are loaded, by path, as a package of their own: gemm/nvfp4_fp8_sweep.py (the kernel),
gemm/_fp8_scale_candidates.py and common/nvfp4_quant.py, found under
kernels/quantization/. Relative imports of other ModelOpt modules (the Hessian variant's
fp4_kernel) are replaced by None, so nothing else of ModelOpt, nor ModelOpt's dependencies,
is imported. Needs torch with CUDA, triton and numpy.

The dump (tests/bench/bench_sweep.c): b"NXSWEEP1", int64 n, uint32 bits of g, n x 16 BF16
weights, n candidate indices chosen by nvfp4x's fastest variant. The kernel's per-block amax
fl(g * c_k) is mapped back to k by equality with the candidates it was made from.
"""

import argparse
import glob
import json
import os
import re
import shutil
import sys
import tempfile
import time

import numpy as np

WANT = {"gemm/nvfp4_fp8_sweep.py", "gemm/_fp8_scale_candidates.py", "common/nvfp4_quant.py"}
IMPORT_RE = re.compile(r"^from (\.+)([\w.]*) import (\([^)]*\)|[^\n]+)$", re.M)


def kernel_dir(src):
    hits = glob.glob(os.path.join(src, "**", "kernels", "quantization", "gemm",
                                  "nvfp4_fp8_sweep.py"), recursive=True)
    if not hits:
        sys.exit("modelopt_sweep_gpu: no kernels/quantization/gemm/nvfp4_fp8_sweep.py under %s"
                 % src)
    return os.path.dirname(os.path.dirname(sorted(hits, key=len)[0]))


def stub_foreign_imports(text, here):
    """Keeps relative imports of the three copied files; any other becomes `name = None`."""
    def replace(m):
        dots, mod, names = m.group(1), m.group(2), m.group(3)
        base = here if len(dots) == 1 else ""
        target = ("%s/%s.py" % (base, mod.replace(".", "/"))).lstrip("/")
        if target in WANT:
            return m.group(0)
        names = [n.strip().split(" as ")[-1] for n in names.strip("()").split(",") if n.strip()]
        return "%s = None  # stubbed by modelopt_sweep_gpu.py" % " = ".join(names)
    return IMPORT_RE.sub(replace, text)


def load_kernel(src):
    kdir = kernel_dir(src)
    root = tempfile.mkdtemp(prefix="mo_sweep_")
    pkg = os.path.join(root, "mo_sweep")
    for sub in ("", "/common", "/gemm"):
        os.makedirs(pkg + sub, exist_ok=True)
        open(pkg + sub + "/__init__.py", "w").close()
    for rel in sorted(WANT):
        with open(os.path.join(kdir, rel)) as f:
            text = f.read()
        with open(os.path.join(pkg, rel), "w") as f:
            f.write(stub_foreign_imports(text, os.path.dirname(rel)))
    sys.path.insert(0, root)
    import importlib
    sweep = importlib.import_module("mo_sweep.gemm.nvfp4_fp8_sweep")
    return sweep, kdir, root


def read_dump(path):
    with open(path, "rb") as f:
        if f.read(8) != b"NXSWEEP1":
            sys.exit("modelopt_sweep_gpu: %s is not a bench_sweep --dump file" % path)
        n = int(np.frombuffer(f.read(8), "<i8")[0])
        g = np.frombuffer(f.read(4), "<u4").view("<f4")[0]
        w = np.frombuffer(f.read(2 * 16 * n), "<u2").reshape(n, 16)
        kb = np.frombuffer(f.read(n), np.uint8)
    return n, g, w, kb


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dump", required=True)
    ap.add_argument("--out")
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args()
    src = os.environ.get("MODELOPT_SRC")
    if not src:
        sys.exit("modelopt_sweep_gpu: set MODELOPT_SRC to a ModelOpt checkout")
    import torch
    import triton
    sweep, kdir, root = load_kernel(src)
    n, g, w, kb_c = read_dump(args.dump)
    dev = torch.device("cuda")
    x = torch.from_numpy(w.astype(np.int16)).view(torch.bfloat16).to(dev)
    g_t = torch.tensor([g], dtype=torch.float32, device=dev)
    r = {"gpu": torch.cuda.get_device_name(), "cc": list(torch.cuda.get_device_capability()),
         "torch": torch.__version__, "triton": triton.__version__, "kernel_dir": kdir,
         "blocks": n, "g": float(g)}
    t0 = time.time()
    best = sweep.nvfp4_fp8_scale_sweep(x, g_t)  # autotunes and compiles
    torch.cuda.synchronize()
    r["first_call_s"] = time.time() - t0
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(args.reps):
        best = sweep.nvfp4_fp8_scale_sweep(x, g_t)
    end.record()
    torch.cuda.synchronize()
    ms = start.elapsed_time(end) / args.reps
    r["kernel_ms"] = ms
    r["blocks_per_s"] = n / (ms / 1e3)
    cand = sweep.fp8_scale_candidates(dev).float()
    r1448 = np.array([0x3B124925], "<u4").view("<f4")[0]
    codes = np.arange(1, 127)
    fp8 = np.where(codes >> 3 == 0, (codes & 7) * 2.0 ** -9,
                   (8 + (codes & 7)) * 2.0 ** ((codes >> 3) - 10)).astype(np.float32)
    r["candidates_equal_v_times_fl_1_448"] = bool(
        np.array_equal(cand.cpu().numpy(), (fp8 * r1448).astype(np.float32)))
    amax_k = cand * g_t                                   # what the kernel stores per k
    k_gpu = (best[:, None] == amax_k[None, :]).int().argmax(1).cpu().numpy()
    r["unmatched_amax"] = int((~(best[:, None] == amax_k[None, :]).any(1)).sum().item())
    diff = np.nonzero(k_gpu != kb_c)[0]
    r["mismatches_vs_nvfp4x"] = int(diff.size)
    r["first_mismatches"] = [[int(i), int(k_gpu[i]), int(kb_c[i])] for i in diff[:10]]
    shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(r, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(r, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
