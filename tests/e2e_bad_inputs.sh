#!/usr/bin/env bash
# Every bad input is refused with exit 2, one message naming the file, tensor or dataset,
# and no output directory (so no config.json) left behind. Run on 1 and 2 ranks.
source "$(dirname "$0")/lib.sh"
W=$(work_dir bad_inputs)
gen deepseek "$W"
"$NX_PYTHON" "$NX_TESTS/make_bad_inputs.py" --good-model "$W/deepseek" \
    --good-calib "$W/deepseek.h5" --out "$W/cases" >/dev/null

while IFS=$'\x1f' read -r name model calib extra expect; do
    for np in 1 2; do
        # shellcheck disable=SC2086
        check "$name (np=$np)" refused "$np" "$model" "$calib" "$expect" "$W/out-$name-$np" $extra
    done
done < <(awk -F'\t' '{ printf "%s\x1f%s\x1f%s\x1f%s\x1f%s\n", $1, $2, $3, $4, $5 }' "$W/cases/cases.tsv")

# Usage errors and refusals of the command line itself.
gen qwen3moe "$W"
existing_kept() {
    mkdir -p "$W/existing" && echo keep >"$W/existing/marker"
    local rc=0
    nx 1 export --quiet --model "$W/qwen3moe" --calib "$W/qwen3moe.h5" --output "$W/existing" \
        2>"$W/existing.err" || rc=$?
    [ "$rc" -eq 2 ] && grep -q "already exists" "$W/existing.err" &&
        [ "$(cat "$W/existing/marker")" = keep ] && [ ! -e "$W/existing.nvfp4x-staging" ]
}
check "existing output refused and kept" existing_kept
check "missing --calib refused" refused 1 "$W/qwen3moe" "" "--calib" "$W/out-nocalib"
check "bad --numerics refused" refused 1 "$W/qwen3moe" "$W/qwen3moe.h5" "--numerics" \
    "$W/out-numerics" --numerics tpu
check "bad --max-shard-size refused" refused 1 "$W/qwen3moe" "$W/qwen3moe.h5" "--max-shard-size" \
    "$W/out-shard" --max-shard-size 10XB
check "--kv-cache fp8 without k/v amax refused" refused 1 "$W/qwen3moe" "" "--kv-cache fp8" \
    "$W/out-kv" --weight-only --kv-cache fp8
finish
