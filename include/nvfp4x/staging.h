/* The staging directory: the export writes into "<dst>.nvfp4x-staging" next to dst, keeps
 * its journal there, and only a complete export that passes the structural rules of verify is
 * renamed to dst. */
#ifndef NVFP4X_STAGING_H
#define NVFP4X_STAGING_H

#include <stdint.h>

#include "nvfp4x/error.h"

typedef struct nx_staging_opts {
    int force;               /* replace dst / discard an old staging directory */
    int resume;              /* continue an old staging directory with the same fingerprint */
    const char *fingerprint; /* nx_plan_fingerprint of this run */
} nx_staging_opts;

/* Rank 0. Creates the staging directory, or reuses it when resuming (*resumed = 1). Refuses an
 * existing dst, or an existing staging directory without --resume/--force, or one made by a
 * different export. *staging is set only when the directory is ours to remove on failure. */
int nx_staging_open(const char *dst, const nx_staging_opts *o, char **staging, int *resumed,
                    nx_err *e);
/* Removes the journal, fsyncs staging and renames it to dst (replacing an old dst when force). */
int nx_staging_commit(const char *staging, const char *dst, int force, nx_err *e);
/* Removes a directory tree. */
int nx_remove_tree(const char *path);

/* What the check before publishing found. */
typedef struct nx_staging_check {
    int64_t n_tensors, n_quantized, n_violations;
    double seconds; /* wall time of the check */
    int failed;     /* a violation, or staging unreadable as a checkpoint: nothing was renamed */
} nx_staging_check;

/* Rank 0, the last step of an export: verify's structural rules (configs, index, shard
 * headers, dtypes and shapes, fused siblings, MoE completeness, exclude list, KV scales) on
 * staging, then nx_staging_commit. When the check fails nothing is renamed, staging is left as
 * it is (journal included) and the error, NX_EIO, names the first violation's rule and tensor
 * and how many more there are. */
int nx_staging_check_commit(const char *staging, const char *dst, int force,
                            nx_staging_check *chk, nx_err *e);

#endif
