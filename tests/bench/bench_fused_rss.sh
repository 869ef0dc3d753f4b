#!/usr/bin/env bash
# Peak memory of a fused-expert export against its bound (issue 11, docs/performance.md).
#
#   tests/bench/bench_fused_rss.sh [--np "1 4"] [--work DIR] [--keep]
#
# Generates (or reuses) with gen_big_fused.py a Llama-4 checkpoint whose fused
# feed_forward.experts.gate_up_proj is 16 x 4096 x 8192 BF16 = 1.07 GB, in DIR (default
# ${TMPDIR:-/tmp}/nvfp4x-bench-fused), then for each N runs `mpirun -np N nvfp4x export` with
# every rank under GNU time (/usr/bin/time -v) and prints each rank's peak RSS, the largest
# piece a rank holds (from `nvfp4x plan`: input rows x out of one expert, in BF16) and the bound
# 3 x that piece + 200 MB. The model and output are deleted at the end unless --keep.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
NPS="1 4"
WORK="${TMPDIR:-/tmp}/nvfp4x-bench-fused"
KEEP=0
PY=${NX_PYTHON:-/usr/bin/python3}
BIN=${NX_BIN:-$ROOT/build/nvfp4x}
MPIEXEC=${MPIEXEC:-mpirun}
while [ $# -gt 0 ]; do
    case $1 in
        --np) NPS=$2; shift 2 ;;
        --work) WORK=$2; shift 2 ;;
        --keep) KEEP=1; shift ;;
        *) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
    esac
done
[ -x "$BIN" ] || { echo "bench_fused_rss: $BIN not found; build first or set NX_BIN" >&2; exit 2; }
mkdir -p "$WORK"
MODEL=$WORK/model CALIB=$WORK/calib.h5 OUT=$WORK/out
[ -f "$MODEL/config.json" ] || "$PY" "$HERE/gen_big_fused.py" --out "$MODEL" --calib "$CALIB"

piece=$("$BIN" plan --quiet --model "$MODEL" --calib "$CALIB" --ranks 1 |
        sed -n 's/.*pieces (.*, \([0-9.]*\) MB BF16 each).*/\1/p' | sort -g | tail -1)
WRAP=$WORK/rss_wrap.sh
cat >"$WRAP" <<'EOF'
#!/bin/sh
exec /usr/bin/time -v -o "$NX_RSS_PREFIX.${OMPI_COMM_WORLD_RANK:-0}" "$@"
EOF
chmod +x "$WRAP"
bound=$(awk -v p="$piece" 'BEGIN { printf "%.0f", 3 * p + 200 }')
echo "bench_fused_rss: largest piece $piece MB (BF16); bound 3 x piece + 200 MB = $bound MB"
for np in $NPS; do
    rm -rf "$OUT" "$OUT.nvfp4x-staging" "$WORK"/rss.*
    t0=$(date +%s.%N)
    NX_RSS_PREFIX=$WORK/rss "$MPIEXEC" --oversubscribe -x NX_RSS_PREFIX -np "$np" "$WRAP" \
        "$BIN" export --quiet --model "$MODEL" --calib "$CALIB" --output "$OUT" </dev/null
    t1=$(date +%s.%N)
    for f in "$WORK"/rss.*; do
        kb=$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$f")
        awk -v np="$np" -v r="${f##*.}" -v kb="$kb" -v b="$bound" -v t="$(echo "$t1 - $t0" | bc)" \
            'BEGIN { mb = kb / 1024; printf "np=%s rank %s: peak RSS %.1f MB (%s; bound %s MB), export %.1f s\n",
                     np, r, mb, mb <= b ? "ok" : "OVER", b, t }'
    done
done
rm -rf "$OUT" "$WORK"/rss.*
[ "$KEEP" = 1 ] || rm -rf "$MODEL" "$CALIB"
