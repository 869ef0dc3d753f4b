#!/usr/bin/env bash
# Multi-node export with Open MPI's mpirun.
#
#   launch/mpirun.sh HOSTFILE RANKS_PER_NODE MODEL CALIB OUTPUT [export options...]
#
# HOSTFILE lists one node per line ("node01 slots=4"). Every node must see MODEL, CALIB and
# the parent directory of OUTPUT at the same paths (a shared filesystem). Each rank gets
# cores/RANKS_PER_NODE cores, bound, and as many quantization threads. The binary: $NVFP4X, else
# build/nvfp4x of this source tree, else the installation this script belongs to, else PATH.
set -euo pipefail
if [ $# -lt 5 ]; then
    sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
hostfile=$1 ppn=$2 model=$3 calib=$4 output=$5
shift 5
nodes=$(grep -cv '^\s*\(#\|$\)' "$hostfile")
cores=$(nproc)                     # assumes the nodes are alike
threads=$(( cores / ppn > 0 ? cores / ppn : 1 ))
bin=${NVFP4X:-}
if [ -z "$bin" ]; then # installed: this script is PREFIX/share/nvfp4x/launch/mpirun.sh
    here=$(cd "$(dirname "$0")" && pwd)
    for candidate in "$here/../build/nvfp4x" "$here/../../../bin/nvfp4x"; do
        if [ -x "$candidate" ]; then
            bin=$(cd "$(dirname "$candidate")" && pwd)/nvfp4x
            break
        fi
    done
    bin=${bin:-$(command -v nvfp4x || echo nvfp4x)}
fi

echo "nvfp4x: $nodes nodes x $ppn ranks, $threads threads per rank" >&2
exec mpirun --hostfile "$hostfile" -np $(( nodes * ppn )) \
    --map-by "ppr:$ppn:node:PE=$threads" --bind-to core \
    -x OMP_NUM_THREADS="$threads" -x HDF5_USE_FILE_LOCKING=FALSE \
    "$bin" export --model "$model" --calib "$calib" --output "$output" \
    --threads "$threads" "$@"
