#!/usr/bin/env bash
# Installing: `cmake --install` into a scratch prefix outside the source tree gives a tree that
# runs on its own: --version agrees with the build and with README.md, the demo export and
# verify run with the installed binary from a directory outside the source tree (and equal the
# build's export), the man page renders and names every option of src/main.c, the installed
# launch recipes find the installed binary. `cpack -G DEB` (through dpkg-shlibdeps, and through
# its dpkg-query fallback) gives nvfp4x_<version>_<arch>.deb holding the binary and the man page
# and depending on the run-time packages of the libraries linked, which dpkg installs into a
# scratch root. The Spack recipe and the Dockerfile pass tests/check_recipes.py.
source "$(dirname "$0")/lib.sh"
: "${NX_BUILD_DIR:?}"
NX_CMAKE=${NX_CMAKE:-cmake}
NX_CPACK=${NX_CPACK:-cpack}
W=$(work_dir install)
SRC=$(cd "$NX_TESTS/.." && pwd)
VERSION=$(sed -n 's/^#define NX_VERSION "\(.*\)"$/\1/p' "$SRC/include/nvfp4x/version.h")
# The build directory lies inside the source tree: the prefix and the demo go elsewhere.
T=$(mktemp -d "${TMPDIR:-/tmp}/nvfp4x-e2e-install.XXXXXX")
trap 'rm -rf "$T"' EXIT
P=$T/prefix
OUT=$T/outside
mkdir -p "$OUT"
export MANPAGER=cat PAGER=cat MANWIDTH=100

# --- the installed tree ----------------------------------------------------------------------

install_tree() {
    "$NX_CMAKE" --install "$NX_BUILD_DIR" --prefix "$P" >"$W/install.log"
}

installed_files() {
    local f
    for f in bin/nvfp4x share/man/man1/nvfp4x.1 share/doc/nvfp4x/README.md \
        share/doc/nvfp4x/docs/cluster.md share/nvfp4x/launch/mpirun.sh \
        share/nvfp4x/launch/slurm.sbatch share/nvfp4x/launch/modelopt_amax_to_h5.py; do
        [ -f "$P/$f" ] || { echo "missing: $P/$f"; return 1; }
    done
    [ -x "$P/bin/nvfp4x" ] && [ -x "$P/share/nvfp4x/launch/mpirun.sh" ]
}

no_source_paths() { # the installed binary finds nothing through the source or build tree
    local rpath
    rpath=$(readelf -d "$P/bin/nvfp4x" | grep -E 'R(UN)?PATH' || true)
    [[ "$rpath" != *"$SRC"* && "$rpath" != *"$NX_BUILD_DIR"* ]]
}

check "cmake --install into a prefix outside the source tree" install_tree
check "installed: binary, man page, docs, launch recipes" installed_files
check "installed binary: no RPATH into the source or build tree" no_source_paths

# --- nvfp4x --version ------------------------------------------------------------------------

(cd "$OUT" && "$P/bin/nvfp4x" --version) >"$W/version.txt" || true
value() { sed -n "s/^$1: //p" "$W/version.txt"; }
cache() { sed -n "s/^$1:[A-Z]*=//p" "$NX_BUILD_DIR/CMakeCache.txt"; }

readme_keys() { # the keys of README.md's example output of nvfp4x --version, in order
    awk '/^\$ nvfp4x --version$/ { on = 1; next } on && /^```/ { exit } on' "$SRC/README.md" |
        sed -n '2,$s/:.*//p'
}

expected_kernels() {
    if [ "$(uname -m)" = x86_64 ] && [ "${NX_SIMD:-1}" = 1 ]; then
        echo "ref avx2 avx512"
    else
        echo ref
    fi
}

expected_kernel() { # what __builtin_cpu_supports finds, as the kernel reads /proc/cpuinfo
    local flags
    flags=$(grep -m1 '^flags' /proc/cpuinfo || true)
    case " $(expected_kernels) " in
    *" avx512 "*) ;;
    *) echo ref; return ;;
    esac
    if [[ " $flags " == *" avx512f "* ]]; then
        echo avx512
    elif [[ " $flags " == *" avx2 "* ]]; then
        echo avx2
    else
        echo ref
    fi
}

version_hdf5_parallel() {
    local want=no
    [ "${NX_HDF5_PARALLEL:-}" = 1 ] && want=yes
    [ "$(value hdf5-parallel)" = "$want" ]
}

version_build() {
    local v
    v=$(value build)
    [[ "$v" == "$(cache CMAKE_BUILD_TYPE), "* ]] || return 1
    if [ "$(cache NX_SANITIZE)" = ON ]; then
        [[ "$v" == *AddressSanitizer* ]]
    else
        [[ "$v" != *Sanitizer* ]]
    fi
}

