/* Phase 5b: the MSE sweep of every quantized weight, spread over ranks and threads below the
 * tensor (mse.h). */
#include "nvfp4x/mse.h"

#include <fcntl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "nvfp4x/comm.h"
#include "nvfp4x/journal.h"
#include "nvfp4x/progress.h"
#include "nvfp4x/util.h"

#define CHUNK_ELEMS ((int64_t)4 << 20) /* weights read and swept per step */
#define KB_FILE NX_JOURNAL_DIR "/sweep.kb"
#define DONE_FILE NX_JOURNAL_DIR "/sweep.done"

/* ---- g: ModelOpt's pre-sweep groups -------------------------------------------------------- */

int nx_mse_globals(const nx_catalog *c, const nx_classes *k, const float *own, float *g,
                   nx_err *e)
{
    /* per fused group and pattern: the max over the members that have that pattern */
    float *shared = calloc((size_t)k->n_groups * 3 + 1, sizeof *shared);
    int *pattern = malloc(((size_t)k->n_q + 1) * sizeof *pattern);
    int rc = shared && pattern ? NX_OK : nx_err_set(e, NX_EIO, "out of memory");
    for (int64_t i = 0; rc == NX_OK && i < k->n_q; i++) {
        char *name = nx_qmod_name(c, &k->q[i]);
        pattern[i] = name ? nx_sweep_pattern(name) : -1;
        if (name == NULL)
            rc = nx_err_set(e, NX_EIO, "out of memory");
        free(name);
        float *at = pattern[i] >= 0 ? &shared[k->q[i].group * 3 + pattern[i]] : NULL;
        if (at && own[i] > *at)
            *at = own[i];
    }
    for (int64_t i = 0; rc == NX_OK && i < k->n_q; i++)
        g[i] = pattern[i] >= 0 ? shared[k->q[i].group * 3 + pattern[i]] : own[i];
    free(shared);
    free(pattern);
    return rc;
}

void nx_mse_share(int64_t total, int rank, int nranks, int64_t *first, int64_t *end)
{
    *first = (int64_t)((__int128)total * rank / nranks);
    *end = (int64_t)((__int128)total * (rank + 1) / nranks);
}

/* ---- one rank's share ---------------------------------------------------------------------- */

typedef struct sweeper {
    nx_source *src;
    const nx_classes *k;
    const nx_mse *s;
    const nx_mse_opts *o;
    nx_sweep_fn fn;
    int fd;
    float *w;
    void *raw;
    uint8_t *kb;
    nx_progress pg;
    int64_t done;
    nx_sweep_counts counts;
} sweeper;

/* Blocks [b0, b1) of the rows just read (w holds rows from the one containing b0), threads
 * splitting them evenly. */
static void sweep_blocks(sweeper *sw, const nx_sweep_ctx *x, const float *w, int64_t n)
{
    int nt = sw->o->threads;
    int64_t evaluated = 0;
    #pragma omp parallel for num_threads(nt) schedule(static) reduction(+ : evaluated)
    for (int t = 0; t < nt; t++) {
        int64_t b0 = n * t / nt, b1 = n * (t + 1) / nt;
        nx_sweep_counts c = { 0, 0 };
        if (b1 > b0)
            sw->fn(x, w + b0 * NX_BLOCK, b1 - b0, 1, sw->kb + b0, &c);
        evaluated += c.evaluated;
    }
    sw->counts.blocks += n;
    sw->counts.evaluated += evaluated;
}

/* Blocks [b0, b1) of module q (its own numbering), in chunks of whole rows. */
static int sweep_module(sweeper *sw, int64_t q, int64_t b0, int64_t b1, nx_err *e)
{
    const nx_qmod *m = &sw->k->q[q];
    int64_t per_row = m->cols / NX_BLOCK;
    int64_t rows = CHUNK_ELEMS / m->cols > 0 ? CHUNK_ELEMS / m->cols : 1;
    nx_sweep_ctx x;
    NX_TRY(nx_sweep_ctx_init(&x, sw->s->g[q], sw->o->numerics, e));
    for (int64_t b = b0; b < b1 && !sw->pg.stop;) {
        int64_t r0 = b / per_row, nr = m->rows - r0 < rows ? m->rows - r0 : rows;
        int64_t end = (r0 + nr) * per_row < b1 ? (r0 + nr) * per_row : b1;
        NX_TRY(nx_source_read_rows_f32(sw->src, m->tensor, r0, nr, sw->w, sw->raw, e));
        sweep_blocks(sw, &x, sw->w + (b - r0 * per_row) * NX_BLOCK, end - b);
        NX_TRY(nx_pwrite_full(sw->fd, sw->kb, (size_t)(end - b),
                              (uint64_t)(sw->s->first[q] + b), sw->s->path, e));
        sw->done += end - b;
        nx_progress_poll(&sw->pg, (uint64_t)sw->done);
        b = end;
    }
    return NX_OK;
}

