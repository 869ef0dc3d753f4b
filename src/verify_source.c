/* nvfp4x verify against the source model (--model): copied tensors byte for byte and shapes
 * (T2), quantized weights re-encoded with the stored scales and compared code for code (X,
 * NUMERICS.md), and each quantized module's reconstruction statistics (nx_qstats, --report).
 * The source may be an FP8 block-scaled release (DeepSeek-V3/R1, Kimi-K2): its weights are
 * compared as the exporter reads them, dequantized and rounded to BF16 (README "FP8 sources").
 * Work is per tensor or module, so src/verify.c can spread it over ranks. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "nvfp4x/encoding.h"
#include "nvfp4x/mxfp4.h"
#include "nvfp4x/quantize.h"
#include "verify_internal.h"

#define EXACT_CHUNK_ELEMS ((int64_t)1 << 20)
#define WS2_NEIGHBOURS 2 /* float steps either side of fl32(1 / weight_global_scale) */

/* ---- Encoded (FP8) sources ---------------------------------------------------------------- */

/* The source's encoding, decided as the exporter decides it (encoding.h): an encoding the
 * exporter refuses is refused here too (NX_EINPUT). */
int nx_verify_source_link(vctx *v, const cJSON *config, nx_err *e)
{
    nx_enc_tensor *in = malloc(((size_t)v->src.n + 1) * sizeof *in);
    NX_ALLOC_CHECK(in, e, "the source's encoding table");
    for (int64_t i = 0; i < v->src.n; i++) {
        const nx_st_tensor *t = v->src.t[i].st;
        in[i] = (nx_enc_tensor){ t->name, t->dtype, t->ndim, t->shape };
    }
    int rc = nx_encoding_detect(v->src.dir, config, in, v->src.n, &v->src_enc, e);
    free(in);
    return rc;
}

/* DeepSeek-V4's release: what is not quantized keeps its encoding (FP8 with its E8M0 .scale,
 * MTP experts' MXFP4), copied as stored, as ModelOpt's script writes it. */
static int src_keeps_encoding(const vctx *v)
{
    return v->src_enc.kind == NX_ENC_FP8_E8M0;
}

static int src_is_mxfp4(const vctx *v, int64_t si)
{
    return v->src_enc.link[si].scale >= 0 && nx_mxfp4_dtype(v->src.t[si].st->dtype);
}

/* Rows [r0, r0+nr) of MXFP4 source weight si decoded exactly; raw: nr*cols/2 + nr*cols/32
 * bytes of scratch (cols the elements). */
static int mxfp4_rows_f32(vctx *v, int64_t si, int64_t r0, int64_t nr, uint8_t *raw,
                          float *out, nx_err *e)
{
    int64_t bytes = v->src.t[si].st->shape[1], scols = 2 * bytes / NX_MXFP4_BLOCK;
    uint8_t *e8m0 = raw + nr * bytes;
    NX_TRY(nx_verify_tensor_read(&v->src, si, (uint64_t)(r0 * bytes), raw,
                                 (size_t)(nr * bytes), e));
    NX_TRY(nx_verify_tensor_read(&v->src, v->src_enc.link[si].scale, (uint64_t)(r0 * scols),
                                 e8m0, (size_t)(nr * scols), e));
    nx_mxfp4_decode_rows(raw, e8m0, nr, 2 * bytes, out);
    return NX_OK;
}

/* Rows [r0, r0+nr) of FP8 source weight si as the exporter reads them:
 * bf16(fl32(e4m3(q) * scale)), rounded to nearest even. q: nr*cols bytes. */
