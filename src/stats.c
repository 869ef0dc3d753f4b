/* Phase 3: resolve each module's calibration statistics. */
#include "nvfp4x/stats.h"

#include <stdlib.h>
#include <string.h>

#include "nvfp4x/calib.h"
#include "nvfp4x/comm.h"
#include "nvfp4x/util.h"

static int read_optional(const nx_calib *cal, const char *mod, const char *quantizer,
                         const char *buffer, float *out, nx_err *e)
{
    *out = NX_ABSENT;
    if (nx_calib_count(cal, mod, quantizer, buffer) < 0)
        return NX_OK;
    return nx_calib_read(cal, mod, quantizer, buffer, out, 1, e);
}

/* "model.layers.0.mlp" -> "model/layers/0/mlp", as the dataset path reads in the file. */
static void h5_form(const char *mod, char *buf, size_t len)
{
    snprintf(buf, len, "%s", mod);
    for (char *p = buf; *p; p++)
        if (*p == '.')
            *p = '/';
}

/* Weight statistics of one module: static (block amax + global amax), scalar, or none. */
static int read_weight(const nx_calib *cal, const char *mod, const nx_qmod *q, nx_stats *s,
                       int64_t i, nx_err *e)
{
    int64_t blocks = q->rows * (q->cols / 16);
    int64_t n_amax = nx_calib_count(cal, mod, "weight_quantizer", "_amax");
    int64_t n_global = nx_calib_count(cal, mod, "weight_quantizer", "_global_amax");
    const char *file = nx_calib_path(cal);
    char h5[512];
    h5_form(mod, h5, sizeof h5);
    if (n_global >= 0) {
        NX_ERROR_IF(n_amax != blocks, e, NX_EINPUT,
                    "%s: dataset /%s/weight_quantizer/_amax has %lld values, expected %lld "
                    "(rows*cols/16 per-block amax, required with _global_amax)", file, h5,
                    (long long)(n_amax < 0 ? 0 : n_amax), (long long)blocks);
        s->w_static[i] = 1;
        return nx_calib_read(cal, mod, "weight_quantizer", "_global_amax", &s->w_amax[i], 1, e);
    }
    if (n_amax < 0)
        return NX_OK;
    NX_ERROR_IF(n_amax != 1, e, NX_EINPUT,
                "%s: dataset /%s/weight_quantizer/_amax has %lld values, expected 1 (or "
                "rows*cols/16 = %lld with a _global_amax dataset)", file, h5,
                (long long)n_amax, (long long)blocks);
    return nx_calib_read(cal, mod, "weight_quantizer", "_amax", &s->w_amax[i], 1, e);
}

/* Reads the statistics of every stride-th module and attention, starting at first. */
static int read_share(const nx_calib *cal, const nx_catalog *c, const nx_classes *k,
                      nx_stats *s, int first, int stride, nx_err *e)
{
    int rc = NX_OK;
    for (int64_t i = first; i < k->n_q && rc == NX_OK; i += stride) {
        char *mod = nx_qmod_name(c, &k->q[i]);
        rc = mod ? read_optional(cal, mod, "input_quantizer", "_amax", &s->in_amax[i], e)
                 : nx_err_set(e, NX_EIO, "out of memory");
        if (rc == NX_OK)
            rc = read_weight(cal, mod, &k->q[i], s, i, e);
        free(mod);
    }
    for (int64_t a = first; a < k->n_attn && rc == NX_OK; a += stride) {
        rc = read_optional(cal, k->attn[a], "k_bmm_quantizer", "_amax", &s->k_amax[a], e);
        if (rc == NX_OK)
            rc = read_optional(cal, k->attn[a], "v_bmm_quantizer", "_amax", &s->v_amax[a], e);
    }
    return rc;
}

static void fill_absent(float *v, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        v[i] = NX_ABSENT;
}

