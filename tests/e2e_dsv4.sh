#!/usr/bin/env bash
# DeepSeek-V4 as released (tests/gen_dsv4.py: FP8 with E8M0 .scale, MXFP4 routed experts, hash and
# scored layers, an MTP block, three shards), in the two-step workflow: ptq.py's rank dumps ->
# launch/modelopt_amax_to_h5.py -> export. For the default re-quantization (numerics cpu, the
# script's default device, and gpu) and --cast-mxfp4, on 1 and 3 ranks: every file of the output
# equals what ModelOpt's quantize_to_nvfp4.py writes, recomputed by tests/nvfp4_ref.py dsv4
# (shards, index, both configs, ancillary files), trees are identical across rank counts, verify
# (also --model, also under mpirun) is clean and the cast prints its lossless count. Bad inputs
# are refused with exit 2 naming the tensor and leave nothing behind.
source "$(dirname "$0")/lib.sh"
W=$(work_dir dsv4)
M="$W/release"
DUMPS="$W/amax"
CAL="$W/calib.h5"

"$NX_PYTHON" "$NX_TESTS/gen_dsv4.py" small --out "$M" --calib "$W/generated.h5" --dumps "$DUMPS" \
    --mp 2
before=$(tree_sums "$M")

bridge_ok() { # the bridge's HDF5 from the rank dumps holds the generator's statistics
    "$NX_PYTHON" "$NX_TESTS/../launch/modelopt_amax_to_h5.py" "$DUMPS" "$CAL" &&
    "$NX_PYTHON" - "$W/generated.h5" "$CAL" <<'EOF'
import sys
import h5py
import numpy as np

def ds(path):
    out = {}

    def visit(name, obj):  # returns None: visititems stops at anything else
        if isinstance(obj, h5py.Dataset):
            out[name] = obj[()]
    with h5py.File(path, "r") as f:
        f.visititems(visit)
    return out

a, b = ds(sys.argv[1]), ds(sys.argv[2])
same = len(a) == 90 and sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)
print("bridge: %d datasets, %s" % (len(b), "equal to the generator's" if same else "DIFFERENT"))
sys.exit(0 if same else 1)
EOF
}
check "bridge: rank dumps (torch-free) -> calibration HDF5" bridge_ok

same_tree() { diff <(tree_sums "$1") <(tree_sums "$2"); }
ref() { # ref OUT ARGS...: the numpy reference of ModelOpt's script, every file
    local out=$1
    shift
    "$NX_PYTHON" "$NX_TESTS/nvfp4_ref.py" dsv4 --model "$M" --calib "$CAL" --output "$out" "$@"
}
export_v4() { # export_v4 NP OUT ARGS...
    local np=$1 out=$2
    shift 2
    nx "$np" export --model "$M" --calib "$CAL" --output "$out" --threads 2 "$@" 2>"$out.log"
}

for mode in default cast; do
    args=()
    [ "$mode" = cast ] && args=(--cast-mxfp4)
    for np in 1 3; do
        out="$W/$mode-np$np"
        check "$mode np=$np export" export_v4 "$np" "$out" "${args[@]}"
        check "$mode np=$np verify" "$NX_BIN" verify "$out"
    done
    check "$mode: np=1 and np=3 identical" same_tree "$W/$mode-np1" "$W/$mode-np3"
    check "$mode: every file as ModelOpt's script writes it (numpy reference)" \
        ref "$W/$mode-np3" ${args:+--cast}
    check "$mode: verify --model the release" "$NX_BIN" verify "$W/$mode-np1" --model "$M"
done
check "cast: summary prints the lossless blocks" \
    grep -q '\[cast\] lossless MXFP4->NVFP4 blocks: 28798/28800 (99.9931%)' "$W/cast-np1.log"
check "cast: ws2 and block scales from the E8M0 bytes, not the calibration" \
    bash -c '! cmp -s "$1/model-00002-of-00003.safetensors" "$2/model-00002-of-00003.safetensors"' \
    _ "$W/cast-np1" "$W/default-np1"
