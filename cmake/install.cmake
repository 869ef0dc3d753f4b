# Install rules and the Debian package (included by CMakeLists.txt after the nvfp4x target).
# `cmake --install build --prefix P` gives a tree that runs from P/bin/nvfp4x alone: the binary
# links the project's code statically and MPI, HDF5 and cJSON from where the build found them.
include(GNUInstallDirs)

# Libraries outside the distribution's directories (a module's HDF5, /opt, /usr/local) stay
# found after installation through an RPATH; a Debian build gets none. Spack, or a
# CMAKE_INSTALL_RPATH* on the command line, decides instead.
if(NOT DEFINED CMAKE_INSTALL_RPATH_USE_LINK_PATH AND NOT DEFINED CMAKE_INSTALL_RPATH)
  set(NX_RPATH "")
  foreach(lib IN LISTS MPI_C_LIBRARIES HDF5_C_LIBRARIES HDF5_LIBRARIES CJSON_LINK_LIBRARIES
                       NX_CJSON_LIBRARY)
    get_filename_component(dir "${lib}" DIRECTORY)
    if(IS_ABSOLUTE "${lib}" AND NOT lib MATCHES "\\.a$"
       AND NOT dir MATCHES "^(/usr)?/lib(64|32)?(/|$)")
      list(APPEND NX_RPATH "${dir}")
    endif()
  endforeach()
  list(REMOVE_DUPLICATES NX_RPATH)
  set_target_properties(nvfp4x PROPERTIES INSTALL_RPATH "${NX_RPATH}")
endif()

install(TARGETS nvfp4x RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(FILES ${PROJECT_SOURCE_DIR}/docs/nvfp4x.1 DESTINATION ${CMAKE_INSTALL_MANDIR}/man1)
# README.md links docs/*.md: keep that layout under share/doc/nvfp4x.
install(FILES ${PROJECT_SOURCE_DIR}/README.md DESTINATION ${CMAKE_INSTALL_DOCDIR})
file(GLOB NX_DOCS CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/docs/*.md)
install(FILES ${NX_DOCS} DESTINATION ${CMAKE_INSTALL_DOCDIR}/docs)
install(PROGRAMS ${PROJECT_SOURCE_DIR}/launch/mpirun.sh ${PROJECT_SOURCE_DIR}/launch/slurm.sbatch
                 ${PROJECT_SOURCE_DIR}/launch/modelopt_amax_to_h5.py
        DESTINATION ${CMAKE_INSTALL_DATADIR}/nvfp4x/launch)

# cpack -G DEB: nvfp4x_<version>_<arch>.deb installing under /usr. Its Depends are decided when
# cpack runs, from the built binary (cmake/deb_depends.cmake).
set(NX_DEB_MAINTAINER "nvfp4x maintainers <nvfp4x@localhost>" CACHE STRING
    "Maintainer field of the Debian package")
set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME nvfp4x)
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGE_CONTACT "${NX_DEB_MAINTAINER}")
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_SECTION science)
set(CPACK_DEBIAN_PACKAGE_DESCRIPTION
    "exports Mixture-of-Experts checkpoints to NVFP4 with MPI
nvfp4x turns a Hugging Face checkpoint (DeepSeek-V3/R1, Kimi-K2, Qwen3-MoE,
Mixtral, Llama, Qwen) plus ModelOpt calibration statistics into an NVFP4
checkpoint in ModelOpt's unified layout, which vLLM, SGLang and TensorRT-LLM
load. It runs under mpirun or srun on CPU nodes.")
set(CPACK_DEBIAN_PACKAGE_SUGGESTS "python3-h5py, python3-numpy")
file(GENERATE OUTPUT ${PROJECT_BINARY_DIR}/CPackProjectConfig.cmake CONTENT
"set(NX_DEB_BINARY \"$<TARGET_FILE:nvfp4x>\")
set(NX_DEB_LAUNCHER \"${MPIEXEC_EXECUTABLE}\")
include(\"${PROJECT_SOURCE_DIR}/cmake/deb_depends.cmake\")
")
set(CPACK_PROJECT_CONFIG_FILE ${PROJECT_BINARY_DIR}/CPackProjectConfig.cmake)
include(CPack)
