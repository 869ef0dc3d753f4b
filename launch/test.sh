#!/usr/bin/env bash
# Installs what is missing, builds, and runs every test with ctest: in a release build, under
# AddressSanitizer + UndefinedBehaviorSanitizer, and against serial HDF5; runs the fuzzers for a
# bounded time (NX_FUZZ_SECONDS, default 60 per harness).
source "$(dirname "$0")/common.sh"
# shellcheck disable=SC2086
nx_install_deps $NX_TEST_PACKAGES
cd "$NX_ROOT"

echo "== release build"
nx_build build
ctest --test-dir build --output-on-failure -j 2

echo "== AddressSanitizer + UndefinedBehaviorSanitizer build"
nx_build build-asan -DNX_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug
ASAN_OPTIONS=detect_leaks=1 ctest --test-dir build-asan --output-on-failure -j 2

echo "== libFuzzer harnesses (bounded time)"
bash "$NX_ROOT/launch/fuzz.sh" "${NX_FUZZ_SECONDS:-60}"

echo "== serial HDF5 build"
nx_build build-serial -DHDF5_PREFER_PARALLEL=OFF
ctest --test-dir build-serial --output-on-failure -j 2
