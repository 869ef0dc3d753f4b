#!/usr/bin/env bash
# Export throughput and memory against the cost of reading the input once.
#
#   tests/bench/bench_export.sh [--size-gb G] [--np "1 2"] [--threads T] [--work DIR]
#                               [--export-args "--no-fsync ..."] [--mpirun-args "..."]
#                               [--weight-calib "max mse"]
#
# Builds nothing: uses $NX_BIN or build/nvfp4x. Generates (or reuses, when the same size was
# generated before) a G GB Qwen3-MoE checkpoint with gen_big.py in DIR (default 3 GB in
# ${TMPDIR:-/tmp}/nvfp4x-bench), warms the page cache, times reading every input byte once
# (cat > /dev/null, best of 2), then for each N times `mpirun -np N nvfp4x export` with every
# rank under /usr/bin/time for its peak RSS. Prints one line per N: export seconds, read-once
# seconds, ratio export/read, input GB/s, CPU seconds (all ranks), the largest peak RSS over
# ranks and the memory bound 3 x largest tensor + 200 MB. Ratios are measured in one run, so a
# noisy machine affects both sides alike. The export time includes mpirun's start-up, with
# --mpirun-args (default "--mca pml ob1 --mca btl self,vader": the shared-memory transport of one
# node, which starts 0.2 s faster than UCX). Dirty pages are synced before each timing, so that
# write-back of a previous run does not land in the next one. Output is removed after each run.
# --weight-calib: one row per weight calibration and N (default max; mse runs the MSE sweep,
# whose time the export log reports; its line is kept in DIR/export.mse.N.log).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
SIZE=3
NPS="1 2"
THREADS=""
EXPORT_ARGS=""
MPIRUN_ARGS="--mca pml ob1 --mca btl self,vader"
WORK="${TMPDIR:-/tmp}/nvfp4x-bench"
PY=${NX_PYTHON:-/usr/bin/python3}
BIN=${NX_BIN:-$ROOT/build/nvfp4x}
MPIEXEC=${MPIEXEC:-mpirun}
WCALIBS=max

usage() { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }
while [ $# -gt 0 ]; do
    case $1 in
        --size-gb) SIZE=$2; shift 2 ;;
        --np) NPS=$2; shift 2 ;;
        --threads) THREADS=$2; shift 2 ;;
        --export-args) EXPORT_ARGS=$2; shift 2 ;;
        --mpirun-args) MPIRUN_ARGS=$2; shift 2 ;;
        --work) WORK=$2; shift 2 ;;
        --weight-calib) WCALIBS=$2; shift 2 ;;
        -h|--help) usage 0 ;;
        *) echo "bench_export: unknown argument '$1'" >&2; usage ;;
    esac
done

[ -x "$BIN" ] || { echo "bench_export: $BIN not found; build first or set NX_BIN" >&2; exit 2; }
# GNU time: $NX_TIME (a carried binary on machines without the package), else /usr/bin/time.
export NX_TIME=${NX_TIME:-/usr/bin/time}
if [ ! -x "$NX_TIME" ]; then
    echo "bench_export: installing GNU time" >&2
    apt-get install -y time >/dev/null || { apt-get update >/dev/null && apt-get install -y time >/dev/null; }
fi
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
mkdir -p "$WORK"
MODEL=$WORK/model
CALIB=$WORK/calib.h5
OUT=$WORK/out
STAMP=$WORK/model.stamp

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }

# --- the checkpoint: generated once per size, reused while the stamp matches ---------------
want="size_gb=$SIZE seed=0"
if [ -f "$STAMP" ] && [ "$(head -n1 "$STAMP")" = "$want" ] && [ -d "$MODEL" ] && [ -f "$CALIB" ]; then
    echo "bench_export: reusing $MODEL ($want)"
else
    rm -rf "$MODEL" "$CALIB" "$STAMP"
    t0=$(now)
    "$PY" "$HERE/gen_big.py" --out "$MODEL" --calib "$CALIB" --size-gb "$SIZE" --seed 0 \
        | tee "$WORK/gen.log"
    echo "bench_export: generated in $(elapsed "$t0" "$(now)") s"
    { echo "$want"; cat "$WORK/gen.log"; } >"$STAMP"