static int sweep_share(sweeper *sw, int64_t lo, int64_t hi, nx_err *e)
{
    const nx_mse *s = sw->s;
    for (int64_t q = 0; q < s->n_q && !sw->pg.stop; q++) {
        int64_t begin = s->first[q], end = q + 1 < s->n_q ? s->first[q + 1] : s->total_blocks;
        if (end <= lo || begin >= hi)
            continue;
        NX_TRY(sweep_module(sw, q, (lo > begin ? lo : begin) - begin,
                            (hi < end ? hi : end) - begin, e));
    }
    return NX_OK;
}

static int sweeper_init(sweeper *sw, nx_err *e)
{
    int64_t max_cols = NX_BLOCK;
    for (int64_t i = 0; i < sw->k->n_q; i++)
        max_cols = sw->k->q[i].cols > max_cols ? sw->k->q[i].cols : max_cols;
    size_t elems = (size_t)(max_cols > CHUNK_ELEMS ? max_cols : CHUNK_ELEMS);
    sw->w = malloc(elems * sizeof *sw->w);
    sw->raw = malloc(elems * sizeof(float));
    sw->kb = malloc(elems / NX_BLOCK);
    NX_ERROR_IF(!sw->w || !sw->raw || !sw->kb, e, NX_EIO, "out of memory for the sweep");
    nx_kernel k;
    NX_TRY(nx_kernel_select(&k, e));
    sw->fn = nx_sweep_kernel_fn(k) ? nx_sweep_kernel_fn(k) : nx_sweep_blocks_ref;
    sw->fd = open(sw->s->path, O_WRONLY | O_CLOEXEC);
    if (sw->fd < 0)
        return nx_err_errno(e, NX_EIO, "%s: cannot open", sw->s->path);
    return NX_OK;
}

static int sweeper_close(sweeper *sw, int rc, nx_err *e)
{
    if (sw->fd >= 0 && close(sw->fd) != 0 && rc == NX_OK)
        rc = nx_err_errno(e, NX_EIO, "%s: close failed", sw->s->path);
    free(sw->w);
    free(sw->raw);
    free(sw->kb);
    return rc;
}

/* ---- the phase ----------------------------------------------------------------------------- */

static int layout(const nx_classes *k, const nx_amax *a, const nx_catalog *c, nx_mse *s,
                  nx_err *e)
{
    s->n_q = k->n_q;
    s->first = malloc(((size_t)k->n_q + 1) * sizeof *s->first);
    s->g = malloc(((size_t)k->n_q + 1) * sizeof *s->g);
    NX_ERROR_IF(!s->first || !s->g, e, NX_EIO, "out of memory");
    s->total_blocks = 0;
    for (int64_t i = 0; i < k->n_q; i++) {
        s->first[i] = s->total_blocks;
        s->total_blocks += k->q[i].rows * (k->q[i].cols / NX_BLOCK);
    }
    return nx_mse_globals(c, k, a->w_own, s->g, e);
}

/* Rank 0: the file at its full size (or, resuming, whether a finished sweep is there). */
static int file_prepare(const char *staging, nx_mse *s, int resumed, nx_err *e)
{
    char *done = nx_path_join(staging, DONE_FILE);
    NX_ALLOC_CHECK(done, e, "a path");
    struct stat st;
    s->reused = resumed && stat(done, &st) == 0 && stat(s->path, &st) == 0 &&
                (int64_t)st.st_size == s->total_blocks;
    free(done);
    if (s->reused)
        return NX_OK;
    int fd = open(s->path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return nx_err_errno(e, NX_EIO, "%s: cannot create", s->path);
    int rc = ftruncate(fd, (off_t)s->total_blocks) == 0
                 ? NX_OK : nx_err_errno(e, NX_EIO, "%s: cannot extend", s->path);
    if (close(fd) != 0 && rc == NX_OK)
        rc = nx_err_errno(e, NX_EIO, "%s: close failed", s->path);
    return rc;
}

static int mark_done(const char *staging, nx_err *e)
{
    char *done = nx_path_join(staging, DONE_FILE);
    NX_ALLOC_CHECK(done, e, "a path");
    int rc = nx_file_write_all(done, "", 0, e);
    free(done);
    return rc;
}

static int sweep_everything(nx_source *src, const nx_classes *k, const nx_mse_opts *o,
                            nx_mse *s, MPI_Comm comm, nx_err *e)
{
    int rank, size;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &size);
    sweeper sw = { .src = src, .k = k, .s = s, .o = o, .fd = -1 };
    nx_progress_init(&sw.pg, comm, (uint64_t)s->total_blocks, "swept", o->quiet);
    sw.pg.unit = "blocks";
    int64_t lo, hi;
    nx_mse_share(s->total_blocks, rank, size, &lo, &hi);
    double t0 = MPI_Wtime();
    int rc = sweeper_init(&sw, e);
    if (rc == NX_OK)
        rc = sweep_share(&sw, lo, hi, e);
    nx_progress_finish(&sw.pg, rc != NX_OK);
    rc = nx_agree(sweeper_close(&sw, rc, e), e, comm);
    s->seconds = MPI_Wtime() - t0;
    int64_t counts[2] = { sw.counts.blocks, sw.counts.evaluated };
    MPI_Allreduce(MPI_IN_PLACE, counts, 2, MPI_INT64_T, MPI_SUM, comm);
    s->counts = (nx_sweep_counts){ counts[0], counts[1] };
    return rc;
}

