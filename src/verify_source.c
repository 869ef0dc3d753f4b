/* nvfp4x verify against the source model (--model): copied tensors byte for byte and shapes
 * (T2), quantized weights re-encoded with the stored scales and compared code for code (X,
 * NUMERICS.md), and each quantized module's reconstruction statistics (nx_qstats, --report).
 * Work is per tensor or module, so src/verify.c can spread it over ranks. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "nvfp4x/quantize.h"
#include "verify_internal.h"

#define EXACT_CHUNK_ELEMS ((int64_t)1 << 20)

/* ---- T2: copied tensors ------------------------------------------------------------------- */

static int bytes_equal(vctx *v, int64_t ti, int64_t si, uint64_t *first_diff, nx_err *e)
{
    uint64_t total = v->c.t[ti].st->end - v->c.t[ti].st->begin;
    uint8_t *a = malloc(READ_CHUNK_BYTES), *b = malloc(READ_CHUNK_BYTES);
    int rc = a && b ? NX_OK : nx_err_set(e, NX_EIO, "out of memory comparing tensors");
    *first_diff = UINT64_MAX;
    for (uint64_t off = 0; rc == NX_OK && off < total && *first_diff == UINT64_MAX;
         off += READ_CHUNK_BYTES) {
        size_t len = (size_t)(total - off < READ_CHUNK_BYTES ? total - off : READ_CHUNK_BYTES);
        rc = nx_verify_tensor_read(&v->c, ti, off, a, len, e);
        if (rc == NX_OK)
            rc = nx_verify_tensor_read(&v->src, si, off, b, len, e);
        for (size_t i = 0; rc == NX_OK && i < len; i++)
            if (a[i] != b[i]) {
                *first_diff = off + i;
                break;
            }
    }
    free(a);
    free(b);
    return rc;
}

static int same_shape(const nx_st_tensor *a, const nx_st_tensor *b)
{
    if (a->dtype != b->dtype || a->ndim != b->ndim)
        return 0;
    for (int i = 0; i < a->ndim; i++)
        if (a->shape[i] != b->shape[i])
            return 0;
    return 1;
}

/* Whether output tensor t was produced by quantization rather than copied. */
static int is_artifact(const vctx *v, const tensor_ref *t)
{
    if (t->sfx == SFX_K_SCALE || t->sfx == SFX_V_SCALE)
        return 1;
    return t->module >= 0 && v->m[t->module].status == MOD_QUANT && t->sfx <= SFX_INPUT_SCALE;
}

uint64_t nx_verify_copy_bytes(const vctx *v, int64_t ti)
{
    const tensor_ref *t = &v->c.t[ti];
    int64_t si = tensor_find(&v->src, t->st->name);
    if (si < 0 || is_artifact(v, t) || !same_shape(t->st, v->src.t[si].st))
        return 0;
    return 2 * (t->st->end - t->st->begin);
}

int nx_verify_source_copied(vctx *v, int64_t ti, nx_err *e)
{
    const nx_st_tensor *t = v->c.t[ti].st;
    int64_t si = tensor_find(&v->src, t->name);
    char a[128], b[128];
    if (si < 0) {
        if (!is_artifact(v, &v->c.t[ti]))
            nx_violation(v, "T2", t->name, "not in the source model");
        return NX_OK;
    }
    if (is_artifact(v, &v->c.t[ti]))
        return NX_OK;
    if (!same_shape(t, v->src.t[si].st)) {
        nx_verify_shape_text(t, a, sizeof a);
        nx_verify_shape_text(v->src.t[si].st, b, sizeof b);
        nx_violation(v, "T2", t->name, "is %s but the source tensor is %s", a, b);
        return NX_OK;
    }
    uint64_t diff;
    NX_TRY(bytes_equal(v, ti, si, &diff, e));
    if (diff != UINT64_MAX)
        nx_violation(v, "T2", t->name, "bytes differ from the source (first at byte %llu)",
                     (unsigned long long)diff);
    return NX_OK;
}

int nx_verify_source_missing(vctx *v, nx_err *e)
{
    (void)e;
    for (int64_t i = 0; i < v->src.n; i++)
        if (tensor_find(&v->c, v->src.t[i].st->name) < 0)
            nx_violation(v, "T2", v->src.t[i].st->name,
                         "source tensor is missing from the checkpoint");
    return NX_OK;
}

/* ---- X: exact re-encoding, and the statistics --------------------------------------------- */

typedef struct exact_acc {
    int64_t mismatches, first_row, first_col;
    nx_qstats st;
} exact_acc;

/* Re-encodes rows [r0, r0+nr) of the source with the stored scales (NUMERICS.md) and compares
 * with the stored codes. */
static void exact_rows(const float *w, const uint8_t *codes, const uint8_t *scales, int64_t r0,
                       int64_t nr, int64_t in, float ws2, exact_acc *acc)
{
    for (int64_t b = 0; b < nr * in / 16; b++) {
        float den = nx_e4m3_decode(scales[b]) * ws2;
        for (int64_t k = b * 16; k < b * 16 + 16; k++) {
            uint8_t want = nx_e2m1_encode(w[k] / den);
            uint8_t got = (uint8_t)((codes[k / 2] >> (4 * (k & 1))) & 0xF);
            if (want != got && acc->mismatches++ == 0)
                acc->first_row = r0 + k / in, acc->first_col = k % in;
        }
    }
}

