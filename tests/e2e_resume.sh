#!/usr/bin/env bash
# Crash safety: a rank killed with SIGKILL mid-export leaves no output, and --resume completes
# it byte-identical to an uninterrupted run; a write failure (file size limit) is one message
# naming the path, exit 1, the staging directory kept, and --resume completes once the limit
# is gone. Staging directories are refused without --resume/--force.
source "$(dirname "$0")/lib.sh"
W=$(work_dir resume)
gen deepseek "$W"
args=(--quiet --model "$W/deepseek" --calib "$W/deepseek.h5" --max-shard-size 300KB)
same_tree() { diff <(tree_sums "$1") <(tree_sums "$2"); }

check "uninterrupted export" nx 3 export "${args[@]}" --output "$W/ref"

# 1. Rank 1 stops after journaling 5 items (test hook); kill it with SIGKILL. The ranks carry a
#    tag unique to this run so that other tests running the same binary are never touched.
tag="resume-$$-$RANDOM"
NVFP4X_TEST_STALL_AFTER=5 NVFP4X_TEST_TAG=$tag "$MPIEXEC" --oversubscribe -np 3 \
    -x NVFP4X_TEST_STALL_AFTER -x NVFP4X_TEST_TAG \
    "$NX_BIN" export "${args[@]}" --output "$W/out" </dev/null 2>"$W/kill.err" &
job=$!
journal="$W/out.nvfp4x-staging/.nvfp4x-journal/journal.1"
for _ in $(seq 3000); do # up to 300 s: a loaded machine under the sanitizers is slow
    [ -f "$journal" ] && [ "$(wc -l <"$journal")" -ge 5 ] && break
    sleep 0.1
done
tagged_rank() { # pid rank-regex: true when pid is a rank of this run matching $2
    tr '\0' '\n' <"/proc/$1/environ" 2>/dev/null |
        grep -cxE "NVFP4X_TEST_TAG=$tag|OMPI_COMM_WORLD_RANK=$2" | grep -qx 2
}
victim=""
for pid in $(pgrep -f "$NX_BIN export" || true); do
    tagged_rank "$pid" 1 && victim=$pid
done
check "rank 1 reached the stall point" test -n "$victim"
if [ -n "$victim" ]; then
    kill -9 "$victim"
else # never leave a stalled rank behind to hang the test
    for pid in $(pgrep -f "$NX_BIN export" || true); do
        tagged_rank "$pid" '[0-9]+' && kill -9 "$pid"
    done
fi
rc=0
wait "$job" || rc=$?
check "the job ends non-zero when a rank is killed" test "$rc" -ne 0
check "no output after the kill" test ! -e "$W/out"
check "the staging directory and its journal stay" test -s "$journal"
check "a second run without --resume is refused" \
    bash -c '! "$0" "$@" 2>/dev/null' "$MPIEXEC" --oversubscribe -np 2 "$NX_BIN" export "${args[@]}" --output "$W/out"
check "--resume completes" nx 2 export "${args[@]}" --output "$W/out" --resume
check "resumed output identical to the uninterrupted run" same_tree "$W/ref" "$W/out"
check "no journal in the output" test ! -e "$W/out/.nvfp4x-journal"

# 2. A file size limit on rank 1 makes its writes fail (EFBIG) part way.
rc=0
"$MPIEXEC" --oversubscribe -np 3 sh -c \
    'if [ "$OMPI_COMM_WORLD_RANK" = 1 ]; then ulimit -f 100; fi; exec "$0" "$@"' \
    "$NX_BIN" export "${args[@]}" --output "$W/lim" </dev/null 2>"$W/lim.err" || rc=$?
head -3 "$W/lim.err"
check "write failure exits 1" test "$rc" -eq 1
check "one message naming rank 1 and the shard" \
    grep -qE 'error: rank 1: .*lim\.nvfp4x-staging/model-[0-9]+-of-[0-9]+\.safetensors: write .*File too large' "$W/lim.err"
check "no output after the write failure" test ! -e "$W/lim"
check "staging kept for --resume" test -d "$W/lim.nvfp4x-staging"
check "--resume completes once the limit is gone" nx 3 export "${args[@]}" --output "$W/lim" --resume
check "resumed output identical to the uninterrupted run" same_tree "$W/ref" "$W/lim"

# 3. A resume with different options is refused; --force starts over.
nx 1 export "${args[@]}" --output "$W/opt" --weight-only >/dev/null 2>&1 &&
    mv "$W/opt" "$W/opt-wo"
mkdir -p "$W/opt.nvfp4x-staging/.nvfp4x-journal" && echo "other" >"$W/opt.nvfp4x-staging/.nvfp4x-journal/plan.id"
check "--resume of a different export is refused" \
    bash -c '"$0" "$@" 2>&1 | grep -q "made by a different export"' "$NX_BIN" export "${args[@]}" --output "$W/opt" --resume
check "--force discards it" nx 1 export "${args[@]}" --output "$W/opt" --force
check "forced output identical to the uninterrupted run" same_tree "$W/ref" "$W/opt"
finish
