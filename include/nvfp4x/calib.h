/* Calibration statistics: the HDF5 schema of DESIGN.md ("Calibration file"). */
#ifndef NVFP4X_CALIB_H
#define NVFP4X_CALIB_H

#include <mpi.h>
#include <stdint.h>

#include "nvfp4x/error.h"

typedef struct nx_calib nx_calib;

/* Opens path read-only and indexes every dataset (HDF5 path with '/' turned into '.').
 * Works with serial and parallel HDF5 builds; each caller opens independently. */
int nx_calib_open(const char *path, nx_calib **c, nx_err *e);
/* With parallel HDF5: every rank of comm opens the file collectively (MPI-IO); reads stay
 * independent, and nx_calib_close is then collective too. With serial HDF5 it returns
 * NX_OK and *c = NULL: the caller opens rank-locally instead. */
int nx_calib_open_collective(const char *path, MPI_Comm comm, nx_calib **c, nx_err *e);
int nx_calib_is_collective(const nx_calib *c);
void nx_calib_close(nx_calib *c);
const char *nx_calib_path(const nx_calib *c);

/* Element count of "<module>/<quantizer>/<buffer>" (module in dot form, e.g.
 * "model.layers.0.self_attn.q_proj", quantizer "input_quantizer", buffer "_amax"),
 * or -1 when the dataset does not exist. */
int64_t nx_calib_count(const nx_calib *c, const char *module, const char *quantizer,
                       const char *buffer);

/* Reads exactly n values of that dataset converted to float32. Refuses (NX_EINPUT, naming the
 * dataset as an HDF5 path) a missing dataset, a count other than n, a non-float type, and any
 * NaN, Inf or negative value. */
int nx_calib_read(const nx_calib *c, const char *module, const char *quantizer,
                  const char *buffer, float *out, int64_t n, nx_err *e);

/* Values [first, first + count) of the row-major flattening of that dataset, which must hold
 * total values, checked like nx_calib_read. The range must be whole slices of one dimension
 * (the dimensions before it of size 1): one expert of a fused-expert block amax stored as
 * [E, out, in/16], [E*out, in/16] or flat. */
int nx_calib_read_range(const nx_calib *c, const char *module, const char *quantizer,
                        const char *buffer, int64_t total, int64_t first, int64_t count,
                        float *out, nx_err *e);

/* Number of datasets indexed, for diagnostics. */
int64_t nx_calib_size(const nx_calib *c);

#endif