check "verify --model under mpirun -np 2" nx 2 verify "$W/cast-np3" --model "$M"

# --numerics gpu: the script run with --device cuda (weight_scale_2 by reciprocal multiply;
# input_scale stays CPU arithmetic).
check "gpu numerics np=2 export" export_v4 2 "$W/gpu" --numerics gpu
check "gpu numerics: equals the reference" ref "$W/gpu" --numerics gpu
check "gpu numerics: differs from cpu somewhere" \
    bash -c '! diff -rq "$1" "$2" >/dev/null' _ "$W/gpu" "$W/default-np1"

# A layer left out: its experts keep their MXFP4 weights and scales, quantized_layers lacks it.
check "exclude a MoE layer: export" export_v4 2 "$W/excl" --exclude 'layers.4.ffn.experts.0.w2'
check "exclude a MoE layer: verify --model" "$NX_BIN" verify "$W/excl" --model "$M"
check "exclude a MoE layer: layer 4 not in quantized_layers, its experts MXFP4" \
    "$NX_PYTHON" - "$W/excl" <<'EOF'
import json, os, sys
sys.path.insert(0, os.environ["NX_TESTS"])
from nvfp4_ref import load_checkpoint
out = sys.argv[1]
hq = json.load(open(os.path.join(out, "hf_quant_config.json")))["quantization"]
t = load_checkpoint(out)
ok = sorted(hq["quantized_layers"]) == ["layers.%d.ffn.experts" % i for i in range(4)]
ok &= all(t["layers.4.ffn.experts.%d.%s.weight" % (e, w)].dtype == "I8" and
          "layers.4.ffn.experts.%d.%s.scale" % (e, w) in t for e in range(4) for w in ("w1", "w2", "w3"))
sys.exit(0 if ok else 1)
EOF

# verify's MIXED_PRECISION rules find what an engine would trip on (exit 1, the rule named).
plant() { # plant CASE RULE NAME: a copy of the cast output with one defect; verify names it
    local d="$W/planted-$1" rc=0
    rm -rf "$d"
    cp -r "$W/cast-np1" "$d"
    "$NX_PYTHON" - "$1" "$d" <<'EOF'
import json, os, sys
sys.path.insert(0, os.environ["NX_TESTS"])
from gen_checkpoint import write_safetensors
from nvfp4_ref import read_safetensors
case, d = sys.argv[1:]

def edit(name, fn):
    path = os.path.join(d, name)
    doc = json.load(open(path))
    fn(doc)
    json.dump(doc, open(path, "w"), indent=2)

def layers(doc):
    return doc.get("quantization", doc.get("quantization_config"))["quantized_layers"]

if case == "no-moe-algo":
    edit("config.json", lambda c: c["quantization_config"].pop("moe_quant_algo"))
elif case == "layer-unlisted":
    edit("config.json", lambda c: layers(c).pop("layers.2.ffn.experts"))
    edit("hf_quant_config.json", lambda c: layers(c).pop("layers.2.ffn.experts"))
elif case == "layers-differ":
    edit("hf_quant_config.json", lambda c: layers(c).pop("layers.0.ffn.experts"))
elif case == "scale-f32":
    index = json.load(open(os.path.join(d, "model.safetensors.index.json")))
    shard = os.path.join(d, index["weight_map"]["layers.0.attn.wkv.scale"])
    tensors, meta = read_safetensors(shard)
    tensors = {n: (t.dtype, t.shape, t.data) for n, t in tensors.items()}
    tensors["layers.0.attn.wkv.scale"] = ("F32", [1, 2], bytes(8))
    write_safetensors(shard, tensors, meta)
EOF
    "$NX_BIN" verify "$d" >"$d.out" 2>&1 || rc=$?
    head -3 "$d.out"
    [ "$rc" -eq 1 ] && grep -q "^$2 $3" "$d.out"
}
check "verify flags: quant_method fp8 without moe_quant_algo" plant no-moe-algo C3 config.json
check "verify flags: quantized experts no quantized_layers entry covers" \
    plant layer-unlisted E1 layers.2.ffn.experts.0.w1
