#!/usr/bin/env bash
# The check before publishing (issue 14): export runs verify's structural rules on its staging
# directory before the rename. An export passes it and says so; the commit step itself
# (tests/commit_driver.c, nx_staging_check_commit) on copies of that export: an untouched copy
# is published, a copy with a planted defect (T5: fused siblings with different weight_scale_2;
# M1: an expert without input_scale) is not: exit 1, the message names the rule and the tensor,
# the destination does not exist (an older one given with --force stays), the staging
# directory and its journal are left as they were.
source "$(dirname "$0")/lib.sh"
: "${NX_COMMIT_DRIVER:?}"
W=$(work_dir precommit)
gen deepseek "$W"
PLANT=("$NX_PYTHON" "$NX_TESTS/plant_defect.py")

check "export passes the pre-commit check" bash -c '
    "$0" --oversubscribe -np 2 "$1" export --model "$2/deepseek" --calib "$2/deepseek.h5" \
        --max-shard-size 300KB --output "$2/ref" </dev/null 2>"$2/export.err" &&
    grep -qE "pre-commit check: [0-9]+ tensors, [0-9]+ quantized modules, no violation \([0-9.]+ s\)" \
        "$2/export.err"' "$MPIEXEC" "$NX_BIN" "$W"
grep "pre-commit" "$W/export.err" || true

staging_copy() { # staging_copy NAME: the export as NAME.nvfp4x-staging, with a journal
    local s="$W/$1.nvfp4x-staging"
    cp -r "$W/ref" "$s"
    mkdir "$s/.nvfp4x-journal"
    echo "plan fingerprint" >"$s/.nvfp4x-journal/plan.id"
    echo "$s"
}
commit() { # commit NAME [--force]: the commit step; status in $W/NAME.rc, stderr in NAME.err
    local rc=0
    "$NX_COMMIT_DRIVER" "$W/$1.nvfp4x-staging" "$W/$1" "${@:2}" >"$W/$1.out" 2>"$W/$1.err" || rc=$?
    echo "$rc" >"$W/$1.rc"
    cat "$W/$1.out" "$W/$1.err"
}
status_is() { [ "$(cat "$W/$1.rc")" = "$2" ]; }
names() { grep -qF "$2" "$W/$1.err" || { echo "no '$2' in: $(cat "$W/$1.err")"; return 1; }; }

# 1. Untouched: published, journal removed, identical to the export.
staging_copy ok >/dev/null
commit ok
check "untouched copy: exit 0" status_is ok 0
check "untouched copy: published" test -f "$W/ok/model.safetensors.index.json"
check "untouched copy: staging renamed away" test ! -e "$W/ok.nvfp4x-staging"
check "untouched copy: no journal in the output" test ! -e "$W/ok/.nvfp4x-journal"
check "untouched copy: identical to the export" diff <(tree_sums "$W/ref") <(tree_sums "$W/ok")

planted_case() { # planted_case NAME RULE TENSOR: the commit of a planted copy is refused
    local s="$W/$1.nvfp4x-staging" before
    before=$(tree_sums "$s")
    commit "$1" "${@:4}"
    check "$1: exit 1" status_is "$1" 1
    check "$1: message names rule $2" names "$1" " $2"
    check "$1: message names $3" names "$1" "$3"
    check "$1: message says nothing was published" names "$1" "nothing was published"
    check "$1: staging directory and journal kept, unchanged" \
        diff <(echo "$before") <(tree_sums "$s")
}

# 2. T5: kv_a_proj_with_mqa's weight_scale_2 differs from its fused sibling q_a_proj's.
s=$(staging_copy t5)
"${PLANT[@]}" "$s" --double model.layers.0.self_attn.kv_a_proj_with_mqa.weight_scale_2
planted_case t5 T5 model.layers.0.self_attn.kv_a_proj_with_mqa
check "t5: nothing published" test ! -e "$W/t5"

# 3. M1: an expert without input_scale (T1 is reported first, M1 among the others).
s=$(staging_copy m1)
"${PLANT[@]}" "$s" --drop model.layers.1.mlp.experts.2.down_proj.input_scale
planted_case m1 M1 model.layers.1.mlp.experts.2.down_proj
check "m1: nothing published" test ! -e "$W/m1"

# 4. --force over an older output: the failed check leaves the older output in place.
cp -r "$W/ref" "$W/old"
s=$(staging_copy old)
"${PLANT[@]}" "$s" --double model.layers.1.mlp.experts.1.down_proj.input_scale
planted_case old M2 model.layers.1.mlp.experts.1.down_proj --force
check "old: the older output is untouched" diff <(tree_sums "$W/ref") <(tree_sums "$W/old")
check "old: nothing moved aside" test ! -e "$W/old.nvfp4x-old"
finish
