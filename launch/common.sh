# Shared by launch/demo.sh and launch/test.sh (sourced): install what is missing, build.
set -euo pipefail
NX_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
NX_PY=/usr/bin/python3
[ -x "$NX_PY" ] || NX_PY=$(command -v python3)
NX_PACKAGES="cmake make gcc pkg-config libopenmpi-dev openmpi-bin libhdf5-openmpi-dev \
libcjson-dev zlib1g-dev python3-numpy python3-h5py"
# Tests also build against serial HDF5, which other clusters have; e2e_install makes and installs
# the .deb (dpkg-shlibdeps) and renders the man page.
NX_TEST_PACKAGES="libhdf5-dev time dpkg-dev man-db groff-base"

# Open MPI refuses root unless told; CI and containers run as root.
if [ "$(id -u)" = 0 ]; then
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi

nx_have_deps() {
    command -v cmake >/dev/null && command -v mpicc >/dev/null && command -v mpirun >/dev/null &&
        pkg-config --exists libcjson 2>/dev/null && [ -e /usr/include/zlib.h ] &&
        { [ -n "$(ls /usr/include/hdf5/*/hdf5.h /usr/include/hdf5.h 2>/dev/null)" ]; } &&
        "$NX_PY" -c 'import numpy, h5py' 2>/dev/null
}

nx_install_deps() { # nx_install_deps [EXTRA_PACKAGES...]
    local missing=""
    for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
    nx_have_deps && [ -z "$missing" ] && return 0
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        echo "nvfp4x: missing build dependencies; install: $NX_PACKAGES" >&2
        return 1
    fi
    echo "nvfp4x: installing $NX_PACKAGES$missing" >&2
    apt-get update -qq
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $NX_PACKAGES $missing >/dev/null
}

nx_build() { # nx_build BUILD_DIR [CMAKE_ARGS...]
    local dir=$1
    shift
    cmake -S "$NX_ROOT" -B "$dir" -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
    cmake --build "$dir" -j "$(nproc)"
}
