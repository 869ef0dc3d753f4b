#!/usr/bin/env bash
# Fused-expert families (tests/gen_fused.py): Llama-4 (VLM, Maverick-like, and text-only),
# gpt-oss in MXFP4 and Qwen3.5-MoE. Every output tensor equals the numpy reference (MXFP4
# decode, transposed fused quantization, the closed-form cast, the per-expert split) in gpu and
# cpu modes; trees are identical for -np 1, 2 and 3 with the fused tensors cut below the expert
# (NVFP4X_TEST_FUSED_PIECE_ELEMS) and without; verify --model is clean (also on 2 ranks);
# --cast-mxfp4 writes the MXFP4 nibbles and weight_scale_2 = 2^m exactly on an in-range layer
# and ModelOpt's fallback on a layer with blocks out of range; an MXFP4 expert left unquantized
# is its BF16 decode; --weight-calib mse sweeps Qwen3.5's split experts and refuses fused BMM
# experts (and --cast-mxfp4); an interrupted export of pieces resumes byte-identical.
source "$(dirname "$0")/lib.sh"
W=$(work_dir fused)
SMALL=(--max-shard-size 150KB --threads 1)
export NVFP4X_TEST_FUSED_PIECE_ELEMS # set per run below; mpirun passes the environment on

gen_fused() { # gen_fused FAMILY [ARGS...]: model in W/FAMILY, calibration in W/FAMILY.h5
    local fam=$1
    shift
    "$NX_PYTHON" "$NX_TESTS/gen_fused.py" --family "${fam%%-*}" --out "$W/$fam" \
        --calib "$W/$fam.h5" "$@" >/dev/null
}

ref_equal() { # ref_equal FAMILY OUT [REF ARGS...]
    local fam=$1 out=$2
    shift 2
    "$NX_PYTHON" "$NX_TESTS/nvfp4_ref.py" compare --model "$W/$fam" --calib "$W/$fam.h5" \
        --output "$out" "$@"
}

verify_clean() { # verify_clean NP FAMILY OUT
    nx "$1" verify "$3" --model "$W/$2"
}

same_tree() { diff <(tree_sums "$1") <(tree_sums "$2"); }

export_pieces() { # export_pieces NP ELEMS FAMILY OUT [ARGS...]: fused tensors cut in pieces
    local np=$1 elems=$2 fam=$3 out=$4
    shift 4
    NVFP4X_TEST_FUSED_PIECE_ELEMS=$elems nx "$np" export --quiet --model "$W/$fam" \
        --calib "$W/$fam.h5" --output "$out" "$@"
}

plan_shows_fused() { # the dry run names the fused tensors and their pieces
    local out
    out=$(NVFP4X_TEST_FUSED_PIECE_ELEMS=512 "$NX_BIN" plan --quiet --model "$W/$1" \
          --calib "$W/$1.h5" --ranks 3) &&
        grep -q '^fused experts exported fused: [1-9]' <<<"$out" &&
        grep -qE 'experts\.gate_up_proj .*-> NVFP4 \[E, in/2, out\]; [0-9]+ pieces \(row blocks' <<<"$out"
}

family_suite() { # family_suite NAME FAMILY [EXPORT ARGS...]: outputs W/NAME-*
    local name=$1 fam=$2
    shift 2
    local before
    before=$(tree_sums "$W/$fam"; sha256sum "$W/$fam.h5")
    for mode in gpu cpu; do
        check "$name/$mode export" export_pieces 1 0 "$fam" "$W/$name-$mode" --numerics "$mode" "$@"
        check "$name/$mode equals numpy reference" ref_equal "$fam" "$W/$name-$mode" --numerics "$mode" "$@"
        check "$name/$mode verify" verify_clean 1 "$fam" "$W/$name-$mode"
    done
    for np in 1 2 3; do
        check "$name np=$np export in pieces" export_pieces "$np" 700 "$fam" "$W/$name-np$np" "${SMALL[@]}" "$@"
    done
    for np in 2 3; do
        check "$name np=$np identical to np=1" same_tree "$W/$name-np1" "$W/$name-np$np"
    done
    check "$name np=3 pieces equal numpy reference" ref_equal "$fam" "$W/$name-np3" "$@"
    check "$name whole experts identical to pieces" export_pieces 2 0 "$fam" "$W/$name-whole" "${SMALL[@]}" "$@"
    check "$name whole experts tree" same_tree "$W/$name-np1" "$W/$name-whole"
    check "$name verify on 2 ranks" verify_clean 2 "$fam" "$W/$name-np3"
    check "$name inputs unmodified" test "$before" = "$(tree_sums "$W/$fam"; sha256sum "$W/$fam.h5")"
}

