/* nvfp4x --version: what this binary was built with and runs with. Libraries report their
 * run-time versions; a different version at build time is shown in parentheses. */
#include "nvfp4x/version.h"

#include <cjson/cJSON.h>
#include <hdf5.h>
#include <mpi.h>
#include <stdio.h>
#include <string.h>

#include "nvfp4x/quantize.h"

#ifndef NX_BUILD_TYPE
#define NX_BUILD_TYPE "unknown"
#endif
#define NX_STR_(x) #x
#define NX_STR(x) NX_STR_(x)

/* MPI_Get_library_version may be called before MPI_Init (MPI 3.1, 8.1.1). Some libraries
 * (MPICH) return several lines: the first names the library and its version. */
static void print_mpi(FILE *f)
{
    char lib[MPI_MAX_LIBRARY_VERSION_STRING] = "";
    int len = 0, major = 0, minor = 0;
    MPI_Get_library_version(lib, &len);
    lib[strcspn(lib, "\r\n")] = '\0';
    MPI_Get_version(&major, &minor);
    fprintf(f, "mpi: %s\n", lib);
    fprintf(f, "mpi-standard: %d.%d\n", major, minor);
}

static void print_hdf5(FILE *f)
{
    unsigned major = 0, minor = 0, release = 0;
    H5get_libversion(&major, &minor, &release);
    fprintf(f, "hdf5: %u.%u.%u", major, minor, release);
    if (major != H5_VERS_MAJOR || minor != H5_VERS_MINOR || release != H5_VERS_RELEASE)
        fprintf(f, " (built with %d.%d.%d)", H5_VERS_MAJOR, H5_VERS_MINOR, H5_VERS_RELEASE);
    fputc('\n', f);
#ifdef NX_HDF5_PARALLEL
    fputs("hdf5-parallel: yes\n", f);
#else
    fputs("hdf5-parallel: no\n", f);
#endif
}

static void print_cjson(FILE *f)
{
    static const char built[] = NX_STR(CJSON_VERSION_MAJOR) "." NX_STR(CJSON_VERSION_MINOR)
        "." NX_STR(CJSON_VERSION_PATCH);
    const char *run = cJSON_Version();
    fprintf(f, "cjson: %s", run);
    if (strcmp(run, built) != 0)
        fprintf(f, " (built with %s)", built);
    fputc('\n', f);
}

/* The kernels compiled in, and the one an export will use: nx_kernel_select's choice, so
 * NX_KERNEL counts (an NX_KERNEL that export would refuse is shown with the reason). */
static void print_kernels(FILE *f)
{
    fputs("kernels:", f);
    for (int k = 0; k < NX_KERNEL_COUNT; k++)
        if (nx_kernel_compiled((nx_kernel)k))
            fprintf(f, " %s", nx_kernel_name((nx_kernel)k));
    fputc('\n', f);
    nx_kernel k;
    nx_err e = { 0 };
    if (nx_kernel_select(&k, &e) != NX_OK)
        fprintf(f, "kernel: refused: %s\n", e.msg);
    else if (k != nx_kernel_best())
        fprintf(f, "kernel: %s (NX_KERNEL; best here: %s)\n", nx_kernel_name(k),
                nx_kernel_name(nx_kernel_best()));
    else
        fprintf(f, "kernel: %s\n", nx_kernel_name(k));
}

static void print_build(FILE *f)
{
#if defined(__clang__)
    const char *compiler = "clang " __clang_version__;
#elif defined(__GNUC__)
    const char *compiler = "gcc " __VERSION__;
#else
    const char *compiler = "unknown compiler";
#endif
    fprintf(f, "build: %s, %s", NX_BUILD_TYPE, compiler);
#ifdef NX_SANITIZE_BUILD
    fputs(", AddressSanitizer + UndefinedBehaviorSanitizer", f);
#endif
    fputc('\n', f);
}

void nx_version_print(FILE *f)
{
    fprintf(f, "nvfp4x %s\n", NX_VERSION);
    print_mpi(f);
    print_hdf5(f);
    print_cjson(f);
#if defined(_OPENMP)
    fputs("openmp: yes\n", f);
#else
    fputs("openmp: no\n", f);
#endif
    print_kernels(f);
    print_build(f);
}