static void broadcast(nx_stats *s, MPI_Comm comm)
{
    MPI_Bcast(s->in_amax, (int)s->n_q, MPI_FLOAT, 0, comm);
    MPI_Bcast(s->w_amax, (int)s->n_q, MPI_FLOAT, 0, comm);
    MPI_Bcast(s->w_static, (int)s->n_q, MPI_UINT8_T, 0, comm);
    MPI_Bcast(s->k_amax, (int)s->n_attn, MPI_FLOAT, 0, comm);
    MPI_Bcast(s->v_amax, (int)s->n_attn, MPI_FLOAT, 0, comm);
}

/* Each entry was read by one rank; NX_ABSENT (-1) is below every valid amax (>= 0). */
static void combine_shares(nx_stats *s, MPI_Comm comm)
{
    MPI_Allreduce(MPI_IN_PLACE, s->in_amax, (int)s->n_q, MPI_FLOAT, MPI_MAX, comm);
    MPI_Allreduce(MPI_IN_PLACE, s->w_amax, (int)s->n_q, MPI_FLOAT, MPI_MAX, comm);
    MPI_Allreduce(MPI_IN_PLACE, s->w_static, (int)s->n_q, MPI_UINT8_T, MPI_MAX, comm);
    MPI_Allreduce(MPI_IN_PLACE, s->k_amax, (int)s->n_attn, MPI_FLOAT, MPI_MAX, comm);
    MPI_Allreduce(MPI_IN_PLACE, s->v_amax, (int)s->n_attn, MPI_FLOAT, MPI_MAX, comm);
}

int nx_stats_gather(const nx_calib *cal, const nx_catalog *c, const nx_classes *k,
                    nx_stats *s, MPI_Comm comm, nx_err *e)
{
    int rank, size;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &size);
    memset(s, 0, sizeof *s);
    s->n_q = k->n_q;
    s->n_attn = k->n_attn;
    s->in_amax = malloc(((size_t)k->n_q + 1) * sizeof(float));
    s->w_amax = malloc(((size_t)k->n_q + 1) * sizeof(float));
    s->w_static = calloc((size_t)k->n_q + 1, 1);
    s->k_amax = malloc(((size_t)k->n_attn + 1) * sizeof(float));
    s->v_amax = malloc(((size_t)k->n_attn + 1) * sizeof(float));
    int rc = s->in_amax && s->w_amax && s->w_static && s->k_amax && s->v_amax
                 ? NX_OK : nx_err_set(e, NX_EIO, "out of memory for statistics");
    if (rc == NX_OK) {
        fill_absent(s->in_amax, k->n_q);
        fill_absent(s->w_amax, k->n_q);
        fill_absent(s->k_amax, k->n_attn);
        fill_absent(s->v_amax, k->n_attn);
    }
    if (rc == NX_OK && nx_calib_is_collective(cal))
        rc = read_share(cal, c, k, s, rank, size, e);
    else if (rc == NX_OK && rank == 0 && cal)
        rc = read_share(cal, c, k, s, 0, 1, e);
    NX_TRY(nx_agree(rc, e, comm));
    if (nx_calib_is_collective(cal))
        combine_shares(s, comm);
    else
        broadcast(s, comm);
    s->has_kv = k->n_attn > 0;
    for (int64_t a = 0; a < k->n_attn; a++)
        if (s->k_amax[a] == NX_ABSENT || s->v_amax[a] == NX_ABSENT)
            s->has_kv = 0;
    return NX_OK;
}

void nx_stats_free(nx_stats *s)
{
    free(s->in_amax);
    free(s->w_amax);
    free(s->w_static);
    free(s->k_amax);
    free(s->v_amax);
    memset(s, 0, sizeof *s);
}

int64_t nx_stats_drop_weight(nx_stats *s)
{
    int64_t had = 0;
    for (int64_t i = 0; i < s->n_q; i++) {
        had += s->w_amax[i] != NX_ABSENT;
        s->w_amax[i] = NX_ABSENT;
        s->w_static[i] = 0;
    }
    return had;
}