# The cast on an in-range layer: codes are the MXFP4 nibbles transposed (-0 as +0) and
# weight_scale_2 is 2^(k_max - 8) exactly.
cast_is_nibbles() { # cast_is_nibbles FAMILY OUT LAYER
    "$NX_PYTHON" - "$W/$1" "$2" "$3" <<'EOF'
import os, sys
import numpy as np
sys.path.insert(0, os.environ["NX_TESTS"])
from nvfp4_ref import load_checkpoint
src, out = load_checkpoint(sys.argv[1]), load_checkpoint(sys.argv[2])
bad = []
for proj in ("gate_up_proj", "down_proj"):
    p = "model.layers.%s.mlp.experts.%s" % (sys.argv[3], proj)
    blocks = np.frombuffer(src[p + "_blocks"].data, np.uint8).reshape(src[p + "_blocks"].shape)
    scales = np.frombuffer(src[p + "_scales"].data, np.uint8)
    e, rows = blocks.shape[:2]
    nib = blocks.reshape(e, rows, -1)
    lo, hi = nib & 0xF, nib >> 4
    want = (np.where(lo == 8, 0, lo) | (np.where(hi == 8, 0, hi) << 4)).astype(np.uint8)
    want = np.ascontiguousarray(want.transpose(0, 2, 1))
    got = out[p]
    if got.dtype != "U8" or got.shape != list(want.shape) or got.data != want.tobytes():
        bad.append("%s: codes are not the MXFP4 nibbles" % p)
    kmax = int(scales[scales > 0].max()) - 127
    ws2 = np.frombuffer(out[p + "_weight_scale_2"].data, "<f4")[0]
    if ws2 != np.float32(2.0 ** (kmax - 8)):
        bad.append("%s: weight_scale_2 %r is not 2^%d" % (p, ws2, kmax - 8))
    if ((scales > 0) & (scales < scales.max() - 17)).any():
        bad.append("%s: the layer has blocks out of range" % p)
print("\n".join(bad) or "codes are the nibbles, weight_scale_2 = 2^m")
sys.exit(1 if bad else 0)
EOF
}

not_nibbles() { ! cast_is_nibbles "$@" >/dev/null; }

lossless_reported() { # lossless_reported ERRFILE LOSSLESS TOTAL (from the reference)
    grep -q "cast-mxfp4: $2 of $3 MXFP4 blocks lossless" "$1"
}

ref_counts() { # the reference's lossless and total block counts
    "$NX_PYTHON" - "$W/$1" <<'EOF'
import os, sys
sys.path.insert(0, os.environ["NX_TESTS"])
from nvfp4_ref import reference_export
_, plan, _ = reference_export(sys.argv[1], None, weight_only=True, cast_mxfp4=True)
print(*plan.cast_counts)
EOF
}

# ---- Llama-4 (VLM, Maverick-like) and text-only (Scout-like) -------------------------------
gen_fused llama4
check "llama4 plan shows fused tensors and pieces" plan_shows_fused llama4
family_suite llama4 llama4
check "llama4 --quantize experts" export_pieces 2 700 llama4 "$W/llama4-experts" --quantize experts
check "llama4 --quantize experts equals reference" ref_equal llama4 "$W/llama4-experts" --quantize experts
check "llama4 experts excluded: copied" export_pieces 2 700 llama4 "$W/llama4-excl" --exclude '*experts*'
check "llama4 experts excluded equals reference" ref_equal llama4 "$W/llama4-excl" --exclude '*experts*'
check "llama4 experts excluded verify" verify_clean 1 llama4 "$W/llama4-excl"
owners_show_pieces() { # plan --owners names each piece's expert and input rows, on every rank
    NVFP4X_TEST_FUSED_PIECE_ELEMS=700 "$NX_BIN" plan --quiet --owners --model "$W/llama4" \
        --calib "$W/llama4.h5" --ranks 3 | grep -E '^  [0-2] .*experts\.gate_up_proj quantized piece [0-9]+ \(expert [0-9]+, input rows [0-9]+-[0-9]+\)' |
        awk '{ r[$1] = 1 } END { exit !(length(r) == 3) }'
}
check "llama4 plan --owners spreads gate_up pieces over 3 ranks" owners_show_pieces
check "llama4 --format compressed-tensors refused for fused experts" refused 1 "$W/llama4" \
    "$W/llama4.h5" "compressed-tensors has no layout for fused experts" "$W/llama4-ct" \
    --format compressed-tensors
gen_fused llama4text
check "llama4text export" export_pieces 2 700 llama4text "$W/llama4text-o" --weight-only
check "llama4text equals reference" ref_equal llama4text "$W/llama4text-o" --weight-only
check "llama4text verify" verify_clean 1 llama4text "$W/llama4text-o"

