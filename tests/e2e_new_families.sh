#!/usr/bin/env bash
# The MoE families of 2025-26 (tests/gen_families.py: GLM-4.5, MiniMax-M2 from its FP8 release,
# DeepSeek-V3.2 from its FP8 release, Qwen3-Next, Kimi-K2-Thinking from its INT4 release, Ling):
# each export equals the numpy reference (which decodes FP8 and INT4 itself and applies
# ModelOpt's selection rules) in gpu and cpu modes, the trees of -np 1 and 3 are identical,
# verify --model is clean, the exclude list names what ModelOpt leaves out, and an encoded
# source exports byte-identically to its BF16 decoding. Kimi-K2-Thinking also with
# --quantize mlp (its usual recipe) and --format compressed-tensors.
source "$(dirname "$0")/lib.sh"
W=$(work_dir new_families)
same_tree() { diff <(tree_sums "$1") <(tree_sums "$2"); }
verify_clean() { "$NX_BIN" verify "$1" --model "$2" </dev/null >/dev/null; }
ref_equal() { # ref_equal FAMILY OUT ARGS...
    local fam=$1 out=$2
    shift 2
    "$NX_PYTHON" "$NX_TESTS/nvfp4_ref.py" compare --model "$W/$fam" --calib "$W/$fam.h5" \
        --output "$out" "$@"
}
export_ok() { # export_ok NP FAMILY OUT ARGS...
    local np=$1 fam=$2 out=$3
    shift 3
    nx "$np" export --quiet --model "$W/$fam" --calib "$W/$fam.h5" --output "$out" \
        --max-shard-size 200KB "$@"
}
excludes() { # excludes OUT PATTERN...: every pattern is an exclude_modules entry
    local out=$1
    shift
    for p in "$@"; do
        grep -qF "\"$p\"" "$out/hf_quant_config.json" || { echo "no $p"; return 1; }
    done
}
no_source_encoding() { ! grep -rlE 'weight_scale_inv|weight_shape|"pack-quantized"' "$1"; }

declare -A EXCL=(
    [glm45]="model.layers.1.mlp.gate model.layers.3* model.embed_tokens lm_head"
    [minimax_m2]="model.layers.0.block_sparse_moe.gate model.layers.1.block_sparse_moe.gate"
    [deepseek_v32]="model.layers.0.self_attn.indexer* model.layers.2.self_attn.indexer*
        model.layers.3*"
    [qwen3_next]="model.layers.0.linear_attn.in_proj_ba model.layers.0.linear_attn.conv1d
        model.layers.3.mlp.shared_expert_gate mtp*"
    [kimi_k2_thinking]="model.layers.1.mlp.gate model.embed_tokens lm_head"
    [ling]="model.word_embeddings model.layers.2.mlp.gate lm_head"
)
ENCODED="minimax_m2 deepseek_v32 kimi_k2_thinking"

for fam in glm45 minimax_m2 deepseek_v32 qwen3_next kimi_k2_thinking ling; do
    twin=""
    [[ " $ENCODED " == *" $fam "* ]] && twin="$W/$fam-bf16"
    "$NX_PYTHON" "$NX_TESTS/gen_families.py" --family "$fam" --out "$W/$fam" --calib "$W/$fam.h5" \
        ${twin:+--bf16-out "$twin"} >/dev/null
    before=$(tree_sums "$W/$fam")
    check "$fam plan" bash -c '"$1" plan --quiet --model "$2" --calib "$3" --ranks 3 |
        grep -q "^quantized linears: [1-9]"' _ "$NX_BIN" "$W/$fam" "$W/$fam.h5"
    for mode in gpu cpu; do
        for np in 1 3; do
            check "$fam/$mode np=$np export" export_ok "$np" "$fam" "$W/$fam-$mode-$np" \
                --numerics "$mode"
        done
        check "$fam/$mode np=3 identical to np=1" same_tree "$W/$fam-$mode-1" "$W/$fam-$mode-3"
        check "$fam/$mode equals numpy reference" ref_equal "$fam" "$W/$fam-$mode-1" \
            --numerics "$mode"
    done
    check "$fam verify --model clean" verify_clean "$W/$fam-gpu-1" "$W/$fam"
    # shellcheck disable=SC2086
    check "$fam exclude_modules" excludes "$W/$fam-gpu-1" ${EXCL[$fam]}
    if [ -n "$twin" ]; then
        check "$fam: BF16 twin export" nx 1 export --quiet --model "$twin" --calib "$W/$fam.h5" \
            --output "$W/$fam-twin" --max-shard-size 200KB
        check "$fam: identical to the export of its BF16 decoding" \
            same_tree "$W/$fam-gpu-1" "$W/$fam-twin"
        check "$fam: no source scales, weight shapes or packed weights written" \
            no_source_encoding "$W/$fam-gpu-3"
    fi
    check "$fam inputs unmodified" test "$before" = "$(tree_sums "$W/$fam")"