static int fp8_rows_bf16(vctx *v, int64_t si, int64_t r0, int64_t nr, uint8_t *q,
                         uint16_t *out, nx_err *e)
{
    const nx_enc_link *l = &v->src_enc.link[si];
    const nx_st_tensor *st = v->src.t[l->scale].st;
    int64_t cols = v->src.t[si].st->shape[1], first, count;
    int64_t scols = nx_enc_scale_cols(l->tile, cols);
    nx_enc_scale_rows(l->tile, r0, nr, &first, &count);
    NX_TRY(nx_verify_tensor_read(&v->src, si, (uint64_t)(r0 * cols), q, (size_t)(nr * cols),
                                 e));
    size_t esz = nx_dtype_size(st->dtype), n = (size_t)(count * scols);
    float *scale = malloc(n * (sizeof *scale + esz));
    NX_ALLOC_CHECK(scale, e, "FP8 scales");
    void *raw = scale + n;
    int rc = nx_verify_tensor_read(&v->src, l->scale, (uint64_t)(first * scols) * esz, raw,
                                   n * esz, e);
    if (rc == NX_OK && st->dtype == NX_DT_F8_E8M0)
        nx_e8m0_widen(raw, (int64_t)n, scale);
    else if (rc == NX_OK)
        nx_widen_f32(raw, st->dtype, (int64_t)n, scale);
    if (rc == NX_OK)
        nx_fp8_decode_rows(q, r0, nr, cols, scale, scols, l->tile, NULL, out);
    free(scale);
    return rc;
}

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

/* What an unquantized FP8 weight s is written as: BF16 of its shape. */
static int is_dequant_of(const nx_st_tensor *t, const nx_st_tensor *s)
{
    return t->dtype == NX_DT_BF16 && t->ndim == 2 && t->shape[0] == s->shape[0] &&
           t->shape[1] == s->shape[1];
}

/* Whether output tensor t was produced by quantization rather than copied. */
static int is_artifact(const vctx *v, const tensor_ref *t)
{
    if (t->sfx == SFX_K_SCALE || t->sfx == SFX_V_SCALE)
        return 1;
    return t->module >= 0 && v->m[t->module].status == MOD_QUANT && is_quant_sfx(v, t->sfx);
}

uint64_t nx_verify_copy_bytes(const vctx *v, int64_t ti)
{
    const tensor_ref *t = &v->c.t[ti];
    int64_t si = tensor_find(&v->src, t->st->name);
    uint64_t bytes = t->st->end - t->st->begin;
    if (si < 0 || is_artifact(v, t))
        return 0;
    if (v->src_enc.link[si].scale >= 0 && !src_keeps_encoding(v)) /* BF16 out, FP8 in */
        return is_dequant_of(t->st, v->src.t[si].st) ? bytes + bytes / 2 : 0;
    return same_shape(t->st, v->src.t[si].st) ? 2 * bytes : 0;
}

/* Index of the first element where checkpoint tensor ti differs from the BF16 dequantization
 * of FP8 source weight si (same shape), or -1; by row chunks. */
static int fp8_copy_compare(vctx *v, int64_t ti, int64_t si, int64_t *first, nx_err *e)
{
    int64_t rows = v->src.t[si].st->shape[0], cols = v->src.t[si].st->shape[1];
    int64_t chunk = (int64_t)READ_CHUNK_BYTES / (2 * cols) > 0
                    ? (int64_t)READ_CHUNK_BYTES / (2 * cols) : 1;
    uint8_t *q = malloc((size_t)(chunk * cols));
    uint16_t *want = malloc((size_t)(chunk * cols) * 2), *got = malloc((size_t)(chunk * cols) * 2);
    int rc = q && want && got ? NX_OK : nx_err_set(e, NX_EIO, "out of memory comparing tensors");
    *first = -1;
    for (int64_t r0 = 0; rc == NX_OK && *first < 0 && r0 < rows; r0 += chunk) {
        int64_t nr = rows - r0 < chunk ? rows - r0 : chunk;
        rc = fp8_rows_bf16(v, si, r0, nr, q, want, e);
        if (rc == NX_OK)
            rc = nx_verify_tensor_read(&v->c, ti, (uint64_t)(r0 * cols) * 2, got,
                                       (size_t)(nr * cols) * 2, e);
        for (int64_t k = 0; rc == NX_OK && k < nr * cols; k++)
            if (want[k] != got[k]) {
                *first = r0 * cols + k;
                break;
            }
    }
    free(q);
    free(want);
    free(got);
    return rc;
}

