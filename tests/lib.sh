# Shared helpers for the end-to-end tests (sourced). ctest sets NX_BIN, NX_PYTHON, NX_TESTS,
# NX_WORK, MPIEXEC and the Open MPI variables that allow root and oversubscription.
set -euo pipefail
: "${NX_BIN:?}" "${NX_PYTHON:?}" "${NX_TESTS:?}" "${NX_WORK:?}"
MPIEXEC=${MPIEXEC:-mpirun}
# Under the sanitizer build: Open MPI and PMIx keep their plugins loaded so that their
# process-lifetime allocations can be told apart from ours by library name (the suppressions
# and other sanitizer settings are compiled in: tests/sanitize_options.c).
export OMPI_MCA_mca_base_component_disable_dlclose=1 PMIX_MCA_mca_base_component_disable_dlclose=1
NX_FAILS=0
NX_PASSES=0

work_dir() { # work_dir NAME: a fresh scratch directory for one test
    local d="$NX_WORK/$1"
    rm -rf "$d"
    mkdir -p "$d"
    echo "$d"
}

gen() { # gen FAMILY DIR: model in DIR/FAMILY, calibration in DIR/FAMILY.h5
    [ -d "$2/$1" ] || "$NX_PYTHON" "$NX_TESTS/gen_checkpoint.py" --family "$1" --out "$2/$1" \
        --calib "$2/$1.h5" >/dev/null
}

nx() { # nx NP ARGS...: run nvfp4x under mpirun with NP ranks
    local np=$1
    shift
    "$MPIEXEC" --oversubscribe -np "$np" "$NX_BIN" "$@" </dev/null
}

refused() { # refused NP MODEL CALIB EXPECT OUT [ARGS...]: exit 2, one error line naming
    # EXPECT, and nothing left under OUT
    local np=$1 model=$2 calib=$3 expect=$4 out=$5 rc=0
    shift 5
    nx "$np" export --quiet --model "$model" ${calib:+--calib "$calib"} --output "$out" "$@" \
        2>"$out.err" || rc=$?
    if [ "$rc" -ne 2 ]; then
        echo "  exit status $rc, expected 2"; cat "$out.err"; return 1
    fi
    if ! grep -qF -- "$expect" "$out.err"; then
        echo "  message does not name '$expect':"; cat "$out.err"; return 1
    fi
    if [ "$(grep -c 'error:' "$out.err")" -ne 1 ]; then
        echo "  expected exactly one error line:"; cat "$out.err"; return 1
    fi
    [ ! -e "$out" ] && [ ! -e "$out.nvfp4x-staging" ] || { echo "  output left behind"; return 1; }
}

tree_sums() { # tree_sums DIR: sha256 of every file, by name
    (cd "$1" && find . -type f | LC_ALL=C sort | xargs sha256sum)
}

check() { # check NAME COMMAND...: run, count, report
    local name=$1
    shift
    if "$@"; then
        NX_PASSES=$((NX_PASSES + 1))
        echo "ok   $name"
    else
        NX_FAILS=$((NX_FAILS + 1))
        echo "FAIL $name"
    fi
}

finish() {
    echo "$NX_PASSES passed, $NX_FAILS failed"
    [ "$NX_FAILS" -eq 0 ]
}