# ---- gpt-oss (MXFP4; layer 1 with blocks out of the cast's range) ---------------------------
gen_fused gptoss
check "gptoss zero-based shard names" test -f "$W/gptoss/model-00000-of-00002.safetensors"
check "gptoss plan shows fused tensors and pieces" plan_shows_fused gptoss
family_suite gptoss gptoss
family_suite gptoss-cast gptoss --cast-mxfp4
check "gptoss cast: layer 0 (in range) codes are the nibbles" cast_is_nibbles gptoss "$W/gptoss-cast-gpu" 0
check "gptoss cast: layer 1 has blocks out of range (fallback, checked by the reference)" \
    not_nibbles gptoss "$W/gptoss-cast-gpu" 1
counts=$(ref_counts gptoss)
NVFP4X_TEST_FUSED_PIECE_ELEMS=700 nx 3 export --model "$W/gptoss" --calib "$W/gptoss.h5" \
    --output "$W/gptoss-cast3" --cast-mxfp4 2>"$W/gptoss-cast3.err" >/dev/null || true
check "gptoss cast: lossless block count as the reference's (${counts% *} of ${counts#* })" \
    lossless_reported "$W/gptoss-cast3.err" ${counts% *} ${counts#* }
check "gptoss cast: not every block lossless" test "${counts% *}" -lt "${counts#* }"
check "gptoss experts left unquantized: BF16 decode" export_pieces 3 700 gptoss "$W/gptoss-excl" --exclude '*mlp.experts*'
check "gptoss BF16 decode equals reference" ref_equal gptoss "$W/gptoss-excl" --exclude '*mlp.experts*'
check "gptoss BF16 decode verify" verify_clean 1 gptoss "$W/gptoss-excl"
gen_fused gptoss-in --mxfp4-range in --seed 3
counts=$(ref_counts gptoss-in)
NVFP4X_TEST_FUSED_PIECE_ELEMS=0 nx 2 export --model "$W/gptoss-in" --calib "$W/gptoss-in.h5" \
    --output "$W/gptoss-in-cast" --cast-mxfp4 2>"$W/gptoss-in-cast.err" >/dev/null || true
check "gptoss in range: every block lossless" lossless_reported "$W/gptoss-in-cast.err" ${counts#* } ${counts#* }
for layer in 0 1 2; do
    check "gptoss in range: layer $layer codes are the nibbles" cast_is_nibbles gptoss-in "$W/gptoss-in-cast" $layer
done
check "gptoss in range: equals reference" ref_equal gptoss-in "$W/gptoss-in-cast" --cast-mxfp4

# ---- Qwen3.5-MoE (per-expert export of fused experts) ---------------------------------------
gen_fused qwen35
family_suite qwen35 qwen35

# ---- --weight-calib mse: split experts are swept like any linear, fused BMM experts refused --
check "qwen35 --weight-calib mse export" nx 2 export --quiet --model "$W/qwen35" \
    --calib "$W/qwen35.h5" --weight-calib mse --output "$W/qwen35-mse"
check "qwen35 --weight-calib mse verify --full clean" nx 1 verify "$W/qwen35-mse" \
    --model "$W/qwen35" --weight-calib mse --full
check "gptoss --weight-calib mse refused, naming the fused projection" refused 2 "$W/gptoss" \
    "$W/gptoss.h5" "model.layers.0.mlp.experts.down_proj is a fused-expert projection" \
    "$W/gptoss-mse" --weight-calib mse
check "--cast-mxfp4 with --weight-calib mse refused" refused 1 "$W/gptoss" "$W/gptoss.h5" \
    "--cast-mxfp4 and --weight-calib mse" "$W/gptoss-mse" --weight-calib mse --cast-mxfp4
check "gptoss --weight-calib mse with its experts excluded" nx 2 export --quiet \
    --model "$W/gptoss" --calib "$W/gptoss.h5" --weight-calib mse --exclude '*mlp.experts*' \
    --output "$W/gptoss-mse-excl"
check "gptoss --weight-calib mse, experts excluded: verify --full clean" nx 1 verify \
    "$W/gptoss-mse-excl" --model "$W/gptoss" --weight-calib mse --full

# ---- An interrupted export of pieces resumes byte-identical ---------------------------------
rc=0
NVFP4X_TEST_FUSED_PIECE_ELEMS=700 "$MPIEXEC" --oversubscribe -np 3 sh -c \
    'if [ "$OMPI_COMM_WORLD_RANK" = 1 ]; then ulimit -f 120; fi; exec "$0" "$@"' \
    "$NX_BIN" export --quiet --model "$W/llama4" --calib "$W/llama4.h5" --output "$W/llama4-lim" \
    "${SMALL[@]}" </dev/null 2>"$W/lim.err" || rc=$?
check "a write failure part way exits 1" test "$rc" -eq 1
check "--resume completes" export_pieces 3 700 llama4 "$W/llama4-lim" "${SMALL[@]}" --resume
check "resumed output identical to the uninterrupted run" same_tree "$W/llama4-np1" "$W/llama4-lim"
finish
