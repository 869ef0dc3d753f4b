/* Phase 3, calibration: each quantized module's statistics from the calibration file, read
 * by rank 0 and broadcast (DESIGN.md "Calibration file"). */
#ifndef NVFP4X_STATS_H
#define NVFP4X_STATS_H

#include <mpi.h>
#include <stdint.h>

#include "nvfp4x/calib.h"
#include "nvfp4x/catalog.h"
#include "nvfp4x/classify.h"

#define NX_ABSENT (-1.0f)

typedef struct nx_stats {
    int64_t n_q;
    float *in_amax;    /* per quantized module: input amax, NX_ABSENT when none */
    float *w_amax;     /* weight amax: scalar _amax, or _global_amax when static; or absent */
    uint8_t *w_static; /* 1: per-block _amax (rows*cols/16 values) with _global_amax */
    int64_t n_attn;
    float *k_amax, *v_amax; /* per attention, NX_ABSENT when none */
    int has_kv;        /* k and v amax for every attention */
} nx_stats;

/* cal: the calibration file opened collectively (parallel HDF5: every rank reads a share and
 * the shares are combined), or opened on rank 0 only (serial HDF5: rank 0 reads everything
 * and broadcasts), or NULL for a weight-only export without one: every statistic is absent. */
int nx_stats_gather(const nx_calib *cal, const nx_catalog *c, const nx_classes *k,
                    nx_stats *s, MPI_Comm comm, nx_err *e);
void nx_stats_free(nx_stats *s);
/* --weight-calib mse: forgets every weight amax (scalar or static) the calibration gave, so
 * that all are computed from the weights; returns how many modules had one. */
int64_t nx_stats_drop_weight(nx_stats *s);

#endif
