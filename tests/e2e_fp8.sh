#!/usr/bin/env bash
# FP8 block-scaled source (DeepSeek-V3 layout, tests/gen_fp8.py): the export of the FP8
# checkpoint equals, file for file and byte for byte, the export of its exact BF16
# dequantization, in both numerics modes, for -np 1 and 3, with a linear excluded by policy
# (written as that BF16) and with --format compressed-tensors; no weight_scale_inv is written;
# verify passes, also against the FP8 source itself (--model, on 1 and 2 ranks); the output
# equals the numpy reference computed from the BF16 twin.
source "$(dirname "$0")/lib.sh"
W=$(work_dir fp8)
F8="$W/fp8"
BF="$W/bf16"
CAL="$W/fp8.h5"
EXCL=model.layers.1.self_attn.o_proj

"$NX_PYTHON" "$NX_TESTS/gen_fp8.py" --family deepseek --out "$F8" --bf16-out "$BF" --calib "$CAL"
before=$(tree_sums "$F8"; tree_sums "$BF"; sha256sum "$CAL")

fixture_ok() { # the BF16 twin is bf16_rne(fl32(fp8 * scale_inv)), recomputed from the files
    "$NX_PYTHON" - "$F8" "$BF" <<'EOF'
import json, os, sys
import numpy as np
sys.path.insert(0, os.environ["NX_TESTS"])
from nvfp4_ref import E4M3_DECODE, load_checkpoint
f8_dir, bf_dir = sys.argv[1:]
f8, bf = load_checkpoint(f8_dir), load_checkpoint(bf_dir)
wmap = json.load(open(os.path.join(f8_dir, "model.safetensors.index.json")))["weight_map"]
bad, fp8_weights, elsewhere, grid2d, partial = [], 0, 0, 0, 0
for name, t in f8.items():
    if name.endswith(".weight_scale_inv"):
        w = f8.get(name[:-len("_scale_inv")])
        rows, cols = w.shape
        if t.dtype != "F32" or t.shape != [-(-rows // 128), -(-cols // 128)] or w.dtype != "F8_E4M3":
            bad.append("%s: %s %s beside %s %s" % (name, t.dtype, t.shape, w.dtype, w.shape))
        elsewhere += wmap[name] != wmap[name[:-len("_scale_inv")]]
        grid2d += t.shape[0] > 1 and t.shape[1] > 1
        partial += rows % 128 != 0 and cols % 128 != 0
        continue
    if name not in bf:
        bad.append("%s: not in the BF16 twin" % name)
        continue
    if t.dtype != "F8_E4M3":
        if (t.dtype, t.shape, t.data) != (bf[name].dtype, bf[name].shape, bf[name].data):
            bad.append("%s: differs from the BF16 twin" % name)
        continue
    fp8_weights += 1
    rows, cols = t.shape
    s = np.frombuffer(f8[name + "_scale_inv"].data, "<f4").reshape(-(-rows // 128), -1)
    s = np.repeat(np.repeat(s, 128, axis=0), 128, axis=1)[:rows, :cols]
    codes = np.frombuffer(t.data, np.uint8).reshape(rows, cols)
    prod = (E4M3_DECODE[codes] * s).astype(np.float32)
    u = prod.view(np.uint32).astype(np.uint64)
    want = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype("<u2")
    if bf[name].dtype != "BF16" or bf[name].data != want.tobytes():
        bad.append("%s: BF16 twin is not the dequantization" % name)
extra = sorted(set(bf) - set(f8))
bad += ["%s: only in the BF16 twin" % n for n in extra]
cfg8 = json.load(open(os.path.join(f8_dir, "config.json")))
cfg16 = json.load(open(os.path.join(bf_dir, "config.json")))
qc = cfg8.pop("quantization_config", None)
if qc is None or qc.get("quant_method") != "fp8" or qc.get("weight_block_size") != [128, 128]:
    bad.append("FP8 config.json: quantization_config %r" % (qc,))
if cfg8 != cfg16 or list(cfg8) != list(cfg16):
    bad.append("config.json of the twins differ beyond quantization_config")
for what, n in (("FP8 weights", fp8_weights), ("scales in another shard", elsewhere),
                ("weights of 2x2 or more tiles", grid2d), ("weights with a partial corner tile", partial)):
    if n == 0:
        bad.append("fixture has no %s" % what)
for b in bad[:20]:
    print("fixture: %s" % b)
print("fixture: %d FP8 weights, %d scales in another shard, %d weights >= 2x2 tiles, %d with "
      "a partial corner tile, %d problems" % (fp8_weights, elsewhere, grid2d, partial, len(bad)))
sys.exit(1 if bad else 0)
EOF
}

same_tree() { diff <(tree_sums "$1") <(tree_sums "$2"); }

no_scale_inv() { # nothing in the output names weight_scale_inv (headers, index, config)
    ! grep -rl weight_scale_inv "$1"
}

verify_clean() { "$NX_BIN" verify "$@"; } # verify_clean OUT [--model SRC]: exit 0

ref_equal() { # ref_equal OUT NUMERICS [ARGS...]: numpy reference computed from the BF16 twin
    local out=$1 mode=$2
    shift 2
    "$NX_PYTHON" "$NX_TESTS/nvfp4_ref.py" compare --model "$BF" --calib "$CAL" --output "$out" \
        --numerics "$mode" "$@"
}

bf16_copy() { # bf16_copy OUT MODULE: MODULE.weight is BF16, the twin's bytes, and unquantized
    "$NX_PYTHON" - "$BF" "$1" "$2" <<'EOF'
import os, sys
sys.path.insert(0, os.environ["NX_TESTS"])
from nvfp4_ref import load_checkpoint
src, out = load_checkpoint(sys.argv[1]), load_checkpoint(sys.argv[2])
mod = sys.argv[3]
want, got = src[mod + ".weight"], out.get(mod + ".weight")
problems = []
if got is None:
    problems.append("%s.weight missing" % mod)
elif (got.dtype, got.shape) != ("BF16", want.shape) or got.data != want.data:
    problems.append("%s.weight is %s %s, not the BF16 twin's bytes" % (mod, got.dtype, got.shape))
problems += ["%s present" % n for n in out if n.startswith(mod + ".") and n != mod + ".weight"]
for p in problems:
    print("bf16_copy: %s" % p)
sys.exit(1 if problems else 0)
EOF
}

check "fixture: BF16 twin is the exact dequantization of the FP8 checkpoint" fixture_ok

for mode in gpu cpu; do
    for np in 1 3; do
        a="$W/fp8-$mode-np$np"
        b="$W/bf16-$mode-np$np"
        # Small shards: on 3 ranks several ranks write into one file, and a scale's shard
        # (read by the weight's owner) is not the weight's.
        check "$mode np=$np export FP8" nx "$np" export --quiet --model "$F8" --calib "$CAL" \
            --output "$a" --numerics "$mode" --max-shard-size 150KB --threads 1
        check "$mode np=$np export BF16 twin" nx "$np" export --quiet --model "$BF" \
            --calib "$CAL" --output "$b" --numerics "$mode" --max-shard-size 150KB --threads 1
        check "$mode np=$np FP8 export byte-identical to BF16 export" same_tree "$a" "$b"
        check "$mode np=$np no weight_scale_inv in output" no_scale_inv "$a"
        check "$mode np=$np verify" verify_clean "$a"
        check "$mode np=$np verify --model FP8 source" verify_clean "$a" --model "$F8"
    done
    check "$mode np=1 identical to np=3" same_tree "$W/fp8-$mode-np1" "$W/fp8-$mode-np3"
    check "$mode equals numpy reference of the BF16 twin" ref_equal "$W/fp8-$mode-np3" "$mode"
done

# A linear excluded by policy: written as the BF16 dequantization (MTP-layer linears, never
# quantized, are written that way in every run above too).
check "exclude: export FP8" nx 2 export --quiet --model "$F8" --calib "$CAL" \
    --output "$W/fp8-excl" --exclude "$EXCL" --max-shard-size 150KB
check "exclude: export BF16 twin" nx 2 export --quiet --model "$BF" --calib "$CAL" \
    --output "$W/bf16-excl" --exclude "$EXCL" --max-shard-size 150KB
check "exclude: byte-identical" same_tree "$W/fp8-excl" "$W/bf16-excl"
check "exclude: $EXCL written as the BF16 twin's bytes" bf16_copy "$W/fp8-excl" "$EXCL"
check "exclude: MTP linear written as BF16" bf16_copy "$W/fp8-excl" \
    model.layers.3.self_attn.kv_b_proj
check "exclude: no weight_scale_inv" no_scale_inv "$W/fp8-excl"
check "exclude: equals numpy reference" ref_equal "$W/fp8-excl" gpu --exclude "$EXCL"
check "exclude: verify" verify_clean "$W/fp8-excl"
# $EXCL and the MTP linears are compared with the dequantization of their FP8 source.
check "exclude: verify --model FP8 source" verify_clean "$W/fp8-excl" --model "$F8"
check "exclude: verify --model FP8 source under mpirun -np 2" \
    nx 2 verify "$W/fp8-excl" --model "$F8"

# The other output format reads the same FP8 source the same way.
check "compressed-tensors: export FP8" nx 2 export --quiet --model "$F8" --calib "$CAL" \
    --output "$W/fp8-ct" --format compressed-tensors --max-shard-size 150KB
check "compressed-tensors: export BF16 twin" nx 2 export --quiet --model "$BF" --calib "$CAL" \
    --output "$W/bf16-ct" --format compressed-tensors --max-shard-size 150KB
check "compressed-tensors: byte-identical" same_tree "$W/fp8-ct" "$W/bf16-ct"
check "compressed-tensors: no weight_scale_inv" no_scale_inv "$W/fp8-ct"
check "compressed-tensors: verify --model FP8 source" verify_clean "$W/fp8-ct" --model "$F8"

# Broken FP8 sources are refused with exit 2, naming the tensor, leaving no output.
make_bad() { # make_bad CASE DIR: a copy of the FP8 checkpoint with one defect
    rm -rf "$2"
    cp -r "$F8" "$2"
    "$NX_PYTHON" - "$1" "$2" <<'EOF'
import json, os, sys
sys.path.insert(0, os.environ["NX_TESTS"])
from gen_checkpoint import rewrite_tensor
case, d = sys.argv[1:]

def rewrite(name, new):  # new: (dtype, shape, bytes), or None to delete the tensor
    rewrite_tensor(d, name, new)

if case == "missing-scale":
    rewrite("model.layers.1.self_attn.q_b_proj.weight_scale_inv", None)
elif case == "scale-shape":
    rewrite("model.layers.1.mlp.experts.0.gate_proj.weight_scale_inv", ("F32", [1, 1], bytes(4)))
elif case == "no-block-size":
    cfg = json.load(open(os.path.join(d, "config.json")))
    del cfg["quantization_config"]["weight_block_size"]
    json.dump(cfg, open(os.path.join(d, "config.json"), "w"), indent=2)
EOF
}

refused() { # refused CASE WORD: export fails with exit 2, names WORD, leaves nothing
    local d="$W/bad-$1" out="$W/bad-$1-out" rc=0 log
    make_bad "$1" "$d"
    log=$(nx 2 export --quiet --model "$d" --calib "$CAL" --output "$out" 2>&1) || rc=$?
    printf '%s\n' "$log" | head -5
    [ "$rc" -eq 2 ] && grep -q "$2" <<<"$log" && [ ! -e "$out" ] && [ ! -e "$out.nvfp4x-staging" ]
}
check "refused: FP8 weight without weight_scale_inv" refused missing-scale \
    model.layers.1.self_attn.q_b_proj.weight
check "refused: weight_scale_inv of the wrong shape" refused scale-shape \
    model.layers.1.mlp.experts.0.gate_proj.weight_scale_inv
check "refused: FP8 config without weight_block_size" refused no-block-size weight_block_size

check "inputs unmodified" test "$before" = "$(tree_sums "$F8"; tree_sums "$BF"; sha256sum "$CAL")"
finish
