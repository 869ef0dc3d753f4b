/* The staging directory: the export writes into "<dst>.nvfp4x-staging" next to dst, keeps
 * its journal there, and only a complete export is renamed to dst. */
#ifndef NVFP4X_STAGING_H
#define NVFP4X_STAGING_H

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

#endif
