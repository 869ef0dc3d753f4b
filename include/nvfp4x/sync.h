/* Phase 5, amax sync: weight amax that calibration lacks is computed by the tensor's owner;
 * one MPI_Allreduce(MAX) unifies every fused group; the expert input amax is the layer max
 * (DESIGN.md "Amax resolution"). */
#ifndef NVFP4X_SYNC_H
#define NVFP4X_SYNC_H

#include <mpi.h>
#include <stdint.h>

#include "nvfp4x/catalog.h"
#include "nvfp4x/classify.h"
#include "nvfp4x/plan.h"
#include "nvfp4x/stats.h"

typedef struct nx_amax {
    float *w;                /* per quantized module: resolved weight amax (group max) */
    float *w_own;            /* its own weight amax, before the group max (every rank) */
    float *in;               /* resolved input amax; unused with weight-only */
    uint8_t *w_from_weight;  /* fallback used: amax computed from the weight */
    uint8_t *in_from_layer;  /* fallback used: expert without its own input amax */
    int32_t *cast_kmax;      /* --cast-mxfp4, per module from MXFP4: the k_max of its closed-form
                                per-block amax (mxfp4.h); NX_NOT_CAST for every other module */
    int64_t cast_blocks, cast_lossless; /* MXFP4 blocks cast, and how many of them losslessly */
} nx_amax;

#define NX_NOT_CAST INT32_MIN

/* Tensors read here stay in memory for phase 6 as far as src's budget allows. cast_mxfp4: the
 * weight amax of MXFP4 fused experts is ModelOpt's closed form from their E8M0 scales
 * (--cast-mxfp4), whatever the calibration holds for them. */
int nx_amax_sync(nx_source *src, const nx_classes *k, const nx_stats *s, const nx_plan *p,
                 int weight_only, int cast_mxfp4, nx_amax *a, MPI_Comm comm, nx_err *e);
void nx_amax_free(nx_amax *a);

#endif