/* An unquantized FP8 source weight is written as its BF16 dequantization, not copied. */
static int fp8_copy_check(vctx *v, int64_t ti, int64_t si, nx_err *e)
{
    const nx_st_tensor *t = v->c.t[ti].st, *s = v->src.t[si].st;
    char shape[128];
    int64_t first = -1;
    if (!is_dequant_of(t, s)) {
        nx_verify_shape_text(t, shape, sizeof shape);
        nx_violation(v, "T2", t->name, "is %s but the source's FP8 weight dequantizes to BF16 "
                     "[%lld, %lld]", shape, (long long)s->shape[0], (long long)s->shape[1]);
        return NX_OK;
    }
    if (s->shape[0] > 0 && s->shape[1] > 0)
        NX_TRY(fp8_copy_compare(v, ti, si, &first, e));
    if (first >= 0)
        nx_violation(v, "T2", t->name, "differs from the BF16 dequantization of the FP8 source "
                     "(first at row %lld col %lld)", (long long)(first / s->shape[1]),
                     (long long)(first % s->shape[1]));
    return NX_OK;
}

static int plain_copy_check(vctx *v, int64_t ti, int64_t si, nx_err *e)
{
    const nx_st_tensor *t = v->c.t[ti].st;
    char a[128], b[128];
    uint64_t diff;
    if (!same_shape(t, v->src.t[si].st)) {
        nx_verify_shape_text(t, a, sizeof a);
        nx_verify_shape_text(v->src.t[si].st, b, sizeof b);
        nx_violation(v, "T2", t->name, "is %s but the source tensor is %s", a, b);
        return NX_OK;
    }
    NX_TRY(bytes_equal(v, ti, si, &diff, e));
    if (diff != UINT64_MAX)
        nx_violation(v, "T2", t->name, "bytes differ from the source (first at byte %llu)",
                     (unsigned long long)diff);
    return NX_OK;
}

int nx_verify_source_copied(vctx *v, int64_t ti, nx_err *e)
{
    const nx_st_tensor *t = v->c.t[ti].st;
    int64_t si = tensor_find(&v->src, t->name);
    if (si < 0) {
        if (!is_artifact(v, &v->c.t[ti]))
            nx_violation(v, "T2", t->name, "not in the source model");
        return NX_OK;
    }
    if (is_artifact(v, &v->c.t[ti]))
        return NX_OK;
    if (v->src_enc.link[si].dropped) {
        nx_violation(v, "T2", t->name, "is a scale of the source's FP8 encoding: its weight "
                     "is written decoded, the scale must not be written");
        return NX_OK;
    }
    if (v->src_enc.link[si].scale >= 0 && !src_keeps_encoding(v))
        return fp8_copy_check(v, ti, si, e);
    return plain_copy_check(v, ti, si, e);
}

/* Whether source tensor i has its counterpart in the checkpoint under another name, or none
 * by design: a scale of an FP8 source is consumed by its weight (or dropped), and in
 * compressed-tensors a quantized module's weight is its weight_packed. */
static int src_elsewhere(const vctx *v, int64_t i, int *yes, nx_err *e)
{
    const char *name = v->src.t[i].st->name;
    *yes = v->src_enc.link[i].dropped;
    if (!*yes && src_keeps_encoding(v) && ends_with(name, ".scale")) {
        /* a quantized weight's E8M0 scales: the codes and block scales replace them */
        char *mod = strndup(name, strlen(name) - strlen(".scale"));
        NX_ALLOC_CHECK(mod, e, "a module name");
        int64_t k = nx_strmap_get(&v->mod_names, mod);
        free(mod);
        *yes = k >= 0 && v->m[k].status == MOD_QUANT;
        return NX_OK;
    }
    if (*yes || v->fmt != FMT_CT || !ends_with(name, ".weight"))
        return NX_OK;
    char *mod = strndup(name, strlen(name) - strlen(".weight"));
    NX_ALLOC_CHECK(mod, e, "a module name");
    int64_t k = nx_strmap_get(&v->mod_names, mod);
    free(mod);
    *yes = k >= 0 && v->m[k].status == MOD_QUANT && v->m[k].t[v->sfx_codes] >= 0;
    return NX_OK;
}

int nx_verify_source_missing(vctx *v, nx_err *e)
{
    for (int64_t i = 0; i < v->src.n; i++) {
        int elsewhere = 0;
        if (tensor_find(&v->c, v->src.t[i].st->name) >= 0)
            continue;
        NX_TRY(src_elsewhere(v, i, &elsewhere, e));
        if (!elsewhere)
            nx_violation(v, "T2", v->src.t[i].st->name,
                         "source tensor is missing from the checkpoint");
    }
    return NX_OK;
}

