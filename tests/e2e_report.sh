#!/usr/bin/env bash
# --report FILE.h5 (docs/report.md) and verify under MPI: on an exported Qwen3-MoE fixture,
# `verify --model --report` under mpirun -np 2 writes the documented file, every row of which
# numpy recomputes from the source and the exported tensors; -np 1, 2 and 3 give the same file
# and, on a checkpoint with planted defects, the same verify output. export --report is checked
# the same way once `nvfp4x --help` lists it among the export options.
source "$(dirname "$0")/lib.sh"
W=$(work_dir report)
gen qwen3moe "$W"
SRC="$W/qwen3moe"

report_ok() { # report_ok REPORT DST verify|export: schema, order, every row against numpy
    "$NX_PYTHON" - "$@" <<'EOF'
import os, re, sys
import h5py
import numpy as np
sys.path.insert(0, os.environ["NX_TESTS"])
from nvfp4_ref import load_checkpoint

report, dst_dir, made_by = sys.argv[1:4]
src, dst = load_checkpoint(os.environ["SRC"]), load_checkpoint(dst_dir)
E2M1 = np.array([0, .5, 1, 1.5, 2, 3, 4, 6, -0., -.5, -1, -1.5, -2, -3, -4, -6], np.float32)
SCHEMA = {"elements": "i8", "rel_rms": "f8", "max_abs_err": "f8", "snr_db": "f8",
          "sum_sq_err": "f8", "sum_sq_ref": "f8", "blocks": "i8", "saturated_blocks": "i8",
          "zero_blocks": "i8", "code_histogram": "i8", "weight_amax_from_weight": "u1",
          "input_amax_from_layer": "u1", "static_weight_amax": "u1"}
FLAGS = ("weight_amax_from_weight", "input_amax_from_layer", "static_weight_amax")


def e4m3(b):
    exp, man = (b >> 3) & 15, (b & 7).astype(np.float64)
    mag = np.where(exp == 0, man * 2.0 ** -9, (1 + man / 8) * 2.0 ** (exp - 7.0))
    mag = np.where((b & 0x7F) == 0x7F, np.nan, mag)
    return np.where(b & 0x80, -mag, mag).astype(np.float32)


def expected(m):
    w = src[m + ".weight"].to_f32()
    t, s = dst[m + ".weight"], dst[m + ".weight_scale"]
    packed = np.frombuffer(t.data, np.uint8).reshape(t.shape)
    codes = np.stack([packed & 15, packed >> 4], axis=-1).reshape(w.shape)
    scales = np.frombuffer(s.data, np.uint8).reshape(s.shape)
    ws2 = np.frombuffer(dst[m + ".weight_scale_2"].data, "<f4")[0]
    w_hat = (E2M1[codes] * np.repeat(e4m3(scales), 16, axis=1)) * ws2  # float32, in order
    err = w.astype(np.float64) - w_hat.astype(np.float64)
    e2, r2 = np.sum(err ** 2), np.sum(w.astype(np.float64) ** 2)
    return {"elements": w.size, "sum_sq_err": e2, "sum_sq_ref": r2, "rel_rms": np.sqrt(e2 / r2),
            "snr_db": 10 * np.log10(r2 / e2), "max_abs_err": np.max(np.abs(err)),
            "blocks": w.size // 16, "saturated_blocks": np.sum(scales == 0x7E),
            "zero_blocks": np.sum(np.all(w.reshape(-1, 16) == 0, axis=1)),
            "code_histogram": np.bincount(codes.ravel(), minlength=16)}


def natural(name):
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


with h5py.File(report, "r") as f:
    assert f.attrs["producer"] == "nvfp4x" and f.attrs["format_version"] == 1, dict(f.attrs)
    t = f["tensors"]
    names = list(t["module"].asstr()[:])
    quantized = [n[:-len(".weight_scale")] for n in dst if n.endswith(".weight_scale")]
    assert names == sorted(quantized, key=natural), "rows are not the quantized modules in order"
    for col, kind in SCHEMA.items():
        shape = (len(names), 16) if col == "code_histogram" else (len(names),)
        assert t[col].dtype == np.dtype(kind) and t[col].shape == shape, (col, t[col].dtype)
    cols = {c: t[c][:] for c in SCHEMA}
bad, interesting = [], 0
for i, m in enumerate(names):
    want = expected(m)
    interesting += want["saturated_blocks"] > 0 or want["zero_blocks"] > 0
    for c, v in want.items():
        exact = c == "max_abs_err" or cols[c].dtype.kind == "i"  # sums: other order in numpy
        if not (np.array_equal(cols[c][i], v) if exact else
                np.allclose(cols[c][i], v, rtol=1e-12, atol=0)):
            bad.append("%s %s: report %r, numpy %r" % (m, c, cols[c][i], v))
    allowed = (0,) if made_by == "verify" else (0, 1)  # verify cannot know the fallbacks
    bad += ["%s %s: %r" % (m, c, cols[c][i]) for c in FLAGS if cols[c][i] not in allowed]
print("%d rows, %d with saturated or all-zero blocks, %d mismatches" % (len(names), interesting,
                                                                       len(bad)))
print("\n".join(bad[:10]))
sys.exit(1 if bad or interesting == 0 else 0)
EOF
}

