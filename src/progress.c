#include "nvfp4x/progress.h"

#include <stdio.h>
#include <unistd.h>

#include "nvfp4x/util.h"

void nx_progress_init(nx_progress *pg, MPI_Comm comm, uint64_t total_bytes, const char *what,
                      int quiet)
{
    *pg = (nx_progress){ .comm = comm, .total_bytes = total_bytes, .quiet = quiet,
                         .what = what };
    MPI_Comm_size(comm, &pg->nranks);
    MPI_Comm_rank(comm, &pg->rank);
    pg->tty = isatty(STDERR_FILENO);
    pg->t0 = pg->last_print = MPI_Wtime();
}

/* Bytes as "1.50 GB", counts as "1.50M". */
static void amount(const nx_progress *pg, uint64_t v, char *buf, size_t len)
{
    if (pg->unit == NULL)
        nx_format_bytes(v, buf, len);
    else if (v >= 1000000)
        snprintf(buf, len, "%.2fM", (double)v / 1e6);
    else
        snprintf(buf, len, "%llu", (unsigned long long)v);
}

static void print_line(nx_progress *pg, int final)
{
    double now = MPI_Wtime(), el = now - pg->t0;
    double interval = pg->tty ? 0.5 : 10.0;
    if (pg->quiet || pg->rank != 0 || (!final && now - pg->last_print < interval))
        return;
    pg->last_print = now;
    uint64_t done = pg->recv[0];
    char d[32], t[32], r[32];
    amount(pg, done, d, sizeof d);
    amount(pg, pg->total_bytes, t, sizeof t);
    amount(pg, el > 0 ? (uint64_t)(done / el) : 0, r, sizeof r);
    double frac = pg->total_bytes ? (double)done / (double)pg->total_bytes : 1.0;
    double eta = frac > 0 ? el / frac - el : 0;
    fprintf(stderr, "%snvfp4x: %s %s / %s%s%s (%.0f%%), %s%s%s/s, %s %.0fs%s",
            pg->tty ? "\r" : "", pg->what, d, t, pg->unit ? " " : "", pg->unit ? pg->unit : "",
            100.0 * frac, r, pg->unit ? " " : "", pg->unit ? pg->unit : "",
            final ? "took" : "ETA", final ? el : eta, pg->tty && !final ? "   " : "\n");
    fflush(stderr);
}

static void round_done(nx_progress *pg)
{
    pg->active = 0;
    if (pg->recv[1] > 0)
        pg->stop = 1;
    if (pg->recv[2] == (uint64_t)pg->nranks)
        pg->all_done = 1;
    print_line(pg, 0);
}

void nx_progress_poll(nx_progress *pg, uint64_t done_bytes)
{
    pg->send[0] = done_bytes;
    if (pg->active) {
        int flag = 0;
        MPI_Test(&pg->req, &flag, MPI_STATUS_IGNORE);
        if (!flag)
            return;
        round_done(pg);
    }
    if (pg->stop || pg->all_done)
        return;
    MPI_Iallreduce(pg->send, pg->recv, 3, MPI_UINT64_T, MPI_SUM, pg->comm, &pg->req);
    pg->active = 1;
}

void nx_progress_finish(nx_progress *pg, int failed)
{
    pg->send[1] = failed ? 1 : 0;
    pg->send[2] = 1;
    for (;;) {
        if (pg->active) {
            MPI_Wait(&pg->req, MPI_STATUS_IGNORE);
            round_done(pg);
        }
        if (pg->stop || pg->all_done)
            break;
        MPI_Iallreduce(pg->send, pg->recv, 3, MPI_UINT64_T, MPI_SUM, pg->comm, &pg->req);
        pg->active = 1;
    }
    if (pg->all_done && !pg->stop)
        print_line(pg, 1);
}
