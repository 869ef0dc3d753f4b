#!/usr/bin/env bash
# Sources in encodings nvfp4x does not decode (tests/make_unread_encodings.py: GPTQ, AWQ,
# bitsandbytes, MXFP4 and packed-integer tensor names; unknown or unsupported quant_method and
# compressed-tensors formats; FP8 weights and scales that do not pair up; INT4 pack-quantized
# with a wrong weight_shape, packed width or scale count, a missing scale or weight_shape,
# zero points, activation order, other bit widths, types or strategies, quantized
# activations, an ignored packed module) are refused before any output exists: exit 2, one
# error line naming the tensor or setting, no output, on 1 and 2 ranks (the INT4 cases on 1);
# plan refuses them the same way; verify on a source model says what it is.
source "$(dirname "$0")/lib.sh"
W=$(work_dir encodings)
gen deepseek "$W"
"$NX_PYTHON" "$NX_TESTS/make_unread_encodings.py" --good-model "$W/deepseek" \
    --good-calib "$W/deepseek.h5" --out "$W/cases" >/dev/null
before=$(tree_sums "$W/cases")

plan_refused() { # plan_refused MODEL EXPECT LOG
    local rc=0
    "$NX_BIN" plan --model "$1" --ranks 4 >/dev/null 2>"$3" </dev/null || rc=$?
    [ "$rc" -eq 2 ] && grep -qF -- "$2" "$3" && [ "$(grep -c 'error:' "$3")" -eq 1 ]
}

# Fields split on the unit separator: a tab is IFS whitespace, so an empty field (no extra
# arguments) would otherwise shift the expected message into it.
while IFS=$'\x1f' read -r name model calib _ expect; do
    nps="1 2"
    [[ $name == int4_* ]] && nps=1 # refused on rank 0 while cataloguing, as the others
    for np in $nps; do
        check "$name (np=$np)" refused "$np" "$model" "$calib" "$expect" "$W/out-$name-$np"
    done
    check "$name: plan refuses it too" plan_refused "$model" "$expect" "$W/plan-$name.err"
done < <(awk -F'\t' '{ printf "%s\x1f%s\x1f%s\x1f%s\x1f%s\n", $1, $2, $3, $4, $5 }' "$W/cases/cases.tsv")
check "inputs unmodified" test "$before" = "$(tree_sums "$W/cases")"

verify_says() { # verify_says DIR WORDS...: exit 2, one error line with every word, no rules
    local dir=$1 rc=0
    shift
    "$NX_BIN" verify "$dir" >"$W/verify.out" 2>"$W/verify.err" </dev/null || rc=$?
    head -c 400 "$W/verify.err"; echo
    [ "$rc" -eq 2 ] && [ ! -s "$W/verify.out" ] || return 1
    for word in "$@"; do grep -qF -- "$word" "$W/verify.err" || return 1; done
}
check "verify on a BF16 source names it a source" verify_says "$W/deepseek" \
    "not an NVFP4 checkpoint" "source model" "BF16/F16/F32" "nvfp4x export --model"
check "verify on an INT4 source names its encoding" verify_says \
    "$W/cases/int4_declared_none_stored/model" "not an NVFP4 checkpoint" "INT4 pack-quantized"
check "verify on a GPTQ-named source names the tensor" verify_says "$W/cases/gptq_names/model" \
    "not an NVFP4 checkpoint" "model.layers.1.self_attn.o_proj.g_idx" "GPTQ"
finish
