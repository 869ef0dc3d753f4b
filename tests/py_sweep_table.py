#!/usr/bin/python3
"""The shipped MUFU.RCP table (data/rcp_delta_sm90.i8.gz) is the one MSE.md describes, and the
sweep vectors (tests/data/sweep_vectors.json) are what tests/mse_ref.py computes today."""

import gzip
import hashlib
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import mse_ref  # noqa: E402

RESULTS = {"passed": 0, "failed": 0}


def check(name, cond, detail=""):
    RESULTS["passed" if cond else "failed"] += 1
    print("%s %s %s" % ("ok  " if cond else "FAIL", name, detail))


def test_table():
    with gzip.open(mse_ref.TABLE, "rb") as f:
        raw = f.read()
    check("table: 2^23 values", len(raw) == 1 << 23, str(len(raw)))
    check("table: SHA-256 of MSE.md Appendix B",
          hashlib.sha256(raw).hexdigest() == mse_ref.TABLE_SHA256)
    d = np.frombuffer(raw, np.int8)
    values, counts = np.unique(d, return_counts=True)
    check("table: counts -1/0/+1 of MSE.md", dict(zip(values.tolist(), counts.tolist())) ==
          {-1: 374723, 0: 7280086, 1: 733799})
    x = (np.arange(1 << 23, dtype=np.uint32) + np.uint32(0x3F800000)).view(np.float32)
    rn = (np.float32(1.0) / x).astype(np.float32)
    rcp = (rn.view(np.int32) + d.astype(np.int32)).view(np.float32)
    prod = x.astype(np.float64) * rn.astype(np.float64)        # exact
    up, down = d > 0, d < 0
    check("table: RCP is RD or RU of 1/x", bool(np.all(prod[up] < 1) and np.all(prod[down] > 1)))
    check("table: RCP never increases with x", bool(np.all(np.diff(rcp) <= 0)) and rcp[-1] >= 0.5)


def test_vectors():
    path = os.path.join(HERE, "data", "sweep_vectors.json")
    with open(path) as f:
        committed = json.load(f)
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "v.json")
        subprocess.run([sys.executable, os.path.join(HERE, "mse_ref.py"), "vectors", "--out", out,
                        "--seed", str(committed["seed"])], check=True, stdout=subprocess.DEVNULL)
        with open(out) as f:
            fresh = json.load(f)
    check("vectors: reproduced by mse_ref.py", fresh == committed,
          "regenerate with: tests/mse_ref.py vectors --out tests/data/sweep_vectors.json")
    zero = [c for c in committed["cases"] if c.split()[3:] == ["00000000"] * 16]
    check("vectors: zero blocks choose k = 0", zero and all(c.split()[2] == "0" for c in zero))


def test_fma():
    f32 = np.float32
    a, b = f32(1 + 2.0 ** -12), f32(1 + 2.0 ** -12)   # product 1 + 2^-11 + 2^-24
    check("fma32: one rounding", mse_ref.fma32(a, b, f32(-1.0)) == f32(2.0 ** -11 + 2.0 ** -24))
    # a*b = 1 + 2^-11 + 2^-24 is halfway between two float32; +-2^-80 vanishes in float64 but
    # decides the rounding
    up, down = f32(1 + 2.0 ** -11 + 2.0 ** -23), f32(1 + 2.0 ** -11)
    check("fma32: halfway in float64, above", mse_ref.fma32(a, b, f32(2.0 ** -80)) == up)
    check("fma32: halfway in float64, below", mse_ref.fma32(a, b, f32(-2.0 ** -80)) == down)


def main():
    test_table()
    test_vectors()
    test_fma()
    print("%d passed, %d failed" % (RESULTS["passed"], RESULTS["failed"]))
    return 1 if RESULTS["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
