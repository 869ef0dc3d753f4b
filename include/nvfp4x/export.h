/* The export pipeline: the seven phases of DESIGN.md in order, on every rank. */
#ifndef NVFP4X_EXPORT_H
#define NVFP4X_EXPORT_H

#include <mpi.h>
#include <stdint.h>
#include <stdio.h>

#include "nvfp4x/classify.h"
#include "nvfp4x/mse.h"
#include "nvfp4x/plan.h"
#include "nvfp4x/quantize.h"

typedef enum nx_kv_mode { NX_KV_AUTO, NX_KV_FP8, NX_KV_NONE } nx_kv_mode;

typedef struct nx_export_opts {
    const char *model, *output, *calib;
    nx_numerics numerics;
    int numerics_given; /* --numerics was given; else DeepSeek-V4 defaults to cpu (the
                         * script's default device), everything else to gpu */
    nx_weight_calib weight_calib; /* max (default) or mse: the sweep gives every block scale */
    nx_classify_opts classify;
    int weight_only;
    int cast_mxfp4;  /* --cast-mxfp4: ModelOpt's closed-form cast of MXFP4 experts, gpt-oss's
                      * fused and DeepSeek-V4's routed ones (mxfp4.h) */
    nx_format format;
    nx_kv_mode kv;
    uint64_t max_shard_bytes;
    int threads;
    uint64_t mem_budget; /* bytes of whole tensors kept between phases 5 and 6; 0: none */
    int quiet;
    int force;
    int resume;      /* continue an interrupted export's staging directory */
    int no_fsync;    /* do not fsync the shards before the rename */
    const char *report; /* --report FILE.h5: per-tensor statistics (docs/report.md) */
    int plan_ranks;  /* plan: ranks to plan for */
    int plan_owners; /* plan: list every work item's owner */
} nx_export_opts;

int nx_export_run(const nx_export_opts *o, MPI_Comm comm, nx_err *e);
/* Dry run (rank 0 prints): classification, groups, exclusions, per-rank bytes, shards. */
int nx_plan_run(const nx_export_opts *o, MPI_Comm comm, FILE *out, nx_err *e);

#endif
