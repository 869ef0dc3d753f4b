/* The version (CMakeLists.txt reads NX_VERSION from here) and `nvfp4x --version`. */
#ifndef NVFP4X_VERSION_H
#define NVFP4X_VERSION_H

#include <stdio.h>

#define NX_VERSION "0.1.0"

/* "nvfp4x <version>", then one "key: value" line per library and build property (README
 * "Installing"): MPI, HDF5 and whether it is parallel, cJSON, OpenMP, the NVFP4 kernels
 * compiled in and the one this CPU will use. */
void nx_version_print(FILE *f);

#endif
