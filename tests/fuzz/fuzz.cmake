# Adds the libFuzzer harnesses of tests/fuzz/ to an nvfp4x build without touching
# CMakeLists.txt: launch/fuzz.sh configures with -DCMAKE_PROJECT_nvfp4x_INCLUDE=<this file>,
# CC=clang and the instrumentation (-fsanitize=fuzzer-no-link,address,undefined) in
# CMAKE_C_FLAGS, so nvfp4x_core is built exactly as the project builds it (every source, its
# per-file options and dependencies) and the harnesses only add libFuzzer's main.
cmake_minimum_required(VERSION 3.19) # cmake_language(DEFER)
set(NX_FUZZ_DIR ${CMAKE_CURRENT_LIST_DIR})

function(nx_fuzz_add_targets)
  foreach(h st_header model_dir)
    add_executable(fuzz_${h} ${NX_FUZZ_DIR}/fuzz_${h}.c)
    target_link_libraries(fuzz_${h} PRIVATE nvfp4x_core)
    target_link_options(fuzz_${h} PRIVATE -fsanitize=fuzzer)
  endforeach()
endfunction()

# This file runs inside project(); nvfp4x_core exists only once CMakeLists.txt is done.
cmake_language(DEFER CALL nx_fuzz_add_targets)