/* ---- X: exact re-encoding, and the statistics --------------------------------------------- */

/* The weight_scale_2 values a module's codes may have been made with, ascending, and the one
 * that stands for them in messages and statistics. */
typedef struct ws2_set {
    float c[2 * WS2_NEIGHBOURS + 1];
    int n, primary;
} ws2_set;

/* ModelOpt stores weight_scale_2 itself. compressed-tensors stores weight_global_scale
 * g = fl32(1 / ws2), and ws2, with which the codes were computed, is lost: fl32(1 / g) is ws2
 * or a neighbouring float (one step either way for normal values, measured over 5e7 random
 * floats), so the floats two steps either side are candidates too, and the module passes when
 * one of them re-encodes every code. The primary, fl32(1 / g), is what engines divide by. */
static void ws2_candidates(const vctx *v, const module *m, ws2_set *ws)
{
    float g = nx_f32_from_bits(m->ws2_bits);
    if (v->fmt != FMT_CT) {
        *ws = (ws2_set){ { g }, 1, 0 };
        return;
    }
    ws->n = 2 * WS2_NEIGHBOURS + 1;
    ws->primary = WS2_NEIGHBOURS;
    ws->c[WS2_NEIGHBOURS] = 1.0f / g;
    for (int i = 1; i <= WS2_NEIGHBOURS; i++) {
        ws->c[WS2_NEIGHBOURS - i] = nextafterf(ws->c[WS2_NEIGHBOURS - i + 1], -INFINITY);
        ws->c[WS2_NEIGHBOURS + i] = nextafterf(ws->c[WS2_NEIGHBOURS + i - 1], INFINITY);
    }
}

typedef struct exact_acc {
    ws2_set ws;
    uint32_t alive; /* candidates that re-encoded every code so far */
    int64_t mismatches, first_row, first_col; /* of the primary candidate */
    nx_qstats st;
} exact_acc;

typedef struct exact_bufs {
    uint8_t *raw, *codes, *scales;
    uint16_t *bf; /* an FP8 source's rows dequantized */
    float *w;
} exact_bufs;

/* An element whose code not every candidate reproduces: which ones fail. */
static void exact_element(float w, float s, uint8_t got, int64_t row, int64_t col,
                          exact_acc *acc)
{
    for (int j = 0; j < acc->ws.n; j++) {
        if (nx_e2m1_encode(w / (s * acc->ws.c[j])) == got)
            continue;
        acc->alive &= ~(1u << j);
        if (j == acc->ws.primary && acc->mismatches++ == 0)
            acc->first_row = row, acc->first_col = col;
    }
}

/* Re-encodes rows [r0, r0+nr) of the source with the stored block scales (NUMERICS.md: code =
 * e2m1(w / fl32(float(S) * ws2))) and compares with the stored codes. The divisor grows with
 * ws2 and the code with the quotient, so when the smallest and the largest candidate both
 * give the stored code, every candidate does: only the other elements try each one. */
static void exact_rows(const exact_bufs *b, int64_t r0, int64_t nr, int64_t in, exact_acc *acc)
{
    const float lo_ws2 = acc->ws.c[0], hi_ws2 = acc->ws.c[acc->ws.n - 1];
    for (int64_t blk = 0; blk < nr * in / 16; blk++) {
        float s = nx_e4m3_decode(b->scales[blk]), lo = s * lo_ws2, hi = s * hi_ws2;
        for (int64_t k = blk * 16; k < blk * 16 + 16; k++) {
            uint8_t got = (uint8_t)((b->codes[k / 2] >> (4 * (k & 1))) & 0xF);
            if (nx_e2m1_encode(b->w[k] / lo) == got &&
                (acc->ws.n == 1 || nx_e2m1_encode(b->w[k] / hi) == got))
                continue;
            exact_element(b->w[k], s, got, r0 + k / in, k % in, acc);
        }
    }
}