same_report() { # same_report A B: every dataset and attribute equal
    "$NX_PYTHON" - "$1" "$2" <<'EOF'
import sys
import h5py
a, b = (h5py.File(p, "r") for p in sys.argv[1:3])
assert dict(a.attrs) == dict(b.attrs)
assert sorted(a["tensors"]) == sorted(b["tensors"])
for k in a["tensors"]:
    x, y = a["tensors"][k], b["tensors"][k]
    assert x.dtype == y.dtype and x.shape == y.shape and x[()].tobytes() == y[()].tobytes(), k
EOF
}

plant_defects() { # plant_defects DIR: one defect per rule family, in modules of every layer
    "$NX_PYTHON" - "$1" <<'EOF'
import json, os, struct, sys
d = sys.argv[1]
where = json.load(open(os.path.join(d, "model.safetensors.index.json")))["weight_map"]


def patch(name, off, fn):
    with open(os.path.join(d, where[name]), "r+b") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        pos = 8 + n + json.loads(f.read(n))[name]["data_offsets"][0] + off
        f.seek(pos)
        b = f.read(1)[0]
        f.seek(pos)
        f.write(bytes([fn(b)]))


patch("model.layers.0.self_attn.o_proj.weight_scale", 3, lambda b: 0x7F)       # T3 (and X)
patch("model.layers.1.mlp.experts.1.gate_proj.weight_scale", 0, lambda b: b | 0x80)  # T3, X
patch("model.layers.1.mlp.experts.2.up_proj.input_scale", 0, lambda b: b ^ 1)  # M2, T5
patch("model.layers.2.mlp.experts.3.down_proj.weight", 5, lambda b: b ^ 0x11)  # X
patch("model.embed_tokens.weight", 10, lambda b: b ^ 0x40)                     # T2
patch("lm_head.weight", 0, lambda b: b ^ 0x01)                                 # T2
EOF
}

verify_to() { # verify_to FILE STATUS NP ARGS...: verify's stdout into FILE, expecting STATUS
    local file=$1 want=$2 np=$3 rc=0
    shift 3
    nx "$np" verify "$@" >"$file" 2>"$file.err" || rc=$?
    [ "$rc" -eq "$want" ] || { echo "exit $rc, expected $want"; cat "$file.err"; return 1; }
}

export SRC
check "export" nx 2 export --quiet --model "$SRC" --calib "$W/qwen3moe.h5" --output "$W/out" \
    --max-shard-size 150KB
for np in 1 2 3; do
    check "verify --report np=$np" verify_to "$W/clean$np.txt" 0 "$np" "$W/out" --model "$SRC" \
        --report "$W/r$np.h5"
done
check "np=2 report: schema, order, every row equals numpy" report_ok "$W/r2.h5" "$W/out" verify
check "np=1 and np=2 reports identical" same_report "$W/r1.h5" "$W/r2.h5"
check "np=3 and np=2 reports identical" same_report "$W/r3.h5" "$W/r2.h5"
check "no temporary file left" test ! -e "$W/r2.h5.tmp"
check "--report without --model: exit 2" verify_to "$W/nomodel.txt" 2 2 "$W/out" \
    --report "$W/x.h5"
check "unwritable report: exit 1" verify_to "$W/nodir.txt" 1 2 "$W/out" --model "$SRC" \
    --report "$W/missing/r.h5"
check "unwritable report: the path is named" grep -q "$W/missing/r.h5" "$W/nodir.txt.err"

cp -r "$W/out" "$W/bad"
plant_defects "$W/bad"
for np in 1 2 3; do
    check "defects np=$np: exit 1" verify_to "$W/bad$np.txt" 1 "$np" "$W/bad" --model "$SRC"
    check "defects np=$np --json: exit 1" verify_to "$W/bad$np.json" 1 "$np" "$W/bad" \
        --model "$SRC" --json
done
check "defects: every rule family reported" bash -c "for r in T3 M2 T5 X T2; do
    grep -q \"^\$r \" '$W/bad1.txt' || exit 1; done"
for np in 2 3; do
    check "defects: np=$np output identical to np=1" cmp "$W/bad1.txt" "$W/bad$np.txt"
    check "defects: np=$np JSON identical to np=1" cmp "$W/bad1.json" "$W/bad$np.json"
done
sed 's/^/       | /' "$W/bad1.txt"

# export --report: wired into the writer separately; checked once the help lists it.
if "$NX_BIN" --help | awk '/^verify options/ { exit } /^export/ { on = 1 } on' |
    grep -q -- '--report'; then
    check "export --report np=2" nx 2 export --quiet --model "$SRC" --calib "$W/qwen3moe.h5" \
        --output "$W/out-rep" --max-shard-size 150KB --report "$W/export.h5"
    check "export report: schema, order, every row equals numpy" report_ok "$W/export.h5" \
        "$W/out-rep" export
else
    echo "skip export --report (not among the export options of nvfp4x --help)"
fi
finish
