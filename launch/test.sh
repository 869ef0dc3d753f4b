#!/usr/bin/env bash
# Installs what is missing, builds, and runs every test with ctest: once in a release build,
# once under AddressSanitizer + UndefinedBehaviorSanitizer.
source "$(dirname "$0")/common.sh"
nx_install_deps
cd "$NX_ROOT"

echo "== release build"
nx_build build
ctest --test-dir build --output-on-failure -j 2

echo "== AddressSanitizer + UndefinedBehaviorSanitizer build"
nx_build build-asan -DNX_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug
ASAN_OPTIONS=detect_leaks=1 ctest --test-dir build-asan --output-on-failure -j 2
