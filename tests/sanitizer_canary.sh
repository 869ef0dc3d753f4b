#!/usr/bin/env bash
# Sanitizer build only: the leak checker is on, with the settings every test process gets
# (tests/sanitize_options.c), in an MPI process like nvfp4x. tests/leak_canary.c loses one
# allocation of ours: LeakSanitizer must report it with its stack, and must not crash
# ("Tracer caught signal") or report anything when the allocation is freed.
source "$(dirname "$0")/lib.sh"
: "${NX_CANARY:?}"
W=$(work_dir sanitizer_canary)

canary() { # canary NP LOG [ARGS...]: run the canary under mpirun, output to LOG; its status
    local np=$1 log=$2
    shift 2
    "$MPIEXEC" --oversubscribe -np "$np" "$NX_CANARY" "$@" </dev/null >"$log" 2>&1
}
no_crash() { ! grep -qE 'Tracer caught signal|LeakSanitizer has encountered a fatal error' "$1"; }

for np in 1 2; do
    rc=0
    canary "$np" "$W/freed-$np.log" --free || rc=$?
    check "np=$np: freed, exit 0" test "$rc" -eq 0
    check "np=$np: freed, no leak reported" bash -c '! grep -q LeakSanitizer "$0"' \
        "$W/freed-$np.log"
    rc=0
    canary "$np" "$W/lost-$np.log" || rc=$?
    grep -E 'ERROR: LeakSanitizer|Direct leak|planted_allocation|SUMMARY' "$W/lost-$np.log" |
        head -6 | sed 's/^/    /'
    check "np=$np: lost, exit non-zero" test "$rc" -ne 0
    check "np=$np: lost, LeakSanitizer reports it" grep -q 'ERROR: LeakSanitizer: detected memory leaks' \
        "$W/lost-$np.log"
    check "np=$np: lost, its stack names nx_strdup and the canary" \
        bash -c 'grep -q "in nx_strdup" "$0" && grep -q "in planted_allocation" "$0"' \
        "$W/lost-$np.log"
    check "np=$np: one direct leak per rank" \
        test "$(grep -c 'Direct leak of' "$W/lost-$np.log")" -eq "$np"
    check "np=$np: the leak checker did not crash" no_crash "$W/lost-$np.log"
    check "np=$np: nor with --free" no_crash "$W/freed-$np.log"
done
finish