check "verify flags: quantized_layers differ between the files" plant layers-differ C1 config.json
check "verify flags: an FP8 .scale that is not E8M0" plant scale-f32 T4 layers.0.attn.wkv.scale

plan_ok() {
    local p="$W/plan.txt"
    "$NX_BIN" plan --model "$M" --calib "$CAL" --ranks 4 >"$p" 2>/dev/null &&
        grep -q "^output: 484 tensors in 3 shards$" "$p" &&
        grep -q "^  model-00003-of-00003.safetensors  " "$p" &&
        grep -q "^DeepSeek-V4: 5 main MoE layers, 60 routed expert projections to NVFP4 (20 experts" "$p" &&
        grep -q "^  rank 3: " "$p"
}
check "plan: source shards, experts, bytes per rank" plan_ok

# Refusals: exit 2, one error line naming the tensor (or option), nothing left behind.
make_bad() { # make_bad CASE DIR: a copy of the release with one defect
    rm -rf "$2"
    cp -r "$M" "$2"
    "$NX_PYTHON" - "$1" "$2" <<'EOF'
import os, sys
sys.path.insert(0, os.environ["NX_TESTS"])
from gen_checkpoint import rewrite_tensor
case, d = sys.argv[1:]

def rewrite(name, new):  # new: (dtype, shape, bytes), or None to delete the tensor
    rewrite_tensor(d, name, new)

if case == "scale-shape":
    rewrite("layers.3.ffn.experts.1.w2.scale", ("F8_E8M0", [160, 2], bytes(320)))
elif case == "expert-dtype":
    rewrite("layers.1.ffn.experts.0.w3.weight", ("F16", [96, 80], bytes(96 * 80 * 2)))
elif case == "missing-scale":
    rewrite("layers.2.ffn.experts.3.w1.scale", None)
elif case == "fp8-scale-shape":
    rewrite("layers.0.attn.wq_a.scale", ("F8_E8M0", [1, 1], bytes(1)))
EOF
}
bad() { # bad CASE EXPECT
    make_bad "$1" "$W/bad-$1"
    refused 2 "$W/bad-$1" "$CAL" "$2" "$W/bad-$1-out"
}
check "refused: MXFP4 .scale of the wrong shape" bad scale-shape layers.3.ffn.experts.1.w2.scale
check "refused: expert weight neither I8 nor U8" bad expert-dtype layers.1.ffn.experts.0.w3.weight
check "refused: expert weight without its .scale" bad missing-scale layers.2.ffn.experts.3.w1.weight
check "refused: FP8 .scale of the wrong shape" bad fp8-scale-shape layers.0.attn.wq_a.scale
no_w2_input() { # a calibration with no input amax for any w2
    "$NX_PYTHON" - "$CAL" "$W/no-w2.h5" <<'EOF'
import sys
import h5py
with h5py.File(sys.argv[1], "r") as src, h5py.File(sys.argv[2], "w") as dst:
    def copy(name, obj):  # returns None: visititems stops at anything else
        if isinstance(obj, h5py.Dataset) and "/w2/input_quantizer" not in name:
            dst.create_dataset(name, data=obj[()])
    src.visititems(copy)
EOF
    refused 3 "$M" "$W/no-w2.h5" "w2 of the routed experts" "$W/no-w2-out"
}
check "refused: no calibrated input amax for a projection, named" no_w2_input
check "refused: --weight-only" refused 1 "$M" "$CAL" "--weight-only" "$W/wo-out" --weight-only
check "refused: --format compressed-tensors" refused 1 "$M" "$CAL" "compressed-tensors" \
    "$W/ct-out" --format compressed-tensors
check "refused: --weight-calib mse" refused 1 "$M" "$CAL" "--weight-calib mse" "$W/mse-out" \
    --weight-calib mse
gen qwen3moe "$W"
check "refused: --cast-mxfp4 on another family" refused 1 "$W/qwen3moe" "$W/qwen3moe.h5" \
    "--cast-mxfp4" "$W/other-out" --cast-mxfp4

check "inputs unmodified" test "$before" = "$(tree_sums "$M")"
finish
