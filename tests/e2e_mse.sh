#!/usr/bin/env bash
# --weight-calib mse (ModelOpt's MSE FP8-scale sweep computed by nvfp4x) on Qwen3-MoE,
# DeepSeek-V3 (MLA: q_a_proj and kv_a_proj_with_mqa swept apart, exported with one global
# amax) and Mixtral, in both numerics modes: the same bytes as exporting with a calibration
# file that holds the per-block amax of the independent numpy sweep (tests/mse_ref.py), and as
# tests/nvfp4_ref.py computes from that file; identical trees for -np 1 and 3; verify clean
# with the sweep re-derived for every block; no block's error above that of max calibration;
# the report shows the gain.
source "$(dirname "$0")/lib.sh"
W=$(work_dir mse)

same_tree() { diff <(tree_sums "$1") <(tree_sums "$2"); }

ref_calib() { # ref_calib FAMILY OUT.h5 NUMERICS: the numpy sweep's calibration file
    "$NX_PYTHON" "$NX_TESTS/mse_ref.py" calib --model "$W/$1" --calib "$W/$1.h5" --out "$2" \
        --numerics "$3" >/dev/null
}

ref_equal() { # ref_equal FAMILY CALIB OUT NUMERICS: numpy export with the swept calibration
    "$NX_PYTHON" "$NX_TESTS/nvfp4_ref.py" compare --model "$W/$1" --calib "$2" --output "$3" \
        --numerics "$4"
}

verify_swept() { # verify_swept FAMILY OUT NUMERICS: every block re-derived
    "$NX_BIN" verify "$2" --model "$W/$1" --weight-calib mse --numerics "$3" --full
}

never_worse() { # never_worse FAMILY MAX_OUT MSE_OUT
    "$NX_PYTHON" "$NX_TESTS/mse_ref.py" gain --model "$W/$1" --max "$2" --mse "$3"
}

flagged() { # flagged FAMILY OUT: a max-calibrated export is not the sweep's choice
    local rc=0
    "$NX_BIN" verify "$2" --model "$W/$1" --weight-calib mse >"$2.verify" 2>&1 || rc=$?
    [ "$rc" -eq 1 ] && grep -q '^MSE ' "$2.verify"
}

report_gain() { # report_gain REPORT.h5: every row swept, less error than max in total
    "$NX_PYTHON" - "$1" <<'EOF'
import sys
import h5py
import numpy as np
t = h5py.File(sys.argv[1], "r")["tensors"]
swept = t["swept_weight_amax"][()]
err, err_max = t["sum_sq_err"][()].sum(), t["sum_sq_err_max"][()].sum()
ratio = t["mean_scale_ratio"][()]
print("report: %d modules, swept %d; squared error %.6g, with max calibration %.6g"
      % (len(swept), swept.sum(), err, err_max))
ok = swept.all() and err < err_max and np.isfinite(t["rel_rms_max"][()]).all()
ok = ok and np.isfinite(ratio).all() and (ratio > 0).all()
sys.exit(0 if ok else 1)
EOF
}

plan_predicts() { # plan_predicts FAMILY
    local out
    out=$("$NX_BIN" plan --quiet --model "$W/$1" --weight-calib mse --ranks 3) &&
        grep -q '^weight calibration: MSE sweep (gpu numerics) of [1-9][0-9]* blocks' <<<"$out" &&
        grep -q 'predicted sweep time per rank' <<<"$out"
}

for fam in qwen3moe deepseek mixtral; do
    gen "$fam" "$W"
    for mode in gpu cpu; do
        out="$W/$fam-$mode"
        check "$fam/$mode numpy sweep" ref_calib "$fam" "$out-ref.h5" "$mode"
        for np in 1 3; do
            check "$fam/$mode np=$np export --weight-calib mse" nx "$np" export --quiet \
                --model "$W/$fam" --calib "$W/$fam.h5" --output "$out-np$np" \
                --weight-calib mse --numerics "$mode" --max-shard-size 150KB --threads 2
        done
        check "$fam/$mode np=3 identical to np=1" same_tree "$out-np1" "$out-np3"
        check "$fam/$mode export with the numpy block amax" nx 1 export --quiet \
            --model "$W/$fam" --calib "$out-ref.h5" --output "$out-ref" --numerics "$mode" \
            --max-shard-size 150KB
        check "$fam/$mode same bytes as with the numpy block amax" \
            same_tree "$out-np1" "$out-ref"
        check "$fam/$mode equals nvfp4_ref.py on the numpy block amax" \
            ref_equal "$fam" "$out-ref.h5" "$out-np3" "$mode"
        check "$fam/$mode verify --weight-calib mse --full" verify_swept "$fam" "$out-np3" "$mode"
        check "$fam/$mode max-calibrated export" nx 1 export --quiet --model "$W/$fam" \
            --weight-only --output "$out-max" --numerics "$mode"
        check "$fam/$mode no block worse than max calibration" \
            never_worse "$fam" "$out-max" "$out-np1"
    done
    check "$fam verify flags a max-calibrated export" flagged "$fam" "$W/$fam-gpu-max"
    check "$fam export --report" nx 2 export --quiet --model "$W/$fam" --calib "$W/$fam.h5" \
        --output "$W/$fam-report" --weight-calib mse --report "$W/$fam-report.h5"
    check "$fam report shows the gain" report_gain "$W/$fam-report.h5"
    check "$fam plan predicts the sweep" plan_predicts "$fam"
done
# --resume reuses a finished sweep: rank 1's shard writes fail (file size limit) after it.
args=(--model "$W/deepseek" --calib "$W/deepseek.h5" --weight-calib mse --max-shard-size 300KB)
check "reference export" nx 2 export --quiet "${args[@]}" --output "$W/res-ref"
rc=0
"$MPIEXEC" --oversubscribe -np 2 sh -c \
    'if [ "$OMPI_COMM_WORLD_RANK" = 1 ]; then ulimit -f 100; fi; exec "$0" "$@"' \
    "$NX_BIN" export --quiet "${args[@]}" --output "$W/res" </dev/null 2>"$W/res.err" || rc=$?
check "a write failure after the sweep exits 1" test "$rc" -eq 1
check "the finished sweep stays in the staging directory" \
    test -e "$W/res.nvfp4x-staging/.nvfp4x-journal/sweep.done"
check "--resume reuses it" bash -c '"$0" "$@" 2>&1 | grep -q "reusing the finished sweep"' \
    "$MPIEXEC" --oversubscribe -np 2 "$NX_BIN" export "${args[@]}" --output "$W/res" --resume
check "resumed output identical" same_tree "$W/res-ref" "$W/res"
check "no sweep file in the output" test ! -e "$W/res/.nvfp4x-journal"
check "--weight-only needs no calibration file" nx 1 export --quiet --model "$W/mixtral" \
    --weight-only --weight-calib mse --output "$W/mixtral-wo"
check "bad --weight-calib refused" refused 1 "$W/mixtral" "" "--weight-calib" "$W/bad" \
    --weight-only --weight-calib minmax
finish
