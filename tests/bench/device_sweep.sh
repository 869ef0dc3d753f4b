#!/usr/bin/env bash
# The MSE sweep's figures on the device machine (16 cores and an H200), for docs/performance.md
# "MSE sweep": bench_sweep (every variant, 1 and 16 threads), the export benchmark with
# --weight-calib max and mse for 1 and 16 ranks, and ModelOpt's Triton sweep kernel timed on the
# GPU on the same blocks (and its choices compared with nvfp4x's). Run from the repository root:
#
#   OUT=/tmp/out MODELOPT_SRC=/path/to/Model-Optimizer bash tests/bench/device_sweep.sh
#
# Needs Open MPI, HDF5 (serial is fine), CMake, zlib and Python with numpy/h5py; for the GPU
# part torch (CUDA) and triton. cJSON and GNU time come as Debian packages: either a prefix
# where they are unpacked (DEPS_PREFIX=/path, i.e. dpkg -x of libcjson1, libcjson-dev, time),
# or the .deb files in DEPS_DEBS (default .deps/), unpacked here as tests/bench/device_run.sh
# does. Everything goes to $OUT (default /tmp/nvfp4x-device-sweep): machine.txt, build.log,
# bench_sweep*.txt, gpu_sweep.json/.txt, bench_export.txt and the export logs. About 5 minutes.
# SIZE_GB (default 4) sizes the exported model; NPS (default "1 16") the rank counts;
# NX_PYTHON (default python3) is the Python with numpy, h5py (and torch, triton).
set -uo pipefail
OUT=${OUT:-/tmp/nvfp4x-device-sweep}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/device_sweep.log") 2>&1
T0=$(date +%s)
stamp() { echo "== $(($(date +%s) - T0))s: $*"; }

# --- dependencies ------------------------------------------------------------------------------
D=${DEPS_PREFIX:-}
if [ -z "$D" ]; then
    D=/tmp/nvfp4x-deps
    mkdir -p "$D"
    for f in "${DEPS_DEBS:-.deps}"/*.deb; do [ -e "$f" ] && dpkg -x "$f" "$D"; done
fi
export LD_LIBRARY_PATH=$D/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
NCORES=$(nproc)
PY=${NX_PYTHON:-python3}
{
    echo "cores: $NCORES"; lscpu | grep -E 'Model name|Socket|Core|Thread|MHz|L3|Flags' | cut -c1-400
    free -g | head -2; df -h /tmp | tail -1
    command -v mpicc mpirun cmake "$PY"; mpirun --version | head -1
    nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv 2>&1
    "$PY" -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)' 2>&1
    ls /usr/include/zlib.h "$D"/usr/include/cjson/cJSON.h 2>&1
} >"$OUT/machine.txt" 2>&1
stamp "machine"; cat "$OUT/machine.txt"

# --- build ---------------------------------------------------------------------------------------
stamp "build"
rm -rf build-device
if ! { cmake -S . -B build-device -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$D/usr" \
        -DPKG_CONFIG_USE_CMAKE_PREFIX_PATH=OFF &&
       cmake --build build-device -j "$NCORES" --target nvfp4x bench_sweep bench_kernel; } \
        >"$OUT/build.log" 2>&1; then
    tail -30 "$OUT/build.log"
    echo "device_sweep: build failed (zlib.h missing? carry zlib1g-dev's .deb too)"
    exit 1
fi
B=build-device

# --- bench_sweep ---------------------------------------------------------------------------------
stamp "bench_sweep"
BLOCKS=2097152 # an 8192 x 4096 weight, the shape MSE.md timed the kernel on
"$B/tests/bench/bench_sweep" --blocks $BLOCKS --threads "1 $NCORES" \
    --dump "$OUT/sweep_blocks.bin" | tee "$OUT/bench_sweep.txt"
for data in sparse mixed; do
    "$B/tests/bench/bench_sweep" --blocks 524288 --threads "1 $NCORES" --data $data |
        tee "$OUT/bench_sweep_$data.txt"
done
"$B/tests/bench/bench_sweep" --blocks 524288 --threads "1 $NCORES" --numerics cpu |
    tee "$OUT/bench_sweep_cpu.txt"
"$B/tests/bench/bench_kernel" 256 5 | tee "$OUT/bench_kernel.txt"

# --- ModelOpt's kernel on the GPU, same blocks -----------------------------------------------
stamp "gpu"
if [ -n "${MODELOPT_SRC:-}" ] && command -v nvidia-smi >/dev/null; then
    timeout 300 "$PY" tests/bench/modelopt_sweep_gpu.py --dump "$OUT/sweep_blocks.bin" \
        --out "$OUT/gpu_sweep.json" --reps 20 >"$OUT/gpu_sweep.txt" 2>&1
    echo "gpu harness exit $?"; tail -30 "$OUT/gpu_sweep.txt"
else
    echo "device_sweep: MODELOPT_SRC unset or no GPU: ModelOpt's kernel not timed" |
        tee "$OUT/gpu_sweep.txt"
fi
rm -f "$OUT/sweep_blocks.bin" # 70 MB: not worth bringing back

# --- the export benchmark ----------------------------------------------------------------------
stamp "bench_export"
TIMEBIN=$D/usr/bin/time
[ -x "$TIMEBIN" ] || TIMEBIN=/usr/bin/time
NX_BIN=$B/nvfp4x NX_TIME="$TIMEBIN" NX_PYTHON="$PY" timeout 420 \
    bash tests/bench/bench_export.sh --size-gb "${SIZE_GB:-4}" --np "${NPS:-1 $NCORES}" \
    --weight-calib "max mse" --export-args "--no-fsync" --work /tmp/nvfp4x-bench-sweep 2>&1 |
    tee "$OUT/bench_export.txt"
for f in /tmp/nvfp4x-bench-sweep/export.*.*.log; do [ -e "$f" ] && cp "$f" "$OUT/"; done
stamp "done"
