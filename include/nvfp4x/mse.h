/* Phase 5b, with --weight-calib mse: ModelOpt's MSE FP8-scale sweep (sweep.h, MSE.md) of every
 * quantized weight, which gives the static per-block amax the writer exports (NUMERICS.md
 * "Static weight"). The blocks of all quantized weights, in classify order, are cut into one
 * equal share per rank, below the tensor, and each rank's threads split its share; the chosen
 * candidates (one byte per block) go to a file in the staging directory's journal, which the
 * owners of the tensors read in phase 6 and the commit removes. */
#ifndef NVFP4X_MSE_H
#define NVFP4X_MSE_H

#include <mpi.h>
#include <stdint.h>

#include "nvfp4x/catalog.h"
#include "nvfp4x/classify.h"
#include "nvfp4x/sweep.h"
#include "nvfp4x/sync.h"

typedef enum nx_weight_calib {
    NX_WEIGHT_CALIB_MAX, /* weight amax from the calibration or max |W| (dynamic scales) */
    NX_WEIGHT_CALIB_MSE  /* static per-block amax from the sweep */
} nx_weight_calib;

typedef struct nx_mse_opts {
    nx_numerics numerics;
    int threads;
    int quiet;
    int resumed; /* a finished sweep of the staging directory is reused */
} nx_mse_opts;

typedef struct nx_mse {
    char *path;             /* the chosen candidates, one byte per block */
    nx_numerics numerics;
    int64_t n_q;
    int64_t *first;         /* per quantized module: its first block in the file */
    float *g;               /* per quantized module: the global amax it is swept against */
    int64_t total_blocks;
    nx_sweep_counts counts; /* every rank's work (pruning rate) */
    double seconds;         /* the sweep's wall time */
    int reused;             /* resumed: the sweep of an earlier run was complete */
} nx_mse;

/* g of each quantized module (MSE.md section 1): the max of own[] over the members of its
 * fused group (classify.h) that share its ModelOpt pattern (nx_sweep_pattern), else its own.
 * So q/k/v, gate/up and w1/w3 share g, an MLA q_a_proj and kv_a_proj_with_mqa do not (export
 * unifies them afterwards: nx_amax.w), and each routed expert has its own. */
int nx_mse_globals(const nx_catalog *c, const nx_classes *k, const float *own, float *g,
                   nx_err *e);

/* Collective: sweeps this rank's share into staging/.nvfp4x-journal/sweep.kb. a->w_own holds
 * every module's max |W|. */
int nx_mse_run(nx_source *src, const nx_classes *k, const nx_amax *a, const char *staging,
               const nx_mse_opts *o, nx_mse *s, MPI_Comm comm, nx_err *e);

/* Blocks [b0, b0 + n) of quantized module q: the _amax ModelOpt stores, fl(g * c_k). */
int nx_mse_block_amax(const nx_mse *s, int64_t q, int64_t b0, int64_t n, float *out, nx_err *e);

void nx_mse_free(nx_mse *s);

/* Blocks [first, end) of total that rank sweeps. */
void nx_mse_share(int64_t total, int rank, int nranks, int64_t *first, int64_t *end);

/* Blocks per second per thread of the fastest sweep variant on this CPU, measured on a few
 * thousand synthetic BF16 Gaussian blocks (plan's prediction); *kernel: its name. */
double nx_mse_measure_rate(nx_numerics m, const char **kernel);

#endif
