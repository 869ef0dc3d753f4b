#!/usr/bin/env bash
# One-shot scaling benchmark for a many-core x86-64 machine that has Open MPI, HDF5 (serial is
# fine), CMake and Python with numpy/h5py but not cJSON or GNU time: unpack the .deb files
# carried in .deps/ (apt-get download libcjson1 libcjson-dev time), build, then run
# bench_kernel and bench_export.sh for 1, 2, 4, 8 and 16 ranks. Writes logs to $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/nvfp4x-device}
mkdir -p "$OUT"
D=/tmp/nvfp4x-deps
mkdir -p "$D"
for f in .deps/*.deb; do dpkg -x "$f" "$D"; done
export LD_LIBRARY_PATH=$D/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
{
    nproc; lscpu | grep -E 'Model name|Socket|Core|Thread|MHz|L3'; free -g | head -2
    df -h /tmp | tail -1; command -v mpicc mpirun cmake python3 h5cc; mpirun --version | head -1
} >"$OUT/machine.txt" 2>&1
rm -rf build-device
cmake -S . -B build-device -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$D/usr" \
    -DPKG_CONFIG_USE_CMAKE_PREFIX_PATH=OFF \
    >"$OUT/build.log" 2>&1 && cmake --build build-device -j "$(nproc)" >>"$OUT/build.log" 2>&1 ||
    { tail -30 "$OUT/build.log"; exit 1; }
build-device/tests/bench/bench_kernel 256 7 2>&1 | tee "$OUT/bench_kernel.txt"
# MPI start-up alone: 16 ranks of `nvfp4x --version` (MPI_Init and MPI_Finalize), UCX vs ob1.
for mca in "" "--mca pml ob1 --mca btl self,vader"; do
    t0=$(date +%s.%N)
    # shellcheck disable=SC2086
    mpirun $mca -np 16 build-device/nvfp4x --version >/dev/null 2>&1
    awk -v a="$t0" -v b="$(date +%s.%N)" -v m="${mca:-(default transport)}" \
        'BEGIN { printf "startup np16 %s: %.2f s\n", m, b - a }'
done 2>&1 | tee "$OUT/startup.txt"
i=0
while IFS= read -r args; do
    i=$((i + 1))
    NX_BIN=build-device/nvfp4x NX_TIME="$D/usr/bin/time" NX_PYTHON=python3 \
        bash tests/bench/bench_export.sh --size-gb "${SIZE_GB:-8}" --np "${NPS:-1 2 4 8 16}" \
        --work /tmp/nvfp4x-bench --export-args "$args" 2>&1 | tee -a "$OUT/bench_export.txt"
    for f in /tmp/nvfp4x-bench/export.*.log; do cp "$f" "$OUT/config$i.$(basename "$f")"; done
done <<<"${CONFIGS:-$(printf '%s\n' "" "--no-fsync" "--no-fsync --max-shard-size 300MB")}"
