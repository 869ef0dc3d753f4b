/* Phase 6, quantize and write: each rank streams its tensors (read -> quantize with threads ->
 * pwrite at the planned offset). Memory stays bounded by a few row blocks. */
#ifndef NVFP4X_WRITER_H
#define NVFP4X_WRITER_H

#include <mpi.h>

#include "nvfp4x/calib.h"
#include "nvfp4x/catalog.h"
#include "nvfp4x/classify.h"
#include "nvfp4x/mse.h"
#include "nvfp4x/plan.h"
#include "nvfp4x/quantize.h"
#include "nvfp4x/stats.h"
#include "nvfp4x/sync.h"

typedef struct nx_write_opts {
    nx_numerics numerics;
    nx_numerics input_numerics; /* input_scale's division: numerics, except DeepSeek-V4 where
                                 * ModelOpt's script always divides on the CPU */
    int cast_mxfp4;         /* --cast-mxfp4: MXFP4 experts cast in closed form (mxfp4.h) */
    int64_t *cast_blocks;   /* with cast_mxfp4, every rank gets: [0] MXFP4 blocks cast,
                             * [1] of them lossless (ModelOpt's count) */
    int threads;            /* per rank, >= 1 */
    int quiet;
    const char *calib_path; /* for static per-block amax */
    nx_calib *calib;        /* the collectively opened file, or NULL: open rank-locally */
    int resumed;            /* reuse journaled items whose outputs check out */
    nx_format format;
    const char *report;     /* --report FILE.h5, or NULL */
    int no_fsync;           /* --no-fsync: leave flushing the shards to the kernel */
    const nx_mse *mse;      /* --weight-calib mse: every block scale from the sweep, or NULL */
} nx_write_opts;

/* Rank 0: creates each shard in dir at its final size with its header written; with
 * keep_existing (resuming), a shard already there at its planned size is kept. */
int nx_shards_create(const nx_plan *p, const char *dir, int keep_existing, nx_err *e);

/* Every rank: produces the outputs of the work it owns into the shards in dir. A failure on
 * any rank stops all ranks promptly; the returned status is agreed. */
int nx_write_run(nx_source *src, const nx_classes *k, const nx_stats *s, const nx_amax *a,
                 const nx_plan *p, const char *dir, const nx_write_opts *o, MPI_Comm comm,
                 nx_err *e);

#endif