/* Rows [r0, r0+nr) of source weight si as float32, as the exporter quantized them. */
static int source_rows_f32(vctx *v, int64_t si, int64_t r0, int64_t nr, exact_bufs *b,
                           nx_err *e)
{
    const nx_st_tensor *s = v->src.t[si].st;
    int64_t n = nr * s->shape[1];
    if (src_is_mxfp4(v, si))
        return mxfp4_rows_f32(v, si, r0, nr, b->raw, b->w, e);
    if (v->src_enc.link[si].scale >= 0) {
        NX_TRY(fp8_rows_bf16(v, si, r0, nr, b->raw, b->bf, e));
        nx_widen_f32(b->bf, NX_DT_BF16, n, b->w);
        return NX_OK;
    }
    size_t esize = nx_dtype_size(s->dtype);
    NX_TRY(nx_verify_tensor_read(&v->src, si, (uint64_t)(r0 * s->shape[1]) * esize, b->raw,
                                 (size_t)n * esize, e));
    nx_widen_f32(b->raw, s->dtype, n, b->w);
    return NX_OK;
}

static int exact_chunk(vctx *v, const module *m, int64_t si, int64_t r0, int64_t nr,
                       exact_bufs *b, exact_acc *acc, nx_err *e)
{
    int64_t n = nr * m->in;
    NX_TRY(source_rows_f32(v, si, r0, nr, b, e));
    NX_TRY(nx_verify_tensor_read(&v->c, m->t[v->sfx_codes], (uint64_t)(r0 * m->in / 2),
                                 b->codes, (size_t)(n / 2), e));
    NX_TRY(nx_verify_tensor_read(&v->c, m->t[SFX_WEIGHT_SCALE], (uint64_t)(r0 * m->in / 16),
                                 b->scales, (size_t)(n / 16), e));
    exact_rows(b, r0, nr, m->in, acc);
    nx_qstats_add(&acc->st, b->w, nr, m->in, b->codes, b->scales, acc->ws.c[acc->ws.primary]);
    return NX_OK;
}

static int exact_check(vctx *v, const module *m, int64_t si, exact_acc *acc, nx_err *e)
{
    int64_t chunk_rows = EXACT_CHUNK_ELEMS / m->in > 0 ? EXACT_CHUNK_ELEMS / m->in : 1;
    int64_t n = chunk_rows * m->in;
    exact_bufs b = { malloc((size_t)n * 4), malloc((size_t)n / 2), malloc((size_t)n / 16),
                     malloc((size_t)n * sizeof(uint16_t)), malloc((size_t)n * sizeof(float)) };
    int rc = b.raw && b.codes && b.scales && b.bf && b.w ? NX_OK
             : nx_err_set(e, NX_EIO, "out of memory checking %s", m->name);
    ws2_candidates(v, m, &acc->ws);
    acc->alive = (1u << acc->ws.n) - 1;
    for (int64_t r0 = 0; rc == NX_OK && r0 < m->rows; r0 += chunk_rows)
        rc = exact_chunk(v, m, si, r0, m->rows - r0 < chunk_rows ? m->rows - r0 : chunk_rows,
                         &b, acc, e);
    free(b.raw);
    free(b.codes);
    free(b.scales);
    free(b.bf);
    free(b.w);
    return rc;
}

static void exact_report(vctx *v, const module *m, const exact_acc *acc)
{
    if (acc->alive)
        return;
    if (v->fmt == FMT_CT)
        nx_violation(v, "X", m->name, "%lld codes differ from re-encoding the source with "
                     "weight_scale_2 = 1/weight_global_scale (first at row %lld col %lld), and "
                     "with each float up to %d steps from it", (long long)acc->mismatches,
                     (long long)acc->first_row, (long long)acc->first_col, WS2_NEIGHBOURS);
    else
        nx_violation(v, "X", m->name, "%lld codes differ from re-encoding the source (first at "
                     "row %lld col %lld)", (long long)acc->mismatches,
                     (long long)acc->first_row, (long long)acc->first_col);
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
 * violation, or T1/T2 already reported). BF16, F16, F32, or FP8 block-scaled. */
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
    int64_t in = s->ndim == 2 && src_is_mxfp4(v, si) ? 2 * s->shape[1] : s->ndim == 2
                 ? s->shape[1] : -1;
    if (s->ndim != 2 || s->shape[0] != m->rows || in != m->in ||
        !(is_float_dtype(s->dtype) || v->src_enc.link[si].scale >= 0)) {
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
    exact_report(v, m, &acc);
    return stats_keep(v, m, &acc.st, e);
}
