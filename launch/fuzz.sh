#!/usr/bin/env bash
# launch/fuzz.sh [SECONDS]: builds the libFuzzer harnesses of tests/fuzz/ with clang (ASan +
# UBSan) into build-fuzz/, replays the recorded reproducers of tests/fuzz/regress/, then runs
# each harness for SECONDS (default 60) on a copy of its seed corpus. Exits non-zero when a
# harness crashes, leaks, times out or runs out of memory, naming the input that did it.
source "$(dirname "$0")/common.sh"
FUZZ_SECONDS=${1:-60}
FUZZ_HARNESSES="st_header model_dir" # as in tests/fuzz/fuzz.cmake
FUZZ_DIR=$NX_ROOT/build-fuzz
TESTS_FUZZ=$NX_ROOT/tests/fuzz

case $FUZZ_SECONDS in
'' | *[!0-9]*) echo "usage: launch/fuzz.sh [SECONDS]" >&2; exit 2 ;;
esac

# Whether clang can link a libFuzzer target (the runtime is a separate package on Debian).
fuzz_have_clang() {
    command -v clang >/dev/null || return 1
    local probe
    probe=$(mktemp -d)
    printf 'int LLVMFuzzerTestOneInput(const char *d, unsigned long n) { (void)d; (void)n; '\
'return 0; }\n' >"$probe/p.c"
    clang -fsanitize=fuzzer,address,undefined "$probe/p.c" -o "$probe/p" >/dev/null 2>&1
    local rc=$?
    rm -rf "$probe"
    return $rc
}

fuzz_install_clang() {
    fuzz_have_clang && return 0
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        echo "fuzz: clang with libFuzzer is missing; install clang and libclang-rt-<version>-dev" >&2
        return 1
    fi
    echo "fuzz: installing clang and the libFuzzer runtime" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clang >/dev/null
    fuzz_have_clang && return 0
    # Debian 12 ships libFuzzer (libclang_rt.fuzzer) in libclang-rt-<major>-dev.
    local major
    major=$(clang -dumpversion | cut -d. -f1)
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "libclang-rt-$major-dev" >/dev/null
    fuzz_have_clang || { echo "fuzz: clang still cannot link -fsanitize=fuzzer" >&2; return 1; }
}

# A CMake build of the project with clang and libFuzzer's instrumentation; tests/fuzz/fuzz.cmake
# adds the harness targets. UBSan findings abort, so that libFuzzer records them.
fuzz_build() {
    local flags="-g -O1 -fno-omit-frame-pointer -fsanitize=fuzzer-no-link,address,undefined"
    flags+=" -fno-sanitize-recover=undefined"
    mkdir -p "$FUZZ_DIR"
    cmake -S "$NX_ROOT" -B "$FUZZ_DIR" -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=Fuzz \
        -DCMAKE_C_FLAGS="$flags" -DNX_WERROR=OFF -DBUILD_TESTING=OFF \
        -DCMAKE_PROJECT_nvfp4x_INCLUDE="$TESTS_FUZZ/fuzz.cmake" >"$FUZZ_DIR/configure.log" 2>&1 ||
        { cat "$FUZZ_DIR/configure.log" >&2; return 1; }
    local targets=()
    for h in $FUZZ_HARNESSES; do
        targets+=(--target "fuzz_$h")
    done
    cmake --build "$FUZZ_DIR" -j "$(nproc)" "${targets[@]}" >"$FUZZ_DIR/build.log" 2>&1 ||
        { tail -50 "$FUZZ_DIR/build.log" >&2; return 1; }
}

# Crash, leak, timeout and OOM inputs libFuzzer wrote under a run directory.
artifacts() {
    find "$1" -maxdepth 1 -type f \( -name 'crash-*' -o -name 'leak-*' -o -name 'timeout-*' \
        -o -name 'oom-*' -o -name 'slow-unit-*' \) | sort
}

