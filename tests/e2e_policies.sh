#!/usr/bin/env bash
# --quantize mlp|experts, --exclude, --weight-only and --kv-cache none, each equal to the numpy
# reference and accepted by verify.
source "$(dirname "$0")/lib.sh"
W=$(work_dir policies)

case_ok() { # case_ok FAMILY NAME ARGS...: export, compare with the reference, verify
    local fam=$1 name=$2
    shift 2
    local out="$W/$fam-$name"
    nx 2 export --quiet --model "$W/$fam" --calib "$W/$fam.h5" --output "$out" "$@" &&
        "$NX_PYTHON" "$NX_TESTS/nvfp4_ref.py" compare --model "$W/$fam" --calib "$W/$fam.h5" \
            --output "$out" "$@" &&
        "$NX_BIN" verify "$out" --model "$W/$fam" >/dev/null
}

for fam in qwen3moe deepseek mixtral; do
    gen "$fam" "$W"
    check "$fam --quantize mlp" case_ok "$fam" mlp --quantize mlp
    check "$fam --quantize experts" case_ok "$fam" experts --quantize experts
    check "$fam --weight-only" case_ok "$fam" wo --weight-only
    check "$fam --kv-cache none" case_ok "$fam" nokv --kv-cache none
    check "$fam --numerics cpu --quantize experts" case_ok "$fam" cpu-exp --numerics cpu \
        --quantize experts
done
# An exclusion that hits one member spreads to its fused group and to its whole MoE layer.
check "qwen3moe --exclude one k_proj and one expert" case_ok qwen3moe excl \
    --exclude 'model.layers.1.self_attn.k_proj' --exclude '*.layers.2.mlp.experts.3.up_proj'
check "deepseek --exclude a whole layer" case_ok deepseek excl --exclude 'model.layers.1.*'
check "mixtral --exclude w2 everywhere" case_ok mixtral excl --exclude '*.w2'
check "qwen3moe weight-only without calibration" \
    nx 1 export --quiet --model "$W/qwen3moe" --output "$W/wo-nocalib" --weight-only
check "weight-only without calibration equals reference" \
    "$NX_PYTHON" "$NX_TESTS/nvfp4_ref.py" compare --model "$W/qwen3moe" --output "$W/wo-nocalib" \
    --weight-only
check "weight-only without calibration: quant_algo W4A16_NVFP4" \
    grep -q '"W4A16_NVFP4"' "$W/wo-nocalib/hf_quant_config.json"
finish
