/* nvfp4x verify: the consumer rules of CONSUMERS.md on any NVFP4 checkpoint of ModelOpt's
 * unified layout or llm-compressor's nvfp4-pack-quantized (compressed-tensors), plus exactness
 * against the source model (BF16/F16/F32 or FP8 block-scaled) when one is given. */
#ifndef NVFP4X_VERIFY_H
#define NVFP4X_VERIFY_H

#include <mpi.h>
#include <stdint.h>
#include <stdio.h>

#include "nvfp4x/error.h"

#include "nvfp4x/quantize.h"

typedef struct nx_verify_opts {
    const char *dir;   /* the checkpoint to check */
    const char *model; /* source model directory, or NULL */
    int json;          /* violations as JSON lines instead of text */
    int structural;    /* only the rules that configs, index, shard headers and the per-tensor
                          scalars show (export's check before publishing): no scan of block
                          scales (T3), no source model */
    int sweep;         /* with model: block scales must be the MSE sweep's choice (rule MSE) */
    nx_numerics numerics; /* of that sweep */
    int full;          /* every block, not a sample */
} nx_verify_opts;

typedef struct nx_verify_result {
    int64_t n_tensors;
    int64_t n_quantized;   /* quantized modules */
    int64_t n_violations;
    double worst_rel_rms;  /* with a source model: worst relative RMS reconstruction error */
} nx_verify_result;

/* Checks every rule, printing one line per violation to out ("RULE name: message").
 * Returns NX_OK when the checkpoint could be read (violations are counted in r), NX_EINPUT
 * when it or the source cannot be read or parsed at all. One process, no MPI call. */
int nx_verify_run(const nx_verify_opts *o, nx_verify_result *r, FILE *out, nx_err *e);

/* nx_verify_run spread over the ranks of comm; collective, every rank passing the same
 * options. Rank 0 prints every rank's violations to out (unused elsewhere), in the same order
 * for any number of ranks; every rank returns the same status and r. report: NULL, or an
 * HDF5 file (docs/report.md) for the reconstruction statistics of every quantized module whose
 * source weight has its shape; it needs o->model (NX_EINPUT without). */
int nx_verify_run_collective(const nx_verify_opts *o, const char *report, MPI_Comm comm,
                             nx_verify_result *r, FILE *out, nx_err *e);

#endif