# Replays tests/fuzz/regress/<harness>/*: bugs found earlier must stay fixed.
fuzz_replay() {
    local h=$1 dir=$TESTS_FUZZ/regress/$1
    [ -d "$dir" ] && [ -n "$(ls -A "$dir")" ] || return 0
    if "$FUZZ_DIR/fuzz_$h" -runs=1 "$dir"/* >"$FUZZ_DIR/run/$h/replay.log" 2>&1; then
        echo "fuzz_$h: $(ls "$dir" | wc -l) reproducers in tests/fuzz/regress/$h pass"
        return 0
    fi
    echo "fuzz_$h: FAILED on a reproducer in tests/fuzz/regress/$h:"
    grep -E 'Running:|ERROR|runtime error|SUMMARY' "$FUZZ_DIR/run/$h/replay.log" | head -20
    echo "  log: $FUZZ_DIR/run/$h/replay.log"
    return 1
}

# One harness for FUZZ_SECONDS on a fresh copy of its seeds; output in run/<h>/fuzz.log.
fuzz_run() {
    local h=$1 run=$FUZZ_DIR/run/$1 max_len=4096
    [ "$h" = model_dir ] && max_len=16384
    # libFuzzer checks -max_total_time between inputs; the outer limit only catches a hang
    # that -timeout could not (a hang in libFuzzer itself).
    timeout -k 10 $((FUZZ_SECONDS + 300)) "$FUZZ_DIR/fuzz_$h" \
        -max_total_time="$FUZZ_SECONDS" -timeout=10 -rss_limit_mb=2048 -max_len=$max_len \
        -dict="$TESTS_FUZZ/$h.dict" -artifact_prefix="$run/" -print_final_stats=1 \
        "$run/corpus" >"$run/fuzz.log" 2>&1
}

fuzz_report() {
    local h=$1 rc=$2 run=$FUZZ_DIR/run/$1 found
    found=$(artifacts "$run")
    if [ "$rc" = 0 ] && [ -z "$found" ]; then
        echo "fuzz_$h: ok, $(grep -E '^#[0-9]+[[:space:]]+DONE' "$run/fuzz.log" | tail -1)"
        grep -E '^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)' \
            "$run/fuzz.log" | sed 's/^/  /'
        echo "  corpus: $(ls "$run/corpus" | wc -l) inputs (from $(ls "$TESTS_FUZZ/corpus/$h" |
            wc -l) seeds)"
        return 0
    fi
    echo "fuzz_$h: FAILED (exit $rc)"
    grep -E -A 12 '^==[0-9]+==ERROR|runtime error|check failed|^SUMMARY' "$run/fuzz.log" |
        head -40
    for f in $found; do
        echo "  failing input: $f"
        echo "  reproduce:     $FUZZ_DIR/fuzz_$h $f"
    done
    echo "  log: $run/fuzz.log"
    return 1
}

nx_install_deps
fuzz_install_clang
echo "== building libFuzzer harnesses into build-fuzz/"
fuzz_build

# The committed seeds are make_corpus.py's output; say so when someone changed one of them only.
"$NX_PY" "$TESTS_FUZZ/make_corpus.py" "$FUZZ_DIR/seeds" >/dev/null
diff -rq "$FUZZ_DIR/seeds" "$TESTS_FUZZ/corpus" >/dev/null ||
    echo "fuzz: warning: tests/fuzz/corpus is not what make_corpus.py writes; regenerate with" \
        "python3 tests/fuzz/make_corpus.py tests/fuzz/corpus" >&2

status=0
for h in $FUZZ_HARNESSES; do
    rm -rf "$FUZZ_DIR/run/$h"
    mkdir -p "$FUZZ_DIR/run/$h/corpus"
    cp "$TESTS_FUZZ/corpus/$h/"* "$FUZZ_DIR/run/$h/corpus/"
    fuzz_replay "$h" || status=1
done

echo "== fuzzing $FUZZ_HARNESSES for ${FUZZ_SECONDS}s each"
# One harness per core: they run side by side when there are two cores or more.
declare -A pids rcs
if [ "$(nproc)" -ge 2 ]; then
    for h in $FUZZ_HARNESSES; do
        fuzz_run "$h" &
        pids[$h]=$!
    done
    for h in $FUZZ_HARNESSES; do
        rcs[$h]=0
        wait "${pids[$h]}" || rcs[$h]=$?
    done
else
    for h in $FUZZ_HARNESSES; do
        rcs[$h]=0
        fuzz_run "$h" || rcs[$h]=$?
    done
fi
for h in $FUZZ_HARNESSES; do
    fuzz_report "$h" "${rcs[$h]}" || status=1
done
exit $status