version_refused_kernel() {
    local out
    out=$(cd "$OUT" && NX_KERNEL=nonsense "$P/bin/nvfp4x" --version) &&
        grep -qx 'kernel: refused: NX_KERNEL=nonsense: unknown kernel (ref, avx2 or avx512)' \
            <<<"$out"
}

version_once_on_two_ranks() {
    [ "$(cd "$OUT" && "$MPIEXEC" --oversubscribe -np 2 "$P/bin/nvfp4x" --version </dev/null |
        grep -c '^nvfp4x ')" = 1 ]
}

check "--version: first line 'nvfp4x $VERSION'" \
    test "$(head -1 "$W/version.txt")" = "nvfp4x $VERSION"
check "--version: the version is CMake's project version" \
    test "$(cache CMAKE_PROJECT_VERSION)" = "$VERSION"
check "--version: the keys README.md shows, in its order" \
    diff <(sed -n '2,$s/:.*//p' "$W/version.txt") <(readme_keys)
check "--version: mpi names the library" test -n "$(value mpi)"
check "--version: mpi-standard is the build's (${NX_MPI_STANDARD:-})" \
    test "$(value mpi-standard)" = "${NX_MPI_STANDARD:-}"
check "--version: hdf5 is the build's (${NX_HDF5_VERSION:-})" \
    test "$(value hdf5)" = "${NX_HDF5_VERSION:-}"
check "--version: hdf5-parallel matches the build" version_hdf5_parallel
if [ -n "${NX_CJSON_VERSION:-}" ]; then
    check "--version: cjson is the build's ($NX_CJSON_VERSION)" \
        test "$(value cjson)" = "$NX_CJSON_VERSION"
fi
check "--version: kernels compiled in: $(expected_kernels)" \
    test "$(value kernels)" = "$(expected_kernels)"
check "--version: kernel this CPU uses: $(expected_kernel)" \
    test "$(value kernel)" = "$(expected_kernel)"
check "--version: NX_KERNEL=ref is shown" \
    test "$(cd "$OUT" && NX_KERNEL=ref "$P/bin/nvfp4x" --version | sed -n 's/^kernel: //p' |
        cut -d' ' -f1)" = ref
check "--version: an NX_KERNEL that export refuses is shown, exit 0" version_refused_kernel
check "--version: build type and sanitizers of the build" version_build
check "--version after a command prints the same" \
    cmp -s "$W/version.txt" <(cd "$OUT" && "$P/bin/nvfp4x" export --version)
check "--version under mpirun -np 2: printed once" version_once_on_two_ranks
check "--help lists --version" grep -q -- '--version' <("$P/bin/nvfp4x" --help)

# --- the demo export with the installed binary, outside the source tree ------------------------

demo_installed() {
    (
        cd "$OUT" &&
            "$NX_PYTHON" "$NX_TESTS/gen_checkpoint.py" --family deepseek --out model \
                --calib calib.h5 >/dev/null &&
            "$MPIEXEC" --oversubscribe -np 2 "$P/bin/nvfp4x" export --model model \
                --calib calib.h5 --output model-nvfp4 --max-shard-size 300KB --quiet </dev/null &&
            "$P/bin/nvfp4x" verify model-nvfp4 --model model
    ) >"$W/demo.log" 2>&1
}

demo_equals_build() {
    nx 2 export --model "$OUT/model" --calib "$OUT/calib.h5" --output "$T/model-nvfp4-build" \
        --max-shard-size 300KB --quiet &&
        diff <(tree_sums "$OUT/model-nvfp4") <(tree_sums "$T/model-nvfp4-build")
}

check "demo: installed nvfp4x exports under mpirun -np 2 and verifies, from outside the tree" \
    demo_installed
check "demo: the installed binary's export equals the build's" demo_equals_build

# --- the man page -------------------------------------------------------------------------------

MAN=$P/share/man/man1/nvfp4x.1

man_renders() {
    LC_ALL=C.UTF-8 man --warnings -l "$MAN" >"$W/man.txt" 2>"$W/man.err" &&
        [ ! -s "$W/man.err" ] &&
        for s in NAME SYNOPSIS DESCRIPTION COMMANDS OPTIONS 'EXIT STATUS' ENVIRONMENT FILES \
            EXAMPLES; do
            grep -qx "$s" "$W/man.txt" || { echo "no section $s"; return 1; }
        done
}

man_options() { # every long option src/main.c parses, as written in the roff source
    local opt missing=0
    sed 's/\\-/-/g' "$MAN" >"$W/man-source.txt"
    for opt in $(sed -n 's/^ *{ "\([a-z-]*\)", [a-z_]*, 0, OPT_.*/\1/p' "$SRC/src/main.c"); do
        grep -qw -- "--$opt" "$W/man-source.txt" || { echo "not in man: --$opt"; missing=1; }
    done
    [ "$missing" = 0 ]
}