typedef struct exact_bufs {
    uint8_t *raw, *codes, *scales;
    float *w;
} exact_bufs;

static int exact_chunk(vctx *v, const module *m, int64_t si, int64_t r0, int64_t nr,
                       exact_bufs *b, exact_acc *acc, nx_err *e)
{
    nx_dtype dt = v->src.t[si].st->dtype;
    size_t esize = nx_dtype_size(dt);
    int64_t n = nr * m->in;
    float ws2 = nx_f32_from_bits(m->ws2_bits);
    NX_TRY(nx_verify_tensor_read(&v->src, si, (uint64_t)(r0 * m->in) * esize, b->raw,
                                 (size_t)n * esize, e));
    NX_TRY(nx_verify_tensor_read(&v->c, m->t[SFX_WEIGHT], (uint64_t)(r0 * m->in / 2), b->codes,
                                 (size_t)(n / 2), e));
    NX_TRY(nx_verify_tensor_read(&v->c, m->t[SFX_WEIGHT_SCALE], (uint64_t)(r0 * m->in / 16),
                                 b->scales, (size_t)(n / 16), e));
    nx_widen_f32(b->raw, dt, n, b->w);
    exact_rows(b->w, b->codes, b->scales, r0, nr, m->in, ws2, acc);
    nx_qstats_add(&acc->st, b->w, nr, m->in, b->codes, b->scales, ws2);
    return NX_OK;
}

static int exact_check(vctx *v, const module *m, int64_t si, exact_acc *acc, nx_err *e)
{
    int64_t chunk_rows = EXACT_CHUNK_ELEMS / m->in > 0 ? EXACT_CHUNK_ELEMS / m->in : 1;
    int64_t n = chunk_rows * m->in;
    exact_bufs b = { malloc((size_t)n * 4), malloc((size_t)n / 2), malloc((size_t)n / 16),
                     malloc((size_t)n * sizeof(float)) };
    int rc = b.raw && b.codes && b.scales && b.w ? NX_OK
             : nx_err_set(e, NX_EIO, "out of memory checking %s", m->name);
    for (int64_t r0 = 0; rc == NX_OK && r0 < m->rows; r0 += chunk_rows)
        rc = exact_chunk(v, m, si, r0, m->rows - r0 < chunk_rows ? m->rows - r0 : chunk_rows,
                         &b, acc, e);
    free(b.raw);
    free(b.codes);
    free(b.scales);
    free(b.w);
    return rc;
}

/* The module's statistics for --report, and the worst relative error for the summary. */
static int stats_keep(vctx *v, const module *m, const nx_qstats *st, nx_err *e)
{
    double rel = nx_qstats_rel_rms(st);
    if (isnan(rel) || rel > v->r->worst_rel_rms)
        v->r->worst_rel_rms = isnan(rel) ? INFINITY : rel;
    if (v->report == NULL)
        return NX_OK;
    if (v->n_entries == v->cap_entries) {
        int64_t cap = v->cap_entries ? 2 * v->cap_entries : 256;
        nx_report_entry *x = realloc(v->entries, (size_t)cap * sizeof *x);
        NX_ALLOC_CHECK(x, e, "report entries");
        v->entries = x;
        v->cap_entries = cap;
    }
    /* fallbacks are the exporter's to know: a checkpoint does not record them */
    v->entries[v->n_entries++] = (nx_report_entry){ .module = m->name, .st = *st };
    return NX_OK;
}

/* The source weight of quantized module m with the shape it was quantized from, or -1 (a T2
 * violation, or T1/T2 already reported). */
static int64_t source_weight(vctx *v, const module *m, nx_err *e, int *rc)
{
    char *wname = nx_asprintf("%s.weight", m->name), shape[128];
    *rc = wname ? NX_OK : nx_err_set(e, NX_EIO, "out of memory allocating tensor name");
    int64_t si = wname ? tensor_find(&v->src, wname) : -1;
    free(wname);
    if (*rc != NX_OK || si < 0) {
        if (*rc == NX_OK)
            nx_violation(v, "T2", m->name, "the source model has no %s.weight", m->name);
        return -1;
    }
    const nx_st_tensor *s = v->src.t[si].st;
    if (!m->layout_ok)
        return -1; /* T1/T2 already reported; shapes unknown */
    if (s->ndim != 2 || s->shape[0] != m->rows || s->shape[1] != m->in ||
        !is_float_dtype(s->dtype)) {
        nx_verify_shape_text(s, shape, sizeof shape);
        nx_violation(v, "T2", m->name, "quantized as [%lld, %lld] but the source weight is %s",
                     (long long)m->rows, (long long)m->in, shape);
        return -1;
    }
    return si;
}

int nx_verify_source_module(vctx *v, int64_t k, nx_err *e)
{
    const module *m = &v->m[k];
    int rc;
    int64_t si = source_weight(v, m, e, &rc);
    if (si < 0)
        return rc;
    exact_acc acc;
    memset(&acc, 0, sizeof acc);
    NX_TRY(exact_check(v, m, si, &acc, e));
    if (acc.mismatches)
        nx_violation(v, "X", m->name, "%lld codes differ from re-encoding the source (first at "
                     "row %lld col %lld)", (long long)acc.mismatches, (long long)acc.first_row,
                     (long long)acc.first_col);
    return stats_keep(v, m, &acc.st, e);
}
