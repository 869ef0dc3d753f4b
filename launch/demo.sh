#!/usr/bin/env bash
# Installs what is missing, builds, generates a small DeepSeek-V3-style MoE checkpoint and its
# calibration file, exports it to NVFP4 under `mpirun -np 2`, and checks the result.
# Usage: launch/demo.sh [WORK_DIR]   (default: ./demo-work)
source "$(dirname "$0")/common.sh"
nx_install_deps
nx_build "$NX_ROOT/build"
work=$(realpath -m "${1:-demo-work}")
mkdir -p "$work"
rm -rf "$work/model" "$work/calib.h5" "$work/model-nvfp4" "$work/model-nvfp4.nvfp4x-staging"

echo "== generating a DeepSeek-V3-style MoE checkpoint (MLA, shared experts, dense layer 0, MTP)"
"$NX_PY" "$NX_ROOT/tests/gen_checkpoint.py" --family deepseek --out "$work/model" \
    --calib "$work/calib.h5"

echo "== exporting with mpirun -np 2"
mpirun --oversubscribe -np 2 "$NX_ROOT/build/nvfp4x" export --model "$work/model" \
    --calib "$work/calib.h5" --output "$work/model-nvfp4" --max-shard-size 300KB

echo "== verifying: engine-loading rules and exact re-encoding against the source"
"$NX_ROOT/build/nvfp4x" verify "$work/model-nvfp4" --model "$work/model"

echo "== comparing every tensor with the independent numpy reference"
"$NX_PY" "$NX_ROOT/tests/nvfp4_ref.py" compare --model "$work/model" --calib "$work/calib.h5" \
    --output "$work/model-nvfp4"

echo "== output"
ls -l "$work/model-nvfp4"
echo "demo: OK ($work/model-nvfp4)"