int nx_mse_run(nx_source *src, const nx_classes *k, const nx_amax *a, const char *staging,
               const nx_mse_opts *o, nx_mse *s, MPI_Comm comm, nx_err *e)
{
    int rank;
    MPI_Comm_rank(comm, &rank);
    memset(s, 0, sizeof *s);
    s->numerics = o->numerics;
    s->path = nx_path_join(staging, KB_FILE);
    int rc = s->path ? layout(k, a, src->c, s, e) : nx_err_set(e, NX_EIO, "out of memory");
    if (rc == NX_OK && o->numerics == NX_NUMERICS_GPU)
        rc = nx_rcp_table_load(e);
    if (rc == NX_OK && rank == 0)
        rc = file_prepare(staging, s, o->resumed, e);
    NX_TRY(nx_agree(rc, e, comm));
    MPI_Bcast(&s->reused, 1, MPI_INT, 0, comm);
    if (s->reused)
        return NX_OK;
    NX_TRY(sweep_everything(src, k, o, s, comm, e));
    return nx_agree(rank == 0 ? mark_done(staging, e) : NX_OK, e, comm);
}

int nx_mse_block_amax(const nx_mse *s, int64_t q, int64_t b0, int64_t n, float *out, nx_err *e)
{
    uint8_t *kb = malloc((size_t)n + 1);
    NX_ALLOC_CHECK(kb, e, "the swept block scales");
    int fd = open(s->path, O_RDONLY | O_CLOEXEC);
    int rc = fd >= 0 ? nx_pread_full(fd, kb, (size_t)n, (uint64_t)(s->first[q] + b0), s->path, e)
                     : nx_err_errno(e, NX_EIO, "%s: cannot open", s->path);
    if (fd >= 0)
        close(fd);
    float c[NX_SWEEP_CANDIDATES];
    for (int k = 0; k < NX_SWEEP_CANDIDATES; k++)
        c[k] = nx_div_448(nx_e4m3_decode((uint8_t)(k + 1)), s->numerics);
    for (int64_t b = 0; rc == NX_OK && b < n; b++) {
        if (kb[b] >= NX_SWEEP_CANDIDATES) {
            rc = nx_err_set(e, NX_EIO, "%s: byte %lld is %d, not a candidate (damaged file?)",
                            s->path, (long long)(s->first[q] + b0 + b), kb[b]);
            break;
        }
        out[b] = s->g[q] * c[kb[b]];
    }
    free(kb);
    return rc;
}

void nx_mse_free(nx_mse *s)
{
    free(s->path);
    free(s->first);
    free(s->g);
    memset(s, 0, sizeof *s);
}

/* ---- the rate, for plan -------------------------------------------------------------------- */

double nx_mse_measure_rate(nx_numerics m, const char **kernel)
{
    enum { BLOCKS = 8192 };
    static float w[BLOCKS * NX_BLOCK];
    static uint16_t h[BLOCKS * NX_BLOCK];
    static uint8_t kb[BLOCKS];
    uint64_t s = 12345;
    for (int i = 0; i < BLOCKS * NX_BLOCK; i++) { /* BF16 N(0, 1) by Box-Muller */
        s = s * 6364136223846793005u + 1442695040888963407u;
        double u = ((double)(s >> 11) + 0.5) * 0x1p-53;
        s = s * 6364136223846793005u + 1442695040888963407u;
        double v = ((double)(s >> 11) + 0.5) * 0x1p-53;
        h[i] = nx_f32_to_bf16((float)(sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v)));
    }
    nx_widen_f32(h, NX_DT_BF16, BLOCKS * NX_BLOCK, w);
    nx_err e = { 0 };
    nx_sweep_ctx x;
    nx_kernel k = nx_kernel_best();
    nx_sweep_fn fn = nx_sweep_kernel_fn(k) ? nx_sweep_kernel_fn(k) : nx_sweep_blocks_ref;
    *kernel = nx_sweep_kernel_fn(k) ? nx_kernel_name(k) : "ref";
    if (nx_sweep_ctx_init(&x, nx_absmax_f32(w, BLOCKS * NX_BLOCK), m, &e) != NX_OK)
        return 0.0;
    fn(&x, w, BLOCKS / 8, 1, kb, NULL); /* warm */
    double best = INFINITY;
    for (int rep = 0; rep < 3; rep++) { /* as the phase does it: widen, then sweep */
        double t0 = MPI_Wtime();
        nx_widen_f32(h, NX_DT_BF16, BLOCKS * NX_BLOCK, w);
        fn(&x, w, BLOCKS, 1, kb, NULL);
        double t = MPI_Wtime() - t0;
        best = t < best ? t : best;
    }
    return best > 0 ? BLOCKS / best : 0.0;
}
