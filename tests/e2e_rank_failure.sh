#!/usr/bin/env bash
# A corrupt tensor read by one rank only (NaN in data that a rank other than 0 owns) makes every
# rank exit non-zero promptly, with one message naming that rank and the file, and no output
# left.
source "$(dirname "$0")/lib.sh"
W=$(work_dir rank_failure)
gen deepseek "$W"
cp -r "$W/deepseek" "$W/bad"
NP=3
"$NX_BIN" plan --quiet --model "$W/bad" --calib "$W/deepseek.h5" --ranks $NP --owners |
    awk '/^owners/ { on = 1; next } on && $3 == "quantized" { print $1, $2 }' >"$W/owners"

# The last quantized weight of the last rank that owns any; poison its data with a BF16 NaN.
read -r R victim < <(tail -1 "$W/owners")
src_shard=$("$NX_PYTHON" - "$W/bad" "$victim" <<'PY'
import json, struct, sys
model, name = sys.argv[1], sys.argv[2]
shard = json.load(open(f"{model}/model.safetensors.index.json"))["weight_map"][name]
path = f"{model}/{shard}"
with open(path, "r+b") as f:
    n = struct.unpack("<Q", f.read(8))[0]
    begin = json.loads(f.read(n))[name]["data_offsets"][0]
    f.seek(8 + n + begin + 2 * 5)
    f.write(b"\xc0\x7f")  # BF16 quiet NaN
print(shard)
PY
)
echo "poisoned $victim in $src_shard (owned by rank $R)"

# Each rank reports its own exit status (mpirun is told not to kill the others first).
start=$(date +%s)
"$MPIEXEC" --oversubscribe --mca orte_abort_on_non_zero_status 0 -np $NP sh -c '"$0" "$@"; rc=$?; echo "rank-exit $OMPI_COMM_WORLD_RANK $rc" >&2; exit $rc' \
    "$NX_BIN" export --quiet --model "$W/bad" --calib "$W/deepseek.h5" --output "$W/out" \
    </dev/null 2>"$W/err" || true
elapsed=$(( $(date +%s) - start ))
cat "$W/err"
echo "job ended after ${elapsed}s"

check "every rank exited non-zero" test "$(grep -c '^rank-exit [0-9]* [1-9]' "$W/err")" -eq $NP
check "one error message" test "$(grep -c 'error:' "$W/err")" -eq 1
check "the failing rank is not rank 0" test "$R" -gt 0
check "message names rank $R" grep -q "error: rank $R: " "$W/err"
check "message names the file" grep -qF "$src_shard" "$W/err"
check "message names the tensor" grep -qF "$victim" "$W/err"
check "no output directory" test ! -e "$W/out"
check "no staging directory" test ! -e "$W/out.nvfp4x-staging"
finish