done

# A 2-D weight of a module nvfp4x does not know as a linear is left out with a warning naming
# it, copied, and listed; the reference (which knows the same linears) agrees.
odd_weight() {
    rm -rf "$W/ling-odd" && cp -r "$W/ling" "$W/ling-odd" &&
    "$NX_PYTHON" - "$W/ling-odd" <<'PY'
import json, os, sys
sys.path.insert(0, os.environ["NX_TESTS"])
from make_unread_encodings import edit_shard
model = sys.argv[1]
wm = json.load(open(os.path.join(model, "model.safetensors.index.json")))["weight_map"]
anchor = "model.layers.1.attention.dense.weight"
edit_shard(model, wm, anchor, add={"model.layers.1.attention.rel_table.weight": ("BF16", [8, 32])})
PY
}
unknown_warned() {
    odd_weight || return 1
    nx 1 export --model "$W/ling-odd" --calib "$W/ling.h5" --output "$W/ling-odd-out" \
        2>"$W/ling-odd.err" || return 1
    grep -q "warning: model.layers.1.attention.rel_table left unquantized: a 2-D weight of" \
        "$W/ling-odd.err" &&
        excludes "$W/ling-odd-out" model.layers.1.attention.rel_table &&
        "$NX_PYTHON" "$NX_TESTS/nvfp4_ref.py" compare --model "$W/ling-odd" --calib "$W/ling.h5" \
            --output "$W/ling-odd-out" && verify_clean "$W/ling-odd-out" "$W/ling-odd"
}
check "an unknown 2-D weight: warned, copied, listed" unknown_warned

# Kimi-K2-Thinking's seed scenario: --quantize mlp (attention stays BF16).
K=kimi_k2_thinking
source_named() { # verify on the INT4 source itself: exit 2, it says what the source is
    local rc=0
    "$NX_BIN" verify "$W/$K" >/dev/null 2>"$W/verify-source.err" </dev/null || rc=$?
    [ "$rc" -eq 2 ] && grep -q "source model, INT4 pack-quantized, group 32" "$W/verify-source.err"
}
check "verify on the INT4 source says what it is" source_named
for np in 1 3; do
    check "$K --quantize mlp np=$np" export_ok "$np" "$K" "$W/$K-mlp-$np" --quantize mlp
done
check "$K --quantize mlp: np=3 identical to np=1" same_tree "$W/$K-mlp-1" "$W/$K-mlp-3"
check "$K --quantize mlp equals numpy reference" ref_equal "$K" "$W/$K-mlp-1" --quantize mlp
check "$K --quantize mlp verify --model clean" verify_clean "$W/$K-mlp-3" "$W/$K"
check "$K --quantize mlp: attention listed" excludes "$W/$K-mlp-1" \
    "model.layers.0.self_attn*" "model.layers.2.self_attn*" "model.layers.1.mlp.gate"
check "$K --quantize mlp: twin export" nx 1 export --quiet --model "$W/$K-bf16" \
    --calib "$W/$K.h5" --output "$W/$K-mlp-twin" --max-shard-size 200KB --quantize mlp
check "$K --quantize mlp: identical to its BF16 decoding's" same_tree "$W/$K-mlp-1" "$W/$K-mlp-twin"
# An INT4 MoE layer left unquantized is written as its BF16 decoding, named X.weight.
check "$K --exclude one INT4 MoE layer np=2" export_ok 2 "$K" "$W/$K-excl" --quantize mlp \
    --exclude '*.layers.2.mlp.experts.*'
check "$K --exclude: equals numpy reference" ref_equal "$K" "$W/$K-excl" --quantize mlp \
    --exclude '*.layers.2.mlp.experts.*'
check "$K --exclude: verify --model clean" verify_clean "$W/$K-excl" "$W/$K"
check "$K --exclude: the layer's experts are BF16 X.weight" bash -c '
    grep -q "\"model.layers.2.mlp.experts.3.down_proj.weight\"" "$1/model.safetensors.index.json" &&
    ! grep -q "experts.3.down_proj.weight_packed\|layers.2.mlp.experts.3.down_proj.weight_scale" \
        "$1/model.safetensors.index.json"' _ "$W/$K-excl"
# compressed-tensors output: its weight_packed holds NVFP4 codes, not the source's INT4.
check "$K --format compressed-tensors np=3" export_ok 3 "$K" "$W/$K-ct" \
    --format compressed-tensors --quantize experts
check "$K --format compressed-tensors equals numpy reference" ref_equal "$K" "$W/$K-ct" \
    --format compressed-tensors --quantize experts
check "$K --format compressed-tensors verify --model clean" verify_clean "$W/$K-ct" "$W/$K"
finish
