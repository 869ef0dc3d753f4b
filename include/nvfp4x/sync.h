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
    int32_t *k_shared;       /* --cast-mxfp4, per module with an MXFP4 source: the k_max of its
                              * fused group (weight_scale_2 is 2^(k - 8)); NX_NOT_CAST for
                              * every other module, and all of them without the cast */
    int32_t *k_window;       /* the same modules: their own k_max (NX_E8M0_NONE when every
                              * scale byte is 0), the window of the closed-form block amax */
    float *in;               /* resolved input amax; unused with weight-only */
    uint8_t *w_from_weight;  /* fallback used: amax computed from the weight */
    uint8_t *in_from_layer;  /* fallback used: expert without its own input amax */
} nx_amax;

#define NX_NOT_CAST INT32_MIN

/* Tensors read here stay in memory for phase 6 as far as src's budget allows. cast
 * (--cast-mxfp4): modules with an MXFP4 source take the closed form from their E8M0 scales
 * (k_shared, k_window; w = 6 * 448 * 2^(k_shared - 8)) instead of a weight amax, whatever the
 * calibration holds for them; every other module is resolved as usual. */
int nx_amax_sync(nx_source *src, const nx_classes *k, const nx_stats *s, const nx_plan *p,
                 int weight_only, int cast, nx_amax *a, MPI_Comm comm, nx_err *e);
void nx_amax_free(nx_amax *a);

#endif