man_facts() {
    grep -q "^\.TH NVFP4X 1 .* \"nvfp4x $VERSION\" " "$MAN" &&
        [ "$(sed -n '/^\.SH "EXIT STATUS"/,/^\.SH/p' "$MAN" | grep -c '^\.B [012]$')" = 3 ] &&
        grep -q '^\.B HDF5_USE_FILE_LOCKING$' "$MAN" && grep -q '^\.B NX_KERNEL$' "$MAN" &&
        for cmd in export verify plan; do grep -q "^\.B $cmd$" "$MAN" || return 1; done
}

check "man -l renders nvfp4x(1) without warnings, all sections" man_renders
check "man page: every option of src/main.c" man_options
check "man page: version, exit statuses 0/1/2, environment, commands" man_facts

# --- the installed launch recipes find the installed binary ------------------------------------

STUB=$T/stub
mkdir -p "$STUB"
printf '#!/bin/sh\necho "mpirun $*"\n' >"$STUB/mpirun"
printf '#!/bin/sh\necho "srun $*"\n' >"$STUB/srun"
chmod +x "$STUB/mpirun" "$STUB/srun"
echo "localhost slots=2" >"$T/hosts"

launch_mpirun() {
    (cd "$T" && env -u NVFP4X PATH="$STUB:$PATH" "$P/share/nvfp4x/launch/mpirun.sh" hosts 1 \
        m c o) >"$W/launch-mpirun.txt" 2>&1 &&
        grep -qF " $(cd "$P/bin" && pwd)/nvfp4x export --model m --calib c --output o" \
            "$W/launch-mpirun.txt"
}

launch_slurm() { # plan runs for real; srun is a stub
    (cd "$T" && env -u NVFP4X PATH="$P/bin:$STUB:$PATH" SLURM_SUBMIT_DIR="$T" SLURM_NTASKS=2 \
        SLURM_CPUS_PER_TASK=1 bash "$P/share/nvfp4x/launch/slurm.sbatch" "$OUT/model" \
        "$OUT/calib.h5" "$T/slurm-out") >"$W/launch-slurm.txt" 2>&1 &&
        grep -qF "srun --cpu-bind=cores $P/bin/nvfp4x export --model $OUT/model" \
            "$W/launch-slurm.txt" &&
        grep -qF "srun --cpu-bind=cores $P/bin/nvfp4x verify $T/slurm-out" "$W/launch-slurm.txt"
}

check "installed mpirun.sh runs PREFIX/bin/nvfp4x" launch_mpirun
check "installed slurm.sbatch runs nvfp4x from PATH (plan for real)" launch_slurm

# --- the Debian package -------------------------------------------------------------------------

DEB=$W/deb/nvfp4x_${VERSION}_$(dpkg --print-architecture).deb

make_deb() { # make_deb OUTDIR [ENV...]: cpack -G DEB from the build, into OUTDIR
    local dir=$1
    shift
    rm -rf "$dir"
    (cd "$W" && env "$@" "$NX_CPACK" --config "$NX_BUILD_DIR/CPackConfig.cmake" -G DEB \
        -B "$dir") >"$dir.log" 2>&1
}

deb_depends() { # the package names of a .deb's Depends, sorted
    dpkg-deb -f "$1" Depends | tr ',|' '\n\n' | sed 's/(.*)//; s/[[:space:]]//g' | grep . |
        sort -u
}

owner() { # owner FILE: the installed package holding FILE (merged /usr: either spelling)
    local real p out
    real=$(readlink -f "$1")
    for p in "$1" "$real" "${real#/usr}"; do
        out=$(dpkg-query -S "$p" 2>/dev/null) || continue
        grep -v '^diversion' <<<"$out" | sed -n '1s/[:,].*//p'
        return 0
    done
    return 1
}

ldd "$NX_BIN" >"$W/ldd.txt"
linked() { # linked PATTERN: the file of the library of NX_BIN whose name matches PATTERN
    sed -n "s/^[[:space:]]*$1[^ ]* => \(\/[^ ]*\) .*/\1/p" "$W/ldd.txt" | sed -n 1p
}

deb_contents() {
    dpkg-deb -c "$DEB" >"$W/deb-contents.txt" && dpkg-deb -I "$DEB" >"$W/deb-info.txt" &&
        grep -q '^ Package: nvfp4x$' "$W/deb-info.txt" &&
        grep -q "^ Version: $VERSION\$" "$W/deb-info.txt" &&
        for f in ./usr/bin/nvfp4x ./usr/share/man/man1/nvfp4x.1 \
            ./usr/share/doc/nvfp4x/README.md ./usr/share/nvfp4x/launch/mpirun.sh \
            ./usr/share/nvfp4x/launch/slurm.sbatch; do
            grep -q " $f\$" "$W/deb-contents.txt" || { echo "not in .deb: $f"; return 1; }
        done
}

