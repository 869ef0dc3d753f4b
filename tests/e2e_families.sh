#!/usr/bin/env bash
# Qwen3-MoE, DeepSeek-V3 and Mixtral export equal to the numpy reference in both numerics
# modes, pass verify (every CONSUMERS.md rule, exact re-encoding), and give byte-identical
# trees for -np 1..4 and threads 1 vs 2.
source "$(dirname "$0")/lib.sh"
W=$(work_dir families)

ref_equal() { # ref_equal FAMILY OUT NUMERICS
    "$NX_PYTHON" "$NX_TESTS/nvfp4_ref.py" compare --model "$W/$1" --calib "$W/$1.h5" \
        --output "$2" --numerics "$3"
}

verify_clean() { # verify_clean FAMILY OUT
    "$NX_BIN" verify "$2" --model "$W/$1"
}

same_tree() { diff <(tree_sums "$1") <(tree_sums "$2"); }

# plan is a dry run: it prints the classification and layout and writes nothing.
plan_ok() { # plan_ok FAMILY
    local out
    out=$("$NX_BIN" plan --quiet --model "$W/$1" --calib "$W/$1.h5" --ranks 3) &&
        grep -q '^quantized linears: [1-9]' <<<"$out" && grep -q '^ranks: 3' <<<"$out" &&
        grep -q 'model.safetensors\|model-00001-of' <<<"$out" && [ ! -e "$W/$1-plan" ]
}

for fam in qwen3moe deepseek mixtral; do
    gen "$fam" "$W"
    before=$(tree_sums "$W/$fam"; sha256sum "$W/$fam.h5")
    check "$fam plan" plan_ok "$fam"
    for mode in gpu cpu; do
        out="$W/$fam-$mode"
        check "$fam/$mode export" nx 1 export --quiet --model "$W/$fam" --calib "$W/$fam.h5" \
            --output "$out" --numerics "$mode"
        check "$fam/$mode equals numpy reference" ref_equal "$fam" "$out" "$mode"
        check "$fam/$mode verify" verify_clean "$fam" "$out"
        check "$fam/$mode no staging directory left" test ! -e "$out.nvfp4x-staging"
    done
    # Small shards so that ranks write into shared files; the tree must not depend on -np.
    for np in 1 2 3 4; do
        check "$fam np=$np export" nx "$np" export --quiet --model "$W/$fam" \
            --calib "$W/$fam.h5" --output "$W/$fam-np$np" --max-shard-size 150KB --threads 1
    done
    for np in 2 3 4; do
        check "$fam np=$np identical to np=1" same_tree "$W/$fam-np1" "$W/$fam-np$np"
    done
    check "$fam threads=2 export" nx 2 export --quiet --model "$W/$fam" --calib "$W/$fam.h5" \
        --output "$W/$fam-t2" --max-shard-size 150KB --threads 2
    check "$fam threads=2 identical to threads=1" same_tree "$W/$fam-np1" "$W/$fam-t2"
    check "$fam sharded equals numpy reference" ref_equal "$fam" "$W/$fam-np3" gpu
    check "$fam inputs unmodified" test "$before" = "$(tree_sums "$W/$fam"; sha256sum "$W/$fam.h5")"
done
finish
