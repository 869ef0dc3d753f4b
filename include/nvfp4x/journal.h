/* Crash safety: the staging directory keeps a journal of finished work items with the CRC-32C
 * of each output, and the fingerprint of the plan that made it. --resume reuses an item only
 * when its outputs still have the recorded checksums. */
#ifndef NVFP4X_JOURNAL_H
#define NVFP4X_JOURNAL_H

#include <stdint.h>

#include "nvfp4x/catalog.h"
#include "nvfp4x/error.h"
#include "nvfp4x/plan.h"
#include "nvfp4x/util.h"

#define NX_JOURNAL_DIR ".nvfp4x-journal"
#define NX_JOURNAL_MAX_OUTS 4

typedef struct nx_journal {
    int fd;          /* this rank's journal, append only */
    char *path;
    nx_strmap done;  /* key -> index into crcs */
    uint32_t (*crcs)[NX_JOURNAL_MAX_OUTS];
    int64_t n, cap;
} nx_journal;

/* Opens (creating) <staging>/.nvfp4x-journal/journal.<rank>; with load, first reads the
 * records every rank of an earlier run wrote (a torn last line is ignored). */
int nx_journal_open(nx_journal *j, const char *staging, int rank, int load, nx_err *e);
/* Checksums recorded for key, or NULL. */
const uint32_t *nx_journal_lookup(const nx_journal *j, const char *key);
int nx_journal_append(nx_journal *j, const char *key, const uint32_t *crc, int n, nx_err *e);
/* fsyncs and closes; safe on a zeroed journal. */
int nx_journal_close(nx_journal *j, int rc, nx_err *e);

/* Identifies what an export would write: options, source files (names, sizes, modification
 * times), the calibration file and every shard header. A staging directory is resumed only by
 * a run with the same fingerprint. opts describes the options that change output bytes. */
char *nx_plan_fingerprint(const nx_catalog *c, const nx_plan *p, const char *opts,
                          const char *calib);

#endif