deb_runtime_only() { # installed run-time packages; those of MPI, HDF5, cJSON and mpiexec
    local deps p lib pkg
    deps=$(deb_depends "$DEB")
    echo "Depends: $(dpkg-deb -f "$DEB" Depends)"
    [ -n "$deps" ] || return 1
    for p in $deps; do
        case $p in *-dev) echo "a -dev package: $p"; return 1 ;; esac
        [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" = "install ok installed" ] ||
            { echo "not installed here: $p"; return 1; }
    done
    for lib in 'libmpi\.so' 'libhdf5[_.]' 'libcjson\.so'; do
        pkg=$(owner "$(linked "$lib")") && grep -qx "$pkg" <<<"$deps" ||
            { echo "the package of $lib ($pkg) is not a dependency"; return 1; }
    done
    pkg=$(owner "$(command -v "$MPIEXEC")") && grep -qx "$pkg" <<<"$deps" ||
        { echo "the launcher's package ($pkg) is not a dependency"; return 1; }
    [ "$(grep -c '^libhdf5' <<<"$deps")" = 1 ] || { echo "not one HDF5 package"; return 1; }
}

deb_fallback_same() { # without dpkg-shlibdeps: the same packages, from dpkg-query -S
    make_deb "$W/deb-noshlibdeps" NX_DEB_SHLIBDEPS=OFF &&
        grep -q '(dpkg-query -S)' "$W/deb-noshlibdeps.log" &&
        diff <(deb_depends "$DEB") <(deb_depends "$W/deb-noshlibdeps/$(basename "$DEB")")
}

scratch_root() { # scratch_root DIR [PACKAGE...]: a dpkg database holding these host packages
    local root=$1 p name
    shift
    mkdir -p "$root/var/lib/dpkg/info" "$root/var/lib/dpkg/updates"
    : >"$root/var/lib/dpkg/status"
    for p in "$@"; do
        { dpkg-query -s "$p" && echo; } >>"$root/var/lib/dpkg/status"
        for name in $(dpkg-query -W -f='${binary:Package}\n' "$p"); do
            : >"$root/var/lib/dpkg/info/$name.list"
        done
    done
}

deb_installs() {
    local R=$T/root
    # shellcheck disable=SC2046
    scratch_root "$R" $(deb_depends "$DEB") &&
        dpkg --root="$R" --log="$W/dpkg.log" -i "$DEB" >"$W/dpkg-install.txt" 2>&1 &&
        ! grep -Eqi 'error|warning' "$W/dpkg-install.txt" &&
        [ "$(dpkg-query --admindir="$R/var/lib/dpkg" -W -f='${Status}' nvfp4x)" = \
            "install ok installed" ] &&
        [ -x "$R/usr/bin/nvfp4x" ] &&
        [ "$("$R/usr/bin/nvfp4x" --version | sed -n 1p)" = "nvfp4x $VERSION" ] &&
        # Some images (docker's slim Debian) tell dpkg to leave out man pages.
        { [ -f "$R/usr/share/man/man1/nvfp4x.1" ] ||
            grep -qs '^path-exclude.*/usr/share/man' /etc/dpkg/dpkg.cfg.d/*; }
}

deb_needs_its_depends() { # without them dpkg refuses to configure it
    local R=$T/bare
    scratch_root "$R"
    ! dpkg --root="$R" --log="$W/dpkg-bare.log" -i "$DEB" >"$W/dpkg-bare.txt" 2>&1 &&
        grep -q 'dependency problems' "$W/dpkg-bare.txt"
}

check "cpack -G DEB makes $(basename "$DEB")" make_deb "$W/deb"
check "dpkg-deb -I/-c: nvfp4x $VERSION with the binary, man page, docs, recipes" deb_contents
check "Depends: installed run-time packages of the linked MPI, HDF5, cJSON and mpiexec" \
    deb_runtime_only
check "Depends without dpkg-shlibdeps (dpkg-query -S): the same packages" deb_fallback_same
check "dpkg --root -i into a scratch root: installed, no errors, runs" deb_installs
check "dpkg refuses it without its Depends" deb_needs_its_depends

# --- recipes nothing here can run -----------------------------------------------------------------

check "Spack recipe: compiles, variants, dependencies, cmake_args" \
    "$NX_PYTHON" "$NX_TESTS/check_recipes.py" spack "$SRC/launch/spack/package.py" \
    "$SRC/CMakeLists.txt"
check "Dockerfile: instructions, stages, sources, RUN syntax" \
    "$NX_PYTHON" "$NX_TESTS/check_recipes.py" docker "$SRC/launch/Dockerfile" "$SRC"
finish