fi
LARGEST=$(sed -n 's/^largest_tensor_bytes=//p' "$STAMP")
shards=("$MODEL"/*.safetensors)
INPUT=0
for f in "${shards[@]}"; do INPUT=$((INPUT + $(stat -c %s "$f"))); done
BOUND_MB=$(awk -v l="$LARGEST" 'BEGIN { printf "%.0f", (3 * l + 200e6) / 1e6 }')

# --- reading every input byte once, warm ---------------------------------------------------
cat "${shards[@]}" >/dev/null   # warm the page cache
READ=""
for _ in 1 2; do
    sync
    t0=$(now)
    cat "${shards[@]}" >/dev/null
    t=$(elapsed "$t0" "$(now)")
    READ=$(awk -v a="$READ" -v b="$t" 'BEGIN { print (a == "" || b < a) ? b : a }')
done

# --- exports ---------------------------------------------------------------------------------
WRAP=$WORK/rss_wrap.sh
cat >"$WRAP" <<'EOF'
#!/bin/sh
# One MPI rank under GNU time: peak RSS (KB), user and system seconds to $NX_RSS_PREFIX.<rank>.
exec "$NX_TIME" -f '%M %U %S' -o "$NX_RSS_PREFIX.${OMPI_COMM_WORLD_RANK:-0}" "$@"
EOF
chmod +x "$WRAP"
nproc_=$(nproc)
echo "bench_export: $(basename "$BIN") ${EXPORT_ARGS:+($EXPORT_ARGS) }on $nproc_ cores; input $INPUT bytes in ${#shards[@]} shards;" \
    "largest tensor $LARGEST bytes; threads ${THREADS:-default}"
extra=()
[ -n "$THREADS" ] && extra=(--threads "$THREADS")
# shellcheck disable=SC2206
[ -n "$EXPORT_ARGS" ] && extra+=($EXPORT_ARGS)
declare -A RES
for wc in $WCALIBS; do
for np in $NPS; do
    rm -rf "$OUT" "$OUT.nvfp4x-staging" "$WORK"/rss.*
    cat "${shards[@]}" >/dev/null   # keep the input warm after the previous run's writes
    sync
    t0=$(now)
    # shellcheck disable=SC2086
    if ! NX_RSS_PREFIX=$WORK/rss "$MPIEXEC" $MPIRUN_ARGS --oversubscribe -x NX_RSS_PREFIX -x NX_TIME -np "$np" "$WRAP" \
        "$BIN" export --model "$MODEL" --calib "$CALIB" --output "$OUT" "${extra[@]}" \
        --weight-calib "$wc" </dev/null >"$WORK/export.$wc.$np.log" 2>&1; then
        echo "bench_export: export -np $np failed; log: $WORK/export.$wc.$np.log" >&2
        tail -n 20 "$WORK/export.$wc.$np.log" >&2
        exit 1
    fi
    cp "$WORK/export.$wc.$np.log" "$WORK/export.$np.log"
    t=$(elapsed "$t0" "$(now)")
    read -r rss_kb cpu < <(cat "$WORK"/rss.* | awk 'BEGIN { m = 0; c = 0 }
        /^[0-9]+ [0-9.]+ [0-9.]+$/ { if ($1 > m) m = $1; c += $2 + $3 } END { print m, c }')
    RES[$wc.$np]="$t $rss_kb $cpu"
    rm -rf "$OUT"
done
done
rm -f "$WORK"/rss.*

printf '\n%-6s %-4s %10s %10s %8s %8s %8s %14s %10s\n' calib np export_s read_s ratio GB/s cpu_s \
    peak_rss_MB bound_MB
for wc in $WCALIBS; do
for np in $NPS; do
    read -r t rss_kb cpu <<<"${RES[$wc.$np]}"
    awk -v wc="$wc" -v np="$np" -v t="$t" -v r="$READ" -v b="$INPUT" -v k="$rss_kb" \
        -v c="$cpu" -v bound="$BOUND_MB" 'BEGIN {
        mb = k * 1024 / 1e6
        printf "%-6s %-4s %10.2f %10.3f %8.1f %8.3f %8.1f %9.0f %-4s %10s\n", wc, np, t, r,
               t / r, b / t / 1e9, c, mb, (mb <= bound ? "ok" : "OVER"), bound }'
done
done
for wc in $WCALIBS; do
    [ "$wc" = mse ] || continue
    for np in $NPS; do # the sweep's own line: blocks, seconds, rate, candidates per block
        sed -n "s/^.*\] sweep: /mse np=$np sweep: /p" "$WORK/export.mse.$np.log"
    done
done
echo "(export_s: wall time of mpirun, start-up included; read_s: cat of all shards, warm, best of 2;"
echo " GB/s: input bytes / export_s; cpu_s: user+system seconds summed over ranks;"
echo " peak_rss_MB: max over ranks; bound: 3 x largest tensor + 200 MB)"
