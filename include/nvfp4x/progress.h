/* Progress and early stop for phase 6: rounds of non-blocking MPI_Iallreduce carry each
 * rank's bytes done, whether it failed, and whether it finished. Rank 0 prints. */
#ifndef NVFP4X_PROGRESS_H
#define NVFP4X_PROGRESS_H

#include <mpi.h>
#include <stdint.h>

typedef struct nx_progress {
    MPI_Comm comm;
    MPI_Request req;
    int active;          /* a round is in flight */
    uint64_t send[3];    /* bytes done, failed, finished */
    uint64_t recv[3];
    uint64_t total_bytes;
    int nranks, rank;
    int quiet, tty;
    double t0, last_print;
    int stop;            /* some rank failed: stop working */
    int all_done;
    const char *what;
    const char *unit;    /* NULL: the totals are bytes; else counts of this, e.g. "blocks" */
} nx_progress;

void nx_progress_init(nx_progress *pg, MPI_Comm comm, uint64_t total_bytes, const char *what,
                      int quiet);
/* Non-blocking: records this rank's state, completes or starts a round. */
void nx_progress_poll(nx_progress *pg, uint64_t done_bytes);
/* Marks this rank finished (failed or not) and waits until every rank is finished or one
 * failed. */
void nx_progress_finish(nx_progress *pg, int failed);

#endif
