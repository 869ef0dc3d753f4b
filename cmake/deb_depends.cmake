# Run by cpack (CPACK_PROJECT_CONFIG_FILE): the Depends of the .deb, found on this machine rather
# than named by hand, since package names change between releases (libhdf5-openmpi-103 and
# libhdf5-openmpi-103-1, libopenmpi3 and libopenmpi40).
#  * The libraries: dpkg-shlibdeps (package dpkg-dev), through CPACK_DEBIAN_PACKAGE_SHLIBDEPS,
#    which also gives minimum versions. Without it, or with NX_DEB_SHLIBDEPS=OFF in the
#    environment: the package owning each library the binary needs (DT_NEEDED), resolved by ldd
#    and looked up with dpkg-query -S, without versions.
#  * The MPI launcher's package (openmpi-bin: mpirun, and orted, which Open MPI starts even for
#    a single rank), the same way from the mpiexec the build found.
if(NOT CPACK_GENERATOR STREQUAL "DEB")
  return()
endif()

# The installed package that owns FILE. Tries the path as given and resolved: on merged-/usr
# systems a package may list /lib/... while ldd reports /usr/lib/... or the reverse.
function(nx_deb_owner file out)
  get_filename_component(real "${file}" REALPATH)
  string(REGEX REPLACE "^/usr/" "/" unmerged "${real}")
  foreach(path "${file}" "${real}" "${unmerged}")
    execute_process(COMMAND dpkg-query -S "${path}" RESULT_VARIABLE rc
                    OUTPUT_VARIABLE found ERROR_QUIET)
    # "pkg:arch: path" or "pkg1, pkg2: path"; a diversion adds a "diversion by ..." line.
    string(REPLACE "\n" ";" lines "${found}")
    foreach(line IN LISTS lines)
      if(rc EQUAL 0 AND line MATCHES "^([a-z0-9][a-z0-9+.-]+)[:,]")
        set(${out} ${CMAKE_MATCH_1} PARENT_SCOPE)
        return()
      endif()
    endforeach()
  endforeach()
  message(FATAL_ERROR "nvfp4x .deb: no installed Debian package owns ${file}")
endfunction()

# Packages owning the shared libraries BINARY needs directly.
function(nx_deb_library_packages binary out)
  execute_process(COMMAND readelf -d "${binary}" RESULT_VARIABLE rc OUTPUT_VARIABLE dyn)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "nvfp4x .deb: cannot read ${binary} (build it first)")
  endif()
  string(REGEX MATCHALL "\\(NEEDED\\)[^[]*\\[[^]\n]+\\]" entries "${dyn}")
  set(needed "")
  foreach(entry IN LISTS entries)
    string(REGEX REPLACE ".*\\[(.*)\\]" "\\1" name "${entry}")
    list(APPEND needed "${name}")
  endforeach()
  execute_process(COMMAND ldd "${binary}" OUTPUT_VARIABLE resolved)
  string(REPLACE "\n" ";" lines "${resolved}")
  set(packages "")
  foreach(line IN LISTS lines)
    if(line MATCHES "^[ \t]*([^ \t]+) => (/[^ ]+) ")
      set(path "${CMAKE_MATCH_2}")
      list(FIND needed "${CMAKE_MATCH_1}" at) # cpack runs this without policies: no IN_LIST
      if(at GREATER -1)
        nx_deb_owner("${path}" package)
        list(APPEND packages ${package})
      endif()
    endif()
  endforeach()
  list(REMOVE_DUPLICATES packages)
  list(SORT packages)
  set(${out} "${packages}" PARENT_SCOPE)
endfunction()

set(nx_depends "")
if(NX_DEB_LAUNCHER)
  nx_deb_owner("${NX_DEB_LAUNCHER}" nx_launcher_package)
  list(APPEND nx_depends ${nx_launcher_package})
endif()
set(nx_shlibdeps "$ENV{NX_DEB_SHLIBDEPS}")
if(NOT DEFINED ENV{NX_DEB_SHLIBDEPS})
  set(nx_shlibdeps ON)
endif()
find_program(NX_DPKG_SHLIBDEPS dpkg-shlibdeps)
if(NX_DPKG_SHLIBDEPS AND nx_shlibdeps)
  set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
else()
  nx_deb_library_packages("${NX_DEB_BINARY}" nx_library_packages)
  list(APPEND nx_depends ${nx_library_packages})
endif()
list(REMOVE_DUPLICATES nx_depends)
string(REPLACE ";" ", " CPACK_DEBIAN_PACKAGE_DEPENDS "${nx_depends}")
if(CPACK_DEBIAN_PACKAGE_SHLIBDEPS)
  message(STATUS "nvfp4x .deb: Depends ${CPACK_DEBIAN_PACKAGE_DEPENDS} and dpkg-shlibdeps' list")
else()
  message(STATUS "nvfp4x .deb: Depends ${CPACK_DEBIAN_PACKAGE_DEPENDS} (dpkg-query -S)")
endif()
